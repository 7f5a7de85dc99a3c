//! A CUDA device: context, stream, the loaded kernel module and its properties.
//!
//! libcuda is loaded at run time. The probe order matters: cudarc panics if the driver library is
//! absent, so `is_culib_present()` is asked first and every failure becomes a clear `NoDevice`.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;

use super::module::{Kernel, KernelTable, FATBIN};
use crate::error::{Error, Result};

static POISON_ALLOCATIONS: AtomicBool = AtomicBool::new(false);

/// Tests turn this on so that every fresh device allocation starts as NaN: a kernel that leaves an
/// output element unwritten then fails its comparison instead of passing on leftover memory.
pub fn set_poison_allocations(on: bool) {
    POISON_ALLOCATIONS.store(on, Ordering::Relaxed);
}

/// What the driver tells about a device, read once when it is opened.
#[derive(Clone, Debug)]
pub struct DeviceProperties {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub total_memory: usize,
    pub max_shared_memory_per_block: i32,
    pub max_threads_per_block: i32,
}

/// An opened device with our kernels loaded. Shared (`Arc`) by every tensor that lives on it.
pub struct CudaDevice {
    ordinal: usize,
    stream: Arc<CudaStream>,
    kernels: KernelTable,
    properties: DeviceProperties,
}

/// Why no CUDA device can be used here, or `None` if the driver library loads.
pub fn driver_absent_reason() -> Option<String> {
    if FATBIN.is_none() {
        return Some("this dpgan was built without nvcc, so it holds no CUDA kernels (see README: GPU build)".into());
    }
    // SAFETY: only tries to dlopen libcuda; no driver call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("the NVIDIA driver library (libcuda.so) was not found on this machine".into());
    }
    None
}

/// The number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize> {
    if let Some(why) = driver_absent_reason() {
        return Err(Error::NoDevice(why));
    }
    cudarc::driver::result::init().map_err(|e| Error::NoDevice(format!("the driver did not initialise: {e}")))?;
    let n = CudaContext::device_count().map_err(|e| Error::NoDevice(format!("cannot count devices: {e}")))?;
    if n <= 0 {
        return Err(Error::NoDevice("the driver reports no CUDA devices".into()));
    }
    Ok(n as usize)
}

impl CudaDevice {
    /// Opens device `ordinal` (once per process; later calls share it).
    pub fn open(ordinal: usize) -> Result<Arc<CudaDevice>> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
        let mut open = OPEN.get_or_init(Default::default).lock().expect("device table lock");
        if let Some(dev) = open.get(&ordinal) {
            return Ok(dev.clone());
        }
        let dev = Arc::new(Self::create(ordinal)?);
        open.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn create(ordinal: usize) -> Result<CudaDevice> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice(format!("cuda:{ordinal} requested but only {count} device(s) found")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::cuda(format!("creating a context on cuda:{ordinal}"), e))?;
        let attr = |a: Attr| ctx.attribute(a).map_err(|e| Error::cuda("reading device attributes", e));
        let properties = DeviceProperties {
            name: ctx.name().map_err(|e| Error::cuda("reading the device name", e))?,
            compute_capability: ctx.compute_capability().map_err(|e| Error::cuda("reading the compute capability", e))?,
            multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            total_memory: ctx.total_mem().map_err(|e| Error::cuda("reading the memory size", e))?,
            max_shared_memory_per_block: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            max_threads_per_block: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        };
        let fatbin = FATBIN.expect("driver_absent_reason() checked the fatbin");
        let module = ctx.load_module(Ptx::from_binary(fatbin.to_vec())).map_err(|e| {
            Error::cuda(
                format!(
                    "loading dpgan's kernels on {} (sm_{}{}); the build's targets are {:?}",
                    properties.name,
                    properties.compute_capability.0,
                    properties.compute_capability.1,
                    super::module::CUDA_ARCHS
                ),
                e,
            )
        })?;
        let kernels = KernelTable::load(&module)?;
        keep_freed_memory_cached(&ctx)?;
        // One explicit stream per device; ops are ordered on it, so cudarc's per-buffer events are
        // not needed.
        // SAFETY: called before any buffer exists on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| Error::cuda("creating a stream", e))?;
        Ok(CudaDevice { ordinal, stream, kernels, properties })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn properties(&self) -> &DeviceProperties {
        &self.properties
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub(crate) fn kernel(&self, k: Kernel) -> &cudarc::driver::CudaFunction {
        self.kernels.get(k)
    }

    /// The device's free and total memory in bytes, as the driver reports them now.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.stream.context().mem_get_info().map_err(|e| Error::cuda("querying the device's free memory", e))
    }

