"""onnxruntime as a qparity runtime (JSON-lines protocol, docs/RUNTIMES.md).

Each stage becomes a one-node ONNX model run by onnxruntime's CPU provider:
  --form qop (default): QLinearConv with the stage's int32 bias; a linear layer [.., K] runs as
      a 1x1 QLinearConv over [M, K, 1, 1] (QLinearMatMul has no bias input);
  --form qdq: DequantizeLinear -> Conv / Gemm -> QuantizeLinear with the int32 bias dequantized
      at scale s_x * w_s, left to onnxruntime's graph optimizer (which fuses such groups into
      QLinearConv / QGemm);
a fused ReLU becomes Max(y, zp_y) on the u8 output (PyTorch clamps below at zp_y).

Run: python ort_runtime.py [--form qop|qdq]   (pinned: onnxruntime==1.31.1, onnx==1.23.2)
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def isa():
    from numpy._core._multiarray_umath import __cpu_features__ as f

    if f.get("AVX512VNNI"):
        return "avx512vnni"
    if f.get("AVX512BW"):
        return "avx512"
    return "avx2" if f.get("AVX2") else "sse"


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def make_model(nodes, name, x_shape, y_shape, inits):
    """A model with one u8 input x and one u8 output y (opset 21)."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, y_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def build(req, form):
    x, w, o = req["input"], req["weight"], req["output"]
    per_channel = w["axis"] is not None
    wshape = w["shape"]
    linear = req["op"] == "linear"
    if linear:
        k = wshape[1]
        m = int(np.prod(x["shape"][:-1]))
        x_shape, w_shape, y_shape = [m, k, 1, 1], [wshape[0], k, 1, 1], [m, wshape[0], 1, 1]
        attrs = dict(kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    else:
        x_shape, w_shape, y_shape = x["shape"], wshape, o["shape"]
        ph, pw = req["padding"]
        attrs = dict(kernel_shape=wshape[2:], strides=req["stride"], pads=[ph, pw, ph, pw],
                     dilations=req["dilation"], group=req["groups"])
    oc = wshape[0]
    wdata = np.array(w["data"], dtype=np.int8).reshape(w_shape)
    ws = np.array(w["scales"], dtype=np.float32)
    wz = np.array(w["zero_points"], dtype=np.int8)
    if not per_channel:
        ws, wz = ws.reshape(()), wz.reshape(())
    xs = np.float32(x["scale"])
    bias = req["bias_int32"]
    inits = [
        const("x_scale", xs), const("x_zp", np.uint8(x["zero_point"])),
        const("w", wdata), const("w_scale", ws), const("w_zp", wz),
        const("y_scale", np.float32(o["scale"])), const("y_zp", np.uint8(o["zero_point"])),
    ]
    if bias is not None:
        inits.append(const("b", np.array(bias, dtype=np.int32)))
    nodes = []
    if form == "qop":
        ins = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"] + (["b"] if bias is not None else [])
        nodes.append(helper.make_node("QLinearConv", ins, ["y0"], **attrs))
    else:
        nodes += [
            helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["xf"]),
            helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wf"], axis=0),
        ]
        conv_in = ["xf", "wf"]
        if bias is not None:
            bs = (np.float32(xs) * np.array(w["scales"], dtype=np.float32)).astype(np.float32)
            inits += [const("b_scale", bs if per_channel else bs.reshape(())),
                      const("b_zp", np.zeros(bs.shape if per_channel else (), dtype=np.int32))]
            nodes.append(helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zp"], ["bf"], axis=0))
            conv_in.append("bf")
        nodes += [
            helper.make_node("Conv", conv_in, ["yf"], **attrs),
            helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zp"], ["y0"]),
        ]
    last = "y0"
    if req["relu"]:
        nodes.append(helper.make_node("Max", ["y0", "y_zp"], ["y1"]))
        last = "y1"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    model = make_model(nodes, "stage", x_shape, y_shape, inits)
    onnx.checker.check_model(model)
    return model, np.array(x["data"], dtype=np.uint8).reshape(x_shape)


def main():
    form = "qdq" if "--form" in sys.argv and sys.argv[sys.argv.index("--form") + 1] == "qdq" else "qop"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    out = sys.stdout
    hello = json.loads(sys.stdin.readline())
    assert hello.get("qparity_runtime") == 1, hello
    out.write(json.dumps({"name": "onnxruntime-" + form, "version": ort.__version__, "isa": isa()}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            model, x = build(req, form)
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            (y,) = sess.run(None, {"x": x})
            if req["op"] == "linear":
                y = y.reshape(-1, y.shape[1])  # [M, N, 1, 1] -> [M, N]
            ans = {"id": req["id"], "output": y.reshape(-1).tolist()}
        except Exception as e:  # reported per stage; the check lists it
            ans = {"id": req["id"], "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(ans) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
