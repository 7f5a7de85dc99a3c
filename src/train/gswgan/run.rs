//! Phase 2 from the command line: the K warm-started discriminators (all on the GPU when they take
//! at most half its free memory; otherwise kept on the host, the selected one paged in to the device
//! for its iteration), a generator G with Adam and its EMA copy G_s, the
//! two accountings of docs/algorithms.md §2 side by side. The chosen one governs: an iteration is recorded
//! before it runs, and one that would pass the ε budget is never taken.
//!
//! Iteration t's choice of discriminator j and its noise come from the run's secret key (the
//! accountant relies on both), its other draws (z, α, labels) from `stream(seed, Generator, t)`,
//! so a checkpoint (G, G_s, Adam moments, every selected discriminator with its Adam state and
//! batch position, both accountants, the key) resumes the run exactly. The selected
//! discriminators are the bulk of it: at the published size (K = 1000 critics of 1.07 M parameters,
//! each with two Adam moments, 12.9 MB a critic) about 13 GB once every critic has been selected,
//! the same state the run holds in host memory. So each critic has its own file under `critics/`,
//! named by the iteration it was saved at, and a checkpoint writes only the critics trained since
//! the previous one; `checkpoint.safetensors` (G, G_s, G's Adam, the state) names the file of every
//! critic, and is replaced last, so a crash at any point leaves the previous checkpoint whole.
//! Files no checkpoint names any more are deleted after the new one is in place.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::graphed::{GraphedPhaseTwo, IterationCounts};
use super::warm_start_run::{arch_name, load_discriminators, load_recorded_data, WarmStartRunConfig, WARM_START_ALGORITHM};
use super::{CriticState, GsWganConfig, LabelledImages, PhaseTwoStep, PrivateLosses, SliceBatches};
use crate::autograd::Tape;
use crate::backend::cuda::Tf32Scope;
use crate::backend::{ops, BinaryOp};
use crate::data::classes::class_names_of_file;
use crate::dp::{FiniteChecks, GsWganSanitizer, KeySource, NoiseMode, NoiseSource, RunKey};
use crate::error::{Error, Result};
use crate::io::checkpoint::{load_tensors, save_tensors};
use crate::io::image::Grid;
use crate::models::gswgan::{bernoulli_latent, one_hot, Discriminator, Generator, GeneratorArch, CLASSES};
use crate::nn::{load_prefixed, Module};
use crate::optim::Adam;
use crate::privacy::accountant::{Accountant, Mechanism};
use crate::privacy::conversion::{Conversion, Guarantee};
use crate::privacy::gswgan::GsWganRun;
use crate::privacy::rdp::Orders;
use crate::tensor::{Device, Tensor};
use crate::train::dpcgan::run::{BuildRecord, DataRecord};
use crate::train::progress::Progress;
use crate::train::replay::{stream, Purpose};
use crate::train::run_dir::{MetricsLog, RunDir, CHECKPOINT, CONFIG, METRICS};
use crate::train::{check_delta_flag, check_positive};
use crate::train::{collect_images, ImageSink};

pub const ALGORITHM: &str = "gs-wgan";
/// Bumped when the checkpoint layout or the meaning of what it records changes (3: the per-step
/// accountant holds the proven bound at [`Orders::Fine`], and the checkpoint keeps the run's secret
/// key; format 2 recorded a per-step ε that is not proven for GS-WGAN, and seed-derived noise).
const STATE_FORMAT: u32 = 3;
/// The run directory's folder of per-critic checkpoint files.
pub const CRITICS_DIR: &str = "critics";

/// Which accounting of docs/algorithms.md §2 governs the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accounting {
    /// B·T compositions of the Gaussian subsampled without replacement, classic conversion.
    AsPublished,
    /// T generator steps, each a Gaussian of noise multiplier σ/√B on the slice chosen with
    /// probability 1/k, bounded by joint convexity (a proof; see `privacy::gswgan`).
    PerStep,
}

impl Accounting {
    pub fn name(self) -> &'static str {
        match self {
            Accounting::AsPublished => "as-published",
            Accounting::PerStep => "per-step",
        }
    }

    /// The conversion each accounting uses: the published one is classic, per-step the improved
    /// one DP-SGD runs use.
    pub fn conversion(self) -> Conversion {
        match self {
            Accounting::AsPublished => Conversion::Classic,
            Accounting::PerStep => Conversion::Improved,
        }
    }

    /// The orders each accounting optimises over: the standard ones for the published accounting,
    /// the fine ones for per-step, whose best order lies below 2 (1.052 for the published run).
    pub fn orders(self) -> Orders {
        match self {
            Accounting::AsPublished => Orders::Standard,
            Accounting::PerStep => Orders::Fine,
        }
    }

    pub fn mechanism(self, run: GsWganRun) -> Mechanism {
        match self {
            Accounting::AsPublished => Mechanism::GsWganAsPublished(run),
            Accounting::PerStep => Mechanism::GsWganPerStep(run),
        }
    }

    pub fn other(self) -> Accounting {
        match self {
            Accounting::AsPublished => Accounting::PerStep,
            Accounting::PerStep => Accounting::AsPublished,
        }
    }
}

