//! Random quantized graphs for structure-aware fuzzing: a small DAG of `convert_fx` ops (the
//! model input's quantize node, then conv2d — grouped and depthwise included — linear,
//! add / add_relu, mul, cat, pools, mean, hardswish and the other activations, flatten, scalar
//! ops, batch norm), with shapes made valid as the graph grows, random qparams, engines and
//! capture CPUs, built from arbitrary bytes ([`FuzzGraph`]).
//!
//! [`check_graph`] runs every node on an optimized backend (both entry points: `prepare` on
//! logical-order codes as `qparity check --fused` does, and `prepare_in_memory` as the model
//! runner does) and on the reference plan, node by node on the same inputs, and returns a
//! [`Disagreement`] for any output byte the reference does not admit, for a backend error on a
//! stage the reference runs, or for a wrong output shape. A graph the reference rejects (a plan
//! or prediction error) simply ends there: invalid inputs are errors, never panics.

use crate::backend::Backend;
use crate::engine::flow::Flow;
use crate::engine::{fbgemm_gemm_isa, CaptureIsa, CpuFeatures, Ctx, Engine};
use crate::geometry::{Conv2dParams, Pool2dParams};
use crate::numerics::bound::Pred;
use crate::ops::layer::{Geometry, QLayer, QWeight};
use crate::ops::{MemoryFormat, Meta, Op, OutQParams, Predicted, QTensor, Value};
use crate::tensor::Tensor;
use arbitrary::{Arbitrary, Unstructured};
use std::fmt;
use std::sync::Arc;

/// The capture CPU classes a graph may be planned for (each engine is planned only where
/// [`CpuFeatures::check_modelled`] accepts it; otherwise the AVX2 class is used).
const CPUS: [CpuFeatures; 5] = [
    CpuFeatures::AVX2,
    CpuFeatures::AVX512_VNNI,
    CpuFeatures {
        amx_int8: true,
        ..CpuFeatures::AVX512_VNNI
    },
    CpuFeatures {
        avx_vnni: true,
        ..CpuFeatures::AVX2
    },
    CpuFeatures {
        avx512_vnni: false,
        ..CpuFeatures::AVX512_VNNI
    },
];

/// How a node's output qparams are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutSpec {
    /// The first input's qparams (ops that keep them in `convert_fx`: relu, clamps, pools,
    /// shape ops).
    Keep,
    /// The qparams the quantized kernel fixes (sigmoid, tanh, hardsigmoid).
    Fixed { scale: f64, zero_point: i64 },
    /// As a min/max observer calibrated on this graph's input would pick them (from the
    /// reference flow's pre-quantize floats, 0 included), the scale then multiplied by
    /// `2^(widen/4)` (negative: values beyond the calibrated range saturate), over
    /// `0..=quant_max` (127: reduce_range).
    Calibrated { widen: i8, quant_max: i64 },
    /// The qparams `add.Scalar` / `mul.Scalar`'s kernel picks from its input's.
    Scalar(crate::ops::scalar::ScalarOp),
}

/// One node: an op on earlier values.
#[derive(Debug, Clone)]
pub struct FuzzNode {
    pub op: Arc<dyn Op>,
    /// Value indices: 0 is the model input's quantize node, `k + 1` is node `k`.
    pub inputs: Vec<usize>,
    pub out: OutSpec,
    /// The memory format the output is held in.
    pub out_format: MemoryFormat,
}

/// A random quantized graph in the `convert_fx` flow.
#[derive(Debug, Clone)]
pub struct FuzzGraph {
    pub engine: Engine,
    pub cpu: CpuFeatures,
    pub capture_isa: CaptureIsa,
    /// The model's f32 input (logical order).
    pub input: Tensor,
    /// The memory format the quantize node's output is held in.
    pub input_format: MemoryFormat,
    /// The quantize node's qparams.
    pub input_out: OutSpec,
    pub nodes: Vec<FuzzNode>,
}

impl FuzzGraph {
    /// The planning context: `convert_fx` on the capture CPU, FBGEMM's GEMM ISA as
    /// `FBGEMM_ENABLE_INSTRUCTIONS` (`capture_isa`) makes it.
    pub fn ctx(&self) -> Ctx {
        Ctx {
            flow: Flow::ConvertFx,
            engine: self.engine,
            isa: fbgemm_gemm_isa(self.capture_isa, &self.cpu),
            cpu: self.cpu,
        }
    }

    /// The graph in words: context, input, and every node with its op (layers without their
    /// weight values), inputs, output qparams rule and memory format.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "graph: engine {}, capture CPU {}, FBGEMM ISA {} (capture isa {})\n\
             v0 = quantize(input f32 {:?}, {:?} out, {:?})\n",
            self.engine.name(),
            self.cpu.class_name(),
            self.ctx().isa.name(),
            self.capture_isa.name(),
            self.input.shape,
            self.input_format,
            self.input_out,
        );
        for (k, n) in self.nodes.iter().enumerate() {
            let ins: Vec<String> = n.inputs.iter().map(|i| format!("v{i}")).collect();
            s.push_str(&format!(
                "v{} = {}({}) out {:?}, {:?}\n",
                k + 1,
                op_text(&*n.op),
                ins.join(", "),
                n.out,
                n.out_format
            ));
        }
        s
    }
}

/// An op in a line: a layer's geometry and weight qscheme, other ops' parameters.
fn op_text(op: &dyn Op) -> String {
    match op.layer() {
        Some(l) => format!(
            "{} {:?} (weight {}, scales {:?}…, zero points {:?}…, bias {}, relu {})",
            op.name(),
            l.geometry,
            if l.weight.per_channel {
                "per-channel"
            } else {
                "per-tensor"
            },
            &l.weight.scales[..l.weight.scales.len().min(2)],
            &l.weight.zero_points[..l.weight.zero_points.len().min(2)],
            l.bias.is_some(),
            l.relu
        ),
        None => format!("{} {:?}", op.name(), op),
    }
}

