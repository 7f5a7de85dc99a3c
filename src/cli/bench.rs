//! `dpgan bench kernels [--json PATH] [--quick]`: every kernel family at DP-CGAN's and GS-WGAN's
//! shapes, validated against the CPU backend and timed with CUDA events beside the device's measured
//! copy and GEMM ceilings (see `dpgan::bench`). Without a GPU it fails, saying why.
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use dpgan::bench::{kernels, write_json_atomic};
use dpgan::{Error, Result};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Time every kernel family (GEMM, conv, elementwise, reductions, optimisers, power iteration,
    /// pooling, noise) beside the measured copy and GEMM ceilings.
    Kernels(KernelsArgs),
}

#[derive(Args, Debug)]
struct KernelsArgs {
    /// Also write the full report as JSON to PATH (atomically: a temporary file, then a rename).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Few iterations and at most 2 input sets: for tests, not for numbers to quote.
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchCommand::Kernels(k) => kernels_cmd(k),
    }
}

fn kernels_cmd(args: &KernelsArgs) -> Result<()> {
    // A report that cannot be written should fail before the run, not after it.
    if let Some(dir) = args.json.as_deref().and_then(Path::parent).filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::file(dir, "the directory for --json does not exist"));
        }
    }
    let report = kernels::run(args.quick, |name| eprintln!("bench: {name}"))?;
    if let Some(path) = &args.json {
        write_json_atomic(path, &report)?;
    }
    super::emit(&report.to_string())
}