/// What the user chose for phase 2.
#[derive(Clone, Debug)]
pub struct GsWganSettings {
    pub warm_start: PathBuf,
    pub seed: u64,
    pub iterations: u64,
    pub generator: GeneratorArch,
    /// `None`: calibrated to `target_epsilon` under `accounting`.
    pub noise_multiplier: Option<f64>,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub accounting: Accounting,
    pub noise: NoiseMode,
    /// Derive the noise and selection key from the seed (`--replayable-noise`): not private.
    pub replayable_noise: bool,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    /// Replay the iterations from CUDA graphs (`--cuda-graph`; see `gswgan::graphed`).
    pub cuda_graph: bool,
    /// Let G's and D's matmuls and convolutions run on TF32 tensor cores (`--tf32`, CUDA only).
    pub tf32: bool,
}

impl Default for GsWganSettings {
    fn default() -> Self {
        GsWganSettings {
            warm_start: PathBuf::new(),
            seed: 0,
            iterations: 20_000,
            generator: GeneratorArch::Resnet,
            noise_multiplier: Some(1.07),
            target_epsilon: None,
            delta: 1e-5,
            accounting: Accounting::PerStep,
            noise: NoiseMode::Secure,
            replayable_noise: false,
            log_every: 100,
            sample_every: 1000,
            checkpoint_every: 1000,
            cuda_graph: false,
            tf32: false,
        }
    }
}

/// Phase 2's config.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GsWganRunConfig {
    pub algorithm: String,
    pub warm_start: PathBuf,
    /// The warm start's own config, copied: the slices, widths and data it used.
    pub warm_start_config: WarmStartRunConfig,
    pub data: DataRecord,
    pub seed: u64,
    pub iterations: u64,
    pub generator: String,
    pub base: usize,
    pub discriminators: usize,
    /// B of the accounting: the real batch size, the largest a step takes (a step after a
    /// partial batch takes fewer), so both accountings count no less than was spent.
    pub batch_size: usize,
    pub clip: f64,
    pub noise_multiplier: f64,
    pub noise_multiplier_calibrated: bool,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub accounting: Accounting,
    pub noise: NoiseMode,
    /// Where the noise and selection key comes from: a secret, or (not private) the seed.
    pub noise_key: KeySource,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub build: BuildRecord,
    pub device: String,
    /// The iterations run on a working critic and are replayed from CUDA graphs on a CUDA device
    /// (the same values as without: a resumed run continues bit for bit either way). Absent in
    /// runs without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cuda_graph: bool,
    /// G's and D's matmuls and convolutions may run on TF32 tensor cores (sm_80+). The sanitiser's
    /// row norms, clipping and noise stay in f32: it bounds whatever image gradient it is handed,
    /// so the guarantee is unchanged. Absent in runs without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tf32: bool,
}

impl GsWganRunConfig {
    /// Checks the settings against the warm start and the accountant (calibrating σ if asked);
    /// nothing is written.
    pub fn plan(s: &GsWganSettings, device: &Device) -> Result<Self> {
        let warm: WarmStartRunConfig = crate::train::run_dir::read_config(&s.warm_start, WARM_START_ALGORITHM)?;
        for (name, every) in [("--log-every", s.log_every), ("--sample-every", s.sample_every), ("--checkpoint-every", s.checkpoint_every)]
        {
            if every == 0 {
                return Err(Error::Invalid(format!("{name} must be at least 1")));
            }
        }
        if s.iterations == 0 {
            return Err(Error::Invalid("--iterations must be at least 1".into()));
        }
        if s.tf32 && device.is_cpu() {
            return Err(Error::Invalid(
                "--tf32 needs a CUDA device (sm_80 or newer; older ones run f32): the CPU backend has no TF32".into(),
            ));
        }
        if let Some(sigma) = s.noise_multiplier {
            check_positive("--noise-multiplier", sigma)?;
        }
        if let Some(target) = s.target_epsilon {
            check_positive("--target-epsilon", target)?;
        }
        check_delta_flag(s.delta)?;
        let mut config = GsWganRunConfig {
            algorithm: ALGORITHM.to_string(),
            warm_start: s.warm_start.clone(),
            data: warm.data.clone(),
            seed: s.seed,
            iterations: s.iterations,
            generator: arch_name(s.generator).to_string(),
            base: warm.base,
            discriminators: warm.discriminators,
            batch_size: warm.batch_size,
            clip: 1.0,
            noise_multiplier: 0.0,
            noise_multiplier_calibrated: false,
            target_epsilon: s.target_epsilon,
            delta: s.delta,
            accounting: s.accounting,
            noise: s.noise,
            noise_key: KeySource::from_flag(s.replayable_noise),
            log_every: s.log_every,
            sample_every: s.sample_every,
            checkpoint_every: s.checkpoint_every,
            build: BuildRecord::current(),
            device: device.to_string(),
            cuda_graph: s.cuda_graph,
            tf32: s.tf32,
            warm_start_config: warm,
        };
        (config.noise_multiplier, config.noise_multiplier_calibrated) = match (s.noise_multiplier, s.target_epsilon) {
            (Some(sigma), _) => (sigma, false),
            (None, Some(target)) => (config.calibrate(target)?, true),
            (None, None) => return Err(Error::Invalid("give --noise-multiplier or --target-epsilon".into())),
        };
        config.run().check()?;
        config.accountant(config.accounting)?.check_budget(config.mechanism(config.accounting), 1)?;
        Ok(config)
    }

