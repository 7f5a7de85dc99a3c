//! `dpgan reproduce dp-cgan`: N runs of train → sample 5,000 images (500 per class) → evaluate
//! logistic regression and the MLP on the real test set, then the table beside docs/algorithms.md §1's
//! published numbers (see the parent module for what runs share). Each run is a training run
//! directory (`OUT/run-K/`, as `dpgan train dp-cgan` writes it) with the released set in
//! `synthetic/` and the evaluations in `eval-logreg.json` and `eval-mlp.json`.
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use dpgan::data::{data_dir, Dataset, PixelScale, Split};
use dpgan::dp::KeySource;
use dpgan::eval::{Classifier, EvalConfig, EvalReport, ImageSet, Metric};
use dpgan::io::synthetic::SyntheticFormat;
use dpgan::models::dpcgan::CLASSES;
use dpgan::privacy::Conversion;
use dpgan::train::dpcgan::run::{load_generator, sample_released, DpCganRun, DpCganRunConfig, DpCganSettings, DpCganState, SamplingKind};
use dpgan::train::progress::Progress;
use dpgan::train::release::Release;
use dpgan::train::run_dir::{checkpoint_state, read_json, CHECKPOINT, CONFIG};
use dpgan::{Device, Result};

use super::{
    evaluate_and_keep, forget_if_never_checkpointed, kept_evaluation, noise_setting, run_slots, same_settings, unless_interrupted,
    write_results, RunsArgs, Table,
};
use crate::cli::choose_device;
use crate::cli::sample::{write_sample, SAMPLE_RECORD};

/// docs/algorithms.md §1: published AUROC (mean of 3 runs) and ε.
const PUBLISHED_AUROC_LOGREG: f64 = 0.8642;
const PUBLISHED_AUROC_MLP: f64 = 0.8858;
const PUBLISHED_EPSILON_CLASSIC: f64 = 9.64;
const PUBLISHED_EPSILON_IMPROVED: f64 = 8.80;
/// DP-CGAN's evaluation set: 500 generated images per class.
const PER_CLASS: usize = 500;
/// docs/algorithms.md §1: 249 epochs of 100 steps (B = 600 of 60,000).
const PUBLISHED_STEPS: u64 = 24_900;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SamplingArg {
    Poisson,
    Shuffle,
}

