//! Spectral norm's power iteration: one step (u', v and its σ = u'ᵀWv) against a plain f64 power
//! iteration, convergence of σ to the top singular value (known by construction, or from the Gram matrix), G > 1 with a
//! different matrix per group, the 1e-12 guard on zero and tiny inputs, and shape errors; the
//! gradient of W = W̄/σ (`spectral_divide_backward`) against an f64 oracle on every backend; a
//! batch of layers in one call equal to one call per layer.
mod common;

use common::{assert_close, assert_close_f64, on_cuda, randn_vec, tol};
use dpgan::backend::ops;
use dpgan::tensor::{Device, Tensor};
use dpgan::Error;
use rand::Rng;

/// `x / max(‖x‖, 1e-12)`, PyTorch's `F.normalize`.
fn normalize(x: &[f64]) -> Vec<f64> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    x.iter().map(|v| v / norm).collect()
}

/// One step per group for `w` `[G, O, I]`, `u` `[G, O]`: `v = normalize(Wᵀu)`, `u' = normalize(W v)`,
/// `σ = u'ᵀ(W v)`.
fn power_step_oracle(w: &[f64], u: &[f64], groups: usize, rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut u_out, mut v_out, mut sigma) = (Vec::new(), Vec::new(), Vec::new());
    for g in 0..groups {
        let at = |r: usize, c: usize| w[(g * rows + r) * cols + c];
        let wt_u: Vec<f64> = (0..cols).map(|c| (0..rows).map(|r| at(r, c) * u[g * rows + r]).sum()).collect();
        let v = normalize(&wt_u);
        let w_v: Vec<f64> = (0..rows).map(|r| (0..cols).map(|c| at(r, c) * v[c]).sum()).collect();
        let u_new = normalize(&w_v);
        sigma.push(u_new.iter().zip(&w_v).map(|(a, b)| a * b).sum());
        u_out.extend(u_new);
        v_out.extend(v);
    }
    (u_out, v_out, sigma)
}

/// σ per group within `tolerance` relative, plus `subnormal_steps` steps of f32's subnormal grid
/// (2⁻¹⁴⁹) absolute: σ of a matrix scaled by 1e-20 is about 1e-42, below f32's normal range,
/// where an f32 holds it (and a product summed into it) only to the nearest 2⁻¹⁴⁹.
fn assert_sigma_close(what: &str, got: &[f64], expected: &[f64], tolerance: f64, subnormal_steps: usize) {
    assert_eq!(got.len(), expected.len(), "{what}: σ length");
    let floor = subnormal_steps as f64 * f32::from_bits(1) as f64;
    for (g, (a, e)) in got.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tolerance * e.abs() + floor, "{what}: σ of group {g} is {a:e}, expected {e:e}");
    }
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// One call on f32 and f64 tensors against the oracle. F32_REDUCTION: each output element comes
/// from a sum of up to I = 4096 products.
fn check_step(what: &str, w: &[f32], u: &[f32], groups: usize, rows: usize, cols: usize) {
    let (expected_u, expected_v, expected_sigma) = power_step_oracle(&to_f64(w), &to_f64(u), groups, rows, cols);
    let w32 = Tensor::from_vec(w.to_vec(), &[groups, rows, cols], &Device::Cpu).unwrap();
    let u32_ = Tensor::from_vec(u.to_vec(), &[groups, rows], &Device::Cpu).unwrap();
    let w64 = Tensor::from_vec_f64(to_f64(w), &[groups, rows, cols]).unwrap();
    let u64_ = Tensor::from_vec_f64(to_f64(u), &[groups, rows]).unwrap();
    // The CPU rounds its f64 σ to f32 once: one subnormal step.
    for (dtype, w_t, u_t, tolerance, steps) in [("f32", &w32, &u32_, tol::F32_REDUCTION, 1), ("f64", &w64, &u64_, tol::F64_TIGHT, 0)] {
        let step = ops::power_iteration(w_t, u_t).unwrap();
        assert_eq!(step.u.shape(), [groups, rows], "{what}: u shape");
        assert_eq!(step.v.shape(), [groups, cols], "{what}: v shape");
        assert_eq!(step.sigma.shape(), [groups], "{what}: σ shape");
        let (u_new, v, sigma) = (step.u.to_vec_f64().unwrap(), step.v.to_vec_f64().unwrap(), step.sigma.to_vec_f64().unwrap());
        assert!(u_new.iter().chain(&v).chain(&sigma).all(|x| x.is_finite()), "{what} {dtype}: non-finite output");
        assert_close_f64(&format!("{what} {dtype}: u'"), &u_new, &expected_u, tolerance);
        assert_close_f64(&format!("{what} {dtype}: v"), &v, &expected_v, tolerance);
        assert_sigma_close(&format!("{what} {dtype}"), &sigma, &expected_sigma, tolerance, steps);
    }
}

#[test]
fn power_iteration_step_matches_plain_f64_iteration() {
    let mut rng = common::rng("power_iteration_step_matches_plain_f64_iteration");
    // (G, O, I): scalars, wide, tall, GS-WGAN D conv1 viewed as 64 × (1·5·5), its SN linear 1 × 4096.
    for (groups, rows, cols) in [(1, 1, 1), (3, 7, 12), (2, 12, 5), (4, 64, 25), (1, 1, 4096), (2, 3, 1)] {
        let w = randn_vec(&mut rng, groups * rows * cols);
        // u need not be a unit vector (it is after the first call).
        let u = randn_vec(&mut rng, groups * rows);
        check_step(&format!("G={groups} {rows}x{cols}"), &w, &u, groups, rows, cols);
    }
}

