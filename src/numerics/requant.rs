//! Requantization: int32 accumulator → u8 output, one rule per engine.
//!
//! The accumulator given to every rule is `raw = Σ_k (a − a_zp)·(b − b_zp)` (int32, wrapping),
//! i.e. with both zero points already folded in.

/// FBGEMM's `ReQuantizeOutput` (x86, uint8 output), as used by `quantized::linear` and
/// `quantized::conv2d` under the fbgemm and x86 engines.
///
/// Source: FBGEMM `include/fbgemm/OutputProcessing-inl.h` (`ReQuantizeOutput::f`) and
/// `src/QuantUtilsAvx2.cc` (`requantizeOutputProcessingAvx2`); set-up in PyTorch
/// `aten/src/ATen/native/quantized/cpu/qlinear.cpp` / `qconv.cpp`.
#[derive(Debug, Clone, PartialEq)]
pub struct FbgemmRequant {
    /// `atws[j] = f32(f32(s_x) · w_s[j])` (one entry for per-tensor weights).
    pub act_times_w_scale: Vec<f32>,
    /// `mult[j] = f32(atws[j] / f32(s_y))` (f32 division).
    pub multiplier: Vec<f32>,
    /// Bias per output channel, as the epilogue adds it to the float accumulator. Per-channel
    /// weights (`bias_scale` None): the quotient `f32(bias[j] / atws[j])`, added with one f32
    /// addition. Per-tensor weights with a bias (`bias_scale` Some): the f32 `bias[j]` itself.
    /// Zero when the layer has no bias.
    pub bias_term: Vec<f32>,
    /// Per-tensor weights with a bias: `f32(1.0 / (f64)atws[0])`, by which `bias_term[j]` is
    /// multiplied in a fused multiply-add with the accumulator,
    /// `f32(f32(raw) + bias[j] · rcp)` rounded once (the compiled AVX2 / AVX-512 epilogue
    /// contracts its `mul_ps(bias, rcp)` and `add_ps` into one FMA).
    pub bias_scale: Option<f32>,
    /// Output zero point.
    pub out_zero_point: i32,
    /// Fused ReLU: the lower clamp becomes the output zero point.
    pub relu: bool,
}

impl FbgemmRequant {
    /// Builds the rule from the input scale (the double `input.q_scale()`), the weight scales
    /// (f32, one for per-tensor), the float bias, the output scale (double) and zero point.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input_scale: f64,
        weight_scales: &[f32],
        per_channel: bool,
        bias: Option<&[f32]>,
        n: usize,
        out_scale: f64,
        out_zero_point: i32,
        relu: bool,
    ) -> Self {
        let sx = input_scale as f32;
        let sy = out_scale as f32;
        let atws: Vec<f32> = weight_scales.iter().map(|&w| sx * w).collect();
        let multiplier = atws.iter().map(|&a| a / sy).collect();
        let bias_term = (0..n)
            .map(|j| match bias {
                None => 0.0,
                Some(b) if per_channel => b[j] / atws[j],
                Some(b) => b[j],
            })
            .collect();
        let bias_scale = match bias {
            Some(_) if !per_channel => Some((1.0f64 / atws[0] as f64) as f32),
            _ => None,
        };
        Self {
            act_times_w_scale: atws,
            multiplier,
            bias_term,
            bias_scale,
            out_zero_point,
            relu,
        }
    }

    /// The float accumulator before the multiplier: `f32(raw) + bterm[j]` in f32, or for
    /// per-tensor weights `fma(bias[j], rcp, f32(raw))` (one rounding).
    #[inline]
    pub fn biased(&self, raw: i32, j: usize) -> f32 {
        match self.bias_scale {
            Some(rcp) => self.bias_term[j].mul_add(rcp, raw as f32),
            None => raw as f32 + self.bias_term[j],
        }
    }

    /// The exact (unrounded) bias term added to channel `j`'s accumulator, as an f64.
    pub fn bias_term_f64(&self, j: usize) -> f64 {
        // An f32 · f32 product is exact in f64.
        self.bias_term[j] as f64 * self.bias_scale.map_or(1.0, f64::from)
    }

    /// The f32 value that is rounded: `f32(biased(raw, j) · mult[j])`.
    #[inline]
    pub fn pre_round(&self, raw: i32, j: usize) -> f32 {
        let idx = if self.multiplier.len() == 1 { 0 } else { j };
        self.biased(raw, j) * self.multiplier[idx]
    }

    /// Requantizes one accumulator of output channel `j`.
    #[inline]
    pub fn apply(&self, raw: i32, j: usize) -> u8 {
        finish_u8(self.pre_round(raw, j), self.out_zero_point, self.relu)
    }
}

