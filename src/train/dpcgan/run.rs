//! A whole DP-CGAN run: data, schedule, accountant, logging, grids and checkpoints around
//! [`DpCgan`]'s step. The accountant governs: a step is recorded before it runs, and a step that
//! would pass the ε budget is never taken; the run stops there with a checkpoint.
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{DpCgan, DpCganConfig, StepLosses};
use crate::backend::AdamParams;
use crate::data::classes::class_names;
use crate::data::dataset::{Dataset, PixelScale};
use crate::data::sampling::Sampling;
use crate::dp::{KeySource, NoiseMode, RunKey};
use crate::error::{Error, Result};
use crate::io::image::Grid;
use crate::models::dpcgan::{Generator, CLASSES, LATENT};
use crate::nn::load_prefixed;
use crate::privacy::accountant::Accountant;
use crate::privacy::conversion::Conversion;
use crate::privacy::rdp::Orders;
use crate::tensor::{Device, Tensor};
use crate::train::captured::{self, poisson_rows, StepGraph};
use crate::train::dp_sgd_run::{
    self, load_recorded_data, resumed_total, CheckpointCheck, PrivacyPlan, PrivacyRequest, PrivateRun, RecordedPrivacy, RunCore, StepReport,
};
use crate::train::progress::Progress;
use crate::train::replay::{stream, Purpose, StepBatches};
use crate::train::resident::ResidentData;
use crate::train::run_dir::{file_sha256, RunDir, CONFIG};
use crate::train::{by_class_chunks, check_positive, collect_images, ImageSink};

pub const ALGORITHM: &str = "dp-cgan";
/// Bumped when the checkpoint layout changes; older checkpoints are refused with a clear error.
const STATE_FORMAT: u32 = 2;

/// The rows a `--cuda-graph` run pads its batches to: the batch size for shuffled batches; under
/// Poisson sampling [`poisson_rows`].
pub fn padded_rows(sampling: SamplingKind, batch_size: usize, sample_rate: f64, records: usize) -> usize {
    match sampling {
        SamplingKind::Shuffle => batch_size,
        SamplingKind::Poisson => poisson_rows(sample_rate, records),
    }
}

/// How a batch is drawn (see [`Sampling`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplingKind {
    Poisson,
    Shuffle,
}

/// D's learning rate over the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    Constant,
    /// Linear from the initial rate to `final_lr` over `decay_steps` steps, then constant.
    LinearDecay {
        final_lr: f32,
        decay_steps: u64,
    },
}

impl LrSchedule {
    pub fn at(self, initial: f32, step: u64) -> f32 {
        match self {
            LrSchedule::Constant => initial,
            LrSchedule::LinearDecay { final_lr, decay_steps } => {
                let progress = step.min(decay_steps) as f64 / decay_steps.max(1) as f64;
                (initial as f64 + (final_lr as f64 - initial as f64) * progress) as f32
            }
        }
    }
}

/// One input file and its checksum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: PathBuf,
    pub sha256: String,
}

/// The training data a run saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub dir: PathBuf,
    pub images: FileRecord,
    pub labels: FileRecord,
    pub records: usize,
}

impl DataRecord {
    /// The files of `data` with their checksums, by absolute path: a run resumed, or a phase 2
    /// started, from another working directory finds them.
    pub fn of(data: &Dataset) -> Result<Self> {
        let absolute = |p: &Path| std::path::absolute(p).map_err(|e| Error::file(p, format!("cannot make the path absolute: {e}")));
        let (images, labels) = data.files();
        let (images, labels) = (absolute(images)?, absolute(labels)?);
        Ok(DataRecord {
            dir: images.parent().map(Path::to_path_buf).unwrap_or_default(),
            images: FileRecord { sha256: file_sha256(&images)?, path: images },
            labels: FileRecord { sha256: file_sha256(&labels)?, path: labels },
            records: data.len(),
        })
    }
}

/// The build that ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub version: String,
    pub commit: Option<String>,
}

impl BuildRecord {
    pub fn current() -> Self {
        BuildRecord { version: env!("CARGO_PKG_VERSION").to_string(), commit: crate::bench::git_commit() }
    }
}

