//! `adaptive_avg_pool2d` on a quantized tensor (`nn.AdaptiveAvgPool2d`, `F.adaptive_avg_pool2d`;
//! `output_size`), output qparams equal to the input's.
//!
//! Window of output `(oh, ow)`: rows `[⌊oh·H/OH⌋, ⌈(oh+1)·H/OH⌉)`, columns likewise, `kh × kw`
//! elements, never padded. The output may be larger than the input. ATen's quantized kernels
//! compute the bounds in f32 ([`crate::geometry::adaptive_bounds_f32`],
//! `quantized/cpu/AdaptiveAveragePooling.cpp: start_index / end_index`); QNNPACK's kernel = stride
//! and the float op's integer bounds are exact. The two differ once `o·H` passes 2²⁴: a window
//! may then start or end one element off, and the last one may end past the axis, where ATen
//! reads on by memory offset (the next row, channel or pixel; past the tensor, whatever follows
//! it: such results are predicted as the range every code there allows).
//!
//! - ATen NCHW (`quantized/cpu/AdaptiveAveragePooling.cpp: adaptive_avg_pool_single_out_frame`):
//!   the raw codes, no zero point: `q' = RNE(f32(f32(Σ q) · r))`, `r = f32(f32(1/kh)/kw)`; no
//!   clamp (the result stays in 0..255).
//! - ATen NHWC (`kernels/QuantizedOpKernels.cpp: _qadaptive_avg_pool_kernel`, the AVX2 build):
//!   `m = f32(f32(in_s/out_s) / (kh·kw))`, `acc = Σ q − kh·kw·zp`; vector channels
//!   (`quantize_vec`) and the others (`quantize_val`) both run FBGEMM's `Quantize` with scale
//!   `1/m`: `q' = clamp(zp + RNE(f32(acc · f32(1/f32(1/m)))), 0, 255)`. See [`super`] for the
//!   scrambled output of NCHW-strided `N×C×1×1` inputs.
//! - QNNPACK (qnnpack engine, quint8, `H % OH == 0`, `W % OW == 0` and not the identity;
//!   `enable_qnnpack_for_ada_avgpool`): the QNNPACK average pool with kernel = stride =
//!   `(H/OH, W/OW)`, no padding ([`super::avg`]).
//! - Reference flows (`native/AdaptiveAveragePooling.cpp: adaptive_avg_pool2d_symint`): a 1×1
//!   output is `x.mean((-1, -2), keepdim=True)` — ATen's cascade sum in its layout's order
//!   ([`crate::numerics::sum::sum_hw`]) then `f32(sum / f32(H·W))`; other sizes run
//!   `native/cpu/AdaptiveAvgPoolKernel.cpp`: an f32 window sum from 0 (rows outer), then
//!   `f32(f32(sum/kh)/kw)` (NCHW) or, channels-last, `f32(sum/f32(kh·kw))` for the first
//!   `C/8·8` channels (8-lane vectors of the AVX2 build) and `/kh/kw` for the rest. Then the
//!   flow's quantize node. Exact.

use super::avg::{qnnpack_requant, qnnpack_scale};
use super::AtenLayout;
use super::{
    float_mean_hw, input, plan_input, predict_ints, quantize_out, quantize_rule, PoolInput,
};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::geometry::{adaptive_bounds, adaptive_bounds_f32};
use crate::numerics::bound::Pred;
use crate::numerics::quantize::{aten, rne};
use crate::ops::{MemoryFormat, Meta, Op, OutQParams, Output, Plan};
use crate::ops::{QTensor, Rule, Value};
use crate::{Error, Result};

/// `adaptive_avg_pool2d` with PyTorch's `output_size` `(OH, OW)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveAvgPool2d {
    pub output_size: [usize; 2],
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Aten(AtenLayout),
    /// QNNPACK average pooling with kernel = stride `kernel` and its fp32 scale.
    Qnnpack {
        kernel: [usize; 2],
        scale: f32,
    },
    /// Reference flows; `channels_last`: the input's memory format.
    Float {
        channels_last: bool,
    },
}

