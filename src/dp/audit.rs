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

#[cfg(test)]
mod tests {
    use super::record_noise_keys;
    use crate::backend::ops;
    use crate::dp::noise::{NoiseKey, NoiseMode};
    use crate::tensor::{Device, Tensor};

    fn key(step: u64, tensor_index: u32) -> NoiseKey {
        NoiseKey { mode: NoiseMode::Fast, key: [7; 8], step, tensor_index }
    }

    /// Noise with a positive standard deviation is recorded, in order; σ = 0 adds nothing and is
    /// not; nothing is recorded outside a recording, and a nested recording keeps its own list.
    #[test]
    fn what_is_recorded_is_the_noise_actually_added() {
        let mut x = Tensor::zeros(&[3], &Device::Cpu).unwrap();
        ops::add_gaussian_noise(&mut x, 1.0, &key(9, 9)).unwrap();
        let (inner, outer) = record_noise_keys(|| {
            ops::add_gaussian_noise(&mut x, 1.0, &key(0, 0)).unwrap();
            ops::add_gaussian_noise(&mut x, 0.0, &key(0, 1)).unwrap();
            let ((), inner) = record_noise_keys(|| ops::add_gaussian_noise_and_divide(&mut x, 0.5, 2.0, &key(1, 0)).unwrap());
            ops::add_gaussian_noise(&mut x, 1e-30, &key(2, 0)).unwrap();
            inner
        });
        assert_eq!(inner, [key(1, 0)]);
        assert_eq!(outer, [key(0, 0), key(2, 0)]);
    }
}
