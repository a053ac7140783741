//! `relu6`, `hardtanh` and `clamp` on quantized tensors: an integer clamp between the quantized
//! bounds, output qparams equal to the input's.
//!
//! Sources: PyTorch `aten/src/ATen/native/quantized/cpu/qclamp.cpp` (`quantized_clamp_impl`;
//! `quantized::relu6` is `hardtanh_quantized_cpu(qx, 0, 6)`), the kernel `qclamp_kernel` in
//! `kernels/QuantizedOpKernels.cpp`, and under qnnpack `qnnpack_clamp` (the u8 clamp micro-kernel).
//! Both compute the bounds with `at::native::quantize_val` (FBGEMM `Quantize<uint8_t>`:
//! `zp + nearbyint(f32(v · f32(1/f32(scale))))`, clamped to 0..255) and clamp each value. In the
//! reference flows the op is the float `min(max(x, lo), hi)` on the dequantized input, then the
//! flow's quantize node.
//!
//! Under qnnpack a channels-last input comes back scrambled: `qnnpack_clamp` clamps the input's
//! memory (NHWC order) but returns it as a contiguous NCHW tensor, so output element `i` in
//! logical order is the clamp of the input's `i`-th byte in memory (measured on torch 2.15.0;
//! tensors contiguous in both formats, C = 1 or H = W = 1, are unaffected).

use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Predicted, Rule};
use super::{QTensor, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::validate_qparams;
use crate::numerics::quantize::aten;
use crate::{Error, Result};

/// A clamp of a quantized tensor to `[min_val, max_val]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Clamp {
    pub min_val: f32,
    pub max_val: f32,
}

impl Clamp {
    /// `relu6`: `hardtanh(x, 0, 6)`.
    pub const RELU6: Clamp = Clamp {
        min_val: 0.0,
        max_val: 6.0,
    };
}

