//! `cargo xtask fuzz --seconds N [--json]`: runs every cargo-fuzz target for N seconds with the
//! nightly toolchain and reports execs/s, corpus size and crashes per target. Crash inputs are
//! copied into `corpus/regressions/<target>/`, which `tests/corpus_replay.rs` replays.
//!
//! `cargo xtask fuzz --minimize <target> <crash-file>`: shrinks a crash with `cargo fuzz tmin`,
//! saves the minimised input as `corpus/regressions/<target>/<name>`, replays it through the
//! target's library body to say what it is (a panic an invalid input must not cause, or a law of
//! the target that failed: a numeric disagreement) and, for a disagreement, how to make it a
//! golden case.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

// The fuzz targets: `fuzz/fuzz_targets/<name>.rs`, bodies in `qparity::gen::fuzz`.
use qparity::gen::fuzz::TARGETS;

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
    /// Minimise a crash of TARGET (`cargo fuzz tmin`) and save it as a corpus regression.
    #[arg(long, num_args = 2, value_names = ["TARGET", "CRASH_FILE"], conflicts_with_all = ["targets", "json"])]
    minimize: Option<Vec<String>>,
    /// With --minimize: `cargo fuzz tmin` attempts (its `-runs`).
    #[arg(long, default_value_t = 10_000, requires = "minimize")]
    tmin_runs: u64,
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

/// What a failing input is, from the panic it causes in the target's library body.
#[derive(Debug, Clone, PartialEq)]
enum Finding {
    /// A panic of the language or the standard library (overflow, bounds, unwrap, …), or any
    /// panic of the golden loader: an invalid input must give an error, never a panic.
    Crash(String),
    /// A law the target checks failed (backend vs reference, kernel vs kernel, a flow relation,
    /// a quantize rule): a numeric disagreement.
    Disagreement(String),
    /// The input runs cleanly in the library body on stable Rust (a sanitizer finding, a
    /// timeout or an out-of-memory under libFuzzer, or a bug fixed since).
    NoPanic,
}

/// Panic messages the language and the standard library produce (not a target's own assertion).
const RUNTIME_PANICS: [&str; 9] = [
    "attempt to ",
    "index out of bounds",
    "called `Option::unwrap()`",
    "called `Result::unwrap()`",
    "range end index",
    "range start index",
    "slice index",
    "capacity overflow",
    "divide by zero",
];

fn classify(target: &str, panic: Option<String>) -> Finding {
    match panic {
        None => Finding::NoPanic,
        Some(m) if target == "golden_loader" || RUNTIME_PANICS.iter().any(|p| m.contains(p)) => {
            Finding::Crash(m)
        }
        Some(m) => Finding::Disagreement(m),
    }
}

/// Runs `data` through the target's library body; the panic message, if it panics.
fn replay(target: &str, data: &[u8]) -> Result<Option<String>> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let hook_seen = seen.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        *hook_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
    }));
    let r = std::panic::catch_unwind(|| qparity::gen::fuzz::run_target(target, data));
    std::panic::set_hook(previous);
    match r {
        Ok(Ok(())) => Ok(None),
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => Ok(Some(
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| "a panic without a message".into()),
        )),
    }
}

/// The artifact `cargo fuzz tmin` reports (`Minimized artifact:` then the path on a later line).
fn minimized_path(stderr: &str) -> Option<PathBuf> {
    let mut lines = stderr
        .lines()
        .skip_while(|l| !l.starts_with("Minimized artifact:"));
    lines.next()?;
    lines
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
}

/// How to turn a numeric disagreement into a golden case (PyTorch decides which side is right).
fn golden_hint(target: &str, file: &Path) -> String {
    let what = match target {
        "graph_agreement" => {
            "the message names the node (`v<k> = <op>`), the engine, the capture CPU class and \
             every node's qparams"
        }
        "flow_relations" | "kernel_agreement" => {
            "the message prints the layer or GEMM / conv problem as a Rust snippet"
        }
        _ => "the message prints the quantization parameters as a Rust snippet",
    };
    format!(
        "This is a numeric disagreement inside qparity; PyTorch decides which side is right. To make \
         it a golden case:\n\
         1. Reproduce: `cargo test --release --test corpus_replay` replays {} ({what}).\n\
         2. Capture PyTorch on that op: add the failing op with the printed shapes, qparams and \
            engine to the capture plan (xtask/capture/qops.py for one op under an engine, \
            graphs.py for a graph), then run `cargo xtask golden --suite ops --out <dir>` (or \
            `--suite graphs`) on a CPU of the printed capture class (`--emulate haswell` for \
            AVX2).\n\
         3. `qparity check <dir>` (and `--fused` for the optimized backend) shows which side \
            PyTorch agrees with; fix that side and commit the case under golden/ next to the \
            regression file.",
        file.display()
    )
}

