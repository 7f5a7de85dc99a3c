//! GS-WGAN's training steps (docs/algorithms.md §2), device-agnostic and over model groups: the WGAN-GP
//! critic step, the plain generator step of the warm start, the private generator step of phase 2
//! (explicit sanitisation of the image gradient between "D backward to the image" and "G
//! backward") and the EMA of the released generator. Losses come back as device tensors, one
//! value per model of the group; reading them is a host sync, left to the caller.
mod batches;
pub mod graphed;
pub mod group_checkpoint;
pub mod group_size;
mod private;
pub mod run;
mod warm_start;
pub mod warm_start_run;

pub use batches::{LabelledImages, SliceBatches};
pub use private::{select_discriminator, CriticState, IterationPlan, PhaseTwoStep, PrivateLosses, PrivateTraining};
pub use warm_start::{member_draws, member_rngs, MemberRngs, WarmStart, WarmStartLosses, WarmStartPosition};

use crate::autograd::Tape;
use crate::backend::{ops, AdamParams, BinaryOp, UnaryOp};
use crate::dp::{nonfinite_flag, GsWganSanitizer, NoiseKey};
use crate::error::{Error, Result};
use crate::models::gswgan::{Discriminator, Generator};
use crate::nn::Module;
use crate::optim::{Adam, Optimizer};
use crate::tensor::Tensor;

/// Added under the square root of ‖∇ₓD‖²: a critic whose ReLUs are all off at some x̂ has a zero
/// input gradient there, where √ has an infinite derivative and the penalty's gradient would be NaN
/// (PyTorch's norm defines it as 0 at the zero vector; with this ε it is 0 here too). It moves a
/// norm of 1e-3 by under 1e-9 relative.
pub const GP_NORM_EPS: f32 = 1e-12;

/// docs/algorithms.md §2's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GsWganConfig {
    /// λ of the gradient penalty.
    pub gp_weight: f32,
    /// Weight of the drift term mean D(x)².
    pub drift_weight: f32,
    pub critic_steps: usize,
    pub batch_size: usize,
    /// Every optimizer: Adam lr 1e-4, β (0.5, 0.9), ε 1e-8 (added to √v̂, as PyTorch does).
    pub adam: AdamParams,
}

impl Default for GsWganConfig {
    fn default() -> Self {
        GsWganConfig {
            gp_weight: 10.0,
            drift_weight: 1e-3,
            critic_steps: 5,
            batch_size: 32,
            adam: AdamParams { lr: 1e-4, beta1: 0.5, beta2: 0.9, eps: 1e-8, weight_decay: 0.0 },
        }
    }
}

/// What one critic step of a group consumes: real images `[G, B, 784]`, their one-hot labels
/// `[G, B, 10]`, the generator's z `[G, B, 10]` and the interpolation weights α `[G, B, 1]`.
pub struct CriticBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub z: Tensor,
    pub alpha: Tensor,
}

/// Per-member mean of `[G, B, 1]` values, `[G]`.
fn member_mean(tape: &Tape, x: &Tensor) -> Result<Tensor> {
    let (g, b) = (x.shape()[0], x.shape()[1]);
    tape.scale(&tape.reshape(&tape.sum_to(x, &[g, 1, 1])?, &[g])?, 1.0 / b as f32)
}

fn gradients_of(grads: &crate::autograd::Gradients, params: Vec<&Tensor>) -> Result<Vec<Tensor>> {
    params.into_iter().map(|p| grads.of(p).cloned()).collect()
}

/// `L_D = mean D(x̃, y) − mean D(x, y) + λ·GP + 0.001·mean D(x, y)²` per member, `[G]`, with
/// `GP = mean_i (‖∇ₓD(x̂ᵢ, yᵢ)‖ − 1)²` at `x̂ = αx + (1 − α)x̃` by double backward (the norm as
/// `√(‖·‖² + GP_NORM_EPS)`). Records on
/// `tape`; watching D's parameters is the caller's choice. Three forward passes (real, fake, x̂),
/// each advancing D's spectral-norm vectors, as the published critic step does.
pub fn wgan_gp_loss(
    tape: &Tape,
    d: &mut Discriminator,
    real: &Tensor,
    fake: &Tensor,
    labels: &Tensor,
    alpha: &Tensor,
    config: &GsWganConfig,
) -> Result<Tensor> {
    let x_hat = ops::binary(
        BinaryOp::Add,
        &ops::binary(BinaryOp::Mul, alpha, real)?,
        &ops::binary(BinaryOp::Mul, &ops::unary(UnaryOp::Affine { scale: -1.0, shift: 1.0 }, alpha)?, fake)?,
    )?;
    tape.watch(&x_hat);
    let d_real = d.forward(tape, real, labels)?.critic;
    let d_fake = d.forward(tape, fake, labels)?.critic;
    let d_hat = d.forward(tape, &x_hat, labels)?.critic;

    let input_grads = tape.backward_to_create_graph(&tape.sum_all(&d_hat)?, &[&x_hat])?;
    let dx = input_grads.of(&x_hat)?;
    let (groups, b) = (dx.shape()[0], dx.shape()[1]);
    let norms = tape.sqrt(&tape.affine(&tape.sum_squares_to(dx, &[groups, b, 1])?, 1.0, GP_NORM_EPS)?)?;
    let penalty = member_mean(tape, &tape.square(&tape.affine(&norms, 1.0, -1.0)?)?)?;

    let wasserstein = tape.sub(&member_mean(tape, &d_fake)?, &member_mean(tape, &d_real)?)?;
    let drift = member_mean(tape, &tape.square(&d_real)?)?;
    tape.add(&tape.add(&wasserstein, &tape.scale(&penalty, config.gp_weight)?)?, &tape.scale(&drift, config.drift_weight)?)
}

