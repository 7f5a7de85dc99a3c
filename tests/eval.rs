//! Synthetic-set files (IDX and NPY, byte for byte what MNIST and numpy write), the four evaluation
//! classifiers on real MNIST (and the CNN's dropout and held-out split), the logistic regression against plain formulas, and `dpgan eval` run
//! as a user would. Real data comes from `$DPGAN_DATA/mnist` (else `../shared/data/mnist`).
mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_close, assert_close_f64, rng, tol};
use dpgan::autograd::Tape;
use dpgan::data::{scale_pixels, Dataset, PixelScale, Split};
use dpgan::eval::cnn::hold_out_per_class;
use dpgan::eval::features::one_hot_targets;
use dpgan::eval::logreg::objective;
use dpgan::eval::{evaluate, Classifier, Cnn, EvalConfig, EvalReport, Features, ImageSet, LeNet, LogReg, LogRegConfig, Metric, Mlp};
use dpgan::io::synthetic::{read_synthetic, write_synthetic, SyntheticFormat, IDX_IMAGES, IDX_LABELS, NPY_IMAGES, NPY_LABELS};
use dpgan::tensor::Tensor;
use dpgan::{Device, Error};
use flate2::read::GzDecoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn mnist_dir() -> PathBuf {
    let root = match std::env::var_os("DPGAN_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    };
    root.join("mnist")
}

/// The first `n` images of a real MNIST split: [0, 1] pixels and labels.
fn mnist(split: Split, n: usize) -> (Vec<f32>, Vec<u8>) {
    let dir = mnist_dir();
    let d = Dataset::load(&dir, split).unwrap_or_else(|e| panic!("loading MNIST {split} from {}: {e}", dir.display()));
    let n = n.min(d.len());
    (scale_pixels(&d.pixels()[..n * 784], PixelScale::Unit), d.labels()[..n].to_vec())
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn random_set(rng: &mut impl Rng, n: usize, h: usize, w: usize) -> (Vec<f32>, Vec<u8>) {
    let images = (0..n * h * w).map(|_| rng.random_range(0.0f32..=1.0)).collect();
    let labels = (0..n).map(|_| rng.random_range(0..10u8)).collect();
    (images, labels)
}

#[track_caller]
fn expect_file_error<T: std::fmt::Debug>(what: &str, result: dpgan::Result<T>, path_ends: &str, needle: &str) {
    match result {
        Err(Error::File { path, msg }) => {
            eprintln!("{what}: {}: {msg}", path.display());
            assert!(path.ends_with(path_ends), "{what}: error names {}, expected …/{path_ends}", path.display());
            assert!(msg.contains(needle), "{what}: message {msg:?} lacks {needle:?}");
        }
        other => panic!("{what}: expected a file error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic-set files

#[test]
fn idx_round_trips_with_mnist_headers() {
    let mut rng = rng("idx_round_trips_with_mnist_headers");
    let (images, labels) = random_set(&mut rng, 3, 28, 28);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample");
    write_synthetic(&out, &images, &labels, 28, 28, SyntheticFormat::Idx).unwrap();

    // MNIST's headers: magic 0x00000803, then count, rows, cols as big-endian u32; labels 0x00000801, count.
    let image_file = gunzip(&out.join(IDX_IMAGES));
    assert_eq!(image_file[..16], [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28]);
    assert_eq!(image_file.len(), 16 + 3 * 784);
    let label_file = gunzip(&out.join(IDX_LABELS));
    assert_eq!(label_file[..8], [0, 0, 8, 1, 0, 0, 0, 3]);
    assert_eq!(label_file[8..], labels[..]);
    // The real training file starts the same way, with its own count (60,000 = 0xEA60).
    let real = gunzip(&mnist_dir().join("train-images-idx3-ubyte.gz"));
    assert_eq!(real[..16], [0, 0, 8, 3, 0, 0, 0xEA, 0x60, 0, 0, 0, 28, 0, 0, 0, 28]);

    let back = read_synthetic(&out).unwrap();
    assert_eq!((back.count, back.height, back.width, back.format), (3, 28, 28, SyntheticFormat::Idx));
    assert_eq!(back.labels, labels);
    // Bytes are round(x·255), so reading back gives exactly that byte over 255.
    let expected: Vec<f32> = images.iter().map(|&x| (x * 255.0).round() / 255.0).collect();
    assert_eq!(back.images, expected);
    assert_eq!(ImageSet::of_synthetic(&back).unwrap().len(), 3);
    assert_eq!(image_file[16..], images.iter().map(|&x| (x * 255.0).round() as u8).collect::<Vec<_>>()[..]);
}

#[test]
fn npy_round_trips_bit_for_bit_with_numpy_headers() {
    let mut rng = rng("npy_round_trips_bit_for_bit_with_numpy_headers");
    let (images, labels) = random_set(&mut rng, 3, 28, 28);
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), &images, &labels, 28, 28, SyntheticFormat::Npy).unwrap();

    // What np.save writes (numpy ≥ 1.23): magic, version 1.0, header length 118 (little endian),
    // the dict, 20 spaces of growth room for the leading axis, padding to 128 bytes, a newline.
    let image_header: Vec<u8> =
        [&b"\x93NUMPY\x01\x00\x76\x00"[..], b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 28, 28), }", &[b' '; 53], b"\n"]
            .concat();
    let label_header: Vec<u8> =
        [&b"\x93NUMPY\x01\x00\x76\x00"[..], b"{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", &[b' '; 60], b"\n"].concat();
    assert_eq!((image_header.len(), label_header.len()), (128, 128));
    let image_file = fs::read(dir.path().join(NPY_IMAGES)).unwrap();
    assert_eq!(image_file[..128], image_header[..], "{:?}", String::from_utf8_lossy(&image_file[..128]));
    assert_eq!(image_file.len(), 128 + 3 * 784 * 4);
    assert_eq!(image_file[128..132], images[0].to_le_bytes());
    let label_file = fs::read(dir.path().join(NPY_LABELS)).unwrap();
    assert_eq!(label_file, [&label_header[..], &labels[..]].concat());

    let back = read_synthetic(dir.path()).unwrap();
    assert_eq!((back.count, back.height, back.width, back.format), (3, 28, 28, SyntheticFormat::Npy));
    assert_eq!(back.labels, labels);
    assert!(back.images.iter().zip(&images).all(|(a, b)| a.to_bits() == b.to_bits()), "float32 pixels must round-trip exactly");
}

#[test]
fn synthetic_files_fail_with_named_errors() {
    let mut rng = rng("synthetic_files_fail_with_named_errors");
    let (images, labels) = random_set(&mut rng, 4, 5, 6);
    let root = tempfile::tempdir().unwrap();

    expect_file_error("missing dir", read_synthetic(&root.path().join("absent")), "absent", "does not exist");
    expect_file_error("empty dir", read_synthetic(root.path()), "", "no synthetic data");

    // Writing refuses labels that are not classes and pixels outside [0, 1], and leaves no file.
    let bad_dir = root.path().join("bad");
    let mut bad_labels = labels.clone();
    bad_labels[2] = 10;
    expect_file_error(
        "label 10",
        write_synthetic(&bad_dir, &images, &bad_labels, 5, 6, SyntheticFormat::Npy),
        "bad",
        "label 10 at index 2",
    );
    let mut bad_pixels = images.clone();
    bad_pixels[7] = 1.5;
    expect_file_error("pixel 1.5", write_synthetic(&bad_dir, &bad_pixels, &labels, 5, 6, SyntheticFormat::Idx), "bad", "outside [0, 1]");
    assert!(!bad_dir.exists(), "a refused write must leave nothing behind");

    // A label file of another sample (other length), a label out of range, a corrupt gzip.
    let npy = root.path().join("npy");
    write_synthetic(&npy, &images, &labels, 5, 6, SyntheticFormat::Npy).unwrap();
    let short = root.path().join("short");
    write_synthetic(&short, &images[..3 * 30], &labels[..3], 5, 6, SyntheticFormat::Npy).unwrap();
    fs::copy(short.join(NPY_LABELS), npy.join(NPY_LABELS)).unwrap();
    expect_file_error("mismatched labels", read_synthetic(&npy), NPY_LABELS, "holds 3 labels");
    let mut label_bytes = fs::read(short.join(NPY_LABELS)).unwrap();
    *label_bytes.last_mut().unwrap() = 12;
    fs::write(short.join(NPY_LABELS), &label_bytes).unwrap();
    expect_file_error("label 12", read_synthetic(&short), NPY_LABELS, "label 12 at index 2 is out of range");

    let idx = root.path().join("idx");
    write_synthetic(&idx, &images, &labels, 5, 6, SyntheticFormat::Idx).unwrap();
    let gz = fs::read(idx.join(IDX_IMAGES)).unwrap();
    fs::write(idx.join(IDX_IMAGES), &gz[..gz.len() / 2]).unwrap();
    expect_file_error("truncated gzip", read_synthetic(&idx), IDX_IMAGES, "corrupt or truncated");

    // One layout per directory: writing NPY beside IDX is refused, both present cannot be read.
    expect_file_error("both layouts", write_synthetic(&idx, &images, &labels, 5, 6, SyntheticFormat::Npy), "idx", "IDX layout");
    fs::copy(npy.join(NPY_IMAGES), idx.join(NPY_IMAGES)).unwrap();
    expect_file_error("both present", read_synthetic(&idx), "idx", "both IDX");
    fs::remove_file(idx.join(IDX_LABELS)).unwrap();
    fs::remove_file(idx.join(IDX_IMAGES)).unwrap();
    expect_file_error("labels missing", read_synthetic(&idx), NPY_LABELS, "missing");
}

// ---------------------------------------------------------------------------------------------
// Logistic regression against plain formulas

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The per-class objective's value, gradient and Hessian, written out: f = (Σᵢ BCE + ½‖w‖²/C) / N
/// over parameters (w, b), with the bias last.
fn plain_problem(x: &[Vec<f64>], y: &[bool], theta: &[f64], c: f64) -> (f64, Vec<f64>, Vec<Vec<f64>>) {
    let (n, d) = (x.len() as f64, theta.len() - 1);
    let mut f = theta[..d].iter().map(|w| w * w).sum::<f64>() / (2.0 * c);
    let mut g: Vec<f64> = theta[..d].iter().map(|w| w / c).chain([0.0]).collect();
    let mut h = vec![vec![0.0; d + 1]; d + 1];
    (0..d).for_each(|j| h[j][j] = 1.0 / c);
    for (xi, &yi) in x.iter().zip(y) {
        let row: Vec<f64> = xi.iter().copied().chain([1.0]).collect();
        let z: f64 = row.iter().zip(theta).map(|(a, t)| a * t).sum();
        let p = sigmoid(z);
        f += if yi { -p.ln() } else { -(1.0 - p).ln() };
        for j in 0..=d {
            g[j] += (p - if yi { 1.0 } else { 0.0 }) * row[j];
            for k in 0..=d {
                h[j][k] += p * (1.0 - p) * row[j] * row[k];
            }
        }
    }
    (f / n, g.iter().map(|v| v / n).collect(), h.iter().map(|r| r.iter().map(|v| v / n).collect()).collect())
}

/// Solves `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap();
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            a[row].iter_mut().zip(&pivot_row).skip(col).for_each(|(v, p)| *v -= factor * p);
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        x[row] = (b[row] - (row + 1..n).map(|k| a[row][k] * x[k]).sum::<f64>()) / a[row][row];
    }
    x
}

