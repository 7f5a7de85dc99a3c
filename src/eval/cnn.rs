//! DPSGD-GAN's evaluation CNN (docs/algorithms.md §4, Bie et al.'s protocol; PyTorch's MNIST
//! example network): conv 1→32 3×3, ReLU; conv 32→64 3×3, ReLU; max-pool 2; dropout 0.25;
//! FC 9216→128, ReLU; dropout 0.5; FC 128→10. Inputs are [0, 1] pixels normalised by MNIST's mean
//! and std (as LeNet's); Adam (lr 1e-3, β 0.9 / 0.999), shuffled minibatches of 64, 10 epochs, mean
//! cross-entropy.
//!
//! The epoch scored is chosen on images held out of the synthetic training set (5,000 of 60,000 in
//! the recipe), never on real data: choosing by test accuracy would tune on the real test set, and
//! the real training set is the private data. The held-out images are the last ones of each class,
//! in equal shares, because `dpgan sample` writes its sets class by class, so the file's last 5,000
//! would all be one digit. Initialisation is PyTorch's default (uniform in ±1/√fan_in).
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::autograd::Tape;
use crate::backend::AdamParams;
use crate::data::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::optim::{Adam, Optimizer};
use crate::tensor::{Device, Tensor};

use super::features::{argmax_rows, score_rows, softmax_in_place, train_epochs, Features};
use super::lenet::IMAGE_SIDE;

/// 28 → 26 → 24 after the two valid 3×3 convolutions, 12 after pooling: 64 × 12 × 12 inputs to fc1.
const FLAT: usize = 64 * 12 * 12;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CnnConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// Images held out of the training set to choose the epoch: the recipe's 5,000 of 60,000. A
    /// smaller set holds out the same share, 1/12 of itself.
    pub held_out: usize,
    pub conv_dropout: f32,
    pub fc_dropout: f32,
}

impl Default for CnnConfig {
    fn default() -> Self {
        CnnConfig { epochs: 10, batch_size: 64, learning_rate: 1e-3, held_out: 5000, conv_dropout: 0.25, fc_dropout: 0.5 }
    }
}

/// Parameters in dpgan's grouped layouts with one group: conv weights `[1, O, C, 3, 3]`, linear
/// weights `[1, O, I]`, biases `[1, O]`.
#[derive(Clone, Debug)]
pub struct Cnn {
    pub params: Vec<Tensor>,
}

/// How the epoch was chosen: the 1-based epoch scored and its accuracy on the held-out images.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochChoice {
    pub epoch: usize,
    pub held_out_accuracy: f64,
    pub held_out: usize,
}

/// (weight shape, fan-in) of each layer, in order: conv1, conv2, fc1, fc2.
fn layer_shapes() -> [(Vec<usize>, usize); 4] {
    [(vec![1, 32, 1, 3, 3], 9), (vec![1, 64, 32, 3, 3], 288), (vec![1, 128, FLAT], FLAT), (vec![1, NUM_CLASSES, 128], 128)]
}

/// Splits the rows into (training, held out): the last `count · n_c / n` rows of each class c
/// (rounded down) are held out, so the held-out set has the training set's class shares whatever
/// order the file is in.
pub fn hold_out_per_class(labels: &[u8], count: usize) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_CLASSES];
    for (row, &label) in labels.iter().enumerate() {
        by_class[label as usize].push(row);
    }
    let mut held = vec![false; labels.len()];
    for rows in &by_class {
        let share = count * rows.len() / labels.len().max(1);
        rows[rows.len() - share..].iter().for_each(|&r| held[r] = true);
    }
    (0..labels.len()).partition(|&r| !held[r])
}

impl Cnn {
    pub fn init(rng: &mut ChaCha8Rng, device: &Device) -> Result<Cnn> {
        let mut params = Vec::with_capacity(8);
        for (shape, fan_in) in layer_shapes() {
            let bound = 1.0 / (fan_in as f32).sqrt();
            params.push(Tensor::uniform(&shape, -bound, bound, rng, device)?);
            params.push(Tensor::uniform(&[1, shape[1]], -bound, bound, rng, device)?);
        }
        Ok(Cnn { params })
    }

