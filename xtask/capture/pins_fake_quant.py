"""Pins of fake quantization (part of the `pins` suite, xtask/capture/pins.py): R13 of
docs/NUMERICS.md, `fake_quantize_per_tensor_affine` / `fake_quantize_per_channel_affine` with
integer zero points, their output and the mask of the `_cachemask` variants (ATen
`QuantizedOpKernels.cpp` `_fake_quantize_tensor_helper`,
`_fake_quant_per_channel_cachemask_cpu_helper`).

- R13-fake-quantize-mask-rounded: the mask is taken on the rounded, unclamped value,
  `qmin ≤ zp + nearbyint(f32(x · f32(1/s))) ≤ qmax`. Alternative: the float range
  `f32((qmin − zp) · s) ≤ x ≤ f32((qmax − zp) · s)`. Inputs lie less than half a step outside
  the range, where the value rounds back onto `qmin` or `qmax`.
- R13-fake-quantize-mask-ties-even: that rounding is to nearest even (`nearbyint`), alternative:
  half away from zero (`round`). Inputs are exact ties half a step outside the range next to an
  even step count, where only the mask can tell the two apart (the output clamps either way).
- R13-per-tensor-clamp-before-int64: the per-tensor kernel clamps the f32 value with
  `fmin(fmax(qf, qmin), qmax)` before its int64 conversion, so +inf and values beyond 2^63 steps
  give `qmax`. Alternative: the per-channel kernel's order (int64 conversion first: `INT64_MIN`,
  so `qmin`).
- R13-per-channel-int64-before-clamp: the per-channel kernel converts to int64 first, so those
  inputs give `qmin`. Alternative: the per-tensor kernel's order (`qmax`).

Each case records `output` and `mask` (from the `_cachemask` op, whose output equals the plain
op's). The search emulates rule and alternative with numpy float32 scalars; PyTorch decides.
"""

import numpy as np
import torch

from common import half_away, tensor

F = np.float32
INT64_MIN = -(2**63)
RANGES = [(0, 255), (-128, 127), (0, 127), (-127, 127), (0, 15), (-8, 8)]
SPECIALS = [np.inf, 1e30, 3.4e38, 2.0**70, np.nan, -np.inf, -1e30]


def _qf(x, s, zp, away=False):
    """f32(zp + round(f32(x · f32(1/s)))): nearbyint (RNE), or with away, half away from zero."""
    with np.errstate(all="ignore"):
        p = F(F(x) * (F(1.0) / F(s)))
        r = F(half_away(p)) if away and np.isfinite(p) else F(np.rint(p))
        return F(F(zp) + r)


def _per_tensor(x, s, zp, qmin, qmax, away=False):
    """(output, mask): fmin(fmax(qf, qmin), qmax) before the int64 conversion (NaN → qmin)."""
    qf = _qf(x, s, zp, away)
    q = qmin if np.isnan(qf) else int(min(max(float(qf), qmin), qmax))
    return F(F(q - zp) * F(s)), bool(F(qmin) <= qf <= F(qmax))


def _to_i64(qf):
    return INT64_MIN if not np.isfinite(qf) or abs(float(qf)) >= 2.0**63 else int(qf)


def _per_channel(x, s, zp, qmin, qmax, away=False):
    """(output, mask): int64 conversion first (INT64_MIN for NaN, ±inf, beyond ±2^63), then the
    clamp, and (q − zp) · s in double."""
    q = _to_i64(_qf(x, s, zp, away))
    return F(float(min(max(q, qmin), qmax) - zp) * float(F(s))), qmin <= q <= qmax


def _float_range_mask(x, s, zp, qmin, qmax):
    return bool(F(F(qmin - zp) * F(s)) <= F(x) <= F(F(qmax - zp) * F(s)))


def _near_edges(rng, s, zp, qmin, qmax, n):
    """n inputs less than half a step outside [qmin, qmax] on which the rounded-value mask is true
    and the float-range mask false."""
    xs = []
    while len(xs) < n:
        u = float(rng.uniform(0.02, 0.48))
        x = F((qmax - zp + u) * float(s)) if len(xs) % 2 == 0 else F((qmin - zp - u) * float(s))
        if _per_tensor(x, s, zp, qmin, qmax)[1] and not _float_range_mask(x, s, zp, qmin, qmax):
            xs.append(x)
    return xs


def _edge_ties(s, zp, qmin, qmax):
    """Exact ties half a step outside the range, next to an even step count (so nearbyint stays
    inside and half away from zero leaves): at most one per side."""
    xs = []
    if (qmax - zp) % 2 == 0:
        xs.append(F((qmax - zp + 0.5) * float(s)))
    if (qmin - zp) % 2 == 0:
        xs.append(F((qmin - zp - 0.5) * float(s)))
    return xs


