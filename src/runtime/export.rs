//! Golden stages as JSON lines for exporters (`qparity runtime-export`): each line is the
//! protocol's stage request ([`WireStage`]) plus PyTorch's output and the constants of PyTorch's
//! rule for that stage, so a tool in any language can write the stage as ONNX models (QOperator,
//! QDQ, and PyTorch's rule in plain ONNX ops: runtimes/onnxruntime/export_onnx.py) with the
//! inputs and expected outputs beside them.

use super::protocol::WireStage;
use super::{expected_output, runtime_stage};
use crate::engine::CpuFeatures;
use crate::golden::Case;
use crate::kernels::{Accumulation, Requant};
use crate::ops::Value;
use crate::Result;
use serde::Serialize;

/// The constants of PyTorch's requantization for one stage.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "requant", rename_all = "snake_case")]
pub enum RuleConstants {
    /// FBGEMM's `ReQuantizeOutput`: `q = clamp(RNE(f32(biased)·multiplier[j]) + zp_y, lo, 255)`
    /// with `biased = f32(acc) + bias_term[j]`, or with `bias_rcp` set (per-tensor weights) the
    /// fused `fma(bias_term[j], bias_rcp, f32(acc))`.
    Fbgemm {
        bias_term: Vec<f32>,
        bias_rcp: Option<f32>,
        multiplier: Vec<f32>,
    },
    /// QNNPACK: `q = clamp(RNE(f32(acc + bias_q[j])·scale[j]) + zp_y, lo, 255)`.
    Qnnpack { bias_q: Vec<i32>, scale: Vec<f32> },
}

/// One exported stage.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedStage {
    #[serde(flatten)]
    pub stage: WireStage,
    /// PyTorch's u8 output, flat.
    pub expected: Vec<u8>,
    /// `exact` or `pairs` (int16 pair saturation): PyTorch's accumulation for this stage.
    pub accumulation: &'static str,
    /// The kernel path PyTorch took (`fbgemm-gemm`, `qnnpack`, ...).
    pub path: &'static str,
    /// The stage's output elements qparity calls ambiguous (oneDNN's requantization order).
    pub order_unknown: bool,
    pub rule: RuleConstants,
}

/// Every `convert_fx` linear / conv2d stage of `case` (captured on `cpu`), numbered from
/// `first_id`.
pub fn export_case(case: &Case, cpu: &CpuFeatures, first_id: u64) -> Result<Vec<ExportedStage>> {
    let mut out = Vec::new();
    for stage in case.stages(cpu)? {
        let metas: Vec<_> = stage.inputs.iter().map(Value::meta).collect();
        let plan = stage.op.plan(&stage.ctx, &metas, stage.out.as_ref())?;
        let Some((qs, layer)) = runtime_stage(&case.header.id, &stage, plan.as_ref())? else {
            continue;
        };
        let expected = expected_output(&stage)?
            .into_iter()
            .map(|v| v as u8)
            .collect();
        let rule = match &layer.requant {
            Requant::Fbgemm(f) => RuleConstants::Fbgemm {
                bias_term: f.bias_term.clone(),
                bias_rcp: f.bias_scale,
                multiplier: f.multiplier.clone(),
            },
            Requant::Qnnpack(q) => RuleConstants::Qnnpack {
                bias_q: q.bias_q.clone(),
                scale: q.scale.clone(),
            },
        };
        out.push(ExportedStage {
            stage: WireStage::new(first_id + out.len() as u64, &qs),
            expected,
            accumulation: match layer.accumulation {
                Accumulation::Exact => "exact",
                Accumulation::PairSaturatingI16 => "pairs",
            },
            path: layer.path.name(),
            order_unknown: layer.path.requant_order_unknown(),
            rule,
        });
    }
    Ok(out)
}
