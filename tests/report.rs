//! `dpgan report RUN` on short CPU runs of each kind (DP-CGAN, DPSGD-GAN, GS-WGAN and its warm start): decodable plots and a labelled grid, a
//! summary whose ε, δ and settings are the run's, NOT PRIVATE said where it applies, no secret key
//! in any file it writes, and a directory that holds no run refused with a sentence.
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cli::{data_root, error_of, json_of, stdout_of, tiny_warm_start};
use common::key_scan::{files_under, holds_key, run_key};
use dpgan::data::classes::{class_names_of_file, DIGITS, FASHION_MNIST_CLASSES};
use dpgan::io::image::read_grid_tiles;
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A short DP-CGAN run on MNIST in `out`.
fn dp_cgan(out: &Path, extra: &[&str]) {
    let (data, out) = (s(&data_root().join("mnist")), s(out));
    let mut args = vec!["train", "dp-cgan", "--data", &data, "--out", &out, "--device", "cpu", "--batch-size", "64", "--seed", "5"];
    args.extend_from_slice(extra);
    stdout_of(&args);
}

/// The tiny DPSGD-GAN run of tests/train_dpsgd_gan.rs on MNIST in `out`, with `extra` flags.
fn dpsgd_gan(out: &Path, extra: &[&str]) {
    let (data, out) = (s(&data_root().join("mnist")), s(out));
    let mut args = vec!["train", "dpsgd-gan", "--data", &data, "--out", &out, "--device", "cpu", "--width", "16", "--batch-size", "64"];
    args.extend_from_slice(&["--seed", "3"]);
    args.extend_from_slice(extra);
    stdout_of(&args);
}

/// A PNG's width, height, colour type and pixels.
fn decode(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

/// A chart: an RGB PNG 900 px wide, `panels` × 340 px high, with more than background and text.
#[track_caller]
fn assert_chart(path: &Path, panels: u32) {
    let (w, h, colour, rgb) = decode(path);
    assert_eq!((w, h, colour), (900, 340 * panels, png::ColorType::Rgb), "{}", path.display());
    let coloured = rgb.chunks_exact(3).filter(|p| p[0] != p[1] || p[1] != p[2]).count();
    assert!(coloured > 300, "{}: only {coloured} coloured pixels, no series drawn", path.display());
}

/// No file under `dirs` and no text in `printed` holds `run`'s secret key.
#[track_caller]
fn assert_no_key(run: &Path, dirs: &[&Path], printed: &[&str]) {
    let key = run_key(run);
    for text in printed {
        assert!(!holds_key(&key, text.as_bytes()), "the key was printed:\n{text}");
    }
    let files: Vec<PathBuf> = dirs.iter().flat_map(|d| files_under(d)).collect();
    assert!(files.len() >= 2, "only {} report files", files.len());
    for path in files {
        assert!(!holds_key(&key, &fs::read(&path).unwrap()), "{} holds the run key", path.display());
    }
}

#[test]
fn a_dp_cgan_run_is_reported_with_its_plots_grid_epsilon_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    dp_cgan(&run, &["--steps", "12", "--log-every", "3", "--sample-every", "6", "--noise-multiplier", "1.15", "--target-epsilon", "50"]);
    let printed = stdout_of(&["report", &s(&run)]);
    let out = run.join("report");
    assert!(printed.contains("losses.png, epsilon.png, samples.png, summary.md"), "{printed}");
    assert_chart(&out.join("losses.png"), 2);
    assert_chart(&out.join("epsilon.png"), 1);
    // The latest grid, drawn again with the same digit labels: the same picture.
    let (w, h, colour, grid) = decode(&out.join("samples.png"));
    assert_eq!((w, h, colour), (312, 302, png::ColorType::Grayscale));
    assert_eq!(grid, decode(&run.join("samples/step-00000012.png")).3);

    let state = read_json(&run.join("checkpoint.json"));
    let epsilon = state["epsilon"].as_f64().unwrap();
    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    for expected in [
        format!("| ε spent (improved conversion, governs) | {epsilon:.4} |"),
        "| δ | 0.00001 |".into(),
        "| target ε | 50 (budget: the run stops".into(),
        "| noise multiplier σ | 1.15 |".into(),
        "| batch size B | 64 |".into(),
        "| clip norm C | 1.1 |".into(),
        "| sampling the ε assumes | Poisson".into(),
        "| noise key | secret".into(),
        "**Progress:** 12 of 12 steps".into(),
        format!("The output of `dpgan sample --run {}`", run.display()),
        "checkpoint.safetensors holds the run's secret key".into(),
    ] {
        assert!(summary.contains(&expected), "summary.md lacks {expected:?}:\n{summary}");
    }
    assert!(!summary.contains("NOT PRIVATE"), "{summary}");

    // --json prints the same summary, and a torn last metrics line (a crash mid-append) is left out.
    fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"step\": 1"))
        .unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let json = json_of(&["report", &s(&run), "--out", &s(&elsewhere), "--json"]);
    assert_eq!(json["algorithm"], "dp-cgan");
    assert_eq!(
        (json["private"].as_bool(), json["steps"]["taken"].as_u64(), json["steps"]["planned"].as_u64()),
        (Some(true), Some(12), Some(12))
    );
    let privacy = &json["privacy"];
    assert_eq!((privacy["epsilon"].as_f64(), privacy["delta"].as_f64()), (Some(epsilon), Some(1e-5)));
    let last: Value = serde_json::from_str(fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().rev().nth(1).unwrap()).unwrap();
    assert_eq!(privacy["epsilons"]["classic conversion"], last["epsilon_classic"], "{privacy}");
    assert_eq!((privacy["target_epsilon"].as_f64(), privacy["noise_key"].as_str()), (Some(50.0), Some("secret")));
    assert!(privacy["planned_epsilon"].as_f64().is_some_and(|e| (e - epsilon).abs() < 1e-12), "every planned step ran");
    assert_eq!((json["settings"]["batch size B"].as_u64(), json["settings"]["seed"].as_u64()), (Some(64), Some(5)));
    assert_eq!(json["files"], serde_json::json!(["losses.png", "epsilon.png", "samples.png", "summary.md"]));
    assert_eq!(fs::read_to_string(elsewhere.join("summary.md")).unwrap(), summary, "--out writes the same page");

    assert_no_key(&run, &[&out, &elsewhere], &[&printed, &json.to_string()]);
}

