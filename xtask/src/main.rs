//! Project automation: `cargo xtask <command>`.

use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(name = "xtask", about = "qparity project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark the x86 kernels against PyTorch fbgemm (GOPS per shape).
    Bench {
        /// Print a JSON list instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench { json } => bench::run(json),
    }
}
