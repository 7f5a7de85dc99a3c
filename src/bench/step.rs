//! `dpgan bench step`: the throughput of the engine's real training step, not of a copy of it.
//! DP-CGAN's step is [`DpCgan::private_step`] or [`DpCgan::non_private_step`]; GS-WGAN's is a
//! phase-2 iteration ([`PrivateTraining::iteration`]: 5 critic steps, the sanitised generator step,
//! the EMA) or, without privacy, a warm-start iteration ([`WarmStart::iteration`] for one
//! discriminator: the same 5 critic steps and a plain generator step on the same models and batch
//! sizes, no sanitiser and no EMA, since the warm start keeps none). DPSGD-GAN's is its private D
//! step ([`DpsgdGan::discriminator_step`]), the unit its runs count (450,000 of them, a G step after
//! every 50); it has no non-private step of its own.
//!
//! Inputs are synthetic (random images and labels of the published shapes, made before timing):
//! what is timed is the step, not data loading. Timing runs in up to two passes:
//! 1. the headline pass: `warmup` untimed steps, then `steps` timed ones. On a GPU each step is
//!    bracketed by CUDA events on the device's stream, recorded without synchronising, so the
//!    host keeps queueing work as in training; steps/s is the pass's wall time with one
//!    synchronisation at its end. On the CPU, where ops run synchronously, each step is timed
//!    with the wall clock.
//! 2. with `phases`, a second pass of `steps` steps under a [`PhaseTimer`]: the engine's profiling
//!    ranges (see [`crate::profile`]) are charged to phases, the device synchronised at every
//!    boundary so that queued kernels count where they were launched. Those synchronisations
//!    slow the step, which is why the headline figures never come from this pass.
//! 3. with `cuda_graph` (CUDA only), a third pass: one step captured into a CUDA graph
//!    ([`CudaDevice::capture`](crate::backend::cuda::CudaDevice::capture)) and replayed `steps`
//!    times, timed as the headline pass. DP-CGAN's steps and DPSGD-GAN's D step replay as
//!    training steps ([`crate::train::captured`]): each replay reads its own batch indices,
//!    example weights, generator keys, noise step and optimizer corrections from a step block the
//!    host writes first, a private step's batch padded as a Poisson run at q = B/60,000 pads it
//!    (`graph_rows`; the non-private step's unpadded, B rows). GS-WGAN's phase-2 iteration replays
//!    as training iterations too ([`crate::train::gswgan::graphed`]: the critic copied into a
//!    working critic and back, one graph per pattern of batch sizes, captured during
//!    [`GS_WGAN_GRAPH_WARMUP`] untimed iterations). The warm-start iteration replays as captured,
//!    repeating its keys, draws and counters: not a training step, but its launch floor.
//!
//! DP-CGAN's and DPSGD-GAN's steps gather their batch on the device from fresh indices each step,
//! from synthetic records kept on the device, as a run gathers from its resident training set.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::backend::cuda::Tf32Scope;
use crate::dp::{GsWganSanitizer, NoiseMode, RunKey};
use crate::error::{Error, Result};
use crate::models::dpcgan::CLASSES;
use crate::models::gswgan::{GeneratorArch, PIXELS, PUBLISHED_BASE};
use crate::nn::Module;
use crate::profile::{self, PhaseTimer};
use crate::tensor::{Device, Tensor};
use crate::train::captured::{self, poisson_rows};
use crate::train::dpcgan::graphed::NonPrivateDpCgan;
use crate::train::dpcgan::{DpCgan, DpCganConfig};
use crate::train::dpsgd_gan::{DpsgdGan, DpsgdGanConfig};
use crate::train::gswgan::graphed::GraphedPhaseTwo;
use crate::train::gswgan::{select_discriminator, CriticState, GsWganConfig, LabelledImages, PrivateTraining, WarmStart};
use crate::train::resident::ResidentData;

/// The phases a step's time is split into, in report order. `other` is whatever the step does
/// outside the named ones (drawing z and labels, loss arithmetic, uploads, gathering gradients).
pub const PHASES: [&str; 7] = ["forward", "backward", "per_example_norms", "clip_noise", "optimizer", "ema", "other"];

/// The range the benchmark opens around each step of the phases pass.
const STEP_RANGE: &str = "bench_step";

/// Which phase a profiling range's time belongs to; kernel-level and other ranges are transparent.
/// A private update whose noise runs inside the optimizer's pass (`optimizer_*_noised`) counts as
/// optimizer time.
fn phase_of(range: &str) -> Option<&'static str> {
    Some(match range {
        STEP_RANGE => "other",
        "g_forward" | "d_forward" | "generator_forward" => "forward",
        "backward" => "backward",
        "per_example_sq_norms" => "per_example_norms",
        "dp_sgd_gradients" | "dp_sgd_update" | "per_example_clip" | "clip_factors" | "clipped_sums" | "noise" | "sanitize" => "clip_noise",
        "optimizer_sgd" | "optimizer_adam" | "optimizer_sgd_noised" | "optimizer_adam_noised" => "optimizer",
        "ema_update" => "ema",
        _ => return None,
    })
}

