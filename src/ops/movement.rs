//! Ops that only move values: `flatten`, `view` / `reshape`, `transpose`, `contiguous`, `dropout`
//! in eval mode, `chunk` (one chunk), and chains of them (ShuffleNet's channel shuffle:
//! `view → transpose → contiguous → view`).
//!
//! On a quantized tensor (`convert_fx`) they keep the input's qparams and move its codes
//! (`aten/src/ATen/native/TensorShape.cpp`; `dropout` is the identity in eval mode). Where FX
//! leaves them in a float chain (the reference flows, and `chunk` in every flow) the chain is
//! dequantize, move, then the flow's quantize with the qparams recorded after it; the moved floats
//! are the dequantized inputs (exact). Both are one computation: gather, dequantize, quantize
//! (with the input's own qparams the round trip returns every code unchanged).
//!
//! Values are in logical row-major order (the golden's `int_repr` is contiguous).

use super::{expect_inputs, expect_out, Meta, Op, OutQParams, Output, Plan, Rule, Value};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};
use serde::Deserialize;

/// One step of a movement chain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `view` / `reshape` to this shape (same element count).
    Reshape { shape: Vec<usize> },
    /// `flatten(start_dim, end_dim)` (negative dims count from the end).
    Flatten { start_dim: i64, end_dim: i64 },
    /// Swaps two dims (negative dims count from the end).
    Transpose { dim0: i64, dim1: i64 },
    /// Same values.
    Contiguous,
    /// Eval-mode dropout: the identity.
    Dropout,
    /// `chunk(chunks, dim)[index]`: chunks of `ceil(size / chunks)` along `dim`, the last one
    /// shorter.
    Chunk {
        chunks: usize,
        dim: i64,
        index: usize,
    },
}

/// A chain of movement steps applied to one quantized input: the input's codes at the moved
/// positions, requantized with the output's qparams.
///
/// In `convert_fx` a shape op on a quantized tensor (`x.view(...)`, `torch.flatten`) keeps the
/// input's qparams, and the requantize is the identity. But FX leaves some movement in a float
/// chain — `chunk`, and the `nn.Flatten` module, which has no quantized counterpart: the graph
/// dequantizes, moves, and quantizes with the op's own observer
/// (`torch/ao/quantization/fx/convert.py`, `_lower_to_native_backend.py` lower only the ops of
/// their pattern tables). That observer's qparams differ from the input's where it saw other
/// values: after an `avg_pool2d`, which shares its input's observer, or in QAT after the
/// previous op's fake-quant step. Both cases are this op; the recorded qparams say which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    name: &'static str,
    steps: Vec<Step>,
}

impl Movement {
    /// A movement op named `name` (reports) doing `steps` in order.
    pub fn new(name: &'static str, steps: Vec<Step>) -> Movement {
        Movement { name, steps }
    }

    /// A value passed from one recorded activation to the next with the qparams recorded after
    /// it (`convert_fx` included): dequantize, then quantize.
    pub fn requantize(name: &'static str) -> Movement {
        Movement {
            name,
            steps: Vec::new(),
        }
    }

    /// The output shape and, for each output element, the index of the input element it holds.
    pub fn gather(&self, shape: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
        let n: usize = shape.iter().product();
        let mut shape = shape.to_vec();
        let mut index: Vec<usize> = (0..n).collect();
        for step in &self.steps {
            (shape, index) = apply(self.name, step, shape, index)?;
        }
        Ok((shape, index))
    }
}

