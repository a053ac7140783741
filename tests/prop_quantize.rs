//! Quantize/dequantize laws, qparam invariants, and exhaustive sweeps of the aten quantize edge
//! rules and the dequantize round trip.

use proptest::prelude::*;
use qparity::gen::fuzz::{qparams_config, quantize_avx2_model};
use qparity::gen::{self, check_property, QParamCase};
use qparity::numerics::qparams::{fbgemm_choose_qparams, observer_qparams, QDType};
use qparity::numerics::quantize::{aten, decomposed};

const PERSIST: &str = "tests/proptest-regressions/prop_quantize.txt";

fn qcase_repro(c: &(QParamCase, f32)) -> String {
    format!(
        "{}\nlet x = f32::from_bits({:#x}); // {:e}",
        c.0.repro(),
        c.1.to_bits(),
        c.1
    )
}

fn qcase_and_float() -> impl Strategy<Value = (QParamCase, f32)> {
    gen::qparam_case().prop_flat_map(|q| (Just(q), gen::hard_float_for(q)))
}

#[test]
fn quantize_outputs_stay_in_range() {
    check_property(
        "quantize_in_range",
        PERSIST,
        qcase_and_float(),
        qcase_repro,
        |(q, x)| {
            let (lo, hi) = (q.range.quant_min, q.range.quant_max);
            let (dlo, dhi) = q.dtype.full_range();
            let a = aten::quantize_avx2(
                x,
                1.0 / q.scale,
                q.zero_point as i32,
                dlo as i32,
                dhi as i32,
            );
            prop_assert!((dlo..=dhi).contains(&(a as i64)), "aten gave {}", a);
            prop_assert_eq!(
                a as i64,
                quantize_avx2_model(x, 1.0 / q.scale, q.zero_point, dlo, dhi)
            );
            match decomposed::quantize(x, q.scale as f64, q.zero_point, lo, hi) {
                Some(v) => prop_assert!((lo..=hi).contains(&v), "decomposed gave {}", v),
                None => prop_assert!(x.is_nan(), "decomposed undefined for non-NaN"),
            }
            Ok(())
        },
    );
}

#[test]
fn dequantize_of_quantize_is_within_half_a_step() {
    let strat = (gen::qparam_case(), gen::sane_scale()).prop_flat_map(|(mut q, s)| {
        q.scale = s;
        let (lo, hi) = (q.range.quant_min, q.range.quant_max);
        let (a, b) = (
            (lo - q.zero_point) as f32 * s,
            (hi - q.zero_point) as f32 * s,
        );
        let x = prop_oneof![
            a..=b,
            gen::hard_float_for(q).prop_filter("in range", move |x| (a..=b).contains(x))
        ];
        (Just(q), x)
    });
    check_property("dq_q_half_step", PERSIST, strat, qcase_repro, |(q, x)| {
        let (lo, hi) = (q.range.quant_min, q.range.quant_max);
        let s = q.scale as f64;
        // Slack: f32 rounding of x·(1/s) and of the reciprocal (≤ 256 steps · 2^-22).
        let tol = s * (0.5 + 1e-4) + (x.abs() as f64) * 2e-7;
        let v = decomposed::quantize(x, s, q.zero_point, lo, hi);
        prop_assert!(v.is_some());
        let back = decomposed::dequantize(v.unwrap_or(0), s, q.zero_point);
        prop_assert!(
            ((back - x) as f64).abs() <= tol,
            "decomposed: {} → {:?} → {}",
            x,
            v,
            back
        );
        if q.dtype == QDType::Quint8 && !q.reduce_range && q.custom.is_none() {
            let a = aten::quantize_avx2(x, 1.0 / q.scale, q.zero_point as i32, 0, 255) as i64;
            let back = aten::dequantize(a, s, q.zero_point);
            prop_assert!(
                ((back - x) as f64).abs() <= tol,
                "aten: {} → {} → {}",
                x,
                a,
                back
            );
        }
        Ok(())
    });
}

#[test]
fn quantize_of_dequantize_is_identity() {
    let strat = (gen::qparam_case(), gen::sane_scale()).prop_map(|(mut q, s)| {
        q.scale = s;
        q
    });
    check_property("q_dq_identity", PERSIST, strat, QParamCase::repro, |q| {
        let (lo, hi) = (q.range.quant_min, q.range.quant_max);
        let (dlo, dhi) = q.dtype.full_range();
        for v in lo..=hi {
            let x = decomposed::dequantize(v, q.scale as f64, q.zero_point);
            let back = decomposed::quantize(x, q.scale as f64, q.zero_point, lo, hi);
            prop_assert_eq!(back, Some(v), "decomposed q={}", v);
            let x = aten::dequantize(v, q.scale as f64, q.zero_point);
            let back = aten::quantize_avx2(
                x,
                1.0 / q.scale,
                q.zero_point as i32,
                dlo as i32,
                dhi as i32,
            );
            prop_assert_eq!(back as i64, v, "aten q={}", v);
        }
        Ok(())
    });
}

/// Observer statistics biased toward the edge cases: zero, one-sided, equal, tiny and huge.
fn stat() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        -1e3f32..1e3,
        -1e-6f32..1e-6,
        (-30i32..30, any::<bool>()).prop_map(|(e, neg)| {
            let v = 10f32.powi(e);
            if neg {
                -v
            } else {
                v
            }
        }),
    ]
}

