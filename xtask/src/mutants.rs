//! `cargo xtask mutants [--file GLOB]... [--shard K/N] [--resume] [--quick] [--re R] [--exclude-re R] [--name N] [--timeout S] [--list]`:
//! cargo-mutants over the numerics and engine modules against the tests that pin them (the lib
//! unit tests, the golden suite and the property suites, built with the `mutant` profile and run
//! by cargo-nextest, slow golden tests last, stopping at the first failure; `.cargo/mutants.toml`,
//! `.config/nextest.toml`).
//!
//! Results go to `target/mutants/<run>/mutants.out/` (`<run>` is `all` or `shard-K-of-N`).
//! `--resume` is cargo-mutants' `--iterate`: mutants recorded there as caught or unviable are
//! skipped, missed and timed-out ones are tested again. The summary counts each outcome per file
//! and lists every missed mutant as `file:line:col: mutation`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The cargo-mutants release this task drives (installed with `cargo install --locked` when
/// `cargo mutants --version` reports another).
const VERSION: &str = "27.1.0";

/// What is mutated when no `--file` is given: the numerics, engine and op modules and the golden
/// stage models. SIMD kernels (`src/kernels/`, `src/backend/`), the CLI and report formatting
/// (`src/check.rs`, `src/explain.rs`, `src/repro.rs`) are outside these globs.
const DEFAULT_FILES: [&str; 4] = [
    "src/numerics/**/*.rs",
    "src/engine/**/*.rs",
    "src/ops/**/*.rs",
    "src/golden/stages.rs",
];

#[derive(clap::Args)]
pub struct MutantsArgs {
    /// Mutate only files matching this glob (repeatable; default: the numerics and engine modules).
    #[arg(long = "file")]
    files: Vec<String>,
    /// Run shard K of N (0-based, round-robin), e.g. `--shard 0/4`; each shard keeps its own
    /// results folder.
    #[arg(long)]
    shard: Option<String>,
    /// Skip mutants already caught or unviable in this run's results folder (cargo-mutants
    /// `--iterate`).
    #[arg(long)]
    resume: bool,
    /// Test timeout per mutant in seconds (default: cargo-mutants' multiple of the baseline).
    #[arg(long)]
    timeout: Option<u64>,
    /// List the mutants that would be tested, do not build anything.
    #[arg(long)]
    list: bool,
    /// Skip the unmutated baseline test (needs `--timeout`, which the baseline would set).
    #[arg(long, requires = "timeout")]
    no_baseline: bool,
    /// Mutate this tree and build in its target/ instead of a scratch copy: no rebuild of the
    /// dependencies, but the tree must not be edited while it runs.
    #[arg(long, conflicts_with = "jobs")]
    in_place: bool,
    /// Parallel builds (each has its own scratch copy of the tree and target directory; with one,
    /// the scratch copy builds in target/mutants/build, which is kept between runs).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Leave out the three golden tests of the optimized kernels and backends (~150 s of the ~215 s
    /// a missed mutant costs; they test `src/kernels/` and `src/backend/`, which are not mutated).
    /// A mutant this run misses is not yet missed: `--resume` it without `--quick`.
    #[arg(long)]
    quick: bool,
    /// Test only the mutants whose name matches this regex (cargo-mutants `--re`, repeatable),
    /// e.g. the functions a new test covers.
    #[arg(long = "re")]
    re: Vec<String>,
    /// Leave out the mutants whose name matches this regex (cargo-mutants `--exclude-re`,
    /// repeatable), e.g. the functions an earlier `--re` run covered.
    #[arg(long = "exclude-re")]
    exclude_re: Vec<String>,
    /// Results folder under target/mutants/ (default: `all`, or `shard-K-of-N`).
    #[arg(long)]
    name: Option<String>,
}

/// The nextest filter of `--quick`: every test but the optimized-backend golden tests
/// (`.config/nextest.toml` schedules them last in a full run).
const QUICK_FILTER: &str =
    "not (binary(golden_suite) & (test(=optimized_kernels_reproduce_the_goldens) \
     | test(=real_models_run_every_stage_on_the_optimized_backend) \
     | test(=kernel_backend_runs_every_stage_of_the_real_models)))";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `K/N` with `K < N`.
fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--shard {s:?}: expected K/N with 0 <= K < N");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// Installs cargo-nextest (the test tool `.cargo/mutants.toml` names) when `cargo nextest` is
/// missing.
fn ensure_cargo_nextest() -> Result<()> {
    let have = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("cargo-nextest not found; running `cargo install cargo-nextest --locked`");
    let st = Command::new("cargo")
        .args(["install", "cargo-nextest", "--locked"])
        .status()
        .context("running cargo install cargo-nextest")?;
    if !st.success() {
        bail!("cargo install cargo-nextest failed ({st})");
    }
    Ok(())
}

fn ensure_cargo_mutants() -> Result<()> {
    let out = Command::new("cargo")
        .args(["mutants", "--version"])
        .output();
    let have = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if have.as_deref() == Some(&format!("cargo-mutants {VERSION}")) {
        return Ok(());
    }
    eprintln!(
        "cargo-mutants {VERSION} not found ({}); running `cargo install cargo-mutants --locked --version {VERSION}`",
        have.as_deref().unwrap_or("none")
    );
    let st = Command::new("cargo")
        .args(["install", "cargo-mutants", "--locked", "--version", VERSION])
        .status()
        .context("running cargo install cargo-mutants")?;
    if !st.success() {
        bail!("cargo install cargo-mutants failed ({st})");
    }
    Ok(())
}

/// The outcome lists cargo-mutants writes into `mutants.out/`, in report order.
const OUTCOMES: [&str; 5] = [
    "caught",
    "missed",
    "unviable",
    "timeout",
    "previously_caught",
];

/// One line of an outcome list: `src/x.rs:12:5: replace + with - in f`.
#[derive(Debug, PartialEq)]
struct Mutant {
    file: String,
    line: String,
}

fn parse_list(text: &str) -> Vec<Mutant> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Mutant {
            file: l.split(':').next().unwrap_or("").to_string(),
            line: l.to_string(),
        })
        .collect()
}

/// Per file, the count of each outcome in [`OUTCOMES`] order.
fn tally(lists: &[(&str, Vec<Mutant>)]) -> BTreeMap<String, [usize; 5]> {
    let mut t: BTreeMap<String, [usize; 5]> = BTreeMap::new();
    for (i, (_, ms)) in lists.iter().enumerate() {
        for m in ms {
            t.entry(m.file.clone()).or_default()[i] += 1;
        }
    }
    t
}

fn read_lists(out: &Path) -> Result<Vec<(&'static str, Vec<Mutant>)>> {
    OUTCOMES
        .iter()
        .map(|&name| {
            let p = out.join(format!("{name}.txt"));
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
            };
            Ok((name, parse_list(&text)))
        })
        .collect()
}

fn print_summary(lists: &[(&str, Vec<Mutant>)], secs: f64) {
    let t = tally(lists);
    println!(
        "{:<40} {:>7} {:>7} {:>9} {:>8} {:>10}",
        "file", "caught", "missed", "unviable", "timeout", "prev.caught"
    );
    let mut total = [0usize; 5];
    for (file, c) in &t {
        println!(
            "{file:<40} {:>7} {:>7} {:>9} {:>8} {:>10}",
            c[0], c[1], c[2], c[3], c[4]
        );
        for (s, v) in total.iter_mut().zip(c) {
            *s += v;
        }
    }
    println!(
        "{:<40} {:>7} {:>7} {:>9} {:>8} {:>10}",
        "total", total[0], total[1], total[2], total[3], total[4]
    );
    let viable = total[0] + total[1] + total[3] + total[4];
    let caught = total[0] + total[4];
    // Previously caught mutants were not tested in this run.
    let tested = total[..4].iter().sum::<usize>().max(1);
    let per_mutant = secs / tested as f64;
    if viable > 0 {
        println!(
            "{caught} of {viable} viable mutants caught ({:.1} %), run time {secs:.0} s \
             ({per_mutant:.1} s per mutant tested)",
            100.0 * caught as f64 / viable as f64,
        );
    } else {
        println!("no viable mutants, run time {secs:.0} s ({per_mutant:.1} s per mutant tested)");
    }
    for (name, ms) in lists {
        if matches!(*name, "missed" | "timeout") && !ms.is_empty() {
            println!("{name}:");
            for m in ms {
                println!("  {}", m.line);
            }
        }
    }
}

