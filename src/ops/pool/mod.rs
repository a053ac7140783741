//! Pooling on quantized tensors: `max_pool2d`, `avg_pool2d` and `adaptive_avg_pool2d`.
//!
//! Which kernel runs (PyTorch `aten/src/ATen/native/quantized/cpu/Pooling.cpp`,
//! `AveragePool2d.cpp`, `AdaptiveAveragePooling.cpp`):
//!
//! - under the qnnpack engine, quint8 inputs go to QNNPACK (`qnnpack/src/max-pooling.c`,
//!   `average-pooling.c`) when the op allows it (no `ceil_mode`; adaptive pooling only for
//!   output sizes that divide the input and differ from it);
//! - otherwise ATen's kernels: the NHWC kernel (`kernels/QuantizedOpKernels.cpp`, the AVX2 build
//!   under the AVX2 and AVX512 capabilities) when the input `is_contiguous(ChannelsLast)` — also
//!   true for tensors contiguous both ways (`C = 1` or `H = W = 1`) — else the NCHW kernel.
//!
//! **Scrambled outputs (PyTorch bug, modelled):** ATen's NHWC kernels write NHWC order into an
//! output allocated with the input's `suggest_memory_format()`. An NCHW-strided `N×C×1×1` input
//! (`C > 1`) is channels-last-contiguous but suggests NCHW, so when padding or adaptive pooling
//! makes the output larger than 1×1 the NHWC-ordered results land in an NCHW buffer: logical
//! output element `i` is the `i`-th value in NHWC order. A channels-last-strided `N×C×1×1`
//! tensor (what a quantized conv returns) is unaffected. In qparity's golden records a 4-D
//! `channels_last` tensor has channels-last strides (`get_channels_last_strides_2d`), also when
//! it is contiguous both ways.
//!
//! Every pool keeps the input's qparams in `convert_fx`. In the reference flows the op is the
//! float pool on the dequantized input, then the flow's quantize node with the output qparams.

pub mod adaptive;
pub mod avg;
pub mod max;
pub mod mean;

use super::{MemoryFormat, Meta, OutQParams, Output, Predicted, QTensor};
use crate::engine::flow::Flow;
use crate::engine::Ctx;
use crate::numerics::bound::Pred;
use crate::numerics::qparams::validate_qparams;
use crate::{Error, Result};

/// The `N, C, H, W` of a 4-D, non-empty input.
pub(crate) fn nchw(op: &str, shape: &[usize]) -> Result<[usize; 4]> {
    match *shape {
        [n, c, h, w] if n > 0 && c > 0 && h > 0 && w > 0 => Ok([n, c, h, w]),
        [_, _, _, _] => Err(Error::shape(op, format!("empty input {shape:?}"))),
        _ => Err(Error::shape(
            op,
            format!("expects a 4-D N×C×H×W input, got shape {shape:?} (3-D inputs not modelled)"),
        )),
    }
}

/// Whether PyTorch sees the tensor as `is_contiguous(ChannelsLast)`.
pub(crate) fn is_channels_last_contiguous(format: MemoryFormat, [_, c, h, w]: [usize; 4]) -> bool {
    format == MemoryFormat::ChannelsLast || c == 1 || h * w == 1
}

/// `suggest_memory_format() == ChannelsLast` (`c10/core/MemoryFormat.h:
/// is_channels_last_strides_2d`): channels-last strides, except `N×1×1×1`, whose strides are
/// ambiguous and suggest NCHW.
pub(crate) fn suggests_channels_last(format: MemoryFormat, [_, c, h, w]: [usize; 4]) -> bool {
    format == MemoryFormat::ChannelsLast && !(c == 1 && h * w == 1)
}

/// How ATen's (non-QNNPACK) pooling kernels see a 4-D input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtenLayout {
    /// The NCHW kernel.
    Nchw,
    /// The NHWC kernel; `scrambled`: its NHWC-ordered output lands in an NCHW buffer.
    Nhwc { scrambled: bool },
}

