//! Phase 1 from the command line: K discriminators on K disjoint slices of a seeded permutation,
//! trained G at a time ([`WarmStart`]) so memory is bounded by G, each finished group written to
//! `discriminators/group-NNNN.safetensors` at once. A group whose file exists is never redone, and
//! the group under way is checkpointed every `--checkpoint-every` and when a signal stops the run
//! (`group-NNNN.partial.safetensors`, see [`super::group_checkpoint`]), so an interrupted run
//! resumes inside the group, bit for bit where it stopped. Non-private: nothing here is released.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::group_checkpoint::{self, partial_path, CheckpointEvery, GroupUnderWay};
use super::group_size::{auto_group_size, GroupChoice, GroupSize, ProbeShape};
use super::{GsWganConfig, LabelledImages, WarmStart};
use crate::backend::cuda::Tf32Scope;
use crate::data::dataset::{Dataset, Split};
use crate::data::sampling::disjoint_partitions;
use crate::error::{Error, Result};
use crate::io::checkpoint::{load_tensors, save_tensors};
use crate::models::gswgan::{Discriminator, GeneratorArch, PUBLISHED_BASE};
use crate::nn::{member, Module};
use crate::tensor::{Device, Tensor};
use crate::train::dpcgan::run::{BuildRecord, DataRecord};
use crate::train::interrupt::Signal;
use crate::train::progress::Progress;
use crate::train::replay::{stream, Purpose};
use crate::train::run_dir::{file_sha256, MetricsLog, RunDir, CONFIG, METRICS};

pub const WARM_START_ALGORITHM: &str = "gs-wgan-warm-start";
/// Where the groups' discriminators go, inside the run directory.
pub const DISCRIMINATORS: &str = "discriminators";
/// The safetensors metadata key naming the discriminators a group file holds.
const GROUP_KEY: &str = "dpgan.group";

/// The name of a generator architecture as config.json records it.
pub fn arch_name(arch: GeneratorArch) -> &'static str {
    match arch {
        GeneratorArch::Dcgan => "dcgan",
        GeneratorArch::Resnet => "resnet",
    }
}

/// The training data of `record`, refused if a file changed since the run began.
pub fn load_recorded_data(record: &DataRecord) -> Result<Dataset> {
    let data = Dataset::load(&record.dir, Split::Train)?;
    let (images, labels) = data.files();
    for (recorded, path) in [(&record.images, images), (&record.labels, labels)] {
        if file_sha256(path)? != recorded.sha256 {
            return Err(Error::file(path, "differs from the file this run trained on (SHA-256 mismatch)"));
        }
    }
    Ok(data)
}

/// What the user chose for a warm start.
#[derive(Clone, Debug)]
pub struct WarmStartSettings {
    pub seed: u64,
    pub discriminators: usize,
    pub group_size: GroupSize,
    pub iterations: u64,
    pub generator: GeneratorArch,
    /// Width scale of the models (64 is the published size; smaller only for tests).
    pub base: usize,
    pub batch_size: usize,
    pub checkpoint_every: CheckpointEvery,
    /// Matmuls and convolutions on TF32 tensor cores where large enough (CUDA only; the warm start
    /// is non-private, so no clipping depends on them).
    pub tf32: bool,
}

impl Default for WarmStartSettings {
    fn default() -> Self {
        WarmStartSettings {
            seed: 0,
            discriminators: 1000,
            group_size: GroupSize::Auto,
            iterations: 2001,
            generator: GeneratorArch::Resnet,
            base: PUBLISHED_BASE,
            batch_size: 32,
            checkpoint_every: CheckpointEvery::default(),
            tf32: false,
        }
    }
}

