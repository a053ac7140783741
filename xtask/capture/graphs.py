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

from common import describe_partial, dtype_name, qscheme_name, tensor

FORMAT2 = "qparity-golden/2"
FLOWS = [("convert_fx", convert_fx), ("convert_to_reference_fx", convert_to_reference_fx),
         ("_convert_to_reference_decomposed_fx", _convert_to_reference_decomposed_fx)]
# Tensors with more elements than this are stored compactly ("z") instead of as hex / lists.
COMPACT_OVER = 64


def ztensor(a):
    """A tensor object; large ones as "z": base64 of the zlib stream of little-endian bytes."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(a)
    if a.size <= COMPACT_OVER:
        return tensor(a)
    names = {np.float32: ("f32", "<f4"), np.float64: ("f64", "<f8"), np.uint8: ("u8", "u1"),
             np.int8: ("i8", "i1"), np.int32: ("i32", "<i4"), np.int64: ("i64", "<i8")}
    for t, (name, le) in names.items():
        if a.dtype == t:
            raw = a.astype(le).tobytes()
            return {"dtype": name, "shape": list(a.shape),
                    "z": base64.b64encode(zlib.compress(raw, 9)).decode("ascii")}
    raise TypeError(f"unsupported dtype {a.dtype}")


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
    raise NotImplementedError(f"module {cls} ({n.target}) is not mapped to a qparity op")


def _function_op(n):
    name = _target_name(n)
    if name in ("relu", "relu_"):
        return "relu", None
    if name == "relu6":
        return "relu6", None
    if name == "hardtanh":
        return "hardtanh", {"min_val": float(n.args[1]), "max_val": float(n.args[2])}
    if name == "flatten":
        return "flatten", {"start_dim": int(n.args[1]) if len(n.args) > 1 else 0, "end_dim": -1}
    raise NotImplementedError(f"function {name} is not mapped to a qparity op")


def _chain_op(gm, chain):
    """The op of a reference-flow float chain (the nodes between dequantize and quantize)."""
    kinds = []
    for n in chain:
        if n.op == "call_module":
            kinds.append(_module_op(gm, n))
        else:
            op, attrs = _function_op(n)
            kinds.append((op, attrs, None))
    if len(kinds) == 1:
        return kinds[0]
    raise NotImplementedError(f"float chain {[k[0] for k in kinds]} is not mapped to a qparity op")


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
    return _weight_record(w, qscheme=qs, quant_min=qmin, quant_max=qmax, pin=pin)


def record_flow(flow, gm, inputs, pin_weights):
    """The nodes, weights and runs of one converted graph."""
    reference = flow != "convert_fx"
    decomposed = flow == "_convert_to_reference_decomposed_fx"
    graph_nodes = list(gm.graph.nodes)
    placeholder = next(n for n in graph_nodes if n.op == "placeholder")
    out_node = next(n for n in graph_nodes if n.op == "output")
    # Static structure: which fx nodes are golden nodes, with op, attrs, module and inputs.
    golden = {}      # fx node -> golden node dict
    qname = {placeholder: "input"}   # fx node holding a quantized value (or the input) -> name
    order = []
    for n in graph_nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if _is_quantize(n):
            src = n.args[0]
            if src is placeholder:
                node = {"name": n.name, "op": "quantize", "inputs": ["input"], "attrs": None, "module": None}
            else:
                chain, ins, stack = [], [], [src]
                seen = set()
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
                    chain.append(m)
                    stack.extend(a for a in m.all_input_nodes)
                chain.sort(key=graph_nodes.index)
                op, attrs, module = _chain_op(gm, chain)
                ins = sorted(set(ins), key=lambda s: [g["name"] for g in order].index(s) if s != "input" else -1)
                node = {"name": src.name, "op": op, "inputs": ins, "attrs": attrs, "module": module,
                        "_src": src}
            golden[n] = node
            qname[n] = node["name"]
            order.append(node)
        elif _is_dequantize(n):
            continue
        elif not reference:
            # convert_fx: quantized modules and ops on quantized tensors
            qargs = [a for a in n.all_input_nodes if a in qname]
            if not qargs:
                continue
            if n.op == "call_module":
                op, attrs, module = _module_op(gm, n)
            else:
                op, attrs = _function_op(n)
                module = None
            node = {"name": n.name, "op": op, "inputs": [qname[a] for a in qargs], "attrs": attrs,
                    "module": module}
            golden[n] = node
            qname[n] = n.name
            order.append(node)
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
    for x in inputs:
        rec = _Recorder(gm)
        with torch.no_grad():
            y = rec.run(x)
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
            entry = {"scale": scale, "zero_point": zp, "quant_min": qmin, "quant_max": qmax,
                     "memory_format": _memory_format(v), "int_repr": ztensor(ir.contiguous())}
            if reference and node["op"] != "quantize":
                f = rec.values[node["_src"]].detach().contiguous().numpy().astype(np.float32)
                if node["op"] in ("conv2d", "linear"):
                    ins = [rec.values[a] for a in fx_node.args[0].all_input_nodes] if False else None
                    entry["pre_quant"] = _pre_quant_delta(gm, node, rec, fx_node, f)
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


def _pre_quant_delta(gm, node, rec, q_fx, f):
    """The delta encoding of a conv / linear node's pre-quantize floats, against the reference
    evaluation on the node's dequantized input and the module's dequantized weight."""
    m = gm.get_submodule(node["module"])
    c = m[0] if isinstance(m, torch.nn.Sequential) else m
    src = node["_src"]
    # the module call's input: a dequantize node
    call = src if src.op == "call_module" else next(a for a in src.all_input_nodes if a.op == "call_module")
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
    """Float parameters of every weighted module of the prepared model (what convert quantizes)."""
    params = {}
    for name, m in prepared.named_modules():
        c = m[0] if isinstance(m, torch.nn.Sequential) and len(m) and hasattr(m[0], "weight") else m
        if isinstance(c, (torch.nn.Conv2d, torch.nn.Linear)) and name:
            params[name] = {"weight": ztensor(c.weight.detach().numpy().astype(np.float32)),
                            "bias": None if c.bias is None else ztensor(c.bias.detach().numpy().astype(np.float32))}
    return params


def graph_case(model, engine, mode, calib, tests, pin_weights=False):
    """Quantize `model` (PTQ: calibrate on `calib`; QAT: training-mode forwards on `calib`),
    convert with the three flows and record every flow's graph on `tests`."""
    torch.backends.quantized.engine = engine
    if mode == "ptq":
        mapping = get_default_qconfig_mapping(engine)
        prepared = prepare_fx(model.eval(), mapping, (calib[0],))
    else:
        mapping = get_default_qat_qconfig_mapping(engine)
        prepared = prepare_qat_fx(model.train(), mapping, (calib[0],))
    qconfig = mapping.global_qconfig
    with torch.no_grad():
        for x in calib:
            prepared(x)
    params = weighted_params(prepared)
    flows = {}
    for name, fn in FLOWS:
        gm = fn(copy.deepcopy(prepared))
        gm.eval()
        flows[name] = record_flow(name, gm, tests, pin_weights)
    return {"engine": engine, "mode": mode,
            "qconfig": {"activation": describe_partial(qconfig.activation),
                        "weight": describe_partial(qconfig.weight)},
            "params": params, "inputs": [ztensor(t.numpy().astype(np.float32)) for t in tests],
            "flows": flows}