impl AtenLayout {
    pub(crate) fn of(format: MemoryFormat, dims: [usize; 4]) -> Self {
        if is_channels_last_contiguous(format, dims) {
            AtenLayout::Nhwc {
                scrambled: !suggests_channels_last(format, dims),
            }
        } else {
            AtenLayout::Nchw
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            AtenLayout::Nchw => "ATen NCHW kernel",
            AtenLayout::Nhwc { scrambled: false } => "ATen NHWC kernel",
            AtenLayout::Nhwc { scrambled: true } => {
                "ATen NHWC kernel into an NCHW buffer (N×C×1×1 NCHW-strided input): output \
                 element i is the i-th result in NHWC order"
            }
        }
    }

    /// Which logical result lands at logical output position `i`.
    pub(crate) fn source_index(self, i: usize, [n, c, h, w]: [usize; 4]) -> usize {
        match self {
            AtenLayout::Nhwc { scrambled: true } => {
                let ch = i % c;
                let x = (i / c) % w;
                let y = (i / (c * w)) % h;
                let b = i / (c * w * h);
                debug_assert!(b < n);
                ((b * c + ch) * h + y) * w + x
            }
            _ => i,
        }
    }
}

/// The checked input of a one-input pool.
pub(crate) struct PoolInput {
    pub format: MemoryFormat,
    /// `N, C, H, W`.
    pub dims: [usize; 4],
    /// The input scale.
    pub scale: f64,
    pub out: OutQParams,
}

/// Checks a pool's single 4-D input and its qparams against the output's.
pub(crate) fn plan_input(
    op: &str,
    ctx: &Ctx,
    inputs: &[Meta<'_>],
    out: Option<&OutQParams>,
) -> Result<PoolInput> {
    let x = super::expect_inputs(op, inputs, 1)?[0];
    let out = *super::expect_out(op, out)?;
    let (scale, _) = check_qparams(op, ctx, &x, &out)?;
    Ok(PoolInput {
        format: x.memory_format,
        dims: nchw(op, x.shape)?,
        scale,
        out,
    })
}

/// Checks the input and output qparams of a pool: the quantized kernels keep the input's.
fn check_qparams(op: &str, ctx: &Ctx, input: &Meta<'_>, out: &OutQParams) -> Result<(f64, i64)> {
    let (scale, zero_point) = input.qparams(op)?;
    validate_qparams("input qparams", scale, zero_point, 0, 255)?;
    validate_qparams("output qparams", out.scale, out.zero_point, 0, 255)?;
    if ctx.flow.is_integer() && (out.scale, out.zero_point) != (scale, zero_point) {
        return Err(Error::invalid(
            op,
            "the quantized op keeps the input's qparams, the output has others",
        ));
    }
    Ok((scale, zero_point))
}

/// The input of a planned pool, checked against the plan's shape.
pub(crate) fn input<'v>(op: &str, v: &'v super::Value, shape: &[usize]) -> Result<&'v QTensor> {
    let q = v.quantized(op)?;
    if q.shape != shape || q.data.len() != shape.iter().product::<usize>() {
        return Err(Error::shape(
            op,
            format!(
                "input of shape {:?} with {} values, planned for {shape:?}",
                q.shape,
                q.data.len()
            ),
        ));
    }
    Ok(q)
}

