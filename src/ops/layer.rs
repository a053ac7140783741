//! Quantized linear and conv2d (`quantized::linear`, `quantized::conv2d` and their reference
//! twins): int8 weights, a float bias, an optional fused ReLU. In `convert_fx` the plan is an
//! integer kernel path with its accumulation model and requantization rule ([`IntegerLayer`]); in
//! the reference flows it is a float op on dequantized values with a proven error bound, then the
//! flow's quantize node.
//!
//! Sources: PyTorch `aten/src/ATen/native/quantized/cpu/qlinear.cpp`, `qconv.cpp` (kernels and
//! requantization set-up), `torch/ao/nn/quantized/reference/modules/{linear,conv}.py` (reference
//! modules: weights quantized and dequantized, then `F.linear` / `F.conv2d` in f32).

use super::gemm;
use super::{expect_inputs, expect_out, Lowered, Meta, Op, OutQParams, Output, Plan, Predicted};
use super::{QTensor, Rule, Value};
use crate::engine::flow::Flow;
use crate::engine::PaddingTaps;
use crate::engine::{conv_path, linear_path, onednn_conv_accumulation, Ctx, KernelPath};
use crate::geometry::Conv2dParams;
use crate::kernels::reference::Reference;
use crate::kernels::{Accumulation, Int8Gemm, Requant};
use crate::numerics::bound::{FloatSum, Pred};
use crate::numerics::qparams::validate_qparams;
use crate::numerics::quantize::{aten, decomposed};
use crate::numerics::requant::{FbgemmRequant, QnnpackRequant};
use crate::{Error, Result};

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
    /// Scale of output channel `oc`.
    pub fn scale_of(&self, oc: usize) -> f32 {
        self.scales[if self.per_channel { oc } else { 0 }]
    }

    /// Zero point of output channel `oc`.
    pub fn zp_of(&self, oc: usize) -> i64 {
        self.zero_points[if self.per_channel { oc } else { 0 }]
    }

    /// Zero points per output channel, as the kernels take them.
    pub fn zp_per_channel(&self, oc: usize) -> Vec<i32> {
        (0..oc).map(|j| self.zp_of(j) as i32).collect()
    }

    /// All zero points are 0.
    pub fn is_symmetric(&self) -> bool {
        self.zero_points.iter().all(|&z| z == 0)
    }

    /// Dequantized weights as the given flow computes them (the reference modules'
    /// `_quantize_and_dequantize_weight`, or its decomposed twin).
    pub fn dequantized(&self, flow: Flow) -> Vec<f32> {
        let per_oc = (self.int_repr.len() / self.shape[0].max(1)).max(1);
        let mut out = Vec::with_capacity(self.int_repr.len());
        for (oc, row) in self.int_repr.chunks(per_oc).enumerate() {
            let (s, z) = (self.scale_of(oc), self.zp_of(oc));
            out.extend(row.iter().map(|&q| match (flow, self.per_channel) {
                (Flow::ConvertToReferenceDecomposedFx, true) => {
                    decomposed::dequantize_f32_scale(q as i64, s, z)
                }
                (Flow::ConvertToReferenceDecomposedFx, false) => {
                    decomposed::dequantize(q as i64, s as f64, z)
                }
                (_, true) => aten::dequantize_per_channel(q as i64, s as f64, z),
                (_, false) => aten::dequantize(q as i64, s as f64, z),
            }));
        }
        out
    }
}

/// The shape of a weighted layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Geometry {
    Linear {
        in_features: usize,
        out_features: usize,
    },
    Conv2d(Conv2dParams),
}

