//! Launchers of `kernels/reduce.cu`: `sum_to` (of the values, of their squares or of products with
//! a second tensor) and `log_softmax`.
//!
//! `sum_to` first merges x's dims into alternating runs of kept and summed dims ([`SumToPlan`]),
//! then picks a kernel by what x's innermost run is: summed (a warp per output reads contiguous
//! runs) or kept (lanes take adjacent outputs, rows of a block share out the summands). When there
//! are too few outputs to fill the device, the summands are split across blocks and a second
//! launch adds the partial sums: two deterministic passes rather than atomics.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::device::CudaDevice;
use super::elementwise::fill;
use super::module::Kernel;
use super::params::{FastDivmod, LogSoftmaxParams, SumToParams, SUM_TO_MAX_RUNS};
use super::{buffer, launched, output};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Warps per block of the warp-per-output kernels (`reduce_sum_to_inner`, `reduce_log_softmax`).
const WARPS_PER_BLOCK: usize = 8;
/// Rows of `reduce_sum_to_outer`'s (32, rows) block: `DPGAN_SUM_TO_ROWS` in reduce.cu.
const OUTER_ROWS: usize = 8;
/// Warps per SM the launch aims for before it splits the summands (of 64 resident on sm_80+).
const TARGET_WARPS_PER_SM: usize = 32;
/// A split is worth it only if each thread still adds at least this many terms.
const MIN_TERMS_PER_THREAD: usize = 32;
const MAX_SPLITS: usize = 1024;
/// Grid-striding kernels get at most this many blocks per SM.
const MAX_BLOCKS_PER_SM: usize = 16;

/// x's dims merged into alternating runs of kept and summed dims, innermost first, each as
/// `(size, x stride)`. Size-1 dims are dropped; adjacent dims of the same kind merge.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SumToPlan {
    kept: Vec<(usize, usize)>,
    summed: Vec<(usize, usize)>,
    innermost_summed: bool,
}

impl SumToPlan {
    /// `shape` has x's rank, each dim equal to x's or 1 (checked by `ops::sum_to`).
    fn new(x_shape: &[usize], shape: &[usize]) -> SumToPlan {
        let mut runs: Vec<(usize, bool)> = Vec::new(); // (size, summed), outermost first
        for (&size, &target) in x_shape.iter().zip(shape) {
            if size == 1 {
                continue;
            }
            let summed = target == 1;
            match runs.last_mut() {
                Some(last) if last.1 == summed => last.0 *= size,
                _ => runs.push((size, summed)),
            }
        }
        let mut plan = SumToPlan { kept: vec![], summed: vec![], innermost_summed: runs.last().is_some_and(|r| r.1) };
        let mut stride = 1;
        for &(size, summed) in runs.iter().rev() {
            if summed {
                plan.summed.push((size, stride));
            } else {
                plan.kept.push((size, stride));
            }
            stride *= size;
        }
        plan
    }

    fn out_count(&self) -> usize {
        self.kept.iter().map(|r| r.0).product()
    }

    fn reduce_count(&self) -> usize {
        self.summed.iter().map(|r| r.0).product()
    }
}

/// What the first pass of a `sum_to` adds up at each of x's offsets (`Summand` in reduce.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Summand {
    Value,
    Square,
    /// x's element times y's at the same offset (y has x's shape).
    Product,
}

/// One launch of a `sum_to` kernel.
#[derive(Clone, Debug)]
struct SumToPass {
    kernel: Kernel,
    params: SumToParams,
    config: LaunchConfig,
}

