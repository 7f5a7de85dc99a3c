//! A step's per-step values ([`StepValues`]) in device memory, and the binding that makes a step's
//! launches read them from there.
//!
//! While a block is bound on a thread ([`StepBlock::bind`]), every launch on its device whose
//! per-step value (a noise key's step, an SGD learning rate, a moving average's decay, Adam's bias
//! corrections, a public draw's keys, a gather's indices) equals the block's value of that kind gets the value's device
//! address in its parameters instead of the value (the `*_at` pointers of common.cuh). A CUDA graph
//! captured from such a step replays as the next step once [`StepBlock::upload`] has written the
//! next step's values: nothing a replay repeats changes from step to step.
//!
//! A strict binding (the one a capture uses) refuses an op whose per-step value is not in the
//! block, naming it (`ops` checks, on every backend): a replay would repeat that value, and a noise
//! step repeated is noise reused, so this is a privacy check, not a tidiness one.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, PinnedHostSlice};

use super::device::CudaDevice;
use super::params::NoiseKeyParams;
use crate::backend::step_values::{self, DeviceWords, StepLayout, StepValues};
use crate::dp::NoiseKey;
use crate::error::{Error, Result};

/// Host staging buffers in the ring: the host writes step s + 3's values while the copies of
/// steps s + 1 and s + 2 may still be queued behind the device's work.
const STAGING_RING: usize = 3;

/// One layout's worth of per-step values on one device, and pinned host memory to stage them in.
pub struct StepBlock {
    device: Arc<CudaDevice>,
    layout: StepLayout,
    words: CudaSlice<u32>,
    /// The device address of `words` (fixed for its life), taken once so that binding the block
    /// inside a capture touches no stream.
    base: u64,
    staging: Vec<PinnedHostSlice<u32>>,
    next_staging: usize,
    /// Every batch index the block holds is below it (checked at each upload): a gather reads the
    /// block's indices only from a table of at least this many rows.
    index_bound: u32,
    /// The values last uploaded (what a launch compares its own values with).
    values: StepValues,
}

impl StepBlock {
    /// A block for values of `layout` on `device` (zeros until the first upload), whose batch
    /// indices address a table of `index_bound` rows.
    pub fn new(device: &Arc<CudaDevice>, layout: StepLayout, index_bound: u32) -> Result<Self> {
        let n = layout.words();
        let stream = device.stream();
        let words = stream.alloc_zeros::<u32>(n).map_err(|e| Error::cuda(format!("allocating a step block of {n} words"), e))?;
        let staging = (0..STAGING_RING)
            .map(|_| {
                // SAFETY: every word is written (upload copies a whole layout's words in) before a
                // copy reads it.
                unsafe { stream.context().alloc_pinned::<u32>(n) }.map_err(|e| Error::cuda(format!("allocating {n} pinned words"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let base = words.device_ptr(stream).0;
        Ok(StepBlock { device: device.clone(), layout, words, base, staging, next_staging: 0, index_bound, values: StepValues::default() })
    }

    pub fn layout(&self) -> &StepLayout {
        &self.layout
    }

    /// Queues the copy of `values` into the block, behind the work already on the stream (which
    /// still reads the previous values). Not inside a capture: the replays read the block, and
    /// each step's values are uploaded before its replay. Values of one kind may coincide here
    /// (a replay reads each from its place); a binding, which finds them by value, refuses that.
    pub fn upload(&mut self, values: StepValues) -> Result<()> {
        values.check_placeable()?;
        if let Some(bad) = values.batch_indices.iter().flatten().find(|&&i| i >= self.index_bound) {
            return Err(Error::Invalid(format!("a step's batch index {bad} is past the {} rows its step block serves", self.index_bound)));
        }
        if values.layout() != self.layout {
            return Err(Error::Invalid(format!(
                "a step's values laid out as {:?} do not fit a step block made for {:?}",
                values.layout(),
                self.layout
            )));
        }
        let staging = &mut self.staging[self.next_staging];
        self.next_staging = (self.next_staging + 1) % STAGING_RING;
        // Waits for this buffer's previous copy (STAGING_RING uploads ago) to have run.
        staging.as_mut_slice().map_err(|e| Error::cuda("waiting for a step block's staging buffer", e))?.copy_from_slice(&values.words());
        self.device
            .stream()
            .memcpy_htod(&*staging, &mut self.words)
            .map_err(|e| Error::cuda("copying a step's values to the device", e))?;
        self.values = values;
        Ok(())
    }

    /// Runs `f` with the block's values bound on the thread ([`step_values::bind`]): launches on
    /// its device read the values they find there from the block; `strict` refuses ops whose
    /// per-step values are not in it.
    pub fn bind<R>(&self, strict: bool, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let words = DeviceWords { device: identity(&self.device), base: self.base, index_bound: self.index_bound };
        step_values::bind(&self.values, strict, Some(words), f)
    }
}

/// A device's identity in a binding.
fn identity(dev: &CudaDevice) -> *const () {
    (dev as *const CudaDevice).cast()
}

/// `key` as the kernels read it, its step from the bound block if the block holds it.
pub(super) fn noise_key_params(dev: &CudaDevice, key: &NoiseKey) -> NoiseKeyParams {
    let step_at = step_values::device_address(identity(dev), |v, _| v.noise_step_word(key.step));
    NoiseKeyParams { step_at, ..NoiseKeyParams::new(key) }
}

pub(super) fn sgd_lr_at(dev: &CudaDevice, lr: f32) -> u64 {
    step_values::device_address(identity(dev), |v, _| v.sgd_lr_word(lr))
}

pub(super) fn adam_corrections_at(dev: &CudaDevice, corrections: (f32, f32)) -> u64 {
    step_values::device_address(identity(dev), |v, _| v.adam_corrections_word(corrections))
}

pub(super) fn ema_decay_at(dev: &CudaDevice, decay: f32) -> u64 {
    step_values::device_address(identity(dev), |v, _| v.ema_decay_word(decay))
}

pub(super) fn draw_keys_at(dev: &CudaDevice, keys: &[[u32; 2]]) -> u64 {
    step_values::device_address(identity(dev), |v, _| v.draw_keys_word(keys))
}

/// The block's copy of `indices` for a gather from a table of `table_rows` rows (the batch's
/// indices or the example weight rows; see [`StepValues::gather_word`]).
pub(super) fn gather_indices_at(dev: &CudaDevice, indices: &[u32], table_rows: usize) -> u64 {
    step_values::device_address(identity(dev), |v, w| v.gather_word(indices, table_rows, w.index_bound as usize))
}
