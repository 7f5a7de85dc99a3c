//! `ops::matmul` against a plain triple loop in f64: all four transpose combinations, G = 1 and
//! G > 1, odd sizes, empty edges (K = 0, M = 0, N = 0, G = 0), and shape errors; `ops::linear`
//! (A·Bᵀ with the bias in the epilogue) wherever the transposes are those of a linear layer.
mod common;

use common::{assert_close_sums, expect_shape_error, randn_vec, tol, Sums};
use dpgan::backend::ops;
use dpgan::tensor::{Device, Tensor};
use rand::Rng;

/// Sizes with tails: 1, odd primes-ish below and above the GEMM crate's register blocks.
const SIZES: [usize; 4] = [1, 7, 33, 130];

/// One grouped product `op(A[g]) · op(B[g])` with its stored operand shapes.
#[derive(Clone, Copy, Debug)]
struct Case {
    groups: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
}

impl Case {
    /// `A` is stored `[G, M, K]`, or `[G, K, M]` when transposed.
    fn a_shape(&self) -> [usize; 3] {
        if self.trans_a {
            [self.groups, self.k, self.m]
        } else {
            [self.groups, self.m, self.k]
        }
    }
    /// `B` is stored `[G, K, N]`, or `[G, N, K]` when transposed.
    fn b_shape(&self) -> [usize; 3] {
        if self.trans_b {
            [self.groups, self.n, self.k]
        } else {
            [self.groups, self.k, self.n]
        }
    }
}

/// `c[g,i,j] = Σ_p op(a)[g,i,p] · op(b)[g,p,j]`, accumulated in f64.
fn matmul_oracle(case: &Case, a: &[f32], b: &[f32]) -> Sums {
    let Case { groups, m, k, n, trans_a, trans_b } = *case;
    let mut c = Sums::zeros(groups * m * n);
    for g in 0..groups {
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let a_ip = if trans_a { a[(g * k + p) * m + i] } else { a[(g * m + i) * k + p] };
                    let b_pj = if trans_b { b[(g * n + j) * k + p] } else { b[(g * k + p) * n + j] };
                    c.add((g * m + i) * n + j, a_ip as f64 * b_pj as f64);
                }
            }
        }
    }
    c
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

/// For A·Bᵀ (a linear layer's transposes): `ops::linear` with a random bias `[G, N]` against the
/// oracle plus the bias, and, where `bitwise`, bit for bit against the product followed by the
/// broadcast add it replaces (one rounding of the same finished sum). Without effect for other
/// transposes.
fn check_linear(rng: &mut impl Rng, case: &Case, a: &Tensor, b: &Tensor, expected: &Sums, tolerance: f64, bitwise: bool) {
    if case.trans_a || !case.trans_b {
        return;
    }
    let (groups, m, n) = (case.groups, case.m, case.n);
    let values = randn_vec(rng, groups * n);
    let bias = match a.dtype() {
        dpgan::tensor::DType::F64 => Tensor::from_vec_f64(values.iter().map(|&x| x as f64).collect(), &[groups, n]).unwrap(),
        dpgan::tensor::DType::F32 => Tensor::from_vec(values.clone(), &[groups, n], &a.device()).unwrap(),
    };
    let mut with_bias = expected.clone();
    for e in 0..groups * m * n {
        with_bias.add(e, values[e / (m * n) * n + e % n] as f64);
    }
    let y = ops::linear(a, b, &bias).unwrap();
    assert_eq!(y.shape(), [groups, m, n], "{case:?}: linear shape");
    assert_close_sums(&format!("{case:?} linear {:?}", a.device()), &to_f64(&y), &with_bias, tolerance);
    if bitwise {
        let separate =
            ops::binary(dpgan::backend::BinaryOp::Add, &ops::matmul(a, b, false, true).unwrap(), &bias.reshape(&[groups, 1, n]).unwrap())
                .unwrap();
        let bits = |t: &Tensor| to_f64(t).iter().map(|v| v.to_bits()).collect::<Vec<u64>>();
        assert_eq!(bits(&y), bits(&separate), "{case:?}: linear against matmul + add on {:?}", a.device());
    }
}

