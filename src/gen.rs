//! Case generation shared by the property suites (`tests/prop_*.rs`), the cargo-fuzz targets
//! (`fuzz/`) and the corpus replay test: proptest strategies and `arbitrary` constructors that
//! produce only legal cases, biased toward the hard regions (rounding ties, clamp limits, u8×i8
//! pairs whose sum leaves the int16 range, K/N around kernel block sizes, M = 1).
//!
//! Every case type has a `repro()` that prints it as a Rust snippet, so a failing property or fuzz
//! input can be turned into a named regression test.

use crate::geometry::Conv2dParams;
use crate::kernels::reference::Reference;
use crate::kernels::{Accumulation, Int8Gemm};
use crate::numerics::qparams::{calculate_qmin_qmax, QDType, QuantRange};
use crate::ops;
use crate::ops::layer::{Geometry, QLayer, QWeight};
use crate::ops::{OutQParams, QTensor};
use arbitrary::{Arbitrary, Unstructured};
use proptest::prelude::*;

pub mod fuzz;
pub mod graph;
pub mod runtime;

/// Scales that are exact, "round" f32 values (powers of two and common decimal scales).
pub const EXACT_SCALES: [f32; 10] = [
    1.0,
    0.5,
    0.25,
    0.125,
    0.0078125,
    2.0,
    0.1,
    0.01,
    0.003921569,
    1e-3,
];

/// Sizes around the kernels' block sizes (and small odd values).
pub const BLOCK_SIZES: [usize; 17] = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65];

/// A log-uniform f32 in `[1e-6, 1e3]` from a unit value `t ∈ [0, 1]`.
pub fn log_scale(t: f64) -> f32 {
    let t = t.clamp(0.0, 1.0);
    (10f64.powf(-6.0 + 9.0 * t) as f32).clamp(1e-6, 1e3)
}

/// Scale strategy: exact values or log-uniform over `1e-6..1e3`.
pub fn scale() -> impl Strategy<Value = f32> {
    prop_oneof![
        proptest::sample::select(EXACT_SCALES.to_vec()),
        (0.0f64..=1.0).prop_map(log_scale),
    ]
}

/// Sane scales for round-trip laws (reciprocal far from overflow/underflow).
pub fn sane_scale() -> impl Strategy<Value = f32> {
    prop_oneof![
        proptest::sample::select(EXACT_SCALES.to_vec()),
        (0.3f64..=0.9).prop_map(log_scale),
    ]
}

/// A quantized activation/weight dtype with its quant range and qparams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParamCase {
    pub dtype: QDType,
    pub reduce_range: bool,
    /// Custom `(quant_min, quant_max)` given by the user, if any.
    pub custom: Option<(i64, i64)>,
    pub range: QuantRange,
    pub scale: f32,
    pub zero_point: i64,
}

impl QParamCase {
    /// The case as a Rust snippet.
    pub fn repro(&self) -> String {
        format!(
            "let range = qparity::numerics::qparams::calculate_qmin_qmax({:?}, {:?}, qparity::numerics::qparams::QDType::{:?}, {}).unwrap();\nlet (scale, zero_point) = ({:e}f32, {}i64);",
            self.custom.map(|c| c.0),
            self.custom.map(|c| c.1),
            self.dtype,
            self.reduce_range,
            self.scale,
            self.zero_point
        )
    }

    fn build(
        dtype: QDType,
        reduce_range: bool,
        custom: Option<(i64, i64)>,
        scale: f32,
        zp_sel: u32,
    ) -> Self {
        let range = calculate_qmin_qmax(
            custom.map(|c| c.0),
            custom.map(|c| c.1),
            dtype,
            reduce_range,
        )
        .expect("generated ranges are legal");
        let (lo, hi) = (range.quant_min, range.quant_max);
        // Zero points at the extremes half of the time.
        let span = (hi - lo) as u64 + 1;
        let zero_point = match zp_sel % 4 {
            0 => lo,
            1 => hi,
            _ => lo + (zp_sel as u64 % span) as i64,
        };
        QParamCase {
            dtype,
            reduce_range,
            custom,
            range,
            scale,
            zero_point,
        }
    }
}

