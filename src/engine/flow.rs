//! The three FX convert flows, one quantized layer ("stage") at a time.
//!
//! - `convert_fx`: `quantize_per_tensor` (aten, clamp 0..255) then integer ops with the engine's
//!   accumulation and requantization ([`crate::engine`]).
//! - `convert_to_reference_fx`: quantize (aten, 0..255) → dequantize → f32 float op with
//!   fake-quantized weights → quantize (aten, 0..255).
//! - `_convert_to_reference_decomposed_fx`: the same with `quantized_decomposed` q/dq that clamp to
//!   the observer's `quant_min..quant_max` (0..127 under reduce_range).
//!
//! Float ops have no specified summation order, so each output is evaluated exactly with a proven
//! f32 error bound ([`crate::ops::FloatSum`]); an element whose bound straddles a rounding boundary
//! is [`Pred::Ambiguous`] instead of guessed. oneDNN's requantization order is unknown, and the
//! same rule applies there.

use crate::engine::{
    conv_path, linear_path, onednn_conv_accumulation, CpuFeatures, Engine, Isa, KernelPath,
};
use crate::geometry::Conv2dParams;
use crate::kernels::reference::Reference;
use crate::kernels::{Accumulation, Int8Gemm};
use crate::numerics::quantize::{aten, decomposed};
use crate::numerics::requant::{round_ne_i32, FbgemmRequant, QnnpackRequant};
use crate::ops::{self, FloatSum};
use crate::{Error, Result};

/// PyTorch's three FX convert flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flow {
    ConvertFx,
    ConvertToReferenceFx,
    ConvertToReferenceDecomposedFx,
}

impl Flow {
    /// All flows.
    pub const ALL: [Flow; 3] = [
        Flow::ConvertFx,
        Flow::ConvertToReferenceFx,
        Flow::ConvertToReferenceDecomposedFx,
    ];

    /// Parses PyTorch's function name.
    pub fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "convert_fx" => Flow::ConvertFx,
            "convert_to_reference_fx" => Flow::ConvertToReferenceFx,
            "_convert_to_reference_decomposed_fx" | "convert_to_reference_decomposed_fx" => {
                Flow::ConvertToReferenceDecomposedFx
            }
            other => {
                return Err(Error::invalid(
                    "flow",
                    format!("unknown convert flow {other:?}"),
                ))
            }
        })
    }

    /// PyTorch's function name.
    pub fn name(self) -> &'static str {
        match self {
            Flow::ConvertFx => "convert_fx",
            Flow::ConvertToReferenceFx => "convert_to_reference_fx",
            Flow::ConvertToReferenceDecomposedFx => "_convert_to_reference_decomposed_fx",
        }
    }

    /// Whether activations are clamped to the observer's quant range at inference (only the
    /// decomposed flow carries quant_min/quant_max; the others clamp to the dtype's 0..255).
    pub fn keeps_quant_range(self) -> bool {
        self == Flow::ConvertToReferenceDecomposedFx
    }

    /// Quantizes a float activation as this flow's quantize node does.
    pub fn quantize(
        self,
        x: f32,
        scale: f64,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
    ) -> Option<i64> {
        match self {
            Flow::ConvertToReferenceDecomposedFx => {
                decomposed::quantize(x, scale, zero_point, qmin, qmax)
            }
            _ => Some(
                aten::quantize_avx2(x, 1.0f32 / scale as f32, zero_point as i32, 0, 255) as i64,
            ),
        }
    }

    /// Dequantizes an activation as this flow's dequantize node does.
    pub fn dequantize(self, q: i64, scale: f64, zero_point: i64) -> f32 {
        match self {
            Flow::ConvertToReferenceDecomposedFx => decomposed::dequantize(q, scale, zero_point),
            _ => aten::dequantize(q, scale, zero_point),
        }
    }
}

/// A quantized u8 activation.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    pub scale: f64,
    pub zero_point: i64,
}

/// A quantized i8 weight (`[out, ...]`, per-tensor or per-channel along axis 0).
#[derive(Debug, Clone, PartialEq)]
pub struct QWeight {
    pub shape: Vec<usize>,
    pub int_repr: Vec<i8>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<i64>,
    pub per_channel: bool,
}

