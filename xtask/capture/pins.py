"""The `pins` suite: cases (golden/README.md) built so that one numerics rule of docs/NUMERICS.md
and its nearest alternative give different outputs, captured from PyTorch. This file builds the
`quantized_linear` cases of the requantization rules; pins_qparams.py those of the qparam choosers,
pins_quantize.py those of the quantize arithmetic, pins_fake_quant.py those of fake quantization,
pins_pool.py those of the pooling windows.

For each case the script quantizes the input with PyTorch, computes the exact int32 accumulators
(small weights, symmetric weight zero point: no int16 pair can saturate on any FBGEMM path), then
chooses every output channel's f32 bias (and, for R21, the scales) by searching the f32 values
near a rounding tie with a numpy float32 emulation of both the rule and its alternative, keeping a
bias only where the two give different u8 outputs. PyTorch's `quantized::linear` then decides;
which of the two it matched is printed per case (`PIN ...`), and the case is tagged
`pins:<rule>`. numpy float32 scalar arithmetic rounds every operation to nearest even, with no
FMA, as the C kernels do.

Rules (docs/NUMERICS.md):
- R25-qnnpack-bias-reciprocal: QNNPACK's int32 bias `RNE(f32(b · f32(1/sb)))`, alternative
  `RNE(f32(b / sb))`, `sb = f32(w_s · s_x)` (PyTorch `QuantUtils.h` `QuantizeBias` →
  `quantize_per_tensor(..., kQInt32)`, FBGEMM `Quantize<int32_t>`).
- R25-qnnpack-bias-rne: that f32 product, when it is a tie `n + 0.5`, rounds half to even (R9,
  FBGEMM `QuantUtils.h` `Quantize<T>`), alternative: half away from zero. The bias is walked onto
  an exact tie above an even integer.
- R25-qnnpack-output-scale-reciprocal: QNNPACK's requantization scale multiplies by the
  reciprocal of the output scale, `f32(f32(w_s · s_x) · f32(1/s_y))` (PyTorch `QnnpackUtils.h`
  `generate_requantization_scales`); alternatives: dividing, `f32(f32(w_s · s_x) / s_y)`, and the
  whole quotient in double, `f32(w_s · s_x / s_y)`. The output scale is walked near a tie of one
  int32 sum `T`, and every output channel's bias makes row 0's sum `T`, so that row's outputs
  are `cvt32(f32(T) · req)` on either side of `k + 0.5`.
- R24-final-rne: the requantized f32 value, when it is a tie `k + 0.5`, rounds half to even
  (`cvtps2dq` in FBGEMM's and QNNPACK's epilogues), alternative: half away from zero. FBGEMM:
  the bias is walked until `f32(x · mult)` is exactly such a tie; QNNPACK: the output scale is
  walked as for R25's output scale.
- R24-relu-clamp-at-zero-point: `quantized::linear_relu` clamps below at the output zero point
  (FBGEMM `ReQuantizeOutput` with `FUSE_RELU`; PyTorch `qlinear.cpp` QNNPACK `output_min`),
  alternative: at code 0. The bias puts row 0's outputs below the zero point.
- R22-fbgemm-bias-per-tensor-reciprocal: FBGEMM's per-tensor bias is multiplied by
  `rcp = f32(1.0 / f64(atws))`, alternative: divided, `f32(raw) + f32(b / atws)` (FBGEMM
  `QuantUtilsAvx2.cc` `requantizeOutputProcessingAvx2`).
- R22-fbgemm-bias-per-tensor-fma: that product and the addition to the accumulator are one fused
  multiply-add, `f32(f32(raw) + b · rcp)` rounded once (the compiled epilogue contracts
  `_mm256_mul_ps` and `_mm256_add_ps`), alternative: two roundings, `f32(f32(raw) + f32(b · rcp))`.
- R22-fbgemm-bias-per-channel-division: with per-channel weights FBGEMM divides instead,
  `f32(f32(raw) + f32(b / atws_j))`, alternative: the per-tensor form above, one FMA with
  `f32(1.0 / f64(atws_j))` (FBGEMM `QuantUtilsAvx2.cc` `requantizeOutputProcessingAvx2`,
  `act_times_w_scale` per channel; PyTorch `qlinear.cpp` per-channel `act_times_w_scale`).
- R21-fbgemm-multiplier-division: FBGEMM's multiplier `f32(atws / f32(s_y))`, alternative
  `f32(atws · f32(1/s_y))` (PyTorch `qlinear.cpp` `PackedLinearWeight::apply_impl`).
- R16-weight-zero-point: the accumulator with a nonzero weight zero point,
  `Σ (x − x_z)(w − w_z)`, alternative: the weight zero point forgotten (FBGEMM's row offsets,
  `fbgemm/src/RefImplementations.cc` `requantize_u8acc32_ref`; QNNPACK's kernel zero point).
  No search: the two differ on almost every output.
"""

