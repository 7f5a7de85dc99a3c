//! Ops built from the primitive tape ops: their gradients (of any order) come from the primitives'
//! rules, so they need no rule of their own.
use super::Tape;
use crate::backend::ops as raw;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;

impl Tape {
    /// Pixel norm over channels of `[G, B, C, H, W]`: `x / sqrt(mean_c x² + eps)` per position.
    pub fn pixel_norm(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        ensure_shape!(x.rank() == 5, "pixel_norm", "needs [G, B, C, H, W], got {:?}", x.shape());
        let s = x.shape();
        let channels = s[2] as f32;
        let sum_sq = self.sum_to(&self.square(x)?, &[s[0], s[1], 1, s[3], s[4]])?;
        let inv = self.rsqrt(&self.affine(&sum_sq, 1.0 / channels, eps)?)?;
        self.mul(x, &inv)
    }

    /// Spectral normalisation of `w_bar` viewed as `[G, O, I]`: one power iteration updates
    /// `u` `[G, O]` (no gradient), then `W = W̄ / s` with `s = uᵀ W̄ v` (see
    /// [`Tape::divide_by_sigma`]). Returns `(W, u', v)`; the caller stores `u'` for the next call.
    pub fn spectral_normalize(&self, w_bar: &Tensor, u: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        ensure_shape!(w_bar.rank() >= 3, "spectral_normalize", "needs [G, O, ...], got {:?}", w_bar.shape());
        let s = w_bar.shape();
        let (g, rows) = (s[0], s[1]);
        let cols = w_bar.numel() / (g * rows);
        let (u_new, v) = raw::power_iteration(&w_bar.reshape(&[g, rows, cols])?, u)?;
        Ok((self.divide_by_sigma(w_bar, &u_new, &v)?, u_new, v))
    }

    /// `W̄ / s` with `s = uᵀ W̄ v` per group, `u` `[G, O]` and `v` `[G, I]` held constant: the
    /// gradient flows through `s` into `W̄`, as in PyTorch's spectral norm.
    pub fn divide_by_sigma(&self, w_bar: &Tensor, u: &Tensor, v: &Tensor) -> Result<Tensor> {
        let s = w_bar.shape();
        let (g, rows) = (s[0], s[1]);
        let cols = w_bar.numel() / (g * rows);
        ensure_shape!(
            u.shape() == [g, rows] && v.shape() == [g, cols],
            "divide_by_sigma",
            "u {:?} and v {:?} do not fit {s:?}",
            u.shape(),
            v.shape()
        );
        let w3 = self.reshape(w_bar, &[g, rows, cols])?;
        let wv = self.matmul(&w3, &v.reshape(&[g, cols, 1])?, false, false)?;
        let sigma = self.matmul(&u.reshape(&[g, rows, 1])?, &wv, true, false)?;
        let mut sigma_shape = vec![1; s.len()];
        sigma_shape[0] = g;
        self.div(w_bar, &self.reshape(&sigma, &sigma_shape)?)
    }
}
