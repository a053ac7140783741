//! A backend over any kernel with fused entry points ([`Int8Gemm::quant_gemm`] and
//! [`Int8Gemm::quant_conv`]): the ARM backend, and the way an outside kernel (an engine author's
//! own) runs every golden `convert_fx` layer end to end with `check`'s comparison.
//!
//! A layer runs on the kernel when the kernel computes the plan's accumulation for that path:
//! exact kernels take every exact path (the sum of exact products does not depend on their
//! order); pair-saturating kernels only FBGEMM's packed GEMM, whose pairs run along K in im2col
//! order `(ky, kx, ic)` as [`crate::kernels::QuantConv::accumulation`] specifies. oneDNN layers
//! run on exact kernels only where oneDNN accumulates exactly (as on x86, `backend::x86`): with
//! FBGEMM's requantization, which the plan admits for every element (it predicts oneDNN's order
//! within its proven window); oneDNN's pair-saturating AVX2 kernels pair other products and never
//! run here. FBGEMM's depthwise layers (tap pairs saturating int16 on every CPU) run on
//! [`DepthwiseTapPairs`], whatever the kernel; FBGEMM's packed-GEMM layers captured without VNNI
//! (K pairs saturating int16) run on the kernel where it computes that accumulation (an outside
//! pair-saturating kernel is checked on them), else on [`PairGemm`] / [`PairConv`]; both packed
//! once at prepare time. Everything else is left to the reference model and counted as a
//! fallback.

use super::{Backend, Prepared};
use crate::engine::KernelPath;
use crate::geometry::Conv2dParams;
use crate::kernels::depthwise::DepthwiseTapPairs;
use crate::kernels::pairs::{PairConv, PairGemm};
use crate::kernels::{Accumulation, Int8Gemm, Layout, Output as KOut, QConv, QGemm};
use crate::ops::layer::{Geometry, IntegerLayer};
use crate::ops::{Lowered, MemoryFormat, Meta, QTensor, Value};
use crate::{Error, Result};
use std::sync::Arc;

/// A [`Backend`] that runs planned layers on one kernel's fused entry points.
#[derive(Debug)]
pub struct KernelBackend {
    name: &'static str,
    kernel: Arc<dyn Int8Gemm>,
}

impl KernelBackend {
    /// A backend named `name` (report groups read `convert_fx[<name>]`) over `kernel`.
    pub fn new(name: &'static str, kernel: Box<dyn Int8Gemm>) -> KernelBackend {
        KernelBackend {
            name,
            kernel: Arc::from(kernel),
        }
    }

    /// Whether the backend computes this layer's accumulation bit for bit: on the kernel, or
    /// (FBGEMM's depthwise layers) on [`DepthwiseTapPairs`], or (FBGEMM's pair-saturating
    /// packed GEMM the kernel does not run) on [`PairGemm`] / [`PairConv`].
    pub fn implements(&self, l: &IntegerLayer) -> bool {
        portable_pairs(l) || self.kernel_implements(l)
    }

    /// Whether the kernel itself computes this layer's accumulation bit for bit.
    fn kernel_implements(&self, l: &IntegerLayer) -> bool {
        let acc = self.kernel.accumulation();
        acc == l.accumulation
            && match l.path {
                KernelPath::Onednn => acc == Accumulation::Exact,
                KernelPath::FbgemmGemm => true,
                _ => acc == Accumulation::Exact,
            }
    }

    /// Whether the kernel runs this layer: it computes the accumulation and has a fused entry
    /// point for the geometry.
    fn kernel_runs(&self, l: &IntegerLayer) -> bool {
        self.kernel_implements(l)
            && match (l.geometry, self.kernel.quant_conv()) {
                (Geometry::Linear { .. }, _) => self.kernel.quant_gemm().is_some(),
                (Geometry::Conv2d(p), Some(k)) => k.supports(&p, Layout::Nchw),
                (Geometry::Conv2d(_), None) => false,
            }
    }

