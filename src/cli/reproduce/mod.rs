//! `dpgan reproduce`: a published experiment in one command, one file per experiment
//! (`dpcgan.rs`, `gswgan.rs`, `dpsgd_gan.rs`). Both share the shape of the work: N independent runs in
//! `OUT/run-1`, `OUT/run-2`, ... (seeds s, s+1, ...), each trained, sampled and evaluated; a table of
//! mean ± sd over the runs (never the best) beside the published numbers, printed and written with
//! every run's scores to `OUT/results.json`. A finished run is reused and an interrupted one
//! resumed, so the command can be run again after a crash without redoing work: each stage's
//! output is kept in the run's directory and reused while it is up to date with what it was made
//! from and was made with the settings asked for now.
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use dpgan::eval::{evaluate, Classifier, EvalConfig, EvalReport, ImageSet, Metric};
use dpgan::io::synthetic::{read_synthetic, SyntheticFormat};
use dpgan::train::release::Release;
use dpgan::train::run_dir::{read_json, RunDir, CHECKPOINT};

use crate::cli::sample::{write_sample, SAMPLE_RECORD};
use dpgan::{Device, Error, Result};

mod dpcgan;
mod dpsgd_gan;
mod gswgan;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(Subcommand, Debug)]
enum Experiment {
    /// DP-CGAN on MNIST: AUROC of logistic regression and an MLP trained on 5,000 samples.
    DpCgan(dpcgan::DpCganReproduceArgs),
    /// GS-WGAN on MNIST or Fashion-MNIST: warm start, private phase, LeNet-5 trained on 60,000 samples.
    GsWgan(gswgan::GsWganReproduceArgs),
    /// DPSGD-GAN on MNIST: DP-SGD discriminator, many D steps per G step, their CNN trained on 60,000 samples.
    DpsgdGan(dpsgd_gan::DpsgdGanReproduceArgs),
}

pub fn run(args: &ReproduceArgs) -> Result<()> {
    dpgan::train::interrupt::install()?;
    match &args.experiment {
        Experiment::DpCgan(a) => dpcgan::run(a),
        Experiment::GsWgan(a) => gswgan::run(a),
        Experiment::DpsgdGan(a) => dpsgd_gan::run(a),
    }
}

/// Stops the experiment when a signal stopped one of its training runs (after its checkpoint):
/// running the same command again continues where it stopped.
fn unless_interrupted(signal: Option<dpgan::train::interrupt::Signal>) -> Result<()> {
    match signal {
        Some(signal) => Err(crate::cli::interrupted(signal, "the same dpgan reproduce command")),
        None => Ok(()),
    }
}

/// The flags every experiment shares: where its runs go, how many, and from which seed.
#[derive(Args, Debug)]
struct RunsArgs {
    /// Where the runs go (OUT/run-1, OUT/run-2, ...) and the table (OUT/results.json).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Independent runs; the table reports their mean and sd (never the best).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seed of the first run; run K uses seed + K − 1. It governs initial weights and latent
    /// draws; each run's noise and batches come from its own secret key.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    noise: crate::cli::noise::NoiseArgs,
}

/// The noise settings as `same_settings` compares them: the sampler and where the key comes from.
fn noise_setting(mode: dpgan::dp::NoiseMode, source: dpgan::dp::KeySource) -> String {
    format!("{mode:?}, {}", serde_json::json!(source).as_str().unwrap_or_default())
}

/// One run of an experiment: its number (1-based), its directory and its seed.
struct RunSlot {
    number: usize,
    root: PathBuf,
    seed: u64,
}

/// The runs of `--runs N --seed S` under `--out OUT`: run K in `OUT/run-K` with seed S + K − 1.
fn run_slots(args: &RunsArgs) -> Result<Vec<RunSlot>> {
    let RunsArgs { out, runs, seed, .. } = args;
    let (runs, seed) = (*runs, *seed);
    if runs == 0 {
        return Err(Error::Invalid("--runs must be at least 1".into()));
    }
    (1..=runs)
        .map(|number| {
            let seed = seed
                .checked_add(number as u64 - 1)
                .ok_or_else(|| Error::Invalid(format!("--seed {seed} leaves no room for {runs} runs (seed + run − 1 overflows)")))?;
            Ok(RunSlot { number, root: out.join(format!("run-{number}")), seed })
        })
        .collect()
}