/// docs/algorithms.md §2: each discriminator owns a slice of 60 images.
pub const GS_WGAN_SLICE: usize = 60;
/// docs/algorithms.md §2's phase-2 sanitiser: C = 1, σ = 1.07.
pub const GS_WGAN_CLIP: f64 = 1.0;
pub const GS_WGAN_NOISE_MULTIPLIER: f64 = 1.07;
/// Phase-2 iterations the graph pass runs before it times replays: the first is eager, and each
/// pattern of batch sizes the slice gives (two for 60 records in batches of 32) is captured at
/// its first later iteration.
pub const GS_WGAN_GRAPH_WARMUP: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    DpCgan,
    GsWgan,
    DpsgdGan,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::DpCgan => "dp-cgan",
            Algo::GsWgan => "gs-wgan",
            Algo::DpsgdGan => "dpsgd-gan",
        }
    }
    /// The published batch size: 600 for DP-CGAN (docs/algorithms.md §1), 32 for GS-WGAN (§2),
    /// 128 for DPSGD-GAN (§4).
    pub fn default_batch_size(self) -> usize {
        match self {
            Algo::DpCgan => 600,
            Algo::GsWgan => 32,
            Algo::DpsgdGan => 128,
        }
    }
    /// The published width: GS-WGAN's base 64 (§2), DPSGD-GAN's d = 128 (§4); DP-CGAN has none.
    pub fn default_base(self) -> usize {
        match self {
            Algo::DpCgan | Algo::GsWgan => PUBLISHED_BASE,
            Algo::DpsgdGan => crate::models::dpsgd_gan::WIDTH,
        }
    }
}

/// What to time and how.
#[derive(Clone, Debug)]
pub struct StepOptions {
    pub algo: Algo,
    pub private: bool,
    pub steps: usize,
    pub warmup: usize,
    pub batch_size: usize,
    /// Also run the phases pass.
    pub phases: bool,
    pub seed: u64,
    pub noise: NoiseMode,
    /// GS-WGAN's generator and width (channels of D's first conv), DPSGD-GAN's width d; ignored
    /// for DP-CGAN.
    pub arch: GeneratorArch,
    pub base: usize,
    /// Run the step's matmuls and convolutions on TF32 tensor cores where they are large enough
    /// (CUDA, non-private steps only: per-example norms and clipping stay in exact f32).
    pub tf32: bool,
    /// Also time the step replayed from one CUDA graph capture (CUDA only; see the module doc).
    pub cuda_graph: bool,
}

impl StepOptions {
    /// The published settings of `algo`, private, 100 timed steps after 10 warm-up steps.
    pub fn new(algo: Algo) -> Self {
        StepOptions {
            algo,
            private: true,
            steps: 100,
            warmup: 10,
            batch_size: algo.default_batch_size(),
            phases: false,
            seed: 0,
            noise: NoiseMode::Secure,
            arch: GeneratorArch::Resnet,
            base: algo.default_base(),
            tf32: false,
            cuda_graph: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::Invalid("--steps must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Invalid("--batch-size must be at least 1".into()));
        }
        if self.base == 0 {
            return Err(Error::Invalid("--base must be at least 1".into()));
        }
        // GS-WGAN's phase 2 clips the image gradient its GEMMs produce, in f32 reductions, so TF32
        // leaves its bound exact; DP-SGD computes its norms and its clipped sum apart, which must
        // agree (docs/privacy.md, "Precision").
        if self.tf32 && self.private && self.algo != Algo::GsWgan {
            return Err(Error::Invalid(
                "--tf32 applies to --non-private steps and GS-WGAN's phase 2 only: a DP-SGD step's per-example norms and clipping stay in exact f32".into(),
            ));
        }
        if self.algo == Algo::DpsgdGan && !self.private {
            return Err(Error::Invalid(
                "--non-private: dpsgd-gan has no non-private step (its D step is private by construction); time dp-cgan --non-private for a baseline".into(),
            ));
        }
        Ok(())
    }
}

/// Time per phase, averaged over the phases pass's steps.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PhaseReport {
    pub steps: usize,
    /// Mean wall time of one step in this pass (synchronised at every phase boundary), ms.
    pub total_ms: f64,
    /// Mean ms per step in each of [`PHASES`]; they add up to at most `total_ms`.
    pub ms: BTreeMap<String, f64>,
    pub timing: String,
}

/// The step replayed from one CUDA graph capture: its times, or why the capture failed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GraphReplayReport {
    pub steps: usize,
    /// `None` when the capture failed (see `error`).
    pub steps_per_s: Option<f64>,
    pub mean_ms: Option<f64>,
    pub median_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub error: Option<String>,
    pub note: String,
}

/// Everything one `dpgan bench step` run measured, and under which settings.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepReport {
    pub benchmark: String,
    pub algo: String,
    /// `private` or `non-private`.
    pub mode: String,
    /// What one timed step is.
    pub step: String,
    pub inputs: String,
    /// `cpu` or `cuda:N`, and what it is.
    pub device: String,
    pub device_name: String,
    /// UTC, ISO 8601.
    pub date: String,
    pub git_commit: Option<String>,
    pub settings: BTreeMap<String, Value>,
    pub generator_params: usize,
    pub discriminator_params: usize,
    pub steps_per_s: f64,
    pub mean_ms: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub timing: String,
    /// The device memory pool's high-water mark during the timed steps (model, optimizer state
    /// and every step's temporaries); `None` on the CPU.
    pub peak_device_memory_bytes: Option<u64>,
    pub peak_memory_note: String,
    /// One step's census (`backend::census`): how many times it ran each op, transfer and fill,
    /// counted on one more step after the timed ones. On a GPU each op is one or more kernel
    /// launches; a `device_to_host` is a wait for the stream.
    pub ops_per_step: BTreeMap<String, u64>,
    pub ops_per_step_total: u64,
    /// Tensor storage made before the census step and released by it (state replaced instead of
    /// updated in place): 0 for a step that a CUDA graph can capture, whose frees may release only
    /// the graph's own allocations. Not an op, so not in `ops_per_step`.
    pub older_storage_released_per_step: u64,
    pub phases: Option<PhaseReport>,
    /// With `cuda_graph`: the launch floor beside the headline (eager) times.
    pub graph_replay: Option<GraphReplayReport>,
}

