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
    /// Per tap pair and 32-channel block: the pair's weights interleaved as [`block_avx2`]
    /// interleaves the pair's input bytes (64 bytes: channels 0..8, 16..24, then 8..16, 24..32;
    /// an odd last tap pairs with a zero weight; channels past `C` have zero weights).
    wp: Vec<i8>,
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
        let (pairs, blocks) = (taps.div_ceil(2), c.div_ceil(32));
        let mut wp = vec![0i8; pairs * blocks * 64];
        for p in 0..pairs {
            for b in 0..blocks {
                let bw = &mut wp[(p * blocks + b) * 64..][..64];
                let order = (0..8).chain(16..24).chain(8..16).chain(24..32);
                for (k, ch) in order.enumerate() {
                    let ch = b * 32 + ch;
                    if ch >= c {
                        continue;
                    }
                    bw[2 * k] = w[2 * p * c + ch];
                    bw[2 * k + 1] = if 2 * p + 1 < taps {
                        w[(2 * p + 1) * c + ch]
                    } else {
                        0
                    };
                }
            }
        }
        Ok(Some(Self {
            p,
            wp,
            w,
            asym: b_zp.iter().any(|&z| z != 0),
            b_zp,
            col_off,
            rq: PerChannel::new(requant, 0, c, c.div_ceil(32) * 32)?,
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
            self.body::<false>(x, (nb, h, w, oh, ow), a_zp, out);
        }
        Ok((oh, ow))
    }

    /// The kernel (dims checked by the caller). `SIMD`: channel blocks of 32 through
    /// [`block_avx2`] (symmetric weights only; the caller has checked AVX2 and FMA).
    #[inline(always)]
    fn body<const SIMD: bool>(
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
        // Channels padded to whole 32-channel blocks.
        let cp = c.div_ceil(32) * 32;
        let mut img = vec![a_zp as u8; ph * pw * cp];
        let taps = kh * kw;
        // Pixel offset of each tap in the padded image.
        let off: Vec<usize> = (0..taps).map(|t| (t / kw) * pw + t % kw).collect();
        let mut zc: Vec<i32> = self.col_off.iter().map(|&o| a_zp.wrapping_mul(o)).collect();
        zc.resize(cp, 0);
        let simd = SIMD && !self.asym;
        let mut last = [0u8; 32];
        for (xb, ob) in x
            .chunks_exact(h * w * c)
            .zip(out.chunks_exact_mut(oh * ow * c))
        {
            for y in 0..h {
                let row = &mut img[((y + pt) * pw + pl) * cp..][..w * cp];
                for (d, s) in row
                    .chunks_exact_mut(cp)
                    .zip(xb[y * w * c..].chunks_exact(c))
                {
                    d[..c].copy_from_slice(s);
                }
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let origin = oy * sy * pw + ox * sx;
                    let o = &mut ob[(oy * ow + ox) * c..][..c];
                    if simd {
                        for c0 in (0..c).step_by(32) {
                            let n = 32.min(c - c0);
                            let dst = if n == 32 {
                                &mut o[c0..c0 + 32]
                            } else {
                                &mut last[..]
                            };
                            // SAFETY: SIMD bodies run only from `run_avx2` (AVX2 and FMA); every
                            // tap of this window lies in `img` (padded above) with `cp ≥ c0 + 32`
                            // channels, `wp` and the per-channel vectors have `cp` channels.
                            unsafe { block_avx2(self, &img, origin, &off, c0, &zc, dst) };
                            if n < 32 {
                                o[c0..].copy_from_slice(&last[..n]);
                            }
                        }
                    } else {
                        for c0 in (0..c).step_by(CB) {
                            let n = CB.min(c - c0);
                            self.block(&img, origin, &off, (c0, n), a_zp, &mut o[c0..c0 + n]);
                        }
                    }
                }
            }
        }
    }

    /// Channels `c0 .. c0 + n` of one output pixel whose window starts at pixel `origin` of the
    /// padded image.
    #[inline(always)]
    fn block(
        &self,
        img: &[u8],
        origin: usize,
        off: &[usize],
        (c0, n): (usize, usize),
        a_zp: i32,
        o: &mut [u8],
    ) {
        let cp = self.p.in_channels.div_ceil(32) * 32;
        let taps = off.len();
        let mut acc = [0i32; CB];
        let mut rows = [0i32; CB];
        let (acc, rows) = (&mut acc[..n], &mut rows[..n]);
        let px = |t: usize| &img[(origin + off[t]) * cp + c0..][..n];
        let wt = |t: usize| &self.w[t * self.p.in_channels + c0..][..n];
        for t in (0..taps).step_by(2) {
            let (xa, wa) = (px(t), wt(t));
            if t + 1 < taps {
                let (xb, wb) = (px(t + 1), wt(t + 1));
                for i in 0..n {
                    let s =
                        i32::from(xa[i]) * i32::from(wa[i]) + i32::from(xb[i]) * i32::from(wb[i]);
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
                    acc[i] = acc[i].wrapping_add(i32::from(xa[i]) * i32::from(wa[i]));
                }
                if self.asym {
                    for i in 0..n {
                        rows[i] += i32::from(xa[i]);
                    }
                }
            }
        }
        for (i, o) in o.iter_mut().enumerate() {
            let ch = c0 + i;
            let raw = acc[i]
                .wrapping_sub(a_zp.wrapping_mul(self.col_off[ch]))
                .wrapping_sub(rows[i].wrapping_mul(self.b_zp[ch]));
            *o = self.rq.apply(raw, ch);
        }
    }
}

