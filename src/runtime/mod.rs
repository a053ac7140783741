//! Checking an outside int8 runtime (onnxruntime, tract, a user's own engine) against PyTorch.
//!
//! One core, three forms: the [`Runtime`] trait (in-process, `ndarray` in and out), the
//! JSON-lines protocol over a child process's stdin / stdout ([`protocol`], docs/RUNTIMES.md),
//! and the check ([`check`]) that feeds every golden `convert_fx` linear / conv2d stage to a
//! runtime, compares its u8 outputs with PyTorch's and names, for each mismatched element, the
//! rule change that reproduces the runtime's value ([`rules`]).
//!
//! A [`QStage`] is one quantized layer exactly as PyTorch ran it: the u8 input PyTorch recorded
//! with its scale and zero point, the int8 weights with per-tensor or per-channel scales and
//! zero points, the float bias, an int32 bias (PyTorch's own under QNNPACK; `RNE(bias / atws)`
//! where FBGEMM adds a float bias term), the output qparams, the fused ReLU and the conv geometry.

pub mod check;
pub mod export;
pub mod protocol;
pub mod rules;

use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::geometry::Conv2dParams;
use crate::golden::Stage;
use crate::kernels::Requant;
use crate::ops::layer::{Geometry, IntegerLayer, QLayer};
use crate::ops::{Lowered, Op, OutQParams, QTensor, Value};
use crate::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

/// What a runtime says about itself (the protocol's handshake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// e.g. `onnxruntime`.
    pub name: String,
    /// e.g. `1.31.1`.
    pub version: String,
    /// The instruction set it ran on, as it reports it (e.g. `avx512vnni`, `avx2`).
    pub isa: String,
}

/// The op of a stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageOp {
    /// `y = x · Wᵀ (+ b)` over the last dimension; weights `[out, in]`.
    Linear,
    /// A 2-D convolution; input NCHW, weights `[OC, IC/groups, KH, KW]`, padding filled with the
    /// input zero point.
    Conv2d(Conv2dParams),
}

impl StageOp {
    /// The protocol name: `linear` or `conv2d`.
    pub fn name(&self) -> &'static str {
        match self {
            StageOp::Linear => "linear",
            StageOp::Conv2d(_) => "conv2d",
        }
    }

    /// The report's op kind: `linear`, `conv2d`, `conv2d-depthwise` (one input and one output
    /// channel per group) or `conv2d-grouped`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageOp::Linear => "linear",
            StageOp::Conv2d(p) if p.groups == 1 => "conv2d",
            StageOp::Conv2d(p) if p.groups == p.in_channels && p.groups == p.out_channels => {
                "conv2d-depthwise"
            }
            StageOp::Conv2d(_) => "conv2d-grouped",
        }
    }
}

/// One quantized linear / conv2d stage, as PyTorch ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct QStage {
    /// Where it comes from (`<case id>: convert_fx run 0, stage 1 (conv2d)`).
    pub id: String,
    pub op: StageOp,
    /// The PyTorch engine that produced the expected output.
    pub engine: Engine,
    /// Quantized input (linear: `[..., in]`; conv2d: NCHW), logical order.
    pub input: ArrayD<u8>,
    pub input_scale: f64,
    pub input_zero_point: i32,
    /// Int8 weights in PyTorch's layout.
    pub weight: ArrayD<i8>,
    /// One scale (per tensor) or one per output channel.
    pub weight_scales: Vec<f32>,
    /// One zero point (per tensor) or one per output channel.
    pub weight_zero_points: Vec<i32>,
    /// Float bias per output channel, as the PyTorch module holds it.
    pub bias: Option<Vec<f32>>,
    /// Int32 bias per output channel with scale `f32(f32(s_x)·w_s)`: PyTorch's own where the
    /// engine quantizes the bias (QNNPACK), else `RNE(bias / f32(f32(s_x)·w_s))` computed in f64.
    pub bias_i32: Option<Vec<i32>>,
    pub output_scale: f64,
    pub output_zero_point: i32,
    /// A fused ReLU (outputs clamped below at the output zero point).
    pub relu: bool,
    pub output_shape: Vec<usize>,
}

impl QStage {
    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.shape().first().copied().unwrap_or(0)
    }

    /// Output channel of flat output element `i`.
    pub fn channel_of(&self, i: usize) -> usize {
        match self.op {
            StageOp::Linear => i % self.out_channels().max(1),
            StageOp::Conv2d(p) => {
                let s = &self.output_shape;
                (i / (s[2] * s[3]).max(1)) % p.out_channels.max(1)
            }
        }
    }

    /// Scale of output channel `j`'s weights.
    pub fn weight_scale(&self, j: usize) -> f32 {
        self.weight_scales[if self.weight_scales.len() == 1 { 0 } else { j }]
    }

    /// Zero point of output channel `j`'s weights.
    pub fn weight_zero_point(&self, j: usize) -> i32 {
        self.weight_zero_points[if self.weight_zero_points.len() == 1 {
            0
        } else {
            j
        }]
    }

    /// Weights quantized per output channel.
    pub fn per_channel(&self) -> bool {
        self.weight_scales.len() > 1 || self.weight_zero_points.len() > 1
    }
}