    pub fn run(&self) -> GsWganRun {
        GsWganRun {
            noise_multiplier: self.noise_multiplier,
            discriminators: self.discriminators as u64,
            batch_size: self.batch_size as u64,
        }
    }

    pub fn mechanism(&self, accounting: Accounting) -> Mechanism {
        accounting.mechanism(self.run())
    }

    /// A fresh accountant for `accounting`: with the budget if it governs, without otherwise.
    pub fn accountant(&self, accounting: Accounting) -> Result<Accountant> {
        let budget = if accounting == self.accounting { self.target_epsilon } else { None };
        Accountant::new(accounting.orders(), accounting.conversion(), self.delta, budget)
    }

    /// ε under `accounting` if all `iterations` run.
    pub fn planned_epsilon(&self, accounting: Accounting) -> Result<Guarantee> {
        Accountant::new(accounting.orders(), accounting.conversion(), self.delta, None)?
            .try_step(self.mechanism(accounting), self.iterations)
    }

    /// The smallest f32 σ whose planned ε under the governing accounting is at most `target`, by
    /// bisection on the accountant itself (σ is recorded and used as given, so no rounding can
    /// move it below the budget).
    fn calibrate(&self, target: f64) -> Result<f64> {
        if !(target.is_finite() && target > 0.0) {
            return Err(Error::Invalid(format!("--target-epsilon must be positive, got {target}")));
        }
        let epsilon_at = |sigma: f64| -> Result<f64> {
            let config = GsWganRunConfig { noise_multiplier: sigma, ..self.clone() };
            Ok(config.planned_epsilon(self.accounting)?.epsilon)
        };
        // A bracket [σ/2, σ] with ε(low) > target ≥ ε(high), narrowed below f32 resolution.
        let mut high = 1.0;
        while epsilon_at(high)? > target {
            high *= 2.0;
            if high > 1e6 {
                return Err(Error::Invalid(format!("no noise multiplier up to 1e6 reaches ε = {target}")));
            }
        }
        let mut low = high / 2.0;
        while epsilon_at(low)? <= target {
            high = low;
            low /= 2.0;
            if low < 1e-6 {
                break;
            }
        }
        while high - low > high * 2f64.powi(-30) {
            let mid = 0.5 * (low + high);
            if epsilon_at(mid)? > target {
                low = mid;
            } else {
                high = mid;
            }
        }
        // The smallest f32 within the budget (ε falls as σ grows).
        let mut sigma = high as f32;
        if (sigma as f64) < high {
            sigma = sigma.next_up();
        }
        while sigma.next_down() > 0.0 && epsilon_at(sigma.next_down() as f64)? <= target {
            sigma = sigma.next_down();
        }
        Ok(sigma as f64)
    }

    pub fn arch(&self) -> Result<GeneratorArch> {
        self.generator.parse()
    }
}

/// One selected discriminator's resumable position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CriticRecord {
    pub index: usize,
    /// Its weights and Adam moments: a file name under `critics/`.
    pub file: String,
    pub adam_steps: u64,
    pub passes: u64,
    pub position: usize,
}

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GsWganState {
    pub format: u32,
    pub algorithm: String,
    pub iteration: u64,
    pub generator_adam_steps: u64,
    /// The accountant of each accounting (the governing one holds the budget).
    pub as_published: Accountant,
    pub per_step: Accountant,
    pub epsilon: f64,
    pub epsilon_as_published: f64,
    pub epsilon_per_step: f64,
    pub delta: f64,
    /// The discriminators selected so far (the others are still as the warm start left them).
    pub critics: Vec<CriticRecord>,
    pub wall_s: f64,
    pub stopped: Option<String>,
}

impl GsWganState {
    /// Refuses a checkpoint this version cannot vouch for: another algorithm's, or one from before
    /// the per-step accounting was a proven bound (its recorded ε would be quoted as valid).
    pub fn check_format(&self, checkpoint: &Path) -> Result<()> {
        if self.algorithm != ALGORITHM {
            return Err(Error::file(checkpoint, format!("is a {} checkpoint, not {ALGORITHM}", self.algorithm)));
        }
        if self.format == 2 {
            return Err(Error::file(
                checkpoint,
                "is checkpoint format 2, whose per-step ε came from the Poisson-subsampling bound, which is not proven \
                 for GS-WGAN's choice of one slice per step; this version reads format 3 only: train phase 2 again \
                 (`dpgan privacy gs-wgan` gives the proven per-step ε of its settings)",
            ));
        }
        if self.format != STATE_FORMAT {
            return Err(Error::file(checkpoint, format!("checkpoint format {} is not this version's ({STATE_FORMAT})", self.format)));
        }
        Ok(())
    }
}

pub use crate::train::Stop;

#[derive(Clone, Debug)]
pub struct Outcome {
    pub iterations: u64,
    pub as_published: Guarantee,
    pub per_step: Guarantee,
    pub stop: Stop,
    pub wall_s: f64,
}

