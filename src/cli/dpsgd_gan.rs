//! `dpgan train dpsgd-gan`: a DPSGD-GAN run (docs/algorithms.md §4) from the command line, the published
//! settings as defaults, or `--resume`. The run directory, progress, checkpoints, key handling and
//! budget are DP-CGAN's.
use std::path::Path;

use clap::Args;
use dpgan::data::{data_dir, Dataset, Split};
use dpgan::train::dpsgd_gan::run::{DpsgdGanRun, DpsgdGanRunConfig, DpsgdGanSettings};
use dpgan::train::dpsgd_gan::schedule::GStepSchedule;
use dpgan::Result;

use super::privacy::{ConversionArg, OrdersArg};
use super::train::{open_run, seed_or_draw, RunSummary};

/// Settings are options without clap defaults so that `--resume` can refuse them: a resumed run
/// continues with the settings in its config.json. The defaults are listed in each help line.
#[derive(Args, Debug)]
pub struct DpsgdGanArgs {
    #[command(flatten)]
    run: super::dp_sgd_args::RunDirArgs,
    /// Seed of what the privacy proof does not rely on: weights, latent codes [default: drawn
    /// from the OS and recorded].
    #[arg(long)]
    seed: Option<u64>,
    /// Total D steps, each one step of the accountant (on --resume: the new total) [default: 450000].
    #[arg(long)]
    d_steps: Option<u64>,
    /// n_D: D steps per G step, or `adaptive` (1, 2, 5, 10, ... as D's accuracy on generated data
    /// falls) [default: 50].
    #[arg(long)]
    d_steps_per_g_step: Option<GStepSchedule>,
    /// B: the expected real batch (Poisson, q = B/N) and the generated examples per D step [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    privacy: super::dp_sgd_args::DpSgdPrivacyArgs,
    /// d, the width of G and D [default: 128, the published one; 16 or 32 for CPU-sized runs].
    #[arg(long)]
    width: Option<usize>,
    /// D's Adam learning rate [default: 2e-4].
    #[arg(long, allow_negative_numbers = true)]
    d_lr: Option<f32>,
    /// G's Adam learning rate [default: 2e-4].
    #[arg(long, allow_negative_numbers = true)]
    g_lr: Option<f32>,
    #[command(flatten)]
    noise: super::noise::NoiseArgs,
    /// D steps between metrics lines [default: 100].
    #[arg(long)]
    log_every: Option<u64>,
    /// D steps between sample grids [default: 5000].
    #[arg(long)]
    sample_every: Option<u64>,
    /// D steps between checkpoints [default: 5000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// CUDA only: replay the D steps from one CUDA graph, each Poisson batch padded to six
    /// standard deviations above B with weight-0 rows (a larger one takes the unpadded step); G's
    /// steps stay eager. Recorded, so a resumed run keeps it.
    #[arg(long)]
    cuda_graph: bool,
}

pub fn run(args: &DpsgdGanArgs) -> Result<()> {
    let device = super::choose_device(args.run.device.as_deref())?;
    let resumed = |root: &Path| {
        refuse_settings_on_resume(args)?;
        DpsgdGanRun::resume(root, &device, args.d_steps)
    };
    let started = |out: &Path| {
        super::train::check_cuda_graph(args.cuda_graph, &device)?;
        let data = Dataset::load(&data_dir(args.run.data.as_deref())?, Split::Train)?;
        let config = DpsgdGanRunConfig::plan(&settings(args)?, &data, &device)?;
        announce(&config)?;
        DpsgdGanRun::start(out, config, &data, &device)
    };
    let (mut run, root) = open_run(args.run.resume.as_deref(), args.run.out.as_deref(), resumed, started)?;
    let summary = RunSummary { command: "dpsgd-gan", unit: "D steps", noise_multiplier: run.config().noise_multiplier, note: "" };
    summary.train_and_report(&mut run, &device, &root)
}

/// Says what the run will do and what its ε will be, before it starts.
fn announce(config: &DpsgdGanRunConfig) -> Result<()> {
    super::noise::warn_if_not_private(config.noise_key);
    let planned = config.privacy().planned_epsilon()?;
    eprintln!(
        "dpsgd-gan: {} D steps, n_D = {}, d = {}, B = {}, q = {}, C = {}, σ = {}{}, δ = {}: ε = {:.4} if every step runs{}",
        config.steps,
        config.d_steps_per_g_step,
        config.width,
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

fn settings(args: &DpsgdGanArgs) -> Result<DpsgdGanSettings> {
    let d = DpsgdGanSettings::default();
    let privacy = &args.privacy;
    Ok(DpsgdGanSettings {
        data: args.run.data.clone().unwrap_or_default(),
        seed: seed_or_draw(args.seed)?,
        d_steps: args.d_steps.unwrap_or(d.d_steps),
        batch_size: args.batch_size.unwrap_or(d.batch_size),
        clip: privacy.clip.unwrap_or(d.clip),
        noise_multiplier: privacy.noise_multiplier_or(d.noise_multiplier),
        target_epsilon: privacy.target_epsilon,
        delta: privacy.delta.unwrap_or(d.delta),
        orders: privacy.orders.map_or(d.orders, OrdersArg::value),
        conversion: privacy.conversion.map_or(d.conversion, ConversionArg::value),
        width: args.width.unwrap_or(d.width),
        schedule: args.d_steps_per_g_step.unwrap_or(d.schedule),
        d_lr: args.d_lr.unwrap_or(d.d_lr),
        g_lr: args.g_lr.unwrap_or(d.g_lr),
        noise: args.noise.mode(),
        replayable_noise: args.noise.replayable_noise,
        log_every: args.log_every.unwrap_or(d.log_every),
        sample_every: args.sample_every.unwrap_or(d.sample_every),
        checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
        cuda_graph: args.cuda_graph,
    })
}

/// A resumed run keeps its recorded settings; a flag that would change them is an error rather
/// than silently ignored. `--d-steps` (a new total) and `--device` are allowed.
fn refuse_settings_on_resume(args: &DpsgdGanArgs) -> Result<()> {
    let given = [
        ("--seed", args.seed.is_some()),
        ("--d-steps-per-g-step", args.d_steps_per_g_step.is_some()),
        ("--batch-size", args.batch_size.is_some()),
        ("--width", args.width.is_some()),
        ("--d-lr", args.d_lr.is_some()),
        ("--g-lr", args.g_lr.is_some()),
        ("--log-every", args.log_every.is_some()),
        ("--sample-every", args.sample_every.is_some()),
        ("--checkpoint-every", args.checkpoint_every.is_some()),
        ("--cuda-graph", args.cuda_graph),
    ];
    let (run, privacy, noise) = (args.run.given(), args.privacy.given(), args.noise.given());
    let given: Vec<_> = run.iter().chain(&given).chain(&privacy).chain(&noise).copied().collect();
    super::refuse_on_resume(&given, "--d-steps and --device")
}
