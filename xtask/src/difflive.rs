//! `cargo xtask diff-live`: random small `quantized::linear` cases, run by one long-running
//! PyTorch worker (`xtask/difflive/worker.py`) and by the qparity reference engine, compared
//! element by element. Every disagreement is saved as a golden-format case plus its repro script.

use anyhow::{bail, Context, Result};
use qparity::engine::{Engine, Isa};
use qparity::gen::SplitMix64 as Rng;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// One generated linear case.
#[derive(Debug, Clone)]
struct LinCase {
    id: usize,
    engine: Engine,
    m: usize,
    k: usize,
    n: usize,
    x: Vec<f32>,
    xs: f64,
    xz: i64,
    w: Vec<i8>,
    ws: f32,
    wz: i64,
    b: Option<Vec<f32>>,
    ys: f64,
    yz: i64,
}

fn gen_case(rng: &mut Rng, id: usize) -> LinCase {
    let engine = if rng.int(0, 1) == 0 {
        Engine::Fbgemm
    } else {
        Engine::Qnnpack
    };
    let (m, k, n) = (
        rng.int(1, 4) as usize,
        rng.int(1, 32) as usize,
        rng.int(1, 8) as usize,
    );
    let xs = rng.f32(0.005, 0.1) as f64;
    let xz = rng.int(0, 255);
    // Inputs sometimes beyond the quantized range (clamping) and with full-range activations.
    let span = xs as f32 * 300.0;
    let x = (0..m * k).map(|_| rng.f32(-span, span)).collect();
    let w = (0..n * k).map(|_| rng.int(-128, 127) as i8).collect();
    let ws = rng.f32(0.001, 0.05);
    let wz = if rng.int(0, 1) == 0 {
        0
    } else {
        rng.int(-8, 8)
    };
    let b = if rng.int(0, 3) == 0 {
        None
    } else {
        Some((0..n).map(|_| rng.f32(-5.0, 5.0)).collect())
    };
    let ys = rng.f32(0.01, 1.0) as f64;
    let yz = rng.int(0, 255);
    LinCase {
        id,
        engine,
        m,
        k,
        n,
        x,
        xs,
        xz,
        w,
        ws,
        wz,
        b,
        ys,
        yz,
    }
}

fn hex_f32(v: &[f32]) -> String {
    v.iter().map(|x| format!("{:08x}", x.to_bits())).collect()
}

fn request(c: &LinCase) -> Value {
    json!({
        "id": c.id, "engine": c.engine.name(), "m": c.m, "k": c.k, "n": c.n,
        "x": hex_f32(&c.x), "xs": c.xs, "xz": c.xz,
        "w": c.w, "ws": c.ws as f64, "wz": c.wz,
        "b": c.b.as_ref().map(|b| hex_f32(b)), "ys": c.ys, "yz": c.yz,
    })
}

/// The golden-format case (`op: quantized_linear`) for a disagreement.
fn golden_case(c: &LinCase, seed: u64, torch: &str, isa: Isa, xq: &[i64], y: &[i64]) -> Value {
    let t_f32 =
        |shape: Vec<usize>, v: &[f32]| json!({"dtype": "f32", "shape": shape, "hex": hex_f32(v)});
    json!({
        "format": "qparity-golden/1",
        "id": format!("difflive-linear-{}-{seed}-{:06}", c.engine.name(), c.id),
        "kind": "primitive",
        "seed": seed,
        "torch_version": torch,
        "isa": if isa == Isa::Vnni { "default" } else { "avx2" },
        "tags": ["diff-live"],
        "op": "quantized_linear",
        "args": {
            "engine": c.engine.name(),
            "input": t_f32(vec![c.m, c.k], &c.x),
            "input_scale": c.xs, "input_zero_point": c.xz,
            "weight_int_repr": {"dtype": "i8", "shape": [c.n, c.k], "data": c.w},
            "weight_scale": c.ws as f64, "weight_zero_point": c.wz,
            "bias": c.b.as_ref().map(|b| t_f32(vec![c.n], b)),
            "output_scale": c.ys, "output_zero_point": c.yz,
        },
        "expected": {
            "input_int_repr": {"dtype": "u8", "shape": [c.m, c.k], "data": xq},
            "int_repr": {"dtype": "u8", "shape": [c.m, c.n], "data": y},
        }
    })
}

pub(crate) fn venv_python(root: &Path) -> PathBuf {
    match std::env::var_os("QPARITY_VENV") {
        Some(v) => PathBuf::from(v).join("bin/python"),
        None => root.join("target/golden-venv/bin/python"),
    }
}

/// Options of `diff-live`.
pub struct Opts {
    pub cases: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub json: bool,
}