impl QWeight {
    fn scale_of(&self, oc: usize) -> f32 {
        self.scales[if self.per_channel { oc } else { 0 }]
    }
    fn zp_of(&self, oc: usize) -> i64 {
        self.zero_points[if self.per_channel { oc } else { 0 }]
    }
    /// All zero points are 0.
    pub fn is_symmetric(&self) -> bool {
        self.zero_points.iter().all(|&z| z == 0)
    }
    /// Dequantized weights as the given flow computes them.
    pub fn dequantized(&self, flow: Flow) -> Vec<f32> {
        let per_oc = self.int_repr.len() / self.shape[0].max(1);
        self.int_repr
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let oc = i / per_oc;
                let (s, z) = (self.scale_of(oc), self.zp_of(oc));
                match (flow, self.per_channel) {
                    (Flow::ConvertToReferenceDecomposedFx, true) => {
                        decomposed::dequantize_f32_scale(q as i64, s, z)
                    }
                    (Flow::ConvertToReferenceDecomposedFx, false) => {
                        decomposed::dequantize(q as i64, s as f64, z)
                    }
                    (_, true) => aten::dequantize_per_channel(q as i64, s as f64, z),
                    (_, false) => aten::dequantize(q as i64, s as f64, z),
                }
            })
            .collect()
    }
}

/// The op of a quantized layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerOp {
    Linear {
        in_features: usize,
        out_features: usize,
    },
    Conv2d(Conv2dParams),
}

/// A conv2d / linear layer with its float and quantized parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct QLayer {
    pub op: LayerOp,
    pub bias: Option<Vec<f32>>,
    pub weight: QWeight,
    /// ReLU fused after the op.
    pub relu: bool,
}

/// Output qparams of a stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutQParams {
    pub scale: f64,
    pub zero_point: i64,
    pub quant_min: i64,
    pub quant_max: i64,
}

/// Prediction for one output element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pred {
    /// Decided: PyTorch must produce exactly this value.
    Exact(i64),
    /// The value lies within a proven error bound of a rounding boundary: anything in `lo..=hi`
    /// is consistent with PyTorch's arithmetic.
    Ambiguous { lo: i64, hi: i64 },
}

impl Pred {
    /// Whether `v` is consistent with this prediction.
    pub fn admits(self, v: i64) -> bool {
        match self {
            Pred::Exact(x) => x == v,
            Pred::Ambiguous { lo, hi } => (lo..=hi).contains(&v),
        }
    }
    /// The most likely value (the exact one, or the interval's lower end).
    pub fn value(self) -> i64 {
        match self {
            Pred::Exact(x) | Pred::Ambiguous { lo: x, .. } => x,
        }
    }
}

/// Where one output element's value came from: the chain a mismatch report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementTrace {
    /// Zero-point-folded int32 accumulator under the path's accumulation model (integer flows).
    pub acc: Option<i32>,
    /// The accumulator with exact accumulation, when it differs (pair saturation happened).
    pub acc_exact: Option<i32>,
    /// First pair `(k, exact pair sum)` that saturated int16, if any.
    pub saturated_pair: Option<(usize, i32)>,
    /// Bias term added before scaling (FBGEMM: float; QNNPACK: the int32 bias).
    pub bias_term: Option<f64>,
    /// Requantization multiplier (FBGEMM `mult`, QNNPACK `req_scale`).
    pub multiplier: Option<f64>,
    /// Float op result (reference flows): exact value and error bound.
    pub float_value: Option<(f64, f64)>,
    /// The value that is rounded to an integer.
    pub pre_round: f64,
    /// The rule that produced the value.
    pub rule: String,
}

/// Result of running one stage.
#[derive(Debug, Clone)]
pub struct StageOut {
    pub shape: Vec<usize>,
    pub pred: Vec<Pred>,
    /// Kernel path (integer flow) or "float-op" (reference flows).
    pub path: &'static str,
    pub accumulation: Accumulation,
}

/// Settings that decide how a stage runs.
#[derive(Debug, Clone, Copy)]
pub struct StageCtx {
    pub flow: Flow,
    pub engine: Engine,
    /// FBGEMM's GEMM instruction set ([`crate::engine::fbgemm_gemm_isa`]).
    pub isa: Isa,
    /// The CPU that ran PyTorch (decides x86's conv path and every path that reads the CPU).
    pub cpu: CpuFeatures,
}

