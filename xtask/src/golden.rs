//! `cargo xtask golden`: capture goldens from real PyTorch (format: golden/README.md), regenerate
//! the committed sets (`--check`), and compare two captures of one seed (`--compare`).
//!
//! Creates a Python venv once (default `target/golden-venv`, override with `QPARITY_VENV`),
//! installs the pinned torch and numpy when missing, checks that the three FX convert flows
//! exist, then runs `xtask/capture/golden.py` once per ISA variant (FBGEMM reads
//! `FBGEMM_ENABLE_INSTRUCTIONS` when torch is imported, so each variant is its own process) and
//! once more to write `MANIFEST.json`. With `--emulate haswell` every step runs under
//! `qemu-x86_64 -cpu Haswell`, which PyTorch, FBGEMM and oneDNN all see as an AVX2 CPU; the
//! manifest then records the emulated CPU's flags (read by cpuinfo inside the process).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qparity::engine::CpuFeatures;

/// torch release the goldens are pinned to.
const TORCH_VERSION: &str = "2.15.0";
/// The torchvision the graph suite's models come from (the release beside torch 2.15.0).
const TORCHVISION_VERSION: &str = "0.29.2";
/// Number of cases of a capture unless --cases says otherwise.
const DEFAULT_CASES: usize = 420;
const FORMAT: &str = "qparity-golden/1";
/// The data generator of `xtask/capture/rng.py`; sets drawn by another one cannot be regenerated.
const GENERATOR: &str = "qparity-gen/2";
/// ISA variants, each with the value of FBGEMM_ENABLE_INSTRUCTIONS it needs at import time.
const ISAS: [(&str, Option<&str>); 2] = [("default", None), ("avx2", Some("AVX2"))];
/// `--emulate` choices: name and the emulator, recorded in the manifest as written here: leading
/// `NAME=VALUE` words are environment variables, the rest a command prefix.
/// - `haswell`: qemu-user emulates an AVX2-only CPU, which PyTorch, FBGEMM and oneDNN all see.
/// - `vnni-xeon`: an AVX-512 VNNI Xeon without AMX, on a CPU with AMX: oneDNN's dispatch is capped
///   at `avx512_core_bf16` (its `ONEDNN_MAX_CPU_ISA`, `src/cpu/x64/cpu_isa_traits.hpp`), the ISA an
///   AVX-512 VNNI + BF16 Xeon without AMX gets; ATen dispatches at its AVX512 level on both, and
///   FBGEMM's int8 kernels have no AMX path (VNNI accumulates exactly either way).
const EMULATORS: [(&str, &str); 2] = [
    ("haswell", "qemu-x86_64 -cpu Haswell"),
    ("vnni-xeon", "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"),
];