/// The comparison table: one row per quantity, the mean ± sd over the runs (the mean alone for
/// one run) beside the published value.
struct Table {
    runs: usize,
    text: String,
}

impl Table {
    fn new(title: &str, runs: usize) -> Table {
        let mut text = String::new();
        writeln!(text, "{title}, {runs} run(s); mean ± sd over runs, never the best").ok();
        writeln!(text, "| | dpgan | published |").ok();
        writeln!(text, "|---|---:|---:|").ok();
        Table { runs, text }
    }

    fn cell(&self, m: &Metric) -> String {
        if self.runs > 1 {
            format!("{:.4} ± {:.4}", m.mean, m.sd)
        } else {
            format!("{:.4}", m.mean)
        }
    }

    /// A row of `values` (one per run); `published` is shown as given ("" where there is none).
    fn row(&mut self, label: &str, values: Vec<f64>, published: &str) {
        let cell = self.cell(&Metric::over(values));
        writeln!(self.text, "| {label} | {cell} | {published} |").ok();
    }

    fn note(&mut self, line: &str) {
        writeln!(self.text, "{line}").ok();
    }

    /// The table, ending with where the results went.
    fn finish(mut self, out: &Path) -> String {
        writeln!(self.text, "results: {}", out.join(RESULTS).display()).ok();
        self.text
    }
}

/// What the whole experiment writes beside its runs.
const RESULTS: &str = "results.json";

/// Writes `OUT/results.json` atomically.
fn write_results(out: &Path, json: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(json).map_err(|e| Error::Invalid(format!("results as JSON: {e}")))? + "\n";
    dpgan::io::atomic_write(&out.join(RESULTS), text.as_bytes())
}

/// A stage found on disk must have been made with the settings asked for now: otherwise the table
/// would average runs of different experiments. Each entry: the flag, what the stage recorded,
/// what the command asks for.
fn same_settings(dir: &Path, settings: &[(&str, String, String)]) -> Result<()> {
    let differ: Vec<String> = settings
        .iter()
        .filter(|(_, recorded, asked)| recorded != asked)
        .map(|(flag, recorded, asked)| format!("{flag} {recorded} there, {asked} now"))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::file(
        dir,
        format!(
            "was made with other settings ({}): rerun with the settings it was made with to reuse or continue it, or choose another --out",
            differ.join("; ")
        ),
    ))
}

/// Whether `output` was written no earlier than `input`: a stage older than what it was made from
/// (a generator trained again after it was evaluated) is made again, like a stale target in make.
fn up_to_date(output: &Path, input: &Path) -> Result<bool> {
    let modified = |path: &Path| {
        fs::metadata(path).and_then(|m| m.modified()).map_err(|e| Error::file(path, format!("cannot read its modification time: {e}")))
    };
    Ok(output.is_file() && modified(output)? >= modified(input)?)
}

/// The evaluation kept in `path` if it is up to date with `source` (what its training set came
/// from); an error if it was made with other settings than `classifier`, `config` and `train_size`.
fn kept_evaluation(
    path: &Path,
    source: &Path,
    classifier: Classifier,
    config: &EvalConfig,
    train_size: usize,
) -> Result<Option<EvalReport>> {
    if !up_to_date(path, source)? {
        return Ok(None);
    }
    let report: EvalReport = read_json(path)?;
    let epochs = |e: Option<usize>| e.map_or_else(|| "none".to_string(), |e| e.to_string());
    same_settings(
        path,
        &[
            ("the classifier", report.classifier.to_string(), classifier.to_string()),
            ("--eval-epochs", epochs(report.epochs), epochs(config.epochs.or(classifier.default_epochs()))),
            ("the training set's size", report.train_size.to_string(), train_size.to_string()),
            ("the seed", report.seeds.first().map_or_else(String::new, u64::to_string), config.seed.to_string()),
            ("the repeats", report.repeats.to_string(), config.repeats.to_string()),
        ],
    )?;
    Ok(Some(report))
}

