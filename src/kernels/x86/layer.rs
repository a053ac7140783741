//! A `convert_fx` layer run the way a deployment engine runs it: weights packed once for the
//! optimized x86 kernels, zero points folded and the requantization rule fused into the GEMM's
//! epilogue, u8 out. `qparity check --fused` puts every golden model layer through this backend.

use super::conv::{Conv2d, Depthwise3x3, Layout};
use super::{KernelId, PackedLinear};
use crate::engine::KernelPath;
use crate::flow::{LayerOp, OutQParams, QLayer, QTensor, StageCtx};
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
    let path = layer.path(ctx);
    if path == KernelPath::Onednn {
        return Ok(None);
    }
    let shape = layer.output_shape(&input.shape)?;
    let kernel = KernelId::best(layer.accumulation(ctx, path));
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
