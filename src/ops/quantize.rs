//! Quantize and dequantize: the primitive functions (`torch.quantize_per_tensor` /
//! `quantize_per_channel` / `dequantize`, `torch.ops.quantized_decomposed.*`) and the q/dq nodes
//! the convert flows put between ops (the model input's quantize, a re-quantize after a shape op,
//! the final dequantize).
//!
//! The arithmetic is [`crate::numerics::quantize`]; this module plans which formula applies.

use super::Value;
use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Predicted, Rule};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::{validate_qparams, QDType};
use crate::numerics::quantize::{aten, decomposed};
use crate::{Error, Result};

/// The functions of a quantize / dequantize primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `torch.quantize_per_tensor` / `quantize_per_channel` / `Tensor.dequantize` (FBGEMM on x86).
    Aten,
    /// `torch.ops.quantized_decomposed.*` (`torch/ao/quantization/fx/_decomposed.py`).
    Decomposed,
}

/// Scales and zero points of a quantize / dequantize primitive.
#[derive(Debug, Clone, PartialEq)]
pub enum QParams {
    PerTensor {
        scale: f64,
        zero_point: i64,
    },
    PerChannel {
        scales: Vec<f64>,
        /// The scales tensor PyTorch got was f32 (else f64): decides the decomposed arithmetic.
        scales_f32: bool,
        zero_points: Vec<i64>,
        axis: usize,
    },
}

impl QParams {
    /// Checks the qparams against a tensor shape and a zero-point range; returns a function
    /// giving each flat element's `(scale, zero_point, channel)`.
    fn resolve(&self, shape: &[usize], lo: i64, hi: i64) -> Result<ChannelOf> {
        match self {
            QParams::PerTensor { scale, zero_point } => {
                validate_qparams("qparams", *scale, *zero_point, lo, hi)?;
                Ok(ChannelOf {
                    inner: 1,
                    channels: 1,
                })
            }
            QParams::PerChannel {
                scales,
                zero_points,
                axis,
                ..
            } => {
                let channels = *shape.get(*axis).ok_or_else(|| {
                    Error::invalid("axis", format!("axis {axis} outside shape {shape:?}"))
                })?;
                if scales.len() != channels || zero_points.len() != channels {
                    return Err(Error::shape(
                        "per-channel qparams",
                        format!(
                            "{} scales / {} zero points for {channels} channels",
                            scales.len(),
                            zero_points.len()
                        ),
                    ));
                }
                for (&s, &z) in scales.iter().zip(zero_points) {
                    validate_qparams("qparams", s, z, lo, hi)?;
                }
                Ok(ChannelOf {
                    inner: shape[axis + 1..].iter().product(),
                    channels: channels.max(1),
                })
            }
        }
    }

    fn at(&self, c: usize) -> (f64, i64) {
        match self {
            QParams::PerTensor { scale, zero_point } => (*scale, *zero_point),
            QParams::PerChannel {
                scales,
                zero_points,
                ..
            } => (scales[c], zero_points[c]),
        }
    }

    fn scales_f32(&self) -> bool {
        matches!(
            self,
            QParams::PerChannel {
                scales_f32: true,
                ..
            }
        )
    }
}

/// Channel of a flat element for a per-channel axis.
#[derive(Debug, Clone, Copy)]
struct ChannelOf {
    inner: usize,
    channels: usize,
}

impl ChannelOf {
    fn of(&self, i: usize) -> usize {
        (i / self.inner.max(1)) % self.channels
    }
}

/// A quantize primitive: f32 in, integers out.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantize {
    pub family: Family,
    pub qparams: QParams,
    /// The target dtype (aten: decides the clamp range and the qint32 scalar path).
    pub dtype: QDType,
    /// The decomposed ops' `quant_min` / `quant_max`.
    pub range: Option<(i64, i64)>,
}