/// A legal custom range: PyTorch's observers require `quant_min <= 0 <= quant_max` and
/// `quant_min < quant_max`; we also keep at least 4 values so the reduced range is not a point.
fn custom_range(dtype: QDType, a: u8, b: u8) -> (i64, i64) {
    let (dlo, dhi) = dtype.full_range();
    let lo = -((a as i64) % (1 - dlo));
    let hi = (b as i64) % (dhi + 1);
    if hi - lo >= 3 {
        (lo, hi)
    } else if hi + 3 <= dhi {
        (lo, hi + 3)
    } else {
        (lo - 3, hi)
    }
}

/// 8-bit quant params: quint8/qint8, reduce_range on/off, optional custom range, any scale.
pub fn qparam_case() -> impl Strategy<Value = QParamCase> {
    (
        prop_oneof![Just(QDType::Quint8), Just(QDType::Qint8)],
        any::<bool>(),
        proptest::option::weighted(0.3, (any::<u8>(), any::<u8>())),
        scale(),
        any::<u32>(),
    )
        .prop_map(|(dtype, rr, custom, s, zp)| {
            QParamCase::build(
                dtype,
                rr,
                custom.map(|(a, b)| custom_range(dtype, a, b)),
                s,
                zp,
            )
        })
}

impl<'a> Arbitrary<'a> for QParamCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let dtype = if bool::arbitrary(u)? {
            QDType::Quint8
        } else {
            QDType::Qint8
        };
        let rr = bool::arbitrary(u)?;
        let custom = if u.ratio(1, 3)? {
            Some(custom_range(dtype, u8::arbitrary(u)?, u8::arbitrary(u)?))
        } else {
            None
        };
        let s = if bool::arbitrary(u)? {
            *u.choose(&EXACT_SCALES)?
        } else {
            log_scale(u.int_in_range(0u32..=1_000_000)? as f64 / 1e6)
        };
        Ok(Self::build(dtype, rr, custom, s, u32::arbitrary(u)?))
    }
}

/// Floats biased toward the hard values for quantization with `(scale, zp, lo, hi)`: exact ties
/// `(k + 0.5)·s` (kept only when exactly representable), grid points, the clamp limits and one
/// step beyond, NaN/±inf, and arbitrary values.
pub fn hard_float(scale: f32, zp: i64, lo: i64, hi: i64, sel: u8, k: i32, raw: f32) -> f32 {
    let s = scale as f64;
    let grid = |q: f64| (q * s) as f32;
    match sel % 10 {
        0 | 1 => {
            let x = (k as f64 + 0.5) * s;
            // Exactly representable ties only; otherwise the nearest grid point.
            if (x as f32) as f64 == x {
                x as f32
            } else {
                grid(k as f64)
            }
        }
        2 => grid(k as f64),
        3 => grid((lo - zp) as f64),
        4 => grid((hi - zp) as f64),
        5 => grid((hi - zp) as f64 + 1.0),
        6 => grid((lo - zp) as f64 - 1.0),
        7 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, -3e38][k.rem_euclid(5) as usize],
        _ => raw,
    }
}

/// A float in the range of a quant case (as [`hard_float`]).
pub fn hard_float_for(case: QParamCase) -> impl Strategy<Value = f32> {
    (any::<u8>(), -300i32..300, any::<f32>()).prop_map(move |(sel, k, raw)| {
        hard_float(
            case.scale,
            case.zero_point,
            case.range.quant_min,
            case.range.quant_max,
            sel,
            k,
            raw,
        )
    })
}

/// A u8 × i8 GEMM problem (`a` M×K, `b` N×K, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct GemmCase {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Vec<u8>,
    pub b: Vec<i8>,
}

impl GemmCase {
    /// The case as a Rust snippet.
    pub fn repro(&self) -> String {
        format!(
            "let case = qparity::gen::GemmCase {{ m: {}, n: {}, k: {}, a: vec!{:?}, b: vec!{:?} }};",
            self.m, self.n, self.k, self.a, self.b
        )
    }

