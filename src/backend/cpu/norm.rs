//! Spectral norm (the power iteration, the gradient of `W = W̄/σ`) and pixel norm, accumulating
//! in f64.
use super::Real;

/// L2-normalise with PyTorch's guard: `x / max(‖x‖, 1e-12)`. Returns `x'ᵀx` for the normalised
/// x', which for `x = W v` is `σ = u'ᵀW v`.
fn normalize(x: &mut [f64]) -> f64 {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    let mut dot = 0.0;
    for v in x.iter_mut() {
        let normalised = *v / norm;
        dot += normalised * *v;
        *v = normalised;
    }
    dot
}

/// For each group g with `w[g]` `O × I`: `v = normalize(wᵀu)`, `u' = normalize(w v)` and
/// `σ = u'ᵀ w v`. Returns `(u' [G, O], v [G, I], σ [G])`.
pub fn power_iteration<T: Real>(w: &[T], u: &[T], groups: usize, rows: usize, cols: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut u_out = Vec::with_capacity(groups * rows);
    let mut v_out = Vec::with_capacity(groups * cols);
    let mut sigma = Vec::with_capacity(groups);
    for g in 0..groups {
        let w_g = &w[g * rows * cols..(g + 1) * rows * cols];
        let u_g = &u[g * rows..(g + 1) * rows];
        let mut v = vec![0.0f64; cols];
        for (r, &ur) in u_g.iter().enumerate() {
            for (c, vc) in v.iter_mut().enumerate() {
                *vc += w_g[r * cols + c].f64() * ur.f64();
            }
        }
        normalize(&mut v);
        let mut u_new: Vec<f64> = (0..rows).map(|r| (0..cols).map(|c| w_g[r * cols + c].f64() * v[c]).sum()).collect();
        sigma.push(T::of_f64(normalize(&mut u_new)));
        u_out.extend(u_new.iter().map(|&x| T::of_f64(x)));
        v_out.extend(v.iter().map(|&x| T::of_f64(x)));
    }
    (u_out, v_out, sigma)
}

/// The gradient of `W = W̄/σ` with `σ = uᵀW̄v` (u, v constants) for `W̄` `[G, O, I]`:
/// `dW̄ = (dW − c·u vᵀ)/σ` per group, `c = ⟨dW, W⟩` given (`[G]`). Each element in f64, rounded
/// once (`norm_spectral_divide_bwd_f32` rounds `c·u` and the quotient in f32).
pub fn spectral_divide_backward<T: Real>(dw: &[T], c: &[T], u: &[T], v: &[T], sigma: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(dw.len());
    for (e, d) in dw.iter().enumerate() {
        let (g, in_group) = (e / (rows * cols), e % (rows * cols));
        let (row, col) = (in_group / cols, in_group % cols);
        let along = c[g].f64() * u[g * rows + row].f64();
        out.push(T::of_f64((d.f64() - along * v[g * cols + col].f64()) / sigma[g].f64()));
    }
    out
}

/// Pixel norm of `x` `[N, C, P]` over its channels: `inv = 1/sqrt(Σ_c x²/C + eps)` per (n, p) and
/// `y = x·inv`. Returns `(y [N, C, P], inv [N, P])`.
pub fn pixel_norm<T: Real>(x: &[T], n: usize, channels: usize, plane: usize, eps: f32) -> (Vec<T>, Vec<T>) {
    let mut y = vec![T::of(0.0); x.len()];
    let mut inv_out = Vec::with_capacity(n * plane);
    for i in 0..n {
        for q in 0..plane {
            let at = |c: usize| (i * channels + c) * plane + q;
            let sum_sq: f64 = (0..channels).map(|c| x[at(c)].f64() * x[at(c)].f64()).sum();
            let inv = 1.0 / (sum_sq / channels as f64 + f64::from(eps)).sqrt();
            for c in 0..channels {
                y[at(c)] = T::of_f64(x[at(c)].f64() * inv);
            }
            inv_out.push(T::of_f64(inv));
        }
    }
    (y, inv_out)
}

/// The gradient of [`pixel_norm`]: `dx_c = inv·dy_c − x_c·inv³·(Σ_c x·dy)/C` per (n, p), from the
/// forward's `inv` `[N, P]`.
pub fn pixel_norm_backward<T: Real>(x: &[T], inv: &[T], dy: &[T], channels: usize, plane: usize) -> Vec<T> {
    let mut dx = vec![T::of(0.0); x.len()];
    for (pos, inv) in inv.iter().enumerate() {
        let (i, q) = (pos / plane, pos % plane);
        let at = |c: usize| (i * channels + c) * plane + q;
        let inv = inv.f64();
        let s: f64 = (0..channels).map(|c| x[at(c)].f64() * dy[at(c)].f64()).sum();
        let k = inv * inv * inv * s / channels as f64;
        for c in 0..channels {
            dx[at(c)] = T::of_f64(inv * dy[at(c)].f64() - x[at(c)].f64() * k);
        }
    }
    dx
}