/// A value while the graph is drawn: shape and memory format.
#[derive(Debug, Clone)]
struct Slot {
    shape: Vec<usize>,
    format: MemoryFormat,
}

fn is_4d(s: &Slot) -> bool {
    s.shape.len() == 4
}

/// Channel counts: mostly small, sometimes around the 8-, 16- and 32-lane vectors.
fn channels(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(if u.ratio(1, 6)? {
        *u.choose(&[15usize, 16, 17, 31, 32, 33, 40])?
    } else {
        u.int_in_range(1usize..=8)?
    })
}

/// A weight-like scale: exact values or log-uniform in a sane range.
fn sane_scale(u: &mut Unstructured<'_>) -> arbitrary::Result<f32> {
    Ok(if bool::arbitrary(u)? {
        *u.choose(&super::EXACT_SCALES)?
    } else {
        super::log_scale(0.3 + 0.6 * u.int_in_range(0u32..=1000)? as f64 / 1000.0)
    })
}

/// How the output qparams of a calibrated op are drawn: mostly exactly calibrated.
fn calibrated(u: &mut Unstructured<'_>) -> arbitrary::Result<OutSpec> {
    let widen = if u.ratio(1, 2)? {
        0
    } else {
        u.int_in_range(-6i8..=8)?
    };
    let quant_max = if u.ratio(1, 5)? { 127 } else { 255 };
    Ok(OutSpec::Calibrated { widen, quant_max })
}

/// `n` bytes from the input (fewer when it runs out), cycled to length `n`.
fn bytes(u: &mut Unstructured<'_>, n: usize) -> arbitrary::Result<Vec<u8>> {
    let b = u.bytes(u.len().min(n))?;
    if b.is_empty() {
        return Ok(vec![0x5a; n]);
    }
    Ok(b.iter().copied().cycle().take(n).collect())
}

/// i8 weights with one of [`super::GemmCase::from_parts`]'s value distributions.
fn weights(u: &mut Unstructured<'_>, n: usize) -> arbitrary::Result<Vec<i8>> {
    let bias = u.int_in_range(0u8..=3)?;
    let raw = bytes(u, n)?;
    Ok(super::GemmCase::from_parts(1, n, 1, bias, &raw).b)
}

/// A quantized linear / conv layer of this geometry with random weights, scales, zero points
/// and bias.
fn layer(u: &mut Unstructured<'_>, geometry: Geometry) -> arbitrary::Result<QLayer> {
    let shape = geometry.weight_shape();
    let oc = geometry.out_channels();
    let n: usize = shape.iter().product();
    let int_repr = weights(u, n)?;
    let per_channel = bool::arbitrary(u)?;
    let ws = sane_scale(u)?;
    let nw = if per_channel { oc } else { 1 };
    let scales: Vec<f32> = (0..nw)
        .map(|j| ws * (1.0 + (j % 3) as f32 * 0.25))
        .collect();
    // Mostly symmetric weights (PyTorch's default qconfigs); sometimes affine ones.
    let zero_points: Vec<i64> = if u.ratio(1, 8)? {
        let z = u.int_in_range(-8i64..=8)?;
        (0..nw)
            .map(|j| (z + j as i64 % 3).clamp(-128, 127))
            .collect()
    } else {
        vec![0; nw]
    };
    let bias = if bool::arbitrary(u)? {
        let m = u.int_in_range(-40i32..=40)? as f32;
        Some((0..oc).map(|j| (j as f32 - 1.5) * ws * m * 0.05).collect())
    } else {
        None
    };
    Ok(QLayer {
        geometry,
        bias,
        weight: QWeight {
            shape,
            int_repr,
            scales,
            zero_points,
            per_channel,
        },
        relu: bool::arbitrary(u)?,
        cache: Default::default(),
    })
}

/// A conv2d on an NCHW value with `c` channels and plane `h × w`: regular, grouped or
/// depthwise, kernel 1 to 5, stride, padding and dilation; shrunk to a 1×1 window where the
/// drawn one does not fit.
fn conv_params(
    u: &mut Unstructured<'_>,
    c: usize,
    h: usize,
    w: usize,
) -> arbitrary::Result<Conv2dParams> {
    let divisors: Vec<usize> = (1..=c).filter(|&g| c.is_multiple_of(g)).collect();
    let (groups, out_channels) = match u.int_in_range(0u8..=3)? {
        // Depthwise (channel multiplier 1 or 2).
        0 => (c, c * u.int_in_range(1usize..=2)?),
        1 => {
            let g = *u.choose(&divisors)?;
            (g, g * u.int_in_range(1usize..=4)?)
        }
        _ => (1, channels(u)?),
    };
    let ks = if u.ratio(1, 8)? {
        5
    } else {
        u.int_in_range(1usize..=3)?
    };
    let square = bool::arbitrary(u)?;
    let k2 = if square {
        ks
    } else {
        u.int_in_range(1usize..=3)?
    };
    let mut p = Conv2dParams {
        in_channels: c,
        out_channels,
        kernel_size: [ks, k2],
        stride: [u.int_in_range(1usize..=2)?, u.int_in_range(1usize..=2)?],
        padding: [u.int_in_range(0usize..=2)?, u.int_in_range(0usize..=2)?],
        dilation: [u.int_in_range(1usize..=2)?, u.int_in_range(1usize..=2)?],
        groups,
    };
    if square {
        p.stride[1] = p.stride[0];
        p.padding[1] = p.padding[0];
        p.dilation[1] = p.dilation[0];
    }
    for (d, size) in [h, w].into_iter().enumerate() {
        if size + 2 * p.padding[d] < p.dilation[d] * (p.kernel_size[d] - 1) + 1 {
            p.kernel_size[d] = 1;
            p.dilation[d] = 1;
        }
    }
    Ok(p)
}

