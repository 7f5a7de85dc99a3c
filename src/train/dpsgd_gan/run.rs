//! A whole DPSGD-GAN run (docs/algorithms.md §4): data, the G-step schedule, the accountant, logging, grids
//! and checkpoints around [`DpsgdGan`]'s steps, in the loop DP-CGAN's run uses
//! ([`dp_sgd_run::train`]). A step is one D step, the accountant's unit; a G step follows every
//! n_D of them. Batches are Poisson-sampled at q = B/N from the run's secret key.
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::schedule::{GStepSchedule, ScheduleState};
use super::{fake_accuracy, DiscriminatorLosses, DpsgdGan, DpsgdGanConfig, PUBLISHED_ADAM};
use crate::backend::AdamParams;
use crate::data::classes::class_names;
use crate::data::dataset::{Dataset, PixelScale};
use crate::data::sampling::Sampling;
use crate::dp::{KeySource, NoiseMode, RunKey};
use crate::error::{Error, Result};
use crate::io::image::Grid;
use crate::models::dpsgd_gan::{Generator, CLASSES, SIDE, WIDTH};
use crate::nn::load_prefixed;
use crate::privacy::accountant::Accountant;
use crate::privacy::conversion::Conversion;
use crate::privacy::rdp::Orders;
use crate::tensor::{Device, Tensor};
use crate::train::captured::{self, poisson_rows, StepGraph};
use crate::train::dp_sgd_run::{
    self, load_recorded_data, resumed_total, CheckpointCheck, Outcome, PrivacyPlan, PrivacyRequest, PrivateRun, RecordedPrivacy, RunCore,
    StepReport,
};
use crate::train::dpcgan::run::{AdamRecord, BuildRecord, DataRecord};
use crate::train::progress::Progress;
use crate::train::replay::{stream, Purpose, StepBatches};
use crate::train::resident::ResidentData;
use crate::train::run_dir::{RunDir, CHECKPOINT, CONFIG};
use crate::train::{by_class_chunks, check_positive, collect_images, ImageSink};

pub const ALGORITHM: &str = "dpsgd-gan";
/// Bumped when the checkpoint layout changes; older checkpoints are refused with a clear error.
const STATE_FORMAT: u32 = 1;

/// What the user chose; [`DpsgdGanRunConfig::plan`] turns it into a complete configuration.
#[derive(Clone, Debug)]
pub struct DpsgdGanSettings {
    pub data: PathBuf,
    pub seed: u64,
    /// Total D steps (the accountant's steps).
    pub d_steps: u64,
    pub batch_size: usize,
    pub clip: f32,
    /// `None`: calibrated to `target_epsilon`.
    pub noise_multiplier: Option<f32>,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub orders: Orders,
    pub conversion: Conversion,
    /// d, the models' width.
    pub width: usize,
    pub schedule: GStepSchedule,
    pub d_lr: f32,
    pub g_lr: f32,
    pub noise: NoiseMode,
    /// Derive the noise and batch key from the seed (`--replayable-noise`): not private.
    pub replayable_noise: bool,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    /// Pad each batch to a fixed number of rows so that a CUDA device replays the D steps from one
    /// CUDA graph (`--cuda-graph`; see [`crate::train::captured`]).
    pub cuda_graph: bool,
}

impl Default for DpsgdGanSettings {
    /// docs/algorithms.md §4's published run: 450,000 D steps, B = 128, C = 1, σ = 1, n_D = 50, d = 128.
    fn default() -> Self {
        let p = DpsgdGanConfig::default();
        DpsgdGanSettings {
            data: PathBuf::new(),
            seed: 0,
            d_steps: 450_000,
            batch_size: p.batch_size,
            clip: p.clip,
            noise_multiplier: Some(p.noise_multiplier),
            target_epsilon: None,
            delta: 1e-5,
            orders: Orders::Standard,
            conversion: Conversion::Improved,
            width: WIDTH,
            schedule: GStepSchedule::Fixed { d_steps_per_g_step: 50 },
            d_lr: p.d_adam.lr,
            g_lr: p.g_adam.lr,
            noise: NoiseMode::Secure,
            replayable_noise: false,
            log_every: 100,
            sample_every: 5000,
            checkpoint_every: 5000,
            cuda_graph: false,
        }
    }
}

