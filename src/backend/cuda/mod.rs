//! The CUDA backend: launchers of the kernels in `kernels/`, compiled by build.rs.
//!
//! Every launcher checks its preconditions, launches on the device's stream and checks the launch.
//! Ops without a kernel yet answer `Error::Unsupported`, naming the op and the device.
mod conv;
mod device;
mod elementwise;
mod gemm;
pub mod module;
mod optim;
mod params;
mod reduce;

pub use device::{device_count, driver_absent_reason, set_poison_allocations, CudaBuffer, CudaDevice, DeviceProperties};
pub use gemm::{allow_tf32, set_allow_tf32};
pub use module::{kernel_resources, Kernel, KernelResources};

use super::{AdamParams, Backend, BinaryOp, ConvGeometry, MatmulGeometry, SgdParams, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

fn buffer(t: &Tensor) -> &CudaBuffer {
    match t.storage() {
        Storage::Cuda(b) => b,
        Storage::Cpu(_) | Storage::CpuF64(_) => unreachable!("ops checks devices before dispatching to the CUDA backend"),
    }
}

fn output(buf: CudaBuffer, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_storage(Storage::Cuda(buf), shape.to_vec()))
}

/// A launch's result, with the kernel named in the error.
fn launched(kernel: Kernel, r: std::result::Result<impl Sized, cudarc::driver::DriverError>) -> Result<()> {
    r.map(|_| ()).map_err(|e| Error::cuda(format!("launching {}", kernel.symbol()), e))
}

impl CudaDevice {
    fn unsupported(&self, op: &'static str) -> Error {
        Error::Unsupported { op, device: format!("cuda:{} (no kernel yet; run it on the CPU backend)", self.ordinal()) }
    }
}

impl Backend for CudaDevice {
    fn name(&self) -> String {
        format!("cuda:{} ({})", self.ordinal(), self.properties().name)
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        elementwise::unary(buffer(x).device(), op, x)
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
        elementwise::binary(buffer(a).device(), op, a, b, out_shape)
    }

    fn sum_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        reduce::sum_to(buffer(x).device(), x, shape)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, geom: &MatmulGeometry) -> Result<Tensor> {
        gemm::matmul(buffer(a).device(), a, b, geom)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        conv::conv2d(buffer(x).device(), x, w, geom)
    }

    fn conv2d_input_grad(&self, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        conv::conv2d_input_grad(buffer(w).device(), dy, w, geom)
    }

    fn conv2d_weight_grad(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        conv::conv2d_weight_grad(buffer(x).device(), x, dy, geom)
    }

    fn max_pool2x2_gather(&self, _x: &Tensor, _v: &Tensor) -> Result<Tensor> {
        Err(self.unsupported("max_pool2x2"))
    }

    fn max_pool2x2_scatter(&self, _x: &Tensor, _dy: &Tensor) -> Result<Tensor> {
        Err(self.unsupported("max_pool2x2_scatter"))
    }

    fn upsample_nearest2x(&self, _x: &Tensor) -> Result<Tensor> {
        Err(self.unsupported("upsample_nearest2x"))
    }

    fn sum_pool2x2(&self, _x: &Tensor) -> Result<Tensor> {
        Err(self.unsupported("sum_pool2x2"))
    }

    fn narrow(&self, _x: &Tensor, _axis: usize, _start: usize, _len: usize) -> Result<Tensor> {
        Err(self.unsupported("narrow"))
    }

    fn pad(&self, _x: &Tensor, _axis: usize, _before: usize, _after: usize) -> Result<Tensor> {
        Err(self.unsupported("pad"))
    }

    fn concat(&self, _xs: &[&Tensor], _axis: usize) -> Result<Tensor> {
        Err(self.unsupported("concat"))
    }

    fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        reduce::log_softmax(buffer(x).device(), x)
    }

    fn power_iteration(&self, _w: &Tensor, _u: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(self.unsupported("power_iteration"))
    }

    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, hp: &SgdParams) -> Result<()> {
        optim::sgd_step(buffer(grad).device(), param, grad, momentum_buf, hp)
    }

    fn adam_step(&self, param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, t: u64, hp: &AdamParams) -> Result<()> {
        optim::adam_step(buffer(grad).device(), param, grad, m, v, t, hp)
    }
}
