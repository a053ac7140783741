//! Observers: an activation or weight observer fed batches, then `calculate_qparams()`; the QAT
//! activation observer (`FusedMovingAvgObsFakeQuantize` statistics); and weight quantization
//! (observer qparams, then `quantize_per_channel` / `quantize_per_tensor`).
//!
//! Sources: `torch/ao/quantization/observer.py`, `torch/ao/quantization/fake_quantize.py`,
//! ATen `fused_obs_fake_quant.cpp`; the arithmetic is [`crate::numerics::observer`].

use super::{
    expect_inputs, outputs_at, Meta, Op, OutQParams, Output, Plan, Predicted, Rule, Value,
};
use crate::engine::Ctx;
use crate::numerics::observer::{
    fused_moving_avg_obs_fake_quant, FusedConfig, FusedState, Observer, ObserverConfig,
};
use crate::numerics::qparams::fbgemm_choose_qparams;
use crate::numerics::quantize::aten;
use crate::Result;

/// An observer fed every input batch in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Observe {
    pub cfg: ObserverConfig,
    /// QAT: the statistics are `FusedMovingAvgObsFakeQuantize`'s (moving averages updated by
    /// `fused_moving_avg_obs_fake_quant`); its fake-quant qparams are predicted too.
    pub fused: bool,
}

impl Op for Observe {
    fn name(&self) -> &'static str {
        "observer"
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let _ = inputs;
        Observer::new(self.cfg.clone())?;
        Ok(Box::new(ObservePlan { op: self }))
    }
}

#[derive(Debug)]
struct ObservePlan<'a> {
    op: &'a Observe,
}

impl ObservePlan<'_> {
    fn fused_config(&self) -> FusedConfig {
        let c = &self.op.cfg;
        FusedConfig {
            averaging_const: c.averaging_constant,
            quant_min: c.range.quant_min,
            quant_max: c.range.quant_max,
            ch_axis: 0,
            per_row_fake_quant: false,
            symmetric_quant: c.qscheme.is_symmetric(),
        }
    }
}

impl Plan for ObservePlan<'_> {
    fn rule(&self) -> Rule {
        let c = &self.op.cfg;
        let r = Rule::default().with(
            "observer",
            format!(
                "{:?} {} {} quant range {}..{}",
                c.class,
                c.dtype.name(),
                c.qscheme.name(),
                c.range.quant_min,
                c.range.quant_max
            ),
        );
        if self.op.fused {
            r.with(
                "statistics",
                "fused_moving_avg_obs_fake_quant moving averages; fake-quant qparams from FBGEMM \
                 ChooseQuantizationParams, calculate_qparams() from the Python observer",
            )
        } else {
            r
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let mut obs = Observer::new(self.op.cfg.clone())?;
        let mut fq = None;
        if self.op.fused {
            let fcfg = self.fused_config();
            // Per tensor (activation observers): one scale. Running buffers stay empty until a
            // batch is seen, so no batch leaves min_val/max_val empty as the plain observer does.
            let mut st = FusedState {
                running_min: vec![],
                running_max: vec![],
                scale: vec![1.0],
                zero_point: vec![0],
            };
            for (i, b) in inputs.iter().enumerate() {
                let xs = b.f32s(&format!("batch {i}"))?;
                fused_moving_avg_obs_fake_quant(xs, b.shape(), &mut st, &fcfg, true, false)?;
            }
            obs.min_val = st.running_min.clone();
            obs.max_val = st.running_max.clone();
            if let (Some(&mn), Some(&mx)) = (st.running_min.first(), st.running_max.first()) {
                fq = Some(fbgemm_choose_qparams(
                    mn,
                    mx,
                    fcfg.quant_min as i32,
                    fcfg.quant_max as i32,
                    fcfg.symmetric_quant,
                ));
            }
        } else {
            for (i, b) in inputs.iter().enumerate() {
                let xs = b.f32s(&format!("batch {i}"))?;
                obs.forward(xs, b.shape())?;
            }
        }
        let q = obs.calculate_qparams()?;
        let mut out = vec![
            Output::new(
                "min_val",
                vec![obs.min_val.len()],
                Predicted::Floats(obs.min_val.clone()),
            ),
            Output::new(
                "max_val",
                vec![obs.max_val.len()],
                Predicted::Floats(obs.max_val.clone()),
            ),
        ];
        if let Some(h) = obs.histogram() {
            out.push(Output::new(
                "histogram",
                vec![h.len()],
                Predicted::Floats(h.to_vec()),
            ));
        }
        out.push(Output::new(
            "scale",
            vec![q.scale.len()],
            Predicted::Floats(q.scale.clone()),
        ));
        out.push(Output::new(
            "zero_point",
            vec![q.zero_point.len()],
            Predicted::exact(q.zero_point.iter().copied()),
        ));
        if let Some(fq) = fq {
            out.push(Output::new(
                "fq_scale",
                vec![1],
                Predicted::Floats(vec![fq.scale]),
            ));
            out.push(Output::new(
                "fq_zero_point",
                vec![1],
                Predicted::exact([fq.zero_point as i64]),
            ));
        }
        Ok(out)
    }

    /// The statistics and qparams at element `i` (channel `i`, histogram bin `i`).
    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        Ok(outputs_at(&self.predict(inputs)?, i))
    }
}