/// Everything needed to reproduce a run: written to `config.json` before the first step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpsgdGanRunConfig {
    pub algorithm: String,
    pub data: DataRecord,
    pub seed: u64,
    /// D steps.
    pub steps: u64,
    /// B: the expected real batch and the generated examples per D step.
    pub batch_size: usize,
    /// q = B/N (Poisson).
    pub sample_rate: f64,
    pub clip: f32,
    pub noise_multiplier: f32,
    pub noise_multiplier_calibrated: bool,
    pub target_epsilon: Option<f64>,
    pub delta: f64,
    pub orders: Orders,
    pub conversion: Conversion,
    pub width: usize,
    pub d_steps_per_g_step: GStepSchedule,
    pub d_adam: AdamRecord,
    pub g_adam: AdamRecord,
    pub noise: NoiseMode,
    pub noise_key: KeySource,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub build: BuildRecord,
    pub device: String,
    /// With `--cuda-graph`: the rows every batch that fits is padded to (weight-0 rows, see
    /// [`crate::train::captured`]), so that a CUDA device replays those D steps from one graph;
    /// a larger batch takes the unpadded step. Any device takes the same steps, so a resumed run
    /// continues bit for bit wherever it runs. Absent in runs without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padded_rows: Option<usize>,
}

fn adam_record(lr: f32) -> AdamRecord {
    AdamRecord { lr, beta1: PUBLISHED_ADAM.beta1, beta2: PUBLISHED_ADAM.beta2, eps: PUBLISHED_ADAM.eps }
}

fn adam_params(a: AdamRecord) -> AdamParams {
    AdamParams { lr: a.lr, beta1: a.beta1, beta2: a.beta2, eps: a.eps, weight_decay: 0.0 }
}

