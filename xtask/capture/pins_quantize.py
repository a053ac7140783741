"""Pins of the quantize arithmetic (part of the `pins` suite, xtask/capture/pins.py):
`torch.quantize_per_tensor` cases whose inputs sit so close to a rounding tie that one rule of
docs/NUMERICS.md and its nearest alternative give different codes.

- R8 (ATen `quantize_tensor_per_tensor_affine_cpu` stores the double scale in FBGEMM's f32
  `TensorQuantizationParams`; FBGEMM `src/QuantUtilsAvx2.cc` `QuantizeAvx2` multiplies by
  `1.0f / scale`): `q = RNE(f32(x · f32(1 / f32(s)))) + zp`, clamped. Alternative: the reciprocal
  of the double scale, `f32(1 / s)`. Cases draw a double scale whose two reciprocals differ, then
  inputs within a few f32 steps of `(t + 1/2) / inv` where the two products round apart.

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


def r8_scale_case(rng, tag, k):
    """A quantize_per_tensor case on whose tie inputs R8's f32 scale and the double one differ."""
    dtype, qmin, qmax = RANGES[k % 2]
    while True:
        s = float(rng.uniform(0.002, 0.5))
        inv, alt = F(1.0) / F(s), F(1.0 / s)
        if inv != alt:
            break
    zp = int(rng.integers(qmin + 40, qmax - 40))
    xs = []
    while len(xs) < int(rng.integers(8, 25)):
        t = int(rng.integers(-30, 30))
        for x in f32_walk((t + 0.5) / float(inv), WINDOW):
            if _q(x, inv, zp, qmin, qmax) != _q(x, alt, zp, qmin, qmax):
                xs.append(F(x))
                break
    x = np.array(xs, dtype=np.float32)
    xt = torch.from_numpy(x.copy())
    q = torch.quantize_per_tensor(xt, s, zp, dtype).int_repr()
    rule = [_q(v, inv, zp, qmin, qmax) for v in x]
    other = [_q(v, alt, zp, qmin, qmax) for v in x]
    args = {"input": tensor(xt), "scale": s, "zero_point": zp, "dtype": dtype_name(dtype)}
    expected = {"int_repr": tensor(q)}
    got = [int(v) for v in q.numpy()]
    summary = (sum(a == b for a, b in zip(got, rule)), sum(a == b for a, b in zip(got, other)), len(got))
    return "quantize_per_tensor", args, expected, summary


# (tag, builder(rng, tag, k) -> (op, args, expected, (rule matches, alternatives matched, n)))
QUANTIZE_RULES = [
    ("R8-quantize-f32-scale-reciprocal", r8_scale_case),
]