fn sum_to_params(kept: &[(usize, usize)], summed: &[(usize, usize)], split_len: usize, splits: usize) -> SumToParams {
    let mut p = SumToParams {
        out_count: kept.iter().map(|r| r.0).product::<usize>() as i32,
        reduce_count: summed.iter().map(|r| r.0).product::<usize>() as i32,
        split_len: split_len as i32,
        splits: splits as i32,
        kept_rank: kept.len() as i32,
        summed_rank: summed.len() as i32,
        kept_dims: [FastDivmod::default(); SUM_TO_MAX_RUNS],
        summed_dims: [FastDivmod::default(); SUM_TO_MAX_RUNS],
        kept_strides: [0; SUM_TO_MAX_RUNS],
        summed_strides: [0; SUM_TO_MAX_RUNS],
    };
    for (i, &(size, stride)) in kept.iter().enumerate() {
        p.kept_dims[i] = FastDivmod::new(size as u32);
        p.kept_strides[i] = stride as i64;
    }
    for (i, &(size, stride)) in summed.iter().enumerate() {
        p.summed_dims[i] = FastDivmod::new(size as u32);
        p.summed_strides[i] = stride as i64;
    }
    p
}

fn warp_per_output_config(outputs: usize, splits: usize, sms: usize) -> LaunchConfig {
    let blocks = outputs.div_ceil(WARPS_PER_BLOCK).clamp(1, sms * MAX_BLOCKS_PER_SM);
    LaunchConfig { grid_dim: (blocks as u32, splits as u32, 1), block_dim: ((WARPS_PER_BLOCK * 32) as u32, 1, 1), shared_mem_bytes: 0 }
}

/// The launches for a plan on a device with `sms` multiprocessors: one, or two when the summands
/// are split (the second adds the partial sums, laid out `[out, splits]`). `summand`: what the
/// first pass adds up.
fn sum_to_passes(plan: &SumToPlan, sms: usize, summand: Summand) -> Result<Vec<SumToPass>> {
    let (out, terms) = (plan.out_count(), plan.reduce_count());
    if plan.kept.len() > SUM_TO_MAX_RUNS || plan.summed.len() > SUM_TO_MAX_RUNS {
        return Err(Error::shape(
            "sum_to",
            format!("the dims alternate between kept and summed more than {SUM_TO_MAX_RUNS} times, the CUDA kernel's limit ({plan:?})"),
        ));
    }
    if out > i32::MAX as usize || terms > i32::MAX as usize {
        return Err(Error::shape("sum_to", format!("{out} outputs of {terms} terms exceed the CUDA kernel's 32-bit index range")));
    }
    // Work in warps: a warp per (output, split) for the inner kernel, 8 warps per (tile of 32
    // outputs, split) for the outer one.
    let (threads_per_output, warps_unsplit) = if plan.innermost_summed { (32, out) } else { (OUTER_ROWS, out.div_ceil(32) * OUTER_ROWS) };
    let target = sms * TARGET_WARPS_PER_SM;
    let splits = if warps_unsplit >= target {
        1
    } else {
        target.div_ceil(warps_unsplit).min(terms.div_ceil(threads_per_output * MIN_TERMS_PER_THREAD)).clamp(1, MAX_SPLITS)
    };
    let split_len = terms.div_ceil(splits);
    let splits = terms.div_ceil(split_len);
    if out * splits > i32::MAX as usize {
        return Err(Error::shape("sum_to", format!("{out} × {splits} partial sums exceed the CUDA kernel's 32-bit index range")));
    }

    let first = if plan.innermost_summed {
        SumToPass {
            kernel: match summand {
                Summand::Value => Kernel::SumToInner,
                Summand::Square => Kernel::SumSqToInner,
                Summand::Product => Kernel::SumProdToInner,
            },
            params: sum_to_params(&plan.kept, &plan.summed, split_len, splits),
            config: warp_per_output_config(out, splits, sms),
        }
    } else {
        let blocks = out.div_ceil(32).clamp(1, sms * MAX_BLOCKS_PER_SM);
        SumToPass {
            kernel: match summand {
                Summand::Value => Kernel::SumToOuter,
                Summand::Square => Kernel::SumSqToOuter,
                Summand::Product => Kernel::SumProdToOuter,
            },
            params: sum_to_params(&plan.kept, &plan.summed, split_len, splits),
            config: LaunchConfig {
                grid_dim: (blocks as u32, splits as u32, 1),
                block_dim: (32, OUTER_ROWS as u32, 1),
                shared_mem_bytes: 0,
            },
        }
    };
    if splits == 1 {
        return Ok(vec![first]);
    }
    let second = SumToPass {
        kernel: Kernel::SumToInner,
        params: sum_to_params(&[(out, splits)], &[(splits, 1)], splits, 1),
        config: warp_per_output_config(out, 1, sms),
    };
    Ok(vec![first, second])
}

