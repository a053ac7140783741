//! The runtime check end to end: an in-process runtime written here (not qparity's model), the
//! JSON-lines protocol against `qparity runtime-serve`, and `qparity runtime-check` on a golden
//! set. Deliberately wrong runtimes are caught and their rule named.

use ndarray::{ArrayD, IxDyn};
use qparity::engine::flow::Flow;
use qparity::engine::{CpuFeatures, Ctx, Engine, Isa};
use qparity::ops::layer::{Geometry, IntegerLayer, QLayer, QWeight};
use qparity::ops::{OutQParams, QTensor};
use qparity::runtime::check::{compare_stage, Row};
use qparity::runtime::protocol::ProcessRuntime;
use qparity::runtime::{layer_stage, QStage, Runtime, RuntimeInfo, RuntimeOutput, StageOp};
use qparity::Result;
use std::process::Command;

/// A small deterministic generator (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// Linear stages with power-of-two scales (so `(acc + bias) · multiplier` often lands exactly on
/// a half) and integral bias quotients, under `engine`, each with PyTorch's output as qparity's
/// model predicts it.
fn tie_stages(engine: Engine, n: usize) -> Vec<(QStage, IntegerLayer, QTensor, Vec<f64>)> {
    let mut g = Lcg(7 + engine as u64);
    let ctx = Ctx {
        flow: Flow::ConvertFx,
        engine,
        isa: Isa::Vnni,
        cpu: CpuFeatures::AVX512_VNNI,
    };
    (0..n)
        .map(|s| {
            let (m, k, oc) = (3, g.range(2, 9) as usize, g.range(1, 6) as usize);
            let sx = 2f64.powi(-(g.range(2, 5) as i32));
            let ws = 2f32.powi(-(g.range(3, 6) as i32));
            let atws = sx as f32 * ws;
            let layer = QLayer {
                geometry: Geometry::Linear {
                    in_features: k,
                    out_features: oc,
                },
                bias: Some((0..oc).map(|_| g.range(-40, 40) as f32 * atws).collect()),
                weight: QWeight {
                    shape: vec![oc, k],
                    int_repr: (0..oc * k).map(|_| g.range(-20, 20) as i8).collect(),
                    scales: vec![ws],
                    zero_points: vec![0],
                    per_channel: false,
                },
                relu: s % 3 == 0,
                cache: Default::default(),
            };
            let input = QTensor::new(
                vec![m, k],
                (0..m * k).map(|_| g.range(0, 40) as u8).collect(),
                sx,
                g.range(0, 20),
            );
            let out = OutQParams {
                scale: 2f64.powi(-(g.range(4, 8) as i32)),
                zero_point: g.range(100, 140),
                quant_min: 0,
                quant_max: 255,
            };
            let (qs, l) = layer_stage(&format!("tie stage {s}"), &ctx, &layer, &input, &out)
                .expect("a valid layer");
            let expected = match l.predict(&input, None).expect("predicts").values {
                qparity::ops::Predicted::Ints(p) => p
                    .iter()
                    .map(|p| match p {
                        qparity::numerics::bound::Pred::Exact(v) => *v as f64,
                        other => panic!("fbgemm / qnnpack predictions are exact: {other:?}"),
                    })
                    .collect(),
                other => panic!("a layer predicts integers: {other:?}"),
            };
            (qs, l, input, expected)
        })
        .collect()
}

/// A runtime written from the stage alone, the way an outside engine computes a linear layer:
/// exact int32 accumulation, the stage's int32 bias, `f32(f32(acc + bias) · f32(f32(s_x)·w_s /
/// f32(s_y)))`, rounded half to even or half away from zero.
struct TestRuntime {
    half_away: bool,
}

