//! The kernel conformance suite: one set of checks, written once, that every kernel must pass
//! bit for bit against the [`reference`](mod@reference) models, whatever its instruction set.
//!
//! Three levels, each a set of public check functions returning an [`Outcome`]:
//!
//! * [`Int8Gemm`] (the raw `Σ a·b` of any kernel): tile edges ([`gemm_tile_edges`]: M = 1, N not
//!   a multiple of any vector width, K below, at and above every block, K odd and 0), the int16
//!   saturation region ([`gemm_saturation`], which first proves that its operands saturate a large
//!   share of pairs), extreme operands and int32 wrap-around ([`gemm_extremes`]), random shapes
//!   ([`gemm_random`]);
//! * [`QuantGemm`] (zero points folded, requantization fused): every activation zero-point
//!   class and asymmetric per-tensor and per-channel weights ([`qgemm_zero_points`]), FBGEMM and
//!   QNNPACK epilogues against the scalar rules of [`crate::numerics::requant`], NaN and
//!   out-of-range values included ([`qgemm_epilogues`]), bad input ([`qgemm_bad_input`]);
//! * [`QuantConv`]: NCHW and NHWC, groups, groupwise and depthwise, dilation, stride, padding,
//!   kernel shapes ([`qconv_layouts`]), the saturation region through im2col ([`qconv_saturation`]),
//!   bad input ([`qconv_bad_input`]).
//!
//! A kernel outside this crate runs the suite from its own tests with
//! [`kernel_conformance_tests!`](crate::kernel_conformance_tests), which writes one `#[test]`
//! per check over a list of kernels:
//!
//! ```
//! mod my_kernel_conformance {
//!     use qparity::kernels::{Accumulation, Int8Gemm};
//!
//!     /// A (slow) kernel of my own.
//!     #[derive(Debug)]
//!     struct Mine;
//!     impl Int8Gemm for Mine {
//!         fn name(&self) -> &'static str { "mine" }
//!         fn accumulation(&self) -> Accumulation { Accumulation::Exact }
//!         fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
//!             for i in 0..m {
//!                 for j in 0..n {
//!                     c[i * n + j] = (0..k).fold(0i32, |s, t| {
//!                         s.wrapping_add(a[i * k + t] as i32 * b[j * k + t] as i32)
//!                     });
//!                 }
//!             }
//!         }
//!     }
//!
//!     qparity::kernel_conformance_tests!(vec![Box::new(Mine) as Box<dyn Int8Gemm>]);
//! }
//! # fn main() {}
//! ```
//!
//! A kernel with fused entry points returns them from [`Int8Gemm::quant_gemm`] and
//! [`Int8Gemm::quant_conv`]; conv-only kernels (such as a depthwise 3×3 one) are passed as the
//! macro's second argument. Each check reports how many problems and elements it compared; the
//! runners also append that line to the file named by `QPARITY_CONFORMANCE_REPORT`.
//!
//! `QPARITY_REQUIRE_ISA` (see [`Isa::required`]) makes [`run_required_isas`] fail unless the
//! list holds a kernel of every named extension and it passed a GEMM: a CPU without the
//! extension fails the run instead of skipping it.

use super::quant::{Layout, Output, QConv, QGemm, QuantConv, QuantGemm, Requant};
use super::{reference, Accumulation, Int8Gemm, Isa};
use crate::geometry::Conv2dParams;
use crate::numerics::requant::{FbgemmRequant, QnnpackRequant};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a passing check compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Problems run.
    pub problems: usize,
    /// Output elements compared (or bad inputs rejected).
    pub elements: usize,
}

impl Stats {
    fn add(&mut self, elements: usize) {
        self.problems += 1;
        self.elements += elements;
    }
}

/// A failed check: the kernel, the check and the first disagreement.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kernel: String,
    pub check: &'static str,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.check, self.kernel, self.message)
    }
}

impl std::error::Error for Failure {}

/// The result of one check on one kernel.
pub type Outcome = Result<Stats, Failure>;

fn fail(kernel: &str, check: &'static str, message: String) -> Failure {
    Failure {
        kernel: kernel.to_string(),
        check,
        message,
    }
}

/// SplitMix64: the suite's deterministic operand generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// Operand bytes: `mode` 0 uniform, 1 the extremes 0, 255, 128, 127 only, 2 mostly extremes.
    fn bytes(&mut self, len: usize, mode: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let r = self.next();
                match (mode % 3, r % 4) {
                    (0, _) | (2, 0) => (r >> 8) as u8,
                    _ => [0u8, 255, 0x80, 0x7f][(r >> 8) as usize % 4],
                }
            })
            .collect()
    }

    fn i8s(&mut self, len: usize, mode: usize) -> Vec<i8> {
        self.bytes(len, mode).into_iter().map(|v| v as i8).collect()
    }

    /// Log-uniform in `[10^lo, 10^hi]`.
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = self.below(1 << 30) as f64 / (1u64 << 30) as f64;
        10f64.powf(lo + (hi - lo) * u)
    }
}

/// Number of positions where `got` and `want` differ, and the first one.
fn compare<T: PartialEq + fmt::Debug>(got: &[T], want: &[T]) -> Option<(usize, String)> {
    if got.len() != want.len() {
        return Some((
            usize::MAX,
            format!("{} outputs, expected {}", got.len(), want.len()),
        ));
    }
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    bad.first().map(|&i| {
        (
            bad.len(),
            format!(
                "{} of {} outputs differ; first at index {i}: got {:?}, expected {:?}",
                bad.len(),
                got.len(),
                got[i],
                want[i]
            ),
        )
    })
}

/// Runs `f`, turning a panic into a failure message.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        format!("panicked: {msg}")
    })
}

// ---------------------------------------------------------------------------------------------
// Level 1: the raw GEMM.

/// One raw GEMM against the reference of the kernel's model.
fn check_gemm(
    k: &dyn Int8Gemm,
    check: &'static str,
    (m, n, kk): (usize, usize, usize),
    a: &[u8],
    b: &[i8],
) -> Result<usize, Failure> {
    let mut want = vec![0i32; m * n];
    reference::Reference::new(k.accumulation()).gemm(m, n, kk, a, b, &mut want);
    // Prefilled so that an output the kernel never writes shows.
    let mut got = vec![i32::MIN + 7; m * n];
    no_panic(|| k.gemm(m, n, kk, a, b, &mut got))
        .map_err(|e| fail(k.name(), check, format!("M={m} N={n} K={kk}: {e}")))?;
    match compare(&got, &want) {
        None => Ok(m * n),
        Some((_, msg)) => Err(fail(k.name(), check, format!("M={m} N={n} K={kk}: {msg}"))),
    }
}