#[test]
fn qparam_choosers_invariants() {
    let strat = (gen::qparam_case(), stat(), stat(), any::<bool>());
    let repro = |c: &(QParamCase, f32, f32, bool)| {
        format!(
            "{}\nlet (a, b, symmetric) = (f32::from_bits({:#x}), f32::from_bits({:#x}), {});",
            c.0.repro(),
            c.1.to_bits(),
            c.2.to_bits(),
            c.3
        )
    };
    check_property(
        "qparam_invariants",
        PERSIST,
        strat,
        repro,
        |(q, a, b, sym)| {
            let (lo, hi) = (q.range.quant_min, q.range.quant_max);
            let (mn, mx) = (a.min(b), a.max(b));
            let cfg = qparams_config(&q, sym);
            let mut pairs = Vec::new();
            let p = observer_qparams(&cfg, &[mn], &[mx]);
            prop_assert!(p.is_ok(), "observer_qparams failed: {:?}", p);
            let p = p.unwrap();
            pairs.push(("observer", p.scale[0], p.zero_point[0]));
            if hi > lo {
                let f = fbgemm_choose_qparams(mn, mx, lo as i32, hi as i32, sym);
                if sym && hi - lo == 1 && mn < 0.0 && mx > 0.0 {
                    // FBGEMM's symmetric half-range (qmax − qmin)/2 is 0 for a two-value range:
                    // its chooser divides by zero (scale NaN, zero point INT32_MIN), as PyTorch's
                    // fused observer does; the unit test in numerics/qparams.rs pins the values.
                    prop_assert!(f.scale.is_nan(), "fbgemm two-value symmetric: {:?}", f);
                } else {
                    pairs.push(("fbgemm", f.scale, f.zero_point as i64));
                }
            }
            // PyTorch quirk (observer.py `_calculate_qparams`): symmetric quint8 without a custom
            // range always uses zero point 128, even when reduce_range makes the range 0..127.
            let quirk = sym && q.dtype == QDType::Quint8 && q.reduce_range && q.custom.is_none();
            for (who, s, zp) in pairs {
                prop_assert!(s.is_finite() && s > 0.0, "{}: scale {:e}", who, s);
                if quirk && who == "observer" {
                    prop_assert_eq!(zp, 128, "symmetric quint8 reduce_range zero point");
                    continue;
                }
                prop_assert!(
                    (lo..=hi).contains(&zp),
                    "{}: zero point {} not in {}..{}",
                    who,
                    zp,
                    lo,
                    hi
                );
                let (dlo, dhi) = q.dtype.full_range();
                let q0 =
                    aten::quantize_avx2(0.0, 1.0 / s, zp as i32, dlo as i32, dhi as i32) as i64;
                prop_assert_eq!(
                    aten::dequantize(q0, s as f64, zp).to_bits(),
                    0f32.to_bits(),
                    "{}",
                    who
                );
                let d0 = decomposed::quantize(0.0, s as f64, zp, lo, hi);
                prop_assert_eq!(d0, Some(zp), "{}: decomposed quantize(0.0)", who);
                prop_assert_eq!(
                    decomposed::dequantize(zp, s as f64, zp).to_bits(),
                    0f32.to_bits()
                );
            }
            Ok(())
        },
    );
}

/// Scales for the sweeps: exact ones, odd ones, extremes of the supported range.
const SWEEP_SCALES: [f32; 8] = [
    1.0,
    0.0078125,
    0.1,
    0.003921569,
    0.0237,
    3.7e-5,
    123.4,
    1e-6,
];

#[test]
fn exhaustive_aten_quantize_edge_rules() {
    let mut checked = 0u64;
    for &s in &SWEEP_SCALES {
        let inv = 1.0f32 / s;
        for (dtype, shift) in [(QDType::Quint8, 0i64), (QDType::Qint8, -128)] {
            let (lo, hi) = dtype.full_range();
            for zp in 0..=255i64 {
                let zp = zp + shift;
                for q in 0..=255i64 {
                    let d = (q + shift - zp) as f64;
                    let tie = ((d + 0.5) * s as f64) as f32;
                    let grid = (d * s as f64) as f32;
                    let inputs = [
                        grid,
                        tie,
                        tie.next_up(),
                        tie.next_down(),
                        f32::NAN,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                        3e38,
                        -3e38,
                        2147483520.0 * s,
                    ];
                    for x in inputs {
                        let got = aten::quantize_avx2(x, inv, zp as i32, lo as i32, hi as i32);
                        let want = quantize_avx2_model(x, inv, zp, lo, hi);
                        assert_eq!(
                            got as i64, want,
                            "quantize_avx2(f32::from_bits({:#x}), 1.0 / {s:e}f32, {zp}, {lo}, {hi})",
                            x.to_bits()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, SWEEP_SCALES.len() as u64 * 2 * 256 * 256 * 10);
}

#[test]
fn exhaustive_dequantize_round_trip() {
    for &s in &SWEEP_SCALES[..7] {
        let inv = 1.0f32 / s;
        for zp in 0..=255i64 {
            for q in 0..=255i64 {
                let x = aten::dequantize(q, s as f64, zp);
                let back = aten::quantize_avx2(x, inv, zp as i32, 0, 255) as i64;
                assert_eq!(back, q, "aten round trip q={q} zp={zp} scale={s:e}");
                let x = decomposed::dequantize(q, s as f64, zp);
                let back = decomposed::quantize(x, s as f64, zp, 0, 255);
                assert_eq!(
                    back,
                    Some(q),
                    "decomposed round trip q={q} zp={zp} scale={s:e}"
                );
            }
        }
    }
}
