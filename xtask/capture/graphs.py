"""Graph cases (kind `graph`, format `qparity-golden/2`, golden/README.md): a float model quantized
with FX graph mode for one engine (PTQ or QAT), converted with the three convert flows from the same
prepared model, and run on test inputs. Every node of a converted graph that produces a quantized
value is recorded by name, with the names of the nodes whose quantized values it reads, so the
checker can run each node on PyTorch's own inputs.

In convert_fx a node is a quantized op (a quantized module, `quantized::add_relu`, a shape op on a
quantized tensor); in the reference flows it is the chain of float ops between `dequantize` nodes
and one quantize node, and the float that quantize node received is recorded too (`pre_quant`).
"""

import base64
import copy
import hashlib
import zlib

import numpy as np
import torch
import torch.fx
from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import (_convert_to_reference_decomposed_fx, convert_fx,
                                               convert_to_reference_fx, prepare_fx, prepare_qat_fx)

from common import COMPACT_OVER, describe_partial, dtype_name, qscheme_name, tensor

FORMAT2 = "qparity-golden/2"
FLOWS = [("convert_fx", convert_fx), ("convert_to_reference_fx", convert_to_reference_fx),
         ("_convert_to_reference_decomposed_fx", _convert_to_reference_decomposed_fx)]
# Reference-flow float ops qparity evaluates bit for bit: their pre-quantize floats are stored as
# a SHA-256 only (qparity's own values must hash the same). Conv and linear are stored as
# differences from a reference evaluation; every other op's floats are stored.
PINNED_FLOAT_OPS = {"relu", "relu6", "hardtanh", "flatten", "dropout", "reshape", "transpose", "contiguous",
                    "chunk", "movement", "cat", "max_pool2d", "add", "add_relu", "mul", "mul_relu", "hardswish",
                    "hardsigmoid", "avg_pool2d", "adaptive_avg_pool2d", "mean"}


def ztensor(a):
    """A tensor object (the compact "z" payload for large ones, see common.tensor)."""
    return tensor(a)


# ---------------------------------------------------------------------------------------------
# pre-quantize floats of conv / linear: differences from the reference evaluation

def _ord(bits):
    """f32 bits (uint32) -> the monotone integers of the delta encoding."""
    b = bits.astype(np.int64)
    neg = (b & 0x80000000) != 0
    return np.where(neg, -(b & 0x7FFFFFFF) - 1, b)


def _varints(z):
    out = bytearray()
    for v in z.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def delta_encode(actual, reference):
    a = np.ascontiguousarray(actual, dtype=np.float32)
    r = np.ascontiguousarray(reference, dtype=np.float32).reshape(a.shape)
    d = _ord(a.view(np.uint32).ravel()) - _ord(r.view(np.uint32).ravel())
    z = ((d << 1) ^ (d >> 63)).astype(np.uint64)
    return {"shape": list(a.shape),
            "delta": base64.b64encode(zlib.compress(_varints(z), 9)).decode("ascii"),
            "sha256": hashlib.sha256(a.astype("<f4").tobytes()).hexdigest()}


def reference_conv(x, w, b, stride, padding, dilation, groups, relu):
    """The documented reference evaluation (qparity `QLayer::reference_float`): per output, the
    f64 sum, in order, of the exact products over k = (kh*KW + kw)*ICg + c, plus the bias, rounded
    to f32, then max(., +0.0) under a fused ReLU. x: f32 NCHW (dequantized input), w: f32 weight."""
    x = np.asarray(x, np.float32).astype(np.float64)
    w = np.asarray(w, np.float32).astype(np.float64)
    n, cin, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, cin, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    ocg = oc // groups
    acc = np.zeros((n, oc, oh, ow))
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                for c in range(icg):
                    tap = xp[:, g * icg + c, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                             j * dw:j * dw + sw * (ow - 1) + 1:sw]
                    acc[:, g * ocg:(g + 1) * ocg] += tap[:, None] * w[g * ocg:(g + 1) * ocg, c, i, j][None, :, None, None]
    if b is not None:
        acc += np.asarray(b, np.float32).astype(np.float64)[None, :, None, None]
    r = acc.astype(np.float32)
    if relu:
        r = np.where(r > 0, r, np.float32(0.0)).astype(np.float32)
    return r