impl Runtime for TestRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "test".into(),
            version: "1".into(),
            isa: "scalar".into(),
        }
    }

    fn run(&mut self, s: &QStage) -> Result<Option<RuntimeOutput>> {
        if s.op != StageOp::Linear {
            return Ok(None);
        }
        let x: Vec<i32> = s.input.iter().map(|&v| v as i32).collect();
        let w: Vec<i32> = s.weight.iter().map(|&v| v as i32).collect();
        let (oc, k) = (s.weight.shape()[0], s.weight.shape()[1]);
        let m = x.len() / k;
        let mut out = Vec::with_capacity(m * oc);
        for i in 0..m {
            for j in 0..oc {
                let mut acc = 0i32;
                for t in 0..k {
                    acc += (x[i * k + t] - s.input_zero_point)
                        * (w[j * k + t] - s.weight_zero_point(j));
                }
                acc += s.bias_i32.as_ref().map_or(0, |b| b[j]);
                let mult = (s.input_scale as f32 * s.weight_scale(j)) / s.output_scale as f32;
                let v = acc as f32 * mult;
                let r = if self.half_away {
                    v.round()
                } else {
                    v.round_ties_even()
                };
                let lo = if s.relu { s.output_zero_point } else { 0 };
                out.push((r as i32 + s.output_zero_point).clamp(lo, 255) as u8);
            }
        }
        Ok(Some(RuntimeOutput {
            output: ArrayD::from_shape_vec(IxDyn(&s.output_shape), out).expect("shape"),
            accumulators: None,
        }))
    }
}

fn run_all(rt: &mut dyn Runtime, stages: &[(QStage, IntegerLayer, QTensor, Vec<f64>)]) -> Row {
    let mut row = Row::default();
    for (qs, l, input, expected) in stages {
        compare_stage(rt, qs, l, input, expected, &mut row).expect("runs");
    }
    row.resolve();
    row
}

#[test]
fn an_in_process_runtime_rounding_half_away_is_named() {
    for engine in [Engine::Qnnpack, Engine::Fbgemm] {
        let stages = tie_stages(engine, 60);
        // Written independently of qparity's model, the half-even twin equals PyTorch on these
        // stages: ties are where the two rounding rules part.
        let right = run_all(&mut TestRuntime { half_away: false }, &stages);
        assert!(right.elements > 500, "{engine:?}: {right:?}");
        assert_eq!(right.mismatched, 0, "{engine:?}: {right:?}");
        let wrong = run_all(&mut TestRuntime { half_away: true }, &stages);
        assert!(wrong.mismatched > 20, "{engine:?}: {wrong:?}");
        assert_eq!(
            wrong.causes.keys().collect::<Vec<_>>(),
            ["round half away from zero"],
            "{engine:?}: {:?}",
            wrong.examples
        );
        assert_eq!(wrong.causes["round half away from zero"], wrong.mismatched);
    }
}

fn qparity() -> String {
    env!("CARGO_BIN_EXE_qparity").to_string()
}

#[test]
fn a_protocol_runtime_is_driven_and_its_wrong_rule_named() {
    let stages = tie_stages(Engine::Qnnpack, 40);
    let cmd = format!("{} runtime-serve --rules round=half-away", qparity());
    let mut rt = ProcessRuntime::spawn(&cmd).expect("starts");
    assert!(
        rt.info().name.starts_with("qparity-variant"),
        "{:?}",
        rt.info()
    );
    let row = run_all(&mut rt, &stages);
    assert!(row.mismatched > 10, "{row:?}");
    assert_eq!(
        row.causes.keys().collect::<Vec<_>>(),
        ["round half away from zero"]
    );
    // The variant reports its accumulators: exact, which PyTorch's QNNPACK computes too.
    assert_eq!(row.accumulators.reported, row.elements);
    assert_eq!(row.accumulators.pytorch, row.elements);
}