/// Launches `pass` over `x` (and `y`, the second factor, for a product pass).
fn launch_sum_to(
    dev: &Arc<CudaDevice>,
    pass: &SumToPass,
    x: &CudaSlice<f32>,
    y: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    debug_assert!(out.len() >= pass.params.out_count as usize * pass.params.splits as usize);
    debug_assert_eq!(y.is_some(), matches!(pass.kernel, Kernel::SumProdToInner | Kernel::SumProdToOuter));
    let _range = crate::profile::range(pass.kernel.symbol());
    let mut launch = dev.stream().launch_builder(dev.kernel(pass.kernel));
    launch.arg(&pass.params).arg(x);
    if let Some(y) = y {
        launch.arg(y);
    }
    // SAFETY: the params were derived from x's shape (and y's, which is the same): every offset
    // kept_offset(o) + summed_offset(j) with o < out_count, j < reduce_count lies inside x and y,
    // and out holds out_count × splits floats.
    let r = unsafe { launch.arg(out).launch(pass.config) };
    launched(pass.kernel, r)
}

/// Sum of `x` down to `shape` (same rank, each dim equal to x's or 1).
pub(crate) fn sum_to(dev: &Arc<CudaDevice>, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    sum_map_to(dev, x, None, shape, Summand::Value)
}

/// Sum of `x`'s squares down to `shape`, in one pass over x.
pub(crate) fn sum_squares_to(dev: &Arc<CudaDevice>, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    sum_map_to(dev, x, None, shape, Summand::Square)
}

/// Sum of `a ⊙ b` (equal shapes, checked by ops) down to `shape`, in one pass over both.
pub(crate) fn sum_products_to(dev: &Arc<CudaDevice>, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shape("sum_products_to", format!("factors {:?} and {:?} differ", a.shape(), b.shape())));
    }
    sum_map_to(dev, a, Some(b), shape, Summand::Product)
}

fn sum_map_to(dev: &Arc<CudaDevice>, x: &Tensor, y: Option<&Tensor>, shape: &[usize], summand: Summand) -> Result<Tensor> {
    if shape.len() != x.rank() || x.shape().iter().zip(shape).any(|(&s, &t)| t != s && t != 1) {
        return Err(Error::shape("sum_to", format!("cannot sum {:?} to {shape:?}", x.shape())));
    }
    let out_count: usize = shape.iter().product();
    let mut out = dev.alloc(out_count)?;
    if out_count == 0 {
        return output(out, shape);
    }
    if x.numel() == 0 {
        // A sum over nothing.
        fill(dev, &mut out, 0.0)?;
        return output(out, shape);
    }
    let plan = SumToPlan::new(x.shape(), shape);
    let passes = sum_to_passes(&plan, dev.properties().multiprocessors.max(1) as usize, summand)?;
    let xs = &buffer(x).slice;
    let ys = y.map(|y| &buffer(y).slice);
    match passes.as_slice() {
        [only] => launch_sum_to(dev, only, xs, ys, &mut out.slice)?,
        [split, total] => {
            let mut partials = dev.alloc(out_count * split.params.splits as usize)?;
            launch_sum_to(dev, split, xs, ys, &mut partials.slice)?;
            launch_sum_to(dev, total, &partials.slice, None, &mut out.slice)?;
            // `partials` is freed in stream order, after the second pass.
        }
        _ => unreachable!("sum_to_passes plans one or two launches"),
    }
    output(out, shape)
}

