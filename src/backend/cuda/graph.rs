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

impl CudaDevice {
    /// Runs `f` with the device's stream in capture mode: nothing it queues executes now; it is
    /// recorded into a graph, returned beside `f`'s value. Capture is thread-local: another thread's
    /// unrelated driver calls cannot invalidate it. If `f` fails, the capture is ended and
    /// discarded and `f`'s error returned; the state `f` left behind on the host (counters it
    /// advanced, tensors it replaced) is that of a step that did not run.
    pub fn capture<R>(self: &Arc<Self>, f: impl FnOnce() -> Result<R>) -> Result<(R, CapturedGraph)> {
        let stream = self.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::cuda("starting to capture a CUDA graph", e))?;
        let value = f();
        // Allocations the graph makes and does not free (tensors a step leaves behind) are freed
        // by the next replay before it allocates them again.
        let ended = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        let value = value?;
        let graph = ended
            .map_err(|e| Error::cuda("capturing a CUDA graph (a host copy, a wait or a free of older memory inside the capture?)", e))?
            .ok_or_else(|| Error::Invalid("the captured work launched nothing on the device".into()))?;
        Ok((value, CapturedGraph { graph }))
    }
}