def reference_linear(x, w, b, relu):
    x = np.asarray(x, np.float32).astype(np.float64)
    w = np.asarray(w, np.float32).astype(np.float64)
    k = w.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    acc = np.zeros((x2.shape[0], w.shape[0]))
    for i in range(k):
        acc += x2[:, i:i + 1] * w[None, :, i]
    if b is not None:
        acc += np.asarray(b, np.float32).astype(np.float64)[None, :]
    r = acc.astype(np.float32).reshape(*lead, w.shape[0])
    if relu:
        r = np.where(r > 0, r, np.float32(0.0)).astype(np.float32)
    return r


# ---------------------------------------------------------------------------------------------
# reading converted graphs

def _target_name(n):
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _is_quantize(n):
    return n.op == "call_function" and _target_name(n) in ("quantize_per_tensor", "quantize_per_tensor.default")


def _is_dequantize(n):
    return (n.op == "call_method" and n.target == "dequantize") or (
        n.op == "call_function" and _target_name(n) in ("dequantize", "dequantize_per_tensor.default"))


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.values[n] = out
        return out


def _conv_attrs(m, relu):
    c = m[0] if isinstance(m, torch.nn.Sequential) else m
    return {"conv": {"in_channels": c.in_channels, "out_channels": c.out_channels,
                     "kernel_size": list(c.kernel_size), "stride": list(c.stride),
                     "padding": list(c.padding), "dilation": list(c.dilation), "groups": c.groups},
            "relu": relu}


def _linear_attrs(m, relu):
    c = m[0] if isinstance(m, torch.nn.Sequential) else m
    return {"in_features": c.in_features, "out_features": c.out_features, "relu": relu}


def _module_op(gm, n):
    """(op, attrs, module path) of a call_module node, reference or quantized."""
    m = gm.get_submodule(n.target)
    cls = type(m).__name__
    relu = cls in ("ConvReLU2d", "LinearReLU")
    if cls in ("Conv2d", "ConvReLU2d"):
        return "conv2d", _conv_attrs(m, relu), n.target
    if cls in ("Linear", "LinearReLU"):
        return "linear", _linear_attrs(m, relu), n.target
    if cls == "ReLU6":
        return "relu6", None, None
    if cls == "Hardtanh":
        return "hardtanh", {"min_val": float(m.min_val), "max_val": float(m.max_val)}, None
    if cls == "ReLU":
        return "relu", None, None
    if cls == "Flatten":
        return "flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}, None
    if cls == "MaxPool2d":
        return "max_pool2d", _pool_attrs(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), None
    if cls == "AvgPool2d":
        return "avg_pool2d", {**_pool_attrs(m.kernel_size, m.stride, m.padding, 1, m.ceil_mode),
                              "count_include_pad": bool(m.count_include_pad),
                              "divisor_override": m.divisor_override}, None
    if cls == "AdaptiveAvgPool2d":
        return "adaptive_avg_pool2d", {"output_size": _pair(m.output_size)}, None
    if cls == "Hardswish":
        return "hardswish", None, None
    if cls == "Hardsigmoid":
        return "hardsigmoid", None, None
    if cls == "Dropout":
        return "dropout", None, None
    raise NotImplementedError(f"module {cls} ({n.target}) is not mapped to a qparity op")


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _pool_attrs(k, s, p, d, ceil_mode):
    k = _pair(k)
    return {"kernel_size": k, "stride": _pair(s if s not in (None, []) else k), "padding": _pair(p),
            "dilation": _pair(d), "ceil_mode": bool(ceil_mode)}


def _arg(n, i, key, default):
    if len(n.args) > i:
        return n.args[i]
    return n.kwargs.get(key, default)


