//! `max_pool2d` on a quantized tensor (`nn.MaxPool2d`, `F.max_pool2d`; kernel, stride, padding,
//! dilation, `ceil_mode`): the integer maximum over a window, output qparams equal to the
//! input's.
//!
//! - ATen (fbgemm, x86, onednn; qnnpack with `ceil_mode`): `Pooling.cpp:
//!   spatial_dilated_max_pooling` (NCHW) and `kernels/QuantizedOpKernels.cpp:
//!   _qmaxpool_2d_nhwc_kernel` (NHWC) take the taps `o·s − p + t·d` that fall inside the input;
//!   padding taps are skipped, and a window without any (dilation can do that) gives 0, the
//!   accumulator's initial `numeric_limits<uint8_t>::lowest()`. Output sizes from `Pool.h: pooling_output_shape`; the quantized
//!   kernel also requires `p ≤ k/2`. See [`super`] for the scrambled output of NCHW-strided
//!   `N×C×1×1` inputs.
//! - QNNPACK (qnnpack engine, quint8, no `ceil_mode`): `qnnpack/src/max-pooling.c` with the
//!   indirection of `indirection.c: pytorch_qnnp_indirection_init_maxpool2d` reads row
//!   `min(max(o·s + t·d − p, 0), H − 1)` for every tap: padding taps repeat the border element,
//!   which can win when `d > 1` (with `d = 1` the border is in the window anyway). A 1×1 kernel
//!   is rejected ("1x1 pooling is meaningless").
//! - Reference flows: the float `max_pool2d` (`native/cpu/MaxPoolKernel.cpp`, ATen's taps, an
//!   empty window giving −inf) on the dequantized input, exact, then the flow's quantize node.

use super::{
    input, plan_input, predict_floats, predict_ints, quantize_out, quantize_rule, AtenLayout,
    PoolInput,
};
use crate::engine::flow::Flow;
use crate::engine::{Ctx, Engine};
use crate::geometry::Pool2dParams;
use crate::ops::{Meta, Op, OutQParams, Output, Plan, Rule};
use crate::ops::{Pred, QTensor, Value};
use crate::{Error, Result};

/// `max_pool2d` with PyTorch's arguments (`stride` absent = the kernel size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPool2d {
    pub kernel_size: [usize; 2],
    #[serde(default)]
    pub stride: Option<[usize; 2]>,
    #[serde(default)]
    pub padding: [usize; 2],
    #[serde(default = "one")]
    pub dilation: [usize; 2],
    #[serde(default)]
    pub ceil_mode: bool,
}

fn one() -> [usize; 2] {
    [1, 1]
}

impl MaxPool2d {
    /// The window geometry.
    pub fn params(&self) -> Pool2dParams {
        Pool2dParams {
            kernel_size: self.kernel_size,
            stride: self.stride.unwrap_or(self.kernel_size),
            padding: self.padding,
            dilation: self.dilation,
            ceil_mode: self.ceil_mode,
        }
    }
}

/// Which max-pool kernel a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Aten(AtenLayout),
    Qnnpack,
    /// Reference flows: the float op.
    Float,
}

impl Op for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
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
            scale: _,
            out,
        } = plan_input(op, ctx, inputs, out)?;
        let p = self.params();
        let [oh, ow] = p.output_size(op, [dims[2], dims[3]])?;
        let path = if !ctx.flow.is_integer() {
            Path::Float
        } else if ctx.engine == Engine::Qnnpack && !p.ceil_mode {
            if p.kernel_size == [1, 1] {
                return Err(Error::invalid(
                    op,
                    "QNNPACK rejects a 1x1 max pool (\"1x1 pooling is meaningless\")",
                ));
            }
            Path::Qnnpack
        } else {
            p.check_half_kernel_padding(op)?;
            Path::Aten(AtenLayout::of(format, dims))
        };
        Ok(Box::new(MaxPoolPlan {
            p,
            path,
            flow: ctx.flow,
            out,
            in_dims: dims,
            out_dims: [dims[0], dims[1], oh, ow],
        }))
    }
}

#[derive(Debug)]
struct MaxPoolPlan {
    p: Pool2dParams,
    path: Path,
    flow: Flow,
    out: OutQParams,
    in_dims: [usize; 4],
    out_dims: [usize; 4],
}

