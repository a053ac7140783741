"""Primitive cases: quantize/dequantize (native and quantized_decomposed), fake quantization,
fused_moving_avg_obs_fake_quant and the observers. Each builder gets a seeded numpy Generator and
the round number (which data flavour to exercise) and returns (args, expected, tags)."""

import numpy as np
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
from torch.ao.quantization import observer as O

from common import dtype_name, qscheme_name, tensor, describe_observer

F32 = np.float32
QRANGE = {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-(2**31), 2**31 - 1),
          torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def f32(a):
    return np.asarray(a, dtype=F32)


def nice_scale(rng):
    """An f32-exact scale m * 2^e with a short mantissa, so that (k + 0.5) * scale is exact."""
    m = int(rng.integers(1, 1024)) | 1
    e = int(rng.integers(-14, -4))
    return float(np.ldexp(m, e))


def any_scale(rng, lo=1e-4, hi=1.0):
    """A random double scale, spread over binades (usually not f32-exact: PyTorch rounds it to f32
    itself)."""
    return rng.log_uniform(lo, hi)


def ties(rng, scale, zp, qmin, qmax, n):
    """x = (k + 0.5) * scale, exact in f32, with k + zp spanning the clamp range and beyond."""
    k = rng.integers(qmin - zp - 3, qmax - zp + 3, size=n)
    x = (k.astype(np.float64) + 0.5) * scale
    out = f32(x)
    assert np.all(out.astype(np.float64) == x), "tie values must be exact in f32"
    return out


def limits(scale, zp, qmin, qmax):
    """Values at the clamp limits, and one f32 ulp either side."""
    s = F32(scale)
    vals = []
    for q in (qmin, qmax):
        v = F32((q - zp)) * s
        vals += [v, np.nextafter(v, F32(np.inf)), np.nextafter(v, F32(-np.inf))]
    return f32(vals)


def subnormals(rng, n):
    bits = rng.integers(1, 0x007FFFFF, size=n).astype(np.uint32)
    sign = (rng.integers(0, 2, size=n).astype(np.uint32) << 31)
    return (bits | sign).view(F32)


FLAVOURS = ["normal", "tie", "limits", "subnormal", "huge", "tiny", "all_equal", "all_negative"]


# The `specials` suite (golden.py) sets this to a fraction: data() then replaces about that share
# of every tensor it draws with values at the edges of f32 and of the integer conversions.
MIX_SPECIALS = 0.0
SPECIALS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3.4e38, -3.4e38, 2.0**70, -2.0**70, 2.0**62, -2.0**62,
            3e9, -3e9, 1e-45, -0.0, 0.0]


def data(rng, flavour, shape, scale=None, zp=0, qmin=0, qmax=255):
    """Draw f32 data of a flavour; the tags say what it exercises."""
    x = _data(rng, flavour, shape, scale, zp, qmin, qmax)
    if MIX_SPECIALS:
        flat = x.reshape(-1)
        hit = rng.random(flat.size) < MIX_SPECIALS
        flat[hit] = f32(SPECIALS)[rng.integers(0, len(SPECIALS), size=flat.size)][hit]
    return x


def _data(rng, flavour, shape, scale=None, zp=0, qmin=0, qmax=255):
    n = int(np.prod(shape))
    if flavour == "normal":
        x = f32(rng.standard_normal(n) * rng.uniform(0.1, 4.0) + rng.uniform(-1, 1))
    elif flavour == "tie":
        x = ties(rng, scale, zp, qmin, qmax, n)
    elif flavour == "limits":
        lim = limits(scale, zp, qmin, qmax)
        x = f32(rng.standard_normal(n) * (qmax - qmin) * 0.3 * F32(scale))
        x[: min(n, lim.size)] = lim[: min(n, lim.size)]
        x = x[rng.permutation(n)]
    elif flavour == "subnormal":
        x = subnormals(rng, n)
        x[::3] = 0.0
        if n > 1:
            x[1] = -0.0
    elif flavour == "huge":
        # |x| in [2^66, 2^123): ~1e20 .. 1e37, scaled by exact powers of two
        x = f32(rng.uniform(-1, 1, n) * np.ldexp(1.0, rng.integers(66, 123, size=n)))
    elif flavour == "tiny":
        c = rng.uniform(-1, 1)
        x = f32(c + rng.uniform(-1e-7, 1e-7, n))
    elif flavour == "all_equal":
        x = np.full(n, F32(rng.uniform(-3, 3)), dtype=F32)
    elif flavour == "all_negative":
        x = f32(-rng.uniform(0.01, 5.0, n) - rng.uniform(0, 2))
    else:
        raise ValueError(flavour)
    return x.reshape(shape)


def pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def small_shape(rng, max_elems=256, min_elems=8):
    nd = int(rng.integers(1, 4))
    while True:
        shape = [int(rng.integers(1, 12)) for _ in range(nd)]
        if min_elems <= np.prod(shape) <= max_elems:
            return shape


# ---------------------------------------------------------------------------------------------
# native quantize / dequantize

def quantize_per_tensor(rng, rnd):
    variants = ["tie", "nan_inf_high_zp", "nan_inf_low_zp", "limits", "subnormal", "normal",
                "huge", "tie_qint32"]
    v = variants[rnd % len(variants)]
    dtype = pick(rng, [torch.quint8, torch.qint8])
    tags = [v]
    shape = small_shape(rng)
    if v.startswith("nan_inf"):
        dtype = pick(rng, [torch.quint8, torch.quint8, torch.qint8])
        scale = pick(rng, [0.01, any_scale(rng)])
        if dtype == torch.quint8:
            zp = int(rng.integers(128, 256)) if v == "nan_inf_high_zp" else int(rng.integers(0, 128))
        else:
            zp = int(rng.integers(-128, 128))
        x = data(rng, "normal", shape).reshape(-1)
        specials = f32([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e7, -3e7, -0.0])
        k = min(x.size, specials.size)
        x[:k] = specials[:k]
        if x.size < specials.size:
            x = np.concatenate([x, specials[k:]])
        x = x[rng.permutation(x.size)]
        tags += ["nan", "inf"]
    else:
        if v == "tie_qint32":
            dtype = torch.qint32
            v = "tie"
        qmin, qmax = QRANGE[dtype]
        scale = nice_scale(rng) if v in ("tie", "limits") else any_scale(rng)
        if dtype == torch.qint32:
            zp = int(rng.integers(-1000, 1000))
            qmin, qmax = -3000, 3000  # keep the tie data small; the clamp range stays int32
        else:
            zp = int(rng.integers(qmin, qmax + 1))
        x = data(rng, v, shape, scale, zp, qmin, qmax).reshape(-1)
    xt = torch.from_numpy(x.copy())
    q = torch.quantize_per_tensor(xt, scale, zp, dtype)
    args = {"input": tensor(xt), "scale": scale, "zero_point": zp, "dtype": dtype_name(dtype)}
    return args, {"int_repr": tensor(q.int_repr())}, tags


def _per_channel_params(rng, dtype, c, nice=True):
    qmin, qmax = QRANGE[dtype]
    scales = np.array([nice_scale(rng) if nice else any_scale(rng) for _ in range(c)], dtype=np.float64)
    if dtype == torch.qint32:
        zps = rng.integers(-100, 100, size=c)
    else:
        zps = rng.integers(qmin, qmax + 1, size=c)
    return scales, zps.astype(np.int64)