#[derive(Args, Debug)]
pub(super) struct DpCganReproduceArgs {
    /// MNIST: a directory with the IDX files, or a name under $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    slots: RunsArgs,
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
    /// CUDA only: replay each run's steps from one CUDA graph (see `train dp-cgan --cuda-graph`).
    #[arg(long)]
    cuda_graph: bool,
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

pub(super) fn run(args: &DpCganReproduceArgs) -> Result<()> {
    let slots = run_slots(&args.slots)?;
    let device = choose_device(args.device.as_deref())?;
    crate::cli::train::check_cuda_graph(args.cuda_graph, &device)?;
    let data = data_dir(args.data.as_deref())?;
    let (train, test) = (Dataset::load(&data, Split::Train)?, Dataset::load(&data, Split::Test)?);
    let test_pixels = test.pixels_f32(PixelScale::Unit);
    let test_set = ImageSet::new(&test_pixels, test.labels(), 28, 28, "the real test set")?;
    let mut results = Vec::new();
    for slot in &slots {
        let result = one_run(args, &slot.root, slot.seed, &train, &test_set, &device)?;
        eprintln!(
            "run {}/{}: ε = {:.4} (improved), AUROC logreg {:.4}, MLP {:.4}",
            slot.number, args.slots.runs, result.epsilon_improved, result.logreg.auroc_micro.mean, result.mlp.auroc_micro.mean
        );
        results.push(result);
    }
    let table = table(args, &results);
    let d = DpCganSettings::default();
    let json = serde_json::json!({
        "experiment": "dp-cgan",
        "runs": args.slots.runs,
        "device": device.to_string(),
        "settings": {
            "steps": planned_steps(args),
            "sampling": sampling_kind(args),
            "batch_size": d.batch_size,
            "clip": d.clip,
            "noise_multiplier": d.noise_multiplier,
            "delta": d.delta,
            "noise": noise_setting(args.slots.noise.mode(), KeySource::from_flag(args.slots.noise.replayable_noise)),
            "per_class": PER_CLASS,
            "mlp_epochs": args.eval_epochs.or(Classifier::Mlp.default_epochs()),
        },
        "departures": departures(args),
        "epsilon_improved": Metric::over(results.iter().map(|r| r.epsilon_improved).collect()),
        "epsilon_classic": Metric::over(results.iter().map(|r| r.epsilon_classic).collect()),
        "train_wall_s": Metric::over(results.iter().map(|r| r.wall_s).collect()),
        "steps_per_s": Metric::over(results.iter().map(|r| r.steps_per_s).collect()),
        "logreg": results.iter().map(|r| &r.logreg).collect::<Vec<_>>(),
        "mlp": results.iter().map(|r| &r.mlp).collect::<Vec<_>>(),
        "published": {"auroc_logreg": PUBLISHED_AUROC_LOGREG, "auroc_mlp": PUBLISHED_AUROC_MLP,
                      "epsilon_classic": PUBLISHED_EPSILON_CLASSIC, "epsilon_improved": PUBLISHED_EPSILON_IMPROVED},
    });
    write_results(&args.slots.out, &json)?;
    crate::cli::emit(&table)
}

/// Trains (or resumes, or reuses) run `root`, samples its evaluation set and scores it; a finished
/// training and evaluations up to date with its checkpoint are reused.
fn one_run(args: &DpCganReproduceArgs, root: &Path, seed: u64, train: &Dataset, test: &ImageSet, device: &Device) -> Result<RunResult> {
    let settings = DpCganSettings {
        seed,
        steps: args.steps,
        sampling: sampling_kind(args),
        noise: args.slots.noise.mode(),
        replayable_noise: args.slots.noise.replayable_noise,
        cuda_graph: args.cuda_graph,
        ..DpCganSettings::default()
    };
    let planned = DpCganRunConfig::plan(&settings, train, device)?;
    if root.join(CONFIG).exists() {
        let recorded: DpCganRunConfig = read_json(&root.join(CONFIG))?;
        let sampling = |c: &DpCganRunConfig| serde_json::json!(c.sampling).as_str().unwrap_or_default().to_string();
        same_settings(
            root,
            &[
                ("--steps", recorded.steps.to_string(), planned.steps.to_string()),
                ("--sampling", sampling(&recorded), sampling(&planned)),
                ("--seed", recorded.seed.to_string(), planned.seed.to_string()),
                (
                    "the noise (--fast-noise, --replayable-noise)",
                    noise_setting(recorded.noise, recorded.noise_key),
                    noise_setting(planned.noise, planned.noise_key),
                ),
            ],
        )?;
    }
    forget_if_never_checkpointed(root)?;
    if !root.join(CONFIG).exists() {
        train_run(&mut DpCganRun::start(root, planned, train, device)?)?;
    } else {
        let state: DpCganState = checkpoint_state(root)?;
        if state.step < planned.steps && state.stopped.is_none() {
            train_run(&mut DpCganRun::resume(root, device, None)?)?;
        }
    }
    // The state saved with the generator's weights (checkpoint.json may lag it after a crash).
    let state: DpCganState = checkpoint_state(root)?;

    // --eval-epochs shortens the MLP only: logistic regression runs L-BFGS to convergence.
    let mlp_config = EvalConfig { seed, repeats: 1, epochs: args.eval_epochs };
    let logreg_config = EvalConfig { epochs: None, ..mlp_config };
    let (logreg_path, mlp_path, checkpoint) = (root.join("eval-logreg.json"), root.join("eval-mlp.json"), root.join(CHECKPOINT));
    let size = PER_CLASS * CLASSES;
    let kept = (
        kept_evaluation(&logreg_path, &checkpoint, Classifier::Logreg, &logreg_config, size)?,
        kept_evaluation(&mlp_path, &checkpoint, Classifier::Mlp, &mlp_config, size)?,
    );
    let (logreg, mlp) = match kept {
        (Some(logreg), Some(mlp)) => (logreg, mlp),
        (logreg, mlp) => {
            let (generator, _, _) = load_generator(root, device)?;
            let (images, labels) = sample_released(&generator, PER_CLASS, seed, device)?;
            // The released set as `dpgan sample` writes it (the same images, with sample.json and
            // a grid); the evaluation reads the float pixels, not the file's 8-bit ones.
            let synthetic = root.join("synthetic");
            if !synthetic.join(SAMPLE_RECORD).exists() {
                write_sample(&Release::of_run(root, device)?, PER_CLASS, seed, SyntheticFormat::Idx, &synthetic, device)?;
            }
            let train_set = ImageSet::new(&images, &labels, 28, 28, "the synthetic set")?;
            let logreg = match logreg {
                Some(kept) => kept,
                None => evaluate_and_keep(&logreg_path, &train_set, test, Classifier::Logreg, &logreg_config, device)?,
            };
            let mlp = match mlp {
                Some(kept) => kept,
                None => evaluate_and_keep(&mlp_path, &train_set, test, Classifier::Mlp, &mlp_config, device)?,
            };
            (logreg, mlp)
        }
    };
    let epsilon = |conversion| state.accountant.spent_with(conversion).map(|g| g.epsilon);
    Ok(RunResult {
        epsilon_improved: epsilon(Conversion::Improved)?,
        epsilon_classic: epsilon(Conversion::Classic)?,
        wall_s: state.wall_s,
        steps_per_s: state.step as f64 / state.wall_s.max(f64::MIN_POSITIVE),
        logreg,
        mlp,
    })
}

/// Trains `run` to its planned steps or its budget, with a progress bar.
fn train_run(run: &mut DpCganRun) -> Result<()> {
    let progress = Progress::new(run.steps_taken(), run.config().steps);
    let outcome = run.train(&progress)?;
    progress.finish();
    unless_interrupted(outcome.stop.signal())
}

fn table(args: &DpCganReproduceArgs, results: &[RunResult]) -> String {
    let over = |f: fn(&RunResult) -> f64| results.iter().map(f).collect::<Vec<_>>();
    let sampling = match args.sampling {
        SamplingArg::Poisson => "Poisson sampling",
        SamplingArg::Shuffle => "shuffled batches (ε: the customary approximation)",
    };
    let mut t = Table::new(&format!("DP-CGAN on MNIST, {sampling}"), results.len());
    t.row("AUROC, logistic regression", over(|r| r.logreg.auroc_micro.mean), &PUBLISHED_AUROC_LOGREG.to_string());
    t.row("AUROC, MLP", over(|r| r.mlp.auroc_micro.mean), &PUBLISHED_AUROC_MLP.to_string());
    t.row("accuracy, logistic regression", over(|r| r.logreg.accuracy.mean), "");
    t.row("accuracy, MLP", over(|r| r.mlp.accuracy.mean), "");
    t.row("ε (classic conversion)", over(|r| r.epsilon_classic), &PUBLISHED_EPSILON_CLASSIC.to_string());
    t.row("ε (improved conversion)", over(|r| r.epsilon_improved), &PUBLISHED_EPSILON_IMPROVED.to_string());
    t.row("training time per run (s)", over(|r| r.wall_s), "≈ 10,460 (42 s/epoch)");
    t.row("steps/s", over(|r| r.steps_per_s), "");
    t.note("The published ε = 9.64 used TF-Privacy 0.2's orders; `dpgan privacy epsilon --orders tf-privacy-0.2 --conversion classic` gives it.");
    let departures = departures(args);
    if !departures.is_empty() {
        t.note(&format!("Not the published settings: {}.", departures.join(", ")));
    }
    t.finish(&args.slots.out)
}

/// The run's total steps: `--steps`, or the published 249 epochs.
fn planned_steps(args: &DpCganReproduceArgs) -> u64 {
    args.steps.unwrap_or(PUBLISHED_STEPS)
}

fn sampling_kind(args: &DpCganReproduceArgs) -> SamplingKind {
    match args.sampling {
        SamplingArg::Poisson => SamplingKind::Poisson,
        SamplingArg::Shuffle => SamplingKind::Shuffle,
    }
}

/// Where these settings leave docs/algorithms.md §1's published run, for the table's reader. Poisson
/// sampling is a departure too (the published run shuffled), the one the ε is a proof for.
fn departures(args: &DpCganReproduceArgs) -> Vec<String> {
    let mut out = Vec::new();
    if planned_steps(args) != PUBLISHED_STEPS {
        out.push(format!("steps {} (published: {PUBLISHED_STEPS})", planned_steps(args)));
    }
    if args.sampling == SamplingArg::Poisson {
        out.push("Poisson sampling (published: shuffled batches)".into());
    }
    if let Some(epochs) = args.eval_epochs.filter(|&e| Some(e) != Classifier::Mlp.default_epochs()) {
        out.push(format!("MLP epochs {epochs} (published: {})", Classifier::Mlp.default_epochs().unwrap_or_default()));
    }
    if args.slots.noise.replayable_noise {
        out.push("replayable noise: NOT PRIVATE".into());
    }
    out
}
