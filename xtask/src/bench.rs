//! `cargo xtask bench [--json]`: qparity's x86 kernels vs PyTorch's fbgemm, same shapes, same run.
//!
//! Runs the criterion benchmarks `cargo bench --bench kernels` (qparity, one thread; results under
//! `target/qparity-bench`) and then `xtask/bench/torch_bench.py` with the golden venv's python
//! (`$QPARITY_VENV`, default `target/golden-venv`; engine fbgemm, `torch.set_num_threads(1)`),
//! in `--rounds` alternating rounds (default 3), both pinned to one core (`--cpu`, default 0,
//! `none` to not pin), and prints per shape the qparity GOPS and the
//! fbgemm GOPS (each side's best round of median time per call), their ratio and the range of the
//! per-round ratios, plus the MAC-instruction peak and how close the best shape gets to it.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn json_lines(out: &[u8], what: &str) -> Result<Vec<Value>> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("{what}: bad JSON line {l:?}")))
        .collect()
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `(name, GOPS)` of every criterion benchmark in `dir/qparity/*/new/`: operations per call
/// (criterion's element throughput) over the median time per call.
fn criterion_results(dir: &Path) -> Result<Vec<(String, f64)>> {
    let group = dir.join("qparity");
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(&group).with_context(|| format!("listing {}", group.display()))?;
    for e in entries {
        let new = e?.path().join("new");
        if !new.join("benchmark.json").exists() {
            continue;
        }
        let bench = read_json(&new.join("benchmark.json"))?;
        let est = read_json(&new.join("estimates.json"))?;
        let name = bench
            .pointer("/function_id")
            .and_then(Value::as_str)
            .context("benchmark.json without function_id")?
            .to_string();
        let ops = bench
            .pointer("/throughput/Elements")
            .and_then(Value::as_f64)
            .with_context(|| format!("{name}: no element throughput"))?;
        let ns = est
            .pointer("/median/point_estimate")
            .and_then(Value::as_f64)
            .with_context(|| format!("{name}: no median estimate"))?;
        out.push((name, ops / ns));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(target_arch = "x86_64")]
fn kernel_name() -> &'static str {
    use qparity::kernels::{x86::Kernel, Accumulation};
    let acc = match std::env::var("QPARITY_BENCH_ACC").as_deref() {
        Ok("exact") => Accumulation::Exact,
        _ => Accumulation::PairSaturatingI16,
    };
    Kernel::best(acc).name()
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_name() -> &'static str {
    "none (x86 only)"
}

