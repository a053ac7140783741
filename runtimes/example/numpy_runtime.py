"""A minimal qparity runtime in numpy (docs/RUNTIMES.md): exact int32 accumulation, the int32
bias, requantization f32(acc + bias) * f32(s_x * w_s / s_y), round half to even, clamp."""
import json, sys
import numpy as np

def run(r):
    x, w, o = r["input"], r["weight"], r["output"]
    xq = np.array(x["data"], np.int64).reshape(x["shape"]) - x["zero_point"]
    wq = np.array(w["data"], np.int64).reshape(w["shape"])
    oc = w["shape"][0]
    wq -= np.array(w["zero_points"], np.int64).reshape((-1,) + (1,) * (wq.ndim - 1))
    if r["op"] == "linear":
        acc = xq.reshape(-1, wq.shape[1]) @ wq.T                       # [M, OC]
    else:
        (sh, sw), (ph, pw), (dh, dw), g = r["stride"], r["padding"], r["dilation"], r["groups"]
        n, c, h, wd = xq.shape
        _, cg, kh, kw = wq.shape
        xp = np.pad(xq, ((0, 0), (0, 0), (ph, ph), (pw, pw)))          # zero point already removed
        oh, ow = o["shape"][2], o["shape"][3]
        acc = np.zeros((n, oc, oh, ow), np.int64)
        for ky in range(kh):
            for kx in range(kw):
                win = xp[:, :, ky * dh: ky * dh + sh * oh: sh, kx * dw: kx * dw + sw * ow: sw]
                for gi in range(g):
                    ocs = slice(gi * (oc // g), (gi + 1) * (oc // g))
                    acc[:, ocs] += np.einsum("nchw,oc->nohw", win[:, gi * cg:(gi + 1) * cg], wq[ocs, :, ky, kx])
        acc = np.moveaxis(acc, 1, -1)                                  # channels last for broadcasting
    acc = acc.astype(np.int32) + np.int32(r["bias_int32"] or 0)
    mult = np.float32(x["scale"]) * np.array(w["scales"], np.float32) / np.float32(o["scale"])
    q = np.rint(acc.astype(np.float32) * mult.astype(np.float32)).astype(np.int64) + o["zero_point"]
    q = np.clip(q, o["zero_point"] if r["relu"] else 0, 255)
    if r["op"] == "conv2d":
        q = np.moveaxis(q, -1, 1)
    return {"id": r["id"], "output": q.reshape(-1).tolist(), "accumulators": (acc - np.int32(r["bias_int32"] or 0)).reshape(-1).tolist() if r["op"] == "linear" else None}

assert json.loads(sys.stdin.readline())["qparity_runtime"] == 1
print(json.dumps({"name": "numpy-example", "version": np.__version__, "isa": "numpy"}), flush=True)
for line in sys.stdin:
    print(json.dumps(run(json.loads(line))), flush=True)
