//! What the classifiers share: images as a host matrix scaled for one classifier, minibatches
//! gathered from it onto a device, shuffled epochs, and scoring a test set in chunks.
use rand::seq::SliceRandom;
use rand::Rng;

use crate::data::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::io::synthetic::SyntheticSet;
use crate::tensor::{Device, Tensor};

/// MNIST's training-set mean and standard deviation of [0, 1] pixels: LeNet's input normalisation.
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

/// Rows scored per forward pass when predicting: bounds the activations' memory.
const SCORE_CHUNK: usize = 1000;

/// Labelled images, pixels in [0, 1], `labels.len() × height × width`, row-major: a synthetic set or
/// a split of the real data, as a classifier takes it.
#[derive(Clone, Copy, Debug)]
pub struct ImageSet<'a> {
    pub images: &'a [f32],
    pub labels: &'a [u8],
    pub height: usize,
    pub width: usize,
}

impl<'a> ImageSet<'a> {
    /// Checks that the lengths agree, the set is not empty and every label is a class; `what` names
    /// the set in the error ("synthetic training set").
    pub fn new(images: &'a [f32], labels: &'a [u8], height: usize, width: usize, what: &str) -> Result<Self> {
        if labels.is_empty() || height * width == 0 {
            return Err(Error::Invalid(format!("{what}: empty ({} images of {height}×{width})", labels.len())));
        }
        if images.len() != labels.len() * height * width {
            return Err(Error::Invalid(format!("{what}: {} pixels for {} images of {height}×{width}", images.len(), labels.len())));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES) {
            return Err(Error::Invalid(format!("{what}: label {l} at index {i} is out of range: classes are 0..{}", NUM_CLASSES - 1)));
        }
        Ok(ImageSet { images, labels, height, width })
    }

    /// A synthetic set read by [`crate::io::synthetic::read_synthetic`], as a training set.
    pub fn of_synthetic(set: &'a SyntheticSet) -> Result<Self> {
        Self::new(&set.images, &set.labels, set.height, set.width, "synthetic set")
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A set's images flattened to rows of `dim` model inputs, on the host.
#[derive(Clone, Debug)]
pub struct Features {
    pub values: Vec<f32>,
    pub rows: usize,
    pub dim: usize,
}

impl Features {
    /// `2x − 1` in [−1, 1]: DP-CGAN's scaling `(p − 127.5) / 127.5` of a byte `p = 255x`, what its
    /// logistic regression and MLP see.
    pub fn symmetric(set: &ImageSet) -> Features {
        Self::map(set, |x| 2.0 * x - 1.0)
    }
    /// `(x − 0.1307) / 0.3081`: LeNet's normalisation of [0, 1] pixels.
    pub fn normalised(set: &ImageSet) -> Features {
        Self::map(set, |x| (x - MNIST_MEAN) / MNIST_STD)
    }
    fn map(set: &ImageSet, f: impl Fn(f32) -> f32) -> Features {
        Features { values: set.images.iter().map(|&x| f(x)).collect(), rows: set.len(), dim: set.height * set.width }
    }

    /// Rows `rows` gathered into a tensor of `shape` (whose element count must be
    /// `rows.len() · dim`) on `device`.
    pub fn gather(&self, rows: &[usize], shape: &[usize], device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(rows.len() * self.dim);
        for &r in rows {
            data.extend_from_slice(&self.values[r * self.dim..(r + 1) * self.dim]);
        }
        Tensor::from_vec(data, shape, device)
    }
}

/// One-hot targets `[1, rows.len(), NUM_CLASSES]` of the labels at `rows`.
pub fn one_hot_targets(labels: &[u8], rows: &[usize], device: &Device) -> Result<Tensor> {
    let picked: Vec<u32> = rows.iter().map(|&r| labels[r] as u32).collect();
    Tensor::one_hot(&picked, NUM_CLASSES, &[1, rows.len()], device)
}

/// The minibatches of one epoch: a fresh permutation of `0..n` cut into batches of `batch_size`,
/// the last one smaller when `batch_size` does not divide `n` (scikit-learn's and PyTorch's
/// default: every example is seen once per epoch).
pub fn epoch_batches(n: usize, batch_size: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// The minibatch loop every network classifier shares: `epochs` shuffled passes over `train_rows`
/// (rows of `x`), each batch gathered as `[1, B, dim]` with its one-hot targets and handed to
/// `step(epoch, batch, targets)`; `end_of_epoch(epoch)` runs after each pass. One loop, so that the
/// classifiers differ only in their model and optimiser, and a batch order depends only on `rng`.
#[allow(clippy::too_many_arguments)]
pub fn train_epochs(
    x: &Features,
    labels: &[u8],
    train_rows: &[usize],
    epochs: usize,
    batch_size: usize,
    rng: &mut impl Rng,
    device: &Device,
    mut step: impl FnMut(usize, &Tensor, &Tensor) -> Result<()>,
    mut end_of_epoch: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    for epoch in 0..epochs {
        for batch in epoch_batches(train_rows.len(), batch_size, rng) {
            let rows: Vec<usize> = batch.iter().map(|&i| train_rows[i]).collect();
            let inputs = x.gather(&rows, &[1, rows.len(), x.dim], device)?;
            let targets = one_hot_targets(labels, &rows, device)?;
            step(epoch, &inputs, &targets)?;
        }
        end_of_epoch(epoch)?;
    }
    Ok(())
}

/// Class scores of every row of `x` (`rows × NUM_CLASSES`, row-major, f64): `forward` maps a
/// `[1, B, dim]` batch to `[1, B, NUM_CLASSES]` logits, `link` turns one row of logits into scores.
pub fn score_rows(
    x: &Features,
    device: &Device,
    forward: impl Fn(&Tensor) -> Result<Tensor>,
    link: impl Fn(&mut [f64]),
) -> Result<Vec<f64>> {
    let mut scores = Vec::with_capacity(x.rows * NUM_CLASSES);
    let all: Vec<usize> = (0..x.rows).collect();
    for chunk in all.chunks(SCORE_CHUNK) {
        let batch = x.gather(chunk, &[1, chunk.len(), x.dim], device)?;
        let logits = forward(&batch)?;
        if logits.numel() != chunk.len() * NUM_CLASSES {
            return Err(Error::shape("score_rows", format!("logits {:?} for {} rows", logits.shape(), chunk.len())));
        }
        let mut values: Vec<f64> = logits.to_vec_f64()?;
        values.chunks_mut(NUM_CLASSES).for_each(&link);
        scores.extend(values);
    }
    Ok(scores)
}

/// Softmax of one row in place (max subtracted first, so no logit overflows).
pub fn softmax_in_place(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut total = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    row.iter_mut().for_each(|v| *v /= total);
}

/// The predicted class of each row of scores: the first maximum.
pub fn argmax_rows(scores: &[f64]) -> Vec<u32> {
    scores
        .chunks(NUM_CLASSES)
        .map(|row| row.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (k, &v)| if v > best.1 { (k, v) } else { best }).0 as u32)
        .collect()
}