/// Every combination of small M, N and K around tile, vector and block sizes (M = 1, M around
/// the 16-row AMX tile and 32-row AMX block, N not a multiple of a vector width, K odd, below, at
/// and above 4/8/16/32/64/128-element blocks, K = 0), and long K (up to 4097) on a few M × N,
/// some with enough rows that AMX gathers A in more than one pass.
pub fn gemm_tile_edges(k: &dyn Int8Gemm) -> Outcome {
    const MS: [usize; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33];
    const NS: [usize; 15] = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 65];
    const KS: [usize; 19] = [
        0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129,
    ];
    const LONG_K: [usize; 13] = [
        255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4097,
    ];
    let mut rng = Rng::new(0x5EED_0001);
    let mut st = Stats::default();
    let mut mode = 0;
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    for &m in &MS {
        for &n in &NS {
            shapes.extend(KS.iter().map(|&kk| (m, n, kk)));
        }
    }
    for (m, n) in [(1, 1), (5, 17), (13, 33), (16, 1), (47, 33), (130, 65)] {
        shapes.extend(LONG_K.iter().map(|&kk| (m, n, kk)));
    }
    for (m, n, kk) in shapes {
        let a = rng.bytes(m * kk, mode);
        let b = rng.i8s(n * kk, mode);
        mode += 1;
        st.add(check_gemm(k, "gemm_tile_edges", (m, n, kk), &a, &b)?);
    }
    Ok(st)
}

/// Operands in the int16 saturation region: activations 128..=255 against large weights of one
/// sign per column. The check first asserts that at least a quarter of all `(k0,k1)` pairs leave
/// the int16 range and that more than half of the outputs differ between the two accumulation
/// models (so a kernel of the wrong model fails), then compares with the reference.
pub fn gemm_saturation(k: &dyn Int8Gemm) -> Outcome {
    const CHECK: &str = "gemm_saturation";
    let mut rng = Rng::new(0x5EED_0002);
    let mut st = Stats::default();
    for (m, n, kk) in [(5, 19, 67), (1, 33, 1024), (13, 17, 4099), (7, 48, 2)] {
        let a: Vec<u8> = (0..m * kk).map(|_| rng.range(128, 255) as u8).collect();
        let b: Vec<i8> = (0..n * kk)
            .map(|i| {
                let mag = rng.range(100, 127) as i8;
                if (i / kk) % 2 == 0 {
                    mag
                } else {
                    -mag - 1
                }
            })
            .collect();
        let (mut pairs, mut saturated, mut differ) = (0usize, 0usize, 0usize);
        for i in 0..m {
            let ar = &a[i * kk..(i + 1) * kk];
            for j in 0..n {
                let br = &b[j * kk..(j + 1) * kk];
                for (pa, pb) in ar.chunks(2).zip(br.chunks(2)) {
                    let s: i32 = pa.iter().zip(pb).map(|(&x, &w)| x as i32 * w as i32).sum();
                    pairs += 1;
                    saturated += usize::from(reference::sat16(s) != s);
                }
                let exact = reference::dot(Accumulation::Exact, ar, br);
                let pair = reference::dot(Accumulation::PairSaturatingI16, ar, br);
                differ += usize::from(exact != pair);
            }
        }
        if saturated * 4 < pairs || differ * 2 <= m * n {
            return Err(fail(
                k.name(),
                CHECK,
                format!(
                    "non-vacuity: M={m} N={n} K={kk} saturates only {saturated} of {pairs} pairs, \
                     {differ} of {} outputs differ between the models",
                    m * n
                ),
            ));
        }
        st.add(check_gemm(k, CHECK, (m, n, kk), &a, &b)?);
    }
    Ok(st)
}

/// Constant extreme operands: every product ±32 640 or 32 385, with K up to 70 000 so exact
/// int32 sums wrap around.
pub fn gemm_extremes(k: &dyn Int8Gemm) -> Outcome {
    let mut st = Stats::default();
    for (m, n, kk, x, w) in [
        (5, 9, 4099, 255u8, -128i8),
        (3, 9, 4099, 255, 127),
        (2, 9, 70_000, 255, -128),
        (1, 17, 70_000, 255, 127),
        (4, 16, 64, 0, -128),
        (6, 33, 31, 128, -128),
    ] {
        let (a, b) = (vec![x; m * kk], vec![w; n * kk]);
        st.add(check_gemm(k, "gemm_extremes", (m, n, kk), &a, &b)?);
    }
    Ok(st)
}

/// `cases` random problems (M ≤ 13, N ≤ 40, K ≤ 150; uniform, extreme or mixed operands).
pub fn gemm_random(k: &dyn Int8Gemm, cases: usize, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut st = Stats::default();
    for t in 0..cases {
        let (m, n, kk) = (
            rng.range(1, 13) as usize,
            rng.range(1, 40) as usize,
            rng.range(0, 150) as usize,
        );
        let a = rng.bytes(m * kk, t);
        let b = rng.i8s(n * kk, t);
        st.add(check_gemm(k, "gemm_random", (m, n, kk), &a, &b)?);
    }
    Ok(st)
}

// ---------------------------------------------------------------------------------------------
// Level 2: zero points and fused epilogues.

/// A random quantized GEMM with every zero-point class.
struct ZpCase {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<u8>,
    b: Vec<i8>,
    za: i32,
    zb: Vec<i32>,
}

impl ZpCase {
    /// Problem `t`: shapes up to `max`, activation zero point cycling 0, 255, 128, random; weight
    /// zero points per tensor (0, −128, 127, random) or per channel (random, with extremes).
    fn new(rng: &mut Rng, t: usize, max: (i64, i64, i64)) -> Self {
        let (m, n, k) = (
            rng.range(1, max.0) as usize,
            rng.range(1, max.1) as usize,
            rng.range(1, max.2) as usize,
        );
        let a = rng.bytes(m * k, t);
        let b = rng.i8s(n * k, t / 3);
        let za = match t % 4 {
            0 => 0,
            1 => 255,
            2 => 128,
            _ => rng.range(1, 254) as i32,
        };
        let zb = match (t / 4) % 5 {
            0 => vec![0],
            1 => vec![-128],
            2 => vec![127],
            3 => vec![rng.range(-128, 127) as i32],
            _ => (0..n)
                .map(|j| match j % 4 {
                    0 => -128,
                    1 => 127,
                    _ => rng.range(-128, 127) as i32,
                })
                .collect(),
        };
        ZpCase {
            m,
            n,
            k,
            a,
            b,
            za,
            zb,
        }
    }

    fn qgemm(&self) -> QGemm<'_> {
        QGemm {
            m: self.m,
            n: self.n,
            k: self.k,
            a: &self.a,
            a_zero_point: self.za,
            b: &self.b,
            b_zero_points: &self.zb,
        }
    }
}

fn describe(p: &QGemm<'_>) -> String {
    format!(
        "M={} N={} K={} a_zp={} b_zp={:?}",
        p.m,
        p.n,
        p.k,
        p.a_zero_point,
        &p.b_zero_points[..p.b_zero_points.len().min(4)]
    )
}