/// QNNPACK's fp32 requantization (PyTorch's in-tree fork), used by the qnnpack engine.
///
/// Source: PyTorch `aten/src/ATen/native/quantized/cpu/QnnpackUtils.h`
/// (`generate_requantization_scales`), `QuantUtils.h` (`QuantizeBias`) and the q8gemm SSE2
/// micro-kernels (`qnnpack/src/q8gemm/4x4c2-sse2.c`).
#[derive(Debug, Clone, PartialEq)]
pub struct QnnpackRequant {
    /// `req[j] = f32(f32(w_s[j] · in_s) · f32(1/s_y))`.
    pub scale: Vec<f32>,
    /// Bias rounded to int32: `clamp(RNE(f32(bias · f32(1.0f / f32(w_s·in_s)))))`.
    pub bias_q: Vec<i32>,
    /// Output zero point.
    pub out_zero_point: i32,
    /// Fused ReLU: the lower clamp becomes the output zero point.
    pub relu: bool,
}

impl QnnpackRequant {
    /// Builds the rule; `weight_scales` has one entry for per-tensor weights.
    pub fn new(
        input_scale: f64,
        weight_scales: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        out_scale: f64,
        out_zero_point: i32,
        relu: bool,
    ) -> Self {
        let ws = |j: usize| weight_scales[if weight_scales.len() == 1 { 0 } else { j }];
        let inv_out = 1.0f32 / out_scale as f32;
        let scale = (0..n)
            .map(|j| ((ws(j) as f64 * input_scale) as f32) * inv_out)
            .collect();
        let bias_q = (0..n)
            .map(|j| match bias {
                None => 0,
                Some(b) => {
                    // quantize_per_tensor/channel(bias, w_s·in_s (double), 0, qint32): the double
                    // scale is rounded to f32, then FBGEMM's scalar Quantize<int32_t> multiplies by
                    // the f32 reciprocal and clamps to the int32 range.
                    let s = (ws(j) as f64 * input_scale) as f32;
                    let v = (b[j] * (1.0f32 / s)).round_ties_even() as f64;
                    v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
                }
            })
            .collect();
        Self {
            scale,
            bias_q,
            out_zero_point,
            relu,
        }
    }

    /// The f32 value that is rounded: `f32(f32(raw + bq[j]) · req[j])`.
    #[inline]
    pub fn pre_round(&self, raw: i32, j: usize) -> f32 {
        (raw.wrapping_add(self.bias_q[j]) as f32) * self.scale[j]
    }

    /// Requantizes one accumulator of output channel `j`.
    #[inline]
    pub fn apply(&self, raw: i32, j: usize) -> u8 {
        finish_u8(self.pre_round(raw, j), self.out_zero_point, self.relu)
    }
}

/// `cvtps2dq` with the default rounding mode: round half to even; out-of-range and NaN give
/// `i32::MIN` (the "integer indefinite" value).
#[inline]
pub fn round_ne_i32(v: f32) -> i32 {
    // `quantize::rne` equals `f32::round_ties_even` (inline, where the latter is a libm call on
    // baseline x86-64).
    let r = super::quantize::rne(v);
    if !(-2147483648.0..2147483648.0).contains(&r) {
        i32::MIN
    } else {
        r as i32
    }
}

/// Rounds a pre-round value half to even and adds the output zero point, clamping to
/// `[lo, 255]` where `lo` is the zero point under a fused ReLU and 0 otherwise.
#[inline]
fn finish_u8(pre: f32, out_zero_point: i32, relu: bool) -> u8 {
    let lo = if relu { out_zero_point } else { 0 };
    clamp_u8(round_ne_i32(pre), out_zero_point, lo)
}