#[test]
fn logreg_objective_gradient_and_optimum_match_plain_formulas() {
    let mut rng = rng("logreg_objective_gradient_and_optimum_match_plain_formulas");
    let (n, d, k, c) = (40, 3, 3, 1.0);
    let x: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
    // Random labels (every class present): no class is separable, so every optimum is finite.
    let labels: Vec<usize> = (0..n).map(|i| if i < k { i } else { rng.random_range(0..k) }).collect();
    let x_t = Tensor::from_vec_f64(x.concat(), &[1, n, d]).unwrap();
    let onehot: Vec<f64> = labels.iter().flat_map(|&l| (0..k).map(move |j| if j == l { 1.0 } else { 0.0 })).collect();
    let targets = Tensor::from_vec_f64(onehot, &[1, n, k]).unwrap();
    let y = |class: usize| labels.iter().map(|&l| l == class).collect::<Vec<_>>();

    // Objective and gradient at a random point: the sum of the per-class plain objectives.
    let w: Vec<f64> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f64> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (f, dw, db) = objective(
        &x_t,
        &targets,
        &Tensor::from_vec_f64(w.clone(), &[1, k, d]).unwrap(),
        &Tensor::from_vec_f64(b.clone(), &[1, k]).unwrap(),
        c,
    )
    .unwrap();
    let (mut f_plain, mut dw_plain, mut db_plain) = (0.0, Vec::new(), Vec::new());
    for class in 0..k {
        let theta: Vec<f64> = w[class * d..(class + 1) * d].iter().copied().chain([b[class]]).collect();
        let (fc, gc, _) = plain_problem(&x, &y(class), &theta, c);
        f_plain += fc;
        dw_plain.extend_from_slice(&gc[..d]);
        db_plain.push(gc[d]);
    }
    assert_close_f64("objective", &[f], &[f_plain], tol::F64_TIGHT);
    assert_close_f64("∂f/∂W", &dw.to_vec_f64().unwrap(), &dw_plain, tol::F64_TIGHT);
    assert_close_f64("∂f/∂b", &db.to_vec_f64().unwrap(), &db_plain, tol::F64_TIGHT);

    // The optimum: L-BFGS in f64 against Newton's method on each class's problem. A gradient of
    // 1e-8 is what f64 objective values can still resolve (f changes by about ‖g‖²/λ there).
    let config = LogRegConfig { tolerance: 1e-8, ..LogRegConfig::default() };
    let fitted = LogReg::fit_tensors(&x_t, &targets, &config).unwrap();
    assert!(fitted.convergence.converged, "{:?}", fitted.convergence);
    let (w_fit, b_fit) = (fitted.weight.to_vec_f64().unwrap(), fitted.bias.to_vec_f64().unwrap());
    for class in 0..k {
        let mut optimum = vec![0.0; d + 1];
        for _ in 0..50 {
            let (_, g, h) = plain_problem(&x, &y(class), &optimum, c);
            let step = solve(h, g);
            optimum.iter_mut().zip(&step).for_each(|(t, s)| *t -= s);
        }
        let (_, g, h) = plain_problem(&x, &y(class), &optimum, c);
        assert!(g.iter().all(|v| v.abs() < 1e-13), "Newton did not converge: {g:?}");
        // Strong convexity: ‖θ − θ*‖ ≤ ‖∇f(θ)‖ / λ_min(H). λ_min by power iteration on H⁻¹; the
        // 10% allows for H changing along the (1e-7 short) segment from θ* to θ.
        let mut v = vec![1.0; d + 1];
        let mut inverse_norm = 0.0;
        for _ in 0..200 {
            let u = solve(h.clone(), v.clone());
            inverse_norm = u.iter().map(|a| a * a).sum::<f64>().sqrt();
            v = u.iter().map(|a| a / inverse_norm).collect();
        }
        let theta: Vec<f64> = w_fit[class * d..(class + 1) * d].iter().copied().chain([b_fit[class]]).collect();
        let (_, g_fit, _) = plain_problem(&x, &y(class), &theta, c);
        let bound = 1.1 * g_fit.iter().map(|a| a * a).sum::<f64>().sqrt() * inverse_norm;
        let distance = theta.iter().zip(&optimum).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        assert!(distance <= bound, "class {class}: ‖θ − θ*‖ = {distance:.3e} > {bound:.3e}; θ = {theta:?}, θ* = {optimum:?}");
        assert!(bound < 1e-6, "class {class}: the bound {bound:.3e} is too loose to check anything");
    }
}

