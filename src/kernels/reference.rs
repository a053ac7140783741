//! The reference kernels: a direct triple loop for the GEMM, and the scalar models of a quantized
//! GEMM with zero points and of a quantized conv2d, written for clarity rather than speed. Every
//! optimized kernel is checked against these (see [`super::conformance`]).

use super::quant::{weight_zero_points, Layout, QConv, QGemm};
use super::{Accumulation, Int8Gemm};
use crate::Result;

/// Plain implementation of either accumulation model.
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    acc: Accumulation,
}

impl Reference {
    /// A reference kernel for the given accumulation model.
    pub fn new(acc: Accumulation) -> Self {
        Self { acc }
    }
}

/// Saturates an i32 to the int16 range, as `vpmaddubsw` does for each pair sum.
pub fn sat16(v: i32) -> i32 {
    v.clamp(i16::MIN as i32, i16::MAX as i32)
}

/// One dot product `Σ a[k]·b[k]` under the accumulation model.
pub fn dot(acc: Accumulation, a: &[u8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len());
    match acc {
        Accumulation::Exact => a
            .iter()
            .zip(b)
            .fold(0i32, |s, (&x, &w)| s.wrapping_add(x as i32 * w as i32)),
        Accumulation::PairSaturatingI16 => {
            let mut s = 0i32;
            for (pa, pb) in a.chunks(2).zip(b.chunks(2)) {
                let pair: i32 = pa.iter().zip(pb).map(|(&x, &w)| x as i32 * w as i32).sum();
                s = s.wrapping_add(sat16(pair));
            }
            s
        }
    }
}

impl Int8Gemm for Reference {
    fn name(&self) -> &'static str {
        match self.acc {
            Accumulation::Exact => "reference-exact",
            Accumulation::PairSaturatingI16 => "reference-pair-sat16",
        }
    }

    fn accumulation(&self) -> Accumulation {
        self.acc
    }

    fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
        assert_eq!(a.len(), m * k, "a must be M×K");
        assert_eq!(b.len(), n * k, "b must be N×K");
        assert_eq!(c.len(), m * n, "c must be M×N");
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            for j in 0..n {
                c[i * n + j] = dot(self.acc, row, &b[j * k..(j + 1) * k]);
            }
        }
    }
}

/// The zero-point-folded accumulators of a quantized GEMM under `acc` (M×N row-major): `raw =
/// dot(a_i, b_j) − a_zp·Σ_k b[j][k] − b_zp[j]·Σ_k a[i][k] + K·a_zp·b_zp[j]`, wrapping int32, the
/// folding of FBGEMM's `ReQuantizeOutput` (see [`super::quant`]).
pub fn gemm_zp(acc: Accumulation, p: &QGemm<'_>) -> Result<Vec<i32>> {
    let zb = p.validate()?;
    let (m, n, k) = (p.m, p.n, p.k);
    let mut out = vec![0i32; m * n];
    for i in 0..m {
        let a = &p.a[i * k..(i + 1) * k];
        let asum = a.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32));
        for j in 0..n {
            let b = &p.b[j * k..(j + 1) * k];
            let bsum = b.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32));
            out[i * n + j] = dot(acc, a, b)
                .wrapping_sub(p.a_zero_point.wrapping_mul(bsum))
                .wrapping_sub(zb[j].wrapping_mul(asum))
                .wrapping_add((k as i32).wrapping_mul(p.a_zero_point).wrapping_mul(zb[j]));
        }
    }
    Ok(out)
}

/// The one scalar model of a quantized conv2d: the folded accumulators `raw` of every output
/// (`batch × OC × OH × OW` in `c.layout`). For each output, the window's raw inputs (padding =
/// the activation zero point) and the weights are taken in FBGEMM's im2col order `(ky, kx, ic)`
/// (ic fastest; `PackAWithIm2Col` on channels-last input), multiplied under `acc` ([`dot`]: for
/// the pair-saturating model that order decides the pairs), and the zero points folded as in
/// [`gemm_zp`]. Returns the accumulators and `(OH, OW)`.
pub fn conv2d(acc: Accumulation, c: &QConv<'_>) -> Result<(Vec<i32>, (usize, usize))> {
    let (oh, ow) = c.validate()?;
    let p = &c.params;
    let zps = weight_zero_points(c.w_zero_points, p.out_channels)?;
    let [kh, kw] = p.kernel_size;
    let (ic, oc) = (p.in_channels, p.out_channels);
    let (icg, ocg) = (ic / p.groups, oc / p.groups);
    let (h, w) = (c.height, c.width);
    let k = kh * kw * icg;
    let a_zp = c.a_zero_point;
    let input = |b: usize, ch: usize, y: usize, x: usize| match c.layout {
        Layout::Nchw => c.input[((b * ic + ch) * h + y) * w + x],
        Layout::Nhwc => c.input[((b * h + y) * w + x) * ic + ch],
    };
    let mut raw = vec![0i32; c.batch * oc * oh * ow];
    let (mut av, mut wv) = (vec![0u8; k], vec![0i8; k]);
    for (o, &zp) in zps.iter().enumerate() {
        let g = o / ocg;
        for ky in 0..kh {
            for kx in 0..kw {
                for ci in 0..icg {
                    wv[(ky * kw + kx) * icg + ci] = c.weight[((o * icg + ci) * kh + ky) * kw + kx];
                }
            }
        }
        let wsum = wv.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32));
        let col_off = wsum.wrapping_sub((k as i32).wrapping_mul(zp));
        for b in 0..c.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * p.stride[0] + ky * p.dilation[0])
                                .checked_sub(p.padding[0])
                                .filter(|&v| v < h);
                            let ix = (ox * p.stride[1] + kx * p.dilation[1])
                                .checked_sub(p.padding[1])
                                .filter(|&v| v < w);
                            for ci in 0..icg {
                                av[(ky * kw + kx) * icg + ci] = match (iy, ix) {
                                    (Some(y), Some(x)) => input(b, g * icg + ci, y, x),
                                    _ => a_zp as u8,
                                };
                            }
                        }
                    }
                    let asum = av.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32));
                    let r = dot(acc, &av, &wv)
                        .wrapping_sub(a_zp.wrapping_mul(col_off))
                        .wrapping_sub(asum.wrapping_mul(zp));
                    let at = match c.layout {
                        Layout::Nchw => ((b * oc + o) * oh + oy) * ow + ox,
                        Layout::Nhwc => ((b * oh + oy) * ow + ox) * oc + o,
                    };
                    raw[at] = r;
                }
            }
        }
    }
    Ok((raw, (oh, ow)))
}

/// Output channel of element `at` of a conv output `batch × oc × oh × ow` in `layout`.
pub fn conv_channel(layout: Layout, at: usize, oc: usize, (oh, ow): (usize, usize)) -> usize {
    match layout {
        Layout::Nchw => (at / (oh * ow)) % oc,
        Layout::Nhwc => at % oc,
    }
}