impl Geometry {
    /// The op name.
    pub fn name(&self) -> &'static str {
        match self {
            Geometry::Linear { .. } => "linear",
            Geometry::Conv2d(_) => "conv2d",
        }
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        match self {
            Geometry::Linear { out_features, .. } => *out_features,
            Geometry::Conv2d(p) => p.out_channels,
        }
    }

    /// Expected weight shape.
    pub fn weight_shape(&self) -> Vec<usize> {
        match self {
            Geometry::Linear {
                in_features,
                out_features,
            } => vec![*out_features, *in_features],
            Geometry::Conv2d(p) => p.weight_shape().to_vec(),
        }
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match self {
            Geometry::Linear {
                in_features,
                out_features,
            } => {
                if input.last() != Some(in_features) {
                    return Err(Error::shape(
                        "linear",
                        format!("input shape {input:?} does not end in {in_features}"),
                    ));
                }
                let mut s = input.to_vec();
                *s.last_mut().expect("non-empty") = *out_features;
                Ok(s)
            }
            Geometry::Conv2d(p) => {
                let (n, oh, ow) = p.output_dims(input)?;
                Ok(vec![n, p.out_channels, oh, ow])
            }
        }
    }

    /// Output channel of flat output element `i`.
    pub fn channel_of(&self, i: usize, out_shape: &[usize]) -> usize {
        match self {
            Geometry::Linear { out_features, .. } => i % out_features,
            Geometry::Conv2d(p) => (i / (out_shape[2] * out_shape[3])) % p.out_channels,
        }
    }

    /// The kernel path of `quantized::linear` / `quantized::conv2d` under `ctx`.
    pub fn path(&self, ctx: &Ctx, weight_symmetric: bool) -> KernelPath {
        match self {
            Geometry::Linear { .. } => linear_path(ctx.engine),
            Geometry::Conv2d(p) => conv_path(ctx.engine, p, weight_symmetric, &ctx.cpu),
        }
    }

    /// The accumulation model of `path` for this shape: oneDNN convs follow oneDNN's
    /// implementation choice ([`onednn_conv_accumulation`]).
    pub fn accumulation(&self, ctx: &Ctx, path: KernelPath) -> Accumulation {
        match self {
            Geometry::Conv2d(p) if path == KernelPath::Onednn => {
                onednn_conv_accumulation(p, &ctx.cpu)
            }
            _ => path.accumulation(ctx.isa, &ctx.cpu),
        }
    }

    /// Zero-point-folded int32 accumulators with `path`'s pairing and padded-tap rules, the
    /// products summed by `kernel`.
    pub fn int_acc(
        &self,
        input: &QTensor,
        weight: &QWeight,
        path: KernelPath,
        kernel: &dyn Int8Gemm,
    ) -> Result<Vec<i32>> {
        let oc = self.out_channels();
        let w_zp = weight.zp_per_channel(oc);
        let a_zp = input.zero_point as i32;
        match self {
            Geometry::Linear { in_features, .. } => {
                let m = input.data.len() / in_features.max(&1);
                gemm::linear_acc(
                    kernel,
                    &input.data,
                    m,
                    *in_features,
                    a_zp,
                    &weight.int_repr,
                    oc,
                    &w_zp,
                )
            }
            Geometry::Conv2d(p) => {
                let (inp, shape, wt, q) = self.paired_operands(input, weight, path, p);
                Ok(gemm::conv2d_acc_with_padding(
                    kernel,
                    &inp,
                    &shape,
                    a_zp,
                    &wt,
                    &w_zp,
                    &q,
                    path.padding_taps(),
                )?
                .0)
            }
        }
    }

    /// The conv operands as `path` pairs them: oneDNN pads each tap's channels to an even count.
    fn paired_operands(
        &self,
        input: &QTensor,
        weight: &QWeight,
        path: KernelPath,
        p: &Conv2dParams,
    ) -> (Vec<u8>, Vec<usize>, Vec<i8>, Conv2dParams) {
        if path.pairs_per_tap() {
            gemm::pad_channels_even(
                &input.data,
                &input.shape,
                input.zero_point as u8,
                &weight.int_repr,
                &weight.zp_per_channel(p.out_channels),
                p,
            )
        } else {
            (
                input.data.clone(),
                input.shape.clone(),
                weight.int_repr.clone(),
                *p,
            )
        }
    }

    /// The float op on dequantized inputs and weights, evaluated exactly with its bound.
    pub fn float_out(
        &self,
        x: &[f32],
        in_shape: &[usize],
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Vec<FloatSum>> {
        match self {
            Geometry::Linear {
                in_features,
                out_features,
            } => Ok(gemm::linear_f64(
                x,
                x.len() / in_features.max(&1),
                *in_features,
                w,
                *out_features,
                bias,
            )),
            Geometry::Conv2d(p) => Ok(gemm::conv2d_f64(x, in_shape, w, bias, p)?.0),
        }
    }

    /// The first int16-saturating pair `(k, exact pair sum)` of output element `i` in the GEMM
    /// columns `path` feeds its kernel, if any.
    pub fn first_saturation(
        &self,
        input: &QTensor,
        weight: &QWeight,
        path: KernelPath,
        i: usize,
        out_shape: &[usize],
    ) -> Option<(usize, i32)> {
        match self {
            Geometry::Linear {
                in_features: k,
                out_features: n,
            } => {
                let (row, j) = (i / n, i % n);
                gemm::first_saturating_pair(
                    input.data.get(row * k..(row + 1) * k)?,
                    weight.int_repr.get(j * k..(j + 1) * k)?,
                )
            }
            Geometry::Conv2d(p) => {
                let (oh, ow) = (out_shape[2], out_shape[3]);
                let oc = (i / (oh * ow)) % p.out_channels;
                let b = i / (p.out_channels * oh * ow);
                let pix = i % (oh * ow);
                let ocg = p.out_channels / p.groups;
                let g = oc / ocg;
                let (inp, shape, wt, q) = self.paired_operands(input, weight, path, p);
                // Padded taps skipped by the kernel hold 0 and never saturate.
                let pad = match path.padding_taps() {
                    PaddingTaps::ThroughKernel => input.zero_point as u8,
                    PaddingTaps::Exact => 0,
                };
                let a = gemm::im2col(&inp, &shape, &q, g, pad).ok()?;
                let w = gemm::weight_matrix(&wt, &q, g);
                let k = q.k();
                let r = b * oh * ow + pix;
                let jj = oc - g * ocg;
                gemm::first_saturating_pair(&a[r * k..(r + 1) * k], &w[jj * k..(jj + 1) * k])
            }
        }
    }
}

/// A quantized linear or conv2d layer with its float bias and quantized weight.
#[derive(Debug, Clone, PartialEq)]
pub struct QLayer {
    pub geometry: Geometry,
    pub bias: Option<Vec<f32>>,
    pub weight: QWeight,
    /// ReLU fused after the op.
    pub relu: bool,
    /// Memoized float evaluations (`LayerCache::default()` when building a layer).
    pub cache: LayerCache,
}

/// The reference flows' float evaluation of a layer is asked for twice per recorded value (to
/// decode PyTorch's delta-encoded floats, then to check them): the dequantized weights per flow
/// and the last few evaluations are kept. Cloning a layer starts an empty cache; the cache never
/// takes part in equality.
#[derive(Default)]
pub struct LayerCache {
    weights: std::sync::Mutex<Vec<(Flow, std::sync::Arc<Vec<f32>>)>>,
    sums: std::sync::Mutex<Vec<(SumsKey, std::sync::Arc<Vec<FloatSum>>)>>,
}

/// What a float evaluation depends on besides the layer: the flow and the whole input.
#[derive(PartialEq)]
struct SumsKey {
    flow: Flow,
    scale: u64,
    zero_point: i64,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Evaluations kept per layer (a graph case runs each layer on a few inputs per flow).
const CACHED_SUMS: usize = 4;

impl Clone for LayerCache {
    fn clone(&self) -> Self {
        LayerCache::default()
    }
}

impl PartialEq for LayerCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for LayerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerCache")
    }
}

impl QLayer {
    /// Checks the weights (shape, value count, qparams per channel) and the bias against the
    /// layer's geometry.
    pub fn check_params(&self) -> Result<()> {
        let oc = self.geometry.out_channels();
        let w = &self.weight;
        if w.shape != self.geometry.weight_shape()
            || w.int_repr.len() != w.shape.iter().product::<usize>()
        {
            return Err(Error::shape(
                "weight",
                format!(
                    "{:?} with {} values, the layer expects {:?}",
                    w.shape,
                    w.int_repr.len(),
                    self.geometry.weight_shape()
                ),
            ));
        }
        let nw = if w.per_channel { oc } else { 1 };
        if w.scales.len() != nw || w.zero_points.len() != nw {
            return Err(Error::shape(
                "weight qparams",
                format!(
                    "{} scales / {} zero points for {nw} expected",
                    w.scales.len(),
                    w.zero_points.len()
                ),
            ));
        }
        for (&s, &z) in w.scales.iter().zip(&w.zero_points) {
            validate_qparams("weight qparams", s as f64, z, -128, 127)?;
        }
        if let Some(b) = &self.bias {
            if b.len() != oc {
                return Err(Error::shape(
                    "bias",
                    format!("{} values for {oc} output channels", b.len()),
                ));
            }
        }
        Ok(())
    }

