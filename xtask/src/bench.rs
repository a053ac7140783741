//! `cargo xtask bench [--json] [--rounds N] [--cpu C|none]`: qparity's x86 kernels against
//! PyTorch's fbgemm, in pairs that compute the same numerics, shape by shape, alternating.
//!
//! Pairs: on a CPU with AVX-512 VNNI, `vnni` (qparity's `vpdpbusd` kernel, exact accumulation,
//! against fbgemm's default, which runs its VNNI kernels there) and `avx2` (qparity's AVX2
//! pair-saturating kernel against fbgemm with `FBGEMM_ENABLE_INSTRUCTIONS=AVX2`, set in the torch
//! process only); on an AVX2-only CPU, the `avx2` pair. Each torch worker first probes which
//! accumulation its fbgemm computes and the run stops if that is not the pair's.
//!
//! The qparity side is the `kernels` bench binary (`benches/kernels.rs`), the torch side
//! `xtask/bench/torch_bench.py --serve` with the venv's python (`$QPARITY_VENV`, default
//! `target/golden-venv`); both pinned to one core (`--cpu`, default 0) and timed the same way:
//! batches of calls for `$QPARITY_BENCH_MIN_TIME` seconds (default 1). The reported figure is the
//! fastest batch's on-CPU time per call: its wall time minus the time the thread waited for the
//! CPU (the scheduler's `/proc/thread-self/schedstat`), so that on a machine shared with other
//! jobs the time slices they get do not count against either side; the fastest wall-clock batch
//! is reported beside it (`wall`).
//! In each of `--rounds` rounds (default 3) every shape of every pair runs on qparity and then on
//! torch, so both sides of a ratio see the same load; a side is reported by its best round, and
//! the range of per-round ratios shows the noise. The peak of every multiply-accumulate
//! instruction sequence the CPU has is measured in every round; each pair is compared with the
//! best peak of its numerics (pair-saturating chains or `vpdpbusd`).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A benchmark pair: the qparity kernel set `--pair name` and the torch environment.
struct Pair {
    name: &'static str,
    /// The instruction set (numerics class) both sides compute with.
    isa: &'static str,
    /// Accumulation both sides compute on linear and conv (depthwise saturates everywhere).
    numerics: &'static str,
    torch_env: Option<(&'static str, &'static str)>,
}

const VNNI: Pair = Pair {
    name: "vnni",
    isa: "avx512vnni",
    numerics: "exact",
    torch_env: None,
};
const AVX2: Pair = Pair {
    name: "avx2",
    isa: "avx2",
    numerics: "pair-saturating",
    torch_env: Some(("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")),
};

/// The pairs this CPU can run.
fn pairs() -> Result<Vec<&'static Pair>> {
    use qparity::kernels::Isa;
    let mut v = Vec::new();
    if Isa::Avx512Vnni.detected() {
        v.push(&VNNI);
    }
    if Isa::Avx2.detected() {
        v.push(&AVX2);
    }
    if v.is_empty() {
        bail!("this CPU has neither AVX2 nor AVX-512 VNNI: no qparity kernel to benchmark");
    }
    Ok(v)
}

/// A command pinned to `cpu` with `taskset`.
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

fn json_lines(out: &[u8], what: &str) -> Result<Vec<Value>> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("{what}: bad JSON line {l:?}")))
        .collect()
}

/// Builds the bench binary and returns its path.
fn build_bench(root: &Path) -> Result<PathBuf> {
    eprintln!("building the kernels bench (cargo bench --no-run) …");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "bench",
            "--bench",
            "kernels",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!("cargo bench --bench kernels --no-run failed");
    }
    json_lines(&out.stdout, "cargo messages")?
        .iter()
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kernels")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the kernels bench executable")
}

/// One measurement: operations per call and seconds per call (fastest and median batch of wall
/// time, fastest batch of on-CPU time = wall time minus waits for the CPU).
#[derive(Clone, Copy)]
struct Sample {
    ops: f64,
    min_s: f64,
    median_s: f64,
    cpu_min_s: f64,
}