    /// `c = a·bᵀ` with a kernel.
    pub fn run(&self, kernel: &dyn Int8Gemm) -> Vec<i32> {
        let mut c = vec![0i32; self.m * self.n];
        kernel.gemm(self.m, self.n, self.k, &self.a, &self.b, &mut c);
        c
    }

    /// The reference result for an accumulation model.
    pub fn reference(&self, acc: Accumulation) -> Vec<i32> {
        self.run(&Reference::new(acc))
    }

    /// Builds a case from raw parts; `bias` ∈ 0..4 selects the value distribution (0: uniform,
    /// 1: activations 128..255 with large same-sign weights — pairs saturate, 2: activations
    /// 0..127, 3: extremes only).
    pub fn from_parts(m: usize, n: usize, k: usize, bias: u8, bytes: &[u8]) -> Self {
        let mut it = bytes.iter().copied().chain(std::iter::repeat(0x5a)).cycle();
        let mut next = move || it.next().unwrap_or(0);
        let sign = if next() & 1 == 0 { 1i16 } else { -1 };
        let a = (0..m * k)
            .map(|_| {
                let v = next();
                match bias % 4 {
                    1 => 128 | v,
                    2 => v & 0x7f,
                    3 => [0, 1, 127, 128, 254, 255][v as usize % 6],
                    _ => v,
                }
            })
            .collect();
        let b = (0..n * k)
            .map(|_| {
                let v = next();
                match bias % 4 {
                    1 => (sign * (64 + (v & 0x3f) as i16)).clamp(-128, 127) as i8,
                    3 => [-128i8, -127, -1, 0, 1, 127][v as usize % 6],
                    _ => v as i8,
                }
            })
            .collect();
        GemmCase { m, n, k, a, b }
    }
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![proptest::sample::select(BLOCK_SIZES.to_vec()), 1usize..=70,]
}

/// GEMM problems: M ∈ {1, small}, K and N around block sizes, biased value distributions.
pub fn gemm_case() -> impl Strategy<Value = GemmCase> {
    (prop_oneof![Just(1usize), 1usize..=6], dim(), dim(), 0u8..4).prop_flat_map(
        |(m, n, k, bias)| {
            proptest::collection::vec(any::<u8>(), m * k + n * k + 1)
                .prop_map(move |bytes| GemmCase::from_parts(m, n, k, bias, &bytes))
        },
    )
}

/// GEMM problems with M from 14 to 80: around the 16-row tiles and 32-row blocks of the AMX
/// kernel (and the M tails of every kernel); N and K as in [`gemm_case`].
pub fn gemm_case_tall() -> impl Strategy<Value = GemmCase> {
    (14usize..=80, dim(), dim(), 0u8..4).prop_flat_map(|(m, n, k, bias)| {
        proptest::collection::vec(any::<u8>(), m * k + n * k + 1)
            .prop_map(move |bytes| GemmCase::from_parts(m, n, k, bias, &bytes))
    })
}

/// GEMM problems with activations restricted to 0..127 (the reduce_range domain) and any weights.
pub fn gemm_case_reduced() -> impl Strategy<Value = GemmCase> {
    gemm_case().prop_map(|mut c| {
        c.a.iter_mut().for_each(|v| *v &= 0x7f);
        c
    })
}

impl<'a> Arbitrary<'a> for GemmCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let m = u.int_in_range(1usize..=6)?;
        let n = if bool::arbitrary(u)? {
            *u.choose(&BLOCK_SIZES)?
        } else {
            u.int_in_range(1usize..=70)?
        };
        let k = if bool::arbitrary(u)? {
            *u.choose(&BLOCK_SIZES)?
        } else {
            u.int_in_range(1usize..=70)?
        };
        let bias = u.int_in_range(0u8..=3)?;
        let bytes = u.bytes(u.len().min(m * k + n * k + 1))?;
        Ok(GemmCase::from_parts(m, n, k, bias, bytes))
    }
}

/// A conv2d problem on an NCHW u8 input.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvCase {
    pub params: Conv2dParams,
    pub input_shape: [usize; 4],
    pub input: Vec<u8>,
    pub a_zp: i32,
    pub weight: Vec<i8>,
    pub w_zp: Vec<i32>,
}