    /// The weights dequantized as `flow` dequantizes them (memoized).
    fn dequantized_weight(&self, flow: Flow) -> std::sync::Arc<Vec<f32>> {
        let mut w = self.cache.weights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, v)) = w.iter().find(|(f, _)| *f == flow) {
            return v.clone();
        }
        let v = std::sync::Arc::new(self.weight.dequantized(flow));
        w.push((flow, v.clone()));
        v
    }

    /// Every output of the float op on `input` dequantized as `flow` does, evaluated exactly
    /// enough to bound PyTorch's f32 result ([`Geometry::float_out`]; memoized).
    pub fn float_sums(&self, flow: Flow, input: &QTensor) -> Result<std::sync::Arc<Vec<FloatSum>>> {
        self.check_params()?;
        let key = SumsKey {
            flow,
            scale: input.scale.to_bits(),
            zero_point: input.zero_point,
            shape: input.shape.clone(),
            data: input.data.clone(),
        };
        {
            let sums = self.cache.sums.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, v)) = sums.iter().find(|(k, _)| *k == key) {
                return Ok(v.clone());
            }
        }
        let x: Vec<f32> = input
            .data
            .iter()
            .map(|&q| flow.dequantize(q as i64, input.scale, input.zero_point))
            .collect();
        let w = self.dequantized_weight(flow);
        let v = std::sync::Arc::new(self.geometry.float_out(
            &x,
            &input.shape,
            &w,
            self.bias.as_deref(),
        )?);
        let mut sums = self.cache.sums.lock().unwrap_or_else(|e| e.into_inner());
        if sums.len() >= CACHED_SUMS {
            sums.remove(0);
        }
        sums.push((key, v.clone()));
        Ok(v)
    }

    /// Checks the weights and bias against the layer, the input against its shape and qparams,
    /// and the output qparams; returns the output shape.
    fn validate(&self, input: &Meta<'_>, out: &OutQParams) -> Result<Vec<usize>> {
        let name = self.geometry.name();
        let out_shape = self.geometry.output_shape(input.shape)?;
        let (scale, zp) = input.qparams(name)?;
        validate_qparams("input qparams", scale, zp, 0, 255)?;
        // The zero point must be a quint8 code; it may lie outside the flow's clamp range:
        // HistogramObserver(per_tensor_symmetric, reduce_range=True) resolves 0..127 with zero
        // point 128, and the decomposed flow then clamps to 0..127 around it (docs/FINDINGS.md).
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        if !(0 <= out.quant_min && out.quant_min <= out.quant_max && out.quant_max <= 255) {
            return Err(Error::invalid(
                "output qparams",
                format!(
                    "clamp range {}..{} is not inside 0..255",
                    out.quant_min, out.quant_max
                ),
            ));
        }
        self.check_params()?;
        Ok(out_shape)
    }
}

impl QLayer {
    /// Plans and predicts the quantized output in one call (tests, generators and live runs).
    pub fn run(&self, ctx: &Ctx, input: &QTensor, out: &OutQParams) -> Result<Output> {
        let v = Value::Quantized(input.clone());
        let plan = self.plan(ctx, &[v.meta()], Some(out))?;
        plan.predict(&[&v])?
            .into_iter()
            .find(|o| o.name == "int_repr")
            .ok_or_else(|| Error::invalid("layer", "no quantized output"))
    }

    /// The reference evaluation of the float op in a reference flow, the encoding base of
    /// recorded pre-quantize floats (golden format `qparity-golden/2`): the input and weights
    /// dequantized as `flow` dequantizes them, every output the f64 sum, in order, of the exact
    /// products over `k = (kh·KW + kw)·ICg + c` (conv2d; linear: `k`), plus the bias, rounded to
    /// f32, then `max(·, +0.0)` under a fused ReLU.
    pub fn reference_float(&self, flow: Flow, input: &QTensor) -> Result<Vec<f32>> {
        Ok(self
            .float_sums(flow, input)?
            .iter()
            .map(|y| {
                let v = y.value as f32;
                // max(·, +0.0): negatives and zeros of either sign become +0.0.
                if self.relu && v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    0.0
                } else {
                    v
                }
            })
            .collect())
    }
}

impl Op for QLayer {
    fn name(&self) -> &'static str {
        self.geometry.name()
    }

    fn layer(&self) -> Option<&QLayer> {
        Some(self)
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let name = self.geometry.name();
        let input = expect_inputs(name, inputs, 1)?[0];
        let out = *expect_out(name, out)?;
        let out_shape = self.validate(&input, &out)?;
        let (in_scale, in_zp) = input.qparams(name)?;
        if !ctx.flow.is_integer() {
            return Ok(Box::new(FloatPlan {
                layer: self,
                flow: ctx.flow,
                out,
                clamp: ctx.flow.clamp(out.quant_min, out.quant_max),
                out_shape,
            }));
        }
        let path = self.geometry.path(ctx, self.weight.is_symmetric());
        let oc = self.geometry.out_channels();
        let requant = if path.uses_fbgemm_requant() {
            Requant::Fbgemm(FbgemmRequant::new(
                in_scale,
                &self.weight.scales,
                self.weight.per_channel,
                self.bias.as_deref(),
                oc,
                out.scale,
                out.zero_point as i32,
                self.relu,
            ))
        } else {
            Requant::Qnnpack(QnnpackRequant::new(
                in_scale,
                &self.weight.scales,
                self.bias.as_deref(),
                oc,
                out.scale,
                out.zero_point as i32,
                self.relu,
            ))
        };
        Ok(Box::new(IntegerPlan {
            layer: IntegerLayer {
                geometry: self.geometry,
                weight: self.weight.clone(),
                relu: self.relu,
                path,
                accumulation: self.geometry.accumulation(ctx, path),
                requant,
                input_shape: input.shape.to_vec(),
                input_zero_point: in_zp,
                out_shape,
            },
            out,
        }))
    }
}

