//! Properties of the transcendental ports (SLEEF's and glibc's `exp`, `expm1`, `tanh`) and of
//! the activations built on them (sigmoid, tanh, elu): accuracy against the exact functions,
//! special values and symmetry; every quantized path equal to the correctly rounded result away
//! from rounding boundaries; the body/tail split depends only on memory position; reference-flow
//! intervals contain the exact value; bad parameters are errors, never panics.

use proptest::prelude::*;
use qparity::engine::flow::Flow;
use qparity::engine::{CpuFeatures, Ctx, Engine, Isa};
use qparity::gen::check_property;
use qparity::numerics::bound::Pred;
use qparity::numerics::transcendental::glibc::{self, ExpfBuild};
use qparity::numerics::transcendental::sleef;
use qparity::ops::activation::{Elu, Sigmoid, Tanh};
use qparity::ops::{MemoryFormat, Op, OutQParams, QTensor, Value};

const PERSIST: &str = "tests/proptest-regressions/prop_activation.txt";

/// |got − exact| in f32 ulps of the exact value (2^-149 in the subnormal range).
fn ulps(got: f32, exact: f64) -> f64 {
    let a = exact.abs();
    let e = if a < f32::MIN_POSITIVE as f64 {
        -149
    } else {
        a.log2().floor() as i32 - 23
    };
    (got as f64 - exact).abs() / 2f64.powi(e)
}

/// Finite f32 in `lo..=hi`: uniform in value, or any bit pattern there (many tiny magnitudes).
fn float_in(lo: f32, hi: f32) -> impl Strategy<Value = f32> {
    prop_oneof![
        lo..=hi,
        any::<u32>()
            .prop_map(f32::from_bits)
            .prop_filter("in range", move |x| *x >= lo && *x <= hi),
    ]
}

#[test]
fn ports_are_within_their_documented_error() {
    // exp: results normal or subnormal, not overflowing.
    check_property(
        "exp_accuracy",
        PERSIST,
        float_in(-103.0, 88.7),
        |x| format!("let x = f32::from_bits({:#x});", x.to_bits()),
        |x| {
            let exact = (x as f64).exp();
            for (name, got, max) in [
                ("Sleef_expf_u10", sleef::expf_u10(x), 1.0),
                ("glibc expf (FMA)", glibc::expf(x, ExpfBuild::Fma), 1.0),
                ("glibc expf (SSE2)", glibc::expf(x, ExpfBuild::Sse2), 1.0),
            ] {
                prop_assert!(
                    ulps(got, exact) <= max,
                    "{name}({x:e}) = {got:e}, exp {exact:e}"
                );
            }
            Ok(())
        },
    );
    check_property(
        "expm1_accuracy",
        PERSIST,
        float_in(-100.0, 88.7),
        |x| format!("let x = f32::from_bits({:#x});", x.to_bits()),
        |x| {
            let exact = (x as f64).exp_m1();
            for (name, got) in [
                ("Sleef_expm1f_u10", sleef::expm1f_u10(x)),
                ("glibc expm1f", glibc::expm1f(x)),
            ] {
                prop_assert!(
                    ulps(got, exact) <= 1.0,
                    "{name}({x:e}) = {got:e}, {exact:e}"
                );
            }
            Ok(())
        },
    );
    check_property(
        "tanh_accuracy_and_oddness",
        PERSIST,
        float_in(-12.0, 12.0),
        |x| format!("let x = f32::from_bits({:#x});", x.to_bits()),
        |x| {
            let exact = (x as f64).tanh();
            // SLEEF documents 1 ulp for u10, but its tanhf exceeds it by a hair on tiny
            // inputs (1.000000013 ulp at 0x338d7b23, the real Sleef_tanhf8_u10 too), so 2 ulp
            // as `Tanh::float_bound` assumes; glibc's SunPro tanhf: 2 ulp in glibc's tables.
            for (name, f, max) in [
                ("Sleef_tanhf_u10", sleef::tanhf_u10 as fn(f32) -> f32, 2.0),
                ("glibc tanhf", glibc::tanhf as fn(f32) -> f32, 2.0),
            ] {
                let got = f(x);
                prop_assert!(
                    ulps(got, exact) <= max,
                    "{name}({x:e}) = {got:e}, {exact:e}"
                );
                prop_assert_eq!(f(-x).to_bits(), (-got).to_bits(), "{} is odd", name);
            }
            Ok(())
        },
    );
}