#[test]
fn a_dpsgd_gan_run_is_reported_with_its_plots_grid_epsilon_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    dpsgd_gan(
        &run,
        &[
            "--d-steps",
            "20",
            "--d-steps-per-g-step",
            "5",
            "--log-every",
            "5",
            "--sample-every",
            "10",
            "--noise-multiplier",
            "1.0",
            "--target-epsilon",
            "50",
        ],
    );
    let json = json_of(&["report", &s(&run), "--json"]);
    let out = run.join("report");
    assert_eq!(json["files"], serde_json::json!(["losses.png", "epsilon.png", "samples.png", "summary.md"]));
    assert_chart(&out.join("losses.png"), 2); // a fixed n_D: no schedule panels
    assert_chart(&out.join("epsilon.png"), 1);
    let (w, h, colour, grid) = decode(&out.join("samples.png"));
    assert_eq!((w, h, colour), (312, 302, png::ColorType::Grayscale));
    assert_eq!(grid, decode(&run.join("samples/step-00000020.png")).3, "the latest grid, drawn again with its labels");

    let state = read_json(&run.join("checkpoint.json"));
    let epsilon = state["epsilon"].as_f64().unwrap();
    assert_eq!((json["algorithm"].as_str(), json["private"].as_bool()), (Some("dpsgd-gan"), Some(true)));
    assert_eq!((json["steps"]["unit"].as_str(), json["steps"]["taken"].as_u64()), (Some("D steps"), Some(20)));
    let privacy = &json["privacy"];
    assert_eq!((privacy["epsilon"].as_f64(), privacy["delta"].as_f64()), (Some(epsilon), Some(1e-5)));
    let last: Value = serde_json::from_str(fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(privacy["epsilons"]["improved conversion"], last["epsilon"], "{privacy}");
    assert_eq!(privacy["epsilons"]["classic conversion"], last["epsilon_classic"], "{privacy}");
    assert!(privacy["planned_epsilon"].as_f64().is_some_and(|e| (e - epsilon).abs() < 1e-12), "every planned D step ran");
    let settings = &json["settings"];
    assert_eq!((settings["model width d"].as_u64(), settings["D steps per G step n_D"].as_str()), (Some(16), Some("5")));
    assert_eq!((settings["G steps taken"].as_u64(), settings["seed"].as_u64()), (Some(4), Some(3)));

    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    for expected in [
        format!("| ε spent (improved conversion, governs) | {epsilon:.4} |"),
        format!("| ε (classic conversion) | {:.4} |", last["epsilon_classic"].as_f64().unwrap()),
        "| δ | 0.00001 |".into(),
        "| target ε | 50 (budget: the run stops".into(),
        "| noise multiplier σ | 1 |".into(),
        "| sampling the ε assumes | Poisson: each record joins a step with probability q = B/N = 0.001067".into(),
        "| noise key | secret".into(),
        "**Progress:** 20 of 20 D steps".into(),
        "| batch size B | 64 |".into(),
        "| clip norm C | 1.0 |".into(),
        "| noise multiplier σ | 1.0 |".into(),
        format!("| sample rate q | {} |", 64.0 / 60_000.0),
        "| model width d | 16 |".into(),
        "| D steps per G step n_D | 5 |".into(),
        "| log / sample / checkpoint every | 5 / 10 / 5000 D steps |".into(),
        format!("The output of `dpgan sample --run {}`", run.display()),
    ] {
        assert!(summary.contains(&expected), "summary.md lacks {expected:?}:\n{summary}");
    }
    assert!(!summary.contains("NOT PRIVATE"), "{summary}");
    assert_no_key(&run, &[&out], &[&json.to_string()]);

    // The adaptive schedule adds n_D and D's accuracy on generated data; replayable noise is NOT PRIVATE.
    let replay = dir.path().join("replay");
    dpsgd_gan(&replay, &["--d-steps", "6", "--d-steps-per-g-step", "adaptive", "--log-every", "2", "--replayable-noise"]);
    let printed = stdout_of(&["report", &s(&replay)]);
    assert!(printed.contains("NOT PRIVATE"), "{printed}");
    assert_chart(&replay.join("report/losses.png"), 4);
    let summary = fs::read_to_string(replay.join("report/summary.md")).unwrap();
    let top: String = summary.lines().take(5).collect::<Vec<_>>().join("\n");
    assert!(top.contains("> **NOT PRIVATE"), "NOT PRIVATE is not at the top:\n{summary}");
    assert!(summary.contains("| D steps per G step n_D | adaptive (1, 2, 5, 10"), "{summary}");
    assert!(summary.contains("**derived from the seed (--replayable-noise): NOT PRIVATE**"), "{summary}");
}

