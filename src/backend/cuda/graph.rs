//! CUDA graphs: the work a closure queues on a device's stream, captured once and replayed with one
//! launch. A replay runs the captured kernels with the captured launch parameters: the same keys,
//! step counters, learning rates and shapes, on the same buffers. That is what makes it the launch
//! floor of a step (its kernels without the host's per-launch work) and not yet a training step,
//! whose keys and counters change every step.
//!
//! What a captured closure may do: launch kernels, allocate and free memory it allocated itself
//! (the stream-ordered allocator turns both into graph nodes), and update tensors that existed
//! before in place. What it may not: copy from pageable host memory, wait for the stream, or free
//! memory allocated before the capture (the driver refuses a free node for it); the capture then
//! fails with the driver's reason.
use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use super::device::CudaDevice;
use crate::error::{Error, Result};

/// A captured piece of work, ready to replay on the stream it was captured from.
pub struct CapturedGraph {
    graph: CudaGraph,
}

impl CapturedGraph {
    /// Queues one replay on the device's stream (asynchronous, like a launch).
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(|e| Error::cuda("replaying a captured CUDA graph", e))
    }
}

thread_local! {
    static FORCE_CAPTURE_REFUSAL: Cell<bool> = const { Cell::new(false) };
}

/// Tests turn this on to make every capture of this thread end with a copy from pageable host
/// memory, which the driver refuses: the path of a real refusal (an op that cannot be captured, a
/// driver that will not), on real captured work, so that what a refusal leaves behind can be
/// checked on a GPU. Per thread, as captures are, so that tests running beside it capture as usual.
pub fn set_force_capture_refusal(on: bool) {
    FORCE_CAPTURE_REFUSAL.set(on);
}

impl CudaDevice {
    /// Runs `f` with the device's stream in capture mode: nothing it queues executes now; it is
    /// recorded into a graph, returned beside `f`'s value. Capture is thread-local: another thread's
    /// unrelated driver calls cannot invalidate it.
    ///
    /// If the driver refuses the capture (at one of `f`'s calls, at its end or at instantiation),
    /// the error is [`Error::CaptureRefused`]: the capture is ended and discarded, nothing of `f`
    /// ran, what `f` returned is dropped (its tensors were allocations of the discarded graph) and
    /// the errors their frees leave in the context are cleared, so the device stays usable. The
    /// state `f` left behind on the host (counters it advanced) is that of work that did not run:
    /// the caller puts it back (`train::captured::attempt_capture`). Any other error of `f` (an
    /// invalid argument, a plan the step refuses) is returned as it is.
    pub fn capture<R>(self: &Arc<Self>, f: impl FnOnce() -> Result<R>) -> Result<(R, CapturedGraph)> {
        let stream = self.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::CaptureRefused(format!("starting to capture a CUDA graph: {e}")))?;
        let value = f().and_then(|value| {
            if FORCE_CAPTURE_REFUSAL.get() {
                self.upload(&[0.0])?;
            }
            Ok(value)
        });
        // Frees inside a capture the driver has invalidated fail (a tensor `f` dropped on its way
        // out), and cudarc records such errors in the context, where the next call would report
        // them instead of running: end_capture's own, which would leave the stream capturing.
        // Taken out first; one means the capture failed.
        let recorded = stream.context().check_err();
        // Allocations the graph makes and does not free (tensors a step leaves behind) are freed
        // by the next replay before it allocates them again.
        let ended = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        match (value, recorded, ended) {
            (Ok(value), Ok(()), Ok(Some(graph))) => Ok((value, CapturedGraph { graph })),
            (Ok(_), Ok(()), Ok(None)) => Err(Error::Invalid("the captured work launched nothing on the device".into())),
            (value, recorded, ended) => {
                let refused = match value {
                    Err(Error::Cuda { context, msg }) => Error::CaptureRefused(format!("{context}: {msg}")),
                    Err(other) => other,
                    Ok(value) => {
                        drop(value);
                        Error::CaptureRefused(match (recorded, ended) {
                            (Err(e), _) => format!("freeing memory inside the capture: {e}"),
                            (Ok(()), Err(e)) => {
                                format!("ending the capture (a host copy, a wait or a free of older memory inside it?): {e}")
                            }
                            (Ok(()), Ok(_)) => unreachable!("a finished capture is matched above"),
                        })
                    }
                };
                // Frees of the discarded graph's allocations fail; cudarc records such errors in
                // the context and would report them at the next call. A lasting fault of the
                // device (an illegal address) is not cleared by this: the driver reports it again.
                let _ = stream.context().check_err();
                Err(refused)
            }
        }
    }
}