/// An emulator string split into its environment variables and its command prefix.
fn split_emulator(emulator: &str) -> (Vec<(&str, &str)>, Vec<&str>) {
    let mut env = Vec::new();
    let mut words = emulator.split_whitespace().peekable();
    while let Some((k, v)) = words.peek().and_then(|w| w.split_once('=')) {
        env.push((k, v));
        words.next();
    }
    (env, words.collect())
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seed that draws shapes, qconfig variations and data (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Total number of cases, cycling through the op x engine x mode x ISA matrix (default 420);
    /// with `--suite ops`, the number of cases per op (cycling through the engines); with
    /// `--suite pins`, the number of cases per pinned rule.
    #[arg(long)]
    cases: Option<usize>,
    /// Output directory of a capture, e.g. golden/<set> or a scratch folder.
    #[arg(long, conflicts_with_all = ["check", "compare"])]
    out: Option<PathBuf>,
    /// Run the capture under an emulated CPU: `haswell` (`qemu-x86_64 -cpu Haswell`, AVX2) or
    /// `vnni-xeon` (on an AMX Xeon: oneDNN capped below AMX, as on an AVX-512 VNNI Xeon).
    #[arg(long, value_parser = ["haswell", "vnni-xeon"])]
    emulate: Option<String>,
    /// Regenerate every committed set under golden/ whose capture CPU this machine is (same
    /// cpu_flags) and diff it byte for byte; sets from other CPUs are skipped with one line each.
    #[arg(long, conflicts_with_all = ["force", "compare", "emulate"])]
    check: bool,
    /// With --check: also regenerate sets captured under an emulator, under that emulator.
    #[arg(long, requires = "check")]
    emulated: bool,
    /// Compare two captures of one seed: which cases differ, and in which tensors.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["force", "emulate"])]
    compare: Option<Vec<PathBuf>>,
    /// With --compare: list every differing case, not only the summary per op / engine / ISA.
    #[arg(long, requires = "compare")]
    per_case: bool,
    /// Which capture plan: `core` (primitives and small models), `ops` (ops on quantized
    /// tensors under every engine), `graphs` (torchvision's quantizable models as graph cases,
    /// each under fbgemm / qnnpack / x86 PTQ, fbgemm / qnnpack QAT, onednn PTQ; `--cases` takes
    /// the first N of those slots, variant by variant), `pins` (cases on which a numerics
    /// rule and its nearest alternative differ, `xtask/capture/pins.py`) or `specials` (the
    /// float-input primitives with NaN, ±inf and huge values mixed into their data; `--cases`
    /// per primitive).
    #[arg(long, value_parser = ["core", "ops", "graphs", "pins", "specials"], default_value = "core")]
    suite: String,
    /// With `--suite pins`: capture only these rules (comma-separated tags such as
    /// `R21-fbgemm-multiplier-division`); a rule's cases are the same as in the full plan. The
    /// manifest records the list, so `--check` regenerates the same cases.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["check", "compare"])]
    rules: Vec<String>,
    /// Allow writing into a non-empty directory that is not a previous golden output
    /// (its existing `cases/*.json` and `MANIFEST.json` are replaced).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let root = workspace_root()?;
    if let Some(dirs) = &args.compare {
        return crate::compare::run(&dirs[0], &dirs[1], args.per_case);
    }
    let script = root.join("xtask").join("capture").join("golden.py");
    if !script.is_file() {
        bail!("capture script not found at {}", script.display());
    }
    if args.check {
        return check(&root, &script, args.emulated);
    }
    let Some(out) = args.out.clone() else {
        bail!(
            "say where to write the capture: --out DIR (a committed set is golden/<name>; \
             `--check` regenerates the committed sets)"
        );
    };
    let start = Instant::now();
    let cases = match args.cases {
        Some(0) => bail!("--cases must be at least 1"),
        Some(n) => n,
        None => DEFAULT_CASES,
    };
    let seed = args.seed.unwrap_or(0);
    if !args.rules.is_empty() && args.suite != "pins" {
        bail!("--rules filters the pins suite only (add --suite pins)");
    }
    let python = ensure_venv(&root)?;
    let runner = match &args.emulate {
        Some(name) => {
            let prefix = EMULATORS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .context("unknown emulator")?;
            Runner::emulated(&python, prefix)?
        }
        None => Runner::native(&python),
    };
    let created = !out.exists();
    prepare_out_dir(&out, args.force)?;
    eprintln!(
        "capturing {cases} cases (seed {seed}) into {} with {}{}",
        out.display(),
        python.display(),
        runner
            .emulator
            .as_deref()
            .map(|e| format!(" under {e}"))
            .unwrap_or_default()
    );
    let captured = capture(
        &runner,
        &script,
        &out,
        &args.suite,
        &args.rules,
        seed,
        cases,
    );
    if captured.is_err() && created {
        remove_empty_tree(&out);
    }
    captured?;
    eprintln!(
        "wrote the cases and MANIFEST.json to {} in {:.1}s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Remove `dir` and its subfolders if no file is left in them (a capture that failed before
/// writing anything, e.g. on an unknown `--rules` tag); a folder holding any file stays as is.
fn remove_empty_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path());
            }
        }
    }
    // Fails, and so keeps the folder, when something is left in it.
    let _ = fs::remove_dir(dir);
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// A previous golden output: a manifest of our format, or (a fresh golden/ folder) nothing but
/// README.md, cases/ and MANIFEST.json.
fn is_previous_output(dir: &Path) -> bool {
    if let Ok(text) = fs::read_to_string(dir.join("MANIFEST.json")) {
        return serde_json::from_str::<serde_json::Value>(&text)
            .map(|v| v["format"] == FORMAT)
            .unwrap_or(false);
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.map(|e| matches!(e.file_name().to_str(), Some("README.md" | "cases")))
            .unwrap_or(false)
    })
}