impl ConvCase {
    /// The case as a Rust snippet.
    pub fn repro(&self) -> String {
        format!(
            "let case = qparity::gen::ConvCase {{ params: qparity::geometry::{:?}, input_shape: {:?}, input: vec!{:?}, a_zp: {}, weight: vec!{:?}, w_zp: vec!{:?} }};",
            self.params, self.input_shape, self.input, self.a_zp, self.weight, self.w_zp
        )
    }

    /// Zero-point-folded accumulators with a kernel.
    pub fn run(&self, kernel: &dyn Int8Gemm) -> crate::Result<Vec<i32>> {
        Ok(ops::gemm::conv2d_acc(
            kernel,
            &self.input,
            &self.input_shape,
            self.a_zp,
            &self.weight,
            &self.w_zp,
            &self.params,
        )?
        .0)
    }

    /// Builds a legal conv case from small selectors.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        groups: usize,
        icg: usize,
        ocg: usize,
        ks: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        batch: usize,
        hw: [usize; 2],
        bias: u8,
        bytes: &[u8],
    ) -> Self {
        let params = Conv2dParams {
            in_channels: groups * icg,
            out_channels: groups * ocg,
            kernel_size: ks,
            stride,
            padding,
            dilation,
            groups,
        };
        // Make the input large enough for the dilated kernel.
        let mut shape = [batch, params.in_channels, hw[0], hw[1]];
        for d in 0..2 {
            let span = dilation[d] * (ks[d] - 1) + 1;
            if shape[2 + d] + 2 * padding[d] < span {
                shape[2 + d] = span - 2 * padding[d];
            }
        }
        let nin: usize = shape.iter().product();
        let nw: usize = params.weight_shape().iter().product();
        let g = GemmCase::from_parts(1, 1, nin.max(nw), bias, bytes);
        let mut tail = bytes.iter().rev().copied().chain(std::iter::repeat(0));
        let a_zp = tail.next().unwrap_or(0) as i32;
        let w_zp = (0..params.out_channels)
            .map(|_| (tail.next().unwrap_or(0) as i8 as i32) / 8)
            .collect();
        ConvCase {
            params,
            input_shape: shape,
            input: g.a[..nin].to_vec(),
            a_zp,
            weight: g.b[..nw].to_vec(),
            w_zp,
        }
    }
}

/// Conv2d problems: stride, padding, dilation, groups, depthwise.
pub fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (
            prop_oneof![Just(1usize), 2usize..=4],
            prop_oneof![Just(1usize), 2usize..=5],
            1usize..=4,
            [1usize..=3, 1usize..=3],
            [1usize..=2, 1usize..=2],
            [0usize..=2, 0usize..=2],
        ),
        (
            [1usize..=2, 1usize..=2],
            1usize..=2,
            [1usize..=7, 1usize..=7],
            0u8..4,
        ),
    )
        .prop_flat_map(|((g, icg, ocg, ks, st, pd), (dl, b, hw, bias))| {
            proptest::collection::vec(any::<u8>(), 64..512).prop_map(move |bytes| {
                ConvCase::from_parts(g, icg, ocg, ks, st, pd, dl, b, hw, bias, &bytes)
            })
        })
}

impl<'a> Arbitrary<'a> for ConvCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let groups = u.int_in_range(1usize..=4)?;
        let icg = u.int_in_range(1usize..=5)?;
        let ocg = u.int_in_range(1usize..=4)?;
        let mut r2 = |lo: usize, hi: usize| -> arbitrary::Result<[usize; 2]> {
            Ok([u.int_in_range(lo..=hi)?, u.int_in_range(lo..=hi)?])
        };
        let ks = r2(1, 3)?;
        let stride = r2(1, 2)?;
        let padding = r2(0, 2)?;
        let dilation = r2(1, 2)?;
        let hw = r2(1, 7)?;
        let batch = u.int_in_range(1usize..=2)?;
        let bias = u.int_in_range(0u8..=3)?;
        let bytes = u.bytes(u.len().min(512))?;
        Ok(ConvCase::from_parts(
            groups, icg, ocg, ks, stride, padding, dilation, batch, hw, bias, bytes,
        ))
    }
}

