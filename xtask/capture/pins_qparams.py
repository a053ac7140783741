"""Pins of the qparam choosers (part of the `pins` suite, xtask/capture/pins.py): observer and
`fused_moving_avg_obs_fake_quant` cases whose statistics sit so close to a rounding tie that one
chooser rule of docs/NUMERICS.md and its nearest alternative give different qparams.

The search emulates both with numpy float32 scalars (every operation rounded to nearest even, no
FMA) and f64 Python floats where the upstream code computes in double; PyTorch then decides.

- R2 (Python observers, `torch/ao/quantization/observer.py` `_calculate_qparams`):
  `zp = qmin − RNE(f32(mn / scale))`. Alternatives: half away from zero (`-rne` rules), or
  `mn · f32(1/scale)` (`-division` rules). `MinMaxObserver` statistics are the batch's own min and
  max; `HistogramObserver` ones come from PyTorch's own `_non_linear_param_search`, so only the
  final step is emulated.
- R4 (ATen `quantized/cpu/QuantUtils.h` `ChooseQuantizationParams`, FBGEMM
  `src/QuantUtils.cc`), reached through `fused_moving_avg_obs_fake_quant` with one batch (its
  running min/max are then the batch's): the zero point is anchored at the end with the smaller
  error term (alternative: the other end), and a scale under 6.1e-5 is raised to it with both ends
  stretched (alternatives: the other anchor, or no floor). The two anchors give the same zero
  point up to rounding, so cases are searched where one candidate lies within a rounding error of
  a half-integer, on negative-heavy and positive-heavy ranges. With symmetric_quant the zero point
  is the range's midpoint, rounded to even (alternative: the anchor), told apart on ranges whose
  midpoint is a half-integer next to an odd anchor.
- R7 (`HistogramObserver._non_linear_param_search`): the quantile tests `cSum[l] < next_alpha ·
  total` compare a 0-dim f32 tensor with a Python float, so in f32 (alternative: in double).
  They differ where `next_alpha · total` is a double just above an integer `c` that rounds to
  `c` in f32 while `cSum[l] == c`: the first step's `1e-5 · c·10⁵` does for c = 3, 6, 7 (the
  double nearest 1e-5 is above it by a relative 8.2e-17, more than half an ulp of c there), so a
  batch of c·10⁵ values whose minimum occurs c times makes the double search step past the
  minimum's bin while the f32 one stays. The search itself is emulated (both comparisons) and
  checked against PyTorch's own.
"""

import numpy as np
import torch
from torch.ao.quantization import observer as O

from common import describe_observer, f32_walk, half_away, tensor
from prims import fused_initial_state

F = np.float32
THR = F(6.1e-5)  # SMALL_SCALE_THRESHOLD
WINDOW = 400  # f32 steps searched on each side of a tie


def _rne(q):
    return float(np.rint(q))


def r2_affine(mn, mx, qmin, qmax, eps, alt=None):
    """R2 per tensor: (scale, zp) of an affine Python observer from its f32 statistics;
    alt "away" (half away from zero) or "reciprocal" (multiply by f32(1/scale))."""
    mn = min(F(mn), F(0))
    mx = max(F(mx), F(0))
    s = max(F(F(mx - mn) / F(qmax - qmin)), F(eps))
    q = F(mn * F(F(1) / s)) if alt == "reciprocal" else F(mn / s)
    r = half_away(q) if alt == "away" else _rne(q)
    return float(s), int(min(max(qmin - int(r), qmin), qmax))


