//! `cargo xtask arm-test`: cross-build the crate for aarch64-unknown-linux-gnu and run its test
//! suites under qemu-aarch64, once per emulated CPU, inside the Debian chroot that
//! `xtask/arm/chroot.sh` builds (and reuses) under `target/arm-chroot`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const TARGET: &str = "aarch64-unknown-linux-gnu";

/// Emulated CPUs and the ARM kernel levels each run must exercise.
const CPUS: [(&str, &str); 2] = [("cortex-a53", "neon"), ("max", "neon,dotprod,i8mm")];

/// Instructions whose presence in the kernel test binary is checked (and counted). Each entry:
/// (mnemonic, required): the kernels must have put the required ones there.
const EVIDENCE: [(&str, bool); 10] = [
    ("smlal", true),
    ("smlal2", true),
    ("usubl", true),
    ("sdot", true),
    ("sudot", true),
    ("usmmla", true),
    ("fcvtns", true),
    ("udot", false),
    ("usdot", false),
    ("umlal", false),
];

#[derive(clap::Args)]
pub struct ArmTestArgs {
    /// Emulated CPUs to run, comma separated (default: cortex-a53,max).
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<String>,
    /// Also run `cargo clippy --all-targets -- -D warnings` for the aarch64 target first.
    #[arg(long)]
    clippy: bool,
    /// Skip the objdump check of the kernel test binary.
    #[arg(long)]
    no_disasm: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. `-- --test arm_kernels`.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

struct Ctx {
    root: PathBuf,
    script: PathBuf,
    target_dir: PathBuf,
}

impl Ctx {
    /// `chroot.sh run CMD…` with the cross-build environment plus `extra`.
    fn chroot(&self, extra: &[(&str, String)], cmd: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.script).arg("run").args(cmd);
        c.env("QP_PROJECT", &self.root);
        let mut vars: Vec<(String, String)> = vec![
            (
                "CARGO_TARGET_DIR".into(),
                self.target_dir.display().to_string(),
            ),
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER".into(),
                "aarch64-linux-gnu-gcc".into(),
            ),
            // qemu-aarch64 reads QEMU_CPU and QEMU_LD_PREFIX from the environment.
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER".into(),
                "qemu-aarch64".into(),
            ),
            ("QEMU_LD_PREFIX".into(), "/usr/aarch64-linux-gnu".into()),
            (
                "CC_aarch64_unknown_linux_gnu".into(),
                "aarch64-linux-gnu-gcc".into(),
            ),
            (
                "AR_aarch64_unknown_linux_gnu".into(),
                "aarch64-linux-gnu-ar".into(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        // Caller-set knobs that tests read.
        for k in [
            "PROPTEST_CASES",
            "RUST_BACKTRACE",
            "RUST_TEST_THREADS",
            "CARGO_TERM_COLOR",
            "CARGO_BUILD_JOBS",
        ] {
            if let Ok(v) = std::env::var(k) {
                vars.push((k.into(), v));
            }
        }
        let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        c.env("QP_PASSENV", names.join(" "));
        for (k, v) in &vars {
            c.env(k, v);
        }
        c
    }
}

fn run_status(mut c: Command, what: &str) -> Result<()> {
    let st = c.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

pub fn run(args: ArmTestArgs) -> Result<()> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!("arm-test runs on an x86_64 Linux host (it emulates aarch64 with qemu-user)");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let ctx = Ctx {
        script: root.join("xtask/arm/chroot.sh"),
        target_dir: root.join("target/arm"),
        root: root.clone(),
    };
    let cpus: Vec<(String, String)> = if args.cpu.is_empty() {
        CPUS.iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect()
    } else {
        args.cpu
            .iter()
            .map(|c| {
                let req = CPUS.iter().find(|(n, _)| n == c).map_or("neon", |(_, r)| r);
                (c.clone(), req.to_string())
            })
            .collect()
    };
    let total = Instant::now();
    let mut times = Vec::new();

    let t = Instant::now();
    let mut setup = Command::new("bash");
    setup
        .arg(&ctx.script)
        .arg("setup")
        .env("QP_PROJECT", &ctx.root);
    run_status(setup, "chroot setup")?;
    times.push(("chroot setup".to_string(), t.elapsed().as_secs_f64()));

    if args.clippy {
        let t = Instant::now();
        let c = ctx.chroot(
            &[],
            &[
                "cargo",
                "clippy",
                "--target",
                TARGET,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        );
        run_status(c, "cargo clippy (aarch64)")?;
        times.push(("clippy (aarch64)".into(), t.elapsed().as_secs_f64()));
    }

    let reports = root.join("target/arm/reports");
    std::fs::create_dir_all(&reports)?;
    let mut summaries = Vec::new();
    for (cpu, require) in &cpus {
        eprintln!("\n=== arm-test: QEMU_CPU={cpu}, QPARITY_REQUIRE_ISA={require} ===");
        let report = reports.join(format!("report-{cpu}.txt"));
        let _ = std::fs::remove_file(&report);
        let t = Instant::now();
        let mut cmd: Vec<&str> = vec!["cargo", "test", "--target", TARGET];
        cmd.extend(args.cargo_args.iter().map(String::as_str));
        let c = ctx.chroot(
            &[
                ("QEMU_CPU", cpu.clone()),
                ("QPARITY_REQUIRE_ISA", require.clone()),
                ("QPARITY_CONFORMANCE_REPORT", report.display().to_string()),
            ],
            &cmd,
        );
        let res = run_status(c, &format!("cargo test under QEMU_CPU={cpu}"));
        times.push((format!("tests, QEMU_CPU={cpu}"), t.elapsed().as_secs_f64()));
        res?;
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        summaries.push((cpu.clone(), text));
    }

    if !args.no_disasm {
        let t = Instant::now();
        disasm_evidence(&ctx)?;
        times.push(("disassembly check".into(), t.elapsed().as_secs_f64()));
    }

    eprintln!("\n=== arm-test summary ===");
    for (cpu, text) in &summaries {
        eprintln!("QEMU_CPU={cpu}:");
        if text.is_empty() {
            eprintln!("  (the conformance suite wrote no report; was it filtered out?)");
        }
        for line in text.lines() {
            eprintln!("  {line}");
        }
    }
    for (what, s) in &times {
        eprintln!("time: {what}: {s:.1} s");
    }
    eprintln!(
        "time: total: {:.1} s (emulated run times say nothing about ARM performance)",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Finds the `arm_kernels` test executable and counts the kernel instructions in it.
fn disasm_evidence(ctx: &Ctx) -> Result<()> {
    let mut c = ctx.chroot(
        &[],
        &[
            "cargo",
            "test",
            "--target",
            TARGET,
            "--test",
            "arm_kernels",
            "--no-run",
            "--message-format=json",
        ],
    );
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("listing test executables")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut exe = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "arm_kernels" {
            if let Some(e) = v["executable"].as_str() {
                exe = Some(e.to_string());
            }
        }
    }
    let exe = exe.context("no arm_kernels test executable in cargo's output")?;
    let mut c = ctx.chroot(
        &[],
        &[
            "aarch64-linux-gnu-objdump",
            "-d",
            "--no-show-raw-insn",
            &exe,
        ],
    );
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("running objdump")?;
    if !out.status.success() {
        bail!("objdump failed ({})", out.status);
    }
    let mut counts: BTreeMap<&str, usize> = EVIDENCE.iter().map(|(m, _)| (*m, 0)).collect();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "  4005c0:\tsdot\tv0.4s, v1.16b, v2.4b[0]"
        let mut fields = line.split('\t');
        let (Some(addr), Some(mnem)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !addr.trim_end().ends_with(':') {
            continue;
        }
        if let Some(n) = counts.get_mut(mnem.trim()) {
            *n += 1;
        }
    }
    eprintln!("\n=== disassembly of {exe} ===");
    let mut missing = Vec::new();
    for (m, required) in EVIDENCE {
        eprintln!("  {m:<7} {}", counts[m]);
        if required && counts[m] == 0 {
            missing.push(m);
        }
    }
    if !missing.is_empty() {
        bail!("kernel instructions missing from the tested binary: {missing:?}");
    }
    Ok(())
}