def quantize_per_channel(rng, rnd):
    variants = ["tie", "normal", "limits"]
    v = variants[rnd % len(variants)]
    dtype = pick(rng, [torch.quint8, torch.qint8, torch.qint8, torch.qint32])
    shape = small_shape(rng)
    if len(shape) == 1:
        shape = [shape[0], int(rng.integers(1, 9))]
    axis = int(rng.integers(0, len(shape)))
    c = shape[axis]
    scales, zps = _per_channel_params(rng, dtype, c, nice=(v != "normal"))
    qmin, qmax = QRANGE[dtype]
    if dtype == torch.qint32:
        qmin, qmax = -300, 300
    x = np.empty(shape, dtype=F32)
    xm = np.moveaxis(x, axis, 0)
    for i in range(c):
        xm[i] = data(rng, v if v != "normal" else "normal", xm[i].shape, scales[i], int(zps[i]), qmin, qmax)
    xt = torch.from_numpy(x.copy())
    q = torch.quantize_per_channel(xt, torch.from_numpy(scales), torch.from_numpy(zps), axis, dtype)
    args = {"input": tensor(xt), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "dtype": dtype_name(dtype)}
    return args, {"int_repr": tensor(q.int_repr())}, [v]


_INT_OF = {torch.quint8: np.uint8, torch.qint8: np.int8, torch.qint32: np.int32}


def dequantize_per_tensor(rng, rnd):
    dtype = [torch.quint8, torch.qint8, torch.qint32][rnd % 3]
    qmin, qmax = QRANGE[dtype]
    shape = small_shape(rng)
    if dtype == torch.qint32:
        iv = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)
        zp = int(rng.integers(-1000, 1000))
    else:
        iv = rng.integers(qmin, qmax + 1, size=shape).astype(_INT_OF[dtype])
        zp = int(rng.integers(qmin, qmax + 1))
    scale = any_scale(rng, 1e-6, 10.0)
    it = torch.from_numpy(iv.copy())
    q = torch._make_per_tensor_quantized_tensor(it, scale, zp)
    assert q.dtype == dtype
    args = {"int_repr": tensor(it), "scale": scale, "zero_point": zp, "dtype": dtype_name(dtype)}
    return args, {"output": tensor(q.dequantize())}, ["full_range"]


def dequantize_per_channel(rng, rnd):
    dtype = [torch.quint8, torch.qint8, torch.qint32][rnd % 3]
    qmin, qmax = QRANGE[dtype]
    shape = small_shape(rng)
    if len(shape) == 1:
        shape = [shape[0], int(rng.integers(1, 9))]
    axis = int(rng.integers(0, len(shape)))
    c = shape[axis]
    scales, zps = _per_channel_params(rng, dtype, c, nice=False)
    if dtype == torch.qint32:
        iv = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)
    else:
        iv = rng.integers(qmin, qmax + 1, size=shape).astype(_INT_OF[dtype])
    it = torch.from_numpy(iv.copy())
    q = torch._make_per_channel_quantized_tensor(it, torch.from_numpy(scales), torch.from_numpy(zps), axis)
    assert q.dtype == dtype
    args = {"int_repr": tensor(it), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "dtype": dtype_name(dtype)}
    return args, {"output": tensor(q.dequantize())}, ["full_range"]


# ---------------------------------------------------------------------------------------------
# quantized_decomposed

DEC_RANGES = [(torch.uint8, 0, 255), (torch.uint8, 0, 127), (torch.int8, -128, 127), (torch.int8, -64, 63),
              (torch.int8, -127, 127), (torch.int32, -(2**31), 2**31 - 1)]


def _dec_range(rng, rnd):
    dt, qmin, qmax = DEC_RANGES[rnd % len(DEC_RANGES)]
    tags = ["reduce_range"] if (qmin, qmax) in ((0, 127), (-64, 63)) else []
    return dt, qmin, qmax, tags


