//! The CPU reference backend: plain loops, f64 accumulation where a sum is long, GEMM-shaped work
//! through `matrixmultiply` (the plain-loop oracle lives in the tests). Generic over f32 and f64.
mod conv;
mod dp;
mod elementwise;
mod gemm;
mod norm;
mod optim;
mod pool;
mod real;
mod reduce;
mod rng;
mod shape;

pub use conv::{add_channel_bias, conv2d_fwd, conv2d_input_grad, conv2d_weight_grad};
pub use dp::{add_gaussian_noise_and_divide, conv2d_weight_grad_sq_norms, noised_gradient, sanitize_rows};
pub use elementwise::{binary_broadcast, broadcast_copy, broadcast_strides, unary_map};
pub use gemm::gemm_grouped;
pub use norm::{pixel_norm, pixel_norm_backward, power_iteration, spectral_divide_backward};
pub use optim::{adam_update, ema_update, sgd_update};
pub use pool::{max_pool2x2_gather, max_pool2x2_scatter, sum_pool2x2, upsample_nearest2x};
pub use real::Real;
pub use reduce::{log_softmax_rows, sum_products_to, sum_squares_to, sum_to};
pub use rng::{add_gaussian_noise, public_draws};
pub use shape::{concat, gather_rows, narrow, pad};

use real::by_dtype;

use super::{
    AdamParams, AdamTensors, Backend, BinaryOp, ConvGeometry, GradientNoise, MatmulGeometry, NoisedAdamTensors, NoisedTensors,
    PowerIteration, PowerIterationInput, PowerIterationIo, PublicDraw, RowNorm, SgdParams, UnaryOp,
};
use crate::dp::NoiseKey;
use crate::error::Result;
use crate::tensor::Tensor;

