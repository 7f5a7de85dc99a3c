//! The CPU reference backend: plain loops, f64 accumulation where a sum is long, GEMM-shaped work
//! through `matrixmultiply` (the plain-loop oracle lives in the tests).
mod conv;
mod elementwise;
mod gemm;
mod norm;
mod optim;
mod pool;
mod reduce;
mod shape;

pub use conv::{conv2d_fwd, conv2d_input_grad, conv2d_weight_grad};
pub use elementwise::{binary_broadcast, broadcast_strides, unary_map};
pub use gemm::gemm_grouped;
pub use norm::power_iteration;
pub use optim::{adam_update, sgd_update};
pub use pool::{max_pool2x2_gather, max_pool2x2_scatter, sum_pool2x2, upsample_nearest2x};
pub use reduce::{log_softmax_rows, sum_to};
pub use shape::{concat, narrow, pad};

use super::{AdamParams, Backend, BinaryOp, ConvGeometry, MatmulGeometry, SgdParams, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::{Device, Storage, Tensor};

/// The CPU backend (stateless).
pub struct Cpu;

fn host(t: &Tensor) -> &[f32] {
    match t.storage() {
        Storage::Cpu(v) => v,
        Storage::Cuda(_) => unreachable!("ops checks devices before dispatching to the CPU backend"),
    }
}

fn host_mut(t: &mut Tensor) -> &mut Vec<f32> {
    match t.storage_mut() {
        Storage::Cpu(v) => v,
        Storage::Cuda(_) => unreachable!("ops checks devices before dispatching to the CPU backend"),
    }
}

fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

impl Backend for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        tensor(unary_map(op, host(x)), x.shape())
    }

    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
        tensor(binary_broadcast(op, host(a), a.shape(), host(b), b.shape(), out_shape), out_shape)
    }

    fn sum_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        tensor(sum_to(host(x), x.shape(), shape), shape)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, geom: &MatmulGeometry) -> Result<Tensor> {
        let mut c = vec![0.0; geom.groups * geom.m * geom.n];
        gemm_grouped(geom, host(a), host(b), &mut c);
        tensor(c, &[geom.groups, geom.m, geom.n])
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        tensor(conv2d_fwd(geom, host(x), host(w)), &geom.output_shape())
    }

    fn conv2d_input_grad(&self, dy: &Tensor, w: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        tensor(conv2d_input_grad(geom, host(dy), host(w)), &geom.input_shape())
    }

    fn conv2d_weight_grad(&self, x: &Tensor, dy: &Tensor, geom: &ConvGeometry) -> Result<Tensor> {
        tensor(conv2d_weight_grad(geom, host(x), host(dy)), &geom.weight_shape())
    }

    fn max_pool2x2_gather(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (out, shape) = max_pool2x2_gather(host(x), host(v), x.shape());
        tensor(out, &shape)
    }

    fn max_pool2x2_scatter(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        tensor(max_pool2x2_scatter(host(x), host(dy), x.shape()), x.shape())
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        let (out, shape) = upsample_nearest2x(host(x), x.shape());
        tensor(out, &shape)
    }

    fn sum_pool2x2(&self, x: &Tensor) -> Result<Tensor> {
        let (out, shape) = sum_pool2x2(host(x), x.shape());
        tensor(out, &shape)
    }

    fn narrow(&self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let (out, shape) = narrow(host(x), x.shape(), axis, start, len);
        tensor(out, &shape)
    }

    fn pad(&self, x: &Tensor, axis: usize, before: usize, after: usize) -> Result<Tensor> {
        let (out, shape) = pad(host(x), x.shape(), axis, before, after);
        tensor(out, &shape)
    }

    fn concat(&self, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
        let parts: Vec<(&[f32], &[usize])> = xs.iter().map(|t| (host(t), t.shape())).collect();
        let (out, shape) = concat(&parts, axis);
        tensor(out, &shape)
    }

    fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        let cols = x.shape()[x.rank() - 1];
        tensor(log_softmax_rows(host(x), cols), x.shape())
    }

    fn power_iteration(&self, w: &Tensor, u: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = w.shape();
        let (u_new, v) = power_iteration(host(w), host(u), s[0], s[1], s[2]);
        Ok((tensor(u_new, &[s[0], s[1]])?, tensor(v, &[s[0], s[2]])?))
    }

    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, hp: &SgdParams) -> Result<()> {
        let g = host(grad).to_vec();
        let buf = momentum_buf.map(host_mut);
        sgd_update(host_mut(param), &g, buf.map(|b| b.as_mut_slice()), hp);
        Ok(())
    }

    fn adam_step(&self, param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, t: u64, hp: &AdamParams) -> Result<()> {
        if t == 0 {
            return Err(Error::Invalid("adam_step: t is 1-based".into()));
        }
        let g = host(grad).to_vec();
        adam_update(host_mut(param), &g, host_mut(m), host_mut(v), t, hp);
        Ok(())
    }
}