impl Op for AdaptiveAvgPool2d {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d"
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
        let [oh, ow] = self.output_size;
        if oh == 0 || ow == 0 {
            return Err(Error::invalid(
                op,
                format!("output_size {:?}: empty outputs are not modelled", [oh, ow]),
            ));
        }
        let [h, w] = [dims[2], dims[3]];
        let path = if !ctx.flow.is_integer() {
            Path::Float {
                channels_last: format == MemoryFormat::ChannelsLast,
            }
        } else if ctx.engine == Engine::Qnnpack
            && !(h == oh && w == ow)
            && h % oh == 0
            && w % ow == 0
        {
            let kernel = [h / oh, w / ow];
            Path::Qnnpack {
                kernel,
                scale: qnnpack_scale(op, scale, out.scale, kernel[0] * kernel[1])?,
            }
        } else {
            Path::Aten(AtenLayout::of(format, dims))
        };
        Ok(Box::new(AdaptivePlan {
            path,
            flow: ctx.flow,
            out,
            in_dims: dims,
            out_dims: [dims[0], dims[1], oh, ow],
        }))
    }
}

#[derive(Debug)]
struct AdaptivePlan {
    path: Path,
    flow: Flow,
    out: OutQParams,
    in_dims: [usize; 4],
    out_dims: [usize; 4],
}

/// Logical output element `j`: image, channel, window rows and columns.
struct Window {
    b: usize,
    c: usize,
    rows: (usize, usize),
    cols: (usize, usize),
}

impl Window {
    fn area(&self) -> usize {
        (self.rows.1 - self.rows.0) * (self.cols.1 - self.cols.0)
    }
}

impl AdaptivePlan {
    /// Whether some window's bounds end past its axis: ATen's f32 bounds can, once `o·in` passes
    /// 2²⁴ (the last window of 5343 → 3489 ends at 5344).
    fn overreaches(&self) -> bool {
        let [_, _, oh, ow] = self.out_dims;
        let [_, _, h, w] = self.in_dims;
        let bounds = self.bounds();
        [(oh, h), (ow, w)]
            .into_iter()
            .any(|(out, size)| (0..out).any(|o| bounds(o, out, size).1 > size))
    }

    fn window(&self, j: usize) -> Window {
        let [_, c, oh, ow] = self.out_dims;
        let [_, _, h, w] = self.in_dims;
        let (x, y) = (j % ow, (j / ow) % oh);
        let bounds = self.bounds();
        Window {
            b: j / (ow * oh * c),
            c: (j / (ow * oh)) % c,
            rows: bounds(y, oh, h),
            cols: bounds(x, ow, w),
        }
    }

    /// How this path bounds a window along one axis: ATen's quantized kernels in f32, QNNPACK
    /// (kernel = stride, sizes that divide) and the float op exactly.
    fn bounds(&self) -> fn(usize, usize, usize) -> (usize, usize) {
        match self.path {
            Path::Aten(_) => adaptive_bounds_f32,
            _ => adaptive_bounds,
        }
    }

