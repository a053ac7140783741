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
    x, rec, layout = qtensor(codes, shape, scale, zp, rnd % 2 == 1)
    return x, rec, [flavour, layout]


def qtensor(codes, shape, scale, zp, channels_last):
    """A quint8 tensor of these codes (logical order) and its record; channels-last if asked and
    4-D. Returns (tensor, record, layout tag)."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(shape)
    x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes), scale, zp)
    channels_last = channels_last and len(shape) == 4
    if channels_last:
        x = to_channels_last(x)
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


# ---------------------------------------------------------------------------------------------
# Elementwise ops on quantized tensors (add, mul, their scalar forms, cat, hardswish, hardsigmoid,
# leaky_relu): layouts, broadcasts and inputs that tell ATen's vector and scalar lambdas apart.

import ties


def _qtensor(codes, scale, zp, channels_last):
    """A quint8 tensor from codes in logical order, in the given memory format (channels-last
    strides also for N×C×1×1 and C = 1, as golden/README.md documents), and its record."""
    codes = np.asarray(codes)
    x, rec, _ = qtensor(codes, list(codes.shape), scale, zp, channels_last)
    return x, rec


def _codes(rng, shape, flavour, zp):
    n = int(np.prod(shape))
    if flavour == "band":
        c = np.clip(zp + rng.integers(-8, 9, size=n), 0, 255)
    elif flavour == "saturated":
        c = rng.integers(0, 2, size=n) * 255
    else:
        c = rng.integers(0, 256, size=n)
    return np.asarray(c, dtype=np.int64).reshape(shape)


def _f32(x):
    return float(np.float32(x))


def _scale_near(rng, s, lo=1 / 8, hi=8):
    """An f32 scale within a factor [lo, hi] of s."""
    return _f32(s * rng.log_uniform(lo, hi))


def _binary_shapes(rng, rnd):
    """(shape_a, shape_b, channels_last_a, channels_last_b, tag), cycling by round through equal
    shapes (contiguous, channels-last, mixed), the squeeze-excite broadcast [N,C,H,W] x [N,C,1,1]
    in both layouts, and other broadcasts (lower rank, size-1 dims)."""
    shape = qshape(rng)
    n, c, h, w = shape
    kind = rnd % 6
    if kind == 0:
        return shape, shape, False, False, "same_contiguous"
    if kind == 1:
        return shape, shape, True, True, "same_channels_last"
    if kind == 2:
        return shape, [n, c, 1, 1], False, False, "broadcast_nc11_contiguous"
    if kind == 3:
        return shape, [n, c, 1, 1], True, True, "broadcast_nc11_channels_last"
    if kind == 4:
        cl = bool(rng.random() < 0.5)
        return shape, shape, cl, not cl, "mixed_layouts"
    b = [[c, 1, 1], [1, 1, 1, w], [1], [n, 1, h, w], [1, c, h, w], [n, c, 1, 1]][int(rng.integers(0, 6))]
    cl_a = bool(rng.random() < 0.5)
    cl_b = bool(len(b) == 4 and rng.random() < 0.5)
    if rng.random() < 0.5:  # the smaller input first: qa itself is broadcast
        return b, shape, cl_b, cl_a, "broadcast_first"
    return shape, b, cl_a, cl_b, "broadcast_other"


def _binary_case(rng, rnd, engine, op):
    """add / add_relu / mul / mul_relu: two inputs, output qparams passed to the op."""
    relu = op.endswith("_relu")
    shape_a, shape_b, cl_a, cl_b, layout = _binary_shapes(rng, rnd)
    flavour = ["uniform", "uniform", "band", "saturated"][int(rng.integers(0, 4))]
    pow2 = bool(rng.random() < 0.25)
    tags = [layout, flavour]
    for attempt in range(24):
        if pow2:
            so = 2.0 ** -int(rng.integers(2, 9))
            sa, sb = so * 2.0 ** -int(rng.integers(0, 3)), so * 2.0 ** -int(rng.integers(0, 3))
        else:
            so = _f32(rng.log_uniform(2.0**-9, 2.0**-2))
            sa, sb = _scale_near(rng, so), _scale_near(rng, so)
        if op.startswith("mul"):
            # Occasionally so tiny enough that |c·m| reaches 2^31 (the vector body gives 0 there).
            huge = attempt == 0 and not pow2 and rng.random() < 0.15
            if pow2:  # m = 2^-k: c·m lands on exact halves
                so = sa * sb * 2.0 ** int(rng.integers(1, 7))
            else:
                so = _f32(sa * sb * (2.0**-20 if huge else rng.log_uniform(4.0, 256.0)))
            if huge:
                tags.append("multiplier_overflow")
        za, zb, zo = (int(rng.integers(0, 256)) for _ in range(3))
        if relu and engine == "qnnpack":
            zo = min(zo, 254)  # qnnpack add_relu rejects an empty [255, 255] output range
        pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if op.startswith("add") and not pow2:
            pairs = ties.add_pairs(sa, za, sb, zb, so, zo, relu)
            if len(pairs[0]) == 0:
                continue
        if op.startswith("mul") and not pow2:
            sensitive, near = ties.mul_pairs(sa, za, sb, zb, so, zo, relu)
            if len(sensitive[0]) == 0 and attempt < 23 and not huge:
                continue
            k = 256 // max(1, len(sensitive[0]))  # as many sensitive plants as near-tie ones
            pairs = tuple(np.concatenate([np.repeat(s_, k), n_]) for s_, n_ in zip(sensitive, near))
        break
    a = _codes(rng, shape_a, flavour, za)
    b = _codes(rng, shape_b, flavour, zb)
    if len(pairs[0]):
        full = np.broadcast_shapes(tuple(shape_a), tuple(shape_b))
        if tuple(shape_a) == tuple(shape_b):
            planted = ties.plant_pairs(rng, a, b, pairs)
        elif tuple(shape_a) == full:
            b = pairs[1][rng.integers(0, len(pairs[1]), size=b.size)].reshape(shape_b)
            planted = ties.plant_pairs(rng, a, np.broadcast_to(b, full), pairs)
        else:  # a is broadcast: fix its codes from the pairs, plant b's half
            a = pairs[0][rng.integers(0, len(pairs[0]), size=a.size)].reshape(shape_a)
            planted = ties.plant_pairs(rng, b, np.broadcast_to(a, full), (pairs[1], pairs[0]))
        if planted:
            tags.append("lambda_ties" if op.startswith("add") else "requant_ties")
    if pow2:
        tags.append("pow2_scales")
    xa, ra = _qtensor(a, sa, za, cl_a)
    xb, rb = _qtensor(b, sb, zb, cl_b)
    params = {"scale": so, "zero_point": zo}
    args, expected = _result(engine, [ra, rb], params, QOP_CALLS[op]([xa, xb], params))
    return args, expected, tags


def add(rng, rnd, engine):
    return _binary_case(rng, rnd, engine, "add")


def add_relu(rng, rnd, engine):
    return _binary_case(rng, rnd, engine, "add_relu")


def mul(rng, rnd, engine):
    return _binary_case(rng, rnd, engine, "mul")


def mul_relu(rng, rnd, engine):
    return _binary_case(rng, rnd, engine, "mul_relu")


def _cat_differs(so, zo, relu):
    """Per code: whether qcat_nhwc_kernel's vector channels (FMA dequantize, QuantizeAvx2 with
    f32(1.0/so)) and scalar channels (plain dequantize, quantize_val) give different outputs."""
    def differs(q, s, z):
        xv, xs = ties.deq_fma(q, s, z), ties.deq_plain(q, s, z)
        if relu:
            xv, xs = np.maximum(xv, ties.F32(0)), np.maximum(xs, ties.F32(0))
        return ties.quant_vec(xv, ties.inv64(so), zo) != ties.quant_val(xs, so, zo)
    return differs


def _cat_case(rng, rnd, engine, op):
    """cat / cat_relu: 1-4 inputs with channel counts around the kernel's 8 / 32 blocks. By
    round: all channels-last along dim 1 (the NHWC kernel), all contiguous along dim 1, mixed
    layouts, other dims and ranks. Each input's qparams are the output's (copied by the NHWC
    kernel unless relu), constructed so that its vector and scalar channels round some codes
    apart (those codes planted in half its elements), or random."""
    relu = op.endswith("_relu")
    kind = rnd % 4
    k = int(rng.integers(1, 5))
    so = _f32(rng.log_uniform(2.0**-9, 2.0**-1))
    zo = int(rng.integers(0, 256))
    n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    if rng.random() < 0.15:
        h = w = 1  # NCHW-strided and still channels-last contiguous
    dim, rank = 1, 4
    if kind == 3:
        rank = int(rng.integers(2, 5))
        dim = int(rng.integers(-rank, rank))
    base = [n, 0, h, w][:rank] if rank == 4 else [int(rng.integers(1, 9)) for _ in range(rank)]
    differs = _cat_differs(so, zo, relu)
    xs, recs, tags = [], [], ["dim1_channels_last", "dim1_contiguous", "dim1_mixed", "other_dims"][kind:kind + 1]
    for i in range(k):
        shape = list(base)
        shape[dim] = int(CHANNELS[int(rng.integers(0, len(CHANNELS)))])
        cl = {0: True, 1: False, 2: bool(rng.random() < 0.5), 3: bool(rng.random() < 0.5)}[kind]
        flavour = ["uniform", "band", "saturated"][int(rng.integers(0, 3))]
        u = rng.random()
        tie = ties.half_tie_qparams(rng, so, zo, differs) if u < 0.45 else None
        if tie is not None:
            s, z, codes = tie
            c = _codes(rng, shape, flavour, z)
            plant = rng.random(c.shape) < 0.5
            c[plant] = codes[rng.integers(0, len(codes), size=int(plant.sum()))]
            tags.append("tie_input")
        elif u < 0.75:
            s, z = so, zo
            c = _codes(rng, shape, flavour, z)
            tags.append("output_qparams_input")
        else:
            s, z = qscale(rng), int(rng.integers(0, 256))
            c = _codes(rng, shape, flavour, z)
        x, rec = _qtensor(c, s, z, cl)
        xs.append(x)
        recs.append(rec)
    params = {"dim": dim, "scale": so, "zero_point": zo}
    args, expected = _result(engine, recs, params, QOP_CALLS[op](xs, params))
    return args, expected, sorted(set(tags))


def cat(rng, rnd, engine):
    return _cat_case(rng, rnd, engine, "cat")


def cat_relu(rng, rnd, engine):
    return _cat_case(rng, rnd, engine, "cat_relu")


F32 = np.float32


def _hardswish_f(x):
    """f32(f32(x * min(max(f32(x + 3), 0), 6)) / 6), elementwise in f32."""
    c = np.minimum(np.maximum(x + F32(3), F32(0)), F32(6))
    return (x * c) / F32(6)


def _unary_paths(s, z, f, vec_inv, so, zo):
    """For input qparams s, z (arrays of shape (D, 1)) and every code 0..255: the outputs of an
    ATen unary kernel's vector lambda (FMA dequantize, f, QuantizeAvx2 with vec_inv) and scalar
    lambda (plain dequantize, f, quantize_val), each of shape (D, 256). The FMA is emulated in
    f64, exactly (see ties.deq_fma)."""
    q = np.arange(256)
    pre = (s * (-z).astype(F32)).astype(F32)
    xv = (s.astype(np.float64) * q + pre.astype(np.float64)).astype(F32)
    xs = s * (q - z).astype(F32)
    return ties.quant_vec(f(xv), vec_inv, zo), ties.quant_val(f(xs), so, zo)


def _unary_tie_qparams(rng, f, vec_inv, so, zo, draws=4096):
    """Input qparams near so whose vector and scalar lambdas give different outputs for some
    codes (drawing up to 4 batches of `draws` candidates), and those codes; None if none."""
    for _ in range(4):
        m = 1.0 + rng.random(size=draws)
        e = rng.integers(-4, 4, size=draws)
        s = (so * np.ldexp(m, e)).astype(F32).reshape(-1, 1)
        z = rng.integers(0, 256, size=draws).reshape(-1, 1)
        v, sc = _unary_paths(s, z, f, vec_inv, so, zo)
        hits = np.nonzero((v != sc).any(axis=1))[0]
        if len(hits):
            i = int(hits[int(rng.integers(0, len(hits)))])
            return float(s[i, 0]), int(z[i, 0]), np.nonzero(v[i] != sc[i])[0]
    return None


def _unary_input(rng, rnd, f, vec_inv, so, zo):
    """A unary op's input by round: on rounds 0, 1 (mod 3) qparams whose vector and scalar
    lambdas round some codes apart, those codes planted in half the elements; else qinput's
    flavours. Channels-last on odd rounds. Returns (tensor, record, tags)."""
    tie = _unary_tie_qparams(rng, f, vec_inv, so, zo) if rnd % 3 != 2 else None
    if tie is None:
        return qinput(rng, rnd)
    s, z, codes = tie
    shape = qshape(rng)
    c = rng.integers(0, 256, size=int(np.prod(shape)))
    plant = rng.random(size=c.size) < 0.5
    c[plant] = codes[rng.integers(0, len(codes), size=int(plant.sum()))]
    x, rec = _qtensor(c.reshape(shape), s, z, rnd % 2 == 1)
    return x, rec, ["lambda_ties", rec["memory_format"]]


def hardswish(rng, rnd, engine):
    so = _f32(rng.log_uniform(2.0**-8, 2.0**-1))
    zo = int(rng.integers(0, 256))
    x, rec, tags = _unary_input(rng, rnd, _hardswish_f, ties.inv64(so), so, zo)
    params = {"scale": so, "zero_point": zo}
    args, expected = _result(engine, [rec], params, QOP_CALLS["hardswish"]([x], params))
    return args, expected, tags


def _hardsigmoid_f(x):
    """f32(min(max(f32(x + 3), 0), 6) / 6), elementwise in f32."""
    return np.minimum(np.maximum(x + F32(3), F32(0)), F32(6)) / F32(6)


def hardsigmoid(rng, rnd, engine):
    # The kernel picks (1/256, 0): the case records PyTorch's choice, qparity predicts it.
    x, rec, tags = _unary_input(rng, rnd, _hardsigmoid_f, F32(256), 0.00390625, 0)
    args, expected = _result(engine, [rec], None, QOP_CALLS["hardsigmoid"]([x], None))
    return args, expected, tags


def leaky_relu(rng, rnd, engine):
    slope = [0.01, 0.1, 0.2, 1.0 / 3.0, rng.uniform(0.0, 1.0)][int(rng.integers(0, 5))]
    so = _f32(rng.log_uniform(2.0**-8, 2.0**-1))
    zo = int(rng.integers(0, 256))

    def f(x):
        return np.where(x > F32(0), x, x * F32(slope)).astype(F32)

    x, rec, tags = _unary_input(rng, rnd, f, ties.inv32(so), so, zo)
    params = {"negative_slope": float(slope), "scale": so, "zero_point": zo}
    args, expected = _result(engine, [rec], params, QOP_CALLS["leaky_relu"]([x], params))
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

# "scale bits:zero point:alpha:output scale bits:output zero point", where code 128 sits on a
# rounding boundary of qelu_kernel: the first 24 measured with torch (its vector body and scalar
# tail give different codes), the last 24 where SLEEF's expm1f (the body's) and glibc's expm1f
# round differently (found with the real functions through ctypes, the body checked with torch).
ELU_TIES = [
    "3b46a671:251:1.3010567426681519:3b5e1000:207", "3b90f58b:159:1.0:3b066000:217",
    "3c02be72:160:1.0:3bdc7000:187", "3ad7be49:188:0.3511398136615753:3b2d2000:99",
    "3d3bfc91:181:1.0:3c074000:169", "3da4549e:140:1.5979981422424316:3c5f4000:249",
    "3b7eab5e:173:0.2708456516265869:3a0d8000:213", "3e06129a:98:0.8290973901748657:3d797000:97",
    "380e2e8c:29:1.8724536895751953:38380000:145", "3d158cfd:143:1.723891258239746:3bbdd000:220",
    "3b10faf9:23:0.3184942603111267:3b9cf000:175", "3938cb1c:203:1.8496819734573364:3b74e000:64",
    "3d9e0fe2:133:1.2585358619689941:3c451000:206", "3bd17367:183:1.0:3bd0e000:201",
    "3bf35f20:188:0.8975013494491577:3b0ab000:169", "3ae78b47:194:1.6055001020431519:3b587000:134",
    "3b7ce7ba:158:0.21519044041633606:39d68000:80", "3b4609db:219:1.0:3d178000:175",
    "3db58cab:132:1.0:3c8bc000:190", "3a6a8140:163:0.5271479487419128:39998000:242",
    "3a88cbdd:189:1.0:3bd4c000:198", "3bca1982:135:1.0:3a88c000:187", "3b5cef1b:158:1.0:3bd96000:71",
    "3c1d3112:252:0.40086594223976135:3c6a5000:188",
    "3daf2270:150:1.0:3ba9e000:186", "3b8bb2a8:216:1.0:3b788000:208", "3b1af31a:235:1.0:3c7c9000:77",
    "3ba1e3b7:198:0.49972647428512573:3c1a7000:63", "3bd39f0d:212:1.0:3b20f000:175",
    "3b55d77c:206:1.0:3bad4000:237", "3c2a124f:248:1.686140775680542:3c148000:253",
    "3bd03fd0:183:1.1562780141830444:3d56f000:95", "3ba7931a:147:1.0:3a3a0000:141",
    "3bd22148:211:1.0:3b4db000:231", "3be44fff:199:1.0:3d552000:107", "3b84d8e9:204:1.0:3bc7c000:87",
    "3c3b852b:167:0.7497919201850891:3b31d000:212", "3c2e7b13:242:1.4989601373672485:3c81d000:176",
    "3bfa1314:242:1.8242313861846924:3bb38000:194", "3ca19716:156:1.2650105953216553:3b8b1000:248",
    "3b60b437:249:1.263284683227539:3cc8d000:38", "3c759728:221:1.0:3c1cf000:167",
    "3b536198:210:1.0:3b73b000:187", "3b7f39bc:233:1.988787055015564:3ca84000:34",
    "3b683dab:236:1.0:3bbbc000:183", "3c1edbd3:163:1.0:3afe0000:213",
    "3a9bf116:237:1.4960423707962036:3bd8d000:79", "3dff3df5:138:1.0:3e507000:121",
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


def elu(rng, rnd, engine):
    x, rec, tags, tie = act_input(rng, rnd, ELU_TIES)
    if tie:
        alpha, so, zo = float(tie[0]), _f32_from_hex(tie[1]), int(tie[2])
        coef, in_coef = 1.0, 1.0
    else:
        # Output scale 0.5 to 2 times the input's so the outputs span the codes; alpha as a
        # double (the kernel casts it to f32). Rounds 3 (mod 4) also set ELU's scale and input
        # scale.
        alpha = 1.0 if rng.integers(0, 2) == 0 else float(rng.uniform(0.1, 2.0))
        so = float(np.float32(rec["scale"] * int(rng.integers(8, 33)) / 16))
        zo = int(rng.integers(0, 256))
        coef, in_coef = 1.0, 1.0
        if rnd % 4 == 3:
            coef, in_coef = float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.5, 2.0))
            tags = tags + ["coefs"]
    params = {"output_scale": so, "output_zero_point": zo, "alpha": alpha, "scale": coef,
              "input_scale": in_coef}
    args, expected = _result(engine, [rec], params, QOP_CALLS["elu"]([x], params))
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


def _scalar_input(rng, rnd, scale=None):
    """A scalar op's input: qinput's code flavours (by round), either layout, the scale given or
    drawn."""
    shape = qshape(rng)
    scale = scale if scale is not None else qscale(rng)
    zp = int(rng.integers(0, 256))
    codes = _codes(rng, shape, ["uniform", "band", "saturated"][int(rng.integers(0, 3))], zp)
    x, rec, layout = qtensor(codes, shape, scale, zp, bool(rng.random() < 0.5))
    return x, rec, [layout]


def _add_scalar_number(rng, rnd):
    """(input scale or None, number as a function of (scale, zp), tags) for add.Scalar, cycling by
    round through: z − cq inside 0..255 (sometimes exactly 0 or 255, or c = 0), below 0, above
    255, requantize_from_int ties (power-of-two scale, m = 1/2 or 1/4), c / s on a rounding tie
    (nearbyint to even), and a large c (|cq| up to near 2^31)."""
    kind = rnd % 6
    jitter = float(rng.uniform(-0.45, 0.45))
    if kind == 0:
        edge = int(rng.integers(0, 4))
        if edge == 0:
            return None, lambda s, z: 0.0, ["in_range", "zero"]
        if edge == 1:
            return None, lambda s, z: float(z * s), ["in_range", "edge_0"]
        if edge == 2:
            return None, lambda s, z: float((z - 255) * s), ["in_range", "edge_255"]
        return None, lambda s, z: float((int(rng.integers(z - 255, z + 1)) + jitter) * s), ["in_range"]
    if kind == 1:
        k = int(rng.integers(1, 600))
        return None, lambda s, z: float((z + k + jitter) * s), ["below_0"]
    if kind == 2:
        k = int(rng.integers(1, 600))
        return None, lambda s, z: float((z - 255 - k + jitter) * s), ["above_255", "negative"]
    if kind == 3:
        # zc = −255 (s' = 2s, m = 1/2), −765 (m = 1/4) or 510 (s' = 2s): odd v land on halves.
        zc = [-255, -765, 510][int(rng.integers(0, 3))]
        return 2.0 ** -int(rng.integers(2, 10)), lambda s, z: float((z - zc) * s), ["requant_ties"]
    if kind == 4:
        k = int(rng.integers(-300, 300))
        return 2.0 ** -int(rng.integers(2, 10)), lambda s, z: float((k + 0.5) * s), ["c_over_s_tie"]
    k = int(rng.integers(1000, 2**31 - 300)) * (1 if rng.random() < 0.5 else -1)
    return None, lambda s, z: float((k + jitter) * s), ["large"]


def _mul_scalar_number(rng, rnd):
    """A number for mul.Scalar by round: positive, negative, zero (±0.0), large or tiny."""
    kind = rnd % 4
    if kind == 0:
        return float(rng.log_uniform(0.01, 10.0)), ["positive"]
    if kind == 1:
        return -float(rng.log_uniform(0.01, 10.0)), ["negative"]
    if kind == 2:
        return (0.0 if rng.random() < 0.5 else -0.0), ["zero"]
    c = float(rng.log_uniform(1e4, 1e7) if rng.random() < 0.5 else rng.log_uniform(1e-7, 1e-4))
    return (c if rng.random() < 0.5 else -c), ["extreme"]


def _scalar_case(rng, rnd, engine, op):
    """add_scalar / mul_scalar (± relu): the kernel picks the output qparams (recorded)."""
    if op.startswith("add"):
        scale, number, tags = _add_scalar_number(rng, rnd)
        x, rec, layout = _scalar_input(rng, rnd, scale)
        c = number(rec["scale"], rec["zero_point"])
    else:
        c, tags = _mul_scalar_number(rng, rnd)
        x, rec, layout = _scalar_input(rng, rnd)
    params = {"other": c}
    args, expected = _result(engine, [rec], params, QOP_CALLS[op]([x], params))
    return args, expected, tags + layout


def add_scalar(rng, rnd, engine):
    return _scalar_case(rng, rnd, engine, "add_scalar")


def add_scalar_relu(rng, rnd, engine):
    return _scalar_case(rng, rnd, engine, "add_scalar_relu")


def mul_scalar(rng, rnd, engine):
    return _scalar_case(rng, rnd, engine, "mul_scalar")


def mul_scalar_relu(rng, rnd, engine):
    return _scalar_case(rng, rnd, engine, "mul_scalar_relu")


QOPS = [
    ("relu6", relu6),
    ("hardtanh", hardtanh),
    ("relu", relu),
    ("add", add),
    ("add_relu", add_relu),
    ("mul", mul),
    ("mul_relu", mul_relu),
    ("cat", cat),
    ("cat_relu", cat_relu),
    ("hardswish", hardswish),
    ("hardsigmoid", hardsigmoid),
    ("leaky_relu", leaky_relu),
    ("sigmoid", sigmoid),
    ("tanh", tanh),
    ("elu", elu),
    ("max_pool2d", max_pool2d),
    ("avg_pool2d", avg_pool2d),
    ("adaptive_avg_pool2d", adaptive_avg_pool2d),
    ("mean", mean),
    ("batch_norm2d", batch_norm2d),
    ("flatten", flatten),
    ("add_scalar", add_scalar),
    ("add_scalar_relu", add_scalar_relu),
    ("mul_scalar", mul_scalar),
    ("mul_scalar_relu", mul_scalar_relu),
]