impl DpsgdGanRunConfig {
    /// Checks the settings against the data and the accountant, calibrating σ if asked. Nothing
    /// is written: an impossible setting fails here, before any file exists.
    pub fn plan(settings: &DpsgdGanSettings, data: &Dataset, device: &Device) -> Result<Self> {
        let s = settings;
        check_positive("--d-lr", s.d_lr as f64)?;
        check_positive("--g-lr", s.g_lr as f64)?;
        if s.width < 2 || !s.width.is_multiple_of(2) {
            return Err(Error::Invalid(format!("--width must be an even number of at least 2, got {}", s.width)));
        }
        let request = PrivacyRequest {
            batch_size: s.batch_size,
            steps: s.d_steps,
            clip: s.clip,
            noise_multiplier: s.noise_multiplier,
            target_epsilon: s.target_epsilon,
            delta: s.delta,
            orders: s.orders,
            conversion: s.conversion,
        };
        let every = [("--log-every", s.log_every), ("--sample-every", s.sample_every), ("--checkpoint-every", s.checkpoint_every)];
        let PrivacyPlan { sample_rate, noise_multiplier, calibrated } = request.plan(data.len(), every)?;
        Ok(DpsgdGanRunConfig {
            algorithm: ALGORITHM.to_string(),
            data: DataRecord::of(data)?,
            seed: s.seed,
            steps: s.d_steps,
            batch_size: s.batch_size,
            sample_rate,
            clip: s.clip,
            noise_multiplier,
            noise_multiplier_calibrated: calibrated,
            target_epsilon: s.target_epsilon,
            delta: s.delta,
            orders: s.orders,
            conversion: s.conversion,
            width: s.width,
            d_steps_per_g_step: s.schedule,
            d_adam: adam_record(s.d_lr),
            g_adam: adam_record(s.g_lr),
            noise: s.noise,
            noise_key: KeySource::from_flag(s.replayable_noise),
            log_every: s.log_every,
            sample_every: s.sample_every,
            checkpoint_every: s.checkpoint_every,
            build: BuildRecord::current(),
            device: device.to_string(),
            padded_rows: s.cuda_graph.then(|| poisson_rows(sample_rate, data.len())),
        })
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

    pub fn step_config(&self) -> DpsgdGanConfig {
        DpsgdGanConfig {
            clip: self.clip,
            noise_multiplier: self.noise_multiplier,
            batch_size: self.batch_size,
            d_adam: adam_params(self.d_adam),
            g_adam: adam_params(self.g_adam),
        }
    }
}

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpsgdGanState {
    pub format: u32,
    pub algorithm: String,
    /// D steps completed.
    pub step: u64,
    /// G steps completed (G's Adam steps).
    pub generator_adam_steps: u64,
    pub discriminator_adam_steps: u64,
    pub schedule: ScheduleState,
    pub accountant: Accountant,
    pub epsilon: f64,
    pub delta: f64,
    /// Training time so far, over all processes of the run.
    pub wall_s: f64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
}

/// See the module documentation.
pub struct DpsgdGanRun {
    core: RunCore,
    config: DpsgdGanRunConfig,
    model: DpsgdGan,
    schedule: ScheduleState,
    batches: StepBatches,
    /// Pixels in [0, 1], as G's (tanh + 1)/2 makes them.
    /// The training set on the run's device; each step gathers its batch there.
    data: ResidentData,
    device: Device,
    /// The grids' row labels: the training set's class names.
    class_names: [&'static str; CLASSES],
    /// With padded rows on a CUDA device: the D step captured after the first one, replayed since
    /// (or the driver's refusal, the D steps then eager).
    graph: StepGraph<DiscriminatorLosses>,
}

impl DpsgdGanRun {
    /// A new run in `out` with a planned configuration (see [`DpsgdGanRunConfig::plan`]).
    pub fn start(out: &Path, config: DpsgdGanRunConfig, data: &Dataset, device: &Device) -> Result<Self> {
        let key = config.noise_key.new_key(config.seed)?;
        let dir = RunDir::create(out)?;
        dir.write_json(CONFIG, &config)?;
        let accountant = config.privacy().accountant()?;
        let schedule = ScheduleState::new(config.d_steps_per_g_step);
        Self::assemble(dir, config, key, data, device, accountant, schedule, 0.0)
    }

    /// Continues the run in `root` from its checkpoint, with `steps` D steps in all if given.
    pub fn resume(root: &Path, device: &Device, steps: Option<u64>) -> Result<Self> {
        let dir = RunDir::open_for_training(root)?;
        let mut config: DpsgdGanRunConfig = dir.read_config(ALGORITHM)?;
        let data = load_recorded_data(&config.data)?;
        let (tensors, state, key): (_, DpsgdGanState, _) = dir.load_checkpoint_keyed(device)?;
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
        if state.schedule.schedule != config.d_steps_per_g_step {
            return Err(Error::file(dir.path(CHECKPOINT), "its G-step schedule is not the one config.json records"));
        }
        if let Some(total) = resumed_total("--d-steps", steps, state.step, root)? {
            config.steps = total;
            dir.write_json(CONFIG, &config)?;
        }
        let adam_steps = (state.generator_adam_steps, state.discriminator_adam_steps);
        let mut run = Self::assemble(dir, config, key, &data, device, expected, state.schedule, state.wall_s)?;
        run.model.restore(tensors, state.step, adam_steps)?;
        Ok(run)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: RunDir,
        config: DpsgdGanRunConfig,
        key: RunKey,
        data: &Dataset,
        device: &Device,
        accountant: Accountant,
        schedule: ScheduleState,
        wall_before: f64,
    ) -> Result<Self> {
        let mut init = stream(config.seed, Purpose::Init, 0);
        let model = DpsgdGan::new(config.step_config(), config.width, key.noise(config.noise), &mut init, device)?;
        let batches = StepBatches::new(data.len(), Sampling::Poisson { sample_rate: config.sample_rate }, &key)?;
        let c = &config;
        let every = (c.log_every, c.sample_every, c.checkpoint_every);
        let settings = c.privacy().loop_settings(every);
        Ok(DpsgdGanRun {
            core: RunCore { dir, key, accountant, settings, wall_before },
            model,
            schedule,
            batches,
            data: ResidentData::upload(data, PixelScale::Unit, device)?,
            class_names: class_names(data.labels()),
            graph: StepGraph::Pending,
            device: device.clone(),
            config,
        })
    }

