//! A backend over any kernel with fused entry points ([`Int8Gemm::quant_gemm`] and
//! [`Int8Gemm::quant_conv`]): the ARM backend, and the way an outside kernel (an engine author's
//! own) runs every golden `convert_fx` layer end to end with `check`'s comparison.
//!
//! A layer runs on the kernel when the kernel computes the plan's accumulation for that path:
//! exact kernels take every exact path (the sum of exact products does not depend on their
//! order); pair-saturating kernels only FBGEMM's packed GEMM, whose pairs run along K in im2col
//! order `(ky, kx, ic)` as [`crate::kernels::QuantConv::accumulation`] specifies (FBGEMM's
//! depthwise kernel pairs taps instead). oneDNN layers run on exact kernels only where oneDNN
//! accumulates exactly (as on x86, `backend::x86`): with FBGEMM's requantization, which the plan
//! admits for every element (it predicts oneDNN's order within its proven window); oneDNN's
//! pair-saturating AVX2 kernels pair other products and never run here.
//! Everything else is left to the reference model and counted as a fallback.

use super::{Backend, Prepared};
use crate::engine::KernelPath;
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

    /// Whether the kernel computes this layer's accumulation bit for bit.
    pub fn implements(&self, l: &IntegerLayer) -> bool {
        let acc = self.kernel.accumulation();
        acc == l.accumulation
            && match l.path {
                KernelPath::Onednn => acc == Accumulation::Exact,
                KernelPath::FbgemmGemm => true,
                _ => acc == Accumulation::Exact,
            }
    }

    /// Runs a planned layer: the u8 output in PyTorch's layout, or `None` where the kernel does
    /// not implement it (see the module docs).
    pub fn run_layer(&self, l: &IntegerLayer, input: &QTensor) -> Result<Option<Vec<u8>>> {
        if !self.implements(l) {
            return Ok(None);
        }
        super::check_planned_input(l, input)?;
        let w = &l.weight;
        let zps = w
            .zero_points
            .iter()
            .map(|&z| {
                i32::try_from(z)
                    .map_err(|_| Error::invalid("weight zero point", format!("{z} is not an i32")))
            })
            .collect::<Result<Vec<i32>>>()?;
        let a_zero_point = i32::try_from(input.zero_point).map_err(|_| {
            Error::invalid(
                "input zero point",
                format!("{} is not an i32", input.zero_point),
            )
        })?;
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
                    b: &w.int_repr,
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
                    weight: &w.int_repr,
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
                let supported = match (l.geometry, self.kernel.quant_conv()) {
                    (Geometry::Linear { .. }, _) => self.kernel.quant_gemm().is_some(),
                    (Geometry::Conv2d(p), Some(k)) => k.supports(&p, Layout::Nchw),
                    (Geometry::Conv2d(_), None) => false,
                };
                Ok((self.implements(l) && supported).then(|| {
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
    /// output scattered back); every other stage as the portable backend runs it in memory order.
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