/// The kinds of nodes drawn.
const KINDS: u8 = 21;

/// Draws node `k` (a kind, its inputs among `slots`, its parameters); returns the node and its
/// output's slot, or `None` where the kind does not apply to the chosen input.
fn node(u: &mut Unstructured<'_>, slots: &[Slot]) -> arbitrary::Result<Option<(FuzzNode, Slot)>> {
    let last = slots.len() - 1;
    let x = if u.ratio(1, 2)? {
        last
    } else {
        u.int_in_range(0..=last)?
    };
    let xs = &slots[x];
    let kind = u.int_in_range(0u8..=KINDS - 1)?;
    let same_format = |shape: Vec<usize>| Slot {
        shape,
        format: xs.format,
    };
    let keep = OutSpec::Keep;
    let (op, inputs, out, slot): (Arc<dyn Op>, Vec<usize>, OutSpec, Slot) = match kind {
        0..=3 if is_4d(xs) => {
            let [_, c, h, w] = xs.shape[..] else {
                return Ok(None);
            };
            let p = conv_params(u, c, h, w)?;
            let g = Geometry::Conv2d(p);
            let Ok(shape) = g.output_shape(&xs.shape) else {
                return Ok(None);
            };
            let l = layer(u, g)?;
            let slot = Slot {
                shape,
                format: MemoryFormat::ChannelsLast,
            };
            (Arc::new(l), vec![x], calibrated(u)?, slot)
        }
        4 | 5 => {
            let Some(&k) = xs.shape.last() else {
                return Ok(None);
            };
            if k > 512 {
                return Ok(None);
            }
            let n = if u.ratio(1, 3)? {
                *u.choose(&super::BLOCK_SIZES)?
            } else {
                u.int_in_range(1usize..=24)?
            };
            let g = Geometry::Linear {
                in_features: k,
                out_features: n,
            };
            let Ok(shape) = g.output_shape(&xs.shape) else {
                return Ok(None);
            };
            let l = layer(u, g)?;
            let slot = Slot {
                shape,
                format: MemoryFormat::Contiguous,
            };
            (Arc::new(l), vec![x], calibrated(u)?, slot)
        }
        6 | 7 => {
            let y = partner(u, slots, x)?;
            let relu = bool::arbitrary(u)?;
            let op: Arc<dyn Op> = if kind == 6 {
                Arc::new(crate::ops::add::Add { relu })
            } else {
                Arc::new(crate::ops::mul::Mul { relu })
            };
            (
                op,
                vec![x, y],
                calibrated(u)?,
                same_format(xs.shape.clone()),
            )
        }
        8 => {
            let rank = xs.shape.len();
            if rank == 0 {
                return Ok(None);
            }
            let dim = u.int_in_range(0..=rank - 1)?;
            // Values that match `x` on every other dimension (x itself always does).
            let fits: Vec<usize> = (0..slots.len())
                .filter(|&j| {
                    let s = &slots[j].shape;
                    s.len() == rank && (0..rank).all(|d| d == dim || s[d] == xs.shape[d])
                })
                .collect();
            let mut ins = vec![x];
            for _ in 0..u.int_in_range(1usize..=2)? {
                ins.push(*u.choose(&fits)?);
            }
            let mut shape = xs.shape.clone();
            shape[dim] = ins.iter().map(|&j| slots[j].shape[dim]).sum();
            let neg = bool::arbitrary(u)?;
            let cat = crate::ops::cat::Cat {
                dim: if neg {
                    dim as i64 - rank as i64
                } else {
                    dim as i64
                },
                relu: u.ratio(1, 4)?,
            };
            (Arc::new(cat), ins, calibrated(u)?, same_format(shape))
        }
        9 if is_4d(xs) => {
            let k = [u.int_in_range(1usize..=3)?, u.int_in_range(1usize..=3)?];
            let p = crate::ops::pool::max::MaxPool2d {
                kernel_size: k,
                stride: if bool::arbitrary(u)? {
                    None
                } else {
                    Some([u.int_in_range(1usize..=2)?, u.int_in_range(1usize..=2)?])
                },
                padding: [u.int_in_range(0..=k[0] / 2)?, u.int_in_range(0..=k[1] / 2)?],
                dilation: [u.int_in_range(1usize..=2)?, u.int_in_range(1usize..=2)?],
                ceil_mode: u.ratio(1, 4)?,
            };
            let Some(shape) = pooled(&p.params(), &xs.shape) else {
                return Ok(None);
            };
            (Arc::new(p), vec![x], keep, same_format(shape))
        }
        10 if is_4d(xs) => {
            let k = [u.int_in_range(1usize..=3)?, u.int_in_range(1usize..=3)?];
            let p = crate::ops::pool::avg::AvgPool2d {
                kernel_size: k,
                stride: if bool::arbitrary(u)? {
                    None
                } else {
                    Some([u.int_in_range(1usize..=2)?, u.int_in_range(1usize..=2)?])
                },
                padding: [u.int_in_range(0..=k[0] / 2)?, u.int_in_range(0..=k[1] / 2)?],
                ceil_mode: u.ratio(1, 4)?,
                count_include_pad: !u.ratio(1, 4)?,
                divisor_override: if u.ratio(1, 6)? {
                    Some(u.int_in_range(1i64..=9)?)
                } else {
                    None
                },
            };
            let Some(shape) = pooled(&p.params(), &xs.shape) else {
                return Ok(None);
            };
            (Arc::new(p), vec![x], keep, same_format(shape))
        }
        11 if is_4d(xs) => {
            let (h, w) = (xs.shape[2], xs.shape[3]);
            let output_size = [u.int_in_range(1..=h)?, u.int_in_range(1..=w)?];
            let p = crate::ops::pool::adaptive::AdaptiveAvgPool2d { output_size };
            let shape = vec![xs.shape[0], xs.shape[1], output_size[0], output_size[1]];
            (Arc::new(p), vec![x], keep, same_format(shape))
        }
        12 if is_4d(xs) => {
            let keepdim = bool::arbitrary(u)?;
            let dim = u
                .choose(&[vec![2i64, 3], vec![-1, -2], vec![3, 2]])?
                .clone();
            let p = crate::ops::pool::mean::MeanHw { dim, keepdim };
            let shape = if keepdim {
                vec![xs.shape[0], xs.shape[1], 1, 1]
            } else {
                vec![xs.shape[0], xs.shape[1]]
            };
            (Arc::new(p), vec![x], keep, same_format(shape))
        }
        13 if xs.shape.len() >= 2 => {
            let p = crate::ops::flatten::Flatten {
                start_dim: 1,
                end_dim: -1,
            };
            let shape = vec![xs.shape[0], xs.shape[1..].iter().product()];
            let slot = Slot {
                shape,
                format: MemoryFormat::Contiguous,
            };
            (Arc::new(p), vec![x], keep, slot)
        }
        14 => (
            Arc::new(crate::ops::piecewise::Piecewise::Hardswish),
            vec![x],
            calibrated(u)?,
            same_format(xs.shape.clone()),
        ),
        15 => (
            Arc::new(crate::ops::relu::Relu),
            vec![x],
            keep,
            same_format(xs.shape.clone()),
        ),
        16 => {
            let c = if bool::arbitrary(u)? {
                crate::ops::clamp::Clamp::RELU6
            } else {
                let lo = u.int_in_range(-40i32..=10)? as f32 * 0.25;
                crate::ops::clamp::Clamp {
                    min_val: lo,
                    max_val: lo + u.int_in_range(1i32..=40)? as f32 * 0.25,
                }
            };
            (Arc::new(c), vec![x], keep, same_format(xs.shape.clone()))
        }
        17 => {
            use crate::ops::activation::{Sigmoid, Tanh};
            use crate::ops::piecewise::Piecewise;
            let (op, (scale, zero_point)): (Arc<dyn Op>, (f64, i64)) =
                match u.int_in_range(0u8..=3)? {
                    0 => (Arc::new(Sigmoid), Sigmoid::QPARAMS),
                    1 => (Arc::new(Tanh), Tanh::QPARAMS),
                    2 => (Arc::new(Piecewise::Hardsigmoid), (0.00390625, 0)),
                    _ => {
                        let negative_slope = *u.choose(&[0.01f64, 0.1, 0.2, 0.3, 0.5])?;
                        return Ok(Some((
                            FuzzNode {
                                op: Arc::new(Piecewise::LeakyRelu { negative_slope }),
                                inputs: vec![x],
                                out: calibrated(u)?,
                                out_format: xs.format,
                            },
                            same_format(xs.shape.clone()),
                        )));
                    }
                };
            let out = OutSpec::Fixed { scale, zero_point };
            (op, vec![x], out, same_format(xs.shape.clone()))
        }
        18 => {
            use crate::ops::scalar::{ScalarKind, ScalarOp};
            let kind = if bool::arbitrary(u)? {
                ScalarKind::Add
            } else {
                ScalarKind::Mul
            };
            let other = *u.choose(&[0.0f64, 1.0, -1.0, 0.5, 2.0, 3.0, -0.25, 1e-3, 7.5])?;
            let op = ScalarOp {
                kind,
                relu: bool::arbitrary(u)?,
                other,
            };
            let out = OutSpec::Scalar(op);
            (Arc::new(op), vec![x], out, same_format(xs.shape.clone()))
        }
        19 if is_4d(xs) => {
            let c = xs.shape[1];
            let v = |u: &mut Unstructured<'_>, lo: i32, hi: i32| -> arbitrary::Result<Vec<f32>> {
                (0..c)
                    .map(|_| Ok(u.int_in_range(lo..=hi)? as f32 / 16.0))
                    .collect()
            };
            let bn = crate::ops::batch_norm::BatchNorm2d {
                weight: v(u, -32, 32)?,
                bias: v(u, -32, 32)?,
                running_mean: v(u, -16, 16)?,
                running_var: v(u, 1, 64)?,
                eps: 1e-5,
                relu: bool::arbitrary(u)?,
                scale: None,
                zero_point: None,
            };
            (
                Arc::new(bn),
                vec![x],
                calibrated(u)?,
                same_format(xs.shape.clone()),
            )
        }
        20 => {
            let e = crate::ops::activation::Elu {
                alpha: *u.choose(&[1.0f64, 0.5, 2.0])?,
                scale: 1.0,
                input_scale: 1.0,
            };
            (
                Arc::new(e),
                vec![x],
                calibrated(u)?,
                same_format(xs.shape.clone()),
            )
        }
        _ => return Ok(None),
    };
    // Channels-last only for 4-D values; sometimes hold a 4-D output in the other format.
    let out_format = if slot.shape.len() != 4 {
        MemoryFormat::Contiguous
    } else if u.ratio(1, 8)? {
        match slot.format {
            MemoryFormat::Contiguous => MemoryFormat::ChannelsLast,
            MemoryFormat::ChannelsLast => MemoryFormat::Contiguous,
        }
    } else {
        slot.format
    };
    let slot = Slot {
        format: out_format,
        ..slot
    };
    Ok(Some((
        FuzzNode {
            op,
            inputs,
            out,
            out_format,
        },
        slot,
    )))
}

