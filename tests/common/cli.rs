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