/// G's Adam settings as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamRecord {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// What the user chose; [`DpCganRunConfig::plan`] turns it into a complete configuration.
#[derive(Clone, Debug)]
pub struct DpCganSettings {
    pub data: PathBuf,
    pub seed: u64,
    /// Total steps; `None` means `epochs` epochs.
    pub steps: Option<u64>,
    pub epochs: f64,
    pub batch_size: usize,
    pub clip: f32,
    /// `None`: calibrated to `target_epsilon`.
    pub noise_multiplier: Option<f32>,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub sampling: SamplingKind,
    pub orders: Orders,
    pub conversion: Conversion,
    pub d_lr: f32,
    pub d_lr_schedule: LrSchedule,
    pub g_adam: AdamRecord,
    pub noise: NoiseMode,
    /// Derive the noise and batch key from the seed (`--replayable-noise`): not private.
    pub replayable_noise: bool,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    /// Pad each batch to a fixed number of rows so that a CUDA device replays the steps from one
    /// CUDA graph (`--cuda-graph`; see [`crate::train::dpcgan::graphed`]).
    pub cuda_graph: bool,
}

impl Default for DpCganSettings {
    /// docs/algorithms.md §1's published settings, except Poisson sampling (what the ε holds for).
    fn default() -> Self {
        let p = DpCganConfig::default();
        DpCganSettings {
            data: PathBuf::new(),
            seed: 0,
            steps: None,
            epochs: 249.0,
            batch_size: 600,
            clip: p.clip,
            noise_multiplier: Some(p.noise_multiplier),
            target_epsilon: None,
            delta: 1e-5,
            sampling: SamplingKind::Poisson,
            orders: Orders::Standard,
            conversion: Conversion::Improved,
            d_lr: p.d_lr,
            d_lr_schedule: LrSchedule::Constant,
            g_adam: AdamRecord { lr: p.g_adam.lr, beta1: p.g_adam.beta1, beta2: p.g_adam.beta2, eps: p.g_adam.eps },
            noise: NoiseMode::Secure,
            replayable_noise: false,
            log_every: 100,
            sample_every: 1000,
            checkpoint_every: 1000,
            cuda_graph: false,
        }
    }
}

/// Everything needed to reproduce a run: written to `config.json` before the first step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpCganRunConfig {
    pub algorithm: String,
    pub data: DataRecord,
    pub seed: u64,
    pub steps: u64,
    pub batch_size: usize,
    pub sampling: SamplingKind,
    /// q = B/N: the accountant's sampling rate.
    pub sample_rate: f64,
    pub clip: f32,
    pub noise_multiplier: f32,
    pub noise_multiplier_calibrated: bool,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub orders: Orders,
    pub conversion: Conversion,
    pub d_lr: f32,
    pub d_lr_schedule: LrSchedule,
    pub g_adam: AdamRecord,
    pub noise: NoiseMode,
    /// Where the noise and batch key comes from: a secret, or (not private) the seed.
    pub noise_key: KeySource,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub build: BuildRecord,
    /// The device the run started on.
    pub device: String,
    /// With `--cuda-graph`: the rows every batch that fits is padded to (weight-0 rows, see
    /// [`crate::train::dpcgan::graphed`]), so that a CUDA device replays those steps from one
    /// graph; a larger batch takes the unpadded step. Any device takes the same steps, so a
    /// resumed run continues bit for bit wherever it runs. Absent in runs without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padded_rows: Option<usize>,
}

