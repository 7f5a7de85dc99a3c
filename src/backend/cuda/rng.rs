//! Launchers of `kernels/rng.cu`: Gaussian noise added in place and public draws, one element per
//! thread (grid-stride, 256 threads per block, at most 16 blocks per SM).
use std::sync::Arc;

use cudarc::driver::PushKernelArg;

use super::device::CudaDevice;
use super::elementwise::grid_for;
use super::module::Kernel;
use super::optim::buffer_mut;
use super::params::{
    GaussianNoiseParams, NoiseKeyParams, PublicDrawParams, MAX_DRAW_MEMBERS, PUBLIC_DRAW_CLASS, PUBLIC_DRAW_NORMAL, PUBLIC_DRAW_ONE_HOT,
    PUBLIC_DRAW_UNIT,
};
use super::{launched, step_block};
use crate::backend::PublicDraw;
use crate::dp::{NoiseKey, NoiseMode};
use crate::error::Result;
use crate::tensor::Tensor;

/// `x ← x + std·z`, z the key's standard normals (ops has checked std and the element count).
pub(crate) fn add_gaussian_noise(dev: &Arc<CudaDevice>, x: &mut Tensor, std: f32, key: &NoiseKey) -> Result<()> {
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let p = GaussianNoiseParams { n: n as i64, std, pad_: 0, key: step_block::noise_key_params(dev, key) };
    let k = match key.mode {
        NoiseMode::Fast => Kernel::GaussianAddPhilox,
        NoiseMode::Secure => Kernel::GaussianAddChacha,
    };
    let x_buf = &mut buffer_mut(x)?.slice;
    let _range = crate::profile::range(k.symbol());
    // SAFETY: x holds n floats (p.n = n); the kernel reads and writes x[i] for i < n only, and x is
    // unshared (storage_mut copied a shared buffer first).
    let r = unsafe { dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(x_buf).launch(grid_for(dev, n)) };
    launched(k, r)
}

/// Every element of `out` overwritten with `draw`, block m of its `keys.len()` equal blocks from
/// `keys[m]`: one launch per [`MAX_DRAW_MEMBERS`] members, whose keys travel in the parameters
/// (ops has checked the keys' mode and common position, and the sizes).
pub(crate) fn public_draws(dev: &Arc<CudaDevice>, out: &mut Tensor, draw: PublicDraw, keys: &[NoiseKey]) -> Result<()> {
    let n = out.numel();
    if n == 0 {
        return Ok(());
    }
    let per_member = n / keys.len();
    let (kind, classes) = match draw {
        PublicDraw::OneHot { classes } => (PUBLIC_DRAW_ONE_HOT, classes),
        PublicDraw::Class { classes } => (PUBLIC_DRAW_CLASS, classes),
        PublicDraw::Unit => (PUBLIC_DRAW_UNIT, 1),
        PublicDraw::Normal => (PUBLIC_DRAW_NORMAL, 1),
    };
    let position = NoiseKeyParams::new(&keys[0]);
    let k = Kernel::PublicDrawsPhilox;
    let out_buf = &mut buffer_mut(out)?.slice;
    let _range = crate::profile::range(k.symbol());
    for (chunk, members) in keys.chunks(MAX_DRAW_MEMBERS).enumerate() {
        let mut member_keys = [[0u32; 2]; MAX_DRAW_MEMBERS];
        for (slot, key) in member_keys.iter_mut().zip(members) {
            *slot = [key.key[0], key.key[1]];
        }
        let p = PublicDrawParams {
            per_member: per_member as i64,
            first: (chunk * MAX_DRAW_MEMBERS) as i32,
            count: members.len() as i32,
            kind,
            classes,
            tensor_index: position.tensor_index,
            step_lo: position.step_lo,
            step_hi: position.step_hi,
            pad_: 0,
            keys: member_keys,
            keys_at: step_block::draw_keys_at(dev, &member_keys[..members.len()]),
        };
        // SAFETY: out holds keys.len()·per_member = n floats; this launch writes out[first·per_member
        // + i] for i < count·per_member, inside it, and out is unshared (storage_mut copied a
        // shared buffer first).
        let r = unsafe {
            dev.stream().launch_builder(dev.kernel(k)).arg(&p).arg(&mut *out_buf).launch(grid_for(dev, members.len() * per_member))
        };
        launched(k, r)?;
    }
    Ok(())
}
