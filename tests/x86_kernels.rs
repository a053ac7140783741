//! x86 kernels against the reference: GEMM (tile edges, saturation region), fused epilogues,
//! conv2d (im2col) and depthwise 3×3. `QPARITY_REQUIRE_ISA=avx2,avx512vnni` makes the run fail
//! when a requested ISA has no kernel on this CPU (nothing is skipped silently).
#![cfg(target_arch = "x86_64")]

use proptest::prelude::*;
use qparity::gen::SplitMix64 as Rng;
use qparity::kernels::reference::{dot, Reference};
use qparity::kernels::x86::conv::{
    conv2d_reference_raw, Conv2d, Conv2dParams, Depthwise3x3, Layout,
};
use qparity::kernels::x86::{Kernel, PackedLinear};
use qparity::kernels::{Accumulation, Int8Gemm, Isa, Requant};
use qparity::numerics::requant::{FbgemmRequant, QnnpackRequant};

/// Every kernel under test: all SIMD kernels this CPU has, plus the portable ones.
fn kernels() -> Vec<Kernel> {
    let mut v = Kernel::supported();
    v.push(Kernel::portable(Accumulation::Exact));
    v.push(Kernel::portable(Accumulation::PairSaturatingI16));
    v
}

#[test]
fn required_isas_are_exercised() {
    let Ok(req) = std::env::var("QPARITY_REQUIRE_ISA") else {
        eprintln!(
            "QPARITY_REQUIRE_ISA not set; SIMD kernels tested here: {:?}",
            Kernel::supported()
        );
        return;
    };
    for name in req.split(',').filter(|s| !s.trim().is_empty()) {
        let isa = Isa::parse(name).expect("QPARITY_REQUIRE_ISA entry");
        let ks: Vec<_> = Kernel::supported()
            .into_iter()
            .filter(|k| k.isa() == Some(isa))
            .collect();
        assert!(
            !ks.is_empty(),
            "QPARITY_REQUIRE_ISA asks for {name}, but this CPU has no {name} kernel"
        );
        // Exercise each now, so "required" means "ran".
        for k in ks {
            let g = k;
            let (m, n, kk) = (3, 17, 9);
            let a: Vec<u8> = (0..m * kk).map(|i| (i * 37 % 256) as u8).collect();
            let b: Vec<i8> = (0..n * kk).map(|i| (i * 91 % 256) as u8 as i8).collect();
            let (mut c, mut r) = (vec![0; m * n], vec![0; m * n]);
            g.gemm(m, n, kk, &a, &b, &mut c);
            Reference::new(k.accumulation()).gemm(m, n, kk, &a, &b, &mut r);
            assert_eq!(c, r, "{}", k.name());
        }
    }
}

#[test]
fn available_lists_every_supported_kernel() {
    let names: Vec<_> = qparity::kernels::available()
        .iter()
        .map(|k| k.name())
        .collect();
    for k in Kernel::supported() {
        assert!(
            names.contains(&k.name()),
            "{} missing from kernels::available()",
            k.name()
        );
    }
    if Isa::Avx2.detected() {
        assert!(names.contains(&"x86-avx2-pair-sat16"));
    }
}

/// Runs one GEMM on every kernel; returns mismatching element count.
fn check_gemm(m: usize, n: usize, k: usize, a: &[u8], b: &[i8]) -> usize {
    let mut bad = 0;
    for id in kernels() {
        let g = id;
        let (mut c, mut r) = (vec![0; m * n], vec![0; m * n]);
        g.gemm(m, n, k, a, b, &mut c);
        Reference::new(id.accumulation()).gemm(m, n, k, a, b, &mut r);
        bad += c.iter().zip(&r).filter(|(x, y)| x != y).count();
    }
    bad
}

fn conv_params(
    ic: usize,
    oc: usize,
    kernel: (usize, usize),
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
) -> Conv2dParams {
    Conv2dParams {
        in_channels: ic,
        out_channels: oc,
        kernel_size: [kernel.0, kernel.1],
        stride: [stride; 2],
        padding: [pad; 2],
        dilation: [dil; 2],
        groups,
    }
}

fn nchw_to_nhwc(x: &[u8], nb: usize, c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut y = vec![0u8; x.len()];
    for b in 0..nb {
        for ch in 0..c {
            for i in 0..h * w {
                y[(b * h * w + i) * c + ch] = x[(b * c + ch) * h * w + i];
            }
        }
    }
    y
}

