//! The `qparity` command-line tool.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use qparity::check::{check_path, CheckOptions, Report};
use qparity::engine::CpuFeatures;
use qparity::golden::manifest::locate;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "qparity",
    version,
    about = "Bit-exact PyTorch int8 quantization numerics: check goldens, explain mismatches"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recompute every golden case with the reference engine and compare bit for bit.
    Check {
        /// Case files or folders (default: golden/, every set in it). Each golden set is modelled
        /// from its own MANIFEST.json's CPU flags.
        paths: Vec<PathBuf>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Show up to this many failing cases in detail.
        #[arg(long, default_value_t = 20)]
        max_failures: usize,
        /// Also run every convert_fx layer the native optimized backend implements on it (x86:
        /// packed weights and fused requantization on the AVX2 / AVX-512 VNNI kernels; aarch64: the
        /// best NEON / dotprod / i8mm kernel) and compare its u8 output (groups
        /// `<flow>[x86-fused]` or `<flow>[arm-fused]`).
        #[arg(long)]
        fused: bool,
    },
    /// What each convert flow does with an engine's default qconfig (ranges, kernels, requant);
    /// with a case file, how qparity derives one element of it, step by step.
    Explain {
        /// A golden case: explain element --index of its op (primitive and ops-suite cases) or
        /// of a node (--node, --flow, --run: model and graph cases).
        case: Option<PathBuf>,
        /// fbgemm, x86, qnnpack or onednn (without a case).
        #[arg(long, required_unless_present = "case")]
        engine: Option<String>,
        /// The output element (logical row-major index).
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// The graph node or model stage to explain (its name or number, or a stage location such
        /// as `layer 0 weight` or `observer 1`).
        #[arg(long)]
        node: Option<String>,
        /// The convert flow (convert_fx, convert_to_reference_fx,
        /// _convert_to_reference_decomposed_fx; default: every flow).
        #[arg(long)]
        flow: Option<String>,
        /// The test input of a model or graph case.
        #[arg(long, default_value_t = 0)]
        run: usize,
        /// Explain the QAT qconfig (get_default_qat_qconfig) instead of PTQ.
        #[arg(long)]
        qat: bool,
        /// vnni or avx2 (default: this CPU's).
        #[arg(long)]
        isa: Option<String>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Run every golden convert_fx linear / conv2d stage through an outside int8 runtime and
    /// name the rule behind each element that differs from PyTorch (docs/RUNTIMES.md).
    RuntimeCheck {
        /// The runtime: a command speaking the JSON-lines protocol (`cmd:PROGRAM ARGS` or just
        /// `PROGRAM ARGS`, run by `sh -c`), or `variant:RULES` for qparity's own model with rule
        /// changes (`variant:round=half-away`; see `runtime-serve`).
        #[arg(long)]
        runtime: String,
        /// Case files or folders (default: golden/, unless --random is given).
        paths: Vec<PathBuf>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Print the table as Markdown.
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// Also run N random linear / conv2d stages per engine (fbgemm, qnnpack; this CPU's
        /// features) from qparity's layer generator, with PyTorch's output as qparity's model
        /// predicts it. Without PATHS, only these run.
        #[arg(long, default_value_t = 0)]
        random: usize,
        /// Seed of the random stages (only with --random).
        #[arg(long, default_value_t = 0, requires = "random")]
        seed: u64,
    },
    /// Write every golden convert_fx linear / conv2d stage as JSON lines: the runtime protocol's
    /// request, PyTorch's output and the constants of PyTorch's rule (input of
    /// runtimes/onnxruntime/export_onnx.py, which writes ONNX models).
    RuntimeExport {
        /// Output file (JSON lines).
        #[arg(short, long)]
        out: PathBuf,
        /// Case files or folders (default: golden/).
        paths: Vec<PathBuf>,
    },
    /// Serve the runtime protocol on stdin / stdout with qparity's model of PyTorch's rule,
    /// changed by RULES (`acc=exact|pairs`, `bias=float|int32`, `mult=f32-div|f32-recip|exact|q31`,
    /// `round=half-even|half-away|half-up`, `clamp=pytorch|no-relu|max127`, comma-separated):
    /// a deliberately wrong runtime for testing the check.
    RuntimeServe {
        #[arg(long, default_value = "")]
        rules: String,
    },
    /// Write a standalone PyTorch script that rebuilds a case and compares its outputs.
    Repro {
        /// The case file.
        case: PathBuf,
        /// Output script (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        /// Print one JSON object ({case, output, script}) instead of the bare script.
        #[arg(long)]
        json: bool,
        /// Graph cases: the node to reproduce (default: the flow's output node).
        #[arg(long)]
        node: Option<String>,
        /// Graph cases: the convert flow (default: convert_fx).
        #[arg(long)]
        flow: Option<String>,
        /// Graph cases: the test input.
        #[arg(long, default_value_t = 0)]
        run: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Check {
            paths,
            json,
            max_failures,
            fused,
        } => cmd_check(paths, json, max_failures, fused),
        Cmd::RuntimeCheck {
            runtime,
            paths,
            json,
            markdown,
            random,
            seed,
        } => cmd_runtime_check(&runtime, paths, json, markdown, (random, seed)),
        Cmd::RuntimeExport { out, paths } => cmd_runtime_export(&out, paths),
        Cmd::RuntimeServe { rules } => {
            let overrides = qparity::runtime::protocol::Overrides::parse(&rules)?;
            let mut rt = qparity::runtime::protocol::VariantRuntime {
                overrides,
                label: rules,
            };
            let stdin = std::io::stdin().lock();
            qparity::runtime::protocol::serve(&mut rt, stdin, std::io::stdout().lock())?;
            Ok(0)
        }
        Cmd::Explain {
            case: Some(case),
            index,
            node,
            flow,
            run,
            json,
            ..
        } => {
            let query = qparity::explain::ElementQuery {
                index,
                node,
                flow: flow
                    .map(|f| qparity::engine::flow::Flow::from_name(&f))
                    .transpose()?,
                run,
            };
            let e = qparity::explain::explain_case(&case, &query)
                .with_context(|| format!("explaining {}", case.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", qparity::explain::render_case(&e));
            }
            Ok(0)
        }
        Cmd::Explain {
            engine,
            qat,
            isa,
            json,
            ..
        } => {
            let engine = engine.context("--engine is required without a case")?;
            let engine = qparity::engine::Engine::from_name(&engine)?;
            let isa = match isa {
                Some(i) => qparity::engine::Isa::from_name(&i)?,
                None => qparity::explain::host_isa(),
            };
            let e = qparity::explain::explain(engine, qat, isa)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", qparity::explain::render(&e));
            }
            Ok(0)
        }
        Cmd::Repro {
            case,
            output,
            force,
            json,
            node,
            flow,
            run,
        } => {
            let query = qparity::explain::ElementQuery {
                node,
                flow: flow
                    .map(|f| qparity::engine::flow::Flow::from_name(&f))
                    .transpose()?,
                run,
                ..Default::default()
            };
            let script = match &output {
                Some(o) => {
                    qparity::repro::write_repro_node(&case, &query, o, force)?;
                    None
                }
                None => Some(qparity::repro::repro_string_node(&case, &query)?),
            };
            if json {
                let v = serde_json::json!({
                    "case": case.display().to_string(),
                    "output": output.as_ref().map(|o| o.display().to_string()),
                    "script": script,
                });
                println!("{v}");
            } else if let Some(s) = script {
                print!("{s}");
            } else if let Some(o) = output {
                eprintln!("wrote {}", o.display());
            }
            Ok(0)
        }
    }
}

