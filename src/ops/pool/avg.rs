//! `avg_pool2d` on a quantized tensor (`F.avg_pool2d`, `nn.AvgPool2d`; kernel, stride, padding,
//! `ceil_mode`, `count_include_pad`, `divisor_override`), output qparams equal to the input's.
//!
//! Window (all paths): rows `[o·s − p, min(o·s − p + k, H + p))` clipped to the input; `size` is
//! the clipped area, the divisor `D` is `divisor_override`, else the unclipped (padding
//! included, never beyond `H + p`) area with `count_include_pad`, else `size`
//! ([`crate::geometry::Pool2dParams::avg_span`]). The integer accumulator is
//! `acc = Σ q − size·zp` (exact in int32).
//!
//! - ATen NCHW (`AveragePool2d.cpp: avg_pool2d_out_frame`): `m = f32(f64(in_s/out_s) / D)`,
//!   `q' = clamp(RNE(f32(f32(acc)·m) + f32(zp)), 0, 255)`: the zero point is added in float
//!   before rounding (no FMA: generic translation unit).
//! - ATen NHWC (`kernels/QuantizedOpKernels.cpp: _qavg_pool_nhwc_kernel`):
//!   `m = f32(f32(f32(in_s)/f32(out_s)) / f32(D))`. The vector channels (`C/8·8` in the AVX2
//!   build, `C/16·16` in the AVX512 build, `do_avg_pool_nhwc_on_AVX_n` → `QuantizeAvx2/512`)
//!   compute `RNE(f32(acc·m)) + zp`, the others `quantize_val(1/m, zp, acc)` =
//!   `zp + RNE(f32(acc·f32(1/f32(1/m))))`; clamp 0..255. Both multipliers are equal for every
//!   `D` up to 2·10⁶ (exhaustive check in the research behind this module), so the vector width
//!   does not matter; where they differ the element is predicted ambiguous between the two.
//! - QNNPACK (qnnpack engine, no `ceil_mode`; `qnnpack/src/average-pooling.c`,
//!   `q8avgpool/*-sse2.c` in PyTorch's fork): the same `acc` (padding taps read a buffer of
//!   zero points), `scale = f32(f32(in_s) / f32(f32(out_s)·f32(kH·kW)))` — always the full
//!   kernel area: `count_include_pad = False` and `divisor_override` are ignored —
//!   `q' = clamp(RNE(f32(f32(acc)·scale)) + zp, 0, 255)` in fp32 (no fixed point). A 1×1 kernel
//!   is rejected.
//! - Reference flows (`native/cpu/AvgPoolKernel.cpp: cpu_avg_pool`, `_channels_last`): the f32 sum
//!   of the dequantized window from 0, rows outer, columns inner, then `f32(sum / f32(D))`,
//!   then the flow's quantize node. Exact.
//!
//! `divisor_override` is modelled for `1 ≤ D ≤ 2^24`; larger, negative or zero values are errors.

use super::{
    input, plan_input, predict_floats, predict_ints, quantize_out, quantize_rule, AtenLayout,
    PoolInput,
};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::geometry::{AvgSpan, Pool2dParams};
use crate::numerics::bound::Pred;
use crate::numerics::quantize::{aten, rne};
use crate::ops::{Meta, Op, OutQParams, Output, Plan, Rule};
use crate::ops::{QTensor, Value};
use crate::{Error, Result};

/// `avg_pool2d` with PyTorch's arguments (`stride` absent = the kernel size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvgPool2d {
    pub kernel_size: [usize; 2],
    #[serde(default)]
    pub stride: Option<[usize; 2]>,
    #[serde(default)]
    pub padding: [usize; 2],
    #[serde(default)]
    pub ceil_mode: bool,
    #[serde(default = "yes")]
    pub count_include_pad: bool,
    #[serde(default)]
    pub divisor_override: Option<i64>,
}

fn yes() -> bool {
    true
}