/// A quantized linear or conv layer with its input, for the flow relations.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCase {
    pub layer: QLayer,
    pub input: QTensor,
    pub out: OutQParams,
}

impl LayerCase {
    /// The case as a Rust snippet (Debug of the parts, which are plain-data structs).
    pub fn repro(&self) -> String {
        format!(
            "// layer: {:?}\n// input: {:?}\n// out: {:?}",
            self.layer, self.input, self.out
        )
    }

    /// Builds a layer around a GEMM (linear) or conv case; output qparams are derived from the
    /// exact float output range so that outputs span the quant range (non-vacuity).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        op: Geometry,
        input_shape: Vec<usize>,
        input: Vec<u8>,
        in_scale: f32,
        in_zp: u8,
        weight: Vec<i8>,
        w_scales: Vec<f32>,
        per_channel: bool,
        bias: Option<Vec<f32>>,
        relu: bool,
    ) -> crate::Result<Self> {
        let oc = match op {
            Geometry::Linear { out_features, .. } => out_features,
            Geometry::Conv2d(p) => p.out_channels,
        };
        let wshape = match op {
            Geometry::Linear {
                in_features,
                out_features,
            } => vec![out_features, in_features],
            Geometry::Conv2d(p) => p.weight_shape().to_vec(),
        };
        let nw = if per_channel { oc } else { 1 };
        let layer = QLayer {
            geometry: op,
            bias,
            weight: QWeight {
                shape: wshape,
                int_repr: weight,
                scales: w_scales[..nw].to_vec(),
                zero_points: vec![0; nw],
                per_channel,
            },
            relu,
            cache: Default::default(),
        };
        let input = QTensor::new(input_shape, input, in_scale as f64, in_zp as i64);
        // Exact accumulators → float outputs → output range.
        let zeros = vec![0i32; oc];
        let exact = Reference::new(Accumulation::Exact);
        let (acc, per) = match op {
            Geometry::Linear { in_features, .. } => (
                ops::gemm::linear_acc(
                    &exact,
                    &input.data,
                    input.data.len() / in_features,
                    in_features,
                    in_zp as i32,
                    &layer.weight.int_repr,
                    oc,
                    &zeros,
                )?,
                1usize,
            ),
            Geometry::Conv2d(p) => {
                let (acc, s) = ops::gemm::conv2d_acc(
                    &exact,
                    &input.data,
                    &input.shape,
                    in_zp as i32,
                    &layer.weight.int_repr,
                    &zeros,
                    &p,
                )?;
                (acc, s[2] * s[3])
            }
        };
        let (mut lo, mut hi) = (0f64, 0f64);
        for (i, &a) in acc.iter().enumerate() {
            let j = (i / per) % oc;
            let ws = layer.weight.scales[if per_channel { j } else { 0 }] as f64;
            let b = layer.bias.as_ref().map_or(0.0, |b| b[j] as f64);
            let y = a as f64 * in_scale as f64 * ws + b;
            lo = lo.min(y);
            hi = hi.max(y);
        }
        let scale = ((hi - lo) / 255.0).max(1e-6) as f32 as f64;
        let zero_point = ((-lo / scale).round() as i64).clamp(0, 255);
        Ok(LayerCase {
            layer,
            input,
            out: OutQParams {
                scale,
                zero_point,
                quant_min: 0,
                quant_max: 255,
            },
        })
    }

    /// A linear layer from a GEMM case.
    pub fn linear(g: &GemmCase, in_scale: f32, in_zp: u8, w_scale: f32, sel: u8) -> Self {
        let w_scales: Vec<f32> = (0..g.n)
            .map(|j| w_scale * (1.0 + (j % 3) as f32 * 0.25))
            .collect();
        let bias = (sel & 1 == 1).then(|| {
            (0..g.n)
                .map(|j| (j as f32 - 2.0) * in_scale * w_scale * 37.0)
                .collect()
        });
        Self::new(
            Geometry::Linear {
                in_features: g.k,
                out_features: g.n,
            },
            vec![g.m, g.k],
            g.a.clone(),
            in_scale,
            in_zp,
            g.b.clone(),
            w_scales,
            sel & 2 == 2,
            bias,
            sel & 4 == 4,
        )
        .expect("generated linear layers are legal")
    }

    /// A conv layer from a conv case.
    pub fn conv(c: &ConvCase, in_scale: f32, w_scale: f32, sel: u8) -> Self {
        let oc = c.params.out_channels;
        let w_scales: Vec<f32> = (0..oc)
            .map(|j| w_scale * (1.0 + (j % 3) as f32 * 0.25))
            .collect();
        let bias = (sel & 1 == 1).then(|| {
            (0..oc)
                .map(|j| (j as f32 - 1.0) * in_scale * w_scale * 11.0)
                .collect()
        });
        Self::new(
            Geometry::Conv2d(c.params),
            c.input_shape.to_vec(),
            c.input.clone(),
            in_scale,
            c.a_zp as u8,
            c.weight.clone(),
            w_scales,
            sel & 2 == 2,
            bias,
            sel & 4 == 4,
        )
        .expect("generated conv layers are legal")
    }
}