/// A second input of the shape of `slots[x]` (`x` itself when there is no other).
fn partner(u: &mut Unstructured<'_>, slots: &[Slot], x: usize) -> arbitrary::Result<usize> {
    let same: Vec<usize> = (0..slots.len())
        .filter(|&j| slots[j].shape == slots[x].shape)
        .collect();
    Ok(*u.choose(&same)?)
}

/// The output shape of a pool on an NCHW shape (`None` where PyTorch rejects the window).
fn pooled(p: &Pool2dParams, shape: &[usize]) -> Option<Vec<usize>> {
    let [oh, ow] = p.output_size("pool", [shape[2], shape[3]]).ok()?;
    Some(vec![shape[0], shape[1], oh, ow])
}

impl<'a> Arbitrary<'a> for FuzzGraph {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let engine = *u.choose(&Engine::ALL)?;
        let mut cpu = *u.choose(&CPUS)?;
        if cpu.check_modelled(engine).is_err() {
            cpu = CpuFeatures::AVX2;
        }
        let capture_isa = if u.ratio(1, 4)? {
            CaptureIsa::Avx2
        } else {
            CaptureIsa::Default
        };
        let (shape, input_format) = if u.ratio(3, 4)? {
            let n = u.int_in_range(1usize..=2)?;
            let c = channels(u)?;
            let (h, w) = (u.int_in_range(1usize..=9)?, u.int_in_range(1usize..=9)?);
            let f = if bool::arbitrary(u)? {
                MemoryFormat::ChannelsLast
            } else {
                MemoryFormat::Contiguous
            };
            (vec![n, c, h, w], f)
        } else {
            let n = u.int_in_range(1usize..=4)?;
            let k = if u.ratio(1, 3)? {
                *u.choose(&super::BLOCK_SIZES)?
            } else {
                u.int_in_range(1usize..=24)?
            };
            (vec![n, k], MemoryFormat::Contiguous)
        };
        let numel: usize = shape.iter().product();
        let amp = super::log_scale(0.2 + 0.7 * u.int_in_range(0u32..=1000)? as f64 / 1000.0);
        let offset = u.int_in_range(-4i32..=4)? as f32 * amp / 4.0;
        // Outliers (values far beyond the rest, infinities) every `every` elements, if any.
        let every = if u.ratio(1, 6)? {
            u.int_in_range(2usize..=31)?
        } else {
            0
        };
        let raw = bytes(u, numel)?;
        let data: Vec<f32> = raw
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let v = (b as i8) as f32 * amp / 127.0 + offset;
                if every > 0 && i % every == every - 1 {
                    [
                        amp * 16.0,
                        -amp * 16.0,
                        1e30,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                    ][b as usize % 5]
                } else {
                    v
                }
            })
            .collect();
        let input_out = if u.ratio(1, 5)? {
            // Arbitrary qparams, not calibrated on the data.
            OutSpec::Fixed {
                scale: super::log_scale(u.int_in_range(0u32..=1000)? as f64 / 1000.0) as f64,
                zero_point: u.int_in_range(0i64..=255)?,
            }
        } else {
            calibrated(u)?
        };
        let mut slots = vec![Slot {
            shape: shape.clone(),
            format: input_format,
        }];
        let mut nodes = Vec::new();
        let count = u.int_in_range(1usize..=6)?;
        let mut tries = 0;
        while nodes.len() < count && tries < 3 * count && !u.is_empty() {
            tries += 1;
            if let Some((n, s)) = node(u, &slots)? {
                nodes.push(n);
                slots.push(s);
            }
        }
        Ok(FuzzGraph {
            engine,
            cpu,
            capture_isa,
            input: Tensor::f32(shape, data),
            input_format,
            input_out,
            nodes,
        })
    }
}

