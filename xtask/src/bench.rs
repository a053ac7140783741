//! `cargo xtask bench [--json]`: qparity's x86 kernels vs PyTorch's fbgemm, same shapes, same run.
//!
//! Runs `cargo bench --bench gops -- --json` (qparity, one thread) and then
//! `xtask/bench/torch_bench.py` with the golden venv's python (`$QPARITY_VENV`, default
//! `target/golden-venv`; engine fbgemm, `torch.set_num_threads(1)`), and prints per shape the
//! qparity GOPS, the fbgemm GOPS and their ratio, plus the MAC-instruction peak and how close the
//! best shape gets to it.

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
    let ours = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["bench", "--bench", "gops", "--", "--json"])
        .output()
        .context("running cargo bench --bench gops")?;
    if !ours.status.success() {
        bail!(
            "cargo bench failed:\n{}",
            String::from_utf8_lossy(&ours.stderr)
        );
    }
    let ours = json_lines(&ours.stdout, "qparity bench")?;
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
    for o in &ours {
        let name = field(o, "name").and_then(Value::as_str).unwrap_or("?");
        let g = field(o, "gops").and_then(Value::as_f64).unwrap_or(f64::NAN);
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
        let kernel = field(o, "kernel").and_then(Value::as_str).unwrap_or("?");
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
