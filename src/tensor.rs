//! Tensors: a shape, an id and shared storage on one device.
//!
//! Storage is reference-counted so that the tape can keep a tensor alive cheaply; writing through a
//! shared tensor (optimizer updates) copies first, so what the tape saw never changes under it.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::census;
use crate::backend::cuda::{CudaBuffer, CudaDevice};
use crate::error::{ensure_shape, Error, Result};

/// Element type. Training runs in f32; f64 exists on the CPU for finite-difference checks.
/// bf16/f16 (through `half`) join here when the kernels use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

/// Where a tensor lives.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<CudaDevice>),
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(d) => write!(f, "cuda:{}", d.ordinal()),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The bytes behind a tensor.
pub enum Storage {
    Cpu(Vec<f32>),
    CpuF64(Vec<f64>),
    Cuda(CudaBuffer),
}

/// Unique per tensor value; the tape keys gradients by it. A reshape gets a new id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Clone)]
pub struct Tensor {
    id: TensorId,
    shape: Vec<usize>,
    storage: Arc<Storage>,
    /// When `storage` was made ([`census::storage_birth`]): lets the census see a step release
    /// storage made before it, which a CUDA graph capture of the step would refuse.
    born: u64,
}

impl Drop for Tensor {
    fn drop(&mut self) {
        // The last holder of a storage frees it.
        if Arc::strong_count(&self.storage) == 1 {
            census::note_release(self.born);
        }
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: Vec<usize>) -> Self {
        Tensor { id: TensorId::fresh(), shape, storage: Arc::new(storage), born: census::storage_birth() }
    }

    pub(crate) fn from_storage_checked(storage: Storage, shape: &[usize], _device: &Device) -> Result<Self> {
        let len = match &storage {
            Storage::Cpu(v) => v.len(),
            Storage::CpuF64(v) => v.len(),
            Storage::Cuda(b) => b.len(),
        };
        ensure_shape!(len == numel(shape), "tensor", "{len} values for shape {shape:?} ({} elements)", numel(shape));
        Ok(Self::from_storage(storage, shape.to_vec()))
    }

    /// An f64 tensor on the CPU (for finite-difference checks; no CUDA kernel takes f64).
    pub fn from_vec_f64(data: Vec<f64>, shape: &[usize]) -> Result<Self> {
        Self::from_storage_checked(Storage::CpuF64(data), shape, &Device::Cpu)
    }

    /// A tensor of `shape` filled with `value`, with this tensor's dtype and device.
    pub fn full_like(&self, shape: &[usize], value: f64) -> Result<Self> {
        match &*self.storage {
            Storage::CpuF64(_) => Self::from_vec_f64(vec![value; numel(shape)], shape),
            _ => Self::full(shape, value as f32, &self.device()),
        }
    }

