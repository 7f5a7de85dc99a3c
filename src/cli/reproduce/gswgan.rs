//! `dpgan reproduce gs-wgan`: docs/algorithms.md §2's experiment. Each run, in `OUT/run-K/`:
//! `warm-start/` (phase 1, the K discriminators), `generator/` (phase 2, the private generator),
//! `synthetic/` (6,000 images per class from the EMA generator G_s, as float NPY so that the
//! classifier sees exactly what G_s produced) and `eval-lenet.json` (LeNet-5 trained on them, scored
//! on the real test set). Each stage is reused once finished and continued where it stopped
//! otherwise; a stage on disk made with other settings is an error, never silently mixed in.
use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use dpgan::data::{data_dir, Dataset, PixelScale, Split};
use dpgan::dp::KeySource;
use dpgan::eval::{Classifier, EvalConfig, EvalReport, ImageSet, Metric};
use dpgan::models::gswgan::CLASSES;
use dpgan::train::dpcgan::run::DataRecord;
use dpgan::train::gswgan::group_size::GroupSize;
use dpgan::train::gswgan::run::{Accounting, GsWganRunConfig, GsWganRunner, GsWganSettings, GsWganState};
use dpgan::train::gswgan::warm_start_run::{arch_name, group_path, WarmStartRun, WarmStartRunConfig, WarmStartSettings, DISCRIMINATORS};
use dpgan::train::replay::{stream, Purpose};
use dpgan::train::run_dir::{checkpoint_state, read_json, CHECKPOINT, CONFIG, METRICS};
use dpgan::{Device, Error, Result};
use rand::Rng;

use super::{
    evaluate_released, forget_if_never_checkpointed, noise_setting, released_set, run_slots, same_settings, unless_interrupted,
    write_results, Published, RunsArgs, Table,
};
use crate::cli::gswgan::{announce, start_warm_start, train_private, train_warm_start, AccountingArg, GeneratorArg};
use crate::cli::{choose_device, emit};

/// docs/algorithms.md §2: the published ε (as-published accounting, δ = 1e-5); the accuracies are
/// [`Published::accuracy`].
const PUBLISHED_EPSILON: f64 = 10.0;
/// docs/algorithms.md §2's evaluation set: 6,000 generated images per class.
const PER_CLASS: usize = 6000;
const WARM_START_DIR: &str = "warm-start";
const GENERATOR_DIR: &str = "generator";
const SYNTHETIC_DIR: &str = "synthetic";
const EVAL_FILE: &str = "eval-lenet.json";

#[derive(Args, Debug)]
pub(super) struct GsWganReproduceArgs {
    /// MNIST or Fashion-MNIST: a directory with the IDX files, or a name under $DPGAN_DATA. The
    /// directory's name (mnist, fashion-mnist) says which published accuracy to show.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    slots: RunsArgs,
    /// K, the number of discriminators (and disjoint data slices) [default: 1000].
    #[arg(long)]
    discriminators: Option<usize>,
    /// G, discriminators warm-started together (memory grows with G), or `auto`: on a GPU the
    /// largest group that fits 80% of its free memory, measured by a one-iteration probe; 50 on the
    /// CPU [default: auto].
    #[arg(long, value_name = "N|auto")]
    group_size: Option<GroupSize>,
    /// Warm-start iterations per discriminator [default: 2001].
    #[arg(long)]
    warm_start_iterations: Option<u64>,
    /// Private generator iterations (phase 2) [default: 20000].
    #[arg(long)]
    iterations: Option<u64>,
    /// The generator's architecture, in both phases [default: resnet].
    #[arg(long, value_enum)]
    generator: Option<GeneratorArg>,
    /// The accounting a run's ε is stated in; both are reported [default: as-published, the
    /// published ε = 10's].
    #[arg(long, value_enum)]
    accounting: Option<AccountingArg>,
    /// Generated images per class to train LeNet-5 on [default: 6000, the published protocol];
    /// fewer is shorter, for a quick look.
    #[arg(long)]
    per_class: Option<usize>,
    /// LeNet-5's epochs [default: the recipe's 50]; fewer is shorter, for a quick look.
    #[arg(long)]
    eval_epochs: Option<usize>,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
    /// Width scale of the models (64 is the published size; smaller ones only for tests).
    #[arg(long, hide = true)]
    base: Option<usize>,
}

