//! The x86 backend: a planned `convert_fx` linear / conv2d on the optimized x86 kernels
//! ([`crate::kernels::x86`]): weights packed once, zero points folded and the plan's
//! requantization rule fused into the GEMM's epilogue, u8 out.

use super::Backend;
use crate::engine::KernelPath;
use crate::kernels::x86::conv::{Conv2d, Depthwise3x3, Layout};
use crate::kernels::x86::{Kernel, PackedLinear};
use crate::ops::layer::{Geometry, IntegerLayer};
use crate::ops::{Lowered, Output, Predicted, QTensor, Value};
use crate::{Error, Result};

/// The x86 backend (AVX2 and AVX-512 VNNI kernels, chosen by the plan's accumulation model and
/// the CPU).
#[derive(Debug, Clone, Copy)]
pub struct X86Backend;

impl Backend for X86Backend {
    fn name(&self) -> &'static str {
        "x86-fused"
    }

    fn run(&self, stage: Lowered<'_>, inputs: &[&Value]) -> Result<Option<Output>> {
        match stage {
            Lowered::IntegerLayer(l) => {
                let input = inputs
                    .first()
                    .ok_or_else(|| Error::invalid("layer", "no input"))?
                    .quantized("layer input")?;
                Ok(run_layer(l, input)?.map(|(data, _)| {
                    Output::new(
                        "int_repr",
                        l.out_shape.clone(),
                        Predicted::exact(data.into_iter().map(i64::from)),
                    )
                }))
            }
        }
    }
}

/// Runs a planned layer on the optimized x86 kernels: the u8 output (PyTorch's layout) and the
/// name of the kernel that ran. `None` for oneDNN layers (its requantization order is not
/// modelled bit for bit, so there is nothing exact to fuse).
pub fn run_layer(l: &IntegerLayer, input: &QTensor) -> Result<Option<(Vec<u8>, &'static str)>> {
    if l.path == KernelPath::Onednn {
        return Ok(None);
    }
    super::check_planned_input(l, input)?;
    let kernel = Kernel::best(l.accumulation);
    let w = &l.weight;
    let zps: Vec<i32> = w.zero_points.iter().map(|&z| z as i32).collect();
    let a_zp = i32::try_from(input.zero_point).unwrap_or(i32::MAX);
    let mut data = vec![0u8; l.out_shape.iter().product()];
    let requant = l.requant.clone();
    let name = match l.geometry {
        Geometry::Linear {
            in_features,
            out_features,
        } => {
            let lin = PackedLinear::with_kernel(
                kernel,
                &w.int_repr,
                out_features,
                in_features,
                &zps,
                requant,
            )?;
            let m = input.data.len() / in_features.max(1);
            lin.run(&input.data, m, a_zp, &mut data)?;
            kernel.name()
        }
        Geometry::Conv2d(p) => {
            let [nb, _, h, wd] = input.shape[..] else {
                return Err(Error::shape(
                    "conv2d input",
                    format!("{:?} is not NCHW", input.shape),
                ));
            };
            let dw3x3 = l.path == KernelPath::FbgemmDepthwise
                && p.kernel_size == [3, 3]
                && p.out_channels == p.in_channels;
            if dw3x3 {
                let dw = Depthwise3x3::new(
                    &w.int_repr,
                    p.in_channels,
                    (p.stride[0], p.stride[1]),
                    (p.padding[0], p.padding[1]),
                    &zps,
                    requant,
                )?;
                dw.run(&input.data, nb, h, wd, a_zp, &mut data)?;
                if dw.is_simd() {
                    "x86-avx2-depthwise3x3"
                } else {
                    "x86-depthwise3x3-scalar"
                }
            } else {
                let conv = Conv2d::with_kernel(kernel, &w.int_repr, p, &zps, requant)?;
                conv.run(Layout::Nchw, &input.data, nb, h, wd, a_zp, &mut data)?;
                kernel.name()
            }
        }
    };
    Ok(Some((data, name)))
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
}