/// The warm start's config.json: everything phase 2 needs to find each discriminator's slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmStartRunConfig {
    pub algorithm: String,
    pub data: DataRecord,
    pub seed: u64,
    /// Seed of the permutation cut into the K slices (`data::sampling::disjoint_partitions`).
    pub partition_seed: u64,
    pub discriminators: usize,
    pub group_size: usize,
    pub iterations: u64,
    /// The throwaway generators' architecture.
    pub generator: String,
    pub base: usize,
    pub batch_size: usize,
    pub critic_steps: usize,
    /// How often the group under way is checkpointed (runs from before it existed: the default).
    #[serde(default)]
    pub checkpoint_every: CheckpointEvery,
    /// Whether the groups train with TF32 allowed (runs from before it existed: f32).
    #[serde(default)]
    pub tf32: bool,
    pub build: BuildRecord,
    pub device: String,
}

impl WarmStartRunConfig {
    pub fn plan(s: &WarmStartSettings, data: &Dataset, device: &Device) -> Result<Self> {
        Ok(Self::plan_with_group_choice(s, data, device)?.0)
    }

    /// [`Self::plan`], and a sentence saying how the group size was chosen (`auto` measures it on
    /// `device`, see [`group_size`](super::group_size)).
    pub fn plan_with_group_choice(s: &WarmStartSettings, data: &Dataset, device: &Device) -> Result<(Self, String)> {
        let records = data.len();
        if s.discriminators == 0 || s.discriminators > records {
            return Err(Error::Invalid(format!("--discriminators must be in 1..={records} (one slice each), got {}", s.discriminators)));
        }
        if s.iterations == 0 {
            return Err(Error::Invalid("--iterations must be at least 1".into()));
        }
        if s.batch_size == 0 || s.batch_size > records / s.discriminators {
            return Err(Error::Invalid(format!(
                "--batch-size must be in 1..={} (a slice's size with {} discriminators), got {}",
                records / s.discriminators,
                s.discriminators,
                s.batch_size
            )));
        }
        if s.base == 0 {
            return Err(Error::Invalid("the model width must be at least 1".into()));
        }
        if s.tf32 && device.is_cpu() {
            return Err(Error::Invalid(
                "--tf32 needs a CUDA device (sm_80 or newer; older ones run f32): the CPU backend has no TF32".into(),
            ));
        }
        let group = match s.group_size {
            GroupSize::Fixed(0) => return Err(Error::Invalid("--group-size must be at least 1".into())),
            GroupSize::Fixed(n) => {
                GroupChoice { size: n.min(s.discriminators), how: format!("{} (--group-size {n})", n.min(s.discriminators)) }
            }
            GroupSize::Auto => {
                auto_group_size(ProbeShape { arch: s.generator, base: s.base, batch_size: s.batch_size }, s.discriminators, device)?
            }
        };
        let config = WarmStartRunConfig {
            algorithm: WARM_START_ALGORITHM.to_string(),
            data: DataRecord::of(data)?,
            seed: s.seed,
            partition_seed: stream(s.seed, Purpose::Batches, u64::MAX).random(),
            discriminators: s.discriminators,
            group_size: group.size,
            iterations: s.iterations,
            generator: arch_name(s.generator).to_string(),
            base: s.base,
            batch_size: s.batch_size,
            critic_steps: GsWganConfig::default().critic_steps,
            checkpoint_every: s.checkpoint_every,
            tf32: s.tf32,
            build: BuildRecord::current(),
            device: device.to_string(),
        };
        Ok((config, group.how))
    }

    pub fn groups(&self) -> usize {
        self.discriminators.div_ceil(self.group_size)
    }

    /// Discriminator j's slice of the training set.
    pub fn slices(&self, records: usize) -> Result<Vec<Vec<usize>>> {
        if records != self.data.records {
            return Err(Error::Invalid(format!("{records} training records, the run recorded {}", self.data.records)));
        }
        disjoint_partitions(records, self.discriminators, self.partition_seed)
    }

    /// Discriminator j's seed (initialisation, batch order, draws of the warm start).
    pub fn member_seed(&self, j: usize) -> u64 {
        stream(self.seed, Purpose::Init, j as u64).random()
    }

    pub fn step_config(&self) -> GsWganConfig {
        GsWganConfig { batch_size: self.batch_size, critic_steps: self.critic_steps, ..GsWganConfig::default() }
    }