/// A runtime's answer for one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeOutput {
    /// The u8 output, in the stage's output shape (logical order).
    pub output: ArrayD<u8>,
    /// Optionally, its int32 accumulators `Σ (x − x_zp)(w − w_zp)` before bias and
    /// requantization, same shape.
    pub accumulators: Option<ArrayD<i32>>,
}

/// An outside int8 runtime.
pub trait Runtime {
    /// Name, version and ISA.
    fn info(&self) -> RuntimeInfo;
    /// Runs one stage; `Ok(None)` when the runtime does not support it (counted, not failed).
    fn run(&mut self, stage: &QStage) -> Result<Option<RuntimeOutput>>;
}

/// A golden stage as a runtime stage, with PyTorch's planned layer: `None` for stages that are
/// not a `convert_fx` linear / conv2d.
pub fn runtime_stage<'s>(
    case_id: &str,
    stage: &'s Stage,
    plan: &'s dyn crate::ops::Plan,
) -> Result<Option<(QStage, &'s IntegerLayer)>> {
    if stage.ctx.flow != Flow::ConvertFx {
        return Ok(None);
    }
    let (Some(Lowered::IntegerLayer(l)), Some(layer)) = (plan.lowered(), stage.op.layer()) else {
        return Ok(None);
    };
    let input = match stage.inputs.first() {
        Some(Value::Quantized(q)) => q,
        _ => {
            return Err(Error::invalid(
                "runtime stage",
                "the layer has no quantized input",
            ))
        }
    };
    let out = stage
        .out
        .ok_or_else(|| Error::invalid("runtime stage", "the layer has no output qparams"))?;
    let id = format!("{case_id}: {}", stage.location);
    Ok(Some((
        from_layer(id, stage.ctx.engine, layer, l, input, out)?,
        l,
    )))
}

/// A layer planned under `ctx` (`convert_fx`) on `input` with output qparams `out`, as a
/// runtime stage, with the planned layer whose prediction is PyTorch's output: for stages that
/// come from generators rather than goldens.
pub fn layer_stage(
    id: &str,
    ctx: &Ctx,
    layer: &QLayer,
    input: &QTensor,
    out: &OutQParams,
) -> Result<(QStage, IntegerLayer)> {
    if ctx.flow != Flow::ConvertFx {
        return Err(Error::invalid(
            "runtime stage",
            "only convert_fx layers run on a runtime",
        ));
    }
    let v = Value::Quantized(input.clone());
    let plan = layer.plan(ctx, &[v.meta()], Some(out))?;
    let Some(Lowered::IntegerLayer(l)) = plan.lowered() else {
        return Err(Error::invalid(
            "runtime stage",
            "the layer has no integer plan",
        ));
    };
    let qs = from_layer(id.to_string(), ctx.engine, layer, l, input, *out)?;
    Ok((qs, l.clone()))
}

fn from_layer(
    id: String,
    engine: Engine,
    layer: &QLayer,
    l: &IntegerLayer,
    input: &QTensor,
    out: OutQParams,
) -> Result<QStage> {
    let w = &layer.weight;
    let arr_err =
        |what: &str, e: ndarray::ShapeError| Error::shape(what.to_string(), e.to_string());
    let oc = layer.geometry.out_channels();
    let sx = input.scale as f32;
    let bias_i32 = match (&l.requant, &layer.bias) {
        (Requant::Qnnpack(q), Some(_)) => Some(q.bias_q.clone()),
        (Requant::Fbgemm(_), Some(b)) => Some(
            (0..oc)
                .map(|j| {
                    let atws = sx * w.scale_of(j);
                    let v = (b[j] as f64 / atws as f64).round_ties_even();
                    v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
                })
                .collect(),
        ),
        (_, None) => None,
    };
    Ok(QStage {
        id,
        op: match layer.geometry {
            Geometry::Linear { .. } => StageOp::Linear,
            Geometry::Conv2d(p) => StageOp::Conv2d(p),
        },
        engine,
        input: ArrayD::from_shape_vec(IxDyn(&input.shape), input.data.clone())
            .map_err(|e| arr_err("runtime stage input", e))?,
        input_scale: input.scale,
        input_zero_point: i32::try_from(input.zero_point)
            .map_err(|_| Error::invalid("input zero point", "outside i32"))?,
        weight: ArrayD::from_shape_vec(IxDyn(&w.shape), w.int_repr.clone())
            .map_err(|e| arr_err("runtime stage weight", e))?,
        weight_scales: w.scales.clone(),
        weight_zero_points: w.zero_points.iter().map(|&z| z as i32).collect(),
        bias: layer.bias.clone(),
        bias_i32,
        output_scale: out.scale,
        output_zero_point: i32::try_from(out.zero_point)
            .map_err(|_| Error::invalid("output zero point", "outside i32"))?,
        relu: layer.relu,
        output_shape: l.out_shape.clone(),
    })
}

/// PyTorch's u8 output of a layer stage (its `int_repr`), flat, as f64.
pub fn expected_output(stage: &Stage) -> Result<Vec<f64>> {
    Ok(stage
        .expected
        .iter()
        .find(|e| e.name == "int_repr")
        .ok_or_else(|| Error::invalid(&stage.location, "PyTorch recorded no int_repr"))?
        .tensor
        .to_f64_vec())
}