def r4(mn, mx, qmin, qmax, anchor="error", floor=True, sym=False, midpoint=True):
    """R4: (scale, zp). anchor "error" (the rule), "min" or "max"; floor False drops the 6.1e-5
    floor and its stretch; sym is preserve_sparsity (the symmetric re-centring), and midpoint
    False drops its midpoint zero point (the anchor decides instead)."""
    mn = F(mn)
    mx = F(mx)
    if mn < 0 and mx > 0 and sym:
        sqmin = -((qmax - qmin) // 2 + 1)
        sqmax = (qmax - qmin) // 2
        m = float(max(abs(F(mn / F(sqmin))), abs(F(mx / F(sqmax)))))
        mn = F(m * sqmin)
        mx = F(m * sqmax)
    mn = min(mn, F(0))
    mx = max(mx, F(0))
    scale = F((float(mx) - float(mn)) / (qmax - qmin))
    if scale == 0 or np.isinf(F(F(1) / scale)):
        scale = F(0.1)
    if floor and scale < THR:
        org = scale
        scale = THR
        if mn == 0:
            mx = F(THR * F(qmax - qmin))
        elif mx == 0:
            mn = F(-THR * F(qmax - qmin))
        else:
            amp = F(THR / org)
            mn = F(mn * amp)
            mx = F(mx * amp)
    s = float(scale)
    zmin = qmin - float(mn) / s
    zmax = qmax - float(mx) / s
    emin = abs(qmin) + abs(float(mn) / s)
    emax = abs(qmax) + abs(float(mx) / s)
    if anchor == "min" or (anchor == "error" and emin < emax):
        init = zmin
    else:
        init = zmax
    if mn < 0 and mx > 0 and sym and midpoint:
        init = (qmin + qmax) / 2
    zp = qmin if init < qmin else qmax if init > qmax else int(np.rint(init))
    return float(scale), zp


def _batch(rng, mn, mx, n):
    """n f32 values in [mn, mx] that include both."""
    x = rng.uniform(float(mn), float(mx), size=n).astype(F)
    x = np.clip(x, mn, mx).astype(F)
    i, j = rng.permutation(n)[:2]
    x[i], x[j] = mn, mx
    return x


# ---------------------------------------------------------------------------------------------
# R2, MinMaxObserver and HistogramObserver

R2_RANGES = [(torch.quint8, 0, 255), (torch.qint8, -128, 127)]


def _r2_alt(tag):
    return "away" if tag.endswith("rne") else "reciprocal"


def _target(rng, tag, lo, hi):
    """A half-integer in [lo, hi) to aim -mn / scale at; for the rounding rule one whose integer
    part is even (RNE and half away from zero agree on the others)."""
    if tag.endswith("rne"):
        return 2 * int(rng.integers(lo // 2, hi // 2)) + 0.5
    return int(rng.integers(lo, hi)) + 0.5


def _r2_differ(mn, mx, qmin, qmax, eps, alt):
    return r2_affine(mn, mx, qmin, qmax, eps) != r2_affine(mn, mx, qmin, qmax, eps, alt)


def r2_minmax_case(rng, tag, k):
    """A MinMaxObserver (per tensor, affine) case whose batch min sits on R2's tie."""
    dtype, qmin, qmax = R2_RANGES[k % 2]
    alt = _r2_alt(tag)
    eps = float(torch.finfo(torch.float32).eps)
    while True:
        mx = F(rng.uniform(0.05, 4.0))
        t = _target(rng, tag, 2, qmax - qmin - 2)  # -mn / scale
        mn0 = -t * float(mx) / ((qmax - qmin) - t)
        found = next((mn for mn in f32_walk(mn0, WINDOW) if _r2_differ(mn, mx, qmin, qmax, eps, alt)), None)
        if found is not None:
            break
    x = _batch(rng, found, mx, int(rng.integers(8, 33)))
    kw = {"dtype": dtype, "qscheme": torch.per_tensor_affine}
    return _observer_case(O.MinMaxObserver, kw, x, (found, mx, qmin, qmax, eps), alt)


def _observer_case(cls, kw, x, r2_args, alt, alt_args=None):
    """The `observer` case of one batch x through cls(**kw), with the summary of PyTorch's qparams
    against R2 and its alternative on r2_args = (min, max, qmin, qmax, eps), or against R2 on
    alt_args where an earlier step has the alternative."""
    obs = cls(**kw)
    obs(torch.from_numpy(x))
    scale, zp = obs.calculate_qparams()
    expected = {"min_val": tensor(obs.min_val), "max_val": tensor(obs.max_val), "scale": tensor(scale),
                "zero_point": tensor(zp)}
    if cls is O.HistogramObserver:
        expected["histogram"] = tensor(obs.histogram)
    args = {"observer": describe_observer(cls, kw, obs), "batches": [tensor(x)]}
    got = (float(scale[0]), int(zp[0]))
    rule = r2_affine(*r2_args)
    other = r2_affine(*alt_args) if alt_args else r2_affine(*r2_args, alt)
    return "observer", args, expected, (int(got == rule), int(got == other), 1)


def _histogram_range(x, kw):
    """The observer after one batch, and the (min, max) PyTorch's own range search returns."""
    obs = O.HistogramObserver(**kw)
    obs(torch.from_numpy(x))
    a, b = obs._non_linear_param_search()
    return obs, F(a.item()), F(b.item())


def r2_histogram_case(rng, tag, k):
    """A HistogramObserver (per tensor, affine) case. A third of the data sits on each end, so
    that the range search keeps the lowest value; that value is then moved until the range the
    search returns puts R2 on its tie."""
    dtype, qmin, qmax = R2_RANGES[k % 2]
    alt = _r2_alt(tag)
    kw = {"dtype": dtype, "qscheme": torch.per_tensor_affine, "bins": 256}
    n = qmax - qmin
    while True:
        mx = F(rng.uniform(0.5, 4.0))
        t = _target(rng, tag, 8, n - 8)
        x = _batch(rng, F(-t * float(mx) / (n - t)), mx, int(rng.integers(24, 65)))
        m = len(x) // 3
        x[:m] = x.min()
        x[m:2 * m] = mx
        for _ in range(3):  # the search's max end moves with mn: aim again at the tie
            obs, a, b = _histogram_range(x, kw)
            mn = F(-t * float(b) / (n - t))
            x[:m] = mn
            x[2 * m:] = np.clip(x[2 * m:], mn, mx)
        found = None
        for mn in f32_walk(mn, WINDOW):
            # The search is the slow part: run it only where the last range's max end puts this
            # mn on the tie (the end moves by a few f32 steps at most).
            if not _r2_differ(mn, b, qmin, qmax, float(obs.eps.item()), alt):
                continue
            x[:m] = mn
            x[2 * m:] = np.clip(x[2 * m:], mn, mx)
            obs, a, b = _histogram_range(x, kw)
            eps = float(obs.eps.item())
            if _r2_differ(a, b, qmin, qmax, eps, alt):
                found = (a, b, eps)
                break
        if found is not None:
            break
    x = np.ascontiguousarray(x[rng.permutation(len(x))])
    a, b, eps = found
    return _observer_case(O.HistogramObserver, kw, x, (a, b, qmin, qmax, eps), alt)


# ---------------------------------------------------------------------------------------------
# R4 through fused_moving_avg_obs_fake_quant

# (qmin, qmax, heavy end): R4 anchors a negative-heavy range at its max end and a positive-heavy
# one at its min end; an unsigned range with mn < 0 is always anchored at its min end.
R4_RANGES = [(-128, 127, "negative"), (0, 255, "positive"), (-128, 127, "positive")]
# Symmetric ranges whose midpoint is a half-integer next to an odd anchor-chosen zero point.
R4_SYMMETRIC_RANGES = [(0, 253), (-127, 128), (-1, 254)]


def _r4_search(rng, qmin, qmax, heavy, small):
    """(mn, mx, rule, alternatives): R4's result differs from the other anchor's (and, for small,
    from no floor's); mn < 0 < mx."""
    n = qmax - qmin
    other = "min" if heavy == "negative" else "max"
    while True:
        mx = F(rng.uniform(2e-4, 3e-3)) if small else F(rng.uniform(0.05, 4.0))
        # t = -mn / scale; negative-heavy: t > n / 2 (up to a margin)
        t = (rng.integers(n // 2 + 12, n - 10) if heavy == "negative" else rng.integers(10, n // 2 - 12)) + 0.5
        mn0 = -t * float(mx) / (n - t)
        for mn in f32_walk(mn0, WINDOW):
            rule = r4(mn, mx, qmin, qmax)
            alts = {other: r4(mn, mx, qmin, qmax, anchor=other)}
            if small:
                alts["no_floor"] = r4(mn, mx, qmin, qmax, floor=False)
            if all(v != rule for v in alts.values()):
                return mn, mx, rule, alts


def _r4_symmetric(rng, qmin, qmax):
    """(mn, mx, rule, alternatives) of a symmetric range on which the midpoint zero point differs
    from the anchor's."""
    while True:
        mx = F(rng.uniform(0.05, 4.0))
        mn = F(-rng.uniform(0.05, 4.0))
        rule = r4(mn, mx, qmin, qmax, sym=True)
        alts = {"anchor": r4(mn, mx, qmin, qmax, sym=True, midpoint=False)}
        if alts["anchor"] != rule:
            return mn, mx, rule, alts


def r4_fused_case(rng, tag, k):
    """One batch through torch.fused_moving_avg_obs_fake_quant (per tensor)."""
    sym = tag.endswith("symmetric-midpoint")
    if sym:
        qmin, qmax = R4_SYMMETRIC_RANGES[k % len(R4_SYMMETRIC_RANGES)]
        mn, mx, rule, alts = _r4_symmetric(rng, qmin, qmax)
    else:
        qmin, qmax, heavy = R4_RANGES[k % len(R4_RANGES)]
        mn, mx, rule, alts = _r4_search(rng, qmin, qmax, heavy, tag.endswith("small-scale"))
    x = _batch(rng, mn, mx, int(rng.integers(8, 33))).reshape(1, -1)
    rmin, rmax, sc, zp, initial = fused_initial_state(False, 1)
    on = torch.tensor([1], dtype=torch.long)
    xt = torch.from_numpy(x.copy())
    out = torch.fused_moving_avg_obs_fake_quant(xt, on, on, rmin, rmax, sc, zp, 0.01, qmin, qmax, 0, False,
                                                sym)
    steps = [{"output": tensor(out), "running_min": tensor(rmin), "running_max": tensor(rmax),
              "scale": tensor(sc), "zero_point": tensor(zp)}]
    args = {"batches": [tensor(xt)], "averaging_const": 0.01, "quant_min": qmin, "quant_max": qmax,
            "ch_axis": 0, "per_row_fake_quant": False, "symmetric_quant": sym, "observer_on": 1,
            "fake_quant_on": 1, "initial": initial}
    got = (float(sc[0]), int(zp[0]))
    alt_ok = sum(got == v for v in alts.values())
    return "fused_moving_avg_obs_fake_quant", args, {"steps": steps}, (int(got == rule), alt_ok, 1)


# ---------------------------------------------------------------------------------------------
# R7, HistogramObserver's range search

R7_SIZES = [3, 6, 7]  # c: batches of c·10⁵ values, the minimum c times


def r7_search(obs, compare_f64):
    """(min, max) of `_non_linear_param_search` on obs's histogram, its quantile tests in f32 (the
    rule: `cSum[l]` is an f32 tensor element, the threshold a Python float rounded to f32) or in
    double (the alternative). The error term is PyTorch's own `_compute_quantization_error`."""
    c = torch.cumsum(obs.histogram, dim=0).tolist()  # f32 values, exact as Python floats
    total = torch.sum(obs.histogram).item()

    def below(i, t):
        return c[i] < (t if compare_f64 else float(F(t)))

    def above(i, t):
        return c[i] > (t if compare_f64 else float(F(t)))

    alpha, beta, lo, hi, best = 0.0, 1.0, 0, obs.bins - 1, float("inf")
    while alpha < beta:
        na, nb = alpha + 1e-5, beta - 1e-5
        l, r = lo, hi
        while l < hi and below(l, na * total):
            l += 1
        while r > lo and above(r, nb * total):
            r -= 1
        new_lo, new_hi = lo, hi
        if l - lo > hi - r:
            new_lo, alpha = l, na
        else:
            new_hi, beta = r, nb
        if (new_lo, new_hi) == (lo, hi):
            continue
        norm = obs._compute_quantization_error(new_lo, new_hi)
        if norm > best:
            break
        best, lo, hi = norm, new_lo, new_hi
    width = (obs.max_val - obs.min_val) / obs.bins
    return F((obs.min_val + width * lo).item()), F((obs.min_val + width * (hi + 1)).item())


def r7_threshold_case(rng, tag, k):
    """A HistogramObserver case of c·10⁵ values (sorted, so that the stored tensor compresses):
    the minimum c times, far below the rest, which is a few values with random counts."""
    c = R7_SIZES[k % len(R7_SIZES)]
    dtype = R2_RANGES[k % 2][0]
    kw = {"dtype": dtype, "qscheme": torch.per_tensor_affine, "reduce_range": bool(k % 4 >= 2)}
    n = c * 100_000
    while True:
        m = int(rng.integers(3, 8))
        vals = np.sort(rng.normal(0.0, float(rng.uniform(0.5, 2.0)), m).astype(F))
        low = F(vals[0] - F(rng.uniform(0.5, 4.0)))
        w = rng.uniform(0.05, 1.0, m)
        counts = np.floor(w / w.sum() * (n - c)).astype(np.int64)
        counts[int(np.argmax(counts))] += n - c - int(counts.sum())
        x = np.concatenate([np.full(c, low, dtype=F), np.repeat(vals, counts)]).astype(F)
        obs = O.HistogramObserver(**kw)
        obs(torch.from_numpy(x))
        theirs = tuple(F(v.item()) for v in obs._non_linear_param_search())
        rule, alt = r7_search(obs, False), r7_search(obs, True)
        if rule != theirs:
            raise AssertionError(f"R7 emulation {rule} differs from PyTorch's search {theirs}")
        if rule != alt:
            break
    q = (obs.quant_min, obs.quant_max, float(obs.eps.item()))
    return _observer_case(O.HistogramObserver, kw, x, (*rule, *q), None, (*alt, *q))


# (tag, builder(rng, tag, k) -> (op, args, expected, (rule matches, alternatives matched, n)))
QPARAM_RULES = [
    ("R2-observer-zero-point-rne", r2_minmax_case),
    ("R2-observer-zero-point-division", r2_minmax_case),
    ("R2-histogram-zero-point-rne", r2_histogram_case),
    ("R2-histogram-zero-point-division", r2_histogram_case),
    ("R4-fbgemm-zero-point-anchor", r4_fused_case),
    ("R4-fbgemm-small-scale", r4_fused_case),
    ("R4-fbgemm-symmetric-midpoint", r4_fused_case),
    ("R7-histogram-threshold-f32", r7_threshold_case),
]