/// The CPU backend (stateless).
pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(unary_map(op, T::host(x)), x.shape()))
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
        by_dtype!(a.dtype(), T => T::wrap(binary_broadcast(op, T::host(a), a.shape(), T::host(b), b.shape(), out_shape), out_shape))
    }

    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(broadcast_copy(T::host(x), x.shape(), shape), shape))
    }

    fn sum_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(sum_to(T::host(x), x.shape(), shape), shape))
    }

    fn sum_squares_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(sum_squares_to(T::host(x), x.shape(), shape), shape))
    }

    fn sum_products_to(&self, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        by_dtype!(a.dtype(), T => T::wrap(sum_products_to(T::host(a), T::host(b), a.shape(), shape), shape))
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, geom: &MatmulGeometry) -> Result<Tensor> {
        by_dtype!(a.dtype(), T => {
            let mut c = vec![T::of(0.0); geom.groups * geom.m * geom.n];
            gemm_grouped(geom, T::host(a), T::host(b), &mut c);
            if let (Some(bias), true) = (bias, geom.n > 0) {
                // One rounding per element, as a separate broadcast add.
                let bias = T::host(bias);
                for (row, c_row) in c.chunks_mut(geom.n).enumerate() {
                    let group_bias = &bias[row / geom.m.max(1) * geom.n..][..geom.n];
                    c_row.iter_mut().zip(group_bias).for_each(|(v, &b)| *v += b);
                }
            }
            T::wrap(c, &[geom.groups, geom.m, geom.n])
        })
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, geom: &ConvGeometry) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => {
            let mut y = conv2d_fwd(geom, T::host(x), T::host(w));
            if let Some(bias) = bias {
                add_channel_bias(geom, &mut y, T::host(bias));
            }
            T::wrap(y, &geom.output_shape())
        })
    }

    fn conv2d_input_grad(&self, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        by_dtype!(dy.dtype(), T => T::wrap(conv2d_input_grad(geom, T::host(dy), T::host(w)), &geom.input_shape()))
    }

    fn conv2d_weight_grad(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(conv2d_weight_grad(geom, T::host(x), T::host(dy)), &geom.weight_shape()))
    }

    fn max_pool2x2_gather(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => {
            let (out, shape) = max_pool2x2_gather(T::host(x), T::host(v), x.shape());
            T::wrap(out, &shape)
        })
    }

    fn max_pool2x2_scatter(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(max_pool2x2_scatter(T::host(x), T::host(dy), x.shape()), x.shape()))
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => {
            let (out, shape) = upsample_nearest2x(T::host(x), x.shape());
            T::wrap(out, &shape)
        })
    }

    fn sum_pool2x2(&self, x: &Tensor) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => {
            let (out, shape) = sum_pool2x2(T::host(x), x.shape());
            T::wrap(out, &shape)
        })
    }

    fn narrow(&self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => {
            let (out, shape) = narrow(T::host(x), x.shape(), axis, start, len);
            T::wrap(out, &shape)
        })
    }

    fn pad(&self, x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => {
            let (out, shape) = pad(T::host(x), x.shape(), axis, before, after);
            T::wrap(out, &shape)
        })
    }

    fn concat(&self, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
        by_dtype!(xs[0].dtype(), T => {
            let parts: Vec<(&[T], &[usize])> = xs.iter().map(|t| (T::host(t), t.shape())).collect();
            let (out, shape) = concat(&parts, axis);
            T::wrap(out, &shape)
        })
    }

    fn gather_rows(&self, table: &Tensor, indices: &[u32]) -> Result<Tensor> {
        by_dtype!(table.dtype(), T => {
            let (out, shape) = gather_rows(T::host(table), table.shape(), indices);
            T::wrap(out, &shape)
        })
    }

    fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        let cols = x.shape()[x.rank() - 1];
        by_dtype!(x.dtype(), T => T::wrap(log_softmax_rows(T::host(x), cols), x.shape()))
    }

    fn power_iterations(&self, layers: &mut [PowerIterationIo<'_>]) -> Result<Vec<PowerIteration>> {
        layers
            .iter_mut()
            .map(|layer| {
                let s = layer.w.shape().to_vec();
                by_dtype!(layer.w.dtype(), T => {
                    let u = match &layer.input {
                        PowerIterationInput::U(u) => T::host(u),
                        PowerIterationInput::State { u, .. } => T::host(u),
                    };
                    let (u_new, v, sigma) = power_iteration(T::host(layer.w), u, s[0], s[1], s[2]);
                    if let PowerIterationInput::State { u: u_state, v: v_state } = &mut layer.input {
                        T::host_mut(u_state)?.copy_from_slice(&u_new);
                        T::host_mut(v_state)?.copy_from_slice(&v);
                    }
                    Ok(PowerIteration { u: T::wrap(u_new, &[s[0], s[1]])?, v: T::wrap(v, &[s[0], s[2]])?, sigma: T::wrap(sigma, &[s[0]])? })
                })
            })
            .collect()
    }

    fn pixel_norm(&self, x: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
        let s = x.shape();
        by_dtype!(x.dtype(), T => {
            let (y, inv) = pixel_norm(T::host(x), s[0], s[1], s[2], eps);
            Ok((T::wrap(y, s)?, T::wrap(inv, &[s[0], s[2]])?))
        })
    }

    fn pixel_norm_backward(&self, x: &Tensor, inv: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        by_dtype!(x.dtype(), T => T::wrap(pixel_norm_backward(T::host(x), T::host(inv), T::host(dy), s[1], s[2]), s))
    }

    fn spectral_divide_backward(&self, dw: &Tensor, c: &Tensor, u: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        let (rows, cols) = (dw.shape()[1], dw.shape()[2]);
        by_dtype!(dw.dtype(), T => {
            let out = spectral_divide_backward(T::host(dw), T::host(c), T::host(u), T::host(v), T::host(sigma), rows, cols);
            T::wrap(out, dw.shape())
        })
    }

    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, hp: &SgdParams) -> Result<()> {
        by_dtype!(param.dtype(), T => {
            let buf = momentum_buf.map(T::host_mut).transpose()?;
            sgd_update(T::host_mut(param)?, T::host(grad), buf.map(|b| b.as_mut_slice()), hp);
            Ok(())
        })
    }

    fn ema_update(&self, ema: &mut Tensor, x: &Tensor, decay: f32) -> Result<()> {
        by_dtype!(ema.dtype(), T => {
            ema_update(T::host_mut(ema)?, T::host(x), decay);
            Ok(())
        })
    }

    fn sgd_steps(&self, pairs: &mut [(&mut Tensor, &Tensor)], hp: &SgdParams) -> Result<()> {
        pairs.iter_mut().try_for_each(|(param, grad)| self.sgd_step(param, grad, None, hp))
    }

    fn adam_steps(&self, tensors: &mut [AdamTensors<'_>], t: u64, hp: &AdamParams) -> Result<()> {
        tensors.iter_mut().try_for_each(|at| self.adam_step(at.param, at.grad, at.m, at.v, t, hp))
    }

    fn ema_updates(&self, pairs: &mut [(&mut Tensor, &Tensor)], decay: f32) -> Result<()> {
        pairs.iter_mut().try_for_each(|(ema, x)| self.ema_update(ema, x, decay))
    }

    fn noised_sgd_steps(&self, tensors: &mut [NoisedTensors<'_>], hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
        tensors.iter_mut().try_for_each(|t| self.noised_sgd_step(t.param, t.sum, t.noise, hp, flag))
    }

    fn noised_adam_steps(&self, tensors: &mut [NoisedAdamTensors<'_>], t: u64, hp: &AdamParams, flag: &mut Tensor) -> Result<()> {
        tensors.iter_mut().try_for_each(|nt| self.noised_adam_step(nt.param, nt.sum, nt.noise, nt.m, nt.v, t, hp, flag))
    }

    fn adam_step(&self, param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, t: u64, hp: &AdamParams) -> Result<()> {
        by_dtype!(param.dtype(), T => {
            adam_update(T::host_mut(param)?, T::host(grad), T::host_mut(m)?, T::host_mut(v)?, t, hp);
            Ok(())
        })
    }

    fn add_gaussian_noise(&self, x: &mut Tensor, std: f32, key: &NoiseKey) -> Result<()> {
        by_dtype!(x.dtype(), T => {
            add_gaussian_noise(T::host_mut(x)?, std, key);
            Ok(())
        })
    }

    fn public_draws(&self, out: &mut Tensor, draw: PublicDraw, keys: &[NoiseKey]) -> Result<()> {
        by_dtype!(out.dtype(), T => {
            public_draws(T::host_mut(out)?, draw, keys);
            Ok(())
        })
    }

    fn sanitize_rows(&self, g: &Tensor, clip: f32, rows: RowNorm, noise_std: f32, key: &NoiseKey) -> Result<Tensor> {
        let cols = g.shape()[g.rank() - 1];
        by_dtype!(g.dtype(), T => T::wrap(sanitize_rows(T::host(g), cols, clip, rows, noise_std, key), g.shape()))
    }

    fn add_gaussian_noise_and_divide(&self, x: &mut Tensor, std: f32, divisor: f32, key: &NoiseKey) -> Result<()> {
        by_dtype!(x.dtype(), T => {
            add_gaussian_noise_and_divide(T::host_mut(x)?, std, divisor, key);
            Ok(())
        })
    }

    fn noised_sgd_step(&self, param: &mut Tensor, sum: &Tensor, noise: &GradientNoise, hp: &SgdParams, flag: &mut Tensor) -> Result<()> {
        by_dtype!(param.dtype(), T => {
            let grad = noised_gradient(T::host(sum), noise, T::host_mut(flag)?);
            sgd_update(T::host_mut(param)?, &grad, None, hp);
            Ok(())
        })
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
        by_dtype!(param.dtype(), T => {
            let grad = noised_gradient(T::host(sum), noise, T::host_mut(flag)?);
            adam_update(T::host_mut(param)?, &grad, T::host_mut(m)?, T::host_mut(v)?, t, hp);
            Ok(())
        })
    }

    fn conv2d_weight_grad_sq_norms(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        by_dtype!(x.dtype(), T => T::wrap(conv2d_weight_grad_sq_norms(geom, T::host(x), T::host(dy)), &[geom.groups, geom.batch]))
    }
}