    /// The codes an integer kernel reads for this window (rows outer). ATen's kernels address
    /// row `y`, column `x` of the window's plane by its memory offset, so an f32 bound past the
    /// axis (`overreaches`) reads the next element in memory (the next row, channel or pixel);
    /// `None` where that offset lies past the tensor (PyTorch reads whatever follows it).
    fn codes<'q>(&self, q: &'q QTensor, win: &Window) -> impl Iterator<Item = Option<u8>> + 'q {
        let [n, c, h, w] = self.in_dims;
        let nhwc = matches!(self.path, Path::Aten(AtenLayout::Nhwc { .. }));
        let (b, ch, cols, rows) = (win.b, win.c, win.cols, win.rows);
        (rows.0..rows.1).flat_map(move |y| {
            (cols.0..cols.1).map(move |x| {
                let logical = if nhwc {
                    let off = ((b * h + y) * w + x) * c + ch;
                    let (pixel, c2) = (off / c, off % c);
                    let (x2, y2, b2) = (pixel % w, (pixel / w) % h, pixel / (w * h));
                    (b2 < n).then_some(((b2 * c + c2) * h + y2) * w + x2)
                } else {
                    Some(((b * c + ch) * h + y) * w + x)
                };
                logical.and_then(|i| q.data.get(i).copied())
            })
        })
    }

    fn source(&self, i: usize) -> usize {
        match self.path {
            Path::Aten(l) => l.source_index(i, self.out_dims),
            _ => i,
        }
    }

    /// The reference flows' float op on the dequantized input: every logical result, in f32.
    fn float_results(&self, q: &QTensor, channels_last: bool) -> Vec<f32> {
        if self.out_dims[2..] == [1, 1] {
            return float_mean_hw(self.flow, q, self.in_dims);
        }
        let dq: Vec<f32> = q
            .data
            .iter()
            .map(|&v| self.flow.dequantize(v as i64, q.scale, q.zero_point))
            .collect();
        let [_, c, h, w] = self.in_dims;
        let vector_channels = if channels_last { c / 8 * 8 } else { 0 };
        let n: usize = self.out_dims.iter().product();
        (0..n)
            .map(|j| {
                let win = self.window(j);
                let base = (win.b * c + win.c) * h;
                let mut sum = 0.0f32;
                for y in win.rows.0..win.rows.1 {
                    for x in win.cols.0..win.cols.1 {
                        sum += dq[(base + y) * w + x];
                    }
                }
                let (kh, kw) = (win.rows.1 - win.rows.0, win.cols.1 - win.cols.0);
                if win.c < vector_channels {
                    sum / (kh * kw) as f32
                } else {
                    sum / kh as f32 / kw as f32
                }
            })
            .collect()
    }

    /// The integer kernels' prediction for logical result `j`.
    fn element(&self, q: &QTensor, j: usize) -> Result<Pred> {
        let win = self.window(j);
        let (mut sum, mut unknown) = (0i64, 0i64);
        for v in self.codes(q, &win) {
            match v {
                Some(v) => sum += i64::from(v),
                None => unknown += 1,
            }
        }
        let exact = |sum| match self.requant(&win, sum, q.scale, q.zero_point)? {
            Pred::Exact(v) => Ok(v),
            p @ Pred::Ambiguous { .. } => Err(Error::invalid(
                "adaptive_avg_pool2d",
                format!("unexpected ambiguous requantization {p:?}"),
            )),
        };
        let lo = exact(sum)?;
        if unknown == 0 {
            return Ok(Pred::Exact(lo));
        }
        // Codes read past the tensor are unknown (0..=255 each); both averages are monotone.
        let hi = exact(sum + 255 * unknown)?;
        Ok(Pred::Ambiguous {
            lo: lo.min(hi),
            hi: lo.max(hi),
        })
    }

    /// The integer kernels' output for a window whose codes sum to `sum` (input qparams
    /// `scale`, `zp`).
    fn requant(&self, win: &Window, sum: i64, scale: f64, zp: i64) -> Result<Pred> {
        let area = win.area();
        let acc = sum - area as i64 * zp;
        Ok(Pred::Exact(match self.path {
            Path::Aten(AtenLayout::Nchw) => {
                let r =
                    1.0f32 / (win.rows.1 - win.rows.0) as f32 / (win.cols.1 - win.cols.0) as f32;
                rne(sum as f32 * r) as i64
            }
            Path::Aten(AtenLayout::Nhwc { .. }) => {
                let m = (scale as f32 / self.out.scale as f32) / area as f32;
                aten::quantize_scalar(acc as f32, 1.0f32 / m, zp as i32, 0, 255)
                    .ok_or_else(|| Error::invalid("adaptive_avg_pool2d", "NaN multiplier"))?
            }
            Path::Qnnpack { scale, .. } => qnnpack_requant(acc, scale, self.out.zero_point),
            Path::Float { .. } => {
                return Err(Error::invalid(
                    "adaptive_avg_pool2d",
                    "the reference flows are predicted as a whole",
                ))
            }
        }))
    }

    /// Every logical result.
    fn results(&self, q: &QTensor) -> Result<Vec<Pred>> {
        match self.path {
            Path::Float { channels_last } => self
                .float_results(q, channels_last)
                .into_iter()
                .map(|v| {
                    quantize_out("adaptive_avg_pool2d", self.flow, &self.out, v).map(Pred::Exact)
                })
                .collect(),
            _ => {
                let n: usize = self.out_dims.iter().product();
                (0..n).map(|j| self.element(q, j)).collect()
            }
        }
    }
}

