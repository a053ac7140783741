//! FBGEMM's pair-saturating packed GEMM in portable safe Rust: the kernel the
//! [`crate::backend::KernelBackend`] (the ARM backend) runs for [`KernelPath::FbgemmGemm`] layers
//! captured on a non-VNNI CPU, whose accumulation no exact kernel of that backend computes.
//!
//! Without AVX512-VNNI, FBGEMM's acc32 micro-kernel (`src/GenerateKernelU8S8S32ACC32.cc`, fed
//! by `src/PackAMatrix.cc` / `src/PackAWithRowOffset.cc` / `src/PackAWithIm2Col.cc` and
//! `src/PackBMatrix.cc`, which interleaves B in groups of consecutive K rows) multiplies u8
//! activations by i8 weights with `vpmaddubsw`: the two products of each pair `(k0, k1), (k2,
//! k3), …` along K are summed and saturated to int16, then `vpmaddwd(·, 1)` widens them into the
//! int32 accumulator. K is zero-padded to an even length (`PackBMatrix` rounds K up, padding
//! with zeros), so an odd K's last product stands alone; one `u8·i8` product always fits int16.
//! That is [`Accumulation::PairSaturatingI16`] ([`crate::kernels::reference::dot`]). For conv2d
//! the K order is FBGEMM's im2col order `(ky, kx, ic)` over the channels-last input, per group
//! (`PackAWithIm2Col`; weights permuted to `[OC][KH][KW][IC/G]` at prepack), taps in the padding
//! holding the activation zero point — the order of [`crate::kernels::reference::conv2d`].
//!
//! Zero points are folded as FBGEMM's `ReQuantizeOutput` does (`raw = acc − a_zp·col_off −
//! row_sum·b_zp`, `include/fbgemm/OutputProcessing-inl.h`), then the plan's rule in the
//! per-channel form every fused epilogue evaluates ([`PerChannel`]), as
//! [`super::depthwise::DepthwiseTapPairs`] does.
//!
//! Layout: weights packed once pair-major, `w0[p·N + j]`, `w1[p·N + j]` (the two int16-widened
//! weights of pair `p` of output column `j`), so each A pair is broadcast against
//! column-contiguous slices in blocks of 64 columns: int16 multiplies, a saturating int16 add,
//! an int32 widening add — loops the compiler vectorises.
//!
//! [`KernelPath::FbgemmGemm`]: crate::engine::KernelPath::FbgemmGemm

use super::quant::{check_activation_zero_point, check_nhwc_run, weight_zero_points, PerChannel};
use super::{Accumulation, Requant};
use crate::geometry::Conv2dParams;
use crate::{Error, Result};

/// Output columns per block: the accumulators stay in registers / L1.
const CB: usize = 64;

/// An `N × K` quantized GEMM with FBGEMM's pair-saturating accumulation and a fused
/// requantization of output columns `j0 .. j0 + N` of a rule.
#[derive(Debug, Clone)]
pub struct PairGemm {
    n: usize,
    k: usize,
    /// First weight of each pair, `w0[p·N + j]`.
    w0: Vec<i16>,
    /// Second weight of each pair (0 for an odd K's last pair), `w1[p·N + j]`.
    w1: Vec<i16>,
    b_zp: Vec<i32>,
    /// `Σ_k b[j][k] − K·b_zp[j]` per column (wrapping).
    col_off: Vec<i32>,
    /// Whether any weight zero point is nonzero (activation row sums needed).
    asym: bool,
    rq: PerChannel,
}

impl PairGemm {
    /// Stable name (reports).
    pub const NAME: &'static str = "portable-gemm-pairs";

    /// The accumulation this kernel computes.
    pub const ACCUMULATION: Accumulation = Accumulation::PairSaturatingI16;