impl QLayer {
    /// Output shape for an input shape.
    pub fn output_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        match self.op {
            LayerOp::Linear {
                in_features,
                out_features,
            } => {
                if in_shape.last() != Some(&in_features) {
                    return Err(Error::shape(
                        "linear",
                        format!("input shape {in_shape:?} does not end in {in_features}"),
                    ));
                }
                let mut s = in_shape.to_vec();
                *s.last_mut().expect("non-empty") = out_features;
                Ok(s)
            }
            LayerOp::Conv2d(p) => {
                let (n, oh, ow) = p.output_dims(in_shape)?;
                Ok(vec![n, p.out_channels, oh, ow])
            }
        }
    }

    /// Accumulation model of this layer in the integer flow. oneDNN convs follow its
    /// implementation choice ([`onednn_conv_accumulation`]: grouped convs with channels per group
    /// not multiples of 4 run on `ref:any`, depthwise ones on `vpmaddwd`, both exact).
    pub fn accumulation(&self, ctx: &StageCtx, path: KernelPath) -> Accumulation {
        match self.op {
            LayerOp::Conv2d(p) if path == KernelPath::Onednn => {
                onednn_conv_accumulation(&p, &ctx.cpu)
            }
            _ => path.accumulation(ctx.isa, &ctx.cpu),
        }
    }

    /// Kernel path in the integer flow.
    pub fn path(&self, ctx: &StageCtx) -> KernelPath {
        match self.op {
            LayerOp::Linear { .. } => linear_path(ctx.engine),
            LayerOp::Conv2d(p) => conv_path(ctx.engine, &p, self.weight.is_symmetric(), &ctx.cpu),
        }
    }

    fn out_channels(&self) -> usize {
        match self.op {
            LayerOp::Linear { out_features, .. } => out_features,
            LayerOp::Conv2d(p) => p.out_channels,
        }
    }

    /// Output channel of flat output element `i` for an output shape.
    fn channel_of(&self, i: usize, out_shape: &[usize]) -> usize {
        match self.op {
            LayerOp::Linear { out_features, .. } => i % out_features,
            LayerOp::Conv2d(p) => (i / (out_shape[2] * out_shape[3])) % p.out_channels,
        }
    }

    /// Checks a stage's input, weights, bias and output qparams against the layer; returns the
    /// output shape. Every way of running the layer calls this first.
    pub(crate) fn validate_stage(&self, input: &QTensor, out: &OutQParams) -> Result<Vec<usize>> {
        let out_shape = self.validate(input)?;
        crate::numerics::qparams::validate_qparams(
            "output qparams",
            out.scale,
            out.zero_point,
            out.quant_min,
            out.quant_max,
        )?;
        Ok(out_shape)
    }

    fn validate(&self, input: &QTensor) -> Result<Vec<usize>> {
        let out_shape = self.output_shape(&input.shape)?;
        if input.data.len() != input.shape.iter().product::<usize>() {
            return Err(Error::shape(
                "stage input",
                "data length does not match shape",
            ));
        }
        let oc = self.out_channels();
        let nw = if self.weight.per_channel { oc } else { 1 };
        if self.weight.scales.len() != nw || self.weight.zero_points.len() != nw {
            return Err(Error::shape(
                "weight qparams",
                format!(
                    "{} scales / {} zero points for {nw} expected",
                    self.weight.scales.len(),
                    self.weight.zero_points.len()
                ),
            ));
        }
        if let Some(b) = &self.bias {
            if b.len() != oc {
                return Err(Error::shape(
                    "bias",
                    format!("{} values for {oc} output channels", b.len()),
                ));
            }
        }
        crate::numerics::qparams::validate_qparams(
            "input qparams",
            input.scale,
            input.zero_point,
            0,
            255,
        )?;
        Ok(out_shape)
    }

    /// Integer accumulators under an accumulation model (zero points folded in), with `path`'s
    /// pairing and padded-tap rules ([`KernelPath::pairs_per_tap`], [`KernelPath::padding_taps`]).
    fn int_acc(
        &self,
        input: &QTensor,
        acc: Accumulation,
        path: KernelPath,
        with: Option<&dyn Int8Gemm>,
    ) -> Result<Vec<i32>> {
        let reference = Reference::new(acc);
        let kernel: &dyn Int8Gemm = match with {
            Some(k) if k.accumulation() == acc => k,
            _ => &reference,
        };
        let oc = self.out_channels();
        let w_zp: Vec<i32> = (0..oc).map(|j| self.weight.zp_of(j) as i32).collect();
        match self.op {
            LayerOp::Linear { in_features, .. } => {
                let m = input.data.len() / in_features;
                ops::linear_acc(
                    kernel,
                    &input.data,
                    m,
                    in_features,
                    input.zero_point as i32,
                    &self.weight.int_repr,
                    oc,
                    &w_zp,
                )
            }
            LayerOp::Conv2d(p) if path.pairs_per_tap() => {
                let (inp, shape, wt, q) = ops::pad_channels_even(
                    &input.data,
                    &input.shape,
                    input.zero_point as u8,
                    &self.weight.int_repr,
                    &w_zp,
                    &p,
                );
                Ok(ops::conv2d_acc_with_padding(
                    kernel,
                    &inp,
                    &shape,
                    input.zero_point as i32,
                    &wt,
                    &w_zp,
                    &q,
                    path.padding_taps(),
                )?
                .0)
            }
            LayerOp::Conv2d(p) => Ok(ops::conv2d_acc_with_padding(
                kernel,
                &input.data,
                &input.shape,
                input.zero_point as i32,
                &self.weight.int_repr,
                &w_zp,
                &p,
                path.padding_taps(),
            )?
            .0),
        }
    }

    /// Float op outputs on the dequantized input and weights (reference flows).
    fn float_out(&self, input: &QTensor, flow: Flow) -> Result<Vec<FloatSum>> {
        let x: Vec<f32> = input
            .data
            .iter()
            .map(|&q| flow.dequantize(q as i64, input.scale, input.zero_point))
            .collect();
        let w = self.weight.dequantized(flow);
        let bias = self.bias.as_deref();
        match self.op {
            LayerOp::Linear {
                in_features,
                out_features,
            } => Ok(ops::linear_f64(
                &x,
                x.len() / in_features,
                in_features,
                &w,
                out_features,
                bias,
            )),
            LayerOp::Conv2d(p) => Ok(ops::conv2d_f64(&x, &input.shape, &w, bias, &p)?.0),
        }
    }

    /// FBGEMM's requantization rule for this layer (x86 and fbgemm engines).
    pub(crate) fn fbgemm_requant(&self, input: &QTensor, out: &OutQParams) -> FbgemmRequant {
        FbgemmRequant::new(
            input.scale,
            &self.weight.scales,
            self.weight.per_channel,
            self.bias.as_deref(),
            self.out_channels(),
            out.scale,
            out.zero_point as i32,
            self.relu,
        )
    }

    /// QNNPACK's requantization rule for this layer (int32 bias).
    pub(crate) fn qnnpack_requant(&self, input: &QTensor, out: &OutQParams) -> QnnpackRequant {
        QnnpackRequant::new(
            input.scale,
            &self.weight.scales,
            self.bias.as_deref(),
            self.out_channels(),
            out.scale,
            out.zero_point as i32,
            self.relu,
        )
    }

    /// Runs the layer on a quantized input under a flow, predicting every output element.
    pub fn run(&self, ctx: &StageCtx, input: &QTensor, out: &OutQParams) -> Result<StageOut> {
        self.run_with_kernel(ctx, None, input, out)
    }

    /// [`QLayer::run`] with the integer accumulation done by `kernel` wherever the path needs the
    /// kernel's accumulation model (the reference kernel otherwise): runs golden models on the
    /// optimized kernels.
    pub fn run_with_kernel(
        &self,
        ctx: &StageCtx,
        kernel: Option<&dyn Int8Gemm>,
        input: &QTensor,
        out: &OutQParams,
    ) -> Result<StageOut> {
        let out_shape = self.validate_stage(input, out)?;
        match ctx.flow {
            Flow::ConvertFx => {
                let path = self.path(ctx);
                let accm = self.accumulation(ctx, path);
                let acc = self.int_acc(input, accm, path, kernel)?;
                let pred: Vec<Pred> = if path.uses_fbgemm_requant() {
                    let rq = self.fbgemm_requant(input, out);
                    acc.iter()
                        .enumerate()
                        .map(|(i, &a)| {
                            let j = self.channel_of(i, &out_shape);
                            if path.requant_order_unknown() {
                                onednn_pred(&rq, a, j)
                            } else {
                                Pred::Exact(rq.apply(a, j) as i64)
                            }
                        })
                        .collect()
                } else {
                    let rq = self.qnnpack_requant(input, out);
                    acc.iter()
                        .enumerate()
                        .map(|(i, &a)| {
                            Pred::Exact(rq.apply(a, self.channel_of(i, &out_shape)) as i64)
                        })
                        .collect()
                };
                Ok(StageOut {
                    shape: out_shape,
                    pred,
                    path: path.name(),
                    accumulation: accm,
                })
            }
            flow => {
                let ys = self.float_out(input, flow)?;
                let (lo, hi) = if flow.keeps_quant_range() {
                    (out.quant_min, out.quant_max)
                } else {
                    (0, 255)
                };
                let pred = ys
                    .iter()
                    .map(|y| float_pred(flow, y, self.relu, out.scale, out.zero_point, lo, hi))
                    .collect::<Result<Vec<_>>>()?;
                Ok(StageOut {
                    shape: out_shape,
                    pred,
                    path: "float-op",
                    accumulation: Accumulation::Exact,
                })
            }
        }
    }

    /// The value chain of output element `i` (for mismatch reports).
    pub fn trace(
        &self,
        ctx: &StageCtx,
        input: &QTensor,
        out: &OutQParams,
        i: usize,
    ) -> Result<ElementTrace> {
        let out_shape = self.validate(input)?;
        let j = self.channel_of(i, &out_shape);
        match ctx.flow {
            Flow::ConvertFx => {
                let path = self.path(ctx);
                let accm = self.accumulation(ctx, path);
                let acc = self.int_acc(input, accm, path, None)?[i];
                let exact = self.int_acc(input, Accumulation::Exact, path, None)?[i];
                let saturated_pair = if acc != exact {
                    self.first_saturation(input, path, i, &out_shape)
                } else {
                    None
                };
                let (bias_term, multiplier, pre_round, rule) = if path.uses_fbgemm_requant() {
                    let rq = self.fbgemm_requant(input, out);
                    let idx = if rq.multiplier.len() == 1 { 0 } else { j };
                    let rule = format!(
                        "{}: y = f32(f32(f32(acc) + bias/act_w_scale [{}]) * mult); q = clamp(rne(y) + zp, {}, 255)",
                        path.name(),
                        if self.weight.per_channel { "division" } else { "reciprocal multiply" },
                        if self.relu { "zp (relu)" } else { "0" }
                    );
                    (
                        rq.bias_term[j] as f64,
                        rq.multiplier[idx] as f64,
                        rq.pre_round(acc, j) as f64,
                        rule,
                    )
                } else {
                    let rq = self.qnnpack_requant(input, out);
                    let rule = "qnnpack: y = f32(f32(acc + int32 bias) * req_scale); q = clamp(rne(y) + zp)".to_string();
                    (
                        rq.bias_q[j] as f64,
                        rq.scale[j] as f64,
                        rq.pre_round(acc, j) as f64,
                        rule,
                    )
                };
                let accm_name = match accm {
                    Accumulation::Exact => "exact accumulation",
                    Accumulation::PairSaturatingI16 => {
                        "pairwise int16-saturating accumulation (vpmaddubsw)"
                    }
                };
                Ok(ElementTrace {
                    acc: Some(acc),
                    acc_exact: (acc != exact).then_some(exact),
                    saturated_pair,
                    bias_term: Some(bias_term),
                    multiplier: Some(multiplier),
                    float_value: None,
                    pre_round,
                    rule: format!("{rule}; {accm_name}"),
                })
            }
            flow => {
                let y = self.float_out(input, flow)?[i];
                let v = if self.relu { y.value.max(0.0) } else { y.value };
                let inv = match flow {
                    Flow::ConvertToReferenceDecomposedFx => (1.0f64 / out.scale) as f32,
                    _ => 1.0f32 / out.scale as f32,
                };
                Ok(ElementTrace {
                    acc: None,
                    acc_exact: None,
                    saturated_pair: None,
                    bias_term: None,
                    multiplier: Some(inv as f64),
                    float_value: Some((y.value, y.error_bound())),
                    pre_round: v * inv as f64,
                    rule: format!(
                        "{}: f32 float op (order unknown, bound shown), then quantize x*inv_scale, clamp {}",
                        flow.name(),
                        if flow.keeps_quant_range() { format!("{}..{}", out.quant_min, out.quant_max) } else { "0..255".into() }
                    ),
                })
            }
        }
    }

    /// The first saturating pair of output element `i` in the GEMM columns `path` feeds its
    /// kernel (oneDNN: channels padded to even per tap, padded taps outside the kernel).
    fn first_saturation(
        &self,
        input: &QTensor,
        path: KernelPath,
        i: usize,
        out_shape: &[usize],
    ) -> Option<(usize, i32)> {
        let zp = input.zero_point as u8;
        match self.op {
            LayerOp::Linear {
                in_features: k,
                out_features: n,
            } => {
                let row = i / n;
                let j = i % n;
                ops::first_saturating_pair(
                    &input.data[row * k..(row + 1) * k],
                    &self.weight.int_repr[j * k..(j + 1) * k],
                )
            }
            LayerOp::Conv2d(p) => {
                let (oh, ow) = (out_shape[2], out_shape[3]);
                let oc = (i / (oh * ow)) % p.out_channels;
                let b = i / (p.out_channels * oh * ow);
                let pix = i % (oh * ow);
                let ocg = p.out_channels / p.groups;
                let g = oc / ocg;
                let (inp, shape, wt, q) = if path.pairs_per_tap() {
                    let w_zp: Vec<i32> = (0..p.out_channels)
                        .map(|j| self.weight.zp_of(j) as i32)
                        .collect();
                    ops::pad_channels_even(
                        &input.data,
                        &input.shape,
                        zp,
                        &self.weight.int_repr,
                        &w_zp,
                        &p,
                    )
                } else {
                    (
                        input.data.clone(),
                        input.shape.clone(),
                        self.weight.int_repr.clone(),
                        p,
                    )
                };
                // Padded taps holding 0 never saturate (they are skipped when accumulated exactly).
                let pad = match path.padding_taps() {
                    ops::PaddingTaps::ThroughKernel => zp,
                    ops::PaddingTaps::Exact => 0,
                };
                let a = ops::im2col(&inp, &shape, &q, g, pad).ok()?;
                let w = ops::weight_matrix(&wt, &q, g);
                let k = q.k();
                let r = b * oh * ow + pix;
                let jj = oc - g * ocg;
                ops::first_saturating_pair(&a[r * k..(r + 1) * k], &w[jj * k..(jj + 1) * k])
            }
        }
    }
}