    /// The layer on a portable pair kernel where it runs there (see the module docs).
    fn pairs_layer(&self, l: &IntegerLayer, nhwc: (bool, bool)) -> Result<Option<PairsLayer>> {
        if tap_pair_depthwise(l).is_some() || (pair_gemm(l) && !self.kernel_runs(l)) {
            PairsLayer::new(l, nhwc)
        } else {
            Ok(None)
        }
    }

    /// Runs a planned layer: the u8 output in PyTorch's layout, or `None` where the kernel does
    /// not implement it (see the module docs).
    pub fn run_layer(&self, l: &IntegerLayer, input: &QTensor) -> Result<Option<Vec<u8>>> {
        if let Some(layer) = self.pairs_layer(l, (false, false))? {
            let mut data = vec![0u8; l.out_shape.iter().product()];
            layer.run_codes(input, &mut data)?;
            return Ok(Some(data));
        }
        if !self.kernel_implements(l) {
            return Ok(None);
        }
        super::check_planned_input(l, input)?;
        let zps = weight_zero_points(l)?;
        let a_zero_point = activation_zero_point(input.zero_point)?;
        let mut data = vec![0u8; l.out_shape.iter().product()];
        let out = KOut::Requantized(&l.requant, &mut data);
        match l.geometry {
            Geometry::Linear {
                in_features,
                out_features,
            } => {
                let Some(k) = self.kernel.quant_gemm() else {
                    return Ok(None);
                };
                let p = QGemm {
                    m: input.data.len() / in_features.max(1),
                    n: out_features,
                    k: in_features,
                    a: &input.data,
                    a_zero_point,
                    b: &l.weight.int_repr,
                    b_zero_points: &zps,
                };
                k.qgemm(&p, out)?;
            }
            Geometry::Conv2d(params) => {
                let Some(k) = self.kernel.quant_conv() else {
                    return Ok(None);
                };
                if !k.supports(&params, Layout::Nchw) {
                    return Ok(None);
                }
                let [batch, _, height, width] = input.shape[..] else {
                    return Err(Error::shape(
                        "conv2d input",
                        format!("{:?} is not NCHW", input.shape),
                    ));
                };
                let c = QConv {
                    params,
                    layout: Layout::Nchw,
                    batch,
                    height,
                    width,
                    input: &input.data,
                    a_zero_point,
                    weight: &l.weight.int_repr,
                    w_zero_points: &zps,
                };
                k.qconv(&c, out)?;
            }
        }
        Ok(Some(data))
    }
}

