//! Optimizers over a model's parameter list: state kept beside the parameters, updates by the
//! backend's in-place kernels.
use crate::backend::{ops, AdamParams, AdamTensors, GradientNoise, NoisedAdamTensors, NoisedTensors, SgdParams};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

pub trait Optimizer {
    /// Updates `params[i]` from `grads[i]` in place.
    fn step(&mut self, params: &mut [&mut Tensor], grads: &[Tensor]) -> Result<()>;

    /// Updates `params[i]` in place from DP-SGD's gradient `(sums[i] + std·z)/divisor` with the
    /// noise of `noises[i]`, each tensor in one pass that never writes its gradient: the values of
    /// noising and dividing `sums`, then [`Optimizer::step`], bit for bit. `flag` `[1]` becomes NaN
    /// if any gradient element is not finite (`dp::nonfinite_flag`'s verdict, without the gradients).
    fn noised_step(&mut self, params: &mut [&mut Tensor], sums: &[Tensor], noises: &[GradientNoise], flag: &mut Tensor) -> Result<()>;
}

fn check_noises(sums: &[Tensor], noises: &[GradientNoise]) -> Result<()> {
    if sums.len() != noises.len() {
        return Err(Error::Invalid(format!("optimizer: {} gradient sums but {} noise keys", sums.len(), noises.len())));
    }
    Ok(())
}

fn check_lists(params: &[&mut Tensor], grads: &[Tensor], state: usize) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::Invalid(format!("optimizer: {} parameters but {} gradients", params.len(), grads.len())));
    }
    if state != 0 && state != params.len() {
        return Err(Error::Invalid(format!("optimizer: state for {state} parameters, given {}", params.len())));
    }
    Ok(())
}

/// SGD with optional momentum and weight decay (see [`SgdParams`]).
pub struct Sgd {
    pub hp: SgdParams,
    momentum: Vec<Tensor>,
}

impl Sgd {
    pub fn new(hp: SgdParams) -> Self {
        Sgd { hp, momentum: Vec::new() }
    }
    /// SGD with a learning rate and nothing else.
    pub fn plain(lr: f32) -> Self {
        Self::new(SgdParams { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [&mut Tensor], grads: &[Tensor]) -> Result<()> {
        check_lists(params, grads, self.momentum.len())?;
        let _range = crate::profile::range("optimizer_sgd");
        if self.hp.momentum == 0.0 {
            // Every tensor in one op (one launch per 32 tensors on a GPU).
            let mut pairs: Vec<(&mut Tensor, &Tensor)> = params.iter_mut().map(|p| &mut **p).zip(grads).collect();
            return ops::sgd_steps(&mut pairs, &self.hp);
        }
        if self.momentum.is_empty() {
            self.momentum = params.iter().map(|p| p.full_like(p.shape(), 0.0)).collect::<Result<_>>()?;
        }
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            ops::sgd_step(p, g, self.momentum.get_mut(i), &self.hp)?;
        }
        Ok(())
    }

    /// Plain SGD only: with momentum it is an error (`ops::noised_sgd_step`).
    fn noised_step(&mut self, params: &mut [&mut Tensor], sums: &[Tensor], noises: &[GradientNoise], flag: &mut Tensor) -> Result<()> {
        check_lists(params, sums, self.momentum.len())?;
        check_noises(sums, noises)?;
        let _range = crate::profile::range("optimizer_sgd_noised");
        // Every tensor in one op (one launch per 32 tensors on a GPU).
        let mut tensors: Vec<NoisedTensors<'_>> =
            params.iter_mut().zip(sums).zip(noises).map(|((param, sum), noise)| NoisedTensors { param, sum, noise }).collect();
        ops::noised_sgd_steps(&mut tensors, &self.hp, flag)
    }
}

/// Adam with bias correction (see [`AdamParams`]); the step count is shared by all parameters.
pub struct Adam {
    pub hp: AdamParams,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    pub fn new(hp: AdamParams) -> Self {
        Adam { hp, m: Vec::new(), v: Vec::new(), t: 0 }
    }
    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Counts a step whose update ran without this optimizer's host code (a CUDA graph's replay
    /// of a captured step, which updated the moments in place with the next step's corrections).
    pub(crate) fn count_replayed_step(&mut self) {
        self.t += 1;
    }