/// `count` orthonormal vectors of length `n` (Gram–Schmidt on Gaussian vectors, in f64).
fn orthonormal(rng: &mut impl Rng, count: usize, n: usize) -> Vec<Vec<f64>> {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    while basis.len() < count {
        let mut x = to_f64(&randn_vec(rng, n));
        for _ in 0..2 {
            for b in &basis {
                let proj: f64 = x.iter().zip(b).map(|(p, q)| p * q).sum();
                x.iter_mut().zip(b).for_each(|(p, q)| *p -= proj * q);
            }
        }
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 1e-6 {
            basis.push(x.iter().map(|v| v / norm).collect());
        }
    }
    basis
}

/// `W = Σ_k s_k a_k b_kᵀ` with orthonormal a_k, b_k: its singular values are exactly `s`.
fn matrix_with_singular_values(rng: &mut impl Rng, rows: usize, cols: usize, s: &[f64]) -> Vec<f32> {
    let (a, b) = (orthonormal(rng, s.len(), rows), orthonormal(rng, s.len(), cols));
    (0..rows * cols).map(|i| s.iter().enumerate().map(|(k, sk)| sk * a[k][i / cols] * b[k][i % cols]).sum::<f64>() as f32).collect()
}

/// Runs the op `steps` times from `u` and returns its last σ per group, in f64, after checking it
/// against `uᵀ W v` recomputed from the u and v it returned.
fn sigma_after(w: &[f32], u: &[f32], groups: usize, rows: usize, cols: usize, steps: usize) -> Vec<f64> {
    let w_t = Tensor::from_vec(w.to_vec(), &[groups, rows, cols], &Device::Cpu).unwrap();
    let mut u_t = Tensor::from_vec(u.to_vec(), &[groups, rows], &Device::Cpu).unwrap();
    let mut last = None;
    for _ in 0..steps {
        let step = ops::power_iteration(&w_t, &u_t).unwrap();
        u_t = step.u.clone();
        last = Some(step);
    }
    let last = last.unwrap();
    let (u, v) = (last.u.to_vec_f64().unwrap(), last.v.to_vec_f64().unwrap());
    let recomputed: Vec<f64> = (0..groups)
        .map(|g| {
            (0..rows).map(|r| u[g * rows + r] * (0..cols).map(|c| w[(g * rows + r) * cols + c] as f64 * v[g * cols + c]).sum::<f64>()).sum()
        })
        .collect();
    let sigma = last.sigma.to_vec_f64().unwrap();
    assert_close_f64("σ against uᵀWv from the returned u, v", &sigma, &recomputed, tol::F32_REDUCTION);
    sigma
}

/// After many steps `uᵀWv` is the top singular value, which the matrices are built to have; each
/// group has its own matrix and scale. F32_REDUCTION: W rounded to f32 moves σ by about 1e-7·σ, and
/// `uᵀWv` is only second-order sensitive to the rounding of u and v.
#[test]
fn power_iteration_converges_to_the_top_singular_value_per_group() {
    let mut rng = common::rng("power_iteration_converges_to_the_top_singular_value_per_group");
    for (rows, cols) in [(7, 12), (12, 5), (16, 9)] {
        let tops = [3.0, 0.25, 40.0];
        let mut w = Vec::new();
        for top in tops {
            // Gap ratio 0.5: the error in σ falls by 0.25² per step.
            let s: Vec<f64> = (0..rows.min(cols)).map(|k| top * 0.5f64.powi(k as i32)).collect();
            w.extend(matrix_with_singular_values(&mut rng, rows, cols, &s));
        }
        let u = randn_vec(&mut rng, tops.len() * rows);
        let sigma = sigma_after(&w, &u, tops.len(), rows, cols, 60);
        assert_close_f64(&format!("{rows}x{cols}: uᵀWv per group"), &sigma, &tops, tol::F32_REDUCTION);
    }

    // Diagonal matrices: σ is the largest |d|.
    let d = [[0.5f32, -2.0, 1.0, 0.25], [-7.0, 1.0, 3.0, 0.0]];
    let mut w = vec![0.0f32; 2 * 4 * 6];
    for (g, diag) in d.iter().enumerate() {
        diag.iter().enumerate().for_each(|(i, &v)| w[(g * 4 + i) * 6 + i] = v);
    }
    let u = randn_vec(&mut rng, 2 * 4);
    let sigma = sigma_after(&w, &u, 2, 4, 6, 60);
    assert_close_f64("diagonal: uᵀWv per group", &sigma, &[2.0, 7.0], tol::F32_REDUCTION);
}