/// A quantized linear / conv2d in `convert_fx`, planned: geometry, weights, the kernel path and
/// its accumulation model, the requantization rule. What optimized backends run.
#[derive(Debug, Clone)]
pub struct IntegerLayer {
    pub geometry: Geometry,
    pub weight: QWeight,
    pub relu: bool,
    pub path: KernelPath,
    pub accumulation: Accumulation,
    pub requant: Requant,
    pub input_shape: Vec<usize>,
    pub input_zero_point: i64,
    pub out_shape: Vec<usize>,
}

impl IntegerLayer {
    /// Zero-point-folded accumulators; the products are summed by `kernel` where it implements
    /// the plan's accumulation model, by the reference kernel otherwise.
    pub fn accumulators(&self, input: &QTensor, kernel: Option<&dyn Int8Gemm>) -> Result<Vec<i32>> {
        let reference = Reference::new(self.accumulation);
        let kernel: &dyn Int8Gemm = match kernel {
            Some(k) if k.accumulation() == self.accumulation => k,
            _ => &reference,
        };
        self.geometry
            .int_acc(input, &self.weight, self.path, kernel)
    }

    /// Requantized outputs: decided, except oneDNN elements within a few f32 roundings of a tie.
    pub fn requantize(&self, acc: &[i32]) -> Vec<Pred> {
        acc.iter()
            .enumerate()
            .map(|(i, &a)| {
                let j = self.geometry.channel_of(i, &self.out_shape);
                match &self.requant {
                    Requant::Fbgemm(rq) if self.path.requant_order_unknown() => {
                        onednn_pred(rq, a, j)
                    }
                    rq => Pred::Exact(rq.apply(a, j) as i64),
                }
            })
            .collect()
    }

    /// The predicted output, with the accumulation on `kernel` (see [`Self::accumulators`]).
    pub fn predict(&self, input: &QTensor, kernel: Option<&dyn Int8Gemm>) -> Result<Output> {
        if input.zero_point != self.input_zero_point
            || input.shape != self.input_shape
            || input.data.len() != input.shape.iter().product::<usize>()
        {
            return Err(Error::shape(
                "layer input",
                "data length, shape or zero point differ from the planned input",
            ));
        }
        let acc = self.accumulators(input, kernel)?;
        Ok(Output::new(
            "int_repr",
            self.out_shape.clone(),
            Predicted::Ints(self.requantize(&acc)),
        ))
    }
}

/// `convert_fx`: integer accumulation on the engine's kernel path, then its requantization.
#[derive(Debug)]
struct IntegerPlan {
    layer: IntegerLayer,
    out: OutQParams,
}

fn accumulation_name(a: Accumulation) -> &'static str {
    match a {
        Accumulation::Exact => "exact int32",
        Accumulation::PairSaturatingI16 => {
            "pairwise int16-saturating (vpmaddubsw on raw u8 x s8, pairs along K)"
        }
    }
}

/// The bias handling of a requantization rule, in words.
fn bias_rule(rq: &Requant, per_channel: bool) -> &'static str {
    match (rq, per_channel) {
        (Requant::Fbgemm(_), true) => {
            "float bias, added to the f32 accumulator as bterm[j] = f32(bias[j] / atws[j]) \
             (per-channel weights: division)"
        }
        (Requant::Fbgemm(_), false) => {
            "float bias, added to the f32 accumulator by one FMA: f32(f32(acc) + bias[j] · \
             f32(1.0/(double)atws)) rounded once (per-tensor weights: reciprocal multiply, \
             contracted with the add)"
        }
        (Requant::Qnnpack(_), _) => {
            "int32 bias: bq[j] = clamp(RNE(f32(bias[j] · f32(1/f32(w_s·s_x)))), int32), added \
             to the int32 accumulator"
        }
    }
}

/// The requantization of a rule, in words.
fn requant_rule(rq: &Requant, relu: bool, order_unknown: bool) -> String {
    let lo = if relu { "zp_y (fused relu)" } else { "0" };
    match rq {
        Requant::Fbgemm(_) => format!(
            "FBGEMM ReQuantizeOutput: atws = f32(f32(s_x)·w_s); mult = f32(atws / f32(s_y)); \
             q = clamp(RNE(f32((f32(acc) + bias)·mult)) + zp_y, {lo}, 255){}",
            if order_unknown {
                "; oneDNN's own operation order is not pinned down, so results within a few f32 \
                 roundings of a tie are ambiguous"
            } else {
                ""
            }
        ),
        Requant::Qnnpack(_) => format!(
            "QNNPACK fp32: req = f32(f32(w_s·s_x)·f32(1/s_y)); \
             q = clamp(RNE(f32(f32(acc + bq)·req)) + zp_y, {lo}, 255)"
        ),
    }
}