/// Cases checked together: one golden set (modelled from its manifest's CPU flags) or case files
/// outside every set.
struct Unit {
    label: String,
    paths: Vec<PathBuf>,
    cpu: CpuFeatures,
}

/// The golden sets and loose case files of a path ([`qparity::golden::manifest::locate`]). A set
/// is modelled from its own manifest's CPU flags whatever machine runs the check; loose files,
/// which no manifest describes, are modelled as captured on this machine (with a warning).
fn units_for(path: &Path) -> Result<Vec<Unit>> {
    let located = locate(path).with_context(|| format!("reading {}", path.display()))?;
    let mut units = Vec::new();
    for set in located.sets {
        let cpu = set
            .manifest
            .cpu()
            .with_context(|| format!("{}", set.dir.join("MANIFEST.json").display()))?;
        // A path inside the set (a case file or a subfolder) checks only that path.
        let inside = match (path.canonicalize(), set.dir.canonicalize()) {
            (Ok(p), Ok(d)) => p != d && p.starts_with(&d),
            _ => false,
        };
        let paths = if inside {
            vec![path.to_path_buf()]
        } else {
            vec![set.dir.clone()]
        };
        units.push(Unit {
            label: set.dir.display().to_string(),
            paths,
            cpu,
        });
    }
    if !located.loose.is_empty() {
        let cpu = CpuFeatures::host();
        eprintln!(
            "warning: {} case file(s) under {} belong to no golden set (no MANIFEST.json at or \
             above them); modelling them as captured on this machine ({})",
            located.loose.len(),
            path.display(),
            cpu.class_name()
        );
        units.push(Unit {
            label: format!("{} (no manifest)", path.display()),
            paths: located.loose,
            cpu,
        });
    }
    Ok(units)
}