/// Runs the criterion benchmarks once; `(name, GOPS)` per benchmark.
/// A command pinned to `cpu` with `taskset` (both sides run on the same core; on a VM the cores
/// can differ a lot in how much other load they carry).
fn pinned(cpu: Option<usize>, program: &Path) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn qparity_round(root: &Path, results: &Path, cpu: Option<usize>) -> Result<Vec<(String, f64)>> {
    if results.exists() {
        std::fs::remove_dir_all(results)
            .with_context(|| format!("clearing {}", results.display()))?;
    }
    let status = pinned(cpu, Path::new(env!("CARGO")))
        .current_dir(root)
        .env("CRITERION_HOME", results)
        .args(["bench", "--bench", "kernels", "--", "--noplot"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running cargo bench --bench kernels")?;
    if !status.success() {
        bail!("cargo bench --bench kernels failed ({status}); run it directly to see why");
    }
    criterion_results(results)
}

/// Runs the PyTorch side once; `(name, GOPS)` per shape.
fn torch_round(root: &Path, python: &Path, cpu: Option<usize>) -> Result<Vec<(String, f64)>> {
    let out = pinned(cpu, python)
        .current_dir(root)
        .arg(root.join("xtask/bench/torch_bench.py"))
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "torch benchmark failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    json_lines(&out.stdout, "torch bench")?
        .iter()
        .map(|t| {
            let name = field(t, "name").and_then(Value::as_str);
            let g = field(t, "gops").and_then(Value::as_f64);
            match (name, g) {
                (Some(n), Some(g)) => Ok((n.to_string(), g)),
                _ => bail!("torch bench line without name/gops: {t}"),
            }
        })
        .collect()
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// Entry point of `cargo xtask bench`: `rounds` alternating rounds of qparity and PyTorch (each
/// side's median time per call within a round); each side is reported by its best round, so
/// load from other processes, which only slows a round down, affects both sides alike.
pub fn run(json: bool, rounds: usize, cpu: Option<usize>) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(c) = cpu {
        let ok = Command::new("taskset")
            .args(["-c", &c.to_string(), "true"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("cannot pin to CPU {c} with taskset (is util-linux installed, does CPU {c} exist?); --cpu none runs unpinned");
        }
    }
    let root = root();
    let venv = std::env::var_os("QPARITY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/golden-venv"));
    let venv = if venv.is_absolute() {
        venv
    } else {
        root.join(venv)
    };
    let python = venv.join("bin/python");
    if !python.exists() {
        bail!(
            "no python at {} (set QPARITY_VENV to the golden venv, e.g. /work/main/target/golden-venv)",
            python.display()
        );
    }
    let results = root.join("target/qparity-bench");
    // name -> (qparity GOPS per round, torch GOPS per round)
    let mut by_name: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> = Default::default();
    for r in 1..=rounds {
        eprintln!("round {r} of {rounds}: cargo bench --bench kernels (criterion) …");
        for (n, g) in qparity_round(&root, &results, cpu)? {
            by_name.entry(n).or_default().0.push(g);
        }
        eprintln!("round {r} of {rounds}: PyTorch fbgemm on the same shapes …");
        for (n, g) in torch_round(&root, &python, cpu)? {
            by_name.entry(n).or_default().1.push(g);
        }
    }

    let mut rows = Vec::new();
    let mut peak = None;
    let mut best = 0.0f64;
    // The kernel the bench picks (benches/kernels.rs: same rule).
    let kernel = kernel_name();
    for (name, (ours, theirs)) in &by_name {
        if ours.is_empty() {
            continue; // a torch-only shape
        }
        let g = max(ours);
        if let Some(isa) = name.strip_prefix("peak_") {
            peak = Some((isa.to_string(), g));
            continue;
        }
        best = best.max(g);
        if theirs.is_empty() {
            bail!("torch benchmark has no shape {name}");
        }
        let t = max(theirs);
        let per_round: Vec<f64> = ours.iter().zip(theirs).map(|(q, t)| q / t).collect();
        rows.push((
            name.clone(),
            g,
            t,
            g / t,
            per_round,
            ours.clone(),
            theirs.clone(),
        ));
    }
    if json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(n, q, t, r, pr, qs, ts)| {
                serde_json::json!({
                    "name": n, "qparity_gops": q, "torch_gops": t, "ratio": r, "kernel": kernel,
                    "round_ratios": pr, "qparity_rounds": qs, "torch_rounds": ts,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        if let Some((isa, p)) = &peak {
            eprintln!(
                "peak {isa} MAC throughput: {p:.1} GOPS; best shape {best:.1} GOPS = {:.0}% of peak",
                100.0 * best / p
            );
        }
    } else {
        println!(
            "{:<26} {:>8} {:>8} {:>6}  {:<13} kernel",
            "shape (GOPS, best round)", "qparity", "fbgemm", "ratio", "round ratios"
        );
        for (n, q, t, r, pr, _, _) in &rows {
            let lo = pr.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = pr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!("{n:<26} {q:>8.1} {t:>8.1} {r:>5.2}x  {lo:.2}–{hi:.2}x    {kernel}");
        }
        if let Some((isa, p)) = &peak {
            println!(
                "peak {isa} MAC throughput: {p:.1} GOPS; best shape {best:.1} GOPS = {:.0}% of peak",
                100.0 * best / p
            );
        }
    }
    Ok(())
}