/// See the module documentation.
pub struct GsWganRunner {
    dir: RunDir,
    config: GsWganRunConfig,
    step_config: GsWganConfig,
    generator: Generator,
    ema: Generator,
    g_optimizer: Adam,
    critics: Vec<CriticState>,
    /// Each critic's file under `critics/` as of the last checkpoint (`None`: never selected then).
    saved: Vec<Option<String>>,
    /// Which critics have trained since the last checkpoint (the files it must write).
    dirty: Vec<bool>,
    /// All critics live on the training device (they fit), rather than on the host with the
    /// selected one paged in for its iteration.
    resident: bool,
    /// With `cuda_graph`: the working critic and the iteration graphs (made at the first iteration).
    graphed: Option<GraphedPhaseTwo>,
    as_published: Accountant,
    per_step: Accountant,
    sanitizer: GsWganSanitizer,
    /// The run's secret: its noise and choice of discriminator (saved only in the checkpoint).
    key: RunKey,
    noise: NoiseSource,
    data: LabelledImages,
    device: Device,
    iteration: u64,
    wall_before: f64,
    /// The grids' row labels: the training set's class names.
    class_names: [&'static str; CLASSES],
}

fn tensor_name(prefix: &str, i: usize) -> String {
    format!("{prefix}.{i}")
}

impl GsWganRunner {
    pub fn start(out: &Path, config: GsWganRunConfig, device: &Device) -> Result<Self> {
        let data = load_recorded_data(&config.data)?;
        let discriminators = load_discriminators(&config.warm_start, &config.warm_start_config)?;
        let key = config.noise_key.new_key(config.seed)?;
        let dir = RunDir::create(out)?;
        dir.write_json(CONFIG, &config)?;
        let (as_published, per_step) = (config.accountant(Accounting::AsPublished)?, config.accountant(Accounting::PerStep)?);
        let data = LabelledImages::from_dataset(&data)?;
        let mut run = Self::assemble(dir, config, key, &data, discriminators, as_published, per_step, device)?;
        run.place_critics()?;
        Ok(run)
    }

