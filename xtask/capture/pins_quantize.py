"""Pins of the quantize arithmetic (part of the `pins` suite, xtask/capture/pins.py):
`torch.quantize_per_tensor` cases whose inputs sit so close to a rounding tie that one rule of
docs/NUMERICS.md and its nearest alternative give different codes.

- R8 (ATen `quantize_tensor_per_tensor_affine_cpu` stores the double scale in FBGEMM's f32
  `TensorQuantizationParams`; FBGEMM `src/QuantUtilsAvx2.cc` `QuantizeAvx2` multiplies by
  `1.0f / scale`): `q = RNE(f32(x · f32(1 / f32(s)))) + zp`, clamped. Alternative: the reciprocal
  of the double scale, `f32(1 / s)`. Cases draw a double scale whose two reciprocals differ, then
  inputs within a few f32 steps of `(t + 1/2) / inv` where the two products round apart.

- R11 (`torch/ao/quantization/fx/_decomposed.py` `quantize_per_tensor`: `inv_scale = 1.0 / scale`
  on the Python float, then `x * inv_scale` in the f32 op math): `q = RNE(f32(x · f32(1 / s))) +
  zp` with the reciprocal of the double scale. Alternative: R8's `f32(1 / f32(s))`. The same
  search as R8's, the two reciprocals swapped.
- R12, f64 scales (`_decomposed.py` `quantize_per_channel` / `dequantize_per_channel` with a
  float64 `scales` tensor: the arithmetic promotes to double): quantize
  `q = RNE(x · (1 / s)) + zp` in double, alternative: R12's f32-scale arithmetic
  `RNE(f32(x · f32(1 / f32(s))))`; dequantize `f32((q − zp) · s)` in double, alternative
  `f32(f32(q − zp) · f32(s))`. Quantize inputs are walked near `(t + 1/2) · s` until the two round
  apart; dequantize cases draw scales and codes until every channel holds such an element.
- R11 / R12, the int32 clamp (`_decomposed.py`: `torch.clamp(..., quant_min, quant_max).to(dtype)`
  in the op's precision): in f32 (per tensor; per channel with f32 scales) the top `2^31 - 1`
  becomes `2^31`, which x86 converts to INT32_MIN; with float64 scales the clamp is in double.
  Alternative: the other precision. Every other input lies beyond the int32 range's top.

The search emulates both with numpy float32 scalars (every operation rounded to nearest even);
PyTorch then decides.
"""

import numpy as np
import torch

from common import dtype_name, f32_walk, tensor

F = np.float32
WINDOW = 64  # f32 steps searched on each side of a tie
RANGES = [(torch.quint8, 0, 255), (torch.qint8, -128, 127)]


def _q(x, inv, zp, qmin, qmax):
    return int(min(max(int(np.rint(F(F(x) * inv))) + zp, qmin), qmax))


def _tie_inputs(rng, inv, alt, zp, qmin, qmax):
    """8 to 24 f32 inputs near ties `(t + 1/2) / inv` on which reciprocals inv and alt give
    different codes."""
    xs = []
    while len(xs) < int(rng.integers(8, 25)):
        t = int(rng.integers(-30, 30))
        for x in f32_walk((t + 0.5) / float(inv), WINDOW):
            if _q(x, inv, zp, qmin, qmax) != _q(x, alt, zp, qmin, qmax):
                xs.append(F(x))
                break
    return np.array(xs, dtype=np.float32)


