//! Project automation: `cargo xtask <command>`. One module per subcommand.

use clap::{Parser, Subcommand};

mod bench;
mod golden;

#[derive(Parser)]
#[command(name = "xtask", about = "qparity project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capture goldens from PyTorch into golden/ (or --out), or --check the committed set.
    Golden(golden::Args),
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
        Cmd::Golden(args) => golden::run(args),
        Cmd::Bench { json } => bench::run(json),
    }
}
