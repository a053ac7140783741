//! The committed goldens: every set under golden/ (one per capture CPU) is pinned by its manifest,
//! and the reference engine reproduces every number PyTorch produced, modelling each set from its
//! own manifest's CPU flags whatever CPU runs the test (0 mismatched elements; ambiguous elements
//! only where a float op's proven error bound or oneDNN's unknown requantization order leaves the
//! result open).

use qparity::check::{check_path, CheckOptions, Report};
use qparity::engine::CpuFeatures;
use qparity::golden::manifest::{locate, GoldenSet, Manifest};
use std::path::Path;

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/golden"))
}

fn sets() -> Vec<GoldenSet> {
    let located = locate(golden_dir()).expect("golden/ readable");
    assert!(
        located.loose.is_empty(),
        "case files outside every golden set: {:?}",
        located.loose
    );
    located.sets
}

/// The sets of one named suite (e.g. `pins`).
fn suite_sets(name: &str) -> Vec<GoldenSet> {
    sets()
        .into_iter()
        .filter(|s| s.manifest.suite.as_deref() == Some(name))
        .collect()
}

/// The sets of the core suite (primitives and small models, one per capture CPU).
fn core_sets() -> Vec<GoldenSet> {
    sets()
        .into_iter()
        .filter(|s| s.manifest.suite.as_deref().unwrap_or("core") == "core")
        .collect()
}

#[test]
fn manifests_match_every_golden_file_and_cover_both_cpu_classes() {
    let sets = sets();
    let mut classes = std::collections::BTreeSet::new();
    for s in &sets {
        let problems = s.manifest.verify(&s.dir).expect("golden set readable");
        assert!(
            problems.is_empty(),
            "{} does not match its manifest:\n{}",
            s.dir.display(),
            problems.join("\n")
        );
        classes.insert(s.manifest.cpu().expect("cpu_flags").class_name());
    }
    for class in ["AVX2", "AVX-512 VNNI"] {
        assert!(
            classes.contains(class),
            "no golden set of class {class}: {classes:?}"
        );
    }
    let cases: usize = sets.iter().map(|s| s.manifest.cases).sum();
    assert!(cases >= 800, "only {cases} cases");
}

#[test]
fn edited_golden_file_is_caught_by_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let set = &sets()[0];
    let m = Manifest::load(&set.dir).unwrap();
    let (rel, _) = m.files.iter().next().unwrap();
    std::fs::create_dir_all(tmp.path().join(rel).parent().unwrap()).unwrap();
    std::fs::copy(
        set.dir.join("MANIFEST.json"),
        tmp.path().join("MANIFEST.json"),
    )
    .unwrap();
    let text = std::fs::read_to_string(set.dir.join(rel)).unwrap();
    std::fs::write(tmp.path().join(rel), text.replacen('1', "2", 1)).unwrap();
    let problems = m.verify(tmp.path()).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(rel.as_str()) && p.contains("content changed")),
        "{problems:?}"
    );
}

/// Checks one set with its manifest's CPU (`opts` supplies the rest); returns the report and the
/// list of failing cases.
fn check_set(set: &GoldenSet, opts: CheckOptions) -> (Report, Vec<String>) {
    let opts = CheckOptions {
        cpu: set.manifest.cpu().unwrap(),
        ..opts
    };
    let report = check_path(&set.dir, &opts, |_, _| {}).unwrap();
    let failures = report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {:?} {:?}", c.id, c.error, c.first_mismatch))
        .collect();
    (report, failures)
}