/// Adds the zero point with int16 saturation (`adds_epi16` after `packs_epi32`) and clamps to
/// `[lo, 255]`; equivalent to `clamp(q + zp, lo, 255)` for every int32 `q`.
#[inline]
fn clamp_u8(q: i32, zp: i32, lo: i32) -> u8 {
    let v = (q as i64 + zp as i64).clamp(lo as i64, 255);
    v as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ne_i32_ties_to_even_and_maps_out_of_range_to_int_min() {
        let cases = [
            (1.0f32, 1),
            (2.5, 2),
            (3.5, 4),
            (-2.5, -2),
            (-0.5, 0),
            (0.49999997, 0),
            (1e9, 1_000_000_000),
            // The largest f32 values inside the int32 range at both ends.
            (2147483520.0, 2147483520),
            (-2147483520.0, -2147483520),
            (-2147483648.0, i32::MIN),
        ];
        for (v, want) in cases {
            assert_eq!(round_ne_i32(v), want, "{v:e}");
        }
        for v in [
            2147483648.0f32,
            -2147483904.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(round_ne_i32(v), i32::MIN, "{v:e}");
        }
    }

    /// Scales that are powers of two keep every product and quotient exact, so the values below
    /// follow from the formulas by hand.
    #[test]
    fn fbgemm_per_channel_bias_is_divided_by_atws_and_added() {
        // atws = [0.5·0.25, 0.5·0.5] = [0.125, 0.25]; mult = atws / 0.25 = [0.5, 1];
        // bias term = [1 / 0.125, −2 / 0.25] = [8, −8].
        let rq = FbgemmRequant::new(
            0.5,
            &[0.25, 0.5],
            true,
            Some(&[1.0, -2.0]),
            2,
            0.25,
            10,
            false,
        );
        assert_eq!(rq.act_times_w_scale, [0.125, 0.25]);
        assert_eq!(rq.multiplier, [0.5, 1.0]);
        assert_eq!(rq.bias_term, [8.0, -8.0]);
        assert_eq!(rq.bias_scale, None);
        assert_eq!(rq.bias_term_f64(1), -8.0);
        // Channel 0: (4 + 8)·0.5 = 6 → 16. Channel 1: (4 − 8)·1 = −4 → 6.
        assert_eq!(rq.biased(4, 0), 12.0);
        assert_eq!(rq.pre_round(4, 0), 6.0);
        assert_eq!(rq.apply(4, 0), 16);
        assert_eq!(rq.pre_round(4, 1), -4.0);
        assert_eq!(rq.apply(4, 1), 6);
        // A tie: (−3 + 8)·0.5 = 2.5 → 2 (even) → 12.
        assert_eq!(rq.apply(-3, 0), 12);
    }

    #[test]
    fn fbgemm_per_tensor_bias_is_scaled_by_the_reciprocal() {
        // atws = 0.125, rcp = 8, mult = 0.125 / 0.5 = 0.25; the bias stays as given.
        let rq = FbgemmRequant::new(0.5, &[0.25], false, Some(&[3.0, -1.0]), 2, 0.5, 100, false);
        assert_eq!(rq.multiplier, [0.25]);
        assert_eq!(rq.bias_term, [3.0, -1.0]);
        assert_eq!(rq.bias_scale, Some(8.0));
        assert_eq!(rq.bias_term_f64(0), 24.0);
        assert_eq!(rq.bias_term_f64(1), -8.0);
        // Channel 0: (1 + 3·8)·0.25 = 6.25 → 6 → 106; channel 1: (2 − 8)·0.25 = −1.5 → −2 → 98.
        assert_eq!(rq.biased(1, 0), 25.0);
        assert_eq!(rq.pre_round(1, 0), 6.25);
        assert_eq!(rq.apply(1, 0), 106);
        assert_eq!(rq.pre_round(2, 1), -1.5);
        assert_eq!(rq.apply(2, 1), 98);
    }

    #[test]
    fn output_zero_point_and_relu_clamp() {
        for relu in [false, true] {
            let rq = FbgemmRequant::new(1.0, &[1.0], false, None, 1, 1.0, 10, relu);
            assert_eq!(rq.apply(5, 0), 15);
            assert_eq!(rq.apply(300, 0), 255);
            // −20 + 10 = −10: 0 without ReLU, the zero point with it.
            assert_eq!(rq.apply(-20, 0), if relu { 10 } else { 0 });
            assert_eq!(rq.apply(-7, 0), if relu { 10 } else { 3 });
        }
    }

    #[test]
    fn qnnpack_bias_is_rounded_to_int32_before_scaling() {
        // s = f32(0.25·0.5) = 0.125; req = 0.125·f32(1/0.25) = 0.5;
        // bias_q = [RNE(1·8), RNE(f32(−0.3)·8)] = [8, RNE(−2.4000001)] = [8, −2].
        let rq = QnnpackRequant::new(0.5, &[0.25], Some(&[1.0, -0.3]), 2, 0.25, 7, false);
        assert_eq!(rq.scale, [0.5, 0.5]);
        assert_eq!(rq.bias_q, [8, -2]);
        // (3 + 8)·0.5 = 5.5 → 6 → 13; (−1 − 2)·0.5 = −1.5 → −2 → 5.
        assert_eq!(rq.pre_round(3, 0), 5.5);
        assert_eq!(rq.apply(3, 0), 13);
        assert_eq!(rq.pre_round(-1, 1), -1.5);
        assert_eq!(rq.apply(-1, 1), 5);
    }
}
