//! Graph cases `cargo xtask diff-live --graphs` found qparity failing on, captured from PyTorch
//! 2.15 on an AMX Xeon by `xtask/difflive/graph_worker.py` (each case carries its spec; `qparity
//! repro` rebuilds it). Each passed only after its fix:
//! - `difflive-flatten-requantize`: convert_fx runs `nn.Flatten` in float and requantizes with the
//!   flatten's own observer, here other qparams than the avg_pool2d before it (which shares its
//!   input's observer); qparity refused a shape op whose output qparams differ from its input's;
//! - `difflive-histogram-symmetric-zp128`: `HistogramObserver(per_tensor_symmetric,
//!   reduce_range=True)` resolves 0..127 with zero point 128, which the decomposed flow clamps
//!   around; qparity refused a zero point outside the clamp range;
//! - `difflive-mul-relu-negative-zero`: the reference flows' `relu(mul(a, b))` keeps −0.0 where a
//!   product is `0 · (−y)`; qparity's `max(c, 0.0)` gave +0.0, and the pinned floats' SHA-256
//!   differed.

use qparity::check::{check_file, CheckOptions};
use std::path::Path;

fn check(name: &str) -> qparity::check::CaseResult {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/difflive")
        .join(format!("{name}.json"));
    // fbgemm under its default ISA and qnnpack: the same on every AVX-512 VNNI CPU.
    check_file(&p, &CheckOptions::default())
}

fn assert_passes_with(name: &str, group: &str) {
    let r = check(name);
    assert!(r.passed, "{name}: {:?} {:?}", r.error, r.first_mismatch);
    let g = r
        .groups
        .get(group)
        .unwrap_or_else(|| panic!("{name}: no group {group} in {:?}", r.groups.keys()));
    assert!(g.exact > 0 && g.mismatched == 0, "{name}: {group} {g:?}");
}

#[test]
fn convert_fx_flatten_with_its_own_qparams_requantizes() {
    assert_passes_with("difflive-flatten-requantize", "convert_fx");
}

#[test]
fn decomposed_flow_clamps_around_a_zero_point_outside_its_range() {
    assert_passes_with(
        "difflive-histogram-symmetric-zp128",
        "_convert_to_reference_decomposed_fx",
    );
}

#[test]
fn reference_mul_relu_keeps_negative_zero() {
    assert_passes_with("difflive-mul-relu-negative-zero", "convert_to_reference_fx");
}