    /// Continues the run in `root` from its checkpoint, with `iterations` as the new total if given.
    pub fn resume(root: &Path, device: &Device, iterations: Option<u64>) -> Result<Self> {
        let dir = RunDir::open_for_training(root)?;
        let mut config: GsWganRunConfig = dir.read_config(ALGORITHM)?;
        if config.tf32 && device.is_cpu() {
            return Err(Error::Invalid(format!(
                "{} trains with TF32 (config.json): resume it on a CUDA device, where it started",
                root.display()
            )));
        }
        let data = load_recorded_data(&config.data)?;
        let discriminators = load_discriminators(&config.warm_start, &config.warm_start_config)?;
        let (mut tensors, state, key): (_, GsWganState, _) = dir.load_checkpoint_keyed(&Device::Cpu)?;
        state.check_format(&dir.path(CHECKPOINT))?;
        config.noise_key.check(&key, config.seed).map_err(|e| Error::file(dir.path(CHECKPOINT), e.to_string()))?;
        // Each accountant is what config.json's settings give after the iterations taken.
        let replayed = |accounting: Accounting| config.accountant(accounting)?.after(config.mechanism(accounting), state.iteration);
        let (as_published, per_step) = (replayed(Accounting::AsPublished)?, replayed(Accounting::PerStep)?);
        if as_published != state.as_published || per_step != state.per_step {
            return Err(Error::file(
                dir.path(CHECKPOINT),
                format!(
                    "its accountants are not {} iterations of config.json's k = {}, B = {}, σ = {}, δ and budget: refusing to \
                     continue a run whose privacy record does not match its settings",
                    state.iteration, config.discriminators, config.batch_size, config.noise_multiplier
                ),
            ));
        }
        if let Some(total) = iterations {
            if total < state.iteration {
                return Err(Error::Invalid(format!(
                    "--iterations {total} is below the {} iterations {} has taken; a run cannot be shortened (nothing was \
                     changed)",
                    state.iteration,
                    root.display()
                )));
            }
            config.iterations = total;
            dir.write_json(CONFIG, &config)?;
        }
        let data = LabelledImages::from_dataset(&data)?;
        let mut run = Self::assemble(dir, config, key, &data, discriminators, as_published, per_step, device)?;
        let checkpoint = run.dir.path(CHECKPOINT);
        let mut take = |name: String| -> Result<Tensor> {
            tensors.remove(&name).ok_or_else(|| Error::file(&checkpoint, format!("lacks {name}")))?.to_device(device)
        };
        for entry in run.generator.entries_mut() {
            *entry.tensor = take(format!("generator.{}", entry.name))?;
        }
        for entry in run.ema.entries_mut() {
            *entry.tensor = take(format!("ema.{}", entry.name))?;
        }
        let count = run.generator.params().len();
        let moments =
            |take: &mut dyn FnMut(String) -> Result<Tensor>, prefix: &str, n: usize, steps: u64| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
                if steps == 0 {
                    return Ok((Vec::new(), Vec::new()));
                }
                let m = (0..n).map(|i| take(tensor_name(&format!("{prefix}.m"), i))).collect::<Result<_>>()?;
                let v = (0..n).map(|i| take(tensor_name(&format!("{prefix}.v"), i))).collect::<Result<_>>()?;
                Ok((m, v))
            };
        let (m, v) = moments(&mut take, "generator_adam", count, state.generator_adam_steps)?;
        run.g_optimizer.restore(m, v, state.generator_adam_steps)?;
        let mut slices = run.config.warm_start_config.slices(run.data.len())?;
        for record in &state.critics {
            let j = record.index;
            let critic = run.critics.get_mut(j).ok_or_else(|| Error::file(&checkpoint, format!("names discriminator {j}")))?;
            if run.saved[j].is_some() {
                return Err(Error::file(&checkpoint, format!("names discriminator {j} twice")));
            }
            let path = critic_path(&run.dir, &checkpoint, &record.file)?;
            let (mut tensors, _) = load_tensors(&path, &Device::Cpu)?;
            let mut take = |name: String| tensors.remove(&name).ok_or_else(|| Error::file(&path, format!("lacks {name}")));
            let slice = std::mem::take(&mut slices[j]);
            for entry in critic.discriminator.entries_mut() {
                *entry.tensor = take(entry.name.to_string())?;
            }
            let n = critic.discriminator.params().len();
            let (m, v) = moments(&mut take, "adam", n, record.adam_steps)?;
            critic.optimizer.restore(m, v, record.adam_steps)?;
            critic.batches = SliceBatches::restore(
                slice,
                run.step_config.batch_size,
                stream(run.config.seed, Purpose::Batches, j as u64),
                record.passes,
                record.position,
            )?;
            run.saved[j] = Some(record.file.clone());
        }
        run.iteration = state.iteration;
        run.wall_before = state.wall_s;
        run.place_critics()?;
        Ok(run)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: RunDir,
        config: GsWganRunConfig,
        key: RunKey,
        data: &LabelledImages,
        discriminators: Vec<Discriminator>,
        as_published: Accountant,
        per_step: Accountant,
        device: &Device,
    ) -> Result<Self> {
        let step_config = GsWganConfig { batch_size: config.batch_size, ..GsWganConfig::default() };
        let slices = config.warm_start_config.slices(data.len())?;
        let critics = discriminators
            .into_iter()
            .zip(slices)
            .enumerate()
            .map(|(j, (d, slice))| CriticState::new(d, slice, stream(config.seed, Purpose::Batches, j as u64), &step_config))
            .collect::<Result<Vec<_>>>()?;
        let generator = Generator::new(config.arch()?, 1, config.base, &mut stream(config.seed, Purpose::Init, 0), device)?;
        Ok(GsWganRunner {
            ema: generator.clone(),
            generator,
            g_optimizer: Adam::new(step_config.adam),
            saved: vec![None; critics.len()],
            dirty: vec![false; critics.len()],
            resident: false,
            graphed: None,
            critics,
            as_published,
            per_step,
            sanitizer: GsWganSanitizer::new(config.clip, config.noise_multiplier)?,
            noise: key.noise(config.noise),
            key,
            data: data.clone(),
            device: device.clone(),
            iteration: 0,
            wall_before: 0.0,
            step_config,
            dir,
            class_names: class_names_of_file(&config.data.labels.path),
            config,
        })
    }

    pub fn config(&self) -> &GsWganRunConfig {
        &self.config
    }

    pub fn iterations_done(&self) -> u64 {
        self.iteration
    }

    /// Where the critics live while training, in words (for the run's report).
    pub fn critic_placement(&self) -> String {
        let bytes: usize = self.critics.iter().map(critic_bytes).sum();
        let size = if bytes >= 1_000_000_000 { format!("{:.2} GB", bytes as f64 / 1e9) } else { format!("{:.1} MB", bytes as f64 / 1e6) };
        let count = self.critics.len();
        if self.resident {
            format!("all {count} critics ({size} with their Adam moments) on {}", self.device)
        } else if matches!(self.device, Device::Cpu) {
            format!("{count} critics ({size} with their Adam moments) in host memory")
        } else {
            format!("{count} critics ({size} with their Adam moments) in host memory, each paged in to {} for its iteration", self.device)
        }
    }

    /// Moves every critic to a CUDA device if they take at most half its free memory (the rest is
    /// left to the step's working set and the generator); otherwise they stay on the host and the
    /// selected one is paged in for its iteration. On the CPU there is nothing to move.
    fn place_critics(&mut self) -> Result<()> {
        let Device::Cuda(dev) = &self.device else {
            return Ok(());
        };
        let (free, _) = dev.memory_info()?;
        let needed: usize = self.critics.iter().map(critic_bytes).sum();
        if needed <= free / 2 {
            for critic in &mut self.critics {
                move_critic(critic, &self.device)?;
            }
            self.resident = true;
        }
        Ok(())
    }

    fn accountant(&self, accounting: Accounting) -> &Accountant {
        match accounting {
            Accounting::AsPublished => &self.as_published,
            Accounting::PerStep => &self.per_step,
        }
    }

