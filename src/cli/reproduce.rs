//! `dpgan reproduce dp-cgan`: the published experiment in one command. N runs (seeds s, s+1, ...)
//! of train → sample 5,000 images (500 per class) → evaluate logistic regression and the MLP on
//! the real test set, then one table of mean ± sd beside the published numbers. Each run lives in
//! `OUT/run-K/`; a finished run is reused and an interrupted one resumed, so the command can be run
//! again after a crash without redoing work.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use dpgan::data::{data_dir, Dataset, PixelScale, Split};
use dpgan::eval::{evaluate, Classifier, EvalConfig, EvalReport, ImageSet, Metric};
use dpgan::io::synthetic::{write_synthetic, SyntheticFormat};
use dpgan::train::dpcgan::run::{load_generator, sample_released, DpCganRun, DpCganRunConfig, DpCganSettings, DpCganState, SamplingKind};
use dpgan::train::progress::Progress;
use dpgan::train::run_dir::{read_json, CHECKPOINT_JSON, CONFIG};
use dpgan::{Device, Error, Result};

use super::choose_device;

/// SPEC.md §1: published AUROC (mean of 3 runs) and ε.
const PUBLISHED_AUROC_LOGREG: f64 = 0.8642;
const PUBLISHED_AUROC_MLP: f64 = 0.8858;
const PUBLISHED_EPSILON_CLASSIC: f64 = 9.64;
const PUBLISHED_EPSILON_IMPROVED: f64 = 8.80;
/// DP-CGAN's evaluation set: 500 generated images per class.
const PER_CLASS: usize = 500;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(Subcommand, Debug)]
enum Experiment {
    /// DP-CGAN on MNIST: AUROC of logistic regression and an MLP trained on 5,000 samples.
    DpCgan(DpCganReproduceArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SamplingArg {
    Poisson,
    Shuffle,
}

#[derive(Args, Debug)]
struct DpCganReproduceArgs {
    /// MNIST: a directory with the IDX files, or a name under $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where the runs go (OUT/run-1, OUT/run-2, ...) and the table (OUT/results.json).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Independent runs; the table reports their mean and sd (never the best).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seed of the first run; run K uses seed + K − 1.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Steps per run [default: the published 24,900].
    #[arg(long)]
    steps: Option<u64>,
    /// Batch sampling: poisson (ε is a proof) or shuffle (what the published run did).
    #[arg(long, value_enum, default_value_t = SamplingArg::Poisson)]
    sampling: SamplingArg,
    /// Shorter classifier training, for a quick look (the MLP's recipe is 200 epochs).
    #[arg(long)]
    eval_epochs: Option<usize>,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: &ReproduceArgs) -> Result<()> {
    match &args.experiment {
        Experiment::DpCgan(a) => dp_cgan(a),
    }
}

/// One run's results.
struct RunResult {
    epsilon_improved: f64,
    epsilon_classic: f64,
    wall_s: f64,
    steps_per_s: f64,
    logreg: EvalReport,
    mlp: EvalReport,
}

fn dp_cgan(args: &DpCganReproduceArgs) -> Result<()> {
    if args.runs == 0 {
        return Err(Error::Invalid("--runs must be at least 1".into()));
    }
    let device = choose_device(args.device.as_deref())?;
    let data = data_dir(args.data.as_deref())?;
    let (train, test) = (Dataset::load(&data, Split::Train)?, Dataset::load(&data, Split::Test)?);
    let test_pixels = test.pixels_f32(PixelScale::Unit);
    let test_set = ImageSet::new(&test_pixels, test.labels(), 28, 28, "the real test set")?;
    let mut results = Vec::new();
    for k in 1..=args.runs {
        let root = args.out.join(format!("run-{k}"));
        let result = one_run(args, &root, args.seed + k as u64 - 1, &train, &test_set, &device)?;
        eprintln!(
            "run {k}/{}: ε = {:.4} (improved), AUROC logreg {:.4}, MLP {:.4}",
            args.runs, result.epsilon_improved, result.logreg.auroc_micro.mean, result.mlp.auroc_micro.mean
        );
        results.push(result);
    }
    let table = table(args, &results)?;
    let json = serde_json::json!({
        "experiment": "dp-cgan",
        "runs": args.runs,
        "device": device.to_string(),
        "epsilon_improved": Metric::over(results.iter().map(|r| r.epsilon_improved).collect()),
        "epsilon_classic": Metric::over(results.iter().map(|r| r.epsilon_classic).collect()),
        "train_wall_s": Metric::over(results.iter().map(|r| r.wall_s).collect()),
        "steps_per_s": Metric::over(results.iter().map(|r| r.steps_per_s).collect()),
        "logreg": results.iter().map(|r| &r.logreg).collect::<Vec<_>>(),
        "mlp": results.iter().map(|r| &r.mlp).collect::<Vec<_>>(),
        "published": {"auroc_logreg": PUBLISHED_AUROC_LOGREG, "auroc_mlp": PUBLISHED_AUROC_MLP,
                      "epsilon_classic": PUBLISHED_EPSILON_CLASSIC, "epsilon_improved": PUBLISHED_EPSILON_IMPROVED},
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Invalid(format!("results as JSON: {e}")))? + "\n";
    dpgan::io::atomic_write(&args.out.join("results.json"), text.as_bytes())?;
    super::emit(&table)
}

/// Trains (or resumes, or reuses) run `root`, samples its evaluation set and scores it.
fn one_run(args: &DpCganReproduceArgs, root: &Path, seed: u64, train: &Dataset, test: &ImageSet, device: &Device) -> Result<RunResult> {
    let mut run = if root.join(CONFIG).exists() {
        DpCganRun::resume(root, device, None)?
    } else {
        let settings = DpCganSettings {
            seed,
            steps: args.steps,
            sampling: match args.sampling {
                SamplingArg::Poisson => SamplingKind::Poisson,
                SamplingArg::Shuffle => SamplingKind::Shuffle,
            },
            ..DpCganSettings::default()
        };
        DpCganRun::start(root, DpCganRunConfig::plan(&settings, train, device)?, train, device)?
    };
    let progress = Progress::new(run.steps_taken(), run.config().steps);
    let outcome = run.train(&progress)?;
    progress.finish();
    let state: DpCganState = read_json(&root.join(CHECKPOINT_JSON))?;
    drop(run);

    let (generator, config) = load_generator(root, device)?;
    let (images, labels) = sample_released(&generator, PER_CLASS, seed, device)?;
    let synthetic = root.join("synthetic");
    if !synthetic.exists() {
        write_synthetic(&synthetic, &images, &labels, 28, 28, SyntheticFormat::Idx)?;
    }
    let train_set = ImageSet::new(&images, &labels, 28, 28, "the synthetic set")?;
    let eval = EvalConfig { seed, repeats: 1, epochs: args.eval_epochs };
    // Logistic regression runs L-BFGS to convergence: epochs are the MLP's alone.
    let logreg = evaluate(&train_set, test, Classifier::Logreg, &EvalConfig { epochs: None, ..eval }, device)?;
    let mlp = evaluate(&train_set, test, Classifier::Mlp, &eval, device)?;
    let (improved, classic) = match config.conversion {
        dpgan::privacy::Conversion::Improved => (outcome.guarantee.epsilon, outcome.other.epsilon),
        dpgan::privacy::Conversion::Classic => (outcome.other.epsilon, outcome.guarantee.epsilon),
    };
    Ok(RunResult {
        epsilon_improved: improved,
        epsilon_classic: classic,
        wall_s: state.wall_s,
        steps_per_s: state.step as f64 / state.wall_s.max(f64::MIN_POSITIVE),
        logreg,
        mlp,
    })
}

fn table(args: &DpCganReproduceArgs, results: &[RunResult]) -> Result<String> {
    let over = |f: &dyn Fn(&RunResult) -> f64| Metric::over(results.iter().map(f).collect());
    let cell = |m: &Metric| if results.len() > 1 { format!("{:.4} ± {:.4}", m.mean, m.sd) } else { format!("{:.4}", m.mean) };
    let mut t = String::new();
    let sampling = match args.sampling {
        SamplingArg::Poisson => "Poisson sampling",
        SamplingArg::Shuffle => "shuffled batches (ε: the customary approximation)",
    };
    writeln!(t, "DP-CGAN on MNIST, {} run(s), {sampling}; mean ± sd over runs, never the best", results.len()).ok();
    writeln!(t, "| | dpgan | published |").ok();
    writeln!(t, "|---|---:|---:|").ok();
    writeln!(t, "| AUROC, logistic regression | {} | {PUBLISHED_AUROC_LOGREG} |", cell(&over(&|r| r.logreg.auroc_micro.mean))).ok();
    writeln!(t, "| AUROC, MLP | {} | {PUBLISHED_AUROC_MLP} |", cell(&over(&|r| r.mlp.auroc_micro.mean))).ok();
    writeln!(t, "| accuracy, logistic regression | {} | |", cell(&over(&|r| r.logreg.accuracy.mean))).ok();
    writeln!(t, "| accuracy, MLP | {} | |", cell(&over(&|r| r.mlp.accuracy.mean))).ok();
    writeln!(t, "| ε (classic conversion) | {} | {PUBLISHED_EPSILON_CLASSIC} |", cell(&over(&|r| r.epsilon_classic))).ok();
    writeln!(t, "| ε (improved conversion) | {} | {PUBLISHED_EPSILON_IMPROVED} |", cell(&over(&|r| r.epsilon_improved))).ok();
    writeln!(t, "| training time per run (s) | {} | ≈ 10,460 (42 s/epoch) |", cell(&over(&|r| r.wall_s))).ok();
    writeln!(t, "| steps/s | {} | |", cell(&over(&|r| r.steps_per_s))).ok();
    writeln!(t, "The published ε = 9.64 used TF-Privacy 0.2's orders; `dpgan privacy epsilon --orders tf-privacy-0.2 --conversion classic` gives it.").ok();
    writeln!(t, "results: {}", args.out.join("results.json").display()).ok();
    Ok(t)
}