/// Weight quantization at convert: the weight observer's qparams from the float weight, then
/// `torch.quantize_per_channel` (axis 0) or `quantize_per_tensor`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightQuantize {
    pub cfg: ObserverConfig,
}

impl Op for WeightQuantize {
    fn name(&self) -> &'static str {
        "weight_quantize"
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let w = expect_inputs(self.name(), inputs, 1)?[0];
        Observer::new(self.cfg.clone())?;
        Ok(Box::new(WeightQuantizePlan {
            op: self,
            shape: w.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct WeightQuantizePlan<'a> {
    op: &'a WeightQuantize,
    shape: Vec<usize>,
}

impl WeightQuantizePlan<'_> {
    /// The output channel (axis 0) of flat weight element `i`.
    fn channel(&self, i: usize) -> usize {
        let inner: usize = self.shape.iter().skip(1).product();
        let channels = self.shape.first().copied().unwrap_or(1).max(1);
        (i / inner.max(1)) % channels
    }
}

impl Plan for WeightQuantizePlan<'_> {
    fn rule(&self) -> Rule {
        let c = &self.op.cfg;
        Rule::default()
            .with(
                "observer",
                format!(
                    "{:?} {} {} quant range {}..{}",
                    c.class,
                    c.dtype.name(),
                    c.qscheme.name(),
                    c.range.quant_min,
                    c.range.quant_max
                ),
            )
            .with(
                "quantize",
                "FBGEMM scalar Quantize<int8_t> per channel (torch.quantize_per_channel) or \
                 QuantizeAvx2 per tensor",
            )
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let ws = inputs[0].f32s("weight")?;
        let mut obs = Observer::new(self.op.cfg.clone())?;
        obs.forward(ws, &self.shape)?;
        let q = obs.calculate_qparams()?;
        let scales64: Vec<f64> = q.scale.iter().map(|&s| s as f64).collect();
        let dtype = self.op.cfg.dtype;
        let int_repr = if self.op.cfg.qscheme.is_per_channel() {
            aten::quantize_per_channel(ws, &scales64, &q.zero_point, |i| self.channel(i), dtype)
        } else {
            aten::quantize_per_tensor(ws, scales64[0], q.zero_point[0], dtype)
        };
        Ok(vec![
            Output::new(
                "scales",
                vec![q.scale.len()],
                Predicted::Floats(q.scale.clone()),
            ),
            Output::new(
                "zero_points",
                vec![q.zero_point.len()],
                Predicted::exact(q.zero_point.iter().copied()),
            ),
            Output::new(
                "int_repr",
                self.shape.clone(),
                Predicted::from_options(int_repr),
            ),
        ])
    }

    /// The weight element, its channel's qparams and its code (`output` 2, `int_repr`), or the
    /// qparams of channel `i`.
    fn trace(&self, inputs: &[&Value], output: usize, i: usize) -> Result<Vec<String>> {
        let outs = self.predict(inputs)?;
        if output != 2 {
            return Ok(outputs_at(&outs[..2], i));
        }
        let ws = inputs[0].f32s("weight")?;
        let Some(w) = ws.get(i) else {
            return Ok(Vec::new());
        };
        let c = if self.op.cfg.qscheme.is_per_channel() {
            self.channel(i)
        } else {
            0
        };
        Ok(vec![
            format!("w = {w:e} (0x{:08x}), channel {c}", w.to_bits()),
            format!(
                "scale {}, zero point {} → q = {}",
                outs[0].values.show(c),
                outs[1].values.show(c),
                outs[2].values.show(i)
            ),
        ])
    }
}

/// The qparams a converted graph uses for a quantized activation: those `calculate_qparams()` of
/// the observer at that point returned (checked against what the graph recorded), and in the
/// decomposed flow the observer's quant range as the quantize node's `quant_min`/`quant_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphQParams {
    /// The decomposed flow: the observer's resolved quant range.
    pub quant_range: Option<(i64, i64)>,
}

