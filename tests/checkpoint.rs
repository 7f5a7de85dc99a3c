//! Checkpoint files: safetensors round trips, atomic replacement, errors that name the file.
mod common;

use std::collections::HashMap;

use dpgan::io::atomic_write;
use dpgan::io::checkpoint::{load_tensors, save_tensors};
use dpgan::tensor::{Device, Tensor};

#[test]
fn tensors_and_metadata_round_trip_bit_for_bit() {
    let mut rng = common::rng("tensors_and_metadata_round_trip_bit_for_bit");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let w = common::randn(&mut rng, &[3, 4, 5]);
    let b = Tensor::from_vec(vec![f32::NAN, -0.0, f32::INFINITY, 1e-40], &[4], &Device::Cpu).unwrap();
    let d = Tensor::from_vec_f64(vec![std::f64::consts::PI, -1e300], &[2]).unwrap();
    let meta = HashMap::from([("step".to_string(), "42".to_string())]);
    save_tensors(&path, &[("w", &w), ("b", &b), ("d", &d)], Some(meta.clone())).unwrap();
    let (loaded, loaded_meta) = load_tensors(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded_meta, meta);
    let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(loaded["w"].shape(), w.shape());
    assert_eq!(bits(&loaded["w"]), bits(&w));
    assert_eq!(bits(&loaded["b"]), bits(&b));
    assert_eq!(loaded["d"].to_vec_f64().unwrap(), d.to_vec_f64().unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind: {leftovers:?}");
}

#[test]
fn an_atomic_write_replaces_the_whole_file_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    atomic_write(&path, b"a long first version of the file").unwrap();
    atomic_write(&path, b"short").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"short");
    // A write that cannot happen leaves the target as it was and names it.
    let missing = dir.path().join("no-such-dir").join("x.json");
    let err = atomic_write(&missing, b"x").unwrap_err().to_string();
    assert!(err.contains("no-such-dir") && err.contains("cannot write"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn corrupt_or_missing_files_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let err = load_tensors(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("broken.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    let err = load_tensors(&dir.path().join("absent.safetensors"), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("absent.safetensors") && err.contains("cannot read"), "{err}");
}