def r8_scale_case(rng, tag, k):
    """A quantize_per_tensor case on whose tie inputs R8's f32 scale and the double one differ."""
    dtype, qmin, qmax = RANGES[k % 2]
    while True:
        s = float(rng.uniform(0.002, 0.5))
        inv, alt = F(1.0) / F(s), F(1.0 / s)
        if inv != alt:
            break
    zp = int(rng.integers(qmin + 40, qmax - 40))
    x = _tie_inputs(rng, inv, alt, zp, qmin, qmax)
    xt = torch.from_numpy(x.copy())
    q = torch.quantize_per_tensor(xt, s, zp, dtype).int_repr()
    rule = [_q(v, inv, zp, qmin, qmax) for v in x]
    other = [_q(v, alt, zp, qmin, qmax) for v in x]
    args = {"input": tensor(xt), "scale": s, "zero_point": zp, "dtype": dtype_name(dtype)}
    expected = {"int_repr": tensor(q)}
    got = [int(v) for v in q.numpy()]
    summary = (sum(a == b for a, b in zip(got, rule)), sum(a == b for a, b in zip(got, other)), len(got))
    return "quantize_per_tensor", args, expected, summary


def r11_case(rng, tag, k):
    """A decomposed quantize_per_tensor case on whose tie inputs R11's double reciprocal and R8's
    f32 one differ."""
    dtype, qmin, qmax = [(torch.uint8, 0, 255), (torch.int8, -128, 127)][k % 2]
    while True:
        s = float(rng.uniform(0.002, 0.5))
        inv, alt = F(1.0 / s), F(1.0) / F(s)
        if inv != alt:
            break
    zp = int(rng.integers(qmin + 40, qmax - 40))
    x = _tie_inputs(rng, inv, alt, zp, qmin, qmax)
    xt = torch.from_numpy(x.copy())
    out = torch.ops.quantized_decomposed.quantize_per_tensor(xt, s, zp, qmin, qmax, dtype)
    rule = [_q(v, inv, zp, qmin, qmax) for v in x]
    other = [_q(v, alt, zp, qmin, qmax) for v in x]
    got = [int(v) for v in out.numpy()]
    summary = (sum(a == b for a, b in zip(got, rule)), sum(a == b for a, b in zip(got, other)), len(got))
    args = {"input": tensor(xt), "scale": s, "zero_point": zp, "quant_min": qmin, "quant_max": qmax,
            "dtype": dtype_name(dtype)}
    return "decomposed_quantize_per_tensor", args, {"output": tensor(out)}, summary


def _q64(x, s, zp, qmin, qmax):
    return int(min(max(np.rint(float(x) * (1.0 / s)) + zp, qmin), qmax))


def _f64_scales(rng, c):
    """c double scales that are not f32 values."""
    out = []
    while len(out) < c:
        s = float(rng.uniform(0.002, 0.5))
        if float(F(s)) != s:
            out.append(s)
    return np.array(out, dtype=np.float64)


def r12_quantize_case(rng, tag, k):
    """A decomposed quantize_per_channel case with f64 scales on whose inputs double and f32
    arithmetic give different codes, in every channel."""
    dtype, qmin, qmax = [(torch.uint8, 0, 255), (torch.int8, -128, 127)][k % 2]
    c, n = int(rng.integers(2, 5)), int(rng.integers(4, 9))
    axis = k % 2
    scales = _f64_scales(rng, c)
    zps = rng.integers(qmin + 40, qmax - 40, size=c).astype(np.int64)
    x = np.empty((c, n), dtype=np.float32)  # channels first, moved to `axis` below
    for i in range(c):
        s, zp = float(scales[i]), int(zps[i])
        inv32 = F(1.0) / F(s)
        j = 0
        while j < n:
            t = int(rng.integers(-30, 30))
            for v in f32_walk((t + 0.5) * s, WINDOW):
                if _q64(v, s, zp, qmin, qmax) != _q(v, inv32, zp, qmin, qmax):
                    x[i, j] = v
                    j += 1
                    break
    x = np.ascontiguousarray(np.moveaxis(x, 0, axis))
    xt = torch.from_numpy(x.copy())
    out = torch.ops.quantized_decomposed.quantize_per_channel(
        xt, torch.from_numpy(scales.copy()), torch.from_numpy(zps), axis, qmin, qmax, dtype)
    xm, om = np.moveaxis(x, axis, 0), np.moveaxis(out.numpy(), axis, 0)
    rule = [_q64(xm[i, j], float(scales[i]), int(zps[i]), qmin, qmax) for i in range(c) for j in range(n)]
    other = [_q(xm[i, j], F(1.0) / F(scales[i]), int(zps[i]), qmin, qmax) for i in range(c) for j in range(n)]
    got = [int(om[i, j]) for i in range(c) for j in range(n)]
    summary = (sum(a == b for a, b in zip(got, rule)), sum(a == b for a, b in zip(got, other)), len(got))
    args = {"input": tensor(xt), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "quant_min": qmin, "quant_max": qmax, "dtype": dtype_name(dtype)}
    return "decomposed_quantize_per_channel", args, {"output": tensor(out)}, summary


