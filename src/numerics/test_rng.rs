//! A small deterministic generator for unit tests in the lower layers (splitmix64), which may
//! not reach up to [`crate::golden`]'s generator.

/// splitmix64 over a seed and a stream index.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, index: u64) -> Self {
        Rng(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    pub(crate) fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