/// Trains and scores `classifier` on `train`, keeping the report in `path` (atomically) for reruns.
fn evaluate_and_keep(
    path: &Path,
    train: &ImageSet,
    test: &ImageSet,
    classifier: Classifier,
    config: &EvalConfig,
    device: &Device,
) -> Result<EvalReport> {
    let report = evaluate(train, test, classifier, config, device)?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(format!("evaluation as JSON: {e}")))? + "\n";
    dpgan::io::atomic_write(path, text.as_bytes())?;
    Ok(report)
}

/// The data sets with published numbers (docs/algorithms.md §2 and §4), told apart by the data
/// directory's name; each experiment adds its own numbers in its file.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Published {
    Mnist,
    FashionMnist,
}

impl Published {
    /// Which one a data directory holds, by its name (`mnist`, `fashion-mnist`).
    fn of(dir: &Path) -> Option<Published> {
        let name = dir.file_name()?.to_str()?.to_ascii_lowercase().replace('_', "-");
        match name.as_str() {
            "mnist" => Some(Published::Mnist),
            "fashion-mnist" | "fashionmnist" => Some(Published::FashionMnist),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Published::Mnist => "mnist",
            Published::FashionMnist => "fashion-mnist",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Published::Mnist => "MNIST",
            Published::FashionMnist => "Fashion-MNIST",
        }
    }
}

/// The released set in `dir`: `per_class` images of every class from the run in `generator`, codes
/// from `seed`, as float NPY so that the classifier sees exactly what the generator produced; reused
/// if `sample.json` is up to date with the generator's checkpoint and says it was written with these
/// settings from this step.
fn released_set(dir: &Path, generator: &Path, per_class: usize, seed: u64, step: u64, device: &Device) -> Result<()> {
    let record = dir.join(SAMPLE_RECORD);
    if up_to_date(&record, &generator.join(CHECKPOINT))? {
        let recorded: serde_json::Value = read_json(&record)?;
        let text = |key: &str| recorded[key].to_string();
        return same_settings(
            dir,
            &[
                ("--per-class", text("per_class"), per_class.to_string()),
                ("--seed", text("seed"), seed.to_string()),
                ("the generator's step", text("checkpoint_step"), step.to_string()),
                ("the format", recorded["format"].as_str().unwrap_or_default().to_string(), SyntheticFormat::Npy.to_string()),
            ],
        );
    }
    write_sample(&Release::of_run(generator, device)?, per_class, seed, SyntheticFormat::Npy, dir, device).map(|_| ())
}

/// `classifier` trained on the released set in `synthetic` and scored on the real test set; reused
/// from `path` while it is up to date with the set and was made with these settings.
fn evaluate_released(
    path: &Path,
    synthetic: &Path,
    classifier: Classifier,
    config: &EvalConfig,
    train_size: usize,
    test: &ImageSet,
    device: &Device,
) -> Result<EvalReport> {
    if let Some(kept) = kept_evaluation(path, &synthetic.join(SAMPLE_RECORD), classifier, config, train_size)? {
        return Ok(kept);
    }
    let set = read_synthetic(synthetic)?;
    let train = ImageSet::new(&set.images, &set.labels, set.height, set.width, "the synthetic set")?;
    evaluate_and_keep(path, &train, test, classifier, config, device)
}

/// A training run in `dir` that stopped before its first checkpoint starts again. Whether it did.
fn forget_if_never_checkpointed(dir: &Path) -> Result<bool> {
    let forgotten = RunDir::forget_if_never_checkpointed(dir)?;
    if forgotten {
        eprintln!("{} stopped before its first checkpoint: starting it again", dir.display());
    }
    Ok(forgotten)
}