import numpy as np
import torch

from common import f32_walk, half_away, tensor
from pins_pool import POOL_RULES
from pins_qparams import QPARAM_RULES
from pins_fake_quant import FAKE_QUANT_RULES
from pins_quantize import QUANTIZE_RULES

F = np.float32
FBGEMM_ISAS = [("fbgemm", "default"), ("x86", "default"), ("fbgemm", "avx2"), ("x86", "avx2")]
# (tag, the engine / ISA combinations its cases cycle through)
RULES = [
    ("R25-qnnpack-bias-reciprocal", [("qnnpack", "default")]),
    ("R25-qnnpack-output-scale-reciprocal", [("qnnpack", "default")]),
    ("R25-qnnpack-bias-rne", [("qnnpack", "default")]),
    ("R24-final-rne", FBGEMM_ISAS + [("qnnpack", "default")]),
    ("R24-relu-clamp-at-zero-point", FBGEMM_ISAS + [("qnnpack", "default")]),
    ("R22-fbgemm-bias-per-tensor-reciprocal", FBGEMM_ISAS),
    ("R22-fbgemm-bias-per-tensor-fma", FBGEMM_ISAS),
    ("R22-fbgemm-bias-per-channel-division", FBGEMM_ISAS),
    ("R21-fbgemm-multiplier-division", FBGEMM_ISAS),
] + [(tag, [(None, "default")]) for tag, _ in QPARAM_RULES + QUANTIZE_RULES + FAKE_QUANT_RULES] + [  # no engine
    (tag, [(e, "default") for e in ("fbgemm", "x86", "qnnpack", "onednn")]) for tag, _ in POOL_RULES] + [
    ("R16-weight-zero-point", FBGEMM_ISAS + [("qnnpack", "default")]),
]
M, K, N = 2, 16, 8
WINDOW = 96  # f32 steps searched on each side of a tie


def _u8(y, zp, away=False, lo=0):
    """cvt32 (half to even; with away, half away from zero) of the f32 y, plus the zero point,
    clamped to [lo, 255]."""
    r = half_away(y) if away else np.rint(y)
    return int(min(max(int(r) + zp, lo), 255))


def _finish(y, yz, fin):
    """The final rounding and clamp (R24) of y; fin holds the options: relu (lower clamp at the
    zero point, or with relu_at_0 at 0) and away (ties away from zero)."""
    lo = 0 if fin.get("relu_at_0") else (yz if fin.get("relu") else 0)
    return _u8(y, yz, away=fin.get("away", False), lo=lo)


def fma32(a, b, c):
    """f32(a · b + c) rounded once, for f32 a, b, c: the product is exact in f64, the f64 sum's
    error comes from TwoSum, and only an f64 sum that lands exactly on an f32 midpoint needs it."""
    p, x = float(a) * float(b), float(c)
    s = x + p
    bb = s - x
    e = (x - (s - bb)) + (p - bb)
    f = F(s)
    if e == 0 or not np.isfinite(s) or float(f) == s:
        return f
    g = np.nextafter(f, F(np.inf) if s > float(f) else F(-np.inf))
    if s != (float(f) + float(g)) / 2:
        return f
    return g if (e > 0) == (float(g) > float(f)) else f


