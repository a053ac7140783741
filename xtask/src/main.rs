//! Project automation: `cargo xtask <command>`.

use clap::{Parser, Subcommand};

mod arm;

#[derive(Parser)]
#[command(name = "xtask", about = "qparity project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cross-build for aarch64 and run the test suites under qemu (cortex-a53 and max CPUs).
    ArmTest(arm::ArmTestArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::ArmTest(a) => arm::run(a),
    }
}