/// Captures the benchmark's next step into a CUDA graph (running it once) and returns the step
/// that replays it as a training step, with each step's own values.
type CaptureTraining = Box<dyn FnOnce() -> Result<Box<dyn FnMut() -> Result<()>>>>;

/// One prepared benchmark: the step to repeat and what it is.
struct Prepared {
    step: Box<dyn FnMut() -> Result<()>>,
    /// Where the step has one (DP-CGAN's private step), its training steps replayed from a CUDA
    /// graph; the graph pass times those instead of the launch floor.
    capture_training: Option<CaptureTraining>,
    description: String,
    inputs: String,
    settings: BTreeMap<String, Value>,
    generator_params: usize,
    discriminator_params: usize,
}

/// An f32 setting as the decimal it was written as (1.1, not 1.100000023841858).
fn f32_json(x: f32) -> Value {
    json!(x.to_string().parse::<f64>().unwrap_or(f64::from(x)))
}

fn count(params: Vec<&Tensor>) -> usize {
    params.iter().map(|t| t.numel()).sum()
}

fn settings(pairs: Vec<(&str, Value)>) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// MNIST's training records: the N of the q = B/N a DP-CGAN benchmark's graph pads for.
const MNIST_RECORDS: usize = 60_000;

/// Synthetic records a benchmark keeps on the device per record of its batch: each step gathers
/// a fresh batch from them, as a run gathers from its resident training set.
const RECORDS_PER_BATCH_RECORD: usize = 4;

/// A benchmark's resident synthetic records and the stream of its batches' indices.
struct SyntheticRecords {
    data: ResidentData,
    batch: usize,
    /// Draws each step's record indices.
    batches: ChaCha20Rng,
}

impl SyntheticRecords {
    /// `RECORDS_PER_BATCH_RECORD · batch` records of uniform pixels in `range` and uniform labels.
    fn new(batch: usize, range: std::ops::Range<f32>, seed: u64, rng: &mut ChaCha20Rng, device: &Device) -> Result<Self> {
        let records = RECORDS_PER_BATCH_RECORD * batch.max(1);
        let pixels: Vec<f32> = (0..records * 784).map(|_| rng.random_range(range.clone())).collect();
        let labels: Vec<u32> = (0..records).map(|_| rng.random_range(0..CLASSES as u32)).collect();
        Ok(SyntheticRecords {
            data: ResidentData::from_parts(pixels, &labels, device)?,
            batch,
            batches: ChaCha20Rng::seed_from_u64(seed.wrapping_add(1)),
        })
    }

    fn next_batch(&mut self) -> Vec<u32> {
        let records = self.data.len() as u32;
        (0..self.batch).map(|_| self.batches.random_range(0..records)).collect()
    }

    fn describe(&self, range: &str) -> String {
        format!(
            "synthetic: {} uniform {range} images and uniform labels resident on the device, made before timing; each step gathers {} of them by indices drawn on the host",
            self.data.len(),
            self.batch
        )
    }
}

/// The DP-CGAN benchmark's model, records and generator stream, shared by its eager step and its
/// graph capture.
struct DpCganBench {
    model: DpCgan,
    records: SyntheticRecords,
    private: bool,
    /// Draws each step's generator keys.
    rng: ChaCha20Rng,
}

impl DpCganBench {
    fn eager_step(&mut self) -> Result<()> {
        let batch = self.records.next_batch();
        let (images, labels) = self.records.data.rows_at(&batch, &[1, batch.len()])?;
        if self.private {
            self.model.private_step(&images, &labels, self.records.batch, &mut self.rng)?;
        } else {
            self.model.non_private_step(&images, &labels, &mut self.rng)?;
        }
        Ok(())
    }
}