#[test]
fn runtime_check_names_pair_saturation_on_a_golden_set() {
    let set = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/amx-xeon-seed0");
    let out = Command::new(qparity())
        .args([
            "runtime-check",
            "--json",
            "--runtime",
            &format!("cmd:{} runtime-serve --rules acc=pairs", qparity()),
            set,
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v["rows"].as_object().expect("rows");
    let mut mismatched = 0;
    for (key, row) in rows {
        mismatched += row["mismatched"].as_u64().unwrap();
        let causes = row["causes"].as_object().unwrap();
        assert!(!causes.contains_key("unexplained"), "{key}: {causes:?}");
        // QNNPACK accumulates exactly: every difference of a pairing runtime is its pairing.
        if key.starts_with("qnnpack / linear") {
            assert!(row["mismatched"].as_u64().unwrap() > 0, "{key}");
            assert_eq!(
                causes.keys().collect::<Vec<_>>(),
                ["int16 pair saturation"],
                "{key}"
            );
        }
    }
    assert!(mismatched > 1000, "{mismatched}");
}

#[test]
fn a_runtime_that_does_not_speak_the_protocol_is_a_clear_error() {
    let out = Command::new(qparity())
        .args([
            "runtime-check",
            "--runtime",
            "cmd:echo not-json",
            concat!(env!("CARGO_MANIFEST_DIR"), "/golden/pins-vnni-seed0"),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handshake"), "{err}");
}

#[test]
fn random_stages_from_the_generator_agree_with_an_independent_runtime() {
    // QNNPACK's rule (exact accumulation, its int32 bias, f32 multiplier, half to even) is what
    // TestRuntime computes from the stage alone: on the generator's linear layers it must give
    // qparity's predicted PyTorch output exactly, and rounding half away must be named when it
    // differs.
    let stages: Vec<_> =
        qparity::gen::runtime::random_stages(Engine::Qnnpack, CpuFeatures::AVX512_VNNI, 5, 80)
            .expect("generates")
            .into_iter()
            .filter(|s| s.0.op == StageOp::Linear)
            .collect();
    assert!(stages.len() > 10, "{}", stages.len());
    let right = run_all(&mut TestRuntime { half_away: false }, &stages);
    assert!(right.elements > 200, "{right:?}");
    assert_eq!(right.mismatched, 0, "{:?}", right.examples);
    let wrong = run_all(&mut TestRuntime { half_away: true }, &stages);
    assert!(
        wrong
            .causes
            .keys()
            .all(|c| c == "round half away from zero"),
        "{:?}",
        wrong.examples
    );
}

#[test]
fn runtime_check_runs_random_stages_through_a_protocol_runtime() {
    let run = |seed: &str| {
        let out = Command::new(qparity())
            .args([
                "runtime-check",
                "--json",
                "--random",
                "30",
                "--seed",
                seed,
                "--runtime",
                &format!("cmd:{} runtime-serve --rules clamp=no-relu", qparity()),
            ])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let v = run("11");
    let rows = v["rows"].as_object().expect("rows");
    let (mut stages, mut relu) = (0, 0);
    for (key, row) in rows {
        assert!(key.contains("random"), "{key}");
        stages += row["stages"].as_u64().unwrap();
        let causes = row["causes"].as_object().unwrap();
        assert!(!causes.contains_key("unexplained"), "{key}: {causes:?}");
        relu += causes
            .iter()
            .filter(|(c, _)| c.contains("no ReLU clamp"))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum::<u64>();
    }
    // 30 stages per engine (fbgemm, qnnpack); a runtime dropping the fused ReLU is caught.
    assert_eq!(stages, 60);
    assert!(relu > 0, "{rows:?}");
    // The same seed gives the same stages and report.
    assert_eq!(run("11"), v);
}

#[test]
fn seed_without_random_is_a_usage_error() {
    let out = Command::new(qparity())
        .args([
            "runtime-check",
            "--seed",
            "3",
            "--runtime",
            "example",
            "golden/pins-vnni-seed0",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--random"), "{err}");
}

#[test]
fn a_missing_path_is_a_clear_error_before_any_stage_runs() {
    let out = Command::new(qparity())
        .args([
            "runtime-check",
            "--random",
            "5",
            "--runtime",
            "variant:",
            "/no/such/golden-set",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/golden-set: no such file"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
