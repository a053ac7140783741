"""Model cases: small sequential float models quantized with FX graph mode (PTQ and QAT) for one
engine, converted with convert_fx, convert_to_reference_fx and _convert_to_reference_decomposed_fx
from the same prepared model, and run on recorded test inputs."""

import copy
import hashlib

import numpy as np
import torch
import torch.fx
from torch.ao.quantization import (QConfig, QConfigMapping, get_default_qat_qconfig_mapping,
                                   get_default_qconfig_mapping)
from torch.ao.quantization.fake_quantize import FakeQuantizeBase, FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import HistogramObserver, MovingAverageMinMaxObserver
from torch.ao.quantization.quantize_fx import (_convert_to_reference_decomposed_fx, convert_fx,
                                               convert_to_reference_fx, prepare_fx, prepare_qat_fx)

from common import describe_observer, describe_partial, f32_exact, qscheme_name, dtype_name, tensor
from graphs import delta_encode, reference_conv, reference_linear

F32 = np.float32
OPS = ["linear", "linear_relu", "conv2d", "conv2d_relu", "conv2d_dw", "composed"]
ENGINE_ISAS = [("fbgemm", "default"), ("fbgemm", "avx2"), ("x86", "default"), ("x86", "avx2"),
               ("qnnpack", "default"), ("onednn", "default")]
MODES = ["ptq", "qat"]
FLOWS = [("convert_fx", convert_fx), ("convert_to_reference_fx", convert_to_reference_fx),
         ("_convert_to_reference_decomposed_fx", _convert_to_reference_decomposed_fx)]
# Data flavour by round: "fullrange" = activation observers without reduce_range (fbgemm/x86) and
# inputs skewed positive so activations use 0..255; "far" = test inputs far beyond calibration.
FLAVOURS = ["normal", "fullrange", "far", "fullrange"]


def _weights(rng, shape, fan_in, flavour):
    bound = 1.0 / np.sqrt(fan_in)
    if flavour == "fullrange":
        # many large-magnitude weights: pairs of big same-sign weights exercise int16 saturation
        mag = rng.uniform(0.5, 1.0, size=shape)
        sign = np.where(rng.integers(0, 2, size=shape) == 1, 1.0, -1.0)
        w = sign * mag * bound * 2.0
    else:
        w = rng.uniform(-bound, bound, size=shape) * rng.uniform(0.5, 3.0)
    return np.asarray(w, dtype=F32)


def _bias(rng, n, fan_in):
    if rng.integers(0, 4) == 0:
        return None
    return (rng.uniform(-1, 1, size=n) / np.sqrt(fan_in)).astype(F32)