    /// This tensor in `dtype` (CPU only for f64).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match dtype {
            DType::F64 => Self::from_vec_f64(self.to_vec_f64()?, &self.shape),
            DType::F32 => Self::from_vec(self.to_vec()?, &self.shape, &self.device()),
        }
    }

    /// The values as f64, copied to the host.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        match &*self.storage {
            Storage::CpuF64(v) => Ok(v.clone()),
            _ => Ok(self.to_vec()?.into_iter().map(f64::from).collect()),
        }
    }

    /// A tensor holding `data` (row-major) on `device`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Self> {
        ensure_shape!(data.len() == numel(shape), "from_vec", "{} values for shape {shape:?} ({} elements)", data.len(), numel(shape));
        census::note(census::HOST_TO_DEVICE);
        let storage = match device {
            Device::Cpu => Storage::Cpu(data),
            Device::Cuda(dev) => Storage::Cuda(dev.upload(&data)?),
        };
        Ok(Self::from_storage(storage, shape.to_vec()))
    }

    /// Storage for an op that writes every element (no fill: not counted as one). On the CPU it
    /// holds NaN, so an element the op forgot shows; on a GPU it is uninitialised, or NaN under
    /// `set_poison_allocations`.
    pub(crate) fn uninit(shape: &[usize], device: &Device) -> Result<Self> {
        let storage = match device {
            Device::Cpu => Storage::Cpu(vec![f32::NAN; numel(shape)]),
            Device::Cuda(dev) => Storage::Cuda(dev.alloc(numel(shape))?),
        };
        Ok(Self::from_storage(storage, shape.to_vec()))
    }

    pub fn zeros(shape: &[usize], device: &Device) -> Result<Self> {
        Self::full(shape, 0.0, device)
    }

    pub fn full(shape: &[usize], value: f32, device: &Device) -> Result<Self> {
        census::note(census::FILL);
        let storage = match device {
            Device::Cpu => Storage::Cpu(vec![value; numel(shape)]),
            Device::Cuda(dev) => Storage::Cuda(dev.full(numel(shape), value)?),
        };
        Ok(Self::from_storage(storage, shape.to_vec()))
    }

    /// A scalar (shape `[]`).
    pub fn scalar(value: f32, device: &Device) -> Result<Self> {
        Self::full(&[], value, device)
    }

    /// Standard normal entries drawn on the host from `rng` (reproducible from the seed).
    pub fn randn<R: Rng>(shape: &[usize], rng: &mut R, device: &Device) -> Result<Self> {
        let data = (0..numel(shape)).map(|_| StandardNormal.sample(rng)).collect();
        Self::from_vec(data, shape, device)
    }

    /// Uniform entries in `[low, high)` drawn on the host from `rng`.
    pub fn uniform<R: Rng>(shape: &[usize], low: f32, high: f32, rng: &mut R, device: &Device) -> Result<Self> {
        let data = (0..numel(shape)).map(|_| rng.random_range(low..high)).collect();
        Self::from_vec(data, shape, device)
    }

    /// One-hot rows: `labels` (each `< classes`) become a `[.., classes]` tensor with `prefix` leading
    /// dims whose product is `labels.len()`. This is also the embedding lookup: `one_hot(y) @ E`.
    pub fn one_hot(labels: &[u32], classes: usize, prefix: &[usize], device: &Device) -> Result<Self> {
        ensure_shape!(numel(prefix) == labels.len(), "one_hot", "{} labels for leading shape {prefix:?}", labels.len());
        let mut data = vec![0.0f32; labels.len() * classes];
        for (i, &l) in labels.iter().enumerate() {
            if l as usize >= classes {
                return Err(Error::Invalid(format!("one_hot: label {l} at position {i} is not below {classes} classes")));
            }
            data[i * classes + l as usize] = 1.0;
        }
        let mut shape = prefix.to_vec();
        shape.push(classes);
        Self::from_vec(data, &shape, device)
    }

    pub fn id(&self) -> TensorId {
        self.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::CpuF64(_) => DType::F64,
            Storage::Cpu(_) | Storage::Cuda(_) => DType::F32,
        }
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) | Storage::CpuF64(_) => Device::Cpu,
            Storage::Cuda(b) => Device::Cuda(b.device().clone()),
        }
    }

    /// The host slice of a CPU tensor.
    pub fn cpu_data(&self) -> Result<&[f32]> {
        match &*self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::CpuF64(_) => Err(Error::Invalid("cpu_data() on an f64 tensor: use to_vec_f64()".into())),
            Storage::Cuda(_) => Err(Error::Invalid("cpu_data() on a CUDA tensor: copy it with to_vec() or to_device()".into())),
        }
    }

    /// Mutable storage for in-place updates; copies first if the storage is shared (so a tensor a
    /// tape saved never changes under it).
    pub fn storage_mut(&mut self) -> Result<&mut Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            census::note(census::COPY_ON_WRITE);
            self.born = census::storage_birth();
            let copy = match &*self.storage {
                Storage::Cpu(v) => Storage::Cpu(v.clone()),
                Storage::CpuF64(v) => Storage::CpuF64(v.clone()),
                Storage::Cuda(b) => Storage::Cuda(b.try_clone()?),
            };
            self.storage = Arc::new(copy);
        }
        Ok(Arc::get_mut(&mut self.storage).expect("storage is unique after the copy"))
    }

    /// The values as f32, copied to the host (a synchronising copy for CUDA tensors).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        census::note(census::DEVICE_TO_HOST);
        match &*self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::CpuF64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            Storage::Cuda(b) => b.download(),
        }
    }

    /// Overwrites this tensor's values with `src`'s, in place (its storage, and so its device
    /// address, stays), from any device to any device: what keeps a working copy of a model in
    /// buffers a CUDA graph reads. Shapes and dtypes must agree.
    pub fn copy_from(&mut self, src: &Tensor) -> Result<()> {
        ensure_shape!(self.shape == src.shape, "copy_from", "copying {:?} into {:?}", src.shape, self.shape);
        if self.dtype() != src.dtype() {
            return Err(Error::Invalid(format!("copy_from: copying {:?} values into a {:?} tensor", src.dtype(), self.dtype())));
        }
        if std::ptr::eq(self.storage(), src.storage()) {
            return Ok(());
        }
        let dst = self.storage_mut()?;
        match (dst, &*src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.copy_from_slice(s),
            (Storage::CpuF64(d), Storage::CpuF64(s)) => d.copy_from_slice(s),
            (Storage::Cuda(d), Storage::Cuda(s)) => d.copy_from(s)?,
            (Storage::Cuda(d), Storage::Cpu(s)) => d.copy_from_host(s)?,
            (Storage::Cpu(d), Storage::Cuda(s)) => s.copy_to_host(d)?,
            _ => return Err(Error::Invalid("copy_from: f64 values move only between host tensors".into())),
        }
        Ok(())
    }

    /// A copy on `device` in storage of its own (never shared with this tensor).
    pub fn copy_on(&self, device: &Device) -> Result<Tensor> {
        let mut copy = if self.device().same(device) { self.full_like(&self.shape, 0.0)? } else { Tensor::zeros(&self.shape, device)? };
        copy.copy_from(self)?;
        Ok(copy)
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        ensure_shape!(self.numel() == 1, "item", "tensor of shape {:?} has {} elements", self.shape, self.numel());
        Ok(self.to_vec()?[0])
    }

    /// This tensor on `device` (f32 when it leaves the CPU).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.clone());
        }
        Tensor::from_vec(self.to_vec()?, &self.shape, device)
    }

    /// Same storage, new shape (row-major, so any shape with the same element count). New id.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        ensure_shape!(numel(shape) == self.numel(), "reshape", "cannot view {:?} ({} elements) as {shape:?}", self.shape, self.numel());
        Ok(Tensor { id: TensorId::fresh(), shape: shape.to_vec(), storage: self.storage.clone(), born: self.born })
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {})", self.id, self.shape, self.device())
    }
}

impl Device {
    /// Opens CUDA device `ordinal`, or says why it cannot.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::open(ordinal)?))
    }

    /// The first CUDA device if one works, else the CPU with the reason.
    pub fn best_available() -> (Device, Option<String>) {
        match Device::cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }
}