    /// Puts back a step count (after a CUDA graph capture the driver refused, whose step did not
    /// run but counted).
    pub(crate) fn set_steps(&mut self, steps: u64) {
        self.t = steps;
    }

    /// The moment estimates `(m, v)` per parameter (empty before the first step), for checkpoints.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Restores a checkpointed state: the moments of every parameter and the step count.
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, steps: u64) -> Result<()> {
        if m.len() != v.len() || (steps > 0 && m.is_empty()) {
            return Err(Error::Invalid(format!(
                "Adam state with {} first and {} second moments after {steps} steps is inconsistent",
                m.len(),
                v.len()
            )));
        }
        for (a, b) in m.iter().zip(&v) {
            if a.shape() != b.shape() {
                return Err(Error::Invalid(format!("Adam moments of one parameter differ in shape: {:?} vs {:?}", a.shape(), b.shape())));
            }
        }
        (self.m, self.v, self.t) = (m, v, steps);
        Ok(())
    }

    /// Takes `src`'s state in place: its moments copied into this optimizer's buffers (zeros where
    /// `src` has taken no step yet), buffers made on `device` first if this one has none, and its
    /// step count. Buffers this optimizer has keep their storage, so a CUDA graph that reads them
    /// reads the new state.
    pub fn copy_state_from(&mut self, src: &Adam, device: &Device) -> Result<()> {
        if src.m.is_empty() {
            for t in self.m.iter_mut().chain(self.v.iter_mut()) {
                let zeros = t.full_like(t.shape(), 0.0)?;
                t.copy_from(&zeros)?;
            }
        } else if self.m.is_empty() {
            let own = |t: &Tensor| t.copy_on(device);
            self.m = src.m.iter().map(own).collect::<Result<_>>()?;
            self.v = src.v.iter().map(own).collect::<Result<_>>()?;
        } else {
            if self.m.len() != src.m.len() {
                return Err(Error::Invalid(format!("copying the Adam state of {} parameters into one of {}", src.m.len(), self.m.len())));
            }
            for (dst, from) in self.m.iter_mut().zip(&src.m).chain(self.v.iter_mut().zip(&src.v)) {
                dst.copy_from(from)?;
            }
        }
        self.t = src.t;
        Ok(())
    }

    /// The moments, zero before the first step, and the step count advanced for this step.
    fn begin_step(&mut self, params: &[&mut Tensor], grads: &[Tensor]) -> Result<()> {
        check_lists(params, grads, self.m.len())?;
        if self.m.is_empty() {
            self.m = params.iter().map(|p| p.full_like(p.shape(), 0.0)).collect::<Result<_>>()?;
            self.v = params.iter().map(|p| p.full_like(p.shape(), 0.0)).collect::<Result<_>>()?;
        }
        self.t += 1;
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [&mut Tensor], grads: &[Tensor]) -> Result<()> {
        let _range = crate::profile::range("optimizer_adam");
        self.begin_step(params, grads)?;
        // Every tensor in one op (one launch per 32 tensors on a GPU).
        let mut tensors: Vec<AdamTensors<'_>> = params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            .map(|((param, grad), (m, v))| AdamTensors { param, grad, m, v })
            .collect();
        ops::adam_steps(&mut tensors, self.t, &self.hp)
    }

    fn noised_step(&mut self, params: &mut [&mut Tensor], sums: &[Tensor], noises: &[GradientNoise], flag: &mut Tensor) -> Result<()> {
        check_noises(sums, noises)?;
        let _range = crate::profile::range("optimizer_adam_noised");
        self.begin_step(params, sums)?;
        let mut tensors: Vec<NoisedAdamTensors<'_>> = params
            .iter_mut()
            .zip(sums)
            .zip(noises)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            .map(|(((param, sum), noise), (m, v))| NoisedAdamTensors { param, sum, noise, m, v })
            .collect();
        ops::noised_adam_steps(&mut tensors, self.t, &self.hp, flag)
    }
}
