//! `dpgan train dp-cgan`: a DP-CGAN run from the command line, with docs/algorithms.md §1's published
//! settings as defaults (except Poisson sampling, which the ε is a proof for), or `--resume`.
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use dpgan::data::{data_dir, Dataset, Split};
use dpgan::train::dp_sgd_run::{self, other_conversion, PrivateRun};
use dpgan::train::dpcgan::run::{AdamRecord, DpCganRun, DpCganRunConfig, DpCganSettings, LrSchedule, SamplingKind, Stop};
use dpgan::train::progress::Progress;
use dpgan::{Error, Result};
use rand::TryRngCore;

use super::privacy::{ConversionArg, OrdersArg};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    algorithm: Algorithm,
}

#[derive(Subcommand, Debug)]
enum Algorithm {
    /// DP-CGAN (Torkzadehmahani et al. 2019): D trained with DP-SGD, G through D.
    DpCgan(Box<DpCganArgs>),
    /// GS-WGAN (Chen et al. 2020): `warm-start` trains the K discriminators, then the private generator.
    GsWgan(Box<super::gswgan::GsWganArgs>),
    /// DPSGD-GAN (Bie, Kamath and Zhang 2023): a conditional DCGAN whose D is trained by DP-SGD on
    /// real and generated examples, many D steps per G step.
    DpsgdGan(Box<super::dpsgd_gan::DpsgdGanArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SamplingArg {
    /// Each record joins a batch independently with probability B/N: the accountant's ε is a proof.
    Poisson,
    /// Shuffled epochs of fixed batches (the published run): ε is the customary approximation.
    Shuffle,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    Constant,
    LinearDecay,
}

/// Settings are options without clap defaults so that `--resume` can refuse them: a resumed run
/// continues with the settings in its config.json. The defaults are listed in each help line.
#[derive(Args, Debug)]
struct DpCganArgs {
    #[command(flatten)]
    run: super::dp_sgd_args::RunDirArgs,
    /// Seed of everything random in the run [default: drawn from the OS and recorded].
    #[arg(long)]
    seed: Option<u64>,
    /// Total steps (on --resume: the new total) [default: 249 epochs].
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Epochs of N/B steps [default: 249].
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<f64>,
    /// B: the batch size, or the expected one under Poisson sampling [default: 600].
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    privacy: super::dp_sgd_args::DpSgdPrivacyArgs,
    /// How batches are drawn [default: poisson].
    #[arg(long, value_enum)]
    sampling: Option<SamplingArg>,
    /// D's SGD learning rate [default: 0.15].
    #[arg(long, allow_negative_numbers = true)]
    d_lr: Option<f32>,
    /// D's learning-rate schedule [default: constant, what the published run did].
    #[arg(long, value_enum)]
    d_lr_schedule: Option<ScheduleArg>,
    /// Final rate of the linear decay [default: 0.052].
    #[arg(long, allow_negative_numbers = true)]
    d_lr_final: Option<f32>,
    /// Steps of the linear decay [default: 10000].
    #[arg(long)]
    d_lr_decay_steps: Option<u64>,
    /// G's Adam learning rate [default: 1e-3].
    #[arg(long, allow_negative_numbers = true)]
    g_lr: Option<f32>,
    #[command(flatten)]
    noise: super::noise::NoiseArgs,
    /// Steps between metrics lines [default: 100].
    #[arg(long)]
    log_every: Option<u64>,
    /// Steps between sample grids [default: 1000].
    #[arg(long)]
    sample_every: Option<u64>,
    /// Steps between checkpoints [default: 1000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// CUDA only: replay the steps from one CUDA graph, each batch padded to a fixed number of
    /// weight-0 rows (the batch size, or under Poisson sampling six standard deviations above
    /// it); a larger batch takes the unpadded step. If the driver refuses the capture, the steps
    /// are taken eagerly (with a warning). Recorded, so a resumed run keeps it.
    #[arg(long)]
    cuda_graph: bool,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    match &args.algorithm {
        Algorithm::DpCgan(a) => dp_cgan(a),
        Algorithm::GsWgan(a) => super::gswgan::run(a),
        Algorithm::DpsgdGan(a) => super::dpsgd_gan::run(a),
    }
}

fn dp_cgan(args: &DpCganArgs) -> Result<()> {
    let device = super::choose_device(args.run.device.as_deref())?;
    let resumed = |root: &Path| {
        refuse_settings_on_resume(args)?;
        DpCganRun::resume(root, &device, args.steps)
    };
    let started = |out: &Path| {
        check_cuda_graph(args.cuda_graph, &device)?;
        let data = Dataset::load(&data_dir(args.run.data.as_deref())?, Split::Train)?;
        let config = DpCganRunConfig::plan(&settings(args)?, &data, &device)?;
        announce(&config)?;
        DpCganRun::start(out, config, &data, &device)
    };
    let (mut run, root) = open_run(args.run.resume.as_deref(), args.run.out.as_deref(), resumed, started)?;
    let note = if run.config().sampling == SamplingKind::Shuffle { " (shuffled batches: the customary approximation)" } else { "" };
    let summary = RunSummary { command: "dp-cgan", unit: "steps", noise_multiplier: run.config().noise_multiplier, note };
    summary.train_and_report(&mut run, &device, &root)
}

/// Refuses `--cuda-graph` on a device without CUDA graphs (the CPU runs each op as it comes).
pub(super) fn check_cuda_graph(cuda_graph: bool, device: &dpgan::Device) -> Result<()> {
    if cuda_graph && device.is_cpu() {
        return Err(Error::Invalid("--cuda-graph needs a CUDA device: the CPU backend runs each op as it comes".into()));
    }
    Ok(())
}

/// A DP-SGD run to train: the one in `resume`, or a new one in `out` (where a run that stopped
/// before its first checkpoint starts again), with the signal handlers installed and a run
/// without privacy said to be so. The run and its directory.
pub(super) fn open_run<R: PrivateRun>(
    resume: Option<&Path>,
    out: Option<&Path>,
    resumed: impl FnOnce(&Path) -> Result<R>,
    started: impl FnOnce(&Path) -> Result<R>,
) -> Result<(R, PathBuf)> {
    dpgan::train::interrupt::install()?;
    match resume {
        Some(root) => {
            let run = resumed(root)?;
            let settings = run.core().settings;
            super::noise::warn_if_not_private(settings.noise_key);
            eprintln!("resuming {} at step {} of {}", root.display(), run.steps_taken(), settings.steps);
            Ok((run, root.to_path_buf()))
        }
        None => {
            let out = out.expect("clap requires --out without --resume");
            if dpgan::train::run_dir::RunDir::forget_if_never_checkpointed(out)? {
                eprintln!("{} stopped before its first checkpoint: starting it again", out.display());
            }
            Ok((started(out)?, out.to_path_buf()))
        }
    }
}

/// What a DP-SGD run's closing report says besides its outcome and settings.
pub(super) struct RunSummary<'a> {
    /// The `dpgan train` subcommand.
    pub command: &'a str,
    /// What a step is called.
    pub unit: &'a str,
    pub noise_multiplier: f32,
    /// Said after σ (how batches were drawn, when that weakens the ε).
    pub note: &'a str,
}

impl RunSummary<'_> {
    /// Trains `run` with a progress bar, prints the report and turns the outcome into the exit
    /// status (see [`super::stop_status`]).
    pub fn train_and_report<R: PrivateRun>(&self, run: &mut R, device: &dpgan::Device, root: &Path) -> Result<()> {
        let s = run.core().settings;
        let progress = Progress::new(run.steps_taken(), s.steps);
        let outcome = dp_sgd_run::train(run, &progress)?;
        progress.finish();
        if let Some(why) = run.capture_refusal() {
            eprintln!(
                "warning: the driver refused to capture the step into a CUDA graph ({why}); the run took its steps eagerly from \
                 there (the same steps, more launches)"
            );
        }
        let mut report = String::new();
        if let Stop::Budget(why) = &outcome.stop {
            report += &format!("stopped at {} {} of {}: {why}\n", self.unit.trim_end_matches('s'), outcome.steps, s.steps);
        }
        report += &format!(
            "trained {} {} in {:.1} s ({:.1} {}/s) on {device}\n\
             ε = {:.4} ({:?} conversion, order {}), {:.4} ({:?}) at δ = {}, q = {}, σ = {}{}\n\
             run directory: {} (private: its checkpoint holds the secret noise key, D and the real-data losses; release only \
             `dpgan sample` or `dpgan export` output){}\n",
            outcome.steps,
            self.unit,
            outcome.wall_s,
            outcome.steps_per_s,
            self.unit,
            outcome.guarantee.epsilon,
            s.conversion,
            outcome.guarantee.order,
            outcome.other.epsilon,
            other_conversion(s.conversion),
            s.delta,
            s.sample_rate,
            self.noise_multiplier,
            self.note,
            root.display(),
            s.noise_key.warning().map(|w| format!("\n{w}")).unwrap_or_default(),
        );
        super::emit(&report)?;
        super::stop_status(&outcome.stop, &format!("dpgan train {} --resume {}", self.command, root.display()))
    }
}