/// The zero-point-folded accumulators on every zero-point class, against
/// [`reference::gemm_zp`] of the kernel's model.
pub fn qgemm_zero_points(k: &dyn QuantGemm) -> Outcome {
    const CHECK: &str = "qgemm_zero_points";
    let mut rng = Rng::new(0x5EED_0003);
    let mut st = Stats::default();
    for t in 0..300 {
        let case = ZpCase::new(&mut rng, t, (11, 37, 140));
        let p = case.qgemm();
        let want = reference::gemm_zp(k.accumulation(), &p).map_err(|e| {
            fail(
                k.name(),
                CHECK,
                format!("reference rejected {}: {e}", describe(&p)),
            )
        })?;
        let mut got = vec![i32::MIN + 7; p.m * p.n];
        let res = no_panic(|| k.qgemm(&p, Output::Raw(&mut got)))
            .map_err(|e| fail(k.name(), CHECK, format!("{}: {e}", describe(&p))))?;
        res.map_err(|e| fail(k.name(), CHECK, format!("{}: error {e}", describe(&p))))?;
        if let Some((_, msg)) = compare(&got, &want) {
            return Err(fail(k.name(), CHECK, format!("{}: {msg}", describe(&p))));
        }
        st.add(got.len());
    }
    Ok(st)
}

/// Rules for `n` channels whose output range spans `raw` (so outputs are mostly not clamped), or
/// adversarial ones: tiny or huge scales, and NaN, ±∞ and out-of-range pre-round values.
fn rules(rng: &mut Rng, n: usize, raw: &[i32], kind: usize) -> Vec<Requant> {
    let lo = raw.iter().copied().min().unwrap_or(0) as f64;
    let hi = raw.iter().copied().max().unwrap_or(0) as f64;
    let per_channel = kind.is_multiple_of(2);
    let ws: Vec<f32> = (0..if per_channel { n } else { 1 })
        .map(|_| rng.log_uniform(-3.0, -1.5) as f32)
        .collect();
    let sx = rng.log_uniform(-2.0, -0.5);
    let w0 = ws[0] as f64;
    // Output scale so that the accumulator range maps onto about 200 steps.
    let sy = match kind % 5 {
        4 => rng.log_uniform(-12.0, -6.0),
        _ => (sx * w0 * (hi - lo).max(1.0) / 200.0).max(1e-12),
    };
    let zp = rng.range(0, 255) as i32;
    let relu = kind % 3 == 1;
    let bias: Option<Vec<f32>> = (kind % 4 != 3).then(|| {
        (0..n)
            .map(|_| {
                (-(lo + hi) / 2.0 * sx * w0 + rng.range(-1000, 1000) as f64 * 1e-3 * sx * w0 * 10.0)
                    as f32
            })
            .collect()
    });
    let mut f = FbgemmRequant::new(sx, &ws, per_channel, bias.as_deref(), n, sy, zp, relu);
    let mut q = QnnpackRequant::new(sx, &ws, bias.as_deref(), n, sy, zp, relu);
    if kind % 7 == 6 {
        // NaN, ±∞ and out-of-range pre-round values take the i32::MIN path of the rules.
        q.scale[0] = f32::INFINITY;
        q.scale[n - 1] = 1e30;
        if let Some(x) = q.scale.get_mut(n / 2) {
            *x = f32::NAN;
        }
        f.multiplier[0] = f32::NAN;
        f.bias_term[n - 1] = -3e38;
        if n > 2 {
            f.bias_term[1] = f32::INFINITY;
        }
    }
    vec![Requant::Fbgemm(f), Requant::Qnnpack(q)]
}

/// FBGEMM and QNNPACK epilogues (per-tensor and per-channel scales, with and without bias and
/// ReLU, adversarial values) against the scalar rules applied to [`reference::gemm_zp`]. Asserts
/// that at least a fifth of the compared outputs lie strictly between the clamps.
pub fn qgemm_epilogues(k: &dyn QuantGemm) -> Outcome {
    const CHECK: &str = "qgemm_epilogues";
    let mut rng = Rng::new(0x5EED_0004);
    let mut st = Stats::default();
    let mut inside = 0usize;
    for t in 0..240 {
        let case = ZpCase::new(&mut rng, t, (10, 41, 90));
        let p = case.qgemm();
        let raw = reference::gemm_zp(k.accumulation(), &p).map_err(|e| {
            fail(
                k.name(),
                CHECK,
                format!("reference rejected {}: {e}", describe(&p)),
            )
        })?;
        for rule in rules(&mut rng, p.n, &raw, t) {
            let want: Vec<u8> = (0..raw.len())
                .map(|i| rule.apply(raw[i], i % p.n))
                .collect();
            let mut got = vec![0xA5u8; raw.len()];
            let res = no_panic(|| k.qgemm(&p, Output::Requantized(&rule, &mut got)))
                .map_err(|e| fail(k.name(), CHECK, format!("{}: {e}", describe(&p))))?;
            res.map_err(|e| fail(k.name(), CHECK, format!("{}: error {e}", describe(&p))))?;
            if let Some((_, msg)) = compare(&got, &want) {
                return Err(fail(
                    k.name(),
                    CHECK,
                    format!("{} with {rule:?}: {msg}", describe(&p)),
                ));
            }
            let zp = rule.out_zero_point() as u8;
            inside += want
                .iter()
                .filter(|&&v| v > 0 && v < 255 && v != zp)
                .count();
            st.add(got.len());
        }
    }
    if inside * 5 < st.elements {
        return Err(fail(
            k.name(),
            CHECK,
            format!(
                "non-vacuity: only {inside} of {} outputs lie strictly between the clamps",
                st.elements
            ),
        ));
    }
    Ok(st)
}

/// Expects `f` to return an error (not a panic, not success).
fn expect_err<T>(
    kernel: &str,
    check: &'static str,
    what: &str,
    f: impl FnOnce() -> crate::Result<T>,
) -> Result<usize, Failure> {
    match no_panic(f) {
        Ok(Err(e)) if !e.to_string().is_empty() => Ok(1),
        Ok(Err(_)) => Err(fail(kernel, check, format!("{what}: empty error message"))),
        Ok(Ok(_)) => Err(fail(kernel, check, format!("{what}: accepted"))),
        Err(e) => Err(fail(kernel, check, format!("{what}: {e}"))),
    }
}