#[test]
fn gemm_tile_edges() {
    let mut rng = Rng::new(7);
    let mut total = 0;
    for &m in &[1usize, 2, 3, 4, 5, 6, 7, 9, 13] {
        for &n in &[1usize, 7, 8, 15, 16, 17, 31, 33, 65] {
            for &k in &[1usize, 2, 3, 4, 5, 7, 8, 63, 64, 65, 127, 129] {
                let a: Vec<u8> = (0..m * k).map(|_| rng.next_u32() as u8).collect();
                let b: Vec<i8> = (0..n * k).map(|_| rng.next_u32() as i8).collect();
                assert_eq!(check_gemm(m, n, k, &a, &b), 0, "m={m} n={n} k={k}");
                total += 1;
            }
        }
    }
    eprintln!(
        "gemm_tile_edges: {total} shapes × {} kernels, 0 mismatches",
        kernels().len()
    );
}

#[test]
fn gemm_saturation_region_is_hit_and_matched() {
    // Activations 128..255 with large same-sign weights: pairs reach ±65 280 and must saturate.
    let mut rng = Rng::new(11);
    let (m, n, k) = (5, 19, 67);
    let a: Vec<u8> = (0..m * k)
        .map(|_| 128 + (rng.next_u32() % 128) as u8)
        .collect();
    let b: Vec<i8> = (0..n * k)
        .map(|i| {
            let mag = 100 + (rng.next_u32() % 28) as i8;
            if (i / k) % 2 == 0 {
                mag
            } else {
                -mag - 1
            }
        })
        .collect();
    // Non-vacuity: many pairs exceed the int16 range, so the two models differ.
    let mut saturated_pairs = 0;
    for i in 0..m {
        for j in 0..n {
            for p in (0..k).step_by(2) {
                let s: i32 = (p..(p + 2).min(k))
                    .map(|q| a[i * k + q] as i32 * b[j * k + q] as i32)
                    .sum();
                saturated_pairs += (!(-32768..=32767).contains(&s)) as usize;
            }
        }
    }
    assert!(
        saturated_pairs > m * n * k / 4,
        "only {saturated_pairs} saturating pairs"
    );
    let differs = (0..m * n)
        .filter(|&ij| {
            let (i, j) = (ij / n, ij % n);
            let (ar, br) = (&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]);
            dot(Accumulation::Exact, ar, br) != dot(Accumulation::PairSaturatingI16, ar, br)
        })
        .count();
    assert!(
        differs > m * n / 2,
        "saturation changed only {differs} outputs"
    );
    assert_eq!(check_gemm(m, n, k, &a, &b), 0);
}

/// Random weight scales (1 or `n`) and a float bias for `n` output channels.
fn scales_and_bias(n: usize, per_channel: bool, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let ws = (0..if per_channel { n } else { 1 })
        .map(|_| 0.002 + (rng.next_u32() % 100) as f32 * 1e-4)
        .collect();
    let bias = (0..n)
        .map(|_| (rng.next_u32() % 2001) as f32 / 100.0 - 10.0)
        .collect();
    (ws, bias)
}

fn fbgemm_rule(n: usize, per_channel: bool, relu: bool, rng: &mut Rng, sy: f64) -> Requant {
    let (ws, bias) = scales_and_bias(n, per_channel, rng);
    Requant::Fbgemm(FbgemmRequant::new(
        0.05,
        &ws,
        per_channel,
        Some(&bias),
        n,
        sy,
        (rng.next_u32() % 256) as i32,
        relu,
    ))
}

fn qnnpack_rule(n: usize, per_channel: bool, relu: bool, rng: &mut Rng, sy: f64) -> Requant {
    let (ws, bias) = scales_and_bias(n, per_channel, rng);
    Requant::Qnnpack(QnnpackRequant::new(
        0.05,
        &ws,
        Some(&bias),
        n,
        sy,
        (rng.next_u32() % 256) as i32,
        relu,
    ))
}