def _conv_out(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def _draw_conv(rng, op, flavour, composed=False):
    """Conv shapes. conv2d_dw: depthwise, sometimes on FBGEMM's depthwise fast path (channels a
    multiple of 8, 3x3 / 5x5 / 7x7 with same padding). conv2d / conv2d_relu: a quarter are FBGEMM
    groupwise shapes (fbgemmOptimizedGConv: >= 8 groups of 2, 4, 8 or 16 channels, 3x3, pad 1,
    stride 1 or 2), a quarter wide (up to 40 input / 24 output channels), the rest small with
    arbitrary kernel, stride, padding, dilation and groups. Spatial sizes stay small: the goldens
    record every tensor."""
    kind = "small"
    if op in ("conv2d", "conv2d_relu") and not composed:
        kind = rng.choice(["groupwise", "wide", "small", "small"])
    while True:
        if op == "conv2d_dw":
            c = int(rng.choice([3, 5, 6, 7, 9, 10, 12, 8, 8, 16, 16, 24]))
            cin, cout, groups = c, c, c
            kh = kw = int(rng.choice([3, 3, 5, 7]))
            stride = int(rng.integers(1, 3))
            same = rng.integers(0, 3) > 0
            pad = (kh - 1) // 2 if same else int(rng.integers(0, kh // 2 + 1))
            dil = 1 if (same or rng.integers(0, 4)) else 2
            sh = sw = stride
            ph = pw = pad
            dh = dw = dil
            h = int(rng.integers(4, 9))
            w = int(rng.integers(4, 9))
        elif kind == "groupwise":
            cpg = int(rng.choice([2, 2, 2, 4, 4, 8, 16]))
            groups = int(rng.choice([8, 16])) if cpg == 2 else 8
            cin = cout = groups * cpg
            kh = kw = 3
            sh = sw = int(rng.integers(1, 3))
            ph = pw = 1
            dh = dw = 1
            h = int(rng.integers(3, 6 if cpg >= 8 else 7))
            w = int(rng.integers(3, 6 if cpg >= 8 else 7))
        elif kind == "wide":
            groups = 1
            cin = int(rng.integers(9, 41))
            cout = int(rng.integers(9, 25))
            kh = int(rng.integers(1, 4))
            kw = kh if rng.integers(0, 3) else int(rng.integers(1, 4))
            sh = sw = int(rng.integers(1, 3))
            ph = int(rng.integers(0, 2))
            pw = ph
            dh = dw = 1
            h = int(rng.integers(3, 7))
            w = int(rng.integers(3, 7))
        else:
            groups = 1 if (composed or rng.integers(0, 3)) else int(rng.choice([2, 3, 4]))
            cin = groups * int(rng.integers(1 if groups > 1 else 3, (8 // groups if groups > 1 else 8) + 1))
            cout = groups * int(rng.integers(1, (8 // groups) + 1 if groups > 1 else 9))
            if composed:
                cin = int(rng.integers(3, 7))
                cout = int(rng.integers(2, 7))
            kh = int(rng.integers(1, 4))
            kw = kh if rng.integers(0, 3) else int(rng.integers(1, 4))
            sh = int(rng.integers(1, 3))
            sw = sh if rng.integers(0, 3) else int(rng.integers(1, 3))
            ph = int(rng.integers(0, 3))
            pw = ph if rng.integers(0, 3) else int(rng.integers(0, 3))
            dh = 1 if rng.integers(0, 3) else 2
            dw = dh if rng.integers(0, 2) else 1
            h = int(rng.integers(5, 10 if not composed else 9))
            w = int(rng.integers(5, 10 if not composed else 9))
        ho = _conv_out(h, kh, sh, ph, dh)
        wo = _conv_out(w, kw, sw, pw, dw)
        if ho >= 1 and wo >= 1 and (not composed or cout * ho * wo <= 256):
            break
    conv = torch.nn.Conv2d(cin, cout, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups)
    fan_in = cin // groups * kh * kw
    wt = _weights(rng, (cout, cin // groups, kh, kw), fan_in, flavour)
    b = _bias(rng, cout, fan_in)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(wt))
        if b is None:
            conv.bias = None
        else:
            conv.bias.copy_(torch.from_numpy(b))
    tags = {"groupwise": ["groupwise"], "wide": ["wide"]}.get(kind, [])
    spec = {"op": "conv2d", "in_channels": cin, "out_channels": cout, "kernel_size": [kh, kw],
            "stride": [sh, sw], "padding": [ph, pw], "dilation": [dh, dw], "groups": groups,
            "weight": tensor(wt), "bias": None if b is None else tensor(b)}
    return conv, spec, [1, cin, h, w], cout * ho * wo, tags


def _draw_linear(rng, flavour, k=None):
    if k is None:
        k = int(rng.integers(4, 129))
    n = int(rng.integers(2, 33))
    lin = torch.nn.Linear(k, n)
    wt = _weights(rng, (n, k), k, flavour)
    b = _bias(rng, n, k)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(wt))
        if b is None:
            lin.bias = None
        else:
            lin.bias.copy_(torch.from_numpy(b))
    spec = {"op": "linear", "in_features": k, "out_features": n, "weight": tensor(wt),
            "bias": None if b is None else tensor(b)}
    return lin, spec


def build_model(rng, op, flavour):
    """Returns (float nn.Sequential, layer specs, input shape, tags)."""
    tags = []
    if op in ("linear", "linear_relu"):
        lin, spec = _draw_linear(rng, flavour)
        mods, specs = [lin], [spec]
        if op == "linear_relu":
            mods.append(torch.nn.ReLU())
            specs.append({"op": "relu"})
        shape = [int(rng.integers(1, 4)), spec["in_features"]]
    elif op in ("conv2d", "conv2d_relu", "conv2d_dw"):
        conv, spec, shape, _, tags = _draw_conv(rng, op, flavour)
        mods, specs = [conv], [spec]
        if spec["groups"] > 1:
            tags.append("depthwise" if spec["groups"] == spec["in_channels"] == spec["out_channels"] else "grouped")
        if op == "conv2d_relu":
            mods.append(torch.nn.ReLU())
            specs.append({"op": "relu"})
    elif op == "composed":
        conv, cspec, shape, flat, _ = _draw_conv(rng, "conv2d", flavour, composed=True)
        lin, lspec = _draw_linear(rng, flavour, k=flat)
        mods = [conv, torch.nn.ReLU(), torch.nn.Flatten(), lin]
        specs = [cspec, {"op": "relu"}, {"op": "flatten"}, lspec]
    else:
        raise ValueError(op)
    return torch.nn.Sequential(*mods).eval(), specs, shape, tags


def _inputs(rng, shape, flavour, n):
    """Draw n input batches; the distribution parameters are drawn once per case."""
    return _InputDist(rng, flavour).draw(rng, shape, n)


class _InputDist:
    def __init__(self, rng, flavour):
        self.flavour = flavour
        self.mu = rng.uniform(-0.5, 0.5)
        self.sigma = rng.uniform(0.3, 2.0)
        self.lo = -rng.uniform(0.2, 1.0)
        self.hi = rng.uniform(2.0, 4.0)

    def draw(self, rng, shape, n, mult=1.0):
        out = []
        for _ in range(n):
            if self.flavour == "fullrange":
                x = rng.uniform(self.lo, self.hi, size=shape)
            else:
                x = rng.normal(self.mu, self.sigma, size=shape)
            out.append(torch.from_numpy((x * mult).astype(F32)))
        return out


def _qconfig_mapping(engine, mode, flavour):
    if mode == "ptq":
        mapping = get_default_qconfig_mapping(engine)
    else:
        mapping = get_default_qat_qconfig_mapping(engine)
    qconfig = mapping.global_qconfig
    if flavour == "fullrange" and engine in ("fbgemm", "x86"):
        if mode == "ptq":
            act = HistogramObserver.with_args(reduce_range=False)
        else:
            act = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                                          quant_max=255, reduce_range=False)
        qconfig = QConfig(activation=act, weight=qconfig.weight)
        mapping.set_global(qconfig)
    return mapping, qconfig


def _source_kind(node, gm):
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        name = type(gm.get_submodule(node.target)).__name__
        if name.startswith("Conv") and name.endswith("2d"):
            return "conv2d"
        if "Linear" in name:
            return "linear"
        if name == "Flatten":
            return "flatten"
        if name == "ReLU":
            return "relu"
        raise ValueError(f"unexpected module {name} feeding a quantize node")
    if node.op == "call_function" and node.target in (torch.flatten,):
        return "flatten"
    raise ValueError(f"unexpected producer {node.op} {node.target} feeding a quantize node")


_DEC_Q = None


class _Recorder(torch.fx.Interpreter):
    """Runs a converted GraphModule and records every quantized activation in execution order.
    In the reference flows (`pre_quant=True`) each entry also gets `pre_quant`, the f32 tensor its
    quantize node received (golden/README.md): conv / linear outputs as differences from the
    reference evaluation on the layer's recorded float input and dequantized weight, the input's
    and flatten's (exact: the input itself, a dequantized value) as a SHA-256."""

    def __init__(self, gm, pre_quant=False):
        super().__init__(gm)
        self.quantized = []
        self.pre_quant = pre_quant
        self.layer_inputs = {}

    def _pre_quant(self, n):
        src = n.args[0]
        (f, *_), _ = self.fetch_args_kwargs_from_env(n)
        f = f.detach().contiguous().numpy().astype(np.float32)
        if _source_kind(src, self.module) not in ("conv2d", "linear"):
            return {"shape": list(f.shape), "sha256": hashlib.sha256(f.astype("<f4").tobytes()).hexdigest()}
        m = self.module.get_submodule(src.target)
        # fused ConvReLU2d / LinearReLU (torch/ao/nn/intrinsic/modules/fused.py): [reference op, ReLU]
        c = m[0] if isinstance(m, torch.nn.Sequential) else m
        relu = isinstance(m, torch.nn.Sequential) and any(isinstance(s, torch.nn.ReLU) for s in m)
        x = self.layer_inputs[src].detach().contiguous().numpy().astype(np.float32)
        w = c.get_weight().detach().contiguous().numpy().astype(np.float32)
        b = None if c.bias is None else c.bias.detach().numpy().astype(np.float32)
        if isinstance(c, torch.nn.Conv2d):
            r = reference_conv(x, w, b, c.stride, c.padding, c.dilation, c.groups, relu)
        else:
            r = reference_linear(x, w, b, relu)
        return delta_encode(f, r)

    def run_node(self, n):
        if self.pre_quant and n.op == "call_module" and _source_kind(n, self.module) in ("conv2d", "linear"):
            (x, *_), _ = self.fetch_args_kwargs_from_env(n)
            self.layer_inputs[n] = x
        pre = None
        if self.pre_quant and n.op == "call_function" and n.target in (torch.quantize_per_tensor, _DEC_Q):
            pre = self._pre_quant(n)
        result = super().run_node(n)
        gm = self.module
        if n.op == "call_function" and n.target is torch.quantize_per_tensor:
            assert result.dtype == torch.quint8
            self.quantized.append({"source": _source_kind(n.args[0], gm), "scale": result.q_scale(),
                                   "zero_point": int(result.q_zero_point()), "quant_min": 0, "quant_max": 255,
                                   "int_repr": tensor(result.int_repr())})
        elif n.op == "call_function" and n.target is _DEC_Q:
            _, scale, zp, qmin, qmax, dt = n.args
            assert isinstance(scale, float) and isinstance(zp, int) and dt == torch.uint8
            self.quantized.append({"source": _source_kind(n.args[0], gm), "scale": scale, "zero_point": zp,
                                   "quant_min": int(qmin), "quant_max": int(qmax), "int_repr": tensor(result)})
        elif isinstance(result, torch.Tensor) and result.is_quantized:
            if n.op != "call_module":
                raise ValueError(f"unexpected quantized result of {n.op} {n.target}")
            assert result.dtype == torch.quint8
            self.quantized.append({"source": _source_kind(n, gm), "scale": result.q_scale(),
                                   "zero_point": int(result.q_zero_point()), "quant_min": 0, "quant_max": 255,
                                   "int_repr": tensor(result.int_repr())})
        elif n.op == "call_function" and "quantize_per" in str(n.target) and "dequantize" not in str(n.target):
            raise ValueError(f"unhandled quantize node {n.target}")
        if pre is not None:
            self.quantized[-1]["pre_quant"] = pre
        return result


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _activation_observers(prepared):
    """(name, module) of the activation observers / fake-quants in graph order."""
    out = []
    for n in prepared.graph.nodes:
        if n.op == "call_module" and n.target.startswith("activation_post_process_"):
            out.append((n.target, prepared.get_submodule(n.target)))
    return out


def _weight_qparams(layer_idx, gm_fx, gm_dec, wobs):
    """Weight qparams of one conv/linear layer, from the convert_fx quantized module; `qscheme`
    is the weight observer's (the quantized tensor itself always says *_affine)."""
    weight_range = (int(wobs.quant_min), int(wobs.quant_max))
    name = str(layer_idx)
    qmod = gm_fx.get_submodule(name)
    w = qmod.weight()
    qs = w.qscheme()
    if qs in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales = w.q_per_channel_scales()
        zps = w.q_per_channel_zero_points()
        axis = int(w.q_per_channel_axis())
    else:
        scales = torch.tensor([w.q_scale()], dtype=torch.float64)
        zps = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        axis = None
    for s in scales.tolist():
        assert f32_exact(s), "weight scales are f32 values"
    scales32 = scales.to(torch.float32)
    # the decomposed flow's reference module must hold the same weight qparams
    ref = gm_dec.get_submodule(name)
    if not hasattr(ref, "weight_scale"):  # fused ConvReLU2d / LinearReLU: reference conv/linear is [0]
        ref = ref[0]
    ref_scale = ref.weight_scale.reshape(-1).to(torch.float32)
    assert _same_bits(ref_scale, scales32), "decomposed and convert_fx weight scales differ"
    assert torch.equal(ref.weight_zero_point.reshape(-1).to(torch.int64), zps.to(torch.int64))
    qmin, qmax = int(ref.weight_quant_min), int(ref.weight_quant_max)
    assert (qmin, qmax) == weight_range, f"weight range {(qmin, qmax)} != observer {weight_range}"
    obs_qs = wobs.qscheme
    per_channel_obs = obs_qs in (torch.per_channel_affine, torch.per_channel_symmetric)
    assert per_channel_obs == (axis is not None), "weight tensor and observer granularity differ"
    return {"layer": layer_idx, "qscheme": qscheme_name(obs_qs), "dtype": dtype_name(w.dtype), "axis": axis,
            "quant_min": qmin, "quant_max": qmax, "scales": tensor(scales32), "zero_points": tensor(zps.to(torch.int64)),
            "int_repr": tensor(w.int_repr())}


def model_case(rng, op, engine, mode, rnd):
    global _DEC_Q
    _DEC_Q = torch.ops.quantized_decomposed.quantize_per_tensor.default
    flavour = FLAVOURS[rnd % len(FLAVOURS)]
    torch.backends.quantized.engine = engine
    model, specs, shape, tags = build_model(rng, op, flavour)
    tags = [flavour] + tags
    dist = _InputDist(rng, flavour)
    calib = dist.draw(rng, shape, 3)
    if flavour == "far":
        test = dist.draw(rng, shape, 1) + dist.draw(rng, shape, 1, mult=float(rng.uniform(6.0, 12.0)))
    elif flavour == "fullrange":
        test = dist.draw(rng, shape, 1) + dist.draw(rng, shape, 1, mult=float(rng.uniform(1.2, 2.0)))
    else:
        test = dist.draw(rng, shape, 1) + dist.draw(rng, shape, 1, mult=float(rng.uniform(1.5, 3.0)))
    mapping, qconfig = _qconfig_mapping(engine, mode, flavour)
    example = (calib[0],)
    if mode == "ptq":
        prepared = prepare_fx(model.eval(), mapping, example)
    else:
        prepared = prepare_qat_fx(model.train(), mapping, example)

    act_desc = describe_partial(qconfig.activation)
    wt_desc = describe_partial(qconfig.weight)
    observers = _activation_observers(prepared)
    records = {}
    handles = []
    for name, mod in observers:
        want_cls = FusedMovingAvgObsFakeQuantize if mode == "qat" else qconfig.activation.p.func
        if type(mod) is not want_cls:
            raise AssertionError(f"{name} is {type(mod).__name__}, qconfig says {want_cls.__name__}")
        if id(mod) not in records:
            records[id(mod)] = []
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, key=id(mod): records[key].append(args[0].detach().clone())))
    with torch.no_grad():
        for x in calib:
            prepared(x)
    for h in handles:
        h.remove()

    obs_out = []
    for name, mod in observers:
        inner = mod.activation_post_process if isinstance(mod, FakeQuantizeBase) else mod
        d = describe_observer(type(mod), {}, mod)
        if d["resolved"] != act_desc["resolved"] or d["class"] != act_desc["class"]:
            raise AssertionError(f"{name} resolved differently from the global qconfig")
        scale, zp = mod.calculate_qparams()
        entry = {"name": name, "inputs": [tensor(t) for t in records[id(mod)]], "min_val": tensor(inner.min_val),
                 "max_val": tensor(inner.max_val), "scale": tensor(scale), "zero_point": tensor(zp)}
        if mode == "qat":
            entry["fq_scale"] = tensor(mod.scale)
            entry["fq_zero_point"] = tensor(mod.zero_point)
        obs_out.append(entry)

    if mode == "ptq":
        wobs = qconfig.weight()
    else:
        wobs = qconfig.weight().activation_post_process

    flows = {}
    converted = {}
    for fname, fn in FLOWS:
        gm = fn(copy.deepcopy(prepared))
        gm.eval()
        converted[fname] = gm
        runs = []
        for x in test:
            rec = _Recorder(gm, pre_quant=fname != "convert_fx")
            with torch.no_grad():
                out = rec.run(x)
                direct = gm(x)
            assert _same_bits(out, direct), "Interpreter and direct call differ"
            runs.append({"output": tensor(out), "quantized": rec.quantized})
        flows[fname] = {"graph": gm.code, "runs": runs}

    weights = []
    for i, s in enumerate(specs):
        if s["op"] in ("conv2d", "linear"):
            weights.append(_weight_qparams(i, converted["convert_fx"],
                                           converted["_convert_to_reference_decomposed_fx"], wobs))
    return {
        "engine": engine,
        "mode": mode,
        "input_shape": shape,
        "layers": specs,
        "qconfig": {"activation": act_desc, "weight": wt_desc},
        "calibration": [tensor(x) for x in calib],
        "observers": obs_out,
        "weights": weights,
        "inputs": [tensor(x) for x in test],
        "flows": flows,
    }, tags