/// Runs one case in f32 and in f64 on fresh inputs and compares both with the oracle.
fn check(rng: &mut impl Rng, case: Case) {
    let (a_shape, b_shape) = (case.a_shape(), case.b_shape());
    let a = randn_vec(rng, a_shape.iter().product());
    let b = randn_vec(rng, b_shape.iter().product());
    let expected = matmul_oracle(&case, &a, &b);
    let what = format!("{case:?}");

    // f32: sums of K ≤ 130 products, so F32_REDUCTION (f32 reductions up to a few thousand terms).
    let a32 = Tensor::from_vec(a.clone(), &a_shape, &Device::Cpu).unwrap();
    let b32 = Tensor::from_vec(b.clone(), &b_shape, &Device::Cpu).unwrap();
    let c32 = ops::matmul(&a32, &b32, case.trans_a, case.trans_b).unwrap();
    assert_eq!(c32.shape(), [case.groups, case.m, case.n], "{what}: output shape");
    assert_close_sums(&format!("{what} f32"), &to_f64(&c32), &expected, tol::F32_REDUCTION);
    check_linear(rng, &case, &a32, &b32, &expected, tol::F32_REDUCTION, true);

    let a64 = Tensor::from_vec_f64(a.iter().map(|&x| x as f64).collect(), &a_shape).unwrap();
    let b64 = Tensor::from_vec_f64(b.iter().map(|&x| x as f64).collect(), &b_shape).unwrap();
    let c64 = ops::matmul(&a64, &b64, case.trans_a, case.trans_b).unwrap();
    assert_eq!(c64.shape(), [case.groups, case.m, case.n], "{what}: f64 output shape");
    assert_close_sums(&format!("{what} f64"), &to_f64(&c64), &expected, tol::F64_TIGHT);
    check_linear(rng, &case, &a64, &b64, &expected, tol::F64_TIGHT, true);
}

const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

#[test]
fn matmul_matches_triple_loop_for_all_transposes_and_odd_sizes() {
    let mut rng = common::rng("matmul_matches_triple_loop_for_all_transposes_and_odd_sizes");
    for (trans_a, trans_b) in TRANSPOSES {
        for m in SIZES {
            for k in SIZES {
                for n in SIZES {
                    check(&mut rng, Case { groups: 1, m, k, n, trans_a, trans_b });
                }
            }
        }
    }
}

#[test]
fn matmul_groups_use_their_own_operands() {
    let mut rng = common::rng("matmul_groups_use_their_own_operands");
    for (trans_a, trans_b) in TRANSPOSES {
        for (groups, m, k, n) in [(3, 7, 33, 130), (2, 130, 7, 33), (5, 1, 130, 7), (4, 33, 1, 1), (2, 130, 130, 130)] {
            check(&mut rng, Case { groups, m, k, n, trans_a, trans_b });
        }
    }
}