impl Backend for KernelBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn prepare(
        &self,
        stage: Lowered<'_>,
        inputs: &[Meta<'_>],
    ) -> Result<Option<Box<dyn Prepared>>> {
        match stage {
            Lowered::IntegerLayer(l) => {
                if let Some(layer) = self.pairs_layer(l, (false, false))? {
                    return Ok(Some(Box::new(layer)));
                }
                Ok(self.kernel_runs(l).then(|| {
                    Box::new(KernelLayer {
                        backend: KernelBackend {
                            name: self.name,
                            kernel: self.kernel.clone(),
                        },
                        layer: l.clone(),
                    }) as Box<dyn Prepared>
                }))
            }
            other => super::portable::prepare(other, inputs),
        }
    }

    /// Layers run on the kernel in logical order (the input gathered from memory order, the
    /// output scattered back), convs on the portable pair kernels on channels-last tensors as
    /// they are held; every other stage as the portable backend runs it in memory order.
    fn prepare_in_memory(
        &self,
        stage: Lowered<'_>,
        inputs: &[Meta<'_>],
        out_format: MemoryFormat,
    ) -> Result<Option<Box<dyn Prepared>>> {
        let Lowered::IntegerLayer(l) = stage else {
            return super::portable::prepare_in_memory(stage, inputs, out_format);
        };
        let input = inputs
            .first()
            .ok_or_else(|| Error::invalid("layer", "no input"))?;
        if matches!(l.geometry, Geometry::Conv2d(_)) {
            // The portable pair convs run NHWC: channels-last tensors as they are held.
            let nhwc = |shape: &[usize], f| super::portable::memory_positions(shape, f).is_some();
            let held = (
                nhwc(input.shape, input.memory_format),
                nhwc(&l.out_shape, out_format),
            );
            if let Some(layer) = self.pairs_layer(l, held)? {
                return Ok(Some(Box::new(layer)));
            }
        }
        let Some(inner) = self.prepare(stage, inputs)? else {
            return Ok(None);
        };
        Ok(Some(Box::new(InMemoryLayer {
            inner,
            in_map: super::portable::memory_positions(input.shape, input.memory_format),
            out_map: super::portable::memory_positions(&l.out_shape, out_format),
        })))
    }
}

/// A layer prepared in logical order, run on memory-order activations.
#[derive(Debug)]
struct InMemoryLayer {
    inner: Box<dyn Prepared>,
    /// Memory position of each logical input element (`None`: logical order).
    in_map: Option<Vec<usize>>,
    /// Memory position of each logical output element (`None`: logical order).
    out_map: Option<Vec<usize>>,
}

impl Prepared for InMemoryLayer {
    fn kernel(&self) -> &'static str {
        self.inner.kernel()
    }

    fn out_shape(&self) -> &[usize] {
        self.inner.out_shape()
    }

    fn run(&self, stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        let logical_input;
        let inputs: Vec<&Value> = match (&self.in_map, inputs.first()) {
            (Some(map), Some(Value::Quantized(q))) => {
                if q.data.len() != map.len() {
                    return Err(Error::shape(
                        "layer input",
                        "length differs from the planned input",
                    ));
                }
                logical_input = Value::Quantized(QTensor {
                    data: map.iter().map(|&p| q.data[p]).collect(),
                    memory_format: MemoryFormat::Contiguous,
                    ..q.clone()
                });
                std::iter::once(&logical_input)
                    .chain(inputs.iter().skip(1).copied())
                    .collect()
            }
            _ => inputs.to_vec(),
        };
        match &self.out_map {
            None => self.inner.run(stage, &inputs, out),
            Some(map) => {
                super::check_out("layer", self.inner.out_shape(), out)?;
                let mut logical = vec![0u8; out.len()];
                self.inner.run(stage, &inputs, &mut logical)?;
                for (&c, &p) in logical.iter().zip(map) {
                    out[p] = c;
                }
                Ok(())
            }
        }
    }
}

/// A layer on a kernel's fused entry points.
#[derive(Debug)]
struct KernelLayer {
    backend: KernelBackend,
    layer: IntegerLayer,
}

impl Prepared for KernelLayer {
    fn kernel(&self) -> &'static str {
        self.backend.kernel.name()
    }

    fn out_shape(&self) -> &[usize] {
        &self.layer.out_shape
    }

    fn run(&self, _stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        let input = inputs
            .first()
            .ok_or_else(|| Error::invalid("layer", "no input"))?
            .quantized("layer input")?;
        let data = self
            .backend
            .run_layer(&self.layer, input)?
            .ok_or_else(|| Error::invalid("layer", "the kernel does not implement this layer"))?;
        super::check_out("layer", &self.layer.out_shape, out)?;
        out.copy_from_slice(&data);
        Ok(())
    }
}

/// The geometry of a layer that runs on [`DepthwiseTapPairs`]: FBGEMM's depthwise path with its
/// pair-saturating accumulation ([`KernelPath::accumulation`]).
fn tap_pair_depthwise(l: &IntegerLayer) -> Option<Conv2dParams> {
    match l.geometry {
        Geometry::Conv2d(p)
            if l.path == KernelPath::FbgemmDepthwise
                && l.accumulation == DepthwiseTapPairs::ACCUMULATION
                && DepthwiseTapPairs::supports(&p) =>
        {
            Some(p)
        }
        _ => None,
    }
}

