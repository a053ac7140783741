//! `mean` over `(H, W)` of a 4-D quantized tensor (`x.mean([2, 3], keepdim)`, the global
//! average of MobileNet/ShuffleNet-like heads), output qparams equal to the input's. `dim`
//! must name dimensions 2 and 3 (any spelling: `[2, 3]`, `[3, 2]`, `[-2, -1]`, …); other
//! reductions are not modelled. `N = H·W`.
//!
//! Which kernel runs (`quantized/cpu/ReduceOps.cpp: mean_out_quantized_cpu`):
//! - qnnpack engine and `dim` literally `[2, 3]`: QNNPACK global average pooling
//!   (`qnnpack/src/global-average-pooling.c`, `q8gavgpool/*-sse2.c` in PyTorch's fork):
//!   `acc = Σ q − N·zp`, `scale = f32(in_s / f32(out_s·f32(N)))`,
//!   `q' = clamp(RNE(f32(f32(acc)·scale)) + zp, 0, 255)` (fp32, no fixed point);
//! - an NCHW-contiguous input (`is_contiguous()`: NCHW strides, or `C = 1`, or `H·W = 1`):
//!   `kernels/QuantizedOpKernels.cpp: qmean_inner_dim_kernel` on the raw codes,
//!   `q' = RNE(f32(f32(Σ q) / f32(N)))`. **PyTorch bug, modelled as an error:** the kernel
//!   allocates its result with the input's `suggest_memory_format()`, so a channels-last-strided
//!   input that is also NCHW-contiguous (`N×C×1×1` from a quantized conv, or `C = 1`) with
//!   `keepdim = False` raises "required rank 4 tensor to use channels_last format";
//! - otherwise (channels-last inputs) the float fallback: `dequantize` (`f32(f32(q − zp)·s)`),
//!   `at::mean` — ATen's cascade sum over the `H·W` positions in memory order
//!   ([`crate::numerics::sum::sum_hw`]) then `f32(sum / f32(N))` — and
//!   `quantize_per_tensor(·, in_s, in_zp)`: `clamp(RNE(f32(m·f32(1/s))) + zp, 0, 255)`.
//!
//! Reference flows: the float mean of the dequantized input (the same cascade sum in the input's
//! layout, `f32(sum / f32(N))`), then the flow's quantize node. Exact.

use super::avg::{qnnpack_requant, qnnpack_scale};
use super::PoolInput;
use super::{
    float_mean_hw, input, plan_input, quantize_out, quantize_rule, suggests_channels_last,
};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::numerics::quantize::{aten, rne};
use crate::ops::Value;
use crate::ops::{MemoryFormat, Meta, Op, OutQParams, Output, Plan, Predicted, QTensor, Rule};
use crate::{Error, Result};

/// `mean(dim, keepdim)` with `dim` naming dimensions 2 and 3.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanHw {
    pub dim: Vec<i64>,
    #[serde(default)]
    pub keepdim: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Qnnpack {
        scale: f32,
    },
    Inner,
    FloatFallback,
    /// Reference flows.
    Float,
}

impl Op for MeanHw {
    fn name(&self) -> &'static str {
        "mean"
    }

    fn plan<'a>(
        &'a self,
        ctx: &Ctx,
        inputs: &[Meta<'_>],
        out: Option<&OutQParams>,
    ) -> Result<Box<dyn Plan + 'a>> {
        let op = self.name();
        let PoolInput {
            format,
            dims,
            scale,
            out,
        } = plan_input(op, ctx, inputs, out)?;
        let mut wrapped: Vec<i64> = self
            .dim
            .iter()
            .map(|&d| if d < 0 { d + 4 } else { d })
            .collect();
        wrapped.sort_unstable();
        if wrapped != [2, 3] {
            return Err(Error::invalid(
                op,
                format!(
                    "dim {:?}: only the mean over dimensions 2 and 3 is modelled",
                    self.dim
                ),
            ));
        }
        let [_, c, h, w] = dims;
        let nchw_contiguous = format == MemoryFormat::Contiguous || c == 1 || h * w == 1;
        let path = if !ctx.flow.is_integer() {
            Path::Float
        } else if ctx.engine == Engine::Qnnpack && self.dim == [2, 3] {
            Path::Qnnpack {
                scale: qnnpack_scale(op, scale, out.scale, h * w)?,
            }
        } else if nchw_contiguous {
            if !self.keepdim && suggests_channels_last(format, dims) {
                return Err(Error::invalid(
                    op,
                    "PyTorch raises \"required rank 4 tensor to use channels_last format\": \
                     qmean_inner_dim_kernel allocates the 2-D result channels-last",
                ));
            }
            Path::Inner
        } else {
            Path::FloatFallback
        };
        let out_shape = if self.keepdim {
            vec![dims[0], c, 1, 1]
        } else {
            vec![dims[0], c]
        };
        Ok(Box::new(MeanPlan {
            path,
            flow: ctx.flow,
            out,
            in_dims: dims,
            out_shape,
        }))
    }
}