/// Wrong lengths, out-of-range zero points and rules that do not fit are errors, not panics.
pub fn qgemm_bad_input(k: &dyn QuantGemm) -> Outcome {
    const CHECK: &str = "qgemm_bad_input";
    let a = [7u8; 6];
    let b = [3i8; 6];
    let ok = QGemm {
        m: 2,
        n: 2,
        k: 3,
        a: &a,
        a_zero_point: 3,
        b: &b,
        b_zero_points: &[0],
    };
    let rule = |n: usize, zp: i32| {
        Requant::Qnnpack(QnnpackRequant::new(0.1, &[0.01], None, n, 0.5, zp, false))
    };
    let good = rule(2, 3);
    // The baseline is accepted, so each rejection below is about its one defect.
    let mut out = [0u8; 4];
    let mut raw = [0i32; 4];
    k.qgemm(&ok, Output::Raw(&mut raw))
        .and_then(|_| k.qgemm(&ok, Output::Requantized(&good, &mut out)))
        .map_err(|e| {
            fail(
                k.name(),
                CHECK,
                format!("a valid problem was rejected: {e}"),
            )
        })?;
    let mut st = Stats::default();
    let cases: Vec<(&str, QGemm<'_>)> = vec![
        ("K disagrees with A and B", QGemm { k: 2, ..ok }),
        ("A too short", QGemm { a: &a[..5], ..ok }),
        ("B too short", QGemm { b: &b[..5], ..ok }),
        (
            "activation zero point 256",
            QGemm {
                a_zero_point: 256,
                ..ok
            },
        ),
        (
            "activation zero point -1",
            QGemm {
                a_zero_point: -1,
                ..ok
            },
        ),
        (
            "weight zero point 128",
            QGemm {
                b_zero_points: &[128],
                ..ok
            },
        ),
        (
            "weight zero point -129",
            QGemm {
                b_zero_points: &[0, -129],
                ..ok
            },
        ),
        (
            "3 weight zero points for N = 2",
            QGemm {
                b_zero_points: &[0, 0, 0],
                ..ok
            },
        ),
        (
            "no weight zero point",
            QGemm {
                b_zero_points: &[],
                ..ok
            },
        ),
        (
            "M·K overflows",
            QGemm {
                m: usize::MAX / 2,
                ..ok
            },
        ),
    ];
    for (what, p) in cases {
        let mut o = [0i32; 4];
        st.add(expect_err(k.name(), CHECK, what, || {
            k.qgemm(&p, Output::Raw(&mut o))
        })?);
    }
    let short_out = &mut [0i32; 3];
    st.add(expect_err(k.name(), CHECK, "output of 3 for 2×2", || {
        k.qgemm(&ok, Output::Raw(short_out))
    })?);
    for (what, r) in [
        ("rule for 1 channel", rule(1, 3)),
        ("output zero point 256", rule(2, 256)),
        ("output zero point -1", rule(2, -1)),
    ] {
        let mut o = [0u8; 4];
        st.add(expect_err(k.name(), CHECK, what, || {
            k.qgemm(&ok, Output::Requantized(&r, &mut o))
        })?);
    }
    Ok(st)
}

// ---------------------------------------------------------------------------------------------
// Level 3: conv2d.

