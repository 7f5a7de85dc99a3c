//! `dpgan reproduce dpsgd-gan`: docs/algorithms.md §4's experiment. Each run, in `OUT/run-K/`:
//! `generator/` (a `dpgan train dpsgd-gan` run directory), `synthetic/` (6,000 images per class, as
//! float NPY) and `eval-cnn.json` (their evaluation CNN trained on them, its epoch chosen on
//! held-out synthetic images, scored on the real test set). The shared machinery (reuse, resume,
//! refusing other settings, the table) is the parent module's.
use std::path::{Path, PathBuf};

use clap::Args;
use dpgan::data::{data_dir, Dataset, PixelScale, Split};
use dpgan::dp::KeySource;
use dpgan::eval::{Classifier, EvalConfig, EvalReport, ImageSet, Metric};
use dpgan::models::dpsgd_gan::CLASSES;
use dpgan::train::dpsgd_gan::run::{DpsgdGanRun, DpsgdGanRunConfig, DpsgdGanSettings, DpsgdGanState};
use dpgan::train::dpsgd_gan::schedule::GStepSchedule;
use dpgan::train::progress::Progress;
use dpgan::train::run_dir::{checkpoint_state, read_json, CONFIG};
use dpgan::{Device, Error, Result};

use super::{
    evaluate_released, forget_if_never_checkpointed, noise_setting, released_set, run_slots, same_settings, unless_interrupted,
    write_results, Published, RunsArgs, Table,
};
use crate::cli::{choose_device, emit};

/// Their protocol's evaluation set: 6,000 generated images per class.
const PER_CLASS: usize = 6000;
const GENERATOR_DIR: &str = "generator";
const SYNTHETIC_DIR: &str = "synthetic";
const EVAL_FILE: &str = "eval-cnn.json";
/// The ε both published runs were calibrated to (δ = 1e-5).
const PUBLISHED_EPSILON: f64 = 10.0;

#[derive(Args, Debug)]
pub(super) struct DpsgdGanReproduceArgs {
    /// MNIST (the published numbers) or Fashion-MNIST: a directory with the IDX files, or a name
    /// under $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    slots: RunsArgs,
    /// n_D: D steps per G step, or `adaptive`; each has its published run [default: 50].
    #[arg(long)]
    d_steps_per_g_step: Option<GStepSchedule>,
    /// Total D steps [default: 450000 with n_D = 50, 174000 adaptive].
    #[arg(long)]
    d_steps: Option<u64>,
    /// B, the expected real batch and the generated examples per D step [default: 128, 512 adaptive].
    #[arg(long)]
    batch_size: Option<usize>,
    /// σ [default: 1.0, 2.0 adaptive].
    #[arg(long, allow_negative_numbers = true)]
    noise_multiplier: Option<f32>,
    /// d, the width of G and D [default: 128; 16 or 32 for the CPU].
    #[arg(long)]
    width: Option<usize>,
    /// Generated images per class to train the CNN on [default: 6000]; fewer is shorter.
    #[arg(long)]
    per_class: Option<usize>,
    /// The CNN's epochs [default: the recipe's 10]; fewer is shorter.
    #[arg(long)]
    eval_epochs: Option<usize>,
    /// D steps between checkpoints [default: 5000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
}

/// One of the two published runs (docs/algorithms.md §4, their code's README on MNIST).
struct PublishedRun {
    d_steps: u64,
    batch_size: usize,
    noise_multiplier: f32,
    accuracy: f64,
}

/// The published run of a schedule: n_D = 50's for any fixed n_D, else the adaptive one's.
fn published_run(schedule: GStepSchedule) -> PublishedRun {
    match schedule {
        GStepSchedule::Fixed { .. } => PublishedRun { d_steps: 450_000, batch_size: 128, noise_multiplier: 1.0, accuracy: 0.930 },
        GStepSchedule::Adaptive => PublishedRun { d_steps: 174_000, batch_size: 512, noise_multiplier: 2.0, accuracy: 0.944 },
    }
}

/// The settings every run shares, defaults filled in.
struct Plan {
    training: DpsgdGanSettings,
    per_class: usize,
    eval_epochs: usize,
}

impl Plan {
    fn new(args: &DpsgdGanReproduceArgs, data: &Path) -> Result<Plan> {
        let d = DpsgdGanSettings::default();
        let schedule = args.d_steps_per_g_step.unwrap_or(d.schedule);
        let published = published_run(schedule);
        let per_class = args.per_class.unwrap_or(PER_CLASS);
        if per_class == 0 {
            return Err(Error::Invalid("--per-class must be at least 1".into()));
        }
        let eval_epochs = match args.eval_epochs {
            Some(0) => return Err(Error::Invalid("--eval-epochs must be at least 1".into())),
            Some(e) => e,
            None => Classifier::Cnn.default_epochs().ok_or_else(|| Error::Invalid("the CNN has no default epochs".into()))?,
        };
        let training = DpsgdGanSettings {
            data: data.to_path_buf(),
            schedule,
            d_steps: args.d_steps.unwrap_or(published.d_steps),
            batch_size: args.batch_size.unwrap_or(published.batch_size),
            noise_multiplier: Some(args.noise_multiplier.unwrap_or(published.noise_multiplier)),
            width: args.width.unwrap_or(d.width),
            noise: args.slots.noise.mode(),
            replayable_noise: args.slots.noise.replayable_noise,
            checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
            ..d
        };
        Ok(Plan { training, per_class, eval_epochs })
    }

