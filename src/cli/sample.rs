//! `dpgan sample`: the synthetic data set a run releases. Balanced labels (N/10 per class, never
//! the real class counts, which are not public), written as MNIST-layout IDX or NPY, with a PNG grid
//! and a `sample.json` that records where the data came from and the ε it carries.
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use dpgan::io::image::Grid;
use dpgan::io::synthetic::{write_synthetic, SyntheticFormat};
use dpgan::models::dpcgan::CLASSES;
use dpgan::train::dpcgan::run::{load_generator, sample_released};
use dpgan::train::gswgan::run as gswgan;
use dpgan::train::run_dir::{read_json, CONFIG};
use dpgan::{Device, Error, Result};

use super::choose_device;

/// What `sample.json` is called in the output directory.
pub const SAMPLE_RECORD: &str = "sample.json";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// MNIST's layout: train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz (8-bit pixels).
    Idx,
    /// images.npy (float32, N×28×28, in [0, 1]) and labels.npy (uint8).
    Npy,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The run whose generator to sample (its latest checkpoint).
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// How many images: a multiple of 10, N/10 per class.
    #[arg(long)]
    count: usize,
    /// Directory to write the data set into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = FormatArg::Idx)]
    format: FormatArg,
    /// Seed of the latent codes (sampling is post-processing: it costs no privacy).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: &SampleArgs) -> Result<()> {
    if args.count == 0 || args.count % CLASSES != 0 {
        return Err(Error::Invalid(format!("--count must be a positive multiple of {CLASSES} (balanced classes), got {}", args.count)));
    }
    if args.out.join(SAMPLE_RECORD).exists() {
        return Err(Error::file(&args.out, "already holds a sampled data set (sample.json): choose another --out"));
    }
    let device = choose_device(args.device.as_deref())?;
    let per_class = args.count / CLASSES;
    let format = match args.format {
        FormatArg::Idx => SyntheticFormat::Idx,
        FormatArg::Npy => SyntheticFormat::Npy,
    };
    let record = write_sample(&args.run, per_class, args.seed, format, &args.out, &device)?;
    super::emit(&format!(
        "wrote {} images ({per_class} per class, {format}) to {} from step {} of {}: (ε = {:.4}, δ = {}) for the released data\n",
        args.count,
        args.out.display(),
        record["checkpoint_step"],
        args.run.display(),
        record["epsilon"].as_f64().unwrap_or(f64::NAN),
        record["delta"].as_f64().unwrap_or(f64::NAN)
    ))
}

/// Samples `per_class` images of every class from `run`'s released generator with codes from
/// `seed`, writes them, their grid and `sample.json` (last, so that its presence means the set is
/// complete) into `out`, and returns the record.
pub(super) fn write_sample(
    run: &Path,
    per_class: usize,
    seed: u64,
    format: SyntheticFormat,
    out: &Path,
    device: &Device,
) -> Result<serde_json::Value> {
    let algorithm: serde_json::Value = read_json(&run.join(CONFIG))?;
    // Each algorithm's released generator: DP-CGAN's G (tanh, rescaled), GS-WGAN's EMA copy G_s.
    let (images, labels, mut record) = if algorithm["algorithm"] == gswgan::ALGORITHM {
        let (generator, config, state) = gswgan::load_ema_generator(run, device)?;
        let (images, labels) = gswgan::sample_released(&generator, per_class, seed, device)?;
        let record = serde_json::json!({
            "algorithm": config.algorithm,
            "checkpoint_step": state.iteration,
            "epsilon": state.epsilon,
            "delta": state.delta,
            "accounting": config.accounting,
            "epsilon_as_published": state.epsilon_as_published,
            "epsilon_per_step": state.epsilon_per_step,
        });
        (images, labels, record)
    } else {
        let (generator, config, state) = load_generator(run, device)?;
        let (images, labels) = sample_released(&generator, per_class, seed, device)?;
        let record = serde_json::json!({
            "algorithm": config.algorithm,
            "checkpoint_step": state.step,
            "epsilon": state.epsilon,
            "delta": state.delta,
            "conversion": config.conversion,
            "sampling": config.sampling,
        });
        (images, labels, record)
    };
    write_synthetic(out, &images, &labels, 28, 28, format)?;
    // The grid: the first 10 images of every class, one row per class.
    let cols = per_class.min(10);
    let grid: Vec<f32> = (0..CLASSES).flat_map(|c| images[c * per_class * 784..][..cols * 784].iter().copied()).collect();
    Grid { images: &grid, rows: CLASSES, cols, height: 28, width: 28, range: (0.0, 1.0) }.write_png(&out.join("grid.png"))?;

    for (key, value) in [
        ("run", serde_json::json!(run)),
        ("count", serde_json::json!(per_class * CLASSES)),
        ("per_class", serde_json::json!(per_class)),
        ("format", serde_json::json!(format.to_string())),
        ("seed", serde_json::json!(seed)),
    ] {
        record[key] = value;
    }
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Invalid(format!("sample record: {e}")))? + "\n";
    dpgan::io::atomic_write(&out.join(SAMPLE_RECORD), text.as_bytes())?;
    Ok(record)
}
