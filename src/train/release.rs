//! The generator a run may publish: its weights alone, without what a checkpoint also holds and
//! the guarantee does not cover (the discriminators, the optimizer moments, the run's secret key),
//! with what rebuilding it needs and the (ε, δ) it carries. `dpgan export` writes one as a single
//! safetensors file; `dpgan sample --generator` samples it exactly as `dpgan sample --run` samples
//! the run (the same images bit for bit, the same record).
use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::data::classes::class_names_of_file;
use crate::dp::KeySource;
use crate::error::{Error, Result};
use crate::io::atomic_write;
use crate::io::checkpoint::{encode_tensors, load_tensors};
use crate::models::{dpcgan, dpsgd_gan, gswgan};
use crate::nn::{load_prefixed, Module};
use crate::tensor::{Device, Tensor};
use crate::train::replay::{stream, Purpose};
use crate::train::run_dir::{read_json, CONFIG};
use crate::train::{dpcgan::run as dpcgan_run, dpsgd_gan::run as dpsgd_gan_run, gswgan::run as gswgan_run, ImageSink};

/// The metadata key of a released generator's record, and the value of its `format` field.
const RECORD_KEY: &str = "dpgan.release";
pub const FORMAT: &str = "dpgan-generator";
/// The prefix of every tensor name in a released generator's file.
const PREFIX: &str = "generator";
/// The widest generator a release is read as (GS-WGAN's base, DPSGD-GAN's width; the published
/// ones are 64 and 128).
const MAX_WIDTH: u64 = 4096;

/// Each algorithm's released generator: DP-CGAN's G, GS-WGAN's EMA copy G_s, DPSGD-GAN's G.
pub enum ReleasedModel {
    DpCgan(dpcgan::Generator),
    GsWgan(gswgan::Generator),
    DpsgdGan(Box<dpsgd_gan::Generator>),
}

impl ReleasedModel {
    fn module(&self) -> &dyn Module {
        match self {
            ReleasedModel::DpCgan(g) => g,
            ReleasedModel::GsWgan(g) => g,
            ReleasedModel::DpsgdGan(g) => g.as_ref(),
        }
    }

    fn module_mut(&mut self) -> &mut dyn Module {
        match self {
            ReleasedModel::DpCgan(g) => g,
            ReleasedModel::GsWgan(g) => g,
            ReleasedModel::DpsgdGan(g) => g.as_mut(),
        }
    }
}

/// A generator and its record: `algorithm`, `architecture`, `build`, `checkpoint_step`,
/// `epsilon`, `delta` and how they were accounted, `private` (and a `warning` when not), the
/// run's directory name and the names of its 10 classes.
pub struct Release {
    pub model: ReleasedModel,
    pub record: Value,
}

impl Release {
    /// The generator `run`'s checkpoint releases, with the step and ε stored beside it.
    pub fn of_run(run: &Path, device: &Device) -> Result<Release> {
        let config: Value = read_json(&run.join(CONFIG))?;
        let (model, labels_file, mut record) = if config["algorithm"] == gswgan_run::ALGORITHM {
            let (generator, config, state) = gswgan_run::load_ema_generator(run, device)?;
            let record = json!({
                "algorithm": config.algorithm,
                "architecture": {"generator": config.generator, "base": config.base},
                "build": config.build,
                "checkpoint_step": state.iteration,
                "epsilon": state.epsilon,
                "delta": state.delta,
                "accounting": config.accounting,
                "epsilon_as_published": state.epsilon_as_published,
                "epsilon_per_step": state.epsilon_per_step,
            });
            (ReleasedModel::GsWgan(generator), config.data.labels.path, record)
        } else if config["algorithm"] == dpsgd_gan_run::ALGORITHM {
            let (generator, config, state) = dpsgd_gan_run::load_generator(run, device)?;
            let record = json!({
                "algorithm": config.algorithm,
                "architecture": {"width": config.width},
                "build": config.build,
                "checkpoint_step": state.step,
                "epsilon": state.epsilon,
                "delta": state.delta,
                "conversion": config.conversion,
                "sampling": "poisson",
            });
            (ReleasedModel::DpsgdGan(Box::new(generator)), config.data.labels.path, record)
        } else {
            let (generator, config, state) = dpcgan_run::load_generator(run, device)?;
            let record = json!({
                "algorithm": config.algorithm,
                "architecture": {},
                "build": config.build,
                "checkpoint_step": state.step,
                "epsilon": state.epsilon,
                "delta": state.delta,
                "conversion": config.conversion,
                "sampling": config.sampling,
            });
            (ReleasedModel::DpCgan(generator), config.data.labels.path, record)
        };
        // Whether the guarantee holds at all: a run with replayable noise says so wherever its
        // generator or its data go.
        let noise_key: KeySource = serde_json::from_value(config["noise_key"].clone())
            .map_err(|e| Error::file(run.join(CONFIG), format!("no valid noise_key (where the run's noise key came from): {e}")))?;
        record["private"] = json!(noise_key.is_private());
        if let Some(warning) = noise_key.warning() {
            record["warning"] = json!(warning);
        }
        record["run"] = json!(run_name(run)?);
        record["classes"] = json!(class_names_of_file(&labels_file));
        Ok(Release { model, record })
    }