/// Runs `diff-live`.
pub fn run(root: &Path, o: Opts) -> Result<()> {
    if o.cases == 0 {
        bail!("--cases must be at least 1");
    }
    let python = venv_python(root);
    if !python.exists() {
        bail!(
            "no Python at {} (set QPARITY_VENV to a venv with torch, or create target/golden-venv)",
            python.display()
        );
    }
    let worker = root.join("xtask/difflive/worker.py");
    let isa = qparity::explain::host_isa();
    let mut child = Command::new(&python)
        .arg(&worker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("OMP_NUM_THREADS", "1")
        .spawn()
        .with_context(|| format!("starting {} {}", python.display(), worker.display()))?;
    let stdin = child.stdin.take().context("worker stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
    let hello: Value = serde_json::from_str(
        &lines
            .next()
            .context("worker exited before saying hello")?
            .context("reading worker hello")?,
    )
    .context("worker hello is not JSON")?;
    let torch = hello["torch"].as_str().unwrap_or("?").to_string();

    let mut rng = Rng::new(o.seed ^ 0x5151_7a7a);
    let cases: Vec<LinCase> = (0..o.cases).map(|i| gen_case(&mut rng, i)).collect();
    let requests: Vec<String> = cases.iter().map(|c| request(c).to_string()).collect();

    let start = Instant::now();
    // Writer thread: stream every request while the main thread reads replies.
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = BufWriter::new(stdin);
        for r in requests {
            w.write_all(r.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()
    });

    let bar = if o.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(o.cases as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} diff-live {pos}/{len} {wide_bar} {per_sec} {msg} {elapsed}",
        )
        .expect("valid template"),
    );
    let mut disagreements = Vec::new();
    for c in &cases {
        let line = lines
            .next()
            .context("worker exited early")?
            .context("reading worker reply")?;
        let reply: Value = serde_json::from_str(&line).context("worker reply is not JSON")?;
        if reply["id"].as_u64() != Some(c.id as u64) {
            bail!("worker replied out of order: {line}");
        }
        if let Some(e) = reply["error"].as_str() {
            bail!("PyTorch failed on case {}: {e}", c.id);
        }
        let ints = |k: &str| -> Result<Vec<i64>> {
            reply[k]
                .as_array()
                .with_context(|| format!("reply lacks {k}"))?
                .iter()
                .map(|v| v.as_i64().context("non-integer in reply"))
                .collect()
        };
        let (xq, y) = (ints("xq")?, ints("y")?);
        // PyTorch's results as a golden case, checked exactly as `qparity check` checks it.
        let v = golden_case(c, o.seed, &torch, isa, &xq, &y);
        let case = qparity::golden::parse_case(Path::new("diff-live.json"), &v.to_string())?;
        let opts = qparity::check::CheckOptions {
            cpu: qparity::engine::CpuFeatures::host(),
            ..Default::default()
        };
        let r = qparity::check::check_case(&case, &opts);
        if let Some(e) = r.error {
            bail!("case {}: {e}", c.id);
        }
        if !r.passed {
            disagreements.push((c.clone(), xq, y));
            bar.set_message(format!("{} disagreements", disagreements.len()));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .context("writing to worker")?;
    let _ = child.wait();

    let mut saved = Vec::new();
    if !disagreements.is_empty() {
        std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    }
    for (c, xq, y) in &disagreements {
        let v = golden_case(c, o.seed, &torch, isa, xq, y);
        let id = v["id"].as_str().unwrap_or("case").to_string();
        let cp = o.out.join(format!("{id}.json"));
        let text = serde_json::to_string_pretty(&v)?;
        std::fs::write(&cp, &text).with_context(|| format!("writing {}", cp.display()))?;
        let case = qparity::golden::parse_case(&cp, &text)?;
        let script = qparity::repro::script_for(&case, &text)?;
        let sp = o.out.join(format!("{id}.py"));
        std::fs::write(&sp, script).with_context(|| format!("writing {}", sp.display()))?;
        saved.push(cp.display().to_string());
    }
    let rate = o.cases as f64 / elapsed;
    if o.json {
        println!(
            "{}",
            json!({"cases": o.cases, "cases_per_sec": rate, "disagreements": disagreements.len(),
                   "seed": o.seed, "isa": isa.name(), "torch": torch, "saved": saved})
        );
    } else {
        println!(
            "{} cases in {:.2}s ({:.0} cases/s), isa {}, torch {}: {} disagreements",
            o.cases,
            elapsed,
            rate,
            isa.name(),
            torch,
            disagreements.len()
        );
        for s in &saved {
            println!("  saved {s} (+ .py repro)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for i in 0..200 {
            let (x, y) = (gen_case(&mut a, i), gen_case(&mut b, i));
            assert_eq!(request(&x), request(&y));
            assert!((1..=32).contains(&x.k) && x.w.len() == x.n * x.k);
            assert!((0..=255).contains(&x.xz) && (0..=255).contains(&x.yz));
        }
        assert_ne!(
            request(&gen_case(&mut Rng::new(1), 0)),
            request(&gen_case(&mut Rng::new(2), 0))
        );
    }

    #[test]
    fn saved_case_parses_and_gets_a_repro_script() {
        let c = gen_case(&mut Rng::new(3), 5);
        let (xq, y) = (vec![0; c.m * c.k], vec![1; c.m * c.n]);
        let v = golden_case(&c, 3, "2.15.0", Isa::Avx2, &xq, &y);
        let text = v.to_string();
        let case = qparity::golden::parse_case(Path::new("x.json"), &text).unwrap();
        let s = qparity::repro::script_for(&case, &text).unwrap();
        assert!(s.contains("quantized_linear") && s.contains("FBGEMM_ENABLE_INSTRUCTIONS"));
        // The saved case is checkable like any golden: these made-up outputs must fail.
        let r = qparity::check::check_case(&case, &Default::default());
        assert!(r.error.is_none(), "{:?}", r.error);
        assert!(!r.passed);
    }
}
