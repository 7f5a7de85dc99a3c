//! `dpgan bench step` on the CPU, tiny: both algorithms, private and not, with `--phases` and
//! `--json`: the report's fields are there and positive, its settings are the ones asked for, and
//! the phases add up to no more than the pass they were measured in. On a GPU (skipped without
//! one, failed under `DPGAN_REQUIRE_GPU=1`) the same, with the peak device memory.
mod common;

use std::fs;

use common::cli::{json_of, stderr_of_failure, stdout_of};
use serde_json::Value;

const PHASES: [&str; 7] = ["forward", "backward", "per_example_norms", "clip_noise", "optimizer", "ema", "other"];

fn bench(algo: &str, mode: &str, extra: &[&str]) -> Value {
    bench_on("cpu", algo, mode, extra)
}

fn bench_on(device: &str, algo: &str, mode: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step.json");
    let path_str = path.to_string_lossy().into_owned();
    let mut args =
        vec!["bench", "step", "--algo", algo, mode, "--device", device, "--steps", "3", "--warmup", "1", "--phases", "--json", &path_str];
    args.extend_from_slice(extra);
    let table = stdout_of(&args);
    let report: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert!(table.contains("steps/s") && table.contains("forward"), "{table}");
    assert!(table.contains(&format!("{algo} {}", report["mode"].as_str().unwrap())), "{table}");
    report
}