def _function_op(n):
    name = _target_name(n)
    if name in ("add", "add_relu", "mul", "mul_relu"):
        return name, None
    if name == "cat":
        return "cat", {"dim": int(_arg(n, 1, "dim", 0))}
    if name == "max_pool2d":
        k = _arg(n, 1, "kernel_size", None)
        return "max_pool2d", _pool_attrs(k, _arg(n, 2, "stride", None) or k, _arg(n, 3, "padding", 0),
                                         _arg(n, 4, "dilation", 1), _arg(n, 5, "ceil_mode", False))
    if name == "avg_pool2d":
        k = _arg(n, 1, "kernel_size", None)
        return "avg_pool2d", {**_pool_attrs(k, _arg(n, 2, "stride", None) or k, _arg(n, 3, "padding", 0), 1,
                                            _arg(n, 4, "ceil_mode", False)),
                              "count_include_pad": bool(_arg(n, 5, "count_include_pad", True)),
                              "divisor_override": _arg(n, 6, "divisor_override", None)}
    if name == "adaptive_avg_pool2d":
        return "adaptive_avg_pool2d", {"output_size": _pair(_arg(n, 1, "output_size", None))}
    if name == "mean":
        dim = _arg(n, 1, "dim", None)
        return "mean", {"dim": [int(d) for d in (dim if isinstance(dim, (list, tuple)) else [dim])],
                        "keepdim": bool(_arg(n, 2, "keepdim", False))}
    if name in ("view", "reshape"):
        shape = list(n.args[1:]) if len(n.args) > 2 else list(n.args[1])
        return "reshape", {"shape": [int(v) if not isinstance(v, torch.fx.Node) else None for v in shape]}
    if name == "transpose":
        return "transpose", {"dim0": int(n.args[1]), "dim1": int(n.args[2])}
    if name == "contiguous":
        return "contiguous", None
    if name in ("relu", "relu_"):
        return "relu", None
    if name == "relu6":
        return "relu6", None
    if name == "hardtanh":
        return "hardtanh", {"min_val": float(n.args[1]), "max_val": float(n.args[2])}
    if name == "flatten":
        return "flatten", {"start_dim": int(n.args[1]) if len(n.args) > 1 else 0, "end_dim": -1}
    raise NotImplementedError(f"function {name} is not mapped to a qparity op")


# Ops that only move values (the data of their output is a permutation or a selection of their
# input's): a float chain of several of them is one `movement` node with explicit steps.
MOVEMENT_OPS = {"reshape", "transpose", "contiguous", "flatten", "dropout"}


def _movement_step(op, attrs, out):
    if op == "reshape":
        return {"op": "reshape", "shape": list(out.shape)}
    if op == "flatten":
        return {"op": "reshape", "shape": list(out.shape)}
    return {"op": op, **(attrs or {})}


def _chain_op(gm, chain, values):
    """The op of a float chain (the nodes between dequantize nodes and one quantize node); nodes
    that compute sizes rather than tensors (`x.size()`, its items, arithmetic on them) are
    dropped."""
    def holds_tensors(v):
        return isinstance(v, torch.Tensor) or (
            isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(t, torch.Tensor) for t in v))

    chain = [n for n in chain if holds_tensors(values.get(n))]
    kinds = []
    for n in chain:
        if n.op == "call_module":
            kinds.append(_module_op(gm, n))
        elif _target_name(n) == "getitem":
            kinds.append(("getitem", {"index": int(n.args[1])}, None))
        elif _target_name(n) == "chunk":
            kinds.append(("chunk", {"chunks": int(_arg(n, 1, "chunks", None)), "dim": int(_arg(n, 2, "dim", 0))}, None))
        else:
            op, attrs = _function_op(n)
            kinds.append((op, attrs, None))
    ops = [k[0] for k in kinds]
    if len(kinds) == 1:
        return kinds[0]
    if all(op in MOVEMENT_OPS for op in ops):
        steps = [_movement_step(k[0], k[1], values[n]) for k, n in zip(kinds, chain)]
        return "movement", {"steps": steps}, None
    if ops == ["add", "relu"]:
        return "add_relu", None, None
    if ops == ["mul", "relu"]:
        return "mul_relu", None, None
    if ops == ["chunk", "getitem"]:
        return "chunk", {**kinds[0][1], **kinds[1][1]}, None
    raise NotImplementedError(f"float chain {ops} is not mapped to a qparity op")


def _memory_format(t):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return "channels_last"
    return "contiguous"