#[derive(Debug)]
struct MeanPlan {
    path: Path,
    flow: Flow,
    out: OutQParams,
    in_dims: [usize; 4],
    out_shape: Vec<usize>,
}

impl MeanPlan {
    /// The integer kernels' result from the plane's code sum `s` (input zero point `zp`).
    fn finish_int(&self, s: i64, zp: i64) -> Option<i64> {
        let n = (self.in_dims[2] * self.in_dims[3]) as i64;
        match self.path {
            Path::Qnnpack { scale } => {
                Some(qnnpack_requant(s - n * zp, scale, self.out.zero_point))
            }
            Path::Inner => Some(rne(s as f32 / n as f32) as i64),
            _ => None,
        }
    }

    /// The float fallback's result from the plane's f32 cascade sum `sum` of dequantized codes.
    fn finish_float(&self, sum: f32, scale: f64, zp: i64) -> Option<i64> {
        let n = (self.in_dims[2] * self.in_dims[3]) as f32;
        let inv = 1.0f32 / scale as f32;
        (self.path == Path::FloatFallback)
            .then(|| aten::quantize_avx2(sum / n, inv, zp as i32, 0, 255) as i64)
    }

    /// The `N·C` results in NC order.
    fn results(&self, q: &QTensor) -> Result<Vec<i64>> {
        let n = self.in_dims[2] * self.in_dims[3];
        let zp = q.zero_point;
        let sums = || {
            q.data
                .chunks(n)
                .map(|row| row.iter().map(|&v| v as i64).sum::<i64>())
        };
        match self.path {
            Path::Qnnpack { .. } | Path::Inner => Ok(sums()
                .map(|s| self.finish_int(s, zp).unwrap_or_default())
                .collect()),
            Path::FloatFallback => {
                let n = n as f32;
                Ok(float_mean_hw(Flow::ConvertFx, q, self.in_dims)
                    .into_iter()
                    .map(|m| self.finish_float(m * n, q.scale, zp).unwrap_or_default())
                    .collect())
            }
            Path::Float => float_mean_hw(self.flow, q, self.in_dims)
                .into_iter()
                .map(|m| quantize_out("mean", self.flow, &self.out, m))
                .collect(),
        }
    }
}