/// Make `out` ready for a fresh capture: refuse a non-empty directory that is not a previous
/// golden output (unless --force), and remove the previous output's cases and manifest.
fn prepare_out_dir(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    if out.is_dir() {
        let non_empty = fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .next()
            .is_some();
        if non_empty && !is_previous_output(out) && !force {
            bail!(
                "refusing to write into {}: it is not empty and holds no golden MANIFEST.json \
                 (format {FORMAT}); choose an empty or new directory, or pass --force",
                out.display()
            );
        }
        let cases = out.join("cases");
        if cases.is_dir() {
            for entry in
                fs::read_dir(&cases).with_context(|| format!("listing {}", cases.display()))?
            {
                let path = entry?.path();
                let is_case = path.extension().is_some_and(|e| e == "json") && path.is_file();
                if !is_case {
                    if !force {
                        bail!(
                            "refusing to clear {}: it holds {}, which is not a case file (pass --force)",
                            cases.display(),
                            path.display()
                        );
                    }
                    continue;
                }
                fs::remove_file(&path)
                    .with_context(|| format!("removing old case {}", path.display()))?;
            }
        }
        let manifest = out.join("MANIFEST.json");
        if manifest.exists() {
            fs::remove_file(&manifest)
                .with_context(|| format!("removing {}", manifest.display()))?;
        }
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// venv

fn venv_dir(root: &Path) -> PathBuf {
    match std::env::var_os("QPARITY_VENV") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => root.join("target").join("golden-venv"),
    }
}

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Result of probing the venv's Python.
#[derive(Debug, PartialEq)]
struct Probe {
    torch: Option<String>,
    numpy: Option<String>,
    torchvision: Option<String>,
    missing_flows: Vec<String>,
}

const PROBE: &str = r#"
import importlib
try:
    import numpy
    print("numpy=" + numpy.__version__)
except Exception:
    print("numpy=")
try:
    import torchvision
    print("torchvision=" + torchvision.__version__)
except Exception:
    print("torchvision=")
try:
    import torch
    print("torch=" + torch.__version__)
except Exception:
    print("torch=")
else:
    try:
        qfx = importlib.import_module("torch.ao.quantization.quantize_fx")
    except Exception:
        qfx = None
    for name in ("convert_fx", "convert_to_reference_fx", "_convert_to_reference_decomposed_fx",
                 "prepare_fx", "prepare_qat_fx"):
        if qfx is None or not hasattr(qfx, name):
            print("missing=" + name)
"#;

fn parse_probe(out: &str) -> Probe {
    let mut p = Probe {
        torch: None,
        numpy: None,
        torchvision: None,
        missing_flows: Vec::new(),
    };
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("torch=") {
            p.torch = (!v.is_empty()).then(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("numpy=") {
            p.numpy = (!v.is_empty()).then(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("torchvision=") {
            p.torchvision = (!v.is_empty()).then(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("missing=") {
            p.missing_flows.push(v.to_string());
        }
    }
    p
}

fn probe(python: &Path) -> Result<Probe> {
    let out = Command::new(python)
        .args(["-c", PROBE])
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not run a probe script (exit {}); delete the venv and retry",
            python.display(),
            out.status
        );
    }
    Ok(parse_probe(&String::from_utf8_lossy(&out.stdout)))
}

/// The public part of a torch version (`2.15.0+cu132` -> `2.15.0`).
fn public_version(v: &str) -> &str {
    v.split('+').next().unwrap_or(v)
}

fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = venv_dir(root);
    let python = venv_python(&venv);
    if !python.exists() {
        let base: OsString =
            std::env::var_os("QPARITY_PYTHON").unwrap_or_else(|| OsString::from("python3"));
        let version = Command::new(&base).arg("--version").output();
        match version {
            Ok(o) if o.status.success() => {}
            _ => bail!(
                "{} not found or not runnable: install Python 3.10+ (e.g. `apt-get install python3 \
                 python3-venv`) or point QPARITY_PYTHON at a python3 executable",
                base.to_string_lossy()
            ),
        }
        eprintln!("creating venv {}", venv.display());
        let status = Command::new(&base)
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .with_context(|| format!("running {} -m venv", base.to_string_lossy()))?;
        if !status.success() || !python.exists() {
            bail!(
                "`{} -m venv {}` failed ({status}); install the venv module (e.g. `apt-get install \
                 python3-venv`) or set QPARITY_VENV to an existing venv with torch=={TORCH_VERSION}",
                base.to_string_lossy(),
                venv.display()
            );
        }
    }
    let mut p = probe(&python)?;
    if p.torch.is_none() || p.numpy.is_none() || p.torchvision.is_none() {
        let mut pkgs = Vec::new();
        if p.torch.is_none() {
            pkgs.push(format!("torch=={TORCH_VERSION}"));
        }
        if p.torchvision.is_none() {
            pkgs.push(format!("torchvision=={TORCHVISION_VERSION}"));
        }
        if p.numpy.is_none() {
            pkgs.push("numpy".to_string());
        }
        eprintln!(
            "installing {} into {} (this downloads several hundred MB once)",
            pkgs.join(" "),
            venv.display()
        );
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(&pkgs)
            .status()
            .with_context(|| format!("running {} -m pip", python.display()))?;
        if !status.success() {
            bail!(
                "pip install {} failed ({status}): check the network / proxy (PIP_INDEX_URL, e.g. \
                 https://download.pytorch.org/whl/cpu for CPU-only wheels), then rerun \
                 `cargo xtask golden`; to use another environment set QPARITY_VENV",
                pkgs.join(" ")
            );
        }
        p = probe(&python)?;
    }
    let torch = p.torch.as_deref().context(format!(
        "torch still not importable in {} after pip install",
        venv.display()
    ))?;
    if p.numpy.is_none() {
        bail!(
            "numpy still not importable in {} after pip install",
            venv.display()
        );
    }
    if public_version(torch) != TORCH_VERSION {
        bail!(
            "{} has torch {torch}, but the goldens are pinned to torch=={TORCH_VERSION}: \
             run `{} -m pip install torch=={TORCH_VERSION}`, delete the venv, or set QPARITY_VENV \
             to another venv",
            venv.display(),
            python.display()
        );
    }
    match p.torchvision.as_deref().map(public_version) {
        Some(TORCHVISION_VERSION) => {}
        v => bail!(
            "{} has torchvision {}, but the graph goldens are pinned to \
             torchvision=={TORCHVISION_VERSION}: run `{} -m pip install \
             torchvision=={TORCHVISION_VERSION}` or set QPARITY_VENV to another venv",
            venv.display(),
            v.unwrap_or("(none)"),
            python.display()
        ),
    }
    if !p.missing_flows.is_empty() {
        bail!(
            "torch {torch} in {} lacks the FX quantization flows ({} missing from \
             torch.ao.quantization.quantize_fx); reinstall torch=={TORCH_VERSION}",
            venv.display(),
            p.missing_flows.join(", ")
        );
    }
    Ok(python)
}

// ------------------------------------------------------------------------------------------
// capture

/// How the capture's Python steps run: natively, or under an emulator command prefix.
struct Runner {
    python: PathBuf,
    /// E.g. `qemu-x86_64 -cpu Haswell` (recorded in the manifest).
    emulator: Option<String>,
}

impl Runner {
    fn native(python: &Path) -> Self {
        Runner {
            python: python.to_path_buf(),
            emulator: None,
        }
    }

    /// Checks that the emulator's program runs (and, for a dispatch cap, that this CPU has what is
    /// capped) before a long capture starts.
    fn emulated(python: &Path, emulator: &str) -> Result<Self> {
        let (env, prefix) = split_emulator(emulator);
        if env.is_empty() && prefix.is_empty() {
            bail!("empty emulator");
        }
        if let Some(program) = prefix.first() {
            let ok = Command::new(program)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!(
                    "`{program}` not found or not runnable: install qemu-user (Debian/Ubuntu: \
                     `apt-get install qemu-user`) to capture or regenerate under `{emulator}`"
                );
            }
        } else if !CpuFeatures::host().amx_int8 {
            // Capping oneDNN below AMX emulates a VNNI Xeon only on a CPU that has AMX and VNNI.
            bail!(
                "`{emulator}` emulates an AVX-512 VNNI Xeon on a CPU with AMX-INT8; this CPU has \
                 no AMX: capture natively if it is that Xeon class"
            );
        }
        Ok(Runner {
            python: python.to_path_buf(),
            emulator: Some(emulator.to_string()),
        })
    }

    /// `python script` (under the emulator, if any) with the capture's fixed environment.
    fn command(&self, script: &Path) -> Command {
        let (env, prefix) = self
            .emulator
            .as_deref()
            .map(split_emulator)
            .unwrap_or_default();
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.python);
                c
            }
            None => Command::new(&self.python),
        };
        cmd.envs(env);
        cmd.arg(script)
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("FBGEMM_ENABLE_INSTRUCTIONS");
        if self.emulator.is_some() {
            // qemu-user warns about every CPUID feature TCG cannot emulate; only those lines go.
            cmd.stderr(Stdio::piped());
        }
        cmd
    }

    /// Spawns `cmd` and forwards its stderr, minus qemu's feature warnings.
    fn spawn(&self, cmd: &mut Command) -> Result<std::process::Child> {
        let mut child = cmd.spawn().context("starting the capture script")?;
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if !line.contains("TCG doesn't support requested feature") {
                        eprintln!("{line}");
                    }
                }
            });
        }
        Ok(child)
    }

    /// The CPU as PyTorch's cpuinfo sees it in this runner (`golden.py cpu`).
    fn cpu_flags(&self, script: &Path) -> Result<Vec<String>> {
        let mut cmd = self.command(script);
        cmd.arg("cpu").stdout(Stdio::piped());
        let child = self.spawn(&mut cmd)?;
        let out = child.wait_with_output().context("running golden.py cpu")?;
        if !out.status.success() {
            bail!("golden.py cpu failed ({})", out.status);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("golden.py cpu did not print JSON")?;
        v["cpu_flags"]
            .as_array()
            .context("golden.py cpu: no cpu_flags")?
            .iter()
            .map(|f| {
                f.as_str()
                    .map(String::from)
                    .context("cpu flag not a string")
            })
            .collect()
    }
}