fn positive(report: &Value, key: &str) -> f64 {
    let v = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number in {report:#}"));
    assert!(v > 0.0 && v.is_finite(), "{key} = {v}");
    v
}

/// The fields every report has, whatever the algorithm: positive timings, consistent with each
/// other, and phases that fit in their pass.
fn check_common(r: &Value, algo: &str, mode: &str, batch: u64) {
    check_on("cpu", r, algo, mode, batch)
}

fn check_on(device: &str, r: &Value, algo: &str, mode: &str, batch: u64) {
    assert_eq!(r["benchmark"], "step");
    assert_eq!(r["algo"], algo);
    assert_eq!(r["mode"], mode);
    assert_eq!(r["device"], device);
    assert_eq!(r["device_name"].as_str().unwrap().starts_with("CPU"), device == "cpu");
    assert!(r["inputs"].as_str().unwrap().starts_with("synthetic"));
    assert!(r["date"].as_str().unwrap().ends_with('Z'));
    assert!(r.get("git_commit").is_some());
    assert_eq!(r["settings"]["batch_size"], batch);
    assert_eq!(r["settings"]["steps"], 3);
    assert_eq!(r["settings"]["warmup"], 1);
    positive(r, "generator_params");
    positive(r, "discriminator_params");
    let steps_per_s = positive(r, "steps_per_s");
    let (mean, median, min, max) = (positive(r, "mean_ms"), positive(r, "median_ms"), positive(r, "min_ms"), positive(r, "max_ms"));
    assert!(min <= median && median <= max && min <= mean && mean <= max, "{r:#}");
    // The pass's wall time holds the three steps and little else: steps/s is within the
    // per-step figures, give or take the loop (10% slack).
    assert!(steps_per_s <= 1.1 * 1e3 / mean, "{steps_per_s} steps/s against a mean of {mean} ms");
    if device == "cpu" {
        // Not measured on the CPU, and said so.
        assert!(r["peak_device_memory_bytes"].is_null());
        assert!(r["peak_memory_note"].as_str().unwrap().contains("CPU"));
    } else {
        // At least the two models' parameters are resident.
        let params = r["generator_params"].as_u64().unwrap() + r["discriminator_params"].as_u64().unwrap();
        let peak = r["peak_device_memory_bytes"].as_u64().unwrap_or_else(|| panic!("no peak memory on {device}: {r:#}"));
        assert!(peak >= 4 * params, "peak {peak} bytes below the parameters' {}", 4 * params);
    }

    let phases = &r["phases"];
    assert_eq!(phases["steps"], 3);
    let total = phases["total_ms"].as_f64().unwrap();
    assert!(total > 0.0);
    let ms = phases["ms"].as_object().unwrap();
    assert_eq!(ms.len(), PHASES.len(), "{ms:?}");
    let mut sum = 0.0;
    for p in PHASES {
        let v = ms[p].as_f64().unwrap_or_else(|| panic!("phase {p} missing"));
        assert!(v >= 0.0, "{p} = {v}");
        sum += v;
    }
    // Each phase is a sum of disjoint intervals inside the pass's clock, so the sum cannot pass
    // the total; the slack covers only the f64 rounding of the per-step division (1e-9 relative).
    assert!(sum <= total * (1.0 + 1e-9), "phases sum to {sum} ms, the pass took {total} ms per step");
    // The step range encloses almost all of each step: the phases cover at least half the pass.
    assert!(sum >= 0.5 * total, "phases sum to {sum} ms of {total} ms");
    for p in ["forward", "backward", "optimizer"] {
        assert!(ms[p].as_f64().unwrap() > 0.0, "{p} is 0 in {ms:?}");
    }
}

fn phase(r: &Value, p: &str) -> f64 {
    r["phases"]["ms"][p].as_f64().unwrap()
}

#[test]
fn dp_cgan_private_and_non_private() {
    let r = bench("dp-cgan", "--private", &["--batch-size", "64"]);
    check_common(&r, "dp-cgan", "private", 64);
    assert_eq!((r["generator_params"].as_u64(), r["discriminator_params"].as_u64()), (Some(115_344), Some(101_889)));
    assert_eq!((r["settings"]["clip"].as_f64(), r["settings"]["noise_multiplier"].as_f64()), (Some(1.1), Some(1.15)));
    assert!(r["step"].as_str().unwrap().contains("private_step"));
    assert!(phase(&r, "per_example_norms") > 0.0 && phase(&r, "clip_noise") > 0.0);
    assert_eq!(phase(&r, "ema"), 0.0);

    let r = bench("dp-cgan", "--non-private", &["--batch-size", "64"]);
    check_common(&r, "dp-cgan", "non-private", 64);
    assert!(r["step"].as_str().unwrap().contains("non_private_step"));
    assert!(r["settings"].get("noise_multiplier").is_none());
    assert_eq!((phase(&r, "per_example_norms"), phase(&r, "clip_noise")), (0.0, 0.0), "no privacy, no clipping");
}

#[test]
fn gs_wgan_private_and_non_private() {
    let small = ["--generator", "dcgan", "--base", "4", "--batch-size", "8"];
    let r = bench("gs-wgan", "--private", &small);
    check_common(&r, "gs-wgan", "private", 8);
    assert_eq!((r["settings"]["generator"].as_str(), r["settings"]["base"].as_u64()), (Some("dcgan"), Some(4)));
    assert!(r["step"].as_str().unwrap().contains("PrivateTraining::iteration"));
    // The sanitiser computes each row's norm in the same pass as the clip and the noise.
    assert!(phase(&r, "clip_noise") > 0.0 && phase(&r, "ema") > 0.0);

    let r = bench("gs-wgan", "--non-private", &small);
    check_common(&r, "gs-wgan", "non-private", 8);
    assert!(r["step"].as_str().unwrap().contains("WarmStart::iteration"));
    assert_eq!(r["settings"]["tf32"].as_bool(), Some(false));
    assert_eq!((phase(&r, "clip_noise"), phase(&r, "ema")), (0.0, 0.0));
}

/// DPSGD-GAN's private D step at a small width: its clipping and noise show as phases.
#[test]
fn dpsgd_gan_private_d_step() {
    let r = bench("dpsgd-gan", "--private", &["--base", "8", "--batch-size", "8"]);
    check_common(&r, "dpsgd-gan", "private", 8);
    assert_eq!(r["settings"]["width"].as_u64(), Some(8));
    assert!(r["step"].as_str().unwrap().contains("DpsgdGan::discriminator_step"));
    assert!(phase(&r, "per_example_norms") > 0.0 && phase(&r, "clip_noise") > 0.0);
}

/// The census of one step: its total is the sum of its ops; no step copies anything back to the
/// host (on a GPU that is a wait for the stream) or copies a parameter to update it (a tape that
/// still shares the weights when the optimizer runs), and DP-CGAN's private step, with real and
/// generated examples through D as one batch, dispatches no more ops than its non-private step.
/// No step releases storage made before it (a CUDA graph can capture each): GS-WGAN's spectral
/// norms keep their u and v in place.
#[test]
fn the_step_census_has_no_host_copy_and_private_dp_cgan_is_no_longer_than_plain() {
    let released = |r: &Value| r["older_storage_released_per_step"].as_u64().unwrap();
    let total = |r: &Value| -> u64 {
        let ops = r["ops_per_step"].as_object().unwrap();
        assert!(ops.get("device_to_host").is_none(), "a step copies to the host: {ops:?}");
        assert!(ops.get("copy_on_write").is_none(), "a step copies a tensor to update it: {ops:?}");
        let sum: u64 = ops.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(r["ops_per_step_total"].as_u64(), Some(sum));
        sum
    };
    let capturable = |r: Value| -> u64 {
        assert_eq!(released(&r), 0, "the step frees storage made before it");
        total(&r)
    };
    let private = capturable(bench("dp-cgan", "--private", &["--batch-size", "16"]));
    let plain = capturable(bench("dp-cgan", "--non-private", &["--batch-size", "16"]));
    assert!(private <= plain, "the private step takes {private} ops, the non-private one {plain}");
    capturable(bench("dpsgd-gan", "--private", &["--base", "8", "--batch-size", "8"]));
    for mode in ["--private", "--non-private"] {
        capturable(bench("gs-wgan", mode, &["--generator", "dcgan", "--base", "4", "--batch-size", "8"]));
        capturable(bench("gs-wgan", mode, &["--base", "4", "--batch-size", "8"]));
    }
}

#[test]
fn on_a_gpu_with_peak_memory() {
    if common::cuda_or_skip("on_a_gpu_with_peak_memory").is_none() {
        return;
    }
    for mode in ["--private", "--non-private"] {
        let r = bench_on("cuda:0", "dp-cgan", mode, &[]);
        check_on("cuda:0", &r, "dp-cgan", &mode[2..], 600);
        let r = bench_on("cuda:0", "gs-wgan", mode, &["--generator", "dcgan"]);
        check_on("cuda:0", &r, "gs-wgan", &mode[2..], 32);
    }
    let r = bench_on("cuda:0", "dpsgd-gan", "--private", &[]);
    check_on("cuda:0", &r, "dpsgd-gan", "private", 128);
    // The launch floor beside the eager figures: a capture that fails says why.
    for (algo, extra, batch) in [("dp-cgan", &[][..], 600), ("gs-wgan", &["--generator", "dcgan"][..], 32)] {
        let r = bench_on("cuda:0", algo, "--private", &[extra, &["--cuda-graph"]].concat());
        check_on("cuda:0", &r, algo, "private", batch);
        assert_eq!(r["settings"]["cuda_graph"], Value::Bool(true));
        let replay = &r["graph_replay"];
        assert!(replay["error"].is_null(), "{algo}: the capture failed: {}", replay["error"]);
        assert!(replay["mean_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{algo}: {replay}");
    }
}

#[test]
fn json_to_stdout_without_phases() {
    let r = json_of(&[
        "bench",
        "step",
        "--algo",
        "dp-cgan",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--batch-size",
        "16",
        "--json",
        "-",
    ]);
    assert_eq!(r["mode"], "private", "private is the default");
    assert!(r["phases"].is_null());
    positive(&r, "steps_per_s");
}

#[test]
fn bad_arguments_are_refused_with_the_cause() {
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-gan"]);
    assert!(e.contains("dp-cgan, gs-wgan or dpsgd-gan"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--private", "--non-private"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--device", "cpu", "--base", "8"]);
    assert!(e.contains("--base does not apply to --algo dp-cgan"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dpsgd-gan", "--device", "cpu", "--generator", "dcgan"]);
    assert!(e.contains("--generator does not apply to --algo dpsgd-gan"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dpsgd-gan", "--device", "cpu", "--non-private"]);
    assert!(e.contains("no non-private step"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--device", "cpu", "--steps", "0"]);
    assert!(e.contains("--steps"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--device", "cpu", "--json", "/nonexistent-dir/x.json"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--device", "tpu"]);
    assert!(e.contains("--device must be"), "{e}");
    // TF32 never touches a private step, and the CPU has none.
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--device", "cpu", "--tf32"]);
    assert!(e.contains("--tf32 applies to --non-private steps and GS-WGAN's phase 2 only"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "gs-wgan", "--device", "cpu", "--tf32"]);
    assert!(e.contains("--tf32 needs a CUDA device"), "phase 2 takes TF32 where there is one: {e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "gs-wgan", "--device", "cpu", "--non-private", "--tf32"]);
    assert!(e.contains("--tf32 needs a CUDA device"), "{e}");
    let e = stderr_of_failure(&["bench", "step", "--algo", "dp-cgan", "--device", "cpu", "--cuda-graph"]);
    assert!(e.contains("--cuda-graph needs a CUDA device"), "{e}");
}