#[test]
fn a_gs_wgan_run_and_its_warm_start_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (warm, run) = (dir.path().join("warm"), dir.path().join("run"));
    tiny_warm_start(&warm, 4, 2, 2);
    let (warm_s, run_s) = (s(&warm), s(&run));
    let args = ["--warm-start", &warm_s, "--out", &run_s, "--generator", "dcgan", "--device", "cpu", "--seed", "7"];
    stdout_of(&[&["train", "gs-wgan"][..], &args, &["--iterations", "4", "--log-every", "1", "--sample-every", "2"]].concat());

    let json = json_of(&["report", &run_s, "--json"]);
    let out = run.join("report");
    assert_chart(&out.join("losses.png"), 2);
    assert_chart(&out.join("epsilon.png"), 2); // one panel per accounting
    let (w, h, colour, _) = decode(&out.join("samples.png"));
    assert_eq!((w, h, colour), (312, 302, png::ColorType::Grayscale));
    let state = read_json(&run.join("checkpoint.json"));
    let privacy = &json["privacy"];
    assert_eq!(privacy["governs"], "per-step accounting");
    assert_eq!(privacy["epsilon"], state["epsilon_per_step"]);
    assert_eq!(privacy["epsilons"]["as-published accounting"], state["epsilon_as_published"]);
    assert_eq!((json["steps"]["unit"].as_str(), json["steps"]["taken"].as_u64()), (Some("iterations"), Some(4)));
    assert_eq!(json["settings"]["discriminators K"], 4);
    let summary = fs::read_to_string(out.join("summary.md")).unwrap();
    for expected in [
        format!("| ε spent (per-step accounting, governs) | {:.4} |", state["epsilon_per_step"].as_f64().unwrap()),
        format!("| ε (as-published accounting) | {:.4} |", state["epsilon_as_published"].as_f64().unwrap()),
        "| δ | 0.00001 |".into(),
        "| noise multiplier σ | 1.07 |".into(),
        "| sampling the ε assumes | per-step: each generator step counts once".into(),
        "| generator | dcgan |".into(),
    ] {
        assert!(summary.contains(&expected), "summary.md lacks {expected:?}:\n{summary}");
    }
    assert_no_key(&run, &[&out], &[&json.to_string()]);

    // The warm start: its losses, no ε (it spends none), nothing to publish.
    let json = json_of(&["report", &warm_s, "--json"]);
    assert_eq!((json["privacy"].clone(), json["private"].clone()), (Value::Null, Value::Null));
    assert_eq!(json["files"], serde_json::json!(["losses.png", "summary.md"]));
    assert_eq!((json["steps"]["taken"].as_u64(), json["steps"]["planned"].as_u64()), (Some(4), Some(4)));
    assert!(json["may_be_published"].as_str().unwrap().starts_with("Nothing"), "{json}");
    assert_chart(&warm.join("report/losses.png"), 2);
    assert!(!warm.join("report/epsilon.png").exists() && !warm.join("report/samples.png").exists());
}

