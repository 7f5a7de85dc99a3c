//! `dpgan bench kernels [--json PATH] [--quick]`: every kernel family at DP-CGAN's and GS-WGAN's
//! shapes, validated against the CPU backend and timed with CUDA events beside the device's measured
//! copy and GEMM ceilings (see `dpgan::bench`). Without a GPU it fails, saying why.
//!
//! `dpgan bench step --algo dp-cgan|gs-wgan|dpsgd-gan [--non-private] [--phases] ...`: the engine's training
//! step, timed on the CPU or a GPU (see `dpgan::bench::step`).

use clap::{Args, Subcommand};
use dpgan::bench::kernels;
use dpgan::bench::step::{self, Algo, StepOptions};
use dpgan::dp::NoiseMode;
use dpgan::{Error, Result};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Time every kernel family (GEMM, conv, elementwise, reductions, optimisers, power iteration,
    /// pooling, noise) beside the measured copy and GEMM ceilings.
    Kernels(KernelsArgs),
    /// Time the engine's real training step (DP-CGAN's step, GS-WGAN's phase-2 or warm-start
    /// iteration) on synthetic inputs: steps/s, ms per step, optionally split by phase.
    Step(StepArgs),
}

#[derive(Args, Debug)]
struct StepArgs {
    /// dp-cgan, gs-wgan or dpsgd-gan (its private D step).
    #[arg(long, value_parser = parse_algo)]
    algo: Algo,
    /// Time the private step (the default).
    #[arg(long, conflicts_with = "non_private")]
    private: bool,
    /// Time the same models' non-private step instead: DP-CGAN without clipping or noise,
    /// GS-WGAN's warm-start iteration (dpsgd-gan has none).
    #[arg(long)]
    non_private: bool,
    /// cpu, cuda or cuda:N [default: the first GPU if one works, else the CPU].
    #[arg(long)]
    device: Option<String>,
    /// Timed steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Untimed steps first (kernel loading, allocator warm-up, Adam state).
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Batch size [default: the published one, 600 for dp-cgan, 32 for gs-wgan, 128 for dpsgd-gan].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Also run a second pass of --steps steps timed per phase (forward, backward, per-example
    /// norms, clip and noise, optimizer, EMA), synchronising the device at each phase boundary.
    #[arg(long)]
    phases: bool,
    /// Seed of the models' initialisation, the synthetic inputs and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Draw the noise with Philox instead of the default, ChaCha20 with the hardened sampler.
    #[arg(long)]
    fast_noise: bool,
    /// gs-wgan only: the generator, resnet (published default) or dcgan.
    #[arg(long)]
    generator: Option<super::gswgan::GeneratorArg>,
    /// gs-wgan and dpsgd-gan: the models' width (64 and 128 are the published models).
    #[arg(long)]
    base: Option<usize>,
    /// CUDA only, with --non-private or gs-wgan's phase 2: matmuls and convolutions on TF32 tensor
    /// cores where large enough (10-bit mantissa inputs, f32 accumulation), as `train gs-wgan
    /// warm-start --tf32` and `train gs-wgan --tf32` run them.
    #[arg(long)]
    tf32: bool,
    /// CUDA only: also time the step replayed from CUDA graphs, beside the eager figures.
    /// DP-CGAN's steps, DPSGD-GAN's D step and GS-WGAN's phase-2 iteration replay as training
    /// steps (each with its own batch, keys, noise step and optimizer corrections); the GS-WGAN
    /// warm start repeats the captured keys and draws: its launch floor, not training steps.
    #[arg(long)]
    cuda_graph: bool,
    #[command(flatten)]
    json: super::json::JsonOut,
}

fn parse_algo(s: &str) -> std::result::Result<Algo, String> {
    match s {
        "dp-cgan" => Ok(Algo::DpCgan),
        "gs-wgan" => Ok(Algo::GsWgan),
        "dpsgd-gan" => Ok(Algo::DpsgdGan),
        other => Err(format!("unknown algorithm {other:?}: use dp-cgan, gs-wgan or dpsgd-gan")),
    }
}

#[derive(Args, Debug)]
struct KernelsArgs {
    #[command(flatten)]
    json: super::json::JsonOut,
    /// Few iterations and at most 2 input sets: for tests, not for numbers to quote.
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchCommand::Kernels(k) => kernels_cmd(k),
        BenchCommand::Step(s) => step_cmd(s),
    }
}

fn step_cmd(args: &StepArgs) -> Result<()> {
    args.json.check()?;
    let misplaced: Vec<&str> = [
        ("--generator", args.generator.is_some() && args.algo != Algo::GsWgan),
        ("--base", args.base.is_some() && args.algo == Algo::DpCgan),
    ]
    .iter()
    .filter(|(_, g)| *g)
    .map(|(f, _)| *f)
    .collect();
    if !misplaced.is_empty() {
        let algo = args.algo.name();
        return Err(Error::Invalid(format!(
            "{} does not apply to --algo {algo} (--generator: gs-wgan only; --base: gs-wgan and dpsgd-gan)",
            misplaced.join(" and ")
        )));
    }
    let device = super::choose_device(args.device.as_deref())?;
    let mut options = StepOptions::new(args.algo);
    options.private = args.private || !args.non_private;
    options.steps = args.steps;
    options.warmup = args.warmup;
    options.batch_size = args.batch_size.unwrap_or(options.batch_size);
    options.phases = args.phases;
    options.seed = args.seed;
    options.noise = if args.fast_noise { NoiseMode::Fast } else { NoiseMode::Secure };
    options.arch = args.generator.map_or(options.arch, |g| g.value());
    options.base = args.base.unwrap_or(options.base);
    options.tf32 = args.tf32;
    options.cuda_graph = args.cuda_graph;
    let report = step::run(&options, &device, |what| eprintln!("bench: {what}"))?;
    args.json.emit(&report, || report.to_string())
}

fn kernels_cmd(args: &KernelsArgs) -> Result<()> {
    // A report that cannot be written should fail before the run, not after it.
    args.json.check()?;
    // With `--json PATH` the file holds the cases measured so far from the ceilings on (marked
    // incomplete), then the whole report.
    let snapshot =
        |partial: &dpgan::bench::BenchReport| args.json.file().map_or(Ok(()), |path| dpgan::bench::write_json_atomic(path, partial));
    let report = kernels::run(args.quick, |name| eprintln!("bench: {name}"), snapshot)?;
    args.json.emit(&report, || report.to_string())
}