impl AvgPool2d {
    /// The window geometry (no dilation).
    pub fn params(&self) -> Pool2dParams {
        Pool2dParams {
            kernel_size: self.kernel_size,
            stride: self.stride.unwrap_or(self.kernel_size),
            padding: self.padding,
            dilation: [1, 1],
            ceil_mode: self.ceil_mode,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Aten(AtenLayout),
    /// QNNPACK with its fp32 requantization scale.
    Qnnpack {
        scale: f32,
    },
    Float,
}

impl Op for AvgPool2d {
    fn name(&self) -> &'static str {
        "avg_pool2d"
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
        let p = self.params();
        if let Some(d) = self.divisor_override {
            if !(1..=1 << 24).contains(&d) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "divisor_override {d} (zero is rejected by PyTorch; modelled: 1..2^24)"
                    ),
                ));
            }
        }
        p.check_half_kernel_padding(op)?;
        let [oh, ow] = p.output_size(op, [dims[2], dims[3]])?;
        let path = if !ctx.flow.is_integer() {
            Path::Float
        } else if ctx.engine == Engine::Qnnpack && !p.ceil_mode {
            let area = p.kernel_size[0] * p.kernel_size[1];
            if area == 1 {
                return Err(Error::invalid(
                    op,
                    "QNNPACK rejects a 1x1 average pool (\"1x1 pooling is meaningless\")",
                ));
            }
            Path::Qnnpack {
                scale: qnnpack_scale(op, scale, out.scale, area)?,
            }
        } else {
            Path::Aten(AtenLayout::of(format, dims))
        };
        Ok(Box::new(AvgPoolPlan {
            op: *self,
            p,
            path,
            flow: ctx.flow,
            out,
            in_dims: dims,
            out_dims: [dims[0], dims[1], oh, ow],
        }))
    }
}

/// QNNPACK's fp32 requantization scale of an average pool over `area` elements
/// (`average-pooling.c`, `global-average-pooling.c`): `f32(in_s / f32(out_s · f32(area)))`. The
/// pools keep the input's scale, which QNNPACK requires to be a normal f32.
pub(crate) fn qnnpack_scale(op: &str, in_scale: f64, out_scale: f64, area: usize) -> Result<f32> {
    if !(in_scale as f32).is_normal() {
        return Err(Error::invalid(op, "QNNPACK requires a normal f32 scale"));
    }
    Ok(in_scale as f32 / (out_scale as f32 * area as f32))
}

/// QNNPACK's fp32 requantization (`q8avgpool`, `q8gavgpool` SSE2 kernels): `cvtps_epi32`
/// (RNE), saturating int16 pack and zero-point add, unsigned saturating pack: for these
/// magnitudes `clamp(RNE(f32(acc · scale)) + zp, 0, 255)`.
pub(crate) fn qnnpack_requant(acc: i64, scale: f32, zero_point: i64) -> i64 {
    (rne(acc as f32 * scale) as i64 + zero_point).clamp(0, 255)
}

#[derive(Debug)]
struct AvgPoolPlan {
    op: AvgPool2d,
    p: Pool2dParams,
    path: Path,
    flow: Flow,
    out: OutQParams,
    in_dims: [usize; 4],
    out_dims: [usize; 4],
}

/// One output element's window.
struct Window {
    b: usize,
    c: usize,
    rows: AvgSpan,
    cols: AvgSpan,
}

impl AvgPoolPlan {
    fn window(&self, j: usize) -> Window {
        let [_, c, oh, ow] = self.out_dims;
        let [_, _, h, w] = self.in_dims;
        let (x, y) = (j % ow, (j / ow) % oh);
        Window {
            b: j / (ow * oh * c),
            c: (j / (ow * oh)) % c,
            rows: self.p.avg_span(0, y, h),
            cols: self.p.avg_span(1, x, w),
        }
    }

    /// `size` and the divisor `D` of a window (ATen's rule).
    fn divisor(&self, win: &Window) -> (i64, i64) {
        let size = (win.rows.len() * win.cols.len()) as i64;
        let d = match self.op.divisor_override {
            Some(d) => d,
            None if self.op.count_include_pad => (win.rows.padded * win.cols.padded) as i64,
            None => size,
        };
        (size, d)
    }

