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
    x, rec, layout = qtensor(codes, shape, scale, zp, rnd % 2 == 1)
    return x, rec, [flavour, layout]


def qtensor(codes, shape, scale, zp, channels_last):
    """A quint8 tensor of these codes (logical order) and its record; channels-last if asked and
    4-D. Returns (tensor, record, layout tag)."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(shape)
    x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes), scale, zp)
    channels_last = channels_last and len(shape) == 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layout = "channels_last" if channels_last else "contiguous"
    rec = {"int_repr": tensor(x.int_repr().contiguous()), "scale": scale, "zero_point": zp,
           "memory_format": layout}
    return x, rec, layout


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


# Activations with transcendental functions (sigmoid, tanh, elu). Their vector body (SLEEF), scalar
# tail (glibc) and QNNPACK table (glibc, f32) differ in the last bit of the function's value, which
# changes the quantized output only next to a rounding boundary, for about 1 input in 10^5. The
# tables below list input qparams "scale bits:zero point" (elu: also alpha and output qparams)
# that put code 128 on such a point where two paths disagree; they were found offline with
# qparity's model of the functions (equal to SLEEF's and glibc's on all 2^32 inputs), so which
# path PyTorch takes at a tie decides the recorded output.
SIGMOID_TIES = [
    "3cb2f095:98", "3ddc2596:119", "3c7b8eea:108", "3d48591c:95", "3d83c90e:117", "3d156266:86",
    "3e59c3e0:120", "3d08a492:99", "3c00ce7b:163", "3d14c648:164", "3d65a318:96", "3d2dfc8b:90",
    "3b062d85:170", "3df25a57:112", "3b8f5285:162", "3d5d23b6:119", "3caa00d0:86", "3e5252d6:123",
    "3cce780d:154", "3d1d3951:120", "3dc1a22d:99", "3fa17b3e:129", "3ea8ecd8:119", "3cdf2111:96",
    "3f98eb7b:127", "3e5f7b58:130", "3d03c90e:106", "3c390c4d:137", "3d34eead:117", "3d9182e6:123",
    "3d32878a:158", "3d08a492:99", "3dba4227:118", "3db53fa4:142", "3e40df4a:122", "3dc63212:114",
    "3dba9bc2:91", "3d283f7a:155", "3c8b0383:81", "3d1223c6:164", "3dbbe4da:142", "3c1d88ff:170",
    "3db47971:108", "3ca40a3b:159", "3c9847ac:120", "3d8087fd:115", "3ed0dcfb:126", "3df8dfdb:114",
]

TANH_TIES = [
    "3cfdb7ea:91", "3c8087fe:154", "3dc42fda:107", "3c667841:157", "3dc223fa:133", "3d07edc3:146",
    "3bb90c4e:119", "3cff621c:153", "3d40df4d:140", "3a06c105:90", "3c9443ff:175", "3c40884b:170",
    "3f0df590:129", "3d1243a8:151", "3d2b94bc:142", "3b631d39:86", "3a124de8:163", "3e14d864:133",
    "3d1fb6d5:160", "3d284d19:110", "3e329008:135", "3c01dec1:91", "3ccfa6f2:104", "3c750a8d:161",
    "3b6f944c:170", "3d5e9741:99", "3d275f0f:112", "3da008cc:109", "3aa1036d:93", "3a41c72a:91",
    "3c79f0ad:82", "3bfa7dfd:84", "3c8608da:82", "3cc1cc57:105", "3b844d23:170", "3c7c9344:139",
    "3bd02dd8:120", "3b8c91c9:107", "3d13c5de:90", "3e0a2917:120", "3d767821:152", "3d1c3e06:96",
    "3bde8346:91", "3cc4327e:87", "3b801c34:115", "3daa601b:120", "3ac0023d:120", "3ce849b4:162",
]


def _f32_from_hex(h):
    return float(np.array([int(h, 16)], dtype=np.uint32).view(np.float32)[0])


def act_input(rng, rnd, ties):
    """A quantized input by round: on rounds 0, 1 (mod 4) a 'tie' input, whose qparams come from
    `ties` (code 128 then sits on a rounding boundary where the paths disagree) and whose codes
    are 128 for about half the elements, so ties fall in the vector body and in the scalar tail;
    on the other rounds `qinput`'s flavours. Channels-last on odd rounds. Returns the tensor, its
    record, tags and the tie entry's remaining fields (elu: alpha and output qparams)."""
    if rnd % 4 >= 2:
        return qinput(rng, rnd) + ([],)
    shape = qshape(rng)
    n = int(np.prod(shape))
    fields = ties[int(rng.integers(0, len(ties)))].split(":")
    scale, zp = _f32_from_hex(fields[0]), int(fields[1])
    codes = np.where(rng.integers(0, 2, size=n) == 1, 128, rng.integers(0, 256, size=n))
    x, rec, layout = qtensor(codes, shape, scale, zp, rnd % 2 == 1)
    return x, rec, ["tie", layout], fields[2:]


def sigmoid(rng, rnd, engine):
    x, rec, tags, _ = act_input(rng, rnd, SIGMOID_TIES)
    args, expected = _result(engine, [rec], None, QOP_CALLS["sigmoid"]([x], None))
    return args, expected, tags


def tanh(rng, rnd, engine):
    x, rec, tags, _ = act_input(rng, rnd, TANH_TIES)
    args, expected = _result(engine, [rec], None, QOP_CALLS["tanh"]([x], None))
    return args, expected, tags


QOPS = [
    ("relu6", relu6),
    ("hardtanh", hardtanh),
    ("relu", relu),
    ("sigmoid", sigmoid),
    ("tanh", tanh),
]