/// `--seed`, or one drawn from the OS (said on stderr, and recorded in config.json).
pub(super) fn seed_or_draw(seed: Option<u64>) -> Result<u64> {
    match seed {
        Some(seed) => Ok(seed),
        None => {
            let seed = rand::rngs::OsRng.try_next_u64().map_err(|e| Error::Invalid(format!("cannot draw a seed from the OS: {e}")))?;
            eprintln!("seed: {seed} (drawn from the OS; recorded in config.json)");
            Ok(seed)
        }
    }
}

/// Says what the run will do and what its ε will be, before it starts.
fn announce(config: &DpCganRunConfig) -> Result<()> {
    super::noise::warn_if_not_private(config.noise_key);
    if config.sampling == SamplingKind::Shuffle {
        eprintln!(
            "warning: --sampling shuffle draws fixed-size batches from shuffled epochs; the reported ε assumes Poisson \
             sampling at q = B/N, the customary approximation for this, not a proof"
        );
    }
    let planned = config.privacy().planned_epsilon()?;
    eprintln!(
        "dp-cgan: {} steps, B = {}, q = {}, C = {}, σ = {}{}, δ = {}: ε = {:.4} if every step runs{}",
        config.steps,
        config.batch_size,
        config.sample_rate,
        config.clip,
        config.noise_multiplier,
        if config.noise_multiplier_calibrated { " (calibrated)" } else { "" },
        config.delta,
        planned.epsilon,
        config.target_epsilon.map(|t| format!(" (budget ε = {t})")).unwrap_or_default(),
    );
    Ok(())
}

