"""Cases of ops on quantized tensors (kind `primitive`, args `QOpArgs` in golden/README.md): one
PyTorch op on quantized inputs under one quantized engine, PyTorch's output recorded.

Each builder gets the case's Rng, the round number (which data flavour to exercise) and the
engine, and returns (args, expected, tags). QOPS lists (op name, builder); the op names are the
Rust registry's (`qparity::golden::PrimOp`), which `cargo xtask golden` passes in and checks.
"""

import numpy as np
import torch

from common import tensor
from qop_calls import QOP_CALLS, channels_last as to_channels_last

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
        x = to_channels_last(x)
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


def _pool_out(i, k, s, p, d, ceil):
    """Pool.h: pooling_output_shape."""
    o = (i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (o - 1) * s >= i + p:
        o -= 1
    return o


def pool_input(rng, rnd):
    """A pool input: rounds 4 and 5 (of every 6) are N×C×1×1, NCHW-strided (whose padded pools
    come back scrambled from ATen's NHWC kernels) and channels-last-strided."""
    if rnd % 6 in (4, 5):
        c = int(CHANNELS[int(rng.integers(0, len(CHANNELS)))])
        return qinput(rng, rnd, [int(rng.integers(1, 3)), c, 1, 1])
    return qinput(rng, rnd)


def pool_window(rng, rnd, engine, shape, dilation):
    """Kernel, stride, padding (p ≤ k/2), dilation and ceil_mode giving a non-empty output; a
    1×1 input gets kernel 2, stride 1, padding 1 (a 2×2 output of one pixel)."""
    if shape[2] == shape[3] == 1:
        return [2, 2], [1, 1], [1, 1], [1, 1], False
    # Every third round: kernel ≥ 3 with the largest padding (and dilation 2 where allowed),
    # where padding taps matter most (QNNPACK's clamped max taps, count_include_pad).
    wide = rnd % 3 == 0
    for attempt in range(1000):
        wide = wide and attempt < 20  # small inputs may not fit a wide window
        k = [int(rng.integers(3 if wide else 1, 5)), int(rng.integers(3 if wide else 1, 5))]
        s = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        if wide:
            p = [k[0] // 2, k[1] // 2]
        else:
            p = [int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1))]
        if not dilation:
            d = [1, 1]
        elif wide:
            d = [2, 2]
        else:
            d = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
        ceil = bool(rng.integers(0, 2)) and not (wide and engine == "qnnpack")
        if engine == "qnnpack" and not ceil and k == [1, 1]:
            continue  # QNNPACK rejects 1x1 pooling
        if all(_pool_out(shape[2 + i], k[i], s[i], p[i], d[i], ceil) >= 1
               and p[i] <= ((k[i] - 1) * d[i] + 1) // 2 for i in range(2)):
            return k, s, p, d, ceil
    raise RuntimeError(f"no pool window fits {shape}")


def max_pool2d(rng, rnd, engine):
    x, rec, tags = pool_input(rng, rnd)
    k, s, p, d, ceil = pool_window(rng, rnd, engine, rec["int_repr"]["shape"], True)
    params = {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil}
    args, expected = _result(engine, [rec], params, QOP_CALLS["max_pool2d"]([x], params))
    return args, expected, tags + (["ceil_mode"] if ceil else [])


def avg_pool2d(rng, rnd, engine):
    x, rec, tags = pool_input(rng, rnd)
    k, s, p, _, ceil = pool_window(rng, rnd, engine, rec["int_repr"]["shape"], False)
    cip = bool(rng.integers(0, 2))
    override = int(rng.integers(1, 20)) if rng.integers(0, 4) == 0 else None
    params = {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil,
              "count_include_pad": cip, "divisor_override": override}
    args, expected = _result(engine, [rec], params, QOP_CALLS["avg_pool2d"]([x], params))
    extra = (["ceil_mode"] if ceil else []) + ([] if cip else ["exclude_pad"])
    return args, expected, tags + extra + (["divisor_override"] if override else [])


def adaptive_avg_pool2d(rng, rnd, engine):
    x, rec, tags = pool_input(rng, rnd)
    h, w = rec["int_repr"]["shape"][2:]
    # 1×1 (the models' heads; rounds 0, 1 of every 6: both layouts), divisors of the input
    # (QNNPACK's path unless the identity), any size up to the input's, larger than the input
    # (round 4: an NCHW-strided N×C×1×1 input, scrambled by ATen's NHWC kernel).
    kind = {0: "global", 1: "global", 4: "larger"}.get(
        rnd % 6, ["global", "divisor", "any", "larger"][int(rng.integers(0, 4))])
    if kind == "global":
        size = [1, 1]
    elif kind == "divisor":
        size = [int(rng.choice([d for d in range(1, n + 1) if n % d == 0])) for n in (h, w)]
    elif kind == "any":
        size = [int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))]
    else:
        size = [int(rng.integers(1, h + 3)), int(rng.integers(w + 1, w + 3))]
    params = {"output_size": size}
    y = QOP_CALLS["adaptive_avg_pool2d"]([x], params)
    args, expected = _result(engine, [rec], params, y)
    return args, expected, tags + [kind]