/// A pool's `int_repr` output: at each logical output position `i` lands the prediction of the
/// logical result `source(i)` (see [`AtenLayout::source_index`]).
pub(crate) fn predict_ints(
    op: &str,
    v: &super::Value,
    in_dims: [usize; 4],
    out_dims: [usize; 4],
    source: impl Fn(usize) -> usize,
    element: impl Fn(&QTensor, usize) -> Result<Pred>,
) -> Result<Vec<Output>> {
    let q = input(op, v, &in_dims)?;
    let n: usize = out_dims.iter().product();
    let values = (0..n)
        .map(|i| element(q, source(i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![Output::new(
        "int_repr",
        out_dims.to_vec(),
        Predicted::Ints(values),
    )])
}

/// The reference flows' prediction of a pool whose float result at logical position `j` is
/// `float_at(q, j)` (exact): `int_repr` and `pre_quant`, in the logical order (float ops do not
/// scramble).
pub(crate) fn predict_floats(
    op: &str,
    v: &super::Value,
    (in_dims, out_dims): ([usize; 4], [usize; 4]),
    (flow, out): (Flow, &OutQParams),
    float_at: impl Fn(&QTensor, usize) -> f32,
) -> Result<Vec<Output>> {
    let q = input(op, v, &in_dims)?;
    let n: usize = out_dims.iter().product();
    let floats = (0..n).map(|j| float_at(q, j)).collect();
    super::exact_float_then_quantize(op, flow, out, &out_dims, floats)
}

/// `torch.mean(dequantize(q), (2, 3))` in f32 as ATen computes it for the tensor's layout: the
/// cascade sum of [`crate::numerics::sum::sum_hw`], then `f32(sum / f32(H·W))`. `N·C` values.
pub(crate) fn float_mean_hw(flow: Flow, q: &QTensor, dims: [usize; 4]) -> Vec<f32> {
    let dq: Vec<f32> = q
        .data
        .iter()
        .map(|&v| flow.dequantize(v as i64, q.scale, q.zero_point))
        .collect();
    let n = (dims[2] * dims[3]) as f32;
    let channels_last = q.memory_format == MemoryFormat::ChannelsLast;
    crate::numerics::sum::sum_hw(&dq, dims, channels_last)
        .into_iter()
        .map(|s| s / n)
        .collect()
}

/// The reference flows' quantize node after the float op.
pub(crate) fn quantize_out(op: &str, flow: Flow, out: &OutQParams, x: f32) -> Result<i64> {
    let (lo, hi) = flow.clamp(out.quant_min, out.quant_max);
    flow.quantize(x, out.scale, out.zero_point, lo, hi)
        .ok_or_else(|| Error::invalid(op, "NaN reaches the quantize node"))
}

/// The rule line of the reference flows' quantize node.
pub(crate) fn quantize_rule(flow: Flow, out: &OutQParams) -> String {
    let (lo, hi) = flow.clamp(out.quant_min, out.quant_max);
    format!(
        "{} quantize (scale {}, zero point {}), clamp {lo}..{hi}",
        flow.name(),
        out.scale,
        out.zero_point
    )
}

/// The context the op unit tests run under (AVX-512 VNNI CPU).
#[cfg(test)]
pub(crate) fn test_ctx(flow: Flow, engine: crate::engine::Engine) -> Ctx {
    use crate::engine::{CpuFeatures, Isa};
    Ctx {
        flow,
        engine,
        isa: Isa::Vnni,
        cpu: CpuFeatures::AVX512_VNNI,
    }
}

/// Plans `op` on one quantized input and predicts its first output (the pool unit tests).
#[cfg(test)]
pub(crate) fn test_run(
    op: &dyn super::Op,
    ctx: Ctx,
    x: &QTensor,
    out: OutQParams,
) -> Result<Output> {
    let v = super::Value::Quantized(x.clone());
    let plan = op.plan(&ctx, &[v.meta()], Some(&out))?;
    Ok(plan.predict(&[&v])?.remove(0))
}

/// Output qparams equal to the input's, full quint8 range (the pool unit tests).
#[cfg(test)]
pub(crate) fn same_qparams(x: &QTensor) -> OutQParams {
    OutQParams {
        scale: x.scale,
        zero_point: x.zero_point,
        quant_min: 0,
        quant_max: 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_pytorch_contiguity() {
        let cl = MemoryFormat::ChannelsLast;
        let nc = MemoryFormat::Contiguous;
        assert_eq!(AtenLayout::of(nc, [2, 3, 4, 5]), AtenLayout::Nchw);
        assert_eq!(
            AtenLayout::of(cl, [2, 3, 4, 5]),
            AtenLayout::Nhwc { scrambled: false }
        );
        // N×C×1×1: channels-last-contiguous either way; NCHW strides suggest NCHW.
        assert_eq!(
            AtenLayout::of(nc, [2, 3, 1, 1]),
            AtenLayout::Nhwc { scrambled: true }
        );
        assert_eq!(
            AtenLayout::of(cl, [2, 3, 1, 1]),
            AtenLayout::Nhwc { scrambled: false }
        );
        // C = 1 NCHW: NHWC kernel; "scrambled" is the identity there.
        let l = AtenLayout::of(nc, [2, 1, 3, 3]);
        assert!((0..18).all(|i| l.source_index(i, [2, 1, 3, 3]) == i));
        // A 1×2×2×2 output in NHWC order read as NCHW.
        let s = AtenLayout::Nhwc { scrambled: true };
        let got: Vec<usize> = (0..8).map(|i| s.source_index(i, [1, 2, 2, 2])).collect();
        assert_eq!(got, vec![0, 4, 1, 5, 2, 6, 3, 7]);
        // Channels-last strides suggest channels-last except on N×1×1×1, whatever H·W's factors.
        assert!(!suggests_channels_last(cl, [2, 1, 1, 1]));
        assert!(suggests_channels_last(cl, [2, 1, 2, 2]));
        assert!(suggests_channels_last(cl, [2, 1, 1, 3]));
        assert!(suggests_channels_last(cl, [2, 3, 1, 1]));
        assert!(!suggests_channels_last(nc, [2, 3, 4, 5]));
        assert_eq!(
            AtenLayout::of(cl, [2, 1, 1, 1]),
            AtenLayout::Nhwc { scrambled: true }
        );
        let names = [
            AtenLayout::Nchw,
            AtenLayout::Nhwc { scrambled: false },
            AtenLayout::Nhwc { scrambled: true },
        ]
        .map(AtenLayout::describe);
        assert_eq!(&names[..2], ["ATen NCHW kernel", "ATen NHWC kernel"]);
        assert!(names[2].starts_with("ATen NHWC kernel into an NCHW buffer"));
    }
    #[test]
    fn nchw_takes_four_non_empty_dims() {
        assert_eq!(nchw("p", &[1, 2, 3, 4]).unwrap(), [1, 2, 3, 4]);
        for k in 0..4 {
            let mut s = [2, 3, 4, 5];
            s[k] = 0;
            let e = nchw("p", &s).unwrap_err().to_string();
            assert!(e.contains("empty input"), "{s:?}: {e}");
        }
        for s in [&[2, 3, 4][..], &[1, 2, 3, 4, 5], &[]] {
            let e = nchw("p", s).unwrap_err().to_string();
            assert!(e.contains("4-D"), "{s:?}: {e}");
        }
    }
    #[test]
    fn input_must_be_the_planned_shape_with_its_values() {
        let v = |shape: Vec<usize>, n: usize| {
            super::super::Value::Quantized(QTensor::new(shape, vec![0; n], 1.0, 0))
        };
        assert!(input("p", &v(vec![1, 1, 2, 2], 4), &[1, 1, 2, 2]).is_ok());
        assert!(input("p", &v(vec![1, 1, 2, 2], 3), &[1, 1, 2, 2]).is_err());
        assert!(input("p", &v(vec![1, 2, 2, 1], 4), &[1, 1, 2, 2]).is_err());
    }

    #[test]
    fn the_quantize_rule_names_the_flow_qparams_and_clamp() {
        let out = OutQParams {
            scale: 0.5,
            zero_point: 3,
            quant_min: 0,
            quant_max: 127,
        };
        for (flow, clamp) in [
            (Flow::ConvertToReferenceFx, "0..255"),
            (Flow::ConvertToReferenceDecomposedFx, "0..127"),
        ] {
            assert_eq!(
                quantize_rule(flow, &out),
                format!(
                    "{} quantize (scale 0.5, zero point 3), clamp {clamp}",
                    flow.name()
                )
            );
        }
    }
}
