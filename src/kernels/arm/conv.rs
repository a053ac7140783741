//! Quantized 2-D convolution on the ARM GEMM kernels via im2col.
//!
//! Input NCHW u8 with zero point `za`; weight `[OC, IC/groups, KH, KW]` i8 (PyTorch layout, one
//! row per output channel, which is already the N×K operand of the GEMM); padding positions take
//! the input zero point, so they contribute `(za − za)·w = 0` exactly as in PyTorch's qconv.
//! For each image and group, the patch matrix (output pixels × IC/g·KH·KW) is the GEMM's A and
//! the fused epilogue writes the requantized bytes straight into the NCHW output.

use super::drive::{self, Epilogue, Sink};
use super::{ArmKernel, QGemm, Requant};
pub use crate::geometry::Conv2dParams;
use crate::{Error, Result};

/// Runs the convolution with `kernel` and the fused `rule`; the weight has the shape
/// `params.weight_shape()`. Returns the NCHW output and its shape `[N, OC, OH, OW]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    kernel: ArmKernel,
    input: &[u8],
    input_shape: [usize; 4],
    input_zero_point: i32,
    weight: &[i8],
    weight_zero_points: &[i32],
    params: &Conv2dParams,
    rule: Requant<'_>,
) -> Result<(Vec<u8>, [usize; 4])> {
    let shape_err = |why: String| Error::shape("conv2d", why);
    let count = |s: &[usize; 4]| s.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    if count(&input_shape) != Some(input.len()) {
        return Err(shape_err(format!(
            "input has {} values, shape {input_shape:?}",
            input.len()
        )));
    }
    let (n, oh, ow) = params.output_dims(&input_shape)?;
    let [_, ic, h, w] = input_shape;
    let weight_shape = params.weight_shape();
    let [oc, icg, kh, kw] = weight_shape;
    let g = params.groups;
    if count(&weight_shape) != Some(weight.len()) {
        return Err(shape_err(format!(
            "weight has {} values, shape {weight_shape:?}",
            weight.len()
        )));
    }
    if weight_zero_points.len() != 1 && weight_zero_points.len() != oc {
        return Err(shape_err(format!(
            "{} weight zero points for {oc} output channels",
            weight_zero_points.len()
        )));
    }
    if !(0..=255).contains(&input_zero_point) {
        return Err(Error::invalid(
            "input zero point",
            format!("{input_zero_point} is outside 0..=255"),
        ));
    }
    rule.validate(oc, 0)?;
    kernel.check_supported()?;

    let ocg = oc / g;
    let pixels = oh * ow;
    let kdim = icg * kh * kw;
    let mut out = vec![0u8; n * oc * pixels];
    let mut cols = vec![0u8; pixels * kdim];
    let pad_val = input_zero_point as u8;
    for img in 0..n {
        for grp in 0..g {
            // im2col: row p = (y, x) output pixel, column (c, ky, kx) like the weight rows.
            for y in 0..oh {
                for x in 0..ow {
                    let row = &mut cols[(y * ow + x) * kdim..][..kdim];
                    for c in 0..icg {
                        let plane = &input[((img * ic) + grp * icg + c) * h * w..][..h * w];
                        for ky in 0..kh {
                            let iy = (y * params.stride[0] + ky * params.dilation[0])
                                .checked_sub(params.padding[0])
                                .filter(|&v| v < h);
                            for kx in 0..kw {
                                let ix = (x * params.stride[1] + kx * params.dilation[1])
                                    .checked_sub(params.padding[1])
                                    .filter(|&v| v < w);
                                row[(c * kh + ky) * kw + kx] = match (iy, ix) {
                                    (Some(iy), Some(ix)) => plane[iy * w + ix],
                                    _ => pad_val,
                                };
                            }
                        }
                    }
                }
            }
            let zps = if weight_zero_points.len() == 1 {
                weight_zero_points
            } else {
                &weight_zero_points[grp * ocg..(grp + 1) * ocg]
            };
            let p = QGemm {
                m: pixels,
                n: ocg,
                k: kdim,
                a: &cols,
                a_zero_point: input_zero_point,
                b: &weight[grp * ocg * kdim..(grp + 1) * ocg * kdim],
                b_zero_points: zps,
            };
            p.validate()?;
            let sink = Sink::U8 {
                out: &mut out,
                base: (img * oc + grp * ocg) * pixels,
                rs: 1,
                cs: pixels,
                epi: Epilogue::new(rule, grp * ocg, ocg),
            };
            drive::run(kernel, &p, sink);
        }
    }
    Ok((out, [n, oc, oh, ow]))
}
