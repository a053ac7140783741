//! Quantize, dequantize and fake-quantize, as PyTorch computes them on x86 CPUs.
//!
//! Three families, each a documented formula:
//! - [`aten`]: `torch.quantize_per_tensor` / `quantize_per_channel` / `dequantize` (FBGEMM's
//!   `QuantizeAvx2` and scalar `Quantize<T>`);
//! - [`decomposed`]: `torch.ops.quantized_decomposed.*` (`torch/ao/quantization/fx/_decomposed.py`);
//! - [`fake_quant`]: `fake_quantize_per_tensor_affine` / `per_channel_affine` (ATen CPU kernels).

/// Round half to even, like `cvtps2dq` / `nearbyint` / `torch.round`. Equal to
/// `f32::round_ties_even` (which is a call to libm's `rintf` on baseline x86-64, without
/// `roundss`), but inline: below 2²³ in magnitude, adding and subtracting 2²³ with `v`'s sign
/// rounds once to an integer under the default rounding mode; larger values, infinities and NaN
/// are returned as they are; the sign of a zero result follows `v`.
#[inline]
pub fn rne(v: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    if v.abs() < TWO_23 {
        let m = TWO_23.copysign(v);
        ((v + m) - m).copysign(v)
    } else {
        v
    }
}

/// `torch.quantize_per_tensor` / `quantize_per_channel` / `dequantize` on x86 with FBGEMM.
pub mod aten {
    use crate::numerics::qparams::QDType;

    /// `f32(1.0f / f32(scale))`: the reciprocal `quantize_per_tensor` (ATen stores the double
    /// scale in FBGEMM's f32 `TensorQuantizationParams`) and most kernels pass to the vector
    /// quantize.
    #[inline]
    pub fn inv32(scale: f64) -> f32 {
        1.0f32 / scale as f32
    }

    /// `f32(1.0 / scale)` in double, then rounded (`qcat_nhwc_kernel`, `qhardswish_kernel`,
    /// `qelu_kernel`).
    #[inline]
    pub fn inv64(scale: f64) -> f32 {
        (1.0f64 / scale) as f32
    }

    /// FBGEMM `QuantizeAvx2<T>` for one element (uint8/int8), the path `quantize_per_tensor`
    /// takes on AVX2+FMA CPUs (FBGEMM `src/QuantUtilsAvx2.cc`):
    /// `v = min(f32(x · f32(1/f32(scale))), 2^31−128)`, `cvtps2dq` (RNE, out of range → INT_MIN),
    /// wrapping int32 `+ zp`, clamp to the dtype range.
    ///
    /// Consequences: NaN and +inf become 2147483520 before the zero point is added, so with
    /// `zp ≥ 128` the wrapped sum is negative and NaN/+inf/huge values give `qmin`.
    #[inline]
    pub fn quantize_avx2(x: f32, inv_scale: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
        let v = x * inv_scale;
        // _mm256_min_ps(v, c) returns c when v is NaN.
        let v = if v.is_nan() || v > 2147483520.0 {
            2147483520.0
        } else {
            v
        };
        let r = crate::numerics::requant::round_ne_i32(v);
        r.wrapping_add(zero_point).clamp(lo, hi)
    }

    /// FBGEMM's scalar `Quantize<T>(src, zp, scale, precision)` (`include/fbgemm/QuantUtils.h`):
    /// `t = f32(zp + nearbyint(f32(x · f32(1/scale))))`, clamped in double to the dtype range.
    /// Used for qint32 and for per-channel quantization. NaN gives `None` (undefined in C++).
    #[inline]
    pub fn quantize_scalar(x: f32, scale: f32, zero_point: i32, lo: i64, hi: i64) -> Option<i64> {
        let inv = 1.0f32 / scale;
        let t = zero_point as f32 + super::rne(x * inv);
        if t.is_nan() {
            return None;
        }
        Some((t as f64).clamp(lo as f64, hi as f64) as i64)
    }

    /// `torch.quantize_per_tensor(x, scale, zero_point, dtype)`: the double scale is rounded to
    /// f32 first. NaN inputs under qint32 (undefined in PyTorch) yield `None`.
    pub fn quantize_per_tensor(
        x: &[f32],
        scale: f64,
        zero_point: i64,
        dtype: QDType,
    ) -> Vec<Option<i64>> {
        let s = scale as f32;
        let (lo, hi) = dtype.full_range();
        if dtype.is_32() {
            x.iter()
                .map(|&v| quantize_scalar(v, s, zero_point as i32, lo, hi))
                .collect()
        } else {
            let inv = inv32(scale);
            x.iter()
                .map(|&v| {
                    Some(quantize_avx2(v, inv, zero_point as i32, lo as i32, hi as i32) as i64)
                })
                .collect()
        }
    }