impl DpCganRunConfig {
    /// Checks the settings against the data and the accountant, calibrating σ if asked. Nothing
    /// is written: an impossible setting fails here, before any file exists.
    pub fn plan(settings: &DpCganSettings, data: &Dataset, device: &Device) -> Result<Self> {
        let s = settings;
        let records = data.len();
        // Every number before anything is written: NaN and negative values included.
        check_positive("--d-lr", s.d_lr as f64)?;
        check_positive("--g-lr", s.g_adam.lr as f64)?;
        if let LrSchedule::LinearDecay { final_lr, decay_steps } = s.d_lr_schedule {
            check_positive("--d-lr-final", final_lr as f64)?;
            if decay_steps == 0 {
                return Err(Error::Invalid("--d-lr-decay-steps must be at least 1".into()));
            }
        }
        let steps_per_epoch = (records / s.batch_size.max(1)) as f64;
        let steps = match s.steps {
            Some(steps) => steps,
            None if s.epochs.is_finite() && s.epochs > 0.0 => (s.epochs * steps_per_epoch).round() as u64,
            None => return Err(Error::Invalid(format!("--epochs must be positive, got {}", s.epochs))),
        };
        let request = PrivacyRequest {
            batch_size: s.batch_size,
            steps,
            clip: s.clip,
            noise_multiplier: s.noise_multiplier,
            target_epsilon: s.target_epsilon,
            delta: s.delta,
            orders: s.orders,
            conversion: s.conversion,
        };
        let every = [("--log-every", s.log_every), ("--sample-every", s.sample_every), ("--checkpoint-every", s.checkpoint_every)];
        let PrivacyPlan { sample_rate, noise_multiplier, calibrated } = request.plan(records, every)?;
        let config = DpCganRunConfig {
            algorithm: ALGORITHM.to_string(),
            data: DataRecord::of(data)?,
            seed: s.seed,
            steps,
            batch_size: s.batch_size,
            sampling: s.sampling,
            sample_rate,
            clip: s.clip,
            noise_multiplier,
            noise_multiplier_calibrated: calibrated,
            target_epsilon: s.target_epsilon,
            delta: s.delta,
            orders: s.orders,
            conversion: s.conversion,
            d_lr: s.d_lr,
            d_lr_schedule: s.d_lr_schedule,
            g_adam: s.g_adam,
            noise: s.noise,
            noise_key: KeySource::from_flag(s.replayable_noise),
            log_every: s.log_every,
            sample_every: s.sample_every,
            checkpoint_every: s.checkpoint_every,
            build: BuildRecord::current(),
            device: device.to_string(),
            padded_rows: s.cuda_graph.then(|| padded_rows(s.sampling, s.batch_size, sample_rate, records)),
        };
        Ok(config)
    }

    /// The privacy settings it records, as every DP-SGD run records them.
    pub fn privacy(&self) -> RecordedPrivacy {
        RecordedPrivacy {
            steps: self.steps,
            batch_size: self.batch_size,
            plan: PrivacyPlan {
                sample_rate: self.sample_rate,
                noise_multiplier: self.noise_multiplier,
                calibrated: self.noise_multiplier_calibrated,
            },
            clip: self.clip,
            target_epsilon: self.target_epsilon,
            delta: self.delta,
            orders: self.orders,
            conversion: self.conversion,
            noise: self.noise,
            noise_key: self.noise_key,
        }
    }

    fn sampling(&self) -> Sampling {
        match self.sampling {
            SamplingKind::Poisson => Sampling::Poisson { sample_rate: self.sample_rate },
            SamplingKind::Shuffle => Sampling::Shuffle { batch_size: self.batch_size },
        }
    }

    fn step_config(&self) -> DpCganConfig {
        let a = self.g_adam;
        DpCganConfig {
            clip: self.clip,
            noise_multiplier: self.noise_multiplier,
            batch_divisor: self.batch_size as f32,
            d_lr: self.d_lr,
            g_adam: AdamParams { lr: a.lr, beta1: a.beta1, beta2: a.beta2, eps: a.eps, weight_decay: 0.0 },
        }
    }
}

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpCganState {
    pub format: u32,
    pub algorithm: String,
    /// Steps completed.
    pub step: u64,
    pub generator_adam_steps: u64,
    pub accountant: Accountant,
    pub epsilon: f64,
    pub delta: f64,
    /// Training time so far, over all processes of the run.
    pub wall_s: f64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
}

pub use crate::train::Stop;

pub use crate::train::dp_sgd_run::{not_private, Outcome};

/// See the module documentation.
pub struct DpCganRun {
    core: RunCore,
    config: DpCganRunConfig,
    model: DpCgan,
    batches: StepBatches,
    /// The training set on the run's device; each step gathers its batch there.
    data: ResidentData,
    device: Device,
    /// The grids' row labels: the training set's class names.
    class_names: [&'static str; CLASSES],
    /// With padded rows on a CUDA device: the step captured after the first one, replayed since
    /// (or the driver's refusal, the steps then eager).
    graph: StepGraph<StepLosses>,
}

impl DpCganRun {
    /// A new run in `out` with a planned configuration (see [`DpCganRunConfig::plan`]).
    pub fn start(out: &Path, config: DpCganRunConfig, data: &Dataset, device: &Device) -> Result<Self> {
        let key = config.noise_key.new_key(config.seed)?;
        let dir = RunDir::create(out)?;
        dir.write_json(CONFIG, &config)?;
        let accountant = config.privacy().accountant()?;
        Self::assemble(dir, config, key, data, device, accountant, 0.0)
    }