impl Plan for AdaptivePlan {
    fn rule(&self) -> Rule {
        let size = format!("output_size {:?}", &self.out_dims[2..]);
        match self.path {
            Path::Aten(AtenLayout::Nchw) => Rule::default()
                .with("path", AtenLayout::Nchw.describe())
                .with("window", size)
                .with(
                    "average",
                    "q' = RNE(f32(f32(Σ q)·r)), r = f32(f32(1/kh)/kw), raw codes (no zero point)",
                ),
            Path::Aten(l) => Rule::default()
                .with("path", l.describe())
                .with("window", size)
                .with(
                    "average",
                    "q' = clamp(zp + RNE(f32(acc·f32(1/f32(1/m)))), 0, 255), acc = Σ q − kh·kw·zp, \
                     m = f32(f32(in_s/out_s)/(kh·kw))",
                ),
            Path::Qnnpack { kernel, scale } => Rule::default()
                .with("path", "QNNPACK average pooling")
                .with("window", format!("{size}: kernel = stride = {kernel:?}, no padding"))
                .with(
                    "average",
                    format!(
                        "q' = clamp(RNE(f32(acc·{scale:e})) + zp, 0, 255), acc = Σ (q − zp), \
                         scale = f32(in_s / f32(out_s·kh·kw))"
                    ),
                ),
            Path::Float { channels_last } => Rule::default()
                .with("window", size)
                .with(
                    "float op",
                    if self.out_dims[2..] == [1, 1] {
                        "mean over (H, W) of dequantize(q): ATen's cascade sum, then f32(sum / f32(H·W))"
                    } else if channels_last {
                        "f32 window sum (rows outer), f32(sum/f32(kh·kw)) for the first C/8·8 channels, \
                         f32(f32(sum/kh)/kw) for the others"
                    } else {
                        "f32 window sum (rows outer), then f32(f32(sum/kh)/kw)"
                    },
                )
                .with("quantize", quantize_rule(self.flow, &self.out)),
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        let q = input("adaptive_avg_pool2d", inputs[0], &self.in_dims)?;
        if let Path::Float { channels_last } = self.path {
            return crate::ops::exact_float_then_quantize(
                "adaptive_avg_pool2d",
                self.flow,
                &self.out,
                &self.out_dims,
                self.float_results(q, channels_last),
            );
        }
        let all = self.results(q)?;
        predict_ints(
            "adaptive_avg_pool2d",
            inputs[0],
            self.in_dims,
            self.out_dims,
            |i| self.source(i),
            |_, j| Ok(all[j]),
        )
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = input("adaptive_avg_pool2d", inputs[0], &self.in_dims)?;
        if i >= self.out_dims.iter().product() {
            return Err(Error::shape(
                "adaptive_avg_pool2d",
                format!("no output element {i} in {:?}", self.out_dims),
            ));
        }
        let j = self.source(i);
        let win = self.window(j);
        let codes: Vec<String> = self
            .codes(q, &win)
            .map(|v| v.map_or_else(|| "?".to_string(), |v| v.to_string()))
            .collect();
        let [_, _, h, w] = self.in_dims;
        let past = if win.rows.1 > h || win.cols.1 > w {
            format!(
                " (the f32 bounds end past the {h}×{w} input: ATen reads the next elements in \
                 memory, ? past the tensor)"
            )
        } else {
            String::new()
        };
        Ok(vec![
            format!(
                "result {j} (n {}, c {}): rows {}..{}, cols {}..{}, codes [{}]{past}",
                win.b,
                win.c,
                win.rows.0,
                win.rows.1,
                win.cols.0,
                win.cols.1,
                codes.join(", ")
            ),
            format!("prediction {:?}", self.results(q)?[j]),
            format!("rule: {}", self.rule()),
        ])
    }

    fn lowered(&self) -> Option<crate::ops::Lowered<'_>> {
        // A window past the input reads outside its plane: not a window of taps.
        let lowers = !matches!(self.path, Path::Float { .. }) && !self.overreaches();
        lowers.then_some(crate::ops::Lowered::Window(self))
    }
}