impl MaxPoolPlan {
    /// The input rows (`axis` 0) or columns (`axis` 1) output position `o` reads.
    fn axis_taps(&self, axis: usize, o: usize) -> Vec<usize> {
        let size = self.in_dims[2 + axis];
        if self.path == Path::Qnnpack {
            self.p.clamped_taps(axis, o, size).collect()
        } else {
            self.p.max_taps(axis, o, size).collect()
        }
    }

    /// The input positions `(h, w)` output `(oh, ow)` takes its maximum over.
    fn taps(&self, oh: usize, ow: usize) -> Vec<(usize, usize)> {
        let (rows, cols) = (self.axis_taps(0, oh), self.axis_taps(1, ow));
        rows.iter()
            .flat_map(|&y| cols.iter().map(move |&x| (y, x)))
            .collect()
    }

    /// The logical output index `i` is computed from (after any scrambling).
    fn source(&self, i: usize) -> usize {
        match self.path {
            Path::Aten(l) => l.source_index(i, self.out_dims),
            _ => i,
        }
    }

    fn in_index(&self, b: usize, c: usize, y: usize, x: usize) -> usize {
        let [_, ch, h, w] = self.in_dims;
        ((b * ch + c) * h + y) * w + x
    }

    /// Output element at logical position `j` (before scrambling): the integer max (integer
    /// flow) or the quantized float max (reference flows).
    fn element(&self, q: &QTensor, j: usize) -> Result<i64> {
        let [_, c, oh, ow] = self.out_dims;
        let (x, y, ch, b) = (
            j % ow,
            (j / ow) % oh,
            (j / (ow * oh)) % c,
            j / (ow * oh * c),
        );
        let taps = self.taps(y, x);
        let codes = taps
            .iter()
            .map(|&(ty, tx)| q.data[self.in_index(b, ch, ty, tx)]);
        if self.path != Path::Float {
            // A window with no tap inside the input (possible with dilation) keeps the
            // accumulator's initial value, `numeric_limits<uint8_t>::lowest()` = 0.
            return Ok(codes.max().map_or(0, i64::from));
        }
        quantize_out("max_pool2d", self.flow, &self.out, self.float_at(q, j))
    }