fn prepare_dpcgan(o: &StepOptions, device: &Device) -> Result<Prepared> {
    let b = o.batch_size;
    let mut rng = ChaCha20Rng::seed_from_u64(o.seed);
    let config = DpCganConfig { batch_divisor: b as f32, ..DpCganConfig::default() };
    // Nothing here is private: the noise key is the seed's replayable one (not its init stream).
    let model = DpCgan::new(config, RunKey::replayable(o.seed).noise(o.noise), &mut rng, device)?;
    let records = SyntheticRecords::new(b, -1.0..1.0, o.seed, &mut rng, device)?;
    let inputs = records.describe("[-1, 1]");
    let (generator_params, discriminator_params) = (count(model.generator.params()), count(model.discriminator.params()));
    let private = o.private;
    let bench = Rc::new(RefCell::new(DpCganBench { model, records, private, rng }));
    let eager = bench.clone();
    let step = Box::new(move || eager.borrow_mut().eager_step());
    // The rows a Poisson run at the published q = B/60,000 pads its batches to (747 for B = 600):
    // the graph pass pays for the padding a real run replays with.
    let rows = poisson_rows(b as f64 / MNIST_RECORDS as f64, MNIST_RECORDS);
    // The non-private step replays unpadded (its mean losses take no weights): B rows.
    let rows = if private { rows } else { b };
    let capture_training: CaptureTraining = Box::new(move || {
        let mut state = bench.borrow_mut();
        let DpCganBench { model, records, rng, .. } = &mut *state;
        let batch = records.next_batch();
        if private {
            let mut graphed = model.capture_private_step(&records.data, &batch, rows, b, rng)?;
            drop(state);
            return Ok(Box::new(move || {
                let mut state = bench.borrow_mut();
                let DpCganBench { model, records, rng, .. } = &mut *state;
                let batch = records.next_batch();
                graphed.step(model, &batch, rng).map(|_| ())
            }) as Box<dyn FnMut() -> Result<()>>);
        }
        let mut graphed = captured::capture(&mut NonPrivateDpCgan(model), &records.data, &batch, rows, b, rng)?;
        drop(state);
        Ok(Box::new(move || {
            let mut state = bench.borrow_mut();
            let DpCganBench { model, records, rng, .. } = &mut *state;
            let batch = records.next_batch();
            graphed.step(&mut NonPrivateDpCgan(model), &batch, rng).map(|_| ())
        }) as Box<dyn FnMut() -> Result<()>>)
    });
    let description = if private {
        format!("DpCgan::private_step: B real and B generated examples through D as one batch, each clipped per example, noised once, SGD on D; Adam on G (B = {b}, {b} generated); the batch gathered on the device from fresh indices first")
    } else {
        format!("DpCgan::non_private_step: mean BCE losses, no clipping or noise, SGD on D; Adam on G (B = {b}); the batch gathered on the device from fresh indices first")
    };
    let mut pairs = vec![
        ("batch_size", json!(b)),
        ("graph_rows", json!(rows)),
        ("d_lr", f32_json(config.d_lr)),
        ("g_adam_lr", f32_json(config.g_adam.lr)),
    ];
    if private {
        pairs.extend([
            ("clip", f32_json(config.clip)),
            ("noise_multiplier", f32_json(config.noise_multiplier)),
            ("noise", json!(format!("{:?}", o.noise).to_lowercase())),
        ]);
    }
    Ok(Prepared {
        step,
        capture_training: Some(capture_training),
        description,
        inputs,
        settings: settings(pairs),
        generator_params,
        discriminator_params,
    })
}

/// The DPSGD-GAN benchmark's model, records and generator stream, shared by its eager D step and
/// its graph capture.
struct DpsgdGanBench {
    model: DpsgdGan,
    records: SyntheticRecords,
    rng: ChaCha20Rng,
}

fn prepare_dpsgd_gan(o: &StepOptions, device: &Device) -> Result<Prepared> {
    let (b, width) = (o.batch_size, o.base);
    let mut rng = ChaCha20Rng::seed_from_u64(o.seed);
    let config = DpsgdGanConfig { batch_size: b, ..DpsgdGanConfig::default() };
    // Nothing here is private: the noise key is the seed's replayable one.
    let model = DpsgdGan::new(config, width, RunKey::replayable(o.seed).noise(o.noise), &mut rng, device)?;
    let records = SyntheticRecords::new(b, 0.0..1.0, o.seed, &mut rng, device)?;
    let inputs = records.describe("[0, 1]");
    let (generator_params, discriminator_params) = (count(model.generator.params()), count(model.discriminator.params()));
    let bench = Rc::new(RefCell::new(DpsgdGanBench { model, records, rng }));
    let eager = bench.clone();
    let step = Box::new(move || -> Result<()> {
        let mut state = eager.borrow_mut();
        let DpsgdGanBench { model, records, rng } = &mut *state;
        let batch = records.next_batch();
        let (images, labels) = records.data.rows_at(&batch, &[1, batch.len()])?;
        let side = crate::models::dpsgd_gan::SIDE;
        model.discriminator_step(&images.reshape(&[1, batch.len(), 1, side, side])?, &labels, rng)?;
        Ok(())
    });
    // The rows a run at q = B/60,000 pads its Poisson batches to.
    let rows = poisson_rows(b as f64 / MNIST_RECORDS as f64, MNIST_RECORDS);
    let capture_training: CaptureTraining = Box::new(move || {
        let mut state = bench.borrow_mut();
        let DpsgdGanBench { model, records, rng } = &mut *state;
        let batch = records.next_batch();
        let mut graphed = model.capture_discriminator_step(&records.data, &batch, rows, rng)?;
        drop(state);
        Ok(Box::new(move || {
            let mut state = bench.borrow_mut();
            let DpsgdGanBench { model, records, rng } = &mut *state;
            let batch = records.next_batch();
            graphed.step(model, &batch, rng).map(|_| ())
        }) as Box<dyn FnMut() -> Result<()>>)
    });
    let pairs = vec![
        ("batch_size", json!(b)),
        ("width", json!(width)),
        ("graph_rows", json!(rows)),
        ("clip", f32_json(config.clip)),
        ("noise_multiplier", f32_json(config.noise_multiplier)),
        ("noise", json!(format!("{:?}", o.noise).to_lowercase())),
        ("adam_lr", f32_json(config.d_adam.lr)),
    ];
    Ok(Prepared {
        step,
        capture_training: Some(capture_training),
        description: format!(
            "DpsgdGan::discriminator_step: B real and B generated examples (G's forward, detached) through D as one batch, each clipped per example, noised once, divided by 2B, Adam on D (B = {b}, d = {width}), the batch gathered on the device from fresh indices first; a run takes a G step after every n_D of these"
        ),
        inputs,
        settings: settings(pairs),
        generator_params,
        discriminator_params,
    })
}

