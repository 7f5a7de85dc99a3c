//! Shared test helpers: `assert_close` with tolerance presets, seeded random inputs, and the
//! per-device switch (CUDA tests skip with a reason without a GPU, and fail under
//! `DPGAN_REQUIRE_GPU=1`).
#![allow(dead_code)]

pub mod cli;
pub mod key_scan;

use dpgan::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative-norm tolerances by how the result was computed.
pub mod tol {
    /// f32 elementwise maps.
    pub const F32_ELEMENTWISE: f64 = 1e-6;
    /// f32 reductions over up to a few thousand terms (GEMM, conv, sums).
    pub const F32_REDUCTION: f64 = 1e-5;
    /// f32 reductions over long axes or chained ops.
    pub const F32_LONG: f64 = 1e-4;
    /// TF32 / bf16 tensor-core paths.
    pub const TENSOR_CORE: f64 = 1e-2;
    /// f64 paths checked against an f64 oracle: rounding only, sums of a few thousand terms.
    pub const F64_TIGHT: f64 = 1e-12;
}

/// Asserts `‖actual − expected‖ / max(‖expected‖, tiny) ≤ tol`, reporting the worst element.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ ({} vs {})", actual.len(), expected.len());
    let mut diff2 = 0.0f64;
    let mut ref2 = 0.0f64;
    let mut worst = (0usize, 0.0f64);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(!a.is_nan() || e.is_nan(), "{what}: NaN at index {i} (expected {e})");
        let d = (a as f64 - e as f64).abs();
        diff2 += d * d;
        ref2 += (e as f64) * (e as f64);
        if d > worst.1 {
            worst = (i, d);
        }
    }
    let rel = diff2.sqrt() / ref2.sqrt().max(1e-30);
    assert!(
        rel <= tol || diff2 == 0.0,
        "{what}: relative norm error {rel:.3e} > {tol:.1e}; worst at index {}: got {}, expected {} ({} elements)",
        worst.0,
        actual[worst.0],
        expected[worst.0],
        actual.len()
    );
}

/// Same check for f64 values.
#[track_caller]
pub fn assert_close_f64(what: &str, actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let diff2: f64 = actual.iter().zip(expected).map(|(a, e)| (a - e) * (a - e)).sum();
    let ref2: f64 = expected.iter().map(|e| e * e).sum();
    let rel = diff2.sqrt() / ref2.sqrt().max(1e-300);
    let worst =
        actual.iter().zip(expected).enumerate().map(|(i, (a, e))| (i, (a - e).abs())).fold((0, 0.0), |w, x| if x.1 > w.1 { x } else { w });
    assert!(
        rel <= tol || diff2 == 0.0,
        "{what}: relative norm error {rel:.3e} > {tol:.1e}; worst at index {}: got {}, expected {}",
        worst.0,
        actual[worst.0],
        expected[worst.0]
    );
}

/// A fresh generator for a test; the seed is printed so that a failure can be replayed.
pub fn rng(test: &str) -> ChaCha8Rng {
    let seed: u64 = match std::env::var("DPGAN_TEST_SEED") {
        Ok(s) => s.parse().expect("DPGAN_TEST_SEED must be an integer"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
            now.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
        }
    };
    eprintln!("{test}: seed {seed} (replay with DPGAN_TEST_SEED={seed})");
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn randn_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

pub fn randn(rng: &mut impl Rng, shape: &[usize]) -> Tensor {
    Tensor::randn(shape, rng, &Device::Cpu).unwrap()
}

pub fn uniform(rng: &mut impl Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    Tensor::uniform(shape, lo, hi, rng, &Device::Cpu).unwrap()
}

/// The CUDA device for a GPU test, or `None` after printing why the test is skipped.
/// Under `DPGAN_REQUIRE_GPU=1` a missing device fails the test instead.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("DPGAN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: DPGAN_REQUIRE_GPU=1 but {e}");
            }
            eprintln!("{test}: skipped: {e}");
            None
        }
    }
}

/// Runs `body` on the CUDA device if there is one (see `cuda_or_skip`), with every fresh device
/// allocation poisoned with NaN so that an element a kernel forgets to write shows up.
pub fn on_cuda(test: &str, body: impl FnOnce(&Device)) {
    if let Some(dev) = cuda_or_skip(test) {
        dpgan::backend::cuda::set_poison_allocations(true);
        body(&dev);
    }
}

/// Exact sums from an oracle: each element's value and the sum of its terms' magnitudes.
#[derive(Clone, Debug)]
pub struct Sums {
    pub value: Vec<f64>,
    pub magnitude: Vec<f64>,
}

impl Sums {
    pub fn zeros(n: usize) -> Self {
        Sums { value: vec![0.0; n], magnitude: vec![0.0; n] }
    }
    pub fn add(&mut self, i: usize, term: f64) {
        self.value[i] += term;
        self.magnitude[i] += term.abs();
    }
}