    /// Packs `N × K` weights (row `j` is column `j`'s K values, in the order that decides the
    /// pairs) with 1 or `N` weight zero points, requantizing column `j` by channel `j0 + j` of
    /// `requant`.
    pub fn new(
        n: usize,
        k: usize,
        weights: &[i8],
        zero_points: &[i32],
        requant: &Requant,
        j0: usize,
    ) -> Result<Self> {
        if n.checked_mul(k) != Some(weights.len()) {
            return Err(Error::shape(
                "gemm weights",
                format!("{} values for {n}×{k}", weights.len()),
            ));
        }
        let b_zp = weight_zero_points(zero_points, n)?;
        let pairs = k.div_ceil(2);
        let (mut w0, mut w1) = (vec![0i16; pairs * n], vec![0i16; pairs * n]);
        for (j, row) in weights.chunks_exact(k.max(1)).enumerate().take(n) {
            for (p, pair) in row.chunks(2).enumerate() {
                w0[p * n + j] = i16::from(pair[0]);
                if let Some(&v) = pair.get(1) {
                    w1[p * n + j] = i16::from(v);
                }
            }
        }
        let col_off = (0..n)
            .map(|j| {
                weights[j * k..(j + 1) * k]
                    .iter()
                    .fold(0i32, |s, &v| s.wrapping_add(i32::from(v)))
                    .wrapping_sub((k as i32).wrapping_mul(b_zp[j]))
            })
            .collect();
        Ok(Self {
            n,
            k,
            w0,
            w1,
            asym: b_zp.iter().any(|&z| z != 0),
            b_zp,
            col_off,
            rq: PerChannel::new(requant, j0, n, n)?,
        })
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `a_zp · col_off[j]` for every column: the activation zero point's share of the fold.
    fn zero_point_terms(&self, a_zp: i32) -> Vec<i32> {
        self.col_off.iter().map(|&o| a_zp.wrapping_mul(o)).collect()
    }

    /// Runs `M × K` row-major u8 `a`, writing `M × N` row-major u8 `out`. Bad lengths or zero
    /// points are errors.
    pub fn run(&self, a: &[u8], m: usize, a_zp: i32, out: &mut [u8]) -> Result<()> {
        check_activation_zero_point(a_zp)?;
        if m.checked_mul(self.k) != Some(a.len()) || m.checked_mul(self.n) != Some(out.len()) {
            return Err(Error::shape(
                "gemm",
                format!(
                    "A of {} values and output of {} for M = {m}, N = {}, K = {}",
                    a.len(),
                    out.len(),
                    self.n,
                    self.k
                ),
            ));
        }
        let zc = self.zero_point_terms(a_zp);
        for i in 0..m {
            self.row(
                &a[i * self.k..(i + 1) * self.k],
                &zc,
                &mut out[i * self.n..(i + 1) * self.n],
            );
        }
        Ok(())
    }

    /// One row of A (`K` values) into its `N` outputs; `zc` from [`Self::zero_point_terms`].
    #[inline]
    fn row(&self, a: &[u8], zc: &[i32], o: &mut [u8]) {
        let asum = if self.asym {
            a.iter().fold(0i32, |s, &v| s.wrapping_add(i32::from(v)))
        } else {
            0
        };
        for (bi, ob) in o.chunks_mut(CB).enumerate() {
            self.block(a, asum, bi * CB, zc, ob);
        }
    }

    /// Columns `c0 .. c0 + o.len()` of one row `a` whose sum is `asum`.
    #[inline]
    fn block(&self, a: &[u8], asum: i32, c0: usize, zc: &[i32], o: &mut [u8]) {
        let (nb, n) = (o.len(), self.n);
        let mut acc = [0i32; CB];
        let acc = &mut acc[..nb];
        let mut pairs = a.chunks_exact(2);
        let mut p = 0;
        for pair in &mut pairs {
            let (x0, x1) = (i16::from(pair[0]), i16::from(pair[1]));
            let (w0, w1) = (&self.w0[p * n + c0..][..nb], &self.w1[p * n + c0..][..nb]);
            for ((a, &w0), &w1) in acc.iter_mut().zip(w0).zip(w1) {
                // A u8·i8 product lies in −32640..=32385, so it is exact in int16, and the
                // saturating int16 sum of the pair's two products is vpmaddubsw's
                // `sat16(x0·w0 + x1·w1)`.
                *a = a.wrapping_add(i32::from((x0 * w0).saturating_add(x1 * w1)));
            }
            p += 1;
        }
        if let [x0] = *pairs.remainder() {
            // An odd K's last product, paired with the zero padding: it always fits int16.
            let x0 = i16::from(x0);
            for (a, &w0) in acc.iter_mut().zip(&self.w0[p * n + c0..][..nb]) {
                *a = a.wrapping_add(i32::from(x0 * w0));
            }
        }
        let (zc, b_zp) = (&zc[c0..c0 + nb], &self.b_zp[c0..c0 + nb]);
        for i in 0..nb {
            acc[i] = acc[i]
                .wrapping_sub(zc[i])
                .wrapping_sub(asum.wrapping_mul(b_zp[i]));
        }
        self.rq.apply_block(acc, c0, o);
    }
}

/// A conv2d (any groups, kernel, stride, padding, dilation) as FBGEMM's im2col GEMM with the
/// pair-saturating accumulation: one [`PairGemm`] per group over rows gathered in `(ky, kx, ic)`
/// order from NHWC input.
#[derive(Debug, Clone)]
pub struct PairConv {
    p: Conv2dParams,
    groups: Vec<PairGemm>,
}

impl PairConv {
    /// Stable name (reports).
    pub const NAME: &'static str = "portable-conv-pairs";

