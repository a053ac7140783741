//! Flow relation: with the full 0..255 quant range, `_convert_to_reference_decomposed_fx`
//! predicts the same outputs as `convert_to_reference_fx` (ambiguous elements aside).

use proptest::prelude::*;
use qparity::gen::{self, check_property, fuzz::check_flow_relation, LayerCase};
use qparity::numerics::bound::Pred;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const PERSIST: &str = "tests/proptest-regressions/prop_flow.txt";

#[test]
fn decomposed_equals_reference_flow_on_full_range() {
    let (decided, total) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (spread, cases) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check_property(
        "decomposed_eq_reference_full_range",
        PERSIST,
        gen::layer_case(),
        LayerCase::repro,
        |c| {
            prop_assert_eq!((c.out.quant_min, c.out.quant_max), (0, 255));
            // Panics (with the element and values) on a violation; proptest shrinks it.
            let (d, t) = check_flow_relation(&c);
            decided.fetch_add(d, Relaxed);
            total.fetch_add(t, Relaxed);
            // Non-vacuity: outputs span several values, not all clamped.
            let ctx = qparity::engine::Ctx {
                flow: qparity::engine::flow::Flow::ConvertToReferenceFx,
                engine: qparity::engine::Engine::Fbgemm,
                isa: qparity::engine::Isa::Avx2,
                cpu: qparity::engine::CpuFeatures::AVX2,
            };
            let out = c.layer.run(&ctx, &c.input, &c.out);
            prop_assert!(out.is_ok());
            let vals: BTreeSet<i64> = out
                .unwrap()
                .ints()
                .expect("integer output")
                .iter()
                .filter_map(|p| match p {
                    Pred::Exact(v) => Some(*v),
                    _ => None,
                })
                .collect();
            cases.fetch_add(1, Relaxed);
            if vals.len() >= t.min(4) {
                spread.fetch_add(1, Relaxed);
            }
            Ok(())
        },
    );
    let (d, t) = (decided.load(Relaxed), total.load(Relaxed));
    assert!(d * 10 >= t * 9, "only {d} of {t} elements were decided");
    let (s, n) = (spread.load(Relaxed), cases.load(Relaxed));
    assert!(
        s * 2 >= n,
        "only {s} of {n} cases had outputs spanning several values"
    );
}