impl Plan for IntegerPlan {
    fn rule(&self) -> Rule {
        let l = &self.layer;
        Rule::default()
            .with("path", l.path.name())
            .with("accumulation", accumulation_name(l.accumulation))
            .with(
                "padded taps",
                match l.path.padding_taps() {
                    PaddingTaps::ThroughKernel => {
                        "through the kernel, holding the input zero point"
                    }
                    PaddingTaps::Exact => "outside the kernel, exactly",
                },
            )
            .with("bias", bias_rule(&l.requant, l.weight.per_channel))
            .with(
                "requant",
                requant_rule(&l.requant, l.relu, l.path.requant_order_unknown()),
            )
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let input = super::one_input("layer input", inputs)?;
        Ok(vec![self.layer.predict(input, None)?])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let input = super::one_input("layer input", inputs)?;
        let l = &self.layer;
        let acc = super::element_at("trace", &l.accumulators(input, None)?, i)?;
        let exact = l.geometry.int_acc(
            input,
            &l.weight,
            l.path,
            &Reference::new(Accumulation::Exact),
        )?[i];
        let j = l.geometry.channel_of(i, &l.out_shape);
        let mut v = vec![
            format!(
                "input scale {} zp {}; output scale {} zp {} (clamp {}..{})",
                input.scale,
                input.zero_point,
                self.out.scale,
                self.out.zero_point,
                self.out.quant_min,
                self.out.quant_max
            ),
            format!("int32 accumulator: {acc}"),
        ];
        if acc != exact {
            v.push(format!("exact accumulator would be {exact}"));
            if let Some((k, s)) =
                l.geometry
                    .first_saturation(input, &l.weight, l.path, i, &l.out_shape)
            {
                v.push(format!(
                    "pair saturation at k = {k}: pair sum {s} clamps to int16"
                ));
            }
        }
        let (bias_term, multiplier, pre) = match &l.requant {
            Requant::Fbgemm(rq) => {
                let idx = if rq.multiplier.len() == 1 { 0 } else { j };
                (
                    rq.bias_term_f64(j),
                    rq.multiplier[idx] as f64,
                    rq.pre_round(acc, j) as f64,
                )
            }
            Requant::Qnnpack(rq) => (
                rq.bias_q[j] as f64,
                rq.scale[j] as f64,
                rq.pre_round(acc, j) as f64,
            ),
        };
        v.push(format!("bias term: {bias_term:e}"));
        v.push(format!("multiplier: {multiplier:e}"));
        v.push(format!("pre-rounding value: {pre:.9}"));
        v.push(format!("rule: {}", self.rule()));
        Ok(v)
    }

    fn lowered(&self) -> Option<Lowered<'_>> {
        Some(Lowered::IntegerLayer(&self.layer))
    }
}

/// The reference flows: dequantize, f32 linear / conv with fake-quantized weights (summation
/// order unknown: evaluated exactly with a bound), optional ReLU, then the flow's quantize node.
#[derive(Debug)]
struct FloatPlan<'a> {
    layer: &'a QLayer,
    flow: Flow,
    out: OutQParams,
    clamp: (i64, i64),
    out_shape: Vec<usize>,
}

impl FloatPlan<'_> {
    fn float_out(&self, input: &QTensor) -> Result<std::sync::Arc<Vec<FloatSum>>> {
        self.layer.float_sums(self.flow, input)
    }

    fn quantize(&self, v: f32) -> Result<i64> {
        let (lo, hi) = self.clamp;
        self.flow
            .quantize(v, self.out.scale, self.out.zero_point, lo, hi)
            .map(|x| x.clamp(lo, hi))
            .ok_or_else(|| Error::invalid("float op", "NaN output"))
    }
}

