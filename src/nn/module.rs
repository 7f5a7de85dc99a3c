//! Named tensors of layers and models: trainable parameters beside state buffers (spectral norm's
//! u, v), so that optimizers see only the former and checkpoints and EMA copies see both.
use std::collections::HashMap;
use std::path::Path;

use crate::backend::ops;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Whether a tensor is trained by an optimizer or is state that the forward pass updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// One named tensor of a module; `T` is `&Tensor` or `&mut Tensor`.
#[derive(Debug)]
pub struct Entry<T> {
    pub name: String,
    pub kind: TensorKind,
    pub tensor: T,
}

impl<T> Entry<T> {
    pub fn parameter(name: &str, tensor: T) -> Self {
        Entry { name: name.to_string(), kind: TensorKind::Parameter, tensor }
    }
    pub fn buffer(name: &str, tensor: T) -> Self {
        Entry { name: name.to_string(), kind: TensorKind::Buffer, tensor }
    }
}

/// `prefix.name` for every entry (how a model names its layers' tensors).
pub fn prefixed<T>(prefix: &str, entries: Vec<Entry<T>>) -> Vec<Entry<T>> {
    entries.into_iter().map(|e| Entry { name: format!("{prefix}.{}", e.name), ..e }).collect()
}

/// A layer or model whose tensors all carry the model-group dimension G first.
pub trait Module {
    /// Every tensor, parameters and buffers, in a fixed order.
    fn entries(&self) -> Vec<Entry<&Tensor>>;
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>>;

    /// The trainable tensors, in the order the optimizer state follows.
    fn params(&self) -> Vec<&Tensor> {
        self.entries().into_iter().filter(|e| e.kind == TensorKind::Parameter).map(|e| e.tensor).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Tensor> {
        self.entries_mut().into_iter().filter(|e| e.kind == TensorKind::Parameter).map(|e| e.tensor).collect()
    }
    /// State updated by the forward pass (saved in checkpoints, never trained).
    fn buffers(&self) -> Vec<&Tensor> {
        self.entries().into_iter().filter(|e| e.kind == TensorKind::Buffer).map(|e| e.tensor).collect()
    }
    fn buffers_mut(&mut self) -> Vec<&mut Tensor> {
        self.entries_mut().into_iter().filter(|e| e.kind == TensorKind::Buffer).map(|e| e.tensor).collect()
    }
    /// Every tensor by name, for checkpoints.
    fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        self.entries().into_iter().map(|e| (e.name, e.tensor)).collect()
    }
    /// G, the number of models in the group.
    fn groups(&self) -> usize {
        self.entries().first().map_or(0, |e| e.tensor.shape()[0])
    }
    /// Trainable parameters of one model of the group.
    fn parameter_count(&self) -> usize {
        self.params().iter().map(|p| p.numel()).sum::<usize>() / self.groups().max(1)
    }
}

/// One group of `members` (each of any group size, usually 1), concatenated along G: how models
/// initialised from their own seeds train together in one launch per op.
pub fn stack<M: Module + Clone>(members: &[M]) -> Result<M> {
    let first = members.first().ok_or_else(|| Error::Invalid("cannot stack an empty list of models".into()))?;
    let lists: Vec<Vec<Entry<&Tensor>>> = members.iter().map(|m| m.entries()).collect();
    let mut out = first.clone();
    for (i, entry) in out.entries_mut().into_iter().enumerate() {
        let parts = lists
            .iter()
            .map(|l| match l.get(i) {
                Some(e) if e.name == entry.name => Ok(e.tensor),
                _ => Err(Error::Invalid(format!("stack: the models differ at tensor {} ({})", i, entry.name))),
            })
            .collect::<Result<Vec<_>>>()?;
        *entry.tensor = ops::concat(&parts, 0)?;
    }
    Ok(out)
}

/// Every tensor of `module` replaced by `tensors["{prefix}.{name}"]`, taken out of the map and
/// moved to `device`, each checked against the module's shape: how a model is read back from a
/// checkpoint or a released generator, `file`, which the errors name.
pub fn load_prefixed<M: Module + ?Sized>(
    module: &mut M,
    tensors: &mut HashMap<String, Tensor>,
    prefix: &str,
    file: &Path,
    device: &Device,
) -> Result<()> {
    for entry in module.entries_mut() {
        let key = format!("{prefix}.{}", entry.name);
        let t = tensors.remove(&key).ok_or_else(|| Error::file(file, format!("lacks {key}")))?;
        if t.shape() != entry.tensor.shape() {
            return Err(Error::file(file, format!("{key} has shape {:?}, expected {:?}", t.shape(), entry.tensor.shape())));
        }
        *entry.tensor = t.to_device(device)?;
    }
    Ok(())
}

/// Model `g` of a group, as a group of one (its tensors copied out along G).
pub fn member<M: Module + Clone>(model: &M, g: usize) -> Result<M> {
    let groups = model.groups();
    if g >= groups {
        return Err(Error::Invalid(format!("member {g} of a group of {groups} models")));
    }
    let mut out = model.clone();
    for entry in out.entries_mut() {
        *entry.tensor = ops::narrow(entry.tensor, 0, g, 1)?;
    }
    Ok(out)
}
