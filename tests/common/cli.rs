//! Running the `dpgan` binary as a user would, and where the test data lives.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The binary cargo built, or, where a test runs from a GPU bundle (`.gpu/tests/` beside
/// `.gpu/bin/`, see ../shared/tools/gpu-bundle), the bundled one.
pub fn binary() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_dpgan"));
    if built.is_file() {
        return built;
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let bundled = exe.parent().and_then(|d| d.parent()).map(|d| d.join("bin").join("dpgan"));
    bundled.filter(|p| p.is_file()).unwrap_or(built)
}

pub fn dpgan(args: &[&str]) -> Output {
    let bin = binary();
    Command::new(&bin).args(args).output().unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// Runs a command that must succeed and returns its stdout.
#[track_caller]
pub fn stdout_of(args: &[&str]) -> String {
    let out = dpgan(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpgan {args:?} exited with {}; stderr:\n{stderr}", out.status);
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs a command that must exit with `code` (3: stopped at the ε budget) and returns its stdout.
#[track_caller]
pub fn stdout_with_status(args: &[&str], code: i32) -> String {
    let out = dpgan(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "dpgan {args:?}; stderr:\n{stderr}");
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

#[track_caller]
pub fn json_of(args: &[&str]) -> Value {
    let text = stdout_of(args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("dpgan {args:?} printed invalid JSON ({e}):\n{text}"))
}

/// Runs a command that must fail and returns its stderr.
#[track_caller]
pub fn stderr_of_failure(args: &[&str]) -> String {
    let out = dpgan(args);
    assert!(!out.status.success(), "dpgan {args:?} should have failed; stdout:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The data root (holding `mnist/` and `fashion-mnist/`): `$DPGAN_DATA` if set, else
/// `../shared/data` beside the crate.
pub fn data_root() -> PathBuf {
    match std::env::var_os("DPGAN_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}

/// Each of `names` under `dir`: its name, modification time and bytes (for "a rerun rewrote
/// nothing" checks).
pub fn files_with_mtimes(dir: &std::path::Path, names: &[&str]) -> Vec<(String, std::time::SystemTime, Vec<u8>)> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name.to_string(), modified, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// An IDX file of unsigned bytes: the magic number, big-endian dimensions, then `data`.
pub fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Writes an MNIST-layout data set into `dir` (gzip, both splits): `count` images of `rows × cols`
/// with varied pixels, labels cycling through the ten classes.
pub fn write_idx_set(dir: &Path, count: usize, rows: usize, cols: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let pixels: Vec<u8> = (0..count * rows * cols).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    for split in ["train", "t10k"] {
        let images = idx_bytes(0x0803, &[count as u32, rows as u32, cols as u32], &pixels);
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte.gz")), gzip(&images)).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte.gz")), gzip(&idx_bytes(0x0801, &[count as u32], &labels))).unwrap();
    }
}

/// Runs a command that must fail with an error line (not a panic) and returns its stderr.
#[track_caller]
pub fn error_of(args: &[&str]) -> String {
    let stderr = stderr_of_failure(args);
    let error_line = stderr.lines().any(|l| l.starts_with("error: "));
    assert!(error_line && !stderr.contains("panicked"), "dpgan {args:?} did not fail with an error line:\n{stderr}");
    stderr
}

/// The arguments of a tiny GS-WGAN warm start on MNIST (DCGAN throwaway generators, width 4) in
/// `out`: `count` discriminators in groups of `group`, `iterations` each, seed 3, on the CPU.
pub fn tiny_warm_start_args(out: &Path, count: usize, group: usize, iterations: u64) -> Vec<String> {
    let (data, out) = (data_root().join("mnist").to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
    let (count, group, iterations) = (count.to_string(), group.to_string(), iterations.to_string());
    let args = ["train", "gs-wgan", "warm-start", "--data", &data, "--out", &out, "--discriminators", &count, "--group-size", &group];
    let rest = ["--iterations", &iterations, "--generator", "dcgan", "--seed", "3", "--device", "cpu", "--base", "4"];
    args.iter().chain(&rest).map(|a| a.to_string()).collect()
}

/// Runs [`tiny_warm_start_args`], which must succeed; its stdout.
pub fn tiny_warm_start(out: &Path, count: usize, group: usize, iterations: u64) -> String {
    let args = tiny_warm_start_args(out, count, group, iterations);
    stdout_of(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `run`'s metrics.jsonl, one JSON value a line.
pub fn metrics_lines(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_else(|e| panic!("{}: {e}", run.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Two logs of one 4-step run (same seed and noise): `every` logged every step, `third` every third
/// step and the last. `third`'s losses are the means over its interval of `every`'s, which change
/// from step to step (a constant passes the ratio), and its last rate is its one step over the
/// wall time between its lines. `unit` names a step in messages.
pub fn assert_interval_means(every: &[Value], third: &[Value], unit: &str) {
    assert_eq!(every.len(), 4, "{every:?}");
    assert_eq!(third.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 4], "every third and the last");
    for key in ["d_loss", "g_loss"] {
        let value = |l: &Value| l[key].as_f64().unwrap();
        let mean = every[..3].iter().map(value).sum::<f64>() / 3.0;
        assert!(every.windows(2).all(|w| value(&w[0]) != value(&w[1])), "{key} the same in consecutive {unit}s: {every:?}");
        assert!((value(&third[0]) - mean).abs() <= 1e-6 * mean.abs().max(1.0), "{key}: {} vs the mean {mean}", value(&third[0]));
        assert_eq!(value(&third[1]), value(&every[3]), "{key} of the last {unit} alone");
    }
    let wall = third[1]["wall_s"].as_f64().unwrap() - third[0]["wall_s"].as_f64().unwrap();
    let rate = third[1]["steps_per_s"].as_f64().unwrap();
    assert!((rate * wall - 1.0).abs() < 0.25, "{rate} {unit}s/s over the last {wall} s");
}

/// `run`'s generator exported into `dir` (`dpgan export`): the file holds the released generator's
/// tensors, bit for bit those of the checkpoint (`ema.*` for GS-WGAN's G_s, else `generator.*`),
/// and no other tensor, and its only metadata is the release record (no key, no run state); and
/// sampling the file writes the same files, bit for bit, as sampling the run.
#[track_caller]
pub fn check_export(run: &Path, dir: &Path, count: usize) {
    use dpgan::io::checkpoint::load_tensors;
    let file = dir.join("exported-generator.safetensors");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let printed = json_of(&["export", "--run", &s(run), "--out", &s(&file), "--json"]);
    let (exported, metadata) = load_tensors(&file, &dpgan::Device::Cpu).unwrap();
    assert_eq!(metadata.keys().collect::<Vec<_>>(), ["dpgan.release"], "{metadata:?}");
    let key = super::key_scan::run_key(run);
    assert!(!super::key_scan::holds_key(&key, &std::fs::read(&file).unwrap()), "the export holds the run's key");
    let (checkpoint, _) = load_tensors(&run.join("checkpoint.safetensors"), &dpgan::Device::Cpu).unwrap();
    let mut record: Value = serde_json::from_str(&metadata["dpgan.release"]).unwrap();
    assert_eq!(record.as_object_mut().unwrap().remove("format"), Some("dpgan-generator".into()));
    assert_eq!(printed, record, "--json prints the record the file holds");
    let prefix = if record["algorithm"] == "gs-wgan" { "ema." } else { "generator." };
    let released = checkpoint.keys().filter(|n| n.starts_with(prefix)).count();
    assert!(released > 0 && exported.len() == released, "{} tensors exported of {released}", exported.len());
    for (name, t) in &exported {
        let source = name.strip_prefix("generator.").map(|rest| format!("{prefix}{rest}")).unwrap_or_else(|| panic!("{name}"));
        let bits = |t: &dpgan::Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(t), bits(&checkpoint[&source]), "{name} against {source}");
    }
    let err = stderr_of_failure(&["export", "--run", &s(run), "--out", &s(&file)]);
    assert!(err.contains("already exists"), "{err}");
    let err = stderr_of_failure(&["export", "--run", &s(run), "--out", &s(&run.join("g.safetensors"))]);
    assert!(err.contains("inside it"), "{err}");

    let (from_run, from_file) = (dir.join("sampled-from-run"), dir.join("sampled-from-export"));
    let n = count.to_string();
    for (source, out) in [(["--run", &s(run)], &from_run), (["--generator", &s(&file)], &from_file)] {
        stdout_of(&[&["sample"], &source[..], &["--count", &n, "--format", "npy", "--out", &s(out), "--device", "cpu"]].concat());
    }
    for name in ["images.npy", "labels.npy", "grid.png", "sample.json"] {
        assert!(std::fs::read(from_run.join(name)).unwrap() == std::fs::read(from_file.join(name)).unwrap(), "{name} differs");
    }
    // A checkpoint is not a released generator, nor is a file with a tensor the generator lacks.
    let checkpoint_file = run.join("checkpoint.safetensors");
    let extra = dir.join("extra.safetensors");
    let mut named: Vec<(&str, &dpgan::Tensor)> = exported.iter().map(|(n, t)| (n.as_str(), t)).collect();
    named.push(("generator.secret", named[0].1));
    dpgan::io::checkpoint::save_tensors(&extra, &named, Some(metadata.clone())).unwrap();
    for (bad, why) in [(checkpoint_file, "a checkpoint is not one"), (extra, "holds generator.secret")] {
        let err =
            stderr_of_failure(&["sample", "--generator", &s(&bad), "--count", "10", "--out", &s(&dir.join("bad")), "--device", "cpu"]);
        assert!(err.contains(why), "{err}");
    }
}
