//! ARM kernel suite: every optimized kernel in `kernels::available()` against the reference, the
//! fused requantization epilogues against the scalar rules of `qparity::numerics::requant`, and conv2d
//! against a direct convolution. Runs on aarch64 only (natively or under qemu via
//! `cargo xtask arm-test`).
//!
//! `QPARITY_REQUIRE_ISA=neon,dotprod,i8mm` makes the run fail unless a kernel of each listed ARM
//! level was available and exercised (x86 names in the list are left to the x86 suite).
//! `QPARITY_ARM_REPORT=<file>` appends one summary line per check to that file.
#![cfg(target_arch = "aarch64")]

use std::io::Write;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use qparity::gen::{GemmCase, SplitMix64};
use qparity::kernels::arm::{self, ArmKernel, Conv2dParams, Isa, QGemm, Requant};
use qparity::kernels::{self, Int8Gemm};
use qparity::numerics::requant::{FbgemmRequant, QnnpackRequant};

/// Test-data generator: SplitMix64 plus operand shapes for the exhaustive loops.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    /// Operand bytes; `mode` 0 uniform, 1 extremes only, 2 mostly extremes.
    fn bytes(&mut self, len: usize, mode: u8) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let r = self.next();
                match (mode, r % 4) {
                    (0, _) | (2, 0) => (r >> 8) as u8,
                    _ => [0u8, 255, 0x80, 0x7f][(r >> 8) as usize % 4],
                }
            })
            .collect()
    }
    /// An M×K by N×K GEMM problem whose operands are drawn as [`Rng::bytes`] with `mode`.
    fn gemm(&mut self, m: usize, n: usize, k: usize, mode: u8) -> GemmCase {
        let a = self.bytes(m * k, mode);
        let b = as_i8(self.bytes(n * k, mode));
        GemmCase { m, n, k, a, b }
    }
    /// log-uniform positive f32 in [10^lo, 10^hi].
    fn scale(&mut self, lo: f64, hi: f64) -> f64 {
        let u = self.below(1 << 30) as f64 / (1u64 << 30) as f64;
        10f64.powf(lo + (hi - lo) * u)
    }
}

