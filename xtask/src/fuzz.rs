//! `cargo xtask fuzz --seconds N [--json]`: runs every cargo-fuzz target for N seconds with the
//! nightly toolchain and reports execs/s, corpus size and crashes per target. Crash inputs are
//! copied into `corpus/regressions/<target>/`, which `tests/corpus_replay.rs` replays.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fuzz targets (kept in sync with `qparity::gen::fuzz::TARGETS`).
const TARGETS: [&str; 6] = [
    "kernel_agreement",
    "flow_relations",
    "qparams_observers",
    "golden_loader",
    "quantize",
    "graph_agreement",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Print the report as a JSON list.
    #[arg(long)]
    json: bool,
    /// Only these targets (default: all).
    #[arg(long = "target")]
    targets: Vec<String>,
}

/// libFuzzer's figures for one run.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    executed: Option<u64>,
    execs_per_sec: Option<u64>,
    corpus_units: Option<u64>,
    corpus_bytes: Option<String>,
    crashes: Vec<PathBuf>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("cargo-fuzz not found; running `cargo install cargo-fuzz`");
    let st = Command::new("cargo")
        .args(["install", "cargo-fuzz"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed ({st})");
    }
    Ok(())
}

/// Parses libFuzzer's output (stderr): final `stat::` lines, the last status line
/// (`#N ... corp: U/Sb ... exec/s: E`) and `Test unit written to <path>` crash notices.
fn parse(out: &str) -> Stats {
    let mut s = Stats::default();
    let num = |v: &str| v.trim().parse::<u64>().ok();
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.executed = num(v);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.execs_per_sec = num(v);
        } else if line.starts_with('#') {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                match w {
                    "corp:" => {
                        if let Some((u, b)) = words.next().and_then(|c| c.split_once('/')) {
                            s.corpus_units = num(u);
                            s.corpus_bytes = Some(b.to_string());
                        }
                    }
                    "exec/s:" if s.execs_per_sec.is_none() || !out.contains("stat::") => {
                        s.execs_per_sec = words.next().and_then(num);
                    }
                    _ => {}
                }
            }
        } else if let Some(p) = line.split("Test unit written to ").nth(1) {
            s.crashes.push(PathBuf::from(p.trim()));
        }
    }
    s
}

fn run_target(root: &Path, t: &str, seconds: u64) -> Result<Stats> {
    let work = root.join("fuzz/corpus").join(t);
    let seeds = root.join("corpus").join(t);
    let artifacts = root.join("fuzz/artifacts").join(t);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&artifacts)?;
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["+nightly", "fuzz", "run", t])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .output()
        .with_context(|| format!("running cargo fuzz run {t}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let stats = parse(&text);
    if !out.status.success() && stats.crashes.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "cargo fuzz run {t} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        );
    }
    let reg = root.join("corpus/regressions").join(t);
    for c in &stats.crashes {
        std::fs::create_dir_all(&reg)?;
        if let Some(name) = c.file_name() {
            std::fs::copy(c, reg.join(name))
                .with_context(|| format!("copying {} into {}", c.display(), reg.display()))?;
        }
    }
    Ok(stats)
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let root = root();
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?} (expected one of {TARGETS:?})");
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let st = Command::new("cargo")
        .current_dir(&root)
        .args(["+nightly", "fuzz", "build"])
        .status()
        .context("cargo fuzz build")?;
    if !st.success() {
        bail!("cargo fuzz build failed ({st})");
    }
    let mut rows = Vec::new();
    for t in targets {
        if !args.json {
            eprintln!("fuzzing {t} for {}s…", args.seconds);
        }
        let s = run_target(&root, t, args.seconds)?;
        rows.push(serde_json::json!({
            "target": t,
            "seconds": args.seconds,
            "executed": s.executed,
            "execs_per_sec": s.execs_per_sec,
            "corpus_units": s.corpus_units,
            "corpus_size": s.corpus_bytes,
            "crashes": s.crashes.len(),
            "crash_files": s.crashes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        }));
        if !args.json {
            let f = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            println!(
                "{t:<18} execs/s {:>8}  executed {:>10}  corpus {:>5} units ({})  crashes {}",
                f(s.execs_per_sec),
                f(s.executed),
                f(s.corpus_units),
                s.corpus_bytes.as_deref().unwrap_or("?"),
                s.crashes.len()
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    if rows.iter().any(|r| r["crashes"].as_u64() != Some(0)) {
        bail!("crashes found; inputs copied into corpus/regressions/");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_output() {
        let out = "#2\tINITED cov: 10 ft: 11 corp: 3/24b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 12 ft: 13 corp: 5/1024b lim: 4 exec/s: 2048 rss: 31Mb\n\
                   Done 50000 runs in 21 second(s)\n\
                   stat::number_of_executed_units: 50000\n\
                   stat::average_exec_per_sec:     2380\n\
                   ==1== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='a/'; Test unit written to a/crash-abc\n";
        let s = parse(out);
        assert_eq!(s.executed, Some(50000));
        assert_eq!(s.execs_per_sec, Some(2380));
        assert_eq!(s.corpus_units, Some(5));
        assert_eq!(s.corpus_bytes.as_deref(), Some("1024b"));
        assert_eq!(s.crashes, vec![PathBuf::from("a/crash-abc")]);
    }
}
