//! GEMM-shaped arithmetic shared by the linear and conv2d ops: integer accumulation (through any
//! [`Int8Gemm`] kernel, zero points folded) and the exact float evaluation that bounds PyTorch's
//! f32 reference ops.
//!
//! Convolution lowers to GEMM by im2col in FBGEMM's order: for output pixel `(n, oh, ow)` of group
//! `g`, column `k = (kh·KW + kw)·ICg + c`, padding filled with the activation zero point. That
//! order decides which products share an int16 pair under [`Accumulation::PairSaturatingI16`];
//! for depthwise convolution (ICg = 1) it is FBGEMM's tap order `(0,1), (2,3), …`. Padded taps go
//! through the kernel like any other column ([`PaddingTaps::ThroughKernel`], FBGEMM) or are added
//! exactly outside it ([`PaddingTaps::Exact`], oneDNN).

use crate::engine::PaddingTaps;
use crate::geometry::Conv2dParams;
use crate::kernels::Int8Gemm;
use crate::numerics::bound::FloatSum;
use crate::{Error, Result};

/// im2col of group `g`: `rows = N·OH·OW` rows of `KH·KW·ICg` columns, order `(kh, kw, c)`.
pub fn im2col<T: Copy>(
    input: &[T],
    shape: &[usize],
    p: &Conv2dParams,
    g: usize,
    pad: T,
) -> Result<Vec<T>> {
    let (n, oh, ow) = p.output_dims(shape)?;
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let icg = c / p.groups;
    let k = p.k();
    let mut out = Vec::with_capacity(n * oh * ow * k);
    for b in 0..n {
        for y in 0..oh {
            for x in 0..ow {
                for kh in 0..p.kernel_size[0] {
                    for kw in 0..p.kernel_size[1] {
                        let iy =
                            (y * p.stride[0] + kh * p.dilation[0]) as isize - p.padding[0] as isize;
                        let ix =
                            (x * p.stride[1] + kw * p.dilation[1]) as isize - p.padding[1] as isize;
                        let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                        for ci in 0..icg {
                            out.push(if inside {
                                input[((b * c + g * icg + ci) * h + iy as usize) * w + ix as usize]
                            } else {
                                pad
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Weights of group `g` as an `OCg × K` matrix in im2col column order.
pub fn weight_matrix<T: Copy>(weight: &[T], p: &Conv2dParams, g: usize) -> Vec<T> {
    let ocg = p.out_channels / p.groups;
    let icg = p.in_channels / p.groups;
    let (khs, kws) = (p.kernel_size[0], p.kernel_size[1]);
    let mut out = Vec::with_capacity(ocg * p.k());
    for o in g * ocg..(g + 1) * ocg {
        for kh in 0..khs {
            for kw in 0..kws {
                for ci in 0..icg {
                    out.push(weight[((o * icg + ci) * khs + kh) * kws + kw]);
                }
            }
        }
    }
    out
}

/// Folds zero points into raw accumulators:
/// `raw = acc − a_zp·Σ_k b[j][k] − b_zp[j]·Σ_k a[i][k] + K·a_zp·b_zp[j]` (wrapping int32), which is
/// `Σ_k (a − a_zp)(b − b_zp)` when `acc` is exact. FBGEMM computes the same with its row and
/// column offsets (`ReQuantizeOutput`).
#[allow(clippy::too_many_arguments)]
pub fn fold_zero_points(
    acc: &mut [i32],
    m: usize,
    n: usize,
    k: usize,
    a: &[u8],
    b: &[i8],
    a_zp: i32,
    b_zp: &[i32],
) {
    let row_sums: Vec<i32> = (0..m)
        .map(|i| a[i * k..(i + 1) * k].iter().map(|&v| v as i32).sum())
        .collect();
    let col_sums: Vec<i32> = (0..n)
        .map(|j| b[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum())
        .collect();
    for i in 0..m {
        for j in 0..n {
            let zb = b_zp[j];
            let v = acc[i * n + j]
                .wrapping_sub(a_zp.wrapping_mul(col_sums[j]))
                .wrapping_sub(zb.wrapping_mul(row_sums[i]))
                .wrapping_add((k as i32).wrapping_mul(a_zp).wrapping_mul(zb));
            acc[i * n + j] = v;
        }
    }
}

/// Zero-point-folded accumulators of a quantized linear layer: `out[i][j] = Σ_k (a − a_zp)(w − w_zp)`
/// under the kernel's accumulation model; `a` is M×K, `w` is N×K, `w_zp` has N entries.
#[allow(clippy::too_many_arguments)]
pub fn linear_acc(
    kernel: &dyn Int8Gemm,
    a: &[u8],
    m: usize,
    k: usize,
    a_zp: i32,
    w: &[i8],
    n: usize,
    w_zp: &[i32],
) -> Result<Vec<i32>> {
    if a.len() != m * k || w.len() != n * k || w_zp.len() != n {
        return Err(Error::shape(
            "linear",
            format!(
                "input {} elements for {m}×{k}, weight {} for {n}×{k}, {} weight zero points",
                a.len(),
                w.len(),
                w_zp.len()
            ),
        ));
    }
    let mut acc = vec![0i32; m * n];
    kernel.gemm(m, n, k, a, w, &mut acc);
    fold_zero_points(&mut acc, m, n, k, a, w, a_zp, w_zp);
    Ok(acc)
}

/// Zero-point-folded accumulators of a quantized conv2d, NCHW output `[N, OC, OH, OW]`, with
/// padded taps going through the kernel ([`PaddingTaps::ThroughKernel`]).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_acc(
    kernel: &dyn Int8Gemm,
    input: &[u8],
    shape: &[usize],
    a_zp: i32,
    weight: &[i8],
    w_zp: &[i32],
    p: &Conv2dParams,
) -> Result<(Vec<i32>, [usize; 4])> {
    conv2d_acc_with_padding(
        kernel,
        input,
        shape,
        a_zp,
        weight,
        w_zp,
        p,
        PaddingTaps::ThroughKernel,
    )
}

/// [`conv2d_acc`] with a choice of how padded taps are accumulated. With
/// [`PaddingTaps::Exact`] the kernel sees 0 in padded columns (products 0, no pair can saturate:
/// a pair never straddles a padded and an in-bounds tap because pairs stay within one tap's
/// channels) and `a_zp · Σ_padded w` is added exactly before the zero points are folded.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_acc_with_padding(
    kernel: &dyn Int8Gemm,
    input: &[u8],
    shape: &[usize],
    a_zp: i32,
    weight: &[i8],
    w_zp: &[i32],
    p: &Conv2dParams,
    padding: PaddingTaps,
) -> Result<(Vec<i32>, [usize; 4])> {
    let (n, oh, ow) = p.output_dims(shape)?;
    if input.len() != shape.iter().product::<usize>() {
        return Err(Error::shape(
            "conv2d",
            "input length does not match its shape",
        ));
    }
    if weight.len() != p.weight_shape().iter().product::<usize>() || w_zp.len() != p.out_channels {
        return Err(Error::shape(
            "conv2d",
            format!(
                "weight must be {:?} with one zero point per output channel",
                p.weight_shape()
            ),
        ));
    }
    if !(0..=255).contains(&a_zp) {
        return Err(Error::invalid(
            "conv2d",
            format!("activation zero point {a_zp}"),
        ));
    }
    let ocg = p.out_channels / p.groups;
    let (rows, k) = (n * oh * ow, p.k());
    conv2d_by_group(p, (n, oh, ow), 0, |g| {
        let b = weight_matrix(weight, p, g);
        let w_zp = &w_zp[g * ocg..(g + 1) * ocg];
        match padding {
            PaddingTaps::ThroughKernel => {
                let a = im2col(input, shape, p, g, a_zp as u8)?;
                linear_acc(kernel, &a, rows, k, a_zp, &b, ocg, w_zp)
            }
            PaddingTaps::Exact => {
                let cols = im2col(
                    &input.iter().map(|&v| Some(v)).collect::<Vec<_>>(),
                    shape,
                    p,
                    g,
                    None,
                )?;
                let in_bounds: Vec<u8> = cols.iter().map(|v| v.unwrap_or(0)).collect();
                let mut acc = vec![0i32; rows * ocg];
                kernel.gemm(rows, ocg, k, &in_bounds, &b, &mut acc);
                for (i, row) in cols.chunks_exact(k).enumerate() {
                    for (j, wj) in b.chunks_exact(k).enumerate() {
                        let padded: i32 = row
                            .iter()
                            .zip(wj)
                            .filter(|(v, _)| v.is_none())
                            .map(|(_, &w)| w as i32)
                            .sum();
                        let c = &mut acc[i * ocg + j];
                        *c = c.wrapping_add(a_zp.wrapping_mul(padded));
                    }
                }
                let a: Vec<u8> = cols.iter().map(|v| v.unwrap_or(a_zp as u8)).collect();
                fold_zero_points(&mut acc, rows, ocg, k, &a, &b, a_zp, w_zp);
                Ok(acc)
            }
        }
    })
}

/// Conv2d as one GEMM per group: `group(g)` returns group `g`'s `[N·OH·OW, OC/groups]` result,
/// scattered into the NCHW output `[N, OC, OH, OW]`; the second argument is `(N, OH, OW)`.
fn conv2d_by_group<T: Copy>(
    p: &Conv2dParams,
    (n, oh, ow): (usize, usize, usize),
    fill: T,
    mut group: impl FnMut(usize) -> Result<Vec<T>>,
) -> Result<(Vec<T>, [usize; 4])> {
    let ocg = p.out_channels / p.groups;
    let pixels = oh * ow;
    let mut out = vec![fill; n * p.out_channels * pixels];
    for g in 0..p.groups {
        let y = group(g)?;
        for r in 0..n * pixels {
            let (bi, pix) = (r / pixels, r % pixels);
            for j in 0..ocg {
                out[(bi * p.out_channels + g * ocg + j) * pixels + pix] = y[r * ocg + j];
            }
        }
    }
    Ok((out, [n, p.out_channels, oh, ow]))
}

/// Exact-ish float linear: `y[i][j] = Σ_k x[i][k]·w[j][k] + bias[j]`.
pub fn linear_f64(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<FloatSum> {
    // Each output is its own f64 sum over k in order (the documented reference evaluation);
    // LANES outputs are summed side by side, each in its own lane, so the compiler can keep
    // several independent chains in flight without reassociating any of them.
    const LANES: usize = 8;
    let mut out = vec![
        FloatSum {
            value: 0.0,
            abs_sum: 0.0,
            terms: k + usize::from(bias.is_some()),
        };
        m * n
    ];
    // `w` transposed to k-major, one block of LANES columns at a time (zero-padded).
    let blocks = n.div_ceil(LANES);
    let mut wt = vec![0.0f64; blocks * k * LANES];
    for j in 0..n {
        let (blk, lane) = (j / LANES, j % LANES);
        for kk in 0..k {
            wt[(blk * k + kk) * LANES + lane] = w[j * k + kk] as f64;
        }
    }
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        for blk in 0..blocks {
            let mut s = [0.0f64; LANES];
            let mut a = [0.0f64; LANES];
            let wb = &wt[blk * k * LANES..(blk + 1) * k * LANES];
            for (&xv, wk) in row.iter().zip(wb.chunks_exact(LANES)) {
                let xv = xv as f64;
                for l in 0..LANES {
                    let p = xv * wk[l];
                    s[l] += p;
                    a[l] += p.abs();
                }
            }
            for l in 0..LANES.min(n - blk * LANES) {
                let j = blk * LANES + l;
                let (mut sv, mut av) = (s[l], a[l]);
                if let Some(b) = bias {
                    sv += b[j] as f64;
                    av += (b[j] as f64).abs();
                }
                let o = &mut out[i * n + j];
                o.value = sv;
                o.abs_sum = av;
            }
        }
    }
    out
}

/// Exact-ish float conv2d, NCHW output.
pub fn conv2d_f64(
    x: &[f32],
    shape: &[usize],
    w: &[f32],
    bias: Option<&[f32]>,
    p: &Conv2dParams,
) -> Result<(Vec<FloatSum>, [usize; 4])> {
    let (n, oh, ow) = p.output_dims(shape)?;
    let ocg = p.out_channels / p.groups;
    let (rows, k) = (n * oh * ow, p.k());
    let zero = FloatSum {
        value: 0.0,
        abs_sum: 0.0,
        terms: 0,
    };
    conv2d_by_group(p, (n, oh, ow), zero, |g| {
        let a = im2col(x, shape, p, g, 0.0f32)?;
        let b = weight_matrix(w, p, g);
        let gb = bias.map(|b| &b[g * ocg..(g + 1) * ocg]);
        Ok(linear_f64(&a, rows, k, &b, ocg, gb))
    })
}

/// For diagnosis: the first pair `(k, k+1)` whose exact sum leaves the int16 range, if any.
pub fn first_saturating_pair(a: &[u8], b: &[i8]) -> Option<(usize, i32)> {
    a.chunks(2)
        .zip(b.chunks(2))
        .enumerate()
        .find_map(|(i, (pa, pb))| {
            let s: i32 = pa.iter().zip(pb).map(|(&x, &w)| x as i32 * w as i32).sum();
            (s > i16::MAX as i32 || s < i16::MIN as i32).then_some((2 * i, s))
        })
}

/// Pads every group's input channels to an even count, so that int16 pairs never straddle two
/// kernel taps: oneDNN's int8 convolutions pair channels `(2j, 2j+1)` of one tap and zero-pad an
/// odd channel count (its weights are blocked by 4 input channels). Padding activations hold the
/// zero point and padding weights the weight zero point, so zero-point-folded sums do not change.
pub fn pad_channels_even(
    input: &[u8],
    shape: &[usize],
    a_zp: u8,
    weight: &[i8],
    w_zp: &[i32],
    p: &Conv2dParams,
) -> (Vec<u8>, Vec<usize>, Vec<i8>, Conv2dParams) {
    let icg = p.in_channels / p.groups;
    if icg.is_multiple_of(2) {
        return (input.to_vec(), shape.to_vec(), weight.to_vec(), *p);
    }
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    let picg = icg + 1;
    let mut q = *p;
    q.in_channels = picg * p.groups;
    let mut inp = vec![a_zp; n * q.in_channels * h * w];
    for b in 0..n {
        for g in 0..p.groups {
            for c in 0..icg {
                let src = ((b * p.in_channels + g * icg + c) * h) * w;
                let dst = ((b * q.in_channels + g * picg + c) * h) * w;
                inp[dst..dst + h * w].copy_from_slice(&input[src..src + h * w]);
            }
        }
    }
    let khw = p.kernel_size[0] * p.kernel_size[1];
    let mut wt = Vec::with_capacity(p.out_channels * picg * khw);
    for o in 0..p.out_channels {
        let zp = w_zp[o].clamp(-128, 127) as i8;
        wt.extend_from_slice(&weight[o * icg * khw..(o + 1) * icg * khw]);
        wt.extend(std::iter::repeat_n(zp, khw));
    }
    (inp, vec![n, q.in_channels, h, w], wt, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::Reference;
    use crate::kernels::Accumulation;

    #[test]
    fn linear_f64_sums_each_output_in_k_order() {
        // Sizes around the lane blocking; values whose sum depends on the order of additions.
        for (m, k, n) in [(1, 1, 1), (2, 7, 9), (3, 33, 8), (1, 5, 17)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| [1e16f32, 1.0, -1e16, 3.5e-3, -0.0][i % 5] * (1.0 + i as f32))
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| [1.0f32, -2.5, 1e-8, 7.0, -0.0][(i * 3) % 5])
                .collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 1.0).collect();
            for b in [None, Some(&bias[..])] {
                let got = linear_f64(&x, m, k, &w, n, b);
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut a) = (0.0f64, 0.0f64);
                        for kk in 0..k {
                            let p = x[i * k + kk] as f64 * w[j * k + kk] as f64;
                            s += p;
                            a += p.abs();
                        }
                        if let Some(b) = b {
                            s += b[j] as f64;
                            a += (b[j] as f64).abs();
                        }
                        let g = got[i * n + j];
                        assert_eq!(g.value.to_bits(), s.to_bits(), "{m}x{k}x{n} ({i},{j})");
                        assert_eq!(g.abs_sum.to_bits(), a.to_bits());
                        assert_eq!(g.terms, k + usize::from(b.is_some()));
                    }
                }
            }
        }
    }

    #[test]
    fn conv_acc_matches_direct_definition() {
        let p = Conv2dParams {
            in_channels: 4,
            out_channels: 6,
            kernel_size: [3, 2],
            stride: [2, 1],
            padding: [1, 1],
            dilation: [1, 2],
            groups: 2,
        };
        let shape = [2usize, 4, 5, 6];
        let input: Vec<u8> = (0..shape.iter().product::<usize>())
            .map(|i| (i * 37 % 256) as u8)
            .collect();
        let ws = p.weight_shape();
        let weight: Vec<i8> = (0..ws.iter().product::<usize>())
            .map(|i| ((i * 91 % 256) as i32 - 128) as i8)
            .collect();
        let w_zp = vec![0, 1, -2, 3, 0, 5];
        let a_zp = 17;
        let (acc, os) = conv2d_acc(
            &Reference::new(Accumulation::Exact),
            &input,
            &shape,
            a_zp,
            &weight,
            &w_zp,
            &p,
        )
        .unwrap();
        let exact_padding = conv2d_acc_with_padding(
            &Reference::new(Accumulation::Exact),
            &input,
            &shape,
            a_zp,
            &weight,
            &w_zp,
            &p,
            PaddingTaps::Exact,
        )
        .unwrap();
        assert_eq!(exact_padding, (acc.clone(), os));
        let (n, oh, ow) = (os[0], os[2], os[3]);
        let (icg, ocg) = (2, 3);
        for b in 0..n {
            for o in 0..6 {
                let g = o / ocg;
                for y in 0..oh {
                    for x in 0..ow {
                        let mut s = 0i32;
                        for ci in 0..icg {
                            for kh in 0..3 {
                                for kw in 0..2 {
                                    let iy = (y * 2 + kh) as isize - 1;
                                    let ix = (x + kw * 2) as isize - 1;
                                    let a = if iy < 0 || ix < 0 || iy >= 5 || ix >= 6 {
                                        a_zp
                                    } else {
                                        input[((b * 4 + g * icg + ci) * 5 + iy as usize) * 6
                                            + ix as usize]
                                            as i32
                                    };
                                    let wv = weight[((o * icg + ci) * 3 + kh) * 2 + kw] as i32;
                                    s += (a - a_zp) * (wv - w_zp[o]);
                                }
                            }
                        }
                        assert_eq!(acc[((b * 6 + o) * oh + y) * ow + x], s);
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = Conv2dParams {
            in_channels: 3,
            out_channels: 4,
            kernel_size: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 2,
        };
        assert!(p.output_dims(&[1, 3, 5, 5]).is_err());
        let p = Conv2dParams { groups: 1, ..p };
        assert!(p.output_dims(&[1, 3, 2, 5]).is_err());
        assert!(p.output_dims(&[1, 4, 5, 5]).is_err());
        assert_eq!(p.output_dims(&[1, 3, 5, 5]).unwrap(), (1, 3, 3));
    }

    #[test]
    fn first_saturating_pair_leaves_sums_on_the_int16_bounds_alone() {
        // 255·127 + 191·2 = 32 767 and 255·(−128) + 1·(−128) = −32 768 fit in int16; one step
        // further (192·2, 2·(−128)) they saturate. The pair found is the second, at k = 2.
        let ok = [255u8, 191, 255, 1];
        assert_eq!(first_saturating_pair(&ok, &[127, 2, -128, -128]), None);
        let over = [0u8, 0, 255, 192];
        assert_eq!(
            first_saturating_pair(&over, &[0, 0, 127, 2]),
            Some((2, 32_769))
        );
        let under = [0u8, 0, 255, 2];
        assert_eq!(
            first_saturating_pair(&under, &[0, 0, -128, -128]),
            Some((2, -32_896))
        );
    }

    #[test]
    fn padding_channels_even_keeps_every_images_and_groups_sums() {
        // 2 images, 2 groups of 3 input channels (padded to 4), 2×2 pixels, a 1×2 kernel.
        let p = Conv2dParams {
            in_channels: 6,
            out_channels: 4,
            kernel_size: [1, 2],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 2,
        };
        let shape = [2, 6, 2, 2];
        let x: Vec<u8> = (0..48).map(|i| (i * 37 % 251) as u8).collect();
        let w: Vec<i8> = (0..24).map(|i| (i * 29 % 200) as i8).collect();
        let w_zp = [3, -2, 0, 7];
        let (xp, sp, wp, q) = pad_channels_even(&x, &shape, 9, &w, &w_zp, &p);
        assert_eq!((sp.as_slice(), q.in_channels), ([2, 8, 2, 2].as_slice(), 8));
        // Image 1, group 1, channel 2 lands at channel 6 of image 1; channel 7 holds the zero
        // point.
        assert_eq!(xp[(8 + 6) * 4..(8 + 7) * 4], x[(6 + 5) * 4..(6 + 6) * 4]);
        assert_eq!(xp[(8 + 7) * 4..(8 + 8) * 4], [9; 4]);
        let r = Reference::new(Accumulation::Exact);
        let want = conv2d_acc(&r, &x, &shape, 9, &w, &w_zp, &p).unwrap();
        assert_eq!(conv2d_acc(&r, &xp, &sp, 9, &wp, &w_zp, &q).unwrap(), want);
    }

    #[test]
    fn linear_acc_rejects_each_wrong_length() {
        let r = Reference::new(Accumulation::Exact);
        let (a, w, zp) = ([1u8, 2, 3, 4], [1i8, -1], [0i32]);
        // 2×2 input, one output of 2 weights: (1 − 0)·1 + (2 − 0)·(−1), (3)·1 + (4)·(−1).
        assert_eq!(linear_acc(&r, &a, 2, 2, 0, &w, 1, &zp).unwrap(), [-1, -1]);
        let bad = [
            linear_acc(&r, &a[..3], 2, 2, 0, &w, 1, &zp),
            linear_acc(&r, &a, 2, 2, 0, &w[..1], 1, &zp),
            linear_acc(&r, &a, 2, 2, 0, &w, 1, &[0, 0]),
        ];
        for e in bad {
            let e = e.unwrap_err().to_string();
            assert!(e.contains("weight zero points"), "{e}");
        }
    }

    #[test]
    fn conv_acc_rejects_a_wrong_weight_length_or_zero_point_count() {
        let r = Reference::new(Accumulation::Exact);
        let p = Conv2dParams::square(1, 2, 1, 1, 0);
        let (x, shape) = ([3u8, 4], [1, 1, 1, 2]);
        let (acc, _) = conv2d_acc(&r, &x, &shape, 0, &[1, -1], &[0, 0], &p).unwrap();
        assert_eq!(acc, [3, 4, -3, -4]);
        for (w, zp) in [(&[1i8][..], &[0i32, 0][..]), (&[1, -1], &[0])] {
            let e = conv2d_acc(&r, &x, &shape, 0, w, zp, &p).unwrap_err();
            assert!(
                e.to_string().contains("one zero point per output channel"),
                "{e}"
            );
        }
    }
}