/// GS-WGAN's published numbers for each data set (docs/algorithms.md §2).
impl Published {
    /// GS-WGAN's LeNet-5 accuracy at ε = 10.
    fn accuracy(self) -> f64 {
        match self {
            Published::Mnist => 0.80,
            Published::FashionMnist => 0.65,
        }
    }

    /// The same kind of CNN trained on the real training set.
    fn real_accuracy(self) -> f64 {
        match self {
            Published::Mnist => 0.993,
            Published::FashionMnist => 0.908,
        }
    }
}

/// The settings every run of the command shares, defaults filled in.
struct Plan {
    warm_start: WarmStartSettings,
    phase_two: GsWganSettings,
    per_class: usize,
    eval_epochs: usize,
}

impl Plan {
    fn new(args: &GsWganReproduceArgs) -> Result<Plan> {
        let (w, p) = (WarmStartSettings::default(), GsWganSettings::default());
        let generator = args.generator.map_or(p.generator, GeneratorArg::value);
        let per_class = args.per_class.unwrap_or(PER_CLASS);
        if per_class == 0 {
            return Err(Error::Invalid("--per-class must be at least 1".into()));
        }
        let eval_epochs = match args.eval_epochs {
            Some(0) => return Err(Error::Invalid("--eval-epochs must be at least 1".into())),
            Some(e) => e,
            None => Classifier::Lenet.default_epochs().ok_or_else(|| Error::Invalid("LeNet-5 has no default epochs".into()))?,
        };
        Ok(Plan {
            warm_start: WarmStartSettings {
                seed: 0,
                discriminators: args.discriminators.unwrap_or(w.discriminators),
                group_size: args.group_size.unwrap_or(w.group_size),
                iterations: args.warm_start_iterations.unwrap_or(w.iterations),
                generator,
                base: args.base.unwrap_or(w.base),
                batch_size: w.batch_size,
                checkpoint_every: w.checkpoint_every,
                tf32: false,
            },
            phase_two: GsWganSettings {
                iterations: args.iterations.unwrap_or(p.iterations),
                generator,
                accounting: args.accounting.map_or(Accounting::AsPublished, AccountingArg::value),
                noise: args.slots.noise.mode(),
                replayable_noise: args.slots.noise.replayable_noise,
                ..p
            },
            per_class,
            eval_epochs,
        })
    }

    /// Where these settings leave docs/algorithms.md §2's published ones, for the table's reader.
    fn departures(&self) -> Vec<String> {
        let (w, p) = (WarmStartSettings::default(), GsWganSettings::default());
        let mut out = Vec::new();
        let mut differs = |what: &str, ours: String, published: String| {
            if ours != published {
                out.push(format!("{what} {ours} (published: {published})"));
            }
        };
        differs("discriminators", self.warm_start.discriminators.to_string(), w.discriminators.to_string());
        differs("warm-start iterations", self.warm_start.iterations.to_string(), w.iterations.to_string());
        differs("iterations", self.phase_two.iterations.to_string(), p.iterations.to_string());
        differs("generator", arch_name(self.phase_two.generator).into(), arch_name(p.generator).into());
        differs("model width", self.warm_start.base.to_string(), w.base.to_string());
        differs("images per class", self.per_class.to_string(), PER_CLASS.to_string());
        let epochs = Classifier::Lenet.default_epochs().unwrap_or_default();
        differs("LeNet-5 epochs", self.eval_epochs.to_string(), epochs.to_string());
        out
    }
}

/// One run's results.
struct RunResult {
    seed: u64,
    phase_two_seed: u64,
    iterations: u64,
    epsilon_as_published: f64,
    epsilon_per_step: f64,
    warm_start_s: f64,
    phase_two_s: f64,
    lenet: EvalReport,
}

