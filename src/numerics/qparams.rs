//! Quantized dtypes, quant ranges (including the `reduce_range` rules) and the two qparam
//! choosers: the Python observers' `_calculate_qparams` and FBGEMM's `ChooseQuantizationParams`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// PyTorch's quantized / integer dtypes, by PyTorch's own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QDType {
    Quint8,
    Qint8,
    Qint32,
    Uint8,
    Int8,
    Int32,
}

impl QDType {
    /// Full value range of the dtype.
    pub fn full_range(self) -> (i64, i64) {
        match self {
            QDType::Quint8 | QDType::Uint8 => (0, 255),
            QDType::Qint8 | QDType::Int8 => (-128, 127),
            QDType::Qint32 | QDType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        }
    }
    /// `quint8` / `uint8`.
    pub fn is_unsigned8(self) -> bool {
        matches!(self, QDType::Quint8 | QDType::Uint8)
    }
    /// `qint8` / `int8`.
    pub fn is_signed8(self) -> bool {
        matches!(self, QDType::Qint8 | QDType::Int8)
    }
    /// `qint32` / `int32`.
    pub fn is_32(self) -> bool {
        matches!(self, QDType::Qint32 | QDType::Int32)
    }
    /// What a NaN becomes where a quantize converts its clamped float to this dtype (FBGEMM's
    /// scalar `Quantize<T>`, `quantized_decomposed`'s `.to(dtype)`): `fmin`/`fmax` keep the NaN,
    /// x86 converts it to `INT32_MIN` (`cvttss2si`, `cvttps2dq`), and the dtype keeps its low
    /// bits: 0 for the 8-bit dtypes, −2^31 for the 32-bit ones.
    pub fn x86_nan_code(self) -> i64 {
        if self.is_32() {
            i64::from(i32::MIN)
        } else {
            0
        }
    }
    /// `torch.iinfo(dtype).bits`.
    pub fn bits(self) -> u32 {
        if self.is_32() {
            32
        } else {
            8
        }
    }
    /// PyTorch's name.
    pub fn name(self) -> &'static str {
        match self {
            QDType::Quint8 => "quint8",
            QDType::Qint8 => "qint8",
            QDType::Qint32 => "qint32",
            QDType::Uint8 => "uint8",
            QDType::Int8 => "int8",
            QDType::Int32 => "int32",
        }
    }
}

/// PyTorch's quantization schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QScheme {
    PerTensorAffine,
    PerTensorSymmetric,
    PerChannelAffine,
    PerChannelSymmetric,
    PerChannelAffineFloatQparams,
}

impl QScheme {
    /// Symmetric schemes.
    pub fn is_symmetric(self) -> bool {
        matches!(
            self,
            QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric
        )
    }
    /// Per-channel schemes.
    pub fn is_per_channel(self) -> bool {
        matches!(
            self,
            QScheme::PerChannelAffine
                | QScheme::PerChannelSymmetric
                | QScheme::PerChannelAffineFloatQparams
        )
    }
    /// PyTorch's name.
    pub fn name(self) -> &'static str {
        match self {
            QScheme::PerTensorAffine => "per_tensor_affine",
            QScheme::PerTensorSymmetric => "per_tensor_symmetric",
            QScheme::PerChannelAffine => "per_channel_affine",
            QScheme::PerChannelSymmetric => "per_channel_symmetric",
            QScheme::PerChannelAffineFloatQparams => "per_channel_affine_float_qparams",
        }
    }
}

/// A resolved quant range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantRange {
    pub quant_min: i64,
    pub quant_max: i64,
    /// Both `quant_min` and `quant_max` were given by the user.
    pub has_customized_qrange: bool,
}