/// What [`check_graph`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphRun {
    /// Nodes run (the quantize node included; the output dequantize not).
    pub nodes: usize,
    /// Backend runs compared (two entry points per node where the backend implements it).
    pub compared: usize,
    /// Stages the backend does not implement (per entry point).
    pub fallbacks: usize,
    /// Output elements the reference leaves undecided (any admitted value accepted).
    pub undecided: usize,
    /// Why the graph ended before its last node (a plan or prediction error), if it did.
    pub stopped: Option<String>,
    /// Per node: the kernels that ran it (`reference` where the backend has none).
    pub kernels: Vec<String>,
}

/// The backend and the reference disagree (or the backend failed where the reference ran).
#[derive(Debug, Clone, PartialEq)]
pub struct Disagreement {
    /// `v<k>` and the op.
    pub node: String,
    /// `prepare` (logical order) or `prepare_in_memory`.
    pub entry: &'static str,
    pub what: String,
    /// The whole graph in words, with the qparams each node ran with.
    pub graph: String,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backend and reference disagree at {} ({}): {}\n{}",
            self.node, self.entry, self.what, self.graph
        )
    }
}

/// Min/max-observer qparams over `0..=quant_max` for floats in `lo..=hi` (0 included), the scale
/// multiplied by `2^(widen/4)`.
fn calibrate(lo: f32, hi: f32, widen: i8, quant_max: i64) -> (f64, i64) {
    let (lo, hi) = (lo.min(0.0) as f64, hi.max(0.0) as f64);
    let mut scale = ((hi - lo) / quant_max as f64) as f32;
    if !(scale.is_finite() && scale > f32::EPSILON) {
        scale = if scale.is_finite() { f32::EPSILON } else { 1.0 };
    }
    let zp = (-lo / scale as f64).round().clamp(0.0, quant_max as f64) as i64;
    let scale = (scale as f64 * 2f64.powf(widen as f64 / 4.0)) as f32;
    (scale.clamp(1e-9, 1e9) as f64, zp)
}