impl Plan for FloatPlan<'_> {
    fn rule(&self) -> Rule {
        let (lo, hi) = self.clamp;
        Rule::default()
            .with(
                "float op",
                format!(
                    "dequantize ({}), f32 {} with dequantized weights{} in an unspecified summation \
                     order (bounded)",
                    self.flow.name(),
                    self.layer.geometry.name(),
                    if self.layer.relu { ", relu" } else { "" }
                ),
            )
            .with(
                "quantize",
                format!(
                    "{} x·inv_scale, clamp {lo}..{hi}",
                    if self.flow.keeps_quant_range() {
                        "quantized_decomposed.quantize_per_tensor: inv_scale = f32(1.0/scale);"
                    } else {
                        "torch.quantize_per_tensor: inv_scale = 1/f32(scale);"
                    }
                ),
            )
    }

    /// Two outputs: `pre_quant`, the interval every evaluation order of the f32 op can give
    /// (what the flow's quantize node receives), and `int_repr`, quantized from its ends.
    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let input = super::one_input("layer input", inputs)?;
        let ranges: Vec<(f32, f32)> = self
            .float_out(input)?
            .iter()
            .map(|y| {
                let (lo, hi) = y.f32_interval();
                if self.layer.relu {
                    (lo.max(0.0), hi.max(0.0))
                } else {
                    (lo, hi)
                }
            })
            .collect();
        let pred = ranges
            .iter()
            .map(|&(lo, hi)| Ok(Pred::from_ends(self.quantize(lo)?, self.quantize(hi)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(vec![
            Output::new(
                "pre_quant",
                self.out_shape.clone(),
                Predicted::Ranges(ranges),
            ),
            Output::new("int_repr", self.out_shape.clone(), Predicted::Ints(pred)),
        ])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let input = super::one_input("layer input", inputs)?;
        let y = super::element_at("trace", &self.float_out(input)?, i)?;
        let v = if self.layer.relu {
            y.value.max(0.0)
        } else {
            y.value
        };
        let inv = match self.flow {
            Flow::ConvertToReferenceDecomposedFx => (1.0f64 / self.out.scale) as f32,
            _ => 1.0f32 / self.out.scale as f32,
        };
        Ok(vec![
            format!(
                "input scale {} zp {}; output scale {} zp {} (clamp {}..{})",
                input.scale,
                input.zero_point,
                self.out.scale,
                self.out.zero_point,
                self.clamp.0,
                self.clamp.1
            ),
            format!("float op: {:e} ± {:e}", y.value, y.error_bound()),
            format!("multiplier: {:e}", inv as f64),
            format!("pre-rounding value: {:.9}", v * inv as f64),
            format!("rule: {}", self.rule()),
        ])
    }
}

/// oneDNN: the FBGEMM formula, with elements within a few f32 roundings of a tie ambiguous.
fn onednn_pred(rq: &FbgemmRequant, acc: i32, j: usize) -> Pred {
    let idx = if rq.multiplier.len() == 1 { 0 } else { j };
    let exact = (acc as f64 + rq.bias_term_f64(j)) * rq.multiplier[idx] as f64;
    let mag = (acc as f64).abs() * rq.multiplier[idx] as f64
        + (rq.bias_term_f64(j) * rq.multiplier[idx] as f64).abs();
    // Up to ~6 f32 roundings in any order (scales product, bias scaling, add, multiply, FMA or not)
    // at the magnitude of the terms, plus oneDNN's kernels adding the destination zero point to
    // the f32 value before converting (`jit_avx512_core_x8s8s32x_conv_kernel.cpp`, brgemm
    // post-ops): one more rounding at the magnitude of `v + zp`, which the terms' own errors
    // carry into as well.
    let zp = rq.out_zero_point as f64;
    let w = 8.0 * (f32::EPSILON as f64 / 2.0) * mag.max(1e-30)
        + 2.0 * (f32::EPSILON as f64 / 2.0) * (exact + zp).abs();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Engine, Isa};

    /// A layer without bias or ReLU, its weights per tensor with this scale and zero point.
    fn qlayer(geometry: Geometry, shape: Vec<usize>, w: Vec<i8>, scale: f32, zp: i64) -> QLayer {
        QLayer {
            geometry,
            bias: None,
            weight: QWeight {
                shape,
                int_repr: w,
                scales: vec![scale],
                zero_points: vec![zp],
                per_channel: false,
            },
            relu: false,
            cache: Default::default(),
        }
    }

    /// A stride-1, undilated conv.
    fn conv(
        channels: [usize; 2],
        kernel: [usize; 2],
        padding: [usize; 2],
        groups: usize,
    ) -> Geometry {
        Geometry::Conv2d(Conv2dParams {
            in_channels: channels[0],
            out_channels: channels[1],
            kernel_size: kernel,
            stride: [1, 1],
            padding,
            dilation: [1, 1],
            groups,
        })
    }

    fn out_q(scale: f64, zero_point: i64) -> OutQParams {
        OutQParams {
            scale,
            zero_point,
            quant_min: 0,
            quant_max: 255,
        }
    }

    fn fx_ctx(engine: Engine, isa: Isa, cpu: CpuFeatures) -> Ctx {
        Ctx {
            flow: Flow::ConvertFx,
            engine,
            isa,
            cpu,
        }
    }

    /// A 2 → 1 linear layer and a one-row input for it.
    fn small_linear() -> (QLayer, Value) {
        let geometry = Geometry::Linear {
            in_features: 2,
            out_features: 1,
        };
        let layer = qlayer(geometry, vec![1, 2], vec![3, -5], 0.5, 0);
        let input = Value::Quantized(QTensor::new(vec![1, 2], vec![7, 9], 1.0, 0));
        (layer, input)
    }

    /// The plan's trace of output `i`, one string.
    fn trace(plan: &dyn Plan, input: &Value, i: usize) -> String {
        plan.trace(&[input], 0, i).unwrap().join("\n")
    }

    /// Output `i`'s trace names its first saturating pair, 255·127 + 255·127, at `k`.
    fn saturates_at(plan: &dyn Plan, input: &Value, i: usize, k: usize) {
        let t = trace(plan, input, i);
        let want = format!("pair saturation at k = {k}: pair sum 64770 clamps to int16");
        assert!(t.contains(&want), "output {i}: {t}");
    }

    /// Outputs before `last` name no saturation; `last` saturates at `k`.
    fn saturates_only_at(plan: &dyn Plan, input: &Value, last: usize, k: usize) {
        for i in 0..last {
            let t = trace(plan, input, i);
            assert!(!t.contains("saturation"), "output {i}: {t}");
        }
        saturates_at(plan, input, last, k);
    }

    /// Verified on torch 2.15.0, engine `onednn`, AVX2 without VNNI (`ONEDNN_VERBOSE`:
    /// `jit_uni_int8:avx2`): a 2-channel 1×2 conv on a 1×2 image of 255s (zero point 200) with
    /// weights 127 gives `[68, 8, 68]` with padding (0, 1) and `[128; 3], [68, 8, 68], [128; 3]`
    /// with padding (1, 1) at output scale 300, zero point 128. In-bounds taps saturate their
    /// channel pair (2·255·127 → 32767); padded taps contribute exactly 0, where a saturated
    /// `200·127` pair would have given -18033 more (outputs 8 and 68).
    #[test]
    fn onednn_conv_accumulates_padded_taps_exactly() {
        let layer = |padding| {
            let geometry = conv([2, 1], [1, 2], padding, 1);
            qlayer(geometry, vec![1, 2, 1, 2], vec![127; 4], 1.0, 0)
        };
        let input = Value::Quantized(QTensor::new(vec![1, 2, 1, 2], vec![255; 4], 1.0, 200));
        let out = out_q(300.0, 128);
        let ctx = fx_ctx(Engine::Onednn, Isa::Avx2, CpuFeatures::AVX2);
        let run = |padding, ctx: &Ctx| {
            let l = layer(padding);
            let plan = l.plan(ctx, &[input.meta()], Some(&out)).unwrap();
            let Some(Lowered::IntegerLayer(il)) = plan.lowered() else {
                panic!("integer plan expected")
            };
            let accumulation = il.accumulation;
            let o = plan.predict(&[&input]).unwrap().remove(0);
            (accumulation, o.values)
        };
        let (acc, v) = run([0, 1], &ctx);
        assert_eq!(acc, Accumulation::PairSaturatingI16);
        assert_eq!(v, Predicted::exact([68, 8, 68]));
        let mut want = vec![128; 3];
        want.extend([68, 8, 68]);
        want.extend([128; 3]);
        assert_eq!(run([1, 1], &ctx).1, Predicted::exact(want));
        // The trace names the saturating channel pair: K runs taps outer, channels inner, so
        // output 0 (padded tap, then column 0) pairs at k = 2, output 1 (columns 0, 1) at k = 0.
        let l = layer([0, 1]);
        let plan = l.plan(&ctx, &[input.meta()], Some(&out)).unwrap();
        saturates_at(plan.as_ref(), &input, 0, 2);
        saturates_at(plan.as_ref(), &input, 1, 0);
        // The exact accumulators (what `ref:any` or VNNI would give) are 13970, 27940, 13970.
        let exact = Ctx {
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
            ..ctx
        };
        assert_eq!(run([0, 1], &exact).1, Predicted::exact([175, 221, 175]));
    }

    /// A GEMM that writes one constant, claiming the given accumulation model.
    #[derive(Debug)]
    struct Constant(Accumulation);

    impl Int8Gemm for Constant {
        fn name(&self) -> &'static str {
            "constant"
        }
        fn accumulation(&self) -> Accumulation {
            self.0
        }
        fn gemm(&self, _m: usize, _n: usize, _k: usize, _a: &[u8], _b: &[i8], c: &mut [i32]) {
            c.fill(1000);
        }
    }

    /// [`small_linear`] planned for FBGEMM on AVX-512 VNNI: its integer layer and input.
    fn on_small_linear(f: impl FnOnce(&IntegerLayer, &QTensor)) {
        let (layer, input) = small_linear();
        let ctx = fx_ctx(Engine::Fbgemm, Isa::Vnni, CpuFeatures::AVX512_VNNI);
        let plan = layer
            .plan(&ctx, &[input.meta()], Some(&out_q(1.0, 0)))
            .unwrap();
        let Some(Lowered::IntegerLayer(il)) = plan.lowered() else {
            panic!("integer plan expected")
        };
        let Value::Quantized(x) = &input else {
            panic!("quantized input expected")
        };
        f(il, x);
    }

    #[test]
    fn accumulators_run_on_a_kernel_only_of_the_plans_accumulation() {
        on_small_linear(|il, x| {
            assert_eq!(il.accumulation, Accumulation::Exact);
            // 7·3 + 9·(−5) on the reference kernel.
            assert_eq!(il.accumulators(x, None).unwrap(), [-24]);
            let same = Constant(Accumulation::Exact);
            assert_eq!(il.accumulators(x, Some(&same)).unwrap(), [1000]);
            let other = Constant(Accumulation::PairSaturatingI16);
            assert_eq!(il.accumulators(x, Some(&other)).unwrap(), [-24]);
        });
    }

    #[test]
    fn predict_rejects_an_input_unlike_the_planned_one() {
        on_small_linear(|il, x| {
            assert!(il.predict(x, None).is_ok());
            let other_zp = QTensor {
                zero_point: 1,
                ..x.clone()
            };
            let other_shape = QTensor {
                shape: vec![2, 1],
                ..x.clone()
            };
            let short = QTensor {
                data: vec![7],
                ..x.clone()
            };
            for bad in [other_zp, other_shape, short] {
                let e = il.predict(&bad, None).unwrap_err().to_string();
                assert!(e.contains("differ from the planned input"), "{e}");
            }
        });
    }

    #[test]
    fn the_rule_names_each_requantization_and_the_relu_clamp() {
        let (layer, input) = small_linear();
        let requant = |engine, isa, cpu, relu| {
            let l = QLayer {
                relu,
                ..layer.clone()
            };
            let plan = l
                .plan(
                    &fx_ctx(engine, isa, cpu),
                    &[input.meta()],
                    Some(&out_q(1.0, 0)),
                )
                .unwrap();
            plan.rule().get("requant").unwrap().to_string()
        };
        let vnni = (Isa::Vnni, CpuFeatures::AVX512_VNNI);
        let fbgemm = requant(Engine::Fbgemm, vnni.0, vnni.1, false);
        assert!(fbgemm.starts_with("FBGEMM ReQuantizeOutput: "), "{fbgemm}");
        assert!(fbgemm.contains("+ zp_y, 0, 255)") && !fbgemm.contains("oneDNN"));
        let relu = requant(Engine::Fbgemm, vnni.0, vnni.1, true);
        assert!(relu.contains("+ zp_y, zp_y (fused relu), 255)"), "{relu}");
        let qnnpack = requant(Engine::Qnnpack, vnni.0, vnni.1, false);
        assert!(qnnpack.starts_with("QNNPACK fp32: req = "), "{qnnpack}");
        let onednn = requant(Engine::Onednn, vnni.0, vnni.1, false);
        assert!(onednn.contains("oneDNN's own operation order is not pinned down"));
    }

    #[test]
    fn reference_flow_traces_show_each_flows_output_reciprocal() {
        // At scale 0.03 the two reciprocals differ: f32(1/0.03) = 33.333332,
        // 1/f32(0.03) = 33.333336.
        let (layer, input) = small_linear();
        let multiplier = |flow| {
            let ctx = Ctx {
                flow,
                engine: Engine::Fbgemm,
                isa: Isa::Vnni,
                cpu: CpuFeatures::AVX512_VNNI,
            };
            let plan = layer
                .plan(&ctx, &[input.meta()], Some(&out_q(0.03, 10)))
                .unwrap();
            let t = trace(plan.as_ref(), &input, 0);
            let line = t.lines().find(|l| l.starts_with("multiplier: ")).unwrap();
            line.to_string()
        };
        let double = (1.0f64 / 0.03) as f32;
        let single = 1.0f32 / 0.03f32;
        assert_ne!(double, single);
        assert_eq!(
            multiplier(Flow::ConvertToReferenceDecomposedFx),
            format!("multiplier: {:e}", double as f64)
        );
        assert_eq!(
            multiplier(Flow::ConvertToReferenceFx),
            format!("multiplier: {:e}", single as f64)
        );
    }

    #[test]
    fn onednn_window_counts_the_bias_terms_magnitude() {
        // Accumulator 0, bias 100.49996, multiplier 1: the terms' magnitude is the bias's, so the
        // window is 8·(ε/2)·100.5 + 2·(ε/2)·100.5 ≈ 6.0e-5 wide on each side and reaches the tie
        // 3.8e-5 away; without the bias's magnitude it would be 1.2e-5 and miss it.
        let rq = FbgemmRequant {
            act_times_w_scale: vec![1.0],
            multiplier: vec![1.0],
            bias_term: vec![100.49996],
            bias_scale: None,
            out_zero_point: 0,
            relu: false,
        };
        assert_eq!(onednn_pred(&rq, 0, 0), Pred::Ambiguous { lo: 100, hi: 101 });
        // Far from the tie the same bias is decided.
        let far = FbgemmRequant {
            bias_term: vec![100.4],
            ..rq
        };
        assert_eq!(onednn_pred(&far, 0, 0), Pred::Exact(100));
        // Accumulator 1000 at multiplier 0.1 (bias 4.998): the terms' magnitude is ~100, the
        // window ~6e-5, and the tie 2e-4 away is out of reach; had the accumulator counted
        // unscaled (~1000) the window would be ~5e-4 and reach it.
        let scaled = FbgemmRequant {
            multiplier: vec![0.1],
            bias_term: vec![4.998],
            ..far
        };
        assert_eq!(onednn_pred(&scaled, 1000, 0), Pred::Exact(100));
        // Bias 100499.8 at multiplier 0.001: the bias term counts scaled (~100.5), so the tie
        // 2e-4 away is again out of reach.
        let large_bias = FbgemmRequant {
            multiplier: vec![0.001],
            bias_term: vec![100_499.8],
            ..scaled
        };
        assert_eq!(onednn_pred(&large_bias, 0, 0), Pred::Exact(100));
    }

    #[test]
    fn x86_convs_take_onednn_only_with_symmetric_weights() {
        let input = Value::Quantized(QTensor::new(vec![1, 2, 1, 1], vec![7, 9], 1.0, 0));
        let ctx = fx_ctx(Engine::X86, Isa::Vnni, CpuFeatures::AVX512_VNNI);
        let path = |zp| {
            let l = qlayer(
                conv([2, 1], [1, 1], [0, 0], 1),
                vec![1, 2, 1, 1],
                vec![3, -5],
                0.5,
                zp,
            );
            let plan = l.plan(&ctx, &[input.meta()], Some(&out_q(1.0, 0))).unwrap();
            let Some(Lowered::IntegerLayer(il)) = plan.lowered() else {
                panic!("integer plan expected")
            };
            il.path
        };
        assert_eq!(path(0), KernelPath::Onednn);
        assert_eq!(path(1), KernelPath::FbgemmGemm);
    }

    #[test]
    fn linear_trace_names_the_first_saturating_pair() {
        // FBGEMM's AVX2 GEMM sums u8·i8 pairs in int16. Row 2 against weight row 1:
        // 255·127 + 255·127 = 64770 saturates at k = 2; the exact accumulator is 2 + 64770.
        // No other output saturates.
        let geometry = Geometry::Linear {
            in_features: 4,
            out_features: 2,
        };
        let w = vec![127, 127, 1, 1, 1, 1, 127, 127];
        let layer = qlayer(geometry, vec![2, 4], w, 1.0, 0);
        let mut codes = vec![1; 8];
        codes.extend([1, 1, 255, 255]);
        let input = Value::Quantized(QTensor::new(vec![3, 4], codes, 1.0, 0));
        let ctx = fx_ctx(Engine::Fbgemm, Isa::Avx2, CpuFeatures::AVX2);
        let plan = layer
            .plan(&ctx, &[input.meta()], Some(&out_q(1000.0, 0)))
            .unwrap();
        saturates_only_at(plan.as_ref(), &input, 5, 2);
        let t = trace(plan.as_ref(), &input, 5);
        assert!(t.contains("int32 accumulator: 32769"), "{t}");
        assert!(t.contains("exact accumulator would be 64772"), "{t}");
    }

    #[test]
    fn grouped_conv_trace_finds_the_saturating_image_channel_and_pixel() {
        // 8 input channels in 2 groups of 4, 4 output channels (2 per group), 1×1 kernel, two
        // 2×2 images of 1s but for channels 6, 7 of image 1's pixel 3 (255). Only output channel
        // 3 (group 1, weights 1, 1, 127, 127) saturates there: 255·127 + 255·127 at k = 2.
        let mut w = vec![1i8; 16];
        w[14] = 127;
        w[15] = 127;
        let layer = qlayer(conv([8, 4], [1, 1], [0, 0], 2), vec![4, 4, 1, 1], w, 1.0, 0);
        let mut codes = vec![1u8; 2 * 8 * 4];
        for c in [6, 7] {
            codes[(8 + c) * 4 + 3] = 255;
        }
        let input = Value::Quantized(QTensor::new(vec![2, 8, 2, 2], codes, 1.0, 0));
        let ctx = fx_ctx(Engine::Fbgemm, Isa::Avx2, CpuFeatures::AVX2);
        let plan = layer
            .plan(&ctx, &[input.meta()], Some(&out_q(1000.0, 0)))
            .unwrap();
        // Output (image 1, channel 3, pixel 3) is element (1·4 + 3)·4 + 3 = 31.
        saturates_only_at(plan.as_ref(), &input, 31, 2);
    }

    #[test]
    fn the_cache_never_takes_part_in_equality() {
        let (layer, input) = small_linear();
        let fresh = layer.clone();
        layer
            .float_sums(Flow::ConvertToReferenceFx, input.quantized("x").unwrap())
            .unwrap();
        assert_eq!(layer, fresh);
        assert_eq!(layer, layer.clone());
    }

    #[test]
    fn the_clamp_range_must_lie_in_0_to_255() {
        let (layer, input) = small_linear();
        let ctx = fx_ctx(Engine::Fbgemm, Isa::Avx2, CpuFeatures::AVX2);
        let plan = |quant_min, quant_max| {
            let out = OutQParams {
                quant_min,
                quant_max,
                ..out_q(1.0, 0)
            };
            layer.plan(&ctx, &[input.meta()], Some(&out)).map(|_| ())
        };
        assert!(plan(0, 255).is_ok() && plan(0, 127).is_ok() && plan(5, 5).is_ok());
        for (lo, hi) in [(-1, 255), (0, 256), (9, 8), (-1, 256)] {
            let e = plan(lo, hi).unwrap_err().to_string();
            assert!(e.contains(&format!("clamp range {lo}..{hi}")), "{e}");
        }
    }

    #[test]
    fn malformed_weights_are_errors() {
        let (good, input) = small_linear();
        let ctx = fx_ctx(Engine::Fbgemm, Isa::Avx2, CpuFeatures::AVX2);
        let plan = |l: QLayer| {
            let e = l.plan(&ctx, &[input.meta()], Some(&out_q(1.0, 0))).err();
            e.map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(plan(good.clone()), "");
        let mut l = good.clone();
        l.weight.shape = vec![2, 1];
        assert!(plan(l).contains("the layer expects [1, 2]"));
        let mut l = good.clone();
        l.weight.int_repr.push(1);
        assert!(plan(l).contains("[1, 2] with 3 values"));
        let mut l = good.clone();
        l.weight.scales.push(0.5);
        assert!(plan(l).contains("2 scales / 1 zero points for 1 expected"));
        let mut l = good;
        l.weight.zero_points.push(0);
        assert!(plan(l).contains("1 scales / 2 zero points for 1 expected"));
    }
}