/// `torch.ao.quantization.utils.calculate_qmin_qmax`: the observer's quant range from the dtype,
/// `reduce_range` and an optional custom range.
///
/// With a custom range, `reduce_range` floor-divides both ends by 2 (`0..255` → `0..127`,
/// `-128..127` → `-64..63`); without one, the dtype defaults apply (`quint8`: 0..255 or 0..127,
/// `qint8`: −128..127 or −64..63, `qint32`: the int32 range).
pub fn calculate_qmin_qmax(
    quant_min: Option<i64>,
    quant_max: Option<i64>,
    dtype: QDType,
    reduce_range: bool,
) -> Result<QuantRange> {
    if let (Some(lo), Some(hi)) = (quant_min, quant_max) {
        // validate_qmin_qmax (the observer constructor), then the length check of
        // calculate_qmin_qmax, which has none for quint8.
        if !(lo <= 0 && 0 <= hi) {
            return Err(Error::invalid(
                "quant range",
                format!("user-specified quantization range {lo}..{hi} must include 0"),
            ));
        }
        if lo >= hi {
            return Err(Error::invalid(
                "quant range",
                format!("quant_min {lo} must be strictly less than quant_max {hi}"),
            ));
        }
        let len = hi - lo + 1;
        let max_len = if dtype.is_signed8() {
            256
        } else if dtype.is_32() {
            1i64 << 32
        } else {
            i64::MAX
        };
        if len > max_len {
            return Err(Error::invalid(
                "quant range",
                format!(
                    "{lo}..{hi} exceeds the {} range length {max_len}",
                    dtype.name()
                ),
            ));
        }
        let (lo, hi) = if reduce_range {
            (lo.div_euclid(2), hi.div_euclid(2))
        } else {
            (lo, hi)
        };
        return Ok(QuantRange {
            quant_min: lo,
            quant_max: hi,
            has_customized_qrange: true,
        });
    }
    let (lo, hi) = match (dtype.is_signed8(), dtype.is_unsigned8(), reduce_range) {
        (true, _, true) => (-64, 63),
        (_, true, true) => (0, 127),
        _ => dtype.full_range(),
    };
    Ok(QuantRange {
        quant_min: lo,
        quant_max: hi,
        has_customized_qrange: false,
    })
}

/// Settings of the Python observer's qparam computation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObserverQParamsConfig {
    pub dtype: QDType,
    pub qscheme: QScheme,
    pub range: QuantRange,
    /// The observer's `eps` buffer (f32): 2^-23 by default.
    pub eps: f32,
}

/// Per-channel (or per-tensor, length 1) scale and zero point as observers produce them.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedQParams {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
}

/// `UniformQuantizationObserverBase._calculate_qparams(min_val, max_val)`, element-wise, in f32
/// tensor arithmetic (torch/ao/quantization/observer.py).
///
/// `min_val`/`max_val` are the running statistics (one per channel, or one). An observer that never
/// saw data (min = +inf, max = −inf) gives scale 1.0, zero point 0, as PyTorch does.
pub fn observer_qparams(
    cfg: &ObserverQParamsConfig,
    min_val: &[f32],
    max_val: &[f32],
) -> Result<ObservedQParams> {
    if min_val.len() != max_val.len() {
        return Err(Error::shape(
            "observer statistics",
            format!("{} minima vs {} maxima", min_val.len(), max_val.len()),
        ));
    }
    let (qmin, qmax) = (cfg.range.quant_min, cfg.range.quant_max);
    // check_min_max_valid: empty statistics or an uninitialised per-tensor observer.
    if min_val.is_empty()
        || (min_val.len() == 1 && min_val[0] == f32::INFINITY && max_val[0] == f32::NEG_INFINITY)
    {
        return Ok(ObservedQParams {
            scale: vec![1.0],
            zero_point: vec![0],
        });
    }
    // NaN statistics (an observer fed NaN) pass through the tensor arithmetic below, as in
    // PyTorch: scale NaN, and the zero point from INT32_MIN (torch 2.15: MinMaxObserver on
    // [1, NaN, 2] gives scale nan, zero point 0).
    if let Some(i) = (0..min_val.len()).find(|&i| min_val[i] > max_val[i]) {
        return Err(Error::invalid(
            "observer statistics",
            format!("min {} > max {} (channel {i})", min_val[i], max_val[i]),
        ));
    }
    let mut scale = Vec::with_capacity(min_val.len());
    let mut zero_point = Vec::with_capacity(min_val.len());
    for (&mn, &mx) in min_val.iter().zip(max_val) {
        let min_neg = torch_min(mn, 0.0);
        let max_pos = torch_max(mx, 0.0);
        if cfg.qscheme.is_symmetric() {
            let amax = torch_max(-min_neg, max_pos);
            // Python: (float(quant_max - quant_min) / 2) is a double, applied to an f32 tensor
            // as an f32 scalar (exact: a multiple of 0.5 below 2^24).
            let denom = ((qmax - qmin) as f64 / 2.0) as f32;
            let s = torch_max(amax / denom, cfg.eps);
            let zp = if cfg.dtype.is_unsigned8() {
                if cfg.range.has_customized_qrange {
                    (qmin + qmax).div_euclid(2)
                } else {
                    128
                }
            } else {
                0
            };
            scale.push(s);
            zero_point.push(zp);
        } else if cfg.qscheme == QScheme::PerChannelAffineFloatQparams {
            return Err(Error::invalid(
                "qscheme",
                "per_channel_affine_float_qparams has float zero points; use float_qparams()",
            ));
        } else {
            let denom = (qmax - qmin) as f32;
            let s = torch_max((max_pos - min_neg) / denom, cfg.eps);
            let r = (min_neg / s).round_ties_even();
            // `quant_min - torch.round(min_neg / scale).to(torch.int)`: an int32 tensor op, so
            // the subtraction wraps (NaN or infinite statistics give INT32_MIN first).
            let zp = (qmin as i32).wrapping_sub(f32_to_i32_like_torch(r)) as i64;
            scale.push(s);
            zero_point.push(zp.clamp(qmin, qmax));
        }
    }
    Ok(ObservedQParams { scale, zero_point })
}