fn prepare_gswgan(o: &StepOptions, device: &Device) -> Result<Prepared> {
    let b = o.batch_size;
    let config = GsWganConfig { batch_size: b, ..GsWganConfig::default() };
    let slice_len = GS_WGAN_SLICE.max(b);
    let mut rng = ChaCha20Rng::seed_from_u64(o.seed ^ 0x5eed);
    let pixels: Vec<f32> = (0..slice_len * PIXELS).map(|_| rng.random::<f32>()).collect();
    let labels: Vec<u32> = (0..slice_len).map(|_| rng.random_range(0..CLASSES as u32)).collect();
    let data = LabelledImages::new(pixels, labels)?;
    let slice: Vec<usize> = (0..slice_len).collect();
    let arch = format!("{:?}", o.arch).to_lowercase();
    let mut pairs = vec![
        ("batch_size", json!(b)),
        ("slice", json!(slice_len)),
        ("critic_steps", json!(config.critic_steps)),
        ("generator", json!(arch)),
        ("base", json!(o.base)),
        ("adam_lr", f32_json(config.adam.lr)),
    ];
    let inputs = format!(
        "synthetic: one slice of {slice_len} uniform [0, 1] images and uniform labels on the host, batched and uploaded by the iteration itself as in training"
    );
    if o.private {
        let mut d_rng = ChaCha20Rng::seed_from_u64(o.seed);
        d_rng.set_stream(3);
        let discriminator = crate::models::gswgan::Discriminator::new(1, o.base, &mut d_rng, device)?;
        let mut batch_rng = ChaCha20Rng::seed_from_u64(o.seed);
        batch_rng.set_stream(1);
        let critic = CriticState::new(discriminator, slice, batch_rng, &config)?;
        let sanitizer = GsWganSanitizer::new(GS_WGAN_CLIP, GS_WGAN_NOISE_MULTIPLIER)?;
        // Nothing here is private: the noise key is the seed's replayable one (not its init stream).
        let key = RunKey::replayable(o.seed);
        let training = PrivateTraining::new(o.arch, o.base, o.seed, sanitizer, &key, o.noise, config, device)?;
        let (generator_params, discriminator_params) = (count(training.generator.params()), count(critic.discriminator.params()));
        pairs.extend([
            ("clip", json!(GS_WGAN_CLIP)),
            ("noise_multiplier", json!(GS_WGAN_NOISE_MULTIPLIER)),
            ("noise", json!(format!("{:?}", o.noise).to_lowercase())),
        ]);
        // One discriminator stands for the published 1000: an iteration touches only the one
        // drawn, so its cost does not depend on how many there are.
        let state = Rc::new(RefCell::new((training, critic, data)));
        let eager = state.clone();
        let step = Box::new(move || -> Result<()> {
            let (training, critic, data) = &mut *eager.borrow_mut();
            select_discriminator(&key, training.iterations(), 1)?;
            training.iteration(critic, data)?;
            Ok(())
        });
        let device = device.clone();
        let capture_training: CaptureTraining = Box::new(move || {
            let mut graphed = {
                let (training, critic, data) = &mut *state.borrow_mut();
                let mut graphed = GraphedPhaseTwo::new(critic, &device)?;
                // Until every pattern of batch sizes the slice gives is captured (the first
                // iteration's values cannot tell G's and D's Adam corrections apart: eager).
                for _ in 0..GS_WGAN_GRAPH_WARMUP {
                    training.graphed_iteration(&mut graphed, critic, data)?;
                }
                if graphed.graphs() == 0 {
                    return Err(Error::Invalid(format!(
                        "no phase-2 iteration was captured in {GS_WGAN_GRAPH_WARMUP}: {:?}",
                        graphed.counts()
                    )));
                }
                graphed
            };
            Ok(Box::new(move || {
                let (training, critic, data) = &mut *state.borrow_mut();
                training.graphed_iteration(&mut graphed, critic, data).map(|_| ())
            }) as Box<dyn FnMut() -> Result<()>>)
        });
        Ok(Prepared {
            step,
            capture_training: Some(capture_training),
            description: format!(
                "PrivateTraining::iteration (phase 2): {} WGAN-GP critic steps of one discriminator, the generator step with sanitised image gradients, the EMA of G (B = {b}, the slice's last partial batch included)",
                config.critic_steps
            ),
            inputs,
            settings: settings(pairs),
            generator_params,
            discriminator_params,
        })
    } else {
        let mut warm = WarmStart::new(o.arch, o.base, &[o.seed], vec![slice], config, device)?;
        let (generator_params, discriminator_params) = (count(warm.generators.params()), count(warm.discriminators.params()));
        let step = Box::new(move || -> Result<()> {
            warm.iteration(&data)?;
            Ok(())
        });
        Ok(Prepared {
            step,
            capture_training: None,
            description: format!(
                "WarmStart::iteration (phase 1) of one discriminator: {} WGAN-GP critic steps and a plain generator step; no sanitiser and no EMA (B = {b}, the slice's last partial batch included)",
                config.critic_steps
            ),
            inputs,
            settings: settings(pairs),
            generator_params,
            discriminator_params,
        })
    }
}

