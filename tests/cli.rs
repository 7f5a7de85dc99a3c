//! The `dpgan` binary, run as a user would. Each check compares what it prints with what the library
//! itself knows about this build and this machine, so the tests hold on a GPU host and without one.
mod common;

use std::process::Output;

use common::cli::{dpgan, error_of, gzip, idx_bytes, json_of, stderr_of_failure, stdout_of, write_idx_set};

use dpgan::backend::cuda::module::{CUDA_ARCHS, FATBIN, NVCC_VERSION, PTXAS_REPORT};
use dpgan::backend::cuda::{device_count, kernel_resources, Kernel};
use dpgan::Error;
use serde_json::Value;

/// The reason this machine has no CUDA device, as the library sees it, or `None` if it has some.
fn no_device_reason() -> Option<String> {
    match device_count() {
        Ok(_) => None,
        Err(Error::NoDevice(why)) => Some(why),
        Err(e) => Some(e.to_string()),
    }
}

#[test]
fn info_tells_the_build_and_the_devices() {
    let text = stdout_of(&["info"]);
    assert!(text.starts_with(&format!("dpgan {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    if FATBIN.is_some() {
        assert!(text.contains("compiled by nvcc") && text.contains(NVCC_VERSION), "{text}");
        for arch in CUDA_ARCHS {
            assert!(text.contains(arch), "SASS target {arch} missing:\n{text}");
        }
        assert!(text.contains("PTX compute_"), "{text}");
    } else {
        assert!(text.contains("this build had no nvcc"), "{text}");
    }
    match no_device_reason() {
        Some(why) => assert!(text.contains(&format!("no CUDA device: {why}")), "{text}"),
        None => {
            let n = device_count().unwrap();
            assert!(text.contains(&format!("CUDA devices: {n}")), "{text}");
            for i in 0..n {
                assert!(text.contains(&format!("cuda:{i}  ")), "device {i} missing:\n{text}");
            }
        }
    }
    assert!(!text.contains("symbol"), "the kernel table is only for --kernels:\n{text}");
}

#[test]
fn info_kernels_lists_every_kernel_with_ptxas_figures() {
    let text = stdout_of(&["info", "--kernels"]);
    let reported = kernel_resources(PTXAS_REPORT);
    for k in Kernel::ALL {
        let rows: Vec<&str> = text.lines().filter(|l| l.split_whitespace().next() == Some(k.symbol())).collect();
        assert!(!rows.is_empty(), "{} missing:\n{text}", k.symbol());
        assert!(rows.iter().all(|r| r.contains(k.family())), "{rows:?}");
        if FATBIN.is_some() {
            for arch in CUDA_ARCHS {
                let r = reported.iter().find(|r| r.kernel == k.symbol() && r.arch == *arch).expect("ptxas reported every kernel");
                let row = rows.iter().find(|row| row.contains(arch)).unwrap_or_else(|| panic!("{} has no {arch} row", k.symbol()));
                let fields: Vec<&str> = row.split_whitespace().collect();
                let figures: Vec<String> =
                    [r.registers, r.spill_stores, r.spill_loads, r.shared_bytes, r.stack_bytes, k.dynamic_shared_bytes()]
                        .iter()
                        .map(u32::to_string)
                        .collect();
                assert_eq!(fields[3..].to_vec(), figures, "{row}");
            }
        }
    }
    if FATBIN.is_none() {
        assert!(text.contains("this build had no nvcc"), "{text}");
    }
}

#[test]
fn info_json_matches_the_build() {
    let v = json_of(&["info", "--json"]);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["build"]["kernels_compiled"], FATBIN.is_some());
    assert_eq!(v["build"]["sass"], serde_json::json!(CUDA_ARCHS));
    assert_eq!(v["build"]["nvcc"], if FATBIN.is_some() { Value::from(NVCC_VERSION) } else { Value::Null });
    match no_device_reason() {
        Some(why) => {
            assert_eq!(v["no_device_reason"], why);
            assert_eq!(v["devices"], serde_json::json!([]));
        }
        None => {
            assert!(v["no_device_reason"].is_null());
            assert_eq!(v["devices"].as_array().map(Vec::len), Some(device_count().unwrap()));
        }
    }
    assert!(v.get("kernels").is_none(), "kernels only with --kernels: {v}");
}

#[test]
fn info_kernels_json_has_one_entry_per_kernel() {
    let v = json_of(&["info", "--kernels", "--json"]);
    let kernels = v["kernels"].as_array().expect("a kernels array");
    assert_eq!(kernels.len(), Kernel::ALL.len());
    for (entry, k) in kernels.iter().zip(Kernel::ALL) {
        assert_eq!(entry["symbol"], k.symbol());
        assert_eq!(entry["family"], k.family());
        let archs: Vec<&str> = entry["resources"].as_array().unwrap().iter().map(|r| r["arch"].as_str().unwrap()).collect();
        let expected: &[&str] = if FATBIN.is_some() { CUDA_ARCHS } else { &[] };
        assert_eq!(archs, expected, "{}", k.symbol());
        assert_eq!(entry["dynamic_shared_bytes"], k.dynamic_shared_bytes(), "{}", k.symbol());
    }
    let dynamic: Vec<_> = Kernel::ALL.iter().filter(|k| k.dynamic_shared_bytes() > 0).map(|k| k.symbol()).collect();
    assert_eq!(dynamic.len(), 8, "the wide TF32 GEMMs and convolutions, and only they: {dynamic:?}");
    assert!(dynamic.iter().all(|s| s.ends_with("_tf32_wide")), "{dynamic:?}");
    assert_eq!(v["unlisted_kernels"], serde_json::json!([]), "kernels compiled but absent from Kernel::ALL");
}

#[test]
fn bad_arguments_fail_with_an_error_line() {
    let out = dpgan(&["info", "--no-such-flag"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(out.stdout.is_empty());

    let version = stdout_of(&["--version"]);
    assert_eq!(version.trim(), format!("dpgan {}", env!("CARGO_PKG_VERSION")));
}

/// `--tf32-build` is global (before or after the subcommand), and a wrong build names the three.
#[test]
fn the_tf32_build_is_chosen_anywhere_and_named_when_wrong() {
    let args = ["privacy", "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.15", "--steps", "2000", "--delta", "1e-5"];
    let plain = stdout_of(&args);
    assert!(plain.starts_with("epsilon "), "{plain}");
    assert_eq!(stdout_of(&[&["--tf32-build", "wide"][..], &args].concat()), plain);
    assert_eq!(stdout_of(&[&args[..], &["--tf32-build", "cp-async"]].concat()), plain);
    let e = stderr_of_failure(&["--tf32-build", "huge", "info"]);
    assert!(e.contains("register-staged") && e.contains("cp-async") && e.contains("wide"), "{e}");
}

// ---- dpgan privacy ------------------------------------------------------------------------------

/// What the binary prints is what the library computes, and reproduces docs/algorithms.md's DP-CGAN ε.
#[test]
fn privacy_epsilon_prints_the_dp_cgan_epsilon() {
    use dpgan::privacy::{dp_sgd_epsilon, Conversion, Orders};
    let args = ["privacy", "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.15", "--steps", "24900", "--delta", "1e-5"];
    let published = [&args[..], &["--conversion", "classic", "--orders", "tf-privacy-0.2", "--json"]].concat();
    let v = json_of(&published);
    let expected = dp_sgd_epsilon(0.01, 1.15, 24_900, 1e-5, &Orders::TfPrivacy02.values(), Conversion::Classic).unwrap();
    assert_eq!(v["epsilon"].as_f64(), Some(expected.epsilon));
    assert!((expected.epsilon - 9.643695567594731).abs() < 1e-12 * 9.64, "the published vector: {}", expected.epsilon);
    assert_eq!(v["order"].as_f64(), Some(4.0));
    assert_eq!(v["delta"].as_f64(), Some(1e-5));
    assert_eq!(v["orders"], "tf-privacy-0.2");

    let expected = dp_sgd_epsilon(0.01, 1.15, 24_900, 1e-5, &Orders::Standard.values(), Conversion::Improved).unwrap();
    let v = json_of(&[&args[..], &["--json"]].concat());
    assert_eq!(v["epsilon"].as_f64(), Some(expected.epsilon));
    assert_eq!(v["conversion"], "improved");
    let text = stdout_of(&args);
    assert!(text.starts_with(&format!("epsilon {} at delta", expected.epsilon)) && text.contains("best order 3.6"), "{text}");
    assert!(!text.contains("note:"), "3.6 is inside the list:\n{text}");
}

#[test]
fn privacy_calibrate_meets_the_target() {
    let args: Vec<&str> =
        "privacy calibrate --sample-rate 0.01 --steps 24900 --delta 1e-5 --target-epsilon 9.6 --json".split(' ').collect();
    let v = json_of(&args);
    let sigma = v["noise_multiplier"].as_f64().expect("noise_multiplier");
    let eps = v["epsilon"].as_f64().expect("epsilon");
    assert!(eps <= 9.6 && eps > 9.6 * (1.0 - 1e-4), "{v}");
    assert!(sigma > 1.0 && sigma < 1.15, "improved conversion needs less noise than DP-CGAN's 1.15 for 9.6: {v}");
    assert_eq!(v["delta"].as_f64(), Some(1e-5));
    assert!(v["order"].is_f64());
}

#[test]
fn privacy_gs_wgan_reports_both_accountings() {
    let line = "privacy gs-wgan --noise-multiplier 1.07 --discriminators 1000 --batch-size 32 --iterations 20000 --delta 1e-5";
    let args: Vec<&str> = line.split(' ').collect();
    let v = json_of(&[&args[..], &["--json"]].concat());
    let published = v["as_published"]["epsilon"].as_f64().unwrap();
    assert!(((published - 9.992624) / 9.992624).abs() < 1e-6, "{v}");
    assert_eq!(v["epsilon"].as_f64(), Some(published));
    // The proven per-step bound, as mpmath computes it (tests/privacy.rs), at a fine order inside the list.
    let (per_step, mpmath) = (v["per_step"]["epsilon"].as_f64().unwrap(), 658.666_190_073_099_3);
    assert!(((per_step - mpmath) / mpmath).abs() < 1e-13, "{v}");
    assert_eq!((v["per_step"]["order"].as_f64(), v["per_step_orders"].as_str()), (Some(1.052), Some("fine")), "{v}");
    assert_eq!(v["delta"].as_f64(), Some(1e-5));
    let text = stdout_of(&args);
    assert!(text.contains("as-published: epsilon 9.99262") && text.contains("per-step:     epsilon 658.66"), "{text}");
    assert!(text.contains("a proof") && !text.contains("note:"), "{text}");
    // The standard orders stop at 1.1, short of the best order, and the output says so.
    let standard = stdout_of(&[&args[..], &["--orders", "standard"]].concat());
    assert!(standard.contains("note: the best order 1.1 is at the end of the order list"), "{standard}");
    // The fine orders are for this closed form only.
    let err = stderr_of_failure(&[
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "10",
        "--delta",
        "1e-5",
        "--orders",
        "fine",
    ]);
    assert!(err.contains("--orders") && err.contains("gs-wgan"), "{err}");
}

#[test]
fn privacy_rejects_impossible_inputs_naming_the_argument() {
    let eps = |extra: [&str; 2], q: &str| {
        let mut a = vec!["privacy", "epsilon", "--sample-rate", q, "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"];
        if let Some(i) = a.iter().position(|x| *x == extra[0]) {
            a[i + 1] = extra[1];
        }
        dpgan(&a)
    };
    let cases: [(Output, &str); 6] = [
        (eps(["--sample-rate", "1.5"], "1.5"), "--sample-rate"),
        (eps(["--sample-rate", "0"], "0"), "--sample-rate"),
        (eps(["--noise-multiplier", "0"], "0.01"), "--noise-multiplier"),
        (eps(["--delta", "1"], "0.01"), "--delta"),
        (eps(["--steps", "0"], "0.01"), "--steps"),
        (
            dpgan(&["privacy", "calibrate", "--sample-rate", "0.01", "--steps", "1000", "--delta", "1e-5", "--target-epsilon", "0.05"]),
            "--target-epsilon",
        ),
    ];
    for (out, flag) in cases {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: succeeded");
        assert!(stderr.starts_with("error:") && stderr.contains(flag), "{flag}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// On a GPU host `bench kernels --quick` validates and times every case and writes a JSON report
/// with every family; without one it fails with one error line that says why, and writes nothing.
#[test]
fn bench_kernels_reports_every_family_or_says_why_not() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.json");
    let out = dpgan(&["bench", "kernels", "--quick", "--json", path.to_str().expect("UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let has_gpu = matches!(device_count(), Ok(n) if n > 0);
    if !has_gpu {
        assert!(!out.status.success(), "succeeded without a GPU");
        let last = stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("error: no CUDA device:") && last.contains("needs a CUDA GPU"), "{stderr}");
        if let Some(why) = no_device_reason() {
            assert!(last.contains(&why), "the error should carry the driver's reason ({why}): {stderr}");
        }
        assert!(!path.exists(), "no report may be written without a GPU");
        return;
    }
    assert!(out.status.success(), "bench kernels --quick failed on a GPU host:\n{stderr}");
    let text = std::fs::read_to_string(&path).expect("the JSON report");
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"));
    assert!(report["device"].as_str().is_some_and(|d| !d.is_empty()));
    for ceiling in ["copy_gbps", "gemm_f32_gflops", "gemm_tf32_gflops"] {
        assert!(report["ceilings"][ceiling].as_f64().is_some_and(|v| v > 0.0), "ceiling {ceiling}: {}", report["ceilings"]);
    }
    let cases = report["cases"].as_array().expect("cases");
    for family in dpgan::bench::cases::FAMILIES {
        assert!(cases.iter().any(|c| c["family"] == *family), "no {family} case in the report");
    }
    for c in cases {
        for key in ["name", "shape", "median_ms", "gbps", "runs"] {
            assert!(!c[key].is_null(), "case {} lacks {key}", c["name"]);
        }
        assert!(c["median_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{}", c["name"]);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ceilings:"), "{stdout}");
}

// ---- refused inputs ------------------------------------------------------------------------------

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Images of another size than 28×28 are refused by every command that reads a data set, naming
/// the size, before anything is written: read as rows of 784 pixels, a 56×56 image would become
/// four records and a 10×10 one part of a record.
#[test]
fn images_that_are_not_28_by_28_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (rows, cols) in [(56, 56), (10, 10), (28, 27)] {
        let data = dir.path().join(format!("data-{rows}x{cols}"));
        write_idx_set(&data, 40, rows, cols);
        let size = format!("holds {rows}×{cols} images");
        let run = dir.path().join("run");
        let data = path(&data);
        let err = error_of(&["train", "dp-cgan", "--data", &data, "--out", &path(&run), "--device", "cpu", "--steps", "1"]);
        assert!(err.contains(&size) && err.contains("28×28") && err.contains("train-images-idx3-ubyte.gz"), "{err}");
        let warm = ["train", "gs-wgan", "warm-start", "--data", &data, "--out", &path(&run), "--device", "cpu"];
        let err = error_of(&[&warm[..], &["--discriminators", "2", "--iterations", "1", "--base", "4"]].concat());
        assert!(err.contains(&size), "{err}");
        assert!(!run.exists(), "a refused run wrote {}", run.display());
        for extra in [&["--real"][..], &["--synthetic", &data]] {
            let err = error_of(&[&["eval", "--data", &data, "--classifier", "logreg", "--device", "cpu"][..], extra].concat());
            assert!(err.contains(&size), "{err}");
        }
    }
    // A synthetic set of another size against a real 28×28 test set.
    let (real, synthetic) = (dir.path().join("real"), dir.path().join("synthetic"));
    write_idx_set(&real, 20, 28, 28);
    write_idx_set(&synthetic, 20, 10, 10);
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::remove_file(synthetic.join(name)).unwrap();
    }
    for classifier in ["logreg", "lenet"] {
        let args = ["eval", "--synthetic", &path(&synthetic), "--data", &path(&real), "--classifier", classifier, "--device", "cpu"];
        let err = error_of(&args);
        assert!(err.contains("10×10") && err.contains("28×28"), "{classifier}: {err}");
    }
}

/// A gzip file is decompressed only as far as its header announces: a header announcing more than
/// dpgan reads is refused before any data is decompressed, and data past the announced length is
/// refused after at most a bounded read, however much a small file would expand to.
#[test]
fn gzip_data_is_read_only_as_far_as_its_header_announces() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_idx_set(&data, 20, 28, 28);
    let images = data.join("train-images-idx3-ubyte.gz");
    let run = path(&dir.path().join("run"));
    // 2^31 images announced, 64 MiB of zeros behind the header: 64 kB on disk.
    let bomb = gzip(&idx_bytes(0x0803, &[1 << 31, 28, 28], &vec![0; 64 << 20]));
    assert!(bomb.len() < 200_000);
    std::fs::write(&images, &bomb).unwrap();
    let err = error_of(&["train", "dp-cgan", "--data", &path(&data), "--out", &run, "--device", "cpu", "--steps", "1"]);
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("2147483648 images of 28×28"), "{err}");
    assert!(err.contains("more than the 1073741824 bytes"), "{err}");

    // The announced 20 labels, then 64 MiB more.
    write_idx_set(&data, 20, 28, 28);
    let labels: Vec<u8> = (0..20u8).map(|i| i % 10).chain(std::iter::repeat_n(0, 64 << 20)).collect();
    std::fs::write(data.join("train-labels-idx1-ubyte.gz"), gzip(&idx_bytes(0x0801, &[20], &labels))).unwrap();
    let err = error_of(&["train", "dp-cgan", "--data", &path(&data), "--out", &run, "--device", "cpu", "--steps", "1"]);
    assert!(err.contains("train-labels-idx1-ubyte.gz") && err.contains("at least 1048576 trailing bytes after the 20 labels"), "{err}");
}