    pub fn arch(&self) -> Result<GeneratorArch> {
        self.generator.parse()
    }
}

/// The file of group `group` in the run directory `root`.
pub fn group_path(root: &Path, group: usize) -> PathBuf {
    root.join(DISCRIMINATORS).join(format!("group-{group:04}.safetensors"))
}

/// How a call to [`WarmStartRun::train`] ended.
#[derive(Clone, Debug)]
pub struct WarmStartOutcome {
    pub groups_trained: usize,
    pub groups_skipped: usize,
    pub wall_s: f64,
    /// The signal that stopped the warm start, if one did.
    pub interrupted: Option<Signal>,
    /// The group it stopped inside and the iteration its checkpoint holds, if it stopped in one.
    pub checkpointed: Option<(usize, u64)>,
}

/// How training a group ended.
enum GroupEnd {
    /// Its file is written; the mean losses of its last iteration and its wall seconds in all.
    Finished { critic: f64, generator: f64, group_s: f64 },
    /// Stopped by `signal` with a checkpoint of its state after `iteration`.
    Stopped { signal: Signal, iteration: u64 },
}

/// See the module documentation.
pub struct WarmStartRun {
    dir: RunDir,
    config: WarmStartRunConfig,
    data: LabelledImages,
    slices: Vec<Vec<usize>>,
    device: Device,
    /// The group a resumed run continues from its checkpoint, restored and checked up front.
    under_way: Option<GroupUnderWay>,
}

impl WarmStartRun {
    pub fn start(out: &Path, config: WarmStartRunConfig, data: &Dataset, device: &Device) -> Result<Self> {
        let dir = RunDir::create(out)?;
        dir.write_json(CONFIG, &config)?;
        Self::assemble(dir, config, data, device)
    }

    /// Continues the warm start in `root`: groups already written are kept, and the first group
    /// without a file goes on from its checkpoint if it has one (refused here, before any
    /// training, if that file is damaged or not this run's).
    pub fn resume(root: &Path, device: &Device) -> Result<Self> {
        let dir = RunDir::open_for_training(root)?;
        let config: WarmStartRunConfig = dir.read_config(WARM_START_ALGORITHM)?;
        if config.tf32 && device.is_cpu() {
            return Err(Error::Invalid(format!(
                "{} trains with TF32 (config.json): resume it on a CUDA device, where it started",
                root.display()
            )));
        }
        let data = load_recorded_data(&config.data)?;
        let mut run = Self::assemble(dir, config, &data, device)?;
        if let Some(group) = (0..run.config.groups()).find(|&g| !group_path(run.dir.root(), g).is_file()) {
            let path = partial_path(run.dir.root(), group);
            if path.is_file() {
                let members = run.members(group);
                let slices = run.slices[members.clone()].to_vec();
                run.under_way = Some(group_checkpoint::load(&path, group, members, slices, &run.config, device)?);
            }
        }
        Ok(run)
    }

    fn assemble(dir: RunDir, config: WarmStartRunConfig, data: &Dataset, device: &Device) -> Result<Self> {
        let slices = config.slices(data.len())?;
        std::fs::create_dir_all(dir.path(DISCRIMINATORS))
            .map_err(|e| Error::file(dir.path(DISCRIMINATORS), format!("cannot create: {e}")))?;
        Ok(WarmStartRun { dir, config, data: LabelledImages::from_dataset(data)?, slices, device: device.clone(), under_way: None })
    }

    pub fn config(&self) -> &WarmStartRunConfig {
        &self.config
    }

    /// Discriminators whose group file already exists.
    pub fn discriminators_done(&self) -> usize {
        (0..self.config.groups()).filter(|&g| group_path(self.dir.root(), g).is_file()).map(|g| self.members(g).len()).sum()
    }

    /// Discriminator-iterations done: those of the finished groups and of the group to continue.
    pub fn iterations_done(&self) -> u64 {
        let under_way = self.under_way.as_ref().map_or(0, |u| u.warm.iterations() * self.members(u.group).len() as u64);
        self.discriminators_done() as u64 * self.config.iterations + under_way
    }

