//! The x86 backend: a planned `convert_fx` linear / conv2d on the optimized x86 kernels
//! ([`crate::kernels::x86`]): weights packed once, zero points folded and the plan's
//! requantization rule fused into the GEMM's epilogue, u8 out.

use super::{check_out, Backend, Prepared};
use crate::engine::KernelPath;
use crate::kernels::x86::conv::{Conv2d, Depthwise3x3, Layout};
use crate::kernels::x86::depthwise::DepthwiseDirect;
use crate::kernels::x86::{Kernel, PackedLinear};
use crate::kernels::Accumulation;
use crate::ops::layer::{Geometry, IntegerLayer};
use crate::ops::{Lowered, MemoryFormat, Meta, QTensor, Value};
use crate::{Error, Result};

/// The x86 backend (AVX2 and AVX-512 VNNI kernels, chosen by the plan's accumulation model and
/// the CPU).
#[derive(Debug, Clone, Copy)]
pub struct X86Backend;

impl Backend for X86Backend {
    fn name(&self) -> &'static str {
        "x86-fused"
    }

    fn prepare(
        &self,
        stage: Lowered<'_>,
        inputs: &[Meta<'_>],
    ) -> Result<Option<Box<dyn Prepared>>> {
        match stage {
            Lowered::IntegerLayer(l) => Ok(layer(l, inputs)?.map(|p| Box::new(p) as _)),
            other => super::portable::prepare(other, inputs),
        }
    }

    fn prepare_in_memory(
        &self,
        stage: Lowered<'_>,
        inputs: &[Meta<'_>],
        out_format: MemoryFormat,
    ) -> Result<Option<Box<dyn Prepared>>> {
        match stage {
            Lowered::IntegerLayer(l) => {
                let Some(mut p) = layer(l, inputs)? else {
                    return Ok(None);
                };
                let nhwc =
                    |shape: &[usize], f| super::portable::memory_positions(shape, f).is_some();
                let input = &inputs[0];
                p.nhwc = (
                    nhwc(input.shape, input.memory_format),
                    nhwc(&l.out_shape, out_format),
                );
                Ok(Some(Box::new(p)))
            }
            other => super::portable::prepare_in_memory(other, inputs, out_format),
        }
    }
}

/// A planned layer with its weights packed, in logical order; `None` where the x86 kernels do
/// not compute the plan's accumulation: oneDNN layers run here only where oneDNN accumulates
/// exactly (VNNI CPUs), its pair-saturating kernels pair other products than FBGEMM's.
fn layer(l: &IntegerLayer, inputs: &[Meta<'_>]) -> Result<Option<PreparedLayer>> {
    if l.path == KernelPath::Onednn && l.accumulation != Accumulation::Exact {
        return Ok(None);
    }
    let input = inputs
        .first()
        .ok_or_else(|| Error::invalid("layer", "no input"))?;
    Ok(Some(PreparedLayer::new(l, input)?))
}

/// A layer's weights packed for its kernel.
#[derive(Debug)]
enum Packed {
    Linear(PackedLinear),
    Conv(Conv2d),
    Depthwise(Depthwise3x3),
    DepthwiseDirect(DepthwiseDirect),
}

/// A planned linear / conv2d with its weights packed once.
#[derive(Debug)]
pub struct PreparedLayer {
    packed: Packed,
    name: &'static str,
    input_shape: Vec<usize>,
    a_zp: i32,
    out_shape: Vec<usize>,
    /// Whether the input and the output are held NHWC (memory order of channels-last tensors;
    /// otherwise logical order).
    nhwc: (bool, bool),
}

impl PreparedLayer {
    /// Packs `l`'s weights for inputs like `input`. oneDNN layers (exact accumulation: VNNI
    /// CPUs) run FBGEMM's requantization, which the plan admits for each element (it predicts
    /// oneDNN's order within its proven bound).
    pub fn new(l: &IntegerLayer, input: &Meta<'_>) -> Result<Self> {
        let (_, zp) = input.qparams("layer input")?;
        if input.shape != l.input_shape.as_slice() || zp != l.input_zero_point {
            return Err(Error::shape(
                "layer input",
                "shape or zero point differ from the planned input",
            ));
        }
        let kernel = Kernel::best(l.accumulation);
        let w = &l.weight;
        let zps: Vec<i32> = w.zero_points.iter().map(|&z| z as i32).collect();
        let a_zp = i32::try_from(zp)
            .map_err(|_| Error::invalid("input zero point", format!("{zp} is not an i32")))?;
        let requant = l.requant.clone();
        let (packed, name) = match l.geometry {
            Geometry::Linear {
                in_features,
                out_features,
            } => (
                Packed::Linear(PackedLinear::with_kernel(
                    kernel,
                    &w.int_repr,
                    out_features,
                    in_features,
                    &zps,
                    requant,
                )?),
                kernel.name(),
            ),
            Geometry::Conv2d(p) => {
                if input.shape.len() != 4 {
                    return Err(Error::shape(
                        "conv2d input",
                        format!("{:?} is not NCHW", input.shape),
                    ));
                }
                // FBGEMM's 3x3 depthwise on NCHW planes where few channels would leave the
                // direct kernel's 32-channel vectors part empty.
                let dw3x3 = l.path == KernelPath::FbgemmDepthwise
                    && p.kernel_size == [3, 3]
                    && p.out_channels == p.in_channels
                    && p.in_channels < 32;
                if dw3x3 {
                    let dw = Depthwise3x3::new(
                        &w.int_repr,
                        p.in_channels,
                        (p.stride[0], p.stride[1]),
                        (p.padding[0], p.padding[1]),
                        &zps,
                        requant,
                    )?;
                    let name = if dw.is_simd() {
                        "x86-avx2-depthwise3x3"
                    } else {
                        "x86-depthwise3x3-scalar"
                    };
                    (Packed::Depthwise(dw), name)
                } else if let Some(dw) = (l.accumulation == Accumulation::PairSaturatingI16)
                    .then(|| DepthwiseDirect::new(p, &w.int_repr, &zps, &requant))
                    .transpose()?
                    .flatten()
                {
                    // Other depthwise convs: the pair-saturating GEMM's accumulation with one
                    // channel per group, computed directly.
                    (Packed::DepthwiseDirect(dw), "x86-depthwise-direct")
                } else {
                    (
                        Packed::Conv(Conv2d::with_kernel(kernel, &w.int_repr, p, &zps, requant)?),
                        kernel.name(),
                    )
                }
            }
        };
        Ok(PreparedLayer {
            packed,
            name,
            input_shape: l.input_shape.clone(),
            a_zp,
            out_shape: l.out_shape.clone(),
            nhwc: (false, false),
        })
    }

    /// Runs on `input`'s codes (logical order), writing `out`.
    pub fn run_codes(&self, input: &QTensor, out: &mut [u8]) -> Result<()> {
        check_out("layer", &self.out_shape, out)?;
        if input.shape != self.input_shape
            || input.data.len() != input.shape.iter().product::<usize>()
            || i64::from(self.a_zp) != input.zero_point
        {
            return Err(Error::shape(
                "layer input",
                "data length, shape or zero point differ from the planned input",
            ));
        }
        match &self.packed {
            Packed::Linear(lin) => {
                let m = input.data.len() / lin.k().max(1);
                // A linear reads rows of the logical order: a 4-D channels-last input is gathered
                // from NHWC first, a channels-last output scattered back.
                let dims = |s: &[usize]| -> Result<[usize; 4]> {
                    s.try_into()
                        .map_err(|_| Error::shape("linear", "an NHWC value that is not 4-D"))
                };
                let mut x = Vec::new();
                let src = if self.nhwc.0 {
                    x.resize(input.data.len(), 0);
                    nhwc_to_nchw(&input.data, dims(&self.input_shape)?, &mut x);
                    &x[..]
                } else {
                    &input.data[..]
                };
                if self.nhwc.1 {
                    let mut tmp = vec![0u8; out.len()];
                    lin.run(src, m, self.a_zp, &mut tmp)?;
                    nchw_to_nhwc(&tmp, dims(&self.out_shape)?, out);
                } else {
                    lin.run(src, m, self.a_zp, out)?;
                }
            }
            Packed::Conv(conv) => {
                let [nb, c, h, w] = self.input_shape[..] else {
                    return Err(Error::shape("conv2d input", "not 4-D"));
                };
                let [_, oc, oh, ow] = self.out_shape[..] else {
                    return Err(Error::shape("conv2d output", "not 4-D"));
                };
                match self.nhwc {
                    (false, false) => {
                        conv.run(Layout::Nchw, &input.data, nb, h, w, self.a_zp, out)?;
                    }
                    (true, true) => {
                        conv.run(Layout::Nhwc, &input.data, nb, h, w, self.a_zp, out)?;
                    }
                    (true, false) => {
                        let mut tmp = vec![0u8; out.len()];
                        conv.run(Layout::Nhwc, &input.data, nb, h, w, self.a_zp, &mut tmp)?;
                        nhwc_to_nchw(&tmp, [nb, oc, oh, ow], out);
                    }
                    (false, true) => {
                        let mut x = vec![0u8; input.data.len()];
                        nchw_to_nhwc(&input.data, [nb, c, h, w], &mut x);
                        conv.run(Layout::Nhwc, &x, nb, h, w, self.a_zp, out)?;
                    }
                }
            }
            Packed::DepthwiseDirect(dw) => {
                let [nb, c, h, w] = self.input_shape[..] else {
                    return Err(Error::shape("conv2d input", "not 4-D"));
                };
                let [_, oc, oh, ow] = self.out_shape[..] else {
                    return Err(Error::shape("conv2d output", "not 4-D"));
                };
                // The kernel runs NHWC.
                let mut x = Vec::new();
                let src = if self.nhwc.0 {
                    &input.data[..]
                } else {
                    x.resize(input.data.len(), 0);
                    nchw_to_nhwc(&input.data, [nb, c, h, w], &mut x);
                    &x[..]
                };
                if self.nhwc.1 {
                    dw.run_nhwc(src, nb, h, w, self.a_zp, out)?;
                } else {
                    let mut tmp = vec![0u8; out.len()];
                    dw.run_nhwc(src, nb, h, w, self.a_zp, &mut tmp)?;
                    nhwc_to_nchw(&tmp, [nb, oc, oh, ow], out);
                }
            }
            Packed::Depthwise(dw) => {
                let [nb, c, h, w] = self.input_shape[..] else {
                    return Err(Error::shape("conv2d input", "not 4-D"));
                };
                let [_, oc, oh, ow] = self.out_shape[..] else {
                    return Err(Error::shape("conv2d output", "not 4-D"));
                };
                // FBGEMM's depthwise kernel here runs NCHW planes.
                let mut x = Vec::new();
                let src = if self.nhwc.0 {
                    x.resize(input.data.len(), 0);
                    nhwc_to_nchw(&input.data, [nb, c, h, w], &mut x);
                    &x[..]
                } else {
                    &input.data[..]
                };
                if self.nhwc.1 {
                    let mut tmp = vec![0u8; out.len()];
                    dw.run(src, nb, h, w, self.a_zp, &mut tmp)?;
                    nchw_to_nhwc(&tmp, [nb, oc, oh, ow], out);
                } else {
                    dw.run(src, nb, h, w, self.a_zp, out)?;
                }
            }
        }
        Ok(())
    }
}

/// NCHW `x` (dims `[n, c, h, w]`) to NHWC `out`.
fn nchw_to_nhwc(x: &[u8], [n, c, h, w]: [usize; 4], out: &mut [u8]) {
    let hw = h * w;
    for b in 0..n {
        let (src, dst) = (&x[b * c * hw..][..c * hw], &mut out[b * c * hw..][..c * hw]);
        // Few channels (a network's image input) write whole pixels, one per step.
        match c {
            1 => dst.copy_from_slice(src),
            3 => interleave::<3>(src, dst, hw),
            4 => interleave::<4>(src, dst, hw),
            _ => {
                for (ch, plane) in src.chunks_exact(hw).enumerate() {
                    for (p, &v) in plane.iter().enumerate() {
                        dst[p * c + ch] = v;
                    }
                }
            }
        }
    }
}

/// One image's `C` planes of `hw` values (`src`) as `hw` pixels of `C` values (`dst`).
fn interleave<const C: usize>(src: &[u8], dst: &mut [u8], hw: usize) {
    let planes: [&[u8]; C] = std::array::from_fn(|ch| &src[ch * hw..(ch + 1) * hw]);
    for (p, px) in dst.chunks_exact_mut(C).enumerate() {
        for (d, plane) in px.iter_mut().zip(&planes) {
            *d = plane[p];
        }
    }
}

fn nhwc_to_nchw(x: &[u8], [n, c, h, w]: [usize; 4], out: &mut [u8]) {
    let hw = h * w;
    for b in 0..n {
        let (src, dst) = (&x[b * c * hw..][..c * hw], &mut out[b * c * hw..][..c * hw]);
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * hw + p] = v;
            }
        }
    }
}