    /// Trainable parameters: 1,199,882 (the recipe's network).
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(Tensor::numel).sum()
    }

    /// Logits `[1, B, 10]` of normalised images `[1, B, 784]`, recorded on `tape`. With `dropout`
    /// (the training pass) both dropout layers draw their masks from it; without, they are left out.
    pub fn logits(&self, tape: &Tape, x: &Tensor, dropout: Option<(&CnnConfig, &mut ChaCha8Rng)>) -> Result<Tensor> {
        let p = &self.params;
        let batch = x.shape()[1];
        let images = tape.reshape(x, &[1, batch, 1, IMAGE_SIDE, IMAGE_SIDE])?;
        let conv1 = tape.relu(&tape.conv2d_bias(&images, &p[0], &p[1], 1, 0)?)?;
        let conv2 = tape.relu(&tape.conv2d_bias(&conv1, &p[2], &p[3], 1, 0)?)?;
        let mut flat = tape.reshape(&tape.max_pool2x2(&conv2)?, &[1, batch, FLAT])?;
        let mut dropout = dropout;
        if let Some((config, rng)) = dropout.as_mut() {
            flat = tape.dropout(&flat, config.conv_dropout, *rng)?;
        }
        let mut fc1 = tape.relu(&tape.linear(&flat, &p[4], Some(&p[5]))?)?;
        if let Some((config, rng)) = dropout.as_mut() {
            fc1 = tape.dropout(&fc1, config.fc_dropout, *rng)?;
        }
        tape.linear(&fc1, &p[6], Some(&p[7]))
    }

    /// Trains from the initialisation `seed` gives (which also shuffles the epochs and draws the
    /// dropout masks) on all but the held-out rows, and returns the network after the epoch that
    /// scored best on the held-out rows (the first such), with how it was chosen.
    pub fn fit(x: &Features, labels: &[u8], config: &CnnConfig, seed: u64, device: &Device) -> Result<(Cnn, EpochChoice)> {
        if x.dim != IMAGE_SIDE * IMAGE_SIDE {
            return Err(Error::Invalid(format!("the CNN takes 28×28 images, got {} pixels per image", x.dim)));
        }
        if config.epochs == 0 || config.batch_size == 0 {
            return Err(Error::Invalid(format!("CNN: epochs and batch size must be positive, got {config:?}")));
        }
        let held_out = config.held_out.min(x.rows / 12);
        let (train_rows, held_rows) = hold_out_per_class(labels, held_out);
        if held_rows.is_empty() || train_rows.is_empty() {
            return Err(Error::Invalid(format!(
                "the CNN holds out 1/12 of its training set (at most {}) to choose the epoch: {} images are too few",
                config.held_out, x.rows
            )));
        }
        let held_x = Features {
            values: held_rows.iter().flat_map(|&r| x.values[r * x.dim..(r + 1) * x.dim].iter().copied()).collect(),
            rows: held_rows.len(),
            dim: x.dim,
        };
        let held_truth: Vec<u32> = held_rows.iter().map(|&r| labels[r] as u32).collect();

        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model = Self::init(&mut rng, device)?;
        // The masks come from their own stream, so the batch order is the seed's alone.
        let mut masks = ChaCha8Rng::seed_from_u64(seed);
        masks.set_stream(1);
        let hp = AdamParams { lr: config.learning_rate, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut adam = Adam::new(hp);
        let mut best: Option<(Cnn, EpochChoice)> = None;
        let model_cell = std::cell::RefCell::new(&mut model);
        let step = |_: usize, batch: &Tensor, targets: &Tensor| {
            let mut model = model_cell.borrow_mut();
            let grads = model.gradients(batch, targets, config, &mut masks)?;
            let mut params: Vec<&mut Tensor> = model.params.iter_mut().collect();
            adam.step(&mut params, &grads)
        };
        let end_of_epoch = |epoch: usize| {
            let model = model_cell.borrow();
            let predicted = argmax_rows(&model.scores(&held_x)?);
            let correct = predicted.iter().zip(&held_truth).filter(|(p, t)| p == t).count();
            let accuracy = correct as f64 / held_truth.len() as f64;
            if best.as_ref().is_none_or(|(_, choice)| accuracy > choice.held_out_accuracy) {
                let choice = EpochChoice { epoch: epoch + 1, held_out_accuracy: accuracy, held_out: held_truth.len() };
                best = Some(((**model).clone(), choice));
            }
            Ok(())
        };
        train_epochs(x, labels, &train_rows, config.epochs, config.batch_size, &mut rng, device, step, end_of_epoch)?;
        best.ok_or_else(|| Error::Invalid("CNN: no epoch ran".into()))
    }

    /// Gradients of the mean cross-entropy with dropout masks from `masks`, in parameter order.
    fn gradients(&self, x: &Tensor, targets: &Tensor, config: &CnnConfig, masks: &mut ChaCha8Rng) -> Result<Vec<Tensor>> {
        let tape = Tape::new();
        self.params.iter().for_each(|p| tape.watch(p));
        let logits = self.logits(&tape, x, Some((config, masks)))?;
        let loss = tape.mean_all(&tape.softmax_cross_entropy(&logits, targets)?)?;
        let mut grads = tape.backward(&loss)?;
        self.params.iter().map(|p| grads.remove(p).ok_or_else(|| Error::Autograd("CNN: a parameter got no gradient".into()))).collect()
    }

    /// Softmax probabilities of every row (`rows × 10`), dropout off.
    pub fn scores(&self, x: &Features) -> Result<Vec<f64>> {
        let tape = Tape::new();
        score_rows(x, &self.params[0].device(), |batch| self.logits(&tape, batch, None), softmax_in_place)
    }
}