def _weight_record(w, qscheme=None, dtype=None, quant_min=-128, quant_max=127, pin=False):
    """A quantized weight (torch quantized tensor) as a flow holds it."""
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales, zps, axis = w.q_per_channel_scales().float(), w.q_per_channel_zero_points(), w.q_per_channel_axis()
    else:
        scales = torch.tensor([w.q_scale()], dtype=torch.float32)
        zps = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        axis = None
    ir = w.int_repr()
    if pin:
        int_repr = {"shape": list(ir.shape),
                    "sha256": hashlib.sha256(ir.contiguous().numpy().astype("i1").tobytes()).hexdigest()}
    else:
        int_repr = ztensor(ir)
    return {"qscheme": qscheme_name(qscheme or w.qscheme()), "dtype": dtype_name(dtype or w.dtype),
            "axis": axis, "quant_min": quant_min, "quant_max": quant_max,
            "scales": ztensor(scales.numpy().astype(np.float32)), "zero_points": ztensor(zps.numpy().astype(np.int64)),
            "int_repr": int_repr}


def _ref_weight(m, decomposed, pin):
    """The weight a reference module quantizes on the fly (weight_qscheme / scales / zero points)."""
    c = m[0] if isinstance(m, torch.nn.Sequential) else m
    qs = c.weight_qscheme
    if qs in (torch.per_channel_affine, torch.per_channel_symmetric):
        w = torch.quantize_per_channel(c.weight, c.weight_scale.float(), c.weight_zero_point, c.weight_axis_int,
                                       c.weight_dtype)
    else:
        w = torch.quantize_per_tensor(c.weight, float(c.weight_scale), int(c.weight_zero_point), c.weight_dtype)
    qmin = int(getattr(c, "weight_quant_min", -128) or -128)
    qmax = int(getattr(c, "weight_quant_max", 127) or 127)
    if decomposed:
        # The decomposed flow clamps the weight to the observer's quant_min..quant_max
        # (`_quantize_and_dequantize_weight_decomposed`), which reduce_range or a custom range make
        # narrower than the dtype's (the other flows keep the dtype's range).
        ir = w.int_repr()
        clamped = ir.clamp(qmin, qmax)
        if not torch.equal(ir, clamped):
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                w = torch._make_per_channel_quantized_tensor(clamped, w.q_per_channel_scales(),
                                                             w.q_per_channel_zero_points(), w.q_per_channel_axis())
            else:
                w = torch._make_per_tensor_quantized_tensor(clamped, w.q_scale(), w.q_zero_point())
    return _weight_record(w, qscheme=qs, quant_min=qmin, quant_max=qmax, pin=pin)


def _float_chain(n, qname):
    """The float nodes feeding quantize node n's input back to dequantize nodes (or the graph
    input), in graph order, and the names of the quantized values they dequantize."""
    chain, ins, stack, seen = [], [], [n.args[0]], set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if _is_dequantize(m):
            ins.append(qname[m.args[0]])
            continue
        if m.op in ("get_attr", "placeholder"):
            continue
        if (m.op == "call_method" and m.target == "size") or (m.op == "call_function" and _target_name(m) == "size"):
            # x.size() feeds shapes, not values: the tensor it reads is not an input of the chain.
            continue
        chain.append(m)
        stack.extend(m.all_input_nodes)
    return chain, ins


def _cat_operands(chain, qname):
    """The quantized values a reference flow's cat chain dequantizes, in cat's argument order."""
    cat = next((n for n in chain if _target_name(n) == "cat"), None)
    if cat is None or not isinstance(cat.args[0], (list, tuple)):
        return None
    out = []
    for a in cat.args[0]:
        if not (isinstance(a, torch.fx.Node) and _is_dequantize(a) and a.args[0] in qname):
            return None
        out.append(qname[a.args[0]])
    return out