    /// `torch.quantize_per_channel`: a scalar loop over [`quantize_scalar`] with each channel's
    /// scale rounded to f32 (ATen `quantize_tensor_per_channel_impl`). `channel_of(i)` gives the
    /// channel of flat element `i`.
    pub fn quantize_per_channel(
        x: &[f32],
        scales: &[f64],
        zero_points: &[i64],
        channel_of: impl Fn(usize) -> usize,
        dtype: QDType,
    ) -> Vec<Option<i64>> {
        let (lo, hi) = dtype.full_range();
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = channel_of(i);
                quantize_scalar(v, scales[c] as f32, zero_points[c] as i32, lo, hi)
            })
            .collect()
    }

    /// [`quantize_per_channel`] to qint8 of a tensor whose channel is its outermost dimension (a
    /// conv or linear weight: `inner` elements per channel); `None` if an element is NaN or the
    /// channel count differs. Same values, one reciprocal per channel, int8 out.
    pub fn quantize_per_channel_outer_i8(
        x: &[f32],
        scales: &[f64],
        zero_points: &[i64],
        inner: usize,
    ) -> Option<Vec<i8>> {
        let inner = inner.max(1);
        if x.len() != inner * scales.len() || scales.len() != zero_points.len() {
            return None;
        }
        let mut out = vec![0i8; x.len()];
        let mut nan = false;
        let rows = x.chunks(inner).zip(out.chunks_mut(inner));
        for ((row, dst), (&s, &zp)) in rows.zip(scales.iter().zip(zero_points)) {
            let inv = 1.0f32 / s as f32;
            let zp = zp as f32;
            for (&v, d) in row.iter().zip(dst) {
                let t = zp + super::rne(v * inv);
                nan |= t.is_nan();
                *d = (t as f64).clamp(-128.0, 127.0) as i8;
            }
        }
        (!nan).then_some(out)
    }

    /// `dequantize` of a per-tensor quantized tensor: `f32(f32(q − zp) · f32(scale))`
    /// (FBGEMM `Dequantize<T>`).
    #[inline]
    pub fn dequantize(q: i64, scale: f64, zero_point: i64) -> f32 {
        ((q as i32).wrapping_sub(zero_point as i32) as f32) * scale as f32
    }

    /// `dequantize` of a per-channel quantized tensor: ATen's
    /// `dequantize_per_channel_affine_kernel` computes `(float(q) − zp) · scale` with the scale
    /// held as a double: `f32(f64(f32(q) − zp) · scale)`.
    #[inline]
    pub fn dequantize_per_channel(q: i64, scale: f64, zero_point: i64) -> f32 {
        let d = q as f32 - zero_point as f32;
        (d as f64 * scale) as f32
    }
}

/// `torch.ops.quantized_decomposed.*` (`torch/ao/quantization/fx/_decomposed.py`).
pub mod decomposed {
    /// `quantize_per_tensor(x, scale, zp, quant_min, quant_max, dtype)`:
    /// `clamp(round(f32(x · f32(1.0/scale))) + zp, quant_min, quant_max)` with the reciprocal taken
    /// in double, then rounded to f32 (the op math type). The `+ zp` happens in f32.
    /// NaN has no defined result (`None`).
    #[inline]
    pub fn quantize(x: f32, scale: f64, zero_point: i64, qmin: i64, qmax: i64) -> Option<i64> {
        let inv = (1.0f64 / scale) as f32;
        clamp_to_int(super::rne(x * inv) + zero_point as f32, qmin, qmax)
    }

    /// `quantize_per_channel` with f32 scales: `1.0 / scales` is an f32 tensor op.
    #[inline]
    pub fn quantize_f32_scale(
        x: f32,
        scale: f32,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
    ) -> Option<i64> {
        let inv = 1.0f32 / scale;
        clamp_to_int(super::rne(x * inv) + zero_point as f32, qmin, qmax)
    }

    /// `quantize_per_channel` with f64 scales: the product promotes to double.
    #[inline]
    pub fn quantize_f64_scale(
        x: f32,
        scale: f64,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
    ) -> Option<i64> {
        let inv = 1.0f64 / scale;
        let v = (x as f64 * inv).round_ties_even() + zero_point as f64;
        if v.is_nan() {
            return None;
        }
        Some(v.clamp(qmin as f64, qmax as f64) as i64)
    }

