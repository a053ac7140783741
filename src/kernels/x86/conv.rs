//! Quantized conv2d on the packed x86 GEMM (im2col), and FBGEMM-style depthwise 3×3.
//!
//! # im2col and the K order
//! Input is NCHW u8 (PyTorch's logical layout), weights are PyTorch's `[OC, IC/groups, KH, KW]`
//! int8. Each group is one GEMM with `M = OH·OW` output pixels, `N = OC/groups` and
//! `K = KH·KW·(IC/groups)` in the order **`(ky, kx, ic)`** (ic fastest), the order of FBGEMM's
//! `PackAWithIm2Col` on the channels-last input PyTorch hands it (weights are permuted to
//! `[OC][KH][KW][IC/G]` at prepack). The order fixes the `vpmaddubsw` pairs in the
//! pair-saturating model; for exact accumulation any order gives the same result. The input is
//! first copied to a zero-point-padded channels-last buffer, so each im2col row is `KH·KW`
//! contiguous copies of `IC/groups` bytes; padding pixels hold the input zero point, as in FBGEMM.
//!
//! # Depthwise 3×3
//! [`Depthwise3x3`] models FBGEMM's depthwise kernel (`GenerateI8Depthwise.cc`), which saturates
//! even on VNNI CPUs: taps in row-major order, pairs (0,1),(2,3),(4,5),(6,7),(8,0) saturated to
//! int16 by `vpmaddubsw`. Stride 1 runs the AVX2 kernel (32 output pixels per step, taps
//! interleaved with `vpunpck*` like FBGEMM); other strides and the exact model use the scalar
//! reference path below.
//!
//! The `*_reference_raw` functions are plain scalar models used to test both.

use super::avx2::{self, DwChannel};
use super::{Isa, KernelId, PackedA, PackedLinear, Sink};
use crate::kernels::reference::dot;
use crate::kernels::{Accumulation, Requant};
use crate::requant::{FbgemmRequant, QnnpackRequant};
use crate::{Error, Result};

/// Shape parameters of a 2-d convolution (PyTorch names; pairs are `(height, width)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dParams {
    /// Bundles the parameters (validated by the users of the struct).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
        groups: usize,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
        }
    }

    fn validate(&self) -> Result<()> {
        let p = self;
        if p.groups == 0
            || !p.in_channels.is_multiple_of(p.groups)
            || !p.out_channels.is_multiple_of(p.groups)
        {
            return Err(Error::invalid(
                "conv2d groups",
                format!(
                    "{} channels in, {} out, groups {}",
                    p.in_channels, p.out_channels, p.groups
                ),
            ));
        }
        if p.in_channels == 0 || p.out_channels == 0 {
            return Err(Error::invalid("conv2d channels", "must be ≥ 1"));
        }
        for (what, v) in [
            ("kernel", p.kernel),
            ("stride", p.stride),
            ("dilation", p.dilation),
        ] {
            if v.0 == 0 || v.1 == 0 {
                return Err(Error::invalid(
                    format!("conv2d {what}"),
                    format!("{v:?} must be ≥ 1"),
                ));
            }
        }
        Ok(())
    }

    /// Output height and width for an `h × w` input.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let dim = |i: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (i + 2 * p)
                .checked_sub(span)
                .map(|v| v / s + 1)
                .ok_or_else(|| {
                    Error::shape(
                        "conv2d input",
                        format!("{i} (+2·{p} padding) is smaller than the dilated kernel {span}"),
                    )
                })
        };
        Ok((
            dim(
                h,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                self.dilation.0,
            )?,
            dim(
                w,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                self.dilation.1,
            )?,
        ))
    }
}

