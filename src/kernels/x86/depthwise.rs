//! Direct depthwise conv2d (`groups = in = out channels`, any `KH × KW`, stride and padding, no
//! dilation) on channels-last codes, pair-saturating: the accumulation the packed GEMM computes
//! for one channel per group ([`super::conv::Conv2d`], FBGEMM's `vpmaddubsw` path): the taps
//! in im2col order `(ky, kx)` paired `(0,1), (2,3), …` (an odd last tap with zero), each pair's
//! `u8·i8` products summed and saturated to int16, the pairs added in wrapping int32. Zero
//! points folded as [`crate::kernels::reference::conv2d`] (FBGEMM's `raw = acc − a_zp·col_off −
//! row_sum·b_zp`), then the per-channel requantization form [`PerChannel::apply`].
//!
//! Channels are the vector dimension: every output pixel sweeps its taps over channel-contiguous
//! slices of an image padded with the activation zero point, in loops the compiler vectorizes
//! (built for AVX2 + FMA where the CPU has them).

use crate::geometry::Conv2dParams;
use crate::kernels::quant::{self, check_activation_zero_point, PerChannel};
use crate::kernels::{Isa, Requant};
use crate::{Error, Result};

/// Channels per block: accumulators stay in L1 and the loops run whole vectors.
const CB: usize = 64;

/// A depthwise conv with its weights laid out tap-major (`[tap][channel]`).
#[derive(Debug, Clone)]
pub struct DepthwiseDirect {
    p: Conv2dParams,
    /// `w[t·C + c]`: channel `c`'s weight at tap `t = ky·KW + kx`.
    w: Vec<i8>,
    b_zp: Vec<i32>,
    /// `Σ_t w − KH·KW·b_zp` per channel (wrapping).
    col_off: Vec<i32>,
    /// Whether any weight zero point is nonzero (row sums needed).
    asym: bool,
    rq: PerChannel,
}

impl DepthwiseDirect {
    /// From PyTorch's `[C, 1, KH, KW]` weights; `None` for geometry it does not run (not
    /// depthwise, or dilated).
    pub fn new(
        p: Conv2dParams,
        weights: &[i8],
        weight_zero_points: &[i32],
        requant: &Requant,
    ) -> Result<Option<Self>> {
        let c = p.in_channels;
        if p.groups != c
            || p.out_channels != c
            || c == 0
            || p.dilation != [1, 1]
            || p.kernel_size.contains(&0)
            || p.stride.contains(&0)
        {
            return Ok(None);
        }
        let taps = p.kernel_size[0] * p.kernel_size[1];
        if weights.len() != c * taps {
            return Err(Error::shape(
                "depthwise weights",
                format!(
                    "expected {c}×1×{:?}, got {} values",
                    p.kernel_size,
                    weights.len()
                ),
            ));
        }
        let b_zp = quant::weight_zero_points(weight_zero_points, c)?;
        let mut w = vec![0i8; taps * c];
        for (ch, wc) in weights.chunks_exact(taps).enumerate() {
            for (t, &v) in wc.iter().enumerate() {
                w[t * c + ch] = v;
            }
        }
        let col_off = (0..c)
            .map(|ch| {
                weights[ch * taps..(ch + 1) * taps]
                    .iter()
                    .fold(0i32, |s, &v| s.wrapping_add(v as i32))
                    .wrapping_sub((taps as i32).wrapping_mul(b_zp[ch]))
            })
            .collect();
        Ok(Some(Self {
            p,
            w,
            asym: b_zp.iter().any(|&z| z != 0),
            b_zp,
            col_off,
            rq: PerChannel::new(requant, 0, c, c)?,
        }))
    }

