//! An opt-in record of the noise keys a thread draws, so that a whole run can be checked for the
//! property the guarantee needs: every noised tensor gets fresh noise (no `(key, step, tensor)`
//! position twice). Noise that repeats across steps cancels in the difference of two updates and
//! protects nothing, yet training looks normal; only a record of what was drawn shows it.
//!
//! Off unless [`record_noise_keys`] is running on the thread: then one branch per noised tensor.
use std::cell::RefCell;

use super::noise::NoiseKey;

thread_local! {
    static RECORD: RefCell<Option<Vec<NoiseKey>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, beside its result, the key of every tensor noised (with a positive
/// standard deviation) on this thread meanwhile, in order. Not re-entrant: a nested call records
/// into its own list only.
pub fn record_noise_keys<R>(f: impl FnOnce() -> R) -> (R, Vec<NoiseKey>) {
    let outer = RECORD.with(|r| r.borrow_mut().replace(Vec::new()));
    let result = f();
    let keys = RECORD.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer)).unwrap_or_default();
    (result, keys)
}

/// Notes that `key` noised a tensor with standard deviation `std` (called by the noise ops).
pub(crate) fn note(key: &NoiseKey, std: f32) {
    if std > 0.0 {
        RECORD.with(|r| {
            if let Some(keys) = r.borrow_mut().as_mut() {
                keys.push(*key);
            }
        });
    }
}