/// The sub-rule of `r` for output channels `lo..hi`.
fn slice_requant(r: &Requant, lo: usize, hi: usize) -> Result<Requant> {
    let sl = |v: &Vec<f32>| -> Result<Vec<f32>> {
        if v.len() == 1 {
            Ok(v.clone())
        } else {
            v.get(lo..hi).map(|s| s.to_vec()).ok_or_else(|| {
                Error::shape(
                    "requantization",
                    format!("{} channel entries, need ≥ {hi}", v.len()),
                )
            })
        }
    };
    Ok(match r {
        Requant::Fbgemm(f) => Requant::Fbgemm(FbgemmRequant {
            act_times_w_scale: sl(&f.act_times_w_scale)?,
            multiplier: sl(&f.multiplier)?,
            bias_term: sl(&f.bias_term)?,
            out_zero_point: f.out_zero_point,
            relu: f.relu,
        }),
        Requant::Qnnpack(q) => Requant::Qnnpack(QnnpackRequant {
            scale: sl(&q.scale)?,
            bias_q: q
                .bias_q
                .get(lo..hi)
                .ok_or_else(|| {
                    Error::shape("requantization", "bias_q shorter than the channel count")
                })?
                .to_vec(),
            out_zero_point: q.out_zero_point,
            relu: q.relu,
        }),
    })
}

/// Expands 1 or `n` weight zero points to `n`.
fn expand_zp(z: &[i32], n: usize) -> Result<Vec<i32>> {
    match z.len() {
        1 => Ok(vec![z[0]; n]),
        l if l == n => Ok(z.to_vec()),
        l => Err(Error::shape(
            "weight zero points",
            format!("{l} given for {n} output channels (need 1 or {n})"),
        )),
    }
}

fn check_input(x: &[u8], nb: usize, c: usize, h: usize, w: usize, a_zp: i32) -> Result<()> {
    if x.len() != nb * c * h * w {
        return Err(Error::shape(
            "conv2d input",
            format!(
                "expected {nb}×{c}×{h}×{w} = {} values, got {}",
                nb * c * h * w,
                x.len()
            ),
        ));
    }
    if !(0..=255).contains(&a_zp) {
        return Err(Error::invalid(
            "input zero point",
            format!("{a_zp} not in 0..=255"),
        ));
    }
    Ok(())
}

/// A quantized conv2d with packed weights (im2col + [`PackedLinear`] per group).
#[derive(Debug, Clone)]
pub struct Conv2d {
    p: Conv2dParams,
    groups: Vec<PackedLinear>,
}

impl Conv2d {
    /// Packs `weights` (`[OC, IC/groups, KH, KW]`) for the fastest kernel of `accumulation`.
    pub fn new(
        weights: &[i8],
        p: Conv2dParams,
        weight_zero_points: &[i32],
        requant: Requant,
        accumulation: Accumulation,
    ) -> Result<Self> {
        Self::with_kernel(
            KernelId::best(accumulation),
            weights,
            p,
            weight_zero_points,
            requant,
        )
    }