pub(super) fn run(args: &GsWganReproduceArgs) -> Result<()> {
    let slots = run_slots(&args.slots)?;
    let plan = Plan::new(args)?;
    let device = choose_device(args.device.as_deref())?;
    let data = data_dir(args.data.as_deref())?;
    let published = Published::of(&data);
    let (train, test) = (Dataset::load(&data, Split::Train)?, Dataset::load(&data, Split::Test)?);
    let test_pixels = test.pixels_f32(PixelScale::Unit);
    let test_set = ImageSet::new(&test_pixels, test.labels(), 28, 28, "the real test set")?;
    let mut results = Vec::new();
    for slot in &slots {
        let result = one_run(&plan, &slot.root, slot.seed, &train, &test_set, &device)?;
        eprintln!(
            "run {}/{}: ε = {:.4} as-published, {:.4} per-step; LeNet-5 accuracy {:.4}",
            slot.number, args.slots.runs, result.epsilon_as_published, result.epsilon_per_step, result.lenet.accuracy.mean
        );
        results.push(result);
    }

    let over = |f: fn(&RunResult) -> f64| Metric::over(results.iter().map(f).collect());
    let json = serde_json::json!({
        "experiment": "gs-wgan",
        "dataset": published.map(Published::name),
        "data": data,
        "runs": args.slots.runs,
        "device": device.to_string(),
        "settings": {
            "discriminators": plan.warm_start.discriminators,
            "group_size": plan.warm_start.group_size.to_string(),
            "warm_start_iterations": plan.warm_start.iterations,
            "iterations": plan.phase_two.iterations,
            "generator": arch_name(plan.phase_two.generator),
            "base": plan.warm_start.base,
            "batch_size": plan.warm_start.batch_size,
            "noise_multiplier": plan.phase_two.noise_multiplier,
            "delta": plan.phase_two.delta,
            "accounting": plan.phase_two.accounting,
            "per_class": plan.per_class,
            "eval_epochs": plan.eval_epochs,
        },
        "accuracy": over(|r| r.lenet.accuracy.mean),
        "macro_f1": over(|r| r.lenet.macro_f1.mean),
        "epsilon_as_published": over(|r| r.epsilon_as_published),
        "epsilon_per_step": over(|r| r.epsilon_per_step),
        "delta": plan.phase_two.delta,
        "warm_start_wall_s": over(|r| r.warm_start_s),
        "phase_two_wall_s": over(|r| r.phase_two_s),
        "per_run": results.iter().zip(&slots).map(|(r, slot)| serde_json::json!({
            "run": slot.root,
            "seed": r.seed,
            "phase_two_seed": r.phase_two_seed,
            "iterations": r.iterations,
            "epsilon_as_published": r.epsilon_as_published,
            "epsilon_per_step": r.epsilon_per_step,
            "lenet": r.lenet,
        })).collect::<Vec<_>>(),
        "published": {
            "accuracy": published.map(Published::accuracy),
            "real_data_accuracy": published.map(Published::real_accuracy),
            "epsilon_as_published": PUBLISHED_EPSILON,
            "delta": 1e-5,
        },
    });
    write_results(&args.slots.out, &json)?;
    emit(&table(args, &plan, published, &data, &results))
}

fn table(args: &GsWganReproduceArgs, plan: &Plan, published: Option<Published>, data: &Path, results: &[RunResult]) -> String {
    let over = |f: fn(&RunResult) -> f64| results.iter().map(f).collect::<Vec<_>>();
    let title = format!(
        "GS-WGAN on {}, LeNet-5 trained on {} generated images",
        published.map_or_else(|| data.display().to_string(), |p| p.title().to_string()),
        plan.per_class * CLASSES
    );
    let mut t = Table::new(&title, results.len());
    let accuracy = published.map_or_else(String::new, |p| format!("{:.2}", p.accuracy()));
    t.row("LeNet-5 accuracy on the real test set", over(|r| r.lenet.accuracy.mean), &accuracy);
    t.row("macro-F1", over(|r| r.lenet.macro_f1.mean), "");
    t.row("ε, as-published accounting", over(|r| r.epsilon_as_published), &PUBLISHED_EPSILON.to_string());
    t.row("ε, per-step accounting", over(|r| r.epsilon_per_step), "");
    t.row("warm start time per run (s)", over(|r| r.warm_start_s), "");
    t.row("phase 2 time per run (s)", over(|r| r.phase_two_s), "≈ 6,700 (a re-run, hardware not stated)");
    t.note(&format!(
        "δ = {:e}. as-published counts each of a step's B sanitised gradients as its own query (how the paper reaches ε = 10); \
         per-step counts each generator step once, since one record can touch all B gradients, and is a proven bound for \
         choosing one of k slices per step; `{}` is the run's ε.",
        plan.phase_two.delta,
        plan.phase_two.accounting.name()
    ));
    match published {
        Some(p) => t.note(&format!("The same kind of CNN trained on the real {} training set: {}.", p.title(), p.real_accuracy())),
        None => {
            t.note(&format!("{} is named neither mnist nor fashion-mnist: there is no published accuracy to compare with.", data.display()))
        }
    }
    let departures = plan.departures();
    if !departures.is_empty() {
        t.note(&format!("Not the published settings: {}.", departures.join(", ")));
    }
    t.finish(&args.slots.out)
}

