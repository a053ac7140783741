//! FBGEMM's depthwise conv2d accumulation in portable safe Rust, NHWC: the kernel the
//! [`crate::backend::KernelBackend`] (the ARM backend) runs for [`KernelPath::FbgemmDepthwise`]
//! layers, whose accumulation no GEMM kernel of that backend computes.
//!
//! FBGEMM's depthwise kernel (`src/GenerateI8Depthwise.cc`, weights interleaved by
//! `src/PackDepthwiseConvMatrixAVX2.cc`) puts the activations of two consecutive taps of one
//! channel side by side and multiplies them with `vpmaddubsw`, so each tap pair's two `u8·i8`
//! products are summed and saturated to int16 before they reach the int32 accumulator, on every
//! CPU (VNNI included). The taps run in row-major order `t = ky·KW + kx`, paired `(0,1), (2,3), …`,
//! an odd last tap alone (one product always fits int16); taps that fall into the padding hold the
//! activation zero point and pair like any other. That is [`Accumulation::PairSaturatingI16`]
//! over the im2col row of one channel per group, which is how the reference model computes these
//! layers ([`crate::kernels::reference::conv2d`], [`crate::ops::gemm`]).
//!
//! Zero points are folded as FBGEMM's `ReQuantizeOutput` does (`raw = acc − a_zp·col_off −
//! row_sum·b_zp`, `include/fbgemm/OutputProcessing-inl.h`), then the plan's rule in the
//! per-channel form every fused epilogue evaluates ([`PerChannel`]).
//!
//! Layout: weights tap-major `[tap][out channel]` (packed once), activations NHWC; each output
//! pixel sweeps its tap pairs over channel-contiguous slices in blocks of 64 channels, loops
//! the compiler vectorises. Channel multipliers (`OC = m·IC`) read input channel `o / m`.
//!
//! [`KernelPath::FbgemmDepthwise`]: crate::engine::KernelPath::FbgemmDepthwise

use super::quant::{check_nhwc_run, weight_zero_points, PerChannel};
use super::{Accumulation, Requant};
use crate::geometry::Conv2dParams;
use crate::{Error, Result};

/// Output channels per block: the accumulators stay in registers / L1.
const CB: usize = 64;

/// A depthwise conv (`groups = in channels`, `out = m · in`) with FBGEMM's tap-paired,
/// pair-saturating accumulation and a fused requantization.
#[derive(Debug, Clone)]
pub struct DepthwiseTapPairs {
    p: Conv2dParams,
    /// Output channels per input channel.
    mult: usize,
    /// `w[t·OC + o]`: output channel `o`'s weight at tap `t = ky·KW + kx`.
    w: Vec<i8>,
    b_zp: Vec<i32>,
    /// `Σ_t w − KH·KW·b_zp` per output channel (wrapping).
    col_off: Vec<i32>,
    /// Whether any weight zero point is nonzero (activation row sums needed).
    asym: bool,
    rq: PerChannel,
}

impl DepthwiseTapPairs {
    /// Stable name (reports).
    pub const NAME: &'static str = "portable-depthwise-tap-pairs";

    /// The accumulation this kernel computes.
    pub const ACCUMULATION: Accumulation = Accumulation::PairSaturatingI16;

    /// Whether `p` is a depthwise conv this kernel runs: every group one input channel (any
    /// number of output channels per group), any kernel, stride, padding and dilation.
    pub fn supports(p: &Conv2dParams) -> bool {
        p.groups > 0
            && p.groups == p.in_channels
            && p.out_channels.is_multiple_of(p.groups)
            && p.out_channels > 0
            && !p.kernel_size.contains(&0)
            && !p.stride.contains(&0)
            && !p.dilation.contains(&0)
    }