fn report(line: &str) {
    println!("{line}");
    if let Ok(path) = std::env::var("QPARITY_ARM_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The optimized kernels under test (everything `available()` lists besides the references).
fn optimized() -> Vec<Box<dyn Int8Gemm>> {
    kernels::available()
        .into_iter()
        .filter(|k| !k.name().starts_with("reference"))
        .collect()
}

fn supported_arm() -> Vec<ArmKernel> {
    ArmKernel::ALL
        .into_iter()
        .filter(|k| k.supported())
        .collect()
}

/// `kern` on `case`, into an output prefilled with `fill` (so unwritten elements show).
fn run_gemm(kern: &dyn Int8Gemm, case: &GemmCase, fill: i32) -> Vec<i32> {
    let mut c = vec![fill; case.m * case.n];
    kern.gemm(case.m, case.n, case.k, &case.a, &case.b, &mut c);
    c
}

/// A GEMM with zero points: operands as [`Rng::gemm`], then one weight zero point (even `t`)
/// or one per column, then the activation zero point.
struct ZpCase {
    gemm: GemmCase,
    zb: Vec<i32>,
    za: i32,
}

impl ZpCase {
    /// Problem `t` of a loop, with M, N, K drawn from `1..=m_max`, `1..=n_max`, `0..=k_max`.
    fn random(rng: &mut Rng, t: usize, [m_max, n_max, k_max]: [i64; 3]) -> Self {
        let (m, n, k) = (
            rng.range(1, m_max) as usize,
            rng.range(1, n_max) as usize,
            rng.range(0, k_max) as usize,
        );
        let gemm = rng.gemm(m, n, k, (t % 3) as u8);
        let zb: Vec<i32> = if t.is_multiple_of(2) {
            vec![rng.range(-128, 127) as i32]
        } else {
            (0..n).map(|_| rng.range(-128, 127) as i32).collect()
        };
        let za = rng.range(0, 255) as i32;
        ZpCase { gemm, zb, za }
    }

    fn qgemm(&self) -> QGemm<'_> {
        QGemm {
            m: self.gemm.m,
            n: self.gemm.n,
            k: self.gemm.k,
            a: &self.gemm.a,
            a_zero_point: self.za,
            b: &self.gemm.b,
            b_zero_points: &self.zb,
        }
    }
}

/// `Σ (a − za)(b − zb[j])`, wrapping, straight from the definition.
fn reference_zp(p: &QGemm<'_>) -> Vec<i32> {
    let mut c = vec![0i32; p.m * p.n];
    for i in 0..p.m {
        for j in 0..p.n {
            let zb = p.b_zero_points[if p.b_zero_points.len() == 1 { 0 } else { j }];
            let mut s = 0i32;
            for kk in 0..p.k {
                let x = p.a[i * p.k + kk] as i32 - p.a_zero_point;
                let w = p.b[j * p.k + kk] as i32 - zb;
                s = s.wrapping_add(x * w);
            }
            c[i * p.n + j] = s;
        }
    }
    c
}

fn as_i8(v: Vec<u8>) -> Vec<i8> {
    v.into_iter().map(|x| x as i8).collect()
}

#[test]
fn random_gemms_match_reference() {
    let kernels = optimized();
    let mut runner = TestRunner::new(Config {
        cases: 192,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (1usize..=13, 1usize..=26, 0usize..=90, any::<u64>(), 0u8..3);
    let problems = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |(m, n, k, seed, mode)| {
        let case = Rng::new(seed).gemm(m, n, k, mode);
        for kern in &kernels {
            let want = case.reference(kern.accumulation());
            if run_gemm(kern.as_ref(), &case, i32::MAX) != want {
                return Err(TestCaseError::fail(format!(
                    "{} differs from the reference at M={m} N={n} K={k} seed={seed}",
                    kern.name()
                )));
            }
        }
        problems.set(problems.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    for kern in &kernels {
        report(&format!(
            "random gemm: {}: {} problems, 0 mismatches",
            kern.name(),
            problems.get()
        ));
    }
}

#[test]
fn tile_edges_match_reference() {
    let ms = [1, 2, 3, 4, 5, 7, 8, 9];
    let ns = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24];
    let ks = [
        0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 47, 48, 49, 64, 65,
    ];
    let mut rng = Rng::new(0x5EED_0001);
    for kern in optimized() {
        let (mut count, mut bad) = (0usize, Vec::new());
        for &m in &ms {
            for &n in &ns {
                for &k in &ks {
                    let case = rng.gemm(m, n, k, (count % 3) as u8);
                    let want = case.reference(kern.accumulation());
                    count += 1;
                    if run_gemm(kern.as_ref(), &case, i32::MIN) != want {
                        bad.push((m, n, k));
                    }
                }
            }
        }
        report(&format!(
            "tile edges: {}: {count} problems, {} mismatches",
            kern.name(),
            bad.len()
        ));
        assert!(
            bad.is_empty(),
            "{}: {} mismatches, first at (M, N, K) {:?}",
            kern.name(),
            bad.len(),
            &bad[..bad.len().min(12)]
        );
    }
}

#[test]
fn extreme_operands_and_int32_wraparound() {
    // All-255 × all-(−128) products are −32640 each: K = 70 000 wraps int32.
    let cases: [(usize, usize, usize, u8, i8); 4] = [
        (5, 9, 4099, 255, -128),
        (3, 9, 4099, 255, 127),
        (2, 9, 70_000, 255, -128),
        (1, 17, 70_000, 255, 127),
    ];
    for kern in optimized() {
        for &(m, n, k, x, w) in &cases {
            let case = GemmCase {
                m,
                n,
                k,
                a: vec![x; m * k],
                b: vec![w; n * k],
            };
            assert_eq!(
                run_gemm(kern.as_ref(), &case, 0),
                case.reference(kern.accumulation()),
                "{} at M={m} N={n} K={k} a={x} b={w}",
                kern.name()
            );
        }
        report(&format!(
            "extremes/wraparound: {}: {} problems, 0 mismatches",
            kern.name(),
            cases.len()
        ));
    }
}

#[test]
fn zero_point_gemm_matches_definition() {
    let mut rng = Rng::new(0x5EED_0002);
    for kern in supported_arm() {
        let mut count = 0;
        for t in 0..300 {
            let case = ZpCase::random(&mut rng, t, [11, 21, 70]);
            let p = case.qgemm();
            let mut got = vec![0; p.m * p.n];
            kern.gemm_zp(&p, &mut got).unwrap();
            assert_eq!(got, reference_zp(&p), "{} on {p:?}", kern.name());
            count += 1;
        }
        report(&format!(
            "gemm with zero points: {}: {count} problems, 0 mismatches",
            kern.name()
        ));
    }
}

/// A random requantization rule for `n` channels (or an adversarial one when `wild`).
fn random_rules(rng: &mut Rng, n: usize, wild: bool) -> (QnnpackRequant, FbgemmRequant) {
    let per_channel = rng.below(2) == 0;
    let ws: Vec<f32> = (0..if per_channel { n } else { 1 })
        .map(|_| rng.scale(-4.0, -1.0) as f32)
        .collect();
    let bias: Vec<f32> = (0..n)
        .map(|_| (rng.range(-200_000, 200_000) as f32) / 1000.0)
        .collect();
    let with_bias = rng.below(3) != 0;
    let sx = rng.scale(-3.0, 0.0);
    // Typical layers have s_y within a few orders of magnitude of s_x·s_w·sqrt(K).
    let sy = if wild {
        rng.scale(-12.0, -6.0)
    } else {
        rng.scale(-3.0, 1.0)
    };
    let zp = rng.range(0, 255) as i32;
    let relu = rng.below(2) == 0;
    let b = with_bias.then_some(bias.as_slice());
    let q = QnnpackRequant::new(sx, &ws, b, n, sy, zp, relu);
    let f = FbgemmRequant::new(sx, &ws, per_channel, b, n, sy, zp, relu);
    (q, f)
}

#[test]
fn fused_epilogues_match_scalar_rules() {
    let mut rng = Rng::new(0x5EED_0003);
    for kern in supported_arm() {
        let mut count = 0;
        for t in 0..240 {
            let case = ZpCase::random(&mut rng, t, [10, 19, 80]);
            let p = case.qgemm();
            let (m, n) = (p.m, p.n);
            let (mut q, mut f) = random_rules(&mut rng, n, t % 5 == 4);
            if t % 7 == 6 {
                // Out-of-range and NaN pre-round values take the i32::MIN path of the rules.
                q.scale[0] = f32::INFINITY;
                q.scale[n - 1] = 1e30;
                f.multiplier[0] = f32::NAN;
                f.bias_term[n - 1] = -3e38;
            }
            let raw = reference_zp(&p);
            for (rule, name) in [
                (Requant::Qnnpack(&q), "qnnpack"),
                (Requant::Fbgemm(&f), "fbgemm"),
            ] {
                let want: Vec<u8> = (0..m * n)
                    .map(|idx| match rule {
                        Requant::Qnnpack(r) => r.apply(raw[idx], idx % n),
                        Requant::Fbgemm(r) => r.apply(raw[idx], idx % n),
                    })
                    .collect();
                let mut got = vec![0xA5; m * n];
                kern.gemm_requant(&p, rule, &mut got).unwrap();
                assert_eq!(got, want, "{} {name} epilogue on {p:?}", kern.name());
                count += 1;
            }
        }
        report(&format!(
            "fused requant (qnnpack + fbgemm): {}: {count} problems, 0 mismatches",
            kern.name()
        ));
    }
}

/// Direct convolution from the definition, then the scalar rule.
#[allow(clippy::too_many_arguments)]
fn direct_conv(
    input: &[u8],
    [n, ic, h, w]: [usize; 4],
    za: i32,
    weight: &[i8],
    zw: &[i32],
    prm: &Conv2dParams,
    rule: &QnnpackRequant,
) -> Vec<u8> {
    let [oc, icg, kh, kw] = prm.weight_shape();
    let oh = (h + 2 * prm.padding[0] - prm.dilation[0] * (kh - 1) - 1) / prm.stride[0] + 1;
    let ow = (w + 2 * prm.padding[1] - prm.dilation[1] * (kw - 1) - 1) / prm.stride[1] + 1;
    let ocg = oc / prm.groups;
    let mut out = vec![0u8; n * oc * oh * ow];
    for img in 0..n {
        for o in 0..oc {
            let g = o / ocg;
            let z = zw[if zw.len() == 1 { 0 } else { o }];
            for y in 0..oh {
                for x in 0..ow {
                    let mut s = 0i32;
                    for c in 0..icg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * prm.stride[0] + ky * prm.dilation[0]) as isize
                                    - prm.padding[0] as isize;
                                let ix = (x * prm.stride[1] + kx * prm.dilation[1]) as isize
                                    - prm.padding[1] as isize;
                                let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                {
                                    za
                                } else {
                                    input[((img * ic + g * icg + c) * h + iy as usize) * w
                                        + ix as usize] as i32
                                };
                                let wv = weight[((o * icg + c) * kh + ky) * kw + kx] as i32;
                                s = s.wrapping_add((v - za) * (wv - z));
                            }
                        }
                    }
                    out[((img * oc + o) * oh + y) * ow + x] = rule.apply(s, o);
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_direct_convolution() {
    let mut rng = Rng::new(0x5EED_0004);
    for kern in supported_arm() {
        let mut count = 0;
        for t in 0..60 {
            let groups = [1, 1, 2, 3][t % 4];
            let icg = rng.range(1, 4) as usize;
            let ocg = rng.range(1, 6) as usize;
            let (ic, oc) = (icg * groups, ocg * groups);
            let (kh, kw) = (rng.range(1, 3) as usize, rng.range(1, 3) as usize);
            let prm = Conv2dParams {
                in_channels: ic,
                out_channels: oc,
                kernel_size: [kh, kw],
                stride: [rng.range(1, 2) as usize, rng.range(1, 2) as usize],
                padding: [rng.range(0, 2) as usize, rng.range(0, 2) as usize],
                dilation: [rng.range(1, 2) as usize, rng.range(1, 2) as usize],
                groups,
            };
            let n = rng.range(1, 2) as usize;
            let h = rng.range((prm.dilation[0] * (kh - 1) + 1) as i64, 9) as usize;
            let w = rng.range((prm.dilation[1] * (kw - 1) + 1) as i64, 9) as usize;
            let input = rng.bytes(n * ic * h * w, (t % 3) as u8);
            let weight = as_i8(rng.bytes(oc * icg * kh * kw, (t % 3) as u8));
            let za = rng.range(0, 255) as i32;
            let zw: Vec<i32> = if t % 2 == 0 {
                vec![rng.range(-128, 127) as i32]
            } else {
                (0..oc).map(|_| rng.range(-128, 127) as i32).collect()
            };
            let (q, _) = random_rules(&mut rng, oc, false);
            let (got, shape) = arm::conv2d(
                kern,
                &input,
                [n, ic, h, w],
                za,
                &weight,
                &zw,
                &prm,
                Requant::Qnnpack(&q),
            )
            .unwrap();
            let want = direct_conv(&input, [n, ic, h, w], za, &weight, &zw, &prm, &q);
            assert_eq!(shape.iter().product::<usize>(), want.len());
            assert_eq!(
                got,
                want,
                "{} conv {prm:?} in {:?}",
                kern.name(),
                [n, ic, h, w]
            );
            count += 1;
        }
        report(&format!(
            "conv2d (im2col + fused qnnpack): {}: {count} problems, 0 mismatches",
            kern.name()
        ));
    }
}

#[test]
fn bad_input_is_an_error() {
    let a = [1u8; 6];
    let b = [1i8; 6];
    let mut c = [0i32; 4];
    let ok = QGemm {
        m: 2,
        n: 2,
        k: 3,
        a: &a,
        a_zero_point: 3,
        b: &b,
        b_zero_points: &[0],
    };
    let kern = ArmKernel::Neon;
    assert!(kern.gemm_zp(&ok, &mut c).is_ok());
    assert!(kern.gemm_zp(&QGemm { k: 2, ..ok }, &mut c).is_err());
    assert!(kern
        .gemm_zp(
            &QGemm {
                a_zero_point: 256,
                ..ok
            },
            &mut c
        )
        .is_err());
    assert!(kern
        .gemm_zp(
            &QGemm {
                b_zero_points: &[0, 0, 0],
                ..ok
            },
            &mut c
        )
        .is_err());
    assert!(kern
        .gemm_zp(
            &QGemm {
                b_zero_points: &[128],
                ..ok
            },
            &mut c
        )
        .is_err());
    assert!(kern.gemm_zp(&ok, &mut c[..3]).is_err());
    let q = QnnpackRequant::new(0.1, &[0.01], None, 1, 0.5, 3, false);
    let mut out = [0u8; 4];
    assert!(kern
        .gemm_requant(&ok, Requant::Qnnpack(&q), &mut out)
        .is_err());
    // 2 → 2 channels, 2×1 kernel: 8 weights, as passed below.
    let prm = Conv2dParams {
        in_channels: 2,
        out_channels: 2,
        kernel_size: [2, 1],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
    };
    let q2 = QnnpackRequant::new(0.1, &[0.01], None, 2, 0.5, 3, false);
    let conv = |shape, prm: Conv2dParams| {
        arm::conv2d(
            kern,
            &[0u8; 8],
            shape,
            0,
            &[0i8; 8],
            &[0],
            &prm,
            Requant::Qnnpack(&q2),
        )
    };
    assert!(conv([1, 2, 2, 2], prm).is_ok());
    assert!(
        conv(
            [1, 2, 2, 2],
            Conv2dParams {
                kernel_size: [1, 1],
                ..prm
            }
        )
        .is_err(),
        "8 weights for 4"
    );
    assert!(
        conv([1, 2, 2, 2], Conv2dParams { groups: 2, ..prm }).is_err(),
        "4 weights for 8"
    );
    for groups in [0, 3] {
        assert!(
            conv([1, 2, 2, 2], Conv2dParams { groups, ..prm }).is_err(),
            "groups {groups}"
        );
    }
    assert!(
        conv([1, 1, 2, 4], prm).is_err(),
        "input has 1 channel, layer 2"
    );
    assert!(conv(
        [1, 2, 2, 2],
        Conv2dParams {
            stride: [0, 1],
            ..prm
        }
    )
    .is_err());
    assert!(
        conv(
            [1, 1, 2, 4],
            Conv2dParams {
                in_channels: 1,
                out_channels: 1,
                kernel_size: [4, 2],
                ..prm
            }
        )
        .is_err(),
        "kernel taller than input"
    );
}

#[test]
fn best_kernel_is_the_widest_supported() {
    let best = ArmKernel::best();
    assert!(best.supported());
    let want = if Isa::I8mm.detected() {
        ArmKernel::I8mmUsmmla
    } else if Isa::Dotprod.detected() {
        ArmKernel::DotprodSdot
    } else {
        ArmKernel::Neon
    };
    assert_eq!(best, want);
    let names: Vec<&str> = arm::available().iter().map(|k| k.name()).collect();
    let want_names: Vec<&str> = supported_arm().iter().map(|k| k.name()).collect();
    assert_eq!(names, want_names);
    assert!(
        names.contains(&"arm-neon-smlal"),
        "NEON is part of every aarch64 CPU"
    );
}

/// Names that belong to the x86 suite's use of the same variable.
fn is_x86_isa(name: &str) -> bool {
    ["avx", "sse", "vnni", "amx", "fma", "bmi"]
        .iter()
        .any(|p| name.starts_with(p))
}

#[test]
fn required_isas_were_exercised() {
    let Ok(list) = std::env::var("QPARITY_REQUIRE_ISA") else {
        return;
    };
    let case = Rng::new(0x5EED_0005).gemm(7, 19, 53, 0);
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if is_x86_isa(name) {
            continue;
        }
        let isa = Isa::from_name(name).unwrap_or_else(|| {
            panic!("QPARITY_REQUIRE_ISA: unknown ISA {name:?} (ARM knows neon, dotprod, i8mm)")
        });
        let prefix = format!("arm-{}-", isa.name());
        let kernels: Vec<_> = kernels::available()
            .into_iter()
            .filter(|kern| kern.name().starts_with(&prefix))
            .collect();
        assert!(
            !kernels.is_empty(),
            "QPARITY_REQUIRE_ISA asks for {name}, but no {name} kernel is available on this CPU"
        );
        for kern in &kernels {
            assert_eq!(
                run_gemm(kern.as_ref(), &case, 0),
                case.reference(kern.accumulation()),
                "{}",
                kern.name()
            );
            report(&format!("required ISA {name}: exercised {}", kern.name()));
        }
    }
}
