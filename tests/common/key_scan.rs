//! Looking for a run's secret key where it must not be: it lives in checkpoint.safetensors'
//! metadata (`dpgan.key`) and nowhere else, neither as hex nor as raw bytes.
use std::fs;
use std::path::{Path, PathBuf};

use dpgan::io::checkpoint::load_tensors;
use dpgan::Device;

/// The key `run`'s checkpoint keeps, as 64 hex digits and as its 32 bytes.
pub fn run_key(run: &Path) -> (String, Vec<u8>) {
    let (_, metadata) = load_tensors(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let hex = metadata.get("dpgan.key").expect("the checkpoint keeps the run key").clone();
    let hex = hex.trim_start_matches("replayable:").to_string();
    let bytes = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    (hex, bytes)
}

/// Whether `data` holds `key` (from [`run_key`]), as hex in any case or as its bytes.
pub fn holds_key((hex, bytes): &(String, Vec<u8>), data: &[u8]) -> bool {
    String::from_utf8_lossy(data).to_lowercase().contains(hex.as_str()) || data.windows(bytes.len()).any(|w| w == bytes.as_slice())
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
