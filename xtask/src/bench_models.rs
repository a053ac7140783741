//! `cargo xtask bench --models [--json] [--rounds N] [--cpu C|none] [--model M]…`: whole models,
//! qparity's model runner ([`qparity::runner`] on the native backend) against PyTorch's
//! convert_fx model (fbgemm and x86 engines), one thread, 1×3×224×224 (inception_v3 299×299).
//!
//! The torch side is `xtask/bench/models_bench.py` (the venv's python, `$QPARITY_VENV`): it builds
//! each model with the graph capture's generated parameters, converts it under both engines, and
//! writes the fbgemm model's convert_fx flow on the bench input as a graph case (the capture's own
//! machinery) to a temporary directory. qparity plans that case once, runs it end to end from the
//! f32 input and must equal PyTorch bit for bit: every node's codes against the recorded ones and
//! the f32 output against the SHA-256 of the live fbgemm model's output. Any difference or any
//! node falling back to the reference model fails the run.
//!
//! Timing as `cargo xtask bench`: both sides pinned to one core, batches of calls for
//! `$QPARITY_BENCH_MIN_TIME` seconds (default 1), the fastest batch's on-CPU time per call (wall
//! minus the time the thread waited for the CPU). Every round times qparity, then torch fbgemm,
//! then torch x86; a side is reported by its best round; the ratio is the faster torch engine's
//! best round over qparity's best round, and the range of per-round ratios shows the noise.
//! Per-op breakdown: qparity's per-node times summed by op; torch's profiler self CPU times.

use anyhow::{bail, Context, Result};
use qparity::engine::CpuFeatures;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// The benchmarked models and their input size.
pub const MODELS: &[(&str, usize)] = &[
    ("resnet18", 224),
    ("resnet50", 224),
    ("mobilenet_v2", 224),
    ("mobilenet_v3_large", 224),
    ("shufflenet_v2_x1_0", 224),
    ("googlenet", 224),
    ("inception_v3", 299),
];

/// Seconds this thread has waited for a CPU while runnable (`/proc/thread-self/schedstat`).
fn wait_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(ns * 1e-9)
}