    /// Packs PyTorch's `[OC, 1, KH, KW]` weights with 1 or `OC` weight zero points and the
    /// requantization rule of every output channel. Geometry it does not support is an error.
    pub fn new(
        p: Conv2dParams,
        weights: &[i8],
        zero_points: &[i32],
        requant: &Requant,
    ) -> Result<Self> {
        if !Self::supports(&p) {
            return Err(Error::invalid(
                "depthwise conv",
                format!("{p:?} is not a depthwise conv (groups = in channels, out a multiple)"),
            ));
        }
        let oc = p.out_channels;
        let taps = p.kernel_size[0]
            .checked_mul(p.kernel_size[1])
            .filter(|t| t.checked_mul(oc).is_some())
            .ok_or_else(|| Error::shape("depthwise weights", "kernel size overflows"))?;
        if weights.len() != oc * taps {
            return Err(Error::shape(
                "depthwise weights",
                format!(
                    "expected {oc}×1×{:?} = {} values, got {}",
                    p.kernel_size,
                    oc * taps,
                    weights.len()
                ),
            ));
        }
        let b_zp = weight_zero_points(zero_points, oc)?;
        let mut w = vec![0i8; taps * oc];
        for (o, wo) in weights.chunks_exact(taps).enumerate() {
            for (t, &v) in wo.iter().enumerate() {
                w[t * oc + o] = v;
            }
        }
        let col_off = weights
            .chunks_exact(taps)
            .zip(&b_zp)
            .map(|(wo, &z)| {
                wo.iter()
                    .fold(0i32, |s, &v| s.wrapping_add(i32::from(v)))
                    .wrapping_sub((taps as i32).wrapping_mul(z))
            })
            .collect();
        Ok(Self {
            p,
            mult: oc / p.groups,
            w,
            asym: b_zp.iter().any(|&z| z != 0),
            b_zp,
            col_off,
            rq: PerChannel::new(requant, 0, oc, oc)?,
        })
    }

    /// The conv's parameters.
    pub fn params(&self) -> &Conv2dParams {
        &self.p
    }

    /// Runs on NHWC `x` (`nb × h × w × IC`), writing NHWC u8 `out` (`nb × OH × OW × OC`);
    /// returns `(OH, OW)`. Bad lengths or zero points are errors.
    pub fn run_nhwc(
        &self,
        x: &[u8],
        nb: usize,
        h: usize,
        w: usize,
        a_zp: i32,
        out: &mut [u8],
    ) -> Result<(usize, usize)> {
        let (oh, ow) = check_nhwc_run("depthwise conv", &self.p, (x, nb, h, w), out, a_zp)?;
        let (c, oc) = (self.p.in_channels, self.p.out_channels);
        let [kh, kw] = self.p.kernel_size;
        let [sy, sx] = self.p.stride;
        let [dy, dx] = self.p.dilation;
        let [py, px] = self.p.padding;
        // The source of a tap in the padding: the activation zero point in every channel.
        let zrow = vec![a_zp as u8; oc];
        let zc: Vec<i32> = self.col_off.iter().map(|&o| a_zp.wrapping_mul(o)).collect();
        let mut expanded = Vec::new();
        let (img_in, img_out) = (h * w * c, oh * ow * oc);
        for b in 0..nb {
            let xb = &x[b * img_in..(b + 1) * img_in];
            let ob = &mut out[b * img_out..(b + 1) * img_out];
            // One input value per output channel, so every tap slice is `OC` long.
            let xe: &[u8] = if self.mult == 1 {
                xb
            } else {
                expanded.clear();
                expanded.extend(xb.iter().flat_map(|&v| std::iter::repeat_n(v, self.mult)));
                &expanded
            };
            let mut srcs: Vec<&[u8]> = Vec::with_capacity(kh * kw);
            for oy in 0..oh {
                for ox in 0..ow {
                    srcs.clear();
                    for ky in 0..kh {
                        let iy = (oy * sy + ky * dy).checked_sub(py).filter(|&v| v < h);
                        for kx in 0..kw {
                            let ix = (ox * sx + kx * dx).checked_sub(px).filter(|&v| v < w);
                            srcs.push(match (iy, ix) {
                                (Some(iy), Some(ix)) => &xe[(iy * w + ix) * oc..][..oc],
                                _ => &zrow,
                            });
                        }
                    }
                    let o = &mut ob[(oy * ow + ox) * oc..][..oc];
                    for (bi, ob) in o.chunks_mut(CB).enumerate() {
                        self.block(&srcs, bi * CB, &zc, ob);
                    }
                }
            }
        }
        Ok((oh, ow))
    }