fn assert_passes(set: &GoldenSet, opts: CheckOptions) -> Report {
    let (report, failures) = check_set(set, opts);
    assert!(
        failures.is_empty(),
        "{}: {} failing cases:\n{}",
        set.dir.display(),
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(report.passed, set.manifest.cases, "{}", set.dir.display());
    assert_eq!(report.elements_mismatched, 0);
    report
}

#[test]
fn reference_engine_reproduces_every_golden_set() {
    for set in core_sets() {
        let report = assert_passes(&set, CheckOptions::default());
        assert!(
            report.elements_exact > 500_000,
            "{}: only {} exact elements",
            set.dir.display(),
            report.elements_exact
        );
        let (amb, tot) = report.reference_ambiguity();
        assert!(
            tot > 0 && (amb as f64) < 0.001 * tot as f64,
            "{}: reference-flow ambiguity {amb}/{tot}",
            set.dir.display()
        );
        // A set that records the reference flows' pre-quantize floats checks every model case's
        // float ops against them, and then has nothing ambiguous in those flows.
        let float_group = |c: &qparity::check::CaseResult, f: &str| {
            c.groups
                .get(&format!("{f}/float"))
                .is_some_and(|s| s.total() > 0)
        };
        let with_floats = report
            .cases
            .iter()
            .filter(|c| float_group(c, "convert_to_reference_fx"))
            .count();
        if with_floats > 0 {
            for c in report.cases.iter().filter(|c| c.kind == "model") {
                for f in [
                    "convert_to_reference_fx",
                    "_convert_to_reference_decomposed_fx",
                ] {
                    assert!(float_group(c, f), "{}: no {f}/float stage", c.id);
                }
            }
            assert_eq!(amb, 0, "{}: ambiguous with pre_quant", set.dir.display());
        }
    }
}

/// A model case's `pre_quant` is data, not decoration: a wrong hash, a wrong delta, or one in
/// convert_fx fails the case with an error naming the file and the field.
#[test]
fn corrupted_model_pre_quant_is_an_error_naming_the_field() {
    let (set, rel, text) = core_sets()
        .into_iter()
        .find_map(|s| {
            let rel = s
                .manifest
                .files
                .keys()
                .find(|f| f.contains("model-composed"))?
                .clone();
            let text = std::fs::read_to_string(s.dir.join(&rel)).unwrap();
            text.contains("\"pre_quant\"").then_some((s, rel, text))
        })
        .expect("a core set with pre_quant in its composed model cases");
    let name = Path::new(&rel).file_name().unwrap().to_str().unwrap();
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sources = |case: &serde_json::Value| -> Vec<String> {
        case["flows"]["convert_to_reference_fx"]["runs"][0]["quantized"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["source"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(sources(&case), ["input", "conv2d", "flatten", "linear"]);
    let tmp = tempfile::tempdir().unwrap();
    let entry = |c: &mut serde_json::Value, flow: &str, t: usize| -> serde_json::Value {
        c["flows"][flow]["runs"][0]["quantized"][t].clone()
    };
    let reference = "convert_to_reference_fx";
    let decomposed = "_convert_to_reference_decomposed_fx";
    let mut variants: Vec<(&str, String, serde_json::Value)> = Vec::new();
    // A flipped hash on each encoding: the input's, flatten's (exact evaluation), a delta's.
    for (t, what) in [(0, "input"), (2, "flatten"), (3, "linear")] {
        let mut c = case.clone();
        let mut e = entry(&mut c, decomposed, t);
        let h = e["pre_quant"]["sha256"].as_str().unwrap().to_string();
        let flipped = if h.starts_with('0') { "1" } else { "0" };
        e["pre_quant"]["sha256"] = serde_json::Value::String(format!("{flipped}{}", &h[1..]));
        c["flows"][decomposed]["runs"][0]["quantized"][t] = e;
        variants.push((
            what,
            format!("flows.{decomposed}.runs[0].quantized[{t}].pre_quant"),
            c,
        ));
    }
    // A conv delta taken from the linear entry: wrong length.
    let mut c = case.clone();
    let lin = entry(&mut c, reference, 3)["pre_quant"].clone();
    c["flows"][reference]["runs"][0]["quantized"][1]["pre_quant"] = lin;
    variants.push((
        "conv2d",
        format!("flows.{reference}.runs[0].quantized[1].pre_quant"),
        c,
    ));
    // pre_quant in the integer flow.
    let mut c = case.clone();
    let pq = entry(&mut c, reference, 1)["pre_quant"].clone();
    c["flows"]["convert_fx"]["runs"][0]["quantized"][1]["pre_quant"] = pq;
    variants.push((
        "convert_fx",
        "flows.convert_fx.runs[0].quantized[1].pre_quant".into(),
        c,
    ));
    for (i, (what, field, c)) in variants.iter().enumerate() {
        let dir = tmp.path().join(format!("v{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), serde_json::to_string(c).unwrap()).unwrap();
        let report = check_path(
            &dir,
            &CheckOptions {
                cpu: set.manifest.cpu().unwrap(),
                ..CheckOptions::default()
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(report.failed, 1, "{what}: the corrupted case passed");
        let e = report.cases[0].error.as_deref().unwrap_or_default();
        assert!(
            e.contains(name) && e.contains(field.as_str()),
            "{what}: error does not name {name} and {field}: {e}"
        );
    }
    // Unchanged, the same case passes.
    let dir = tmp.path().join("ok");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), &text).unwrap();
    let report = check_path(
        &dir,
        &CheckOptions {
            cpu: set.manifest.cpu().unwrap(),
            ..CheckOptions::default()
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(report.passed, 1, "{:?}", report.cases[0].error);
}

/// The CPU model is not vacuous: each class's set fails when modelled as the other class (the
/// forced-AVX2 hybrids fail as true AVX2, the AVX2 set fails as VNNI).
#[test]
fn a_set_modelled_as_the_other_cpu_class_fails() {
    for set in core_sets() {
        let cpu = set.manifest.cpu().unwrap();
        let other = if cpu.avx512_vnni {
            CpuFeatures::AVX2
        } else {
            CpuFeatures::AVX512_VNNI
        };
        let report = check_path(
            &set.dir,
            &CheckOptions {
                cpu: other,
                ..CheckOptions::default()
            },
            |_, _| {},
        )
        .unwrap();
        assert!(
            report.elements_mismatched > 0,
            "{} also passes when modelled as {}",
            set.dir.display(),
            other.class_name()
        );
    }
}

/// The ops suite: every op on quantized tensors under every engine, 0 mismatches, nothing
/// ambiguous (these kernels are integer or exactly specified float arithmetic).
#[test]
fn every_op_on_quantized_tensors_reproduces_its_goldens() {
    let ops: Vec<GoldenSet> = sets()
        .into_iter()
        .filter(|s| s.manifest.suite.as_deref() == Some("ops"))
        .collect();
    assert!(!ops.is_empty(), "no golden set of the ops suite");
    for set in ops {
        let report = assert_passes(&set, CheckOptions::default());
        assert_eq!(report.elements_ambiguous, 0, "{}", set.dir.display());
        // Every registered op on quantized tensors has cases under every engine.
        for op in qparity::golden::PrimOp::ALL {
            if !op.is_quantized_op() {
                continue;
            }
            for engine in qparity::engine::Engine::ALL {
                let n = report
                    .cases
                    .iter()
                    .filter(|c| c.op == op.name() && c.passed && c.id.contains(engine.name()))
                    .count();
                assert!(
                    n > 0,
                    "{}: no {} case for {engine:?}",
                    set.dir.display(),
                    op.name()
                );
            }
        }
    }
}

/// The specials suite: the float-input primitives with NaN, ±inf and huge values mixed into their
/// data (xtask/capture/golden.py `SPECIALS_PRIMITIVES`), every element exact, every one of those
/// primitives covered.
#[test]
fn special_values_reproduce_exactly() {
    let sets = suite_sets("specials");
    assert!(!sets.is_empty(), "no golden set of the specials suite");
    for set in sets {
        let report = assert_passes(&set, CheckOptions::default());
        assert_eq!(report.elements_ambiguous, 0, "{}", set.dir.display());
        for op in [
            "quantize_per_tensor",
            "quantize_per_channel",
            "decomposed_quantize_per_tensor",
            "decomposed_quantize_per_channel",
            "fake_quantize_per_tensor_affine",
            "fake_quantize_per_channel_affine",
            "fused_moving_avg_obs_fake_quant",
            "observer",
        ] {
            assert!(
                report.cases.iter().any(|c| c.op == op),
                "{}: no {op} case",
                set.dir.display()
            );
        }
    }
}

/// The pins suite: cases on which a numerics rule and its nearest alternative give different
/// outputs (xtask/capture/pins.py and the pins_*.py it draws on); every one reproduced exactly, every rule the
/// capture pins has cases on every engine it runs on (in some set), and every case names a rule
/// `qparity check` describes.
#[test]
fn every_pinning_golden_reproduces() {
    let pins = suite_sets("pins");
    assert!(!pins.is_empty(), "no golden set of the pins suite");
    let rules = [
        ("R21-fbgemm-multiplier-division", &["-fbgemm-", "-x86-"][..]),
        (
            "R22-fbgemm-bias-per-tensor-reciprocal",
            &["-fbgemm-", "-x86-"],
        ),
        ("R22-fbgemm-bias-per-tensor-fma", &["-fbgemm-", "-x86-"]),
        (
            "R22-fbgemm-bias-per-channel-division",
            &["-fbgemm-", "-x86-"],
        ),
        ("R25-qnnpack-bias-reciprocal", &["-qnnpack-"]),
        ("R25-qnnpack-output-scale-reciprocal", &["-qnnpack-"]),
        ("R25-qnnpack-bias-rne", &["-qnnpack-"]),
        ("R24-final-rne", &["-fbgemm-", "-x86-", "-qnnpack-"]),
        (
            "R24-relu-clamp-at-zero-point",
            &["-fbgemm-", "-x86-", "-qnnpack-"],
        ),
        ("R2-observer-zero-point-rne", &["-default-"]),
        ("R2-observer-zero-point-division", &["-default-"]),
        ("R2-histogram-zero-point-rne", &["-default-"]),
        ("R2-histogram-zero-point-division", &["-default-"]),
        ("R4-fbgemm-zero-point-anchor", &["-default-"]),
        ("R4-fbgemm-small-scale", &["-default-"]),
        ("R4-fbgemm-symmetric-midpoint", &["-default-"]),
        ("R8-quantize-f32-scale-reciprocal", &["-default-"]),
        ("R7-histogram-threshold-f32", &["-default-"]),
        ("R11-decomposed-reciprocal-double", &["-default-"]),
        ("R12-decomposed-quantize-f64-scales", &["-default-"]),
        ("R12-decomposed-dequantize-f64-scales", &["-default-"]),
        ("R11-decomposed-int32-clamp-f32", &["-default-"]),
        ("R12-decomposed-int32-clamp-op-precision", &["-default-"]),
        ("R13-fake-quantize-mask-rounded", &["-default-"]),
        ("R13-fake-quantize-mask-ties-even", &["-default-"]),
        ("R13-per-tensor-clamp-before-int64", &["-default-"]),
        ("R13-per-channel-int64-before-clamp", &["-default-"]),
        (
            "R34-adaptive-bounds-f32",
            &["-fbgemm-", "-x86-", "-qnnpack-", "-onednn-"],
        ),
        ("R16-weight-zero-point", &["-fbgemm-", "-x86-", "-qnnpack-"]),
    ];
    let mut ids = Vec::new();
    for set in pins {
        let report = assert_passes(&set, CheckOptions::default());
        assert_eq!(report.elements_ambiguous, 0, "{}", set.dir.display());
        for case in &report.cases {
            assert!(
                !case.pins.is_empty(),
                "{}: {} has no pins tag",
                set.dir.display(),
                case.id
            );
            for rule in &case.pins {
                assert!(
                    rules.iter().any(|(r, _)| r == rule),
                    "{}: {} pins {rule}, which this test does not list",
                    set.dir.display(),
                    case.id
                );
                assert!(
                    !qparity::check::pinned_rule(rule).contains("does not describe"),
                    "{}: qparity check does not describe {rule}",
                    case.id
                );
            }
        }
        ids.extend(report.cases.iter().map(|c| c.id.clone()));
    }
    for (rule, engines) in rules {
        for engine in engines {
            let n = ids
                .iter()
                .filter(|id| id.starts_with(&format!("pin-{rule}{engine}")))
                .count();
            assert!(n > 0, "no {rule} case on {engine}");
        }
    }
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
    // quantized_linear with per-channel weight scales: a zero point per tensor, or one scale
    // too many for its one output channel.
    let linear = |scale: &str, zp: &str| {
        format!(
            r#"{{"format":"qparity-golden/1","id":"l","kind":"primitive","op":"quantized_linear","args":{{"engine":"fbgemm","input":{{"dtype":"f32","shape":[1,1],"hex":"3f800000"}},"input_scale":1.0,"input_zero_point":0,"weight_int_repr":{{"dtype":"i8","shape":[1,1],"data":[1]}},"weight_scale":{scale},"weight_zero_point":{zp},"output_scale":1.0,"output_zero_point":0}},"expected":{{"input_int_repr":{{"dtype":"u8","shape":[1,1],"data":[1]}},"int_repr":{{"dtype":"u8","shape":[1,1],"data":[1]}}}}}}"#
        )
    };
    let mixed = linear("[0.5]", "0");
    let long = linear("[0.5, 0.25]", "[0, 0]");
    let bad: Vec<(&str, &str)> = bad
        .into_iter()
        .chain([("mixed.json", &mixed[..]), ("long.json", &long[..])])
        .collect();
    for &(name, text) in &bad {
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
/// it implements, in every set (the requantization around it is the reference rule).
#[test]
fn optimized_kernels_reproduce_the_goldens() {
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
    for set in sets() {
        for &name in &names {
            let opts = CheckOptions {
                kernel: Some(name),
                ..CheckOptions::default()
            };
            let (report, failures) = check_set(&set, opts);
            assert!(
                failures.is_empty(),
                "{} with kernel {name}: {} failing cases:\n{}",
                set.dir.display(),
                failures.len(),
                failures.join("\n")
            );
            assert_eq!(report.elements_mismatched, 0, "kernel {name}");
        }
    }
}

/// Every golden convert_fx stage on the fbgemm, x86 and qnnpack engines runs on the optimized
/// x86 backend (packed weights, fused requantization, u8 out) and equals PyTorch's output bit for
/// bit, in every set but the real models (their own test below); the backend must have decided a
/// substantial share of the elements.
#[cfg(target_arch = "x86_64")]
#[test]
fn fused_x86_backend_reproduces_golden_models() {
    let mut fused = qparity::check::Stats::default();
    let mut engines = std::collections::BTreeSet::new();
    let mut lowered = std::collections::BTreeSet::new();
    for set in sets() {
        if set.manifest.suite.as_deref() == Some("graphs") {
            continue;
        }
        let report = assert_passes(
            &set,
            CheckOptions {
                backend: qparity::backend::native(),
                ..CheckOptions::default()
            },
        );
        // `fused_stages` keys are `op: kernel`.
        lowered.extend(
            report
                .fused_stages
                .keys()
                .filter_map(|k| k.split(':').next().map(str::to_string)),
        );
        for c in &report.cases {
            if let Some(s) = c.groups.get("convert_fx[x86-fused]") {
                fused.exact += s.exact;
                fused.mismatched += s.mismatched;
                // oneDNN convs run FBGEMM's requantization, which their plan admits.
                if c.engine != "x86" && c.engine != "onednn" {
                    fused.ambiguous += s.ambiguous;
                }
                engines.insert(c.engine.clone());
            }
        }
    }
    eprintln!("fused x86 backend: {fused:?} over engines {engines:?}");
    assert_eq!(fused.mismatched, 0);
    assert_eq!(
        fused.ambiguous, 0,
        "the fused backend only makes exact predictions outside oneDNN"
    );
    // One 420-case set has about 60 000 such elements.
    assert!(fused.exact > 50_000, "only {} fused elements", fused.exact);
    for e in ["fbgemm", "x86", "qnnpack"] {
        assert!(engines.contains(e), "no {e} layer ran on the fused backend");
    }
    // Every op whose plan lowers to the backend ran on it.
    let expected = [
        "adaptive_avg_pool2d",
        "add",
        "add_relu",
        "avg_pool2d",
        "cat",
        "cat_relu",
        "conv2d",
        "dequantize",
        "flatten",
        "hardsigmoid",
        "hardswish",
        "leaky_relu",
        "linear",
        "max_pool2d",
        "mean",
        "mul",
        "mul_relu",
        "quantize",
    ];
    assert_eq!(lowered.into_iter().collect::<Vec<_>>(), expected);
}

/// Every stage of every real model's convert_fx flow (every engine captured) runs on the
/// optimized backend — no stage falls back to the reference model — with 0 mismatched elements,
/// stage by stage on PyTorch's recorded inputs and end to end through the model runner from the
/// f32 input. Ambiguous elements only where oneDNN requantizes (x86 engine): the end-to-end run
/// stops comparing after the first such admissible difference.
#[test]
fn real_models_run_every_stage_on_the_optimized_backend() {
    let Some(backend) = qparity::backend::native() else {
        return;
    };
    assert_real_models_run_every_stage_on(backend);
}

/// The generic kernel backend (the ARM backend's code) over this CPU's best exact kernel with
/// fused entry points runs every stage of the real models — FBGEMM's depthwise layers on the
/// portable tap-pair kernel, FBGEMM's pair-saturating packed GEMM (`graphs-avx2-*`) on
/// `kernels::pairs` — with 0 mismatched elements: what `arm-test` checks under qemu,
/// natively. Not on aarch64, where the native backend is this backend over the same kernel
/// (`real_models_run_every_stage_on_the_optimized_backend`).
#[cfg(not(target_arch = "aarch64"))]
#[test]
fn kernel_backend_runs_every_stage_of_the_real_models() {
    let kernel = qparity::kernels::available()
        .into_iter()
        .filter(|k| {
            k.accumulation() == qparity::kernels::Accumulation::Exact
                && k.quant_gemm().is_some()
                && k.quant_conv().is_some()
        })
        .max_by_key(|k| k.isa().is_some())
        .expect("an exact kernel with fused entry points");
    eprintln!("kernel backend over {}", kernel.name());
    let backend: &'static qparity::backend::KernelBackend = Box::leak(Box::new(
        qparity::backend::KernelBackend::new("kernel-fused", kernel),
    ));
    assert_real_models_run_every_stage_on(backend);
}

fn assert_real_models_run_every_stage_on(backend: &'static dyn qparity::backend::Backend) {
    let graphs = suite_sets("graphs");
    assert!(!graphs.is_empty(), "no golden set of the graphs suite");
    let fused_group = format!("convert_fx[{}]", backend.name());
    let e2e_group = format!("convert_fx[{} end-to-end]", backend.name());
    let mut engines = std::collections::BTreeSet::new();
    let mut ops = std::collections::BTreeMap::<String, u64>::new();
    let (mut fused, mut fallbacks) = (qparity::check::Stats::default(), 0);
    for set in graphs {
        let report = assert_passes(
            &set,
            CheckOptions {
                backend: Some(backend),
                ..CheckOptions::default()
            },
        );
        assert_eq!(
            report.backend_fallbacks,
            0,
            "{}: stages fell back: {:?}",
            set.dir.display(),
            report.fallback_ops
        );
        assert_eq!(report.elements_mismatched, 0);
        for c in &report.cases {
            let stage = c.groups.get(&fused_group).copied().unwrap_or_default();
            let e2e = c.groups.get(&e2e_group).copied().unwrap_or_default();
            assert!(stage.exact > 10_000, "{}: {stage:?}", c.id);
            assert!(e2e.exact > 10_000, "{}: {e2e:?}", c.id);
            for s in [stage, e2e] {
                fused.exact += s.exact;
                fused.ambiguous += s.ambiguous;
                fused.mismatched += s.mismatched;
            }
            assert_eq!(stage.mismatched + e2e.mismatched, 0, "{}", c.id);
            if c.engine != "x86" && c.engine != "onednn" {
                assert_eq!(stage.ambiguous + e2e.ambiguous, 0, "{}", c.id);
            }
            assert!(
                !c.groups.contains_key("convert_fx"),
                "{}: convert_fx stages checked on the reference model",
                c.id
            );
            engines.insert(c.engine.clone());
        }
        fallbacks += report.backend_fallbacks;
        for (op, n) in &report.fused_stages {
            *ops.entry(op.clone()).or_default() += n;
        }
    }
    eprintln!(
        "real models on {}: {engines:?}, {ops:?}; {fused:?} (stages and end to end), \
         {fallbacks} fallbacks",
        backend.name()
    );
    for e in ["fbgemm", "x86", "qnnpack"] {
        assert!(engines.contains(e), "no {e} real model");
    }
}

/// Every optimized kernel with fused entry points, wrapped in the generic kernel backend (the ARM
/// backend on aarch64, and how an outside kernel is checked), runs every golden convert_fx layer
/// and pins-suite linear it implements end to end and equals PyTorch's output bit for bit.
#[test]
fn kernel_backend_reproduces_golden_models_on_every_fused_kernel() {
    let kernels: Vec<_> = qparity::kernels::available()
        .into_iter()
        .filter(|k| k.quant_gemm().is_some() && k.quant_conv().is_some())
        .collect();
    assert!(!kernels.is_empty(), "no kernel with fused entry points");
    for kernel in kernels {
        let name = kernel.name();
        let backend: &'static qparity::backend::KernelBackend = Box::leak(Box::new(
            qparity::backend::KernelBackend::new("kernel-fused", kernel),
        ));
        let mut fused = qparity::check::Stats::default();
        let mut pinned = 0u64;
        let mut engines = std::collections::BTreeSet::new();
        for set in core_sets().into_iter().chain(suite_sets("pins")) {
            let report = assert_passes(
                &set,
                CheckOptions {
                    backend: Some(backend),
                    ..CheckOptions::default()
                },
            );
            for c in &report.cases {
                if let Some(s) = c.groups.get("convert_fx[kernel-fused]") {
                    fused.exact += s.exact;
                    fused.ambiguous += s.ambiguous;
                    fused.mismatched += s.mismatched;
                    engines.insert(c.engine.clone());
                }
                // The pins suite's quantized_linear cases: per-tensor FBGEMM bias by FMA.
                if let Some(s) = c.groups.get("quantized_linear[kernel-fused]") {
                    pinned += s.exact;
                }
            }
        }
        eprintln!(
            "kernel backend on {name}: {fused:?} over engines {engines:?}; {pinned} pins elements"
        );
        assert!(
            pinned > 0 || suite_sets("pins").is_empty(),
            "{name}: ran no pins case"
        );
        assert_eq!(fused.mismatched, 0, "{name}");
        assert_eq!(fused.ambiguous, 0, "{name}: fused runs are exact");
        assert!(
            fused.exact > 10_000,
            "{name}: only {} fused elements",
            fused.exact
        );
    }
}

/// The graphs suite: torchvision's quantizable models, captured whole through the three convert
/// flows, reproduced with 0 mismatched and 0 ambiguous elements (the reference flows' floats are
/// checked against PyTorch's own before their quantize nodes), every model present.
#[test]
fn real_models_reproduce_their_graph_goldens() {
    let graphs = suite_sets("graphs");
    assert!(!graphs.is_empty(), "no golden set of the graphs suite");
    let mut models = std::collections::BTreeSet::new();
    for set in graphs {
        let report = assert_passes(&set, CheckOptions::default());
        assert!(report.elements_exact > 1_000_000, "{}", set.dir.display());
        // Ambiguous only where oneDNN requantizes (convert_fx convs under x86 / onednn), never in
        // the reference flows.
        let mut onednn_ambiguous = 0;
        for c in &report.cases {
            for (group, s) in &c.groups {
                if s.ambiguous > 0 {
                    assert!(
                        group == "convert_fx" && (c.engine == "x86" || c.engine == "onednn"),
                        "{}: {} ambiguous elements in {group}",
                        c.id,
                        s.ambiguous
                    );
                    onednn_ambiguous += s.ambiguous;
                }
            }
        }
        assert_eq!(report.elements_ambiguous, onednn_ambiguous);
        // Ids are graph-<model>-<engine>-<mode>-<isa>-<index>.
        models.extend(report.cases.iter().map(|c| {
            let mode = c.id.rsplit('-').nth(2).unwrap_or("?").to_string();
            (c.op.clone(), c.engine.clone(), mode)
        }));
    }
    // Every model under every engine PTQ, and under fbgemm and qnnpack QAT.
    for m in [
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "shufflenet_v2_x1_0",
        "googlenet",
        "inception_v3",
    ] {
        for (engine, mode) in [
            ("fbgemm", "ptq"),
            ("x86", "ptq"),
            ("qnnpack", "ptq"),
            ("onednn", "ptq"),
            ("fbgemm", "qat"),
            ("qnnpack", "qat"),
        ] {
            let key = (m.to_string(), engine.to_string(), mode.to_string());
            assert!(
                models.contains(&key),
                "no graph golden of {m} {engine} {mode}"
            );
        }
    }
}

/// `Model::run_into` reuses the buffers of the run it is given: runs into one `RunOutput` on
/// different inputs, alternating, give the codes and outputs of fresh runs on those inputs.
#[test]
fn runs_into_reused_buffers_equal_fresh_runs() {
    use qparity::tensor::Data;
    let Some(backend) = qparity::backend::native() else {
        return;
    };
    let path =
        golden_dir().join("graphs-vnni-seed0/cases/graph-resnet18-fbgemm-ptq-default-0000.json");
    let case = qparity::golden::load_case(&path).expect("golden case");
    let graph = qparity::runner::Graph::from_case(&case, &CpuFeatures::host()).expect("graph");
    let model = graph.plan(Some(backend)).expect("plan");
    let first = graph.inputs()[0].clone();
    let mut second = first.clone();
    let Data::F32(v) = &mut second.data else {
        panic!("float input expected");
    };
    for (i, x) in v.iter_mut().enumerate() {
        *x = -*x * 0.75 + (i % 7) as f32 * 0.01;
    }
    let fresh = [model.run(&first).unwrap(), model.run(&second).unwrap()];
    assert_ne!(
        fresh[0].output, fresh[1].output,
        "inputs should differ in output"
    );
    let mut reused = qparity::runner::RunOutput::default();
    for round in 0..4 {
        let (input, want) = if round % 2 == 0 {
            (&first, &fresh[0])
        } else {
            (&second, &fresh[1])
        };
        model
            .run_into(&qparity::ops::Value::Tensor(input.clone()), &mut reused)
            .unwrap();
        assert_eq!(reused.output, want.output, "round {round}");
        assert!(
            reused
                .nodes
                .iter()
                .map(|q| &q.data)
                .eq(want.nodes.iter().map(|q| &q.data)),
            "round {round}: node codes differ"
        );
    }
}