/// Phase 2's seed, drawn from the run's seed so that its streams are independent of the warm
/// start's (which uses the run's seed itself).
fn phase_two_seed(seed: u64) -> u64 {
    stream(seed, Purpose::Generator, u64::MAX).random()
}

/// Warm start, phase 2, sampling and evaluation of the run in `root`, each skipped when finished.
fn one_run(plan: &Plan, root: &Path, seed: u64, train: &Dataset, test: &ImageSet, device: &Device) -> Result<RunResult> {
    let warm_dir = root.join(WARM_START_DIR);
    let warm_start_s = warm_start(plan, &warm_dir, seed, train, device)?;
    let generator_dir = root.join(GENERATOR_DIR);
    let phase_two_seed = phase_two_seed(seed);
    let state = phase_two(plan, &generator_dir, &warm_dir, phase_two_seed, device)?;

    let synthetic = root.join(SYNTHETIC_DIR);
    released_set(&synthetic, &generator_dir, plan.per_class, seed, state.iteration, device)?;
    let lenet = lenet(plan, &root.join(EVAL_FILE), &synthetic, seed, test, device)?;
    Ok(RunResult {
        seed,
        phase_two_seed,
        iterations: state.iteration,
        epsilon_as_published: state.epsilon_as_published,
        epsilon_per_step: state.epsilon_per_step,
        warm_start_s,
        phase_two_s: state.wall_s,
        lenet,
    })
}

/// Phase 1 in `dir`: started, continued or reused. Returns its training time, the sum of its
/// groups' times (so a resumed warm start counts each group once).
fn warm_start(plan: &Plan, dir: &Path, seed: u64, train: &Dataset, device: &Device) -> Result<f64> {
    let settings = WarmStartSettings { seed, ..plan.warm_start.clone() };
    if dir.join(CONFIG).is_file() {
        let recorded: WarmStartRunConfig = read_json(&dir.join(CONFIG))?;
        same_settings(
            dir,
            &[
                ("--discriminators", recorded.discriminators.to_string(), settings.discriminators.to_string()),
                (
                    "--group-size",
                    recorded.group_size.to_string(),
                    match settings.group_size {
                        // Whatever auto measured when the warm start began is its size.
                        GroupSize::Auto => recorded.group_size.to_string(),
                        GroupSize::Fixed(n) => n.min(settings.discriminators).to_string(),
                    },
                ),
                ("--warm-start-iterations", recorded.iterations.to_string(), settings.iterations.to_string()),
                ("--generator", recorded.generator.clone(), arch_name(settings.generator).to_string()),
                ("--seed", recorded.seed.to_string(), seed.to_string()),
                ("--base", recorded.base.to_string(), settings.base.to_string()),
                ("--data (the training images' SHA-256)", recorded.data.images.sha256.clone(), DataRecord::of(train)?.images.sha256),
            ],
        )?;
        if (0..recorded.groups()).any(|g| !group_path(dir, g).is_file()) {
            eprintln!("continuing the warm start in {}", dir.display());
            unless_interrupted(train_warm_start(&mut WarmStartRun::resume(dir, device)?)?.interrupted)?;
        }
    } else {
        unless_interrupted(train_warm_start(&mut start_warm_start(dir, &settings, train, device)?)?.interrupted)?;
    }
    warm_start_seconds(dir)
}