    /// Output channels `c0 .. c0 + o.len()` of one output pixel whose taps read `srcs` (each
    /// `OC` channels).
    #[inline]
    fn block(&self, srcs: &[&[u8]], c0: usize, zc: &[i32], o: &mut [u8]) {
        let (n, oc) = (o.len(), self.p.out_channels);
        let mut acc = [0i32; CB];
        let mut rows = [0i32; CB];
        let (acc, rows) = (&mut acc[..n], &mut rows[..n]);
        let x = |t: usize| &srcs[t][c0..c0 + n];
        let wt = |t: usize| &self.w[t * oc + c0..][..n];
        let mut pairs = srcs.len() / 2;
        let mut t = 0;
        while pairs > 0 {
            let (xa, xb, wa, wb) = (x(t), x(t + 1), wt(t), wt(t + 1));
            for ((((a, &xa), &xb), &wa), &wb) in acc.iter_mut().zip(xa).zip(xb).zip(wa).zip(wb) {
                // A u8·i8 product lies in −32640..=32385, so it is exact in int16, and the
                // saturating int16 sum of the pair's two products is vpmaddubsw's
                // `sat16(x0·w0 + x1·w1)`.
                let s =
                    (i16::from(xa) * i16::from(wa)).saturating_add(i16::from(xb) * i16::from(wb));
                *a = a.wrapping_add(i32::from(s));
            }
            if self.asym {
                for ((r, &xa), &xb) in rows.iter_mut().zip(xa).zip(xb) {
                    *r = r.wrapping_add(i32::from(xa) + i32::from(xb));
                }
            }
            t += 2;
            pairs -= 1;
        }
        if t < srcs.len() {
            // The odd last tap: one product always fits int16.
            for ((a, &xa), &wa) in acc.iter_mut().zip(x(t)).zip(wt(t)) {
                *a = a.wrapping_add(i32::from(i16::from(xa) * i16::from(wa)));
            }
            if self.asym {
                for (r, &xa) in rows.iter_mut().zip(x(t)) {
                    *r = r.wrapping_add(i32::from(xa));
                }
            }
        }
        let (zc, b_zp) = (&zc[c0..c0 + n], &self.b_zp[c0..c0 + n]);
        for i in 0..n {
            acc[i] = acc[i]
                .wrapping_sub(zc[i])
                .wrapping_sub(rows[i].wrapping_mul(b_zp[i]));
        }
        self.rq.apply_block(acc, c0, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::Layout;
    use crate::kernels::reference::{self, sat16};
    use crate::kernels::QConv;
    use crate::numerics::requant::{FbgemmRequant, QnnpackRequant};
    use crate::numerics::test_rng::Rng;

    /// One random depthwise problem.
    struct Case {
        p: Conv2dParams,
        dims: (usize, usize, usize),
        x: Vec<u8>,
        a_zp: i32,
        weights: Vec<i8>,
        zps: Vec<i32>,
        rule: Requant,
    }

    impl Case {
        fn conv(&self) -> QConv<'_> {
            let (nb, h, w) = self.dims;
            QConv {
                params: self.p,
                layout: Layout::Nhwc,
                batch: nb,
                height: h,
                width: w,
                input: &self.x,
                a_zero_point: self.a_zp,
                weight: &self.weights,
                w_zero_points: &self.zps,
            }
        }

        /// The reference model: `reference::conv2d` under `acc`, then the scalar rule.
        fn reference(&self, acc: Accumulation) -> Vec<u8> {
            let (raw, hw) = reference::conv2d(acc, &self.conv()).unwrap();
            let oc = self.p.out_channels;
            raw.iter()
                .enumerate()
                .map(|(i, &v)| {
                    self.rule
                        .apply(v, reference::conv_channel(Layout::Nhwc, i, oc, hw))
                })
                .collect()
        }

        fn run(&self) -> Vec<u8> {
            let (nb, h, w) = self.dims;
            let dw = DepthwiseTapPairs::new(self.p, &self.weights, &self.zps, &self.rule).unwrap();
            let (_, oh, ow) = self.p.output_dims(&[nb, self.p.in_channels, h, w]).unwrap();
            let mut out = vec![0u8; nb * oh * ow * self.p.out_channels];
            assert_eq!(
                dw.run_nhwc(&self.x, nb, h, w, self.a_zp, &mut out).unwrap(),
                (oh, ow)
            );
            out
        }

        /// Tap pairs of the reference's im2col rows whose sum saturates int16.
        fn saturated_pairs(&self) -> usize {
            let (nb, h, w) = self.dims;
            let (c, [kh, kw]) = (self.p.in_channels, self.p.kernel_size);
            let m = self.p.out_channels / c;
            let (_, oh, ow) = self.p.output_dims(&[nb, c, h, w]).unwrap();
            let mut n = 0;
            for b in 0..nb {
                for o in 0..self.p.out_channels {
                    for (oy, ox) in (0..oh).flat_map(|y| (0..ow).map(move |x| (y, x))) {
                        let tap = |t: usize| {
                            let (ky, kx) = (t / kw, t % kw);
                            let iy = (oy * self.p.stride[0] + ky * self.p.dilation[0])
                                .checked_sub(self.p.padding[0])
                                .filter(|&v| v < h);
                            let ix = (ox * self.p.stride[1] + kx * self.p.dilation[1])
                                .checked_sub(self.p.padding[1])
                                .filter(|&v| v < w);
                            let a = match (iy, ix) {
                                (Some(y), Some(x)) => self.x[((b * h + y) * w + x) * c + o / m],
                                _ => self.a_zp as u8,
                            };
                            i32::from(a) * i32::from(self.weights[o * kh * kw + t])
                        };
                        for t in (0..kh * kw - 1).step_by(2) {
                            let s = tap(t) + tap(t + 1);
                            n += usize::from(sat16(s) != s);
                        }
                    }
                }
            }
            n
        }
    }

    /// A random case: 1–9 input channels with multipliers 1–3 (and 8–24 with multiplier 1, block
    /// straddling at 64+), kernels 1–7, strides 1–3, dilations 1–3, padding up to the span, half
    /// the cases with extreme codes and weights (pairs saturate), odd and even tap counts, per
    /// tensor / per channel zero points and scales, FBGEMM and QNNPACK rules, ReLU.
    fn case(r: &mut Rng) -> Option<Case> {
        let mut pick = |n: usize| (r.bits() % n as u64) as usize;
        let (c, m) = match pick(4) {
            0 => ([8, 16, 24, 40][pick(4)], 1),
            1 => (1 + pick(9), 1),
            2 => (1 + pick(9), 1 + pick(3)),
            _ => ([33, 70][pick(2)], 1 + pick(2)),
        };
        let oc = c * m;
        let kernel = [1 + pick(7), 1 + pick(7)];
        let dilation = [1 + pick(3), 1 + pick(3)];
        let span = |d: usize| (kernel[d] - 1) * dilation[d] + 1;
        let p = Conv2dParams {
            in_channels: c,
            out_channels: oc,
            kernel_size: kernel,
            stride: [1 + pick(3), 1 + pick(3)],
            padding: [pick(span(0) + 1), pick(span(1) + 1)],
            dilation,
            groups: c,
        };
        let (nb, h, w) = (1 + pick(2), 1 + pick(11), 1 + pick(11));
        p.output_dims(&[nb, c, h, w]).ok()?;
        let extreme = pick(2) == 0;
        let weights = (0..oc * kernel[0] * kernel[1])
            .map(|_| match (extreme, pick(4)) {
                (true, 0..=2) => [-128, 127][pick(2)],
                _ => pick(256) as u8 as i8,
            })
            .collect();
        let x = (0..nb * h * w * c)
            .map(|_| match (extreme, pick(4)) {
                (true, 0..=2) => [0, 255][pick(2)],
                _ => pick(256) as u8,
            })
            .collect();
        let zps = match pick(3) {
            0 => (0..oc).map(|_| pick(256) as i32 - 128).collect(),
            1 => vec![pick(7) as i32 - 3],
            _ => vec![0],
        };
        let per_channel = pick(2) == 0;
        let scales: Vec<f32> = (0..if per_channel { oc } else { 1 })
            .map(|_| 0.0005 + pick(100) as f32 / 4000.0)
            .collect();
        let bias: Vec<f32> = (0..oc).map(|_| pick(4001) as f32 / 10.0 - 200.0).collect();
        let (out_scale, out_zp, relu) =
            (0.05 + pick(40) as f64 / 8.0, pick(256) as i32, pick(3) == 0);
        let with_bias = pick(4) > 0;
        let rule = if pick(4) > 0 {
            Requant::Fbgemm(FbgemmRequant::new(
                0.04,
                &scales,
                per_channel,
                with_bias.then_some(&bias[..]),
                oc,
                out_scale,
                out_zp,
                relu,
            ))
        } else {
            Requant::Qnnpack(QnnpackRequant::new(
                0.04,
                &scales,
                with_bias.then_some(&bias[..]),
                oc,
                out_scale,
                out_zp,
                relu,
            ))
        };
        Some(Case {
            p,
            dims: (nb, h, w),
            x,
            a_zp: pick(256) as i32,
            weights,
            zps,
            rule,
        })
    }

    /// Random depthwise convs against the reference model, element by element. The data
    /// saturate tap pairs (counted), and the exact accumulation differs from the reference on
    /// these cases, so a kernel that paired other products, or none, would mismatch.
    #[test]
    fn tap_pairs_equal_the_reference_conv() {
        let mut r = Rng::new(0xd3_7a95, 16);
        let (mut cases, mut elements, mut mismatched, mut saturated) = (0, 0, 0, 0);
        let (mut exact_differs, mut odd_taps, mut multiplied, mut dilated) = (0, 0, 0, 0);
        while cases < 400 {
            let Some(c) = case(&mut r) else { continue };
            let got = c.run();
            let want = c.reference(Accumulation::PairSaturatingI16);
            assert_eq!(got.len(), want.len());
            let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            if bad > 0 && mismatched == 0 {
                eprintln!("first mismatching case: {:?} on {:?}", c.p, c.dims);
            }
            mismatched += bad;
            elements += got.len();
            saturated += c.saturated_pairs();
            exact_differs += usize::from(c.reference(Accumulation::Exact) != want);
            odd_taps += c.p.kernel_size[0] * c.p.kernel_size[1] % 2;
            multiplied += usize::from(c.p.out_channels > c.p.in_channels);
            dilated += usize::from(c.p.dilation != [1, 1]);
            cases += 1;
        }
        eprintln!(
            "depthwise tap pairs: {mismatched} mismatches in {elements} elements over {cases} \
             cases ({saturated} saturated pairs; exact accumulation differs in {exact_differs} \
             cases; {odd_taps} odd tap counts, {multiplied} channel multipliers, {dilated} dilated)"
        );
        assert_eq!(mismatched, 0, "mismatches in {elements} elements");
        assert!(saturated > 1000, "only {saturated} saturated pairs");
        assert!(
            exact_differs > 50,
            "exact differs in only {exact_differs} cases"
        );
        assert!(odd_taps > 50 && multiplied > 50 && dilated > 100);
    }

    /// FBGEMM's fast-path shapes (`takeDepthWiseFastPath`: 3×3 / 5×5 / 7×7, stride 1 or 2,
    /// padding `(K−1)/2`, 8·k channels, multiplier 1 or 2) with every tap pair saturating.
    #[test]
    fn fbgemm_fast_path_shapes_with_saturating_pairs() {
        let mut r = Rng::new(0xfa57, 3);
        let mut elements = 0;
        for k in [3, 5, 7] {
            for (stride, m, c) in [(1, 1, 8), (2, 1, 16), (1, 2, 8), (2, 2, 72)] {
                let p = Conv2dParams {
                    in_channels: c,
                    out_channels: m * c,
                    kernel_size: [k, k],
                    stride: [stride, stride],
                    padding: [(k - 1) / 2; 2],
                    dilation: [1, 1],
                    groups: c,
                };
                let (nb, h, w) = (2, 9, 7);
                let mut bits = |n: u64| r.bits() % n;
                let case = Case {
                    p,
                    dims: (nb, h, w),
                    x: (0..nb * h * w * c).map(|_| 200 + bits(56) as u8).collect(),
                    a_zp: 0,
                    weights: (0..m * c * k * k)
                        .map(|_| if bits(2) == 0 { -128 } else { 127 })
                        .collect(),
                    zps: vec![0],
                    rule: Requant::Fbgemm(FbgemmRequant::new(
                        0.01,
                        &[0.01],
                        false,
                        None,
                        m * c,
                        0.2,
                        128,
                        false,
                    )),
                };
                let got = case.run();
                let want = case.reference(Accumulation::PairSaturatingI16);
                let exact = case.reference(Accumulation::Exact);
                let differ = |v: &[u8]| got.iter().zip(v).filter(|(a, b)| a != b).count();
                assert_eq!(differ(&want), 0, "{p:?}");
                assert!(
                    differ(&exact) > got.len() / 4,
                    "{p:?}: the data hardly saturate"
                );
                assert!(case.saturated_pairs() > 0);
                elements += got.len();
            }
        }
        assert!(elements > 10_000);
    }

    #[test]
    fn bad_input_is_an_error() {
        let p = Conv2dParams {
            dilation: [1, 1],
            stride: [1, 1],
            ..Conv2dParams::square(4, 8, 4, 3, 1)
        };
        let rule = Requant::Fbgemm(FbgemmRequant::new(
            0.1,
            &[0.1],
            false,
            None,
            8,
            1.0,
            0,
            false,
        ));
        let w = vec![1i8; 8 * 9];
        assert!(DepthwiseTapPairs::new(p, &w[1..], &[0], &rule).is_err());
        assert!(DepthwiseTapPairs::new(p, &w, &[0, 0], &rule).is_err());
        assert!(DepthwiseTapPairs::new(p, &w, &[200], &rule).is_err());
        let grouped = Conv2dParams { groups: 2, ..p };
        assert!(!DepthwiseTapPairs::supports(&grouped));
        assert!(DepthwiseTapPairs::new(grouped, &w, &[0], &rule).is_err());
        let short = Requant::Fbgemm(FbgemmRequant::new(
            0.1,
            &[0.1],
            false,
            None,
            4,
            1.0,
            0,
            false,
        ));
        assert!(DepthwiseTapPairs::new(p, &w, &[0], &short).is_err());
        let dw = DepthwiseTapPairs::new(p, &w, &[0], &rule).unwrap();
        let x = vec![0u8; 5 * 5 * 4];
        let mut out = vec![0u8; 5 * 5 * 8];
        assert_eq!(dw.run_nhwc(&x, 1, 5, 5, 3, &mut out).unwrap(), (5, 5));
        assert!(dw.run_nhwc(&x, 1, 5, 5, 256, &mut out).is_err());
        assert!(dw.run_nhwc(&x, 1, 5, 4, 3, &mut out).is_err());
        assert!(dw.run_nhwc(&x, 1, 5, 5, 3, &mut out[1..]).is_err());
        assert!(dw.run_nhwc(&x, usize::MAX, 5, 5, 3, &mut out).is_err());
        let wide = Conv2dParams {
            kernel_size: [9, 9],
            padding: [0, 0],
            ..p
        };
        let dw = DepthwiseTapPairs::new(wide, &vec![1i8; 8 * 81], &[0], &rule).unwrap();
        assert!(
            dw.run_nhwc(&x, 1, 5, 5, 3, &mut out).is_err(),
            "kernel exceeds the input"
        );
    }
}
