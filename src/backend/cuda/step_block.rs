//! A step's per-step values ([`StepValues`]) in device memory, and the binding that makes a step's
//! launches read them from there.
//!
//! While a block is bound on a thread ([`StepBlock::bind`]), every launch on its device whose
//! per-step value (a noise key's step, an SGD learning rate, Adam's bias corrections, a public
//! draw's keys, a gather's indices) equals the block's value of that kind gets the value's device
//! address in its parameters instead of the value (the `*_at` pointers of common.cuh). A CUDA graph
//! captured from such a step replays as the next step once [`StepBlock::upload`] has written the
//! next step's values: nothing a replay repeats changes from step to step.
//!
//! A strict binding (the one a capture uses) refuses a launch whose per-step value is not in the
//! block, naming it: a replay would repeat that value (a noise step repeated is noise reused, so
//! this is a privacy check, not a tidiness one).
use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, PinnedHostSlice};

use super::device::CudaDevice;
use super::params::NoiseKeyParams;
use crate::backend::step_values::{StepLayout, StepValues};
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
    staging: Vec<PinnedHostSlice<u32>>,
    next_staging: usize,
    /// Every batch index the block holds is below it (checked at each upload): a gather reads the
    /// block's indices only from a table of at least this many rows.
    index_bound: u32,
    /// The values last uploaded (what a launch compares its own values with).
    values: StepValues,
}

/// The block bound on this thread: its device, the device address of its words and its values.
struct Binding {
    device: *const CudaDevice,
    base: u64,
    values: StepValues,
    index_bound: u32,
    strict: bool,
}

thread_local! {
    static BOUND: RefCell<Option<Binding>> = const { RefCell::new(None) };
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
        Ok(StepBlock { device: device.clone(), layout, words, staging, next_staging: 0, index_bound, values: StepValues::default() })
    }

    pub fn layout(&self) -> StepLayout {
        self.layout
    }

    /// Queues the copy of `values` into the block, behind the work already on the stream (which
    /// still reads the previous values). Not inside a capture: the replays read the block, and
    /// each step's values are uploaded before its replay.
    pub fn upload(&mut self, values: &StepValues) -> Result<()> {
        values.check()?;
        if let Some(bad) = values.batch_indices.iter().find(|&&i| i >= self.index_bound) {
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
        self.values = values.clone();
        Ok(())
    }

    /// Runs `f` with this block bound on the thread (see the module doc); `strict` refuses launches
    /// whose per-step values are not in the block. Bindings do not nest.
    pub fn bind<R>(&self, strict: bool, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let (base, _guard) = self.words.device_ptr(self.device.stream());
        let binding =
            Binding { device: Arc::as_ptr(&self.device), base, values: self.values.clone(), index_bound: self.index_bound, strict };
        BOUND.with(|b| {
            let mut b = b.borrow_mut();
            if b.is_some() {
                return Err(Error::Invalid("a step block is already bound on this thread".into()));
            }
            *b = Some(binding);
            Ok(())
        })?;
        let result = f();
        BOUND.with(|b| b.borrow_mut().take());
        result
    }
}

/// The device address a launch on `dev` reads a per-step value from: 0 (the value travels in the
/// parameters) when no block is bound for `dev` or, outside a strict binding, when the block does
/// not hold it. `what` names the value for the error of a strict binding.
fn address(dev: &CudaDevice, what: &str, word: impl FnOnce(&Binding) -> Option<usize>) -> Result<u64> {
    BOUND.with(|b| {
        let b = b.borrow();
        let Some(binding) = b.as_ref().filter(|b| std::ptr::eq(b.device, dev)) else { return Ok(0) };
        match word(binding) {
            Some(w) => Ok(binding.base + 4 * w as u64),
            None if binding.strict => Err(Error::Invalid(format!(
                "{what} is not among the step's values in its step block: a replay of the captured step would repeat it"
            ))),
            None => Ok(0),
        }
    })
}

/// `key` as the kernels read it, its step from the bound block if the block holds it.
pub(super) fn noise_key_params(dev: &CudaDevice, key: &NoiseKey) -> Result<NoiseKeyParams> {
    let step = key.step;
    let step_at = address(dev, &format!("a noise key's step {step}"), |b| b.values.noise_step_word(step))?;
    Ok(NoiseKeyParams { step_at, ..NoiseKeyParams::new(key) })
}

pub(super) fn sgd_lr_at(dev: &CudaDevice, lr: f32) -> Result<u64> {
    address(dev, &format!("an SGD learning rate {lr}"), |b| b.values.sgd_lr_word(lr))
}

pub(super) fn adam_corrections_at(dev: &CudaDevice, corrections: (f32, f32)) -> Result<u64> {
    address(dev, &format!("Adam's bias corrections {corrections:?}"), |b| b.values.adam_corrections_word(corrections))
}

pub(super) fn draw_keys_at(dev: &CudaDevice, keys: &[[u32; 2]]) -> Result<u64> {
    address(dev, &format!("the keys of a public draw of {} members", keys.len()), |b| b.values.draw_keys_word(keys))
}

/// The block's batch indices for a gather of `indices` from a table of `table_rows` rows.
pub(super) fn batch_indices_at(dev: &CudaDevice, indices: &[u32], table_rows: usize) -> Result<u64> {
    address(dev, &format!("a gather of {} rows", indices.len()), |b| {
        (table_rows >= b.index_bound as usize).then(|| b.values.batch_indices_word(indices)).flatten()
    })
}