/// The op registry (`qparity::golden::PrimOp`) as the capture script checks it.
fn registry() -> String {
    qparity::golden::PrimOp::ALL
        .iter()
        .map(|o| o.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn capture(
    runner: &Runner,
    script: &Path,
    out: &Path,
    suite: &str,
    rules: &[String],
    seed: u64,
    cases: usize,
) -> Result<()> {
    let rules = rules.join(",");
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(cases as u64);
        b.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .context("progress template")?
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut done = 0usize;
    // The plan's size: `--cases` for the core suite, cases per op times ops for the ops suite.
    let mut total = cases;
    for (isa, fbgemm_isa) in ISAS {
        let mut cmd = runner.command(script);
        cmd.arg("run")
            .arg("--out")
            .arg(out)
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--cases")
            .arg(cases.to_string())
            .arg("--isa")
            .arg(isa)
            .arg("--suite")
            .arg(suite)
            .arg("--registry")
            .arg(registry())
            .arg("--rules")
            .arg(&rules)
            .stdout(Stdio::piped());
        if let Some(v) = fbgemm_isa {
            cmd.env("FBGEMM_ENABLE_INSTRUCTIONS", v);
        }
        let mut child = runner
            .spawn(&mut cmd)
            .with_context(|| format!("starting {}", script.display()))?;
        let stdout = child.stdout.take().context("capture script stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the capture script's output")?;
            if let Some(n) = line.strip_prefix("PLAN ") {
                total = n
                    .trim()
                    .parse()
                    .context("PLAN line of the capture script")?;
                bar.set_length(total as u64);
                continue;
            }
            match line.strip_prefix("CASE ") {
                Some(rest) => {
                    done += 1;
                    let id = rest.split_whitespace().nth(2).unwrap_or("?");
                    if tty {
                        bar.set_message(format!("{isa}: {id}"));
                        bar.inc(1);
                    } else {
                        eprintln!("case {done} of {total}: {id}");
                    }
                }
                None => bar.println(line),
            }
        }
        let status = child.wait().context("waiting for the capture script")?;
        if !status.success() {
            bar.abandon();
            bail!("capture script failed for ISA variant `{isa}` ({status}); see its output above");
        }
    }
    bar.finish_and_clear();
    if done != total {
        bail!("capture script reported {done} cases, expected {total}");
    }
    let mut cmd = runner.command(script);
    cmd.arg("manifest")
        .arg("--out")
        .arg(out)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--emulator")
        .arg(runner.emulator.as_deref().unwrap_or(""))
        .arg("--suite")
        .arg(suite)
        .arg("--plan-cases")
        .arg(cases.to_string())
        .arg("--rules")
        .arg(&rules)
        .stdout(Stdio::null());
    let status = runner
        .spawn(&mut cmd)?
        .wait()
        .context("running the manifest step")?;
    if !status.success() {
        bail!("writing MANIFEST.json failed ({status})");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// --check

/// What `--check` does with one committed set.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Regenerate natively or under this emulator.
    Regenerate(Option<String>),
    /// Skip, with the one-line reason.
    Skip(String),
}

/// The committed set's capture facts `--check` needs.
struct SetInfo {
    generator: Option<String>,
    flags: Vec<String>,
    emulator: Option<String>,
}

/// `+flag` for flags only this machine has, `-flag` for flags only the set's CPU had.
fn flag_diff(host: &[String], set: &[String]) -> String {
    let h: BTreeSet<&str> = host.iter().map(String::as_str).collect();
    let s: BTreeSet<&str> = set.iter().map(String::as_str).collect();
    let mut parts: Vec<String> = h.difference(&s).map(|f| format!("+{f}")).collect();
    parts.extend(s.difference(&h).map(|f| format!("-{f}")));
    parts.join(" ")
}

/// Decides whether this machine can regenerate a set byte for byte: same generator, and the
/// same CPU flags natively (or, with `--emulated`, under the set's emulator).
fn plan_set(set: &SetInfo, host: &[String], emulated: bool) -> Plan {
    if set.generator.as_deref() != Some(GENERATOR) {
        return Plan::Skip(format!(
            "drawn by {}, not {GENERATOR}: no machine regenerates it (it stays valid data)",
            set.generator.as_deref().unwrap_or("an earlier generator")
        ));
    }
    let same = |a: &[String], b: &[String]| {
        a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
    };
    if same(host, &set.flags) {
        return Plan::Regenerate(None);
    }
    if emulated {
        if let Some(e) = &set.emulator {
            return Plan::Regenerate(Some(e.clone()));
        }
    }
    let class = |f: &[String]| CpuFeatures::from_flags(f).class_name();
    let mut why = format!(
        "captured on {}{}, this machine is {}; flags differ: {} (+ only here, - only there)",
        class(&set.flags),
        set.emulator
            .as_deref()
            .map(|e| format!(" under {e}"))
            .unwrap_or_default(),
        class(host),
        flag_diff(host, &set.flags)
    );
    if set.emulator.is_some() {
        why.push_str("; --emulated regenerates it under its emulator");
    }
    Plan::Skip(why)
}

fn check(root: &Path, script: &Path, emulated: bool) -> Result<()> {
    let start = Instant::now();
    let golden = root.join("golden");
    let located = qparity::golden::manifest::locate(&golden)
        .with_context(|| format!("reading {}", golden.display()))?;
    if located.sets.is_empty() {
        bail!(
            "--check: no golden set (folder with MANIFEST.json) under {}",
            golden.display()
        );
    }
    let python = ensure_venv(root)?;
    let native = Runner::native(&python);
    let host = native.cpu_flags(script)?;
    let (mut regenerated, mut skipped, mut failed) = (0, 0, Vec::new());
    for set in &located.sets {
        let name = set
            .dir
            .strip_prefix(root)
            .unwrap_or(&set.dir)
            .display()
            .to_string();
        let m = &set.manifest;
        let info = SetInfo {
            generator: m.generator.clone(),
            flags: m.cpu_flags.clone(),
            emulator: m.emulator.clone(),
        };
        let runner = match plan_set(&info, &host, emulated) {
            Plan::Skip(why) => {
                eprintln!("{name}: skipped: {why}");
                skipped += 1;
                continue;
            }
            Plan::Regenerate(None) => Runner::native(&python),
            Plan::Regenerate(Some(e)) => {
                let r = Runner::emulated(&python, &e)?;
                let flags = r.cpu_flags(script)?;
                if flags.iter().collect::<BTreeSet<_>>() != m.cpu_flags.iter().collect() {
                    eprintln!(
                        "{name}: skipped: under {e} this machine reports other flags ({})",
                        flag_diff(&flags, &m.cpu_flags)
                    );
                    skipped += 1;
                    continue;
                }
                r
            }
        };
        let seed = m
            .seed
            .with_context(|| format!("{name}: manifest has no seed"))?;
        let tmp = tempfile::Builder::new()
            .prefix("qparity-golden-")
            .tempdir()
            .context("creating a temporary directory")?;
        eprintln!(
            "{name}: regenerating {} cases (seed {seed}){} ...",
            m.cases,
            runner
                .emulator
                .as_deref()
                .map(|e| format!(" under {e}"))
                .unwrap_or_default()
        );
        let suite = m.suite.as_deref().unwrap_or("core");
        capture(
            &runner,
            script,
            tmp.path(),
            suite,
            m.rules.as_deref().unwrap_or_default(),
            seed,
            m.plan_cases.unwrap_or(m.cases),
        )?;
        let diffs = diff_sets(&set.dir, tmp.path())?;
        regenerated += 1;
        if diffs.is_empty() {
            eprintln!("{name}: OK, {} case files identical byte for byte", m.cases);
        } else {
            eprintln!("{name}: {} file(s) differ:", diffs.len());
            for d in diffs.iter().take(10) {
                eprintln!("  {d}");
            }
            if diffs.len() > 10 {
                eprintln!("  ... and {} more", diffs.len() - 10);
            }
            failed.push(name);
        }
    }
    eprintln!(
        "golden --check: {regenerated} set(s) regenerated, {skipped} skipped, {} differ ({:.1}s)",
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "golden --check: regenerated sets differ: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Case files (relative paths under cases/).
fn case_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    let cases = dir.join("cases");
    if cases.is_dir() {
        for entry in fs::read_dir(&cases).with_context(|| format!("listing {}", cases.display()))? {
            let entry = entry?;
            files.insert(Path::new("cases").join(entry.file_name()));
        }
    }
    Ok(files)
}

/// Byte-for-byte comparison of the case files, and of the manifests' file hashes (the manifests'
/// descriptive fields, such as the CPU name or Python version, may differ); one line per
/// differing, missing or extra file.
fn diff_sets(expected: &Path, actual: &Path) -> Result<Vec<String>> {
    let want = case_files(expected)?;
    let have = case_files(actual)?;
    let mut diffs = Vec::new();
    for f in want.union(&have) {
        match (want.contains(f), have.contains(f)) {
            (true, false) => diffs.push(format!("missing from regenerated set: {}", f.display())),
            (false, true) => diffs.push(format!("not in {}: {}", expected.display(), f.display())),
            _ => {
                let a = fs::read(expected.join(f))
                    .with_context(|| format!("reading {}", expected.join(f).display()))?;
                let b = fs::read(actual.join(f))
                    .with_context(|| format!("reading {}", actual.join(f).display()))?;
                if a != b {
                    diffs.push(format!("differs: {}", f.display()));
                }
            }
        }
    }
    let hashes = |d: &Path| -> Result<Option<String>> {
        Ok(qparity::golden::manifest::Manifest::load(d)
            .ok()
            .map(|m| m.content_hash))
    };
    if diffs.is_empty() && hashes(expected)? != hashes(actual)? {
        diffs.push("MANIFEST.json: content_hash differs".into());
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_parsed() {
        let p = parse_probe("numpy=2.4.6\ntorchvision=0.29.2+cpu\ntorch=2.15.0+cu132\n");
        assert_eq!(p.torch.as_deref(), Some("2.15.0+cu132"));
        assert_eq!(p.torchvision.as_deref(), Some("0.29.2+cpu"));
        assert_eq!(p.numpy.as_deref(), Some("2.4.6"));
        assert!(p.missing_flows.is_empty());
        let p = parse_probe("numpy=\ntorch=2.0.0\nmissing=_convert_to_reference_decomposed_fx\n");
        assert_eq!(p.numpy, None);
        assert_eq!(p.missing_flows, vec!["_convert_to_reference_decomposed_fx"]);
        assert_eq!(public_version("2.15.0+cu132"), "2.15.0");
        assert_eq!(public_version("2.15.0"), "2.15.0");
    }

    #[test]
    fn refuses_foreign_non_empty_dir_and_clears_previous_output() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        fs::write(dir.path().join("README.md"), "spec").unwrap();
        let err = prepare_out_dir(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        assert!(dir.path().join("notes.txt").exists());

        let prev = tempfile::tempdir().unwrap();
        fs::create_dir(prev.path().join("cases")).unwrap();
        fs::write(prev.path().join("cases/a.json"), "{}").unwrap();
        fs::write(prev.path().join("README.md"), "spec").unwrap();
        fs::write(
            prev.path().join("MANIFEST.json"),
            format!("{{\"format\": \"{FORMAT}\", \"cases\": 1, \"seed\": 0}}"),
        )
        .unwrap();
        prepare_out_dir(prev.path(), false).unwrap();
        assert!(!prev.path().join("cases/a.json").exists());
        assert!(!prev.path().join("MANIFEST.json").exists());
        assert!(prev.path().join("README.md").exists());
    }

    #[test]
    fn a_failed_capture_removes_only_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(out.join("cases/deep")).unwrap();
        remove_empty_tree(&out);
        assert!(!out.exists());

        fs::create_dir_all(out.join("cases/deep")).unwrap();
        fs::write(out.join("cases/a.json"), "{}").unwrap();
        remove_empty_tree(&out);
        assert!(out.join("cases/a.json").exists());
        assert!(!out.join("cases/deep").exists());
    }

    #[test]
    fn diff_reports_changed_missing_and_extra_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir(d.join("cases")).unwrap();
            fs::write(d.join("MANIFEST.json"), "m").unwrap();
            fs::write(d.join("cases/same.json"), "1").unwrap();
        }
        assert!(diff_sets(a.path(), b.path()).unwrap().is_empty());
        fs::write(a.path().join("cases/x.json"), "1").unwrap();
        fs::write(b.path().join("cases/y.json"), "1").unwrap();
        fs::write(b.path().join("cases/same.json"), "2").unwrap();
        let d = diff_sets(a.path(), b.path()).unwrap();
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d
            .iter()
            .any(|l| l.starts_with("differs") && l.contains("same.json")));
        assert!(d
            .iter()
            .any(|l| l.starts_with("missing") && l.contains("x.json")));
        assert!(d
            .iter()
            .any(|l| l.starts_with("not in") && l.contains("y.json")));
    }

    fn flags(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn check_regenerates_only_sets_this_machine_can_reproduce() {
        let vnni = flags("sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni");
        let avx2 = flags("sse4_2 avx avx2 fma f16c");
        let set = |generator: Option<&str>, f: &[String], emulator: Option<&str>| SetInfo {
            generator: generator.map(String::from),
            flags: f.to_vec(),
            emulator: emulator.map(String::from),
        };
        let gen = Some(GENERATOR);
        assert_eq!(
            plan_set(&set(gen, &vnni, None), &vnni, false),
            Plan::Regenerate(None)
        );
        // An emulated AVX2 set regenerates natively on an AVX2 machine.
        let emu = Some("qemu-x86_64 -cpu Haswell");
        assert_eq!(
            plan_set(&set(gen, &avx2, emu), &avx2, false),
            Plan::Regenerate(None)
        );
        assert_eq!(
            plan_set(&set(gen, &avx2, emu), &vnni, true),
            Plan::Regenerate(emu.map(String::from))
        );
        let Plan::Skip(why) = plan_set(&set(gen, &avx2, emu), &vnni, false) else {
            panic!("an AVX2 set must be skipped on a VNNI machine");
        };
        assert_eq!(
            why,
            "captured on AVX2 under qemu-x86_64 -cpu Haswell, this machine is AVX-512 VNNI; flags \
             differ: +avx512_vnni +avx512bw +avx512dq +avx512f +avx512vl (+ only here, - only \
             there); --emulated regenerates it under its emulator"
        );
        let Plan::Skip(why) = plan_set(&set(None, &vnni, None), &vnni, true) else {
            panic!("a set of an earlier generator cannot be regenerated");
        };
        assert!(why.contains("earlier generator"), "{why}");
        let Plan::Skip(why) = plan_set(&set(gen, &vnni, None), &avx2, true) else {
            panic!("no emulator gives AVX-512");
        };
        assert!(!why.contains("--emulated"), "{why}");
    }

    #[test]
    fn emulators_split_into_environment_and_command() {
        assert_eq!(
            split_emulator("qemu-x86_64 -cpu Haswell"),
            (vec![], vec!["qemu-x86_64", "-cpu", "Haswell"])
        );
        assert_eq!(
            split_emulator("ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"),
            (vec![("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")], vec![])
        );
        assert_eq!(
            split_emulator("A=1 qemu-x86_64 -cpu X=Y"),
            (vec![("A", "1")], vec!["qemu-x86_64", "-cpu", "X=Y"])
        );
    }
}
