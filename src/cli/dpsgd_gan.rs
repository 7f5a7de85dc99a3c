//! `dpgan train dpsgd-gan`: a DPSGD-GAN run (docs/algorithms.md §4) from the command line, the published
//! settings as defaults, or `--resume`. The run directory, progress, checkpoints, key handling and
//! budget are DP-CGAN's.
use std::path::{Path, PathBuf};

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
    /// Training data: a directory with MNIST-layout IDX files (MNIST or Fashion-MNIST), or a name
    /// under $DPGAN_DATA.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The run directory to create (config.json, metrics.jsonl, checkpoints, sample grids).
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its checkpoint (with its own settings).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// cpu, cuda or cuda:N [default: the GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
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
    /// C: each example's gradient norm bound, real and generated alike [default: 1.0].
    #[arg(long, allow_negative_numbers = true)]
    clip: Option<f32>,
    /// σ: noise std over C [default: 1.0, or calibrated to --target-epsilon].
    #[arg(long, allow_negative_numbers = true)]
    noise_multiplier: Option<f32>,
    /// The ε budget at δ: σ is calibrated to it when --noise-multiplier is absent, and the run
    /// stops (with a checkpoint) before any D step that would pass it.
    #[arg(long, allow_negative_numbers = true)]
    target_epsilon: Option<f64>,
    /// δ [default: 1e-5].
    #[arg(long, allow_negative_numbers = true)]
    delta: Option<f64>,
    /// How RDP becomes (ε, δ) [default: improved].
    #[arg(long, value_enum)]
    conversion: Option<ConversionArg>,
    /// Rényi orders [default: standard].
    #[arg(long, value_enum)]
    orders: Option<OrdersArg>,
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
}

pub fn run(args: &DpsgdGanArgs) -> Result<()> {
    let device = super::choose_device(args.device.as_deref())?;
    let resumed = |root: &Path| {
        refuse_settings_on_resume(args)?;
        DpsgdGanRun::resume(root, &device, args.d_steps)
    };
    let started = |out: &Path| {
        let data = Dataset::load(&data_dir(args.data.as_deref())?, Split::Train)?;
        let config = DpsgdGanRunConfig::plan(&settings(args)?, &data, &device)?;
        announce(&config)?;
        DpsgdGanRun::start(out, config, &data, &device)
    };
    let (mut run, root) = open_run(args.resume.as_deref(), args.out.as_deref(), resumed, started)?;
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
    let noise_multiplier = match (args.noise_multiplier, args.target_epsilon) {
        (Some(sigma), _) => Some(sigma),
        (None, Some(_)) => None,
        (None, None) => d.noise_multiplier,
    };
    Ok(DpsgdGanSettings {
        data: args.data.clone().unwrap_or_default(),
        seed: seed_or_draw(args.seed)?,
        d_steps: args.d_steps.unwrap_or(d.d_steps),
        batch_size: args.batch_size.unwrap_or(d.batch_size),
        clip: args.clip.unwrap_or(d.clip),
        noise_multiplier,
        target_epsilon: args.target_epsilon,
        delta: args.delta.unwrap_or(d.delta),
        orders: args.orders.map_or(d.orders, OrdersArg::value),
        conversion: args.conversion.map_or(d.conversion, ConversionArg::value),
        width: args.width.unwrap_or(d.width),
        schedule: args.d_steps_per_g_step.unwrap_or(d.schedule),
        d_lr: args.d_lr.unwrap_or(d.d_lr),
        g_lr: args.g_lr.unwrap_or(d.g_lr),
        noise: args.noise.mode(),
        replayable_noise: args.noise.replayable_noise,
        log_every: args.log_every.unwrap_or(d.log_every),
        sample_every: args.sample_every.unwrap_or(d.sample_every),
        checkpoint_every: args.checkpoint_every.unwrap_or(d.checkpoint_every),
    })
}

/// A resumed run keeps its recorded settings; a flag that would change them is an error rather
/// than silently ignored. `--d-steps` (a new total) and `--device` are allowed.
fn refuse_settings_on_resume(args: &DpsgdGanArgs) -> Result<()> {
    let given = [
        ("--data", args.data.is_some()),
        ("--seed", args.seed.is_some()),
        ("--d-steps-per-g-step", args.d_steps_per_g_step.is_some()),
        ("--batch-size", args.batch_size.is_some()),
        ("--clip", args.clip.is_some()),
        ("--noise-multiplier", args.noise_multiplier.is_some()),
        ("--target-epsilon", args.target_epsilon.is_some()),
        ("--delta", args.delta.is_some()),
        ("--conversion", args.conversion.is_some()),
        ("--orders", args.orders.is_some()),
        ("--width", args.width.is_some()),
        ("--d-lr", args.d_lr.is_some()),
        ("--g-lr", args.g_lr.is_some()),
        ("--log-every", args.log_every.is_some()),
        ("--sample-every", args.sample_every.is_some()),
        ("--checkpoint-every", args.checkpoint_every.is_some()),
    ];
    let noise = args.noise.given();
    let given: Vec<_> = given.iter().chain(&noise).copied().collect();
    super::refuse_on_resume(&given, "--d-steps and --device")
}