    /// `torch.clamp(v, quant_min, quant_max).to(dtype)` on an f32 tensor: the bounds become f32
    /// (`2^31 − 1` becomes `2^31`), and x86's float → int32 conversion of a value ≥ 2^31 is
    /// `INT32_MIN`. So with the int32 range, every input that clamps at the top comes out as
    /// `INT32_MIN` (torch 2.15 gives −2147483648 for `quantize_per_tensor(3e9, 1.0, 0,
    /// −2^31, 2^31 − 1, torch.int32)`). The 8- and 16-bit ranges are exact in f32.
    fn clamp_to_int(v: f32, qmin: i64, qmax: i64) -> Option<i64> {
        if v.is_nan() {
            return None;
        }
        let c = v.max(qmin as f32).min(qmax as f32);
        Some(i64::from(crate::numerics::qparams::f32_to_i32_like_torch(
            c,
        )))
    }

    /// `dequantize_per_tensor`: `f32(f32(q − zp) · f32(scale))`.
    #[inline]
    pub fn dequantize(q: i64, scale: f64, zero_point: i64) -> f32 {
        (q as f32 - zero_point as f32) * scale as f32
    }

    /// `dequantize_per_channel` with f32 scales: `(q − zp)` in int64, times the f32 scale.
    #[inline]
    pub fn dequantize_f32_scale(q: i64, scale: f32, zero_point: i64) -> f32 {
        (q - zero_point) as f32 * scale
    }

    /// `dequantize_per_channel` with f64 scales: computed in double, then `.to(float32)`.
    #[inline]
    pub fn dequantize_f64_scale(q: i64, scale: f64, zero_point: i64) -> f32 {
        ((q - zero_point) as f64 * scale) as f32
    }
}

/// Fake quantization (ATen `QuantizedOpKernels.cpp`). The per-tensor and per-channel kernels
/// clamp in a different order, so they part on `+inf` and on values beyond `±2^63` steps.
pub mod fake_quant {
    /// `fake_quantize_per_tensor_affine` (also the per-tensor branch of
    /// `fused_moving_avg_obs_fake_quant`) for one element, with the mask of its `_cachemask`
    /// variant (ATen `_fake_quantize_tensor_helper`):
    /// `qf = f32(zp + nearbyint(f32(x · f32(1/scale))))`, `q = int64(fmin(fmax(qf, qmin), qmax))`
    /// (the clamp comes before the int64 conversion and `fmax` drops a NaN, so NaN gives `qmin`
    /// and `+inf` gives `qmax`), `out = f32(f32(q − zp) · scale)`; the mask is
    /// `qmin ≤ qf ≤ qmax` compared in f32 (false for NaN).
    #[inline]
    pub fn per_tensor(x: f32, scale: f32, zero_point: i64, qmin: i64, qmax: i64) -> (f32, bool) {
        let qf = unclamped(x, scale, zero_point);
        let q = f64::from(qf).max(qmin as f64).min(qmax as f64) as i64;
        let out = (q - zero_point) as f32 * scale;
        (out, qmin as f32 <= qf && qf <= qmax as f32)
    }

    /// `fake_quantize_per_channel_affine` with integer zero points for one element, with the mask
    /// of its `_cachemask` variant (ATen `_fake_quant_per_channel_cachemask_cpu_helper`):
    /// `q = int64(f32(zp + nearbyint(f32(x · f32(1/scale)))))` first (the int64 conversion of
    /// NaN, ±inf or a value beyond ±2^63 is `INT64_MIN` on x86, so all of them give `qmin`),
    /// then `fmin(fmax(q, qmin), qmax)` and `out = f32((q − zp) · scale)` in double; the mask is
    /// `qmin ≤ q ≤ qmax` on the unclamped integer.
    #[inline]
    pub fn per_channel(x: f32, scale: f32, zero_point: i64, qmin: i64, qmax: i64) -> (f32, bool) {
        let q = quantized(x, scale, zero_point);
        let out = ((q.clamp(qmin, qmax) - zero_point) as f64 * scale as f64) as f32;
        (out, (qmin..=qmax).contains(&q))
    }

    /// `f32(zp + nearbyint(f32(x · f32(1/scale))))`, before any clamp.
    #[inline]
    fn unclamped(x: f32, scale: f32, zero_point: i64) -> f32 {
        let inv = 1.0f32 / scale;
        zero_point as f32 + super::rne(x * inv)
    }

