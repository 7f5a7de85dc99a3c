//! Randomness addressed by position instead of carried as state: every draw of a run comes from a
//! ChaCha20 stream chosen by `(key, purpose, index)`, so step t's batch, latent codes and labels
//! are the same whether the run got there uninterrupted or resumed from a checkpoint. A checkpoint
//! then only needs the step counter (and the run's secret key) to replay the rest of the run bit
//! for bit.
//!
//! Two keys: the public `--seed` for what the privacy proof does not rely on ([`stream`]: weights,
//! latent codes, grids, samples), and the run's secret [`RunKey`] for what it does (batches here,
//! noise and GS-WGAN's selection elsewhere).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::backend::ops;
use crate::data::sampling::{BatchSampler, Sampling};
use crate::dp::{NoiseKey, RunKey, SecretPurpose};
use crate::error::Result;
use crate::tensor::{Device, Tensor};

/// What a public stream is used for; each purpose has its own key, so adding draws to one never
/// shifts another. Nothing the privacy proof relies on comes from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Parameter initialisation.
    Init = 1,
    /// Batches that the proof does not rely on: GS-WGAN's critic batches within a slice and the
    /// warm start's partition (indexed by discriminator). A private batch comes from the run key.
    Batches = 2,
    /// Latent codes, generator labels and α of a training step (indexed by step; a warm-start
    /// member's by its iteration, under its own seed).
    Generator = 3,
    /// The fixed latent codes of the progress grids.
    Grid = 4,
    /// Released samples (`dpgan sample`), indexed by the sampling seed.
    Sample = 5,
}

/// The stream for `purpose` at `index` of the run seeded by `seed`.
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha20Rng {
    let mut keys = ChaCha20Rng::seed_from_u64(seed);
    keys.set_stream(purpose as u64);
    let mut rng = ChaCha20Rng::from_seed(keys.random());
    rng.set_stream(index);
    rng
}

/// Standard normals of `shape` computed where they are used: one 256-bit draw from `rng` keys a
/// Philox counter stream, and the device computes element e from (key, e) (what
/// `dp::noise::standard_normal_at` defines, the same values on every backend). A step's latent
/// codes then cost the host one draw and no upload. Public randomness: the key comes from a
/// public stream and is used for nothing else.
pub fn device_normals<R: Rng>(shape: &[usize], rng: &mut R, device: &Device) -> Result<Tensor> {
    ops::standard_normals(shape, &NoiseKey::public(rng), device)
}

/// One-hot rows `[prefix.., classes]` of uniformly drawn classes, computed where they are used: one
/// 256-bit draw from `rng` keys a Philox stream and the device draws row r's class from (key, r)
/// (`dp::noise::uniform_class_at`, the same classes on every backend). A step's generator labels
/// then cost the host one draw and no upload. Public randomness, as for [`device_normals`].
pub fn device_one_hot<R: Rng>(prefix: &[usize], classes: usize, rng: &mut R, device: &Device) -> Result<Tensor> {
    ops::uniform_one_hot(prefix, classes, &NoiseKey::public(rng), device)
}

/// The keys of a step's generator inputs (public randomness): one 256-bit draw each for the latent
/// codes and the labels, in that order, from the step's generator stream, as [`device_normals`]
/// and [`device_one_hot`] draw them. Drawn apart from the inputs, so that a step's plan of
/// per-step values can hold the keys a captured step's draws then read.
#[derive(Clone, Copy)]
pub struct GeneratorKeys {
    z: NoiseKey,
    labels: NoiseKey,
}

impl GeneratorKeys {
    pub fn draw<R: Rng>(rng: &mut R) -> Self {
        let z = NoiseKey::public(rng);
        GeneratorKeys { z, labels: NoiseKey::public(rng) }
    }

    /// z `[1, batch, latent]` and one-hot labels `[1, batch, classes]`, drawn on the device.
    pub fn inputs(&self, batch: usize, latent: usize, classes: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let z = ops::standard_normals(&[1, batch, latent], &self.z, device)?;
        Ok((z, ops::uniform_one_hot(&[1, batch], classes, &self.labels, device)?))
    }

    /// The words of the keys that public draws read (Philox's words 0 and 1), in draw order.
    pub fn draw_words(&self) -> Vec<[u32; 2]> {
        [self.z, self.labels].iter().map(|k| [k.key[0], k.key[1]]).collect()
    }
}

/// A private run's batches by step number: `batch(t)` depends only on the run's secret key and t.
/// Poisson batches draw from the step's own stream; shuffled epochs from the epoch's stream, cached
/// while the run stays in that epoch.
pub struct StepBatches {
    records: usize,
    sampling: Sampling,
    key: RunKey,
    epoch: Option<(u64, u64, BatchSampler)>,
}

impl StepBatches {
    pub fn new(records: usize, sampling: Sampling, key: &RunKey) -> Result<Self> {
        // Validates the settings once, up front.
        BatchSampler::new(records, sampling, 0)?;
        Ok(StepBatches { records, sampling, key: key.clone(), epoch: None })
    }

    /// Steps per epoch: `records / batch_size` for shuffled epochs, `1/q` (rounded) under Poisson.
    pub fn steps_per_epoch(&self) -> u64 {
        match self.sampling {
            Sampling::Shuffle { batch_size } => (self.records / batch_size) as u64,
            Sampling::Poisson { sample_rate } => (1.0 / sample_rate).round().max(1.0) as u64,
        }
    }

