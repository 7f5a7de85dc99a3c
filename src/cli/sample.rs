//! `dpgan sample`: the synthetic data set a run (or a generator `dpgan export` wrote) releases.
//! Balanced labels (N/10 per class, never the real class counts, which are not public), written as
//! MNIST-layout IDX or NPY, with a PNG grid and a `sample.json` that records where the data came
//! from and the ε it carries: the run's name (not its local path), its build, and the step and ε
//! of the checkpoint the generator comes from. The output directory must hold no data set:
//! releasing never writes over real data, nor into the private run directory.
use std::fs;
use std::path::{Component, Path, PathBuf};

use clap::{ArgGroup, Args, ValueEnum};
use dpgan::data::Split;
use dpgan::io::image::Grid;
use dpgan::io::synthetic::{SyntheticFormat, SyntheticWriter, NPY_IMAGES, NPY_LABELS};
use dpgan::models::dpcgan::CLASSES;
use dpgan::train::progress::Progress;
use dpgan::train::release::Release;
use dpgan::{Device, Error, Result};

use super::choose_device;

/// What `sample.json` is called in the output directory.
pub const SAMPLE_RECORD: &str = "sample.json";
/// The grid `dpgan sample` draws beside the data set.
const GRID: &str = "grid.png";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// MNIST's layout: train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz (8-bit pixels).
    Idx,
    /// images.npy (float32, N×28×28, in [0, 1]) and labels.npy (uint8).
    Npy,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["run", "generator"])))]
pub struct SampleArgs {
    /// The run whose generator to sample (its latest checkpoint).
    #[arg(long, value_name = "RUN_DIR")]
    run: Option<PathBuf>,
    /// A generator `dpgan export` wrote, instead of a run: the same images as its run gives.
    #[arg(long, value_name = "FILE")]
    generator: Option<PathBuf>,
    /// How many images: a multiple of 10, N/10 per class.
    #[arg(long)]
    count: usize,
    /// Directory to write the data set into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// idx (MNIST's layout, pixels rounded to 8 bits) or npy (the generator's float pixels).
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
    if args.count == 0 || !args.count.is_multiple_of(CLASSES) {
        return Err(Error::Invalid(format!("--count must be a positive multiple of {CLASSES} (balanced classes), got {}", args.count)));
    }
    refuse_output_dir(&args.out, args.run.as_deref())?;
    let device = choose_device(args.device.as_deref())?;
    let per_class = args.count / CLASSES;
    let format = match args.format {
        FormatArg::Idx => SyntheticFormat::Idx,
        FormatArg::Npy => SyntheticFormat::Npy,
    };
    let (release, source) = match (&args.run, &args.generator) {
        (Some(run), _) => (Release::of_run(run, &device)?, run),
        (None, Some(file)) => (Release::load(file, &device)?, file),
        (None, None) => return Err(Error::Invalid("give --run RUN_DIR or --generator FILE".into())),
    };
    let record = write_sample(&release, per_class, args.seed, format, &args.out, &device)?;
    super::emit(
        &(format!(
            "wrote {} images ({per_class} per class, {format}) to {} from step {} of {}: (ε = {:.4}, δ = {}) for the released data\n",
            args.count,
            args.out.display(),
            record["checkpoint_step"],
            source.display(),
            record["epsilon"].as_f64().unwrap_or(f64::NAN),
            record["delta"].as_f64().unwrap_or(f64::NAN)
        ) + record["warning"].as_str().map(|w| format!("{w}\n")).unwrap_or_default().as_str()),
    )
}

/// Samples `per_class` images of every class from a released generator (a run's, or one `dpgan
/// export` wrote) with codes from `seed`, writes them, their grid and `sample.json` (last, so that
/// its presence means the set is complete) into `out`, and returns the record: the generator's,
/// with the sample's count, format and seed. The images stream to disk a chunk at a time, so
/// memory stays bounded whatever the count; the grid keeps the first 10 of every class.
pub(super) fn write_sample(
    release: &Release,
    per_class: usize,
    seed: u64,
    format: SyntheticFormat,
    out: &Path,
    device: &Device,
) -> Result<serde_json::Value> {
    let count = per_class * CLASSES;
    let mut writer = SyntheticWriter::create(out, count, 28, 28, format)?;
    let cols = per_class.min(10);
    let mut grid = vec![0.0f32; CLASSES * cols * 784];
    let mut seen = [0usize; CLASSES];
    let progress = Progress::new(0, count as u64);
    let mut written = 0u64;
    release.sample_into(per_class, seed, device, &mut |images: &[f32], class: u8| -> Result<()> {
        let n = images.len() / 784;
        let c = class as usize;
        let take = n.min(cols - seen[c].min(cols));
        let row = &mut grid[(c * cols + seen[c].min(cols)) * 784..][..take * 784];
        row.copy_from_slice(&images[..take * 784]);
        seen[c] += n;
        writer.push(images, &vec![class; n])?;
        written += n as u64;
        progress.set_step(written);
        Ok(())
    })?;
    progress.finish();
    writer.finish()?;
    let names = release.class_names();
    let labels: Vec<&str> = names.iter().map(String::as_str).collect();
    Grid { images: &grid, rows: CLASSES, cols, height: 28, width: 28, range: (0.0, 1.0), row_labels: &labels }
        .write_png(&out.join(GRID))?;

    let mut record = release.record.clone();
    for (key, value) in [
        ("count", serde_json::json!(count)),
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

/// Refuses an output directory that is the run directory or inside it (see [`refuse_inside_run`]),
/// or that holds a data set or a file `dpgan sample` writes: writing there could replace real data
/// with synthetic data.
fn refuse_output_dir(out: &Path, run: Option<&Path>) -> Result<()> {
    if let Some(run) = run {
        refuse_inside_run(out, run)?;
    }
    let (train, test) = (Split::Train.file_names(), Split::Test.file_names());
    let idx = [train.0, train.1, test.0, test.1];
    let held: Vec<String> = idx
        .iter()
        .flat_map(|name| [name.to_string(), format!("{name}.gz")])
        .chain([NPY_IMAGES, NPY_LABELS, SAMPLE_RECORD, GRID].map(String::from))
        .filter(|name| out.join(name).exists())
        .collect();
    if !held.is_empty() {
        return Err(Error::file(
            out,
            format!("already holds {}: a data set or a sample is never written over, choose another --out", held.join(", ")),
        ));
    }
    Ok(())
}

/// Refuses an output directory that is the run directory or inside it: the run is private, and a
/// release kept there would travel with it, or be mistaken for it.
pub(super) fn refuse_inside_run(out: &Path, run: &Path) -> Result<()> {
    let run_dir = fs::canonicalize(run).map_err(|e| Error::file(run, format!("cannot resolve the run directory: {e}")))?;
    if resolved(out)?.starts_with(&run_dir) {
        return Err(Error::file(
            out,
            "is the run directory or inside it: the run is private, keep what is released apart (choose another --out)",
        ));
    }
    Ok(())
}

/// `path` made absolute with symbolic links resolved, for as much of it as exists (the output
/// directory may not exist yet).
fn resolved(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|e| Error::file(path, format!("cannot resolve: {e}")))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = fs::canonicalize(existing).map_err(|e| Error::file(existing, format!("cannot resolve: {e}")))?;
    for part in rest.into_iter().rev() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}