fn cmd_check(paths: Vec<PathBuf>, json: bool, max_failures: usize, fused: bool) -> Result<i32> {
    let backend = match (fused, qparity::backend::native()) {
        (false, _) => None,
        (true, Some(b)) => Some(b),
        (true, None) => bail!("--fused: qparity has no optimized backend for this architecture"),
    };
    let paths = if paths.is_empty() {
        vec![PathBuf::from("golden")]
    } else {
        paths
    };
    let mut units = Vec::new();
    for p in &paths {
        if !p.exists() {
            bail!("{}: no such file or folder", p.display());
        }
        units.extend(units_for(p)?);
    }
    let mut cases = Vec::new();
    let mut per_set = Vec::new();
    for unit in &units {
        let opts = CheckOptions {
            backend,
            cpu: unit.cpu,
            ..CheckOptions::default()
        };
        let mut unit_cases = Vec::new();
        for p in &unit.paths {
            let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(0)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} checking {pos}/{len} cases {wide_bar} {elapsed}",
                )
                .expect("valid template"),
            );
            let r = check_path(p, &opts, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("checking {}", p.display()))?;
            bar.finish_and_clear();
            unit_cases.extend(r.cases);
        }
        let r = Report::from_cases(unit_cases);
        per_set.push(SetSummary {
            set: unit.label.clone(),
            cpu_class: unit.cpu.class_name(),
            passed: r.passed,
            failed: r.failed,
            elements_exact: r.elements_exact,
            elements_ambiguous: r.elements_ambiguous,
            elements_mismatched: r.elements_mismatched,
        });
        cases.extend(r.cases);
    }
    let report = Report::from_cases(cases);
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["sets"] = serde_json::to_value(&per_set)?;
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        print_report(&mut out, &report, max_failures)?;
        if per_set.len() > 1 {
            writeln!(out)?;
            for s in &per_set {
                writeln!(
                    out,
                    "{} [{}]: {} passed, {} failed; {} exact, {} ambiguous, {} mismatched",
                    s.set,
                    s.cpu_class,
                    s.passed,
                    s.failed,
                    s.elements_exact,
                    s.elements_ambiguous,
                    s.elements_mismatched
                )?;
            }
        }
    }
    Ok(if report.failed == 0 { 0 } else { 1 })
}

/// Per-set figures (`check --json`: `sets`).
#[derive(serde::Serialize)]
struct SetSummary {
    set: String,
    cpu_class: &'static str,
    passed: usize,
    failed: usize,
    elements_exact: u64,
    elements_ambiguous: u64,
    elements_mismatched: u64,
}

fn print_report(out: &mut impl Write, r: &Report, max_failures: usize) -> Result<()> {
    writeln!(
        out,
        "{:<62} {:>10} {:>9} {:>10}",
        "op / engine / check / isa", "exact", "ambiguous", "mismatched"
    )?;
    for (k, s) in &r.table {
        writeln!(
            out,
            "{:<62} {:>10} {:>9} {:>10}",
            k, s.exact, s.ambiguous, s.mismatched
        )?;
    }
    let (amb, tot) = r.reference_ambiguity();
    writeln!(
        out,
        "\nelements: {} exact, {} ambiguous, {} mismatched; reference-flow ambiguity {}/{} ({:.4}%)",
        r.elements_exact,
        r.elements_ambiguous,
        r.elements_mismatched,
        amb,
        tot,
        if tot > 0 { 100.0 * amb as f64 / tot as f64 } else { 0.0 }
    )?;
    if !r.fused_stages.is_empty() || r.backend_fallbacks > 0 {
        let fused: u64 = r.fused_stages.values().sum();
        writeln!(
            out,
            "optimized backend: {fused} stages fused, {} fell back to the reference model",
            r.backend_fallbacks
        )?;
        for (k, n) in &r.fused_stages {
            writeln!(out, "  fused {k}: {n} stages")?;
        }
        for (k, n) in &r.fallback_ops {
            writeln!(out, "  fell back {k}: {n} stages")?;
        }
    }
    for (rule, p) in &r.pinned {
        writeln!(
            out,
            "pinned rule {rule}: {} of {} cases fail, {} elements mismatched",
            p.failed, p.cases, p.mismatched
        )?;
    }
    let failing: Vec<_> = r.cases.iter().filter(|c| !c.passed).collect();
    for c in failing.iter().take(max_failures) {
        writeln!(out, "\nFAILED {} ({})", c.id, c.path)?;
        if let Some(e) = &c.error {
            writeln!(out, "  error: {e}")?;
        }
        if let Some(m) = &c.first_mismatch {
            writeln!(out, "  first mismatch: {}", m.location)?;
            writeln!(out, "    pytorch: {}", m.expected)?;
            writeln!(out, "    qparity: {}", m.got)?;
            for d in &m.detail {
                writeln!(out, "    {d}")?;
            }
        }
    }
    if failing.len() > max_failures {
        writeln!(
            out,
            "\n({} more failing cases not shown; use --max-failures)",
            failing.len() - max_failures
        )?;
    }
    writeln!(out, "\n{} passed, {} failed", r.passed, r.failed)?;
    Ok(())
}