/// Random linear or conv layers.
pub fn layer_case() -> impl Strategy<Value = LayerCase> {
    (
        prop_oneof![gemm_case().prop_map(Ok), conv_case().prop_map(Err)],
        sane_scale(),
        any::<u8>(),
        sane_scale(),
        any::<u8>(),
    )
        .prop_map(|(c, is, zp, ws, sel)| match c {
            Ok(g) => LayerCase::linear(&g, is, zp, ws, sel),
            Err(c) => LayerCase::conv(&c, is, ws, sel),
        })
}

impl<'a> Arbitrary<'a> for LayerCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let sane = |u: &mut Unstructured<'a>| -> arbitrary::Result<f32> {
            Ok(if bool::arbitrary(u)? {
                *u.choose(&EXACT_SCALES)?
            } else {
                log_scale(0.3 + 0.6 * u.int_in_range(0u32..=1000)? as f64 / 1000.0)
            })
        };
        let (is, ws) = (sane(u)?, sane(u)?);
        let (zp, sel) = (u8::arbitrary(u)?, u8::arbitrary(u)?);
        Ok(if bool::arbitrary(u)? {
            LayerCase::linear(&GemmCase::arbitrary(u)?, is, zp, ws, sel)
        } else {
            LayerCase::conv(&ConvCase::arbitrary(u)?, is, ws, sel)
        })
    }
}

/// SplitMix64: a small deterministic generator for test data, benchmarks and live runs (where
/// proptest's shrinking is not wanted).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// The next 32 random bits (the high half).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in `lo..=hi` (`lo ≤ hi`).
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    /// Uniform f32 in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    /// `n` uniform bytes.
    pub fn u8s(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u32() as u8).collect()
    }
    /// `n` uniform int8 values.
    pub fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next_u32() as i8).collect()
    }
}

/// Sums of adjacent pairs that leave the int16 range, as `(k, exact pair sum)`, found by
/// repeatedly asking [`ops::gemm::first_saturating_pair`] on the remaining suffix.
pub fn saturating_pairs(a: &[u8], b: &[i8]) -> Vec<(usize, i32)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < a.len() {
        match ops::gemm::first_saturating_pair(&a[start..], &b[start..]) {
            Some((k, s)) => {
                out.push((start + k, s));
                start += k + 2;
            }
            None => break,
        }
    }
    out
}

/// Runs a property over `strategy` with proptest's default configuration (256 cases unless
/// `PROPTEST_CASES` says otherwise), persisting failures to `persist` (a path relative to the
/// package root, under `tests/proptest-regressions/`). A failure panics with the shrunk case
/// printed by `repro` as a Rust snippet.
pub fn check_property<S>(
    name: &str,
    persist: &'static str,
    strategy: S,
    repro: impl Fn(&S::Value) -> String,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S: Strategy,
{
    use proptest::test_runner::{Config, FileFailurePersistence, TestError, TestRunner};
    let config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(persist))),
        source_file: Some(persist),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, v)) => {
            panic!(
                "property {name} failed: {why}\nminimal case (Rust):\n{}",
                repro(&v)
            )
        }
        Err(TestError::Abort(why)) => panic!("property {name} aborted: {why}"),
    }
}