    /// The accumulation this kernel computes.
    pub const ACCUMULATION: Accumulation = Accumulation::PairSaturatingI16;

    /// Whether this kernel runs `p`: groups dividing both channel counts, nonzero sizes.
    pub fn supports(p: &Conv2dParams) -> bool {
        p.groups > 0
            && p.in_channels > 0
            && p.out_channels > 0
            && p.in_channels.is_multiple_of(p.groups)
            && p.out_channels.is_multiple_of(p.groups)
            && !p.kernel_size.contains(&0)
            && !p.stride.contains(&0)
            && !p.dilation.contains(&0)
    }

    /// Packs PyTorch's `[OC, IC/G, KH, KW]` weights (permuted to im2col order `(ky, kx, ic)`)
    /// with 1 or `OC` weight zero points and the requantization rule of every output channel.
    pub fn new(
        p: Conv2dParams,
        weights: &[i8],
        zero_points: &[i32],
        requant: &Requant,
    ) -> Result<Self> {
        if !Self::supports(&p) {
            return Err(Error::invalid(
                "conv2d",
                format!("{p:?}: groups must divide both channel counts, sizes be nonzero"),
            ));
        }
        let (oc, g) = (p.out_channels, p.groups);
        let (icg, ocg) = (p.in_channels / g, oc / g);
        let [kh, kw] = p.kernel_size;
        let k = kh
            .checked_mul(kw)
            .and_then(|t| t.checked_mul(icg))
            .filter(|k| k.checked_mul(oc).is_some())
            .ok_or_else(|| Error::shape("conv2d weights", "kernel size overflows"))?;
        if weights.len() != oc * k {
            return Err(Error::shape(
                "conv2d weights",
                format!("{} values for {:?}", weights.len(), p.weight_shape()),
            ));
        }
        let zps = weight_zero_points(zero_points, oc)?;
        let mut groups = Vec::with_capacity(g);
        let mut wm = vec![0i8; ocg * k];
        for gi in 0..g {
            for (jl, row) in wm.chunks_exact_mut(k).enumerate() {
                let o = gi * ocg + jl;
                for ky in 0..kh {
                    for kx in 0..kw {
                        for ci in 0..icg {
                            row[(ky * kw + kx) * icg + ci] =
                                weights[((o * icg + ci) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
            groups.push(PairGemm::new(
                ocg,
                k,
                &wm,
                &zps[gi * ocg..(gi + 1) * ocg],
                requant,
                gi * ocg,
            )?);
        }
        Ok(Self { p, groups })
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
        let (oh, ow) = check_nhwc_run("conv2d", &self.p, (x, nb, h, w), out, a_zp)?;
        let (c, oc) = (self.p.in_channels, self.p.out_channels);
        let [kh, kw] = self.p.kernel_size;
        let [sy, sx] = self.p.stride;
        let [dy, dx] = self.p.dilation;
        let [py, px] = self.p.padding;
        let g = self.p.groups;
        let (icg, ocg) = (c / g, oc / g);
        let k = kh * kw * icg;
        let zcs: Vec<Vec<i32>> = self
            .groups
            .iter()
            .map(|gm| gm.zero_point_terms(a_zp))
            .collect();
        // One im2col row: the taps' channels of one group, the padding holding the zero point.
        let mut row = vec![0u8; k];
        let (img_in, img_out) = (h * w * c, oh * ow * oc);
        for b in 0..nb {
            let xb = &x[b * img_in..(b + 1) * img_in];
            let ob = &mut out[b * img_out..(b + 1) * img_out];
            for oy in 0..oh {
                for ox in 0..ow {
                    let opix = &mut ob[(oy * ow + ox) * oc..][..oc];
                    for (gi, (gm, zc)) in self.groups.iter().zip(&zcs).enumerate() {
                        for ky in 0..kh {
                            let iy = (oy * sy + ky * dy).checked_sub(py).filter(|&v| v < h);
                            for kx in 0..kw {
                                let ix = (ox * sx + kx * dx).checked_sub(px).filter(|&v| v < w);
                                let dst = &mut row[(ky * kw + kx) * icg..][..icg];
                                match (iy, ix) {
                                    (Some(iy), Some(ix)) => dst.copy_from_slice(
                                        &xb[(iy * w + ix) * c + gi * icg..][..icg],
                                    ),
                                    _ => dst.fill(a_zp as u8),
                                }
                            }
                        }
                        gm.row(&row, zc, &mut opix[gi * ocg..(gi + 1) * ocg]);
                    }
                }
            }
        }
        Ok((oh, ow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::Layout;
    use crate::kernels::reference::{self, sat16};
    use crate::kernels::{QConv, QGemm};
    use crate::numerics::requant::{FbgemmRequant, QnnpackRequant};
    use crate::numerics::test_rng::Rng;

    /// A random rule for `n` output channels: FBGEMM (per tensor / per channel, bias or none)
    /// or QNNPACK, ReLU or none.
    fn rule(r: &mut Rng, n: usize) -> Requant {
        let mut pick = |m: usize| (r.bits() % m as u64) as usize;
        let per_channel = pick(2) == 0;
        let scales: Vec<f32> = (0..if per_channel { n } else { 1 })
            .map(|_| 0.0005 + pick(100) as f32 / 40000.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|_| pick(4001) as f32 / 10.0 - 200.0).collect();
        let (out_scale, out_zp, relu) =
            (0.05 + pick(40) as f64 / 8.0, pick(256) as i32, pick(3) == 0);
        let with_bias = pick(4) > 0;
        if pick(4) > 0 {
            Requant::Fbgemm(FbgemmRequant::new(
                0.04,
                &scales,
                per_channel,
                with_bias.then_some(&bias[..]),
                n,
                out_scale,
                out_zp,
                relu,
            ))
        } else {
            Requant::Qnnpack(QnnpackRequant::new(
                0.04,
                &scales,
                with_bias.then_some(&bias[..]),
                n,
                out_scale,
                out_zp,
                relu,
            ))
        }
    }

    /// `len` codes and weights, mostly extreme when `extreme` (pairs saturate).
    fn data(r: &mut Rng, len: usize, extreme: bool) -> (Vec<u8>, Vec<i8>) {
        let mut pick = |m: usize| (r.bits() % m as u64) as usize;
        let mut x = Vec::with_capacity(len);
        let mut w = Vec::with_capacity(len);
        for _ in 0..len {
            x.push(match (extreme, pick(4)) {
                (true, 0..=2) => [0, 255][pick(2)],
                _ => pick(256) as u8,
            });
            w.push(match (extreme, pick(4)) {
                (true, 0..=2) => [-128, 127][pick(2)],
                _ => pick(256) as u8 as i8,
            });
        }
        (x, w)
    }

    fn zero_points(r: &mut Rng, n: usize) -> Vec<i32> {
        match r.bits() % 3 {
            0 => (0..n).map(|_| (r.bits() % 256) as i32 - 128).collect(),
            1 => vec![(r.bits() % 7) as i32 - 3],
            _ => vec![0],
        }
    }

    /// Pairs along K of `a · b` that saturate int16.
    fn saturated(a: &[u8], b: &[i8]) -> usize {
        a.chunks_exact(2)
            .zip(b.chunks_exact(2))
            .filter(|(x, w)| {
                let s = i32::from(x[0]) * i32::from(w[0]) + i32::from(x[1]) * i32::from(w[1]);
                sat16(s) != s
            })
            .count()
    }

    /// Random GEMMs (odd and even K, N straddling the 64-column blocks, zero points per tensor
    /// and per channel, every rule) against the reference model, element by element.
    #[test]
    fn pair_gemm_equals_the_reference_gemm() {
        let mut r = Rng::new(0x9a_1e55, 7);
        let (mut elements, mut mismatched, mut sat, mut exact_differs, mut odd) = (0, 0, 0, 0, 0);
        for case in 0..300 {
            let mut pick = |m: usize| (r.bits() % m as u64) as usize;
            let (m, n, k) = (1 + pick(9), [1, 7, 64, 65, 130][pick(5)], 1 + pick(150));
            let extreme = case % 2 == 0;
            let a_zp = pick(256) as i32;
            let (a, _) = data(&mut r, m * k, extreme);
            let (_, b) = data(&mut r, n * k, extreme);
            let zps = zero_points(&mut r, n);
            let rule = rule(&mut r, n);
            let p = QGemm {
                m,
                n,
                k,
                a: &a,
                a_zero_point: a_zp,
                b: &b,
                b_zero_points: &zps,
            };
            let want_acc = |acc| -> Vec<u8> {
                reference::gemm_zp(acc, &p)
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| rule.apply(v, i % n))
                    .collect()
            };
            let want = want_acc(Accumulation::PairSaturatingI16);
            let g = PairGemm::new(n, k, &b, &zps, &rule, 0).unwrap();
            let mut got = vec![0u8; m * n];
            g.run(&a, m, a_zp, &mut got).unwrap();
            mismatched += got.iter().zip(&want).filter(|(x, y)| x != y).count();
            elements += got.len();
            exact_differs += usize::from(want_acc(Accumulation::Exact) != want);
            odd += k % 2;
            for i in 0..m {
                for j in 0..n {
                    sat += saturated(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]);
                }
            }
        }
        eprintln!(
            "gemm pairs: {mismatched} mismatches in {elements} elements ({sat} saturated pairs; \
             exact accumulation differs in {exact_differs} cases; {odd} odd K)"
        );
        assert_eq!(mismatched, 0, "mismatches in {elements} elements");
        assert!(sat > 10_000 && exact_differs > 50 && odd > 50);
    }

    /// Random convs (groups, kernels 1–5, strides, padding, dilation, odd and even K, zero
    /// points, every rule) against the reference conv model, element by element.
    #[test]
    fn pair_conv_equals_the_reference_conv() {
        let mut r = Rng::new(0xc0_2e55, 9);
        let (mut cases, mut elements, mut mismatched) = (0, 0, 0);
        let (mut exact_differs, mut odd, mut grouped, mut dilated, mut padded) = (0, 0, 0, 0, 0);
        while cases < 300 {
            let mut pick = |m: usize| (r.bits() % m as u64) as usize;
            let g = [1, 1, 1, 2, 3, 4][pick(6)];
            let (icg, ocg) = (1 + pick(12), 1 + pick(20));
            let kernel = [1 + pick(5), 1 + pick(5)];
            let dilation = [1 + pick(2), 1 + pick(2)];
            let span = |d: usize| (kernel[d] - 1) * dilation[d] + 1;
            let p = Conv2dParams {
                in_channels: g * icg,
                out_channels: g * ocg,
                kernel_size: kernel,
                stride: [1 + pick(3), 1 + pick(3)],
                padding: [pick(span(0) / 2 + 2), pick(span(1) / 2 + 2)],
                dilation,
                groups: g,
            };
            let (nb, h, w) = (1 + pick(2), 1 + pick(9), 1 + pick(9));
            if p.output_dims(&[nb, p.in_channels, h, w]).is_err() {
                continue;
            }
            let extreme = cases % 2 == 0;
            let a_zp = pick(256) as i32;
            let (x, _) = data(&mut r, nb * h * w * p.in_channels, extreme);
            let (_, weights) = data(&mut r, p.weight_shape().iter().product(), extreme);
            let zps = zero_points(&mut r, p.out_channels);
            let rule = rule(&mut r, p.out_channels);
            let c = QConv {
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
            let want_acc = |acc| -> Vec<u8> {
                let (raw, hw) = reference::conv2d(acc, &c).unwrap();
                raw.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let j = reference::conv_channel(Layout::Nhwc, i, p.out_channels, hw);
                        rule.apply(v, j)
                    })
                    .collect()
            };
            let want = want_acc(Accumulation::PairSaturatingI16);
            let conv = PairConv::new(p, &weights, &zps, &rule).unwrap();
            let mut got = vec![0u8; want.len()];
            let hw = conv.run_nhwc(&x, nb, h, w, a_zp, &mut got).unwrap();
            assert_eq!(hw, reference::conv2d(Accumulation::Exact, &c).unwrap().1);
            let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            if bad > 0 && mismatched == 0 {
                eprintln!("first mismatching case: {p:?} on {:?}", (nb, h, w));
            }
            mismatched += bad;
            elements += got.len();
            exact_differs += usize::from(want_acc(Accumulation::Exact) != want);
            odd += kernel[0] * kernel[1] * icg % 2;
            grouped += usize::from(g > 1);
            dilated += usize::from(dilation != [1, 1]);
            padded += usize::from(p.padding != [0, 0]);
            cases += 1;
        }
        eprintln!(
            "conv pairs: {mismatched} mismatches in {elements} elements over {cases} cases \
             (exact accumulation differs in {exact_differs} cases; {odd} odd K, {grouped} \
             grouped, {dilated} dilated, {padded} padded)"
        );
        assert_eq!(mismatched, 0, "mismatches in {elements} elements");
        assert!(exact_differs > 50 && odd > 50 && grouped > 50 && dilated > 50 && padded > 100);
    }

    #[test]
    fn bad_input_is_an_error() {
        let rule = Requant::Fbgemm(FbgemmRequant::new(
            0.1,
            &[0.1],
            false,
            None,
            4,
            1.0,
            0,
            false,
        ));
        assert!(PairGemm::new(4, 3, &[0; 11], &[0], &rule, 0).is_err());
        assert!(PairGemm::new(4, 3, &[0; 12], &[0, 0], &rule, 0).is_err());
        assert!(PairGemm::new(4, 3, &[0; 12], &[0], &rule, 1).is_err());
        let g = PairGemm::new(4, 3, &[1; 12], &[0], &rule, 0).unwrap();
        let mut out = vec![0u8; 8];
        assert!(g.run(&[0; 6], 2, 0, &mut out).is_ok());
        assert!(g.run(&[0; 5], 2, 0, &mut out).is_err());
        assert!(g.run(&[0; 6], 2, 256, &mut out).is_err());
        assert!(g.run(&[0; 6], 2, 0, &mut out[1..]).is_err());
        let p = Conv2dParams::square(4, 4, 2, 3, 1);
        assert!(PairConv::new(p, &[0; 4 * 2 * 9], &[0], &rule).is_ok());
        assert!(PairConv::new(p, &[0; 4 * 2 * 9 - 1], &[0], &rule).is_err());
        assert!(PairConv::new(Conv2dParams { groups: 3, ..p }, &[0; 72], &[0], &rule).is_err());
        let conv = PairConv::new(p, &[0; 72], &[0], &rule).unwrap();
        let x = vec![0u8; 5 * 5 * 4];
        let mut out = vec![0u8; 5 * 5 * 4];
        assert_eq!(conv.run_nhwc(&x, 1, 5, 5, 3, &mut out).unwrap(), (5, 5));
        assert!(conv.run_nhwc(&x, 1, 5, 4, 3, &mut out).is_err());
        assert!(conv.run_nhwc(&x, 1, 5, 5, 300, &mut out).is_err());
        assert!(conv.run_nhwc(&x, 1, 5, 5, 3, &mut out[1..]).is_err());
    }
}
