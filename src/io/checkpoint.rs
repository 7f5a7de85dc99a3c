//! Named tensors in safetensors files (the format PyTorch and JAX tools read), written atomically.
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::atomic_write_private;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// Saves `tensors` (any device; copied to the host) under their names, with string `metadata`, in a
/// file only its owner may read: every tensor file of a run (checkpoints, discriminators) is private
/// like the run. A released generator (`train::release`) is written with [`encode_tensors`].
pub fn save_tensors(path: &Path, tensors: &[(&str, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    atomic_write_private(path, &encode_tensors(path, tensors, metadata)?)
}

/// `tensors` and `metadata` as the bytes of a safetensors file (`path` names it in errors).
pub fn encode_tensors(path: &Path, tensors: &[(&str, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, data) = match t.dtype() {
            DType::F32 => (Dtype::F32, t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::F64 => (Dtype::F64, t.to_vec_f64()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        bytes.push((name.to_string(), dtype, t.shape().to_vec(), data));
    }
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::file(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::file(path, format!("cannot encode: {e}")))
}

/// Loads every tensor of a safetensors file onto `device` (f64 ones stay on the CPU), by name,
/// with the file's metadata.
pub fn load_tensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file = SafeTensors::deserialize(&raw).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&raw).map_err(|e| Error::file(path, format!("bad header: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let tensor = match view.dtype() {
            Dtype::F32 => {
                let values: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_vec(values, view.shape(), device)?
            }
            Dtype::F64 => {
                let values: Vec<f64> = data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect();
                Tensor::from_vec_f64(values, view.shape())?
            }
            other => return Err(Error::file(path, format!("tensor {name} has dtype {other:?}; dpgan reads F32 and F64"))),
        };
        out.insert(name, tensor);
    }
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// The metadata of a safetensors file, checked to be a whole file like [`load_tensors`] checks it,
/// without building its tensors.
pub fn load_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&raw).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    Ok(header.metadata().clone().unwrap_or_default())
}
