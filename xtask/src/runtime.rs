//! `cargo xtask runtime`: install the pinned onnxruntime into a venv (default
//! `target/ort-venv`, override with `QPARITY_ORT_VENV`) and run `qparity runtime-check` with the
//! onnxruntime adapter (runtimes/onnxruntime/ort_runtime.py) and the numpy example runtime
//! (runtimes/example/numpy_runtime.py), or tract-onnx (runtimes/tract, built on demand), natively
//! or under `qemu-x86_64 -cpu Haswell`; or export every stage as ONNX models (`--export`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned Python packages of the onnxruntime adapter.
const PACKAGES: &[&str] = &["onnxruntime==1.31.1", "onnx==1.23.2", "numpy==2.4.6"];

#[derive(clap::Args)]
pub struct Args {
    /// `onnxruntime` (QLinearConv form), `onnxruntime-qdq` (DQ-Conv-Q fused by ORT), `example`
    /// (the numpy example runtime of docs/RUNTIMES.md) or `tract` (builds runtimes/tract).
    #[arg(long, default_value = "onnxruntime")]
    runtime: String,
    /// Run the runtime under `qemu-x86_64 -cpu haswell` (AVX2, no AVX-512).
    #[arg(long)]
    emulate: Option<String>,
    /// Print qparity's JSON report instead of the table.
    #[arg(long)]
    json: bool,
    /// Print the table as Markdown.
    #[arg(long)]
    markdown: bool,
    /// Instead of checking a runtime: export every stage as ONNX models (QLinearConv, QDQ,
    /// PyTorch's rule in ONNX ops) with .npy inputs and expected outputs into this folder, check
    /// them with onnx.checker and run them in onnxruntime.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Also run N random linear / conv2d stages per engine (fbgemm, qnnpack) from qparity's
    /// layer generator (`qparity runtime-check --random N`).
    #[arg(long, default_value_t = 0)]
    random: usize,
    /// Seed of the random stages.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Golden sets or case files (default: the committed single-layer and model sets).
    paths: Vec<PathBuf>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The venv with the pinned packages, created on first use.
fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = std::env::var_os("QPARITY_ORT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ort-venv"));
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import onnxruntime, onnx, numpy; assert onnxruntime.__version__ == '1.31.1'",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("creating {}", venv.display());
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv")?;
        if !st.success() {
            bail!("python3 -m venv {} failed ({st})", venv.display());
        }
    }
    eprintln!("installing {}", PACKAGES.join(" "));
    let st = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PACKAGES)
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!("pip install {} failed ({st})", PACKAGES.join(" "));
    }
    Ok(python)
}

pub fn run(a: Args) -> Result<()> {
    let root = root();
    let python = ensure_venv(&root)?;
    let st = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--release", "-q", "--bin", "qparity"])
        .status()
        .context("building qparity")?;
    if !st.success() {
        bail!("cargo build --release --bin qparity failed");
    }
    let paths = if a.paths.is_empty() {
        [
            "avx2-seed0",
            "amx-xeon-seed0",
            "vnni-xeon-seed1",
            "pins-vnni-seed0",
        ]
        .iter()
        .map(|s| root.join("golden").join(s))
        .collect()
    } else {
        a.paths
    };
    let qparity = root.join("target/release/qparity");
    let py = |script: &str| format!("{} {}/{script}", python.display(), root.display());
    if let Some(dir) = a.export {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lines = dir.join("stages.jsonl");
        let st = Command::new(&qparity)
            .current_dir(&root)
            .args(["runtime-export", "-o"])
            .arg(&lines)
            .args(&paths)
            .status()
            .context("running qparity runtime-export")?;
        if !st.success() {
            bail!("qparity runtime-export failed ({st})");
        }
        let st = Command::new(&python)
            .arg(root.join("runtimes/onnxruntime/export_onnx.py"))
            .arg(&lines)
            .arg(&dir)
            .status()
            .context("running export_onnx.py")?;
        if !st.success() {
            bail!("export_onnx.py failed ({st})");
        }
        return Ok(());
    }
    let program = match a.runtime.as_str() {
        "onnxruntime" => py("runtimes/onnxruntime/ort_runtime.py --form qop"),
        "onnxruntime-qdq" => py("runtimes/onnxruntime/ort_runtime.py --form qdq"),
        "example" => py("runtimes/example/numpy_runtime.py"),
        "tract" => {
            let manifest = root.join("runtimes/tract/Cargo.toml");
            let st = Command::new(env!("CARGO"))
                .args(["build", "--release", "-q", "--manifest-path"])
                .arg(&manifest)
                .status()
                .context("building runtimes/tract")?;
            if !st.success() {
                bail!("cargo build --manifest-path {} failed", manifest.display());
            }
            root.join("runtimes/tract/target/release/qparity-tract")
                .display()
                .to_string()
        }
        other => bail!("unknown runtime {other:?} (onnxruntime, onnxruntime-qdq, example, tract)"),
    };
    let emulator = match a.emulate.as_deref() {
        None => String::new(),
        Some(cpu) if cpu.eq_ignore_ascii_case("haswell") => "qemu-x86_64 -cpu Haswell ".to_string(),
        Some(other) => bail!("--emulate {other:?}: only haswell is supported"),
    };
    let cmd = format!("{emulator}{program}");
    let mut c = Command::new(&qparity);
    c.current_dir(&root)
        .arg("runtime-check")
        .arg("--runtime")
        .arg(format!("cmd:{cmd}"))
        .args(&paths);
    if a.random > 0 {
        c.args([
            "--random",
            &a.random.to_string(),
            "--seed",
            &a.seed.to_string(),
        ]);
    }
    if a.json {
        c.arg("--json");
    }
    if a.markdown {
        c.arg("--markdown");
    }
    let st = c.status().context("running qparity runtime-check")?;
    if !st.success() {
        bail!("qparity runtime-check failed ({st})");
    }
    Ok(())
}