#[test]
fn ports_handle_special_values() {
    let builds = [ExpfBuild::Fma, ExpfBuild::Sse2];
    for b in builds {
        assert!(glibc::expf(f32::NAN, b).is_nan());
        assert_eq!(glibc::expf(f32::NEG_INFINITY, b), 0.0);
        assert_eq!(glibc::expf(f32::INFINITY, b), f32::INFINITY);
        assert_eq!(glibc::expf(0.0, b), 1.0);
        assert_eq!(glibc::expf(89.0, b), f32::INFINITY);
        assert_eq!(glibc::expf(-104.0, b), 0.0);
    }
    assert!(sleef::expf_u10(f32::NAN).is_nan());
    assert_eq!(sleef::expf_u10(f32::NEG_INFINITY), 0.0);
    assert_eq!(sleef::expf_u10(f32::INFINITY), f32::INFINITY);
    assert_eq!(sleef::expf_u10(0.0), 1.0);
    for f in [sleef::expm1f_u10 as fn(f32) -> f32, glibc::expm1f] {
        assert!(f(f32::NAN).is_nan());
        assert_eq!(f(f32::NEG_INFINITY), -1.0);
        assert_eq!(f(f32::INFINITY), f32::INFINITY);
        assert_eq!(f(0.0), 0.0);
        assert_eq!(f(-50.0), -1.0);
    }
    for f in [sleef::tanhf_u10 as fn(f32) -> f32, glibc::tanhf] {
        assert!(f(f32::NAN).is_nan());
        assert_eq!(f(f32::INFINITY), 1.0);
        assert_eq!(f(f32::NEG_INFINITY), -1.0);
        assert_eq!(f(0.0), 0.0);
        assert_eq!(f(20.0), 1.0);
    }
}

/// Which activation a case runs.
#[derive(Debug, Clone, Copy)]
enum Act {
    Sigmoid,
    Tanh,
    Elu(Elu),
}

impl Act {
    fn op(&self) -> &dyn Op {
        match self {
            Act::Sigmoid => &Sigmoid,
            Act::Tanh => &Tanh,
            Act::Elu(e) => e,
        }
    }

    /// The exact function (f32 coefficients, as the kernels hold them) and a bound on its slope.
    fn exact(&self, x: f64) -> (f64, f64) {
        match self {
            Act::Sigmoid => (1.0 / (1.0 + (-x).exp()), 0.25),
            Act::Tanh => (x.tanh(), 1.0),
            Act::Elu(e) => {
                let (a, s, i) = (
                    e.alpha as f32 as f64,
                    e.scale as f32 as f64,
                    e.input_scale as f32 as f64,
                );
                let y = if x > 0.0 {
                    x * s
                } else {
                    a * s * (x * i).exp_m1()
                };
                (y, s.abs().max((a * s * i).abs()))
            }
        }
    }

    /// The output qparams of the integer flow: the kernel's, or the case's for elu.
    fn out_qparams(&self, given: (f64, i64)) -> (f64, i64) {
        match self {
            Act::Sigmoid => Sigmoid::QPARAMS,
            Act::Tanh => Tanh::QPARAMS,
            Act::Elu(_) => given,
        }
    }

    /// Whether the ATen kernel's output keeps the input's memory format.
    fn keeps_format(&self) -> bool {
        !matches!(self, Act::Elu(_))
    }
}

#[derive(Debug, Clone)]
struct Case {
    act: Act,
    engine: Engine,
    x: QTensor,
    out: (f64, i64),
}