/// `log_softmax` over the last axis: a warp per row.
pub(crate) fn log_softmax(dev: &Arc<CudaDevice>, x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().ok_or_else(|| Error::shape("log_softmax", "needs at least one axis"))?;
    if cols == 0 {
        return Err(Error::shape("log_softmax", format!("needs a non-empty last axis, got {:?}", x.shape())));
    }
    let n = x.numel();
    let mut y = dev.alloc(n)?;
    let rows = n / cols;
    if rows > 0 {
        let p = LogSoftmaxParams { rows: rows as i64, cols: cols as i64 };
        let sms = dev.properties().multiprocessors.max(1) as usize;
        let k = Kernel::LogSoftmax;
        let _range = crate::profile::range(k.symbol());
        // SAFETY: x and y hold rows × cols floats; the kernel reads x and writes y within them.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(k))
                .arg(&p)
                .arg(&buffer(x).slice)
                .arg(&mut y.slice)
                .launch(warp_per_output_config(rows, 1, sms))
        };
        launched(k, r)?;
    }
    output(y, x.shape())
}

#[cfg(test)]
mod tests {
    //! The kernels' index arithmetic and the split planning, run on the host: each (output, split)
    //! is summed exactly as a warp or a block would, in f64 to isolate indexing from rounding.
    use super::*;
    use crate::backend::cpu;

    fn runs_offset(mut idx: u32, dims: &[FastDivmod], strides: &[i64], rank: i32) -> i64 {
        let mut offset = 0;
        for d in 0..rank as usize {
            if d + 1 == rank as usize {
                return offset + idx as i64 * strides[d];
            }
            let q = dims[d].div(idx);
            offset += (idx - q * dims[d].divisor) as i64 * strides[d];
            idx = q;
        }
        offset
    }

    /// One pass over `x` (and `y`, the second factor of a product pass) as the kernel computes it,
    /// in f64.
    fn emulate(pass: &SumToPass, x: &[f64], y: &[f64]) -> Vec<f64> {
        let p = &pass.params;
        let (out, splits) = (p.out_count as usize, p.splits as usize);
        assert_eq!(pass.config.grid_dim.1 as usize, splits);
        let mut result = vec![f64::NAN; out * splits];
        for o in 0..out {
            let base = runs_offset(o as u32, &p.kept_dims, &p.kept_strides, p.kept_rank);
            for s in 0..splits {
                let begin = s * p.split_len as usize;
                let end = (begin + p.split_len as usize).min(p.reduce_count as usize);
                let terms = (begin..end).map(|j| {
                    let at = base + runs_offset(j as u32, &p.summed_dims, &p.summed_strides, p.summed_rank);
                    let at = usize::try_from(at).expect("offset ≥ 0");
                    match pass.kernel {
                        Kernel::SumSqToInner | Kernel::SumSqToOuter => x[at] * x[at],
                        Kernel::SumProdToInner | Kernel::SumProdToOuter => x[at] * y[at],
                        _ => x[at],
                    }
                });
                result[o * splits + s] = terms.sum();
            }
        }
        result
    }

    fn check(x_shape: &[usize], shape: &[usize], sms: usize) -> Vec<SumToPass> {
        check_map(x_shape, shape, sms, Summand::Value)
    }

