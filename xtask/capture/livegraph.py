"""Random quantized graphs of `cargo xtask diff-live --graphs`: the float model, its qconfig mapping
and its calibration / test data, built from a graph spec drawn by the Rust generator
(xtask/src/livegraph.rs, which documents the spec). The case itself is recorded by
graphs.graph_case, as for the committed graph goldens.

A spec is a list of nodes over values: value 0 is the graph input (N, C, H, W), node i produces
value i + 1, and the model returns the last node's value. Everything here is deterministic in the
spec (weights and data come from a torch.Generator seeded by `spec["seed"]`), so `qparity repro`
rebuilds the same model, calibration and test inputs from the spec stored in a saved case.
"""

import torch
from torch import nn
from torch.ao.quantization import (FakeQuantize, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
                                   MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver, QConfig,
                                   get_default_qat_qconfig_mapping, get_default_qconfig_mapping)

OBSERVERS = {c.__name__: c for c in (MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver,
                                     PerChannelMinMaxObserver, MovingAveragePerChannelMinMaxObserver)}
QSCHEMES = {"per_tensor_affine": torch.per_tensor_affine, "per_tensor_symmetric": torch.per_tensor_symmetric,
            "per_channel_affine": torch.per_channel_affine, "per_channel_symmetric": torch.per_channel_symmetric}
DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8}
MODULE_OPS = ("conv2d", "linear", "relu", "hardswish", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
              "flatten")
FUNCTION_OPS = ("add", "add_relu", "mul", "cat")


class SpecError(ValueError):
    """The spec is malformed (a bug of the generator, reported rather than run)."""


def _module(node):
    op = node["op"]
    if op == "conv2d":
        return nn.Conv2d(node["in_channels"], node["out_channels"], tuple(node["kernel"]), tuple(node["stride"]),
                         tuple(node["padding"]), groups=node["groups"], bias=node["bias"])
    if op == "linear":
        return nn.Linear(node["in_features"], node["out_features"], bias=node["bias"])
    if op == "relu":
        return nn.ReLU()
    if op == "hardswish":
        return nn.Hardswish()
    if op == "max_pool2d":
        return nn.MaxPool2d(node["kernel"], node["stride"], node["padding"])
    if op == "avg_pool2d":
        return nn.AvgPool2d(node["kernel"], node["stride"], node["padding"])
    if op == "adaptive_avg_pool2d":
        return nn.AdaptiveAvgPool2d(tuple(node["output"]))
    if op == "flatten":
        return nn.Flatten()
    raise SpecError(f"unknown module op {op!r}")


class LiveNet(nn.Module):
    """The float model of a spec: one submodule `n<i>` per module node, functions for the rest."""

    def __init__(self, spec):
        super().__init__()
        self.nodes = [(n["op"], list(n["in"])) for n in spec["nodes"]]
        if not self.nodes:
            raise SpecError("a graph needs at least one node")
        for i, n in enumerate(spec["nodes"]):
            if any(not 0 <= j <= i for j in n["in"]):
                raise SpecError(f"node {i} reads a value that is not computed before it: {n['in']}")
            if n["op"] in MODULE_OPS:
                setattr(self, f"n{i}", _module(n))
            elif n["op"] not in FUNCTION_OPS:
                raise SpecError(f"unknown op {n['op']!r}")

    def forward(self, x):
        vals = [x]
        for i, (op, ins) in enumerate(self.nodes):
            a = [vals[j] for j in ins]
            if op in MODULE_OPS:
                v = getattr(self, f"n{i}")(a[0])
            elif op == "add":
                v = torch.add(a[0], a[1])
            elif op == "add_relu":
                v = torch.relu(torch.add(a[0], a[1]))
            elif op == "mul":
                v = torch.mul(a[0], a[1])
            else:
                v = torch.cat(a, 1)
            vals.append(v)
        return vals[-1]


def build_model(spec):
    """The float model with weights drawn from the spec's generator (He-uniform weights, biases
    uniform in ±0.2, scaled by the node's `wscale`)."""
    g = torch.Generator().manual_seed(int(spec["seed"]))
    model = LiveNet(spec)
    with torch.no_grad():
        for i, n in enumerate(spec["nodes"]):
            if n["op"] not in ("conv2d", "linear"):
                continue
            m = getattr(model, f"n{i}")
            bound = (6.0 / m.weight[0].numel()) ** 0.5 * float(n.get("wscale", 1.0))
            m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
            if m.bias is not None:
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * 0.2)
    return model


def data(spec):
    """(calibration batches, test inputs): normal(mean, std) batches; test input i is a fresh batch
    with its deviation from the mean multiplied by `tests[i]` (beyond the calibration range for
    multipliers over 1)."""
    g = torch.Generator().manual_seed(int(spec["seed"]) ^ 0x5EED)
    shape = tuple(spec["input"])
    c = spec["calib"]
    calib = [torch.randn(shape, generator=g) * c["std"] + c["mean"] for _ in range(c["batches"])]
    tests = [torch.randn(shape, generator=g) * c["std"] * m + c["mean"] for m in spec["tests"]]
    return calib, tests


def _observer(o, qat, weight):
    cls = OBSERVERS.get(o["observer"])
    if cls is None:
        raise SpecError(f"unknown observer {o['observer']!r}")
    kw = {"dtype": DTYPES[o["dtype"]], "qscheme": QSCHEMES[o["qscheme"]], "reduce_range": bool(o["reduce_range"])}
    if o.get("quant_min") is not None:
        kw["quant_min"], kw["quant_max"] = int(o["quant_min"]), int(o["quant_max"])
    if weight and o["qscheme"].startswith("per_channel"):
        kw["ch_axis"] = 0
    if qat:
        return FakeQuantize.with_args(observer=cls, **kw)
    return cls.with_args(**kw)


def qconfig_mapping(spec):
    """The engine's default mapping (fixed-qparams ops keep their qconfigs) with the spec's global
    qconfig."""
    engine, qat = spec["engine"], spec["mode"] == "qat"
    q = spec["qconfig"]
    mapping = get_default_qat_qconfig_mapping(engine) if qat else get_default_qconfig_mapping(engine)
    qc = QConfig(activation=_observer(q["activation"], qat, False), weight=_observer(q["weight"], qat, True))
    return mapping.set_global(qc)
