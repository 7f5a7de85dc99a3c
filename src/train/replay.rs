//! Randomness addressed by position instead of carried as state: every draw of a run comes from a
//! ChaCha20 stream chosen by `(run seed, purpose, index)`, so step t's batch, latent codes and
//! labels are the same whether the run got there uninterrupted or resumed from a checkpoint. A
//! checkpoint then only needs the step counter to replay the rest of the run bit for bit.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::data::sampling::{BatchSampler, Sampling};
use crate::error::Result;

/// What a stream is used for; each purpose has its own key, so adding draws to one never shifts
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Parameter initialisation.
    Init = 1,
    /// Which records form a batch (indexed by step, or by epoch for shuffled epochs).
    Batches = 2,
    /// Latent codes and generator labels of a training step (indexed by step).
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

/// Batches by step number: `batch(t)` depends only on the seed and t. Poisson batches draw from
/// the step's own stream; shuffled epochs from the epoch's stream, cached while the run stays in
/// that epoch.
pub struct StepBatches {
    records: usize,
    sampling: Sampling,
    seed: u64,
    epoch: Option<(u64, u64, BatchSampler)>,
}

impl StepBatches {
    pub fn new(records: usize, sampling: Sampling, seed: u64) -> Result<Self> {
        // Validates the settings once, up front.
        BatchSampler::new(records, sampling, 0)?;
        Ok(StepBatches { records, sampling, seed, epoch: None })
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
        let sub_seed = |index: u64| stream(self.seed, Purpose::Batches, index).random::<u64>();
        match self.sampling {
            Sampling::Poisson { .. } => BatchSampler::new(self.records, self.sampling, sub_seed(step)).map(|mut s| s.next_batch()),
            Sampling::Shuffle { .. } => {
                let per_epoch = self.steps_per_epoch();
                let (epoch, position) = (step / per_epoch, step % per_epoch);
                let reusable = matches!(&self.epoch, Some((e, next, _)) if *e == epoch && *next <= position);
                if !reusable {
                    self.epoch = Some((epoch, 0, BatchSampler::new(self.records, self.sampling, sub_seed(epoch))?));
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

    #[test]
    fn shuffled_batches_do_not_depend_on_the_order_they_are_asked_for() {
        let sampling = Sampling::Shuffle { batch_size: 7 };
        let mut straight = StepBatches::new(50, sampling, 11).unwrap();
        let all: Vec<Vec<usize>> = (0..30).map(|t| straight.batch(t).unwrap()).collect();
        // An epoch is 7 batches of 7 out of 50: disjoint within it.
        let mut epoch: Vec<usize> = all[..7].concat();
        epoch.sort_unstable();
        epoch.dedup();
        assert_eq!(epoch.len(), 49);
        assert_ne!(all[0], all[7], "each epoch draws a new permutation");
        // A resumed run asks from the middle; a backwards jump recomputes.
        let mut resumed = StepBatches::new(50, sampling, 11).unwrap();
        for t in [17, 18, 25, 3, 29] {
            assert_eq!(resumed.batch(t).unwrap(), all[t as usize], "step {t}");
        }
    }

    #[test]
    fn poisson_batches_replay_by_step() {
        let sampling = Sampling::Poisson { sample_rate: 0.1 };
        let mut a = StepBatches::new(1000, sampling, 5).unwrap();
        let mut b = StepBatches::new(1000, sampling, 5).unwrap();
        let first: Vec<Vec<usize>> = (0..5).map(|t| a.batch(t).unwrap()).collect();
        assert_eq!(b.batch(4).unwrap(), first[4]);
        assert_ne!(first[0], first[1]);
        assert_eq!(a.steps_per_epoch(), 10);
    }
}