    /// Continues the run in `root` from its checkpoint, with `steps` as the new total if given.
    pub fn resume(root: &Path, device: &Device, steps: Option<u64>) -> Result<Self> {
        let dir = RunDir::open_for_training(root)?;
        let mut config: DpCganRunConfig = dir.read_config(ALGORITHM)?;
        let data = load_recorded_data(&config.data)?;
        let (tensors, state, key): (_, DpCganState, _) = dir.load_checkpoint_keyed(device)?;
        // The accountant is what config.json's q and σ give after the steps taken, nothing else.
        let expected = config.privacy().accountant_after(state.step)?;
        CheckpointCheck {
            dir: &dir,
            format: (STATE_FORMAT, ALGORITHM),
            found: (state.format, &state.algorithm),
            noise_key: config.noise_key,
            seed: config.seed,
            key: &key,
            expected: &expected,
            recorded: &state.accountant,
            steps: state.step,
            plan: config.privacy().plan,
        }
        .verify()?;
        if let Some(total) = resumed_total("--steps", steps, state.step, root)? {
            config.steps = total;
            dir.write_json(CONFIG, &config)?;
        }
        let mut run = Self::assemble(dir, config, key, &data, device, expected, state.wall_s)?;
        run.model.restore(tensors, state.step, state.generator_adam_steps)?;
        Ok(run)
    }

    fn assemble(
        dir: RunDir,
        config: DpCganRunConfig,
        key: RunKey,
        data: &Dataset,
        device: &Device,
        accountant: Accountant,
        wall_before: f64,
    ) -> Result<Self> {
        let mut init = stream(config.seed, Purpose::Init, 0);
        let model = DpCgan::new(config.step_config(), key.noise(config.noise), &mut init, device)?;
        let batches = StepBatches::new(data.len(), config.sampling(), &key)?;
        let c = &config;
        let every = (c.log_every, c.sample_every, c.checkpoint_every);
        let settings = c.privacy().loop_settings(every);
        Ok(DpCganRun {
            core: RunCore { dir, key, accountant, settings, wall_before },
            model,
            batches,
            data: ResidentData::upload(data, PixelScale::Symmetric, device)?,
            device: device.clone(),
            class_names: class_names(data.labels()),
            config,
            graph: StepGraph::Pending,
        })
    }

    pub fn config(&self) -> &DpCganRunConfig {
        &self.config
    }

    pub fn model(&self) -> &DpCgan {
        &self.model
    }

    pub fn steps_taken(&self) -> u64 {
        self.model.steps_taken()
    }

    /// Trains until the planned number of steps or the budget (see [`dp_sgd_run::train`]).
    pub fn train(&mut self, progress: &Progress) -> Result<Outcome> {
        dp_sgd_run::train(self, progress)
    }
}

impl PrivateRun for DpCganRun {
    fn core(&self) -> &RunCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut RunCore {
        &mut self.core
    }

    fn steps_taken(&self) -> u64 {
        self.model.steps_taken()
    }

    /// Step `step` (0-based): its batch and generator randomness come from the run seed and the
    /// step number alone, so a resumed run takes exactly the same step.
    ///
    /// With padded rows, a batch that fits them takes the padded step: eagerly, or on a CUDA
    /// device replayed from the graph captured at the first such step after the first step.
    fn step(&mut self, step: u64) -> Result<StepReport> {
        let _range = crate::profile::range("dpcgan_step");
        self.model.set_discriminator_lr(self.config.d_lr_schedule.at(self.config.d_lr, step));
        let batch = self.batches.batch(step)?;
        let mut rng = stream(self.config.seed, Purpose::Generator, step);
        let fake = self.config.batch_size;
        let rows = self.config.padded_rows.filter(|&rows| batch.len() <= rows);
        let report = |l: StepLosses| StepReport { d_loss: l.discriminator, g_loss: Some(l.generator), nonfinite: l.nonfinite };
        let Some(rows) = rows else {
            let (images, labels) = self.data.batch(&batch)?;
            return Ok(report(self.model.private_step(&images, &labels, fake, &mut rng)?));
        };
        let batch: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
        Ok(report(captured::run_step(&mut self.graph, &mut self.model, &self.data, &batch, rows, fake, &mut rng)?))
    }

    fn extra_metrics(&self, done: u64) -> serde_json::Map<String, serde_json::Value> {
        let lr = self.config.d_lr_schedule.at(self.config.d_lr, done - 1);
        serde_json::Map::from_iter([("d_lr".to_string(), serde_json::json!(lr))])
    }

    fn capture_refusal(&self) -> Option<&str> {
        self.graph.refusal()
    }