/// A Gaussian matrix with a rank-one spike (so that the top singular value stands apart): σ from
/// the op against `sqrt(λ_max(W Wᵀ))` found by iterating on the Gram matrix in f64.
#[test]
fn power_iteration_agrees_with_the_gram_matrix_eigenvalue() {
    let mut rng = common::rng("power_iteration_agrees_with_the_gram_matrix_eigenvalue");
    let (groups, rows, cols) = (3, 9, 20);
    let mut w = Vec::new();
    let mut expected = Vec::new();
    for g in 0..groups {
        let spike = 3.0 * ((rows as f64).sqrt() + (cols as f64).sqrt()) * (g + 1) as f64;
        let (a, b) = (orthonormal(&mut rng, 1, rows), orthonormal(&mut rng, 1, cols));
        let noise = randn_vec(&mut rng, rows * cols);
        let w_g: Vec<f32> = (0..rows * cols).map(|i| (noise[i] as f64 + spike * a[0][i / cols] * b[0][i % cols]) as f32).collect();

        let gram: Vec<f64> = (0..rows * rows)
            .map(|i| (0..cols).map(|c| w_g[(i / rows) * cols + c] as f64 * w_g[(i % rows) * cols + c] as f64).sum())
            .collect();
        let mut x = to_f64(&randn_vec(&mut rng, rows));
        for _ in 0..500 {
            x = normalize(&(0..rows).map(|r| (0..rows).map(|c| gram[r * rows + c] * x[c]).sum()).collect::<Vec<f64>>());
        }
        let lambda: f64 = (0..rows).map(|r| x[r] * (0..rows).map(|c| gram[r * rows + c] * x[c]).sum::<f64>()).sum();
        expected.push(lambda.sqrt());
        w.extend(w_g);
    }
    let u = randn_vec(&mut rng, groups * rows);
    let sigma = sigma_after(&w, &u, groups, rows, cols, 100);
    assert_close_f64("uᵀWv vs sqrt(λ_max(WWᵀ))", &sigma, &expected, tol::F32_REDUCTION);
}