    /// Records one iteration with both accountants; the governing one first, so a refused
    /// iteration is recorded by neither.
    fn spend(&mut self) -> Result<()> {
        let governing = self.config.accounting;
        let (first, second) = match governing {
            Accounting::AsPublished => (&mut self.as_published, &mut self.per_step),
            Accounting::PerStep => (&mut self.per_step, &mut self.as_published),
        };
        first.try_step(self.config.mechanism(governing), 1)?;
        second.try_step(self.config.mechanism(governing.other()), 1)?;
        Ok(())
    }

    /// Trains to the planned number of iterations or the budget; logs, grids, checkpoints, and
    /// always a checkpoint at the end.
    pub fn train(&mut self, progress: &Progress) -> Result<Outcome> {
        let mut metrics = MetricsLog::open(&self.dir.path(METRICS), Some(self.iteration))?;
        let started = Instant::now();
        let (mut interval_start, mut interval) = (Instant::now(), 0u64);
        let mut sums: Option<(Tensor, Tensor)> = None;
        // Read where the loop syncs anyway, before anything of those iterations is written.
        let mut finite = FiniteChecks::new("the generator's sanitised image gradient");
        let mut stop = Stop::Completed;
        while self.iteration < self.config.iterations {
            match self.spend() {
                Ok(()) => {}
                Err(Error::PrivacyBudget(why)) => {
                    stop = Stop::Budget(why);
                    break;
                }
                Err(e) => return Err(e),
            }
            let (losses, j) = self.iterate()?;
            let (critic, generator) = (losses.critic, losses.generator);
            finite.push(self.iteration, losses.nonfinite)?;
            sums = Some(match sums {
                None => (critic, generator),
                Some((c, g)) => (ops::binary(BinaryOp::Add, &c, &critic)?, ops::binary(BinaryOp::Add, &g, &generator)?),
            });
            interval += 1;
            let done = self.iteration;
            progress.set_step(done);
            let last = done == self.config.iterations;
            if done.is_multiple_of(self.config.log_every) || last {
                finite.verify()?;
                let (c, g) = sums.take().ok_or_else(|| Error::Invalid("no iteration in the logging interval".into()))?;
                let n = interval as f64;
                let (d_loss, g_loss) = (c.to_vec()?.iter().sum::<f32>() as f64 / n, g.to_vec()?.iter().sum::<f32>() as f64 / n);
                let (published, per_step) = (self.as_published.spent()?, self.per_step.spent()?);
                let governing = self.accountant(self.config.accounting).spent()?;
                let rate = n / interval_start.elapsed().as_secs_f64();
                metrics.append(&serde_json::json!({
                    "step": done,
                    "d_loss": d_loss,
                    "g_loss": g_loss,
                    "discriminator": j,
                    "epsilon": governing.epsilon,
                    "accounting": self.config.accounting,
                    "epsilon_as_published": published.epsilon,
                    "order_as_published": published.order,
                    "epsilon_per_step": per_step.epsilon,
                    "order_per_step": per_step.order,
                    "delta": self.config.delta,
                    "steps_per_s": rate,
                    "wall_s": self.wall_before + started.elapsed().as_secs_f64(),
                }))?;
                progress.report(
                    done,
                    &format!(
                        "ε {:.3} ({}) · D {d_loss:.4} · G {g_loss:.4} · {rate:.2} it/s{}",
                        governing.epsilon,
                        self.config.accounting.name(),
                        crate::train::dp_sgd_run::not_private(self.config.noise_key)
                    ),
                );
                (interval_start, interval) = (Instant::now(), 0);
            }
            if done.is_multiple_of(self.config.sample_every) || last {
                finite.verify()?;
                let path = self.dir.sample_grid_path(done);
                write_class_grid(&self.ema, self.config.seed, &self.class_names, &path, &self.device)?;
            }
            if done.is_multiple_of(self.config.checkpoint_every) && !last {
                finite.verify()?;
                self.checkpoint(self.wall_before + started.elapsed().as_secs_f64(), None)?;
            }
            if let Some(signal) = crate::train::interrupt::requested() {
                stop = Stop::Interrupted(signal);
                break;
            }
        }
        finite.verify()?;
        let wall_s = started.elapsed().as_secs_f64();
        let reason = stop.recorded_reason("iteration", self.iteration + 1);
        self.checkpoint(self.wall_before + wall_s, reason)?;
        Ok(Outcome { iterations: self.iteration, as_published: self.as_published.spent()?, per_step: self.per_step.spent()?, stop, wall_s })
    }