    fn checkpoint(&self, wall_s: f64, stopped: Option<String>) -> Result<()> {
        self.core.save(&self.model.named_tensors(), |spent| DpCganState {
            format: STATE_FORMAT,
            algorithm: ALGORITHM.to_string(),
            step: self.model.steps_taken(),
            generator_adam_steps: self.model.generator_adam_steps(),
            accountant: self.core.accountant.clone(),
            epsilon: spent.epsilon,
            delta: spent.delta,
            wall_s,
            stopped,
        })
    }

    /// A 10 × 10 grid, one row per class, from fixed latent codes (post-processing of G: no
    /// privacy cost).
    fn write_grid(&self, step: u64) -> Result<()> {
        write_class_grid(&self.model.generator, self.config.seed, &self.class_names, &self.core.dir.sample_grid_path(step), &self.device)
    }
}

/// Draws `per_class` images of every class from `generator` with latent codes from `rng`: images
/// `[10·per_class, 784]` in [−1, 1], class-major, and their labels. Balanced labels, never the
/// real class counts (which are not public).
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
    // 5,000 images per forward pass: this MLP's activations are small.
    by_class_chunks(per_class, 5000, |class, n| {
        let z = Tensor::randn(&[1, n, LATENT], rng, device)?;
        let onehot = Tensor::one_hot(&vec![class; n], CLASSES, &[1, n], device)?;
        sink(&generator.forward(&crate::autograd::Tape::new(), &z, &onehot)?.to_vec()?, class as u8)
    })
}

/// The released data set of a generator: `per_class` images of each class, pixels in [0, 1]
/// (from tanh's [−1, 1]), latent codes from `seed` (sampling is post-processing: no privacy cost).
pub fn sample_released(generator: &Generator, per_class: usize, seed: u64, device: &Device) -> Result<(Vec<f32>, Vec<u8>)> {
    collect_images(|sink| sample_released_into(generator, per_class, seed, device, sink))
}

/// [`sample_released`] a chunk at a time, into `sink`.
pub fn sample_released_into(generator: &Generator, per_class: usize, seed: u64, device: &Device, sink: &mut ImageSink) -> Result<()> {
    let mut rng = stream(seed, Purpose::Sample, 0);
    generate_by_class_into(generator, per_class, &mut rng, device, &mut |images, class| {
        let unit: Vec<f32> = images.iter().map(|&x| ((x + 1.0) * 0.5).clamp(0.0, 1.0)).collect();
        sink(&unit, class)
    })
}

/// The progress grid of a generator: 10 rows (classes, labelled `class_names`) of 10 samples
/// from the run's fixed codes.
pub fn write_class_grid(generator: &Generator, seed: u64, class_names: &[&str], path: &Path, device: &Device) -> Result<()> {
    let (images, _) = generate_by_class(generator, 10, &mut stream(seed, Purpose::Grid, 0), device)?;
    Grid { images: &images, rows: CLASSES, cols: 10, height: 28, width: 28, range: (-1.0, 1.0), row_labels: class_names }.write_png(path)
}

/// The generator of a finished (or stopped) run, from its checkpoint, with its config and the
/// checkpoint's state: read from the same file as the weights, so the step and ε reported with
/// them are theirs.
pub fn load_generator(root: &Path, device: &Device) -> Result<(Generator, DpCganRunConfig, DpCganState)> {
    let dir = RunDir::open(root)?;
    let config: DpCganRunConfig = dir.read_config(ALGORITHM)?;
    let (mut tensors, state): (_, DpCganState) = dir.load_checkpoint(device)?;
    let mut generator = Generator::new(1, &mut stream(config.seed, Purpose::Init, 0), device)?;
    load_prefixed(&mut generator, &mut tensors, "generator", &dir.path(crate::train::run_dir::CHECKPOINT), device)?;
    Ok((generator, config, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_decay_reaches_its_end_and_stays() {
        let s = LrSchedule::LinearDecay { final_lr: 0.052, decay_steps: 10_000 };
        assert_eq!(s.at(0.15, 0), 0.15);
        assert!((s.at(0.15, 5_000) - 0.101).abs() < 1e-6);
        assert!((s.at(0.15, 10_000) - 0.052).abs() < 1e-7);
        assert_eq!(s.at(0.15, 20_000), s.at(0.15, 10_000));
        assert_eq!(LrSchedule::Constant.at(0.15, 20_000), 0.15);
    }
}