impl Plan for MeanPlan {
    fn rule(&self) -> Rule {
        match self.path {
            Path::Qnnpack { scale } => Rule::default()
                .with("path", "QNNPACK global average pooling")
                .with(
                    "average",
                    format!(
                        "q' = clamp(RNE(f32(acc·{scale:e})) + zp, 0, 255), acc = Σ q − H·W·zp, \
                         scale = f32(in_s / f32(out_s·H·W))"
                    ),
                ),
            Path::Inner => Rule::default()
                .with(
                    "path",
                    "ATen qmean_inner_dim_kernel (NCHW-contiguous input)",
                )
                .with(
                    "average",
                    "q' = RNE(f32(f32(Σ q) / f32(H·W))) on the raw codes",
                ),
            Path::FloatFallback => Rule::default()
                .with("path", "ATen float fallback (channels-last input)")
                .with(
                    "average",
                    "m = f32(cascade sum of dequantize(q) over H·W in memory order / f32(H·W)), \
                     q' = clamp(RNE(f32(m·f32(1/s))) + zp, 0, 255)",
                ),
            Path::Float => Rule::default()
                .with(
                    "float op",
                    "mean over (H, W) of dequantize(q): ATen's cascade sum in the input's layout, \
                     then f32(sum / f32(H·W))",
                )
                .with("quantize", quantize_rule(self.flow, &self.out)),
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q = input("mean", inputs[0], &self.in_dims)?;
        if matches!(self.path, Path::Float) {
            return crate::ops::exact_float_then_quantize(
                "mean",
                self.flow,
                &self.out,
                &self.out_shape,
                float_mean_hw(self.flow, q, self.in_dims),
            );
        }
        Ok(vec![Output::new(
            "int_repr",
            self.out_shape.clone(),
            Predicted::exact(self.results(q)?),
        )])
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = input("mean", inputs[0], &self.in_dims)?;
        let n = self.in_dims[2] * self.in_dims[3];
        let codes = q.data.get(i * n..(i + 1) * n).ok_or_else(|| {
            Error::shape("mean", format!("no result {i} in {:?}", self.out_shape))
        })?;
        Ok(vec![
            format!(
                "result {i} (n {}, c {}): codes {codes:?}",
                i / self.in_dims[1],
                i % self.in_dims[1]
            ),
            format!("prediction {}", self.results(q)?[i]),
            format!("rule: {}", self.rule()),
        ])
    }

    fn lowered(&self) -> Option<crate::ops::Lowered<'_>> {
        (self.path != Path::Float).then_some(crate::ops::Lowered::Window(self))
    }
}

