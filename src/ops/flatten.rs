//! `flatten` on a quantized tensor (`torch.flatten(x, start_dim, end_dim)`, `nn.Flatten`; the
//! models' `flatten(x, 1)` before the classifier): data movement. `convert_fx` copies the codes
//! in logical order (a channels-last input is copied into NCHW order; `aten/src/ATen/native/
//! TensorShape.cpp: flatten` → `reshape`) and keeps the qparams. Reference flows: the float
//! flatten between the flow's dequantize and its quantize node with the output qparams
//! (`clamp(RNE(f32(dequantize(q)·f32(1/s'))) + zp')`, the identity when the qparams are the
//! input's).

use super::movement::{Movement, Step};
use super::{expect_inputs, Meta, Op, OutQParams, Plan};
use crate::engine::Ctx;
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

    /// Planned as the one-step [`Movement`]: codes in logical order, then the flow's
    /// requantization (the identity under the input's own qparams).
    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let x = expect_inputs(OP, inputs, 1)?[0];
        self.output_shape(x.shape)?;
        let step = Step::Flatten {
            start_dim: self.start_dim,
            end_dim: self.end_dim,
        };
        Movement::new(OP, vec![step]).plan_owned(ctx, inputs, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::flow::Flow;
    use crate::ops::{Output, Predicted, QTensor, Value};

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

    /// A graph's `flatten` without dims is `flatten(x, 0, -1)`.
    #[test]
    fn dims_default_to_all_of_them() {
        let f: Flatten = serde_json::from_str("{}").unwrap();
        assert_eq!((f.start_dim, f.end_dim), (0, -1));
        let f: Flatten = serde_json::from_str(r#"{"start_dim": 1}"#).unwrap();
        assert_eq!(f.output_shape(&[2, 3, 4]).unwrap(), [2, 12]);
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
        // convert_fx with other output qparams: FX ran nn.Flatten in float and quantized with the
        // flatten's own observer (torch.quantize_per_tensor, 0..255), as the reference flow.
        let q = run(f(1, -1), Flow::ConvertFx, &x, out).unwrap();
        assert_eq!(q.values, Predicted::exact([0, 8, 255, 0]));
    }
}