def record_flow(flow, gm, inputs, pin_weights):
    """The nodes, weights and runs of one converted graph."""
    reference = flow != "convert_fx"
    decomposed = flow == "_convert_to_reference_decomposed_fx"
    graph_nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(graph_nodes)}
    placeholder = next(n for n in graph_nodes if n.op == "placeholder")
    out_node = next(n for n in graph_nodes if n.op == "output")
    recs = []
    for x in inputs:
        rec = _Recorder(gm)
        with torch.no_grad():
            y = rec.run(x)
        recs.append((rec, y))
    first = recs[0][0].values

    def is_qvalue(n):
        v = first.get(n)
        return isinstance(v, torch.Tensor) and (v.is_quantized or (_is_quantize(n) and decomposed))

    # Which fx nodes are golden nodes: quantize nodes (the end of a float chain, or the input's)
    # and, in convert_fx, ops whose output is a quantized tensor.
    golden = {}
    qname = {placeholder: "input"}
    order = []
    for n in graph_nodes:
        if n.op in ("placeholder", "output", "get_attr") or _is_dequantize(n):
            continue
        if _is_quantize(n):
            if n.args[0] is placeholder:
                node = {"name": n.name, "op": "quantize", "inputs": ["input"], "attrs": None, "module": None}
            else:
                chain, ins = _float_chain(n, qname)
                chain.sort(key=index.get)
                op, attrs, module = _chain_op(gm, chain, first)
                names = [g["name"] for g in order]
                ins = sorted(set(ins), key=lambda s: names.index(s) if s in names else -1)
                if op == "cat":
                    # cat's operands in argument order (graph order differs where a later
                    # value is concatenated first, e.g. cat([branch, x])).
                    ins = _cat_operands(chain, qname) or ins
                node = {"name": chain[-1].name, "op": op, "inputs": ins, "attrs": attrs, "module": module,
                        "_src": n.args[0], "_chain": chain}
        elif not reference and is_qvalue(n):
            qargs = [a for a in n.all_input_nodes if a in qname]
            if n.op == "call_module":
                op, attrs, module = _module_op(gm, n)
            else:
                op, attrs = _function_op(n)
                module = None
            # positional order of quantized inputs (add(a, b), cat([a, b]))
            flat = []
            for a in n.args:
                for x in (a if isinstance(a, (list, tuple)) else [a]):
                    if isinstance(x, torch.fx.Node) and x in qname and qname[x] not in flat:
                        flat.append(qname[x])
            node = {"name": n.name, "op": op, "inputs": flat or [qname[a] for a in qargs], "attrs": attrs,
                    "module": module}
        else:
            continue
        if node["op"] == "reshape":
            node["attrs"] = {"shape": list(first[n].shape)}
        golden[n] = node
        qname[n] = node["name"]
        order.append(node)
    if len({g["name"] for g in order}) != len(order):
        raise AssertionError("golden node names are not unique")
    out_arg = out_node.args[0]
    if not _is_dequantize(out_arg):
        raise NotImplementedError("the graph's output is not a dequantize")
    output = qname[out_arg.args[0]]
    # Weights as this flow holds them.
    weights = {}
    for node in order:
        mod = node.get("module")
        if mod is None or mod in weights:
            continue
        m = gm.get_submodule(mod)
        if reference:
            weights[mod] = _ref_weight(m, decomposed, pin_weights)
        else:
            weights[mod] = _weight_record(m.weight(), pin=pin_weights)
    runs = []
    for rec, y in recs:
        vals = {}
        for fx_node, node in golden.items():
            v = rec.values[fx_node]
            if _is_quantize(fx_node) and decomposed:
                scale, zp = float(fx_node.args[1]), int(fx_node.args[2])
                qmin, qmax = int(fx_node.args[3]), int(fx_node.args[4])
                ir = v
            else:
                scale, zp, qmin, qmax = float(v.q_scale()), int(v.q_zero_point()), 0, 255
                ir = v.int_repr()
            codes = ir.contiguous().numpy().astype(np.uint8)
            entry = {"scale": scale, "zero_point": zp, "quant_min": qmin, "quant_max": qmax,
                     "memory_format": _memory_format(v), "int_repr": ztensor(codes), "_codes": codes}
            if reference and node["op"] != "quantize":
                f = rec.values[node["_src"]].detach().contiguous().numpy().astype(np.float32)
                entry["_pre"] = f
                if node["op"] in ("conv2d", "linear"):
                    entry["pre_quant"] = _pre_quant_delta(gm, node, rec, fx_node, f)
                elif node["op"] in PINNED_FLOAT_OPS:
                    entry["pre_quant"] = {"shape": list(f.shape),
                                          "sha256": hashlib.sha256(f.astype("<f4").tobytes()).hexdigest()}
                    del entry["_pre"]
                else:
                    entry["pre_quant"] = ztensor(f)
            vals[node["name"]] = entry
        runs.append({"values": vals, "output": ztensor(y.detach().contiguous().numpy().astype(np.float32))})
    nodes = [{k: v for k, v in node.items() if not k.startswith("_")} for node in order]
    for node in nodes:
        if node["attrs"] is None:
            node.pop("attrs")
        if node["module"] is None:
            node.pop("module")
    return {"graph": gm.code, "nodes": nodes, "output": output, "weights": weights, "runs": runs}