def fbgemm_q(raw, b, sx, ws, sy, yz, bias_alt=None, mult_alt=False, fin=None):
    """FBGEMM's requantization of one accumulator (R20) with per-tensor weights; bias_alt "div"
    or "no_fma" for the alternatives of R22, mult_alt for R21's, fin for R24's."""
    atws = F(F(sx) * F(ws))
    mult = F(atws * F(F(1.0) / F(sy))) if mult_alt else F(atws / F(sy))
    rcp = F(1.0 / float(atws))
    if bias_alt == "div":
        xf = F(F(raw) + F(F(b) / atws))
    elif bias_alt == "no_fma":
        xf = F(F(raw) + F(F(b) * rcp))
    else:
        xf = fma32(F(b), rcp, F(raw))
    return _finish(F(xf * mult), yz, fin or {})


def bias_scale(sx, ws):
    """QNNPACK's `sb = f32(w_s · s_x)` (QuantizeBias: the exact double product, rounded once)."""
    return F(float(ws) * sx)


def qnnpack_req(sx, ws, sy, req_alt=None):
    """QNNPACK's requantization scale (R25); req_alt "div" or "f64" for its alternatives."""
    sb = bias_scale(sx, ws)
    if req_alt == "div":
        return F(sb / F(sy))
    if req_alt == "f64":
        return F(float(ws) * float(sx) / float(sy))
    return F(sb * F(F(1.0) / F(sy)))


def qnnpack_bias(b, sx, ws, bias_alt=False, away=False):
    """QNNPACK's int32 bias (R25): RNE(f32(b · f32(1/sb))); with bias_alt RNE(f32(b / sb)), with
    away the rounding of ties away from zero."""
    sb = bias_scale(sx, ws)
    v = F(F(b) / sb) if bias_alt else F(F(b) * F(F(1.0) / sb))
    r = half_away(v) if away else np.rint(v)
    return int(min(max(r, -(2**31)), 2**31 - 1))


def qnnpack_q(raw, b, sx, ws, sy, yz, bias_alt=False, req_alt=None, away=False, fin=None):
    """QNNPACK's requantization of one accumulator (R25) with per-tensor weights; fin holds
    R24's options."""
    bq = qnnpack_bias(b, sx, ws, bias_alt, away)
    req = qnnpack_req(sx, ws, sy, req_alt)
    return _finish(F(F(np.int32(np.int64(raw) + bq)) * req), yz, fin or {})


def _rule_and_alt(tag, engine=None):
    """(rule, alternative) as functions of (raw, b, sx, ws, sy, yz)."""
    if tag.startswith("R24"):
        q = qnnpack_q if engine == "qnnpack" else fbgemm_q
        if tag == "R24-relu-clamp-at-zero-point":
            return (lambda *a: q(*a, fin={"relu": True}),
                    lambda *a: q(*a, fin={"relu": True, "relu_at_0": True}))
        return q, lambda *a: q(*a, fin={"away": True})
    if tag == "R25-qnnpack-output-scale-reciprocal":
        return qnnpack_q, lambda *a: qnnpack_q(*a, req_alt="div")
    if tag == "R25-qnnpack-bias-rne":
        return qnnpack_q, lambda *a: qnnpack_q(*a, away=True)
    if tag.startswith("R25"):
        return qnnpack_q, lambda *a: qnnpack_q(*a, bias_alt=True)
    if tag.endswith("per-channel-division"):
        return lambda *a: fbgemm_q(*a, bias_alt="div"), fbgemm_q
    if tag.startswith("R22") and tag.endswith("fma"):
        return fbgemm_q, lambda *a: fbgemm_q(*a, bias_alt="no_fma")
    if tag.startswith("R22"):
        return fbgemm_q, lambda *a: fbgemm_q(*a, bias_alt="div")
    return fbgemm_q, lambda *a: fbgemm_q(*a, mult_alt=True)


