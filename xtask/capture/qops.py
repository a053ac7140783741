"""Cases of ops on quantized tensors (kind `primitive`, args `QOpArgs` in golden/README.md): one
PyTorch op on quantized inputs under one quantized engine, PyTorch's output recorded.

Each builder gets the case's Rng, the round number (which data flavour to exercise) and the
engine, and returns (args, expected, tags). QOPS lists (op name, builder); the op names are the
Rust registry's (`qparity::golden::PrimOp`), which `cargo xtask golden` passes in and checks.
"""

import numpy as np
import torch

from common import tensor
from qop_calls import QOP_CALLS

ENGINES = ["fbgemm", "x86", "qnnpack", "onednn"]
# Channel counts around the kernels' vector widths (8, 16, 32, 64 lanes).
CHANNELS = [1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65]


def qscale(rng):
    """An f32-exact activation scale between about 2^-10 and 2^-1."""
    m = int(rng.integers(1, 1 << 12)) | 1
    return float(np.ldexp(m, int(rng.integers(-22, -12))))


def qshape(rng, max_elems=4096):
    """A 4-D NCHW shape with a channel count near a vector width."""
    while True:
        c = int(CHANNELS[int(rng.integers(0, len(CHANNELS)))])
        n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
        if n * c * h * w <= max_elems:
            return [n, c, h, w]


def qinput(rng, rnd, shape=None):
    """A quantized quint8 input: (torch tensor, record, tags). Flavours by round: uniform codes,
    a narrow band around the zero point, saturated codes; channels-last on odd rounds."""
    shape = shape or qshape(rng)
    scale, zp = qscale(rng), int(rng.integers(0, 256))
    n = int(np.prod(shape))
    flavour = ["uniform", "band", "saturated"][rnd % 3]
    if flavour == "uniform":
        codes = rng.integers(0, 256, size=n)
    elif flavour == "band":
        codes = np.clip(zp + rng.integers(-8, 9, size=n), 0, 255)
    else:
        codes = rng.integers(0, 2, size=n) * 255
    codes = np.asarray(codes, dtype=np.uint8).reshape(shape)
    x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes), scale, zp)
    channels_last = rnd % 2 == 1 and len(shape) == 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rec = {"int_repr": tensor(x.int_repr().contiguous()), "scale": scale, "zero_point": zp,
           "memory_format": "channels_last" if channels_last else "contiguous"}
    return x, rec, [flavour, "channels_last" if channels_last else "contiguous"]


def _result(engine, inputs, params, y):
    args = {"engine": engine, "inputs": inputs, "params": params,
            "output_scale": float(y.q_scale()), "output_zero_point": int(y.q_zero_point())}
    return args, {"int_repr": tensor(y.int_repr().contiguous())}


def relu6(rng, rnd, engine):
    x, rec, tags = qinput(rng, rnd)
    y = QOP_CALLS["relu6"]([x], None)
    args, expected = _result(engine, [rec], None, y)
    return args, expected, tags


def hardtanh(rng, rnd, engine):
    x, rec, tags = qinput(rng, rnd)
    # Bounds on the quantization grid's ties half of the time (quantize_val rounds them).
    s = rec["scale"]
    lo = float(np.float32((int(rng.integers(-40, 0)) + (0.5 if rnd % 2 else 0.0)) * s))
    hi = float(np.float32((int(rng.integers(1, 40)) + (0.5 if rnd % 2 else 0.0)) * s))
    params = {"min_val": lo, "max_val": hi}
    y = QOP_CALLS["hardtanh"]([x], params)
    args, expected = _result(engine, [rec], params, y)
    return args, expected, tags + (["tie_bounds"] if rnd % 2 else [])


def relu(rng, rnd, engine):
    x, rec, tags = qinput(rng, rnd)
    args, expected = _result(engine, [rec], None, QOP_CALLS["relu"]([x], None))
    return args, expected, tags


QOPS = [
    ("relu6", relu6),
    ("hardtanh", hardtanh),
    ("relu", relu),
]