    /// The reference flows' float maximum over the window at logical position `j`.
    fn float_at(&self, q: &QTensor, j: usize) -> f32 {
        let [_, c, oh, ow] = self.out_dims;
        let (x, y, ch, b) = (
            j % ow,
            (j / ow) % oh,
            (j / (ow * oh)) % c,
            j / (ow * oh * c),
        );
        self.taps(y, x)
            .iter()
            .map(|&(ty, tx)| q.data[self.in_index(b, ch, ty, tx)])
            .map(|v| self.flow.dequantize(v as i64, q.scale, q.zero_point))
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

impl Plan for MaxPoolPlan {
    fn rule(&self) -> Rule {
        let p = &self.p;
        let geo = format!(
            "kernel {:?}, stride {:?}, padding {:?}, dilation {:?}, ceil_mode {}",
            p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode
        );
        match self.path {
            Path::Aten(l) => Rule::default()
                .with("path", l.describe())
                .with("window", geo)
                .with(
                    "max",
                    "q' = max(q) over the taps inside the input (padding skipped)",
                ),
            Path::Qnnpack => Rule::default()
                .with("path", "QNNPACK max pooling")
                .with("window", geo)
                .with(
                    "max",
                    "q' = max(q) over every tap, tap row min(max(o·s + t·d − p, 0), H − 1): \
                     padding taps repeat the border",
                ),
            Path::Float => Rule::default()
                .with("window", geo)
                .with(
                    "float op",
                    "max_pool2d of dequantize(q) in f32 (taps inside the input; exact)",
                )
                .with("quantize", quantize_rule(self.flow, &self.out)),
        }
    }

    fn predict(&self, inputs: &[&Value]) -> Result<Vec<Output>> {
        if self.path == Path::Float {
            return predict_floats(
                "max_pool2d",
                inputs[0],
                (self.in_dims, self.out_dims),
                (self.flow, &self.out),
                |q, j| self.float_at(q, j),
            );
        }
        predict_ints(
            "max_pool2d",
            inputs[0],
            self.in_dims,
            self.out_dims,
            |i| self.source(i),
            |q, j| self.element(q, j).map(Pred::Exact),
        )
    }

    fn trace(&self, inputs: &[&Value], _output: usize, i: usize) -> Result<Vec<String>> {
        let q = input("max_pool2d", inputs[0], &self.in_dims)?;
        let j = self.source(i);
        let [_, c, oh, ow] = self.out_dims;
        let (x, y, ch, b) = (
            j % ow,
            (j / ow) % oh,
            (j / (ow * oh)) % c,
            j / (ow * oh * c),
        );
        let taps = self.taps(y, x);
        let vals: Vec<String> = taps
            .iter()
            .map(|&(ty, tx)| format!("({ty},{tx})={}", q.data[self.in_index(b, ch, ty, tx)]))
            .collect();
        Ok(vec![
            format!("output (n {b}, c {ch}, h {y}, w {x}) from logical result {j}"),
            format!("taps {}", vals.join(" ")),
            format!("result {}", self.element(q, j)?),
            format!("rule: {}", self.rule()),
        ])
    }

    fn lowered(&self) -> Option<crate::ops::Lowered<'_>> {
        (self.path != Path::Float).then_some(crate::ops::Lowered::Window(self))
    }
}

impl crate::ops::WindowOp for MaxPoolPlan {
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
        crate::ops::Reduction::Max
    }
    fn taps(&self, axis: usize, o: usize) -> Vec<usize> {
        self.axis_taps(axis, o)
    }
    fn finish(&self, _j: usize, acc: i64, _sum: f32, _scale: f64, _zp: i64) -> Option<i64> {
        Some(acc)
    }
    fn finish_class(&self, _oy: usize, _ox: usize) -> Option<u64> {
        Some(0)
    }
    fn source(&self, i: usize) -> usize {
        MaxPoolPlan::source(self, i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_ctx as ctx;
    use super::*;
    use crate::ops::MemoryFormat;

    fn out(scale: f64, zero_point: i64) -> OutQParams {
        OutQParams {
            scale,
            zero_point,
            quant_min: 0,
            quant_max: 255,
        }
    }

    fn run(op: &MaxPool2d, c: Ctx, x: &QTensor, o: OutQParams) -> Result<Output> {
        super::super::test_run(op, c, x, o)
    }

    /// A `kernel_size` window with the default stride, padding, dilation and ceil_mode.
    fn window(kernel_size: [usize; 2]) -> MaxPool2d {
        MaxPool2d {
            kernel_size,
            stride: None,
            padding: [0, 0],
            dilation: [1, 1],
            ceil_mode: false,
        }
    }

    fn ints(o: &Output) -> Vec<i64> {
        o.ints().unwrap().iter().map(|p| p.value()).collect()
    }

    /// The trace names each output element's position and the taps it read.
    #[test]
    fn trace_locates_every_element() {
        // [2, 2, 4, 6], the code of logical index k is 4k mod 256; 2×2 windows, 2×3 outputs.
        let data = (0..96u32).map(|v| (v * 4 % 256) as u8).collect();
        let x = QTensor::new(vec![2, 2, 4, 6], data, 0.5, 10);
        let op = window([2, 2]);
        let c = ctx(Flow::ConvertFx, Engine::Fbgemm);
        let v = Value::Quantized(x.clone());
        let plan = op.plan(&c, &[v.meta()], Some(&out(0.5, 10))).unwrap();
        let want = ints(&plan.predict(&[&v]).unwrap()[0]);
        for (i, w) in want.iter().enumerate() {
            let (b, ch, y, xx) = (i / 12, i / 6 % 2, i / 3 % 2, i % 3);
            let t = plan.trace(&[&v], 0, i).unwrap();
            assert_eq!(
                t[0],
                format!("output (n {b}, c {ch}, h {y}, w {xx}) from logical result {i}")
            );
            let base = 24 * (2 * b + ch) + 12 * y + 2 * xx;
            let tap = |dy: usize, dx: usize| x.data[base + 6 * dy + dx];
            assert_eq!(
                t[1],
                format!(
                    "taps ({},{})={} ({},{})={} ({},{})={} ({},{})={}",
                    2 * y,
                    2 * xx,
                    tap(0, 0),
                    2 * y,
                    2 * xx + 1,
                    tap(0, 1),
                    2 * y + 1,
                    2 * xx,
                    tap(1, 0),
                    2 * y + 1,
                    2 * xx + 1,
                    tap(1, 1)
                )
            );
            assert_eq!(t[2], format!("result {w}"));
        }
    }

    /// Omitted arguments take `torch.nn.functional.max_pool2d`'s defaults.
    #[test]
    fn omitted_arguments_take_pytorchs_defaults() {
        let op: MaxPool2d = serde_json::from_str(r#"{"kernel_size": [3, 2]}"#).unwrap();
        assert_eq!(
            op.params(),
            Pool2dParams {
                kernel_size: [3, 2],
                stride: [3, 2],
                padding: [0, 0],
                dilation: [1, 1],
                ceil_mode: false,
            }
        );
        let err =
            serde_json::from_str::<MaxPool2d>(r#"{"kernel_size": [3, 2], "dilaton": [2, 2]}"#);
        assert!(err.unwrap_err().to_string().contains("dilaton"));
    }

    #[test]
    fn aten_skips_padding_and_qnnpack_repeats_the_border() {
        // One 1×5 row [90, 10, 20, 30, 40], kernel 1×3, stride 1, dilation 2. Output o taps
        // columns o − p, o − p + 2, o − p + 4.
        let x = QTensor::new(vec![1, 1, 1, 5], vec![90, 10, 20, 30, 40], 0.1, 0);
        let op = MaxPool2d {
            kernel_size: [1, 3],
            stride: Some([1, 1]),
            padding: [0, 2],
            dilation: [1, 2],
            ceil_mode: false,
        };
        // p = 2: ATen's quantized kernel requires p ≤ k/2 = 1 (an error, not a prediction);
        // QNNPACK only p ≤ ((k−1)d+1)/2 = 2. Its taps clamp: o = 3 reads 1, 3, 4 → 40.
        assert!(run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &x, out(0.1, 0)).is_err());
        let q = run(&op, ctx(Flow::ConvertFx, Engine::Qnnpack), &x, out(0.1, 0)).unwrap();
        assert_eq!(q.shape, vec![1, 1, 1, 5]);
        assert_eq!(ints(&q), vec![90, 90, 90, 40, 40]);
        let op = MaxPool2d {
            padding: [0, 1],
            ..op
        };
        // p = 1, 3 outputs. o = 0: ATen {1, 3} → 30, QNNPACK {0, 1, 3} → 90 (the clamped
        // padding tap reads the border); o = 2: ATen {1, 3} (5 is outside) → 30, QNNPACK
        // {1, 3, 4} → 40.
        let a = run(&op, ctx(Flow::ConvertFx, Engine::X86), &x, out(0.1, 0)).unwrap();
        let q = run(&op, ctx(Flow::ConvertFx, Engine::Qnnpack), &x, out(0.1, 0)).unwrap();
        assert_eq!(a.shape, vec![1, 1, 1, 3]);
        assert_eq!(ints(&a), vec![30, 90, 30]);
        assert_eq!(ints(&q), vec![90, 90, 40]);
        // The reference flows take ATen's taps on the dequantized values.
        let r = run(
            &op,
            ctx(Flow::ConvertToReferenceFx, Engine::Qnnpack),
            &x,
            out(0.1, 0),
        )
        .unwrap();
        assert_eq!(ints(&r), vec![30, 90, 30]);
    }

    #[test]
    fn ceil_mode_runs_aten_under_qnnpack_and_1x1_is_rejected() {
        let x = QTensor::new(vec![1, 1, 3, 3], (1..=9).collect(), 0.5, 0);
        let op = MaxPool2d {
            ceil_mode: true,
            ..window([2, 2])
        };
        let o = run(&op, ctx(Flow::ConvertFx, Engine::Qnnpack), &x, out(0.5, 0)).unwrap();
        assert_eq!(o.shape, vec![1, 1, 2, 2]);
        assert_eq!(ints(&o), vec![5, 6, 8, 9]);
        let one = MaxPool2d {
            kernel_size: [1, 1],
            ceil_mode: false,
            ..op
        };
        assert!(run(&one, ctx(Flow::ConvertFx, Engine::Qnnpack), &x, out(0.5, 0)).is_err());
        assert_eq!(
            ints(&run(&one, ctx(Flow::ConvertFx, Engine::Onednn), &x, out(0.5, 0)).unwrap()),
            (1..=9).collect::<Vec<_>>()
        );
        // Other output qparams are an error for the quantized op.
        assert!(run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &x, out(0.25, 0)).is_err());
    }

    #[test]
    fn nchw_strided_1x1_inputs_come_back_scrambled() {
        // 1×2×1×1 with padding 1 and kernel 2: a 2×2 output per channel, every window holding
        // the single pixel. Channel values 7 and 9: NHWC order is 7, 9, 7, 9, ….
        let mut x = QTensor::new(vec![1, 2, 1, 1], vec![7, 9], 1.0, 0);
        let op = MaxPool2d {
            kernel_size: [2, 2],
            stride: Some([1, 1]),
            padding: [1, 1],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let o = run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &x, out(1.0, 0)).unwrap();
        assert_eq!(ints(&o), vec![7, 9, 7, 9, 7, 9, 7, 9]);
        x.memory_format = MemoryFormat::ChannelsLast;
        let o = run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &x, out(1.0, 0)).unwrap();
        assert_eq!(ints(&o), vec![7, 7, 7, 7, 9, 9, 9, 9]);
    }

    #[test]
    fn windows_without_taps_give_the_accumulator_start() {
        // W = 1, kernel width 2, padding 1, dilation 2: taps −1 and 1, both outside.
        let x = QTensor::new(vec![1, 1, 2, 1], vec![200, 100], 0.5, 90);
        let op = MaxPool2d {
            kernel_size: [1, 2],
            stride: Some([1, 1]),
            padding: [0, 1],
            dilation: [2, 2],
            ceil_mode: false,
        };
        let a = run(&op, ctx(Flow::ConvertFx, Engine::Fbgemm), &x, out(0.5, 90)).unwrap();
        assert_eq!(ints(&a), vec![0, 0]);
        // The float pool gives −inf, which quantizes to the bottom of the range.
        let c = ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm);
        let o = OutQParams {
            quant_min: 3,
            ..out(0.5, 90)
        };
        assert_eq!(ints(&run(&op, c, &x, o).unwrap()), vec![3, 3]);
        // QNNPACK clamps the taps to the border: column 0 twice.
        let q = run(&op, ctx(Flow::ConvertFx, Engine::Qnnpack), &x, out(0.5, 90)).unwrap();
        assert_eq!(ints(&q), vec![200, 100]);
    }