/// One WGAN-GP critic step of every member: x̃ = G(z, y) (not differentiated), [`wgan_gp_loss`],
/// an Adam step on D. Members' losses are summed for the backward pass, so member g's gradient is
/// its own loss's. Returns `L_D` per member, `[G]`.
pub fn critic_step(
    d: &mut Discriminator,
    d_opt: &mut Adam,
    g: &mut Generator,
    batch: &CriticBatch,
    config: &GsWganConfig,
) -> Result<Tensor> {
    let fake = g.forward(&Tape::new(), &batch.z, &batch.labels)?;
    let tape = Tape::new();
    d.params().into_iter().for_each(|p| tape.watch(p));
    let loss = wgan_gp_loss(&tape, d, &batch.images, &fake, &batch.labels, &batch.alpha, config)?;
    let grads = tape.backward(&tape.sum_all(&loss)?)?;
    let d_grads = gradients_of(&grads, d.params())?;
    // The tape's saved inputs share D's weights: released first, the update is in place.
    drop(tape);
    d_opt.step(&mut d.params_mut(), &d_grads)?;
    Ok(loss)
}

/// The plain generator step (warm start): `L_G = −mean D(G(z, l), l)`, an Adam step on G only
/// (D is not updated; its spectral-norm vectors still advance). Returns `L_G` per member, `[G]`.
pub fn generator_step(g: &mut Generator, g_opt: &mut Adam, d: &mut Discriminator, z: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let tape = Tape::new();
    g.params().into_iter().for_each(|p| tape.watch(p));
    let fake = g.forward(&tape, z, labels)?;
    let critic = d.forward(&tape, &fake, labels)?.critic;
    let loss = tape.neg(&member_mean(&tape, &critic)?)?;
    let grads = tape.backward(&tape.sum_all(&loss)?)?;
    let g_grads = gradients_of(&grads, g.params())?;
    drop(tape); // it shares G's weights: released, the update is in place
    g_opt.step(&mut g.params_mut(), &g_grads)?;
    Ok(loss)
}

/// The private generator step (phase 2, step 4) with D frozen: x̃ = G(z, l); the gradient gᵢ of
/// `L_G = −(1/B)Σ D(x̃ᵢ, lᵢ)` w.r.t. each image comes from a tape holding D alone; each row is
/// sanitised (clipped to C/B, noised with std 2σC/B from `key`); the sanitised gradient is
/// back-propagated through G's tape only, and G takes an Adam step. Returns `L_G` `[G]` and the
/// step's finiteness flag `[1]`: NaN when a sanitised row is not finite (a row whose norm is NaN
/// or infinite comes out NaN), else 0 (see [`crate::dp::finite`]).
pub fn private_generator_step(
    g: &mut Generator,
    g_opt: &mut Adam,
    d: &mut Discriminator,
    z: &Tensor,
    labels: &Tensor,
    sanitizer: &GsWganSanitizer,
    key: &NoiseKey,
) -> Result<(Tensor, Tensor)> {
    let g_tape = Tape::new();
    g.params().into_iter().for_each(|p| g_tape.watch(p));
    let fake = g.forward(&g_tape, z, labels)?;

    let (loss, image_grad) = image_gradient(d, &fake, labels)?;
    let sanitized = sanitizer.sanitize(&image_grad, key)?;
    let nonfinite = nonfinite_flag(&[&sanitized])?;
    let grads = g_tape.backward_with(&fake, sanitized, false)?;
    let g_grads = gradients_of(&grads, g.params())?;
    drop(g_tape); // it shares G's weights: released, the update is in place
    g_opt.step(&mut g.params_mut(), &g_grads)?;
    Ok((loss, nonfinite))
}

/// `L_G = −mean_i D(x̃ᵢ, lᵢ)` per member `[G]` and its gradient w.r.t. each image x̃ᵢ,
/// `[G, B, 784]`, on a tape that holds D alone (D's parameters get no gradient).
pub fn image_gradient(d: &mut Discriminator, fake: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let tape = Tape::new();
    tape.watch(fake);
    let critic = d.forward(&tape, fake, labels)?.critic;
    let loss = tape.neg(&member_mean(&tape, &critic)?)?;
    let grad = tape.backward(&tape.sum_all(&loss)?)?.of(fake)?.clone();
    Ok((loss, grad))
}

/// The EMA decay at iteration t (0-based): `min(1 − 1/(t + 1), 0.999)`, so iteration 0 copies G.
pub fn ema_decay(t: u64) -> f32 {
    (1.0 - 1.0 / (t as f64 + 1.0)).min(0.999) as f32
}

/// `ema ← a·ema + (1 − a)·model` for every tensor, spectral-norm u and v included.
pub fn ema_update<M: Module>(ema: &mut M, model: &M, decay: f32) -> Result<()> {
    let sources = model.entries();
    let targets = ema.entries_mut();
    if sources.len() != targets.len() {
        return Err(Error::Invalid(format!("EMA: {} tensors against {}", targets.len(), sources.len())));
    }
    let _range = crate::profile::range("ema_update");
    // Every tensor in one op (one launch per 32 tensors on a GPU).
    let mut pairs: Vec<(&mut Tensor, &Tensor)> =
        targets.into_iter().zip(sources).map(|(target, source)| (target.tensor, source.tensor)).collect();
    ops::ema_updates(&mut pairs, decay)
}