/// Waits for the device's queued work (nothing to wait for on the CPU).
fn synchronize(device: &Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(d) => d.synchronize(),
    }
}

/// Milliseconds of each of `steps` calls of `step`, and the pass's wall seconds (see the module
/// doc for how each device is timed).
fn time_steps(device: &Device, steps: usize, step: &mut dyn FnMut() -> Result<()>) -> Result<(Vec<f64>, f64)> {
    synchronize(device)?;
    match device {
        Device::Cpu => {
            let mut samples = Vec::with_capacity(steps);
            let pass = Instant::now();
            for _ in 0..steps {
                let t = Instant::now();
                step()?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok((samples, pass.elapsed().as_secs_f64()))
        }
        Device::Cuda(cuda) => {
            use cudarc::driver::sys::CUevent_flags;
            let ctx = cuda.stream().context();
            let events = (0..=steps)
                .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| Error::cuda("creating a timing event", e)))
                .collect::<Result<Vec<_>>>()?;
            let record = |i: usize| events[i].record(cuda.stream()).map_err(|e| Error::cuda("recording a timing event", e));
            let pass = Instant::now();
            record(0)?;
            for i in 1..=steps {
                step()?;
                record(i)?;
            }
            cuda.synchronize()?;
            let wall = pass.elapsed().as_secs_f64();
            let samples = events
                .windows(2)
                .map(|w| w[0].elapsed_ms(&w[1]).map(f64::from).map_err(|e| Error::cuda("reading event times", e)))
                .collect::<Result<Vec<_>>>()?;
            Ok((samples, wall))
        }
    }
}

/// The phases pass: `steps` steps, each in a [`STEP_RANGE`] range, under a [`PhaseTimer`] whose
/// barrier synchronises the device.
fn time_phases(device: &Device, steps: usize, step: &mut dyn FnMut() -> Result<()>) -> Result<PhaseReport> {
    synchronize(device)?;
    let barrier_device = device.clone();
    let timer = PhaseTimer::start(phase_of, Box::new(move || synchronize(&barrier_device)))?;
    let pass = Instant::now();
    for _ in 0..steps {
        let _step = profile::range(STEP_RANGE);
        step()?;
    }
    let total = pass.elapsed().as_secs_f64();
    let totals = timer.finish()?;
    let per_step = |s: f64| s * 1e3 / steps as f64;
    let ms = PHASES.iter().map(|&p| (p.to_string(), per_step(totals.get(p).map_or(0.0, |d| d.as_secs_f64())))).collect();
    let timing = match device {
        Device::Cpu => "wall clock per profiling range, each instant charged to the innermost phase open then",
        Device::Cuda(_) => {
            "wall clock per profiling range with the device synchronised at every phase boundary, each instant charged to the innermost phase open then (slower than the headline pass by the synchronisations)"
        }
    };
    Ok(PhaseReport { steps, total_ms: per_step(total), ms, timing: timing.into() })
}

/// The graph pass: one step captured, then `steps` replays timed as [`time_steps`] times a step.
/// A failed capture is reported, not raised, so that the eager figures of the run still come out.
fn time_graph_replays(device: &Device, steps: usize, step: &mut dyn FnMut() -> Result<()>) -> Result<GraphReplayReport> {
    let Device::Cuda(cuda) = device else {
        return Err(Error::Invalid("--cuda-graph needs a CUDA device".into()));
    };
    let note = "one step captured into a CUDA graph, then replayed: each replay repeats the captured keys, draws and counters (the launch floor of the step, not a training step); timed as the headline pass".to_string();
    synchronize(device)?;
    let graph = match cuda.capture(step) {
        Ok(((), graph)) => graph,
        Err(e) => return Ok(GraphReplayReport::failed(steps, e, note)),
    };
    // The first replay uploads the graph: untimed, as a warm-up step is.
    graph.replay()?;
    let (samples, wall) = time_steps(device, steps, &mut || graph.replay())?;
    Ok(GraphReplayReport::timed(steps, &samples, wall, note))
}

impl GraphReplayReport {
    fn failed(steps: usize, error: Error, note: String) -> Self {
        GraphReplayReport { steps, steps_per_s: None, mean_ms: None, median_ms: None, min_ms: None, error: Some(error.to_string()), note }
    }

    fn timed(steps: usize, samples: &[f64], wall: f64, note: String) -> Self {
        GraphReplayReport {
            steps,
            steps_per_s: Some(steps as f64 / wall),
            mean_ms: Some(samples.iter().sum::<f64>() / samples.len() as f64),
            median_ms: super::median(samples),
            min_ms: Some(samples.iter().copied().fold(f64::INFINITY, f64::min)),
            error: None,
            note,
        }
    }
}

/// The graph pass of a step that replays as a training step: one capture, then `steps` replays,
/// each with its own batch, keys, noise step and optimizer corrections copied in first, timed as
/// [`time_steps`] times a step. A failed capture is reported, not raised.
fn time_training_replays(device: &Device, steps: usize, capture: CaptureTraining) -> Result<GraphReplayReport> {
    let note = "training steps replayed from CUDA graphs: each replay a training step of its own (batch indices, example weights, generator keys, noise step, learning rate, EMA decay and Adam's corrections copied into the step block first); DP-CGAN's private B records padded to graph_rows rows as a Poisson run pads them (B, no padding, for a non-private step); GS-WGAN's phase-2 iteration on a working critic copied in and out, one graph per pattern of batch sizes; timed as the headline pass".to_string();
    synchronize(device)?;
    let mut replay = match capture() {
        Ok(replay) => replay,
        Err(e) => return Ok(GraphReplayReport::failed(steps, e, note)),
    };
    // The first replay uploads the graph: untimed, as a warm-up step is.
    replay()?;
    let (samples, wall) = time_steps(device, steps, &mut replay)?;
    Ok(GraphReplayReport::timed(steps, &samples, wall, note))
}