/// The range of the finite values among `xs` (`None`: none is finite).
fn finite_range(xs: impl Iterator<Item = f32>) -> Option<(f32, f32)> {
    xs.filter(|x| x.is_finite()).fold(None, |r, x| match r {
        None => Some((x, x)),
        Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
    })
}

/// A node's output qparams: kept, fixed, or calibrated on the reference flow's pre-quantize
/// floats (`None`: the reference flow does not run the op on these inputs).
fn resolve(spec: OutSpec, op: &dyn Op, ctx: &Ctx, inputs: &[&Value]) -> Option<OutQParams> {
    let first = inputs.first()?;
    let (scale, zero_point) = match (spec, first) {
        (OutSpec::Keep, Value::Quantized(q)) => (q.scale, q.zero_point),
        (OutSpec::Keep, Value::Tensor(_)) => return None,
        (OutSpec::Fixed { scale, zero_point }, _) => (scale, zero_point),
        (OutSpec::Scalar(op), Value::Quantized(q)) => {
            op.kernel(q.scale, q.zero_point).ok()?.out_qparams()
        }
        (OutSpec::Scalar(_), Value::Tensor(_)) => return None,
        (OutSpec::Calibrated { widen, quant_max }, Value::Tensor(t)) => {
            let (lo, hi) = finite_range(t.as_f32()?.iter().copied()).unwrap_or((0.0, 0.0));
            calibrate(lo, hi, widen, quant_max)
        }
        (OutSpec::Calibrated { widen, quant_max }, Value::Quantized(q)) => {
            // The float the reference flow quantizes: plan it with provisional qparams.
            let rctx = Ctx {
                flow: Flow::ConvertToReferenceFx,
                ..*ctx
            };
            let provisional = OutQParams {
                scale: q.scale,
                zero_point: q.zero_point,
                quant_min: 0,
                quant_max: 255,
            };
            let metas: Vec<Meta<'_>> = inputs.iter().map(|v| v.meta()).collect();
            let floats = op
                .plan(&rctx, &metas, Some(&provisional))
                .and_then(|p| p.predict(inputs))
                .ok()
                .and_then(|outs| {
                    outs.into_iter()
                        .find_map(|o| match (o.name.as_str(), o.values) {
                            ("pre_quant", Predicted::Ranges(r)) => {
                                finite_range(r.into_iter().flat_map(|(a, b)| [a, b]))
                            }
                            ("pre_quant", Predicted::Floats(f)) => finite_range(f.into_iter()),
                            _ => None,
                        })
                });
            match floats {
                Some((lo, hi)) => calibrate(lo, hi, widen, quant_max),
                // No float op to observe: the input's range.
                None => {
                    let lo = (0 - q.zero_point) as f64 * q.scale;
                    let hi = (255 - q.zero_point) as f64 * q.scale;
                    calibrate(lo as f32, hi as f32, widen, quant_max)
                }
            }
        }
    };
    let quant_max = match spec {
        OutSpec::Calibrated { quant_max, .. } => quant_max,
        _ => 255,
    };
    Some(OutQParams {
        scale,
        zero_point,
        quant_min: 0,
        quant_max,
    })
}