def mean(rng, rnd, engine):
    x, rec, tags = pool_input(rng, rnd)
    _, c, h, w = rec["int_repr"]["shape"]
    # [2, 3] mostly (QNNPACK's spelling); other spellings take ATen's paths under qnnpack too.
    dim = [[2, 3], [2, 3], [-1, -2], [3, 2]][int(rng.integers(0, 4))]
    keepdim = bool(rng.integers(0, 2))
    # PyTorch raises for channels-last N×C×1×1 (or C = 1) inputs without keepdim on ATen's
    # inner-dim kernel (qparity predicts the error): keep those cases runnable.
    both_ways = c == 1 or h * w == 1
    qnnpack = engine == "qnnpack" and dim == [2, 3]
    if rec["memory_format"] == "channels_last" and both_ways and not qnnpack:
        keepdim = True
    params = {"dim": dim, "keepdim": keepdim}
    args, expected = _result(engine, [rec], params, QOP_CALLS["mean"]([x], params))
    return args, expected, tags + (["keepdim"] if keepdim else [])


def batch_norm2d(rng, rnd, engine):
    """Eval-mode quantized BatchNorm2d (relu on odd rounds of every 4) with its own output qparams
    (an f32-exact or an arbitrary double scale). Rounds 2, 3 of every 4: near-tie channels — mean
    0, a bias putting alpha·x + beta within a few ulps of k + 0.5 for one planted code x per
    channel (half the pixels), where one FMA and a separate multiply-add round apart."""
    x, rec, tags = qinput(rng, rnd)
    n, c, h, w = rec["int_repr"]["shape"]
    sc, zp = rec["scale"], rec["zero_point"]
    f32 = np.float32
    span = 255 * sc
    weight = f32(rng.normal(1, 0.5, c))
    bias = f32(rng.normal(0, 0.3, c) * span)
    mean = f32(rng.normal(0, 0.3, c) * span + (128 - zp) * sc)
    var = f32([rng.log_uniform(0.1, 10.0) * (span / 4) ** 2 for _ in range(c)])
    eps = [1e-5, 1e-3, 0.1][int(rng.integers(0, 3))]
    out_s = qscale(rng) if rng.integers(0, 2) else float(rng.log_uniform(1e-3, 3.0))
    out_zp = int(rng.integers(0, 256))
    near_tie = rnd % 4 in (2, 3)
    if near_tie:
        mean[:] = 0
        # compute_fused_params' alpha (Normalization.cpp), in the same roundings.
        inv = f32(1.0 / np.sqrt(f32(var + f32(eps))).astype(np.float64))
        alpha = f32(f32(inv * weight).astype(np.float64) * (sc / out_s))
        xs = rng.integers(-zp, 256 - zp, size=c)
        t = alpha.astype(np.float64) * xs
        target = (np.floor(t) + 0.5 - t) * (1 + rng.integers(-4, 5, size=c) * 2.0**-24)
        bias = f32(target * out_s)
        codes = x.int_repr().contiguous().numpy().copy()
        plant = rng.random(codes.shape) < 0.5
        codes = np.where(plant, (xs + zp).reshape(1, c, 1, 1), codes).astype(np.uint8)
        x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes), sc, zp)
        if rec["memory_format"] == "channels_last":
            x = to_channels_last(x)
        rec["int_repr"] = tensor(x.int_repr().contiguous())
    relu = rnd % 2 == 1
    params = {"weight": [float(v) for v in weight], "bias": [float(v) for v in bias],
              "running_mean": [float(v) for v in mean], "running_var": [float(v) for v in var],
              "eps": eps, "relu": relu, "scale": out_s, "zero_point": out_zp}
    args, expected = _result(engine, [rec], params, QOP_CALLS["batch_norm2d"]([x], params))
    return args, expected, tags + (["near_tie"] if near_tie else []) + (["relu"] if relu else [])


def flatten(rng, rnd, engine):
    x, rec, tags = pool_input(rng, rnd)
    start, end = [(1, -1), (1, -1), (0, -1), (1, 2), (2, 3), (-3, -2)][int(rng.integers(0, 6))]
    params = {"start_dim": start, "end_dim": end}
    args, expected = _result(engine, [rec], params, QOP_CALLS["flatten"]([x], params))
    return args, expected, tags


QOPS = [
    ("relu6", relu6),
    ("hardtanh", hardtanh),
    ("relu", relu),
    ("max_pool2d", max_pool2d),
    ("avg_pool2d", avg_pool2d),
    ("adaptive_avg_pool2d", adaptive_avg_pool2d),
    ("mean", mean),
    ("batch_norm2d", batch_norm2d),
    ("flatten", flatten),
]