impl Op for Quantize {
    fn name(&self) -> &'static str {
        match (self.family, &self.qparams) {
            (Family::Aten, QParams::PerTensor { .. }) => "quantize_per_tensor",
            (Family::Aten, QParams::PerChannel { .. }) => "quantize_per_channel",
            (Family::Decomposed, QParams::PerTensor { .. }) => "decomposed_quantize_per_tensor",
            (Family::Decomposed, QParams::PerChannel { .. }) => "decomposed_quantize_per_channel",
        }
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs(self.name(), inputs, 1)?[0];
        let (zlo, zhi) = match self.family {
            Family::Aten => self.dtype.full_range(),
            Family::Decomposed => (i64::MIN, i64::MAX),
        };
        let channel = self.qparams.resolve(input.shape, zlo, zhi)?;
        let range = match self.family {
            Family::Aten => self.dtype.full_range(),
            Family::Decomposed => self
                .range
                .ok_or_else(|| Error::invalid(self.name(), "needs quant_min / quant_max"))?,
        };
        Ok(Box::new(QuantizePlan {
            op: self,
            channel,
            range,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct QuantizePlan<'a> {
    op: &'a Quantize,
    channel: ChannelOf,
    range: (i64, i64),
    shape: Vec<usize>,
}

impl QuantizePlan<'_> {
    fn quantize(&self, i: usize, x: f32) -> Option<i64> {
        let (lo, hi) = self.range;
        let (s, zp) = self.op.qparams.at(self.channel.of(i));
        match (self.op.family, &self.op.qparams) {
            (Family::Aten, QParams::PerTensor { .. }) if !self.op.dtype.is_32() => {
                Some(aten::quantize_avx2(x, aten::inv32(s), zp as i32, lo as i32, hi as i32) as i64)
            }
            (Family::Aten, _) => aten::quantize_scalar(x, s as f32, zp as i32, lo, hi),
            (Family::Decomposed, QParams::PerTensor { .. }) => {
                decomposed::quantize(x, s, zp, lo, hi)
            }
            (Family::Decomposed, _) if self.op.qparams.scales_f32() => {
                decomposed::quantize_f32_scale(x, s as f32, zp, lo, hi)
            }
            (Family::Decomposed, _) => decomposed::quantize_f64_scale(x, s, zp, lo, hi),
        }
    }
}

impl Plan for QuantizePlan<'_> {
    fn rule(&self) -> Rule {
        let (lo, hi) = self.range;
        let r = match (self.op.family, &self.op.qparams) {
            (Family::Aten, QParams::PerTensor { .. }) if !self.op.dtype.is_32() => {
                "FBGEMM QuantizeAvx2: v = min(f32(x·f32(1/f32(scale))), 2^31−128); RNE; wrapping + zp"
            }
            (Family::Aten, _) => "FBGEMM scalar Quantize<T>: zp + nearbyint(f32(x·f32(1/f32(scale))))",
            (Family::Decomposed, QParams::PerTensor { .. }) => {
                "quantized_decomposed: RNE(f32(x·f32(1.0/scale))) + zp (reciprocal in double)"
            }
            (Family::Decomposed, _) if self.op.qparams.scales_f32() => {
                "quantized_decomposed per channel, f32 scales: RNE(f32(x·f32(1/scale))) + zp"
            }
            (Family::Decomposed, _) => {
                "quantized_decomposed per channel, f64 scales: RNE(x·(1/scale)) + zp in double"
            }
        };
        Rule::default()
            .with("quantize", r)
            .with("clamp", format!("{lo}..{hi}"))
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let xs = inputs[0].f32s("input")?;
        let name = match self.op.family {
            Family::Aten => "int_repr",
            Family::Decomposed => "output",
        };
        Ok(vec![Output::new(
            name,
            self.shape.clone(),
            Predicted::from_options(xs.iter().enumerate().map(|(i, &x)| self.quantize(i, x))),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let xs = inputs[0].f32s("input")?;
        let (s, zp) = self.op.qparams.at(self.channel.of(i));
        Ok(vec![
            format!("x = {:e}, scale {s}, zero_point {zp}", xs[i]),
            format!("rule: {}", self.rule()),
        ])
    }
}

/// A dequantize primitive: integers in, f32 out.
#[derive(Debug, Clone, PartialEq)]
pub struct Dequantize {
    pub family: Family,
    pub qparams: QParams,
}

impl Op for Dequantize {
    fn name(&self) -> &'static str {
        match (self.family, &self.qparams) {
            (Family::Aten, QParams::PerTensor { .. }) => "dequantize_per_tensor",
            (Family::Aten, QParams::PerChannel { .. }) => "dequantize_per_channel",
            (Family::Decomposed, QParams::PerTensor { .. }) => "decomposed_dequantize_per_tensor",
            (Family::Decomposed, QParams::PerChannel { .. }) => "decomposed_dequantize_per_channel",
        }
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs(self.name(), inputs, 1)?[0];
        let channel = self.qparams.resolve(input.shape, i64::MIN, i64::MAX)?;
        Ok(Box::new(DequantizePlan {
            op: self,
            channel,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct DequantizePlan<'a> {
    op: &'a Dequantize,
    channel: ChannelOf,
    shape: Vec<usize>,
}

impl Plan for DequantizePlan<'_> {
    fn rule(&self) -> Rule {
        let r = match (self.op.family, &self.op.qparams) {
            (Family::Aten, QParams::PerTensor { .. }) => {
                "FBGEMM Dequantize: f32(f32(q − zp)·f32(scale))"
            }
            (Family::Aten, _) => "ATen per channel: f32(f64(f32(q) − zp)·scale)",
            (Family::Decomposed, QParams::PerTensor { .. }) => {
                "quantized_decomposed: f32(f32(q − zp)·f32(scale))"
            }
            (Family::Decomposed, _) if self.op.qparams.scales_f32() => {
                "quantized_decomposed per channel, f32 scales: f32((q − zp)·scale)"
            }
            (Family::Decomposed, _) => {
                "quantized_decomposed per channel, f64 scales: f32((q − zp)·scale in double)"
            }
        };
        Rule::default().with("dequantize", r)
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let qs = inputs[0].ints("input")?;
        let out = qs
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let (s, zp) = self.op.qparams.at(self.channel.of(i));
                match (self.op.family, &self.op.qparams) {
                    (Family::Aten, QParams::PerTensor { .. }) => aten::dequantize(q, s, zp),
                    (Family::Aten, _) => aten::dequantize_per_channel(q, s, zp),
                    (Family::Decomposed, QParams::PerTensor { .. }) => {
                        decomposed::dequantize(q, s, zp)
                    }
                    (Family::Decomposed, _) if self.op.qparams.scales_f32() => {
                        decomposed::dequantize_f32_scale(q, s as f32, zp)
                    }
                    (Family::Decomposed, _) => decomposed::dequantize_f64_scale(q, s, zp),
                }
            })
            .collect();
        Ok(vec![Output::new(
            "output",
            self.shape.clone(),
            Predicted::Floats(out),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let qs = inputs[0].ints("input")?;
        Ok(vec![
            format!("q = {}", qs[i]),
            format!("rule: {}", self.rule()),
        ])
    }
}

/// The quantize node a convert flow puts on a float activation (the model input):
/// `torch.quantize_per_tensor` (clamp 0..255) or the decomposed op (clamp to the observer's
/// range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowQuantize;

impl Op for FlowQuantize {
    fn name(&self) -> &'static str {
        "quantize"
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs(self.name(), inputs, 1)?[0];
        let out = *expect_out(self.name(), out)?;
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        Ok(Box::new(FlowQuantizePlan {
            flow: ctx.flow,
            out,
            clamp: ctx.flow.clamp(out.quant_min, out.quant_max),
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct FlowQuantizePlan {
    flow: Flow,
    out: OutQParams,
    clamp: (i64, i64),
    shape: Vec<usize>,
}

fn flow_quantize_rule(flow: Flow, (lo, hi): (i64, i64)) -> String {
    format!(
        "{}, clamp {lo}..{hi}",
        if flow.keeps_quant_range() {
            "quantized_decomposed.quantize_per_tensor: RNE(f32(x·f32(1.0/scale))) + zp"
        } else {
            "torch.quantize_per_tensor (FBGEMM QuantizeAvx2): RNE(f32(x·f32(1/f32(scale)))) + zp"
        }
    )
}

impl Plan for FlowQuantizePlan {
    fn rule(&self) -> Rule {
        Rule::default().with("quantize", flow_quantize_rule(self.flow, self.clamp))
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let xs = inputs[0].f32s("input")?;
        let (lo, hi) = self.clamp;
        Ok(vec![Output::new(
            "int_repr",
            self.shape.clone(),
            Predicted::Ints(
                xs.iter()
                    .map(|&v| {
                        self.flow
                            .quantize(v, self.out.scale, self.out.zero_point, lo, hi)
                            .map(crate::numerics::bound::Pred::Exact)
                            .unwrap_or(crate::numerics::bound::Pred::Ambiguous { lo: 0, hi: 255 })
                    })
                    .collect(),
            ),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let xs = inputs[0].f32s("input")?;
        Ok(vec![
            format!(
                "x = {:e}, scale {}, zero_point {}",
                xs[i], self.out.scale, self.out.zero_point
            ),
            format!("rule: {}", self.rule()),
        ])
    }
    fn lowered(&self) -> Option<super::Lowered<'_>> {
        self.flow
            .is_integer()
            .then_some(super::Lowered::Quantize(self))
    }
}

impl super::QuantizeOp for FlowQuantizePlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn quantize(&self, x: f32) -> Option<i64> {
        let (lo, hi) = self.clamp;
        self.flow
            .quantize(x, self.out.scale, self.out.zero_point, lo, hi)
    }

    fn avx2_rule(&self) -> Option<(f32, i32)> {
        // `Flow::quantize` outside the decomposed flow.
        (self.flow != Flow::ConvertToReferenceDecomposedFx)
            .then(|| (aten::inv32(self.out.scale), self.out.zero_point as i32))
    }

    fn quantize_all(&self, x: &[f32], out: &mut [u8]) -> bool {
        if x.len() != out.len() {
            return false;
        }
        let (lo, hi) = self.clamp;
        let (s, z) = (self.out.scale, self.out.zero_point);
        let mut ok = true;
        for (o, &v) in out.iter_mut().zip(x) {
            let c = self.flow.quantize(v, s, z, lo, hi).unwrap_or(-1);
            ok &= (0..=255).contains(&c);
            *o = c as u8;
        }
        ok
    }
}

/// The dequantize node at the end of a converted graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowDequantize;

impl Op for FlowDequantize {
    fn name(&self) -> &'static str {
        "dequantize"
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs(self.name(), inputs, 1)?[0];
        let (scale, zero_point) = input.qparams(self.name())?;
        validate_qparams("input qparams", scale, zero_point, 0, 255)?;
        Ok(Box::new(FlowDequantizePlan {
            flow: ctx.flow,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct FlowDequantizePlan {
    flow: Flow,
    shape: Vec<usize>,
}

impl Plan for FlowDequantizePlan {
    fn rule(&self) -> Rule {
        Rule::default().with(
            "dequantize",
            if self.flow.keeps_quant_range() {
                "quantized_decomposed.dequantize_per_tensor: f32(f32(q − zp)·f32(scale))"
            } else {
                "Tensor.dequantize (FBGEMM Dequantize): f32(f32(q − zp)·f32(scale))"
            },
        )
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q = inputs[0].quantized("input")?;
        Ok(vec![Output::new(
            "output",
            self.shape.clone(),
            Predicted::Floats(
                q.data
                    .iter()
                    .map(|&v| self.flow.dequantize(v as i64, q.scale, q.zero_point))
                    .collect(),
            ),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = inputs[0].quantized("input")?;
        Ok(vec![format!("q = {}", q.data[i])])
    }

    fn lowered(&self) -> Option<super::Lowered<'_>> {
        Some(super::Lowered::Dequantize(self))
    }
}

impl super::DequantizeOp for FlowDequantizePlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn dequantize(&self, q: u8, scale: f64, zero_point: i64) -> f32 {
        self.flow.dequantize(q as i64, scale, zero_point)
    }
}