/// [`DepthwiseDirect::body`] compiled for AVX2 and FMA, with its SIMD channel blocks.
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(
    k: &DepthwiseDirect,
    x: &[u8],
    dims: (usize, usize, usize, usize, usize),
    a_zp: i32,
    out: &mut [u8],
) {
    k.body::<true>(x, dims, a_zp, out);
}

/// Channels `c0 .. c0 + 32` of one output pixel (symmetric weights): each tap pair's bytes
/// interleaved (`vpunpck[lh]bw`) against [`DepthwiseDirect::wp`]'s interleaved weights,
/// `vpmaddubsw` (the pair's two products summed and saturated to int16), sign-extended and added
/// in int32; then `raw = acc − zc` and the [`PerChannel`] form: `f32(raw + add_i)`,
/// `fma(add_f, add_s, ·)`, `· mult`, `cvtps2dq`, `+ zp`, clamp to `lo..255`.
///
/// # Safety
/// AVX2 and FMA; `img` (channel stride `Cp` = `C` rounded up to 32) holds 32 bytes at
/// `(origin + off[t])·Cp + c0` for every tap, `c0 + 32 ≤ Cp`, `o.len() == 32`.
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    k: &DepthwiseDirect,
    img: &[u8],
    origin: usize,
    off: &[usize],
    c0: usize,
    zc: &[i32],
    o: &mut [u8],
) {
    use std::arch::x86_64::*;
    let cp = k.p.in_channels.div_ceil(32) * 32;
    let pairs = off.len().div_ceil(2);
    let blocks = cp / 32;
    let at = |t: usize| img[(origin + off[t]) * cp + c0..][..32].as_ptr() as *const __m256i;
    let mut acc = [_mm256_setzero_si256(); 4];
    for p in 0..pairs {
        let (t0, t1) = (2 * p, (2 * p + 1).min(off.len() - 1));
        // SAFETY: `at` slices 32 bytes in bounds; `wp` has 64 bytes at this pair and block (an
        // odd last tap pairs with itself under zero weights).
        let (xa, xb) = unsafe { (_mm256_loadu_si256(at(t0)), _mm256_loadu_si256(at(t1))) };
        let wv = k.wp[(p * blocks + c0 / 32) * 64..][..64].as_ptr() as *const __m256i;
        let (wl, wh) = unsafe { (_mm256_loadu_si256(wv), _mm256_loadu_si256(wv.add(1))) };
        let lo = _mm256_maddubs_epi16(_mm256_unpacklo_epi8(xa, xb), wl);
        let hi = _mm256_maddubs_epi16(_mm256_unpackhi_epi8(xa, xb), wh);
        // lo: channels 0..8 | 16..24, hi: 8..16 | 24..32.
        let parts = [
            _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo)),
            _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi)),
            _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(lo)),
            _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(hi)),
        ];
        for (a, v) in acc.iter_mut().zip(parts) {
            *a = _mm256_add_epi32(*a, v);
        }
    }
    let rq = &k.rq;
    let (zp, lo) = (_mm256_set1_epi32(rq.zp), _mm256_set1_epi32(rq.lo));
    let (below, above, top) = (
        _mm256_set1_epi32(-1024),
        _mm256_set1_epi32(1024),
        _mm256_set1_epi32(255),
    );
    let mut q = [_mm256_setzero_si256(); 4];
    for (g, (qg, a)) in q.iter_mut().zip(acc).enumerate() {
        let ch = c0 + 8 * g;
        let ld_i = |v: &[i32]| v[ch..ch + 8].as_ptr() as *const __m256i;
        let ld_f = |v: &[f32]| v[ch..ch + 8].as_ptr();
        // SAFETY: every per-channel vector has `Cp ≥ ch + 8` entries.
        let (zcv, add_i, add_f, add_s, mult) = unsafe {
            (
                _mm256_loadu_si256(ld_i(zc)),
                _mm256_loadu_si256(ld_i(&rq.add_i)),
                _mm256_loadu_ps(ld_f(&rq.add_f)),
                _mm256_loadu_ps(ld_f(&rq.add_s)),
                _mm256_loadu_ps(ld_f(&rq.mult)),
            )
        };
        let raw = _mm256_add_epi32(_mm256_sub_epi32(a, zcv), add_i);
        let f = _mm256_mul_ps(_mm256_fmadd_ps(add_f, add_s, _mm256_cvtepi32_ps(raw)), mult);
        // `cvtps2dq` as `round_ne_i32`; narrowing to ±1024 first keeps `+ zp` in range and does
        // not change the clamp to `lo..255`.
        let r = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(f), below), above);
        *qg = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, zp), lo), top);
    }
    let packed = _mm256_packus_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `o` has 32 bytes.
    unsafe { _mm256_storeu_si256(o[..32].as_mut_ptr() as *mut __m256i, packed) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::Layout;
    use crate::kernels::reference;
    use crate::kernels::{Accumulation, QConv};
    use crate::numerics::requant::FbgemmRequant;
    use crate::numerics::test_rng::Rng;

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