def r12_dequantize_case(rng, tag, k):
    """A decomposed dequantize_per_channel case with f64 scales whose double and f32 products
    round apart on some element of every channel."""
    dtype, qmin, qmax, npdt = [(torch.uint8, 0, 255, np.uint8), (torch.int8, -128, 127, np.int8)][k % 2]
    c, n = int(rng.integers(2, 5)), int(rng.integers(4, 9))
    axis = k % 2
    rule = lambda q, s, zp: F((int(q) - zp) * s)
    other = lambda q, s, zp: F(F(int(q) - zp) * F(s))
    while True:
        scales = _f64_scales(rng, c)
        zps = rng.integers(qmin, qmax + 1, size=c).astype(np.int64)
        q = rng.integers(qmin, qmax + 1, size=(c, n)).astype(npdt)
        if all(any(rule(q[i, j], scales[i], int(zps[i])) != other(q[i, j], scales[i], int(zps[i]))
                   for j in range(n)) for i in range(c)):
            break
    qa = np.ascontiguousarray(np.moveaxis(q, 0, axis))
    it = torch.from_numpy(qa.copy())
    out = torch.ops.quantized_decomposed.dequantize_per_channel(
        it, torch.from_numpy(scales.copy()), torch.from_numpy(zps), axis, qmin, qmax, dtype)
    om = np.moveaxis(out.numpy(), axis, 0)
    cells = [(i, j) for i in range(c) for j in range(n)]
    got = [om[i, j] for i, j in cells]
    ours = [rule(q[i, j], scales[i], int(zps[i])) for i, j in cells]
    theirs = [other(q[i, j], scales[i], int(zps[i])) for i, j in cells]
    summary = (int(sum(a == b for a, b in zip(got, ours))), int(sum(a == b for a, b in zip(got, theirs))), len(got))
    args = {"input": tensor(it), "scales": tensor(scales), "zero_points": tensor(zps), "axis": axis,
            "quant_min": qmin, "quant_max": qmax, "dtype": dtype_name(dtype)}
    return "decomposed_dequantize_per_channel", args, {"output": tensor(out)}, summary


I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def _to_i32(c):
    """x86's float -> int32 conversion of an in-range-or-above integral value: INT32_MIN from 2^31."""
    return I32_MIN if c >= 2.0**31 else int(c)


def _clamp_f32(v):
    """torch.clamp(v, INT32_MIN, INT32_MAX) on an f32 tensor (bounds in f32: the top is 2^31),
    then .to(int32)."""
    return _to_i32(float(min(max(F(v), F(I32_MIN)), F(I32_MAX))))


def _clamp_f64(v):
    """The same clamp on a float64 tensor (the top stays 2^31 - 1)."""
    return _to_i32(min(max(float(v), I32_MIN), I32_MAX))


def _int32_inputs(rng, s, n):
    """n inputs for scale s: every other one beyond the int32 range's top, the rest ordinary."""
    return [F(float(rng.uniform(2.2e9, 1e12)) * s) if j % 2 == 0 else F(float(rng.uniform(-1e4, 1e4)) * s)
            for j in range(n)]


