"""Golden stages as ONNX models, checked and run in onnxruntime.

Input: the JSON lines of `qparity runtime-export -o stages.jsonl [GOLDEN PATHS]`. For every stage
this writes to OUTDIR:
  <id>.qop.onnx      QLinearConv (linear as a 1x1 QLinearConv) with the stage's int32 bias
  <id>.qdq.onnx      DequantizeLinear -> Conv -> QuantizeLinear
  <id>.pytorch.onnx  PyTorch's rule in plain ONNX ops (exact-accumulation stages only; ONNX has no
                     int16 pair saturation): ConvInteger, then FBGEMM's float bias term
                     (per-tensor weights: bias * rcp added to f32(acc) in double, then rounded to
                     f32, standing for FBGEMM's FMA) or QNNPACK's int32 bias, the f32 multiplier,
                     Round (half to even), + zp, Clip, Cast to uint8 -- PyTorch's order
  <id>.input.npy, <id>.expected.npy  (4-D, as the models take and give them)
Every model passes onnx.checker (full check); each is run in onnxruntime and the elements equal
to PyTorch's are counted per form and per PyTorch accumulation. Exits 1 if a PyTorch-rule model
differs from PyTorch anywhere outside the pins cases built on FBGEMM's FMA ties.

Run: python export_onnx.py stages.jsonl OUTDIR
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_runtime import build, make_model  # noqa: E402


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def pytorch_rule(req, rule, x_shape, y_shape):
    w = req["weight"]
    o = req["output"]
    oc = w["shape"][0]
    linear = req["op"] == "linear"
    wshape = [oc, w["shape"][1], 1, 1] if linear else w["shape"]
    if linear:
        attrs = dict(kernel_shape=[1, 1])
    else:
        ph, pw = req["padding"]
        attrs = dict(kernel_shape=wshape[2:], strides=req["stride"], pads=[ph, pw, ph, pw],
                     dilations=req["dilation"], group=req["groups"])
    wz = np.array(w["zero_points"], np.int8)
    inits = [
        const("x_zp", np.uint8(req["input"]["zero_point"])),
        const("w", np.array(w["data"], np.int8).reshape(wshape)),
        # onnxruntime's ConvInteger takes one weight zero point: the per-channel ones are equal
        # (checked by the caller).
        const("w_zp", wz.reshape(-1)[:1].reshape(())),
        const("zp", np.float32(o["zero_point"])),
        const("lo", np.float32(o["zero_point"] if req["relu"] else 0)),
        const("hi", np.float32(255)),
    ]
    per_oc = lambda a, dt: np.array(a, dt).reshape(1, -1, 1, 1)  # noqa: E731
    nodes = [helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["acc"], **attrs)]
    if rule["requant"] == "fbgemm":
        mult = rule["multiplier"]
        inits.append(const("mult", per_oc(mult if len(mult) > 1 else mult * oc, np.float32)))
        if rule["bias_rcp"] is not None:
            # FBGEMM's fused bias: fma(bias, rcp, f32(acc)), one rounding; in double the product
            # of two floats is exact and the sum rounds once more (agrees except at a double tie).
            bt = np.array(rule["bias_term"], np.float64) * np.float64(np.float32(rule["bias_rcp"]))
            inits.append(const("bt", per_oc(bt, np.float64)))
            nodes += [
                helper.make_node("Cast", ["acc"], ["accd"], to=TensorProto.DOUBLE),
                helper.make_node("Add", ["accd", "bt"], ["biasedd"]),
                helper.make_node("Cast", ["biasedd"], ["biased"], to=TensorProto.FLOAT),
            ]
        else:
            inits.append(const("bt", per_oc(rule["bias_term"], np.float32)))
            nodes += [
                helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                helper.make_node("Add", ["accf", "bt"], ["biased"]),
            ]
    else:
        inits += [const("bq", per_oc(rule["bias_q"], np.int32)),
                  const("mult", per_oc(rule["scale"], np.float32))]
        nodes += [
            helper.make_node("Add", ["acc", "bq"], ["acci"]),
            helper.make_node("Cast", ["acci"], ["biased"], to=TensorProto.FLOAT),
        ]
    nodes += [
        helper.make_node("Mul", ["biased", "mult"], ["pre"]),
        helper.make_node("Round", ["pre"], ["r"]),
        helper.make_node("Add", ["r", "zp"], ["rz"]),
        helper.make_node("Clip", ["rz", "lo", "hi"], ["c"]),
        helper.make_node("Cast", ["c"], ["y"], to=TensorProto.UINT8),
    ]
    return make_model(nodes, "pytorch_rule", x_shape, y_shape, inits)


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    literal = ort.SessionOptions()
    literal.intra_op_num_threads = 1
    literal.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    counts = {}
    failures = []
    models = 0
    for line in open(src):
        st = json.loads(line)
        forms = {}
        for form in ("qop", "qdq"):
            m, x = build(st, form)
            forms[form] = (m, opts)
        y_shape = [int(d.dim_value) for d in m.graph.output[0].type.tensor_type.shape.dim]
        one_wzp = len(set(st["weight"]["zero_points"])) == 1
        if st["accumulation"] == "exact" and one_wzp:
            forms["pytorch"] = (pytorch_rule(st, st["rule"], list(x.shape), y_shape), literal)
        expected = np.array(st["expected"], np.uint8).reshape(y_shape)
        np.save(os.path.join(out, f"{st['id']}.input.npy"), x)
        np.save(os.path.join(out, f"{st['id']}.expected.npy"), expected)
        for form, (m, so) in forms.items():
            onnx.checker.check_model(m, full_check=True)
            path = os.path.join(out, f"{st['id']}.{form}.onnx")
            onnx.save(m, path)
            models += 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            (y,) = sess.run(None, {"x": x})
            if form == "pytorch" and not st["source"].startswith("pin-"):
                # Outside the FMA-tie pins, PyTorch's rule written in ONNX ops is PyTorch.
                off = int((y.reshape(-1) != expected.reshape(-1)).sum())
                if off:
                    failures.append(f"{st['source']}: {off} elements differ from PyTorch")
            key = (form, st["engine"], st["accumulation"])
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += 1
            c[1] += y.size
            c[2] += int((y.reshape(-1) == expected.reshape(-1)).sum())
    print(f"{models} models written to {out}, every one valid under onnx.checker (full_check)")
    print(f"onnxruntime {ort.__version__}")
    print(f"{'form':8} {'engine':8} {'pytorch acc':11} {'stages':>6} {'elements':>9} {'equal':>9}")
    for (form, eng, acc), (n, tot, eq) in sorted(counts.items()):
        print(f"{form:8} {eng:8} {acc:11} {n:6d} {tot:9d} {eq:9d}")
    for f in failures:
        print("PyTorch-rule model differs:", f)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
