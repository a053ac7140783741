//! `cargo xtask bench [--json]`: qparity's x86 kernels vs PyTorch's fbgemm, same shapes, same run.
//!
//! Runs the criterion benchmarks `cargo bench --bench kernels` (qparity, one thread; results under
//! `target/qparity-bench`) and then `xtask/bench/torch_bench.py` with the golden venv's python
//! (`$QPARITY_VENV`, default `target/golden-venv`; engine fbgemm, `torch.set_num_threads(1)`),
//! and prints per shape the qparity GOPS, the fbgemm GOPS (both from the median time per call)
//! and their ratio, plus the MAC-instruction peak and how close the best shape gets to it.

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
    use qparity::kernels::{x86::KernelId, Accumulation};
    let acc = match std::env::var("QPARITY_BENCH_ACC").as_deref() {
        Ok("exact") => Accumulation::Exact,
        _ => Accumulation::PairSaturatingI16,
    };
    KernelId::best(acc).name()
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_name() -> &'static str {
    "none (x86 only)"
}

/// Entry point of `cargo xtask bench`.
pub fn run(json: bool) -> Result<()> {
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
    if results.exists() {
        std::fs::remove_dir_all(&results)
            .with_context(|| format!("clearing {}", results.display()))?;
    }
    eprintln!("running cargo bench --bench kernels (criterion) …");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .env("CRITERION_HOME", &results)
        .args(["bench", "--bench", "kernels", "--", "--noplot"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cargo bench --bench kernels")?;
    if !status.success() {
        bail!("cargo bench --bench kernels failed ({status})");
    }
    let ours = criterion_results(&results)?;
    eprintln!("timing PyTorch fbgemm on the same shapes …");
    let torch = Command::new(&python)
        .current_dir(&root)
        .arg(root.join("xtask/bench/torch_bench.py"))
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !torch.status.success() {
        bail!(
            "torch benchmark failed:\n{}",
            String::from_utf8_lossy(&torch.stderr)
        );
    }
    let torch = json_lines(&torch.stdout, "torch bench")?;

    let mut rows = Vec::new();
    let mut peak = None;
    let mut best = 0.0f64;
    // The kernel the bench picks (benches/kernels.rs: same rule).
    let kernel = kernel_name();
    for (name, g) in &ours {
        let g = *g;
        if let Some(isa) = name.strip_prefix("peak_") {
            peak = Some((isa.to_string(), g));
            continue;
        }
        best = best.max(g);
        let t = torch
            .iter()
            .find(|t| field(t, "name").and_then(Value::as_str) == Some(name))
            .and_then(|t| field(t, "gops").and_then(Value::as_f64));
        let Some(t) = t else {
            bail!("torch benchmark has no shape {name}");
        };
        rows.push((name.to_string(), g, t, g / t, kernel.to_string()));
    }
    if json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(n, q, t, r, k)| {
                serde_json::json!({"name": n, "qparity_gops": q, "torch_gops": t, "ratio": r, "kernel": k})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<28} {:>10} {:>12} {:>7}  kernel",
            "shape", "qparity", "fbgemm", "ratio"
        );
        for (n, q, t, r, k) in &rows {
            println!("{n:<28} {q:>10.1} {t:>12.1} {r:>6.2}x  {k}");
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
