//! The training images, on the host and (from the first batch on) on the device the batches go
//! to, and each discriminator's batches from its own slice: batches of 32 without replacement,
//! reshuffled every pass, the last partial batch kept (32, 28, 32, ... for a slice of 60), as
//! docs/algorithms.md §2 says.
use std::sync::OnceLock;

use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::data::{Dataset, PixelScale};
use crate::error::{Error, Result};
use crate::models::gswgan::PIXELS;
use crate::tensor::{Device, Tensor};
use crate::train::resident::ResidentData;

/// Images in [0, 1] (row-major, 784 per image) and their labels; batches are gathered from a copy
/// on the device they are for, uploaded once.
#[derive(Clone)]
pub struct LabelledImages {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    resident: OnceLock<ResidentData>,
}

impl std::fmt::Debug for LabelledImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelledImages").field("len", &self.len()).field("resident", &self.resident.get().map(|r| r.device())).finish()
    }
}

impl LabelledImages {
    pub fn new(pixels: Vec<f32>, labels: Vec<u32>) -> Result<Self> {
        if pixels.len() != labels.len() * PIXELS {
            return Err(Error::Invalid(format!("{} pixel values for {} labelled 28×28 images", pixels.len(), labels.len())));
        }
        Ok(LabelledImages { pixels, labels, resident: OnceLock::new() })
    }

    /// A data set's images scaled to [0, 1] (the generators end in a sigmoid).
    pub fn from_dataset(data: &Dataset) -> Result<Self> {
        Self::new(data.pixels_f32(PixelScale::Unit), data.labels_u32())
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images `[G, B, 784]` and one-hot labels `[G, B, 10]` of one batch per member (equal sizes),
    /// gathered on `device` from the set's copy there (uploaded by the first call; a run keeps
    /// one device).
    pub fn gather(&self, batches: &[Vec<usize>], device: &Device) -> Result<(Tensor, Tensor)> {
        let b = batches.first().map_or(0, Vec::len);
        if b == 0 || batches.iter().any(|x| x.len() != b) {
            return Err(Error::Invalid("a group's batches must be non-empty and of one size".into()));
        }
        let records: Vec<usize> = batches.iter().flatten().copied().collect();
        let resident = match self.resident.get() {
            Some(r) => r,
            None => {
                let r = ResidentData::from_parts(self.pixels.clone(), &self.labels, device)?;
                self.resident.get_or_init(|| r)
            }
        };
        if !resident.device().same(device) {
            return Err(Error::Invalid(format!("the training images live on {}, the batch is for {device}", resident.device())));
        }
        resident.rows(&records, &[batches.len(), b])
    }
}

/// One discriminator's pass over its slice, reshuffled by its own generator each pass.
#[derive(Clone, Debug)]
pub struct SliceBatches {
    slice: Vec<usize>,
    batch_size: usize,
    rng: ChaCha20Rng,
    order: Vec<usize>,
    position: usize,
    /// Passes started so far (a resumed run replays this many shuffles).
    passes: u64,
}

impl SliceBatches {
    pub fn new(slice: Vec<usize>, batch_size: usize, rng: ChaCha20Rng) -> Result<Self> {
        if slice.is_empty() || batch_size == 0 {
            return Err(Error::Invalid(format!("batches of {batch_size} from a slice of {} records", slice.len())));
        }
        Ok(SliceBatches { slice, batch_size, rng, order: Vec::new(), position: 0, passes: 0 })
    }

    /// The record indices of the next batch.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.position >= self.order.len() {
            self.order = self.slice.clone();
            self.order.shuffle(&mut self.rng);
            self.position = 0;
            self.passes += 1;
        }
        let end = (self.position + self.batch_size).min(self.order.len());
        let batch = self.order[self.position..end].to_vec();
        self.position = end;
        batch
    }

    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// How far into the current pass the batches are (records handed out).
    pub fn position(&self) -> usize {
        self.position
    }

    /// The batches of a run that had started `passes` passes and handed out `position` records of
    /// the last one, given the same slice, batch size and a fresh `rng` from the same seed: the
    /// shuffles are replayed, so the next batch is the one the run would have drawn.
    pub fn restore(slice: Vec<usize>, batch_size: usize, rng: ChaCha20Rng, passes: u64, position: usize) -> Result<Self> {
        let mut batches = Self::new(slice, batch_size, rng)?;
        if position > batches.slice.len() || (passes == 0 && position > 0) {
            return Err(Error::Invalid(format!("position {position} in pass {passes} of a slice of {}", batches.slice.len())));
        }
        for _ in 0..passes {
            batches.order = batches.slice.clone();
            batches.order.shuffle(&mut batches.rng);
        }
        batches.passes = passes;
        batches.position = if passes == 0 { 0 } else { position };
        Ok(batches)
    }
}