    /// Iteration t: j, the critic steps of D_j on the device, the private generator step through
    /// D_j frozen, the EMA; D_j goes back to the host. Its losses and finiteness flag, and j. The
    /// choice of j and the noise come from the secret key (the accountant relies on them), the
    /// critic's and the generator's draws from the seed.
    fn iterate(&mut self) -> Result<(PrivateLosses, usize)> {
        let t = self.iteration;
        // TF32 where the run allows it: the sanitiser's norms, clipping and noise are no GEMM.
        let _tf32 = Tf32Scope::new(self.config.tf32);
        let j = super::private::select_discriminator(&self.key, t, self.critics.len())?;
        let mut draws = stream(self.config.seed, Purpose::Generator, t);
        let critic = &mut self.critics[j];
        let key = self.noise.key_at(t, 0);
        let mut step = PhaseTwoStep {
            generator: &mut self.generator,
            optimizer: &mut self.g_optimizer,
            ema: &mut self.ema,
            sanitizer: &self.sanitizer,
            config: &self.step_config,
        };
        let losses = if self.config.cuda_graph {
            // The working critic lives on the device; the selected critic is copied in and out.
            let graphed = match &mut self.graphed {
                Some(graphed) => graphed,
                None => self.graphed.insert(GraphedPhaseTwo::new(critic, &self.device)?),
            };
            graphed.iterate(&mut step, critic, &self.data, &mut draws, &key, t)?
        } else {
            if !self.resident {
                move_critic(critic, &self.device)?;
            }
            let losses = step.run(critic, &self.data, &mut draws, &key, t)?;
            if !self.resident {
                move_critic(critic, &Device::Cpu)?;
            }
            losses
        };
        self.dirty[j] = true;
        self.iteration += 1;
        Ok((losses, j))
    }

    /// How the iterations of this session were taken, when they run on a working critic.
    pub fn iteration_counts(&self) -> Option<IterationCounts> {
        self.graphed.as_ref().map(GraphedPhaseTwo::counts)
    }

    /// Why the driver refused to capture an iteration into a CUDA graph, if it did (the
    /// iterations no graph replays were then taken eagerly).
    pub fn capture_refusal(&self) -> Option<&str> {
        self.graphed.as_ref().and_then(GraphedPhaseTwo::refusal)
    }

    /// Writes the critics trained since the last checkpoint to new files, then the checkpoint that
    /// names them (the commit point), then deletes the critic files it no longer names.
    fn checkpoint(&mut self, wall_s: f64, stopped: Option<String>) -> Result<()> {
        let critics_dir = self.dir.path(CRITICS_DIR);
        std::fs::create_dir_all(&critics_dir).map_err(|e| Error::file(&critics_dir, format!("cannot create: {e}")))?;
        let mut saved = self.saved.clone();
        let mut critics = Vec::new();
        for (j, critic) in self.critics.iter().enumerate() {
            if self.dirty[j] {
                let file = format!("critic-{j:04}-{:08}.safetensors", self.iteration);
                let mut tensors: Vec<(String, &Tensor)> =
                    critic.discriminator.named_tensors().into_iter().map(|(n, t)| (n.to_string(), t)).collect();
                push_moments(&mut tensors, "adam", &critic.optimizer);
                let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                save_tensors(&critics_dir.join(&file), &named, None)?;
                saved[j] = Some(file);
            }
            if let Some(file) = &saved[j] {
                critics.push(CriticRecord {
                    index: j,
                    file: file.clone(),
                    adam_steps: critic.optimizer.steps(),
                    passes: critic.batches.passes(),
                    position: critic.batches.position(),
                });
            }
        }
        let mut tensors: Vec<(String, &Tensor)> = Vec::new();
        tensors.extend(self.generator.named_tensors().into_iter().map(|(n, t)| (format!("generator.{n}"), t)));
        tensors.extend(self.ema.named_tensors().into_iter().map(|(n, t)| (format!("ema.{n}"), t)));
        push_moments(&mut tensors, "generator_adam", &self.g_optimizer);
        let (published, per_step) = (self.as_published.spent()?, self.per_step.spent()?);
        let state = GsWganState {
            format: STATE_FORMAT,
            algorithm: ALGORITHM.to_string(),
            iteration: self.iteration,
            generator_adam_steps: self.g_optimizer.steps(),
            as_published: self.as_published.clone(),
            per_step: self.per_step.clone(),
            epsilon: self.accountant(self.config.accounting).spent()?.epsilon,
            epsilon_as_published: published.epsilon,
            epsilon_per_step: per_step.epsilon,
            delta: self.config.delta,
            critics,
            wall_s,
            stopped,
        };
        self.dir.save_checkpoint(&tensors, &state, &self.key)?;
        self.saved = saved;
        self.dirty.fill(false);
        remove_unnamed_critic_files(&critics_dir, &self.saved)
    }
}

/// The path of a critic file a checkpoint names: a plain file name under `critics/`, nothing that
/// could point elsewhere.
fn critic_path(dir: &RunDir, checkpoint: &Path, file: &str) -> Result<PathBuf> {
    let plain = Path::new(file).file_name().is_some_and(|name| name == file) && file.ends_with(".safetensors");
    if !plain {
        return Err(Error::file(checkpoint, format!("names critic file {file:?}, which is not a file name under {CRITICS_DIR}/")));
    }
    Ok(dir.path(CRITICS_DIR).join(file))
}