/// `max(‖x‖, 1e-12)` keeps a zero matrix or a zero u finite (zeros out), and tiny inputs follow the
/// guarded formula rather than being normalised to unit length.
#[test]
fn power_iteration_guard_keeps_zero_and_tiny_inputs_finite() {
    let mut rng = common::rng("power_iteration_guard_keeps_zero_and_tiny_inputs_finite");
    let (groups, rows, cols) = (2, 5, 8);
    let zeros_w = vec![0.0f32; groups * rows * cols];
    let u = randn_vec(&mut rng, groups * rows);
    let w = randn_vec(&mut rng, groups * rows * cols);
    for (what, w, u) in [
        ("zero W", zeros_w.clone(), u.clone()),
        ("zero u", w.clone(), vec![0.0; groups * rows]),
        ("both zero", zeros_w, vec![0.0; groups * rows]),
    ] {
        let step = ops::power_iteration(
            &Tensor::from_vec(w, &[groups, rows, cols], &Device::Cpu).unwrap(),
            &Tensor::from_vec(u, &[groups, rows], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let (u_new, v, sigma) = (step.u.to_vec().unwrap(), step.v.to_vec().unwrap(), step.sigma.to_vec().unwrap());
        assert!(u_new.iter().chain(&v).chain(&sigma).all(|&x| x == 0.0), "{what}: expected zeros, got u' {u_new:?}, v {v:?}, σ {sigma:?}");
    }
    // ‖Wᵀu‖ ≈ 1e-20·√(O·I) is far below the 1e-12 guard: v is not a unit vector, and the op must
    // agree with the guarded oracle.
    let tiny: Vec<f32> = w.iter().map(|&x| x * 1e-20).collect();
    check_step("W scaled by 1e-20", &tiny, &u, groups, rows, cols);
    // One group zero, the other ordinary: groups do not leak into each other.
    let mut mixed = w.clone();
    mixed[..rows * cols].fill(0.0);
    check_step("first group zero", &mixed, &u, groups, rows, cols);
}

#[test]
fn power_iteration_shape_errors_are_errors_not_panics() {
    let mut rng = common::rng("power_iteration_shape_errors_are_errors_not_panics");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let w = t(&[2, 5, 8]);
    for (what, result) in [
        ("w rank 2", ops::power_iteration(&t(&[5, 8]), &t(&[5]))),
        ("w rank 4", ops::power_iteration(&t(&[2, 5, 2, 4]), &t(&[2, 5]))),
        ("u length", ops::power_iteration(&w, &t(&[2, 8]))),
        ("u groups", ops::power_iteration(&w, &t(&[1, 5]))),
        ("u rank 1", ops::power_iteration(&w, &t(&[10]))),
        ("dtypes", ops::power_iteration(&w, &Tensor::from_vec_f64(vec![1.0; 10], &[2, 5]).unwrap())),
    ] {
        match result {
            Err(Error::Shape { op, msg }) => eprintln!("{what}: {op}: {msg}"),
            Err(e) => panic!("{what}: expected a shape error, got {e}"),
            Ok(_) => panic!("{what}: expected a shape error"),
        }
    }
}

/// One step on the GPU against the CPU for `w` `[G, O, I]`, `u` `[G, O]`, comparing u', v and σ.
fn check_cuda_step(dev: &Device, what: &str, w: Vec<f32>, u: Vec<f32>, (groups, rows, cols): (usize, usize, usize)) {
    let w_t = Tensor::from_vec(w, &[groups, rows, cols], &Device::Cpu).unwrap();
    let u_t = Tensor::from_vec(u, &[groups, rows], &Device::Cpu).unwrap();
    let expected = ops::power_iteration(&w_t, &u_t).unwrap();
    let got = ops::power_iteration(&w_t.to_device(dev).unwrap(), &u_t.to_device(dev).unwrap()).unwrap();
    assert_eq!(got.u.shape(), [groups, rows], "{what}: u' shape");
    assert_eq!(got.v.shape(), [groups, cols], "{what}: v shape");
    assert_eq!(got.sigma.shape(), [groups], "{what}: σ shape");
    let (got_u, got_v, got_sigma) = (got.u.to_vec().unwrap(), got.v.to_vec().unwrap(), got.sigma.to_vec().unwrap());
    assert!(got_u.iter().chain(&got_v).chain(&got_sigma).all(|x| x.is_finite()), "{what}: non-finite output");
    assert_close(&format!("{what}: v"), &got_v, &expected.v.to_vec().unwrap(), tol::F32_REDUCTION);
    assert_close(&format!("{what}: u'"), &got_u, &expected.u.to_vec().unwrap(), tol::F32_REDUCTION);
    // The kernel sums O products into σ in f32 (each may round to the subnormal grid), the CPU
    // rounds once.
    let expected_sigma = expected.sigma.to_vec_f64().unwrap();
    assert_sigma_close(what, &got_sigma.iter().map(|&x| x as f64).collect::<Vec<_>>(), &expected_sigma, tol::F32_REDUCTION, rows + 2);
}

/// The GPU step against the CPU (which sums in f64) on fresh random inputs, through both of the
/// launcher's paths (split launches for few groups, one fused kernel for many): scalars, tails of
/// the 512-thread block, of a 32-column tile and of a warp, G > 1, GS-WGAN's shapes (64 × 25 conv,
/// 1 × 4096 linear), the largest layer (256 × 6400) and empty dims (σ = 0). F32_REDUCTION: the kernels sum
/// up to O = 256 products per element of Wᵀu and up to I = 6400 per element of W v in f32 (strided
/// runs, then a shared-memory or shuffle tree), and the norms over up to 6400 squares; the relative
/// error of each stays near 1e-7·log(n), far below 1e-5, while a wrong index or a missing group
/// gives an error of order 1.
#[test]
fn power_iteration_cuda_matches_cpu() {
    on_cuda("power_iteration_cuda_matches_cpu", |dev| {
        let mut rng = common::rng("power_iteration_cuda_matches_cpu");
        for (groups, rows, cols) in [
            (1, 1, 1),
            (3, 7, 12),
            (2, 12, 5),
            (4, 64, 25),
            (1, 1, 4096),
            (3, 1, 4096),
            (2, 3, 1),
            (5, 33, 513),
            (1, 256, 6400),
            (2, 1000, 3),
            // Enough groups to fill the device (2 blocks per SM on an H100): the fused one-block-
            // per-group kernel rather than the three split launches the shapes above take.
            (300, 8, 17),
            (1000, 4, 9),
            (400, 64, 25),
            // Degenerate: v or u' is a sum over nothing (zeros), or nothing to launch.
            (2, 0, 3),
            (2, 3, 0),
            (0, 4, 5),
        ] {
            let w = randn_vec(&mut rng, groups * rows * cols);
            let u = randn_vec(&mut rng, groups * rows);
            check_cuda_step(dev, &format!("G={groups} {rows}x{cols}"), w, u, (groups, rows, cols));
        }
    });
}

/// The 1e-12 guard on the GPU: a zero W, a zero u and both give zeros (not NaN); W scaled by 1e-20
/// follows the guarded formula; one zero group beside an ordinary one does not leak. Compared with
/// the CPU as above (F32_REDUCTION; zeros must be exactly zero).
#[test]
fn power_iteration_cuda_guard_matches_cpu() {
    on_cuda("power_iteration_cuda_guard_matches_cpu", |dev| {
        let mut rng = common::rng("power_iteration_cuda_guard_matches_cpu");
        // The last case takes the fused kernel (many groups), the others the split launches.
        for (groups, rows, cols) in [(2, 5, 8), (1, 1, 4096), (3, 64, 25), (300, 5, 8)] {
            let (nw, nu) = (groups * rows * cols, groups * rows);
            let w = randn_vec(&mut rng, nw);
            let u = randn_vec(&mut rng, nu);
            let dims = (groups, rows, cols);
            for (what, w, u) in
                [("zero W", vec![0.0; nw], u.clone()), ("zero u", w.clone(), vec![0.0; nu]), ("both zero", vec![0.0; nw], vec![0.0; nu])]
            {
                let got = ops::power_iteration(
                    &Tensor::from_vec(w, &[groups, rows, cols], dev).unwrap(),
                    &Tensor::from_vec(u, &[groups, rows], dev).unwrap(),
                )
                .unwrap();
                let (got_u, got_v, got_sigma) = (got.u.to_vec().unwrap(), got.v.to_vec().unwrap(), got.sigma.to_vec().unwrap());
                assert!(
                    got_u.iter().chain(&got_v).chain(&got_sigma).all(|&x| x == 0.0),
                    "{what} {dims:?}: expected zeros, got u' {got_u:?}, v {got_v:?}, σ {got_sigma:?}"
                );
            }
            let tiny: Vec<f32> = w.iter().map(|&x| x * 1e-20).collect();
            check_cuda_step(dev, &format!("W scaled by 1e-20 {dims:?}"), tiny, u.clone(), dims);
            let mut mixed = w.clone();
            mixed[..rows * cols].fill(0.0);
            check_cuda_step(dev, &format!("first group zero {dims:?}"), mixed, u, dims);
        }
    });
}

/// `(dW − c·u vᵀ)/σ` in plain f64 loops: the oracle of `spectral_divide_backward`.
fn spectral_divide_oracle(
    dw: &[f64],
    c: &[f64],
    u: &[f64],
    v: &[f64],
    sigma: &[f64],
    (groups, rows, cols): (usize, usize, usize),
) -> Vec<f64> {
    let mut out = Vec::new();
    for g in 0..groups {
        for r in 0..rows {
            for k in 0..cols {
                out.push((dw[(g * rows + r) * cols + k] - c[g] * u[g * rows + r] * v[g * cols + k]) / sigma[g]);
            }
        }
    }
    out
}

/// The gradient of spectral norm's division, on the CPU (f32 and f64) against the oracle and on
/// the GPU against the CPU, with poisoned outputs, through the shapes the models use (a conv's
/// 64 × 25, a linear's 1 × 4096), G > 1, block tails, a single column and empty dims.
/// F32_ELEMENTWISE on the CPU's f32 (each element rounded once from f64); F32_ELEMENTWISE on the
/// GPU too: the kernel rounds c·u, the difference and the quotient (three roundings, ≤ 2e-7
/// relative each, up to cancellation in the difference, which the relative-norm comparison bounds).
#[test]
fn spectral_divide_backward_matches_the_oracle_on_every_backend() {
    let mut rng = common::rng("spectral_divide_backward_matches_the_oracle_on_every_backend");
    let shapes = [(1, 1, 1), (3, 7, 12), (4, 64, 25), (1, 1, 4096), (2, 33, 513), (5, 3, 1), (2, 0, 3), (0, 4, 5)];
    let mut cases = Vec::new();
    for dims @ (groups, rows, cols) in shapes {
        let dw = randn_vec(&mut rng, groups * rows * cols);
        let c = randn_vec(&mut rng, groups);
        let u = randn_vec(&mut rng, groups * rows);
        let v = randn_vec(&mut rng, groups * cols);
        let sigma: Vec<f32> = (0..groups).map(|_| rng.random_range(0.5f32..3.0)).collect();
        cases.push((dims, dw, c, u, v, sigma));
    }
    let tensors = |dims: (usize, usize, usize), parts: [&Vec<f32>; 5], device: &Device| -> Vec<Tensor> {
        let (g, r, k) = dims;
        let shapes: [&[usize]; 5] = [&[g, r, k], &[g], &[g, r], &[g, k], &[g]];
        parts.iter().zip(shapes).map(|(x, s)| Tensor::from_vec(x.to_vec(), s, device).unwrap()).collect()
    };
    for (dims, dw, c, u, v, sigma) in &cases {
        let f64s = [dw, c, u, v, sigma].map(|x| to_f64(x));
        let expected = spectral_divide_oracle(&f64s[0], &f64s[1], &f64s[2], &f64s[3], &f64s[4], *dims);
        let t = tensors(*dims, [dw, c, u, v, sigma], &Device::Cpu);
        let got = ops::spectral_divide_backward(&t[0], &t[1], &t[2], &t[3], &t[4]).unwrap();
        assert_eq!(got.shape(), t[0].shape(), "{dims:?}: shape");
        assert_close(
            &format!("cpu f32 {dims:?}"),
            &got.to_vec().unwrap(),
            &expected.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            tol::F32_ELEMENTWISE,
        );
        let t64: Vec<Tensor> = t.iter().map(|x| Tensor::from_vec_f64(x.to_vec_f64().unwrap(), x.shape()).unwrap()).collect();
        let got64 = ops::spectral_divide_backward(&t64[0], &t64[1], &t64[2], &t64[3], &t64[4]).unwrap();
        assert_close_f64(&format!("cpu f64 {dims:?}"), &got64.to_vec_f64().unwrap(), &expected, tol::F64_TIGHT);
    }
    on_cuda("spectral_divide_backward_matches_the_oracle_on_every_backend", |dev| {
        for (dims, dw, c, u, v, sigma) in &cases {
            let cpu = tensors(*dims, [dw, c, u, v, sigma], &Device::Cpu);
            let expected = ops::spectral_divide_backward(&cpu[0], &cpu[1], &cpu[2], &cpu[3], &cpu[4]).unwrap().to_vec().unwrap();
            let t = tensors(*dims, [dw, c, u, v, sigma], dev);
            let got = ops::spectral_divide_backward(&t[0], &t[1], &t[2], &t[3], &t[4]).unwrap();
            assert_eq!(got.shape(), t[0].shape(), "cuda {dims:?}: shape");
            assert_close(&format!("cuda {dims:?}"), &got.to_vec().unwrap(), &expected, tol::F32_ELEMENTWISE);
        }
    });
}

#[test]
fn spectral_divide_backward_shape_errors_are_errors_not_panics() {
    let mut rng = common::rng("spectral_divide_backward_shape_errors_are_errors_not_panics");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let (dw, c, u, v, sigma) = (t(&[2, 5, 8]), t(&[2]), t(&[2, 5]), t(&[2, 8]), t(&[2]));
    for (what, result) in [
        ("dW rank 2", ops::spectral_divide_backward(&t(&[10, 8]), &c, &u, &v, &sigma)),
        ("c length", ops::spectral_divide_backward(&dw, &t(&[3]), &u, &v, &sigma)),
        ("σ length", ops::spectral_divide_backward(&dw, &c, &u, &v, &t(&[1]))),
        ("u rows", ops::spectral_divide_backward(&dw, &c, &t(&[2, 8]), &v, &sigma)),
        ("v cols", ops::spectral_divide_backward(&dw, &c, &u, &t(&[2, 5]), &sigma)),
        ("dtypes", ops::spectral_divide_backward(&dw, &Tensor::from_vec_f64(vec![1.0; 2], &[2]).unwrap(), &u, &v, &sigma)),
    ] {
        match result {
            Err(Error::Shape { op, msg }) => eprintln!("{what}: {op}: {msg}"),
            Err(e) => panic!("{what}: expected a shape error, got {e}"),
            Ok(_) => panic!("{what}: expected a shape error"),
        }
    }
}

/// Pixel norm's forward (`y`, `inv`) and gradient in plain f64 loops over `[N, C, P]`.
fn pixel_norm_oracle(x: &[f64], dy: &[f64], (n, channels, plane): (usize, usize, usize), eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut inv_all, mut dx) = (vec![0.0; x.len()], Vec::new(), vec![0.0; x.len()]);
    for i in 0..n {
        for q in 0..plane {
            let at = |c: usize| (i * channels + c) * plane + q;
            let mean_sq = (0..channels).map(|c| x[at(c)] * x[at(c)]).sum::<f64>() / channels as f64;
            let inv = 1.0 / (mean_sq + eps).sqrt();
            let along: f64 = (0..channels).map(|c| x[at(c)] * dy[at(c)]).sum();
            for c in 0..channels {
                y[at(c)] = x[at(c)] * inv;
                dx[at(c)] = inv * dy[at(c)] - x[at(c)] * inv.powi(3) * along / channels as f64;
            }
            inv_all.push(inv);
        }
    }
    (y, inv_all, dx)
}

/// Pixel norm (`ops::pixel_norm` and `ops::pixel_norm_backward`) on the CPU (f32 and f64) against
/// the oracle, and on the GPU against the CPU with poisoned outputs: GS-WGAN's stem (C = 256 at 4×4)
/// and blocks, a single channel, a single position, odd sizes past a block, and no examples.
/// Tolerances: F32_REDUCTION for f32 (the kernels sum up to C = 256 products in f32; the CPU in
/// f64, rounding once), F64_TIGHT for f64. The single channel takes eps = 0.5: with a tiny eps its
/// gradient is the cancellation dy·inv·(1 − x²·inv²) ≈ dy·inv·eps/x², whose relative error after
/// `inv` is rounded to f32 has no bound.
#[test]
fn pixel_norm_matches_the_oracle_on_every_backend() {
    let mut rng = common::rng("pixel_norm_matches_the_oracle_on_every_backend");
    let shapes: [([usize; 5], f32); 6] = [
        ([1, 3, 256, 4, 4], 1e-8),
        ([2, 5, 64, 8, 8], 1e-8),
        ([1, 2, 1, 7, 7], 0.5),
        ([1, 4, 33, 1, 1], 1e-8),
        ([3, 1, 7, 13, 11], 1e-8),
        ([1, 0, 4, 2, 2], 1e-8),
    ];
    let mut cases = Vec::new();
    for (shape, eps) in shapes {
        let numel = shape.iter().product();
        cases.push((shape, eps, randn_vec(&mut rng, numel), randn_vec(&mut rng, numel)));
    }
    for &(ref shape, eps, ref x, ref dy) in &cases {
        let dims = (shape[0] * shape[1], shape[2], shape[3] * shape[4]);
        let (y_exp, inv_exp, dx_exp) = pixel_norm_oracle(&to_f64(x), &to_f64(dy), dims, f64::from(eps));
        let narrow = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let (x32, dy32) =
            (Tensor::from_vec(x.clone(), shape, &Device::Cpu).unwrap(), Tensor::from_vec(dy.clone(), shape, &Device::Cpu).unwrap());
        let (x64, dy64) = (Tensor::from_vec_f64(to_f64(x), shape).unwrap(), Tensor::from_vec_f64(to_f64(dy), shape).unwrap());
        let inv_shape = [shape[0], shape[1], 1, shape[3], shape[4]];
        let (y, inv) = ops::pixel_norm(&x32, eps).unwrap();
        assert_eq!((y.shape(), inv.shape()), (&shape[..], &inv_shape[..]), "{shape:?}: shapes");
        let dx = ops::pixel_norm_backward(&x32, &inv, &dy32).unwrap();
        assert_close(&format!("cpu f32 y {shape:?}"), &y.to_vec().unwrap(), &narrow(&y_exp), tol::F32_ELEMENTWISE);
        assert_close(&format!("cpu f32 inv {shape:?}"), &inv.to_vec().unwrap(), &narrow(&inv_exp), tol::F32_ELEMENTWISE);
        assert_close(&format!("cpu f32 dx {shape:?}"), &dx.to_vec().unwrap(), &narrow(&dx_exp), tol::F32_REDUCTION);
        let (y, inv) = ops::pixel_norm(&x64, eps).unwrap();
        let dx = ops::pixel_norm_backward(&x64, &inv, &dy64).unwrap();
        assert_close_f64(&format!("cpu f64 y {shape:?}"), &y.to_vec_f64().unwrap(), &y_exp, tol::F64_TIGHT);
        assert_close_f64(&format!("cpu f64 inv {shape:?}"), &inv.to_vec_f64().unwrap(), &inv_exp, tol::F64_TIGHT);
        assert_close_f64(&format!("cpu f64 dx {shape:?}"), &dx.to_vec_f64().unwrap(), &dx_exp, tol::F64_TIGHT);
    }
    on_cuda("pixel_norm_matches_the_oracle_on_every_backend", |dev| {
        for &(ref shape, eps, ref x, ref dy) in &cases {
            let (x_cpu, dy_cpu) =
                (Tensor::from_vec(x.clone(), shape, &Device::Cpu).unwrap(), Tensor::from_vec(dy.clone(), shape, &Device::Cpu).unwrap());
            let (y_exp, inv_exp) = ops::pixel_norm(&x_cpu, eps).unwrap();
            let dx_exp = ops::pixel_norm_backward(&x_cpu, &inv_exp, &dy_cpu).unwrap();
            let (x_dev, dy_dev) = (x_cpu.to_device(dev).unwrap(), dy_cpu.to_device(dev).unwrap());
            let (y, inv) = ops::pixel_norm(&x_dev, eps).unwrap();
            let dx = ops::pixel_norm_backward(&x_dev, &inv, &dy_dev).unwrap();
            assert_close(&format!("cuda y {shape:?}"), &y.to_vec().unwrap(), &y_exp.to_vec().unwrap(), tol::F32_REDUCTION);
            assert_close(&format!("cuda inv {shape:?}"), &inv.to_vec().unwrap(), &inv_exp.to_vec().unwrap(), tol::F32_REDUCTION);
            assert_close(&format!("cuda dx {shape:?}"), &dx.to_vec().unwrap(), &dx_exp.to_vec().unwrap(), tol::F32_REDUCTION);
        }
    });
}

#[test]
fn pixel_norm_errors_are_errors_not_panics() {
    let mut rng = common::rng("pixel_norm_errors_are_errors_not_panics");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let (x, dy, inv) = (t(&[2, 3, 4, 5, 5]), t(&[2, 3, 4, 5, 5]), t(&[2, 3, 1, 5, 5]));
    for (what, shape_error, result) in [
        ("x rank 4", true, ops::pixel_norm(&t(&[2, 4, 5, 5]), 1e-8).map(|_| ())),
        ("no channels", true, ops::pixel_norm(&t(&[2, 3, 0, 5, 5]), 1e-8).map(|_| ())),
        ("negative eps", false, ops::pixel_norm(&x, -1.0).map(|_| ())),
        ("NaN eps", false, ops::pixel_norm(&x, f32::NAN).map(|_| ())),
        ("dy shape", true, ops::pixel_norm_backward(&x, &inv, &t(&[2, 3, 4, 5, 4])).map(|_| ())),
        ("inv shape", true, ops::pixel_norm_backward(&x, &t(&[2, 3, 4, 5, 5]), &dy).map(|_| ())),
        ("x rank 3", true, ops::pixel_norm_backward(&t(&[6, 4, 25]), &inv, &dy).map(|_| ())),
    ] {
        match (result, shape_error) {
            (Err(Error::Shape { op, msg }), true) => eprintln!("{what}: {op}: {msg}"),
            (Err(Error::Invalid(msg)), false) => eprintln!("{what}: {msg}"),
            (Err(e), _) => panic!("{what}: unexpected error kind: {e}"),
            (Ok(()), _) => panic!("{what}: expected an error"),
        }
    }
}

/// Layers of mixed shapes for one batched call: GS-WGAN's critic (conv 64 × 25, 128 × 1600,
/// 256 × 3200 at base 64, linear 1 × 4096, embedding 10 × 4096, reduced here), odd tails, and
/// degenerate layers (no rows, no columns, no groups) between ordinary ones.
fn mixed_layers(rng: &mut impl Rng, groups: usize, count: usize) -> Vec<(Tensor, Tensor)> {
    let shapes = [(8, 25), (16, 200), (32, 400), (1, 512), (10, 512), (33, 513), (3, 1), (0, 7), (5, 0), (1, 1)];
    (0..count)
        .map(|l| {
            let (rows, cols) = shapes[l % shapes.len()];
            let g = if l == 7 { 0 } else { groups };
            (common::randn(rng, &[g, rows, cols]), common::randn(rng, &[g, rows]))
        })
        .collect()
}

/// A spectral norm's state updated in place: `power_iterations_in_place` returns, bit for bit, the
/// step the functional call gives, writes u' and v into the state too, and copies nothing when the
/// state is its storage's only holder; a tensor that shared the state's storage before (a tape's
/// saved u) keeps its old values. On the CPU and the GPU, both launch paths (few groups, many).
#[test]
fn in_place_power_iterations_update_the_state_and_return_the_same_step() {
    use dpgan::backend::census::{count_ops, COPY_ON_WRITE};
    let mut rng = common::rng("in_place_power_iterations_update_the_state_and_return_the_same_step");
    let cases: Vec<Vec<(Tensor, Tensor)>> = [(1, 5), (2, 20), (300, 5)].iter().map(|&(g, n)| mixed_layers(&mut rng, g, n)).collect();
    let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let check = |what: &str, layers: &[(Tensor, Tensor)], dev: &Device| {
        let layers: Vec<(Tensor, Tensor)> = layers.iter().map(|(w, u)| (w.to_device(dev).unwrap(), u.to_device(dev).unwrap())).collect();
        let pairs: Vec<(&Tensor, &Tensor)> = layers.iter().map(|(w, u)| (w, u)).collect();
        let expected = ops::power_iterations(&pairs).unwrap();
        // Each state: u's values in a storage of its own, v's shape.
        let mut states: Vec<(Tensor, Tensor)> = layers
            .iter()
            .map(|(w, u)| {
                let fresh = Tensor::from_vec(u.to_vec().unwrap(), u.shape(), dev).unwrap();
                (fresh, Tensor::zeros(&[w.shape()[0], w.shape()[2]], dev).unwrap())
            })
            .collect();
        let saved_u = states[0].0.clone();
        let before = bits(&saved_u);
        let (steps, census) = count_ops(|| {
            let mut io: Vec<(&Tensor, &mut Tensor, &mut Tensor)> =
                layers.iter().zip(states.iter_mut()).map(|((w, _), (u, v))| (w, u, v)).collect();
            ops::power_iterations_in_place(&mut io).unwrap()
        });
        assert_eq!(census.get(COPY_ON_WRITE), Some(&1), "{what}: only the shared first state is copied: {census:?}");
        assert_eq!(bits(&saved_u), before, "{what}: a tensor sharing the old state changed");
        for (l, ((step, want), (u, v))) in steps.iter().zip(&expected).zip(&states).enumerate() {
            for (name, a, b) in [
                ("u'", &step.u, &want.u),
                ("v", &step.v, &want.v),
                ("σ", &step.sigma, &want.sigma),
                ("u state", u, &want.u),
                ("v state", v, &want.v),
            ] {
                assert_eq!(bits(a), bits(b), "{what} layer {l} {name}");
            }
        }
    };
    for layers in &cases {
        check(&format!("cpu {} layers", layers.len()), layers, &Device::Cpu);
    }
    let (w, mut u, mut v) = (common::randn(&mut rng, &[2, 5, 8]), common::randn(&mut rng, &[2, 5]), common::randn(&mut rng, &[2, 5]));
    let err = ops::power_iterations_in_place(&mut [(&w, &mut u, &mut v)]).unwrap_err().to_string();
    assert!(err.contains("v [2, 5] must be [G, I]"), "{err}");
    on_cuda("in_place_power_iterations_update_the_state_and_return_the_same_step", |dev| {
        for layers in &cases {
            check(&format!("cuda {} layers", layers.len()), layers, dev);
        }
    });
}

/// A batched call gives each layer exactly what a call for that layer alone gives: on the CPU, and
/// on the GPU bit for bit (every block does its layer's work in the same order whatever else shares
/// the launch) and against the CPU (F32_REDUCTION, as above). Batches of 5 and 11 layers (a critic,
/// a ResNet generator), 20 (past the 16 a launch takes), few groups (the split launches) and many
/// (the fused kernel).
#[test]
fn batched_power_iterations_equal_one_call_per_layer() {
    let mut rng = common::rng("batched_power_iterations_equal_one_call_per_layer");
    let cases: Vec<(usize, Vec<(Tensor, Tensor)>)> =
        [(1, 5), (1, 11), (2, 20), (300, 5)].iter().map(|&(groups, count)| (groups, mixed_layers(&mut rng, groups, count))).collect();
    let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let check = |what: &str, layers: &[(Tensor, Tensor)]| {
        let pairs: Vec<(&Tensor, &Tensor)> = layers.iter().map(|(w, u)| (w, u)).collect();
        let batched = ops::power_iterations(&pairs).unwrap();
        assert_eq!(batched.len(), layers.len(), "{what}: one step per layer");
        for (l, ((w, u), step)) in layers.iter().zip(&batched).enumerate() {
            let alone = ops::power_iteration(w, u).unwrap();
            for (name, a, b) in [("u'", &step.u, &alone.u), ("v", &step.v, &alone.v), ("σ", &step.sigma, &alone.sigma)] {
                assert_eq!(a.shape(), b.shape(), "{what} layer {l} {name}: shape");
                assert_eq!(bits(a), bits(b), "{what} layer {l} {name}: batched against alone");
            }
        }
        batched
    };
    for (groups, layers) in &cases {
        check(&format!("cpu G={groups} × {} layers", layers.len()), layers);
    }
    on_cuda("batched_power_iterations_equal_one_call_per_layer", |dev| {
        for (groups, layers) in &cases {
            let on_dev: Vec<(Tensor, Tensor)> =
                layers.iter().map(|(w, u)| (w.to_device(dev).unwrap(), u.to_device(dev).unwrap())).collect();
            let what = format!("cuda G={groups} × {} layers", layers.len());
            let batched = check(&what, &on_dev);
            for (l, ((w, u), step)) in layers.iter().zip(&batched).enumerate() {
                let expected = ops::power_iteration(w, u).unwrap();
                let rows = w.shape()[1];
                assert_close(&format!("{what} layer {l} v"), &step.v.to_vec().unwrap(), &expected.v.to_vec().unwrap(), tol::F32_REDUCTION);
                assert_close(&format!("{what} layer {l} u'"), &step.u.to_vec().unwrap(), &expected.u.to_vec().unwrap(), tol::F32_REDUCTION);
                let got_sigma: Vec<f64> = step.sigma.to_vec().unwrap().iter().map(|&x| x as f64).collect();
                assert_sigma_close(
                    &format!("{what} layer {l}"),
                    &got_sigma,
                    &expected.sigma.to_vec_f64().unwrap(),
                    tol::F32_REDUCTION,
                    rows + 2,
                );
            }
        }
    });
}

#[test]
fn batched_power_iterations_check_every_layer() {
    let mut rng = common::rng("batched_power_iterations_check_every_layer");
    let mut t = |s: &[usize]| common::randn(&mut rng, s);
    let (w, u) = (t(&[2, 5, 8]), t(&[2, 5]));
    let bad_u = t(&[2, 8]);
    let err = ops::power_iterations(&[(&w, &u), (&w, &bad_u)]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(ops::power_iterations(&[]).unwrap().is_empty(), "no layers, no steps");
}
