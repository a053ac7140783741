//! ATen's vector `qadd` / `qadd_relu` lambda (`kernels/QuantizedOpKernels.cpp: qadd_kernel`)
//! on AVX2 + FMA, 32 codes a step: both inputs widened to f32, `fma(s, q, premul)` each, added,
//! ReLU'd, then FBGEMM's `QuantizeAvx2` (as [`crate::kernels::x86::quantize`]).

use crate::kernels::Isa;
use crate::numerics::quantize::aten::quantize_avx2;
use std::arch::x86_64::*;

/// The lambda's constants: `c = f32(fma(a.0, qa, a.1) + fma(b.0, qb, b.1))`, `max(c, 0)` under
/// `relu`, then `QuantizeAvx2(c, inv, zero_point)` clamped to 0..255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddLambda {
    /// Input a's `(f32 scale, premultiplied offset f32(scale · −zp))`.
    pub a: (f32, f32),
    pub b: (f32, f32),
    pub relu: bool,
    pub inv: f32,
    pub zero_point: i32,
}

impl AddLambda {
    /// The code of one pair (scalar).
    #[inline]
    pub fn apply(&self, qa: u8, qb: u8) -> u8 {
        let c = self.a.0.mul_add(qa as f32, self.a.1) + self.b.0.mul_add(qb as f32, self.b.1);
        let c = if self.relu { c.max(0.0) } else { c };
        quantize_avx2(c, self.inv, self.zero_point, 0, 255) as u8
    }
}

/// `out[i] = f.apply(a[i], b[i])` (equal lengths); `false` (nothing written) without AVX2 + FMA.
pub fn add_u8(f: &AddLambda, a: &[u8], b: &[u8], out: &mut [u8]) -> bool {
    assert!(a.len() == out.len() && b.len() == out.len(), "add: lengths");
    if !Isa::Avx2.detected() {
        return false;
    }
    // SAFETY: `Isa::Avx2` is detected only on CPUs with AVX2 and FMA; the kernel stays within
    // the three slices.
    let done = unsafe { add_avx2_x32(f, a, b, out) };
    for ((o, &x), &y) in out[done..].iter_mut().zip(&a[done..]).zip(&b[done..]) {
        *o = f.apply(x, y);
    }
    true
}

/// Whole blocks of 32; returns how many codes it wrote.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_avx2_x32(f: &AddLambda, a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
    let n = out.len().min(a.len()).min(b.len()) / 32 * 32;
    let (sa, pa) = (_mm256_set1_ps(f.a.0), _mm256_set1_ps(f.a.1));
    let (sb, pb) = (_mm256_set1_ps(f.b.0), _mm256_set1_ps(f.b.1));
    // ReLU's `max(c, 0)`; without it a floor no sum reaches (`max_ps` returns its second operand
    // for NaN, which no finite sum is).
    let floor = _mm256_set1_ps(if f.relu { 0.0 } else { f32::NEG_INFINITY });
    let q8 = super::quantize::Quantize8::new(f.inv, f.zero_point);
    let mut i = 0;
    while i < n {
        let c = |k: usize| {
            // SAFETY: `i + 8k + 8 <= n` bytes of both inputs.
            let (xa, xb) = unsafe {
                (
                    _mm_loadl_epi64(a.as_ptr().add(i + 8 * k) as *const __m128i),
                    _mm_loadl_epi64(b.as_ptr().add(i + 8 * k) as *const __m128i),
                )
            };
            let da = _mm256_fmadd_ps(sa, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(xa)), pa);
            let db = _mm256_fmadd_ps(sb, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(xb)), pb);
            _mm256_max_ps(_mm256_add_ps(da, db), floor)
        };
        q8.store32(&mut out[i..i + 32], [c(0), c(1), c(2), c(3)]);
        i += 32;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of codes, for several qparams with and without ReLU, against the scalar
    /// lambda (the backend also checks this before it uses the kernel).
    #[test]
    fn avx2_add_equals_the_scalar_lambda_on_every_pair() {
        let a: Vec<u8> = (0..65536 + 7).map(|i| (i >> 8) as u8).collect();
        let b: Vec<u8> = (0..65536 + 7).map(|i| i as u8).collect();
        let params = [
            (0.02, 128, 0.03, 120, 0.05, 100),
            (0.1, 0, 0.1, 0, 0.2, 0),
            (0.0173, 255, 0.5, 3, 0.011, 17),
            (1e-4, 77, 2.0, 250, 0.7, 255),
        ];
        for &(sa, za, sb, zb, so, zo) in &params {
            for relu in [false, true] {
                let dq = |s: f64, z: i32| (s as f32, s as f32 * -(z as f32));
                let f = AddLambda {
                    a: dq(sa, za),
                    b: dq(sb, zb),
                    relu,
                    inv: 1.0f32 / so as f32,
                    zero_point: zo,
                };
                let mut got = vec![0u8; a.len()];
                if !add_u8(&f, &a, &b, &mut got) {
                    return;
                }
                for (i, &g) in got.iter().enumerate() {
                    assert_eq!(g, f.apply(a[i], b[i]), "{:?} at ({}, {})", f, a[i], b[i]);
                }
            }
        }
    }
}
