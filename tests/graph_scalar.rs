//! Graph cases with numbers added to / multiplied with quantized activations (`x + 3.0`,
//! `x * 0.5`, `relu(x + -1.25)`, `x * -2.0` between two convs), captured from PyTorch 2.15 under
//! fbgemm and qnnpack PTQ through the three convert flows by `tests/data/graph-scalar/make.py`:
//! the graph plan maps the `add_scalar` / `mul_scalar` / `add_scalar_relu` nodes, convert_fx's
//! kernel-picked qparams must be the recorded ones, and the reference flows' float ops match
//! PyTorch's floats bit for bit.

use qparity::check::{check_file, CheckOptions};
use std::path::Path;

#[test]
fn scalar_add_and_mul_nodes_reproduce_in_every_flow() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/graph-scalar");
    let opts = CheckOptions::default(); // captured on an AVX-512 VNNI CPU (AMD Zen 4)
    let mut exact = 0;
    for engine in ["fbgemm", "qnnpack"] {
        let p = dir.join(format!("graph-scalardemo-{engine}-ptq-default-0000.json"));
        let r = check_file(&p, &opts);
        assert!(r.passed, "{engine}: {:?} {:?}", r.error, r.first_mismatch);
        let groups: Vec<&String> = r.groups.keys().collect();
        for flow in ["convert_fx", "convert_to_reference_fx/float"] {
            assert!(
                groups.iter().any(|g| *g == flow),
                "{engine}: no {flow} in {groups:?}"
            );
        }
        exact += r.groups.values().map(|g| g.exact).sum::<u64>();
        assert!(r
            .groups
            .values()
            .all(|g| g.mismatched == 0 && g.ambiguous == 0));
    }
    assert_eq!(exact, 30_848);
}

#[test]
fn a_wrong_kernel_qparam_is_an_error_not_a_silent_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/graph-scalar");
    let text =
        std::fs::read_to_string(dir.join("graph-scalardemo-fbgemm-ptq-default-0000.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // mul_2 = quantized::mul(add_2, 0.5): PyTorch's output scale is 0.5 · the input's.
    let rec = &mut v["flows"]["convert_fx"]["runs"][0]["values"]["mul_2"];
    let s = rec["scale"].as_f64().unwrap();
    rec["scale"] = serde_json::json!(s * (1.0 + f64::EPSILON));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("case.json");
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    let r = check_file(&p, &CheckOptions::default());
    assert!(!r.passed);
    let err = r.error.unwrap_or_default();
    assert!(err.contains("kernel picks"), "{err}");
}