impl Case {
    fn repro(&self) -> String {
        format!(
            "act {:?}, engine {:?}, shape {:?} {:?}, scale {:e} zp {}, out {:?}, data {:?}",
            self.act,
            self.engine,
            self.x.shape,
            self.x.memory_format,
            self.x.scale,
            self.x.zero_point,
            self.out,
            self.x.data
        )
    }
}

/// An f32-exact scale `m·2^e`, about 2^-22 to 2^-1.
fn act_scale() -> impl Strategy<Value = f64> {
    (0u32..2048, -22i32..-12).prop_map(|(m, e)| (2 * m + 1) as f64 * 2f64.powi(e))
}

fn act() -> impl Strategy<Value = Act> {
    let coef = prop_oneof![Just(1.0f64), 0.1f64..2.0];
    prop_oneof![
        Just(Act::Sigmoid),
        Just(Act::Tanh),
        (coef.clone(), coef.clone(), coef).prop_map(|(alpha, scale, input_scale)| Act::Elu(Elu {
            alpha,
            scale,
            input_scale
        })),
    ]
}

/// Input qparams that put code 128 on a rounding boundary of the output (exact code
/// `k + 0.5`), where the kernels' paths can round differently; `None` if the boundary is outside
/// the function's range or the scale would be unusable.
fn tie_qparams(act: &Act, out: (f64, i64), k: u8, d: i64) -> Option<(f64, i64)> {
    let (so, zo) = act.out_qparams(out);
    let y = (k as f64 + 0.5 - zo as f64) * so;
    let x = match act {
        Act::Sigmoid if y > 0.0 && y < 1.0 => (y / (1.0 - y)).ln(),
        Act::Tanh if y.abs() < 1.0 => y.atanh(),
        Act::Elu(e) => {
            let (a, sc, isc) = (
                e.alpha as f32 as f64,
                e.scale as f32 as f64,
                e.input_scale as f32 as f64,
            );
            if y > 0.0 {
                y / sc
            } else if y > -a * sc {
                (y / (a * sc)).ln_1p() / isc
            } else {
                return None;
            }
        }
        _ => return None,
    };
    // q = 128 dequantizes to x: scale x/d, zero point 128 - d, d of x's sign.
    let d = if x < 0.0 { -d } else { d };
    let s = (x / d as f64) as f32 as f64;
    (s > 1e-6 && s < 1.0).then_some((s, 128 - d))
}

fn case() -> impl Strategy<Value = Case> {
    (
        act(),
        proptest::sample::select(Engine::ALL.to_vec()),
        (1usize..3, 1usize..40, 1usize..5, 1usize..5),
        any::<bool>(),
        (act_scale(), 0i64..=255),
        (act_scale(), 0i64..=255),
        (any::<bool>(), any::<u8>(), 1i64..128),
    )
        .prop_flat_map(
            |(act, engine, (n, c, h, w), cl, (s, z), out, (plant, k, d))| {
                let numel = n * c * h * w;
                // Half the cases put code 128 on a rounding boundary and use it for about half the
                // elements.
                let tie = tie_qparams(&act, out, k, d).filter(|_| plant);
                let (s, z) = tie.unwrap_or((s, z));
                let codes = prop_oneof![
                    proptest::collection::vec(any::<u8>(), numel),
                    proptest::collection::vec(
                        (z.clamp(0, 255) as u8).saturating_sub(6)
                            ..=(z.clamp(0, 255) as u8).saturating_add(6),
                        numel
                    ),
                ];
                codes.prop_map(move |mut data| {
                    if tie.is_some() {
                        for v in data.iter_mut().filter(|v| **v % 2 == 0) {
                            *v = 128;
                        }
                    }
                    let mut x = QTensor::new(vec![n, c, h, w], data, s, z);
                    if cl {
                        x.memory_format = MemoryFormat::ChannelsLast;
                    }
                    Case {
                        act,
                        engine,
                        x,
                        out,
                    }
                })
            },
        )
}