#[test]
fn metric_gives_mean_and_sample_sd() {
    let m = Metric::over(vec![0.8, 0.9, 1.0]);
    assert!((m.mean - 0.9).abs() < 1e-15 && (m.sd - 0.1).abs() < 1e-15, "{m:?}");
    assert_eq!(Metric::over(vec![0.7]).sd, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Classifiers on real MNIST

/// Trains on the first `n_train` training images and tests on the first `n_test` test images.
fn evaluate_mnist(classifier: Classifier, n_train: usize, n_test: usize, config: &EvalConfig) -> EvalReport {
    let (train_x, train_y) = mnist(Split::Train, n_train);
    let (test_x, test_y) = mnist(Split::Test, n_test);
    let train = ImageSet::new(&train_x, &train_y, 28, 28, "train").unwrap();
    let test = ImageSet::new(&test_x, &test_y, 28, 28, "test").unwrap();
    let report = evaluate(&train, &test, classifier, config, &Device::Cpu).unwrap();
    eprintln!(
        "{classifier}: accuracy {:?}, macro-F1 {:.4}, AUROC {:.4}, per class {:?}, solver {:?}",
        report.accuracy.runs, report.macro_f1.mean, report.auroc_micro.mean, report.per_class_auroc, report.runs[0].solver
    );
    report
}

#[test]
fn logreg_learns_mnist() {
    let report = evaluate_mnist(Classifier::Logreg, 3000, 2000, &EvalConfig::default());
    let solver = report.runs[0].solver.expect("logreg reports its solver");
    assert!(solver.converged, "{solver:?}");
    // Chance is 0.1 accuracy and 0.5 AUROC. A linear model on 3,000 MNIST digits scores about 0.87
    // (scikit-learn's figure for this size); 0.8 / 0.95 leaves room for the subset, not for a bug.
    assert!(report.accuracy.mean > 0.8, "accuracy {}", report.accuracy.mean);
    assert!(report.macro_f1.mean > 0.78, "macro-F1 {}", report.macro_f1.mean);
    assert!(report.auroc_micro.mean > 0.95, "AUROC {}", report.auroc_micro.mean);
    assert!(report.per_class_auroc.iter().all(|&a| a > 0.9), "{:?}", report.per_class_auroc);
}

#[test]
fn mlp_learns_mnist_in_a_few_epochs_and_averages_its_runs() {
    let config = EvalConfig { seed: 7, repeats: 2, epochs: Some(3) };
    let report = evaluate_mnist(Classifier::Mlp, 3000, 2000, &config);
    assert_eq!((report.seeds.as_slice(), report.epochs), (&[7, 8][..], Some(3)));
    let runs = &report.accuracy.runs;
    assert_ne!(runs[0], runs[1], "different seeds must train different networks");
    assert!((report.accuracy.sd - (runs[0] - runs[1]).abs() / 2f64.sqrt()).abs() < 1e-12);
    // 45 Adam steps already give a usable classifier (these seeds reach 0.81-0.82 accuracy and
    // 0.979 AUROC); thresholds are far above chance (0.1 / 0.5) with room for other BLAS orders.
    assert!(runs.iter().all(|&a| a > 0.75), "accuracy {runs:?}");
    assert!(report.auroc_micro.mean > 0.96, "AUROC {}", report.auroc_micro.mean);
}

#[test]
fn lenet_beats_chance_after_two_short_epochs() {
    let config = EvalConfig { seed: 1, repeats: 1, epochs: Some(2) };
    let report = evaluate_mnist(Classifier::Lenet, 3000, 1000, &config);
    // 16 SGD steps on 1,000 digits: far from LeNet's 99%, but chance is 0.1 / 0.5.
    assert!(report.accuracy.mean > 0.5, "accuracy {}", report.accuracy.mean);
    assert!(report.auroc_micro.mean > 0.85, "AUROC {}", report.auroc_micro.mean);
}

#[test]
fn cnn_has_the_recipes_layers() {
    let cnn = Cnn::init(&mut ChaCha8Rng::seed_from_u64(0), &Device::Cpu).unwrap();
    let shapes: Vec<&[usize]> = cnn.params.iter().map(Tensor::shape).collect();
    let expected: [&[usize]; 8] =
        [&[1, 32, 1, 3, 3], &[1, 32], &[1, 64, 32, 3, 3], &[1, 64], &[1, 128, 9216], &[1, 128], &[1, 10, 128], &[1, 10]];
    assert_eq!(shapes, expected);
    // docs/algorithms.md §4: PyTorch's MNIST example network.
    assert_eq!(cnn.parameter_count(), 1_199_882);
}

/// `sum(w ⊙ dropout(x))` in f64 with the mask drawn from `seed`.
fn dropped_sum(x: &[f64], w: &[f64], p: f32, seed: u64) -> (f64, Vec<f64>, Vec<f64>) {
    let tape = Tape::new();
    let x = Tensor::from_vec_f64(x.to_vec(), &[1, 3, x.len() / 3]).unwrap();
    let w = Tensor::from_vec_f64(w.to_vec(), x.shape()).unwrap();
    tape.watch(&x);
    let y = tape.dropout(&x, p, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
    let loss = tape.sum_all(&tape.mul(&y, &w).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    (loss.to_vec_f64().unwrap()[0], y.to_vec_f64().unwrap(), grads.of(&x).unwrap().to_vec_f64().unwrap())
}

#[test]
fn dropout_keeps_a_seeded_share_scaled_and_its_gradient_matches_finite_differences() {
    let mut rng = rng("dropout");
    let n = 60;
    let x: Vec<f64> = (0..n).map(|_| rng.random_range(0.5..2.0)).collect();
    let w: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (_, y, grad) = dropped_sum(&x, &w, 0.5, 3);
    // Every output is 0 or 2x, and the same seed draws the same mask.
    let mask: Vec<f64> = y.iter().zip(&x).map(|(y, x)| y / x).collect();
    assert!(mask.iter().all(|&m| m == 0.0 || (m - 2.0).abs() < 1e-15), "{mask:?}");
    assert!(mask.contains(&0.0) && mask.contains(&2.0), "{mask:?}");
    assert_eq!(dropped_sum(&x, &w, 0.5, 3).1, y);
    assert_ne!(dropped_sum(&x, &w, 0.5, 4).1, y, "another seed, another mask");
    // Central differences, the mask held fixed by its seed.
    let h = 1e-6;
    let numeric: Vec<f64> = (0..n)
        .map(|i| {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += h;
            minus[i] -= h;
            (dropped_sum(&plus, &w, 0.5, 3).0 - dropped_sum(&minus, &w, 0.5, 3).0) / (2.0 * h)
        })
        .collect();
    assert_close_f64("∂/∂x of sum(w ⊙ dropout(x))", &grad, &numeric, 1e-8);
    let masked: Vec<f64> = mask.iter().zip(&w).map(|(m, w)| m * w).collect();
    assert_close_f64("gradient is w ⊙ mask", &grad, &masked, tol::F64_TIGHT);

    // The share kept is 1 − p: 100,000 draws put its sd at 0.0014, so 0.01 catches a wrong p.
    let tape = Tape::new();
    let ones = Tensor::full(&[1, 100_000], 1.0, &Device::Cpu).unwrap();
    let kept = tape.dropout(&ones, 0.25, &mut ChaCha8Rng::seed_from_u64(1)).unwrap().to_vec().unwrap();
    let share = kept.iter().filter(|&&v| v != 0.0).count() as f64 / kept.len() as f64;
    assert!((share - 0.75).abs() < 0.01, "kept {share}");
    assert!(kept.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    assert_eq!(tape.dropout(&ones, 0.0, &mut ChaCha8Rng::seed_from_u64(1)).unwrap().to_vec().unwrap(), vec![1.0; 100_000]);
    assert!(tape.dropout(&ones, 1.0, &mut ChaCha8Rng::seed_from_u64(1)).is_err());
}

#[test]
fn cnn_holds_out_the_last_share_of_every_class() {
    // Class by class, as `dpgan sample` writes: 12 of each, 120 in all; holding out 10 takes one each.
    let labels: Vec<u8> = (0..10u8).flat_map(|c| [c; 12]).collect();
    let (train, held) = hold_out_per_class(&labels, 10);
    assert_eq!(held, (0..10).map(|c| 12 * c + 11).collect::<Vec<_>>());
    assert_eq!(train.len(), 110);
    assert!(train.iter().all(|r| !held.contains(r)));
    // Uneven classes keep their shares: 20 of class 0 and 4 of class 1, holding out 6 → 5 and 1.
    let labels: Vec<u8> = [vec![0; 20], vec![1; 4]].concat();
    let (_, held) = hold_out_per_class(&labels, 6);
    assert_eq!(held, vec![15, 16, 17, 18, 19, 23]);
}

#[test]
fn cnn_learns_a_small_real_subset_and_chooses_its_epoch_on_held_out_training_images() {
    let config = EvalConfig { seed: 2, repeats: 1, epochs: Some(2) };
    let report = evaluate_mnist(Classifier::Cnn, 1200, 1000, &config);
    let choice = report.runs[0].epoch_choice.expect("the CNN reports the epoch it kept");
    eprintln!("CNN epoch choice {choice:?}");
    // 1,200 digits hold out 100 (1/12), 10 of each of these classes' shares, rounded down.
    assert!((90..=100).contains(&choice.held_out) && (1..=2).contains(&choice.epoch), "{choice:?}");
    // 34 Adam steps on 1,100 digits: far from the CNN's 99%, but chance is 0.1 / 0.5.
    assert!(report.accuracy.mean > 0.7, "accuracy {}", report.accuracy.mean);
    assert!(report.auroc_micro.mean > 0.9, "AUROC {}", report.auroc_micro.mean);
    assert!(choice.held_out_accuracy > 0.6, "{choice:?}");
    // Too few images to hold any out: refused, not trained unchecked.
    let (x, y) = mnist(Split::Train, 11);
    let set = ImageSet::new(&x, &y, 28, 28, "tiny").unwrap();
    let err = evaluate(&set, &set, Classifier::Cnn, &config, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("too few"), "{err}");
}

#[test]
fn evaluate_rejects_what_it_cannot_use() {
    let (x, y) = mnist(Split::Test, 20);
    let set = ImageSet::new(&x, &y, 28, 28, "set").unwrap();
    let epochs_for_logreg = EvalConfig { epochs: Some(3), ..EvalConfig::default() };
    let err = evaluate(&set, &set, Classifier::Logreg, &epochs_for_logreg, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("logreg runs L-BFGS"), "{err}");
    let small = ImageSet::new(&x[..20 * 14 * 14], &y, 14, 14, "small").unwrap();
    let err = evaluate(&small, &set, Classifier::Mlp, &EvalConfig::default(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("14×14"), "{err}");
    let mut bad = y.clone();
    bad[3] = 11;
    let err = ImageSet::new(&x, &bad, 28, 28, "synthetic set").unwrap_err();
    assert!(err.to_string().contains("label 11 at index 3 is out of range"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The command

fn dpgan(args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_dpgan");
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

#[test]
fn eval_command_reports_json_for_a_synthetic_set() {
    // Real digits written as a "synthetic" IDX set: what `dpgan sample` would leave.
    let (images, labels) = mnist(Split::Train, 1000);
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), &images, &labels, 28, 28, SyntheticFormat::Idx).unwrap();
    let data = mnist_dir();
    let args = ["eval", "--synthetic", dir.path().to_str().unwrap(), "--data", data.to_str().unwrap(), "--classifier", "logreg"];
    let out = dpgan(&[&args[..], &["--device", "cpu", "--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpgan eval failed: {stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"));
    assert_eq!((v["classifier"].as_str(), v["repeats"].as_u64(), v["train_source"].as_str()), (Some("logreg"), Some(1), Some("synthetic")));
    assert_eq!((v["test_size"].as_u64(), v["train_size"].as_u64()), (Some(10_000), Some(1000)));
    assert_eq!(v["synthetic_dir"].as_str(), dir.path().to_str());
    let auroc = v["auroc_micro"]["mean"].as_f64().unwrap();
    let accuracy = v["accuracy"]["runs"][0].as_f64().unwrap();
    eprintln!("logreg on 1,000 real digits: accuracy {accuracy}, AUROC {auroc}, solver {}", v["runs"][0]["solver"]);
    // 1,000 real digits still give a clearly useful linear model (about 0.85 accuracy).
    assert!(auroc > 0.95 && accuracy > 0.75, "AUROC {auroc}, accuracy {accuracy}");
    assert_eq!(v["accuracy"]["sd"].as_f64(), Some(0.0));
    assert_eq!(v["per_class_auroc"].as_array().map(Vec::len), Some(10));
    assert!(v["macro_f1"]["mean"].as_f64().unwrap() > 0.7);

    // The table says the runs are averaged.
    let out = dpgan(&[&args[..], &["--device", "cpu"]].concat());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("never the best picked") && table.contains("AUROC (micro)"), "{table}");
}

#[test]
fn eval_command_names_what_is_wrong() {
    let data = mnist_dir();
    let data = data.to_str().unwrap();
    let missing = dpgan(&["eval", "--synthetic", "/nonexistent/sample", "--data", data, "--classifier", "mlp", "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("/nonexistent/sample") && stderr.contains("does not exist"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = mnist(Split::Train, 10);
    write_synthetic(dir.path(), &images, &labels, 28, 28, SyntheticFormat::Npy).unwrap();
    let mut label_file = fs::read(dir.path().join(NPY_LABELS)).unwrap();
    let at = label_file.len() - 10 + 4;
    label_file[at] = 10;
    fs::write(dir.path().join(NPY_LABELS), label_file).unwrap();
    let bad = dpgan(&["eval", "--synthetic", dir.path().to_str().unwrap(), "--data", data, "--classifier", "logreg", "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains(NPY_LABELS) && stderr.contains("label 10 at index 4 is out of range"), "{stderr}");

    let both = dpgan(&["eval", "--synthetic", "x", "--real", "--classifier", "mlp"]);
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    let device = dpgan(&["eval", "--real", "--data", data, "--classifier", "mlp", "--device", "tpu"]);
    assert!(String::from_utf8_lossy(&device.stderr).contains("--device must be cpu, cuda or cuda:N"));
}

#[test]
fn eval_command_real_reference_row() {
    // A small data directory: 1,000 real training digits beside the real test files.
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = mnist(Split::Train, 1000);
    write_synthetic(dir.path(), &images, &labels, 28, 28, SyntheticFormat::Idx).unwrap();
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        fs::copy(mnist_dir().join(name), dir.path().join(name)).unwrap();
    }
    let out = dpgan(&[
        "eval",
        "--real",
        "--data",
        dir.path().to_str().unwrap(),
        "--classifier",
        "mlp",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["train_source"].as_str(), v["synthetic_dir"].as_str(), v["train_size"].as_u64()), (Some("real"), None, Some(1000)));
    assert!(v["auroc_micro"]["mean"].as_f64().unwrap() > 0.9, "{v}");
}

// ---------------------------------------------------------------------------------------------
// The same code on CUDA (skipped with a reason without a GPU; fails under DPGAN_REQUIRE_GPU=1)

/// Features of the first `n` real test digits in both of the classifiers' scalings.
fn digits(n: usize) -> (Features, Features, Vec<u8>) {
    let (x, y) = mnist(Split::Test, n);
    let set = ImageSet::new(&x, &y, 28, 28, "digits").unwrap();
    (Features::symmetric(&set), Features::normalised(&set), y)
}

#[test]
fn logreg_objective_on_cuda_matches_the_cpu() {
    common::on_cuda("logreg_objective_on_cuda_matches_the_cpu", |gpu| {
        let mut rng = rng("logreg_objective_on_cuda_matches_the_cpu");
        let (x, _, y) = digits(1000);
        let w = common::randn_vec(&mut rng, 10 * 784).iter().map(|v| 0.01 * v).collect::<Vec<f32>>();
        let b = common::randn_vec(&mut rng, 10);
        let all: Vec<usize> = (0..x.rows).collect();
        let on = |device: &Device| {
            let inputs = x.gather(&all, &[1, x.rows, 784], device).unwrap();
            let targets = one_hot_targets(&y, &all, device).unwrap();
            let w = Tensor::from_vec(w.clone(), &[1, 10, 784], device).unwrap();
            let b = Tensor::from_vec(b.clone(), &[1, 10], device).unwrap();
            let (f, dw, db) = objective(&inputs, &targets, &w, &b, 1.0).unwrap();
            (f as f32, dw.to_vec().unwrap(), db.to_vec().unwrap())
        };
        let (cpu, cuda) = (on(&Device::Cpu), on(gpu));
        // Sums over 1,000 rows × 784 inputs: long f32 reductions on both sides.
        assert_close("objective", &[cuda.0], &[cpu.0], tol::F32_LONG);
        assert_close("∂f/∂W", &cuda.1, &cpu.1, tol::F32_LONG);
        assert_close("∂f/∂b", &cuda.2, &cpu.2, tol::F32_LONG);
    });
}

#[test]
fn mlp_lenet_and_cnn_scores_on_cuda_match_the_cpu() {
    common::on_cuda("mlp_lenet_and_cnn_scores_on_cuda_match_the_cpu", |gpu| {
        let (symmetric, normalised, _) = digits(300);
        // The same initialisation on both devices (drawn on the host from the same seed).
        let mlp = |device: &Device| Mlp::init(784, 100, &mut ChaCha8Rng::seed_from_u64(5), device).unwrap().scores(&symmetric).unwrap();
        let lenet = |device: &Device| LeNet::init(&mut ChaCha8Rng::seed_from_u64(6), device).unwrap().scores(&normalised).unwrap();
        let cnn = |device: &Device| Cnn::init(&mut ChaCha8Rng::seed_from_u64(7), device).unwrap().scores(&normalised).unwrap();
        let as_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        assert_close("MLP softmax", &as_f32(mlp(gpu)), &as_f32(mlp(&Device::Cpu)), tol::F32_LONG);
        assert_close("LeNet softmax", &as_f32(lenet(gpu)), &as_f32(lenet(&Device::Cpu)), tol::F32_LONG);
        assert_close("CNN softmax", &as_f32(cnn(gpu)), &as_f32(cnn(&Device::Cpu)), tol::F32_LONG);
    });
}