/// `‖actual − expected‖ ≤ tol·‖Σ|terms|‖`: the relative-norm error measured against the magnitude of
/// the summed terms, which is what bounds floating-point rounding. A plain relative error would fail
/// on rounding alone whenever the terms happen to cancel (a single dot product close to 0).
#[track_caller]
pub fn assert_close_sums(what: &str, actual: &[f64], expected: &Sums, tol: f64) {
    assert_eq!(actual.len(), expected.value.len(), "{what}: lengths differ");
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let error = norm(&mut actual.iter().zip(&expected.value).map(|(a, e)| a - e));
    let scale = norm(&mut expected.magnitude.iter().copied());
    let (worst, _) =
        actual
            .iter()
            .zip(&expected.value)
            .enumerate()
            .fold((0, -1.0), |w, (i, (a, e))| if (a - e).abs() > w.1 { (i, (a - e).abs()) } else { w });
    assert!(
        error <= tol * scale || error == 0.0,
        "{what}: error norm {error:.3e} > {tol:.1e} × {scale:.3e} (norm of Σ|terms|); worst at index {worst}: got {}, expected {} ({} elements)",
        actual[worst],
        expected.value[worst],
        actual.len()
    );
}

/// Asserts that `result` is a shape error (not a panic, not another error), printing its message.
#[track_caller]
pub fn expect_shape_error(what: &str, result: dpgan::Result<Tensor>) {
    match result {
        Err(dpgan::Error::Shape { op, msg }) => eprintln!("{what}: {op}: {msg}"),
        Err(e) => panic!("{what}: expected a shape error, got {e}"),
        Ok(t) => panic!("{what}: expected a shape error, got a tensor {:?}", t.shape()),
    }
}

/// A host C++ compiler for the tests that compile kernel sources for the host (tests/host_cuda/),
/// or `None` after printing why the test is skipped.
fn host_cxx_or_skip(test: &str) -> Option<&'static str> {
    let found = ["c++", "g++", "clang++"]
        .into_iter()
        .find(|c| std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        eprintln!("{test}: skipped: no C++ compiler (c++, g++, clang++) on PATH");
    }
    found
}

/// The repository root holding `kernels/` and `tests/host_cuda/`: the build's own checkout, or the
/// working directory when a bundled test executable runs elsewhere (`.gpu/run-tests` runs from a
/// copy of the tree at another path).
fn source_root() -> Option<std::path::PathBuf> {
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [Some(built), std::env::current_dir().ok()].into_iter().flatten().find(|r| r.join("tests/host_cuda/common.cuh").is_file())
}

/// Compiles `main` (in tests/host_cuda/) against the kernel files `kernels` copied beside the host
/// stand-in for common.cuh, so that their `#include "common.cuh"` finds the stand-in. Returns the
/// executable and the directory that holds it, or `None` (after printing why the test is skipped)
/// without a C++ compiler or the sources.
pub fn build_host_kernel_program(test: &str, kernels: &[&str], main: &str) -> Option<(std::path::PathBuf, tempfile::TempDir)> {
    let compiler = host_cxx_or_skip(test)?;
    let Some(root) = source_root() else {
        eprintln!("{test}: skipped: kernels/ and tests/host_cuda/ not found (neither the build's checkout nor the working directory)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    // step_values.cuh: included by rng.cuh and optim.cuh.
    for k in kernels.iter().chain(&["step_values.cuh"]) {
        std::fs::copy(root.join("kernels").join(k), dir.path().join(k)).unwrap();
    }
    std::fs::copy(root.join("tests/host_cuda/common.cuh"), dir.path().join("common.cuh")).unwrap();
    let exe = dir.path().join("host_kernel");
    let out = std::process::Command::new(compiler)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-frounding-math", "-I"])
        .arg(dir.path())
        .arg(root.join("tests/host_cuda").join(main))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{compiler} failed on {kernels:?} + {main}:\n{}", String::from_utf8_lossy(&out.stderr));
    Some((exe, dir))
}

/// Runs a host kernel program (`build_host_kernel_program`) with `args`, `input` on its stdin, and
/// returns its stdout's lines read as hex bit patterns. `what` names the program in a failure.
pub fn run_host_kernel_program(what: &str, exe: &std::path::Path, args: &[&str], input: &str) -> Vec<u32> {
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "host {what} program failed ({args:?})");
    String::from_utf8(out.stdout).unwrap().lines().map(|h| u32::from_str_radix(h, 16).unwrap()).collect()
}

/// The two ways a host kernel program can pass a launch's per-step values: in the parameters, or
/// from memory as a step bound to a step block does (tests/host_cuda/step_values.h).
pub const VALUE_SOURCES: [&str; 2] = ["parameters", "memory"];

/// Asserts that two backends produced the same f32 values bit for bit (signed zeros included), a
/// NaN matching any NaN: for ops that only move values (or add them in the same order), where
/// anything but equality is a bug. Reports the first difference.
#[track_caller]
pub fn assert_identical(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ ({} vs {})", actual.len(), expected.len());
    let same = |a: f32, e: f32| a.to_bits() == e.to_bits() || (a.is_nan() && e.is_nan());
    if let Some(i) = actual.iter().zip(expected).position(|(&a, &e)| !same(a, e)) {
        let count = actual.iter().zip(expected).filter(|&(&a, &e)| !same(a, e)).count();
        panic!("{what}: {count} of {} elements differ; first at index {i}: got {:?}, expected {:?}", actual.len(), actual[i], expected[i]);
    }
}
