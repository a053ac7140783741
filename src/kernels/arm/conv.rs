//! Quantized 2-D convolution on the ARM GEMM kernels via im2col.
//!
//! Input NCHW or NHWC u8 with zero point `za`; weight `[OC, IC/groups, KH, KW]` i8 (PyTorch
//! layout, one row per output channel, which is already the N×K operand of the GEMM when the
//! im2col columns are ordered `(ic, ky, kx)`: all kernels accumulate exactly, so the order of the
//! products does not matter); padding positions take the input zero point, so they contribute
//! `(za − za)·w = 0` exactly as in PyTorch's qconv. For each image and group, the patch matrix
//! (output pixels × IC/g·KH·KW) is the GEMM's A and the epilogue writes raw or requantized
//! values straight into the output in the input's layout.

use super::drive::Sink;
use super::Kernel;
use crate::kernels::quant::{self, Layout, Output, PerChannel, QConv, QGemm};
use crate::Result;

/// Runs conv `c` with `kernel`, writing `batch × OC × OH × OW` values in `c.layout` to `out`;
/// returns `(OH, OW)`.
pub(super) fn conv2d(kernel: Kernel, c: &QConv<'_>, out: Output<'_>) -> Result<(usize, usize)> {
    let (oh, ow) = c.validate()?;
    c.check_output(out.len(), (oh, ow))?;
    let p = &c.params;
    let zps = quant::weight_zero_points(c.w_zero_points, p.out_channels)?;
    if let Output::Requantized(r, _) = &out {
        r.validate(p.out_channels)?;
    }
    let [kh, kw] = p.kernel_size;
    let (ic, oc, g) = (p.in_channels, p.out_channels, p.groups);
    let (icg, ocg) = (ic / g, oc / g);
    let (h, w) = (c.height, c.width);
    let pixels = oh * ow;
    let kdim = icg * kh * kw;
    let mut cols = vec![0u8; pixels * kdim];
    let pad = c.a_zero_point as u8;
    let input = |img: usize, ch: usize, y: usize, x: usize| match c.layout {
        Layout::Nchw => c.input[((img * ic + ch) * h + y) * w + x],
        Layout::Nhwc => c.input[((img * h + y) * w + x) * ic + ch],
    };
    // Output element (pixel i, channel j of group grp) of image img is at base + i·rs + j·cs.
    let (rs, cs) = match c.layout {
        Layout::Nchw => (1, pixels),
        Layout::Nhwc => (oc, 1),
    };
    let base = |img: usize, grp: usize| match c.layout {
        Layout::Nchw => (img * oc + grp * ocg) * pixels,
        Layout::Nhwc => img * pixels * oc + grp * ocg,
    };
    let mut out = out;
    for img in 0..c.batch {
        for grp in 0..g {
            // im2col: row = output pixel (y, x), column (ci, ky, kx) like the weight rows.
            for y in 0..oh {
                for x in 0..ow {
                    let row = &mut cols[(y * ow + x) * kdim..][..kdim];
                    for ky in 0..kh {
                        let iy = (y * p.stride[0] + ky * p.dilation[0])
                            .checked_sub(p.padding[0])
                            .filter(|&v| v < h);
                        for kx in 0..kw {
                            let ix = (x * p.stride[1] + kx * p.dilation[1])
                                .checked_sub(p.padding[1])
                                .filter(|&v| v < w);
                            for ci in 0..icg {
                                row[(ci * kh + ky) * kw + kx] = match (iy, ix) {
                                    (Some(iy), Some(ix)) => input(img, grp * icg + ci, iy, ix),
                                    _ => pad,
                                };
                            }
                        }
                    }
                }
            }
            let zb = &zps[grp * ocg..(grp + 1) * ocg];
            let gemm = QGemm {
                m: pixels,
                n: ocg,
                k: kdim,
                a: &cols,
                a_zero_point: c.a_zero_point,
                b: &c.weight[grp * ocg * kdim..(grp + 1) * ocg * kdim],
                b_zero_points: zb,
            };
            let sink = match &mut out {
                Output::Raw(o) => Sink::raw(o, base(img, grp), rs, cs),
                Output::Requantized(r, o) => {
                    let padded = ocg.div_ceil(super::NR) * super::NR;
                    let epi = PerChannel::new(r, grp * ocg, ocg, padded)?;
                    Sink::requantized(o, base(img, grp), rs, cs, epi)
                }
            };
            kernel.run(&gemm, zb, sink);
        }
    }
    Ok((oh, ow))
}