def _specials(rng, n):
    """n inputs of SPECIALS, +inf and a huge positive value among them."""
    rest = [SPECIALS[int(i)] for i in rng.integers(0, len(SPECIALS), size=max(0, n - 2))]
    return [F(v) for v in [np.inf, 2.0**70] + rest]


def _pow2_scale(rng):
    return float(2.0 ** -int(rng.integers(1, 9)))


def _run(per_channel, x, scales, zps, axis, qmin, qmax):
    xt = torch.from_numpy(x.copy())
    if per_channel:
        st, zt = torch.from_numpy(F(scales)), torch.from_numpy(np.array(zps, dtype=np.int32))
        out, mask = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(xt, st, zt, axis, qmin, qmax)
        args = {"input": tensor(xt), "scales": tensor(st), "zero_points": tensor(zt), "axis": axis,
                "quant_min": qmin, "quant_max": qmax}
        op = "fake_quantize_per_channel_affine"
    else:
        out, mask = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(
            xt, float(scales[0]), int(zps[0]), qmin, qmax)
        args = {"input": tensor(xt), "scale": float(scales[0]), "zero_point": int(zps[0]),
                "quant_min": qmin, "quant_max": qmax}
        op = "fake_quantize_per_tensor_affine"
    return op, args, {"output": tensor(out), "mask": tensor(mask)}, out.numpy(), mask.numpy()


def _same(a, g):
    """Whether an emulated (output, mask) equals PyTorch's (any NaN equals any NaN)."""
    return (a[0] == g[0] or (np.isnan(a[0]) and np.isnan(g[0]))) and a[1] == g[1]


def _case(rng, k, per_channel, draw, rule, alt, pow2=False):
    """A case: one row of inputs per channel (a single row per tensor) from
    draw(rng, s, zp, qmin, qmax), run by PyTorch; the summary counts the elements whose
    (output, mask) equals rule's and alt's."""
    qmin, qmax = RANGES[k % len(RANGES)]
    c = int(rng.integers(2, 5)) if per_channel else 1
    while True:
        scales = [_pow2_scale(rng) if pow2 else float(F(rng.uniform(0.002, 0.5))) for _ in range(c)]
        zps = [int(rng.integers(qmin, qmax + 1)) for _ in range(c)]
        rows = [draw(rng, scales[i], zps[i], qmin, qmax) for i in range(c)]
        if all(rows):
            break
    n = max(len(r) for r in rows)
    rows = [(r * n)[:n] for r in rows]
    x = np.array(rows, dtype=F) if per_channel else np.array(rows[0], dtype=F)
    op, args, expected, out, mask = _run(per_channel, x, scales, zps, 0, qmin, qmax)
    out, mask = out.reshape(c, n), mask.reshape(c, n)
    ours = theirs = 0
    for i in range(c):
        for j, v in enumerate(rows[i]):
            g = (F(out[i, j]), bool(mask[i, j]))
            ours += _same(rule(v, scales[i], zps[i], qmin, qmax), g)
            theirs += _same(alt(v, scales[i], zps[i], qmin, qmax), g)
    return op, args, expected, (int(ours), int(theirs), c * n)


def _kernel(per_channel):
    return _per_channel if per_channel else _per_tensor


def mask_rounded_case(rng, tag, k):
    per_channel = k % 2 == 1
    kernel = _kernel(per_channel)

    def alt(x, s, zp, qmin, qmax):
        return kernel(x, s, zp, qmin, qmax)[0], _float_range_mask(x, s, zp, qmin, qmax)

    def draw(rng, s, zp, qmin, qmax):
        return _near_edges(rng, s, zp, qmin, qmax, int(rng.integers(6, 13)))

    return _case(rng, k, per_channel, draw, kernel, alt)


def mask_ties_case(rng, tag, k):
    per_channel = k % 2 == 1
    kernel = _kernel(per_channel)

    def alt(x, s, zp, qmin, qmax):
        return kernel(x, s, zp, qmin, qmax, away=True)

    def draw(rng, s, zp, qmin, qmax):
        return _edge_ties(s, zp, qmin, qmax)

    return _case(rng, k, per_channel, draw, kernel, alt, pow2=True)


def _draw_specials(rng, s, zp, qmin, qmax):
    return _specials(rng, int(rng.integers(4, 9)))


def per_tensor_clamp_case(rng, tag, k):
    return _case(rng, k, False, _draw_specials, _per_tensor, _per_channel)


def per_channel_clamp_case(rng, tag, k):
    return _case(rng, k, True, _draw_specials, _per_channel, _per_tensor)


# (tag, builder(rng, tag, k) -> (op, args, expected, (rule matches, alternative matches, n)))
FAKE_QUANT_RULES = [
    ("R13-fake-quantize-mask-rounded", mask_rounded_case),
    ("R13-fake-quantize-mask-ties-even", mask_ties_case),
    ("R13-per-tensor-clamp-before-int64", per_tensor_clamp_case),
    ("R13-per-channel-int64-before-clamp", per_channel_clamp_case),
]