fn settings(args: &DpCganArgs) -> Result<DpCganSettings> {
    let d = DpCganSettings::default();
    let seed = seed_or_draw(args.seed)?;
    let d_lr_schedule = match args.d_lr_schedule {
        None | Some(ScheduleArg::Constant) => {
            if args.d_lr_final.is_some() || args.d_lr_decay_steps.is_some() {
                return Err(Error::Invalid("--d-lr-final and --d-lr-decay-steps need --d-lr-schedule linear-decay".into()));
            }
            LrSchedule::Constant
        }
        Some(ScheduleArg::LinearDecay) => {
            LrSchedule::LinearDecay { final_lr: args.d_lr_final.unwrap_or(0.052), decay_steps: args.d_lr_decay_steps.unwrap_or(10_000) }
        }
    };
    let privacy = &args.privacy;
    Ok(DpCganSettings {
        data: args.run.data.clone().unwrap_or_default(),
        seed,
        steps: args.steps,
        epochs: args.epochs.unwrap_or(d.epochs),
        batch_size: args.batch_size.unwrap_or(d.batch_size),
        clip: privacy.clip.unwrap_or(d.clip),
        noise_multiplier: privacy.noise_multiplier_or(d.noise_multiplier),
        target_epsilon: privacy.target_epsilon,
        delta: privacy.delta.unwrap_or(d.delta),
        sampling: match args.sampling {
            None | Some(SamplingArg::Poisson) => SamplingKind::Poisson,
            Some(SamplingArg::Shuffle) => SamplingKind::Shuffle,
        },
        orders: privacy.orders.map_or(d.orders, OrdersArg::value),
        conversion: privacy.conversion.map_or(d.conversion, ConversionArg::value),
        d_lr: args.d_lr.unwrap_or(d.d_lr),
        d_lr_schedule,
        g_adam: AdamRecord { lr: args.g_lr.unwrap_or(d.g_adam.lr), ..d.g_adam },
        noise: args.noise.mode(),
        replayable_noise: args.noise.replayable_noise,
        log_every: args.log_every.unwrap_or(d.log_every),
        sample_every: args.sample_every.unwrap_or(d.sample_every),
        checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
        cuda_graph: args.cuda_graph,
    })
}

/// A resumed run keeps its recorded settings; a flag that would change them is an error rather
/// than silently ignored. `--steps` (a new total) and `--device` are allowed.
fn refuse_settings_on_resume(args: &DpCganArgs) -> Result<()> {
    let given = [
        ("--seed", args.seed.is_some()),
        ("--epochs", args.epochs.is_some()),
        ("--batch-size", args.batch_size.is_some()),
        ("--sampling", args.sampling.is_some()),
        ("--d-lr", args.d_lr.is_some()),
        ("--d-lr-schedule", args.d_lr_schedule.is_some()),
        ("--d-lr-final", args.d_lr_final.is_some()),
        ("--d-lr-decay-steps", args.d_lr_decay_steps.is_some()),
        ("--g-lr", args.g_lr.is_some()),
        ("--log-every", args.log_every.is_some()),
        ("--sample-every", args.sample_every.is_some()),
        ("--checkpoint-every", args.checkpoint_every.is_some()),
        ("--cuda-graph", args.cuda_graph),
    ];
    let (run, privacy, noise) = (args.run.given(), args.privacy.given(), args.noise.given());
    let given: Vec<_> = run.iter().chain(&given).chain(&privacy).chain(&noise).copied().collect();
    super::refuse_on_resume(&given, "--steps and --device")
}
