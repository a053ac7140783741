//! Project automation: `cargo xtask <command>`. One module per subcommand.

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Golden(args) => golden::run(args),
    }
}