    fn members(&self, group: usize) -> std::ops::Range<usize> {
        let first = group * self.config.group_size;
        first..(first + self.config.group_size).min(self.config.discriminators)
    }

    /// Trains every group without a file, in order, stopping when a signal asks
    /// ([`crate::train::interrupt`]); progress counts discriminator-iterations.
    pub fn train(&mut self, progress: &Progress) -> Result<WarmStartOutcome> {
        self.train_until(progress, &mut crate::train::interrupt::requested)
    }

    /// [`WarmStartRun::train`], asking `stop` instead of the process's signals whether to stop:
    /// before each group and after each of its iterations but the last. A stop inside a group
    /// checkpoints it first. How a caller, or a test, interrupts a warm start in process.
    pub fn train_until(&mut self, progress: &Progress, stop: &mut dyn FnMut() -> Option<Signal>) -> Result<WarmStartOutcome> {
        // The groups train on this thread: its setting covers every step, and ends with the call.
        let _tf32 = Tf32Scope::new(self.config.tf32);
        let started = Instant::now();
        let mut metrics = MetricsLog::open(&self.dir.path(METRICS), None)?;
        let (mut trained, mut skipped, mut done) = (0, 0, 0);
        let outcome = |trained, skipped, interrupted, checkpointed| WarmStartOutcome {
            groups_trained: trained,
            groups_skipped: skipped,
            wall_s: started.elapsed().as_secs_f64(),
            interrupted,
            checkpointed,
        };
        for group in 0..self.config.groups() {
            let members = self.members(group);
            let path = group_path(self.dir.root(), group);
            if path.is_file() {
                // A crash between writing the group's file and deleting its checkpoint leaves both.
                remove_if_present(&partial_path(self.dir.root(), group))?;
                skipped += 1;
                done += members.len();
                progress.set_step((done as u64) * self.config.iterations);
                continue;
            }
            if let Some(signal) = stop() {
                return Ok(outcome(trained, skipped, Some(signal), None));
            }
            let (critic, generator, group_s) = match self.train_group(group, &path, progress, done, stop)? {
                GroupEnd::Finished { critic, generator, group_s } => (critic, generator, group_s),
                GroupEnd::Stopped { signal, iteration } => return Ok(outcome(trained, skipped, Some(signal), Some((group, iteration)))),
            };
            trained += 1;
            done += members.len();
            metrics.append(&serde_json::json!({
                "step": done,
                "group": group,
                "first": members.start,
                "count": members.len(),
                "d_loss": critic,
                "g_loss": generator,
                "group_s": group_s,
                "wall_s": started.elapsed().as_secs_f64(),
            }))?;
            progress.report(done as u64 * self.config.iterations, &format!("group {group} done · D {critic:.4} · G {generator:.4}"));
        }
        Ok(outcome(trained, skipped, None, None))
    }