    /// Runs on NHWC `x` (`nb × h × w × C`), writing NHWC u8 `out`; returns `(OH, OW)`.
    pub fn run_nhwc(
        &self,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [u8],
    ) -> Result<(usize, usize)> {
        let c = self.p.in_channels;
        check_activation_zero_point(a_zp)?;
        let (_, oh, ow) = self.p.output_dims(&[nb, c, h, w])?;
        if x.len() != nb * h * w * c || out.len() != nb * oh * ow * c {
            return Err(Error::shape(
                "depthwise conv",
                format!(
                    "buffers of {} and {} values for {nb}×{c}×{h}×{w}",
                    x.len(),
                    out.len()
                ),
            ));
        }
        if Isa::Avx2.detected() {
            // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA, the features the
            // wrapper enables; the body is safe code.
            unsafe { run_avx2(self, x, (nb, h, w, oh, ow), a_zp, out) };
        } else {
            self.body(x, (nb, h, w, oh, ow), a_zp, out);
        }
        Ok((oh, ow))
    }

    /// The kernel (dims checked by the caller).
    #[inline(always)]
    fn body(
        &self,
        x: &[u8],
        (_, h, w, oh, ow): (usize, usize, usize, usize, usize),
        a_zp: i32,
        out: &mut [u8],
    ) {
        let c = self.p.in_channels;
        let [kh, kw] = self.p.kernel_size;
        let [sy, sx] = self.p.stride;
        let [pt, pl] = self.p.padding;
        // The padded image: every window lies inside it.
        let (ph, pw) = ((oh - 1) * sy + kh, (ow - 1) * sx + kw);
        let (ph, pw) = (ph.max(h + pt), pw.max(w + pl));
        let mut img = vec![a_zp as u8; ph * pw * c];
        let taps = kh * kw;
        // Pixel offset of each tap in the padded image.
        let off: Vec<usize> = (0..taps).map(|t| (t / kw) * pw + t % kw).collect();
        let mut acc = [0i32; CB];
        let mut rows = [0i32; CB];
        for (xb, ob) in x
            .chunks_exact(h * w * c)
            .zip(out.chunks_exact_mut(oh * ow * c))
        {
            for y in 0..h {
                let dst = &mut img[((y + pt) * pw + pl) * c..][..w * c];
                dst.copy_from_slice(&xb[y * w * c..(y + 1) * w * c]);
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let origin = oy * sy * pw + ox * sx;
                    let o = &mut ob[(oy * ow + ox) * c..][..c];
                    for c0 in (0..c).step_by(CB) {
                        let n = CB.min(c - c0);
                        let (acc, rows) = (&mut acc[..n], &mut rows[..n]);
                        acc.fill(0);
                        rows.fill(0);
                        let px = |t: usize| &img[(origin + off[t]) * c + c0..][..n];
                        let wt = |t: usize| &self.w[t * c + c0..][..n];
                        for t in (0..taps).step_by(2) {
                            let (xa, wa) = (px(t), wt(t));
                            if t + 1 < taps {
                                let (xb, wb) = (px(t + 1), wt(t + 1));
                                for i in 0..n {
                                    let s = i32::from(xa[i]) * i32::from(wa[i])
                                        + i32::from(xb[i]) * i32::from(wb[i]);
                                    acc[i] = acc[i].wrapping_add(s.clamp(-32768, 32767));
                                }
                                if self.asym {
                                    for i in 0..n {
                                        rows[i] += i32::from(xa[i]) + i32::from(xb[i]);
                                    }
                                }
                            } else {
                                // One product of u8·i8 fits int16.
                                for i in 0..n {
                                    acc[i] =
                                        acc[i].wrapping_add(i32::from(xa[i]) * i32::from(wa[i]));
                                }
                                if self.asym {
                                    for i in 0..n {
                                        rows[i] += i32::from(xa[i]);
                                    }
                                }
                            }
                        }
                        for (i, o) in o[c0..c0 + n].iter_mut().enumerate() {
                            let ch = c0 + i;
                            let raw = acc[i]
                                .wrapping_sub(a_zp.wrapping_mul(self.col_off[ch]))
                                .wrapping_sub(rows[i].wrapping_mul(self.b_zp[ch]));
                            *o = self.rq.apply(raw, ch);
                        }
                    }
                }
            }
        }
    }
}

