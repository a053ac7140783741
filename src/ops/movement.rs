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

fn dim(name: &str, d: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let v = if d < 0 { d + r } else { d };
    if (0..r.max(1)).contains(&v) {
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
            return Ok(Vec::new());
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
}