impl Op for Clamp {
    fn name(&self) -> &'static str {
        if *self == Clamp::RELU6 {
            "relu6"
        } else {
            "hardtanh"
        }
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs(self.name(), inputs, 1)?[0];
        let (scale, zero_point) = input.qparams(self.name())?;
        validate_qparams("input qparams", scale, zero_point, 0, 255)?;
        let out = *expect_out(self.name(), out)?;
        if self.min_val.partial_cmp(&self.max_val) != Some(std::cmp::Ordering::Less)
            && self.min_val != self.max_val
        {
            return Err(Error::invalid(
                self.name(),
                format!("min {} must not exceed max {}", self.min_val, self.max_val),
            ));
        }
        if ctx.flow.is_integer() && (out.scale, out.zero_point) != (scale, zero_point) {
            return Err(Error::invalid(
                self.name(),
                "the quantized op keeps the input's qparams, the output has others",
            ));
        }
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        let bound = |v: f32| {
            aten::quantize_scalar(v, scale as f32, zero_point as i32, 0, 255)
                .ok_or_else(|| Error::invalid(self.name(), "NaN bound"))
        };
        Ok(Box::new(ClampPlan {
            op: *self,
            flow: ctx.flow,
            memory_order: ctx.flow.is_integer() && ctx.engine == crate::engine::Engine::Qnnpack,
            bounds: (bound(self.min_val)?, bound(self.max_val)?),
            out,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct ClampPlan {
    op: Clamp,
    flow: Flow,
    /// qnnpack: the output holds the input's memory order as if it were logical order.
    memory_order: bool,
    /// The quantized bounds (integer flow).
    bounds: (i64, i64),
    out: OutQParams,
    shape: Vec<usize>,
}

impl Plan for ClampPlan {
    fn rule(&self) -> Rule {
        let (lo, hi) = self.bounds;
        if self.flow.is_integer() {
            let r = Rule::default().with(
                "clamp",
                format!(
                    "q' = min(max(q, {lo}), {hi}): bounds quantize_val({}) and quantize_val({})",
                    self.op.min_val, self.op.max_val
                ),
            );
            if self.memory_order {
                r.with(
                    "layout",
                    "qnnpack: output element i is the input's i-th byte in memory (channels-last \
                     inputs come back scrambled)",
                )
            } else {
                r
            }
        } else {
            let (qlo, qhi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
            Rule::default()
                .with(
                    "float op",
                    format!(
                        "min(max(dequantize(q), {}), {}) in f32 (exact)",
                        self.op.min_val, self.op.max_val
                    ),
                )
                .with(
                    "quantize",
                    format!("{}, clamp {qlo}..{qhi}", self.flow.name()),
                )
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q: &QTensor = inputs[0].quantized("input")?;
        if self.flow.is_integer() {
            let (lo, hi) = self.bounds;
            let data = if self.memory_order {
                q.memory_order()
            } else {
                q.data.clone()
            };
            let values = data.iter().map(|&v| (v as i64).max(lo).min(hi));
            return Ok(vec![Output::new(
                "int_repr",
                self.shape.clone(),
                Predicted::exact(values),
            )]);
        }
        // The reference flows: torch.clamp / hardtanh on floats (max, then min: exact in f32),
        // then the flow's quantize node.
        let ys: Vec<f32> = q
            .data
            .iter()
            .map(|&v| {
                let x = self.flow.dequantize(v as i64, q.scale, q.zero_point);
                x.max(self.op.min_val).min(self.op.max_val)
            })
            .collect();
        super::exact_float_then_quantize(self.op.name(), self.flow, &self.out, &self.shape, ys)
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = inputs[0].quantized("input")?;
        let v = if self.memory_order {
            super::element_at(self.op.name(), &q.memory_order(), i)?
        } else {
            super::element_at(self.op.name(), &q.data, i)?
        };
        Ok(vec![
            format!("q = {v}, scale {}, zero point {}", q.scale, q.zero_point),
            format!("rule: {}", self.rule()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Engine, Isa};

    fn ctx(flow: Flow) -> Ctx {
        Ctx {
            flow,
            engine: Engine::Fbgemm,
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
        }
    }

    /// The output qparams of the relu6 tests: the input's (scale 0.05, zero point 100).
    fn relu6_out() -> OutQParams {
        OutQParams {
            scale: 0.05,
            zero_point: 100,
            quant_min: 0,
            quant_max: 255,
        }
    }

    /// The op is named as PyTorch's graph names it: `relu6` for `hardtanh(x, 0, 6)`, else
    /// `hardtanh`.
    #[test]
    fn named_relu6_only_for_the_0_6_bounds() {
        assert_eq!(Clamp::RELU6.name(), "relu6");
        let c = Clamp {
            min_val: -1.0,
            max_val: 1.0,
        };
        assert_eq!(c.name(), "hardtanh");
    }

    #[test]
    fn relu6_clamps_to_the_quantized_bounds() {
        // scale 0.05, zero point 100: 0.0 -> 100, 6.0 -> 100 + 120 = 220.
        let x = Value::Quantized(QTensor::new(vec![5], vec![0, 99, 150, 220, 255], 0.05, 100));
        let out = relu6_out();
        let plan = Clamp::RELU6
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], Some(&out))
            .unwrap();
        let o = plan.predict(&[&x]).unwrap().remove(0);
        assert_eq!(o.values, Predicted::exact([100, 100, 150, 220, 220]));
        // Other output qparams are an error for the quantized op, not a wrong answer.
        let other = OutQParams { scale: 0.1, ..out };
        assert!(Clamp::RELU6
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], Some(&other))
            .is_err());
        let bad = Clamp {
            min_val: 1.0,
            max_val: 0.0,
        };
        assert!(bad
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], Some(&out))
            .is_err());
    }

    #[test]
    fn trace_shows_the_code_and_rejects_an_element_past_the_end() {
        let x = Value::Quantized(QTensor::new(vec![3], vec![0, 150, 255], 0.05, 100));
        let out = relu6_out();
        let plan = Clamp::RELU6
            .plan(&ctx(Flow::ConvertFx), &[x.meta()], Some(&out))
            .unwrap();
        let t = plan.trace(&[&x], 0, 1).unwrap();
        assert_eq!(t[0], "q = 150, scale 0.05, zero point 100");
        assert!(t[1].starts_with("rule: "), "{t:?}");
        assert!(plan.trace(&[&x], 0, 3).is_err());
    }
}