/// The warm start's training time from its metrics: one line per group trained.
fn warm_start_seconds(dir: &Path) -> Result<f64> {
    let path = dir.join(METRICS);
    let text = fs::read_to_string(&path).map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::file(&path, format!("not what dpgan wrote: {e}")))?;
        total += record["group_s"].as_f64().ok_or_else(|| Error::file(&path, "a line without group_s"))?;
    }
    if !dir.join(DISCRIMINATORS).is_dir() {
        return Err(Error::file(dir, "has no discriminators/ after its warm start"));
    }
    Ok(total)
}

/// Phase 2 in `dir` from the warm start in `warm`: started, continued from its checkpoint, or
/// reused once it reached its planned iterations. Returns its final state (the one saved with G and
/// G_s, never checkpoint.json, which may lag it after a crash).
fn phase_two(plan: &Plan, dir: &Path, warm: &Path, seed: u64, device: &Device) -> Result<GsWganState> {
    let settings = GsWganSettings { warm_start: warm.to_path_buf(), seed, ..plan.phase_two.clone() };
    if dir.join(CONFIG).is_file() {
        let recorded: GsWganRunConfig = read_json(&dir.join(CONFIG))?;
        same_settings(
            dir,
            &[
                ("--iterations", recorded.iterations.to_string(), settings.iterations.to_string()),
                ("--generator", recorded.generator.clone(), arch_name(settings.generator).to_string()),
                ("--accounting", recorded.accounting.name().to_string(), settings.accounting.name().to_string()),
                ("--seed", recorded.seed.to_string(), seed.to_string()),
                ("the warm start", recorded.warm_start.display().to_string(), warm.display().to_string()),
                (
                    "the noise (--fast-noise, --replayable-noise)",
                    noise_setting(recorded.noise, recorded.noise_key),
                    noise_setting(settings.noise, KeySource::from_flag(settings.replayable_noise)),
                ),
            ],
        )?;
        if !forget_if_never_checkpointed(dir)? {
            let state: GsWganState = checkpoint_state(dir)?;
            state.check_format(&dir.join(CHECKPOINT))?;
            if state.iteration >= recorded.iterations || state.stopped.is_some() {
                return Ok(state);
            }
            let mut run = GsWganRunner::resume(dir, device, None)?;
            eprintln!("continuing {} at iteration {} of {}", dir.display(), run.iterations_done(), run.config().iterations);
            unless_interrupted(train_private(&mut run)?.stop.signal())?;
            return checkpoint_state(dir);
        }
    }
    let config = GsWganRunConfig::plan(&settings, device)?;
    announce(&config)?;
    let mut run = GsWganRunner::start(dir, config, device)?;
    unless_interrupted(train_private(&mut run)?.stop.signal())?;
    checkpoint_state(dir)
}

/// LeNet-5 trained on the released set in `synthetic` (seed `seed`) and scored on the real test
/// set; reused from `path` while it is up to date with the set.
fn lenet(plan: &Plan, path: &Path, synthetic: &Path, seed: u64, test: &ImageSet, device: &Device) -> Result<EvalReport> {
    let config = EvalConfig { seed, repeats: 1, epochs: Some(plan.eval_epochs) };
    evaluate_released(path, synthetic, Classifier::Lenet, &config, plan.per_class * CLASSES, test, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_data_set_is_named_by_its_directory() {
        for (dir, expected) in [
            ("/data/mnist", Some(Published::Mnist)),
            ("data/mnist/", Some(Published::Mnist)),
            ("/data/fashion-mnist", Some(Published::FashionMnist)),
            ("/data/Fashion_MNIST", Some(Published::FashionMnist)),
            ("/data/emnist", None),
            ("/data", None),
            (".", None),
        ] {
            assert_eq!(Published::of(Path::new(dir)), expected, "{dir}");
        }
        assert_eq!((Published::Mnist.accuracy(), Published::FashionMnist.accuracy()), (0.80, 0.65), "docs/algorithms.md §2's table");
    }
}