    /// The per-channel kernel's integer before clamping: the int64 conversion of
    /// `f32(zp + nearbyint(f32(x · f32(1/scale))))`, `INT64_MIN` where x86's conversion fails.
    #[inline]
    pub fn quantized(x: f32, scale: f32, zero_point: i64) -> i64 {
        let qval = unclamped(x, scale, zero_point);
        if !(-9.223_372e18..9.223_372e18).contains(&qval) {
            i64::MIN
        } else {
            qval as i64
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_channel_outer_equals_the_per_element_loop() {
        use super::aten::{quantize_per_channel, quantize_per_channel_outer_i8};
        use crate::numerics::qparams::QDType;
        // Every 65537th f32 bit pattern (NaN excluded), ties and limits, over three channels.
        let mut x: Vec<f32> = (0..65536u32)
            .map(|i| f32::from_bits(i.wrapping_mul(65537)))
            .filter(|v| !v.is_nan())
            .collect();
        x.extend([
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            127.5,
            -128.5,
            1e30,
            -1e30,
            f32::INFINITY,
        ]);
        x.truncate(x.len() / 3 * 3);
        let inner = x.len() / 3;
        let scales = [1.0, 0.0078125, 3.3e-3];
        for zps in [[0i64, 0, 0], [3, -7, 100]] {
            let slow: Option<Vec<i8>> =
                quantize_per_channel(&x, &scales, &zps, |i| i / inner, QDType::Qint8)
                    .into_iter()
                    .map(|v| v.map(|v| v as i8))
                    .collect();
            let fast = quantize_per_channel_outer_i8(&x, &scales, &zps, inner);
            assert_eq!(slow, fast, "{zps:?}");
        }
        let with_nan = [1.0, f32::NAN];
        assert_eq!(
            quantize_per_channel_outer_i8(&with_nan, &[1.0], &[0], 2),
            None
        );
    }

    #[test]
    fn inline_rne_equals_round_ties_even() {
        let edges = [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            8_388_607.5,
            -8_388_607.5,
            8_388_608.0,
            16_777_215.0,
            1e30,
            f32::MIN_POSITIVE,
            -1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let sample = (0..=u32::MAX).step_by(4099).map(f32::from_bits);
        for v in edges.into_iter().chain(sample) {
            let (a, b) = (rne(v), v.round_ties_even());
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{v:e} ({:#x}): {a:e} vs {b:e}",
                v.to_bits()
            );
        }
    }

    use super::*;

    #[test]
    #[allow(clippy::excessive_precision)]
    fn reciprocal_multiply_tie_from_fbgemm_comment() {
        // FBGEMM's QuantUtils.h documents this case: x·(1/s) is exactly 127.5 (→ 128 by RNE),
        // while x/s is 127.499992 (→ 127).
        let (s, x) = (0.00214854861f32, 0.273939937f32);
        let q =
            aten::quantize_per_tensor(&[x], s as f64, 0, crate::numerics::qparams::QDType::Quint8);
        assert_eq!(q[0], Some(128));
        assert_eq!((x / s).round_ties_even(), 127.0);
    }

    #[test]
    fn avx2_nan_and_inf_depend_on_zero_point() {
        use crate::numerics::qparams::QDType::Quint8;
        for (zp, expect) in [(0, 255), (127, 255), (128, 0), (200, 0)] {
            let q = aten::quantize_per_tensor(&[f32::NAN, f32::INFINITY, 1e30], 0.01, zp, Quint8);
            assert!(q.iter().all(|&v| v == Some(expect)), "zp {zp}: {q:?}");
        }
        let q = aten::quantize_per_tensor(&[f32::NEG_INFINITY, -1e30], 0.01, 200, Quint8);
        assert!(q.iter().all(|&v| v == Some(0)));
    }

    #[test]
    fn decomposed_clamps_to_its_own_range() {
        assert_eq!(decomposed::quantize(1000.0, 1.0, 0, 0, 127), Some(127));
        assert_eq!(decomposed::quantize(f32::NAN, 1.0, 0, 0, 127), None);
        // The int32 range clamps in f32, at 2^31, which converts to INT32_MIN; in double (f64
        // scales) it clamps at 2^31 − 1.
        let (lo, hi) = (i64::from(i32::MIN), i64::from(i32::MAX));
        for x in [3e9, 2_147_483_648.0, f32::INFINITY] {
            assert_eq!(decomposed::quantize(x, 1.0, 0, lo, hi), Some(lo), "{x}");
            assert_eq!(
                decomposed::quantize_f32_scale(x, 1.0, 0, lo, hi),
                Some(lo),
                "{x}"
            );
            assert_eq!(
                decomposed::quantize_f64_scale(x, 1.0, 0, lo, hi),
                Some(hi),
                "{x}"
            );
        }
        assert_eq!(
            decomposed::quantize(2_147_483_520.0, 1.0, 0, lo, hi),
            Some(2_147_483_520)
        );
        assert_eq!(decomposed::quantize(-3e9, 1.0, 0, lo, hi), Some(lo));
    }

    #[test]
    fn fake_quant_round_trips_grid_points() {
        for k in -128i64..=127 {
            let s = 0.037f32;
            let x = aten::dequantize(k, s as f64, 3);
            for (y, mask) in [
                fake_quant::per_tensor(x, s, 3, -128, 127),
                fake_quant::per_channel(x, s, 3, -128, 127),
            ] {
                assert_eq!(x.to_bits(), y.to_bits(), "k {k}");
                assert!(mask, "k {k}");
            }
        }
    }

    // 0.1 as f64 has reciprocal 10.0 exactly after rounding, and f32(1 / f32(0.1)) is 10.0 too, so
    // every value below follows by hand.

    #[test]
    fn decomposed_quantize_and_dequantize_by_hand() {
        use decomposed::*;
        // round(1·10) + 3 = 13; round(−2.5) = −2 (even) + 3 = 1; clamped to 0..5 → 5 and 0.
        assert_eq!(quantize(1.0, 0.1, 3, -128, 127), Some(13));
        assert_eq!(quantize_f32_scale(1.0, 0.1, 3, -128, 127), Some(13));
        assert_eq!(quantize_f64_scale(1.0, 0.1, 3, -128, 127), Some(13));
        assert_eq!(quantize_f64_scale(-2.5, 1.0, 3, -128, 127), Some(1));
        assert_eq!(quantize_f64_scale(1.0, 0.1, 3, 0, 5), Some(5));
        assert_eq!(quantize_f64_scale(-1.0, 0.1, 3, 0, 5), Some(0));
        assert_eq!(quantize_f64_scale(f32::NAN, 0.1, 3, 0, 5), None);
        // (5 − 3)·scale.
        assert_eq!(dequantize(5, 0.1, 3), 2.0 * 0.1f32);
        assert_eq!(dequantize_f32_scale(5, 0.1, 3), 2.0 * 0.1f32);
        assert_eq!(dequantize_f64_scale(5, 0.1, 3), 0.2f32);
        assert_eq!(dequantize_f64_scale(-4, 0.5, 3), -3.5);
    }

    #[test]
    fn per_channel_dequantize_and_malformed_shapes() {
        // f32(f64(5 − 3)·0.1) = f32(0.2).
        assert_eq!(aten::dequantize_per_channel(5, 0.1, 3), 0.2f32);
        assert_eq!(aten::dequantize_per_channel(-4, 0.5, 3), -3.5);
        // Four elements, two channels of two, but one zero point: no result.
        let x = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(
            aten::quantize_per_channel_outer_i8(&x, &[1.0, 1.0], &[0], 2),
            None
        );
        assert_eq!(
            aten::quantize_per_channel_outer_i8(&x, &[1.0, 0.5], &[0, 1], 2),
            Some(vec![1, 2, 7, 9])
        );
    }

    #[test]
    fn fake_quant_and_its_mask_by_hand() {
        use fake_quant::*;
        // q = round(2·10) + 3 = 23 → (23 − 3)·0.1 = 2; −0.5·10 = −5 → −2 clamps to 0 → −0.3.
        assert_eq!(quantized(2.0, 0.1, 3), 23);
        for fq in [per_tensor, per_channel] {
            assert_eq!(fq(2.0, 0.1, 3, 0, 255), (2.0, true));
            assert_eq!(fq(-0.5, 0.1, 3, 0, 255), (-3.0f32 * 0.1, false));
            // The mask is taken on the unclamped value: 23 is inside 0..23, not inside 0..22.
            assert!(fq(2.0, 0.1, 3, 0, 23).1);
            assert!(!fq(2.0, 0.1, 3, 0, 22).1);
            assert!(!fq(2.0, 0.1, 3, 24, 30).1);
            // NaN and −inf come out as qmin, masked off, in both kernels.
            for x in [f32::NAN, f32::NEG_INFINITY, -1e30] {
                let (y, m) = fq(x, 0.1, 3, 0, 255);
                assert_eq!((y, m), (-3.0f32 * 0.1, false), "{x}");
            }
        }
        // +inf and values beyond 2^63 steps: the per-tensor kernel clamps before its int64
        // conversion (qmax), the per-channel one after it (INT64_MIN, so qmin).
        for x in [f32::INFINITY, 1e30] {
            assert_eq!(per_tensor(x, 0.5, 3, 0, 127), (62.0, false), "{x}");
            assert_eq!(per_channel(x, 0.5, 3, 0, 127), (-1.5, false), "{x}");
        }
        assert_eq!(per_channel(3e9, 0.5, 3, 0, 127), (62.0, false));
    }
}