/// `d` wrapped as ATen's `maybe_wrap_dim` does (`c10/core/WrapDimMinimal.h`): a 0-d tensor
/// takes dims -1 and 0.
fn dim(name: &str, d: i64, rank: usize) -> Result<usize> {
    let r = (rank as i64).max(1);
    let v = if d < 0 { d + r } else { d };
    if (0..r).contains(&v) {
        Ok(v as usize)
    } else {
        Err(Error::invalid(
            name,
            format!("dim {d} out of range for rank {rank}"),
        ))
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Applies one step to `(shape, index)`, where `index[i]` is the input element at position `i`.
fn apply(
    name: &str,
    step: &Step,
    shape: Vec<usize>,
    index: Vec<usize>,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = index.len();
    Ok(match step {
        Step::Contiguous | Step::Dropout => (shape, index),
        Step::Reshape { shape: to } => {
            if to.iter().product::<usize>() != n {
                return Err(Error::shape(
                    name,
                    format!("cannot view {shape:?} as {to:?}"),
                ));
            }
            (to.clone(), index)
        }
        Step::Flatten { start_dim, end_dim } => {
            if shape.is_empty() {
                return Ok((vec![n], index));
            }
            let (a, b) = (
                dim(name, *start_dim, shape.len())?,
                dim(name, *end_dim, shape.len())?,
            );
            if a > b {
                return Err(Error::invalid(name, "flatten: start_dim after end_dim"));
            }
            let mut to = shape[..a].to_vec();
            to.push(shape[a..=b].iter().product());
            to.extend_from_slice(&shape[b + 1..]);
            (to, index)
        }
        Step::Transpose { dim0, dim1 } => {
            let (a, b) = (
                dim(name, *dim0, shape.len())?,
                dim(name, *dim1, shape.len())?,
            );
            if shape.is_empty() {
                // A 0-d tensor: dims 0 and -1 both name its one value.
                return Ok((shape, index));
            }
            let mut to = shape.clone();
            to.swap(a, b);
            let src = strides(&shape);
            let dst = strides(&to);
            let mut out = vec![0; n];
            for (i, o) in out.iter_mut().enumerate() {
                // Coordinates of output element i, mapped back to the input's.
                let mut off = 0;
                for (k, &d) in dst.iter().enumerate() {
                    let c = (i / d) % to[k];
                    let src_k = if k == a {
                        b
                    } else if k == b {
                        a
                    } else {
                        k
                    };
                    off += c * src[src_k];
                }
                *o = index[off];
            }
            (to, out)
        }
        Step::Chunk {
            chunks,
            dim: d,
            index: which,
        } => {
            let a = dim(name, *d, shape.len())?;
            if *chunks == 0 || shape.is_empty() {
                return Err(Error::invalid(name, "chunk: zero chunks or a 0-d tensor"));
            }
            let size = shape[a];
            let per = size.div_ceil(*chunks);
            let lo = which * per;
            if per == 0 || lo >= size {
                return Err(Error::invalid(
                    name,
                    format!("chunk {which} of {chunks} along a dim of {size} does not exist"),
                ));
            }
            let hi = (lo + per).min(size);
            let mut to = shape.clone();
            to[a] = hi - lo;
            let inner: usize = shape[a + 1..].iter().product();
            let outer: usize = shape[..a].iter().product();
            let mut out = Vec::with_capacity(outer * (hi - lo) * inner);
            for o in 0..outer {
                for c in lo..hi {
                    let base = (o * size + c) * inner;
                    out.extend_from_slice(&index[base..base + inner]);
                }
            }
            (to, out)
        }
    })
}

impl Movement {
    /// [`Op::plan`], for callers that build the movement on the fly (the plan owns its data).
    pub fn plan_owned(
        &self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'static>> {
        let input = expect_inputs(self.name, inputs, 1)?[0];
        let (scale, zero_point) = input.qparams(self.name)?;
        validate_qparams("input qparams", scale, zero_point, 0, 255)?;
        let out = *expect_out(self.name, out)?;
        validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
        let (shape, index) = self.gather(input.shape)?;
        Ok(Box::new(MovementPlan {
            flow: ctx.flow,
            out,
            clamp: ctx.flow.clamp(out.quant_min, out.quant_max),
            shape,
            index,
        }))
    }
}

impl Op for Movement {
    fn name(&self) -> &'static str {
        self.name
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        self.plan_owned(ctx, inputs, out)
    }
}

#[derive(Debug)]
struct MovementPlan {
    flow: Flow,
    out: OutQParams,
    clamp: (i64, i64),
    shape: Vec<usize>,
    index: Vec<usize>,
}

impl Plan for MovementPlan {
    fn rule(&self) -> Rule {
        let (lo, hi) = self.clamp;
        Rule::default()
            .with("move", "output codes are input codes at permuted positions")
            .with(
                "requantize",
                format!(
                    "{} dequantize, then its quantize with the recorded qparams, clamp {lo}..{hi} \
                     (the identity when they equal the input's)",
                    self.flow.name()
                ),
            )
    }

    /// `pre_quant`: the moved dequantized values (exact); `int_repr`: them quantized.
    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q = inputs[0].quantized("input")?;
        if q.data.len() < self.index.len() || q.data.len() != q.shape.iter().product::<usize>() {
            return Err(Error::shape(
                "movement input",
                "data length differs from the plan",
            ));
        }
        let f: Vec<f32> = self
            .index
            .iter()
            .map(|&i| {
                self.flow
                    .dequantize(q.data[i] as i64, q.scale, q.zero_point)
            })
            .collect();
        super::exact_float_then_quantize("movement", self.flow, &self.out, &self.shape, f)
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = inputs[0].quantized("input")?;
        let Some((j, v)) = self.index.get(i).and_then(|&j| Some((j, *q.data.get(j)?))) else {
            return Err(Error::shape(
                "movement",
                format!("no output element {i} in {:?}", self.shape),
            ));
        };
        let x = self.flow.dequantize(v as i64, q.scale, q.zero_point);
        let (lo, hi) = self.clamp;
        let y = self
            .flow
            .quantize(x, self.out.scale, self.out.zero_point, lo, hi)
            .map_or_else(|| "undefined".to_string(), |y| y.to_string());
        Ok(vec![
            format!(
                "output element {i} ← input element {j}: q = {v}, scale {}, zero point {}",
                q.scale, q.zero_point
            ),
            format!(
                "x = {x:e}; quantize with scale {}, zero point {}, clamp {lo}..{hi}: {y}",
                self.out.scale, self.out.zero_point
            ),
        ])
    }

    fn lowered(&self) -> Option<super::Lowered<'_>> {
        Some(super::Lowered::Pointwise(self))
    }
}