#[allow(clippy::too_many_arguments)]
fn conv_params(
    ic: usize,
    oc: usize,
    groups: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Conv2dParams {
    Conv2dParams {
        in_channels: ic,
        out_channels: oc,
        kernel_size: kernel,
        stride,
        padding,
        dilation,
        groups,
    }
}

/// Fixed conv geometries, one per row: `[IC, OC, groups, KH, KW, stride (h, w), padding (h, w),
/// dilation (h, w), batch, H, W]`.
const CONVS: [[usize; 14]; 21] = [
    [3, 4, 1, 3, 3, 1, 1, 1, 1, 1, 1, 2, 7, 6],
    [16, 20, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 9, 11],
    [8, 12, 1, 3, 3, 2, 2, 1, 1, 1, 1, 1, 9, 8],
    [4, 6, 1, 3, 3, 1, 1, 2, 2, 2, 2, 1, 7, 9],
    [6, 4, 2, 3, 3, 1, 2, 1, 0, 1, 1, 2, 6, 7],
    [9, 6, 3, 2, 3, 1, 1, 0, 1, 2, 1, 1, 8, 8],
    // Groupwise: 8 to 16 groups of 2, 4, 8, 16 channels.
    [16, 16, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 8, 8],
    [64, 64, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, 9, 9],
    [32, 32, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 6, 7],
    [128, 128, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 5, 5],
    // Depthwise 3×3.
    [8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 2, 9, 40],
    [5, 5, 5, 3, 3, 1, 1, 0, 0, 1, 1, 1, 12, 35],
    [4, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 11, 13],
    [33, 33, 33, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4, 70],
    [16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 7, 33],
    [3, 3, 3, 3, 3, 2, 1, 0, 1, 1, 1, 2, 10, 9],
    [1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 3, 3],
    // 1×1, 1×3, 5×5, stride larger than the kernel.
    [24, 40, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 5, 6],
    [7, 9, 1, 1, 3, 1, 1, 0, 1, 1, 1, 1, 4, 9],
    [4, 8, 1, 5, 5, 1, 1, 2, 2, 1, 1, 1, 8, 8],
    [2, 3, 1, 3, 3, 3, 3, 0, 0, 1, 1, 1, 3, 3],
];

/// The conv geometries of the suite ([`CONVS`] and 40 random ones): `(params, batch, H, W)`.
/// Each is run in both layouts.
fn conv_cases(rng: &mut Rng) -> Vec<(Conv2dParams, usize, usize, usize)> {
    let mut v: Vec<_> = CONVS
        .iter()
        .map(|r| {
            let p = conv_params(
                r[0],
                r[1],
                r[2],
                [r[3], r[4]],
                [r[5], r[6]],
                [r[7], r[8]],
                [r[9], r[10]],
            );
            (p, r[11], r[12], r[13])
        })
        .collect();
    for _ in 0..40 {
        let groups = [1, 1, 2, 3, 4][rng.below(5) as usize];
        let icg = [1, 2, 3, 4, 8, 16][rng.below(6) as usize];
        let ocg = rng.range(1, 12) as usize;
        let kernel = [rng.range(1, 3) as usize, rng.range(1, 3) as usize];
        let stride = [rng.range(1, 2) as usize, rng.range(1, 2) as usize];
        let padding = [rng.range(0, 2) as usize, rng.range(0, 2) as usize];
        let dilation = [rng.range(1, 2) as usize, rng.range(1, 2) as usize];
        let span = |d: usize| dilation[d] * (kernel[d] - 1) + 1;
        let h = (span(0) + rng.range(0, 6) as usize)
            .saturating_sub(2 * padding[0])
            .max(1);
        let w = (span(1) + rng.range(0, 6) as usize)
            .saturating_sub(2 * padding[1])
            .max(1);
        let p = conv_params(
            icg * groups,
            ocg * groups,
            groups,
            kernel,
            stride,
            padding,
            dilation,
        );
        v.push((p, rng.range(1, 2) as usize, h, w));
    }
    v
}

/// Converts an NCHW tensor to NHWC.
fn to_nhwc(x: &[u8], (nb, c, h, w): (usize, usize, usize, usize)) -> Vec<u8> {
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

/// Calls `f` with `base` (an NCHW problem) in every layout the kernel supports for its geometry.
fn for_each_layout(
    k: &dyn QuantConv,
    base: &QConv<'_>,
    mut f: impl FnMut(&QConv<'_>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    for layout in [Layout::Nchw, Layout::Nhwc] {
        if !k.supports(&base.params, layout) {
            continue;
        }
        let dims = (base.batch, base.params.in_channels, base.height, base.width);
        let input = match layout {
            Layout::Nchw => base.input.to_vec(),
            Layout::Nhwc => to_nhwc(base.input, dims),
        };
        f(&QConv {
            layout,
            input: &input,
            ..*base
        })?;
    }
    Ok(())
}

/// Runs conv `c` on `k` (raw if the kernel writes raw accumulators, and through every rule)
/// against [`reference::conv2d`] of the kernel's model; returns the elements compared, the
/// requantized ones among them and how many of those lie strictly between the clamps.
fn check_conv(
    k: &dyn QuantConv,
    check: &'static str,
    c: &QConv<'_>,
    rng: &mut Rng,
    kind: usize,
) -> Result<(usize, usize, usize), Failure> {
    let what = || {
        format!(
            "{:?} {:?} input {}×{}×{}×{} a_zp={} w_zp={:?}",
            c.params,
            c.layout,
            c.batch,
            c.params.in_channels,
            c.height,
            c.width,
            c.a_zero_point,
            &c.w_zero_points[..c.w_zero_points.len().min(3)]
        )
    };
    let (raw, hw) = reference::conv2d(k.accumulation(), c).map_err(|e| {
        fail(
            k.name(),
            check,
            format!("reference rejected {}: {e}", what()),
        )
    })?;
    let oc = c.params.out_channels;
    let mut elements = 0;
    let mut requantized = 0;
    let mut inside = 0;
    let run = |out: Output<'_>| {
        no_panic(|| k.qconv(c, out))
            .map_err(|e| fail(k.name(), check, format!("{}: {e}", what())))?
            .map_err(|e| fail(k.name(), check, format!("{}: error {e}", what())))
    };
    if k.raw_output() {
        let mut got = vec![i32::MIN + 7; raw.len()];
        let got_hw = run(Output::Raw(&mut got))?;
        if got_hw != hw {
            return Err(fail(
                k.name(),
                check,
                format!("{}: output size {got_hw:?}, expected {hw:?}", what()),
            ));
        }
        if let Some((_, msg)) = compare(&got, &raw) {
            return Err(fail(k.name(), check, format!("{} raw: {msg}", what())));
        }
        elements += raw.len();
    }
    for rule in rules(rng, oc, &raw, kind) {
        let want: Vec<u8> = (0..raw.len())
            .map(|i| rule.apply(raw[i], reference::conv_channel(c.layout, i, oc, hw)))
            .collect();
        let mut got = vec![0xA5u8; raw.len()];
        run(Output::Requantized(&rule, &mut got))?;
        if let Some((_, msg)) = compare(&got, &want) {
            let name = match rule {
                Requant::Fbgemm(_) => "fbgemm",
                Requant::Qnnpack(_) => "qnnpack",
            };
            return Err(fail(
                k.name(),
                check,
                format!("{} {name} rule: {msg}", what()),
            ));
        }
        let zp = rule.out_zero_point() as u8;
        inside += want
            .iter()
            .filter(|&&v| v > 0 && v < 255 && v != zp)
            .count();
        elements += raw.len();
        requantized += raw.len();
    }
    Ok((elements, requantized, inside))
}

/// Every conv geometry of the suite that the kernel supports, in both layouts, with every
/// zero-point class, raw and through both rules. Fails if the kernel supports none of them.
pub fn qconv_layouts(k: &dyn QuantConv) -> Outcome {
    const CHECK: &str = "qconv_layouts";
    let mut rng = Rng::new(0x5EED_0005);
    let mut st = Stats::default();
    let mut inside = 0;
    let mut requantized = 0;
    for (t, (p, nb, h, w)) in conv_cases(&mut rng).into_iter().enumerate() {
        let ws = p.weight_shape();
        let x = rng.bytes(nb * p.in_channels * h * w, t);
        let wt = rng.i8s(ws.iter().product(), t / 3);
        let za = [0, 255, 128, rng.range(1, 254) as i32][t % 4];
        let zw: Vec<i32> = match t % 3 {
            0 => vec![0],
            1 => vec![rng.range(-128, 127) as i32],
            _ => (0..p.out_channels)
                .map(|_| rng.range(-128, 127) as i32)
                .collect(),
        };
        let base = QConv {
            params: p,
            layout: Layout::Nchw,
            batch: nb,
            height: h,
            width: w,
            input: &x,
            a_zero_point: za,
            weight: &wt,
            w_zero_points: &zw,
        };
        for_each_layout(k, &base, |c| {
            let (e, r, i) = check_conv(k, CHECK, c, &mut rng, t)?;
            st.add(e);
            requantized += r;
            inside += i;
            Ok(())
        })?;
    }
    if st.problems == 0 {
        return Err(fail(
            k.name(),
            CHECK,
            "the kernel supports none of the suite's convs".into(),
        ));
    }
    if inside * 5 < requantized {
        return Err(fail(
            k.name(),
            CHECK,
            format!("non-vacuity: only {inside} of {requantized} requantized outputs lie between the clamps"),
        ));
    }
    Ok(st)
}

/// 3×3 convs (16 input channels per group, and depthwise) whose im2col pairs saturate: asserts
/// that the two accumulation models differ on more than half of the outputs, then compares.
pub fn qconv_saturation(k: &dyn QuantConv) -> Outcome {
    const CHECK: &str = "qconv_saturation";
    let mut rng = Rng::new(0x5EED_0006);
    let mut st = Stats::default();
    for (p, h, w) in [
        (
            conv_params(16, 20, 1, [3, 3], [1, 1], [1, 1], [1, 1]),
            9,
            11,
        ),
        (conv_params(32, 8, 2, [3, 3], [1, 1], [0, 0], [1, 1]), 6, 7),
        (conv_params(4, 4, 4, [3, 3], [1, 1], [1, 1], [1, 1]), 20, 45),
        (conv_params(8, 8, 8, [3, 3], [2, 2], [1, 1], [1, 1]), 13, 17),
    ] {
        let x: Vec<u8> = (0..p.in_channels * h * w)
            .map(|_| rng.range(128, 255) as u8)
            .collect();
        let wt: Vec<i8> = (0..p.weight_shape().iter().product())
            .map(|_| rng.range(90, 127) as i8)
            .collect();
        let base = QConv {
            params: p,
            layout: Layout::Nchw,
            batch: 1,
            height: h,
            width: w,
            input: &x,
            a_zero_point: 0,
            weight: &wt,
            w_zero_points: &[0],
        };
        for_each_layout(k, &base, |c| {
            let model = |acc| reference::conv2d(acc, c).map(|r| r.0);
            let (Ok(sat), Ok(exact)) = (
                model(Accumulation::PairSaturatingI16),
                model(Accumulation::Exact),
            ) else {
                return Err(fail(k.name(), CHECK, format!("reference rejected {p:?}")));
            };
            let differ = sat.iter().zip(&exact).filter(|(a, b)| a != b).count();
            if differ * 2 <= sat.len() {
                return Err(fail(
                    k.name(),
                    CHECK,
                    format!(
                        "non-vacuity: saturation changes only {differ} of {} outputs of {p:?}",
                        sat.len()
                    ),
                ));
            }
            st.add(check_conv(k, CHECK, c, &mut rng, 0)?.0);
            Ok(())
        })?;
    }
    if st.problems == 0 {
        return Err(fail(
            k.name(),
            CHECK,
            "the kernel supports none of the suite's convs".into(),
        ));
    }
    Ok(st)
}

/// Wrong lengths, geometry and zero points are errors, not panics (from a geometry the kernel
/// supports: a 3×3 depthwise conv, or a grouped one).
pub fn qconv_bad_input(k: &dyn QuantConv) -> Outcome {
    const CHECK: &str = "qconv_bad_input";
    let dw = conv_params(4, 4, 4, [3, 3], [1, 1], [1, 1], [1, 1]);
    let grouped = conv_params(4, 6, 2, [3, 3], [1, 1], [1, 1], [1, 1]);
    let Some(p) = [grouped, dw]
        .into_iter()
        .find(|p| k.supports(p, Layout::Nchw))
    else {
        return Err(fail(
            k.name(),
            CHECK,
            "the kernel supports neither base geometry (NCHW)".into(),
        ));
    };
    let (h, w) = (5, 6);
    let x = vec![9u8; p.in_channels * h * w];
    let wt = vec![1i8; p.weight_shape().iter().product()];
    let ok = QConv {
        params: p,
        layout: Layout::Nchw,
        batch: 1,
        height: h,
        width: w,
        input: &x,
        a_zero_point: 3,
        weight: &wt,
        w_zero_points: &[0],
    };
    let rule = |n: usize, zp: i32| {
        Requant::Fbgemm(FbgemmRequant::new(
            0.1,
            &[0.01],
            false,
            None,
            n,
            0.5,
            zp,
            false,
        ))
    };
    let good = rule(p.out_channels, 3);
    let out_len = p.out_channels * h * w;
    let mut out = vec![0u8; out_len];
    k.qconv(&ok, Output::Requantized(&good, &mut out))
        .map_err(|e| fail(k.name(), CHECK, format!("a valid conv was rejected: {e}")))?;
    let mut st = Stats::default();
    let bad = |f: &dyn Fn(&mut Conv2dParams)| {
        let mut q = p;
        f(&mut q);
        q
    };
    let short_w = &wt[..wt.len() - 1];
    let cases: Vec<(&str, QConv<'_>)> = vec![
        (
            "input too short",
            QConv {
                input: &x[1..],
                ..ok
            },
        ),
        (
            "height disagrees with the input",
            QConv {
                height: h + 1,
                ..ok
            },
        ),
        (
            "weights too short",
            QConv {
                weight: short_w,
                ..ok
            },
        ),
        (
            "groups 0",
            QConv {
                params: bad(&|q| q.groups = 0),
                ..ok
            },
        ),
        (
            "groups not dividing the channels",
            QConv {
                params: bad(&|q| q.groups = 3),
                ..ok
            },
        ),
        (
            "stride 0",
            QConv {
                params: bad(&|q| q.stride = [0, 1]),
                ..ok
            },
        ),
        (
            "dilation 0",
            QConv {
                params: bad(&|q| q.dilation = [1, 0]),
                ..ok
            },
        ),
        (
            "kernel taller than the padded input",
            QConv {
                params: bad(&|q| q.padding = [0, 0]),
                height: 2,
                input: &x[..p.in_channels * 2 * w],
                ..ok
            },
        ),
        (
            "activation zero point 256",
            QConv {
                a_zero_point: 256,
                ..ok
            },
        ),
        (
            "weight zero point -129",
            QConv {
                w_zero_points: &[-129],
                ..ok
            },
        ),
        (
            "2 weight zero points",
            QConv {
                w_zero_points: &[0, 0],
                ..ok
            },
        ),
    ];
    for (what, c) in cases {
        let mut o = vec![0u8; out_len];
        st.add(expect_err(k.name(), CHECK, what, || {
            k.qconv(&c, Output::Requantized(&good, &mut o))
        })?);
    }
    let mut short = vec![0u8; out_len - 1];
    st.add(expect_err(k.name(), CHECK, "output one short", || {
        k.qconv(&ok, Output::Requantized(&good, &mut short))
    })?);
    let narrow = rule(p.out_channels - 1, 3);
    let mut o = vec![0u8; out_len];
    st.add(expect_err(
        k.name(),
        CHECK,
        "rule for one channel too few",
        || k.qconv(&ok, Output::Requantized(&narrow, &mut o)),
    )?);
    if k.raw_output() {
        let mut r = vec![0i32; out_len + 1];
        st.add(expect_err(
            k.name(),
            CHECK,
            "raw output one too long",
            || k.qconv(&ok, Output::Raw(&mut r)),
        )?);
    }
    Ok(st)
}

// ---------------------------------------------------------------------------------------------
// Runners (used by `kernel_conformance_tests!`).

fn report(line: &str) {
    eprintln!("{line}");
    if let Ok(path) = std::env::var("QPARITY_CONFORMANCE_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn finish(check: &str, name: &str, r: Outcome) {
    match r {
        Ok(s) => report(&format!(
            "{check}: {name}: {} problems, {} elements, 0 mismatches",
            s.problems, s.elements
        )),
        Err(e) => panic!("{e}"),
    }
}

/// Runs a level-1 check on every kernel; panics with the first failure.
pub fn run_gemm(kernels: &[Box<dyn Int8Gemm>], check: &str, f: fn(&dyn Int8Gemm) -> Outcome) {
    assert!(!kernels.is_empty(), "{check}: no kernel to check");
    for k in kernels {
        finish(check, k.name(), f(k.as_ref()));
    }
}

/// Runs a level-2 check on every kernel that has a [`QuantGemm`]; returns how many did.
pub fn run_qgemm(
    kernels: &[Box<dyn Int8Gemm>],
    check: &str,
    f: fn(&dyn QuantGemm) -> Outcome,
) -> usize {
    let mut n = 0;
    for k in kernels {
        if let Some(q) = k.quant_gemm() {
            finish(check, q.name(), f(q));
            n += 1;
        }
    }
    if n == 0 {
        report(&format!("{check}: no kernel in the list has a QuantGemm"));
    }
    n
}

/// Runs a level-3 check on every kernel's [`QuantConv`] and on the conv-only kernels `convs`;
/// returns how many ran.
pub fn run_qconv(
    kernels: &[Box<dyn Int8Gemm>],
    convs: &[Box<dyn QuantConv>],
    check: &str,
    f: fn(&dyn QuantConv) -> Outcome,
) -> usize {
    let mut n = 0;
    for q in kernels
        .iter()
        .filter_map(|k| k.quant_conv())
        .chain(convs.iter().map(|c| c.as_ref()))
    {
        finish(check, q.name(), f(q));
        n += 1;
    }
    if n == 0 {
        report(&format!("{check}: no kernel in the list has a QuantConv"));
    }
    n
}

/// Checks `QPARITY_REQUIRE_ISA`: every extension it names has a kernel in `kernels` that passes
/// a GEMM (one per kernel of that extension). Returns the `(extension, kernel)` pairs exercised;
/// an unknown or foreign name, or an extension without a kernel, is a failure.
pub fn required_isas(kernels: &[Box<dyn Int8Gemm>]) -> Result<Vec<(Isa, &'static str)>, Failure> {
    let req = Isa::required().map_err(|e| fail("-", "required_isas", e.to_string()))?;
    let mut rng = Rng::new(0x5EED_0007);
    // 37 rows: one full 32-row AMX block and a tail (fewer than 16 rows take another path).
    let (m, n, kk) = (37, 19, 53);
    let a = rng.bytes(m * kk, 0);
    let b = rng.i8s(n * kk, 0);
    let mut done = Vec::new();
    for isa in req {
        let ks: Vec<&dyn Int8Gemm> = kernels
            .iter()
            .filter(|k| k.isa() == Some(isa))
            .map(|k| k.as_ref())
            .collect();
        if ks.is_empty() {
            return Err(fail(
                "-",
                "required_isas",
                format!(
                    "QPARITY_REQUIRE_ISA asks for {isa}, but no kernel of it is available \
                     (this CPU has it: {})",
                    isa.detected()
                ),
            ));
        }
        for k in ks {
            check_gemm(k, "required_isas", (m, n, kk), &a, &b)?;
            done.push((isa, k.name()));
        }
    }
    Ok(done)
}

/// [`required_isas`] as a test: panics on failure, reports what ran.
pub fn run_required_isas(kernels: &[Box<dyn Int8Gemm>]) {
    match required_isas(kernels) {
        Ok(done) if done.is_empty() => report("required ISA: QPARITY_REQUIRE_ISA not set"),
        Ok(done) => {
            for (isa, k) in done {
                report(&format!("required ISA {isa}: exercised {k}"));
            }
        }
        Err(e) => panic!("{e}"),
    }
}

/// Writes one `#[test]` per conformance check over a list of kernels.
///
/// `kernel_conformance_tests!(KERNELS)` or `kernel_conformance_tests!(KERNELS, CONVS)`, where
/// `KERNELS` is an expression of type `Vec<Box<dyn Int8Gemm>>` (evaluated in every test) and
/// `CONVS` a `Vec<Box<dyn QuantConv>>` of conv-only kernels. Invoke it once per module.
#[macro_export]
macro_rules! kernel_conformance_tests {
    ($kernels:expr) => {
        $crate::kernel_conformance_tests!(
            $kernels,
            ::std::vec::Vec::<::std::boxed::Box<dyn $crate::kernels::QuantConv>>::new()
        );
    };
    ($kernels:expr, $convs:expr) => {
        #[test]
        fn conformance_gemm_tile_edges() {
            use $crate::kernels::conformance as c;
            c::run_gemm(&$kernels, "gemm_tile_edges", c::gemm_tile_edges);
        }
        #[test]
        fn conformance_gemm_saturation() {
            use $crate::kernels::conformance as c;
            c::run_gemm(&$kernels, "gemm_saturation", c::gemm_saturation);
        }
        #[test]
        fn conformance_gemm_extremes() {
            use $crate::kernels::conformance as c;
            c::run_gemm(&$kernels, "gemm_extremes", c::gemm_extremes);
        }
        #[test]
        fn conformance_gemm_random() {
            use $crate::kernels::conformance as c;
            c::run_gemm(&$kernels, "gemm_random", |k| {
                c::gemm_random(k, 192, 0x5EED_0008)
            });
        }
        #[test]
        fn conformance_qgemm_zero_points() {
            use $crate::kernels::conformance as c;
            c::run_qgemm(&$kernels, "qgemm_zero_points", c::qgemm_zero_points);
        }
        #[test]
        fn conformance_qgemm_epilogues() {
            use $crate::kernels::conformance as c;
            c::run_qgemm(&$kernels, "qgemm_epilogues", c::qgemm_epilogues);
        }
        #[test]
        fn conformance_qgemm_bad_input() {
            use $crate::kernels::conformance as c;
            c::run_qgemm(&$kernels, "qgemm_bad_input", c::qgemm_bad_input);
        }
        #[test]
        fn conformance_qconv_layouts() {
            use $crate::kernels::conformance as c;
            c::run_qconv(&$kernels, &$convs, "qconv_layouts", c::qconv_layouts);
        }
        #[test]
        fn conformance_qconv_saturation() {
            use $crate::kernels::conformance as c;
            c::run_qconv(&$kernels, &$convs, "qconv_saturation", c::qconv_saturation);
        }
        #[test]
        fn conformance_qconv_bad_input() {
            use $crate::kernels::conformance as c;
            c::run_qconv(&$kernels, &$convs, "qconv_bad_input", c::qconv_bad_input);
        }
        #[test]
        fn conformance_required_isas() {
            $crate::kernels::conformance::run_required_isas(&$kernels);
        }
    };
}

#[cfg(test)]
mod tests {
    //! The suite itself: each check must fail on a kernel with the defect it is meant to catch.
    use super::*;
    use crate::kernels::reference::Reference;

    /// A raw GEMM with a defect.
    #[derive(Debug)]
    struct Faulty {
        claims: Accumulation,
        computes: Accumulation,
        /// Drops the last column when N is not a multiple of 8.
        drop_tail: bool,
        /// Ignores K beyond 1024.
        short_k: bool,
    }

    impl Faulty {
        fn honest(acc: Accumulation) -> Self {
            Faulty {
                claims: acc,
                computes: acc,
                drop_tail: false,
                short_k: false,
            }
        }
    }

    impl Int8Gemm for Faulty {
        fn name(&self) -> &'static str {
            "faulty"
        }
        fn accumulation(&self) -> Accumulation {
            self.claims
        }
        fn gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
            Reference::new(self.computes).gemm(m, n, k, a, b, c);
            if self.short_k && k > 1024 {
                for i in 0..m {
                    for j in 0..n {
                        let ar = &a[i * k..i * k + 1024];
                        let br = &b[j * k..j * k + 1024];
                        c[i * n + j] = reference::dot(self.computes, ar, br);
                    }
                }
            }
            if self.drop_tail && !n.is_multiple_of(8) {
                for i in 0..m {
                    c[i * n + n - 1] = 0;
                }
            }
        }
    }

    #[test]
    fn honest_kernels_pass_and_defects_are_caught() {
        for acc in [Accumulation::Exact, Accumulation::PairSaturatingI16] {
            let k = Faulty::honest(acc);
            assert!(gemm_tile_edges(&k).is_ok());
            assert!(gemm_saturation(&k).is_ok());
            assert!(gemm_extremes(&k).is_ok());
            assert!(gemm_random(&k, 50, 1).is_ok());
        }
        let wrong_model = Faulty {
            claims: Accumulation::PairSaturatingI16,
            ..Faulty::honest(Accumulation::Exact)
        };
        assert!(gemm_saturation(&wrong_model).is_err());
        let wrong_model = Faulty {
            claims: Accumulation::Exact,
            ..Faulty::honest(Accumulation::PairSaturatingI16)
        };
        assert!(gemm_saturation(&wrong_model).is_err());
        assert!(gemm_extremes(&wrong_model).is_err());
        let tail = Faulty {
            drop_tail: true,
            ..Faulty::honest(Accumulation::Exact)
        };
        let e = gemm_tile_edges(&tail).unwrap_err();
        assert!(e.message.contains("differ"), "{e}");
        let short = Faulty {
            short_k: true,
            ..Faulty::honest(Accumulation::Exact)
        };
        assert!(gemm_tile_edges(&short).is_err());
    }

    /// A fused GEMM and conv built on the reference models, with one optional defect.
    #[derive(Clone, Copy, PartialEq)]
    enum Defect {
        None,
        FirstWeightZeroPoint,
        RoundHalfAway,
        IgnoreRelu,
        PanicOnBadInput,
        AcceptAnything,
        NhwcAsNchw,
        IgnoreDilation,
    }

    struct Fused(Defect);

    impl Fused {
        fn rule_apply(&self, r: &Requant, raw: i32, j: usize) -> u8 {
            match (self.0, r) {
                (Defect::RoundHalfAway, Requant::Fbgemm(f)) => {
                    let v = f.pre_round(raw, j).round();
                    let q = if v.is_nan() { i32::MIN } else { v as i32 };
                    (q as i64 + f.out_zero_point as i64)
                        .clamp(if f.relu { f.out_zero_point as i64 } else { 0 }, 255)
                        as u8
                }
                (Defect::IgnoreRelu, Requant::Qnnpack(q)) => {
                    let mut q2 = q.clone();
                    q2.relu = false;
                    q2.apply(raw, j)
                }
                _ => r.apply(raw, j),
            }
        }
    }

    impl QuantGemm for Fused {
        fn name(&self) -> &'static str {
            "fused"
        }
        fn accumulation(&self) -> Accumulation {
            Accumulation::Exact
        }
        fn qgemm(&self, p: &QGemm<'_>, out: Output<'_>) -> crate::Result<()> {
            if self.0 == Defect::PanicOnBadInput {
                assert_eq!(p.a.len(), p.m * p.k);
            }
            if self.0 != Defect::AcceptAnything {
                p.validate()?;
                p.check_output(out.len())?;
            } else if p.validate().is_err() || p.check_output(out.len()).is_err() {
                return Ok(());
            }
            let zb: Vec<i32> = if self.0 == Defect::FirstWeightZeroPoint {
                vec![p.b_zero_points[0]]
            } else {
                p.b_zero_points.to_vec()
            };
            let raw = reference::gemm_zp(
                Accumulation::Exact,
                &QGemm {
                    b_zero_points: &zb,
                    ..*p
                },
            )?;
            match out {
                Output::Raw(o) => o.copy_from_slice(&raw),
                Output::Requantized(r, o) => {
                    r.validate(p.n)?;
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = self.rule_apply(r, raw[i], i % p.n);
                    }
                }
            }
            Ok(())
        }
    }

    impl QuantConv for Fused {
        fn name(&self) -> &'static str {
            "fused"
        }
        fn accumulation(&self) -> Accumulation {
            Accumulation::Exact
        }
        fn supports(&self, _: &Conv2dParams, _: Layout) -> bool {
            true
        }
        fn qconv(&self, c: &QConv<'_>, out: Output<'_>) -> crate::Result<(usize, usize)> {
            let mut c2 = *c;
            if self.0 == Defect::NhwcAsNchw {
                c2.layout = Layout::Nchw;
            }
            if self.0 == Defect::IgnoreDilation {
                c2.params.dilation = [1, 1];
                if c2.validate().is_err() {
                    c2 = *c;
                }
            }
            let hw = c.validate()?;
            c.check_output(out.len(), hw)?;
            let (raw, _) = reference::conv2d(Accumulation::Exact, &c2)?;
            let raw = if self.0 == Defect::IgnoreDilation && c2.params != c.params {
                // Sizes differ: keep the shape, not the values.
                let mut r = raw;
                r.resize(out.len(), 0);
                r
            } else {
                raw
            };
            match out {
                Output::Raw(o) => o.copy_from_slice(&raw),
                Output::Requantized(r, o) => {
                    r.validate(c.params.out_channels)?;
                    for (i, v) in o.iter_mut().enumerate() {
                        let j = reference::conv_channel(c.layout, i, c.params.out_channels, hw);
                        *v = r.apply(raw[i], j);
                    }
                }
            }
            Ok(hw)
        }
    }

    #[test]
    fn fused_defects_are_caught() {
        let ok = Fused(Defect::None);
        assert!(qgemm_zero_points(&ok).is_ok());
        assert!(qgemm_epilogues(&ok).is_ok());
        assert!(qgemm_bad_input(&ok).is_ok());
        assert!(qconv_layouts(&ok).is_ok());
        assert!(qconv_saturation(&ok).is_ok());
        assert!(qconv_bad_input(&ok).is_ok());
        assert!(qgemm_zero_points(&Fused(Defect::FirstWeightZeroPoint)).is_err());
        assert!(qgemm_epilogues(&Fused(Defect::RoundHalfAway)).is_err());
        assert!(qgemm_epilogues(&Fused(Defect::IgnoreRelu)).is_err());
        let e = qgemm_bad_input(&Fused(Defect::PanicOnBadInput)).unwrap_err();
        assert!(e.message.contains("panicked"), "{e}");
        assert!(qgemm_bad_input(&Fused(Defect::AcceptAnything)).is_err());
        assert!(qconv_layouts(&Fused(Defect::NhwcAsNchw)).is_err());
        assert!(qconv_layouts(&Fused(Defect::IgnoreDilation)).is_err());
    }
}