    /// The record indices of step `step`'s batch.
    pub fn batch(&mut self, step: u64) -> Result<Vec<usize>> {
        let stream_of = |index: u64| self.key.stream(SecretPurpose::Batches, index);
        match self.sampling {
            Sampling::Poisson { .. } => BatchSampler::with_rng(self.records, self.sampling, stream_of(step)).map(|mut s| s.next_batch()),
            Sampling::Shuffle { .. } => {
                let per_epoch = self.steps_per_epoch();
                let (epoch, position) = (step / per_epoch, step % per_epoch);
                let reusable = matches!(&self.epoch, Some((e, next, _)) if *e == epoch && *next <= position);
                if !reusable {
                    self.epoch = Some((epoch, 0, BatchSampler::with_rng(self.records, self.sampling, stream_of(epoch))?));
                }
                let (_, next, sampler) = self.epoch.as_mut().expect("epoch sampler set above");
                while *next < position {
                    sampler.next_batch();
                    *next += 1;
                }
                *next += 1;
                Ok(sampler.next_batch())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_purpose_and_index_and_replay() {
        let draw = |p, i| stream(7, p, i).random::<u64>();
        assert_eq!(draw(Purpose::Generator, 3), draw(Purpose::Generator, 3));
        assert_ne!(draw(Purpose::Generator, 3), draw(Purpose::Generator, 4));
        assert_ne!(draw(Purpose::Generator, 3), draw(Purpose::Batches, 3));
        assert_ne!(stream(7, Purpose::Init, 0).random::<u64>(), stream(8, Purpose::Init, 0).random::<u64>());
    }

    /// device_normals are the key's standard normals, element by element; each draw of the stream
    /// gives a new key (so consecutive steps' codes differ) and the same stream the same codes;
    /// 60,000 of them have mean 0 and variance 1 within five standard errors.
    #[test]
    fn device_normals_are_the_keys_normals_and_fresh_per_draw() {
        let z = device_normals(&[1, 600, 100], &mut stream(3, Purpose::Generator, 9), &Device::Cpu).unwrap();
        assert_eq!(z.shape(), &[1, 600, 100]);
        let z = z.to_vec().unwrap();
        let key = NoiseKey::public(&mut stream(3, Purpose::Generator, 9));
        for e in [0usize, 1, 2, 599, 59_999] {
            assert_eq!(z[e].to_bits(), crate::dp::noise::standard_normal_at(&key, e as u64).to_bits(), "element {e}");
        }
        let n = z.len() as f64;
        let mean = z.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = z.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
        let again = device_normals(&[1, 600, 100], &mut stream(3, Purpose::Generator, 9), &Device::Cpu).unwrap().to_vec().unwrap();
        assert_eq!(again, z, "the same stream, the same codes");
        let mut rng = stream(3, Purpose::Generator, 9);
        let first = device_normals(&[50], &mut rng, &Device::Cpu).unwrap().to_vec().unwrap();
        let second = device_normals(&[50], &mut rng, &Device::Cpu).unwrap().to_vec().unwrap();
        assert!(first.iter().zip(&second).all(|(a, b)| a != b), "a second draw from the stream is a new key");
        let next_step = device_normals(&[50], &mut stream(3, Purpose::Generator, 10), &Device::Cpu).unwrap().to_vec().unwrap();
        assert!(first.iter().zip(&next_step).all(|(a, b)| a != b), "the next step's stream, new codes");
    }

    #[test]
    fn shuffled_batches_do_not_depend_on_the_order_they_are_asked_for() {
        let sampling = Sampling::Shuffle { batch_size: 7 };
        let key = RunKey::replayable(11);
        let mut straight = StepBatches::new(50, sampling, &key).unwrap();
        let all: Vec<Vec<usize>> = (0..30).map(|t| straight.batch(t).unwrap()).collect();
        // An epoch is 7 batches of 7 out of 50: disjoint within it.
        let mut epoch: Vec<usize> = all[..7].concat();
        epoch.sort_unstable();
        epoch.dedup();
        assert_eq!(epoch.len(), 49);
        assert_ne!(all[0], all[7], "each epoch draws a new permutation");
        // A resumed run asks from the middle; a backwards jump recomputes.
        let mut resumed = StepBatches::new(50, sampling, &key).unwrap();
        for t in [17, 18, 25, 3, 29] {
            assert_eq!(resumed.batch(t).unwrap(), all[t as usize], "step {t}");
        }
        // Step t is batch t mod 7 of epoch t / 7's own permutation, drawn from that epoch's stream.
        assert_eq!(straight.steps_per_epoch(), 7);
        for epoch in 0..4u64 {
            let mut sampler = BatchSampler::with_rng(50, sampling, key.stream(SecretPurpose::Batches, epoch)).unwrap();
            for position in 0..7 {
                let t = epoch * 7 + position;
                let expected = sampler.next_batch();
                if t < all.len() as u64 {
                    assert_eq!(all[t as usize], expected, "step {t}: batch {position} of epoch {epoch}");
                }
            }
        }
    }

    #[test]
    fn poisson_batches_replay_by_step() {
        let sampling = Sampling::Poisson { sample_rate: 0.1 };
        let key = RunKey::generate().unwrap();
        let mut a = StepBatches::new(1000, sampling, &key).unwrap();
        let mut b = StepBatches::new(1000, sampling, &key).unwrap();
        let first: Vec<Vec<usize>> = (0..5).map(|t| a.batch(t).unwrap()).collect();
        assert_eq!(b.batch(4).unwrap(), first[4]);
        assert_ne!(first[0], first[1]);
        assert_eq!(a.steps_per_epoch(), 10);
    }
}