/// (fastest wall, median wall, fastest on-CPU) seconds per call, as `torch_bench.py: measure`.
fn measure(mut f: impl FnMut() -> Result<()>, min_time: f64) -> Result<[f64; 3]> {
    for _ in 0..3 {
        f()?;
    }
    let mut n = 1usize;
    loop {
        let t0 = Instant::now();
        for _ in 0..n {
            f()?;
        }
        if t0.elapsed().as_secs_f64() > min_time / 20.0 {
            break;
        }
        n *= 2;
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + std::time::Duration::from_secs_f64(min_time);
    while Instant::now() < deadline || wall.len() < 5 {
        let t0 = Instant::now();
        let w0 = wait_s();
        for _ in 0..n {
            f()?;
        }
        let w1 = wait_s();
        let dt = t0.elapsed().as_secs_f64();
        wall.push(dt / n as f64);
        if let (Some(a), Some(b)) = (w0, w1) {
            cpu.push((dt - (b - a).max(0.0)) / n as f64);
        }
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let mut sorted = wall.clone();
    sorted.sort_by(f64::total_cmp);
    let cpu_min = if cpu.is_empty() {
        min(&wall)
    } else {
        min(&cpu)
    };
    Ok([min(&wall), sorted[sorted.len() / 2], cpu_min])
}

/// The torch server.
struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Torch {
    fn start(root: &Path, python: &Path, cpu: Option<usize>) -> Result<Self> {
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &c.to_string()]).arg(python);
                cmd
            }
            None => Command::new(python),
        };
        cmd.current_dir(root)
            .arg(root.join("xtask/bench/models_bench.py"))
            .env_remove("FBGEMM_ENABLE_INSTRUCTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().context("torch stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("torch stdout")?);
        Ok(Torch {
            child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, req: Value) -> Result<Value> {
        writeln!(self.stdin, "{req}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the torch server exited ({:?})", self.child.try_wait());
        }
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("torch server: {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("torch server: {e}");
        }
        Ok(v)
    }

    fn time(&mut self, engine: &str, min_time: f64) -> Result<[f64; 3]> {
        let v = self.ask(json!({"cmd": "time", "engine": engine, "min_time": min_time}))?;
        let f = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        let min = f("min_s")?;
        Ok([min, f("median_s")?, v["cpu_min_s"].as_f64().unwrap_or(min)])
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_f32(v: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Per model: every round's `[wall min, wall median, on-CPU min]` of each side.
struct Row {
    model: String,
    size: usize,
    ours: Vec<[f64; 3]>,
    fbgemm: Vec<[f64; 3]>,
    x86: Vec<[f64; 3]>,
    nodes: usize,
    elements: u64,
    ours_ops: BTreeMap<String, f64>,
    /// The slowest nodes: name, op, kernel, seconds.
    ours_nodes: Vec<(String, String, String, f64)>,
    torch_ops: BTreeMap<String, BTreeMap<String, f64>>,
    kernels: BTreeMap<String, usize>,
}

fn best(v: &[[f64; 3]]) -> f64 {
    v.iter().map(|s| s[2]).fold(f64::INFINITY, f64::min)
}

/// Entry point of `cargo xtask bench --models`.
pub fn run(
    root: &Path,
    python: &Path,
    json_out: bool,
    rounds: usize,
    cpu: Option<usize>,
    min_time: f64,
    only: &[String],
) -> Result<()> {
    let models: Vec<(&str, usize)> = MODELS
        .iter()
        .copied()
        .filter(|(m, _)| only.is_empty() || only.iter().any(|o| o == m))
        .collect();
    if models.is_empty() {
        bail!("no model selected (models: {MODELS:?})");
    }
    let backend = qparity::backend::native().context("no optimized backend on this CPU")?;
    if let Some(c) = cpu {
        let ok = Command::new("taskset")
            .args(["-cp", &c.to_string(), &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("cannot pin this process to CPU {c} with taskset");
        }
    }
    let host = CpuFeatures::host();
    let dir = tempfile::tempdir()?;
    let mut torch = Torch::start(root, python, cpu)?;
    let mut rows = Vec::new();
    for (model, size) in models {
        eprintln!("{model} {size}×{size}: capturing and converting (fbgemm, x86) …");
        let v = torch.ask(json!({"cmd": "load", "model": model, "size": size,
                                 "out": dir.path()}))?;
        let path = PathBuf::from(v["case"].as_str().context("no case path")?);
        let sha = v["output_sha256"]["fbgemm"]
            .as_str()
            .context("no fbgemm output hash")?
            .to_string();
        let case = qparity::golden::load_case(&path)?;
        let graph = qparity::runner::Graph::from_case(&case, &host)?;
        let planned = graph.plan(Some(backend))?;
        if planned.fallbacks() > 0 {
            let fell: Vec<_> = planned
                .kernels()
                .into_iter()
                .filter(|k| k.2.is_none())
                .map(|k| format!("{} ({})", k.0, k.1))
                .collect();
            bail!("{model}: nodes fell back to the reference model: {fell:?}");
        }
        let mut kernels = BTreeMap::new();
        for (_, op, k) in planned.kernels() {
            *kernels
                .entry(format!("{op}: {}", k.unwrap_or("reference")))
                .or_default() += 1;
        }
        let input = graph.inputs().first().context("no input")?.clone();
        // Bit for bit: every node against PyTorch's recorded codes, the output against the live
        // fbgemm model's.
        let out = planned.run(&input)?;
        let mut elements = 0u64;
        for (i, name) in graph.node_names().enumerate() {
            let ours = out.logical(i);
            let theirs = graph.recorded(i);
            let diff = ours
                .iter()
                .zip(&theirs.data)
                .filter(|(a, b)| a != b)
                .count();
            if diff > 0 || ours.len() != theirs.data.len() {
                bail!(
                    "{model}: node {name} ({}) differs from PyTorch in {diff} of {} codes",
                    graph.op_name(i),
                    theirs.data.len()
                );
            }
            elements += ours.len() as u64;
        }
        let ours_sha = sha256_f32(&out.output);
        if ours_sha != sha {
            bail!("{model}: qparity's f32 output differs from PyTorch's (SHA-256 {ours_sha} vs {sha})");
        }
        eprintln!(
            "{model}: {} nodes, {elements} codes and the output equal PyTorch's bit for bit",
            out.nodes.len()
        );
        let mut row = Row {
            model: model.into(),
            size,
            ours: vec![],
            fbgemm: vec![],
            x86: vec![],
            nodes: out.nodes.len(),
            elements,
            ours_ops: BTreeMap::new(),
            ours_nodes: Vec::new(),
            torch_ops: BTreeMap::new(),
            kernels,
        };
        // Timed runs reuse one run's buffers (`run_into`), as a deployed runtime reuses its
        // activation memory; their codes are compared with the checked run's below.
        let value = qparity::ops::Value::Tensor(input.clone());
        let mut reused = qparity::runner::RunOutput::default();
        for r in 0..rounds {
            row.ours.push(measure(
                || Ok(planned.run_into(&value, &mut reused)?),
                min_time,
            )?);
            row.fbgemm.push(torch.time("fbgemm", min_time)?);
            row.x86.push(torch.time("x86", min_time)?);
            eprintln!(
                "  round {r}: qparity {:.2} ms, fbgemm {:.2} ms, x86 {:.2} ms",
                row.ours[r][2] * 1e3,
                row.fbgemm[r][2] * 1e3,
                row.x86[r][2] * 1e3
            );
        }
        if reused
            .nodes
            .iter()
            .map(|q| &q.data)
            .ne(out.nodes.iter().map(|q| &q.data))
            || reused.output != out.output
        {
            bail!("{model}: a run into reused buffers differs from the checked run");
        }
        // Per-op breakdown: the fastest of a few runs per node, summed by op.
        let mut per_node = vec![f64::INFINITY; out.nodes.len()];
        for _ in 0..5 {
            planned.run_into_timed(&value, &mut reused, |i, s| per_node[i] = per_node[i].min(s))?;
        }
        for (i, s) in per_node.iter().enumerate() {
            *row.ours_ops
                .entry(graph.op_name(i).to_string())
                .or_default() += s;
        }
        let kernels = planned.kernels();
        let mut nodes: Vec<_> = kernels
            .iter()
            .zip(&per_node)
            .map(|((n, op, k), &s)| {
                (
                    n.to_string(),
                    op.to_string(),
                    k.unwrap_or("reference").to_string(),
                    s,
                )
            })
            .collect();
        nodes.sort_by(|a, b| b.3.total_cmp(&a.3));
        nodes.truncate(12);
        row.ours_nodes = nodes;
        for e in ["fbgemm", "x86"] {
            let v = torch.ask(json!({"cmd": "profile", "engine": e, "runs": 5}))?;
            let ops = v["ops"]
                .as_object()
                .context("no ops")?
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|s| (k.clone(), s)))
                .collect();
            row.torch_ops.insert(e.into(), ops);
        }
        rows.push(row);
    }
    report(&rows, json_out)
}

fn report(rows: &[Row], json_out: bool) -> Result<()> {
    let ratio_range = |r: &Row| {
        let per: Vec<f64> = (0..r.ours.len())
            .map(|k| r.fbgemm[k][2].min(r.x86[k][2]) / r.ours[k][2])
            .collect();
        (
            per.iter().copied().fold(f64::INFINITY, f64::min),
            per.iter().copied().fold(0.0, f64::max),
        )
    };
    if json_out {
        let v: Vec<Value> = rows
            .iter()
            .map(|r| {
                let (lo, hi) = ratio_range(r);
                let torch_best = best(&r.fbgemm).min(best(&r.x86));
                json!({
                    "model": r.model, "input": [1, 3, r.size, r.size],
                    "nodes": r.nodes, "codes_equal": r.elements, "fallbacks": 0,
                    "qparity_s": best(&r.ours), "fbgemm_s": best(&r.fbgemm), "x86_s": best(&r.x86),
                    "ratio": torch_best / best(&r.ours), "ratio_range": [lo, hi],
                    "rounds": {"qparity": r.ours, "fbgemm": r.fbgemm, "x86": r.x86},
                    "qparity_ops_s": r.ours_ops, "torch_ops_s": r.torch_ops,
                    "qparity_slowest_nodes": r.ours_nodes,
                    "kernels": r.kernels,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"models": v}))?);
        return Ok(());
    }
    println!(
        "{:<20} {:>9} {:>11} {:>11} {:>11} {:>7} {:>15}",
        "model", "input", "qparity ms", "fbgemm ms", "x86 ms", "ratio", "ratio range"
    );
    for r in rows {
        let (lo, hi) = ratio_range(r);
        let torch_best = best(&r.fbgemm).min(best(&r.x86));
        println!(
            "{:<20} {:>9} {:>11.2} {:>11.2} {:>11.2} {:>7.2} {:>7.2}–{:<7.2}",
            r.model,
            format!("{0}×{0}", r.size),
            best(&r.ours) * 1e3,
            best(&r.fbgemm) * 1e3,
            best(&r.x86) * 1e3,
            torch_best / best(&r.ours),
            lo,
            hi
        );
    }
    for r in rows {
        println!(
            "\n{} per op (ms): qparity | torch fbgemm top ops | torch x86 top ops",
            r.model
        );
        let mut ours: Vec<_> = r.ours_ops.iter().collect();
        ours.sort_by(|a, b| b.1.total_cmp(a.1));
        for (op, s) in ours {
            println!("  qparity {op:<24} {:>8.3}", s * 1e3);
        }
        for (n, op, k, s) in &r.ours_nodes {
            println!("  qparity node {n:<28} {op:<12} {k:<24} {:>8.3}", s * 1e3);
        }
        for (e, ops) in &r.torch_ops {
            let mut v: Vec<_> = ops.iter().collect();
            v.sort_by(|a, b| b.1.total_cmp(a.1));
            for (op, s) in v.into_iter().take(8) {
                println!("  {e:<7} {op:<40} {:>8.3}", s * 1e3);
            }
        }
        println!("  kernels: {:?}", r.kernels);
    }
    Ok(())
}
