//! Project automation: `cargo xtask <command>`.

use clap::{Parser, Subcommand};

mod difflive;

#[derive(Parser)]
#[command(name = "xtask", about = "qparity project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stream random quantized::linear cases to PyTorch and the reference engine; save disagreements.
    DiffLive {
        #[arg(long, default_value_t = 1000)]
        cases: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "target/diff-live")]
        out: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::DiffLive {
            cases,
            seed,
            out,
            json,
        } => {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives in the workspace root")
                .to_path_buf();
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
