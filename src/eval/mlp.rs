//! The MLP of DP-CGAN's evaluation (docs/algorithms.md §1), scikit-learn's `MLPClassifier(hidden_layer_sizes=
//! (100,), alpha=1.0)`: inputs → 100 ReLU → 10 softmax, cross-entropy, Adam (lr 1e-3, β 0.9 / 0.999,
//! ε 1e-8) on shuffled minibatches of 200 (the last one smaller), 200 epochs.
//!
//! Its L2 penalty is scikit-learn's: `loss += ½·alpha·(‖W₁‖² + ‖W₂‖²) / batch_len`, weights only,
//! with `batch_len` the current minibatch's size. Weights and biases start uniform in
//! ±√(6 / (fan_in + fan_out)) (scikit-learn's Glorot initialisation, biases included). Two differences, both
//! deliberate: every epoch runs (scikit-learn stops early once the loss stalls for 10 epochs, which
//! makes the number of steps data-dependent), and Adam's ε is added after the bias correction
//! (PyTorch's form; scikit-learn adds it before, a difference of order 1e-8 in each step).
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::autograd::Tape;
use crate::backend::AdamParams;
use crate::data::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::optim::{Adam, Optimizer};
use crate::tensor::{Device, Tensor};

use super::features::{score_rows, softmax_in_place, train_epochs, Features};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlpConfig {
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    /// L2 strength in scikit-learn's convention (see the module doc).
    pub alpha: f32,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig { hidden: 100, epochs: 200, batch_size: 200, learning_rate: 1e-3, alpha: 1.0 }
    }
}

/// The two layers, PyTorch's layout: `w1` `[1, hidden, D]`, `b1` `[1, hidden]`, `w2` `[1, 10, hidden]`,
/// `b2` `[1, 10]`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

/// scikit-learn's Glorot-uniform bound for a ReLU or softmax layer.
fn glorot_bound(fan_in: usize, fan_out: usize) -> f32 {
    (6.0 / (fan_in + fan_out) as f64).sqrt() as f32
}

impl Mlp {
    /// A freshly initialised network for `dim` inputs.
    pub fn init(dim: usize, hidden: usize, rng: &mut ChaCha8Rng, device: &Device) -> Result<Mlp> {
        let (a1, a2) = (glorot_bound(dim, hidden), glorot_bound(hidden, NUM_CLASSES));
        Ok(Mlp {
            w1: Tensor::uniform(&[1, hidden, dim], -a1, a1, rng, device)?,
            b1: Tensor::uniform(&[1, hidden], -a1, a1, rng, device)?,
            w2: Tensor::uniform(&[1, NUM_CLASSES, hidden], -a2, a2, rng, device)?,
            b2: Tensor::uniform(&[1, NUM_CLASSES], -a2, a2, rng, device)?,
        })
    }

    /// Logits `[1, B, 10]` of `x` `[1, B, D]`, recorded on `tape`.
    pub fn logits(&self, tape: &Tape, x: &Tensor) -> Result<Tensor> {
        let hidden = tape.relu(&tape.linear(x, &self.w1, Some(&self.b1))?)?;
        tape.linear(&hidden, &self.w2, Some(&self.b2))
    }

    /// Trains from the initialisation `seed` gives (which also shuffles the epochs).
    pub fn fit(x: &Features, labels: &[u8], config: &MlpConfig, seed: u64, device: &Device) -> Result<Mlp> {
        if config.epochs == 0 || config.batch_size == 0 || config.hidden == 0 {
            return Err(Error::Invalid(format!("MLP: epochs, batch size and hidden width must be positive, got {config:?}")));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model = Self::init(x.dim, config.hidden, &mut rng, device)?;
        let hp = AdamParams { lr: config.learning_rate, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut adam = Adam::new(hp);
        let all: Vec<usize> = (0..x.rows).collect();
        let step = |_: usize, batch: &Tensor, targets: &Tensor| {
            let grads = model.gradients(batch, targets, config.alpha)?;
            adam.step(&mut [&mut model.w1, &mut model.b1, &mut model.w2, &mut model.b2], &grads)
        };
        train_epochs(x, labels, &all, config.epochs, config.batch_size, &mut rng, device, step, |_| Ok(()))?;
        Ok(model)
    }

    /// Gradients of the minibatch loss (mean cross-entropy + the L2 penalty) in parameter order.
    fn gradients(&self, x: &Tensor, targets: &Tensor, alpha: f32) -> Result<[Tensor; 4]> {
        let tape = Tape::new();
        for p in [&self.w1, &self.b1, &self.w2, &self.b2] {
            tape.watch(p);
        }
        let cross_entropy = tape.mean_all(&tape.softmax_cross_entropy(&self.logits(&tape, x)?, targets)?)?;
        let squares = tape.add(&tape.sum_all(&tape.square(&self.w1)?)?, &tape.sum_all(&tape.square(&self.w2)?)?)?;
        let batch_len = x.shape()[1] as f32;
        let loss = tape.add(&cross_entropy, &tape.scale(&squares, 0.5 * alpha / batch_len)?)?;
        let mut grads = tape.backward(&loss)?;
        let mut take = |p: &Tensor| grads.remove(p).ok_or_else(|| Error::Autograd("MLP: a parameter got no gradient".into()));
        Ok([take(&self.w1)?, take(&self.b1)?, take(&self.w2)?, take(&self.b2)?])
    }

    /// Softmax probabilities of every row (`rows × 10`).
    pub fn scores(&self, x: &Features) -> Result<Vec<f64>> {
        let tape = Tape::new();
        score_rows(x, &self.w1.device(), |batch| self.logits(&tape, batch), softmax_in_place)
    }
}