/// oneDNN: the FBGEMM formula, with elements within a few f32 roundings of a tie ambiguous.
fn onednn_pred(rq: &FbgemmRequant, acc: i32, j: usize) -> Pred {
    let idx = if rq.multiplier.len() == 1 { 0 } else { j };
    let exact = (acc as f64 + rq.bias_term[j] as f64) * rq.multiplier[idx] as f64;
    let mag = (acc as f64).abs() * rq.multiplier[idx] as f64
        + (rq.bias_term[j] as f64 * rq.multiplier[idx] as f64).abs();
    // Up to ~6 f32 roundings in any order (scales product, bias scaling, add, multiply, FMA or not).
    let w = 8.0 * (f32::EPSILON as f64 / 2.0) * mag.max(1e-30);
    let lo_z = if rq.relu { rq.out_zero_point } else { 0 };
    let q =
        |v: f64| (v.round_ties_even() as i64 + rq.out_zero_point as i64).clamp(lo_z as i64, 255);
    let (a, b) = (q(exact - w), q(exact + w));
    let formula = rq.apply(acc, j) as i64;
    if a == b {
        Pred::Exact(a)
    } else {
        Pred::Ambiguous {
            lo: a.min(formula),
            hi: b.max(formula),
        }
    }
}

/// f32 rounding of a real value, downwards.
fn f32_down(v: f64) -> f32 {
    let r = v as f32;
    if (r as f64) > v {
        r.next_down()
    } else {
        r
    }
}