def _f32_scale(rng, lo_exp, hi_exp):
    """An f32-exact scale m · 2^e with a 20-bit odd mantissa."""
    m = int(rng.integers(1 << 19, 1 << 20)) | 1
    return float(np.ldexp(m, int(rng.integers(lo_exp, hi_exp)) - 20))


def _search_bias(rng, tag, raw, sx, ws, sy, yz, engine=None):
    """An f32 bias on which rule and alternative give different u8 outputs for accumulator raw,
    or None. Looks near ties `y = k + 0.5` for a few random k inside the output range (for
    R24's ReLU rule, near a negative y above -yz; for its final rounding, an even k)."""
    rule, alt = _rule_and_alt(tag, engine)
    atws = float(F(F(sx) * F(ws)))
    sb = float(bias_scale(sx, ws))
    for _ in range(24):
        if tag == "R24-relu-clamp-at-zero-point":
            k = -int(rng.integers(1, yz))
        elif tag == "R24-final-rne":
            k = 2 * int(rng.integers(3 - yz // 2, 124 - yz // 2))
        else:
            k = int(rng.integers(5 - yz, 250 - yz))
        if tag.startswith("R24") and engine == "qnnpack":
            b0 = (int(round((k + 0.5) * sy / sb)) - raw) * sb
        elif tag.startswith("R25"):
            # The int32 bias itself has to straddle a tie: bq + 0.5 = b / sb.
            req = sb / sy
            bq = int(round(k / req)) - raw
            b0 = (bq + 0.5) * sb
        else:
            mult = atws / sy
            b0 = ((k + 0.5) / mult - raw) * atws
        for b in f32_walk(b0, WINDOW):
            if rule(raw, b, sx, ws, sy, yz) != alt(raw, b, sx, ws, sy, yz):
                return b
    return None


def _scales(rng, tag):
    """(s_x, w_s, s_y), f32-exact; for R25 the requantization scale is above 1 so that one unit
    of int32 bias moves the output; for R21 the two multipliers differ."""
    while True:
        sx = _f32_scale(rng, -8, -4)
        ws = _f32_scale(rng, -9, -5)
        if tag.startswith("R25"):
            req = float(rng.uniform(1.1, 2.5))
            sy = float(F(float(F(ws * sx)) / req))
        else:
            sy = _f32_scale(rng, -8, -2)
        if tag.startswith("R21"):
            atws = F(F(sx) * F(ws))
            if F(atws / F(sy)) == F(atws * F(F(1.0) / F(sy))):
                continue
        return sx, ws, sy


def _output_scale_tie(rng, tag, sx, ws, yz):
    """(s_y, T): an f32 output scale and an int32 sum T on which QNNPACK's rule and its
    alternatives (for R25's output scale: both) round f32(T) · req differently, or None. Solves
    T · req = k + 0.5 for s_y, then walks the f32 values of s_y around it."""
    sb = float(bias_scale(sx, ws))
    rule, alt = _rule_and_alt(tag, "qnnpack")
    alts = [alt]
    if tag == "R25-qnnpack-output-scale-reciprocal":
        alts.append(lambda *a: qnnpack_q(*a, req_alt="f64"))
    for _ in range(64):
        k = int(rng.integers(5 - yz, 250 - yz))
        if k <= 0:
            continue
        t = max(1, int(round((k + 0.5) / float(rng.uniform(0.3, 2.5)))))
        sy0 = sb * t / (k + 0.5)
        for sy in f32_walk(sy0, WINDOW):
            ours = rule(t, 0.0, sx, ws, sy, yz)
            if all(ours != a(t, 0.0, sx, ws, sy, yz) for a in alts):
                return float(sy), t
    return None


def _bias_for_int32(bq, sx, ws):
    """An f32 bias that QNNPACK quantizes to exactly bq (R25), or None."""
    sb = float(bias_scale(sx, ws))
    for b in f32_walk(bq * sb, 8):
        if qnnpack_bias(b, sx, ws) == bq:
            return b
    return None


def pin_case(rng, rule_index, engine, k):
    """(op, args, expected, tags, summary) of the k-th case pinning RULES[rule_index]; summary is
    (outputs on which PyTorch equals the rule, outputs on which it equals the alternative, n)."""
    tag = RULES[rule_index][0]
    for qtag, build in QPARAM_RULES + QUANTIZE_RULES + FAKE_QUANT_RULES:
        if qtag == tag:
            op, args, expected, summary = build(rng, tag, k)
            return op, args, expected, ["pins:" + tag], summary
    for ptag, build in POOL_RULES:
        if ptag == tag:
            torch.backends.quantized.engine = engine
            op, args, expected, tags, summary = build(rng, tag, k, engine)
            return op, args, expected, ["pins:" + tag] + tags, summary
    torch.backends.quantized.engine = engine
    if tag == "R16-weight-zero-point":
        return _weight_zero_point_case(rng, engine, k)
    rule, alt = _rule_and_alt(tag, engine)
    relu = tag == "R24-relu-clamp-at-zero-point"
    per_channel = "per-channel" in tag
    while True:
        sx, ws, sy = _scales(rng, tag)
        # Per channel: a scale per output channel, drawn like the per-tensor one.
        wss = [ws] + [_f32_scale(rng, -9, -5) for _ in range(N - 1)] if per_channel else [ws] * N
        xz = int(rng.integers(0, 256))
        yz = int(rng.integers(16, 64)) if tag == "R24-relu-clamp-at-zero-point" else int(rng.integers(0, 64))
        x, xq, xq_codes = _quantized_input(rng, sx, xz)
        w = rng.integers(-40, 41, size=(N, K)).astype(np.int8)
        raw = (xq_codes - xz) @ w.astype(np.int64).T  # [M, N], exact
        bias = []
        if tag == "R25-qnnpack-output-scale-reciprocal" or (tag == "R24-final-rne" and engine == "qnnpack"):
            tie = _output_scale_tie(rng, tag, sx, ws, yz)
            if tie is None:
                continue
            sy, t = tie
            for j in range(N):
                b = _bias_for_int32(t - int(raw[0, j]), sx, ws)
                if b is None:
                    break
                bias.append(b)
        else:
            for j in range(N):
                b = _search_bias(rng, tag, int(raw[0, j]), sx, wss[j], sy, yz, engine)
                if b is None:
                    break
                bias.append(b)
        if len(bias) == N:
            break
    bias = np.array(bias, dtype=np.float32)
    ours = [rule(int(raw[0, j]), bias[j], sx, wss[j], sy, yz) for j in range(N)]
    theirs = [alt(int(raw[0, j]), bias[j], sx, wss[j], sy, yz) for j in range(N)]
    return _linear_pin(tag, engine, (x, sx, xz, xq), (w, wss, np.zeros(N, dtype=np.int64), per_channel),
                       bias, (sy, yz), ours, theirs, relu)


def _quantized_input(rng, sx, xz):
    """An M×K input on the grid of (sx, xz) with random codes: the f32 tensor, PyTorch's quint8
    tensor of it and its codes as int64."""
    codes = rng.integers(0, 256, size=(M, K))
    x = torch.from_numpy(((codes - xz).astype(np.float64) * sx).astype(np.float32))
    xq = torch.quantize_per_tensor(x, sx, xz, torch.quint8)
    return x, xq, xq.int_repr().numpy().astype(np.int64)


def _linear_pin(tag, engine, inp, weight, bias, out, ours, theirs, relu=False):
    """Runs PyTorch's `quantized::linear` (or `linear_relu`) on one pin case and returns it as
    (op, args, expected, tags, summary); ours / theirs are row 0's outputs under the rule and
    its alternative."""
    x, sx, xz, xq = inp
    w, wss, wzs, per_channel = weight
    sy, yz = out
    if per_channel:
        wq = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(w), torch.tensor(wss, dtype=torch.float64), torch.from_numpy(wzs.copy()), 0)
    else:
        wq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(w), wss[0], int(wzs[0]))
    packed = torch.ops.quantized.linear_prepack(wq, torch.from_numpy(bias))
    linear = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    y = linear(xq, packed, sy, yz).int_repr().numpy()
    got = [int(v) for v in y[0]]
    summary = (sum(g == o for g, o in zip(got, ours)), sum(g == t for g, t in zip(got, theirs)), N)
    args = {
        "engine": engine,
        "input": tensor(x),
        "input_scale": sx,
        "input_zero_point": xz,
        "weight_int_repr": tensor(w),
        "weight_scale": wss if per_channel else wss[0],
        "weight_zero_point": [int(v) for v in wzs] if per_channel else int(wzs[0]),
        "bias": tensor(bias),
        "output_scale": sy,
        "output_zero_point": yz,
    }
    if relu:
        args["relu"] = True
    expected = {"input_int_repr": tensor(xq.int_repr()), "int_repr": tensor(y)}
    return "quantized_linear", args, expected, ["pins:" + tag], summary