/// Deletes the critic files under `critics_dir` that `saved` does not name: versions superseded by
/// the checkpoint just written, or written by one a crash interrupted.
fn remove_unnamed_critic_files(critics_dir: &Path, saved: &[Option<String>]) -> Result<()> {
    let named: HashSet<&str> = saved.iter().flatten().map(String::as_str).collect();
    let entries = std::fs::read_dir(critics_dir).map_err(|e| Error::file(critics_dir, format!("cannot list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(critics_dir, format!("cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("critic-") && name.ends_with(".safetensors") && !named.contains(name.as_str()) {
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::file(entry.path(), format!("cannot delete a superseded critic file: {e}")))?;
        }
    }
    Ok(())
}

fn push_moments<'a>(tensors: &mut Vec<(String, &'a Tensor)>, prefix: &str, adam: &'a Adam) {
    let (m, v) = adam.moments();
    tensors.extend(m.iter().enumerate().map(|(i, t)| (tensor_name(&format!("{prefix}.m"), i), t)));
    tensors.extend(v.iter().enumerate().map(|(i, t)| (tensor_name(&format!("{prefix}.v"), i), t)));
}

/// Bytes of a critic's weights, buffers and Adam moments (the moments counted even before the
/// first step creates them).
fn critic_bytes(critic: &CriticState) -> usize {
    let params: usize = critic.discriminator.params().iter().map(|p| p.numel()).sum();
    let all: usize = critic.discriminator.named_tensors().iter().map(|(_, t)| t.numel()).sum();
    4 * (all + 2 * params)
}

/// Moves a discriminator and its Adam moments to `device` (nothing to do if they are there).
fn move_critic(critic: &mut CriticState, device: &Device) -> Result<()> {
    if critic.discriminator.conv1.bias.device().same(device) {
        return Ok(());
    }
    for entry in critic.discriminator.entries_mut() {
        *entry.tensor = entry.tensor.to_device(device)?;
    }
    let steps = critic.optimizer.steps();
    let (m, v) = critic.optimizer.moments();
    let (m, v) = (
        m.iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>()?,
        v.iter().map(|t| t.to_device(device)).collect::<Result<Vec<_>>>()?,
    );
    critic.optimizer.restore(m, v, steps)
}

/// Images generated per forward pass when sampling: bounds memory whatever the count.
const SAMPLE_CHUNK: usize = 1000;

/// `per_class` images of every class from `generator` (a copy of it runs, so its spectral-norm
/// vectors stay as training left them), z ~ Bernoulli(0.5) from `rng`: `[10·per_class, 784]` in
/// [0, 1], class-major, and the labels. Sampling is post-processing: no privacy cost.
pub fn generate_by_class<R: Rng>(generator: &Generator, per_class: usize, rng: &mut R, device: &Device) -> Result<(Vec<f32>, Vec<u8>)> {
    collect_images(|sink| generate_by_class_into(generator, per_class, rng, device, sink))
}

/// [`generate_by_class`] handing each chunk to `sink` instead of collecting them.
pub fn generate_by_class_into<R: Rng>(
    generator: &Generator,
    per_class: usize,
    rng: &mut R,
    device: &Device,
    sink: &mut ImageSink,
) -> Result<()> {
    let mut copy = generator.clone();
    crate::train::by_class_chunks(per_class, SAMPLE_CHUNK, |class, n| {
        let z = bernoulli_latent(std::slice::from_mut(rng), n, device)?;
        let onehot = one_hot(&vec![class; n], 1, device)?;
        sink(&copy.forward(&Tape::new(), &z, &onehot)?.to_vec()?, class as u8)
    })
}

/// A 10 × 10 grid from the EMA generator, one row per class (labelled `class_names`), from the
/// run's fixed codes.
pub fn write_class_grid(generator: &Generator, seed: u64, class_names: &[&str], path: &Path, device: &Device) -> Result<()> {
    let (images, _) = generate_by_class(generator, 10, &mut stream(seed, Purpose::Grid, 0), device)?;
    Grid { images: &images, rows: CLASSES, cols: 10, height: 28, width: 28, range: (0.0, 1.0), row_labels: class_names }.write_png(path)
}

/// The released generator G_s of a phase-2 run, from its checkpoint, with its config.
pub fn load_ema_generator(root: &Path, device: &Device) -> Result<(Generator, GsWganRunConfig, GsWganState)> {
    let dir = RunDir::open(root)?;
    let config: GsWganRunConfig = dir.read_config(ALGORITHM)?;
    // On the host first: the checkpoint also holds every selected discriminator and its Adam state.
    let (mut tensors, state): (_, GsWganState) = dir.load_checkpoint(&Device::Cpu)?;
    state.check_format(&dir.path(CHECKPOINT))?;
    let mut ema = Generator::new(config.arch()?, 1, config.base, &mut stream(config.seed, Purpose::Init, 0), device)?;
    load_prefixed(&mut ema, &mut tensors, "ema", &dir.path(CHECKPOINT), device)?;
    Ok((ema, config, state))
}

/// The released data set of G_s: `per_class` images per class in [0, 1], codes from `seed`.
pub fn sample_released(generator: &Generator, per_class: usize, seed: u64, device: &Device) -> Result<(Vec<f32>, Vec<u8>)> {
    generate_by_class(generator, per_class, &mut stream(seed, Purpose::Sample, 0), device)
}

/// [`sample_released`] a chunk at a time, into `sink`.
pub fn sample_released_into(generator: &Generator, per_class: usize, seed: u64, device: &Device, sink: &mut ImageSink) -> Result<()> {
    generate_by_class_into(generator, per_class, &mut stream(seed, Purpose::Sample, 0), device, sink)
}