/// f32 → int32 as `tensor.to(torch.int)` does on x86 (`cvttss2si`): truncation, with
/// out-of-range and NaN giving `i32::MIN`.
pub fn f32_to_i32_like_torch(v: f32) -> i32 {
    if !(-2147483648.0..2147483648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// `std::min(a, b)` for floats: `(b < a) ? b : a` (a NaN `a` survives).
fn cpp_min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// `std::max(a, b)` for floats: `(a < b) ? b : a` (a NaN `a` survives).
fn cpp_max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// `torch.minimum(a, b)` / `torch.min(a, b)` on 0-dim (or short) f32 tensors: NaN propagates,
/// otherwise ATen's scalar loop `std::min(a, b)` = `(b < a) ? b : a`, so of two zeros of either
/// sign the first argument is returned. (Vectorized loops over longer tensors use `vminps`, which
/// returns the second operand for two zeros: only the sign of a zero can differ.)
pub fn torch_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        cpp_min(a, b)
    }
}

/// `torch.maximum(a, b)` / `torch.max(a, b)`: NaN propagates, otherwise `std::max(a, b)` =
/// `(a < b) ? b : a` (see [`torch_min`]).
pub fn torch_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        cpp_max(a, b)
    }
}

/// Result of FBGEMM's `ChooseQuantizationParams`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FbgemmQParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// FBGEMM's smallest scale (`SMALL_SCALE_THRESHOLD`, fp16's smallest normal).
pub const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;

/// `fbgemm::ChooseQuantizationParams(min, max, qmin, qmax, preserve_sparsity, false)`
/// (FBGEMM `src/QuantUtils.cc`), used by `fused_moving_avg_obs_fake_quant` during QAT forward
/// passes (`preserve_sparsity` = symmetric quantization).
pub fn fbgemm_choose_qparams(
    min: f32,
    max: f32,
    qmin: i32,
    qmax: i32,
    preserve_sparsity: bool,
) -> FbgemmQParams {
    let (mut min, mut max) = (min, max);
    if min < 0.0 && max > 0.0 && preserve_sparsity {
        let sqmin = -((qmax - qmin) / 2 + 1);
        let sqmax = (qmax - qmin) / 2;
        // `fabs(min / symmetric_qmin)`: float / int is an f32 division (a two-value range makes
        // symmetric_qmax 0 and the result infinite, as in FBGEMM).
        let max_scale = cpp_max((min / sqmin as f32).abs(), (max / sqmax as f32).abs()) as f64;
        min = (max_scale * sqmin as f64) as f32;
        max = (max_scale * sqmax as f64) as f32;
    }
    min = cpp_min(min, 0.0);
    max = cpp_max(max, 0.0);
    let mut scale = ((max as f64 - min as f64) / (qmax as f64 - qmin as f64)) as f32;
    if scale == 0.0 || (1.0f32 / scale).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE_THRESHOLD {
        let org = scale;
        scale = SMALL_SCALE_THRESHOLD;
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * (qmax - qmin) as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * (qmax - qmin) as f32;
        } else {
            let amp = SMALL_SCALE_THRESHOLD / org;
            min *= amp;
            max *= amp;
        }
    }
    let s = scale as f64;
    let zp_min = qmin as f64 - min as f64 / s;
    let zp_max = qmax as f64 - max as f64 / s;
    let err_min = (qmin as f64).abs() + (min as f64 / s).abs();
    let err_max = (qmax as f64).abs() + (max as f64 / s).abs();
    let mut initial = if err_min < err_max { zp_min } else { zp_max };
    if min < 0.0 && max > 0.0 && preserve_sparsity {
        initial = (qmin + qmax) as f64 / 2.0;
    }
    let zero_point = if initial < qmin as f64 {
        qmin
    } else if initial > qmax as f64 {
        qmax
    } else {
        // nearbyint, then the x86 int conversion (NaN → INT32_MIN).
        let r = initial.round_ties_even();
        if !(-2147483648.0..2147483648.0).contains(&r) {
            i32::MIN
        } else {
            r as i32
        }
    };
    FbgemmQParams { scale, zero_point }
}