/// Runs `g` node by node on `backend` and on the reference plans (see the module docs). `Ok`
/// also when the reference rejects a node (the run then says where it stopped).
pub fn check_graph(g: &FuzzGraph, backend: Option<&dyn Backend>) -> Result<GraphRun, Disagreement> {
    let ctx = g.ctx();
    let mut run = GraphRun::default();
    let mut described = String::new();
    let quantize: Arc<dyn Op> = Arc::new(crate::ops::quantize::FlowQuantize);
    let first = FuzzNode {
        op: quantize,
        inputs: Vec::new(),
        out: g.input_out,
        out_format: g.input_format,
    };
    let input = Value::Tensor(g.input.clone());
    // Logical-order values: v0 (the quantize node), then one per node.
    let mut values: Vec<Value> = Vec::new();
    for (k, node) in std::iter::once(&first).chain(&g.nodes).enumerate() {
        let ins: Vec<&Value> = if k == 0 {
            vec![&input]
        } else {
            match node
                .inputs
                .iter()
                .map(|&i| values.get(i))
                .collect::<Option<Vec<_>>>()
            {
                Some(v) => v,
                None => {
                    run.stopped = Some(format!("v{k}: an input is not an earlier value"));
                    return Ok(run);
                }
            }
        };
        let name = format!("v{k} = {}", node.op.name());
        let Some(out) = resolve(node.out, &*node.op, &ctx, &ins) else {
            run.stopped = Some(format!("{name}: no output qparams"));
            return Ok(run);
        };
        described.push_str(&format!(
            "  v{k}: out scale {:e}, zero point {}, quant_max {}\n",
            out.scale, out.zero_point, out.quant_max
        ));
        let fail = |entry: &'static str, what: String, described: &str| Disagreement {
            node: name.clone(),
            entry,
            what,
            graph: format!("{}qparams as run:\n{described}", g.describe()),
        };
        let metas: Vec<Meta<'_>> = ins.iter().map(|v| v.meta()).collect();
        let plan = match node.op.plan(&ctx, &metas, Some(&out)) {
            Ok(p) => p,
            Err(e) => {
                run.stopped = Some(format!("{name}: {e}"));
                return Ok(run);
            }
        };
        let preds = match plan.predict(&ins) {
            Ok(outs) => outs.into_iter().find(|o| o.name == "int_repr"),
            Err(e) => {
                run.stopped = Some(format!("{name}: {e}"));
                return Ok(run);
            }
        };
        let Some(expected) = preds else {
            run.stopped = Some(format!("{name}: no int_repr output"));
            return Ok(run);
        };
        let Some(pred) = expected.ints() else {
            run.stopped = Some(format!("{name}: int_repr is not integers"));
            return Ok(run);
        };
        let shape = expected.shape.clone();
        if pred.len() != shape.iter().product::<usize>() {
            return Err(fail(
                "reference",
                format!("{} predictions for shape {shape:?}", pred.len()),
                &described,
            ));
        }
        run.undecided += pred.iter().filter(|p| !matches!(p, Pred::Exact(_))).count();
        let mut chosen: Option<Vec<u8>> = None;
        let mut kernels = Vec::new();
        if let (Some(b), Some(low)) = (backend, plan.lowered()) {
            for entry in ["prepare", "prepare_in_memory"] {
                let memory = entry == "prepare_in_memory";
                let prepared = if memory {
                    b.prepare_in_memory(low, &metas, node.out_format)
                } else {
                    b.prepare(low, &metas)
                };
                let p = match prepared {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        run.fallbacks += 1;
                        continue;
                    }
                    Err(e) => {
                        return Err(fail(
                            entry,
                            format!("the backend refused a stage the reference runs: {e}"),
                            &described,
                        ))
                    }
                };
                if p.out_shape() != shape.as_slice() {
                    return Err(fail(
                        entry,
                        format!("output shape {:?}, reference {shape:?}", p.out_shape()),
                        &described,
                    ));
                }
                if p.f32_output() {
                    return Err(fail(
                        entry,
                        "an f32 output for a u8 stage".into(),
                        &described,
                    ));
                }
                // The inputs as this entry point takes them.
                let held: Vec<Value>;
                let run_ins: Vec<&Value> = if memory {
                    held = ins
                        .iter()
                        .map(|v| match v {
                            Value::Quantized(q) => Value::Quantized(QTensor {
                                data: q.memory_order(),
                                ..q.clone()
                            }),
                            other => (*other).clone(),
                        })
                        .collect();
                    held.iter().collect()
                } else {
                    ins.clone()
                };
                let mut codes = vec![0u8; pred.len()];
                if let Err(e) = p.run(low, &run_ins, &mut codes) {
                    return Err(fail(entry, format!("the backend failed: {e}"), &described));
                }
                if memory {
                    if let Some(m) =
                        crate::backend::portable::memory_positions(&shape, node.out_format)
                    {
                        codes = m.iter().map(|&i| codes[i]).collect();
                    }
                }
                if let Some((i, (c, want))) = codes
                    .iter()
                    .zip(pred)
                    .enumerate()
                    .find(|(_, (&c, w))| !w.admits(c as i64))
                {
                    return Err(fail(
                        entry,
                        format!(
                            "kernel {}: element {i} of {shape:?} is {c}, the reference predicts \
                             {want:?}",
                            p.kernel()
                        ),
                        &described,
                    ));
                }
                run.compared += 1;
                kernels.push(p.kernel());
                chosen.get_or_insert(codes);
            }
        }
        let data = match chosen {
            Some(c) => c,
            None => {
                kernels.push("reference");
                let exact: Option<Vec<u8>> = pred
                    .iter()
                    .map(|p| match *p {
                        Pred::Exact(v) => u8::try_from(v).ok(),
                        _ => None,
                    })
                    .collect();
                match exact {
                    Some(v) => v,
                    None => {
                        run.stopped = Some(format!(
                            "{name}: the reference leaves an output undecided or outside u8 \
                             and no backend ran it"
                        ));
                        return Ok(run);
                    }
                }
            }
        };
        run.kernels.push(format!("{name}: {}", kernels.join(", ")));
        run.nodes += 1;
        values.push(Value::Quantized(QTensor {
            shape,
            data,
            scale: out.scale,
            zero_point: out.zero_point,
            memory_format: node.out_format,
        }));
    }
    // The output dequantize on the last value.
    let Some(Value::Quantized(last)) = values.last() else {
        return Ok(run);
    };
    let last = Value::Quantized(last.clone());
    let dq = crate::ops::quantize::FlowDequantize;
    let metas = [last.meta()];
    let name = "output dequantize".to_string();
    let Ok(plan) = dq.plan(&ctx, &metas, None) else {
        run.stopped = Some(format!("{name}: not planned"));
        return Ok(run);
    };
    let want = match plan.predict(&[&last]) {
        Ok(o) => o.into_iter().next().map(|o| o.values),
        Err(e) => {
            run.stopped = Some(format!("{name}: {e}"));
            return Ok(run);
        }
    };
    let (Some(Predicted::Floats(want)), Some(b), Some(low)) = (want, backend, plan.lowered())
    else {
        return Ok(run);
    };
    let fail = |what: String| Disagreement {
        node: name.clone(),
        entry: "prepare",
        what,
        graph: format!("{}qparams as run:\n{described}", g.describe()),
    };
    match b.prepare(low, &metas) {
        Ok(Some(p)) => {
            let mut got = vec![0f32; want.len()];
            p.run_f32(low, &[&last], &mut got)
                .map_err(|e| fail(format!("the backend failed: {e}")))?;
            if let Some(i) = (0..want.len()).find(|&i| {
                got[i].to_bits() != want[i].to_bits() && !(got[i].is_nan() && want[i].is_nan())
            }) {
                return Err(fail(format!(
                    "element {i} is {:e}, the reference gives {:e}",
                    got[i], want[i]
                )));
            }
            run.compared += 1;
        }
        Ok(None) => run.fallbacks += 1,
        Err(e) => return Err(fail(format!("the backend refused the dequantize: {e}"))),
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Prepared;
    use crate::ops::Lowered;

    /// A backend that runs the native one and flips the low bit of output code 0.
    #[derive(Debug)]
    struct Flip(&'static dyn Backend);

    #[derive(Debug)]
    struct Flipped(Box<dyn Prepared>);

    impl Prepared for Flipped {
        fn kernel(&self) -> &'static str {
            "flipped"
        }
        fn out_shape(&self) -> &[usize] {
            self.0.out_shape()
        }
        fn run(&self, stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> crate::Result<()> {
            self.0.run(stage, inputs, out)?;
            if let Some(c) = out.first_mut() {
                *c ^= 1;
            }
            Ok(())
        }
    }

    impl Backend for Flip {
        fn name(&self) -> &'static str {
            "flip"
        }
        fn prepare(
            &self,
            stage: Lowered<'_>,
            inputs: &[Meta<'_>],
        ) -> crate::Result<Option<Box<dyn Prepared>>> {
            Ok(self
                .0
                .prepare(stage, inputs)?
                .map(|p| Box::new(Flipped(p)) as Box<dyn Prepared>))
        }
    }

    /// A graph: quantize a 1×3×5×5 input, conv 3→4 (3×3, padding 1), add it to itself.
    fn small_graph() -> FuzzGraph {
        let data: Vec<f32> = (0..75).map(|i| (i as f32 - 37.0) * 0.05).collect();
        let p = Conv2dParams::square(3, 4, 1, 3, 1);
        let g = Geometry::Conv2d(p);
        let w: Vec<i8> = (0..g.weight_shape().iter().product::<usize>())
            .map(|i| ((i * 37) % 255) as i8)
            .collect();
        let conv = QLayer {
            geometry: g,
            bias: Some(vec![0.1, -0.2, 0.3, 0.0]),
            weight: QWeight {
                shape: g.weight_shape(),
                int_repr: w,
                scales: vec![0.01],
                zero_points: vec![0],
                per_channel: false,
            },
            relu: false,
            cache: Default::default(),
        };
        let calibrated = OutSpec::Calibrated {
            widen: 0,
            quant_max: 255,
        };
        FuzzGraph {
            engine: Engine::Fbgemm,
            cpu: CpuFeatures::AVX2,
            capture_isa: CaptureIsa::Default,
            input: Tensor::f32(vec![1, 3, 5, 5], data),
            input_format: MemoryFormat::Contiguous,
            input_out: calibrated,
            nodes: vec![
                FuzzNode {
                    op: Arc::new(conv),
                    inputs: vec![0],
                    out: calibrated,
                    out_format: MemoryFormat::ChannelsLast,
                },
                FuzzNode {
                    op: Arc::new(crate::ops::add::Add { relu: true }),
                    inputs: vec![1, 1],
                    out: calibrated,
                    out_format: MemoryFormat::ChannelsLast,
                },
            ],
        }
    }

    #[test]
    fn a_small_graph_runs_through_to_the_end() {
        let g = small_graph();
        let run = check_graph(&g, crate::backend::native()).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(run.stopped, None, "{run:?}");
        assert_eq!(run.nodes, 3);
        if crate::backend::native().is_some() {
            // The quantize, conv and add nodes on both entry points, and the dequantize.
            assert!(run.compared >= 5, "{run:?}");
        }
        // The reference alone also runs it.
        let alone = check_graph(&g, None).unwrap();
        assert_eq!((alone.nodes, alone.compared), (3, 0));
    }

    #[test]
    fn a_flipped_output_code_is_a_disagreement() {
        let Some(native) = crate::backend::native() else {
            return;
        };
        let d = check_graph(&small_graph(), Some(&Flip(native))).unwrap_err();
        assert_eq!(d.node, "v0 = quantize");
        assert_eq!(d.entry, "prepare");
        assert!(d.what.contains("element 0"), "{d}");
        assert!(d.to_string().contains("v1 = conv2d"), "{d}");
    }

    #[test]
    fn a_rejected_node_ends_the_graph_without_a_disagreement() {
        let mut g = small_graph();
        // relu must keep its input's qparams in convert_fx: fixed others are rejected.
        g.nodes.push(FuzzNode {
            op: Arc::new(crate::ops::relu::Relu),
            inputs: vec![2],
            out: OutSpec::Fixed {
                scale: 0.5,
                zero_point: 3,
            },
            out_format: MemoryFormat::Contiguous,
        });
        let run = check_graph(&g, crate::backend::native()).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(run.nodes, 3);
        assert!(
            run.stopped
                .as_deref()
                .unwrap_or("")
                .starts_with("v3 = relu"),
            "{run:?}"
        );
    }

    #[test]
    fn arbitrary_graphs_are_drawn_from_any_bytes() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..200u64 {
            let mut rng = crate::gen::SplitMix64::new(seed);
            let bytes = rng.u8s(2048);
            let g = FuzzGraph::arbitrary(&mut Unstructured::new(&bytes)).unwrap();
            for n in &g.nodes {
                kinds.insert(n.op.name());
                assert!(n.inputs.iter().all(|&i| i <= g.nodes.len()));
            }
        }
        for k in [
            "conv2d",
            "linear",
            "add",
            "cat",
            "max_pool2d",
            "hardswish",
            "flatten",
        ] {
            assert!(kinds.contains(k), "no {k} among {kinds:?}");
        }
        // Empty input: a graph all the same.
        FuzzGraph::arbitrary(&mut Unstructured::new(&[])).unwrap();
    }
}