def _delta_from(flows, name, base_name):
    """Store `name`'s codes (and pre-quantize floats) as differences from `base_name`'s values of
    the same node position and run, where the ops and shapes agree: most values are equal."""
    fl, base = flows[name], flows[base_name]
    if [n["op"] for n in fl["nodes"]] != [n["op"] for n in base["nodes"]]:
        return
    for run, brun in zip(fl["runs"], base["runs"]):
        for node, bnode in zip(fl["nodes"], base["nodes"]):
            e, b = run["values"][node["name"]], brun["values"][bnode["name"]]
            ref = {"flow": base_name, "node": bnode["name"]}
            if e["_codes"].shape == b["_codes"].shape and e["_codes"].size > COMPACT_OVER:
                d = (e["_codes"].astype(np.int16) - b["_codes"]).astype(np.uint8)
                e["int_repr"] = {"shape": list(e["_codes"].shape), "delta_from": ref,
                                 "z": base64.b64encode(zlib.compress(d.tobytes(), 9)).decode("ascii")}
            if "_pre" in e and "_pre" in b and e["_pre"].shape == b["_pre"].shape and e["_pre"].size > COMPACT_OVER:
                enc = delta_encode(e["_pre"], b["_pre"])
                own = e.get("pre_quant", {})
                # Keep the difference from the reference evaluation where it is the smaller one
                # (values whose inputs differ between the flows, e.g. under reduce_range).
                if "delta" in own and len(own["delta"]) <= len(enc["delta"]):
                    continue
                e["pre_quant"] = {"shape": enc["shape"], "delta_from": ref, "delta": enc["delta"],
                                  "sha256": enc["sha256"]}


def _share_weights(flows, base_name="convert_fx"):
    """A flow's weight record identical to `base_name`'s for the same module becomes a reference."""
    base = flows[base_name]["weights"]
    for name, fl in flows.items():
        if name == base_name:
            continue
        for mod, w in fl["weights"].items():
            if base.get(mod) == w:
                fl["weights"][mod] = {"same_as": base_name}


GRAPH_Z_OVER = 4096


def _compress_graph_code(flows):
    """Long `gm.code` texts are stored as base64 of their zlib stream (`graph_z`)."""
    for fl in flows.values():
        if len(fl["graph"]) > GRAPH_Z_OVER:
            fl["graph_z"] = base64.b64encode(zlib.compress(fl.pop("graph").encode("utf-8"), 9)).decode("ascii")


def _strip(flows):
    for fl in flows.values():
        for run in fl["runs"]:
            for e in run["values"].values():
                e.pop("_codes", None)
                e.pop("_pre", None)


def _pre_quant_delta(gm, node, rec, q_fx, f):
    """The delta encoding of a conv / linear node's pre-quantize floats, against the reference
    evaluation on the node's dequantized input and the module's dequantized weight."""
    m = gm.get_submodule(node["module"])
    c = m[0] if isinstance(m, torch.nn.Sequential) else m
    call = next(n for n in node["_chain"] if n.op == "call_module")
    # the module call's input: the dequantized input
    x = rec.values[call.args[0]].detach().contiguous().numpy().astype(np.float32)
    w = c.get_weight().detach().contiguous().numpy().astype(np.float32)
    b = None if c.bias is None else c.bias.detach().numpy().astype(np.float32)
    relu = node["attrs"]["relu"]
    if node["op"] == "conv2d":
        r = reference_conv(x, w, b, c.stride, c.padding, c.dilation, c.groups, relu)
    else:
        r = reference_linear(x, w, b, relu)
    return delta_encode(f, r)


def weighted_params(prepared):
    """Float parameters of every weighted module of the prepared model (what convert quantizes),
    by the path the converted graphs use (a fused module's path, not its inner conv's)."""
    mods = dict(prepared.named_modules())
    params = {}
    for name, m in mods.items():
        if not name:
            continue
        if isinstance(m, torch.nn.Sequential) and len(m) and isinstance(m[0], (torch.nn.Conv2d, torch.nn.Linear)):
            c = m[0]
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            parent = mods.get(name.rsplit(".", 1)[0]) if "." in name else None
            if isinstance(parent, torch.nn.Sequential) and len(parent) and parent[0] is m:
                continue
            c = m
        else:
            continue
        params[name] = {"weight": ztensor(c.weight.detach().numpy().astype(np.float32)),
                        "bias": None if c.bias is None else ztensor(c.bias.detach().numpy().astype(np.float32))}
    return params