    #[test]
    fn decomposed_reference_clamps_to_the_quant_range() {
        let x = QTensor::new(vec![1, 1, 2, 2], vec![0, 100, 200, 250], 0.5, 10);
        let op = window([2, 2]);
        let o = OutQParams {
            scale: 0.5,
            zero_point: 10,
            quant_min: 0,
            quant_max: 127,
        };
        let c = ctx(Flow::ConvertToReferenceDecomposedFx, Engine::Fbgemm);
        assert_eq!(ints(&run(&op, c, &x, o).unwrap()), vec![127]);
        let c = ctx(Flow::ConvertToReferenceFx, Engine::Fbgemm);
        assert_eq!(ints(&run(&op, c, &x, o).unwrap()), vec![250]);
        // The reference flows requantize the float max (250 → x = 120) with the output's own
        // qparams: f32(120 / 0.75) + 3 = 163, not the input's code.
        for flow in [
            Flow::ConvertToReferenceFx,
            Flow::ConvertToReferenceDecomposedFx,
        ] {
            let o = out(0.75, 3);
            assert_eq!(
                ints(&run(&op, ctx(flow, Engine::Fbgemm), &x, o).unwrap()),
                vec![163]
            );
            let v = Value::Quantized(x.clone());
            let plan = op.plan(&ctx(flow, Engine::Fbgemm), &[v.meta()], Some(&o));
            let trace = plan.unwrap().trace(&[&v], 0, 0).unwrap();
            assert!(trace.contains(&"result 163".to_string()), "{trace:?}");
        }
        // Bad inputs are errors.
        let flat = QTensor::new(vec![4], vec![0; 4], 0.5, 10);
        assert!(run(&op, c, &flat, o).is_err());
        let nan = QTensor::new(vec![1, 1, 2, 2], vec![0; 4], f64::NAN, 10);
        assert!(run(&op, c, &nan, o).is_err());
    }
}