/// Whether a layer runs on a portable pair kernel: FBGEMM's depthwise ([`DepthwiseTapPairs`])
/// or FBGEMM's packed GEMM with the pair-saturating accumulation ([`PairGemm`], [`PairConv`]).
fn portable_pairs(l: &IntegerLayer) -> bool {
    tap_pair_depthwise(l).is_some() || pair_gemm(l)
}

/// Whether a layer runs on [`PairGemm`] (linear) or [`PairConv`]: FBGEMM's packed GEMM (linear,
/// pointwise and im2col conv) with its non-VNNI pair-saturating accumulation
/// ([`KernelPath::accumulation`]).
fn pair_gemm(l: &IntegerLayer) -> bool {
    l.path == KernelPath::FbgemmGemm
        && l.accumulation == PairGemm::ACCUMULATION
        && match l.geometry {
            Geometry::Linear { .. } => true,
            Geometry::Conv2d(p) => PairConv::supports(&p),
        }
}

/// A layer's weight zero points as the kernels take them.
fn weight_zero_points(l: &IntegerLayer) -> Result<Vec<i32>> {
    l.weight
        .zero_points
        .iter()
        .map(|&z| {
            i32::try_from(z)
                .map_err(|_| Error::invalid("weight zero point", format!("{z} is not an i32")))
        })
        .collect()
}

/// An activation zero point as the kernels take it.
fn activation_zero_point(z: i64) -> Result<i32> {
    i32::try_from(z).map_err(|_| Error::invalid("input zero point", format!("{z} is not an i32")))
}

/// A conv on a portable pair kernel, NHWC.
#[derive(Debug)]
enum NhwcConv {
    Depthwise(DepthwiseTapPairs),
    Pairs(PairConv),
}

/// The kernel of a layer on the portable pair kernels (weights packed once).
#[derive(Debug)]
enum PairsKernel {
    /// A conv, run NHWC.
    Conv(NhwcConv),
    /// A linear layer, run on the logical (row-major) input.
    Linear(PairGemm),
}

/// A layer on [`DepthwiseTapPairs`], [`PairConv`] or [`PairGemm`] ([`portable_pairs`]).
#[derive(Debug)]
struct PairsLayer {
    kernel: PairsKernel,
    input_shape: Vec<usize>,
    input_zero_point: i64,
    out_shape: Vec<usize>,
    /// Whether a conv's input and output are held NHWC (memory order of channels-last
    /// tensors); otherwise logical order.
    nhwc: (bool, bool),
}

impl PairsLayer {
    /// The layer on its pair kernel, or `None` where [`portable_pairs`] is false.
    fn new(l: &IntegerLayer, nhwc: (bool, bool)) -> Result<Option<Self>> {
        let zps = weight_zero_points(l)?;
        let w = &l.weight.int_repr;
        let kernel = if let Some(p) = tap_pair_depthwise(l) {
            PairsKernel::Conv(NhwcConv::Depthwise(DepthwiseTapPairs::new(
                p, w, &zps, &l.requant,
            )?))
        } else if !pair_gemm(l) {
            return Ok(None);
        } else {
            match l.geometry {
                Geometry::Conv2d(p) => {
                    PairsKernel::Conv(NhwcConv::Pairs(PairConv::new(p, w, &zps, &l.requant)?))
                }
                Geometry::Linear {
                    in_features,
                    out_features,
                } => PairsKernel::Linear(PairGemm::new(
                    out_features,
                    in_features,
                    w,
                    &zps,
                    &l.requant,
                    0,
                )?),
            }
        };
        let (input_shape, out_shape) = (l.input_shape.clone(), l.out_shape.clone());
        let is_conv = matches!(kernel, PairsKernel::Conv(_));
        if is_conv {
            for (what, shape) in [
                ("conv2d input", &input_shape),
                ("conv2d output", &out_shape),
            ] {
                if shape.len() != 4 {
                    return Err(Error::shape(what, format!("{shape:?} is not NCHW")));
                }
            }
        }
        Ok(Some(PairsLayer {
            kernel,
            input_shape,
            input_zero_point: l.input_zero_point,
            out_shape,
            nhwc: if is_conv { nhwc } else { (false, false) },
        }))
    }