def graph_case(model, engine, mode, calib, tests, pin_weights=False, mapping=None, timings=None):
    """Quantize `model` (PTQ: calibrate on `calib`; QAT: training-mode forwards on `calib`),
    convert with the three flows and record every flow's graph on `tests`. `mapping`: the
    QConfigMapping to prepare with (default: the engine's default PTQ / QAT mapping); its global
    qconfig is the case's `qconfig`. `timings`: a dict that receives the seconds spent in prepare,
    calibrate, each convert flow and its recording."""
    import time

    clock = time.perf_counter()

    def lap(what):
        nonlocal clock
        now = time.perf_counter()
        if timings is not None:
            timings[what] = timings.get(what, 0.0) + now - clock
        clock = now

    torch.backends.quantized.engine = engine
    if mode == "ptq":
        mapping = mapping if mapping is not None else get_default_qconfig_mapping(engine)
        prepared = prepare_fx(model.eval(), mapping, (calib[0],))
    else:
        mapping = mapping if mapping is not None else get_default_qat_qconfig_mapping(engine)
        prepared = prepare_qat_fx(model.train(), mapping, (calib[0],))
    lap("prepare")
    qconfig = mapping.global_qconfig
    with torch.no_grad():
        for x in calib:
            prepared(x)
    lap("calibrate")
    params = weighted_params(prepared)
    flows = {}
    for name, fn in FLOWS:
        gm = fn(copy.deepcopy(prepared))
        gm.eval()
        lap(name)
        flows[name] = record_flow(name, gm, tests, pin_weights)
        lap("record")
    # The decomposed flow's values from the reference flow's, the reference flow's codes from
    # convert_fx's (decoded in that order).
    _delta_from(flows, "_convert_to_reference_decomposed_fx", "convert_to_reference_fx")
    _delta_from(flows, "convert_to_reference_fx", "convert_fx")
    _strip(flows)
    _share_weights(flows)
    _compress_graph_code(flows)
    return {"engine": engine, "mode": mode,
            "qconfig": {"activation": describe_partial(qconfig.activation),
                        "weight": describe_partial(qconfig.weight)},
            "params": params, "inputs": [ztensor(t.numpy().astype(np.float32)) for t in tests],
            "flows": flows}


# ---------------------------------------------------------------------------------------------
# torchvision's quantizable models with generated parameters

# name -> (constructor keyword arguments, input height/width). shufflenet_v2 runs at 64x64: at
# 32x32 its last conv is 1x1 and convert_fx's quantized mean raises on fbgemm / x86 / onednn.
MODELS = {
    "resnet18": ({}, 32),
    "resnet50": ({}, 32),
    "mobilenet_v2": ({}, 32),
    "mobilenet_v3_large": ({}, 32),
    "shufflenet_v2_x1_0": ({}, 64),
    "googlenet": ({"aux_logits": False, "init_weights": False}, 32),
    "inception_v3": ({"aux_logits": False, "init_weights": False}, 75),
}


def _stream(case_id, path, what):
    return int.from_bytes(hashlib.sha256(f"{case_id}/{path}/{what}".encode()).digest()[:8], "big")


def _draw(seed, case_id, path, what, shape, dist, a, b):
    """Generated values and their golden description (rng.py; re-derived by qparity)."""
    from rng import Rng

    stream = _stream(case_id, path, what)
    n = int(np.prod(shape))
    r = Rng(seed, stream)
    v = r.normal(a, b, n) if dist == "normal" else r.uniform(a, b, n)
    desc = {"shape": list(shape), "prng": {"seed": seed, "stream": stream, "dist": dist, "a": a, "b": b}}
    return torch.from_numpy(np.asarray(v, dtype=np.float64).astype(np.float32).reshape(shape)), desc


