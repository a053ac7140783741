"""Pins of the pooling window rules (part of the `pins` suite, xtask/capture/pins.py): quantized
`adaptive_avg_pool2d` cases whose sizes make one rule of docs/NUMERICS.md and its nearest
alternative choose different windows.

- R34 (ATen `native/quantized/cpu/AdaptiveAveragePooling.cpp` `start_index` / `end_index`):
  the quantized kernels bound output `o`'s window in f32,
  `[floor(f32(f32(o·in) / f32(out))), ceil(f32(f32((o+1)·in) / f32(out))))`. Alternative: the
  exact integer bounds of the float kernels (`native/AdaptivePooling.h`). The two differ only once
  `o·in` passes 2^24, so the cases pool one axis of about 2 900 to 6 000 elements to a size
  where some window's bounds round apart, with the codes drawn until the two windows average to
  different codes. The NCHW kernel (raw codes, `r = f32(f32(1/kh)/kw)`) and the NHWC kernel
  (`acc = Σ q − kh·kw·zp`, FBGEMM's `Quantize` by `1/m`) alternate with the layout; every engine
  takes ATen's kernels here (QNNPACK's needs the output to divide the input).

The search emulates both with numpy float32 scalars; PyTorch then decides.
"""

import math

import numpy as np
import torch

from common import tensor
from qop_calls import QOP_CALLS
from qops import qscale, qtensor

F = np.float32


def bounds_f32(o, out, size):
    """R34: the quantized kernels' window of output o, bounds in f32."""
    start = math.floor(F(F(o * size) / F(out)))
    end = math.ceil(F(F((o + 1) * size) / F(out)))
    return start, end


def bounds_int(o, out, size):
    """The alternative: the float kernels' exact integer bounds."""
    return (o * size) // out, -((-(o + 1) * size) // out)


def _sizes(rng):
    """(in, out) along one axis on which at least one window's two bounds differ, and no f32
    window ends past the axis (there ATen reads the next element in memory, or past the tensor:
    an undefined result, modelled by qparity but not a pin)."""
    while True:
        size = int(rng.integers(2900, 6001))
        out = int(rng.integers(size + 1, 2 * size)) if rng.integers(0, 2) else int(rng.integers(size // 2, size))
        if bounds_f32(out - 1, out, size)[1] > size:
            continue
        if any(bounds_f32(o, out, size) != bounds_int(o, out, size) for o in range(out)):
            return size, out


def _average(codes, win, zp, nhwc):
    """The quantized kernel's code for one window (one channel's codes along the pooled axis)."""
    vals = codes[win[0]:win[1]]
    area = len(vals)
    if not nhwc:
        r = F(F(1.0) / F(area))  # f32(f32(1/kh)/kw) with one of kh, kw equal to 1
        return int(np.rint(F(F(int(vals.sum())) * r)))
    m = F(F(1.0) / F(area))  # in_s / out_s = 1: the output keeps the input's qparams
    inv = F(F(1.0) / F(F(1.0) / m))
    acc = int(vals.sum()) - area * zp
    return int(min(max(zp + int(np.rint(F(F(acc) * inv))), 0), 255))


def r34_case(rng, tag, k, engine):
    """An adaptive_avg_pool2d case on which R34's f32 window bounds and the integer ones give
    different codes. k picks the layout (odd: channels-last) and the pooled axis (W, then H)."""
    channels_last = k % 2 == 1
    along_w = (k // 2) % 2 == 0
    c = int(rng.integers(2 if channels_last else 1, 4))  # channels-last with C = 1 is NCHW too
    size, out = _sizes(rng)
    scale, zp = qscale(rng), int(rng.integers(0, 256))
    differing = [o for o in range(out) if bounds_f32(o, out, size) != bounds_int(o, out, size)]
    # One channel is channels-last-contiguous in either format: ATen runs its NHWC kernel.
    nhwc = channels_last or c == 1
    while True:
        codes = rng.integers(0, 256, size=(c, size))
        rule = [[_average(codes[ch], bounds_f32(o, out, size), zp, nhwc) for o in range(out)]
                for ch in range(c)]
        alt = [[_average(codes[ch], bounds_int(o, out, size), zp, nhwc) for o in range(out)]
               for ch in range(c)]
        if any(rule[ch][o] != alt[ch][o] for ch in range(c) for o in differing):
            break
    shape = [1, c, 1, size] if along_w else [1, c, size, 1]
    x, rec, layout = qtensor(codes.reshape(shape), shape, scale, zp, channels_last)
    params = {"output_size": [1, out] if along_w else [out, 1]}
    y = QOP_CALLS["adaptive_avg_pool2d"]([x], params)
    got = y.int_repr().contiguous().numpy().reshape(c, out)
    args = {"engine": engine, "inputs": [rec], "params": params,
            "output_scale": float(y.q_scale()), "output_zero_point": int(y.q_zero_point())}
    expected = {"int_repr": tensor(y.int_repr().contiguous())}
    n = c * out
    ours = sum(int(got[ch][o]) == rule[ch][o] for ch in range(c) for o in range(out))
    theirs = sum(int(got[ch][o]) == alt[ch][o] for ch in range(c) for o in range(out))
    return "adaptive_avg_pool2d", args, expected, [layout], (ours, theirs, n)


# (tag, builder(rng, tag, k, engine) -> (op, args, expected, extra tags, (rule, alternative, n)))
POOL_RULES = [
    ("R34-adaptive-bounds-f32", r34_case),
]