/// Expected fused output: the scalar rule on `raw = Σ(a−a_zp)(b−b_zp)` computed by the reference.
#[allow(clippy::too_many_arguments)]
fn expected_linear(
    a: &[u8],
    m: usize,
    a_zp: i32,
    w: &[i8],
    n: usize,
    k: usize,
    zps: &[i32],
    acc: Accumulation,
) -> Vec<i32> {
    let mut raw = vec![0i32; m * n];
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        let asum: i32 = ar.iter().map(|&v| v as i32).sum();
        for j in 0..n {
            let br = &w[j * k..(j + 1) * k];
            let bz = zps[if zps.len() == 1 { 0 } else { j }];
            let bsum: i32 = br.iter().map(|&v| v as i32).sum();
            raw[i * n + j] = dot(acc, ar, br)
                .wrapping_sub(a_zp.wrapping_mul(bsum))
                .wrapping_sub(asum.wrapping_mul(bz))
                .wrapping_add((k as i32).wrapping_mul(a_zp).wrapping_mul(bz));
        }
    }
    raw
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gemm_random(m in 1usize..12, n in 1usize..40, k in 1usize..150, seed: u64, hi in any::<bool>()) {
        let mut rng = Rng::new(seed | 1);
        let a: Vec<u8> = (0..m * k).map(|_| if hi { 128 | rng.next_u32() as u8 } else { rng.next_u32() as u8 }).collect();
        let b: Vec<i8> = (0..n * k).map(|_| rng.next_u32() as i8).collect();
        prop_assert_eq!(check_gemm(m, n, k, &a, &b), 0);
    }

    #[test]
    fn packed_linear_fused_equals_scalar_rule(
        m in 1usize..10, n in 1usize..40, k in 1usize..100, seed: u64,
        per_channel in any::<bool>(), relu in any::<bool>(), qnnpack in any::<bool>(), asym in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed | 1);
        let a: Vec<u8> = (0..m * k).map(|_| rng.next_u32() as u8).collect();
        let w: Vec<i8> = (0..n * k).map(|_| rng.next_u32() as i8).collect();
        let zps: Vec<i32> = if asym { (0..n).map(|_| (rng.next_u32() % 41) as i32 - 20).collect() } else { vec![0] };
        let a_zp = (rng.next_u32() % 256) as i32;
        // Output scale from the accumulator range so outputs are not all clamped.
        let sy = 0.05 * 0.005 * (k as f64).sqrt() * 60.0 / 40.0;
        let rule = if qnnpack { qnnpack_rule(n, per_channel, relu, &mut rng, sy) } else { fbgemm_rule(n, per_channel, relu, &mut rng, sy) };
        for id in kernels() {
            let lin = PackedLinear::with_kernel(id, &w, n, k, &zps, rule.clone()).unwrap();
            let raw = expected_linear(&a, m, a_zp, &w, n, k, &zps, id.accumulation());
            let mut got_raw = vec![0i32; m * n];
            lin.run_raw(&a, m, a_zp, &mut got_raw).unwrap();
            prop_assert_eq!(&got_raw, &raw, "{} raw", id.name());
            let mut out = vec![0u8; m * n];
            lin.run(&a, m, a_zp, &mut out).unwrap();
            let want: Vec<u8> = raw.iter().enumerate().map(|(i, &r)| rule.apply(r, i % n)).collect();
            prop_assert_eq!(&out, &want, "{} u8", id.name());
        }
    }

    #[test]
    fn conv2d_equals_reference_both_layouts(
        icg_sel in 0usize..6, groups in 1usize..4, ocg in 1usize..20, kh in 1usize..4, kw in 1usize..4,
        h in 3usize..9, w in 3usize..9, stride in 1usize..3, pad in 0usize..2, dil in 1usize..3,
        seed: u64, asym in any::<bool>(),
    ) {
        let icg = [1, 2, 3, 4, 8, 16][icg_sel];
        let (ic, oc) = (icg * groups, ocg * groups);
        prop_assume!(h + 2 * pad > dil * (kh - 1) && w + 2 * pad > dil * (kw - 1));
        let mut rng = Rng::new(seed | 1);
        let p = conv_params(ic, oc, (kh, kw), stride, pad, dil, groups);
        let nb = 2;
        let x: Vec<u8> = (0..nb * ic * h * w).map(|_| rng.next_u32() as u8).collect();
        let wt: Vec<i8> = (0..oc * icg * kh * kw).map(|_| rng.next_u32() as i8).collect();
        let zps: Vec<i32> = if asym { (0..oc).map(|_| (rng.next_u32() % 21) as i32 - 10).collect() } else { vec![0] };
        let a_zp = (rng.next_u32() % 256) as i32;
        let sy = 0.05 * 0.005 * ((kh * kw * icg) as f64).sqrt() * 60.0 / 40.0;
        let rule = fbgemm_rule(oc, true, false, &mut rng, sy);
        for id in kernels() {
            let conv = Conv2d::with_kernel(id, &wt, p, &zps, rule.clone()).unwrap();
            let (raw, oh, ow) = conv2d_reference_raw(&x, nb, h, w, a_zp, &wt, &p, &zps, id.accumulation()).unwrap();
            let want: Vec<u8> = raw.iter().enumerate().map(|(i, &r)| rule.apply(r, (i / (oh * ow)) % oc)).collect();
            let mut out = vec![0u8; raw.len()];
            prop_assert_eq!(conv.run(Layout::Nchw, &x, nb, h, w, a_zp, &mut out).unwrap(), (oh, ow));
            prop_assert_eq!(&out, &want, "{} NCHW (implicit: {})", id.name(), conv.is_implicit());
            let mut out_nhwc = vec![0u8; raw.len()];
            let x_nhwc = nchw_to_nhwc(&x, nb, ic, h, w);
            prop_assert_eq!(conv.run(Layout::Nhwc, &x_nhwc, nb, h, w, a_zp, &mut out_nhwc).unwrap(), (oh, ow));
            prop_assert_eq!(out_nhwc, nchw_to_nhwc(&want, nb, oc, oh, ow), "{} NHWC (implicit: {})", id.name(), conv.is_implicit());
        }
    }

    #[test]
    fn depthwise_equals_reference(
        c in 1usize..10, h in 3usize..40, w in 3usize..70, pad in 0usize..2, seed: u64, asym in any::<bool>(), qnnpack in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed | 1);
        let x: Vec<u8> = (0..c * h * w).map(|_| rng.next_u32() as u8).collect();
        let wt: Vec<i8> = (0..c * 9).map(|_| rng.next_u32() as i8).collect();
        let zps: Vec<i32> = if asym { (0..c).map(|_| (rng.next_u32() % 21) as i32 - 10).collect() } else { vec![0] };
        let a_zp = (rng.next_u32() % 256) as i32;
        let rule = if qnnpack { qnnpack_rule(c, true, true, &mut rng, 0.02) } else { fbgemm_rule(c, true, false, &mut rng, 0.02) };
        let dw = Depthwise3x3::new(&wt, c, (1, 1), (pad, pad), &zps, rule.clone()).unwrap();
        let p = conv_params(c, c, (3, 3), 1, pad, 1, c);
        let (raw, oh, ow) = conv2d_reference_raw(&x, 1, h, w, a_zp, &wt, &p, &zps, Accumulation::PairSaturatingI16).unwrap();
        let mut out = vec![0u8; raw.len()];
        dw.run(&x, 1, h, w, a_zp, &mut out).unwrap();
        let want: Vec<u8> = raw.iter().enumerate().map(|(i, &r)| rule.apply(r, i / (oh * ow))).collect();
        prop_assert_eq!(out, want);
    }
}