    /// Where these settings leave the published run, for the table's reader.
    fn departures(&self, data: Option<Published>) -> Vec<String> {
        let (d, published) = (DpsgdGanSettings::default(), published_run(self.training.schedule));
        let t = &self.training;
        let mut out = Vec::new();
        let mut differs = |what: &str, ours: String, published: String| {
            if ours != published {
                out.push(format!("{what} {ours} (published: {published})"));
            }
        };
        if let GStepSchedule::Fixed { .. } = t.schedule {
            differs("n_D", t.schedule.to_string(), d.schedule.to_string());
        }
        differs("D steps", t.d_steps.to_string(), published.d_steps.to_string());
        differs("batch size", t.batch_size.to_string(), published.batch_size.to_string());
        differs("σ", t.noise_multiplier.unwrap_or_default().to_string(), published.noise_multiplier.to_string());
        differs("width", t.width.to_string(), d.width.to_string());
        differs("images per class", self.per_class.to_string(), PER_CLASS.to_string());
        let epochs = Classifier::Cnn.default_epochs().unwrap_or_default();
        differs("CNN epochs", self.eval_epochs.to_string(), epochs.to_string());
        if data != Some(Published::Mnist) {
            out.push("not MNIST (published on MNIST only)".into());
        }
        if t.replayable_noise {
            out.push("replayable noise: NOT PRIVATE".into());
        }
        out
    }
}

/// One run's results.
struct RunResult {
    d_steps: u64,
    g_steps: u64,
    epsilon: f64,
    train_s: f64,
    cnn: EvalReport,
}

pub(super) fn run(args: &DpsgdGanReproduceArgs) -> Result<()> {
    let slots = run_slots(&args.slots)?;
    let device = choose_device(args.device.as_deref())?;
    let data = data_dir(args.data.as_deref())?;
    let plan = Plan::new(args, &data)?;
    let published = Published::of(&data);
    let (train, test) = (Dataset::load(&data, Split::Train)?, Dataset::load(&data, Split::Test)?);
    let test_pixels = test.pixels_f32(PixelScale::Unit);
    let test_set = ImageSet::new(&test_pixels, test.labels(), 28, 28, "the real test set")?;
    let mut results = Vec::new();
    for slot in &slots {
        let result = one_run(&plan, &slot.root, slot.seed, &train, &test_set, &device)?;
        eprintln!(
            "run {}/{}: ε = {:.4}, CNN accuracy {:.4} (epoch {} kept on held-out synthetic images)",
            slot.number,
            args.slots.runs,
            result.epsilon,
            result.cnn.accuracy.mean,
            result.cnn.runs[0].epoch_choice.map_or(0, |c| c.epoch)
        );
        results.push(result);
    }
    let t = &plan.training;
    let departures = plan.departures(published);
    let over = |f: fn(&RunResult) -> f64| Metric::over(results.iter().map(f).collect());
    let json = serde_json::json!({
        "experiment": "dpsgd-gan",
        "runs": args.slots.runs,
        "device": device.to_string(),
        "dataset": published.map(Published::name),
        "settings": {
            "d_steps_per_g_step": t.schedule.to_string(),
            "d_steps": t.d_steps,
            "batch_size": t.batch_size,
            "noise_multiplier": t.noise_multiplier,
            "clip": t.clip,
            "delta": t.delta,
            "width": t.width,
            "noise": noise_setting(t.noise, KeySource::from_flag(t.replayable_noise)),
            "per_class": plan.per_class,
            "cnn_epochs": plan.eval_epochs,
        },
        "departures": departures,
        "epsilon": over(|r| r.epsilon),
        "accuracy": over(|r| r.cnn.accuracy.mean),
        "train_wall_s": over(|r| r.train_s),
        "g_steps": results.iter().map(|r| r.g_steps).collect::<Vec<_>>(),
        "cnn": results.iter().map(|r| &r.cnn).collect::<Vec<_>>(),
        "published": (published == Some(Published::Mnist)).then(|| serde_json::json!({
            "accuracy": published_run(t.schedule).accuracy,
            "epsilon": PUBLISHED_EPSILON,
        })),
    });
    write_results(&args.slots.out, &json)?;
    emit(&table(&plan, published, &departures, &results, &args.slots.out))
}