    /// Runs on `input`'s codes (held as planned: NHWC or logical order), writing `out`.
    fn run_codes(&self, input: &QTensor, out: &mut [u8]) -> Result<()> {
        super::check_out("layer", &self.out_shape, out)?;
        if input.shape != self.input_shape
            || input.data.len() != input.shape.iter().product::<usize>()
            || input.zero_point != self.input_zero_point
        {
            return Err(Error::shape(
                "layer input",
                "data length, shape or zero point differ from the planned input",
            ));
        }
        let a_zp = activation_zero_point(input.zero_point)?;
        let conv = match &self.kernel {
            PairsKernel::Linear(g) => {
                let m = input.data.len() / g.k().max(1);
                return g.run(&input.data, m, a_zp, out);
            }
            PairsKernel::Conv(c) => c,
        };
        let (&[nb, c, h, w], &[_, oc, oh, ow]) = (&self.input_shape[..], &self.out_shape[..])
        else {
            return Err(Error::shape("conv2d", "input or output not 4-D"));
        };
        let mut x = Vec::new();
        let src = if self.nhwc.0 {
            &input.data[..]
        } else {
            x.resize(input.data.len(), 0);
            super::portable::nchw_to_nhwc(&input.data, [nb, c, h, w], &mut x);
            &x[..]
        };
        let run = |o: &mut [u8]| match conv {
            NhwcConv::Depthwise(dw) => dw.run_nhwc(src, nb, h, w, a_zp, o),
            NhwcConv::Pairs(pc) => pc.run_nhwc(src, nb, h, w, a_zp, o),
        };
        if self.nhwc.1 {
            run(out)?;
        } else {
            let mut tmp = vec![0u8; out.len()];
            run(&mut tmp)?;
            super::portable::nhwc_to_nchw(&tmp, [nb, oc, oh, ow], out);
        }
        Ok(())
    }
}