/// A 3×3 conv problem in the saturation region: full-range activations with large same-sign
/// weights, the reference accumulators under both models, and an FBGEMM rule whose output range
/// spans the accumulators (so outputs are not all clamped).
struct Saturating {
    x: Vec<u8>,
    wt: Vec<i8>,
    p: Conv2dParams,
    sat: Vec<i32>,
    exact: Vec<i32>,
    plane: usize,
    rule: Requant,
}

fn saturating_problem(
    ic: usize,
    oc: usize,
    groups: usize,
    h: usize,
    w: usize,
    seed: u64,
) -> Saturating {
    let mut rng = Rng::new(seed);
    let x: Vec<u8> = (0..ic * h * w)
        .map(|_| 128 + (rng.next_u32() % 128) as u8)
        .collect();
    let wt: Vec<i8> = (0..oc * (ic / groups) * 9)
        .map(|_| 90 + (rng.next_u32() % 38) as i8)
        .collect();
    let p = conv_params(ic, oc, (3, 3), 1, 1, 1, groups);
    let raw = |acc| conv2d_reference_raw(&x, 1, h, w, 0, &wt, &p, &[0], acc).unwrap();
    let (sat, oh, ow) = raw(Accumulation::PairSaturatingI16);
    let (exact, _, _) = raw(Accumulation::Exact);
    let differ = sat.iter().zip(&exact).filter(|(a, b)| a != b).count();
    assert!(
        differ > sat.len() / 2,
        "saturation affected only {differ}/{}",
        sat.len()
    );
    let lo = *sat.iter().chain(&exact).min().unwrap();
    let hi = *sat.iter().chain(&exact).max().unwrap();
    let atws = 0.05f32 * 0.01;
    let bias = vec![-(lo as f32) * atws; oc];
    let sy = atws as f64 * (hi - lo) as f64 / 250.0;
    let rule = Requant::Fbgemm(FbgemmRequant::new(
        0.05,
        &[0.01],
        false,
        Some(&bias),
        oc,
        sy,
        0,
        false,
    ));
    Saturating {
        x,
        wt,
        p,
        sat,
        exact,
        plane: oh * ow,
        rule,
    }
}

