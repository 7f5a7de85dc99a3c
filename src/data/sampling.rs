//! Which records form each batch: Poisson sampling (what the accountant's ε assumes), shuffled
//! fixed-size batches (what the published DP-CGAN run did), and GS-WGAN's disjoint partitions.
//! All draws come from a ChaCha generator the run keys, so a run replays its batches.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::{Error, Result};

/// How a batch is drawn from `n` records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// Every record independently with probability `sample_rate`: batch sizes vary, and the RDP
    /// accountant's amplification by subsampling holds exactly.
    Poisson { sample_rate: f64 },
    /// A fresh permutation each epoch, cut into batches of `batch_size` (the remainder dropped).
    /// Its ε is the customary approximation by Poisson sampling at `batch_size / n`, not a proof.
    Shuffle { batch_size: usize },
}

/// Draws the record indices of successive batches.
pub struct BatchSampler {
    records: usize,
    sampling: Sampling,
    rng: ChaCha20Rng,
    permutation: Vec<usize>,
    position: usize,
}

impl BatchSampler {
    pub fn new(records: usize, sampling: Sampling, seed: u64) -> Result<Self> {
        Self::with_rng(records, sampling, ChaCha20Rng::seed_from_u64(seed))
    }

    /// A sampler drawing from `rng` (a private run passes a stream of its secret key, all 256 bits).
    pub fn with_rng(records: usize, sampling: Sampling, rng: ChaCha20Rng) -> Result<Self> {
        if records == 0 {
            return Err(Error::Invalid("cannot sample batches from an empty data set".into()));
        }
        match sampling {
            Sampling::Poisson { sample_rate } if !(sample_rate > 0.0 && sample_rate <= 1.0) => {
                return Err(Error::Invalid(format!("sample rate must be in (0, 1], got {sample_rate}")));
            }
            Sampling::Shuffle { batch_size } if batch_size == 0 || batch_size > records => {
                return Err(Error::Invalid(format!("batch size must be in 1..={records}, got {batch_size}")));
            }
            _ => {}
        }
        Ok(BatchSampler { records, sampling, rng, permutation: Vec::new(), position: 0 })
    }

    /// The expected batch size: what a DP-SGD step divides its summed gradient by.
    pub fn expected_batch_size(&self) -> f64 {
        match self.sampling {
            Sampling::Poisson { sample_rate } => sample_rate * self.records as f64,
            Sampling::Shuffle { batch_size } => batch_size as f64,
        }
    }

    /// The indices of the next batch, in increasing order for Poisson sampling.
    pub fn next_batch(&mut self) -> Vec<usize> {
        match self.sampling {
            Sampling::Poisson { sample_rate } => self.poisson(sample_rate),
            Sampling::Shuffle { batch_size } => self.shuffled(batch_size),
        }
    }

    /// Independent Bernoulli(q) inclusions, drawn as geometric gaps between included records
    /// (exact, and O(q·n) rather than O(n) draws).
    fn poisson(&mut self, q: f64) -> Vec<usize> {
        if q >= 1.0 {
            return (0..self.records).collect();
        }
        let log_miss = (-q).ln_1p();
        let mut batch = Vec::new();
        let mut next: f64 = -1.0;
        loop {
            // 1 − U lies in (0, 1], so the logarithm is finite.
            let u: f64 = 1.0 - self.rng.random::<f64>();
            next += 1.0 + (u.ln() / log_miss).floor();
            if next >= self.records as f64 {
                return batch;
            }
            batch.push(next as usize);
        }
    }

    fn shuffled(&mut self, batch_size: usize) -> Vec<usize> {
        if self.permutation.is_empty() || self.position + batch_size > self.records {
            self.permutation = (0..self.records).collect();
            self.permutation.shuffle(&mut self.rng);
            self.position = 0;
        }
        let batch = self.permutation[self.position..self.position + batch_size].to_vec();
        self.position += batch_size;
        batch
    }
}

/// A seeded permutation of `records` cut into `parts` disjoint slices of `records / parts` (the
/// remainder unused): GS-WGAN gives discriminator j slice j in both phases.
pub fn disjoint_partitions(records: usize, parts: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if parts == 0 || parts > records {
        return Err(Error::Invalid(format!("cannot cut {records} records into {parts} non-empty partitions")));
    }
    let mut permutation: Vec<usize> = (0..records).collect();
    permutation.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
    let size = records / parts;
    Ok(permutation.chunks_exact(size).take(parts).map(<[usize]>::to_vec).collect())
}
