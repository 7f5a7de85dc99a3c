//! LeNet-5 with GS-WGAN's evaluation recipe (docs/algorithms.md §2): conv 1→6 5×5 (padding 2), ReLU, max-pool
//! 2; conv 6→16 5×5, ReLU, max-pool 2; FC 400→120 ReLU → 84 ReLU → 10. Inputs are [0, 1] pixels
//! normalised by MNIST's mean and std; SGD (lr 0.02, momentum 0.9, weight decay 1e-4 on every
//! parameter, as PyTorch applies it), shuffled minibatches of 128 (the last one smaller), 50 epochs,
//! the learning rate ×0.1 from epoch 40 on; mean cross-entropy. The model scored is the one after
//! the last epoch: choosing an epoch by its test accuracy would tune on the real test data.
//!
//! Initialisation is PyTorch's default for `Conv2d` and `Linear`: weights and biases uniform in
//! ±1/√fan_in (kaiming-uniform with a = √5).
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::autograd::Tape;
use crate::backend::SgdParams;
use crate::data::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::optim::{Optimizer, Sgd};
use crate::tensor::{Device, Tensor};

use super::features::{score_rows, softmax_in_place, train_epochs, Features};

/// LeNet-5 takes 28×28 images: two 5×5 convolutions and two poolings leave 16 × 5 × 5 = 400.
pub const IMAGE_SIDE: usize = 28;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeNetConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// The epoch (0-based) from which the learning rate is ×0.1. A run shortened with `epochs` keeps
    /// it, so a short run is the recipe's first epochs, not a compressed schedule.
    pub decay_epoch: usize,
}

impl Default for LeNetConfig {
    fn default() -> Self {
        LeNetConfig { epochs: 50, batch_size: 128, learning_rate: 0.02, momentum: 0.9, weight_decay: 1e-4, decay_epoch: 40 }
    }
}

/// Parameters, dpgan's grouped layouts with one group: conv weights `[1, O, C, 5, 5]`, linear
/// weights `[1, O, I]`, biases `[1, O]`.
#[derive(Clone, Debug)]
pub struct LeNet {
    pub params: Vec<Tensor>,
}

/// (weight shape, fan-in) of each layer, in order: conv1, conv2, fc1, fc2, fc3.
fn layer_shapes() -> [(Vec<usize>, usize); 5] {
    [
        (vec![1, 6, 1, 5, 5], 25),
        (vec![1, 16, 6, 5, 5], 150),
        (vec![1, 120, 400], 400),
        (vec![1, 84, 120], 120),
        (vec![1, NUM_CLASSES, 84], 84),
    ]
}

impl LeNet {
    pub fn init(rng: &mut ChaCha8Rng, device: &Device) -> Result<LeNet> {
        let mut params = Vec::with_capacity(10);
        for (shape, fan_in) in layer_shapes() {
            let bound = 1.0 / (fan_in as f32).sqrt();
            params.push(Tensor::uniform(&shape, -bound, bound, rng, device)?);
            params.push(Tensor::uniform(&[1, shape[1]], -bound, bound, rng, device)?);
        }
        Ok(LeNet { params })
    }

    /// Logits `[1, B, 10]` of normalised images `[1, B, 784]`, recorded on `tape`.
    pub fn logits(&self, tape: &Tape, x: &Tensor) -> Result<Tensor> {
        let p = &self.params;
        let batch = x.shape()[1];
        let images = tape.reshape(x, &[1, batch, 1, IMAGE_SIDE, IMAGE_SIDE])?;
        let conv1 = tape.relu(&tape.conv2d_bias(&images, &p[0], &p[1], 1, 2)?)?;
        let conv2 = tape.relu(&tape.conv2d_bias(&tape.max_pool2x2(&conv1)?, &p[2], &p[3], 1, 0)?)?;
        let flat = tape.reshape(&tape.max_pool2x2(&conv2)?, &[1, batch, 400])?;
        let fc1 = tape.relu(&tape.linear(&flat, &p[4], Some(&p[5]))?)?;
        let fc2 = tape.relu(&tape.linear(&fc1, &p[6], Some(&p[7]))?)?;
        tape.linear(&fc2, &p[8], Some(&p[9]))
    }

    /// Trains from the initialisation `seed` gives (which also shuffles the epochs) on 28×28 images.
    pub fn fit(x: &Features, labels: &[u8], config: &LeNetConfig, seed: u64, device: &Device) -> Result<LeNet> {
        if x.dim != IMAGE_SIDE * IMAGE_SIDE {
            return Err(Error::Invalid(format!("LeNet-5 takes 28×28 images, got {} pixels per image", x.dim)));
        }
        if config.epochs == 0 || config.batch_size == 0 {
            return Err(Error::Invalid(format!("LeNet: epochs and batch size must be positive, got {config:?}")));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model = Self::init(&mut rng, device)?;
        let hp = SgdParams {
            lr: config.learning_rate,
            momentum: config.momentum,
            dampening: 0.0,
            weight_decay: config.weight_decay,
            nesterov: false,
        };
        let mut sgd = Sgd::new(hp);
        let all: Vec<usize> = (0..x.rows).collect();
        let step = |epoch: usize, batch: &Tensor, targets: &Tensor| {
            sgd.hp.lr = if epoch >= config.decay_epoch { config.learning_rate * 0.1 } else { config.learning_rate };
            let grads = model.gradients(batch, targets)?;
            let mut params: Vec<&mut Tensor> = model.params.iter_mut().collect();
            sgd.step(&mut params, &grads)
        };
        train_epochs(x, labels, &all, config.epochs, config.batch_size, &mut rng, device, step, |_| Ok(()))?;
        Ok(model)
    }

    /// Gradients of the mean cross-entropy, in parameter order.
    fn gradients(&self, x: &Tensor, targets: &Tensor) -> Result<Vec<Tensor>> {
        let tape = Tape::new();
        self.params.iter().for_each(|p| tape.watch(p));
        let loss = tape.mean_all(&tape.softmax_cross_entropy(&self.logits(&tape, x)?, targets)?)?;
        let mut grads = tape.backward(&loss)?;
        self.params.iter().map(|p| grads.remove(p).ok_or_else(|| Error::Autograd("LeNet: a parameter got no gradient".into()))).collect()
    }

    /// Softmax probabilities of every row (`rows × 10`).
    pub fn scores(&self, x: &Features) -> Result<Vec<f64>> {
        let tape = Tape::new();
        score_rows(x, &self.params[0].device(), |batch| self.logits(&tape, batch), softmax_in_place)
    }
}
