//! `dpgan eval`: trains a classifier on a synthetic set (or, with `--real`, on the real training
//! set: the reference row) and scores it on the real test set. The real training set is read only
//! under `--real`; evaluating synthetic data never looks at it.
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dpgan::data::{data_dir, scale_pixels, Dataset, PixelScale, Split, NUM_CLASSES};
use dpgan::eval::{evaluate_with_progress, Classifier, EvalConfig, EvalReport, ImageSet, Metric, RunScores};
use dpgan::io::synthetic::{read_synthetic, SyntheticFormat};
use dpgan::Result;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Directory of the synthetic set, IDX or NPY, as `dpgan sample` writes it.
    #[arg(long, value_name = "DIR", required_unless_present = "real", conflicts_with = "real")]
    synthetic: Option<PathBuf>,
    /// Data set directory whose t10k files are the test set, or a name inside $DPGAN_DATA (`mnist`).
    /// Default: $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The classifier trained on the set: logreg and mlp (DP-CGAN's protocol), lenet (GS-WGAN's) or
    /// cnn (DPSGD-GAN's: it holds out 1/12 of the set, at most 5,000 images, to choose its epoch).
    #[arg(long, value_enum)]
    classifier: ClassifierArg,
    /// Runs with seeds seed, seed + 1, ...; the report gives their mean and standard deviation.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Seed of the first run's initialisation and batch order (the evaluation is public: no key).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train mlp, lenet or cnn for this many epochs instead of the recipe's (200, 50 and 10).
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on the real training set instead of a synthetic one: the reference row.
    #[arg(long)]
    real: bool,
    /// cpu, cuda or cuda:N. Default: the GPU if one works, else the CPU (and it says why).
    #[arg(long)]
    device: Option<String>,
    #[command(flatten)]
    json: super::json::JsonOut,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ClassifierArg {
    Logreg,
    Mlp,
    Lenet,
    Cnn,
}

impl From<ClassifierArg> for Classifier {
    fn from(c: ClassifierArg) -> Self {
        match c {
            ClassifierArg::Logreg => Classifier::Logreg,
            ClassifierArg::Mlp => Classifier::Mlp,
            ClassifierArg::Lenet => Classifier::Lenet,
            ClassifierArg::Cnn => Classifier::Cnn,
        }
    }
}

/// What `--json` prints: the library's report and where its data came from.
#[derive(Serialize)]
struct CliReport<'a> {
    #[serde(flatten)]
    report: &'a EvalReport,
    train_source: &'static str,
    synthetic_dir: Option<String>,
    synthetic_format: Option<&'static str>,
    test_dir: String,
    device: String,
    note: &'static str,
}

const AVERAGED: &str = "the runs are averaged, never the best picked";

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = super::choose_device(args.device.as_deref())?;
    let classifier = Classifier::from(args.classifier);
    let config = EvalConfig { seed: args.seed, repeats: args.repeats, epochs: args.epochs };
    let dir = data_dir(args.data.as_deref())?;
    let test = Dataset::load(&dir, Split::Test)?;
    let test_images = scale_pixels(test.pixels(), PixelScale::Unit);
    let (rows, cols) = test.image_size();
    let test_set = ImageSet::new(&test_images, test.labels(), rows, cols, "real test set")?;

    let (train_images, train_labels, height, width, format) = match &args.synthetic {
        Some(synthetic) => {
            let set = read_synthetic(synthetic)?;
            (set.images, set.labels, set.height, set.width, Some(set.format))
        }
        None => {
            let real = Dataset::load(&dir, Split::Train)?;
            let (h, w) = real.image_size();
            (scale_pixels(real.pixels(), PixelScale::Unit), real.labels().to_vec(), h, w, None)
        }
    };
    let what = if args.real { "real training set" } else { "synthetic set" };
    let train_set = ImageSet::new(&train_images, &train_labels, height, width, what)?;
    let total = args.repeats;
    let report = evaluate_with_progress(&train_set, &test_set, classifier, &config, &device, |i, run| {
        eprintln!("dpgan eval: run {}/{total} {}", i + 1, run_line(run));
    })?;

    let format_name = format.map(|f| match f {
        SyntheticFormat::Idx => "idx",
        SyntheticFormat::Npy => "npy",
    });
    let cli_report = CliReport {
        report: &report,
        train_source: if args.real { "real" } else { "synthetic" },
        synthetic_dir: args.synthetic.as_ref().map(|d| d.display().to_string()),
        synthetic_format: format_name,
        test_dir: dir.display().to_string(),
        device: device.to_string(),
        note: AVERAGED,
    };
    args.json.emit(&cli_report, || table(&cli_report))
}

/// One run's progress line.
fn run_line(run: &RunScores) -> String {
    format!(
        "(seed {}): accuracy {:.4}, macro-F1 {:.4}, AUROC {:.4}, {:.1} s",
        run.seed, run.accuracy, run.macro_f1, run.auroc_micro, run.train_seconds
    )
}

/// The human-readable report.
fn table(r: &CliReport) -> String {
    let e = r.report;
    let mut out = String::new();
    let source = match (&r.synthetic_dir, r.synthetic_format) {
        (Some(dir), Some(format)) => format!("the synthetic set in {dir} ({format})"),
        _ => format!("the real training set of {}", r.test_dir),
    };
    let _ = writeln!(out, "{} trained on {source}, {} images", e.classifier, e.train_size);
    let _ = writeln!(out, "tested on the real test set of {}, {} images; device {}", r.test_dir, e.test_size, r.device);
    let seeds = match e.seeds.as_slice() {
        [only] => format!("seed {only}"),
        seeds => format!("seeds {}..={}", seeds[0], seeds[seeds.len() - 1]),
    };
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let epochs = e.epochs.map(|n| format!(", {} each", plural(n, "epoch"))).unwrap_or_default();
    let _ = writeln!(out, "{}, {seeds}{epochs}; {AVERAGED}", plural(e.repeats, "run"));
    for run in &e.runs {
        if let Some(c) = run.epoch_choice {
            let _ = writeln!(
                out,
                "CNN (seed {}): epoch {} kept, accuracy {:.4} on the {} images held out of the training set",
                run.seed, c.epoch, c.held_out_accuracy, c.held_out
            );
        }
        if let Some(s) = run.solver {
            let verdict = if s.converged { "converged" } else { "did NOT converge" };
            let _ = writeln!(
                out,
                "L-BFGS (seed {}): {verdict} after {} iterations, max |gradient| {:.2e}",
                run.seed, s.iterations, s.max_gradient
            );
        }
    }
    let _ = writeln!(out, "\n{:<16}{:>8}{:>9}   runs", "metric", "mean", "sd");
    for (name, m) in [("accuracy", &e.accuracy), ("macro-F1", &e.macro_f1), ("AUROC (micro)", &e.auroc_micro)] {
        let _ = writeln!(out, "{name:<16}{:>8.4}{:>9.4}   {}", m.mean, m.sd, runs_of(m));
    }
    let _ = writeln!(out, "\nper-class AUROC (mean over runs)");
    let _ = writeln!(out, "{}", (0..NUM_CLASSES).map(|k| format!("{k:>7}")).collect::<String>());
    let _ = writeln!(out, "{}", e.per_class_auroc.iter().map(|a| format!("{a:>7.4}")).collect::<String>());
    out
}

fn runs_of(m: &Metric) -> String {
    m.runs.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(" ")
}