fn cmd_runtime_check(
    runtime: &str,
    paths: Vec<PathBuf>,
    json: bool,
    markdown: bool,
    (random, seed): (usize, u64),
) -> Result<i32> {
    use qparity::runtime::check::{check_path as check_runtime_path, RuntimeReport};
    use qparity::runtime::protocol::{Overrides, ProcessRuntime, VariantRuntime};
    use qparity::runtime::Runtime;
    let mut rt: Box<dyn Runtime> = match runtime.strip_prefix("variant:") {
        Some(rules) => Box::new(VariantRuntime {
            overrides: Overrides::parse(rules)?,
            label: rules.to_string(),
        }),
        None => Box::new(
            ProcessRuntime::spawn(runtime.strip_prefix("cmd:").unwrap_or(runtime))
                .with_context(|| format!("starting runtime {runtime:?}"))?,
        ),
    };
    let paths = if paths.is_empty() && random == 0 {
        vec![PathBuf::from("golden")]
    } else {
        paths
    };
    if let Some(p) = paths.iter().find(|p| !p.exists()) {
        bail!("{}: no such file or folder", p.display());
    }
    let mut report = RuntimeReport::new(rt.info());
    if random > 0 {
        let cpu = CpuFeatures::host();
        for engine in [
            qparity::engine::Engine::Fbgemm,
            qparity::engine::Engine::Qnnpack,
        ] {
            for (qs, layer, input, expected) in
                qparity::gen::runtime::random_stages(engine, cpu, seed, random)?
            {
                let key = format!(
                    "{} / {} / random (qparity's model, {})",
                    engine.name(),
                    qs.op.kind(),
                    cpu.class_name()
                );
                let row = report.rows.entry(key).or_default();
                if let Err(e) = qparity::runtime::check::compare_stage(
                    rt.as_mut(),
                    &qs,
                    &layer,
                    &input,
                    &expected,
                    row,
                ) {
                    // A dead runtime cannot answer the next stage either.
                    if e.to_string().contains("closed its stdout") {
                        bail!("{}: {e}", qs.id);
                    }
                    report.errors.push(format!("{}: {e}", qs.id));
                }
            }
        }
    }
    for p in &paths {
        for unit in units_for(p)? {
            for path in &unit.paths {
                let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    indicatif::ProgressBar::hidden()
                } else {
                    indicatif::ProgressBar::new(0)
                };
                check_runtime_path(rt.as_mut(), path, &unit.cpu, &mut report, |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                })
                .with_context(|| format!("checking {}", path.display()))?;
                bar.finish_and_clear();
            }
        }
    }
    report.resolve();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else if markdown {
        write!(out, "{}", report.render_markdown())?;
    } else {
        write!(out, "{}", report.render())?;
    }
    // Every mismatch named is the check's success; an unexplained element or a stage the runtime
    // failed on is not.
    Ok(if report.errors.is_empty() && report.unexplained() == 0 {
        0
    } else {
        1
    })
}

fn cmd_runtime_export(out: &Path, paths: Vec<PathBuf>) -> Result<i32> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("golden")]
    } else {
        paths
    };
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    let mut n = 0u64;
    for p in &paths {
        if !p.exists() {
            bail!("{}: no such file or folder", p.display());
        }
        for unit in units_for(p)? {
            for path in &unit.paths {
                for f in qparity::golden::case_files(path)? {
                    let case = qparity::golden::load_case(&f)?;
                    for s in qparity::runtime::export::export_case(&case, &unit.cpu, n)? {
                        serde_json::to_writer(&mut w, &s)?;
                        writeln!(w)?;
                        n += 1;
                    }
                }
            }
        }
    }
    w.flush()?;
    eprintln!("wrote {n} stages to {}", out.display());
    Ok(0)
}