    /// As [`Conv2d::new`] with an explicit kernel.
    pub fn with_kernel(
        kernel: KernelId,
        weights: &[i8],
        p: Conv2dParams,
        weight_zero_points: &[i32],
        requant: Requant,
    ) -> Result<Self> {
        p.validate()?;
        let (kh, kw) = p.kernel;
        let (icg, ocg) = (p.in_channels / p.groups, p.out_channels / p.groups);
        let k = kh * kw * icg;
        if weights.len() != p.out_channels * k {
            return Err(Error::shape(
                "conv2d weights",
                format!(
                    "expected {}×{}×{}×{} = {} values, got {}",
                    p.out_channels,
                    icg,
                    kh,
                    kw,
                    p.out_channels * k,
                    weights.len()
                ),
            ));
        }
        let zps = expand_zp(weight_zero_points, p.out_channels)?;
        let mut groups = Vec::with_capacity(p.groups);
        for g in 0..p.groups {
            // Reorder [oc][ic][ky][kx] → [oc][ky][kx][ic].
            let mut wg = vec![0i8; ocg * k];
            for o in 0..ocg {
                let src = &weights[(g * ocg + o) * k..(g * ocg + o + 1) * k];
                for ic in 0..icg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            wg[o * k + (ky * kw + kx) * icg + ic] = src[(ic * kh + ky) * kw + kx];
                        }
                    }
                }
            }
            let rq = slice_requant(&requant, g * ocg, (g + 1) * ocg)?;
            groups.push(PackedLinear::with_kernel(
                kernel,
                &wg,
                ocg,
                k,
                &zps[g * ocg..(g + 1) * ocg],
                rq,
            )?);
        }
        Ok(Self { p, groups })
    }

    /// The kernel in use.
    pub fn kernel(&self) -> KernelId {
        self.groups[0].kernel()
    }

    /// Runs the conv on `x` (NCHW, `nb × IC × h × w`, raw u8 with zero point `a_zp`), writing NCHW
    /// u8 to `out`; returns `(OH, OW)`.
    pub fn run(
        &self,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [u8],
    ) -> Result<(usize, usize)> {
        let p = &self.p;
        check_input(x, nb, p.in_channels, h, w, a_zp)?;
        let (oh, ow) = p.out_size(h, w)?;
        if out.len() != nb * p.out_channels * oh * ow {
            return Err(Error::shape(
                "conv2d output",
                format!(
                    "expected {} values, got {}",
                    nb * p.out_channels * oh * ow,
                    out.len()
                ),
            ));
        }
        let (kh, kw) = p.kernel;
        let (icg, ocg) = (p.in_channels / p.groups, p.out_channels / p.groups);
        let k = kh * kw * icg;
        let kp = super::pad4(k);
        let (ph, pw) = (h + 2 * p.padding.0, w + 2 * p.padding.1);
        let c = p.in_channels;
        let m = oh * ow;
        let mut padded = vec![a_zp as u8; ph * pw * c];
        let mut tmp = vec![0u8; m * ocg];
        for b in 0..nb {
            let xb = &x[b * c * h * w..(b + 1) * c * h * w];
            for y in 0..h {
                let drow = &mut padded[((y + p.padding.0) * pw + p.padding.1) * c..][..w * c];
                for (xx, px) in drow.chunks_exact_mut(c).enumerate() {
                    for (ch, d) in px.iter_mut().enumerate() {
                        *d = xb[(ch * h + y) * w + xx];
                    }
                }
            }
            for (g, lin) in self.groups.iter().enumerate() {
                let mut a = vec![0u8; m * kp];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let arow = &mut a[(oy * ow + ox) * kp..(oy * ow + ox) * kp + k];
                        for ky in 0..kh {
                            let iy = oy * p.stride.0 + ky * p.dilation.0;
                            for kx in 0..kw {
                                let ix = ox * p.stride.1 + kx * p.dilation.1;
                                let src = (iy * pw + ix) * c + g * icg;
                                arow[(ky * kw + kx) * icg..(ky * kw + kx + 1) * icg]
                                    .copy_from_slice(&padded[src..src + icg]);
                            }
                        }
                    }
                }
                let pa = PackedA::from_padded(lin.kernel(), a, m, k, !lin.symmetric());
                lin.run_packed_a(&pa, a_zp, Sink::U8(&mut tmp));
                let ob = &mut out
                    [(b * p.out_channels + g * ocg) * m..(b * p.out_channels + (g + 1) * ocg) * m];
                for (pix, row) in tmp.chunks_exact(ocg).enumerate() {
                    for (o, &v) in row.iter().enumerate() {
                        ob[o * m + pix] = v;
                    }
                }
            }
        }
        Ok((oh, ow))
    }
}

