"""Case data that is the same on every CPU (generator `qparity-gen/2`).

A counter-based SplitMix64 stream per case: output i of case (seed, index) is
`mix(key + (i + 1) * GAMMA)` with `key = mix(mix(seed) + index * GAMMA)`, computed in wrapping
uint64 arithmetic (numpy arrays or Python ints: identical results). Floats are built only from
operations IEEE 754 rounds exactly (+, -, *, /, sqrt, scaling by powers of two, f64 -> f32
conversion), never from transcendental functions, whose last bit depends on the libm or SIMD
variant the CPU selects. So one seed draws the same bits everywhere, and two captures of one seed
differ only where PyTorch's own numerics depend on the CPU.

The methods mirror the subset of `numpy.random.Generator` the capture uses. Normal variates are
Irwin-Hall sums of 12 uniforms (mean 0, variance 1, support +-6): test data, not statistics.
"""

import numpy as np

GENERATOR = "qparity-gen/2"
M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_U = np.uint64


def mix64(z):
    """SplitMix64's finalizer on a Python int (mod 2^64)."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _mix64_np(z):
    """The same finalizer on a numpy uint64 array (wrapping multiplication)."""
    z = np.multiply(z ^ (z >> _U(30)), _U(0xBF58476D1CE4E5B9), dtype=np.uint64)
    z = np.multiply(z ^ (z >> _U(27)), _U(0x94D049BB133111EB), dtype=np.uint64)
    return z ^ (z >> _U(31))


def _size(size):
    if size is None:
        return None, 1
    shape = tuple(int(s) for s in (size if isinstance(size, (list, tuple)) else (size,)))
    n = 1
    for s in shape:
        n *= s
    return shape, n


class Rng:
    """The stream of one case; every draw advances one counter, so the draw order is the data."""

    def __init__(self, seed, index):
        self.key = mix64(mix64(seed) + index * GAMMA)
        self.counter = 0

    def _bits(self, n):
        """n raw 64-bit outputs as a numpy uint64 array."""
        c = np.arange(self.counter + 1, self.counter + 1 + n, dtype=np.uint64)
        self.counter += n
        z = np.add(_U(self.key), np.multiply(c, _U(GAMMA), dtype=np.uint64), dtype=np.uint64)
        return _mix64_np(z)

    def _bits1(self):
        self.counter += 1
        return mix64(self.key + self.counter * GAMMA)

    def integers(self, low, high=None, size=None, dtype=np.int64):
        """Uniform integers in [low, high) (numpy's convention; `integers(n)` = [0, n))."""
        if high is None:
            low, high = 0, low
        low, high = int(low), int(high)
        span = high - low
        if span <= 0:
            raise ValueError(f"empty range [{low}, {high})")
        if span > 1 << 63:
            raise ValueError("range wider than 2^63")
        shape, n = _size(size)
        if shape is None:
            b = self._bits1()
            v = ((b >> 32) * span) >> 32 if span <= 1 << 32 else b % span
            return low + v
        b = self._bits(n)
        if span <= 1 << 32:
            v = np.multiply(b >> _U(32), _U(span), dtype=np.uint64) >> _U(32)
        else:
            v = b % _U(span)
        return (v.astype(np.int64) + np.int64(low)).astype(dtype).reshape(shape)

    def random(self, size=None):
        """Uniform floats in [0, 1): 53 random bits times 2^-53 (exact)."""
        shape, n = _size(size)
        if shape is None:
            return float(self._bits1() >> 11) * 2.0**-53
        return ((self._bits(n) >> _U(11)).astype(np.float64) * 2.0**-53).reshape(shape)

    def uniform(self, low=0.0, high=1.0, size=None):
        low, high = float(low), float(high)
        u = self.random(size)
        return low + (high - low) * u

    def standard_normal(self, size=None):
        shape, n = _size(size)
        u = self.random((12, n))
        acc = u[0].copy()
        for i in range(1, 12):
            acc = acc + u[i]
        z = acc - 6.0
        return float(z[0]) if shape is None else z.reshape(shape)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return float(loc) + float(scale) * self.standard_normal(size)

    def permutation(self, n):
        """A permutation of range(n): the stable argsort of n random keys."""
        return np.argsort(self._bits(int(n)), kind="stable")

    def choice(self, seq):
        return seq[self.integers(0, len(seq))]

    def log_uniform(self, lo, hi):
        """A double in [lo, hi], spread evenly over binades: a uniform mantissa in [1, 2) times a
        uniform power of two (exact scaling), redrawn until it lies in [lo, hi]."""
        import math

        e_lo = math.frexp(lo)[1] - 1
        e_hi = math.frexp(hi)[1] - 1
        while True:
            x = math.ldexp(1.0 + self.random(), self.integers(e_lo, e_hi + 1))
            if lo <= x <= hi:
                return x


def self_test():
    """The scalar and vector paths agree, and a known seed gives known bits (run by --self-test)."""
    a, b = Rng(7, 3), Rng(7, 3)
    vec = a._bits(5).tolist()
    sca = [b._bits1() for _ in range(5)]
    assert vec == sca, (vec, sca)
    r, s = Rng(1, 2), Rng(1, 2)
    assert r.integers(-5, 9, size=4).tolist() == [s.integers(-5, 9) for _ in range(4)]
    assert Rng(0, 0).random() == Rng(0, 0).random(size=1)[0]
    return vec