    /// Waits for all work queued on this device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| Error::cuda("synchronising the stream", e))
    }

    /// The device's default memory pool (where every tensor is allocated, see
    /// [`keep_freed_memory_cached`]), or `None` when the device has no stream-ordered allocator.
    fn memory_pool(&self) -> Result<Option<cudarc::driver::sys::CUmemoryPool>> {
        use cudarc::driver::sys;
        let ctx = self.stream.context();
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` receives the handle of the device's default pool.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
            .result()
            .map_err(|e| Error::cuda("getting the default memory pool", e))?;
        Ok(Some(pool))
    }

    /// The most bytes the tensors' memory pool has had in use at once since the device was opened
    /// or [`CudaDevice::reset_pool_used_high`]; `None` without a stream-ordered allocator.
    pub fn pool_used_high(&self) -> Result<Option<u64>> {
        use cudarc::driver::sys;
        let Some(pool) = self.memory_pool()? else { return Ok(None) };
        let mut bytes: u64 = 0;
        // SAFETY: CU_MEMPOOL_ATTR_USED_MEM_HIGH is a cuuint64_t, written into `bytes`.
        unsafe {
            sys::cuMemPoolGetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&mut bytes as *mut u64).cast())
        }
        .result()
        .map_err(|e| Error::cuda("reading the memory pool's high-water mark", e))?;
        Ok(Some(bytes))
    }

    /// Starts a new high-water mark from the memory in use now.
    pub fn reset_pool_used_high(&self) -> Result<()> {
        use cudarc::driver::sys;
        let Some(pool) = self.memory_pool()? else { return Ok(()) };
        // The driver accepts only 0 here, meaning "reset to the current usage".
        let mut zero: u64 = 0;
        // SAFETY: CU_MEMPOOL_ATTR_USED_MEM_HIGH takes a cuuint64_t, read from `zero`.
        unsafe { sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&mut zero as *mut u64).cast()) }
            .result()
            .map_err(|e| Error::cuda("resetting the memory pool's high-water mark", e))
    }

    /// Uninitialised device memory for `len` f32 (every kernel writes all of its output). Under
    /// [`set_poison_allocations`] it is filled with NaN first, so a forgotten element shows.
    pub(crate) fn alloc(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        // SAFETY: the caller overwrites every element before reading it (each launcher writes its
        // whole output). The driver rejects zero-byte allocations, so an empty tensor holds one
        // unused element and its logical length 0.
        let slice = unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(|e| Error::cuda(format!("allocating {len} floats"), e))?;
        let mut buf = CudaBuffer { slice, len, device: self.clone() };
        if POISON_ALLOCATIONS.load(Ordering::Relaxed) {
            super::elementwise::fill(self, &mut buf, f32::NAN)?;
        }
        Ok(buf)
    }

    pub fn upload(self: &Arc<Self>, data: &[f32]) -> Result<CudaBuffer> {
        if data.is_empty() {
            return self.alloc(0);
        }
        let slice = self.stream.clone_htod(data).map_err(|e| Error::cuda(format!("copying {} floats to the device", data.len()), e))?;
        Ok(CudaBuffer { slice, len: data.len(), device: self.clone() })
    }

    pub fn full(self: &Arc<Self>, len: usize, value: f32) -> Result<CudaBuffer> {
        let mut buf = self.alloc(len)?;
        super::elementwise::fill(self, &mut buf, value)?;
        Ok(buf)
    }
}

/// Every tensor's memory comes from the device's stream-ordered pool (`cuMemAllocAsync`). By
/// default the pool hands freed memory back to the driver at each synchronisation; with no release
/// threshold it keeps it, so a training step's allocations are served from the pool (a caching
/// allocator) after the first step, never from `cuMemAlloc`.
fn keep_freed_memory_cached(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: `pool` receives the device's default pool handle; the attribute value is a u64 as
    // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD requires, alive for the duration of the call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| Error::cuda("getting the default memory pool", e))?;
        sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&mut threshold as *mut u64).cast())
            .result()
            .map_err(|e| Error::cuda("setting the memory pool's release threshold", e))?;
    }
    Ok(())
}

/// f32 device memory owned by a tensor, with the device it lives on.
pub struct CudaBuffer {
    pub(crate) slice: CudaSlice<f32>,
    /// Logical length: `slice` holds at least one element even for an empty tensor.
    len: usize,
    device: Arc<CudaDevice>,
}

impl CudaBuffer {
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn download(&self) -> Result<Vec<f32>> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        self.device.stream.clone_dtoh(&self.slice).map_err(|e| Error::cuda(format!("copying {} floats to the host", self.len()), e))
    }
}

impl CudaBuffer {
    /// Overwrites the buffer with `src`'s values (same device and length), queued on the stream.
    pub fn copy_from(&mut self, src: &CudaBuffer) -> Result<()> {
        if !Arc::ptr_eq(&self.device, &src.device) || self.len != src.len {
            return Err(Error::Invalid(format!(
                "copying {} floats into a buffer of {} on another device or of another length",
                src.len, self.len
            )));
        }
        if self.len == 0 {
            return Ok(());
        }
        self.device
            .stream
            .memcpy_dtod(&src.slice, &mut self.slice)
            .map_err(|e| Error::cuda(format!("copying {} floats on the device", self.len), e))
    }

    /// Overwrites the buffer with host values (as many as it holds).
    pub fn copy_from_host(&mut self, data: &[f32]) -> Result<()> {
        if data.len() != self.len {
            return Err(Error::Invalid(format!("copying {} floats into a buffer of {}", data.len(), self.len)));
        }
        if self.len == 0 {
            return Ok(());
        }
        self.device
            .stream
            .memcpy_htod(data, &mut self.slice)
            .map_err(|e| Error::cuda(format!("copying {} floats to the device", self.len), e))
    }

    /// Copies the values into `out` (as many as the buffer holds), waiting for them.
    pub fn copy_to_host(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len {
            return Err(Error::Invalid(format!("copying {} floats into a host slice of {}", self.len, out.len())));
        }
        if self.len == 0 {
            return Ok(());
        }
        self.device.stream.memcpy_dtoh(&self.slice, out).map_err(|e| Error::cuda(format!("copying {} floats to the host", self.len), e))?;
        self.device.stream.synchronize().map_err(|e| Error::cuda("waiting for a copy to the host", e))
    }

    /// A device-to-device copy (used when an in-place update meets shared storage).
    pub fn try_clone(&self) -> Result<Self> {
        let slice = self
            .device
            .stream
            .clone_dtod(&self.slice)
            .map_err(|e| Error::cuda(format!("copying {} floats on the device", self.len()), e))?;
        Ok(CudaBuffer { slice, len: self.len, device: self.device.clone() })
    }
}