def build_model(name, seed, case_id):
    """The float model with every conv / linear weight and bias and every BatchNorm drawn by the
    generator (He-uniform weights; BatchNorm statistics and affine parameters away from the
    identity, so folding is not a no-op). Returns the model and the descriptions by
    (module path, parameter name)."""
    import torchvision.models.quantization as qm

    kw, hw = MODELS[name]
    model = getattr(qm, name)(weights=None, quantize=False, **kw)
    desc = {}
    with torch.no_grad():
        for path, m in model.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = float(np.sqrt(6.0 / fan_in))
                w, d = _draw(seed, case_id, path, "weight", tuple(m.weight.shape), "uniform", -bound, bound)
                m.weight.copy_(w)
                desc[(path, "weight")] = d
                if m.bias is not None:
                    b, d = _draw(seed, case_id, path, "bias", tuple(m.bias.shape), "uniform", -0.1, 0.1)
                    m.bias.copy_(b)
                    desc[(path, "bias")] = d
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                for what, dist, a, b in [("running_mean", "normal", 0.0, 0.1), ("running_var", "uniform", 0.5, 1.5),
                                         ("weight", "uniform", 0.5, 1.5), ("bias", "normal", 0.0, 0.1)]:
                    t, d = _draw(seed, case_id, path, what, (c,), dist, a, b)
                    getattr(m, what).copy_(t)
                    desc[(path, what)] = d
    return model, desc, hw


def _conv_bn_pairs(model):
    """The float model's conv -> BatchNorm2d pairs FX fuses (conv module path -> bn module path)."""
    gm = torch.fx.symbolic_trace(model)
    pairs = {}
    mods = dict(gm.named_modules())
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods.get(n.target), torch.nn.BatchNorm2d):
            src = n.args[0]
            if src.op == "call_module" and isinstance(mods.get(src.target), torch.nn.Conv2d) and len(src.users) == 1:
                pairs[src.target] = n.target
    return pairs


def _inputs(seed, case_id, hw, n, mult=1.0):
    from rng import Rng

    r = Rng(seed, _stream(case_id, "input", str(n)))
    x = np.asarray(r.normal(0.0, 1.0, 3 * hw * hw), dtype=np.float64) * mult
    return torch.from_numpy(x.astype(np.float32).reshape(1, 3, hw, hw))


def model_graph_case(name, engine, mode, seed, case_id):
    """A torchvision model as a graph case: generated parameters (recorded as their generator
    descriptions; QAT records the BatchNorm statistics its training-mode forwards moved), two
    calibration batches (PTQ) or training-mode forwards (QAT), one test input 1.5x wider than
    calibration. Weights are pinned by SHA-256."""
    model, desc, hw = build_model(name, seed, case_id)
    pairs = _conv_bn_pairs(model)
    bns = dict(model.named_modules())
    calib = [_inputs(seed, case_id, hw, i) for i in range(2)]
    if mode == "qat":
        # Training-mode BatchNorm needs more than one value per channel, also where the spatial
        # size reaches 1×1: QAT calibrates on one batch of both inputs.
        calib = [torch.cat(calib)]
        # Dropout is active in those forwards: seed torch's generator from the case, so that a
        # capture is reproducible (the layers after a dropout observe what it let through).
        torch.manual_seed(_stream(case_id, "torch", "manual_seed") >> 1)
    tests = [_inputs(seed, case_id, hw, 9, mult=1.5)]
    body = graph_case(model, engine, mode, calib, tests, pin_weights=True)
    # Parameters: the float model's conv / linear weights (generated) and the BatchNorm folded
    # into each conv; the prepared model's module paths are the convs' paths.
    params = {}
    prepared_paths = set(body["params"])
    for (path, what), d in desc.items():
        if what != "weight" or path not in prepared_paths:
            continue
        entry = {"weight": d, "bias": desc.get((path, "bias"))}
        if path in pairs:
            bn_path = pairs[path]
            bn = bns[bn_path]
            entry["bn"] = {"eps": float(bn.eps)}
            for what2 in ("running_mean", "running_var", "weight", "bias"):
                if mode == "qat" and what2.startswith("running"):
                    entry["bn"][what2] = ztensor(getattr(bn, what2).detach().numpy().astype(np.float32))
                else:
                    entry["bn"][what2] = desc[(bn_path, what2)]
        else:
            entry["bn"] = None
        params[path] = entry
    missing = prepared_paths - set(params)
    if missing:
        raise AssertionError(f"weighted modules without generated parameters: {sorted(missing)}")
    body["params"] = params
    return body