fn table(plan: &Plan, published: Option<Published>, departures: &[String], results: &[RunResult], out: &Path) -> String {
    let over = |f: fn(&RunResult) -> f64| results.iter().map(f).collect::<Vec<_>>();
    let t = &plan.training;
    let title = published.map_or("an unnamed data set", Published::title);
    let mut table = Table::new(&format!("DPSGD-GAN on {title}, n_D = {}", t.schedule), results.len());
    let mnist = published == Some(Published::Mnist);
    let shown = |value: String| if mnist { value } else { String::new() };
    let accuracy = published_run(t.schedule).accuracy;
    table.row("CNN accuracy", over(|r| r.cnn.accuracy.mean), &shown(format!("{accuracy:.3}")));
    table.row("CNN macro-F1", over(|r| r.cnn.macro_f1.mean), "");
    table.row("CNN AUROC (micro)", over(|r| r.cnn.auroc_micro.mean), "");
    table.row(&format!("ε (δ = {})", t.delta), over(|r| r.epsilon), &shown(PUBLISHED_EPSILON.to_string()));
    table.row("D steps", over(|r| r.d_steps as f64), "");
    table.row("training time per run (s)", over(|r| r.train_s), &shown("≈ 28,800 (8 h, one V100; n_D = 50)".into()));
    table.note("The CNN's epoch is chosen on synthetic images held out of its training set, never on real data.");
    if !departures.is_empty() {
        table.note(&format!("Not the published settings: {}.", departures.join(", ")));
    }
    table.finish(out)
}

/// Trains (or continues, or reuses) run `root`'s generator, samples its released set and scores it.
fn one_run(plan: &Plan, root: &Path, seed: u64, train: &Dataset, test: &ImageSet, device: &Device) -> Result<RunResult> {
    let generator = root.join(GENERATOR_DIR);
    let state = train_generator(plan, &generator, seed, train, device)?;
    let synthetic = root.join(SYNTHETIC_DIR);
    released_set(&synthetic, &generator, plan.per_class, seed, state.step, device)?;
    let config = EvalConfig { seed, repeats: 1, epochs: Some(plan.eval_epochs) };
    let cnn = evaluate_released(&root.join(EVAL_FILE), &synthetic, Classifier::Cnn, &config, plan.per_class * CLASSES, test, device)?;
    Ok(RunResult { d_steps: state.step, g_steps: state.generator_adam_steps, epsilon: state.epsilon, train_s: state.wall_s, cnn })
}

/// The run in `dir`: started, continued from its checkpoint, or reused once it reached its planned
/// D steps (or its budget). A run made with other settings is refused. Returns the state saved with
/// the generator (checkpoint.json may lag it after a crash).
fn train_generator(plan: &Plan, dir: &Path, seed: u64, train: &Dataset, device: &Device) -> Result<DpsgdGanState> {
    let planned = DpsgdGanRunConfig::plan(&DpsgdGanSettings { seed, ..plan.training.clone() }, train, device)?;
    if dir.join(CONFIG).is_file() {
        let recorded: DpsgdGanRunConfig = read_json(&dir.join(CONFIG))?;
        same_settings(
            dir,
            &[
                ("--d-steps", recorded.steps.to_string(), planned.steps.to_string()),
                ("--d-steps-per-g-step", recorded.d_steps_per_g_step.to_string(), planned.d_steps_per_g_step.to_string()),
                ("--batch-size", recorded.batch_size.to_string(), planned.batch_size.to_string()),
                ("--noise-multiplier", recorded.noise_multiplier.to_string(), planned.noise_multiplier.to_string()),
                ("--width", recorded.width.to_string(), planned.width.to_string()),
                ("--seed", recorded.seed.to_string(), planned.seed.to_string()),
                ("--data (the training images' SHA-256)", recorded.data.images.sha256.clone(), planned.data.images.sha256.clone()),
                (
                    "the noise (--fast-noise, --replayable-noise)",
                    noise_setting(recorded.noise, recorded.noise_key),
                    noise_setting(planned.noise, planned.noise_key),
                ),
            ],
        )?;
        if !forget_if_never_checkpointed(dir)? {
            let state: DpsgdGanState = checkpoint_state(dir)?;
            if state.step >= recorded.steps || state.stopped.is_some() {
                return Ok(state);
            }
            eprintln!("continuing {} at D step {} of {}", dir.display(), state.step, recorded.steps);
            train_run(&mut DpsgdGanRun::resume(dir, device, None)?)?;
            return checkpoint_state(dir);
        }
    }
    train_run(&mut DpsgdGanRun::start(dir, planned, train, device)?)?;
    checkpoint_state(dir)
}

/// Trains `run` to its planned D steps or its budget, with a progress bar.
fn train_run(run: &mut DpsgdGanRun) -> Result<()> {
    let progress = Progress::new(run.steps_taken(), run.config().steps);
    let outcome = run.train(&progress)?;
    progress.finish();
    unless_interrupted(outcome.stop.signal())
}