pub fn run(args: MutantsArgs) -> Result<()> {
    let root = root();
    ensure_cargo_mutants()?;
    ensure_cargo_nextest()?;
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let run_name = match (&args.name, shard) {
        (Some(name), _) => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || name.starts_with('.')
            {
                bail!("--name {name:?}: use letters, digits, '-', '_' and '.' (not leading)");
            }
            name.clone()
        }
        (None, Some((k, n))) => format!("shard-{k}-of-{n}"),
        (None, None) => "all".to_string(),
    };
    let out_parent = root.join("target/mutants").join(&run_name);
    std::fs::create_dir_all(&out_parent)
        .with_context(|| format!("creating {}", out_parent.display()))?;
    let files: Vec<String> = if args.files.is_empty() {
        DEFAULT_FILES.iter().map(|s| s.to_string()).collect()
    } else {
        args.files.clone()
    };

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["mutants", "--package", "qparity"]);
    for f in &files {
        cmd.arg("--file").arg(f);
    }
    for re in &args.re {
        cmd.arg("--re").arg(re);
    }
    for re in &args.exclude_re {
        cmd.arg("--exclude-re").arg(re);
    }
    if args.list {
        let st = cmd.arg("--list").status().context("cargo mutants --list")?;
        if !st.success() {
            bail!("cargo mutants --list failed ({st})");
        }
        return Ok(());
    }
    cmd.arg("--output").arg(&out_parent);
    if args.in_place {
        cmd.arg("--in-place");
    } else {
        cmd.arg("--jobs").arg(args.jobs.to_string());
        // One build at a time: it builds in target/mutants/build, so that the dependencies are
        // built once, not once per run in each new scratch copy (the copy's own target/ starts
        // empty).
        if args.jobs == 1 && std::env::var_os("CARGO_TARGET_DIR").is_none() {
            cmd.env("CARGO_TARGET_DIR", root.join("target/mutants/build"));
        }
    }
    if let Some((k, n)) = shard {
        // Round-robin: each shard samples every file and function, so one shard's figures are
        // representative of the whole.
        cmd.arg("--shard")
            .arg(format!("{k}/{n}"))
            .arg("--sharding=round-robin");
    }
    if args.resume {
        cmd.arg("--iterate");
    }
    if let Some(t) = args.timeout {
        cmd.arg("--timeout").arg(t.to_string());
    }
    if args.quick {
        cmd.arg("--cargo-test-arg=-E")
            .arg(format!("--cargo-test-arg={QUICK_FILTER}"));
    }
    if args.no_baseline {
        cmd.arg("--baseline=skip");
    }
    // Proptest draws the same cases for every mutant.
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        cmd.env("PROPTEST_RNG_SEED", "1");
    }
    let start = Instant::now();
    let st = cmd.status().context("running cargo mutants")?;
    let secs = start.elapsed().as_secs_f64();
    // cargo-mutants: 0 all caught, 2 some missed, 3 some timed out; anything else is a failed run.
    match st.code() {
        Some(0 | 2 | 3) => {}
        _ => bail!(
            "cargo mutants failed ({st}); see {}",
            out_parent.join("mutants.out/debug.log").display()
        ),
    }
    let out = out_parent.join("mutants.out");
    let lists = read_lists(&out)?;
    println!("results: {}", out.display());
    print_summary(&lists, secs);
    let missed = lists[1].1.len() + lists[3].1.len();
    if missed > 0 {
        bail!("{missed} mutants missed or timed out");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_spec_is_checked() {
        assert_eq!(parse_shard("0/4").unwrap(), (0, 4));
        assert_eq!(parse_shard("3/4").unwrap(), (3, 4));
        for bad in ["4/4", "1", "a/2", "1/0", ""] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outcome_lists_are_tallied_per_file() {
        let caught = parse_list(
            "src/numerics/requant.rs:50:9: replace * with / in FbgemmRequant::new\n\
             src/numerics/quantize.rs:20:5: replace rne -> f32 with 0.0\n",
        );
        let missed = parse_list("src/numerics/requant.rs:60:1: replace < with <= in f\n\n");
        let lists = vec![
            ("caught", caught),
            ("missed", missed),
            ("unviable", vec![]),
            ("timeout", vec![]),
            ("previously_caught", vec![]),
        ];
        let t = tally(&lists);
        assert_eq!(t["src/numerics/requant.rs"], [1, 1, 0, 0, 0]);
        assert_eq!(t["src/numerics/quantize.rs"], [1, 0, 0, 0, 0]);
        assert_eq!(
            lists[1].1[0].line,
            "src/numerics/requant.rs:60:1: replace < with <= in f"
        );
    }
}
