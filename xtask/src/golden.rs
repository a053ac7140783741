//! `cargo xtask golden`: capture goldens from real PyTorch (format: golden/README.md).
//!
//! Creates a Python venv once (default `target/golden-venv`, override with `QPARITY_VENV`),
//! installs the pinned torch and numpy when missing, checks that the three FX convert flows
//! exist, then runs `xtask/capture/golden.py` once per ISA variant (FBGEMM reads
//! `FBGEMM_ENABLE_INSTRUCTIONS` when torch is imported, so each variant is its own process) and
//! once more to write `MANIFEST.json`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// torch release the goldens are pinned to.
const TORCH_VERSION: &str = "2.15.0";
/// Number of cases when no committed manifest says otherwise.
const DEFAULT_CASES: usize = 420;
const FORMAT: &str = "qparity-golden/1";
/// ISA variants, each with the value of FBGEMM_ENABLE_INSTRUCTIONS it needs at import time.
const ISAS: [(&str, Option<&str>); 2] = [("default", None), ("avx2", Some("AVX2"))];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seed that draws shapes, qconfig variations and data (default 0; with --check: the
    /// committed manifest's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Total number of cases, cycling through the op x engine x mode x ISA matrix
    /// (default: the committed set's size).
    #[arg(long)]
    cases: Option<usize>,
    /// Output directory (default: golden/ in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Regenerate into a temporary directory and diff byte for byte against golden/.
    #[arg(long, conflicts_with_all = ["out", "force"])]
    check: bool,
    /// Allow writing into a non-empty directory that is not a previous golden output
    /// (its existing `cases/*.json` and `MANIFEST.json` are replaced).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let root = workspace_root()?;
    let golden = root.join("golden");
    let script = root.join("xtask").join("capture").join("golden.py");
    if !script.is_file() {
        bail!("capture script not found at {}", script.display());
    }
    let committed = read_manifest(&golden)?;
    let cases = match (args.cases, &committed) {
        (Some(0), _) => bail!("--cases must be at least 1"),
        (Some(n), _) => n,
        (None, Some(m)) => m.cases,
        (None, None) => DEFAULT_CASES,
    };
    let seed = match (args.seed, args.check, &committed) {
        (Some(s), _, _) => s,
        (None, true, Some(m)) => m.seed,
        _ => 0,
    };

    let python = ensure_venv(&root)?;

    let tmp;
    let out = if args.check {
        if committed.is_none() {
            bail!(
                "--check: {} has no MANIFEST.json to compare with; generate it first with `cargo xtask golden`",
                golden.display()
            );
        }
        tmp = tempfile::Builder::new()
            .prefix("qparity-golden-")
            .tempdir()
            .context("creating a temporary directory")?;
        tmp.path().to_path_buf()
    } else {
        let out = args.out.clone().unwrap_or_else(|| golden.clone());
        prepare_out_dir(&out, args.force)?;
        out
    };

    eprintln!(
        "capturing {cases} cases (seed {seed}) into {} with {}",
        out.display(),
        python.display()
    );
    capture(&python, &script, &out, seed, cases)?;
    let gen_time = start.elapsed();

    if args.check {
        let diffs = diff_dirs(&golden, &out)?;
        eprintln!(
            "generation took {:.1}s, total {:.1}s",
            gen_time.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        if diffs.is_empty() {
            eprintln!(
                "golden --check: OK, {} matches the regenerated set byte for byte",
                golden.display()
            );
            return Ok(());
        }
        for d in diffs.iter().take(30) {
            eprintln!("  {d}");
        }
        if diffs.len() > 30 {
            eprintln!("  ... and {} more", diffs.len() - 30);
        }
        bail!(
            "golden --check: {} file(s) differ between {} and the regenerated set",
            diffs.len(),
            golden.display()
        );
    }
    eprintln!(
        "wrote {cases} cases and MANIFEST.json to {} in {:.1}s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

struct Committed {
    cases: usize,
    seed: u64,
}

fn read_manifest(dir: &Path) -> Result<Option<Committed>> {
    let path = dir.join("MANIFEST.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let cases = v["cases"]
        .as_u64()
        .with_context(|| format!("{}: field `cases` missing or not a number", path.display()))?;
    let seed = v["seed"]
        .as_u64()
        .with_context(|| format!("{}: field `seed` missing or not a number", path.display()))?;
    let cases =
        usize::try_from(cases).with_context(|| format!("{}: `cases` too large", path.display()))?;
    Ok(Some(Committed { cases, seed }))
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
        missing_flows: Vec::new(),
    };
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("torch=") {
            p.torch = (!v.is_empty()).then(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("numpy=") {
            p.numpy = (!v.is_empty()).then(|| v.to_string());
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
    if p.torch.is_none() || p.numpy.is_none() {
        let mut pkgs = Vec::new();
        if p.torch.is_none() {
            pkgs.push(format!("torch=={TORCH_VERSION}"));
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

fn base_command(python: &Path, script: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("FBGEMM_ENABLE_INSTRUCTIONS");
    cmd
}

fn capture(python: &Path, script: &Path, out: &Path, seed: u64, cases: usize) -> Result<()> {
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
    for (isa, fbgemm_isa) in ISAS {
        let mut cmd = base_command(python, script);
        cmd.arg("run")
            .arg("--out")
            .arg(out)
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--cases")
            .arg(cases.to_string())
            .arg("--isa")
            .arg(isa)
            .stdout(Stdio::piped());
        if let Some(v) = fbgemm_isa {
            cmd.env("FBGEMM_ENABLE_INSTRUCTIONS", v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdout = child.stdout.take().context("capture script stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the capture script's output")?;
            match line.strip_prefix("CASE ") {
                Some(rest) => {
                    done += 1;
                    let id = rest.split_whitespace().nth(2).unwrap_or("?");
                    if tty {
                        bar.set_message(format!("{isa}: {id}"));
                        bar.inc(1);
                    } else {
                        eprintln!("case {done} of {cases}: {id}");
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
    if done != cases {
        bail!("capture script reported {done} cases, expected {cases}");
    }
    let status = base_command(python, script)
        .arg("manifest")
        .arg("--out")
        .arg(out)
        .arg("--seed")
        .arg(seed.to_string())
        .stdout(Stdio::null())
        .status()
        .context("running the manifest step")?;
    if !status.success() {
        bail!("writing MANIFEST.json failed ({status})");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// --check

/// Files compared by --check: MANIFEST.json and cases/* (relative paths).
fn golden_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    if dir.join("MANIFEST.json").is_file() {
        files.insert(PathBuf::from("MANIFEST.json"));
    }
    let cases = dir.join("cases");
    if cases.is_dir() {
        for entry in fs::read_dir(&cases).with_context(|| format!("listing {}", cases.display()))? {
            let entry = entry?;
            files.insert(Path::new("cases").join(entry.file_name()));
        }
    }
    Ok(files)
}

/// Byte-for-byte comparison; one line per differing, missing or extra file.
fn diff_dirs(expected: &Path, actual: &Path) -> Result<Vec<String>> {
    let want = golden_files(expected)?;
    let have = golden_files(actual)?;
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
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_parsed() {
        let p = parse_probe("numpy=2.4.6\ntorch=2.15.0+cu132\n");
        assert_eq!(p.torch.as_deref(), Some("2.15.0+cu132"));
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
    fn diff_reports_changed_missing_and_extra_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir(d.join("cases")).unwrap();
            fs::write(d.join("MANIFEST.json"), "m").unwrap();
            fs::write(d.join("cases/same.json"), "1").unwrap();
        }
        assert!(diff_dirs(a.path(), b.path()).unwrap().is_empty());
        fs::write(a.path().join("cases/x.json"), "1").unwrap();
        fs::write(b.path().join("cases/y.json"), "1").unwrap();
        fs::write(b.path().join("cases/same.json"), "2").unwrap();
        let d = diff_dirs(a.path(), b.path()).unwrap();
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
}
