"""Data that makes the goldens of elementwise ops discriminating: inputs where ATen's vector
lambda (FMA dequantize) and scalar lambda (plain dequantize) of a kernel give different outputs.

Random qparams almost never hit such inputs (an FMA rounds differently from a multiply only
near a rounding boundary), so the builders in qops.py search qparams and codes with these
helpers and plant the codes that tell the two lambdas apart at random positions; whether a
position takes the vector or the scalar lambda is then what the golden pins. Only exactly
rounded IEEE operations are used (numpy f32/f64 +, -, *, /; an FMA emulated in f64 where its
operands make the f64 sum exact), so a seed draws the same data on every CPU.
"""

import numpy as np

F32 = np.float32


def deq_plain(q, s, z):
    """f32(s * f32(q - z)): the scalar lambda's dequantize (FBGEMM Dequantize); z may be per code."""
    return F32(s) * (np.asarray(q, np.int64) - np.asarray(z, np.int64)).astype(F32)


def deq_fma(q, s, z):
    """fma(s, f32(q), f32(s * -z)): the vector lambda's dequantize. s * q and the premultiplied
    offset are multiples of ulp(s) below 2^33 ulp(s), so their f64 sum is exact and the cast to
    f32 is the FMA's single rounding. z may be per code."""
    s = F32(s)
    pre = (s * (-np.asarray(z, np.int64)).astype(F32)).astype(F32)
    return (np.float64(s) * np.asarray(q, np.float64) + pre.astype(np.float64)).astype(F32)


def quant_vec(x, inv, zo):
    """QuantizeAvx2 for finite in-range values: RNE(f32(x * inv)) + zo, saturated."""
    t = np.asarray(x, F32) * F32(inv)
    return np.clip(np.rint(t.astype(np.float64)) + zo, 0, 255).astype(np.int64)


def quant_val(x, so, zo):
    """quantize_val (FBGEMM Quantize): zo + nearbyint(f32(x * f32(1/f32(so)))), clamped."""
    inv = F32(1.0) / F32(so)
    t = np.asarray(x, F32) * inv
    return np.clip(np.rint(t.astype(np.float64)) + zo, 0, 255).astype(np.int64)


def inv32(s):
    return F32(1.0) / F32(s)


def inv64(s):
    return F32(1.0 / float(s))


def add_pairs(sa, za, sb, zb, so, zo, relu):
    """All (qa, qb) where qadd_kernel's vector and scalar lambdas give different outputs."""
    qa, qb = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    qa, qb = qa.ravel(), qb.ravel()
    cv = deq_fma(qa, sa, za) + deq_fma(qb, sb, zb)
    cs = deq_plain(qa, sa, za) + deq_plain(qb, sb, zb)
    if relu:
        cv, cs = np.maximum(cv, F32(0)), np.maximum(cs, F32(0))
    d = quant_vec(cv, inv32(so), zo) != quant_val(cs, so, zo)
    return qa[d], qb[d]


def mul_pairs(sa, za, sb, zb, so, zo, relu, count=256):
    """(sensitive, near): the (qa, qb) whose requantized product (clamped as the op clamps) changes
    when qmul_kernel's f32 multiplier m = f32(f32(sa*sb) * f32(1/so)) moves by one ulp either
    way (they pin how m is rounded), and those whose product times sa*sb/so lies closest to a
    half-integer (RNE ties)."""
    qa, qb = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    qa, qb = qa.ravel(), qb.ravel()
    c = ((qa - za) * (qb - zb)).astype(F32)
    m = F32(F32(F32(sa) * F32(sb)) * inv32(so))
    r = [np.clip(np.rint((c * F32(mm)).astype(np.float64)) + zo, zo if relu else 0, 255) for mm in
         (m, np.nextafter(m, F32(np.inf)), np.nextafter(m, F32(-np.inf)))]
    sensitive = np.nonzero((r[0] != r[1]) | (r[0] != r[2]))[0][:count]
    t = c.astype(np.float64) * (float(sa) * float(sb) / float(so))
    near = np.argsort(np.abs(t - np.floor(t) - 0.5), kind="stable")[:count]
    return (qa[sensitive], qb[sensitive]), (qa[near], qb[near])


def half_tie_qparams(rng, so, zo, differs, tries=400):
    """Input qparams (s, z) and codes where a unary kernel's vector and scalar paths differ, built
    so that the plain dequantize of code z + d lands on a value whose quantization with
    (so, zo) is an exact half (the scalar path's tie) while the FMA dequantize may round off it.
    `differs(q, s, z)` says, per code, whether the two paths differ. None if nothing was found."""
    inv = inv32(so)
    for _ in range(tries):
        t = F32(int(rng.integers(-zo, 255 - zo)) + 0.5)
        c0 = F32(t * F32(so))
        cands = [c0, np.nextafter(c0, F32(np.inf)), np.nextafter(c0, F32(-np.inf))]
        c = next((x for x in cands if F32(x * inv) == t and x != 0), None)
        if c is None:
            continue
        d = int(rng.integers(1, 4)) * (1 if c > 0 else -1)
        s = F32(c / F32(d))
        if s <= 0 or F32(s * F32(d)) != c:
            continue
        zs = np.arange(max(0, -d), min(256, 256 - d))
        good = zs[differs(zs + d, s, zs)]
        if len(good):
            z = int(rng.choice(good))
            return float(s), z, np.arange(256)[differs(np.arange(256), s, z)]
    return None


def unary_codes(vec_fn, scalar_fn):
    """The codes 0..255 whose vector and scalar results differ."""
    q = np.arange(256)
    return q[vec_fn(q) != scalar_fn(q)]


def plant_pairs(rng, a, b_full, pairs, frac=0.5):
    """Overwrites a fraction of the elements of `a` (and of `b`, when it has a's shape) with the
    discriminating pairs. `b_full` is b broadcast to a's shape (a view; only written when b has
    a's shape, which the caller signals by passing a writable array). Returns the number planted."""
    pa, pb = pairs
    if len(pa) == 0:
        return 0
    flat_a = a.reshape(-1)
    n = flat_a.size
    pos = np.nonzero(rng.random(n) < frac)[0]
    if b_full.flags.writeable:
        pick = rng.integers(0, len(pa), size=len(pos))
        flat_a[pos] = pa[pick]
        b_full.reshape(-1)[pos] = pb[pick]
        return len(pos)
    # b is broadcast: plant a's half of the pairs whose b value is already there.
    flat_b = np.ascontiguousarray(b_full).reshape(-1)
    by_b = {int(v): pa[pb == v] for v in np.unique(flat_b[pos])}
    planted = 0
    for i in pos:
        match = by_b[int(flat_b[i])]
        if len(match):
            flat_a[i] = match[rng.integers(0, len(match))]
            planted += 1
    return planted