    /// Writes the generator's tensors (named `generator.*`) with the record in the metadata to
    /// `path`, atomically. Readable by anyone the directory lets read it: it is meant to be
    /// published, unlike every other tensor file dpgan writes.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, &Tensor)> =
            self.model.module().named_tensors().into_iter().map(|(n, t)| (format!("{PREFIX}.{n}"), t)).collect();
        let tensors: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let mut record = self.record.clone();
        record["format"] = json!(FORMAT);
        let text = serde_json::to_string(&record).map_err(|e| Error::Invalid(format!("release record: {e}")))?;
        let metadata = HashMap::from([(RECORD_KEY.to_string(), text)]);
        atomic_write(path, &encode_tensors(path, &tensors, Some(metadata))?)
    }

    /// The generator `path` holds ([`Release::save`]'s format), rebuilt from its record and every
    /// one of its tensors: a file with a tensor more or less than the architecture has is refused.
    pub fn load(path: &Path, device: &Device) -> Result<Release> {
        let (mut tensors, metadata) = load_tensors(path, &Device::Cpu)?;
        let text = metadata.get(RECORD_KEY).ok_or_else(|| {
            Error::file(path, "holds no released generator's record (`dpgan export` writes one; a checkpoint is not one)")
        })?;
        let mut record: Value = serde_json::from_str(text).map_err(|e| Error::file(path, format!("release record is not JSON: {e}")))?;
        if record["format"] != FORMAT {
            return Err(Error::file(path, format!("release record has format {}, expected \"{FORMAT}\"", record["format"])));
        }
        record.as_object_mut().map(|r| r.remove("format"));
        let field = |name: &str| -> Result<&Value> {
            let value = &record["architecture"][name];
            (!value.is_null()).then_some(value).ok_or_else(|| Error::file(path, format!("release record lacks architecture.{name}")))
        };
        // A width is checked before a model of it is built: a damaged record must not ask for
        // terabytes.
        let usize_field = |name: &str| -> Result<usize> {
            match field(name)?.as_u64() {
                Some(v @ 1..=MAX_WIDTH) => Ok(v as usize),
                _ => Err(Error::file(path, format!("architecture.{name} is {}, not a width from 1 to {MAX_WIDTH}", field(name)?))),
            }
        };
        // The initial weights are replaced: any seed builds the shapes.
        let init = &mut stream(0, Purpose::Init, 0);
        let mut model = match record["algorithm"].as_str() {
            Some(gswgan_run::ALGORITHM) => {
                let arch = field("generator")?.as_str().ok_or_else(|| Error::file(path, "architecture.generator is not a name"))?;
                ReleasedModel::GsWgan(gswgan::Generator::new(arch.parse()?, 1, usize_field("base")?, init, &Device::Cpu)?)
            }
            Some(dpsgd_gan_run::ALGORITHM) => {
                ReleasedModel::DpsgdGan(Box::new(dpsgd_gan::Generator::new(1, usize_field("width")?, init, &Device::Cpu)?))
            }
            Some(dpcgan_run::ALGORITHM) => ReleasedModel::DpCgan(dpcgan::Generator::new(1, init, &Device::Cpu)?),
            _ => return Err(Error::file(path, format!("release record names no algorithm dpgan knows: {}", record["algorithm"]))),
        };
        load_prefixed(model.module_mut(), &mut tensors, PREFIX, path, device)?;
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::file(path, format!("holds {extra}, which the {} generator has not", record["algorithm"])));
        }
        Ok(Release { model, record })
    }

    /// `per_class` images of every class in [0, 1], codes from `seed`, into `sink`: what each
    /// algorithm's `sample_released_into` gives for its run.
    pub fn sample_into(&self, per_class: usize, seed: u64, device: &Device, sink: &mut ImageSink) -> Result<()> {
        match &self.model {
            ReleasedModel::DpCgan(g) => dpcgan_run::sample_released_into(g, per_class, seed, device, sink),
            ReleasedModel::GsWgan(g) => gswgan_run::sample_released_into(g, per_class, seed, device, sink),
            ReleasedModel::DpsgdGan(g) => dpsgd_gan_run::sample_released_into(g, per_class, seed, device, sink),
        }
    }

    /// The names of the 10 classes, the grid's row labels (digits when the record has none).
    pub fn class_names(&self) -> Vec<String> {
        let names: Option<Vec<String>> =
            self.record["classes"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect());
        names.filter(|n| n.len() == dpcgan::CLASSES).unwrap_or_else(|| (0..dpcgan::CLASSES).map(|c| c.to_string()).collect())
    }
}