def _weight_zero_point_case(rng, engine, k):
    """R16: the terms of a nonzero weight zero point. Every golden model's weights are symmetric,
    so these cases give `quantized::linear` int8 weights with zero points in ±(8..60), per tensor
    (per channel on FBGEMM for odd k). Raw weight codes stay within ±64, so no u8·s8 pair reaches
    the int16 bounds (2·255·64 < 32767) and every kernel path accumulates
    `Σ (x − x_z)(w − w_z)` exactly. Alternative: the weight zero point forgotten,
    `Σ (x − x_z)·w`."""
    per_channel = engine != "qnnpack" and k % 2 == 1
    sx = _f32_scale(rng, -8, -4)
    xz = int(rng.integers(0, 256))
    x, xq, xq_codes = _quantized_input(rng, sx, xz)
    n_zp = N if per_channel else 1
    wz = rng.integers(8, 61, size=n_zp) * np.where(rng.integers(0, 2, size=n_zp) == 1, 1, -1)
    wzs = np.broadcast_to(wz, (N,)).astype(np.int64)
    # Codes around each row's zero point, clipped to ±64.
    w = np.clip(wzs[:, None] + rng.integers(-40, 41, size=(N, K)), -64, 64).astype(np.int8)
    raw = (xq_codes - xz) @ (w.astype(np.int64) - wzs[:, None]).T
    raw_alt = (xq_codes - xz) @ w.astype(np.int64).T
    wss = [_f32_scale(rng, -9, -5) for _ in range(N)] if per_channel else [_f32_scale(rng, -9, -5)] * N
    # An output scale that spreads row 0's outputs over about 200 codes.
    span = max(1.0, float(np.abs(raw[0]).max())) * sx * max(wss)
    sy = float(F(span / 100.0))
    yz = int(rng.integers(100, 156))
    bias = (rng.uniform(-1, 1, size=N) * span / 50).astype(np.float32)
    if engine == "qnnpack":
        q = qnnpack_q
    elif per_channel:
        def q(*a):
            return fbgemm_q(*a, bias_alt="div")
    else:
        q = fbgemm_q
    ours = [q(int(raw[0, j]), bias[j], sx, wss[j], sy, yz) for j in range(N)]
    theirs = [q(int(raw_alt[0, j]), bias[j], sx, wss[j], sy, yz) for j in range(N)]
    return _linear_pin("R16-weight-zero-point", engine, (x, sx, xz, xq), (w, wss, wzs, per_channel),
                       bias, (sy, yz), ours, theirs)