impl crate::ops::WindowOp for AdaptivePlan {
    fn in_dims(&self) -> [usize; 4] {
        self.in_dims
    }
    fn out_dims(&self) -> [usize; 4] {
        self.out_dims
    }
    fn out_shape(&self) -> &[usize] {
        &self.out_dims
    }
    fn reduction(&self) -> crate::ops::Reduction {
        crate::ops::Reduction::Sum
    }
    fn taps(&self, axis: usize, o: usize) -> Vec<usize> {
        let [_, _, oh, ow] = self.out_dims;
        let (out, size) = if axis == 0 {
            (oh, self.in_dims[2])
        } else {
            (ow, self.in_dims[3])
        };
        let (a, b) = self.bounds()(o, out, size);
        (a..b).collect()
    }
    fn finish(&self, j: usize, acc: i64, _sum: f32, scale: f64, zp: i64) -> Option<i64> {
        match self.requant(&self.window(j), acc, scale, zp).ok()? {
            Pred::Exact(v) => Some(v),
            Pred::Ambiguous { .. } => None,
        }
    }
    fn finish_class(&self, oy: usize, ox: usize) -> Option<u64> {
        // `requant` reads the window only through its row and column counts.
        let [_, _, oh, ow] = self.out_dims;
        let win = self.window(oy * ow + ox);
        debug_assert!(oy < oh);
        Some(((win.rows.1 - win.rows.0) as u64) << 32 | (win.cols.1 - win.cols.0) as u64)
    }
    fn source(&self, i: usize) -> usize {
        AdaptivePlan::source(self, i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{same_qparams as same, test_ctx as ctx};
    use super::*;

    /// `f` of the plan of a pool of `x` to `size` that keeps `x`'s qparams, and `x` as a value.
    fn with_plan<R>(
        size: [usize; 2],
        c: Ctx,
        x: &QTensor,
        f: impl FnOnce(&dyn Plan, &Value) -> R,
    ) -> R {
        let op = AdaptiveAvgPool2d { output_size: size };
        let v = Value::Quantized(x.clone());
        let plan = op.plan(&c, &[v.meta()], Some(&same(x))).unwrap();
        f(plan.as_ref(), &v)
    }

    fn run(size: [usize; 2], c: Ctx, x: &QTensor, out: OutQParams) -> Result<Vec<i64>> {
        let op = AdaptiveAvgPool2d { output_size: size };
        let v = Value::Quantized(x.clone());
        let plan = op.plan(&c, &[v.meta()], Some(&out))?;
        let o = plan.predict(&[&v])?.remove(0);
        Ok(o.ints()
            .unwrap()
            .iter()
            .map(|p| match p {
                Pred::Exact(v) => *v,
                other => panic!("ambiguous {other:?}"),
            })
            .collect())
    }

    #[test]
    fn nchw_averages_raw_codes_nhwc_and_qnnpack_subtract_the_zero_point() {
        // Channel 0: codes 2, 2, 2, 4, zp 1. NCHW: RNE(10/4 = 2.5) = 2 (raw codes); NHWC:
        // 1 + RNE((10 − 4)/4 = 1.5) = 3; QNNPACK (2 % 1 == 0: kernel 2×2): 1 + RNE(1.5) = 3.
        let mut x = QTensor::new(vec![1, 2, 2, 2], vec![2, 2, 2, 4, 1, 1, 1, 1], 0.1, 1);
        let fx = |e| ctx(Flow::ConvertFx, e);
        assert_eq!(
            run([1, 1], fx(Engine::Fbgemm), &x, same(&x)).unwrap(),
            [2, 1]
        );
        assert_eq!(
            run([1, 1], fx(Engine::Qnnpack), &x, same(&x)).unwrap(),
            [3, 1]
        );
        // The identity 2×2 → 2×2 is not QNNPACK's: the ATen NCHW kernel copies.
        assert_eq!(
            run([2, 2], fx(Engine::Qnnpack), &x, same(&x)).unwrap(),
            [2, 2, 2, 4, 1, 1, 1, 1]
        );
        x.memory_format = MemoryFormat::ChannelsLast;
        assert_eq!(run([1, 1], fx(Engine::X86), &x, same(&x)).unwrap(), [3, 1]);
    }

    #[test]
    fn qnnpack_takes_every_divisible_size_but_the_identity() {
        // Windows of codes 2, 3 with zp 1: QNNPACK gives 1 + RNE((5 − 2)/2 = 1.5) = 3, ATen's
        // NCHW kernel RNE(5/2) = 2 (raw codes). A kernel of 1×8 or 8×1 (size times output size,
        // not size over output size) would scale by 1/8: 1 + RNE(0.375) = 1.
        let qnnpack = ctx(Flow::ConvertFx, Engine::Qnnpack);
        // Only W is pooled (H equals its output size), then only H; two channels, so that ATen
        // would take its NCHW kernel.
        let codes = [2, 3, 2, 3].repeat(2);
        let row = QTensor::new(vec![1, 2, 1, 4], codes.clone(), 0.1, 1);
        assert_eq!(run([1, 2], qnnpack, &row, same(&row)).unwrap(), [3; 4]);
        let col = QTensor::new(vec![1, 2, 4, 1], codes, 0.1, 1);
        assert_eq!(run([2, 1], qnnpack, &col, same(&col)).unwrap(), [3; 4]);
        // Another engine takes ATen's NCHW kernel on the same input.
        let fbgemm = ctx(Flow::ConvertFx, Engine::Fbgemm);
        assert_eq!(run([1, 2], fbgemm, &row, same(&row)).unwrap(), [2; 4]);
    }

    #[test]
    fn quantized_kernels_bound_windows_in_f32_the_float_op_in_integers() {
        // Width 3001 → 6001, output 5999: f32(5999·3001)/6001 rounds up to 3000, so the
        // quantized kernels average [3000, 3001) alone; the float op's integer bounds take
        // [2999, 3001). With a single 4 at 3000, torch 2.15.0 gives code 4 and float 2.0 there.
        let mut data = vec![0u8; 2 * 3001];
        data[3000] = 4;
        let x = QTensor::new(vec![1, 2, 1, 3001], data, 1.0, 0);
        let fx = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let got = run([1, 6001], fx, &x, same(&x)).unwrap();
        assert_eq!(got[5997..6001], [0, 0, 4, 4]);
        let reference = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
        let got = run([1, 6001], reference, &x, same(&x)).unwrap();
        assert_eq!(got[5997..6001], [0, 0, 2, 4]);
    }

    #[test]
    fn f32_bounds_past_the_axis_read_on_in_memory() {
        // Width 5343 → 3489: the last window's f32 bounds are [5341, 5344), one past the row.
        // Codes 10, and 250 first in channel 1. torch 2.15.0 (checked by hand, fbgemm): NCHW
        // channel 0 reads channel 1's first code, (10 + 10 + 250) / 3 → 90; channel 1 and, in
        // NHWC, both channels read past the tensor (PyTorch gave 7 or 10 from run to run).
        let mut data = vec![10u8; 2 * 5343];
        data[5343] = 250;
        let x = QTensor::new(vec![1, 2, 1, 5343], data, 0.1, 0);
        let fx = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let last = |x: &QTensor| {
            with_plan([1, 3489], fx, x, |plan, v| {
                assert!(
                    plan.lowered().is_none(),
                    "a window past the axis is not lowered"
                );
                let trace = plan.trace(&[v], 0, 2 * 3489 - 1).unwrap();
                assert!(trace[0].contains("past the 1×5343 input"), "{trace:?}");
                let o = plan.predict(&[v]).unwrap().remove(0);
                let p = o.ints().unwrap();
                (p[3488], p[2 * 3489 - 1])
            })
        };
        let unknown = Pred::Ambiguous { lo: 7, hi: 92 }; // (20 + 0..=255) / 3
        assert_eq!(last(&x), (Pred::Exact(90), unknown));
        let mut nhwc = x.clone();
        nhwc.memory_format = MemoryFormat::ChannelsLast;
        assert_eq!(last(&nhwc), (unknown, unknown));
        // Below 2²⁴ the bounds stay inside and the plan lowers.
        let small = QTensor::new(vec![1, 2, 1, 53], vec![10; 106], 0.1, 0);
        with_plan([1, 34], fx, &small, |plan, _| {
            assert!(plan.lowered().is_some())
        });
    }

    #[test]
    fn windows_of_one_size_share_a_finish_class() {
        let class = |shape: Vec<usize>, size: [usize; 2], at: &[(usize, usize)]| -> Vec<u64> {
            let n = shape.iter().product();
            let x = QTensor::new(shape, vec![0; n], 1.0, 0);
            with_plan(size, ctx(Flow::ConvertFx, Engine::Fbgemm), &x, |plan, _| {
                let Some(crate::ops::Lowered::Window(w)) = plan.lowered() else {
                    panic!("not a window op");
                };
                at.iter()
                    .map(|&(oy, ox)| w.finish_class(oy, ox).unwrap())
                    .collect()
            })
        };
        // 4×6 → 2×3: every window is 2×2, one class.
        let k = class(vec![1, 2, 4, 6], [2, 3], &[(0, 0), (0, 2), (1, 1), (1, 2)]);
        assert!(k.iter().all(|&c| c == k[0]), "{k:?}");
        // Width 5 → 3: windows [0, 2), [1, 4), [3, 5) of 2, 3 and 2 columns.
        let k = class(vec![1, 2, 1, 5], [1, 3], &[(0, 0), (0, 1), (0, 2)]);
        assert!(k[0] == k[2] && k[0] != k[1], "{k:?}");
    }

    #[test]
    fn windows_overlap_and_outputs_may_grow() {
        // 1×1×1×3 row [0, 10, 30] to width 2: windows [0, 2) and [1, 3): 5 and 20.
        let x = QTensor::new(vec![1, 1, 1, 3], vec![0, 10, 30], 1.0, 0);
        let fx = ctx(Flow::ConvertFx, Engine::Qnnpack);
        assert_eq!(run([1, 2], fx, &x, same(&x)).unwrap(), [5, 20]);
        // Width 3 → 5: windows [0,1) [0,2) [1,2) [1,3) [2,3).
        assert_eq!(run([1, 5], fx, &x, same(&x)).unwrap(), [0, 5, 10, 20, 30]);
        // An NCHW-strided N×C×1×1 input takes the NHWC kernel; a larger output lands in NHWC
        // order in an NCHW buffer.
        let one = QTensor::new(vec![1, 2, 1, 1], vec![10, 20], 1.0, 0);
        let got = run(
            [2, 2],
            ctx(Flow::ConvertFx, Engine::Fbgemm),
            &one,
            same(&one),
        )
        .unwrap();
        assert_eq!(got, [10, 20, 10, 20, 10, 20, 10, 20]);
    }

    #[test]
    fn reference_flows_take_the_float_mean_then_quantize() {
        // Codes 0, 1, 2, 4 with scale 0.5, zp 0: mean 0.875 → code 1.75 → 2; output scale 0.25
        // → 3.5 → 4 (RNE). Decomposed with quant_max 3 clamps to 3.
        let x = QTensor::new(vec![1, 1, 2, 2], vec![0, 1, 2, 4], 0.5, 0);
        let mut out = same(&x);
        let reference = ctx(Flow::ConvertToReferenceFx, Engine::X86);
        assert_eq!(run([1, 1], reference, &x, out).unwrap(), [2]);
        out.scale = 0.25;
        assert_eq!(run([1, 1], reference, &x, out).unwrap(), [4]);
        out.quant_max = 3;
        let dec = ctx(Flow::ConvertToReferenceDecomposedFx, Engine::X86);
        assert_eq!(run([1, 1], dec, &x, out).unwrap(), [3]);
        // General sizes: a 2×2 → 1×2 pool averages columns: codes 0, 2 → (0 + 1)/2 = 0.5 → 2;
        // codes 1, 4 → (0.5 + 2)/2 = 1.25 → 5.
        out.quant_max = 255;
        assert_eq!(run([1, 2], dec, &x, out).unwrap(), [2, 5]);
        // convert_fx keeps the input's qparams: others are an error; so are empty outputs and
        // 3-D inputs.
        assert!(run([1, 1], ctx(Flow::ConvertFx, Engine::X86), &x, out).is_err());
        assert!(run([0, 1], ctx(Flow::ConvertFx, Engine::X86), &x, same(&x)).is_err());
        let flat = QTensor::new(vec![1, 2, 2], vec![0; 4], 1.0, 0);
        assert!(run(
            [1, 1],
            ctx(Flow::ConvertFx, Engine::X86),
            &flat,
            same(&flat)
        )
        .is_err());
    }
    #[test]
    fn reference_flows_divide_once_in_channels_last_vector_channels() {
        // A 3×3 window summing to 5: f32(5/9) and f32(f32(5/3)/3) differ in the last bit. ATen's
        // channels-last kernel divides once in its first C/8·8 channels and twice in the rest;
        // the NCHW kernel divides twice everywhere.
        let (once, twice) = (5.0f32 / 9.0, 5.0f32 / 3.0 / 3.0);
        assert_ne!(once, twice);
        // 1×17×3×6 → 1×17×1×2: each channel's left window holds five ones, its right one zeros.
        let (c, h, w) = (17, 3, 6);
        let mut data = vec![0u8; c * h * w];
        for ch in 0..c {
            for k in 0..5 {
                data[(ch * h + k / 3) * w + k % 3] = 1;
            }
        }
        let mut x = QTensor::new(vec![1, c, h, w], data, 1.0, 0);
        let reference = ctx(Flow::ConvertToReferenceFx, Engine::X86);
        let pre_quant = |x: &QTensor| -> Vec<f32> {
            let outs = with_plan([1, 2], reference, x, |plan, v| plan.predict(&[v]).unwrap());
            let o = outs.iter().find(|o| o.name == "pre_quant").unwrap();
            let crate::ops::Predicted::Ranges(r) = &o.values else {
                panic!("pre_quant holds {:?}", o.values);
            };
            r.iter()
                .step_by(2)
                .map(|&(lo, hi)| {
                    assert_eq!(lo, hi);
                    lo
                })
                .collect()
        };
        assert_eq!(pre_quant(&x), vec![twice; 17]);
        x.memory_format = MemoryFormat::ChannelsLast;
        let mut want = vec![once; 16];
        want.push(twice);
        assert_eq!(pre_quant(&x), want);
    }

    #[test]
    fn trace_shows_the_window_and_rejects_an_element_past_the_end() {
        let x = QTensor::new(vec![1, 2, 2, 2], vec![2, 2, 2, 4, 1, 1, 1, 3], 0.1, 1);
        let fx = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let (t, past_end) = with_plan([1, 1], fx, &x, |plan, v| {
            (plan.trace(&[v], 0, 1).unwrap(), plan.trace(&[v], 0, 2))
        });
        assert_eq!(
            t[0],
            "result 1 (n 0, c 1): rows 0..2, cols 0..2, codes [1, 1, 1, 3]"
        );
        assert!(past_end.is_err());
        // The reference flows' prediction: (1 + 1 + 1 + 3 − 4·1)·0.1/4 = 0.05 → 1 + RNE(0.5) = 1.
        let reference = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
        let t = with_plan([1, 1], reference, &x, |plan, v| {
            plan.trace(&[v], 0, 1).unwrap()
        });
        assert_eq!(t[1], "prediction Exact(1)");
    }

    #[test]
    fn reference_flows_average_each_image_and_channel() {
        // 2×2×2×2 codes 8b + 4c + 2y + x, pooled to 1×2: column means 8b + 4c + x + 1.
        let x = QTensor::new(vec![2, 2, 2, 2], (0..16).collect(), 1.0, 0);
        let reference = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
        let got = run([1, 2], reference, &x, same(&x)).unwrap();
        assert_eq!(got, [1, 2, 5, 6, 9, 10, 13, 14]);
        // 2×2 → 2×2: windows of one element, the second row's and column's starting at 1.
        let got = run([2, 2], reference, &x, same(&x)).unwrap();
        assert_eq!(got, (0..16).collect::<Vec<i64>>());
        // The rule names the window sum, and ATen's cascade mean for a 1×1 output.
        let rule = |size| with_plan(size, reference, &x, |plan, _| plan.rule().to_string());
        assert!(rule([1, 2]).contains("f32 window sum (rows outer), then"));
        assert!(rule([1, 1]).contains("cascade sum"));
    }
}
