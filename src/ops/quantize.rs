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

/// Checks that an input holds the planned shape's element count.
fn check_len(what: &str, len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if len == n {
        Ok(())
    } else {
        Err(Error::shape(
            what,
            format!("{len} values for the planned shape {shape:?}"),
        ))
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
    /// The code of element i. The per-element kernels leave NaN undefined (`None`); the op gives
    /// it [`QDType::x86_nan_code`], what PyTorch's conversion stores on x86.
    fn quantize(&self, i: usize, x: f32) -> Option<i64> {
        let (lo, hi) = self.range;
        let (s, zp) = self.op.qparams.at(self.channel.of(i));
        let q = match (self.op.family, &self.op.qparams) {
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
        };
        q.or_else(|| x.is_nan().then(|| self.op.dtype.x86_nan_code()))
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
            .with(
                "NaN",
                format!(
                    "{} where the kernel gives none",
                    self.op.dtype.x86_nan_code()
                ),
            )
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let xs = inputs[0].f32s("input")?;
        check_len(self.op.name(), xs.len(), &self.shape)?;
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
        let x = super::element_at(self.op.name(), inputs[0].f32s("input")?, i)?;
        let (s, zp) = self.op.qparams.at(self.channel.of(i));
        Ok(vec![
            format!("x = {x:e}, scale {s}, zero_point {zp}"),
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
        check_len(self.op.name(), qs.len(), &self.shape)?;
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
        let q = super::element_at(self.op.name(), &inputs[0].ints("input")?, i)?;
        Ok(vec![format!("q = {q}"), format!("rule: {}", self.rule())])
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
        check_len("quantize", xs.len(), &self.shape)?;
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
        let x = super::element_at("quantize", inputs[0].f32s("input")?, i)?;
        Ok(vec![
            format!(
                "x = {x:e}, scale {}, zero_point {}",
                self.out.scale, self.out.zero_point
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
        check_len("dequantize", q.data.len(), &self.shape)?;
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
        let code = super::element_at("dequantize", &q.data, i)?;
        Ok(vec![
            format!("q = {code}, scale {}, zero_point {}", q.scale, q.zero_point),
            format!("rule: {}", self.rule()),
        ])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::bound::Pred;
    use crate::ops::QTensor;
    use crate::tensor::{DType, Tensor};

    fn ctx(flow: Flow) -> Ctx {
        crate::ops::pool::test_ctx(flow, crate::engine::Engine::Fbgemm)
    }

    fn run(op: &dyn Op, flow: Flow, v: &Value, out: Option<&OutQParams>) -> Result<Vec<Output>> {
        op.plan(&ctx(flow), &[v.meta()], out)?.predict(&[v])
    }

    fn ints(o: &Output) -> Vec<i64> {
        o.ints().unwrap().iter().map(|p| p.value()).collect()
    }

    /// Per-channel qparams along axis 1 of [2, 3, 2]: element i is in channel (i / 2) % 3.
    fn per_channel(scales_f32: bool) -> QParams {
        QParams::PerChannel {
            scales: vec![1.0, 2.0, 4.0],
            scales_f32,
            zero_points: vec![0, 1, 2],
            axis: 1,
        }
    }

    #[test]
    fn per_channel_quantize_takes_each_elements_channel() {
        let x = Value::Tensor(Tensor::f32(
            vec![2, 3, 2],
            (0..12).map(|i| i as f32).collect(),
        ));
        let want: Vec<i64> = (0..12)
            .map(|i| {
                let c = (i / 2) % 3;
                [0, 1, 2][c] + (i as f32 / [1.0, 2.0, 4.0][c]).round_ties_even() as i64
            })
            .collect();
        let ops = [
            (Family::Aten, per_channel(false), "int_repr"),
            (Family::Decomposed, per_channel(true), "output"),
            (Family::Decomposed, per_channel(false), "output"),
        ];
        for (family, qparams, name) in ops {
            let op = Quantize {
                family,
                qparams,
                dtype: QDType::Quint8,
                range: Some((0, 255)),
            };
            let o = run(&op, Flow::ConvertFx, &x, None).unwrap().remove(0);
            assert_eq!((o.name.as_str(), &o.shape[..]), (name, &[2, 3, 2][..]));
            assert_eq!(ints(&o), want, "{}", op.name());
        }
    }

    #[test]
    fn per_channel_dequantize_takes_each_elements_channel() {
        let q = Value::Tensor(Tensor::int(DType::U8, vec![2, 3, 2], vec![10; 12]));
        let want: Vec<f32> = (0..12)
            .map(|i| {
                let c = (i / 2) % 3;
                (10 - [0, 1, 2][c]) as f32 * [1.0, 2.0, 4.0][c]
            })
            .collect();
        for (family, qparams) in [
            (Family::Aten, per_channel(false)),
            (Family::Decomposed, per_channel(true)),
            (Family::Decomposed, per_channel(false)),
        ] {
            let op = Dequantize { family, qparams };
            let o = run(&op, Flow::ConvertFx, &q, None).unwrap().remove(0);
            assert_eq!(o.values, Predicted::Floats(want.clone()), "{}", op.name());
        }
    }

    #[test]
    fn the_aten_dtype_sets_the_clamp_and_the_path() {
        // 3e9: qint32 takes the scalar path (clamped in double to i32::MAX), the 8-bit dtypes
        // QuantizeAvx2 (capped at 2^31 − 128 before the zero point, then clamped).
        let x = Value::Tensor(Tensor::f32(vec![4], vec![-200.0, 3.5, 200.0, 3e9]));
        let pt = |dtype| Quantize {
            family: Family::Aten,
            qparams: QParams::PerTensor {
                scale: 1.0,
                zero_point: 0,
            },
            dtype,
            range: None,
        };
        for (dtype, want) in [
            (QDType::Quint8, [0, 4, 200, 255]),
            (QDType::Qint8, [-128, 4, 127, 127]),
            (QDType::Qint32, [-200, 4, 200, i32::MAX as i64]),
        ] {
            let o = run(&pt(dtype), Flow::ConvertFx, &x, None).unwrap();
            assert_eq!(ints(&o[0]), want, "{dtype:?}");
        }
        // The zero point must lie in the dtype's range.
        let op = Quantize {
            qparams: QParams::PerTensor {
                scale: 1.0,
                zero_point: 128,
            },
            ..pt(QDType::Qint8)
        };
        assert!(run(&op, Flow::ConvertFx, &x, None).is_err());
        assert!(run(
            &Quantize {
                dtype: QDType::Quint8,
                ..op
            },
            Flow::ConvertFx,
            &x,
            None
        )
        .is_ok());
    }

    #[test]
    fn per_channel_scales_keep_their_precision() {
        // x = f32(1.35), scale 0.3: x · (1/0.3) in double is 4.5000000794… → 5; with the f32
        // reciprocal of f32(0.3) the f32 product is below 4.5 → 4.
        let x = Value::Tensor(Tensor::f32(vec![1], vec![1.35]));
        let pc = |scales_f32| QParams::PerChannel {
            scales: vec![0.3],
            scales_f32,
            zero_points: vec![0],
            axis: 0,
        };
        for (family, scales_f32, want) in [
            (Family::Decomposed, false, 5),
            (Family::Decomposed, true, 4),
            (Family::Aten, false, 4),
        ] {
            let op = Quantize {
                family,
                qparams: pc(scales_f32),
                dtype: QDType::Quint8,
                range: Some((0, 255)),
            };
            let o = run(&op, Flow::ConvertFx, &x, None).unwrap();
            assert_eq!(ints(&o[0]), [want], "{} f32 scales {scales_f32}", op.name());
        }
    }

    #[test]
    fn per_channel_dequantize_scales_keep_their_precision() {
        // q = 3, scale 0.3: f32(3 · f32(0.3)) = 0.90000004, f32(3 · 0.3 in double) = 0.9.
        let q = Value::Tensor(Tensor::int(DType::U8, vec![1], vec![3]));
        let pc = |scales_f32| QParams::PerChannel {
            scales: vec![0.3],
            scales_f32,
            zero_points: vec![0],
            axis: 0,
        };
        let (low, high) = (0.9f32, 3.0f32 * 0.3f32);
        assert!(low < high);
        for (family, scales_f32, want) in [
            (Family::Decomposed, false, low),
            (Family::Decomposed, true, high),
            (Family::Aten, false, low),
        ] {
            let op = Dequantize {
                family,
                qparams: pc(scales_f32),
            };
            let o = run(&op, Flow::ConvertFx, &q, None).unwrap().remove(0);
            assert_eq!(o.values, Predicted::Floats(vec![want]), "{}", op.name());
        }
    }

    #[test]
    fn bad_qparams_and_inputs_are_errors() {
        let x = Value::Tensor(Tensor::f32(vec![2, 3, 2], vec![0.0; 12]));
        let q = |qparams, range| Quantize {
            family: Family::Decomposed,
            qparams,
            dtype: QDType::Uint8,
            range,
        };
        let pc = |scales: Vec<f64>, zero_points: Vec<i64>, axis| QParams::PerChannel {
            scales,
            scales_f32: true,
            zero_points,
            axis,
        };
        let r = Some((0, 255));
        let bad = [
            q(pc(vec![1.0; 3], vec![0; 3], 3), r),
            q(pc(vec![1.0; 2], vec![0; 3], 1), r),
            q(pc(vec![1.0; 3], vec![0; 2], 1), r),
            q(pc(vec![1.0, 0.0, 1.0], vec![0; 3], 1), r),
            q(per_channel(true), None),
        ];
        for op in &bad {
            assert!(run(op, Flow::ConvertFx, &x, None).is_err(), "{op:?}");
        }
        // The decomposed ops take any zero point.
        let wide = q(pc(vec![1.0; 3], vec![-1000, 0, 1000], 1), r);
        assert!(run(&wide, Flow::ConvertFx, &x, None).is_ok());
        let op = q(per_channel(true), r);
        let plan = op.plan(&ctx(Flow::ConvertFx), &[x.meta()], None).unwrap();
        // Data that is not the planned shape, or an element past the end.
        let short = Value::Tensor(Tensor::f32(vec![11], vec![0.0; 11]));
        assert!(plan.predict(&[&short]).is_err());
        assert!(plan.trace(&[&x], 0, 12).is_err());
        let t = plan.trace(&[&x], 0, 5).unwrap();
        assert_eq!(t[0], "x = 0e0, scale 4, zero_point 2");
        let dq = Dequantize {
            family: Family::Aten,
            qparams: per_channel(false),
        };
        let codes = Value::Tensor(Tensor::int(DType::U8, vec![2, 3, 2], vec![7; 12]));
        let plan = dq
            .plan(&ctx(Flow::ConvertFx), &[codes.meta()], None)
            .unwrap();
        assert_eq!(plan.trace(&[&codes], 0, 11).unwrap()[0], "q = 7");
        assert!(plan.trace(&[&codes], 0, 12).is_err());
        assert!(plan.predict(&[&short]).is_err());
    }

    #[test]
    fn names_and_rules_follow_family_and_qparams() {
        let pt = QParams::PerTensor {
            scale: 1.0,
            zero_point: 0,
        };
        let cases = [
            (
                Family::Aten,
                pt.clone(),
                QDType::Quint8,
                "quantize_per_tensor",
                "QuantizeAvx2",
            ),
            (
                Family::Aten,
                pt.clone(),
                QDType::Qint32,
                "quantize_per_tensor",
                "scalar Quantize<T>",
            ),
            (
                Family::Aten,
                per_channel(false),
                QDType::Quint8,
                "quantize_per_channel",
                "scalar",
            ),
            (
                Family::Decomposed,
                pt.clone(),
                QDType::Uint8,
                "decomposed_quantize_per_tensor",
                "(reciprocal in double)",
            ),
            (
                Family::Decomposed,
                per_channel(true),
                QDType::Uint8,
                "decomposed_quantize_per_channel",
                "f32 scales",
            ),
            (
                Family::Decomposed,
                per_channel(false),
                QDType::Uint8,
                "decomposed_quantize_per_channel",
                "f64 scales",
            ),
        ];
        let x = Value::Tensor(Tensor::f32(vec![2, 3, 2], vec![0.0; 12]));
        for (family, qparams, dtype, name, rule) in cases {
            let op = Quantize {
                family,
                qparams,
                dtype,
                range: Some((0, 255)),
            };
            assert_eq!(op.name(), name);
            let plan = op.plan(&ctx(Flow::ConvertFx), &[x.meta()], None).unwrap();
            let r = plan.rule();
            assert!(r.lines[0].1.contains(rule), "{name}: {r:?}");
        }
        let codes = Value::Tensor(Tensor::int(DType::U8, vec![2, 3, 2], vec![0; 12]));
        let cases = [
            (
                Family::Aten,
                pt.clone(),
                "dequantize_per_tensor",
                "FBGEMM Dequantize",
            ),
            (
                Family::Aten,
                per_channel(false),
                "dequantize_per_channel",
                "ATen per channel",
            ),
            (
                Family::Decomposed,
                pt,
                "decomposed_dequantize_per_tensor",
                "quantized_decomposed: ",
            ),
            (
                Family::Decomposed,
                per_channel(true),
                "decomposed_dequantize_per_channel",
                "f32 scales",
            ),
            (
                Family::Decomposed,
                per_channel(false),
                "decomposed_dequantize_per_channel",
                "f64 scales",
            ),
        ];
        for (family, qparams, name, rule) in cases {
            let op = Dequantize { family, qparams };
            assert_eq!(op.name(), name);
            let plan = op
                .plan(&ctx(Flow::ConvertFx), &[codes.meta()], None)
                .unwrap();
            let r = plan.rule();
            assert!(r.lines[0].1.contains(rule), "{name}: {r:?}");
            assert!(plan.trace(&[&codes], 0, 0).unwrap()[1].contains(rule));
        }
    }

    #[test]
    fn the_flows_quantize_node_clamps_per_flow() {
        let x = Value::Tensor(Tensor::f32(vec![4], vec![-3.0, 5.5, 200.0, f32::NAN]));
        let out = OutQParams {
            scale: 0.5,
            zero_point: 2,
            quant_min: 0,
            quant_max: 127,
        };
        // convert_fx: 0..255 whatever the observer's range, NaN through QuantizeAvx2 (2^31 − 128
        // wrapped with zp 2: 255 after the clamp); decomposed: 0..127, NaN undefined.
        for (flow, want) in [
            (
                Flow::ConvertFx,
                [
                    Pred::Exact(0),
                    Pred::Exact(13),
                    Pred::Exact(255),
                    Pred::Exact(255),
                ],
            ),
            (
                Flow::ConvertToReferenceDecomposedFx,
                [
                    Pred::Exact(0),
                    Pred::Exact(13),
                    Pred::Exact(127),
                    Pred::Ambiguous { lo: 0, hi: 255 },
                ],
            ),
        ] {
            let plan = FlowQuantize
                .plan(&ctx(flow), &[x.meta()], Some(&out))
                .unwrap();
            let o = plan.predict(&[&x]).unwrap().remove(0);
            assert_eq!(
                (o.name.as_str(), o.ints().unwrap()),
                ("int_repr", &want[..]),
                "{flow:?}"
            );
            let t = plan.trace(&[&x], 0, 1).unwrap();
            assert_eq!(t[0], "x = 5.5e0, scale 0.5, zero_point 2");
            let clamp = if flow.keeps_quant_range() {
                "clamp 0..127"
            } else {
                "clamp 0..255"
            };
            assert!(t[1].contains(clamp), "{t:?}");
            assert!(plan.trace(&[&x], 0, 4).is_err());
            let short = Value::Tensor(Tensor::f32(vec![3], vec![0.0; 3]));
            assert!(plan.predict(&[&short]).is_err());
        }
        // The lowered convert_fx node (the backend's): QuantizeAvx2 with f32(1/scale) and zp.
        let plan = FlowQuantize
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], Some(&out))
            .unwrap();
        let Some(crate::ops::Lowered::Quantize(q)) = plan.lowered() else {
            panic!("convert_fx's quantize node is not lowered");
        };
        assert_eq!(q.shape(), [4]);
        assert_eq!(q.avx2_rule(), Some((2.0, 2)));
        assert_eq!(q.quantize(5.5), Some(13));
        let mut codes = [0u8; 3];
        assert!(q.quantize_all(&[-3.0, 5.5, 200.0], &mut codes));
        assert_eq!(codes, [0, 13, 255]);
        assert!(!q.quantize_all(&[1.0], &mut codes));
        let decomposed = FlowQuantize
            .plan(
                &ctx(Flow::ConvertToReferenceDecomposedFx),
                &[x.meta()],
                Some(&out),
            )
            .unwrap();
        assert!(decomposed.lowered().is_none());
        assert!(FlowQuantize
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], None)
            .is_err());
        let bad = OutQParams {
            scale: f64::NAN,
            ..out
        };
        assert!(FlowQuantize
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], Some(&bad))
            .is_err());
    }

    #[test]
    fn the_flows_dequantize_node_and_its_trace() {
        let q = Value::Quantized(QTensor::new(vec![3], vec![0, 2, 255], 0.5, 2));
        for flow in [Flow::ConvertFx, Flow::ConvertToReferenceDecomposedFx] {
            let plan = FlowDequantize.plan(&ctx(flow), &[q.meta()], None).unwrap();
            let o = plan.predict(&[&q]).unwrap().remove(0);
            assert_eq!(o.values, Predicted::Floats(vec![-1.0, 0.0, 126.5]));
            let t = plan.trace(&[&q], 0, 2).unwrap();
            assert_eq!(t[0], "q = 255, scale 0.5, zero_point 2");
            let name = if flow.keeps_quant_range() {
                "quantized_decomposed"
            } else {
                "Tensor.dequantize"
            };
            assert!(t[1].contains(name), "{t:?}");
            assert!(plan.trace(&[&q], 0, 3).is_err());
        }
        let bad = Value::Quantized(QTensor::new(vec![1], vec![0], 0.0, 0));
        assert!(FlowDequantize
            .plan(&ctx(Flow::ConvertFx), &[bad.meta()], None)
            .is_err());
    }
}