impl Prepared for PreparedLayer {
    fn kernel(&self) -> &'static str {
        self.name
    }

    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    fn run(&self, _stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        self.run_codes(crate::ops::one_input("layer input", inputs)?, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::flow::Flow;
    use crate::engine::{Ctx, Engine, Isa};
    use crate::ops::layer::{QLayer, QWeight};
    use crate::ops::{Op, OutQParams};

    fn linear(scales: Vec<f32>, zero_points: Vec<i64>, per_channel: bool) -> QLayer {
        QLayer {
            geometry: Geometry::Linear {
                in_features: 3,
                out_features: 2,
            },
            bias: None,
            weight: QWeight {
                shape: vec![2, 3],
                int_repr: vec![1, -2, 3, -4, 5, -6],
                scales,
                zero_points,
                per_channel,
            },
            relu: false,
            cache: Default::default(),
        }
    }

    #[test]
    fn fused_layer_matches_reference_and_rejects_bad_input() {
        let ctx = Ctx {
            flow: Flow::ConvertFx,
            engine: Engine::Fbgemm,
            isa: Isa::Avx2,
            cpu: crate::engine::CpuFeatures::AVX2,
        };
        let input = Value::Quantized(QTensor::new(
            vec![2, 3],
            vec![0, 7, 200, 255, 128, 3],
            0.05,
            10,
        ));
        let out = OutQParams {
            scale: 0.1,
            zero_point: 100,
            quant_min: 0,
            quant_max: 255,
        };
        let good = linear(vec![0.02, 0.03], vec![0, 0], true);
        let plan = good.plan(&ctx, &[input.meta()], Some(&out)).unwrap();
        let fused = X86Backend
            .run(plan.lowered().unwrap(), &[&input])
            .unwrap()
            .expect("fbgemm linear runs on the fused backend");
        assert_eq!(fused.values, plan.predict(&[&input]).unwrap()[0].values);
        // Per-channel weights with one scale, a NaN or zero output scale: errors when planned.
        let bad = linear(vec![0.02], vec![0], true);
        assert!(bad.plan(&ctx, &[input.meta()], Some(&out)).is_err());
        for scale in [f64::NAN, 0.0, -1.0] {
            let o = OutQParams { scale, ..out };
            assert!(good.plan(&ctx, &[input.meta()], Some(&o)).is_err());
        }
        // An input whose data does not fit the planned shape: an error, not a panic.
        let short = Value::Quantized(QTensor::new(vec![2, 3], vec![0; 5], 0.05, 10));
        assert!(X86Backend.run(plan.lowered().unwrap(), &[&short]).is_err());
    }

    #[test]
    fn linear_in_memory_order_on_a_channels_last_value() {
        // A linear over the last dim of a 4-D channels-last value (found by the graph_agreement
        // fuzz target: the NHWC codes were read as rows of the logical order).
        let ctx = Ctx {
            flow: Flow::ConvertFx,
            engine: Engine::Fbgemm,
            isa: Isa::Avx2,
            cpu: crate::engine::CpuFeatures::AVX2,
        };
        let mut q = QTensor::new(
            vec![1, 2, 2, 3],
            (0..12).map(|i| (i * 21 % 256) as u8).collect(),
            0.05,
            10,
        );
        q.memory_format = MemoryFormat::ChannelsLast;
        let input = Value::Quantized(q.clone());
        let out = OutQParams {
            scale: 0.02,
            zero_point: 100,
            quant_min: 0,
            quant_max: 255,
        };
        let l = linear(vec![0.02, 0.03], vec![0, 0], true);
        let plan = l.plan(&ctx, &[input.meta()], Some(&out)).unwrap();
        let want: Vec<u8> = match &plan.predict(&[&input]).unwrap()[0].values {
            crate::ops::Predicted::Ints(p) => p
                .iter()
                .map(|p| match p {
                    crate::numerics::bound::Pred::Exact(v) => *v as u8,
                    other => panic!("undecided {other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        };
        let memory = Value::Quantized(QTensor {
            data: q.memory_order(),
            ..q
        });
        for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
            let p = X86Backend
                .prepare_in_memory(plan.lowered().unwrap(), &[input.meta()], format)
                .unwrap()
                .unwrap();
            let mut got = vec![0u8; want.len()];
            p.run(plan.lowered().unwrap(), &[&memory], &mut got)
                .unwrap();
            let mut o = QTensor::new(vec![1, 2, 2, 2], want.clone(), 0.02, 100);
            o.memory_format = format;
            assert_eq!(got, o.memory_order(), "output held {format:?}");
        }
    }
}