impl Saturating {
    /// The requantized reference output of one accumulation model (NCHW).
    fn want(&self, acc: Accumulation) -> Vec<u8> {
        let raw = match acc {
            Accumulation::PairSaturatingI16 => &self.sat,
            Accumulation::Exact => &self.exact,
        };
        raw.iter()
            .enumerate()
            .map(|(i, &r)| self.rule.apply(r, i / self.plane))
            .collect()
    }
}

#[test]
fn conv2d_in_place_feed_saturates_like_fbgemm() {
    // A 3×3 conv with 16 input channels reads A in place from the padded image on every SIMD
    // kernel, and each kernel must equal the reference of its own accumulation model.
    let (h, w) = (9, 11);
    let t = saturating_problem(16, 20, 1, h, w, 17);
    let mut checked = 0;
    for id in Kernel::supported() {
        let conv = Conv2d::with_kernel(id, &t.wt, t.p, &[0], t.rule.clone()).unwrap();
        assert!(conv.is_implicit(), "{} should feed A in place", id.name());
        let want = t.want(id.accumulation());
        let mut out = vec![0u8; want.len()];
        conv.run(Layout::Nchw, &t.x, 1, h, w, 0, &mut out).unwrap();
        assert_eq!(out, want, "{}", id.name());
        checked += 1;
    }
    if Isa::Avx2.detected() {
        assert!(checked >= 2, "AVX2 kernels were not exercised");
    }
}

#[test]
fn depthwise_saturates_like_fbgemm_and_runs_simd() {
    // FBGEMM's depthwise kernel saturates tap pairs; the SIMD path must equal that model.
    let (c, h, w) = (4, 20, 45);
    let t = saturating_problem(c, c, c, h, w, 5);
    let (wt, rule, x) = (&t.wt, &t.rule, &t.x);
    let want = t.want(Accumulation::PairSaturatingI16);
    let dw = Depthwise3x3::new(wt, c, (1, 1), (1, 1), &[0], rule.clone()).unwrap();
    assert_eq!(dw.is_simd(), Isa::Avx2.detected());
    let distinct = want.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct > 20, "outputs span only {distinct} values");
    let mut out = vec![0u8; want.len()];
    dw.run(x, 1, h, w, 0, &mut out).unwrap();
    assert_eq!(out, want);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let rule = Requant::Fbgemm(FbgemmRequant::new(
        0.1,
        &[0.1],
        false,
        None,
        2,
        0.1,
        0,
        false,
    ));
    assert!(PackedLinear::new(&[0; 5], 2, 3, &[0], rule.clone(), Accumulation::Exact).is_err());
    assert!(
        PackedLinear::new(&[0; 6], 2, 3, &[0, 0, 0], rule.clone(), Accumulation::Exact).is_err()
    );
    let lin = PackedLinear::new(&[0; 6], 2, 3, &[0], rule.clone(), Accumulation::Exact).unwrap();
    assert!(lin.run(&[0; 5], 2, 0, &mut [0; 4]).is_err());
    assert!(lin.run(&[0; 6], 2, 300, &mut [0; 4]).is_err());
    let p = conv_params(3, 4, (3, 3), 1, 0, 1, 2);
    assert!(Conv2d::new(&[0; 54], p, &[0], rule, Accumulation::Exact).is_err());
}
