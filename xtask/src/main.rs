//! Project automation: `cargo xtask <command>`. One module per subcommand.

use clap::{Parser, Subcommand};

mod arm;
mod bench;
mod bench_models;
mod compare;
mod difflive;
mod difflive_graphs;
mod fuzz;
mod golden;
mod livegraph;
mod mutants;
mod reprolive;
mod runtime;

#[derive(Parser)]
#[command(name = "xtask", about = "qparity project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capture goldens from PyTorch (--out), --check the committed sets, or --compare two captures.
    Golden(golden::Args),
    /// Cross-build for aarch64 and run the test suites under qemu (cortex-a53 and max CPUs).
    ArmTest(arm::ArmTestArgs),
    /// Benchmark the x86 kernels against PyTorch fbgemm (GOPS per shape).
    Bench {
        /// Print one JSON object (rows, peaks, pairs, load) instead of a table.
        #[arg(long)]
        json: bool,
        /// Alternating rounds of qparity and PyTorch; each side reports its best round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Core both sides are pinned to with taskset, or `none`.
        #[arg(long, default_value = "0")]
        cpu: String,
        /// Whole models end to end (qparity's model runner against PyTorch's convert_fx model,
        /// fbgemm and x86 engines) instead of single kernels.
        #[arg(long)]
        models: bool,
        /// With --models: only these models (repeatable).
        #[arg(long = "model")]
        model: Vec<String>,
    },
    /// Check onnxruntime (pinned, in a venv) or the numpy example runtime against the goldens.
    Runtime(runtime::Args),
    /// Run every cargo-fuzz target for N seconds and report execs/s, corpus size and crashes.
    Fuzz(fuzz::FuzzArgs),
    /// Mutation testing (cargo-mutants) of the numerics and engine modules; caught/missed per file.
    Mutants(mutants::MutantsArgs),
    /// Stream random quantized::linear cases (or, with --graphs, random quantized graphs) to
    /// PyTorch and the reference engine; save disagreements.
    DiffLive {
        /// Linear mode: how many cases.
        #[arg(long, default_value_t = 1000)]
        cases: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "target/diff-live")]
        out: std::path::PathBuf,
        #[arg(long)]
        json: bool,
        /// Random quantized graphs, all three convert flows, checked node by node.
        #[arg(long)]
        graphs: bool,
        /// Graphs: stop after this many graphs (per shard).
        #[arg(long)]
        count: Option<usize>,
        /// Graphs: stop dispatching after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// Graphs: `I/N` runs the graph indices i ≡ I (mod N) of the seed.
        #[arg(long, default_value = "0/1", value_parser = parse_shard)]
        shard: (u64, u64),
        /// Graphs: PyTorch workers per ISA variant.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Graphs: ISA variants, comma-separated (`default`, `avx2`: FBGEMM_ENABLE_INSTRUCTIONS=AVX2);
        /// default: both on a VNNI CPU, `default` elsewhere.
        #[arg(long, value_delimiter = ',')]
        isa: Vec<String>,
        /// Graphs: at most this many ops per generated graph.
        #[arg(long, default_value_t = 8)]
        max_ops: usize,
        /// Graphs: seconds of shrinking per saved disagreement (0: none).
        #[arg(long, default_value_t = 60.0)]
        shrink_seconds: f64,
        /// Merge these `--graphs` shard reports instead of running.
        #[arg(long, num_args = 1..)]
        merge: Vec<std::path::PathBuf>,
    },
    /// Generate `qparity repro` scripts for golden cases and run them with PyTorch: every script
    /// must reproduce the case's recorded values.
    ReproLive {
        /// Case files (default: one ops case per op and engine, one graph case per model).
        cases: Vec<std::path::PathBuf>,
        /// Graph cases: the node (default: each flow's output node).
        #[arg(long)]
        node: Option<String>,
        /// Graph cases: one convert flow (default: all three).
        #[arg(long)]
        flow: Option<String>,
        #[arg(long, default_value = "target/repro-live")]
        out: std::path::PathBuf,
    },
}

/// `--cpu` value: a core number or `none`.
fn parse_cpu(s: &str) -> Result<Option<usize>, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is neither a core number nor `none`"))
}

/// `--shard I/N`.
fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not I/N"))?;
    let (i, n): (u64, u64) = (
        i.trim()
            .parse()
            .map_err(|_| format!("{i:?} is not a shard index"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a shard count"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

/// The workspace root (xtask's parent folder).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Errors end the run with one message (the cause chain, no backtrace) and exit code 1.
fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Golden(args) => golden::run(args),
        Cmd::ArmTest(a) => arm::run(a),
        Cmd::Bench {
            json,
            rounds,
            cpu,
            models,
            model,
        } => {
            let cpu = parse_cpu(&cpu).map_err(anyhow::Error::msg)?;
            if models {
                let (root, python, min_time) = bench::setup(rounds, cpu)?;
                bench_models::run(&root, &python, json, rounds, cpu, min_time, &model)
            } else {
                bench::run(json, rounds, cpu)
            }
        }
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Runtime(args) => runtime::run(args),
        Cmd::Mutants(args) => mutants::run(args),
        Cmd::ReproLive {
            cases,
            node,
            flow,
            out,
        } => {
            let root = workspace_root();
            reprolive::run(
                &root,
                reprolive::Opts {
                    cases,
                    node,
                    flow,
                    out,
                },
            )
        }
        Cmd::DiffLive {
            cases,
            seed,
            out,
            json,
            graphs,
            count,
            seconds,
            shard,
            workers,
            isa,
            max_ops,
            shrink_seconds,
            merge,
        } => {
            let root = workspace_root();
            if !merge.is_empty() {
                return difflive_graphs::merge(&merge, json);
            }
            if graphs {
                let isas = if isa.is_empty() {
                    match qparity::explain::host_isa() {
                        qparity::engine::Isa::Vnni => vec!["default".into(), "avx2".into()],
                        qparity::engine::Isa::Avx2 => vec!["default".into()],
                    }
                } else {
                    isa
                };
                return difflive_graphs::run(
                    &root,
                    difflive_graphs::Opts {
                        count,
                        seconds,
                        seed,
                        shard,
                        workers,
                        isas,
                        max_ops,
                        shrink_seconds,
                        out,
                        json,
                    },
                );
            }
            difflive::run(
                &root,
                difflive::Opts {
                    cases,
                    seed,
                    out,
                    json,
                },
            )
        }
    }
}