impl Prepared for PairsLayer {
    fn kernel(&self) -> &'static str {
        match self.kernel {
            PairsKernel::Conv(NhwcConv::Depthwise(_)) => DepthwiseTapPairs::NAME,
            PairsKernel::Conv(NhwcConv::Pairs(_)) => PairConv::NAME,
            PairsKernel::Linear(_) => PairGemm::NAME,
        }
    }

    fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    fn run(&self, _stage: Lowered<'_>, inputs: &[&Value], out: &mut [u8]) -> Result<()> {
        let input = inputs
            .first()
            .ok_or_else(|| Error::invalid("layer", "no input"))?
            .quantized("layer input")?;
        self.run_codes(input, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::flow::Flow;
    use crate::engine::{CpuFeatures, Ctx, Engine, Isa};
    use crate::kernels::reference::Reference;
    use crate::numerics::bound::Pred;
    use crate::numerics::test_rng::Rng;
    use crate::ops::layer::{QLayer, QWeight};
    use crate::ops::{Op, OutQParams, Predicted};

    fn conv(p: Conv2dParams, r: &mut Rng, asymmetric: bool) -> QLayer {
        let n = p.weight_shape().iter().product();
        let oc = p.out_channels;
        QLayer {
            geometry: Geometry::Conv2d(p),
            bias: Some((0..oc).map(|i| i as f32 * 0.37 - 3.0).collect()),
            weight: QWeight {
                shape: p.weight_shape().to_vec(),
                // Mostly extreme weights: tap pairs saturate.
                int_repr: (0..n)
                    .map(|_| match r.bits() % 4 {
                        0 => r.bits() as i8,
                        b => [-128, 127, -128][b as usize - 1],
                    })
                    .collect(),
                scales: (0..oc).map(|i| 0.002 + i as f32 * 1e-4).collect(),
                zero_points: (0..oc)
                    .map(|i| if asymmetric { i as i64 % 5 - 2 } else { 0 })
                    .collect(),
                per_channel: true,
            },
            relu: false,
            cache: Default::default(),
        }
    }

    /// FBGEMM's convert_fx on a capture CPU of `isa`, and a u8 output's qparams.
    fn fbgemm(isa: Isa, cpu: CpuFeatures) -> (Ctx, OutQParams) {
        let ctx = Ctx {
            flow: Flow::ConvertFx,
            engine: Engine::Fbgemm,
            isa,
            cpu,
        };
        let out = OutQParams {
            scale: 0.3,
            zero_point: 120,
            quant_min: 0,
            quant_max: 255,
        };
        (ctx, out)
    }

    /// `l` prepared for channels-last memory order, run on `input` (NCHW, dims `[nb, c, h, w]`)
    /// held NHWC, gives `want` (logical order) in NHWC.
    fn assert_channels_last(
        backend: &KernelBackend,
        low: Lowered<'_>,
        l: &IntegerLayer,
        input: &QTensor,
        want: &[u8],
    ) {
        let [nb, c, h, w] = input.shape[..] else {
            panic!("not 4-D")
        };
        let mut nhwc_in = vec![0u8; input.data.len()];
        super::super::portable::nchw_to_nhwc(&input.data, [nb, c, h, w], &mut nhwc_in);
        let held = Value::Quantized(QTensor {
            data: nhwc_in,
            memory_format: MemoryFormat::ChannelsLast,
            ..input.clone()
        });
        let mem = backend
            .prepare_in_memory(low, &[held.meta()], MemoryFormat::ChannelsLast)
            .unwrap()
            .expect("runs");
        let mut got = vec![0u8; want.len()];
        mem.run(low, &[&held], &mut got).unwrap();
        let [_, oc, oh, ow] = l.out_shape[..] else {
            panic!("not 4-D")
        };
        let mut want_nhwc = vec![0u8; want.len()];
        super::super::portable::nchw_to_nhwc(want, [nb, oc, oh, ow], &mut want_nhwc);
        assert_eq!(got, want_nhwc, "{:?} channels-last", l.geometry);
    }

    /// Elements of `want` that `l` with exact accumulation gives otherwise on `input`.
    fn differ_from_exact(l: &IntegerLayer, input: &QTensor, want: &[u8]) -> usize {
        let exact_layer = IntegerLayer {
            accumulation: Accumulation::Exact,
            ..l.clone()
        };
        exact_layer
            .requantize(&exact_layer.accumulators(input, None).unwrap())
            .iter()
            .zip(want)
            .filter(|(p, &w)| p.value() as u8 != w)
            .count()
    }

    fn codes(o: &crate::ops::Output) -> Vec<u8> {
        let Predicted::Ints(v) = &o.values else {
            panic!("not integers")
        };
        v.iter()
            .map(|p| match p {
                Pred::Exact(x) => *x as u8,
                other => panic!("undecided {other:?}"),
            })
            .collect()
    }

    /// FBGEMM depthwise layers (VNNI capture CPU: the GEMM is exact, the depthwise kernel pairs)
    /// run on the tap-pair kernel whatever the backend's kernel, in logical and in channels-last
    /// memory order, and equal the reference model; other layers keep the kernel's rule.
    #[test]
    fn fbgemm_depthwise_layers_run_on_the_tap_pair_kernel() {
        let (ctx, out) = fbgemm(Isa::Vnni, CpuFeatures::AVX512_VNNI);
        let backend = KernelBackend::new("test", Box::new(Reference::new(Accumulation::Exact)));
        let mut r = Rng::new(0xdeb7, 1);
        let (mut elements, mut differs_from_exact) = (0, 0);
        for (c, m, k, s, asym) in [
            (16, 1, 3, 1, false),
            (16, 2, 3, 2, true),
            (8, 1, 5, 2, true),
            (24, 2, 7, 1, false),
            (72, 1, 3, 2, false),
        ] {
            let p = Conv2dParams {
                stride: [s, s],
                ..Conv2dParams::square(c, m * c, c, k, (k - 1) / 2)
            };
            let layer = conv(p, &mut r, asym);
            let (h, w) = (9, 6);
            let data: Vec<u8> = (0..2 * c * h * w)
                .map(|_| [0, 255, r.bits() as u8][(r.bits() % 3) as usize])
                .collect();
            let input = QTensor::new(vec![2, c, h, w], data, 0.04, 200);
            let v = Value::Quantized(input.clone());
            let plan = layer.plan(&ctx, &[v.meta()], Some(&out)).unwrap();
            let low = plan.lowered().unwrap();
            let Lowered::IntegerLayer(l) = low else {
                panic!("not a layer")
            };
            assert_eq!(l.path, KernelPath::FbgemmDepthwise, "{p:?}");
            let want = codes(&plan.predict(&[&v]).unwrap()[0]);
            let prepared = backend.prepare(low, &[v.meta()]).unwrap().expect("runs");
            assert_eq!(prepared.kernel(), DepthwiseTapPairs::NAME);
            let mut got = vec![0u8; want.len()];
            prepared.run(low, &[&v], &mut got).unwrap();
            assert_eq!(got, want, "{p:?}");
            assert_eq!(backend.run_layer(l, &input).unwrap(), Some(want.clone()));
            // Channels-last in and out: the kernel reads and writes NHWC memory directly.
            assert_channels_last(&backend, low, l, &input, &want);
            // The planned accumulation matters: the exact one gives other codes here.
            differs_from_exact += differ_from_exact(l, &input, &want);
            elements += want.len();
            // Input that is not the planned one: an error.
            let short = Value::Quantized(QTensor::new(vec![2, c, h, w], vec![0; 5], 0.04, 200));
            assert!(prepared.run(low, &[&short], &mut got).is_err());
            let moved = Value::Quantized(QTensor {
                zero_point: 3,
                ..input.clone()
            });
            assert!(prepared.run(low, &[&moved], &mut got).is_err());
        }
        assert!(elements > 5000 && differs_from_exact > elements / 10);
        // A grouped (not depthwise) conv on the GEMM path keeps the kernel's rule: the reference
        // kernel has no fused conv, so it falls back.
        let grouped = conv(Conv2dParams::square(16, 16, 4, 3, 1), &mut r, false);
        let v = Value::Quantized(QTensor::new(vec![1, 16, 5, 5], vec![9; 400], 0.04, 200));
        let plan = grouped.plan(&ctx, &[v.meta()], Some(&out)).unwrap();
        assert!(backend
            .prepare(plan.lowered().unwrap(), &[v.meta()])
            .unwrap()
            .is_none());
    }

    /// FBGEMM packed-GEMM layers captured without VNNI (pairs along K saturate int16) run on
    /// the portable pair kernels whatever the backend's kernel, in logical and channels-last
    /// memory order, and equal the reference model: pointwise, im2col and grouped convs (odd
    /// and even K) and linear layers.
    #[test]
    fn fbgemm_pair_gemm_layers_run_on_the_portable_pair_kernels() {
        let (ctx, out) = fbgemm(Isa::Avx2, CpuFeatures::AVX2);
        let backend = KernelBackend::new("test", Box::new(Reference::new(Accumulation::Exact)));
        let mut r = Rng::new(0x9a12, 2);
        let (mut elements, mut differs_from_exact) = (0, 0);
        let mut layers: Vec<(QLayer, Vec<usize>)> = [
            (16, 32, 1, 1, 1, false),
            (16, 24, 1, 3, 2, true),
            (5, 7, 1, 3, 1, false),
            (12, 18, 3, 3, 1, true),
            (64, 8, 2, 1, 1, false),
        ]
        .into_iter()
        .map(|(ic, oc, g, k, s, asym)| {
            let p = Conv2dParams {
                stride: [s, s],
                ..Conv2dParams::square(ic, oc, g, k, (k - 1) / 2)
            };
            (conv(p, &mut r, asym), vec![2, ic, 7, 6])
        })
        .collect();
        for (inf, outf, asym) in [(37, 10, false), (64, 70, true)] {
            let mut l = conv(Conv2dParams::square(1, outf, 1, 1, 0), &mut r, asym);
            l.geometry = Geometry::Linear {
                in_features: inf,
                out_features: outf,
            };
            l.weight.shape = vec![outf, inf];
            l.weight.int_repr = (0..inf * outf)
                .map(|_| [-128, 127, r.bits() as i8][(r.bits() % 3) as usize])
                .collect();
            layers.push((l, vec![3, inf]));
        }
        for (layer, shape) in layers {
            let n = shape.iter().product();
            let data: Vec<u8> = (0..n)
                .map(|_| [0, 255, r.bits() as u8][(r.bits() % 3) as usize])
                .collect();
            let input = QTensor::new(shape.clone(), data, 0.04, 200);
            let v = Value::Quantized(input.clone());
            let plan = layer.plan(&ctx, &[v.meta()], Some(&out)).unwrap();
            let low = plan.lowered().unwrap();
            let Lowered::IntegerLayer(l) = low else {
                panic!("not a layer")
            };
            assert_eq!(l.path, KernelPath::FbgemmGemm, "{:?}", l.geometry);
            assert_eq!(l.accumulation, Accumulation::PairSaturatingI16);
            assert!(backend.implements(l));
            let want = codes(&plan.predict(&[&v]).unwrap()[0]);
            let prepared = backend.prepare(low, &[v.meta()]).unwrap().expect("runs");
            let conv = matches!(l.geometry, Geometry::Conv2d(_));
            assert_eq!(
                prepared.kernel(),
                if conv { PairConv::NAME } else { PairGemm::NAME }
            );
            let mut got = vec![0u8; want.len()];
            prepared.run(low, &[&v], &mut got).unwrap();
            assert_eq!(got, want, "{:?}", l.geometry);
            assert_eq!(backend.run_layer(l, &input).unwrap(), Some(want.clone()));
            if conv {
                assert_channels_last(&backend, low, l, &input, &want);
            }
            differs_from_exact += differ_from_exact(l, &input, &want);
            elements += want.len();
            let moved = Value::Quantized(QTensor {
                zero_point: 3,
                ..input.clone()
            });
            assert!(prepared.run(low, &[&moved], &mut got).is_err());
            // A kernel that computes the pairs itself (x86 AVX2) runs the layer.
            for k in crate::kernels::available() {
                if k.accumulation() != Accumulation::PairSaturatingI16
                    || k.quant_gemm().is_none()
                    || k.quant_conv().is_none()
                {
                    continue;
                }
                let name = k.name();
                let own = KernelBackend::new("own", k);
                let prepared = own.prepare(low, &[v.meta()]).unwrap().expect("runs");
                assert_eq!(prepared.kernel(), name);
                let mut got = vec![0u8; want.len()];
                prepared.run(low, &[&v], &mut got).unwrap();
                assert_eq!(got, want, "{name} on {:?}", l.geometry);
            }
        }
        eprintln!("pair layers: {elements} elements, {differs_from_exact} differ from exact");
        assert!(elements > 2000 && differs_from_exact > elements / 10);
    }
}