    fn codes<'q>(&self, q: &'q QTensor, win: &Window) -> impl Iterator<Item = u8> + 'q {
        let [_, c, h, w] = self.in_dims;
        let (b, ch) = (win.b, win.c);
        let (rows, cols) = (win.rows, win.cols);
        (rows.start..rows.end).flat_map(move |y| {
            (cols.start..cols.end).map(move |x| q.data[((b * c + ch) * h + y) * w + x])
        })
    }

    fn source(&self, i: usize) -> usize {
        match self.path {
            Path::Aten(l) => l.source_index(i, self.out_dims),
            _ => i,
        }
    }

    /// The prediction for the result at logical position `j`.
    fn element(&self, q: &QTensor, j: usize) -> Result<Pred> {
        if self.path == Path::Float {
            return Ok(Pred::Exact(quantize_out(
                "avg_pool2d",
                self.flow,
                &self.out,
                self.float_at(q, j),
            )?));
        }
        let win = self.window(j);
        let sum = self.codes(q, &win).map(i64::from).sum::<i64>();
        self.requant(&win, sum, q.scale, q.zero_point)
    }

    /// The integer kernels' output for a window whose codes sum to `sum` (input qparams
    /// `scale`, `zp`).
    fn requant(&self, win: &Window, sum: i64, scale: f64, zp: i64) -> Result<Pred> {
        let (size, d) = self.divisor(win);
        let acc = || sum - size * zp;
        Ok(match self.path {
            Path::Aten(AtenLayout::Nchw) => {
                let m = ((scale / self.out.scale) / d as f64) as f32;
                let y = rne(acc() as f32 * m + zp as f32);
                Pred::Exact((y as i64).clamp(0, 255))
            }
            Path::Aten(AtenLayout::Nhwc { .. }) => {
                let m = (scale as f32 / self.out.scale as f32) / d as f32;
                let a = acc() as f32;
                let vector = aten::quantize_avx2(a, m, zp as i32, 0, 255) as i64;
                let tail = aten::quantize_scalar(a, 1.0f32 / m, zp as i32, 0, 255)
                    .ok_or_else(|| Error::invalid("avg_pool2d", "NaN multiplier"))?;
                Pred::from_ends(vector, tail)
            }
            Path::Qnnpack { scale } => {
                Pred::Exact(qnnpack_requant(acc(), scale, self.out.zero_point))
            }
            Path::Float => {
                return Err(Error::invalid(
                    "avg_pool2d",
                    "the reference flows' float op has no integer accumulator",
                ))
            }
        })
    }

    /// The reference flows' float average at logical position `j`: the window's dequantized
    /// values summed in f32 in row order, divided by the divisor.
    fn float_at(&self, q: &QTensor, j: usize) -> f32 {
        let win = self.window(j);
        let (_, d) = self.divisor(&win);
        let mut sum = 0.0f32;
        for v in self.codes(q, &win) {
            sum += self.flow.dequantize(v as i64, q.scale, q.zero_point);
        }
        sum / d as f32
    }
}

