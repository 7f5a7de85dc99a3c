//! Ops built from the primitive tape ops: their gradients (of any order) come from the primitives'
//! rules, so they need no rule of their own.
use rand::Rng;

use super::Tape;
use crate::backend::ops as raw;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::{DType, Tensor};

impl Tape {
    /// Inverted dropout: `x ⊙ m` with `m` = 1/(1 − p) with probability 1 − p, else 0, drawn from
    /// `rng` on the host (so a seed fixes the mask on every device). The mask is a constant on the
    /// tape, so the gradient is `dy ⊙ m`, from `mul`'s rule; at evaluation the layer is simply left out.
    pub fn dropout(&self, x: &Tensor, p: f32, rng: &mut impl Rng) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Invalid(format!("dropout: probability must be in [0, 1), got {p}")));
        }
        let keep = 1.0 / (1.0 - f64::from(p));
        let mask: Vec<f64> = (0..x.numel()).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
        let mask = match x.dtype() {
            DType::F64 => Tensor::from_vec_f64(mask, x.shape())?,
            DType::F32 => Tensor::from_vec(mask.into_iter().map(|m| m as f32).collect(), x.shape(), &x.device())?,
        };
        self.mul(x, &mask)
    }

    /// Spectral normalisation of `w_bar` viewed as `[G, O, I]`: one power iteration updates
    /// `u` `[G, O]` (no gradient) and gives `s = uᵀ W̄ v`, then `W = W̄ / s` with the gradient
    /// flowing through `s` into `W̄` (see [`Tape::spectral_divide`]). Returns `(W, u', v, s)`;
    /// the caller stores `u'` for the next call.
    pub fn spectral_normalize(&self, w_bar: &Tensor, u: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let step = raw::power_iteration(&as_matrices(w_bar)?, u)?;
        let w = self.spectral_divide(w_bar, &step.u, &step.v, &step.sigma)?;
        Ok((w, step.u, step.v, step.sigma))
    }

    /// [`Tape::spectral_normalize`] of each `(W̄, u, v)`, a spectral norm's state, which the power
    /// iteration updates in place (see `ops::power_iterations_in_place`), the power iterations
    /// batched into the same launches (a model's spectrally normalised layers are independent of
    /// one another). Returns each layer's `(W, u', v, s)`, u' and v in tensors of their own: the
    /// tape keeps those, not the state.
    pub fn spectral_normalize_all(
        &self,
        layers: &mut [(&Tensor, &mut Tensor, &mut Tensor)],
    ) -> Result<Vec<(Tensor, Tensor, Tensor, Tensor)>> {
        let matrices = layers.iter().map(|(w_bar, _, _)| as_matrices(w_bar)).collect::<Result<Vec<_>>>()?;
        let mut states: Vec<(&Tensor, &mut Tensor, &mut Tensor)> =
            matrices.iter().zip(layers.iter_mut()).map(|(m, (_, u, v))| (m, &mut **u, &mut **v)).collect();
        let steps = raw::power_iterations_in_place(&mut states)?;
        drop(states);
        layers
            .iter()
            .zip(steps)
            .map(|((w_bar, _, _), step)| {
                let w = self.spectral_divide(w_bar, &step.u, &step.v, &step.sigma)?;
                Ok((w, step.u, step.v, step.sigma))
            })
            .collect()
    }

    /// `W̄ / s` with `s = uᵀ W̄ v` per group, `u` `[G, O]` and `v` `[G, I]` held constant: the
    /// gradient flows through `s` into `W̄`, as in PyTorch's spectral norm. Computes `s`.
    pub fn divide_by_sigma(&self, w_bar: &Tensor, u: &Tensor, v: &Tensor) -> Result<Tensor> {
        let s = w_bar.shape();
        ensure_shape!(s.len() >= 3, "divide_by_sigma", "needs [G, O, ...], got {s:?}");
        let (g, rows) = (s[0], s[1]);
        let cols = w_bar.numel() / (g * rows).max(1);
        ensure_shape!(
            u.shape() == [g, rows] && v.shape() == [g, cols],
            "divide_by_sigma",
            "u {:?} and v {:?} do not fit {s:?}",
            u.shape(),
            v.shape()
        );
        let wv = raw::matmul(&w_bar.reshape(&[g, rows, cols])?, &v.reshape(&[g, cols, 1])?, false, false)?;
        let sigma = raw::matmul(&u.reshape(&[g, rows, 1])?, &wv, true, false)?.reshape(&[g])?;
        self.spectral_divide(w_bar, u, v, &sigma)
    }
}

/// `w_bar` `[G, O, ...]` viewed as `[G, O, I]`, the matrices of its power iteration.
fn as_matrices(w_bar: &Tensor) -> Result<Tensor> {
    ensure_shape!(w_bar.rank() >= 3, "spectral_normalize", "needs [G, O, ...], got {:?}", w_bar.shape());
    let s = w_bar.shape();
    let (g, rows) = (s[0], s[1]);
    w_bar.reshape(&[g, rows, w_bar.numel() / (g * rows).max(1)])
}