impl Op for GraphQParams {
    fn name(&self) -> &'static str {
        "graph_qparams"
    }

    fn plan<'a>(
        &'a self,
        _ctx: &Ctx,
        inputs: &[Meta<'_>],
        _out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        expect_inputs(self.name(), inputs, 2)?;
        Ok(Box::new(GraphQParamsPlan { op: *self }))
    }
}

#[derive(Debug)]
struct GraphQParamsPlan {
    op: GraphQParams,
}

impl Plan for GraphQParamsPlan {
    fn rule(&self) -> Rule {
        let r = Rule::default().with(
            "qparams",
            "the converted graph quantizes with the observer's calculate_qparams()",
        );
        match self.op.quant_range {
            Some(_) => r.with(
                "quant range",
                "the decomposed flow carries the observer's quant_min/quant_max",
            ),
            None => r,
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let scale = inputs[0].f32s("observer scale")?;
        let zp = inputs[1].ints("observer zero_point")?;
        let mut out = vec![
            Output::new(
                "scale",
                vec![],
                Predicted::Floats(scale.first().copied().into_iter().collect()),
            ),
            Output::new("zero_point", vec![], Predicted::exact(zp.first().copied())),
        ];
        if let Some((lo, hi)) = self.op.quant_range {
            out.push(Output::new(
                "quant_range",
                vec![2],
                Predicted::exact([lo, hi]),
            ));
        }
        Ok(out)
    }

    /// The observer's qparams as the graph takes them, and element `i` of the quant range.
    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let mut lines = vec!["from the observer's calculate_qparams()".to_string()];
        lines.extend(super::outputs_at(&self.predict(inputs)?, i));
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{flow::Flow, Engine};
    use crate::ops::pool::test_ctx;
    use crate::tensor::{DType, Tensor};

    #[test]
    fn graph_qparams_trace_the_observers_values() {
        let ctx = test_ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm);
        let scale = Value::Tensor(Tensor::f32(vec![1], vec![0.25]));
        let zp = Value::Tensor(Tensor::int(DType::I64, vec![1], vec![7]));
        let op = GraphQParams {
            quant_range: Some((0, 127)),
        };
        let plan = op.plan(&ctx, &[scale.meta(), zp.meta()], None).unwrap();
        assert_eq!(
            plan.trace(&[&scale, &zp], 2, 1).unwrap(),
            [
                "from the observer's calculate_qparams()",
                "scale = 2.5e-1 (0x3e800000)",
                "zero_point = 7",
                "quant_range[1] = 127",
            ]
        );
    }
}