impl Plan for AvgPoolPlan {
    fn rule(&self) -> Rule {
        let p = &self.p;
        let o = &self.op;
        let geo = format!(
            "kernel {:?}, stride {:?}, padding {:?}, ceil_mode {}, count_include_pad {}, \
             divisor_override {:?}",
            p.kernel_size,
            p.stride,
            p.padding,
            p.ceil_mode,
            o.count_include_pad,
            o.divisor_override
        );
        let acc = "acc = Σ q − size·zp over the window clipped to the input";
        match self.path {
            Path::Aten(AtenLayout::Nchw) => Rule::default()
                .with("path", AtenLayout::Nchw.describe())
                .with("window", geo)
                .with("accumulation", acc)
                .with(
                    "requant",
                    "q' = clamp(RNE(f32(f32(acc)·m) + f32(zp)), 0, 255), m = f32(f64(in_s/out_s)/D)",
                ),
            Path::Aten(l) => Rule::default()
                .with("path", l.describe())
                .with("window", geo)
                .with("accumulation", acc)
                .with(
                    "requant",
                    "q' = clamp(RNE(f32(acc·m)) + zp, 0, 255), m = f32(f32(in_s/out_s)/f32(D)) \
                     (vector channels; other channels f32(1/f32(1/m)))",
                ),
            Path::Qnnpack { scale } => Rule::default()
                .with("path", "QNNPACK average pooling")
                .with("window", geo)
                .with(
                    "accumulation",
                    "acc = Σ (q − zp) over the whole kernel (padding taps are zero points)",
                )
                .with(
                    "requant",
                    format!(
                        "q' = clamp(RNE(f32(acc·{scale:e})) + zp, 0, 255), scale = \
                         f32(in_s / f32(out_s·kH·kW)) (count_include_pad and divisor_override \
                         ignored)"
                    ),
                ),
            Path::Float => Rule::default()
                .with("window", geo)
                .with(
                    "float op",
                    "f32 sum of dequantize(q) over the clipped window (rows outer, from 0), then \
                     f32(sum / f32(D)) (exact)",
                )
                .with("quantize", quantize_rule(self.flow, &self.out)),
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        if self.path == Path::Float {
            return predict_floats(
                "avg_pool2d",
                inputs[0],
                (self.in_dims, self.out_dims),
                (self.flow, &self.out),
                |q, j| self.float_at(q, j),
            );
        }
        predict_ints(
            "avg_pool2d",
            inputs[0],
            self.in_dims,
            self.out_dims,
            |i| self.source(i),
            |q, j| self.element(q, j),
        )
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = input("avg_pool2d", inputs[0], &self.in_dims)?;
        let j = self.source(i);
        let win = self.window(j);
        let (size, d) = self.divisor(&win);
        let codes: Vec<u8> = self.codes(q, &win).collect();
        let sum: i64 = codes.iter().map(|&v| v as i64).sum();
        Ok(vec![
            format!(
                "result {j} (n {}, c {}): rows {}..{}, cols {}..{}, codes {codes:?}",
                win.b, win.c, win.rows.start, win.rows.end, win.cols.start, win.cols.end
            ),
            format!(
                "Σq = {sum}, size {size}, acc = {}, D = {d}",
                sum - size * q.zero_point
            ),
            format!("prediction {:?}", self.element(q, j)?),
            format!("rule: {}", self.rule()),
        ])
    }

    fn lowered(&self) -> Option<crate::ops::Lowered<'_>> {
        (self.path != Path::Float).then_some(crate::ops::Lowered::Window(self))
    }
}