impl Sample {
    fn from_json(v: &Value, what: &str) -> Result<Self> {
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .with_context(|| format!("{what}: no {k} in {v}"))
        };
        let min_s = f("min_s")?;
        Ok(Self {
            ops: f("ops")?,
            min_s,
            median_s: f("median_s")?,
            // Without scheduler statistics, on-CPU time is not known: use wall time.
            cpu_min_s: v.get("cpu_min_s").and_then(Value::as_f64).unwrap_or(min_s),
        })
    }
    /// GOPS of the fastest batch of on-CPU time (the reported figure).
    fn gops(self) -> f64 {
        self.ops / self.cpu_min_s / 1e9
    }
    /// GOPS of the fastest batch of wall time.
    fn wall_gops(self) -> f64 {
        self.ops / self.min_s / 1e9
    }
    fn median_gops(self) -> f64 {
        self.ops / self.median_s / 1e9
    }
}

/// Runs the bench binary once; its JSON lines.
fn qparity_run(exe: &Path, cpu: Option<usize>, args: &[&str], min_time: f64) -> Result<Vec<Value>> {
    let out = pinned(cpu, exe)
        .args(args)
        .args(["--json", "--min-time", &min_time.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} {args:?} failed ({})", exe.display(), out.status);
    }
    json_lines(&out.stdout, "qparity bench")
}

/// A torch worker: `torch_bench.py --serve` in the pair's environment.
struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Torch {
    fn start(
        root: &Path,
        python: &Path,
        cpu: Option<usize>,
        pair: &Pair,
        min_time: f64,
    ) -> Result<Self> {
        let mut cmd = pinned(cpu, python);
        cmd.current_dir(root)
            .arg(root.join("xtask/bench/torch_bench.py"))
            .args(["--serve", "--min-time", &min_time.to_string()])
            .env_remove("FBGEMM_ENABLE_INSTRUCTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((k, v)) = pair.torch_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().context("torch worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("torch worker stdout")?);
        let mut t = Torch {
            child,
            stdin,
            stdout,
        };
        let hello = t.read()?;
        let probe = hello["probe"].as_str().unwrap_or("none");
        // On an AVX2-only CPU fbgemm's default is the AVX2 path too; the avx2 pair is then
        // fbgemm's default, and the probe must still say pair-saturating.
        if probe != pair.numerics {
            bail!(
                "pair {}: torch's fbgemm computes {probe} accumulation with {:?}, qparity's kernel \
                 {}; the pair would not compare like with like",
                pair.name,
                pair.torch_env,
                pair.numerics
            );
        }
        Ok(t)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the torch worker exited ({:?})", self.child.try_wait());
        }
        serde_json::from_str(&line).with_context(|| format!("torch worker: bad line {line:?}"))
    }

    fn time(&mut self, name: &str) -> Result<Sample> {
        writeln!(self.stdin, "{name}")?;
        self.stdin.flush()?;
        let v = self.read()?;
        if let Some(e) = v.get("error") {
            bail!("torch worker: {name}: {e}");
        }
        Sample::from_json(&v, "torch worker")
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per (pair, shape): qparity's and torch's sample of every round, and the qparity kernel.
#[derive(Default)]
struct Row {
    kernel: String,
    numerics: String,
    ours: Vec<Sample>,
    theirs: Vec<Sample>,
}

/// The best round (fastest on-CPU batch).
fn best(v: &[Sample]) -> Sample {
    *v.iter()
        .min_by(|a, b| a.cpu_min_s.total_cmp(&b.cpu_min_s))
        .expect("every row has a sample per round")
}

/// The best round by wall time.
fn best_wall(v: &[Sample]) -> f64 {
    v.iter().map(|s| s.wall_gops()).fold(0.0, f64::max)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Checks the common options of both benches; the workspace root, the venv's python and the
/// timing budget per batch series (`$QPARITY_BENCH_MIN_TIME`).
pub fn setup(rounds: usize, cpu: Option<usize>) -> Result<(PathBuf, PathBuf, f64)> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let min_time: f64 = match std::env::var("QPARITY_BENCH_MIN_TIME") {
        Ok(v) => v.parse().ok().filter(|t: &f64| *t > 0.0).with_context(|| {
            format!("QPARITY_BENCH_MIN_TIME={v:?} is not a positive number of seconds")
        })?,
        Err(_) => 1.0,
    };
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
            "no python at {} (set QPARITY_VENV to a venv with torch)",
            python.display()
        );
    }
    Ok((root, python, min_time))
}

