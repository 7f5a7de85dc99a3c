//! An opt-in count of what a thread asks of its backend, by op: every `ops` entry point, and the
//! tensor transfers and fills that are launches or copies on a GPU. On the GPU each op is at least
//! one kernel launch with its host-side cost (allocation, argument packing, the tape's work), so
//! the count is what fusing work lowers, and a host copy inside a training step is a stall; both
//! show here on any machine, before a GPU runs them. `dpgan bench step` reports the census of
//! one step.
//!
//! Off unless [`count_ops`] is running on the thread: then one map update per op.
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static COUNTS: RefCell<Option<BTreeMap<&'static str, u64>>> = const { RefCell::new(None) };
    /// The first storage birth of the count running on this thread.
    static COUNT_START: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Storage births, in order, across threads.
static BIRTHS: AtomicU64 = AtomicU64::new(0);

/// An op's name for a copy from the host to the tensor's device (a real copy on a GPU).
pub const HOST_TO_DEVICE: &str = "host_to_device";
/// An op's name for a copy back to the host: on a GPU it waits for the stream.
pub const DEVICE_TO_HOST: &str = "device_to_host";
/// An op's name for a tensor filled with one value (a kernel launch on a GPU).
pub const FILL: &str = "fill";
/// An op's name for the copy an in-place update makes of a tensor whose storage is shared (a
/// device-to-device copy and an allocation on a GPU, which the update would not need if the
/// tensor were its storage's only owner).
pub const COPY_ON_WRITE: &str = "copy_on_write";

/// An op's name for the release of a tensor storage made before the count began: a step that
/// frees what an earlier step made (a state tensor replaced instead of updated) cannot be captured
/// into a CUDA graph, whose frees may only release the graph's own allocations.
pub const RELEASE_OF_OLDER: &str = "release_of_older";

/// Runs `f` and returns, beside its result, how many times each op ran on this thread meanwhile.
/// Not re-entrant: a nested call counts into its own map only.
pub fn count_ops<R>(f: impl FnOnce() -> R) -> (R, BTreeMap<&'static str, u64>) {
    let outer = COUNTS.with(|c| c.borrow_mut().replace(BTreeMap::new()));
    let outer_start = COUNT_START.with(|s| s.replace(BIRTHS.load(Ordering::Relaxed)));
    let result = f();
    COUNT_START.with(|s| s.set(outer_start));
    let counts = COUNTS.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    (result, counts)
}

/// A new storage's birth, for [`note_release`].
pub(crate) fn storage_birth() -> u64 {
    BIRTHS.fetch_add(1, Ordering::Relaxed)
}

/// Notes the release of the storage born at `born`, if it is older than the running count.
pub(crate) fn note_release(born: u64) {
    if born < COUNT_START.with(Cell::get) {
        note(RELEASE_OF_OLDER);
    }
}

/// Notes one run of `op` (called by `ops` and the tensor constructors).
pub(crate) fn note(op: &'static str) {
    COUNTS.with(|c| {
        if let Some(counts) = c.borrow_mut().as_mut() {
            *counts.entry(op).or_default() += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ops;
    use crate::tensor::{Device, Tensor};

    #[test]
    fn ops_transfers_and_fills_are_counted_only_while_counting() {
        let x = Tensor::from_vec(vec![1.0, -2.0, 3.0], &[3], &Device::Cpu).unwrap();
        let ((), counts) = count_ops(|| {
            let y = ops::unary(crate::backend::UnaryOp::Relu, &x).unwrap();
            let z = ops::binary(crate::backend::BinaryOp::Add, &y, &x).unwrap();
            ops::unary(crate::backend::UnaryOp::Exp, &z).unwrap().to_vec().unwrap();
            Tensor::zeros(&[4], &Device::Cpu).unwrap();
            Tensor::from_vec(vec![0.0; 2], &[2], &Device::Cpu).unwrap();
            let ((), inner) = count_ops(|| {
                ops::unary(crate::backend::UnaryOp::Exp, &x).unwrap();
            });
            assert_eq!(inner, BTreeMap::from([("unary", 1)]), "a nested count keeps its own");
        });
        assert_eq!(counts, BTreeMap::from([("binary", 1), (DEVICE_TO_HOST, 1), (FILL, 1), (HOST_TO_DEVICE, 1), ("unary", 2)]));
        // Outside count_ops nothing is recorded (and nothing panics).
        ops::unary(crate::backend::UnaryOp::Exp, &x).unwrap();
        assert_eq!(count_ops(|| ()).1, BTreeMap::new());
    }

    /// Only the release of storage made before the count is noted: not a temporary of the counted
    /// work, not a tensor whose storage another tensor still holds, not a copy-on-write's new
    /// storage; an older storage's last holder dropped inside the count is.
    #[test]
    fn releases_of_storage_older_than_the_count_are_counted() {
        let older = Tensor::zeros(&[3], &Device::Cpu).unwrap();
        let shared = Tensor::zeros(&[2], &Device::Cpu).unwrap();
        let kept = shared.clone();
        let mut written = Tensor::zeros(&[2], &Device::Cpu).unwrap();
        let reader = written.clone();
        let ((), counts) = count_ops(|| {
            drop(Tensor::zeros(&[4], &Device::Cpu).unwrap());
            drop(shared);
            written.storage_mut().unwrap();
            drop(written);
            drop(older);
        });
        assert_eq!(counts.get(RELEASE_OF_OLDER), Some(&1), "{counts:?}");
        drop((kept, reader));
    }
}