/// The run's directory name, the only part of its path a released record names (the rest is the
/// machine's, and may say whose it is).
pub fn run_name(run: &Path) -> Result<String> {
    let resolved = std::fs::canonicalize(run).map_err(|e| Error::file(run, format!("cannot resolve: {e}")))?;
    Ok(resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grid's rows take the record's 10 class names; a record without 10 falls back to digits.
    #[test]
    fn class_names_come_from_the_record() {
        let model = || ReleasedModel::DpCgan(dpcgan::Generator::new(1, &mut stream(0, Purpose::Init, 0), &Device::Cpu).unwrap());
        let fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
        let named = Release { model: model(), record: json!({ "classes": fashion }) };
        assert_eq!(named.class_names(), fashion);
        let short = Release { model: model(), record: json!({ "classes": ["a", "b"] }) };
        assert_eq!(short.class_names(), (0..10).map(|c| c.to_string()).collect::<Vec<_>>());
    }

    /// A file whose record is damaged is refused with the field named, before any model is built.
    #[test]
    fn damaged_records_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                json!({"format": FORMAT, "algorithm": "dpsgd-gan", "architecture": {"width": 1u64 << 40}}),
                "architecture.width is 1099511627776",
            ),
            (json!({"format": FORMAT, "algorithm": "dpsgd-gan", "architecture": {"width": 0}}), "architecture.width is 0"),
            (json!({"format": FORMAT, "algorithm": "gs-wgan", "architecture": {"base": 64}}), "lacks architecture.generator"),
            (json!({"format": FORMAT, "algorithm": "gs-wgan", "architecture": {"generator": "vit", "base": 64}}), "vit"),
            (json!({"format": FORMAT, "algorithm": "stylegan", "architecture": {}}), "no algorithm dpgan knows"),
            (json!({"format": "other", "algorithm": "dp-cgan", "architecture": {}}), "format \"other\""),
            (json!({"format": FORMAT, "algorithm": "dp-cgan", "architecture": {}}), "lacks generator.hidden.weight"),
        ];
        for (i, (record, why)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("g{i}.safetensors"));
            let metadata = HashMap::from([(RECORD_KEY.to_string(), record.to_string())]);
            atomic_write(&path, &encode_tensors(&path, &[], Some(metadata)).unwrap()).unwrap();
            let err = Release::load(&path, &Device::Cpu).err().unwrap_or_else(|| panic!("{record} was accepted")).to_string();
            assert!(err.contains(why), "{record}: {err}");
        }
    }
}
