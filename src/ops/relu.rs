//! `relu` on a quantized tensor (`F.relu`, `torch.relu`, `nn.ReLU` outside a fused pattern):
//! `max(q, zero_point)`, output qparams equal to the input's.
//!
//! Sources: PyTorch `aten/src/ATen/native/quantized/cpu/qrelu.cpp` (`relu_quantized_cpu`; under
//! qnnpack with quint8 `qnnpack_relu`, a u8 clamp to `[zero_point, 255]`) and `qrelu_kernel` in
//! `kernels/QuantizedOpKernels.cpp`. In the reference flows the op is the float `max(x, 0)` on the
//! dequantized input (exact), then the flow's quantize node.

use super::Value;
use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Predicted, Rule};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// `relu` on a quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relu;

impl Op for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let input = expect_inputs("relu", inputs, 1)?[0];
        let (scale, zero_point) = input.qparams("relu")?;
        validate_qparams("input qparams", scale, zero_point, 0, 255)?;
        let out = *expect_out("relu", out)?;
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        if ctx.flow.is_integer() && (out.scale, out.zero_point) != (scale, zero_point) {
            return Err(Error::invalid(
                "relu",
                "the quantized op keeps the input's qparams, the output has others",
            ));
        }
        Ok(Box::new(ReluPlan {
            flow: ctx.flow,
            out,
            shape: input.shape.to_vec(),
        }))
    }
}

#[derive(Debug)]
struct ReluPlan {
    flow: Flow,
    out: OutQParams,
    shape: Vec<usize>,
}

impl Plan for ReluPlan {
    fn rule(&self) -> Rule {
        if self.flow.is_integer() {
            Rule::default().with("relu", "q' = max(q, zero_point)")
        } else {
            let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
            Rule::default()
                .with("float op", "max(dequantize(q), 0) in f32 (exact)")
                .with(
                    "quantize",
                    format!("{}, clamp {lo}..{hi}", self.flow.name()),
                )
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q = inputs[0].quantized("input")?;
        if self.flow.is_integer() {
            let values = q.data.iter().map(|&v| (v as i64).max(q.zero_point));
            return Ok(vec![Output::new(
                "int_repr",
                self.shape.clone(),
                Predicted::exact(values),
            )]);
        }
        let ys: Vec<f32> = q
            .data
            .iter()
            .map(|&v| {
                self.flow
                    .dequantize(v as i64, q.scale, q.zero_point)
                    .max(0.0)
            })
            .collect();
        super::exact_float_then_quantize("relu", self.flow, &self.out, &self.shape, ys)
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = inputs[0].quantized("input")?;
        let Some(&v) = q.data.get(i) else {
            return Ok(Vec::new());
        };
        let first = format!("q = {v}, scale {}, zero point {}", q.scale, q.zero_point);
        if self.flow.is_integer() {
            let r = (v as i64).max(q.zero_point);
            return Ok(vec![first, format!("max({v}, {}) = {r}", q.zero_point)]);
        }
        let x = self.flow.dequantize(v as i64, q.scale, q.zero_point);
        Ok(vec![
            first,
            format!("x = {x:e}, max(x, 0) = {:e}", x.max(0.0)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CpuFeatures, Engine, Isa};
    use crate::ops::QTensor;

    #[test]
    fn relu_is_max_with_the_zero_point() {
        let ctx = Ctx {
            flow: Flow::ConvertFx,
            engine: Engine::Qnnpack,
            isa: Isa::Vnni,
            cpu: CpuFeatures::AVX512_VNNI,
        };
        let x = Value::Quantized(QTensor::new(vec![4], vec![0, 99, 100, 255], 0.5, 100));
        let out = OutQParams {
            scale: 0.5,
            zero_point: 100,
            quant_min: 0,
            quant_max: 255,
        };
        let plan = Relu.plan(&ctx, &[x.meta()], Some(&out)).unwrap();
        let o = plan.predict(&[&x]).unwrap().remove(0);
        assert_eq!(o.values, Predicted::exact([100, 100, 100, 255]));
        let moved = OutQParams {
            zero_point: 0,
            ..out
        };
        assert!(Relu.plan(&ctx, &[x.meta()], Some(&moved)).is_err());
    }
}
