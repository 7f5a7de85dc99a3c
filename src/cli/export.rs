//! `dpgan export`: the generator a run may publish, as one safetensors file: its weights (no
//! discriminator, optimizer state or secret key) and a record of what rebuilding it needs and the
//! (ε, δ) it carries. `dpgan sample --generator FILE` samples it as `dpgan sample --run` does.
use std::path::PathBuf;

use clap::Args;
use dpgan::tensor::Device;
use dpgan::train::release::Release;
use dpgan::{Error, Result};

use super::sample::refuse_inside_run;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run whose generator to export (its latest checkpoint).
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// The file to write (never written over, never inside the run directory).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    json: super::json::JsonOut,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    refuse_inside_run(&args.out, &args.run)?;
    args.json.check()?;
    if args.out.exists() {
        return Err(Error::file(&args.out, "already exists: a released generator is never written over, choose another --out"));
    }
    let release = Release::of_run(&args.run, &Device::Cpu)?;
    release.save(&args.out)?;
    let record = &release.record;
    args.json.emit(record, || {
        format!(
            "wrote the {} generator of {} (step {}) to {}: (ε = {:.4}, δ = {})\n",
            record["algorithm"].as_str().unwrap_or("?"),
            args.run.display(),
            record["checkpoint_step"],
            args.out.display(),
            record["epsilon"].as_f64().unwrap_or(f64::NAN),
            record["delta"].as_f64().unwrap_or(f64::NAN)
        ) + record["warning"].as_str().map(|w| format!("{w}\n")).unwrap_or_default().as_str()
    })
}