def _summary(got, rule, other):
    return (sum(a == b for a, b in zip(got, rule)), sum(a == b for a, b in zip(got, other)), len(got))


def r11_int32_clamp_case(rng, tag, k):
    """A decomposed quantize_per_tensor case with the int32 range: its clamp is in f32, so inputs
    beyond the top clamp at 2^31 and convert to INT32_MIN."""
    s = float(rng.uniform(0.002, 0.5))
    zp = int(rng.integers(-1000, 1000))
    x = np.array(_int32_inputs(rng, s, int(rng.integers(6, 13))), dtype=np.float32)
    inv = F(1.0 / s)
    v = [F(np.rint(F(xv * inv))) + F(zp) for xv in x]
    out = torch.ops.quantized_decomposed.quantize_per_tensor(
        torch.from_numpy(x.copy()), s, zp, I32_MIN, I32_MAX, torch.int32)
    got = [int(o) for o in out.numpy()]
    args = {"input": tensor(x), "scale": s, "zero_point": zp, "quant_min": I32_MIN, "quant_max": I32_MAX,
            "dtype": dtype_name(torch.int32)}
    summary = _summary(got, [_clamp_f32(a) for a in v], [_clamp_f64(a) for a in v])
    return "decomposed_quantize_per_tensor", args, {"output": tensor(out)}, summary


def r12_int32_clamp_case(rng, tag, k):
    """A decomposed quantize_per_channel case with the int32 range: with f32 scales (even k) the
    clamp is in f32 (the top converts to INT32_MIN), with float64 scales in double (the top is
    INT32_MAX)."""
    f64 = k % 2 == 1
    c, n = int(rng.integers(2, 5)), int(rng.integers(4, 9))
    scales = _f64_scales(rng, c) if f64 else np.array([F(rng.uniform(0.002, 0.5)) for _ in range(c)], dtype=F)
    zps = rng.integers(-1000, 1000, size=c).astype(np.int64)
    x = np.array([_int32_inputs(rng, float(scales[i]), n) for i in range(c)], dtype=np.float32)
    if f64:
        v = [[np.rint(float(x[i, j]) * (1.0 / float(scales[i]))) + int(zps[i]) for j in range(n)] for i in range(c)]
        rule, other = _clamp_f64, _clamp_f32
    else:
        v = [[F(np.rint(F(x[i, j] * (F(1.0) / F(scales[i]))))) + F(int(zps[i])) for j in range(n)] for i in range(c)]
        rule, other = _clamp_f32, _clamp_f64
    out = torch.ops.quantized_decomposed.quantize_per_channel(
        torch.from_numpy(x.copy()), torch.from_numpy(scales.copy()), torch.from_numpy(zps), 0, I32_MIN, I32_MAX,
        torch.int32)
    got = [int(o) for o in out.numpy().reshape(-1)]
    flat = [a for row in v for a in row]
    summary = _summary(got, [rule(a) for a in flat], [other(a) for a in flat])
    args = {"input": tensor(x), "scales": tensor(scales), "zero_points": tensor(zps), "axis": 0,
            "quant_min": I32_MIN, "quant_max": I32_MAX, "dtype": dtype_name(torch.int32)}
    return "decomposed_quantize_per_channel", args, {"output": tensor(out)}, summary


# (tag, builder(rng, tag, k) -> (op, args, expected, (rule matches, alternatives matched, n)))
QUANTIZE_RULES = [
    ("R8-quantize-f32-scale-reciprocal", r8_scale_case),
    ("R11-decomposed-reciprocal-double", r11_case),
    ("R12-decomposed-quantize-f64-scales", r12_quantize_case),
    ("R12-decomposed-dequantize-f64-scales", r12_dequantize_case),
    ("R11-decomposed-int32-clamp-f32", r11_int32_clamp_case),
    ("R12-decomposed-int32-clamp-op-precision", r12_int32_clamp_case),
]