/// Scalar model of a quantized conv2d's folded accumulators `raw` (NCHW, `nb × OC × OH × OW`):
/// for each output the `(ky, kx, ic)`-ordered vectors of raw inputs (padding = `a_zp`) and raw
/// weights are multiplied under `acc` ([`dot`]), then zero points are folded
/// (`raw = acc − a_zp·(Σw − K·w_zp) − Σa·w_zp`). Returns `(raw, OH, OW)`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_reference_raw(
    x: &[u8],
    nb: usize,
    h: usize,
    w: usize,
    a_zp: i32,
    weights: &[i8],
    p: &Conv2dParams,
    weight_zero_points: &[i32],
    acc: Accumulation,
) -> Result<(Vec<i32>, usize, usize)> {
    p.validate()?;
    check_input(x, nb, p.in_channels, h, w, a_zp)?;
    let (oh, ow) = p.out_size(h, w)?;
    let (kh, kw) = p.kernel;
    let (icg, ocg) = (p.in_channels / p.groups, p.out_channels / p.groups);
    let k = kh * kw * icg;
    if weights.len() != p.out_channels * k {
        return Err(Error::shape(
            "conv2d weights",
            "length is not OC·IC/groups·KH·KW",
        ));
    }
    let zps = expand_zp(weight_zero_points, p.out_channels)?;
    let mut raw = vec![0i32; nb * p.out_channels * oh * ow];
    let (mut av, mut wv) = (vec![0u8; k], vec![0i8; k]);
    for b in 0..nb {
        for oc in 0..p.out_channels {
            let g = oc / ocg;
            for ky in 0..kh {
                for kx in 0..kw {
                    for ic in 0..icg {
                        wv[(ky * kw + kx) * icg + ic] =
                            weights[((oc * icg + ic) * kh + ky) * kw + kx];
                    }
                }
            }
            let wsum: i32 = wv.iter().map(|&v| v as i32).sum();
            let col_off = wsum.wrapping_sub((k as i32).wrapping_mul(zps[oc]));
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                - p.padding.0 as isize;
                            let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize
                                - p.padding.1 as isize;
                            for ic in 0..icg {
                                let inside =
                                    iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                                av[(ky * kw + kx) * icg + ic] = if inside {
                                    x[((b * p.in_channels + g * icg + ic) * h + iy as usize) * w
                                        + ix as usize]
                                } else {
                                    a_zp as u8
                                };
                            }
                        }
                    }
                    let asum: i32 = av.iter().map(|&v| v as i32).sum();
                    let r = dot(acc, &av, &wv)
                        .wrapping_sub(a_zp.wrapping_mul(col_off))
                        .wrapping_sub(asum.wrapping_mul(zps[oc]));
                    raw[((b * p.out_channels + oc) * oh + oy) * ow + ox] = r;
                }
            }
        }
    }
    Ok((raw, oh, ow))
}

/// Depthwise 3×3 conv (`groups = channels`, one output channel per input channel) with
/// FBGEMM's accumulation model by default (see the module docs).
#[derive(Debug, Clone)]
pub struct Depthwise3x3 {
    c: usize,
    stride: (usize, usize),
    padding: (usize, usize),
    acc: Accumulation,
    w: Vec<i8>,
    b_zp: Vec<i32>,
    col_off: Vec<i32>,
    requant: Requant,
    rq: super::RequantVec,
}

impl Depthwise3x3 {
    /// FBGEMM depthwise: `weights` is `[C, 1, 3, 3]`, zero points 1 or `C`.
    pub fn new(
        weights: &[i8],
        channels: usize,
        stride: (usize, usize),
        padding: (usize, usize),
        weight_zero_points: &[i32],
        requant: Requant,
    ) -> Result<Self> {
        Self::with_accumulation(
            weights,
            channels,
            stride,
            padding,
            weight_zero_points,
            requant,
            Accumulation::PairSaturatingI16,
        )
    }

