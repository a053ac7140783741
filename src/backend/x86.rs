//! A `convert_fx` layer run the way a deployment engine runs it: weights packed once for the
//! optimized x86 kernels, zero points folded and the requantization rule fused into the GEMM's
//! epilogue, u8 out. `qparity check --fused` puts every golden model layer through this backend.

use crate::engine::flow::{LayerOp, OutQParams, QLayer, QTensor, StageCtx};
use crate::engine::KernelPath;
use crate::kernels::x86::conv::{Conv2d, Depthwise3x3, Layout};
use crate::kernels::x86::{Kernel, PackedLinear};
use crate::kernels::{FusedOut, Requant};
use crate::Result;

/// Runs `layer` on `input` under `convert_fx` on the optimized x86 kernels. `None` when the
/// backend does not implement the layer's kernel path (oneDNN, whose requantization order is
/// not modelled bit for bit).
pub fn run_convert_fx(
    layer: &QLayer,
    ctx: &StageCtx,
    input: &QTensor,
    out: &OutQParams,
) -> Result<Option<FusedOut>> {
    let shape = layer.validate_stage(input, out)?;
    let path = layer.path(ctx);
    if path == KernelPath::Onednn {
        return Ok(None);
    }
    let kernel = Kernel::best(layer.accumulation(ctx, path));
    let requant = if path.uses_fbgemm_requant() {
        Requant::Fbgemm(layer.fbgemm_requant(input, out))
    } else {
        Requant::Qnnpack(layer.qnnpack_requant(input, out))
    };
    let w = &layer.weight;
    let zps: Vec<i32> = w.zero_points.iter().map(|&z| z as i32).collect();
    let a_zp = i32::try_from(input.zero_point).unwrap_or(i32::MAX);
    let mut data = vec![0u8; shape.iter().product()];
    let name = match layer.op {
        LayerOp::Linear {
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
        LayerOp::Conv2d(p) => {
            let [nb, _, h, wd] = input.shape[..] else {
                return Err(crate::Error::shape(
                    "conv2d input",
                    format!("{:?} is not NCHW", input.shape),
                ));
            };
            let dw3x3 = path == KernelPath::FbgemmDepthwise
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
    Ok(Some(FusedOut {
        data,
        shape,
        kernel: name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::flow::{Flow, QWeight};
    use crate::engine::{Engine, Isa};

    fn linear(scales: Vec<f32>, zero_points: Vec<i64>, per_channel: bool) -> QLayer {
        QLayer {
            op: LayerOp::Linear {
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
        }
    }

    #[test]
    fn fused_layer_matches_reference_and_rejects_bad_input() {
        let ctx = StageCtx {
            flow: Flow::ConvertFx,
            engine: Engine::Fbgemm,
            isa: Isa::Avx2,
            cpu_has_vnni: false,
        };
        let input = QTensor {
            shape: vec![2, 3],
            data: vec![0, 7, 200, 255, 128, 3],
            scale: 0.05,
            zero_point: 10,
        };
        let out = OutQParams {
            scale: 0.1,
            zero_point: 100,
            quant_min: 0,
            quant_max: 255,
        };
        let good = linear(vec![0.02, 0.03], vec![0, 0], true);
        let fused = run_convert_fx(&good, &ctx, &input, &out)
            .unwrap()
            .expect("fbgemm linear runs on the fused backend");
        let pred = good.run(&ctx, &input, &out).unwrap().pred;
        let want: Vec<u8> = pred.iter().map(|p| p.value() as u8).collect();
        assert_eq!(fused.data, want);
        // Per-channel weights with one scale, a NaN or zero output scale, a wrong input length:
        // errors, not panics.
        let bad = linear(vec![0.02], vec![0], true);
        assert!(run_convert_fx(&bad, &ctx, &input, &out).is_err());
        for scale in [f64::NAN, 0.0, -1.0] {
            let o = OutQParams { scale, ..out };
            assert!(run_convert_fx(&good, &ctx, &input, &o).is_err());
        }
        let short = QTensor {
            data: vec![0; 5],
            ..input.clone()
        };
        assert!(run_convert_fx(&good, &ctx, &short, &out).is_err());
    }
}