    /// Emulates the planned passes (of the values, their squares or their products with a second
    /// tensor) against the CPU reference.
    fn check_map(x_shape: &[usize], shape: &[usize], sms: usize, summand: Summand) -> Vec<SumToPass> {
        let n: usize = x_shape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1009) as f32 - 504.0).collect();
        let y: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 61) as f32 - 30.0).collect();
        let expected = match summand {
            Summand::Value => cpu::sum_to(&x, x_shape, shape),
            Summand::Square => cpu::sum_squares_to(&x, x_shape, shape),
            Summand::Product => cpu::sum_products_to(&x, &y, x_shape, shape),
        };
        let plan = SumToPlan::new(x_shape, shape);
        let passes = sum_to_passes(&plan, sms, summand).unwrap();
        let mut data: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let second: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        for pass in &passes {
            data = emulate(pass, &data, &second);
        }
        let got: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        assert_eq!(got, expected, "{x_shape:?} -> {shape:?} on {sms} SMs, plan {plan:?}");
        passes
    }

    #[test]
    fn plan_merges_runs() {
        let plan = SumToPlan::new(&[4, 6, 1, 3, 5, 7], &[4, 1, 1, 1, 1, 7]);
        assert_eq!(plan, SumToPlan { kept: vec![(7, 1), (4, 630)], summed: vec![(90, 7)], innermost_summed: false });
        let bias = SumToPlan::new(&[2, 600, 64, 14, 14], &[2, 1, 64, 1, 1]);
        assert_eq!(
            bias,
            SumToPlan { kept: vec![(64, 196), (2, 600 * 64 * 196)], summed: vec![(196, 1), (600, 64 * 196)], innermost_summed: true }
        );
    }

    #[test]
    fn emulated_kernels_match_the_cpu_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 5, 7], &[3, 1, 7]),
            (&[3, 5, 7], &[3, 5, 1]),
            (&[3, 5, 7], &[1, 1, 1]),
            (&[3, 5, 7], &[1, 5, 1]),
            (&[2, 9, 3, 4, 5], &[2, 1, 3, 1, 1]),
            (&[1, 2000, 3], &[1, 1, 3]),
            (&[2, 4000], &[2, 1]),
            (&[3, 1, 5], &[3, 1, 5]),
            (&[1], &[1]),
            (&[2, 3, 2, 3, 2, 3, 2, 3], &[2, 1, 2, 1, 2, 1, 2, 1]),
            (&[2, 3, 2, 3, 2, 3, 2, 3], &[1, 3, 1, 3, 1, 3, 1, 3]),
            (&[5, 300, 33], &[5, 1, 33]),
        ];
        for &(x_shape, shape) in cases {
            for sms in [1, 4, 132] {
                for summand in [Summand::Value, Summand::Square, Summand::Product] {
                    check_map(x_shape, shape, sms, summand);
                }
            }
        }
    }

    #[test]
    fn few_outputs_split_into_two_passes() {
        let passes = check(&[2, 600, 8, 7, 7], &[2, 1, 8, 1, 1], 132);
        assert_eq!(passes.len(), 2);
        assert!(passes[0].params.splits > 1);
        let passes = check(&[1, 5000, 7], &[1, 1, 7], 132);
        assert_eq!((passes.len(), passes[0].kernel), (2, Kernel::SumToOuter));
        // Squares: the first pass squares, the second adds the partial sums as they are.
        let passes = check_map(&[2, 600, 8, 7, 7], &[2, 1, 8, 1, 1], 132, Summand::Square);
        assert_eq!((passes[0].kernel, passes[1].kernel), (Kernel::SumSqToInner, Kernel::SumToInner));
        let passes = check_map(&[1, 5000, 7], &[1, 1, 7], 132, Summand::Square);
        assert_eq!((passes[0].kernel, passes[1].kernel), (Kernel::SumSqToOuter, Kernel::SumToInner));
        // Products likewise: only the first pass multiplies.
        let passes = check_map(&[2, 600, 8, 7, 7], &[2, 1, 8, 1, 1], 132, Summand::Product);
        assert_eq!((passes[0].kernel, passes[1].kernel), (Kernel::SumProdToInner, Kernel::SumToInner));
        let passes = check_map(&[1, 5000, 7], &[1, 1, 7], 132, Summand::Product);
        assert_eq!((passes[0].kernel, passes[1].kernel), (Kernel::SumProdToOuter, Kernel::SumToInner));
        // Enough outputs: one pass.
        assert_eq!(check(&[4096, 50], &[4096, 1], 8).len(), 1);
    }

    #[test]
    fn too_many_alternations_are_refused() {
        let x = [2usize; 10];
        let shape: Vec<usize> = (0..10).map(|i| if i % 2 == 0 { 2 } else { 1 }).collect();
        assert!(sum_to_passes(&SumToPlan::new(&x, &shape), 4, Summand::Value).is_err());
    }
}