/// f32 rounding of a real value, upwards.
fn f32_up(v: f64) -> f32 {
    let r = v as f32;
    if (r as f64) < v {
        r.next_up()
    } else {
        r
    }
}

/// Prediction of `quantize(relu?(float op))` from the exact value and its error bound: the map
/// from the f32 result to the integer is monotone, so the interval's ends decide.
fn float_pred(
    flow: Flow,
    y: &FloatSum,
    relu: bool,
    scale: f64,
    zp: i64,
    lo: i64,
    hi: i64,
) -> Result<Pred> {
    let b = y.error_bound();
    let mut ylo = f32_down(y.value - b);
    let mut yhi = f32_up(y.value + b);
    if relu {
        ylo = ylo.max(0.0);
        yhi = yhi.max(0.0);
    }
    let q = |v: f32| -> Result<i64> {
        flow.quantize(v, scale, zp, lo, hi)
            .map(|x| x.clamp(lo, hi))
            .ok_or_else(|| Error::invalid("float op", "NaN output"))
    };
    let (a, c) = (q(ylo)?, q(yhi)?);
    Ok(if a == c {
        Pred::Exact(a)
    } else {
        Pred::Ambiguous { lo: a, hi: c }
    })
}

/// Rounds like `cvtps2dq` (re-exported for reports).
pub fn rne_i32(v: f32) -> i32 {
    round_ne_i32(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verified on torch 2.15.0, engine `onednn`, AVX2 without VNNI (`ONEDNN_VERBOSE`:
    /// `jit_uni_int8:avx2`): a 2-channel 1×2 conv on a 1×2 image of 255s (zero point 200) with
    /// weights 127 gives `[68, 8, 68]` with padding (0, 1) and `[128; 3], [68, 8, 68], [128; 3]`
    /// with padding (1, 1) at output scale 300, zero point 128. In-bounds taps saturate their
    /// channel pair (2·255·127 → 32767); padded taps contribute exactly 0, where a saturated
    /// `200·127` pair would have given -18033 more (outputs 8 and 68).
    #[test]
    fn onednn_conv_accumulates_padded_taps_exactly() {
        let layer = |padding: [usize; 2]| QLayer {
            op: LayerOp::Conv2d(Conv2dParams {
                in_channels: 2,
                out_channels: 1,
                kernel_size: [1, 2],
                stride: [1, 1],
                padding,
                dilation: [1, 1],
                groups: 1,
            }),
            bias: None,
            weight: QWeight {
                shape: vec![1, 2, 1, 2],
                int_repr: vec![127; 4],
                scales: vec![1.0],
                zero_points: vec![0],
                per_channel: false,
            },
            relu: false,
        };
        let input = QTensor {
            shape: vec![1, 2, 1, 2],
            data: vec![255; 4],
            scale: 1.0,
            zero_point: 200,
        };
        let out = OutQParams {
            scale: 300.0,
            zero_point: 128,
            quant_min: 0,
            quant_max: 255,
        };
        let ctx = StageCtx {
            flow: Flow::ConvertFx,
            engine: Engine::Onednn,
            isa: Isa::Avx2,
            cpu: CpuFeatures::AVX2,
        };
        let run = |padding| layer(padding).run(&ctx, &input, &out).unwrap();
        let s = run([0, 1]);
        assert_eq!(s.accumulation, Accumulation::PairSaturatingI16);
        assert_eq!(s.pred, [68, 8, 68].map(Pred::Exact));
        let mut want = vec![128; 3];
        want.extend([68, 8, 68]);
        want.extend([128; 3]);
        assert_eq!(
            run([1, 1]).pred,
            want.into_iter().map(Pred::Exact).collect::<Vec<_>>()
        );
        // The exact accumulators (what `ref:any` or VNNI would give) are 13970, 27940, 13970.
        let exact = StageCtx {
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
            ..ctx
        };
        let e = layer([0, 1]).run(&exact, &input, &out).unwrap();
        assert_eq!(e.pred, [175, 221, 175].map(Pred::Exact));
    }
}