fn ctx(flow: Flow, engine: Engine) -> Ctx {
    Ctx {
        flow,
        engine,
        isa: Isa::Vnni,
        cpu: CpuFeatures::AVX512_VNNI,
    }
}

fn out_q(scale: f64, zero_point: i64, quant_max: i64) -> OutQParams {
    OutQParams {
        scale,
        zero_point,
        quant_min: 0,
        quant_max,
    }
}

fn predict(act: &Act, ctx: &Ctx, x: &QTensor, out: &OutQParams) -> Vec<Pred> {
    let v = Value::Quantized(x.clone());
    let given = matches!(act, Act::Elu(_)) || !ctx.flow.is_integer();
    let plan = act
        .op()
        .plan(ctx, &[v.meta()], given.then_some(out))
        .expect("valid case plans");
    plan.predict(&[&v]).expect("predicts")[0]
        .ints()
        .expect("integer output")
        .to_vec()
}

#[test]
fn integer_paths_round_correctly_away_from_boundaries() {
    check_property(
        "activation_integer_paths",
        PERSIST,
        case(),
        Case::repro,
        |c| {
            let (so, zo) = c.act.out_qparams(c.out);
            let preds = predict(
                &c.act,
                &ctx(Flow::ConvertFx, c.engine),
                &c.x,
                &out_q(so, zo, 255),
            );
            let s = c.x.scale as f32 as f64;
            for (i, (&q, p)) in c.x.data.iter().zip(&preds).enumerate() {
                let Pred::Exact(v) = *p else {
                    return Err(TestCaseError::fail(format!("element {i} not decided")));
                };
                let x = s * (q as f64 - c.x.zero_point as f64);
                let (y, slope) = c.act.exact(x);
                let code = y / so + zo as f64;
                // Each path's float result is within a few f32 roundings of the exact value
                // (relative 2^-20), of an input that is itself within 2^-23·(255·s + |x|) of
                // the exact dequantized value (FMA or plain), and the code-scale steps (×inv,
                // +zp, QNNPACK's ·128 + 128) add at most 2^-14.
                let margin = (y / so).abs() * 2f64.powi(-20)
                    + slope * 2f64.powi(-23) * (255.0 * s + x.abs()) / so
                    + 2f64.powi(-14);
                let want = code.round_ties_even().clamp(0.0, 255.0) as i64;
                let dist = (code - code.floor() - 0.5).abs();
                if dist > margin || !(-1.0..=256.0).contains(&code) {
                    prop_assert_eq!(v, want, "element {} (q {}): exact code {}", i, q, code);
                } else {
                    prop_assert!((v - want).abs() <= 1, "element {i}: {v} vs {code}");
                }
            }
            Ok(())
        },
    );
}

/// Memory position of logical element `i` (NCHW index) in the tensor's layout.
fn memory_position(x: &QTensor, i: usize) -> usize {
    let &[_, c, h, w] = &x.shape[..] else {
        return i;
    };
    if x.memory_format != MemoryFormat::ChannelsLast {
        return i;
    }
    let (xw, r) = (i % w, i / w);
    let (y, r) = (r % h, r / h);
    let (ch, b) = (r % c, r / c);
    ((b * h + y) * w + xw) * c + ch
}