    /// As [`Depthwise3x3::new`] with another accumulation model (`Exact` runs the scalar path).
    pub fn with_accumulation(
        weights: &[i8],
        channels: usize,
        stride: (usize, usize),
        padding: (usize, usize),
        weight_zero_points: &[i32],
        requant: Requant,
        acc: Accumulation,
    ) -> Result<Self> {
        Conv2dParams::new(
            channels,
            channels,
            (3, 3),
            stride,
            padding,
            (1, 1),
            channels.max(1),
        )
        .validate()?;
        if weights.len() != channels * 9 {
            return Err(Error::shape(
                "depthwise weights",
                format!(
                    "expected {channels}×1×3×3 = {} values, got {}",
                    channels * 9,
                    weights.len()
                ),
            ));
        }
        let b_zp = expand_zp(weight_zero_points, channels)?;
        if let Some(z) = b_zp.iter().find(|z| !(-128..=127).contains(*z)) {
            return Err(Error::invalid(
                "weight zero point",
                format!("{z} not in -128..=127"),
            ));
        }
        let col_off = (0..channels)
            .map(|c| {
                weights[c * 9..c * 9 + 9]
                    .iter()
                    .map(|&v| v as i32)
                    .sum::<i32>()
                    - 9 * b_zp[c]
            })
            .collect();
        let rq = super::RequantVec::new(&requant, channels)?;
        Ok(Self {
            c: channels,
            stride,
            padding,
            acc,
            w: weights.to_vec(),
            b_zp,
            col_off,
            requant,
            rq,
        })
    }

    fn params(&self) -> Conv2dParams {
        Conv2dParams::new(
            self.c,
            self.c,
            (3, 3),
            self.stride,
            self.padding,
            (1, 1),
            self.c,
        )
    }

    /// Whether `run` takes the AVX2 path.
    pub fn is_simd(&self) -> bool {
        self.stride == (1, 1) && self.acc == Accumulation::PairSaturatingI16 && Isa::Avx2.detected()
    }

    /// Runs on NCHW `x` (`nb × C × h × w`), writing NCHW u8 to `out`; returns `(OH, OW)`.
    pub fn run(
        &self,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [u8],
    ) -> Result<(usize, usize)> {
        let p = self.params();
        check_input(x, nb, self.c, h, w, a_zp)?;
        let (oh, ow) = p.out_size(h, w)?;
        if out.len() != nb * self.c * oh * ow {
            return Err(Error::shape(
                "depthwise output",
                format!(
                    "expected {} values, got {}",
                    nb * self.c * oh * ow,
                    out.len()
                ),
            ));
        }
        if !self.is_simd() {
            let (raw, _, _) =
                conv2d_reference_raw(x, nb, h, w, a_zp, &self.w, &p, &self.b_zp, self.acc)?;
            for (i, (o, r)) in out.iter_mut().zip(raw).enumerate() {
                *o = self.requant.apply(r, (i / (oh * ow)) % self.c);
            }
            return Ok((oh, ow));
        }
        let (pt, pl) = self.padding;
        let ps = w + 2 * pl + 34;
        let rows = h + 2 * pt;
        let mut plane = vec![a_zp as u8; rows * ps];
        for b in 0..nb {
            for c in 0..self.c {
                let xc = &x[(b * self.c + c) * h * w..(b * self.c + c + 1) * h * w];
                for y in 0..h {
                    plane[(y + pt) * ps + pl..(y + pt) * ps + pl + w]
                        .copy_from_slice(&xc[y * w..(y + 1) * w]);
                }
                let mut wc = [0i8; 9];
                wc.copy_from_slice(&self.w[c * 9..c * 9 + 9]);
                let ch = DwChannel {
                    w: wc,
                    b_zp: self.b_zp[c],
                    zc: a_zp.wrapping_mul(self.col_off[c]),
                    add_i: self.rq.add_i[c],
                    add_f: self.rq.add_f[c],
                    mult: self.rq.mult[c],
                    zp: self.rq.zp,
                    lo: self.rq.lo,
                };
                let o = &mut out[(b * self.c + c) * oh * ow..(b * self.c + c + 1) * oh * ow];
                // SAFETY: is_simd() checked AVX2; ps = w + 2·pl + 34 = ow + 36 ≥ ow + 34 for
                // stride 1, the plane has h + 2·pt = oh + 2 rows, `o` has oh·ow bytes.
                unsafe { avx2::dw3x3_plane(&plane, ps, oh, ow, &ch, o) };
            }
        }
        Ok((oh, ow))
    }
}