    pub fn config(&self) -> &DpsgdGanRunConfig {
        &self.config
    }

    pub fn model(&self) -> &DpsgdGan {
        &self.model
    }

    pub fn schedule(&self) -> &ScheduleState {
        &self.schedule
    }

    pub fn steps_taken(&self) -> u64 {
        self.model.d_steps_taken()
    }

    /// Trains until the planned number of D steps or the budget (see [`dp_sgd_run::train`]).
    pub fn train(&mut self, progress: &Progress) -> Result<Outcome> {
        dp_sgd_run::train(self, progress)
    }
}

impl DpsgdGanRun {
    /// D step on `batch`: with padded rows, a batch that fits them takes the padded step, eagerly,
    /// or on a CUDA device replayed from the graph captured at the first such step after the
    /// first step (whose losses are copied out of the graph's buffers for the loop to read later).
    fn discriminator_step(&mut self, batch: &[usize], rng: &mut impl Rng) -> Result<DiscriminatorLosses> {
        let Some(rows) = self.config.padded_rows.filter(|&rows| batch.len() <= rows) else {
            let (images, labels) = self.data.batch(batch)?;
            let images = images.reshape(&[1, batch.len(), 1, SIDE, SIDE])?;
            return self.model.discriminator_step(&images, &labels, rng);
        };
        let batch: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
        let fake = self.config.batch_size;
        captured::run_step(&mut self.graph, &mut self.model, &self.data, &batch, rows, fake, rng)
    }
}

impl PrivateRun for DpsgdGanRun {
    fn core(&self) -> &RunCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut RunCore {
        &mut self.core
    }

    fn steps_taken(&self) -> u64 {
        self.model.d_steps_taken()
    }

    /// D step `step` (0-based) and the G step after it if one is due. Its batch comes from the
    /// run key and the step number, its generated examples (D's, then G's) from the seed's stream
    /// of the step, so a resumed run takes exactly the same step.
    fn step(&mut self, step: u64) -> Result<StepReport> {
        let _range = crate::profile::range("dpsgd_gan_step");
        let batch = self.batches.batch(step)?;
        let mut rng = stream(self.config.seed, Purpose::Generator, step);
        let d = self.discriminator_step(&batch, &mut rng)?;
        let mut g_loss = None;
        if self.schedule.d_step_taken() {
            let g = self.model.generator_step(&mut rng, &self.device)?;
            if self.schedule.needs_accuracy() {
                let before = self.model.g_steps_taken() - 1;
                self.schedule.observe_accuracy(fake_accuracy(&g.fake_logits)?, before);
            }
            g_loss = Some(g.loss);
        }
        Ok(StepReport { d_loss: d.loss, g_loss, nonfinite: d.nonfinite })
    }

    fn extra_metrics(&self, _done: u64) -> serde_json::Map<String, serde_json::Value> {
        let s = &self.schedule;
        serde_json::Map::from_iter([
            ("g_steps".to_string(), serde_json::json!(self.model.g_steps_taken())),
            ("d_steps_per_g_step".to_string(), serde_json::json!(s.d_steps_per_g_step)),
            ("fake_accuracy_ema".to_string(), serde_json::json!(s.accuracy_ema)),
        ])
    }

