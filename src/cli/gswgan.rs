//! `dpgan train gs-wgan`: phase 1 (`warm-start`, the K discriminators, non-private) and phase 2
//! (the private generator, from a finished warm start), each resumable with `--resume`.
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use dpgan::data::{data_dir, Dataset, Split};
use dpgan::models::gswgan::GeneratorArch;
use dpgan::train::gswgan::group_checkpoint::CheckpointEvery;
use dpgan::train::gswgan::group_size::GroupSize;
use dpgan::train::gswgan::run::{Accounting, GsWganRunConfig, GsWganRunner, GsWganSettings, Outcome, Stop};
use dpgan::train::gswgan::warm_start_run::{WarmStartOutcome, WarmStartRun, WarmStartRunConfig, WarmStartSettings};
use dpgan::train::progress::Progress;
use dpgan::{Device, Error, Result};
use rand::TryRngCore;

/// Phase 2's options sit beside the `warm-start` subcommand: `dpgan train gs-wgan --warm-start DIR
/// --out DIR` trains the generator, `dpgan train gs-wgan warm-start ...` the discriminators.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GsWganArgs {
    #[command(subcommand)]
    phase: Option<Phase>,
    #[command(flatten)]
    private: PrivateArgs,
}

#[derive(Subcommand, Debug)]
enum Phase {
    /// Phase 1: K discriminators on K disjoint slices, G at a time (non-private, nothing released).
    WarmStart(WarmStartArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum GeneratorArg {
    Resnet,
    Dcgan,
}

impl GeneratorArg {
    pub(super) fn value(self) -> GeneratorArch {
        match self {
            GeneratorArg::Resnet => GeneratorArch::Resnet,
            GeneratorArg::Dcgan => GeneratorArch::Dcgan,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum AccountingArg {
    /// B·T compositions, subsampling without replacement at 1/k (the published ε).
    AsPublished,
    /// One Gaussian of noise multiplier σ/√B per iteration on the slice chosen with probability
    /// 1/k, bounded by joint convexity: a proof, with far larger ε.
    PerStep,
}

impl AccountingArg {
    pub(super) fn value(self) -> Accounting {
        match self {
            AccountingArg::AsPublished => Accounting::AsPublished,
            AccountingArg::PerStep => Accounting::PerStep,
        }
    }
}

/// Settings are options without clap defaults so that `--resume` can refuse them; the defaults
/// are in each help line.
#[derive(Args, Debug)]
struct WarmStartArgs {
    /// Training data: a directory with MNIST-layout IDX files, or a name under $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The run directory to create (config.json, metrics.jsonl, discriminators/).
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the warm start in RUN_DIR: groups already written are kept, and the group under
    /// way goes on from its checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// K, the number of discriminators (and disjoint data slices) [default: 1000].
    #[arg(long)]
    discriminators: Option<usize>,
    /// G, discriminators trained together (memory grows with G), or `auto`: on a GPU the largest
    /// group that fits 80% of its free memory, measured by a one-iteration probe; 50 on the CPU
    /// [default: auto].
    #[arg(long, value_name = "N|auto")]
    group_size: Option<GroupSize>,
    /// Iterations per discriminator [default: 2001].
    #[arg(long)]
    iterations: Option<u64>,
    /// The throwaway generators' architecture [default: resnet].
    #[arg(long, value_enum)]
    generator: Option<GeneratorArg>,
    /// Seed of the permutation, the initialisations and the draws [default: drawn from the OS].
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
    /// B, the real batch size [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Width scale of the models (64 is the published size; smaller ones only for tests).
    #[arg(long, hide = true)]
    base: Option<usize>,
    /// Checkpoint the group under way every N iterations (500) or every stretch of wall time
    /// (30s, 10m, 2h), so `--resume` goes on inside it; a signal checkpoints it too [default: 10m].
    #[arg(long, value_name = "N|DURATION")]
    checkpoint_every: Option<CheckpointEvery>,
    /// Train the discriminators' matmuls and convolutions on TF32 tensor cores where large enough
    /// (CUDA, sm_80 or newer: 10-bit mantissa inputs, f32 accumulation); recorded in config.json.
    #[arg(long)]
    tf32: bool,
}

#[derive(Args, Debug)]
struct PrivateArgs {
    /// A finished warm start (`dpgan train gs-wgan warm-start`).
    #[arg(long, value_name = "WARM_START_DIR")]
    warm_start: Option<PathBuf>,
    /// The run directory to create (config.json, metrics.jsonl, checkpoints, sample grids).
    #[arg(long, value_name = "RUN_DIR")]
    out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its checkpoint (with its own settings).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "warm_start"])]
    resume: Option<PathBuf>,
    /// Generator iterations (on --resume: the new total) [default: 20000].
    #[arg(long)]
    iterations: Option<u64>,
    /// The generator's architecture [default: resnet].
    #[arg(long, value_enum)]
    generator: Option<GeneratorArg>,
    /// σ of the sanitiser [default: 1.07, or calibrated to --target-epsilon].
    #[arg(long, allow_negative_numbers = true)]
    noise_multiplier: Option<f64>,
    /// The ε budget at δ under --accounting (per-step unless given): σ is calibrated to it under
    /// that accounting when --noise-multiplier is absent, and the run stops (with a checkpoint)
    /// before any iteration that would pass it. Per-step needs far more noise than the published
    /// 1.07 (σ ≈ 15.1 for ε = 10 at k = 1000, B = 32, 20,000 iterations); `reproduce` keeps the
    /// published σ = 1.07, governed as-published by default.
    #[arg(long, allow_negative_numbers = true)]
    target_epsilon: Option<f64>,
    /// Which accounting governs the budget; both are reported [default: per-step].
    #[arg(long, value_enum)]
    accounting: Option<AccountingArg>,
    /// δ [default: 1e-5].
    #[arg(long, allow_negative_numbers = true)]
    delta: Option<f64>,
    /// Seed of G's initialisation and the latent draws; the noise and the choice of discriminator
    /// come from a secret key [default: drawn from the OS].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    noise: super::noise::NoiseArgs,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
    /// Iterations between metrics lines [default: 100].
    #[arg(long)]
    log_every: Option<u64>,
    /// Iterations between sample grids [default: 1000].
    #[arg(long)]
    sample_every: Option<u64>,
    /// Iterations between checkpoints [default: 1000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// CUDA only: run each iteration on a working critic (the selected one copied in and out) and
    /// replay it from a CUDA graph, one per pattern of batch sizes. The same values as without;
    /// recorded, so a resumed run keeps it.
    #[arg(long)]
    cuda_graph: bool,
    /// CUDA only (sm_80+): let G's and D's matmuls and convolutions run on TF32 tensor cores. The
    /// sanitiser's row norms, clipping and noise stay in f32, so ε is unchanged; recorded, so a
    /// resumed run keeps it.
    #[arg(long)]
    tf32: bool,
}

pub fn run(args: &GsWganArgs) -> Result<()> {
    match &args.phase {
        Some(Phase::WarmStart(a)) => warm_start(a),
        None => private(&args.private),
    }
}

pub(super) fn seed_or_os(seed: Option<u64>) -> Result<u64> {
    match seed {
        Some(seed) => Ok(seed),
        None => {
            let seed = rand::rngs::OsRng.try_next_u64().map_err(|e| Error::Invalid(format!("cannot draw a seed from the OS: {e}")))?;
            eprintln!("seed: {seed} (drawn from the OS; recorded in config.json)");
            Ok(seed)
        }
    }
}

fn warm_start(args: &WarmStartArgs) -> Result<()> {
    let device = super::choose_device(args.device.as_deref())?;
    dpgan::train::interrupt::install()?;
    let mut run = match &args.resume {
        Some(root) => {
            super::refuse_on_resume(
                &[
                    ("--data", args.data.is_some()),
                    ("--discriminators", args.discriminators.is_some()),
                    ("--group-size", args.group_size.is_some()),
                    ("--iterations", args.iterations.is_some()),
                    ("--generator", args.generator.is_some()),
                    ("--seed", args.seed.is_some()),
                    ("--batch-size", args.batch_size.is_some()),
                    ("--base", args.base.is_some()),
                    ("--checkpoint-every", args.checkpoint_every.is_some()),
                    ("--tf32", args.tf32),
                ],
                "--device",
            )?;
            WarmStartRun::resume(root, &device)?
        }
        None => {
            let out = args.out.as_deref().ok_or_else(|| Error::Invalid("give --out RUN_DIR (or --resume RUN_DIR)".into()))?;
            let d = WarmStartSettings::default();
            let settings = WarmStartSettings {
                seed: seed_or_os(args.seed)?,
                discriminators: args.discriminators.unwrap_or(d.discriminators),
                group_size: args.group_size.unwrap_or(d.group_size),
                iterations: args.iterations.unwrap_or(d.iterations),
                generator: args.generator.map_or(d.generator, GeneratorArg::value),
                base: args.base.unwrap_or(d.base),
                batch_size: args.batch_size.unwrap_or(d.batch_size),
                checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
                tf32: args.tf32,
            };
            let data = Dataset::load(&data_dir(args.data.as_deref())?, Split::Train)?;
            start_warm_start(out, &settings, &data, &device)?
        }
    };
    let done_before = run.iterations_done();
    let outcome = train_warm_start(&mut run)?;
    let root = args.resume.as_deref().or(args.out.as_deref()).unwrap_or(Path::new("."));
    let checkpointed = match outcome.checkpointed {
        Some((group, iteration)) => format!(", group {group} checkpointed at iteration {iteration} of {}", run.config().iterations),
        None => String::new(),
    };
    let rate = throughput(run.iterations_done() - done_before, outcome.wall_s, run.config());
    super::emit(&format!(
        "warm start: {} groups trained, {} already done{checkpointed}, in {:.1} s on {device}{rate}\nrun directory: {} (private: it \
         holds discriminators trained on the real data; use it with `dpgan train gs-wgan --warm-start {}`)\n",
        outcome.groups_trained,
        outcome.groups_skipped,
        outcome.wall_s,
        root.display(),
        root.display(),
    ))?;
    match outcome.interrupted {
        Some(signal) => Err(super::interrupted(signal, &format!("dpgan train gs-wgan warm-start --resume {}", root.display()))),
        None => Ok(()),
    }
}

/// The warm start's pace, `; N discriminator-iterations/s, all K × I at this pace: T`, or nothing
/// when too little ran to measure it.
fn throughput(iterations: u64, wall_s: f64, config: &WarmStartRunConfig) -> String {
    if iterations == 0 || wall_s <= 0.0 {
        return String::new();
    }
    let per_s = iterations as f64 / wall_s;
    let total = config.discriminators as f64 * config.iterations as f64;
    format!(
        "; {per_s:.1} discriminator-iterations/s, all {} × {} at this pace: {}",
        config.discriminators,
        config.iterations,
        human_duration(total / per_s)
    )
}

/// Seconds as `42 s`, `12.5 min` or `3.2 h`.
fn human_duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Plans a warm start of `data` in `out` with `settings`, says what it will train, and creates it.
pub(super) fn start_warm_start(out: &Path, settings: &WarmStartSettings, data: &Dataset, device: &Device) -> Result<WarmStartRun> {
    let (config, group_choice) = WarmStartRunConfig::plan_with_group_choice(settings, data, device)?;
    eprintln!(
        "gs-wgan warm start: {} discriminators in {} groups of up to {group_choice}, {} iterations each, slices of {} records; \
         the group under way checkpointed every {}",
        config.discriminators,
        config.groups(),
        config.iterations,
        config.data.records / config.discriminators,
        match config.checkpoint_every {
            CheckpointEvery::Iterations(n) => format!("{n} iterations"),
            every => every.to_string(),
        }
    );
    WarmStartRun::start(out, config, data, device)
}

/// Trains every group of `run` not yet written, with a progress bar counting discriminators.
pub(super) fn train_warm_start(run: &mut WarmStartRun) -> Result<WarmStartOutcome> {
    // Counted in discriminator-iterations, so that the rate and the ETA move within a group.
    let iterations = run.config().iterations;
    let progress = Progress::new(run.iterations_done(), run.config().discriminators as u64 * iterations);
    let outcome = run.train(&progress)?;
    progress.finish();
    Ok(outcome)
}

/// Trains phase 2 to its planned end or its budget, with a progress bar counting iterations.
pub(super) fn train_private(run: &mut GsWganRunner) -> Result<Outcome> {
    eprintln!("{}", run.critic_placement());
    let progress = Progress::new(run.iterations_done(), run.config().iterations);
    let outcome = run.train(&progress)?;
    progress.finish();
    if let Some(c) = run.iteration_counts() {
        eprintln!(
            "iterations on the working critic: {} replayed from {} CUDA graphs ({} captured there), {} eager with their values bound, {} eager",
            c.replayed, c.captured, c.captured, c.bound, c.eager
        );
    }
    if let Some(why) = run.capture_refusal() {
        eprintln!(
            "warning: the driver refused to capture an iteration into a CUDA graph ({why}); the iterations no graph \
             replays were taken eagerly from there (the same iterations, more launches)"
        );
    }
    Ok(outcome)
}

fn private(args: &PrivateArgs) -> Result<()> {
    let device = super::choose_device(args.device.as_deref())?;
    dpgan::train::interrupt::install()?;
    let (mut run, root) = match &args.resume {
        Some(root) => {
            super::refuse_on_resume(
                &[
                    ("--generator", args.generator.is_some()),
                    ("--noise-multiplier", args.noise_multiplier.is_some()),
                    ("--target-epsilon", args.target_epsilon.is_some()),
                    ("--accounting", args.accounting.is_some()),
                    ("--delta", args.delta.is_some()),
                    ("--seed", args.seed.is_some()),
                    ("--log-every", args.log_every.is_some()),
                    ("--sample-every", args.sample_every.is_some()),
                    ("--checkpoint-every", args.checkpoint_every.is_some()),
                    ("--cuda-graph", args.cuda_graph),
                    ("--tf32", args.tf32),
                    args.noise.given()[0],
                    args.noise.given()[1],
                ],
                "--iterations and --device",
            )?;
            let run = GsWganRunner::resume(root, &device, args.iterations)?;
            super::noise::warn_if_not_private(run.config().noise_key);
            eprintln!("resuming {} at iteration {} of {}", root.display(), run.iterations_done(), run.config().iterations);
            (run, root.clone())
        }
        None => {
            let (Some(warm_start), Some(out)) = (&args.warm_start, &args.out) else {
                return Err(Error::Invalid(
                    "give --warm-start WARM_START_DIR and --out RUN_DIR (or --resume RUN_DIR); train the discriminators first \
                     with `dpgan train gs-wgan warm-start`"
                        .into(),
                ));
            };
            if dpgan::train::run_dir::RunDir::forget_if_never_checkpointed(out)? {
                eprintln!("{} stopped before its first checkpoint: starting it again", out.display());
            }
            super::train::check_cuda_graph(args.cuda_graph, &device)?;
            let d = GsWganSettings::default();
            let settings = GsWganSettings {
                warm_start: warm_start.clone(),
                seed: seed_or_os(args.seed)?,
                iterations: args.iterations.unwrap_or(d.iterations),
                generator: args.generator.map_or(d.generator, GeneratorArg::value),
                noise_multiplier: match (args.noise_multiplier, args.target_epsilon) {
                    (Some(sigma), _) => Some(sigma),
                    (None, Some(_)) => None,
                    (None, None) => d.noise_multiplier,
                },
                target_epsilon: args.target_epsilon,
                delta: args.delta.unwrap_or(d.delta),
                accounting: args.accounting.map_or(d.accounting, AccountingArg::value),
                noise: args.noise.mode(),
                replayable_noise: args.noise.replayable_noise,
                log_every: args.log_every.unwrap_or(d.log_every),
                sample_every: args.sample_every.unwrap_or(d.sample_every),
                checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
                cuda_graph: args.cuda_graph,
                tf32: args.tf32,
            };
            let config = GsWganRunConfig::plan(&settings, &device)?;
            announce(&config)?;
            (GsWganRunner::start(out, config, &device)?, out.clone())
        }
    };
    let outcome = train_private(&mut run)?;
    let config = run.config();
    let mut report = String::new();
    if let Stop::Budget(why) = &outcome.stop {
        report += &format!("stopped at iteration {} of {}: {why}\n", outcome.iterations, config.iterations);
    }
    report += &format!(
        "trained {} iterations in {:.1} s on {device}\n\
         ε = {:.4} as-published (order {}), {:.4} per-step (order {}) at δ = {}; k = {}, B = {}, σ = {}; {} governs the budget\n\
         run directory: {} (private: its checkpoint holds the secret noise key, and it holds the discriminators; release \
         only `dpgan sample` or `dpgan export` output){}\n",
        outcome.iterations,
        outcome.wall_s,
        outcome.as_published.epsilon,
        outcome.as_published.order,
        outcome.per_step.epsilon,
        outcome.per_step.order,
        config.delta,
        config.discriminators,
        config.batch_size,
        config.noise_multiplier,
        config.accounting.name(),
        root.display(),
        config.noise_key.warning().map(|w| format!("\n{w}")).unwrap_or_default(),
    );
    super::emit(&report)?;
    super::stop_status(&outcome.stop, &format!("dpgan train gs-wgan --resume {}", root.display()))
}

/// Says what the run will spend under both accountings, before it starts.
pub(super) fn announce(config: &GsWganRunConfig) -> Result<()> {
    super::noise::warn_if_not_private(config.noise_key);
    let (published, per_step) = (config.planned_epsilon(Accounting::AsPublished)?, config.planned_epsilon(Accounting::PerStep)?);
    let governing = config.accounting.name();
    let calibrated = match config.target_epsilon {
        Some(t) if config.noise_multiplier_calibrated => format!(" (calibrated to ε = {t} under {governing})"),
        _ => String::new(),
    };
    eprintln!(
        "gs-wgan: {} iterations, k = {}, B = {}, σ = {}{calibrated}, δ = {}: ε = {:.4} as-published, {:.4} per-step if every \
         iteration runs; {governing} governs{}",
        config.iterations,
        config.discriminators,
        config.batch_size,
        config.noise_multiplier,
        config.delta,
        published.epsilon,
        per_step.epsilon,
        config.target_epsilon.map(|t| format!(" (budget ε = {t})")).unwrap_or_default(),
    );
    Ok(())
}
