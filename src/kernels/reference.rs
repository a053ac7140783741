//! The reference GEMM: a direct triple loop, written for clarity rather than speed.

use super::{Accumulation, Int8Gemm};

/// Plain implementation of either accumulation model.
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    acc: Accumulation,
}

impl Reference {
    /// A reference kernel for the given accumulation model.
    pub fn new(acc: Accumulation) -> Self {
        Self { acc }
    }
}

/// Saturates an i32 to the int16 range, as `vpmaddubsw` does for each pair sum.
pub fn sat16(v: i32) -> i32 {
    v.clamp(i16::MIN as i32, i16::MAX as i32)
}

/// One dot product `Σ a[k]·b[k]` under the accumulation model.
pub fn dot(acc: Accumulation, a: &[u8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len());
    match acc {
        Accumulation::Exact => a
            .iter()
            .zip(b)
            .fold(0i32, |s, (&x, &w)| s.wrapping_add(x as i32 * w as i32)),
        Accumulation::PairSaturatingI16 => {
            let mut s = 0i32;
            for (pa, pb) in a.chunks(2).zip(b.chunks(2)) {
                let pair: i32 = pa.iter().zip(pb).map(|(&x, &w)| x as i32 * w as i32).sum();
                s = s.wrapping_add(sat16(pair));
            }
            s
        }
    }
}

impl Int8Gemm for Reference {
    fn name(&self) -> &'static str {
        match self.acc {
            Accumulation::Exact => "reference-exact",
            Accumulation::PairSaturatingI16 => "reference-pair-sat16",
        }
    }

    fn accumulation(&self) -> Accumulation {
        self.acc
    }

    fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
        assert_eq!(a.len(), m * k, "a must be M×K");
        assert_eq!(b.len(), n * k, "b must be N×K");
        assert_eq!(c.len(), m * n, "c must be M×N");
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            for j in 0..n {
                c[i * n + j] = dot(self.acc, row, &b[j * k..(j + 1) * k]);
            }
        }
    }
}
