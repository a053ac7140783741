//! Project automation: `cargo xtask <command>`.

use clap::{Parser, Subcommand};

mod fuzz;

#[derive(Parser)]
#[command(name = "xtask", about = "qparity project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every cargo-fuzz target for N seconds and report execs/s, corpus size, crashes.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fuzz(args) => fuzz::run(args),
    }
}