/// [`DepthwiseDirect::body`] compiled for AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(
    k: &DepthwiseDirect,
    x: &[u8],
    dims: (usize, usize, usize, usize, usize),
    a_zp: i32,
    out: &mut [u8],
) {
    k.body(x, dims, a_zp, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::prng::Rng;
    use crate::kernels::quant::Layout;
    use crate::kernels::reference;
    use crate::kernels::{Accumulation, QConv};
    use crate::numerics::requant::FbgemmRequant;

    /// Random depthwise convs (kernels 1..=7, strides 1..=3, padding up to the kernel, odd and
    /// block-straddling channel counts, symmetric and asymmetric weights, large weights that
    /// saturate pairs) against the scalar conv model with the same requantization.
    #[test]
    fn direct_depthwise_equals_the_reference_conv() {
        let mut r = Rng::new(0xd3, 5);
        let mut pick = move |n: usize| (r.bits() % n as u64) as usize;
        let mut ran = 0;
        for case in 0..150 {
            let c = [1, 3, 17, 64, 72, 131][pick(6)];
            let kernel = [1 + pick(7), 1 + pick(7)];
            let p = Conv2dParams {
                in_channels: c,
                out_channels: c,
                kernel_size: kernel,
                stride: [1 + pick(3), 1 + pick(3)],
                padding: [pick(kernel[0] + 1), pick(kernel[1] + 1)],
                dilation: [1, 1],
                groups: c,
            };
            let (nb, h, w) = (1 + pick(2), 1 + pick(12), 1 + pick(12));
            if p.output_dims(&[nb, c, h, w]).is_err() {
                continue;
            }
            let big = pick(2) == 0;
            let weights: Vec<i8> = (0..c * kernel[0] * kernel[1])
                .map(|_| {
                    if big {
                        [-128, 127][pick(2)]
                    } else {
                        pick(256) as u8 as i8
                    }
                })
                .collect();
            let zps: Vec<i32> = match pick(3) {
                0 => (0..c).map(|_| pick(21) as i32 - 10).collect(),
                1 => vec![pick(5) as i32 - 2],
                _ => vec![0],
            };
            let x: Vec<u8> = (0..nb * h * w * c)
                .map(|_| {
                    if big {
                        [0, 255][pick(2)]
                    } else {
                        pick(256) as u8
                    }
                })
                .collect();
            let a_zp = pick(256) as i32;
            let per_channel = pick(2) == 0;
            let scales: Vec<f32> = (0..if per_channel { c } else { 1 })
                .map(|_| 0.001 + pick(100) as f32 / 5000.0)
                .collect();
            let bias: Vec<f32> = (0..c).map(|_| pick(2001) as f32 / 10.0 - 100.0).collect();
            let rule = Requant::Fbgemm(FbgemmRequant::new(
                0.05,
                &scales,
                per_channel,
                (pick(3) > 0).then_some(&bias[..]),
                c,
                0.1 + pick(10) as f64 / 10.0,
                pick(256) as i32,
                pick(2) == 0,
            ));
            let dw = DepthwiseDirect::new(p, &weights, &zps, &rule)
                .unwrap()
                .expect("depthwise geometry");
            let (_, oh, ow) = p.output_dims(&[nb, c, h, w]).unwrap();
            let mut got = vec![0u8; nb * oh * ow * c];
            dw.run_nhwc(&x, nb, h, w, a_zp, &mut got).unwrap();
            let conv = QConv {
                params: p,
                layout: Layout::Nhwc,
                batch: nb,
                height: h,
                width: w,
                input: &x,
                a_zero_point: a_zp,
                weight: &weights,
                w_zero_points: &zps,
            };
            let (raw, hw) = reference::conv2d(Accumulation::PairSaturatingI16, &conv).unwrap();
            let rq = PerChannel::new(&rule, 0, c, c).unwrap();
            let want: Vec<u8> = raw
                .iter()
                .enumerate()
                .map(|(i, &v)| rq.apply(v, reference::conv_channel(Layout::Nhwc, i, c, hw)))
                .collect();
            assert_eq!(got, want, "case {case}: {p:?} on {nb}×{h}×{w}, zps {zps:?}");
            ran += 1;
        }
        assert!(ran > 100, "{ran} cases ran");
    }
}
