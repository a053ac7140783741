//! The committed goldens: the manifest pins every file, and the reference engine reproduces every
//! number PyTorch produced (0 mismatched elements; ambiguous elements only where a float op's
//! proven error bound or oneDNN's unmodelled kernel choice leaves the result open).

use qparity::check::{check_path, CheckOptions};
use qparity::golden::manifest::Manifest;
use std::path::Path;

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/golden"))
}

#[test]
fn manifest_matches_every_golden_file() {
    let m = Manifest::load(golden_dir()).expect("golden/MANIFEST.json loads");
    let problems = m.verify(golden_dir()).expect("golden/ readable");
    assert!(
        problems.is_empty(),
        "golden/ does not match its manifest:\n{}",
        problems.join("\n")
    );
    assert!(m.cases >= 300, "only {} cases", m.cases);
}

#[test]
fn edited_golden_file_is_caught_by_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Manifest::load(golden_dir()).unwrap();
    let (rel, _) = m.files.iter().next().unwrap();
    std::fs::create_dir_all(tmp.path().join(rel).parent().unwrap()).unwrap();
    std::fs::copy(
        golden_dir().join("MANIFEST.json"),
        tmp.path().join("MANIFEST.json"),
    )
    .unwrap();
    let text = std::fs::read_to_string(golden_dir().join(rel)).unwrap();
    std::fs::write(tmp.path().join(rel), text.replacen('1', "2", 1)).unwrap();
    let problems = m.verify(tmp.path()).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(rel.as_str()) && p.contains("content changed")),
        "{problems:?}"
    );
}

/// Checks the committed cases (`fused`: also on the fused x86 backend); panics listing every
/// failing case.
fn check_committed(fused: bool) -> (Manifest, qparity::check::Report) {
    let m = Manifest::load(golden_dir()).unwrap();
    let opts = CheckOptions {
        cpu_has_vnni: m.cpu_has_vnni(),
        backend: if fused {
            qparity::backend::native()
        } else {
            None
        },
        ..CheckOptions::default()
    };
    let report = check_path(&golden_dir().join("cases"), &opts, |_, _| {}).unwrap();
    let failures: Vec<String> = report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {:?} {:?}", c.id, c.error, c.first_mismatch))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    (m, report)
}

#[test]
fn reference_engine_reproduces_every_golden_case() {
    let (m, report) = check_committed(false);
    assert_eq!(report.passed, m.cases);
    assert_eq!(report.elements_mismatched, 0);
    assert!(
        report.elements_exact > 1_000_000,
        "only {} exact elements",
        report.elements_exact
    );
    let (amb, tot) = report.reference_ambiguity();
    assert!(
        tot > 0 && (amb as f64) < 0.001 * tot as f64,
        "reference-flow ambiguity {amb}/{tot}"
    );
}

#[test]
fn malformed_case_is_a_failed_result_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = [
        (
            "truncated.json",
            "{\"format\": \"qparity-golden/1\", \"id\"",
        ),
        (
            "unknown_engine.json",
            r#"{"format":"qparity-golden/1","id":"x","kind":"model","engine":"tpu","mode":"ptq","input_shape":[1,2],"layers":[],"qconfig":{"activation":{"class":"MinMaxObserver"},"weight":{"class":"MinMaxObserver"}},"calibration":[],"observers":[],"weights":[],"inputs":[],"flows":{}}"#,
        ),
        (
            "zero_scale.json",
            r#"{"format":"qparity-golden/1","id":"z","kind":"primitive","op":"quantize_per_tensor","args":{"input":{"dtype":"f32","shape":[1],"hex":"3f800000"},"scale":0.0,"zero_point":0,"dtype":"quint8"},"expected":{"int_repr":{"dtype":"u8","shape":[1],"data":[0]}}}"#,
        ),
        (
            "zp_range.json",
            r#"{"format":"qparity-golden/1","id":"z","kind":"primitive","op":"quantize_per_tensor","args":{"input":{"dtype":"f32","shape":[1],"hex":"3f800000"},"scale":0.1,"zero_point":300,"dtype":"quint8"},"expected":{"int_repr":{"dtype":"u8","shape":[1],"data":[0]}}}"#,
        ),
        (
            "nan_scale.json",
            r#"{"format":"qparity-golden/1","id":"z","kind":"primitive","op":"dequantize_per_tensor","args":{"int_repr":{"dtype":"u8","shape":[1],"data":[3]},"scale":-1.0,"zero_point":0,"dtype":"quint8"},"expected":{"output":{"dtype":"f32","shape":[1],"hex":"00000000"}}}"#,
        ),
    ];
    for (name, text) in bad {
        std::fs::write(tmp.path().join(name), text).unwrap();
    }
    let report = check_path(tmp.path(), &CheckOptions::default(), |_, _| {}).unwrap();
    assert_eq!(report.failed, bad.len());
    for c in &report.cases {
        let e = c.error.as_deref().unwrap_or_default();
        assert!(!e.is_empty(), "{}: no error", c.path);
        assert!(e.contains(".json"), "error does not name the file: {e}");
    }
}

/// Every optimized kernel on this CPU reproduces every golden convert_fx accumulation whose model
/// it implements (the requantization around it is the reference rule).
#[test]
fn optimized_kernels_reproduce_the_goldens() {
    let m = Manifest::load(golden_dir()).unwrap();
    let kernels = qparity::kernels::available();
    let names: Vec<&'static str> = kernels
        .iter()
        .map(|k| k.name())
        .filter(|n| !n.starts_with("reference"))
        .collect();
    #[cfg(target_arch = "x86_64")]
    assert!(
        names.iter().any(|n| n.contains("avx2")),
        "no optimized x86 kernel available: {names:?}"
    );
    for name in names {
        let opts = CheckOptions {
            cpu_has_vnni: m.cpu_has_vnni(),
            kernel: Some(name),
            ..CheckOptions::default()
        };
        let report = check_path(&golden_dir().join("cases"), &opts, |_, _| {}).unwrap();
        assert_eq!(
            report.failed, 0,
            "kernel {name}: {} failing cases",
            report.failed
        );
        assert_eq!(report.elements_mismatched, 0, "kernel {name}");
    }
}

/// Every golden convert_fx layer on the fbgemm, x86 and qnnpack engines runs end to end on the
/// optimized x86 backend (packed weights, fused requantization, u8 out) and equals PyTorch's
/// output bit for bit; the backend must have decided a substantial share of the elements.
#[cfg(target_arch = "x86_64")]
#[test]
fn fused_x86_backend_reproduces_golden_models() {
    let (_, report) = check_committed(true);
    let mut fused = qparity::check::Stats::default();
    let mut engines = std::collections::BTreeSet::new();
    for c in &report.cases {
        if let Some(s) = c.groups.get("convert_fx[x86-fused]") {
            fused.exact += s.exact;
            fused.ambiguous += s.ambiguous;
            fused.mismatched += s.mismatched;
            engines.insert(c.engine.clone());
        }
    }
    eprintln!("fused x86 backend: {fused:?} over engines {engines:?}");
    assert_eq!(fused.mismatched, 0);
    assert_eq!(
        fused.ambiguous, 0,
        "the fused backend only makes exact predictions"
    );
    // The committed set has 63 228 such elements (held-out sets are of similar size).
    assert!(fused.exact > 20_000, "only {} fused elements", fused.exact);
    for e in ["fbgemm", "x86", "qnnpack"] {
        assert!(engines.contains(e), "no {e} layer ran on the fused backend");
    }
}
