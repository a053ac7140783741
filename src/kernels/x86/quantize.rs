//! `quantize_per_tensor` f32 → quint8 on AVX2: FBGEMM's `QuantizeAvx2` rule
//! (`src/QuantUtilsAvx2.cc`), as [`crate::numerics::quantize::aten::quantize_avx2`] states it:
//! `v = min(f32(x · inv), 2^31−128)` (NaN → the bound), `cvtps2dq` (RNE, out of range →
//! `INT32_MIN`), wrapping `+ zp`, clamp to 0..255.

use crate::numerics::quantize::aten::quantize_avx2;
use std::arch::x86_64::*;

/// Quantizes `x` into `out` (equal lengths) with `f32(1/scale)` = `inv` and zero point `zp`.
pub fn quantize_u8(x: &[f32], inv: f32, zp: i32, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "quantize: input and output lengths");
    let done = if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available (checked above); the kernel reads and writes only within
        // the two slices.
        unsafe { quantize_avx2_x32(x, inv, zp, out) }
    } else {
        0
    };
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = quantize_avx2(v, inv, zp, 0, 255) as u8;
    }
}

/// The AVX2 body over whole blocks of 32 values; returns how many it wrote.
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2_x32(x: &[f32], inv: f32, zp: i32, out: &mut [u8]) -> usize {
    let n = x.len().min(out.len()) / 32 * 32;
    let q8 = Quantize8::new(inv, zp);
    let mut i = 0;
    while i < n {
        // SAFETY: `i + 8k + 8 <= n <= x.len()`.
        let v = |k: usize| unsafe { _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)) };
        q8.store32(&mut out[i..i + 32], [v(0), v(1), v(2), v(3)]);
        i += 32;
    }
    n
}

/// The `QuantizeAvx2` step on vectors of 8 f32 values, with its constants set once.
#[derive(Clone, Copy)]
pub(super) struct Quantize8 {
    inv: __m256,
    bound: __m256,
    zp: __m256i,
}

impl Quantize8 {
    /// Constants for `f32(1/scale)` = `inv` and zero point `zp`.
    #[target_feature(enable = "avx2")]
    pub(super) fn new(inv: f32, zp: i32) -> Self {
        Quantize8 {
            inv: _mm256_set1_ps(inv),
            // 2^31 − 128, the largest f32 below 2^31.
            bound: _mm256_set1_ps(2147483520.0),
            zp: _mm256_set1_epi32(zp),
        }
    }

    /// Quantizes 4 × 8 values and stores the 32 codes, in order, to `out` (32 bytes).
    #[target_feature(enable = "avx2")]
    pub(super) fn store32(self, out: &mut [u8], v: [__m256; 4]) {
        assert_eq!(out.len(), 32, "quantize: a block of 32 codes");
        let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        let q = v.map(|v| {
            // `min_ps(v, bound)` returns `bound` for a NaN `v`, as the scalar rule.
            let v = _mm256_min_ps(_mm256_mul_ps(v, self.inv), self.bound);
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(v), self.zp);
            _mm256_min_epi32(_mm256_max_epi32(r, lo), hi)
        });
        let w = _mm256_packus_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        // Undoes the lane interleaving of the two packs.
        let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `out` holds exactly 32 bytes (asserted above).
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, w) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::test_rng::Rng;

    #[test]
    fn avx2_quantize_equals_the_scalar_rule() {
        let mut r = Rng::new(7, 3);
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            -0.5,
            -2.5,
            3e9,
            -3e9,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        for len in [0, 1, 31, 32, 33, 95, 1000] {
            for &(inv, zp) in &[
                (1.0f32, 0),
                (37.5, 128),
                (0.013, 255),
                (1e-3, 3),
                (3e8, 200),
            ] {
                let mut x: Vec<f32> = (0..len)
                    .map(|_| (r.bits() as i64 % 40_000) as f32 / 7.0 - 2000.0)
                    .collect();
                for (k, &s) in specials.iter().enumerate() {
                    if let Some(v) = x.get_mut(k * 3) {
                        *v = s / inv.max(1.0);
                    }
                }
                // Exact ties of the scaled value.
                for (k, v) in x.iter_mut().enumerate().skip(50).step_by(7) {
                    *v = (k as f32 + 0.5) / inv;
                }
                let mut got = vec![0u8; len];
                quantize_u8(&x, inv, zp, &mut got);
                let want: Vec<u8> = x
                    .iter()
                    .map(|&v| quantize_avx2(v, inv, zp, 0, 255) as u8)
                    .collect();
                assert_eq!(got, want, "len {len}, inv {inv}, zp {zp}");
            }
        }
    }
}