#[test]
fn matmul_empty_edges_give_zeros_or_empty_outputs() {
    let mut rng = common::rng("matmul_empty_edges_give_zeros_or_empty_outputs");
    for (trans_a, trans_b) in TRANSPOSES {
        // K = 0: an empty sum, so C is all zeros of shape [G, M, N].
        for (groups, m, k, n) in [(1, 7, 0, 33), (3, 130, 0, 1), (2, 0, 7, 33), (2, 7, 33, 0), (0, 7, 33, 1), (1, 0, 0, 0)] {
            check(&mut rng, Case { groups, m, k, n, trans_a, trans_b });
        }
    }
    // K = 0 must write zeros, not leave whatever was there: every element is exactly 0.
    let a = Tensor::zeros(&[2, 5, 0], &Device::Cpu).unwrap();
    let b = Tensor::zeros(&[2, 0, 3], &Device::Cpu).unwrap();
    let c = ops::matmul(&a, &b, false, false).unwrap();
    assert_eq!(c.shape(), [2, 5, 3]);
    assert!(c.cpu_data().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn matmul_shape_errors_are_errors_not_panics() {
    let mut rng = common::rng("matmul_shape_errors_are_errors_not_panics");
    let t = |rng: &mut rand_chacha::ChaCha8Rng, s: &[usize]| common::randn(rng, s);
    // Inner dims differ, for every transpose combination.
    for (trans_a, trans_b) in TRANSPOSES {
        let a = t(&mut rng, if trans_a { &[1, 5, 3] } else { &[1, 3, 5] });
        let b = t(&mut rng, if trans_b { &[1, 2, 6] } else { &[1, 6, 2] });
        expect_shape_error(&format!("inner dims, trans {trans_a} {trans_b}"), ops::matmul(&a, &b, trans_a, trans_b));
    }
    // Group counts differ.
    let (a, b) = (t(&mut rng, &[2, 3, 4]), t(&mut rng, &[3, 4, 5]));
    expect_shape_error("group counts", ops::matmul(&a, &b, false, false));
    // Ranks other than 3.
    let (a2, b2) = (t(&mut rng, &[3, 4]), t(&mut rng, &[4, 5]));
    expect_shape_error("rank 2", ops::matmul(&a2, &b2, false, false));
    let (a4, b4) = (t(&mut rng, &[1, 1, 3, 4]), t(&mut rng, &[1, 1, 4, 5]));
    expect_shape_error("rank 4", ops::matmul(&a4, &b4, false, false));
    expect_shape_error("rank 3 with rank 2", ops::matmul(&t(&mut rng, &[1, 3, 4]), &b2, false, false));
    // f32 with f64 is never cast silently.
    let b64 = Tensor::from_vec_f64(vec![0.0; 20], &[1, 4, 5]).unwrap();
    expect_shape_error("dtypes", ops::matmul(&t(&mut rng, &[1, 3, 4]), &b64, false, false));
}

/// The backend's GEMM primitive follows BLAS: beta = 0 overwrites C (even NaN in it), also when
/// K = 0; beta = 1 accumulates.
#[test]
fn cpu_gemm_beta_zero_overwrites_even_nan() {
    use dpgan::backend::cpu::Real;
    let mut rng = common::rng("cpu_gemm_beta_zero_overwrites_even_nan");
    let (m, n) = (3, 5);
    for k in [0, 4] {
        let (a, b) = (randn_vec(&mut rng, m * k), randn_vec(&mut rng, k * n));
        let expected = matmul_oracle(&Case { groups: 1, m, k, n, trans_a: false, trans_b: false }, &a, &b);
        let mut c = vec![f32::NAN; m * n];
        <f32 as Real>::gemm(m, k, n, &a, false, &b, false, 0.0, &mut c);
        assert!(c.iter().all(|v| v.is_finite()), "k = {k}: beta = 0 kept a NaN: {c:?}");
        assert_close_sums(&format!("k = {k}, beta = 0"), &c.iter().map(|&v| v as f64).collect::<Vec<_>>(), &expected, tol::F32_REDUCTION);

        let c0 = randn_vec(&mut rng, m * n);
        let mut c = c0.clone();
        <f32 as Real>::gemm(m, k, n, &a, false, &b, false, 1.0, &mut c);
        let mut expected = expected;
        expected.value.iter_mut().zip(&c0).for_each(|(e, &c)| *e += c as f64);
        expected.magnitude.iter_mut().zip(&c0).for_each(|(e, &c)| *e += (c as f64).abs());
        assert_close_sums(&format!("k = {k}, beta = 1"), &c.iter().map(|&v| v as f64).collect::<Vec<_>>(), &expected, tol::F32_REDUCTION);
    }
}

/// Uploads a case's operands, multiplies them on `dev` and compares with the f64 oracle (the one the
/// CPU backend is tested against above), measured against Σ|terms| so that cancellation in a single
/// dot product does not fail on rounding alone.
fn check_cuda(rng: &mut impl Rng, dev: &Device, case: Case, tolerance: f64) {
    let (a_shape, b_shape) = (case.a_shape(), case.b_shape());
    let a = randn_vec(rng, a_shape.iter().product());
    let b = randn_vec(rng, b_shape.iter().product());
    let expected = matmul_oracle(&case, &a, &b);
    let a_dev = Tensor::from_vec(a, &a_shape, dev).unwrap();
    let b_dev = Tensor::from_vec(b, &b_shape, dev).unwrap();
    let c = ops::matmul(&a_dev, &b_dev, case.trans_a, case.trans_b).unwrap();
    assert_eq!(c.shape(), [case.groups, case.m, case.n], "{case:?}: output shape");
    assert!(c.device().same(dev), "{case:?}: the product stays on the device");
    assert_close_sums(&format!("{case:?} cuda"), &to_f64(&c), &expected, tolerance);
    // Bit for bit against matmul + add where K is too short to be split (a split adds the bias to
    // the first slice's partial sum, a different rounding order).
    check_linear(rng, &case, &a_dev, &b_dev, &expected, tolerance, case.k < 512);
}

/// Tails around the kernel's 64 × 64 tile and K step of 16.
const CUDA_SIZES: [usize; 5] = [1, 7, 33, 130, 257];

/// Every transpose combination at every size combination with tails, G = 1. Sums of K ≤ 257
/// products: F32_REDUCTION.
#[test]
fn matmul_cuda_matches_the_oracle_on_tails_and_all_transposes() {
    common::on_cuda("matmul_cuda_matches_the_oracle_on_tails_and_all_transposes", |dev| {
        let mut rng = common::rng("matmul_cuda_matches_the_oracle_on_tails_and_all_transposes");
        for (trans_a, trans_b) in TRANSPOSES {
            for m in CUDA_SIZES {
                for k in CUDA_SIZES {
                    for n in CUDA_SIZES {
                        check_cuda(&mut rng, dev, Case { groups: 1, m, k, n, trans_a, trans_b }, tol::F32_REDUCTION);
                    }
                }
            }
        }
    });
}

/// G > 1 (each group on its own operands), more groups than the grid's z limit of 65,535 (the
/// kernel grid-strides), and DP-CGAN's layer products at B = 600. K ≤ 794: F32_REDUCTION.
#[test]
fn matmul_cuda_matches_the_oracle_on_groups_and_dp_cgan_shapes() {
    common::on_cuda("matmul_cuda_matches_the_oracle_on_groups_and_dp_cgan_shapes", |dev| {
        let mut rng = common::rng("matmul_cuda_matches_the_oracle_on_groups_and_dp_cgan_shapes");
        for (trans_a, trans_b) in TRANSPOSES {
            for (groups, m, k, n) in
                [(3, 7, 33, 130), (2, 130, 7, 33), (5, 1, 257, 7), (4, 65, 17, 64), (2, 257, 130, 257), (1000, 3, 5, 2)]
            {
                check_cuda(&mut rng, dev, Case { groups, m, k, n, trans_a, trans_b }, tol::F32_REDUCTION);
            }
        }
        check_cuda(&mut rng, dev, Case { groups: 70_000, m: 1, k: 3, n: 2, trans_a: false, trans_b: true }, tol::F32_REDUCTION);
        // DP-CGAN (B = 600): forward x·W, input gradient dy·Wᵀ, weight gradient xᵀ·dy.
        for (m, k, n, trans_a, trans_b) in [
            (600, 110, 128, false, false),
            (600, 128, 784, false, false),
            (600, 784, 128, false, true),
            (794, 600, 128, true, false),
            (128, 600, 1, true, false),
            (600, 128, 1, false, false),
        ] {
            check_cuda(&mut rng, dev, Case { groups: 1, m, k, n, trans_a, trans_b }, tol::F32_REDUCTION);
        }
    });
}

/// Few tiles over a long K, where the launcher splits K across blocks and adds the slices in a
/// second pass. K up to 100,003: F32_LONG (f32 partial sums over long axes).
#[test]
fn matmul_cuda_matches_the_oracle_when_k_is_split() {
    common::on_cuda("matmul_cuda_matches_the_oracle_when_k_is_split", |dev| {
        let mut rng = common::rng("matmul_cuda_matches_the_oracle_when_k_is_split");
        for (trans_a, trans_b) in TRANSPOSES {
            for (groups, m, k, n) in [(1, 7, 5000, 9), (2, 64, 4111, 64), (1, 33, 100_003, 1), (3, 1, 1025, 1), (1, 130, 600, 33)] {
                check_cuda(&mut rng, dev, Case { groups, m, k, n, trans_a, trans_b }, tol::F32_LONG);
            }
        }
    });
}

/// K = 0 writes exact zeros over the NaN-poisoned output; M, N or G = 0 give empty outputs.
#[test]
fn matmul_cuda_empty_edges() {
    common::on_cuda("matmul_cuda_empty_edges", |dev| {
        let mut rng = common::rng("matmul_cuda_empty_edges");
        for (trans_a, trans_b) in TRANSPOSES {
            for (groups, m, k, n) in [(1, 7, 0, 33), (3, 130, 0, 1), (2, 0, 7, 33), (2, 7, 33, 0), (0, 7, 33, 1), (1, 0, 0, 0)] {
                check_cuda(&mut rng, dev, Case { groups, m, k, n, trans_a, trans_b }, tol::F32_REDUCTION);
            }
        }
        let a = Tensor::zeros(&[2, 65, 0], dev).unwrap();
        let b = Tensor::zeros(&[2, 0, 3], dev).unwrap();
        let c = ops::matmul(&a, &b, false, false).unwrap();
        assert_eq!(c.shape(), [2, 65, 3]);
        assert!(c.to_vec().unwrap().iter().all(|&v| v == 0.0), "K = 0 must overwrite the poisoned output with zeros");
    });
}

/// With TF32 allowed on this thread, products of at least a 64 × 64 tile run on tensor cores:
/// every transpose, tails, G > 1 and a split K. Inputs rounded to a 10-bit mantissa:
/// TENSOR_CORE.
#[test]
fn matmul_cuda_tf32_matches_the_oracle_within_tensor_core_tolerance() {
    common::on_cuda("matmul_cuda_tf32_matches_the_oracle_within_tensor_core_tolerance", |dev| {
        let mut rng = common::rng("matmul_cuda_tf32_matches_the_oracle_within_tensor_core_tolerance");
        dpgan::backend::cuda::set_allow_tf32(true);
        for (trans_a, trans_b) in TRANSPOSES {
            for (groups, m, k, n) in [(1, 64, 64, 64), (1, 130, 33, 257), (2, 257, 130, 65), (3, 600, 794, 128), (1, 64, 4111, 70)] {
                check_cuda(&mut rng, dev, Case { groups, m, k, n, trans_a, trans_b }, tol::TENSOR_CORE);
            }
        }
        dpgan::backend::cuda::set_allow_tf32(false);
    });
}

/// The cp.async pipeline, on 64 × 64 and on 128 × 128 tiles, feeds the tensor cores the same
/// rounded inputs as the register-staged loop and adds each element's products in the same order:
/// the same products bit for bit, for every transpose, with tails in M, N and K (zero-filled
/// copies), G > 1 and a split K (each slice its own pipeline; every build cuts K alike), on outputs
/// poisoned with NaN. Products below 128 in M or N take the 64 × 64 pipeline under `Wide`.
#[test]
fn matmul_cuda_tf32_pipelines_equal_the_register_staged_kernel_bit_for_bit() {
    use dpgan::backend::cuda::{Tf32Pipeline, Tf32PipelineScope, Tf32Scope};
    common::on_cuda("matmul_cuda_tf32_pipelines_equal_the_register_staged_kernel_bit_for_bit", |dev| {
        let mut rng = common::rng("matmul_cuda_tf32_pipelines_equal_the_register_staged_kernel_bit_for_bit");
        let _tf32 = Tf32Scope::new(true);
        for (trans_a, trans_b) in TRANSPOSES {
            for (groups, m, k, n) in
                [(1, 64, 32, 64), (1, 130, 33, 257), (2, 257, 130, 65), (3, 600, 794, 128), (1, 64, 4111, 70), (1, 300, 4111, 200)]
            {
                let a_shape = if trans_a { [groups, k, m] } else { [groups, m, k] };
                let b_shape = if trans_b { [groups, n, k] } else { [groups, k, n] };
                let a = common::uniform(&mut rng, &a_shape, -1.0, 1.0).to_device(dev).unwrap();
                let b = common::uniform(&mut rng, &b_shape, -1.0, 1.0).to_device(dev).unwrap();
                let product = |pipeline| {
                    let _scope = Tf32PipelineScope::new(pipeline);
                    let c = ops::matmul(&a, &b, trans_a, trans_b).unwrap().to_vec().unwrap();
                    c.into_iter().map(f32::to_bits).collect::<Vec<_>>()
                };
                let staged = product(Tf32Pipeline::RegisterStaged);
                assert!(staged.iter().all(|&v| f32::from_bits(v).is_finite()), "G{groups} {m}×{k}×{n} ta{trans_a} tb{trans_b}");
                for pipeline in [Tf32Pipeline::CpAsync, Tf32Pipeline::Wide] {
                    assert_eq!(product(pipeline), staged, "{pipeline:?}: G{groups} {m}×{k}×{n} ta{trans_a} tb{trans_b}");
                }
            }
        }
    });
}

/// TF32 is used exactly when allowed: 1 + 2⁻¹² is not a TF32 number (it rounds to 1), so each
/// of the K products is 1 on tensor cores and 1 + 2⁻¹² in f32.
#[test]
fn matmul_cuda_uses_tf32_only_when_allowed() {
    common::on_cuda("matmul_cuda_uses_tf32_only_when_allowed", |dev| {
        let (m, k, n) = (64, 32, 64);
        let x = 1.0 + 2f32.powi(-12);
        let a = Tensor::from_vec(vec![x; m * k], &[1, m, k], dev).unwrap();
        let b = Tensor::from_vec(vec![1.0; k * n], &[1, k, n], dev).unwrap();
        for allow in [false, true] {
            dpgan::backend::cuda::set_allow_tf32(allow);
            let c = ops::matmul(&a, &b, false, false).unwrap().to_vec().unwrap();
            let expected = if allow { k as f32 } else { k as f32 * x };
            assert!(c.iter().all(|&v| v == expected), "allow_tf32 = {allow}: expected every element {expected}, got {:?}", &c[..4]);
        }
        dpgan::backend::cuda::set_allow_tf32(false);
    });
}

/// Products of 2^28 multiply-adds or more run in row bands, one thread each (on a machine with
/// more than one core): each band's rows must be exactly what the product of those rows alone
/// gives (computed here one row at a time, below the threshold), for every transpose, in f32 and
/// f64, with a row count that does not divide evenly.
#[test]
fn large_matmul_in_row_bands_equals_row_by_row() {
    let mut rng = common::rng("large_matmul_in_row_bands_equals_row_by_row");
    let (m, k, n) = (2051, 384, 384); // 3.0e8 multiply-adds
    for (trans_a, trans_b) in TRANSPOSES {
        let case = Case { groups: 1, m, k, n, trans_a, trans_b };
        let (a, b) = (randn_vec(&mut rng, m * k), randn_vec(&mut rng, k * n));
        for f64_path in [false, true] {
            let tensor = |v: &[f32], shape: &[usize]| {
                if f64_path {
                    Tensor::from_vec_f64(v.iter().map(|&x| x as f64).collect(), shape).unwrap()
                } else {
                    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
                }
            };
            let b_t = tensor(&b, &case.b_shape());
            let whole = to_f64(&ops::matmul(&tensor(&a, &case.a_shape()), &b_t, trans_a, trans_b).unwrap());
            for i in (0..m).step_by(97).chain([m - 1]) {
                // Row i of op(a), stored so that op() of it is that row.
                let row: Vec<f32> = (0..k).map(|p| if trans_a { a[p * m + i] } else { a[i * k + p] }).collect();
                let row_shape = if trans_a { [1, k, 1] } else { [1, 1, k] };
                let alone = to_f64(&ops::matmul(&tensor(&row, &row_shape), &b_t, trans_a, trans_b).unwrap());
                let banded = &whole[i * n..(i + 1) * n];
                let same = banded.iter().zip(&alone).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{case:?} f64 = {f64_path}: row {i} differs from the same row computed alone");
            }
        }
    }
}

/// The tensor-core ceiling's kernel issues what it counts: every thread's sum is its four entries
/// of the fixed 16 × 8 product A·B, added rounds × chains times, exactly (small integers), for one
/// round and for the most rounds its sums stay exact at; on an output poisoned with NaN.
#[test]
fn mma_peak_cuda_sums_exactly_what_it_counts() {
    use dpgan::backend::cuda::{mma_peak, mma_peak_expected, MMA_PEAK_MAX_ROUNDS};
    common::on_cuda("mma_peak_cuda_sums_exactly_what_it_counts", |dev| {
        let Device::Cuda(cuda) = dev else { panic!("on_cuda gives a CUDA device") };
        for (blocks, rounds) in [(1, 1), (3, 7), (2, MMA_PEAK_MAX_ROUNDS)] {
            let (sums, flops) = mma_peak(cuda, blocks, rounds).unwrap();
            assert_eq!(sums.to_vec().unwrap(), mma_peak_expected(blocks * 256, rounds), "{blocks} blocks × {rounds} rounds");
            assert_eq!(flops, (blocks * 8 * rounds * 8 * 2048) as f64);
        }
        assert!(mma_peak(cuda, 1, MMA_PEAK_MAX_ROUNDS + 1).is_err(), "past the exact range");
        assert!(mma_peak(cuda, 0, 1).is_err(), "no blocks");
    });
}