/// Entry point of `cargo xtask bench`.
pub fn run(json: bool, rounds: usize, cpu: Option<usize>) -> Result<()> {
    let (root, python, min_time) = setup(rounds, cpu)?;
    let pairs = pairs()?;
    let exe = build_bench(&root)?;
    let list = pinned(None, &exe).arg("--list").output()?;
    let shapes: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    if shapes.is_empty() {
        bail!("the kernels bench lists no shapes");
    }
    let load_before = load();
    let mut workers = Vec::new();
    for p in &pairs {
        workers.push(Torch::start(&root, &python, cpu, p, min_time)?);
    }
    let mut rows: BTreeMap<(&str, String), Row> = BTreeMap::new();
    let mut peaks: BTreeMap<(String, String), Vec<Sample>> = BTreeMap::new();
    for r in 1..=rounds {
        for (p, torch) in pairs.iter().zip(&mut workers) {
            eprintln!("round {r} of {rounds}, pair {} (load {}) …", p.name, load());
            for shape in &shapes {
                let q = qparity_run(&exe, cpu, &["--pair", p.name, "--only", shape], min_time)?;
                let q = q
                    .first()
                    .with_context(|| format!("qparity bench printed nothing for {shape}"))?;
                let t = torch.time(shape)?;
                let row = rows.entry((p.name, shape.clone())).or_default();
                row.kernel = q["kernel"].as_str().unwrap_or("?").to_string();
                row.numerics = q["numerics"].as_str().unwrap_or("?").to_string();
                row.ours.push(Sample::from_json(q, "qparity bench")?);
                row.theirs.push(t);
            }
        }
        for v in qparity_run(&exe, cpu, &["--peaks"], min_time)? {
            let name = v["name"].as_str().unwrap_or("?").to_string();
            let numerics = v["numerics"].as_str().unwrap_or("?").to_string();
            peaks
                .entry((name, numerics))
                .or_default()
                .push(Sample::from_json(&v, "peak")?);
        }
    }
    let load_after = load();
    drop(workers);

    // Best peak per numerics class.
    let mut class_peak: BTreeMap<&str, (String, f64)> = BTreeMap::new();
    for ((name, numerics), s) in &peaks {
        let g = best(s).gops();
        let e = class_peak
            .entry(if numerics == "exact" {
                "exact"
            } else {
                "pair-saturating"
            })
            .or_insert((name.clone(), 0.0));
        if g > e.1 {
            *e = (name.clone(), g);
        }
    }
    let mut out_rows = Vec::new();
    let mut pair_best: BTreeMap<&str, (String, f64)> = BTreeMap::new();
    for ((pair, shape), row) in &rows {
        let p = pairs.iter().find(|p| p.name == *pair).expect("known pair");
        let (q, t) = (best(&row.ours), best(&row.theirs));
        let per_round: Vec<f64> = row
            .ours
            .iter()
            .zip(&row.theirs)
            .map(|(a, b)| a.gops() / b.gops())
            .collect();
        if row.numerics == p.numerics {
            let e = pair_best.entry(pair).or_insert((shape.clone(), 0.0));
            if q.gops() > e.1 {
                *e = (shape.clone(), q.gops());
            }
        }
        out_rows.push(serde_json::json!({
            "name": shape,
            "pair": pair,
            "isa": p.isa,
            "numerics": row.numerics,
            "kernel": row.kernel,
            "torch_env": p.torch_env.map(|(k, v)| format!("{k}={v}")),
            "qparity_gops": q.gops(),
            "torch_gops": t.gops(),
            "ratio": q.gops() / t.gops(),
            "round_ratios": per_round,
            "qparity_rounds": row.ours.iter().map(|s| s.gops()).collect::<Vec<_>>(),
            "torch_rounds": row.theirs.iter().map(|s| s.gops()).collect::<Vec<_>>(),
            "qparity_wall_gops": best_wall(&row.ours),
            "torch_wall_gops": best_wall(&row.theirs),
            "wall_ratio": best_wall(&row.ours) / best_wall(&row.theirs),
            "qparity_median_gops": q.median_gops(),
            "torch_median_gops": t.median_gops(),
        }));
    }
    let peak_rows: Vec<Value> = peaks
        .iter()
        .map(|((name, numerics), s)| {
            serde_json::json!({
                "name": name, "numerics": numerics, "gops": best(s).gops(),
                "rounds": s.iter().map(|x| x.gops()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let summary: Vec<Value> = pairs
        .iter()
        .filter_map(|p| {
            let (shape, g) = pair_best.get(p.name)?;
            let (peak, pg) = class_peak.get(p.numerics)?;
            Some(serde_json::json!({
                "pair": p.name, "isa": p.isa, "best_shape": shape, "best_gops": g,
                "peak": peak, "peak_gops": pg, "fraction_of_peak": g / pg,
            }))
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "rows": out_rows, "peaks": peak_rows, "pairs": summary,
            "rounds": rounds, "min_time_s": min_time, "cpu": cpu,
            "load_before": load_before, "load_after": load_after,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{rounds} rounds, pinned to CPU {}, {min_time} s per side, shape and round; GOPS of the \
         fastest batch of on-CPU time (wall minus waits for the CPU), best round; load \
         {load_before} → {load_after}",
        cpu.map_or("none".to_string(), |c| c.to_string())
    );
    println!(
        "{:<5} {:<11} {:<25} {:>8} {:>8} {:>6}  {:<13} {:>6}  {:<16} kernel",
        "pair",
        "isa",
        "shape (GOPS)",
        "qparity",
        "fbgemm",
        "ratio",
        "round ratios",
        "wall",
        "numerics"
    );
    for r in &out_rows {
        let rr: Vec<f64> = serde_json::from_value(r["round_ratios"].clone())?;
        let lo = rr.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{:<5} {:<11} {:<25} {:>8.1} {:>8.1} {:>5.2}x  {lo:.2}–{hi:.2}x    {:>5.2}x  {:<16} {}",
            r["pair"].as_str().unwrap_or(""),
            r["isa"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["qparity_gops"].as_f64().unwrap_or(0.0),
            r["torch_gops"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["wall_ratio"].as_f64().unwrap_or(0.0),
            r["numerics"].as_str().unwrap_or(""),
            r["kernel"].as_str().unwrap_or(""),
        );
    }
    for p in &peak_rows {
        println!(
            "peak {:<22} {:>8.1} GOPS  ({})",
            p["name"].as_str().unwrap_or(""),
            p["gops"].as_f64().unwrap_or(0.0),
            p["numerics"].as_str().unwrap_or("")
        );
    }
    for s in &summary {
        println!(
            "pair {}: best shape {} {:.1} GOPS = {:.0}% of the {} peak ({:.1} GOPS)",
            s["pair"].as_str().unwrap_or(""),
            s["best_shape"].as_str().unwrap_or(""),
            s["best_gops"].as_f64().unwrap_or(0.0),
            100.0 * s["fraction_of_peak"].as_f64().unwrap_or(0.0),
            s["peak"].as_str().unwrap_or(""),
            s["peak_gops"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