#[test]
fn a_replayable_noise_run_says_not_private_first() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    dp_cgan(&run, &["--steps", "3", "--replayable-noise"]);
    let printed = stdout_of(&["report", &s(&run)]);
    assert!(printed.contains("NOT PRIVATE"), "{printed}");
    let summary = fs::read_to_string(run.join("report/summary.md")).unwrap();
    let top: String = summary.lines().take(5).collect::<Vec<_>>().join("\n");
    assert!(top.contains("> **NOT PRIVATE"), "NOT PRIVATE is not at the top:\n{summary}");
    assert!(summary.contains("Nothing with a privacy claim") && summary.contains("derived from the seed"), "{summary}");
    let json = json_of(&["report", &s(&run), "--json"]);
    assert_eq!((json["private"].as_bool(), json["privacy"]["noise_key"].as_str()), (Some(false), Some("replayable-from-seed-not-private")));
    assert!(json["warning"].as_str().is_some_and(|w| w.starts_with("NOT PRIVATE")), "{json}");

    // A report never lands beside a released data set.
    let released = dir.path().join("released");
    stdout_of(&["sample", "--run", &s(&run), "--count", "10", "--out", &s(&released), "--device", "cpu"]);
    let err = error_of(&["report", &s(&run), "--out", &s(&released)]);
    assert!(err.contains("holds a data set released by `dpgan sample`"), "{err}");
    assert!(!released.join("summary.md").exists());
}

#[test]
fn a_directory_that_holds_no_run_is_refused_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let synthetic = dir.path().join("synthetic");
    fs::create_dir(&synthetic).unwrap();
    fs::write(synthetic.join("sample.json"), "{}").unwrap();
    let unknown = dir.path().join("unknown");
    fs::create_dir(&unknown).unwrap();
    fs::write(unknown.join("config.json"), r#"{"algorithm": "dp-vae"}"#).unwrap();
    for (path, sentence) in [
        (&empty, "is not a dpgan run directory (no config.json)"),
        (&dir.path().join("missing"), "is not a dpgan run directory (no config.json)"),
        (&synthetic, "is a synthetic data set written by `dpgan sample`, not a run directory"),
        (&unknown, "holds a config.json for the algorithm \"dp-vae\", which this dpgan does not know"),
    ] {
        let err = error_of(&["report", &s(path)]);
        assert!(err.contains(sentence), "{}: {err}", path.display());
        assert!(!path.join("report").exists(), "{} got a report", path.display());
    }
}

#[test]
fn fashion_mnist_is_recognised_by_its_labels() {
    for split in ["train", "t10k"] {
        let file = format!("{split}-labels-idx1-ubyte.gz");
        assert_eq!(class_names_of_file(&data_root().join("fashion-mnist").join(&file)), FASHION_MNIST_CLASSES, "{file}");
        assert_eq!(class_names_of_file(&data_root().join("mnist").join(&file)), DIGITS, "{file}");
    }
    // And a grid read back keeps its tiles whatever its labels' width (the report relabels it).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.png");
    let images: Vec<f32> = (0..10 * 10 * 784).map(|i| (i % 256) as f32 / 255.0).collect();
    for labels in [DIGITS, FASHION_MNIST_CLASSES] {
        let grid =
            dpgan::io::image::Grid { images: &images, rows: 10, cols: 10, height: 28, width: 28, range: (0.0, 1.0), row_labels: &labels };
        grid.write_png(&path).unwrap();
        assert_eq!(read_grid_tiles(&path, 10, 10, 28, 28).unwrap(), images, "{labels:?}");
    }
}