/// One function: the flow's dequantize then its quantize with the output qparams (the identity
/// when they are the input's), on the code at the gathered position.
impl super::Pointwise for MovementPlan {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn arity(&self) -> usize {
        1
    }
    fn functions(&self) -> usize {
        1
    }
    fn source(&self, i: usize) -> (usize, [(usize, usize); 2]) {
        (0, [(0, self.index[i]), (0, 0)])
    }
    fn value(&self, _f: usize, qparams: &[(f64, i64)], [q, _]: [u8; 2]) -> Option<i64> {
        let (scale, zero_point) = *qparams.first()?;
        let x = self.flow.dequantize(q as i64, scale, zero_point);
        let (lo, hi) = self.clamp;
        self.flow
            .quantize(x, self.out.scale, self.out.zero_point, lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::QTensor;

    fn gather(steps: Vec<Step>, shape: &[usize]) -> (Vec<usize>, Vec<usize>) {
        Movement::new("m", steps).gather(shape).unwrap()
    }

    #[test]
    fn transpose_and_channel_shuffle_move_the_right_elements() {
        // [[0, 1, 2], [3, 4, 5]]ᵀ = [[0, 3], [1, 4], [2, 5]].
        let (s, i) = gather(vec![Step::Transpose { dim0: 0, dim1: 1 }], &[2, 3]);
        assert_eq!((s, i), (vec![3, 2], vec![0, 3, 1, 4, 2, 5]));
        // Channel shuffle of 4 channels (1 pixel) in 2 groups: channels 0, 2, 1, 3.
        let shuffle = vec![
            Step::Reshape {
                shape: vec![1, 2, 2, 1, 1],
            },
            Step::Transpose { dim0: 1, dim1: 2 },
            Step::Contiguous,
            Step::Reshape {
                shape: vec![1, 4, 1, 1],
            },
        ];
        assert_eq!(gather(shuffle, &[1, 4, 1, 1]).1, vec![0, 2, 1, 3]);
    }

    #[test]
    fn chunk_and_flatten_follow_torch() {
        // chunk(2, dim=1) of 5 channels: 3 then 2; each channel has 2 values.
        let c = |index| Step::Chunk {
            chunks: 2,
            dim: 1,
            index,
        };
        assert_eq!(
            gather(vec![c(0)], &[1, 5, 2]),
            (vec![1, 3, 2], (0..6).collect())
        );
        assert_eq!(
            gather(vec![c(1)], &[1, 5, 2]),
            (vec![1, 2, 2], (6..10).collect())
        );
        let f = Step::Flatten {
            start_dim: 1,
            end_dim: -1,
        };
        assert_eq!(gather(vec![f], &[2, 3, 4]).0, vec![2, 12]);
    }

    #[test]
    fn bad_steps_are_errors() {
        let m = |s| Movement::new("m", vec![s]).gather(&[2, 3]);
        assert!(m(Step::Reshape { shape: vec![5] }).is_err());
        assert!(m(Step::Transpose { dim0: 0, dim1: 2 }).is_err());
        assert!(m(Step::Chunk {
            chunks: 0,
            dim: 0,
            index: 0
        })
        .is_err());
        assert!(m(Step::Chunk {
            chunks: 4,
            dim: 1,
            index: 3
        })
        .is_err());
    }
    #[test]
    fn transpose_of_three_dims_maps_every_coordinate() {
        // [2, 3, 4] transposed (0, 2) → [4, 3, 2]: out[k][j][i] = in[i][j][k].
        let want: Vec<usize> = (0..24)
            .map(|o| {
                let (k, j, i) = (o / 6, (o / 2) % 3, o % 2);
                i * 12 + j * 4 + k
            })
            .collect();
        for (d0, d1) in [(0, 2), (-1, -3), (2, 0)] {
            let (s, i) = gather(vec![Step::Transpose { dim0: d0, dim1: d1 }], &[2, 3, 4]);
            assert_eq!((s, &i), (vec![4, 3, 2], &want), "({d0}, {d1})");
        }
        // (1, 2) leaves dim 0 where it is: out[a][k][j] = in[a][j][k].
        let (s, i) = gather(vec![Step::Transpose { dim0: 1, dim1: 2 }], &[2, 3, 4]);
        let want: Vec<usize> = (0..24)
            .map(|o| (o / 12) * 12 + (o % 3) * 4 + (o / 3) % 4)
            .collect();
        assert_eq!((s, i), (vec![2, 4, 3], want));
        // A 0-d tensor transposes to itself; dim 1 does not exist.
        assert_eq!(
            gather(vec![Step::Transpose { dim0: 0, dim1: -1 }], &[]),
            (vec![], vec![0])
        );
        let m = Movement::new("m", vec![Step::Transpose { dim0: 0, dim1: 1 }]);
        assert!(m.gather(&[]).is_err());
    }

    #[test]
    fn chunk_takes_its_slice_of_every_outer_index() {
        // [2, 5, 2] chunk(2, dim=1)[1]: channels 3 and 4 of each image.
        let c = |chunks, dim, index| Step::Chunk { chunks, dim, index };
        let want = (vec![2, 2, 2], [6, 7, 8, 9, 16, 17, 18, 19].to_vec());
        assert_eq!(gather(vec![c(2, 1, 1)], &[2, 5, 2]), want);
        assert_eq!(gather(vec![c(2, -2, 1)], &[2, 5, 2]), want);
        // chunk(3) of 4: two chunks of 2, the third does not exist; chunk(3) of 5: 2, 2, 1.
        assert!(Movement::new("m", vec![c(3, 0, 2)]).gather(&[4]).is_err());
        assert_eq!(gather(vec![c(3, 0, 1)], &[4]), (vec![2], vec![2, 3]));
        assert_eq!(gather(vec![c(3, 0, 2)], &[5]), (vec![1], vec![4]));
        assert!(Movement::new("m", vec![c(1, 0, 0)]).gather(&[]).is_err());
    }

    #[test]
    fn flatten_joins_the_named_dims() {
        let f = |start_dim, end_dim| Step::Flatten { start_dim, end_dim };
        let shape = |s| gather(vec![s], &[2, 3, 4]).0;
        assert_eq!(shape(f(0, 1)), [6, 4]);
        assert_eq!(shape(f(-2, -1)), [2, 12]);
        assert_eq!(shape(f(1, 1)), [2, 3, 4]);
        assert_eq!(shape(f(0, -1)), [24]);
        // A 0-d tensor flattens to one value.
        assert_eq!(gather(vec![f(0, -1)], &[]), (vec![1], vec![0]));
        let m = |s| Movement::new("m", vec![s]).gather(&[2, 3, 4]);
        assert!(m(f(2, 1)).is_err());
        assert!(m(f(0, 3)).is_err());
        assert!(m(f(-4, 0)).is_err());
    }

    fn plan(flow: Flow, steps: Vec<Step>, x: &QTensor, out: OutQParams) -> Box<dyn Plan> {
        let c = crate::ops::pool::test_ctx(flow, crate::engine::Engine::Fbgemm);
        let v = Value::Quantized(x.clone());
        Movement::new("m", steps)
            .plan_owned(&c, &[v.meta()], Some(&out))
            .unwrap()
    }

    #[test]
    fn the_moved_codes_are_requantized_and_traced() {
        // Codes 0..6 of [2, 3] (scale 1, zp 0) transposed, requantized at scale 2, zp 1:
        // q' = RNE(x / 2) + 1, clamped to the flow's range.
        let x = QTensor::new(vec![2, 3], vec![0, 1, 2, 3, 4, 255], 1.0, 0);
        let out = OutQParams {
            scale: 2.0,
            zero_point: 1,
            quant_min: 0,
            quant_max: 127,
        };
        let steps = || vec![Step::Transpose { dim0: 0, dim1: 1 }];
        let v = Value::Quantized(x.clone());
        for (flow, hi) in [
            (Flow::ConvertFx, 255),
            (Flow::ConvertToReferenceDecomposedFx, 127),
        ] {
            let p = plan(flow, steps(), &x, out);
            let got = p.predict(&[&v]).unwrap();
            let q = got.iter().find(|o| o.name == "int_repr").unwrap();
            let moved = [0i64, 3, 1, 4, 2, 255];
            let want: Vec<i64> = moved
                .iter()
                .map(|&c| (crate::numerics::quantize::rne(c as f32 / 2.0) as i64 + 1).min(hi))
                .collect();
            let ints: Vec<i64> = q.ints().unwrap().iter().map(|p| p.value()).collect();
            assert_eq!(ints, want, "{flow:?}");
            assert_eq!(q.shape, [3, 2]);
            let t = p.trace(&[&v], 0, 5).unwrap();
            assert_eq!(
                t[0],
                "output element 5 ← input element 5: q = 255, scale 1, zero point 0"
            );
            assert_eq!(
                t[1],
                format!(
                    "x = 2.55e2; quantize with scale 2, zero point 1, clamp 0..{hi}: {}",
                    want[5]
                )
            );
            assert!(p.trace(&[&v], 0, 6).is_err());
            let rule = p.rule();
            assert!(
                rule.lines
                    .iter()
                    .any(|(_, t)| t.contains(&format!("clamp 0..{hi}"))),
                "{rule:?}"
            );
        }
        // Data that is not the planned shape is an error.
        let p = plan(Flow::ConvertFx, steps(), &x, out);
        let short = Value::Quantized(QTensor {
            data: x.data[..5].to_vec(),
            ..x.clone()
        });
        assert!(p.predict(&[&short]).is_err());
        // Fewer values than the plan moves, in a tensor consistent with its own shape; and a
        // tensor whose values do not fill its shape.
        let other = Value::Quantized(QTensor::new(vec![5], x.data[..5].to_vec(), 1.0, 0));
        assert!(p.predict(&[&other]).is_err());
        let long = Value::Quantized(QTensor {
            data: [&x.data[..], &[0]].concat(),
            ..x.clone()
        });
        assert!(p.predict(&[&long]).is_err());
    }
}