impl crate::ops::WindowOp for AvgPoolPlan {
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
        let s = self.p.avg_span(axis, o, self.in_dims[2 + axis]);
        (s.start..s.end).collect()
    }
    fn finish(&self, j: usize, acc: i64, _sum: f32, scale: f64, zp: i64) -> Option<i64> {
        match self.requant(&self.window(j), acc, scale, zp).ok()? {
            Pred::Exact(v) => Some(v),
            Pred::Ambiguous { .. } => None,
        }
    }
    fn finish_class(&self, oy: usize, ox: usize) -> Option<u64> {
        // `requant` reads the window only through its `(size, D)`.
        let [_, _, h, w] = self.in_dims;
        let (rows, cols) = (self.p.avg_span(0, oy, h), self.p.avg_span(1, ox, w));
        let (size, d) = self.divisor(&Window {
            b: 0,
            c: 0,
            rows,
            cols,
        });
        Some((size as u64) << 32 | d as u64)
    }
    fn source(&self, i: usize) -> usize {
        AvgPoolPlan::source(self, i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{same_qparams as same, test_ctx as ctx};
    use super::*;
    use crate::ops::{MemoryFormat, Predicted};

    fn run(op: &AvgPool2d, c: Ctx, x: &QTensor) -> Result<Vec<Pred>> {
        let v = Value::Quantized(x.clone());
        let plan = op.plan(&c, &[v.meta()], Some(&same(x)))?;
        Ok(plan.predict(&[&v])?.remove(0).ints().unwrap().to_vec())
    }

    fn exact(v: &[Pred]) -> Vec<i64> {
        v.iter()
            .map(|p| match p {
                Pred::Exact(x) => *x,
                other => panic!("ambiguous {other:?}"),
            })
            .collect()
    }

    fn pool(k: usize, s: usize, p: usize) -> AvgPool2d {
        AvgPool2d {
            kernel_size: [k, k],
            stride: Some([s, s]),
            padding: [p, p],
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    #[test]
    fn nchw_adds_the_zero_point_before_rounding_nhwc_after() {
        // Two channels, 2×2 window, zp 1. Channel 0: codes 2, 2, 2, 4 → acc = 10 − 4 = 6,
        // 6/4 = 1.5 (a tie). NCHW: RNE(1.5 + 1) = RNE(2.5) = 2; NHWC: RNE(1.5) + 1 = 3.
        // Channel 1: codes 1, 1, 1, 1 → acc 0 → 1 on every path.
        let mut x = QTensor::new(vec![1, 2, 2, 2], vec![2, 2, 2, 4, 1, 1, 1, 1], 0.1, 1);
        let op = pool(2, 2, 0);
        let fx = |e| ctx(Flow::ConvertFx, e);
        assert_eq!(exact(&run(&op, fx(Engine::Fbgemm), &x).unwrap()), [2, 1]);
        // QNNPACK: fp32 scale 1/4, RNE(1.5) + 1 = 3.
        assert_eq!(exact(&run(&op, fx(Engine::Qnnpack), &x).unwrap()), [3, 1]);
        x.memory_format = MemoryFormat::ChannelsLast;
        assert_eq!(exact(&run(&op, fx(Engine::Onednn), &x).unwrap()), [3, 1]);
        // C = 1 is channels-last-contiguous in either format: the NHWC kernel runs.
        let one = QTensor::new(vec![1, 1, 2, 2], vec![2, 2, 2, 4], 0.1, 1);
        assert_eq!(exact(&run(&op, fx(Engine::X86), &one).unwrap()), [3]);
    }

    #[test]
    fn divisors_follow_count_include_pad_and_override_except_in_qnnpack() {
        // 1×1×2×2 input, kernel 3, padding 1, stride 1: 2×2 outputs, each window clipped to
        // the 4 pixels (size 4), padded area 3·3 = 9.
        let x = QTensor::new(vec![1, 1, 2, 2], vec![10, 20, 30, 40], 1.0, 0);
        let op = pool(3, 1, 1);
        // 100/9 = 11.1 → 11 everywhere.
        assert_eq!(
            exact(&run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &x).unwrap()),
            [11; 4]
        );
        let no_pad = AvgPool2d {
            count_include_pad: false,
            ..op
        };
        assert_eq!(
            exact(&run(&no_pad, ctx(Flow::ConvertFx, Engine::Fbgemm), &x).unwrap()),
            [25; 4]
        );
        let over = AvgPool2d {
            divisor_override: Some(3),
            ..op
        };
        assert_eq!(
            exact(&run(&over, ctx(Flow::ConvertFx, Engine::Fbgemm), &x).unwrap()),
            [33; 4]
        );
        // QNNPACK always divides by kH·kW = 9.
        for o in [no_pad, over] {
            assert_eq!(
                exact(&run(&o, ctx(Flow::ConvertFx, Engine::Qnnpack), &x).unwrap()),
                [11; 4]
            );
        }
        // ceil_mode leaves QNNPACK: the ATen kernel with count_include_pad = False.
        let ceil = AvgPool2d {
            ceil_mode: true,
            ..no_pad
        };
        assert_eq!(
            exact(&run(&ceil, ctx(Flow::ConvertFx, Engine::Qnnpack), &x).unwrap()),
            [25; 4]
        );
        // The reference flows: f32 sum / D, then quantize.
        let r = run(&over, ctx(Flow::ConvertToReferenceFx, Engine::Qnnpack), &x).unwrap();
        assert_eq!(exact(&r), [33; 4]);
        // Errors: zero divisor, padding beyond k/2, 1x1 QNNPACK pools, 3-D inputs.
        let zero = AvgPool2d {
            divisor_override: Some(0),
            ..op
        };
        assert!(run(&zero, ctx(Flow::ConvertFx, Engine::Fbgemm), &x).is_err());
        assert!(run(&pool(2, 1, 2), ctx(Flow::ConvertFx, Engine::Fbgemm), &x).is_err());
        assert!(run(&pool(1, 1, 0), ctx(Flow::ConvertFx, Engine::Qnnpack), &x).is_err());
        let flat = QTensor::new(vec![1, 2, 2], vec![0; 4], 1.0, 0);
        assert!(run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &flat).is_err());
    }

    #[test]
    fn decomposed_reference_clamps_to_its_quant_range() {
        let x = QTensor::new(vec![1, 1, 1, 3], vec![250, 250, 251], 1.0, 0);
        let op = AvgPool2d {
            kernel_size: [1, 3],
            ..pool(1, 1, 0)
        };
        let v = Value::Quantized(x.clone());
        let out = OutQParams {
            quant_max: 127,
            ..same(&x)
        };
        for (flow, want) in [
            (Flow::ConvertToReferenceDecomposedFx, 127),
            (Flow::ConvertToReferenceFx, 250),
        ] {
            let plan = op
                .plan(&ctx(flow, Engine::X86), &[v.meta()], Some(&out))
                .unwrap();
            let o = plan.predict(&[&v]).unwrap().remove(0);
            assert_eq!(o.values, Predicted::exact([want]), "{flow:?}");
        }
        // The quantized op keeps the input's qparams: others are an error.
        let other = OutQParams { scale: 2.0, ..out };
        assert!(op
            .plan(
                &ctx(Flow::ConvertFx, Engine::X86),
                &[v.meta()],
                Some(&other)
            )
            .is_err());
    }

    #[test]
    fn pytorchs_defaults_fill_missing_arguments() {
        // `nn.AvgPool2d(3)`: stride = kernel, no padding, floor mode, count_include_pad True.
        let op: AvgPool2d = serde_json::from_str(r#"{"kernel_size": [3, 3]}"#).unwrap();
        assert_eq!(
            op,
            AvgPool2d {
                stride: None,
                ..pool(3, 3, 0)
            }
        );
        assert!(serde_json::from_str::<AvgPool2d>(r#"{"kernel_size": [3, 3], "pad": 1}"#).is_err());
    }

    #[test]
    fn qnnpack_needs_a_normal_f32_scale() {
        let op = pool(2, 2, 0);
        let scaled = |scale: f64| QTensor::new(vec![1, 1, 2, 2], vec![10, 20, 30, 40], scale, 0);
        // Subnormal once rounded to f32: QNNPACK's fp32 requantization refuses it; ATen's
        // kernel takes it.
        let tiny = scaled(f64::from(f32::MIN_POSITIVE) / 4.0);
        let e = run(&op, ctx(Flow::ConvertFx, Engine::Qnnpack), &tiny).unwrap_err();
        assert!(e.to_string().contains("normal f32 scale"), "{e}");
        assert!(run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &tiny).is_ok());
        assert!(run(&op, ctx(Flow::ConvertFx, Engine::Qnnpack), &scaled(1e-30)).is_ok());
    }

    #[test]
    fn every_path_averages_each_image_and_channel() {
        // N = C = 2, a 1×2 row each, kernel 1×2: one window per plane, codes summing to
        // 2·(plane + 1) (scale 1, zp 0), so every plane averages to its own value.
        let x = QTensor::new(vec![2, 2, 1, 2], vec![0, 2, 1, 3, 2, 4, 3, 5], 1.0, 0);
        let op = AvgPool2d {
            kernel_size: [1, 2],
            ..pool(1, 1, 0)
        };
        for c in [
            ctx(Flow::ConvertFx, Engine::Fbgemm),
            ctx(Flow::ConvertFx, Engine::Qnnpack),
            ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm),
        ] {
            assert_eq!(exact(&run(&op, c, &x).unwrap()), [1, 2, 3, 4], "{c:?}");
        }
    }

    #[test]
    fn windows_of_one_size_and_divisor_share_a_finish_class() {
        // 4×4, kernel 3, padding 1, stride 1, count_include_pad False: corner windows hold 4
        // pixels, edges 6, the centre 9; the backend tabulates the requantization per class.
        let x = QTensor::new(vec![1, 1, 4, 4], vec![0; 16], 1.0, 0);
        let op = AvgPool2d {
            count_include_pad: false,
            ..pool(3, 1, 1)
        };
        let v = Value::Quantized(x.clone());
        let c = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let plan = op.plan(&c, &[v.meta()], Some(&same(&x))).unwrap();
        let Some(crate::ops::Lowered::Window(w)) = plan.lowered() else {
            panic!("not a window op");
        };
        let k = |oy, ox| w.finish_class(oy, ox).unwrap();
        assert!(k(0, 0) == k(3, 3) && k(0, 0) == k(0, 3));
        assert!(k(0, 1) == k(2, 3) && k(1, 1) == k(2, 2));
        assert!(k(0, 0) != k(0, 1) && k(0, 1) != k(1, 1) && k(0, 0) != k(1, 1));
    }
}