#[test]
fn body_and_tail_depend_only_on_memory_position() {
    check_property(
        "activation_body_tail_locality",
        PERSIST,
        case(),
        Case::repro,
        |c| {
            let ctx = ctx(Flow::ConvertFx, c.engine);
            let (so, zo) = c.act.out_qparams(c.out);
            let out = out_q(so, zo, 255);
            let preds = predict(&c.act, &ctx, &c.x, &out);
            let (n, s, z) = (c.x.data.len(), c.x.scale, c.x.zero_point);
            let [_, ch, h, w] = c.x.shape[..] else {
                unreachable!()
            };
            // A channels-last input of an op with a contiguous output runs all-scalar, unless
            // its memory order is the logical order.
            let all_scalar = !c.act.keeps_format()
                && c.x.memory_format == MemoryFormat::ChannelsLast
                && ch > 1
                && h * w > 1;
            let body = if all_scalar { 0 } else { n / 64 * 64 };
            for (i, &q) in c.x.data.iter().enumerate() {
                // One element: the scalar tail; 64 equal elements: the vector body.
                let len = if memory_position(&c.x, i) < body {
                    64
                } else {
                    1
                };
                let alone = QTensor::new(vec![len], vec![q; len], s, z);
                let want = predict(&c.act, &ctx, &alone, &out)[0];
                prop_assert_eq!(preds[i], want, "element {} (q {}), body < {}", i, q, body);
            }
            Ok(())
        },
    );
}

#[test]
fn reference_intervals_contain_the_exact_value() {
    check_property(
        "activation_reference_intervals",
        PERSIST,
        (case(), any::<bool>(), any::<bool>()),
        |(c, d, r)| format!("{} decomposed {d} reduce_range {r}", c.repro()),
        |(c, decomposed, reduce)| {
            let flow = if decomposed {
                Flow::ConvertToReferenceDecomposedFx
            } else {
                Flow::ConvertToReferenceFx
            };
            // FX observes sigmoid and tanh with fixed qparams equal to the kernels' choice.
            let (so, zo) = c.act.out_qparams(c.out);
            let qmax = if reduce { 127 } else { 255 };
            let zo = zo.min(qmax);
            let preds = predict(&c.act, &ctx(flow, c.engine), &c.x, &out_q(so, zo, qmax));
            let (lo_c, hi_c) = flow.clamp(0, qmax);
            for (i, (&q, p)) in c.x.data.iter().zip(&preds).enumerate() {
                let x = flow.dequantize(q as i64, c.x.scale, c.x.zero_point);
                let (y, _) = c.act.exact(x as f64);
                // The flow's quantize of the f32 nearest the exact value.
                let at_exact = flow.quantize(y as f32, so, zo, lo_c, hi_c).expect("finite");
                let (lo, hi) = match *p {
                    Pred::Exact(v) => (v, v),
                    Pred::Ambiguous { lo, hi } => (lo, hi),
                };
                prop_assert!(hi - lo <= 1, "element {i}: interval {lo}..={hi}");
                prop_assert!(
                    (lo..=hi).contains(&at_exact),
                    "element {} (q {}): {:?} misses {}",
                    i,
                    q,
                    p,
                    at_exact
                );
            }
            Ok(())
        },
    );
}

#[test]
fn bad_parameters_are_errors_not_panics() {
    // Any f64 bits, or a valid value so that some cases plan.
    let any_f64 = || prop_oneof![any::<u64>().prop_map(f64::from_bits), act_scale()];
    let strat = (
        act(),
        proptest::sample::select(Engine::ALL.to_vec()),
        any_f64(),
        -300i64..300,
        any_f64(),
        -300i64..300,
        any_f64(),
        0usize..3,
    );
    check_property(
        "activation_bad_parameters",
        PERSIST,
        strat,
        |c| format!("{c:?}"),
        |(act, engine, s, z, so, zo, alpha, flow)| {
            let act = match act {
                Act::Elu(e) => Act::Elu(Elu { alpha, ..e }),
                a => a,
            };
            let flow = [
                Flow::ConvertFx,
                Flow::ConvertToReferenceFx,
                Flow::ConvertToReferenceDecomposedFx,
            ][flow];
            let x = Value::Quantized(QTensor::new(vec![2], vec![0, 255], s, z));
            let out = out_q(so, zo, 255);
            if let Ok(plan) = act.op().plan(&ctx(flow, engine), &[x.meta()], Some(&out)) {
                let o = plan.predict(&[&x]).expect("a planned case predicts");
                for p in o[0].ints().expect("integers") {
                    prop_assert!((0..=255).contains(&p.value()), "{p:?}");
                }
            }
            Ok(())
        },
    );
}
