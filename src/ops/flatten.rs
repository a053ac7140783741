//! `flatten` on a quantized tensor (`torch.flatten(x, start_dim, end_dim)`, `nn.Flatten`; the
//! models' `flatten(x, 1)` before the classifier): data movement. `convert_fx` copies the codes
//! in logical order (a channels-last input is copied into NCHW order; `aten/src/ATen/native/
//! TensorShape.cpp: flatten` → `reshape`) and keeps the qparams. Reference flows: the float
//! flatten between the flow's dequantize and its quantize node with the output qparams
//! (`clamp(RNE(f32(dequantize(q)·f32(1/s'))) + zp')`, the identity when the qparams are the
//! input's).

use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Predicted, Rule};
use super::{QTensor, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// `flatten(start_dim, end_dim)` (negative dims count from the end; defaults 0 and −1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {
    #[serde(default)]
    pub start_dim: i64,
    #[serde(default = "last")]
    pub end_dim: i64,
}

fn last() -> i64 {
    -1
}

const OP: &str = "flatten";

impl Flatten {
    /// The output shape of flattening `shape` (a 0-d tensor becomes 1-d).
    pub fn output_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let rank = shape.len().max(1) as i64;
        let wrap = |d: i64| {
            let w = if d < 0 { d + rank } else { d };
            if (0..rank).contains(&w) {
                Ok(w as usize)
            } else {
                Err(Error::invalid(
                    OP,
                    format!("dim {d} out of range for a {}-d input", shape.len()),
                ))
            }
        };
        let (s, e) = (wrap(self.start_dim)?, wrap(self.end_dim)?);
        if s > e {
            return Err(Error::invalid(
                OP,
                format!(
                    "start_dim {} comes after end_dim {}",
                    self.start_dim, self.end_dim
                ),
            ));
        }
        if shape.is_empty() {
            return Ok(vec![1]);
        }
        let mut out = shape[..s].to_vec();
        out.push(shape[s..=e].iter().product());
        out.extend_from_slice(&shape[e + 1..]);
        Ok(out)
    }
}

impl Op for Flatten {
    fn name(&self) -> &'static str {
        OP
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let x = expect_inputs(OP, inputs, 1)?[0];
        let (scale, zero_point) = x.qparams(OP)?;
        validate_qparams("input qparams", scale, zero_point, 0, 255)?;
        let out = *expect_out(OP, out)?;
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        if ctx.flow.is_integer() && (out.scale, out.zero_point) != (scale, zero_point) {
            return Err(Error::invalid(
                OP,
                "the quantized op keeps the input's qparams, the output has others",
            ));
        }
        Ok(Box::new(FlattenPlan {
            flow: ctx.flow,
            out,
            in_shape: x.shape.to_vec(),
            out_shape: self.output_shape(x.shape)?,
        }))
    }
}

#[derive(Debug)]
struct FlattenPlan {
    flow: Flow,
    out: OutQParams,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl FlattenPlan {
    fn element(&self, q: &QTensor, i: usize) -> Result<i64> {
        let code = q.data[i] as i64;
        if self.flow.is_integer() {
            return Ok(code);
        }
        let x = self.flow.dequantize(code, q.scale, q.zero_point);
        let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
        self.flow
            .quantize(x, self.out.scale, self.out.zero_point, lo, hi)
            .ok_or_else(|| Error::invalid(OP, "NaN reaches the quantize node"))
    }
}

impl Plan for FlattenPlan {
    fn rule(&self) -> Rule {
        let r = Rule::default().with(
            "shape",
            format!("{:?} → {:?}, logical order", self.in_shape, self.out_shape),
        );
        if self.flow.is_integer() {
            r.with("values", "codes copied, qparams kept")
        } else {
            let (lo, hi) = self.flow.clamp(self.out.quant_min, self.out.quant_max);
            r.with(
                "quantize",
                format!(
                    "{} dequantize, then quantize (scale {}, zero point {}), clamp {lo}..{hi}",
                    self.flow.name(),
                    self.out.scale,
                    self.out.zero_point
                ),
            )
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q = inputs[0].quantized(OP)?;
        if q.shape != self.in_shape || q.data.len() != q.shape.iter().product::<usize>() {
            return Err(Error::shape(
                OP,
                format!(
                    "input of shape {:?}, planned for {:?}",
                    q.shape, self.in_shape
                ),
            ));
        }
        let values = (0..q.data.len())
            .map(|i| self.element(q, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(vec![Output::new(
            "int_repr",
            self.out_shape.clone(),
            Predicted::exact(values),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = inputs[0].quantized(OP)?;
        let code = q
            .data
            .get(i)
            .ok_or_else(|| Error::shape(OP, format!("no element {i}")))?;
        Ok(vec![
            format!("element {i}: code {code} → {}", self.element(q, i)?),
            format!("rule: {}", self.rule()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(x: &QTensor) -> OutQParams {
        OutQParams {
            scale: x.scale,
            zero_point: x.zero_point,
            quant_min: 0,
            quant_max: 255,
        }
    }

    fn run(op: Flatten, flow: Flow, x: &QTensor, out: OutQParams) -> Result<Output> {
        let c = crate::ops::pool::test_ctx(flow, crate::engine::Engine::Fbgemm);
        let v = Value::Quantized(x.clone());
        let plan = op.plan(&c, &[v.meta()], Some(&out))?;
        Ok(plan.predict(&[&v])?.remove(0))
    }

    #[test]
    fn shapes_and_values() {
        let f = |s, e| Flatten {
            start_dim: s,
            end_dim: e,
        };
        let shape = [2, 3, 4, 5];
        assert_eq!(f(1, -1).output_shape(&shape).unwrap(), [2, 60]);
        assert_eq!(f(0, -1).output_shape(&shape).unwrap(), [120]);
        assert_eq!(f(1, 2).output_shape(&shape).unwrap(), [2, 12, 5]);
        assert_eq!(f(-2, -2).output_shape(&shape).unwrap(), shape);
        assert!(f(2, 1).output_shape(&shape).is_err());
        assert!(f(0, 4).output_shape(&shape).is_err());
        let mut x = QTensor::new(vec![1, 2, 1, 2], vec![0, 7, 250, 3], 0.5, 3);
        x.memory_format = crate::ops::MemoryFormat::ChannelsLast;
        let o = run(f(1, -1), Flow::ConvertFx, &x, same(&x)).unwrap();
        assert_eq!(o.shape, [1, 4]);
        assert_eq!(o.values, Predicted::exact([0, 7, 250, 3]));
        // Reference flows requantize to the output qparams: dequantized −1.5, 2, 123.5, 0 at
        // scale 0.25, zp 0 → −6, 8, 494, 0, clamped to 0..255, or 0..127 by the decomposed flow.
        let out = OutQParams {
            scale: 0.25,
            zero_point: 0,
            quant_min: 0,
            quant_max: 127,
        };
        let r = run(f(1, -1), Flow::ConvertToReferenceFx, &x, out).unwrap();
        assert_eq!(r.values, Predicted::exact([0, 8, 255, 0]));
        let d = run(f(1, -1), Flow::ConvertToReferenceDecomposedFx, &x, out).unwrap();
        assert_eq!(d.values, Predicted::exact([0, 8, 127, 0]));
        assert!(run(f(1, -1), Flow::ConvertFx, &x, out).is_err());
    }
}