impl crate::ops::WindowOp for MeanPlan {
    fn in_dims(&self) -> [usize; 4] {
        self.in_dims
    }
    fn out_dims(&self) -> [usize; 4] {
        [self.in_dims[0], self.in_dims[1], 1, 1]
    }
    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }
    fn reduction(&self) -> crate::ops::Reduction {
        match self.path {
            Path::FloatFallback => crate::ops::Reduction::FloatPlane {
                channels_last: true,
            },
            _ => crate::ops::Reduction::Sum,
        }
    }
    fn taps(&self, axis: usize, _o: usize) -> Vec<usize> {
        (0..self.in_dims[2 + axis]).collect()
    }
    fn finish(&self, _j: usize, acc: i64, sum: f32, scale: f64, zp: i64) -> Option<i64> {
        match self.path {
            Path::FloatFallback => self.finish_float(sum, scale, zp),
            _ => self.finish_int(acc, zp),
        }
    }
    fn finish_class(&self, _oy: usize, _ox: usize) -> Option<u64> {
        // One window per plane; the integer paths read only `acc`.
        (self.path != Path::FloatFallback).then_some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{same_qparams as same, test_ctx as ctx};
    use super::*;

    fn run(dim: &[i64], keepdim: bool, c: Ctx, x: &QTensor, out: OutQParams) -> Result<Output> {
        let op = MeanHw {
            dim: dim.to_vec(),
            keepdim,
        };
        super::super::test_run(&op, c, x, out)
    }

    fn ints(o: &Output) -> Vec<i64> {
        o.ints().unwrap().iter().map(|p| p.value()).collect()
    }

    #[test]
    fn trace_shows_each_results_image_channel_and_codes() {
        // [2, 3, 1, 3]: the codes of result r (image r / 3, channel r % 3) are 3r..3r + 3.
        let x = QTensor::new(vec![2, 3, 1, 3], (0..18).collect(), 1.0, 0);
        let op = MeanHw {
            dim: vec![2, 3],
            keepdim: false,
        };
        let v = Value::Quantized(x.clone());
        let c = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let plan = op.plan(&c, &[v.meta()], Some(&same(&x))).unwrap();
        let want = ints(&plan.predict(&[&v]).unwrap()[0]);
        for (r, w) in want.iter().enumerate() {
            let t = plan.trace(&[&v], 0, r).unwrap();
            let codes: Vec<u8> = (3 * r as u8..3 * r as u8 + 3).collect();
            let (n, ch) = (r / 3, r % 3);
            assert_eq!(t[0], format!("result {r} (n {n}, c {ch}): codes {codes:?}"));
            assert_eq!(t[1], format!("prediction {w}"));
        }
        assert!(plan.trace(&[&v], 0, 6).is_err());
    }

    #[test]
    fn each_path_rounds_its_own_way() {
        // Two channels of 2×2, zp 1, scale 1. Channel 0: codes 2, 2, 2, 4 (Σ 10, acc 6):
        // inner kernel RNE(10/4 = 2.5) = 2; QNNPACK 1 + RNE(1.5) = 3. Channel 1: all 1 → 1.
        let mut x = QTensor::new(vec![1, 2, 2, 2], vec![2, 2, 2, 4, 1, 1, 1, 1], 1.0, 1);
        let fx = |e| ctx(Flow::ConvertFx, e);
        let o = run(&[2, 3], false, fx(Engine::Fbgemm), &x, same(&x)).unwrap();
        assert_eq!((ints(&o), o.shape.clone()), (vec![2, 1], vec![1, 2]));
        let o = run(&[2, 3], true, fx(Engine::Qnnpack), &x, same(&x)).unwrap();
        assert_eq!((ints(&o), o.shape.clone()), (vec![3, 1], vec![1, 2, 1, 1]));
        // QNNPACK only for dim literally [2, 3].
        let o = run(&[-1, -2], false, fx(Engine::Qnnpack), &x, same(&x)).unwrap();
        assert_eq!(ints(&o), [2, 1]);
        // Channels-last: the float fallback, mean 1.5 of (q − zp) → RNE(1.5) + 1 = 3.
        x.memory_format = MemoryFormat::ChannelsLast;
        let o = run(&[2, 3], false, fx(Engine::X86), &x, same(&x)).unwrap();
        assert_eq!(ints(&o), [3, 1]);
        // Reference flows: the same float mean, quantized with the output qparams.
        let half = OutQParams {
            scale: 0.5,
            ..same(&x)
        };
        let r = run(
            &[2, 3],
            true,
            ctx(Flow::ConvertToReferenceFx, Engine::X86),
            &x,
            half,
        );
        assert_eq!(ints(&r.unwrap()), [4, 1]);
    }

    #[test]
    fn channels_last_1x1_without_keepdim_raises_in_pytorch() {
        let mut x = QTensor::new(vec![2, 3, 1, 1], vec![1, 2, 3, 4, 5, 6], 0.1, 0);
        let fx = |e| ctx(Flow::ConvertFx, e);
        // NCHW strides: the inner kernel, the identity.
        let o = run(&[2, 3], false, fx(Engine::Onednn), &x, same(&x)).unwrap();
        assert_eq!(ints(&o), [1, 2, 3, 4, 5, 6]);
        x.memory_format = MemoryFormat::ChannelsLast;
        assert!(run(&[2, 3], false, fx(Engine::Onednn), &x, same(&x)).is_err());
        assert!(run(&[2, 3], true, fx(Engine::Onednn), &x, same(&x)).is_ok());
        // QNNPACK is unaffected.
        assert!(run(&[2, 3], false, fx(Engine::Qnnpack), &x, same(&x)).is_ok());
        // Other reductions, other qparams, 3-D inputs: errors.
        assert!(run(&[1, 2], false, fx(Engine::X86), &x, same(&x)).is_err());
        assert!(run(&[2, 2], false, fx(Engine::X86), &x, same(&x)).is_err());
        let other = OutQParams {
            zero_point: 3,
            ..same(&x)
        };
        assert!(run(&[2, 3], true, fx(Engine::X86), &x, other).is_err());
        let flat = QTensor::new(vec![1, 2, 2], vec![0; 4], 1.0, 0);
        assert!(run(&[1, 2], true, fx(Engine::X86), &flat, same(&flat)).is_err());
    }
}