    fn capture_refusal(&self) -> Option<&str> {
        self.graph.refusal()
    }

    fn checkpoint(&self, wall_s: f64, stopped: Option<String>) -> Result<()> {
        let (generator_adam_steps, discriminator_adam_steps) = self.model.adam_steps();
        self.core.save(&self.model.named_tensors(), |spent| DpsgdGanState {
            format: STATE_FORMAT,
            algorithm: ALGORITHM.to_string(),
            step: self.model.d_steps_taken(),
            generator_adam_steps,
            discriminator_adam_steps,
            schedule: self.schedule.clone(),
            accountant: self.core.accountant.clone(),
            epsilon: spent.epsilon,
            delta: spent.delta,
            wall_s,
            stopped,
        })
    }

    /// A 10 × 10 grid, one row per class, from fixed latent codes (post-processing of G).
    fn write_grid(&self, step: u64) -> Result<()> {
        write_class_grid(&self.model.generator, self.config.seed, &self.class_names, &self.core.dir.sample_grid_path(step), &self.device)
    }
}

/// `per_class` images of every class from `generator`, z ~ N(0, I) from `rng`: `[10·per_class,
/// 784]` in [0, 1], class-major, handed to `sink` a chunk at a time. Balanced labels, never the
/// real class counts (which are not public).
pub fn generate_by_class_into<R: Rng>(
    generator: &Generator,
    per_class: usize,
    rng: &mut R,
    device: &Device,
    sink: &mut ImageSink,
) -> Result<()> {
    // 1,000 images per forward pass: about 200 MB of activations at d = 128.
    by_class_chunks(per_class, 1000, |class, n| {
        let (z, _) = DpsgdGan::generator_inputs(n, rng, device)?;
        let onehot = Tensor::one_hot(&vec![class; n], CLASSES, &[1, n], device)?;
        sink(&generator.forward(&crate::autograd::Tape::new(), &z, &onehot)?.to_vec()?, class as u8)
    })
}

/// The progress grid of a generator: 10 rows (classes) of 10 samples from the run's fixed codes.
pub fn write_class_grid(generator: &Generator, seed: u64, class_names: &[&str], path: &Path, device: &Device) -> Result<()> {
    let mut rng = stream(seed, Purpose::Grid, 0);
    let (images, _) = collect_images(|sink| generate_by_class_into(generator, 10, &mut rng, device, sink))?;
    Grid { images: &images, rows: CLASSES, cols: 10, height: 28, width: 28, range: (0.0, 1.0), row_labels: class_names }.write_png(path)
}

/// The released data set of a generator a chunk at a time: `per_class` images per class in
/// [0, 1], latent codes from `seed` (sampling is post-processing: no privacy cost).
pub fn sample_released_into(generator: &Generator, per_class: usize, seed: u64, device: &Device, sink: &mut ImageSink) -> Result<()> {
    generate_by_class_into(generator, per_class, &mut stream(seed, Purpose::Sample, 0), device, sink)
}

/// The generator of a finished (or stopped) run, from its checkpoint, with its config and the
/// checkpoint's state (read from the same file as the weights).
pub fn load_generator(root: &Path, device: &Device) -> Result<(Generator, DpsgdGanRunConfig, DpsgdGanState)> {
    let dir = RunDir::open(root)?;
    let config: DpsgdGanRunConfig = dir.read_config(ALGORITHM)?;
    let (mut tensors, state): (_, DpsgdGanState) = dir.load_checkpoint(device)?;
    let mut generator = Generator::new(1, config.width, &mut stream(config.seed, Purpose::Init, 0), device)?;
    load_prefixed(&mut generator, &mut tensors, "generator", &dir.path(CHECKPOINT), device)?;
    Ok((generator, config, state))
}
