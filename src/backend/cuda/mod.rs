//! The CUDA backend: launchers of the kernels in `kernels/`, compiled by build.rs.
//!
//! Every launcher checks its preconditions, launches on the device's stream and checks the launch.
mod conv;
mod device;
mod dp;
mod elementwise;
mod gemm;
mod graph;
pub mod module;
mod norm;
mod optim;
mod params;
mod pool;
mod reduce;
mod rng;
mod shape;
mod step_block;

pub use device::{device_count, driver_absent_reason, set_poison_allocations, CudaBuffer, CudaDevice, DeviceProperties};
pub use gemm::{
    allow_tf32, mma_peak, mma_peak_expected, set_allow_tf32, tf32_pipeline, Tf32Pipeline, Tf32PipelineScope, Tf32Scope, MMA_PEAK_MAX_ROUNDS,
};
pub use graph::{set_force_capture_refusal, CapturedGraph};
pub use module::{kernel_resources, Kernel, KernelResources};
pub use step_block::StepBlock;

use super::{
    AdamParams, AdamTensors, Backend, BinaryOp, ConvGeometry, GradientNoise, MatmulGeometry, NoisedAdamTensors, NoisedTensors,
    PowerIteration, PowerIterationIo, PublicDraw, RowNorm, SgdParams, UnaryOp,
};
use crate::dp::NoiseKey;
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

    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        elementwise::broadcast_to(buffer(x).device(), x, shape)
    }

    fn sum_squares_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        reduce::sum_squares_to(buffer(x).device(), x, shape)
    }

    fn sum_products_to(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        reduce::sum_products_to(buffer(a).device(), a, b, shape)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, geom: &MatmulGeometry) -> Result<Tensor> {
        gemm::matmul(buffer(a).device(), a, b, bias, geom)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, geom: &ConvGeometry) -> Result<Tensor> {
        conv::conv2d(buffer(x).device(), x, w, bias, geom)
    }

    fn conv2d_input_grad(&self, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        conv::conv2d_input_grad(buffer(w).device(), dy, w, geom)
    }

    fn conv2d_weight_grad(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        conv::conv2d_weight_grad(buffer(x).device(), x, dy, geom)
    }

    fn max_pool2x2_gather(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        pool::max_pool2x2_gather(buffer(x).device(), x, v)
    }

    fn max_pool2x2_scatter(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        pool::max_pool2x2_scatter(buffer(x).device(), x, dy)
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        pool::upsample_nearest2x(buffer(x).device(), x)
    }

    fn sum_pool2x2(&self, x: &Tensor) -> Result<Tensor> {
        pool::sum_pool2x2(buffer(x).device(), x)
    }

    fn narrow(&self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        shape::narrow(buffer(x).device(), x, axis, start, len)
    }

    fn pad(&self, x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor> {
        shape::pad(buffer(x).device(), x, axis, before, after)
    }

    fn concat(&self, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = xs.first().ok_or_else(|| Error::shape("concat", "nothing to concatenate"))?;
        shape::concat(buffer(first).device(), xs, axis)
    }

    fn gather_rows(&self, table: &Tensor, indices: &[u32]) -> Result<Tensor> {
        shape::gather_rows(buffer(table).device(), table, indices)
    }

    fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        reduce::log_softmax(buffer(x).device(), x)
    }

    fn power_iterations(&self, layers: &mut [PowerIterationIo<'_>]) -> Result<Vec<PowerIteration>> {
        match layers.first() {
            None => Ok(Vec::new()),
            Some(layer) => norm::power_iterations(&buffer(layer.w).device().clone(), layers),
        }
    }

    fn pixel_norm(&self, x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        norm::pixel_norm(buffer(x).device(), x, eps)
    }

    fn pixel_norm_backward(&self, x: &Tensor, inv: &Tensor, dy: &Tensor) -> Result<Tensor> {
        norm::pixel_norm_backward(buffer(x).device(), x, inv, dy)
    }

    fn spectral_divide_backward(&self, dw: &Tensor, c: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        norm::spectral_divide_backward(buffer(dw).device(), dw, c, u, v, sigma)
    }

    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, hp: &SgdParams) -> Result<()> {
        optim::sgd_step(buffer(grad).device(), param, grad, momentum_buf, hp)
    }

    fn adam_step(&self, param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, t: u64, hp: &AdamParams) -> Result<()> {
        optim::adam_step(buffer(grad).device(), param, grad, m, v, t, hp)
    }

    fn sgd_steps(&self, pairs: &mut [(&mut Tensor, &Tensor)], hp: &SgdParams) -> Result<()> {
        match pairs.first() {
            None => Ok(()),
            Some((_, grad)) => {
                let dev = buffer(grad).device().clone();
                optim::sgd_steps(&dev, pairs, hp)
            }
        }
    }

    fn adam_steps(&self, tensors: &mut [AdamTensors<'_>], t: u64, hp: &AdamParams) -> Result<()> {
        match tensors.first() {
            None => Ok(()),
            Some(first) => {
                let dev = buffer(first.grad).device().clone();
                optim::adam_steps(&dev, tensors, t, hp)
            }
        }
    }

    fn ema_updates(&self, pairs: &mut [(&mut Tensor, &Tensor)], decay: f32) -> Result<()> {
        match pairs.first() {
            None => Ok(()),
            Some((_, x)) => {
                let dev = buffer(x).device().clone();
                optim::ema_updates(&dev, pairs, decay)
            }
        }
    }

    fn ema_update(&self, ema: &mut Tensor, x: &Tensor, decay: f32) -> Result<()> {
        optim::ema_update(buffer(x).device(), ema, x, decay)
    }

    fn add_gaussian_noise(&self, x: &mut Tensor, std: f32, key: &NoiseKey) -> Result<()> {
        let dev = buffer(x).device().clone();
        rng::add_gaussian_noise(&dev, x, std, key)
    }

    fn public_draws(&self, out: &mut Tensor, draw: PublicDraw, keys: &[NoiseKey]) -> Result<()> {
        let dev = buffer(out).device().clone();
        rng::public_draws(&dev, out, draw, keys)
    }

    fn sanitize_rows(&self, g: &Tensor, clip: f32, rows: RowNorm, noise_std: f32, key: &NoiseKey) -> Result<Tensor> {
        dp::sanitize_rows(buffer(g).device(), g, clip, rows, noise_std, key)
    }

    fn conv2d_weight_grad_sq_norms(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        dp::conv2d_weight_grad_sq_norms(buffer(x).device(), x, dy, geom)
    }

    fn add_gaussian_noise_and_divide(&self, x: &mut Tensor, std: f32, divisor: f32, key: &NoiseKey) -> Result<()> {
        let dev = buffer(x).device().clone();
        dp::add_gaussian_noise_and_divide(&dev, x, std, divisor, key)
    }
    fn noised_sgd_step(&self, param: &mut Tensor, sum: &Tensor, noise: &GradientNoise, hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
        let dev = buffer(param).device().clone();
        dp::noised_sgd_step(&dev, param, sum, noise, hp, flag)
    }
    fn noised_adam_step(
        &self,
        param: &mut Tensor,
        sum: &Tensor,
        noise: &GradientNoise,
        m: &mut Tensor,
        v: &mut Tensor,
        t: u64,
        hp: &AdamParams,
        flag: &mut Tensor,
    ) -> Result<()> {
        let dev = buffer(param).device().clone();
        dp::noised_adam_step(&dev, param, sum, noise, m, v, t, hp, flag)
    }

    fn noised_sgd_steps(&self, tensors: &mut [NoisedTensors<'_>], hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
        let dev = buffer(flag).device().clone();
        dp::noised_sgd_steps(&dev, tensors, hp, flag)
    }

    fn noised_adam_steps(&self, tensors: &mut [NoisedAdamTensors<'_>], t: u64, hp: &AdamParams, flag: &mut Tensor) -> Result<()> {
        let dev = buffer(flag).device().clone();
        dp::noised_adam_steps(&dev, tensors, t, hp, flag)
    }
}