    /// One group's warm start, from its checkpoint if the run resumed inside it, written
    /// atomically; checkpointed every `--checkpoint-every` and when `stop` says so. Progress
    /// counts discriminator-iterations (`before` discriminators already done).
    fn train_group(
        &mut self,
        group: usize,
        path: &Path,
        progress: &Progress,
        before: usize,
        stop: &mut dyn FnMut() -> Option<Signal>,
    ) -> Result<GroupEnd> {
        let members = self.members(group);
        let checkpoint = partial_path(self.dir.root(), group);
        let (mut warm, spent) = match self.under_way.take().filter(|u| u.group == group) {
            Some(u) => {
                progress.println(&format!(
                    "continuing group {group} from its checkpoint at iteration {} of {}",
                    u.warm.iterations(),
                    self.config.iterations
                ));
                (u.warm, u.group_s)
            }
            None => {
                let seeds: Vec<u64> = members.clone().map(|j| self.config.member_seed(j)).collect();
                let slices: Vec<Vec<usize>> = self.slices[members.clone()].to_vec();
                (WarmStart::new(self.config.arch()?, self.config.base, &seeds, slices, self.config.step_config(), &self.device)?, 0.0)
            }
        };
        let mut last = None;
        let (started, iterations, resumed_at) = (Instant::now(), self.config.iterations, warm.iterations());
        let mut last_checkpoint = Instant::now();
        let report_every = (iterations / 20).max(1);
        for i in resumed_at + 1..=iterations {
            last = Some(warm.iteration(&self.data)?);
            let position = before as u64 * iterations + i * members.len() as u64;
            progress.set_step(position);
            if i % report_every == 0 && i < iterations {
                let rate = ((i - resumed_at) * members.len() as u64) as f64 / started.elapsed().as_secs_f64();
                progress.report(position, &format!("group {group} · iteration {i}/{iterations} · {rate:.1} discriminator-iterations/s"));
            }
            if i == iterations {
                break;
            }
            let signal = stop();
            if signal.is_some() || self.config.checkpoint_every.due(i, last_checkpoint.elapsed()) {
                group_checkpoint::save(&checkpoint, group, members.clone(), &self.config, &warm, spent + started.elapsed().as_secs_f64())?;
                last_checkpoint = Instant::now();
            }
            if let Some(signal) = signal {
                return Ok(GroupEnd::Stopped { signal, iteration: i });
            }
        }
        let last = last.ok_or_else(|| Error::Invalid("a warm start needs at least one iteration".into()))?;
        let mean = |t: &Tensor| -> Result<f64> { Ok(t.to_vec()?.iter().map(|&x| x as f64).sum::<f64>() / members.len() as f64) };
        let (critic, generator) = (mean(&last.critic)?, mean(&last.generator)?);
        let record = serde_json::json!({ "group": group, "first": members.start, "count": members.len(), "iterations": warm.iterations() });
        let named = warm.discriminators.named_tensors();
        let named: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        save_tensors(path, &named, Some(HashMap::from([(GROUP_KEY.to_string(), record.to_string())])))?;
        remove_if_present(&checkpoint)?;
        Ok(GroupEnd::Finished { critic, generator, group_s: spent + started.elapsed().as_secs_f64() })
    }
}

/// Deletes `path` if it is there (a group checkpoint its finished group has made obsolete).
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::file(path, format!("cannot delete: {e}"))),
        _ => Ok(()),
    }
}

/// The K warm-started discriminators of a finished warm start, each a group of one, on the host.
pub fn load_discriminators(root: &Path, config: &WarmStartRunConfig) -> Result<Vec<Discriminator>> {
    let mut out = Vec::with_capacity(config.discriminators);
    for group in 0..config.groups() {
        let path = group_path(root, group);
        if !path.is_file() {
            return Err(Error::file(
                &path,
                "is missing: the warm start has not finished (continue it with `dpgan train gs-wgan warm-start --resume`)",
            ));
        }
        let (mut tensors, metadata) = load_tensors(&path, &Device::Cpu)?;
        let first = group * config.group_size;
        let count = (config.discriminators - first).min(config.group_size);
        let record: serde_json::Value = metadata
            .get(GROUP_KEY)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| Error::file(&path, format!("has no {GROUP_KEY} record: not a dpgan warm-start file")))?;
        if record["first"].as_u64() != Some(first as u64) || record["count"].as_u64() != Some(count as u64) {
            return Err(Error::file(&path, format!("holds discriminators {record}, expected {count} from {first}")));
        }
        let mut stacked = Discriminator::new(count, config.base, &mut stream(0, Purpose::Init, 0), &Device::Cpu)?;
        for entry in stacked.entries_mut() {
            let t = tensors.remove(&entry.name).ok_or_else(|| Error::file(&path, format!("lacks {}", entry.name)))?;
            if t.shape() != entry.tensor.shape() {
                return Err(Error::file(&path, format!("{} has shape {:?}, expected {:?}", entry.name, t.shape(), entry.tensor.shape())));
            }
            *entry.tensor = t;
        }
        for g in 0..count {
            out.push(member(&stacked, g)?);
        }
    }
    Ok(out)
}