/// What the device is, in words.
fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            format!("CPU ({threads} hardware threads)")
        }
        Device::Cuda(d) => d.properties().name.clone(),
    }
}

/// Runs the benchmark that `options` describes on `device`; `progress` hears what runs.
pub fn run(options: &StepOptions, device: &Device, mut progress: impl FnMut(&str)) -> Result<StepReport> {
    options.check()?;
    if options.tf32 && device.is_cpu() {
        return Err(Error::Invalid("--tf32 needs a CUDA device (sm_80 or newer; older ones run f32): the CPU backend has no TF32".into()));
    }
    if options.cuda_graph && device.is_cpu() {
        return Err(Error::Invalid("--cuda-graph needs a CUDA device: the CPU backend runs each op as it comes".into()));
    }
    // Every step runs on this thread, so the thread's setting covers all of them.
    let _tf32 = Tf32Scope::new(options.tf32);
    let mut prepared = match options.algo {
        Algo::DpCgan => prepare_dpcgan(options, device)?,
        Algo::GsWgan => prepare_gswgan(options, device)?,
        Algo::DpsgdGan => prepare_dpsgd_gan(options, device)?,
    };
    let mode = if options.private { "private" } else { "non-private" };
    progress(&format!("{} {mode} on {device}: {} warm-up steps", options.algo.name(), options.warmup));
    for _ in 0..options.warmup {
        (prepared.step)()?;
    }
    synchronize(device)?;
    if let Device::Cuda(d) = device {
        d.reset_pool_used_high()?;
    }
    progress(&format!("{} timed steps", options.steps));
    let (samples, wall) = time_steps(device, options.steps, &mut prepared.step)?;
    let (peak, peak_note) = match device {
        Device::Cpu => (None, "not measured on the CPU".to_string()),
        Device::Cuda(d) => match d.pool_used_high()? {
            Some(bytes) => (
                Some(bytes),
                "high-water mark of the stream-ordered memory pool during the timed steps: model, optimizer state and the steps' temporaries"
                    .to_string(),
            ),
            None => (None, "this device has no stream-ordered memory pool to read a high-water mark from".to_string()),
        },
    };
    let (stepped, mut census) = crate::backend::census::count_ops(|| (prepared.step)());
    stepped?;
    let older_storage_released_per_step = census.remove(crate::backend::census::RELEASE_OF_OLDER).unwrap_or(0);
    let ops_per_step: BTreeMap<String, u64> = census.into_iter().map(|(op, n)| (op.to_string(), n)).collect();
    let phases = if options.phases {
        progress(&format!("{} steps timed by phase", options.steps));
        Some(time_phases(device, options.steps, &mut prepared.step)?)
    } else {
        None
    };
    let graph_replay = if options.cuda_graph {
        progress(&format!("{} steps replayed from a CUDA graph", options.steps));
        Some(match prepared.capture_training.take() {
            Some(capture) => time_training_replays(device, options.steps, capture)?,
            None => time_graph_replays(device, options.steps, &mut prepared.step)?,
        })
    } else {
        None
    };
    let median_ms = super::median(&samples).ok_or_else(|| Error::Invalid("no valid step time".into()))?;
    let mean_ms = samples.iter().sum::<f64>() / samples.len() as f64;
    let timing = match device {
        Device::Cpu => format!(
            "{} untimed warm-up steps, then {} steps each timed with the wall clock (CPU ops run synchronously); steps/s = steps / the pass's wall time",
            options.warmup, options.steps
        ),
        Device::Cuda(_) => format!(
            "{} untimed warm-up steps, then {} steps each between two CUDA events on the device stream, recorded without synchronising; steps/s = steps / the pass's wall time to a final synchronisation",
            options.warmup, options.steps
        ),
    };
    let mut settings = prepared.settings;
    settings.insert("steps".into(), json!(options.steps));
    settings.insert("warmup".into(), json!(options.warmup));
    settings.insert("seed".into(), json!(options.seed));
    settings.insert("cuda_graph".into(), json!(options.cuda_graph));
    settings.insert("tf32".into(), json!(options.tf32));
    if options.tf32 {
        settings.insert("tf32_build".into(), json!(crate::backend::cuda::tf32_pipeline().label()));
    }
    Ok(StepReport {
        benchmark: "step".into(),
        algo: options.algo.name().into(),
        mode: mode.into(),
        step: prepared.description,
        inputs: prepared.inputs,
        device: device.to_string(),
        device_name: device_name(device),
        date: super::utc_iso8601(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())),
        git_commit: super::git_commit(),
        settings,
        generator_params: prepared.generator_params,
        discriminator_params: prepared.discriminator_params,
        steps_per_s: options.steps as f64 / wall,
        mean_ms,
        median_ms,
        min_ms: samples.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: samples.iter().copied().fold(0.0, f64::max),
        timing,
        peak_device_memory_bytes: peak,
        peak_memory_note: peak_note,
        ops_per_step_total: ops_per_step.values().sum(),
        ops_per_step,
        older_storage_released_per_step,
        phases,
        graph_replay,
    })
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} step on {} ({}), {}, commit {}",
            self.algo,
            self.mode,
            self.device,
            self.device_name,
            self.date,
            self.git_commit.as_deref().unwrap_or("unknown")
        )?;
        writeln!(f, "step: {}", self.step)?;
        writeln!(f, "inputs: {}", self.inputs)?;
        let settings: Vec<String> = self.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "settings: {}", settings.join(" "))?;
        writeln!(f, "parameters: G {}, D {}", self.generator_params, self.discriminator_params)?;
        writeln!(
            f,
            "{:.2} steps/s; ms per step: mean {:.3}, median {:.3}, min {:.3}, max {:.3}",
            self.steps_per_s, self.mean_ms, self.median_ms, self.min_ms, self.max_ms
        )?;
        writeln!(f, "timing: {}", self.timing)?;
        match self.peak_device_memory_bytes {
            Some(b) => writeln!(f, "peak device memory: {:.1} MiB ({})", b as f64 / 1048576.0, self.peak_memory_note)?,
            None => writeln!(f, "peak device memory: - ({})", self.peak_memory_note)?,
        }
        let mut busiest: Vec<(&String, &u64)> = self.ops_per_step.iter().collect();
        busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let busiest: Vec<String> = busiest.iter().take(8).map(|(op, n)| format!("{op} {n}")).collect();
        writeln!(
            f,
            "ops per step: {} ({}{})",
            self.ops_per_step_total,
            busiest.join(", "),
            if self.ops_per_step.len() > 8 { ", ..." } else { "" }
        )?;
        writeln!(
            f,
            "older storage released per step: {} (0: nothing a CUDA graph capture of the step would refuse to free)",
            self.older_storage_released_per_step
        )?;
        match &self.phases {
            None => writeln!(f, "phases: not measured (pass --phases)")?,
            Some(p) => {
                writeln!(f, "phases ({} steps, {:.3} ms per step in this pass; {}):", p.steps, p.total_ms, p.timing)?;
                for phase in PHASES {
                    let ms = p.ms.get(phase).copied().unwrap_or(0.0);
                    let share = if p.total_ms > 0.0 { 100.0 * ms / p.total_ms } else { 0.0 };
                    writeln!(f, "  {phase:18} {ms:10.3} ms  {share:5.1}%")?;
                }
            }
        }
        if let Some(g) = &self.graph_replay {
            match (&g.error, g.steps_per_s, g.mean_ms, g.median_ms, g.min_ms) {
                (None, Some(rate), Some(mean), Some(median), Some(min)) => writeln!(
                    f,
                    "CUDA graph replay: {rate:.2} steps/s; ms per step: mean {mean:.3}, median {median:.3}, min {min:.3} ({})",
                    g.note
                )?,
                (error, ..) => writeln!(f, "CUDA graph replay: no figures: {}", error.as_deref().unwrap_or("capture failed"))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_range_of_a_phase_is_classified_and_kernels_are_not() {
        for (range, phase) in [
            ("d_forward", "forward"),
            ("g_forward", "forward"),
            ("backward", "backward"),
            ("per_example_sq_norms", "per_example_norms"),
            ("sanitize", "clip_noise"),
            ("noise", "clip_noise"),
            ("optimizer_adam", "optimizer"),
            ("ema_update", "ema"),
            (STEP_RANGE, "other"),
        ] {
            assert_eq!(phase_of(range), Some(phase), "{range}");
            assert!(PHASES.contains(&phase));
        }
        assert_eq!(phase_of("dpgan_gemm_nt"), None);
        assert_eq!(phase_of("dpcgan_private_step"), None);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        let mut o = StepOptions::new(Algo::DpCgan);
        o.steps = 0;
        assert!(run(&o, &Device::Cpu, |_| {}).unwrap_err().to_string().contains("--steps"));
        let mut o = StepOptions::new(Algo::GsWgan);
        o.base = 0;
        assert!(run(&o, &Device::Cpu, |_| {}).unwrap_err().to_string().contains("--base"));
        let mut o = StepOptions::new(Algo::DpsgdGan);
        o.private = false;
        assert!(run(&o, &Device::Cpu, |_| {}).unwrap_err().to_string().contains("--non-private"));
    }

    /// The published models have docs/algorithms.md's parameter counts (§1 and §2), as the PyTorch
    /// comparison assumes.
    #[test]
    fn published_models_have_the_spec_parameter_counts() {
        let o = StepOptions::new(Algo::DpCgan);
        let p = prepare_dpcgan(&o, &Device::Cpu).unwrap();
        assert_eq!((p.generator_params, p.discriminator_params), (115_344, 101_889));
        let mut o = StepOptions::new(Algo::GsWgan);
        o.arch = GeneratorArch::Dcgan;
        let p = prepare_gswgan(&o, &Device::Cpu).unwrap();
        assert_eq!((p.generator_params, p.discriminator_params), (1_114_305, 1_071_105));
        o.private = false;
        o.arch = GeneratorArch::Resnet;
        let p = prepare_gswgan(&o, &Device::Cpu).unwrap();
        assert_eq!((p.generator_params, p.discriminator_params), (3_826_177, 1_071_105));
    }
}