def decomposed_quantize_per_tensor(rng, rnd):
    dt, qmin, qmax, tags = _dec_range(rng, rnd)
    flav = ["tie", "limits", "normal", "subnormal"][(rnd // len(DEC_RANGES)) % 4]
    shape = small_shape(rng)
    f32_exact_scale = flav in ("tie", "limits") or rng.integers(0, 2) == 0
    scale = nice_scale(rng) if f32_exact_scale else any_scale(rng)
    tags += [flav] + ([] if f32_exact_scale else ["f64_scale"])
    if dt == torch.int32:
        zp = int(rng.integers(-1000, 1000))
        dq = (-3000, 3000)
    else:
        zp = int(rng.integers(qmin, qmax + 1))
        dq = (qmin, qmax)
    x = data(rng, flav, shape, scale, zp, *dq)
    xt = torch.from_numpy(x.copy())
    out = torch.ops.quantized_decomposed.quantize_per_tensor(xt, scale, zp, qmin, qmax, dt)
    args = {"input": tensor(xt), "scale": scale, "zero_point": zp, "quant_min": qmin, "quant_max": qmax,
            "dtype": dtype_name(dt)}
    return args, {"output": tensor(out)}, tags


def decomposed_dequantize_per_tensor(rng, rnd):
    dt, qmin, qmax, tags = _dec_range(rng, rnd)
    shape = small_shape(rng)
    npdt = {torch.uint8: np.uint8, torch.int8: np.int8, torch.int32: np.int32}[dt]
    if dt == torch.int32:
        iv = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)
        zp = int(rng.integers(-1000, 1000))
    else:
        iv = rng.integers(qmin, qmax + 1, size=shape).astype(npdt)
        zp = int(rng.integers(qmin, qmax + 1))
    scale = any_scale(rng, 1e-6, 10.0)
    it = torch.from_numpy(iv.copy())
    out = torch.ops.quantized_decomposed.dequantize_per_tensor(it, scale, zp, qmin, qmax, dt)
    args = {"input": tensor(it), "scale": scale, "zero_point": zp, "quant_min": qmin, "quant_max": qmax,
            "dtype": dtype_name(dt)}
    return args, {"output": tensor(out)}, tags


def _dec_pc_setup(rng, rnd):
    dt, qmin, qmax, tags = _dec_range(rng, rnd)
    if dt == torch.int32:
        dt, qmin, qmax, tags = torch.int8, -128, 127, []
    shape = small_shape(rng)
    if len(shape) == 1:
        shape = [shape[0], int(rng.integers(1, 9))]
    axis = int(rng.integers(0, len(shape)))
    c = shape[axis]
    use_f64 = (rnd // len(DEC_RANGES)) % 2 == 1
    nice = rng.integers(0, 2) == 0
    s = np.array([nice_scale(rng) if nice else any_scale(rng) for _ in range(c)], dtype=np.float64)
    scales = s if use_f64 else f32(s)
    zps = rng.integers(qmin, qmax + 1, size=c).astype(np.int64)
    tags += ["f64_scales" if use_f64 else "f32_scales"]
    return dt, qmin, qmax, tags, shape, axis, c, scales, zps, nice


def decomposed_quantize_per_channel(rng, rnd):
    dt, qmin, qmax, tags, shape, axis, c, scales, zps, nice = _dec_pc_setup(rng, rnd)
    x = np.empty(shape, dtype=F32)
    xm = np.moveaxis(x, axis, 0)
    flav = "tie" if nice else "normal"
    for i in range(c):
        xm[i] = data(rng, flav, xm[i].shape, float(scales[i]), int(zps[i]), qmin, qmax)
    xt = torch.from_numpy(x.copy())
    out = torch.ops.quantized_decomposed.quantize_per_channel(
        xt, torch.from_numpy(scales.copy()), torch.from_numpy(zps), axis, qmin, qmax, dt)
    args = {"input": tensor(xt), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "quant_min": qmin, "quant_max": qmax, "dtype": dtype_name(dt)}
    return args, {"output": tensor(out)}, tags + [flav]


def decomposed_dequantize_per_channel(rng, rnd):
    dt, qmin, qmax, tags, shape, axis, c, scales, zps, _ = _dec_pc_setup(rng, rnd)
    npdt = {torch.uint8: np.uint8, torch.int8: np.int8}[dt]
    iv = rng.integers(qmin, qmax + 1, size=shape).astype(npdt)
    it = torch.from_numpy(iv.copy())
    out = torch.ops.quantized_decomposed.dequantize_per_channel(
        it, torch.from_numpy(scales.copy()), torch.from_numpy(zps), axis, qmin, qmax, dt)
    args = {"input": tensor(it), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "quant_min": qmin, "quant_max": qmax, "dtype": dtype_name(dt)}
    return args, {"output": tensor(out)}, tags


# ---------------------------------------------------------------------------------------------
# fake quantization

FQ_RANGES = [(0, 255), (0, 127), (-128, 127), (-64, 63), (0, 15), (-127, 127)]


def fake_quantize_per_tensor_affine(rng, rnd):
    qmin, qmax = FQ_RANGES[rnd % len(FQ_RANGES)]
    flav = ["tie", "limits", "normal", "subnormal"][(rnd // len(FQ_RANGES)) % 4]
    shape = small_shape(rng)
    scale = nice_scale(rng) if flav in ("tie", "limits") else any_scale(rng)
    zp = int(rng.integers(qmin, qmax + 1))
    x = data(rng, flav, shape, scale, zp, qmin, qmax)
    xt = torch.from_numpy(x.copy())
    out = torch.fake_quantize_per_tensor_affine(xt, scale, zp, qmin, qmax)
    args = {"input": tensor(xt), "scale": scale, "zero_point": zp, "quant_min": qmin, "quant_max": qmax}
    return args, {"output": tensor(out)}, [flav]


def fake_quantize_per_channel_affine(rng, rnd):
    qmin, qmax = FQ_RANGES[rnd % len(FQ_RANGES)]
    flav = ["tie", "normal", "limits"][(rnd // len(FQ_RANGES)) % 3]
    shape = small_shape(rng)
    if len(shape) == 1:
        shape = [shape[0], int(rng.integers(1, 9))]
    axis = int(rng.integers(0, len(shape)))
    c = shape[axis]
    scales = f32([nice_scale(rng) if flav != "normal" else any_scale(rng) for _ in range(c)])
    zps = rng.integers(qmin, qmax + 1, size=c).astype(np.int32)
    x = np.empty(shape, dtype=F32)
    xm = np.moveaxis(x, axis, 0)
    for i in range(c):
        xm[i] = data(rng, flav, xm[i].shape, float(scales[i]), int(zps[i]), qmin, qmax)
    xt = torch.from_numpy(x.copy())
    out = torch.fake_quantize_per_channel_affine(xt, torch.from_numpy(scales), torch.from_numpy(zps), axis,
                                                 qmin, qmax)
    args = {"input": tensor(xt), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "quant_min": qmin, "quant_max": qmax}
    return args, {"output": tensor(out)}, [flav]


FMA_FLAVOURS = ["normal", "all_equal", "all_negative", "tiny", "normal", "subnormal"]


def fused_initial_state(per_row, c):
    """The buffers fused_moving_avg_obs_fake_quant updates in place, as an untrained QAT module
    holds them (per row: c channels), and their description for the case's `initial`."""
    if per_row:
        rmin = torch.full((c,), float("inf"))
        rmax = torch.full((c,), float("-inf"))
        sc = torch.ones(c)
        zp = torch.zeros(c, dtype=torch.int32)
    else:
        rmin = torch.tensor(float("inf"))
        rmax = torch.tensor(float("-inf"))
        sc = torch.ones(1)
        zp = torch.zeros(1, dtype=torch.int32)
    initial = {"running_min": tensor(rmin), "running_max": tensor(rmax), "scale": tensor(sc),
               "zero_point": tensor(zp)}
    return rmin, rmax, sc, zp, initial


def fused_moving_avg_obs_fake_quant(rng, rnd):
    per_row = rnd % 2 == 1
    symmetric = (rnd // 2) % 2 == 1
    flav = FMA_FLAVOURS[(rnd // 4) % len(FMA_FLAVOURS)]
    if symmetric:
        qmin, qmax = pick(rng, [(-128, 127), (-127, 127), (-64, 63)])
    else:
        qmin, qmax = pick(rng, [(0, 255), (0, 127), (-128, 127)])
    averaging = pick(rng, [0.01, 0.1, 0.5, 1.0])
    fake_quant_on = 0 if (rnd % 7 == 6) else 1
    c = int(rng.integers(1, 9))
    shape = [c, int(rng.integers(1, 17))]
    ch_axis = 0
    nb = int(rng.integers(2, 5))
    batches = []
    for b in range(nb):
        if b == 0 or flav in ("all_equal", "tiny", "subnormal"):
            x = data(rng, flav, shape)
        else:
            x = data(rng, "normal", shape)
        batches.append(torch.from_numpy(x.copy()))
    rmin, rmax, sc, zp, initial = fused_initial_state(per_row, c)
    on = torch.tensor([1], dtype=torch.long)
    fq_on = torch.tensor([fake_quant_on], dtype=torch.long)
    steps = []
    for x in batches:
        out = torch.fused_moving_avg_obs_fake_quant(x, on, fq_on, rmin, rmax, sc, zp, averaging, qmin, qmax,
                                                    ch_axis, per_row, symmetric)
        steps.append({"output": tensor(out), "running_min": tensor(rmin), "running_max": tensor(rmax),
                      "scale": tensor(sc), "zero_point": tensor(zp)})
    args = {"batches": [tensor(b) for b in batches], "averaging_const": averaging, "quant_min": qmin,
            "quant_max": qmax, "ch_axis": ch_axis, "per_row_fake_quant": per_row,
            "symmetric_quant": symmetric, "observer_on": 1, "fake_quant_on": fake_quant_on,
            "initial": initial}
    return args, {"steps": steps}, [flav]


# ---------------------------------------------------------------------------------------------
# observers

OBS_FLAVOURS = ["normal", "all_equal", "all_negative", "tiny", "huge", "subnormal", "normal", "positive"]


def _observer_kwargs(rng, rnd, cls):
    per_channel = cls in (O.PerChannelMinMaxObserver, O.MovingAveragePerChannelMinMaxObserver)
    kw = {}
    dtype = pick(rng, [torch.quint8, torch.qint8])
    kw["dtype"] = dtype
    symmetric = rng.integers(0, 2) == 1
    if per_channel:
        kw["qscheme"] = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        kw["ch_axis"] = int(rng.integers(0, 2))
    else:
        kw["qscheme"] = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    rr_allowed = not (symmetric and dtype == torch.quint8)
    choice = rnd % 4  # 0: defaults, 1: reduce_range, 2: custom range, 3: custom range + eps
    if choice == 1 and rr_allowed:
        kw["reduce_range"] = True
    elif choice in (2, 3):
        if dtype == torch.quint8:
            kw["quant_min"], kw["quant_max"] = pick(rng, [(0, 127), (0, 255), (0, 200), (0, 15)])
        else:
            kw["quant_min"], kw["quant_max"] = pick(rng, [(-127, 127), (-64, 63), (-128, 127), (-8, 7)])
        if rng.integers(0, 3) == 0 and rr_allowed:
            kw["reduce_range"] = True
    if choice == 3 or rng.integers(0, 4) == 0:
        kw["eps"] = pick(rng, [2.0**-12, 1e-3, 1e-10])
    if cls in (O.MovingAverageMinMaxObserver, O.MovingAveragePerChannelMinMaxObserver):
        if rng.integers(0, 2) == 0:
            kw["averaging_constant"] = pick(rng, [0.1, 0.5, 1.0, 0.01])
    if cls is O.HistogramObserver and rng.integers(0, 2) == 0:
        kw["bins"] = pick(rng, [64, 256, 1000, 2048])
    return kw


def observer(cls):
    def build(rng, rnd):
        kw = _observer_kwargs(rng, rnd, cls)
        obs = cls(**kw)
        flav = OBS_FLAVOURS[(rnd // 4) % len(OBS_FLAVOURS)]
        per_channel = "ch_axis" in kw
        if per_channel:
            shape = [int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 5))]
        else:
            shape = small_shape(rng, 200) if cls is not O.HistogramObserver else [int(rng.integers(8, 65))]
        nb = int(rng.integers(2, 5))
        batches = []
        tags = [flav]
        for b in range(nb):
            f = flav if (b == 0 or flav in ("all_equal", "tiny", "subnormal", "all_negative")) else "normal"
            if f == "positive":
                x = np.abs(data(rng, "normal", shape)) + F32(0.01)
            else:
                x = data(rng, f, shape)
            if cls is O.HistogramObserver and f == "huge":
                x = x * F32(1e-25)  # histc needs a finite (max - min)
            batches.append(torch.from_numpy(np.ascontiguousarray(x, dtype=F32)))
        if cls is O.HistogramObserver and rnd % 5 == 4:
            # +-inf elements are dropped by HistogramObserver.forward
            b = batches[-1].reshape(-1).clone()
            if b.numel() >= 3:
                b[0] = float("inf")
                b[2] = float("-inf")
                batches[-1] = b.reshape(batches[-1].shape)
                tags.append("inf")
        for x in batches:
            obs(x)
        scale, zp = obs.calculate_qparams()
        expected = {"min_val": tensor(obs.min_val), "max_val": tensor(obs.max_val), "scale": tensor(scale),
                    "zero_point": tensor(zp)}
        if cls is O.HistogramObserver:
            expected["histogram"] = tensor(obs.histogram)
        args = {"observer": describe_observer(cls, kw, obs), "batches": [tensor(b) for b in batches]}
        return args, expected, tags
    return build


# (op name in the file, id stem, builder)
PRIMITIVES = [
    ("quantize_per_tensor", "quantize_per_tensor", quantize_per_tensor),
    ("quantize_per_channel", "quantize_per_channel", quantize_per_channel),
    ("dequantize_per_tensor", "dequantize_per_tensor", dequantize_per_tensor),
    ("dequantize_per_channel", "dequantize_per_channel", dequantize_per_channel),
    ("decomposed_quantize_per_tensor", "decomposed_quantize_per_tensor", decomposed_quantize_per_tensor),
    ("decomposed_dequantize_per_tensor", "decomposed_dequantize_per_tensor", decomposed_dequantize_per_tensor),
    ("decomposed_quantize_per_channel", "decomposed_quantize_per_channel", decomposed_quantize_per_channel),
    ("decomposed_dequantize_per_channel", "decomposed_dequantize_per_channel", decomposed_dequantize_per_channel),
    ("fake_quantize_per_tensor_affine", "fake_quantize_per_tensor_affine", fake_quantize_per_tensor_affine),
    ("fake_quantize_per_channel_affine", "fake_quantize_per_channel_affine", fake_quantize_per_channel_affine),
    ("fused_moving_avg_obs_fake_quant", "fused_moving_avg_obs_fake_quant", fused_moving_avg_obs_fake_quant),
    ("observer", "observer_minmax", observer(O.MinMaxObserver)),
    ("observer", "observer_moving_average_minmax", observer(O.MovingAverageMinMaxObserver)),
    ("observer", "observer_per_channel_minmax", observer(O.PerChannelMinMaxObserver)),
    ("observer", "observer_moving_average_per_channel_minmax", observer(O.MovingAveragePerChannelMinMaxObserver)),
    ("observer", "observer_histogram", observer(O.HistogramObserver)),
]

# Slots per round of the plan (some primitives twice: they have more data flavours).
PRIM_SLOTS = [0, 0, 1, 2, 3, 4, 4, 5, 6, 6, 7, 8, 9, 10, 10, 11, 12, 13, 14, 15, 15]
