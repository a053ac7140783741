//! The capture's data generator (`xtask/capture/rng.py`, generator `qparity-gen/2`), re-derived in
//! Rust, so that large float parameters can be stored as a generator description instead of their
//! values: a counter-based SplitMix64 stream per `(seed, stream)`, and floats built only from
//! exactly rounded operations, so both sides produce the same bits.

/// SplitMix64's increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream of one `(seed, index)`: output `i` is `mix(key + (i + 1)·GAMMA)` with
/// `key = mix(mix(seed) + index·GAMMA)`.
#[derive(Debug, Clone)]
pub struct Rng {
    key: u64,
    counter: u64,
}

impl Rng {
    /// `Rng(seed, index)` of rng.py.
    pub fn new(seed: u64, index: u64) -> Self {
        Self {
            key: mix64(mix64(seed).wrapping_add(index.wrapping_mul(GAMMA))),
            counter: 0,
        }
    }

    /// The next raw 64-bit output.
    pub fn bits(&mut self) -> u64 {
        self.counter += 1;
        mix64(self.key.wrapping_add(self.counter.wrapping_mul(GAMMA)))
    }

    /// The next uniform double in [0, 1): 53 bits times 2^-53 (exact).
    #[inline]
    fn next_unit(&mut self) -> f64 {
        const TWO_M53: f64 = 1.0 / 9_007_199_254_740_992.0;
        (self.bits() >> 11) as f64 * TWO_M53
    }

    /// `random(size=n)`: n uniform doubles in [0, 1), 53 bits times 2^-53 (exact).
    pub fn random(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next_unit()).collect()
    }

    /// [`Rng::uniform`] rounded to f32, without the intermediate doubles.
    pub fn uniform_f32(&mut self, low: f64, high: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (low + (high - low) * self.next_unit()) as f32)
            .collect()
    }

    /// `standard_normal(size=n)`: Irwin-Hall sums of 12 uniforms minus 6. rng.py draws the 12·n
    /// uniforms as a 12 × n array (row-major) and adds the rows in order.
    pub fn standard_normal(&mut self, n: usize) -> Vec<f64> {
        let u = self.random(12 * n);
        (0..n)
            .map(|j| {
                let mut acc = u[j];
                for i in 1..12 {
                    acc += u[i * n + j];
                }
                acc - 6.0
            })
            .collect()
    }

    /// `normal(loc, scale, size=n)`: `loc + scale·z`.
    pub fn normal(&mut self, loc: f64, scale: f64, n: usize) -> Vec<f64> {
        self.standard_normal(n)
            .into_iter()
            .map(|z| loc + scale * z)
            .collect()
    }

    /// `uniform(low, high, size=n)`: `low + (high − low)·u`.
    pub fn uniform(&mut self, low: f64, high: f64, n: usize) -> Vec<f64> {
        self.random(n)
            .into_iter()
            .map(|u| low + (high - low) * u)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by rng.py (`Rng(7, 3)._bits(3)`, `Rng(1, 2).standard_normal(2)`,
    /// `Rng(5, 9).uniform(-2.0, 3.0, 2)`): the generator is specified by them.
    #[test]
    fn streams_match_the_capture_generator() {
        let mut r = Rng::new(7, 3);
        let b: Vec<u64> = (0..3).map(|_| r.bits()).collect();
        assert_eq!(b, PY_BITS);
        let z = Rng::new(1, 2).standard_normal(2);
        assert_eq!(z.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), PY_NORMAL);
        let u = Rng::new(5, 9).uniform(-2.0, 3.0, 2);
        let u32s = Rng::new(5, 9).uniform_f32(-2.0, 3.0, 2);
        assert_eq!(u32s, u.iter().map(|&v| v as f32).collect::<Vec<_>>());
        assert_eq!(
            u.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            PY_UNIFORM
        );
    }

    const PY_BITS: [u64; 3] = [
        10429326823318163601,
        1892796199240232015,
        9914509409620021394,
    ];
    const PY_NORMAL: [u64; 2] = [4603089622974588696, 13831185160917882368];
    const PY_UNIFORM: [u64; 2] = [4608748044655382932, 13833232386796596654];
}
