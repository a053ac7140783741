"""Long-running PyTorch worker for `cargo xtask diff-live`.

Protocol: one JSON object per line on stdin, one reply per line on stdout, in order.
First line out is a hello: {"torch": version}. A request is a small quantized::linear case:
  {"id", "engine", "m", "k", "n", "x": hex f32 (big-endian bits), "xs", "xz",
   "w": [int8...], "ws", "wz", "b": hex f32 or null, "ys", "yz"}
Reply: {"id", "xq": [u8...], "y": [u8...]} or {"id", "error": message}.
"""
import json
import struct
import sys

import warnings

import torch

warnings.filterwarnings("ignore", message=".*deprecated.*")

torch.set_num_threads(1)


def f32(h, n):
    return torch.tensor(struct.unpack(">%df" % n, bytes.fromhex(h)), dtype=torch.float32)


def run(r):
    m, k, n = r["m"], r["k"], r["n"]
    torch.backends.quantized.engine = r["engine"]
    x = f32(r["x"], m * k).reshape(m, k)
    xq = torch.quantize_per_tensor(x, r["xs"], r["xz"], torch.quint8)
    w = torch._make_per_tensor_quantized_tensor(
        torch.tensor(r["w"], dtype=torch.int8).reshape(n, k), r["ws"], r["wz"]
    )
    b = f32(r["b"], n) if r["b"] is not None else None
    packed = torch.ops.quantized.linear_prepack(w, b)
    y = torch.ops.quantized.linear(xq, packed, r["ys"], r["yz"])
    return {"id": r["id"], "xq": xq.int_repr().reshape(-1).tolist(), "y": y.int_repr().reshape(-1).tolist()}


def main():
    out = sys.stdout
    out.write(json.dumps({"torch": torch.__version__.split("+")[0]}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            out.write(json.dumps({"id": None, "error": "bad request: %s" % e}) + "\n")
            out.flush()
            continue
        try:
            reply = run(r)
        except Exception as e:  # reported to the Rust side, which fails the case with the message
            reply = {"id": r.get("id"), "error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