/// `cargo xtask fuzz --minimize`.
fn minimize(root: &Path, target: &str, crash: &Path, runs: u64) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!("unknown fuzz target {target:?} (expected one of {TARGETS:?})");
    }
    let crash =
        std::fs::canonicalize(crash).with_context(|| format!("crash file {}", crash.display()))?;
    let before = classify(target, replay(target, &std::fs::read(&crash)?)?);
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["+nightly", "fuzz", "tmin", target])
        .arg(&crash)
        .args(["--runs", &runs.to_string()])
        .output()
        .context("running cargo fuzz tmin")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let min = match minimized_path(&text) {
        Some(p) if out.status.success() => root
            .join("fuzz")
            .join(&p)
            .canonicalize()
            .or_else(|_| root.join(&p).canonicalize())?,
        _ => {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "cargo fuzz tmin found nothing smaller ({}); saving the input as it is:\n{}",
                out.status,
                tail.join("\n")
            );
            crash.clone()
        }
    };
    let data = std::fs::read(&min)?;
    let finding = classify(target, replay(target, &data)?);
    let reg = root.join("corpus/regressions").join(target);
    std::fs::create_dir_all(&reg)?;
    let name = min
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "minimized".into());
    let dest = reg.join(&name);
    std::fs::write(&dest, &data)?;
    let size = std::fs::metadata(&crash)?.len();
    println!(
        "minimised {} ({size} bytes) to {} bytes: {}",
        crash.display(),
        data.len(),
        dest.display()
    );
    match &finding {
        Finding::Crash(m) => println!(
            "a crash (an input must give an error, never a panic): {m}\n\
             Fix it so the input returns an error; `cargo test --release --test corpus_replay` \
             replays {} until then.",
            dest.display()
        ),
        Finding::Disagreement(m) => {
            println!("a numeric disagreement:\n{m}\n");
            println!("{}", golden_hint(target, &dest));
        }
        Finding::NoPanic => println!(
            "the input does not panic in the library body on stable Rust (before minimising: \
             {before:?}): a sanitizer finding, a timeout or an out-of-memory under libFuzzer; \
             reproduce with `cargo +nightly fuzz run {target} {}`.",
            dest.display()
        ),
    }
    Ok(())
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let root = root();
    ensure_cargo_fuzz()?;
    if let Some(m) = &args.minimize {
        let [target, crash] = &m[..] else {
            bail!("--minimize takes a target and a crash file");
        };
        return minimize(&root, target, Path::new(crash), args.tmin_runs);
    }
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

    #[test]
    fn finds_the_minimized_artifact() {
        let out = "#100 DONE\n\n────\n\nMinimized artifact:\n\n\tfuzz/artifacts/quantize/minimized-from-ab12\n\n\
                   Reproduce with:\n\n\tcargo fuzz run quantize fuzz/artifacts/quantize/minimized-from-ab12\n";
        assert_eq!(
            minimized_path(out),
            Some(PathBuf::from("fuzz/artifacts/quantize/minimized-from-ab12"))
        );
        assert_eq!(minimized_path("CRASH_MIN: failed to minimize\n"), None);
    }

    #[test]
    fn classifies_panics() {
        let m = |s: &str| Some(s.to_string());
        assert_eq!(
            classify("graph_agreement", m("attempt to add with overflow")),
            Finding::Crash("attempt to add with overflow".into())
        );
        assert!(matches!(
            classify(
                "graph_agreement",
                m("backend and reference disagree at v1 = linear")
            ),
            Finding::Disagreement(_)
        ));
        assert!(matches!(
            classify("golden_loader", m("assertion failed")),
            Finding::Crash(_)
        ));
        assert_eq!(classify("quantize", None), Finding::NoPanic);
    }

    #[test]
    fn replays_inputs_through_the_library_body() {
        // The seeds run cleanly; an unknown target is an error, not a finding.
        let seed = root().join("corpus/graph_agreement/seed-zeros");
        let data = std::fs::read(seed).unwrap();
        assert_eq!(replay("graph_agreement", &data).unwrap(), None);
        assert!(replay("no_such_target", &data).is_err());
    }
}