/// Validates a (scale, zero point) pair for a quantized dtype: the scale must be finite and > 0,
/// the zero point inside `[lo, hi]`.
pub fn validate_qparams(what: &str, scale: f64, zero_point: i64, lo: i64, hi: i64) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::invalid(
            what,
            format!("scale must be finite and > 0, got {scale}"),
        ));
    }
    if (scale as f32) == 0.0 || !(scale as f32).is_finite() {
        return Err(Error::invalid(
            what,
            format!("scale {scale} is not representable as a positive finite f32"),
        ));
    }
    if zero_point < lo || zero_point > hi {
        return Err(Error::invalid(
            what,
            format!("zero point {zero_point} outside {lo}..{hi}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's names, as the golden format spells them (`golden/README.md`).
    #[test]
    fn dtype_and_qscheme_names_are_pytorchs() {
        use QDType::*;
        let dtypes = [Quint8, Qint8, Qint32, Uint8, Int8, Int32];
        let names = ["quint8", "qint8", "qint32", "uint8", "int8", "int32"];
        for (d, want) in dtypes.into_iter().zip(names) {
            assert_eq!(d.name(), want);
            assert_eq!(serde_json::json!(d), serde_json::json!(want));
        }
        use QScheme::*;
        let schemes = [
            (PerTensorAffine, "per_tensor_affine"),
            (PerTensorSymmetric, "per_tensor_symmetric"),
            (PerChannelAffine, "per_channel_affine"),
            (PerChannelSymmetric, "per_channel_symmetric"),
            (
                PerChannelAffineFloatQparams,
                "per_channel_affine_float_qparams",
            ),
        ];
        for (q, want) in schemes {
            assert_eq!(q.name(), want);
            assert_eq!(serde_json::json!(q), serde_json::json!(want));
        }
    }

    #[test]
    fn reduce_range_rules() {
        let r = calculate_qmin_qmax(None, None, QDType::Quint8, true).unwrap();
        assert_eq!(
            (r.quant_min, r.quant_max, r.has_customized_qrange),
            (0, 127, false)
        );
        let r = calculate_qmin_qmax(None, None, QDType::Qint8, true).unwrap();
        assert_eq!((r.quant_min, r.quant_max), (-64, 63));
        let r = calculate_qmin_qmax(Some(0), Some(255), QDType::Quint8, true).unwrap();
        assert_eq!(
            (r.quant_min, r.quant_max, r.has_customized_qrange),
            (0, 127, true)
        );
        let r = calculate_qmin_qmax(Some(-127), Some(127), QDType::Qint8, true).unwrap();
        assert_eq!((r.quant_min, r.quant_max), (-64, 63)); // floor division
                                                           // PyTorch checks the length for qint8 / qint32 only, and that the range includes 0.
        assert!(calculate_qmin_qmax(Some(-129), Some(127), QDType::Qint8, false).is_err());
        assert!(calculate_qmin_qmax(Some(0), Some(300), QDType::Quint8, false).is_ok());
        assert!(calculate_qmin_qmax(Some(1), Some(255), QDType::Quint8, false).is_err());
        assert!(calculate_qmin_qmax(Some(0), Some(0), QDType::Quint8, false).is_err());
        // qint32: at most 2^32 values.
        let (lo, hi) = (i32::MIN as i64, i32::MAX as i64);
        let r = calculate_qmin_qmax(Some(lo), Some(hi), QDType::Qint32, false).unwrap();
        assert_eq!((r.quant_min, r.quant_max), (lo, hi));
        assert!(calculate_qmin_qmax(Some(lo - 1), Some(hi), QDType::Qint32, false).is_err());
        assert!(calculate_qmin_qmax(Some(-1000), Some(1000), QDType::Qint32, false).is_ok());
    }

    #[test]
    fn symmetric_quint8_zero_point_is_128_even_with_reduce_range() {
        let range = calculate_qmin_qmax(None, None, QDType::Quint8, true).unwrap();
        let cfg = ObserverQParamsConfig {
            dtype: QDType::Quint8,
            qscheme: QScheme::PerTensorSymmetric,
            range,
            eps: f32::EPSILON,
        };
        let q = observer_qparams(&cfg, &[-1.0], &[2.0]).unwrap();
        assert_eq!(q.zero_point, vec![128]);
        assert_eq!(q.scale, vec![2.0f32 / 63.5]);
    }

    #[test]
    fn affine_zero_maps_exactly() {
        let range = calculate_qmin_qmax(None, None, QDType::Quint8, false).unwrap();
        let cfg = ObserverQParamsConfig {
            dtype: QDType::Quint8,
            qscheme: QScheme::PerTensorAffine,
            range,
            eps: f32::EPSILON,
        };
        for (mn, mx) in [(-1.0f32, 3.0f32), (0.5, 2.0), (-7.0, -1.0), (0.0, 0.0)] {
            let q = observer_qparams(&cfg, &[mn], &[mx]).unwrap();
            assert!(q.scale[0] > 0.0 && q.scale[0].is_finite());
            assert!((0..=255).contains(&q.zero_point[0]));
        }
        let uninit = observer_qparams(&cfg, &[f32::INFINITY], &[f32::NEG_INFINITY]).unwrap();
        assert_eq!((uninit.scale[0], uninit.zero_point[0]), (1.0, 0));
        assert!(observer_qparams(&cfg, &[2.0], &[1.0]).is_err());
        // check_min_max_valid skips only the uninitialised pair (+inf, −inf); one infinite end
        // fails its `min_val <= max_val` assertion.
        assert!(observer_qparams(&cfg, &[f32::INFINITY], &[1.0]).is_err());
        assert!(observer_qparams(&cfg, &[0.0], &[f32::NEG_INFINITY]).is_err());
    }

    /// NaN statistics pass the min ≤ max check and the tensor arithmetic: scale NaN, the zero
    /// point from INT32_MIN (torch 2.15 MinMaxObserver on [1, NaN, 2]: quint8 (nan, 0), qint8
    /// (nan, 127), symmetric quint8 (nan, 128); per channel only the NaN channel).
    #[test]
    fn nan_statistics_give_a_nan_scale() {
        let cfg = |dtype, qscheme| ObserverQParamsConfig {
            dtype,
            qscheme,
            range: calculate_qmin_qmax(None, None, dtype, false).unwrap(),
            eps: f32::EPSILON,
        };
        use QScheme::*;
        for (dtype, qscheme, zp) in [
            (QDType::Quint8, PerTensorAffine, 0),
            (QDType::Qint8, PerTensorAffine, 127),
            (QDType::Quint8, PerTensorSymmetric, 128),
        ] {
            let q = observer_qparams(&cfg(dtype, qscheme), &[f32::NAN], &[f32::NAN]).unwrap();
            assert!(q.scale[0].is_nan(), "{dtype:?} {qscheme:?}");
            assert_eq!(q.zero_point, [zp], "{dtype:?} {qscheme:?}");
        }
        let q = observer_qparams(
            &cfg(QDType::Quint8, PerChannelAffine),
            &[f32::NAN, 1.0],
            &[f32::NAN, 2.0],
        )
        .unwrap();
        assert!(q.scale[0].is_nan());
        assert_eq!(q.scale[1], 2.0f32 / 255.0);
        assert_eq!(q.zero_point, [0, 0]);
    }

    #[test]
    fn fbgemm_symmetric_qint8_scale() {
        let q = fbgemm_choose_qparams(-1.28, 0.5, -128, 127, true);
        assert_eq!(q.zero_point, 0);
        let expect = (-1.28f32 / -128.0).abs().max(0.5f32 / 127.0);
        assert!((q.scale - expect).abs() <= f32::EPSILON * expect);
        assert_eq!(fbgemm_choose_qparams(0.0, 0.0, 0, 255, false).scale, 0.1);
    }

    /// `torch.min` / `torch.max` of two 0-dim tensors (torch 2.15.0, checked on x86): of two zeros
    /// the first argument, whatever the signs; a NaN on either side propagates. The observers'
    /// running minimum and maximum keep these signs.
    #[test]
    fn torch_min_max_of_zeros_and_nan() {
        let bits = |v: f32| v.to_bits();
        assert_eq!(bits(torch_min(0.0, -0.0)), bits(0.0));
        assert_eq!(bits(torch_min(-0.0, 0.0)), bits(-0.0));
        assert_eq!(bits(torch_max(0.0, -0.0)), bits(0.0));
        assert_eq!(bits(torch_max(-0.0, 0.0)), bits(-0.0));
        for (a, b) in [(1.0, f32::NAN), (f32::NAN, 1.0)] {
            assert!(
                torch_min(a, b).is_nan() && torch_max(a, b).is_nan(),
                "{a} {b}"
            );
        }
        assert_eq!((torch_min(1.0, 2.0), torch_max(1.0, 2.0)), (1.0, 2.0));
    }

    /// The branches of FBGEMM `ChooseQuantizationParams` (`src/QuantUtils.cc`), by hand.
    #[test]
    fn fbgemm_chooser_branches() {
        let thr = SMALL_SCALE_THRESHOLD;
        // Symmetric adjustment only for min < 0 < max: [-1, 0] stays affine (zero point qmax).
        let q = fbgemm_choose_qparams(-1.0, 0.0, -128, 127, true);
        assert_eq!((q.scale, q.zero_point), ((1.0f64 / 255.0) as f32, 127));
        let q = fbgemm_choose_qparams(0.0, 1.0, -128, 127, true);
        assert_eq!((q.scale, q.zero_point), ((1.0f64 / 255.0) as f32, -128));
        // A scale whose reciprocal overflows f32 (subnormal) becomes 0.1, like a zero one.
        let q = fbgemm_choose_qparams(0.0, 1e-37, 0, 255, false);
        assert_eq!((q.scale, q.zero_point), (0.1, 0));
        // Scales below the threshold become the threshold: one-sided ranges keep their zero end,
        // a two-sided range is stretched by threshold / scale, so its zero point stays in place:
        // 0 − (−1e-4 · amp) / thr = 63.75 → 64, not 1e-4 / thr = 1.64 → 2.
        let q = fbgemm_choose_qparams(0.0, 1e-3, 0, 255, false);
        assert_eq!((q.scale, q.zero_point), (thr, 0));
        let q = fbgemm_choose_qparams(0.0, 1e-3, -128, 127, false);
        assert_eq!((q.scale, q.zero_point), (thr, -128));
        let q = fbgemm_choose_qparams(-1e-3, 0.0, 0, 255, false);
        assert_eq!((q.scale, q.zero_point), (thr, 255));
        let q = fbgemm_choose_qparams(-1e-4, 3e-4, 0, 255, false);
        assert_eq!((q.scale, q.zero_point), (thr, 64));
    }

    #[test]
    fn fbgemm_symmetric_two_value_range_divides_by_zero_like_fbgemm() {
        // symmetric_qmax = (1 − 0)/2 = 0: FBGEMM computes max/0 and ends with an infinite scale.
        // torch 2.15 fused_moving_avg_obs_fake_quant on these statistics: scale nan, zp INT32_MIN.
        let q = fbgemm_choose_qparams(-5.445293e-6, 8.2447556e5, 0, 1, true);
        assert!(q.scale.is_nan(), "{q:?}");
        assert_eq!(q.zero_point, i32::MIN);
    }

    #[test]
    fn zero_point_below_qmin_clamps_before_rounding() {
        // On a wide range the f32 scale's rounding moves the chosen candidate (zp_max, the
        // smaller error term) to qmin − 1.28; FBGEMM clamps it to qmin instead of rounding it
        // to qmin − 1. torch 2.15 fused_moving_avg_obs_fake_quant on this batch: -1000000007.
        let q = fbgemm_choose_qparams(-0.000_348_919_45, 123_099.89, -1_000_000_007, 0, false);
        assert_eq!(q.zero_point, -1_000_000_007, "{q:?}");
    }

    #[test]
    fn validate_rejects_bad_scales() {
        for s in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-60] {
            assert!(validate_qparams("x", s, 0, 0, 255).is_err(), "{s}");
        }
        // A zero scale is reported as one, not as an f32 underflow.
        let e = validate_qparams("x", 0.0, 0, 0, 255)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be finite and > 0"), "{e}");
        assert!(validate_qparams("x", 0.1, 256, 0, 255).is_err());
        assert!(validate_qparams("x", 0.1, 3, 0, 255).is_ok());
    }
}
