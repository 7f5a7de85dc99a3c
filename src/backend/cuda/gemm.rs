//! Launcher of `kernels/gemm.cu` (one kernel per transpose combination, in f32 FFMA or, where the
//! calling thread allows it, on TF32 tensor cores), and the tiling and K-splitting that `conv.rs` shares.
//!
//! One 256-thread block computes a 64 × 64 tile of C (`kernels/gemm_tile.cuh`), or a 128 × 128
//! one in the wide TF32 build. When the tiles of all groups cannot fill the device and K is long (a linear layer's weight gradient: M·N small,
//! K = batch), K is cut into slices, each block writes its slice's partial product, and
//! `reduce::sum_to` adds the slices in a fixed order: deterministic, no atomics.
use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::{CudaBuffer, CudaDevice};
use super::module::Kernel;
use super::params::GemmParams;
use super::{buffer, launched, output, reduce};
use crate::backend::MatmulGeometry;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Rows and columns of C per block, and K per main-loop step (`tile::Build::TILE`, `tile::BK`),
/// in every build but the wide one.
pub(crate) const TILE_M: usize = 64;
pub(crate) const TILE_N: usize = 64;
pub(crate) const TILE_K: usize = 16;
/// Rows and columns of C per block in the wide TF32 build (`tile::Tf32Wide`).
pub(crate) const WIDE_TILE: usize = 128;
/// The wide build's cp.async stages, and the dynamic shared memory they take (two operand tiles of
/// TILE_K rows, `WIDE_TILE + 8` floats apart, a stage): 68 KiB, past the 48 KiB a block may hold
/// statically. `kernels/gemm_tile.cuh` asserts the same size; a launch with less traps.
const WIDE_STAGES: usize = 4;
pub(crate) const WIDE_SHARED_BYTES: u32 = (WIDE_STAGES * 2 * TILE_K * (WIDE_TILE + 8) * 4) as u32;
/// Threads per block (`tile::THREADS`).
const THREADS: u32 = 256;
/// Hardware limits of gridDim.x, gridDim.y and gridDim.z; the kernels grid-stride over z.
const MAX_GRID_X: usize = i32::MAX as usize;
const MAX_GRID_Y: usize = 65_535;
const MAX_GRID_Z: usize = 65_535;
/// Resident 64 × 64 blocks per SM the split aims for (8.5 KiB of shared memory and 256 threads
/// each). The split counts the work in such tiles whatever the build, so that every build of a
/// product cuts K alike (and the TF32 builds stay equal bit for bit).
const TARGET_BLOCKS_PER_SM: usize = 4;
/// Each K slice is at least this deep, so that the extra pass over the partials pays for itself.
const MIN_SPLIT_K: usize = 256;
const MAX_SPLITS: usize = 32;
/// Most floats of partial products a split may allocate (64 MiB).
const SPLIT_BUDGET: usize = 1 << 24;

thread_local! {
    static ALLOW_TF32: Cell<bool> = const { Cell::new(false) };
    static TF32_PIPELINE: Cell<Tf32Pipeline> = const { Cell::new(Tf32Pipeline::RegisterStaged) };
}

/// How a TF32 product feeds the tensor cores (`kernels/gemm_tile.cuh`): the same values bit for
/// bit every way, a different schedule, all kept until a GPU says which is fastest (`dpgan bench
/// kernels` times the matmuls and convolutions every way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tf32Pipeline {
    /// One K step in flight in registers, rounded to TF32 on its way into shared memory.
    #[default]
    RegisterStaged,
    /// `cp.async` copies straight into shared memory two K steps ahead, rounded as fragments are
    /// read. Plain matmuls and the convolutions; a matmul with a bias stays register-staged.
    CpAsync,
    /// 128 × 128 tiles, 64 × 32 per warp (half the shared-memory reads per tensor-core product),
    /// through a four-stage cp.async pipeline in 68 KiB of dynamic shared memory. Where M or N is
    /// below 128 the product takes the 64 × 64 cp.async build instead, which wastes less of its
    /// tiles; as `CpAsync` otherwise.
    Wide,
}

impl Tf32Pipeline {
    pub const ALL: [Tf32Pipeline; 3] = [Tf32Pipeline::RegisterStaged, Tf32Pipeline::CpAsync, Tf32Pipeline::Wide];

    /// How benchmarks and reports name the build.
    pub fn label(self) -> &'static str {
        match self {
            Tf32Pipeline::RegisterStaged => "tf32",
            Tf32Pipeline::CpAsync => "tf32 cp.async",
            Tf32Pipeline::Wide => "tf32 wide",
        }
    }
}

/// This thread's [`Tf32Pipeline`] (what its TF32 products take where they fill the build's tiles).
pub fn tf32_pipeline() -> Tf32Pipeline {
    TF32_PIPELINE.with(Cell::get)
}

/// Sets this thread's [`Tf32Pipeline`] until the value is dropped, then the previous one again.
#[must_use = "the pipeline is chosen only while the scope lives"]
pub struct Tf32PipelineScope {
    previous: Tf32Pipeline,
}

impl Tf32PipelineScope {
    pub fn new(pipeline: Tf32Pipeline) -> Self {
        Tf32PipelineScope { previous: TF32_PIPELINE.with(|p| p.replace(pipeline)) }
    }
}

impl Drop for Tf32PipelineScope {
    fn drop(&mut self) {
        TF32_PIPELINE.with(|p| p.set(self.previous));
    }
}

/// Lets this thread's matmuls and convolutions on CUDA run on TF32 tensor cores where the product is large enough
/// (M and N at least a tile, K at least `TF32_MIN_K`): inputs rounded to a 10-bit mantissa, f32
/// accumulation, about 1e-3 relative error instead of 1e-6 (PyTorch's `allow_tf32`). Off by
/// default. Per thread, so that one caller's choice never changes the numerics another thread
/// (a test at f32 tolerances) relies on.
pub fn set_allow_tf32(on: bool) {
    ALLOW_TF32.with(|a| a.set(on));
}

/// Whether this thread allows TF32 (see [`set_allow_tf32`]).
pub fn allow_tf32() -> bool {
    ALLOW_TF32.with(|a| a.get())
}

/// [`set_allow_tf32`] until the value is dropped, then this thread's previous setting again, on
/// every way out (an error returned with `?` included).
#[must_use = "TF32 is allowed only while the scope lives"]
pub struct Tf32Scope {
    previous: bool,
}

impl Tf32Scope {
    pub fn new(allow: bool) -> Self {
        let previous = allow_tf32();
        set_allow_tf32(allow);
        Tf32Scope { previous }
    }
}

impl Drop for Tf32Scope {
    fn drop(&mut self) {
        set_allow_tf32(self.previous);
    }
}

/// The shortest K worth the tensor-core path (two of its K steps).
const TF32_MIN_K: usize = 2 * TILE_K;

/// Whether a product of this size takes the TF32 kernels on `dev` (sm_80+ has `mma.sync` TF32).
pub(crate) fn use_tf32(dev: &CudaDevice, m: usize, n: usize, k: usize) -> bool {
    allow_tf32() && dev.properties().compute_capability.0 >= 8 && m >= TILE_M && n >= TILE_N && k >= TF32_MIN_K
}

/// The TF32 pipeline a product of this size takes on `dev` under this thread's settings, or `None`
/// for f32 FFMA.
pub(crate) fn tf32_for(dev: &CudaDevice, m: usize, n: usize, k: usize) -> Option<Tf32Pipeline> {
    use_tf32(dev, m, n, k).then(|| pipeline_for(tf32_pipeline(), m, n))
}

/// The pipeline a TF32 product of M × N takes when this one is chosen: the wide build only where
/// M and N fill at least one of its tiles.
fn pipeline_for(chosen: Tf32Pipeline, m: usize, n: usize) -> Tf32Pipeline {
    match chosen {
        Tf32Pipeline::Wide if m < WIDE_TILE || n < WIDE_TILE => Tf32Pipeline::CpAsync,
        other => other,
    }
}

/// Rows and columns of C per block of the build `tf32` names (`None`: f32 FFMA).
pub(crate) fn tile_of(tf32: Option<Tf32Pipeline>) -> usize {
    if tf32 == Some(Tf32Pipeline::Wide) {
        WIDE_TILE
    } else {
        TILE_M
    }
}

/// Of a kernel's four builds (f32, TF32 register-staged, TF32 through cp.async, TF32 on wide
/// tiles), the one `tf32` names.
pub(crate) fn build_for(tf32: Option<Tf32Pipeline>, [f32, staged, cp_async, wide]: [Kernel; 4]) -> Kernel {
    match tf32 {
        None => f32,
        Some(Tf32Pipeline::RegisterStaged) => staged,
        Some(Tf32Pipeline::CpAsync) => cp_async,
        Some(Tf32Pipeline::Wide) => wide,
    }
}

/// Largest size the kernels index with 32-bit ints: tile origins and `k0 + TILE_K` stay below
/// `i32::MAX`.
pub(crate) const MAX_DIM: usize = i32::MAX as usize - 2 * WIDE_TILE;

/// `Err` naming the op when a size exceeds the kernels' 32-bit indexing.
pub(crate) fn check_i32(op: &'static str, what: &str, value: usize) -> Result<()> {
    if value > MAX_DIM {
        return Err(Error::shape(op, format!("{what} = {value} exceeds the CUDA kernel's 32-bit index range ({MAX_DIM})")));
    }
    Ok(())
}

/// How K is cut: `(splits, split_len)`, `split_len` a multiple of `TILE_K` unless there is one
/// slice (then it is K). `tiles` counts the 64 × 64 tiles of all groups (`tiles_64`); `out_len`
/// the floats of C.
pub(crate) fn split_k(tiles: usize, k: usize, out_len: usize, sms: usize) -> (usize, usize) {
    let target = sms.max(1) * TARGET_BLOCKS_PER_SM;
    if tiles >= target || k < 2 * MIN_SPLIT_K {
        return (1, k);
    }
    let by_memory = SPLIT_BUDGET / out_len.max(1);
    let wanted = target.div_ceil(tiles).min(k / MIN_SPLIT_K).min(by_memory).clamp(1, MAX_SPLITS);
    if wanted == 1 {
        return (1, k);
    }
    let split_len = k.div_ceil(wanted).next_multiple_of(TILE_K);
    (k.div_ceil(split_len), split_len)
}

/// The 64 × 64 tiles of `groups` products of M × N: the work `split_k` weighs.
pub(crate) fn tiles_64(groups: usize, m: usize, n: usize) -> usize {
    groups * m.div_ceil(TILE_M) * n.div_ceil(TILE_N)
}

/// The launch of a tiled kernel of the build `tf32` names: x = tiles of N, y = tiles of M,
/// z = `z_work` (groups × splits), clamped to the hardware limit (the kernels grid-stride over z),
/// with the dynamic shared memory the build takes.
pub(crate) fn tile_grid(op: &'static str, m: usize, n: usize, z_work: usize, tf32: Option<Tf32Pipeline>) -> Result<LaunchConfig> {
    let tile = tile_of(tf32);
    let (tiles_m, tiles_n) = (m.div_ceil(tile), n.div_ceil(tile));
    if tiles_m > MAX_GRID_Y {
        return Err(Error::shape(op, format!("{m} rows need {tiles_m} tiles, above the grid's limit of {MAX_GRID_Y}")));
    }
    let z = z_work.clamp(1, MAX_GRID_Z);
    let shared_mem_bytes = if tf32 == Some(Tf32Pipeline::Wide) { WIDE_SHARED_BYTES } else { 0 };
    Ok(LaunchConfig { grid_dim: (tiles_n as u32, tiles_m as u32, z as u32), block_dim: (THREADS, 1, 1), shared_mem_bytes })
}

/// The tensor of `shape` from a kernel's output of `splits` partial slices of `out_len` floats
/// each: the buffer itself, or the slices' sum (added in slice order by `reduce::sum_to`).
pub(crate) fn sum_splits(dev: &Arc<CudaDevice>, partials: CudaBuffer, splits: usize, out_len: usize, shape: &[usize]) -> Result<Tensor> {
    if splits == 1 {
        return output(partials, shape);
    }
    let partials = output(partials, &[splits, out_len])?;
    reduce::sum_to(dev, &partials, &[1, out_len])?.reshape(shape)
}

/// `C[g] = op(A[g]) · op(B[g])` for every group; C is `[G, M, N]`, all of it written (zeros for K = 0).
/// With `bias` `[G, N]` (only for A·Bᵀ, a linear layer) the first K slice's epilogue adds it, so C
/// holds it once: without a split, rounded as a separate add would.
pub(crate) fn matmul(dev: &Arc<CudaDevice>, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, geom: &MatmulGeometry) -> Result<Tensor> {
    let MatmulGeometry { groups, m, k, n, trans_a, trans_b } = *geom;
    let shape = [groups, m, n];
    let out_len = groups * m * n;
    if out_len == 0 {
        return output(dev.alloc(0)?, &shape);
    }
    for (what, v) in [("M", m), ("N", n), ("K", k), ("G", groups)] {
        check_i32("matmul", what, v)?;
    }
    if a.numel() != groups * m * k || b.numel() != groups * k * n {
        return Err(Error::shape("matmul", format!("operands {:?} and {:?} do not match {geom:?}", a.shape(), b.shape())));
    }
    let (splits, split_len) = split_k(tiles_64(groups, m, n), k, out_len, dev.properties().multiprocessors as usize);
    let p = GemmParams {
        groups: groups as i32,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        trans_a: trans_a as i32,
        trans_b: trans_b as i32,
        splits: splits as i32,
        split_len: split_len as i32,
    };
    let mut c = dev.alloc(splits * out_len)?;
    if let Some(bias) = bias {
        if trans_a || !trans_b || bias.numel() != groups * n {
            return Err(Error::shape("matmul", format!("a bias {:?} goes with A·Bᵀ and [G, N] only ({geom:?})", bias.shape())));
        }
        let tf32 = use_tf32(dev, m, n, k).then_some(Tf32Pipeline::RegisterStaged);
        let config = tile_grid("matmul", m, n, groups * splits, tf32)?;
        let kernel = if tf32.is_some() { Kernel::GemmNTBiasTf32 } else { Kernel::GemmNTBias };
        let _range = crate::profile::range(kernel.symbol());
        // SAFETY: as below, and bias holds G·N floats, read at [g·N + n] for n < N by the first
        // slice's blocks only.
        let r = unsafe {
            dev.stream()
                .launch_builder(dev.kernel(kernel))
                .arg(&p)
                .arg(&buffer(a).slice)
                .arg(&buffer(b).slice)
                .arg(&buffer(bias).slice)
                .arg(&mut c.slice)
                .launch(config)
        };
        launched(kernel, r)?;
        return sum_splits(dev, c, splits, out_len, &shape);
    }
    let tf32 = tf32_for(dev, m, n, k);
    let config = tile_grid("matmul", m, n, groups * splits, tf32)?;
    let kernel = gemm_kernel(trans_a, trans_b, tf32);
    let _range = crate::profile::range(kernel.symbol());
    // SAFETY: a holds G·M·K and b G·K·N floats (checked above); the kernel reads them only at
    // in-range (m, k) and (k, n) of each group, and writes each (slice, g, m, n) with m < M, n < N
    // of c, which holds splits·G·M·N floats. All sizes fit the kernel's 32-bit indices.
    let r = unsafe {
        dev.stream().launch_builder(dev.kernel(kernel)).arg(&p).arg(&buffer(a).slice).arg(&buffer(b).slice).arg(&mut c.slice).launch(config)
    };
    launched(kernel, r)?;
    sum_splits(dev, c, splits, out_len, &shape)
}

/// The plain matmul's kernel: f32 FFMA, or TF32 through `pipeline`.
fn gemm_kernel(trans_a: bool, trans_b: bool, tf32: Option<Tf32Pipeline>) -> Kernel {
    use Kernel::*;
    let builds = match (trans_a, trans_b) {
        (false, false) => [GemmNN, GemmNNTf32, GemmNNTf32CpAsync, GemmNNTf32Wide],
        (true, false) => [GemmTN, GemmTNTf32, GemmTNTf32CpAsync, GemmTNTf32Wide],
        (false, true) => [GemmNT, GemmNTTf32, GemmNTTf32CpAsync, GemmNTTf32Wide],
        (true, true) => [GemmTT, GemmTTTf32, GemmTTTf32CpAsync, GemmTTTf32Wide],
    };
    build_for(tf32, builds)
}

/// Independent accumulators per warp in `gemm_mma_peak_fwd_tf32`.
const MMA_PEAK_CHAINS: usize = 8;
/// Most rounds the peak kernel's exact check allows (every sum stays below 2^24).
pub const MMA_PEAK_MAX_ROUNDS: usize = 8192;

/// The tensor cores' TF32 rate through `mma.sync` (`gemm_mma_peak_fwd_tf32`): `blocks` blocks of 8
/// warps, each issuing `rounds` × 8 m16n8k8 products from registers. Returns each thread's sum of
/// its accumulators (`[blocks · 256]`, [`mma_peak_expected`] exactly) and the FLOPs issued.
pub fn mma_peak(dev: &Arc<CudaDevice>, blocks: usize, rounds: usize) -> Result<(Tensor, f64)> {
    if blocks == 0 || blocks > MAX_GRID_X || rounds > MMA_PEAK_MAX_ROUNDS {
        return Err(Error::Invalid(format!(
            "mma peak: {blocks} blocks (1..={MAX_GRID_X}) of {rounds} rounds (at most {MMA_PEAK_MAX_ROUNDS}, so that its sums stay exact)"
        )));
    }
    let threads = blocks * THREADS as usize;
    let mut out = dev.alloc(threads)?;
    let kernel = Kernel::GemmMmaPeak;
    let _range = crate::profile::range(kernel.symbol());
    let config = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let rounds_arg = rounds as i32;
    // SAFETY: out holds blocks·256 floats; thread t of block b writes out[b·256 + t] only.
    let r = unsafe { dev.stream().launch_builder(dev.kernel(kernel)).arg(&rounds_arg).arg(&mut out.slice).launch(config) };
    launched(kernel, r)?;
    let flops = (blocks * (THREADS as usize / 32) * rounds * MMA_PEAK_CHAINS) as f64 * (2 * 16 * 8 * 8) as f64;
    Ok((output(out, &[threads])?, flops))
}

/// What `mma_peak` writes for `threads` threads: each thread's four entries of the 16 × 8 product
/// A·B (A[r][k] = (r + 2k) mod 5 − 2, B[k][c] = (3k + c) mod 7 − 3; lane 4·g + t holds rows g and
/// g + 8, columns 2t and 2t + 1), added `rounds` × `MMA_PEAK_CHAINS` times.
pub fn mma_peak_expected(threads: usize, rounds: usize) -> Vec<f32> {
    let product = |r: i64, c: i64| (0..8).map(|k| ((r + 2 * k) % 5 - 2) * ((3 * k + c) % 7 - 3)).sum::<i64>();
    (0..threads)
        .map(|t| {
            let lane = (t % 32) as i64;
            let (g, t4) = (lane / 4, lane % 4);
            let four = product(g, 2 * t4) + product(g, 2 * t4 + 1) + product(g + 8, 2 * t4) + product(g + 8, 2 * t4 + 1);
            (four * (rounds * MMA_PEAK_CHAINS) as i64) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each transpose combination and pipeline has its own kernel, named for what it computes.
    #[test]
    fn each_matmul_takes_the_kernel_of_its_transposes_and_pipeline() {
        for (ta, tb, op) in [(false, false, "nn"), (true, false, "tn"), (false, true, "nt"), (true, true, "tt")] {
            assert_eq!(gemm_kernel(ta, tb, None).symbol(), format!("gemm_grouped_{op}_fwd_f32"));
            assert_eq!(gemm_kernel(ta, tb, Some(Tf32Pipeline::RegisterStaged)).symbol(), format!("gemm_grouped_{op}_fwd_tf32"));
            assert_eq!(gemm_kernel(ta, tb, Some(Tf32Pipeline::CpAsync)).symbol(), format!("gemm_grouped_{op}_fwd_tf32_cp_async"));
            assert_eq!(gemm_kernel(ta, tb, Some(Tf32Pipeline::Wide)).symbol(), format!("gemm_grouped_{op}_fwd_tf32_wide"));
        }
        assert_eq!(tf32_pipeline(), Tf32Pipeline::RegisterStaged, "register-staged by default");
        {
            let _scope = Tf32PipelineScope::new(Tf32Pipeline::CpAsync);
            assert_eq!(tf32_pipeline(), Tf32Pipeline::CpAsync);
        }
        assert_eq!(tf32_pipeline(), Tf32Pipeline::RegisterStaged, "the scope gives the previous one back");
    }

    /// The wide build takes only products that fill one of its tiles in M and N; its grid counts
    /// 128 × 128 tiles, every other build's 64 × 64.
    #[test]
    fn the_wide_build_takes_products_that_fill_its_tiles() {
        use Tf32Pipeline::*;
        for (m, n, want) in [(128, 128, Wide), (127, 4096, CpAsync), (4096, 127, CpAsync), (129, 300, Wide), (64, 64, CpAsync)] {
            assert_eq!(pipeline_for(Wide, m, n), want, "{m} × {n}");
        }
        for other in [RegisterStaged, CpAsync] {
            assert_eq!(pipeline_for(other, 64, 64), other);
            assert_eq!(pipeline_for(other, 4096, 4096), other);
        }
        let grid = |tf32| tile_grid("matmul", 300, 129, 5, tf32).unwrap();
        assert_eq!(grid(Some(Wide)).grid_dim, (2, 3, 5), "N = 129 in 2 wide tiles, M = 300 in 3");
        for tf32 in [None, Some(RegisterStaged), Some(CpAsync)] {
            assert_eq!(grid(tf32).grid_dim, (3, 5, 5), "N = 129 in 3 tiles of 64, M = 300 in 5");
        }
        // The launch passes the dynamic shared memory its kernel was opted into, and only the wide
        // kernels take any.
        for tf32 in [None, Some(RegisterStaged), Some(CpAsync), Some(Wide)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                assert_eq!(grid(tf32).shared_mem_bytes, gemm_kernel(ta, tb, tf32).dynamic_shared_bytes(), "{tf32:?}");
            }
        }
        assert_eq!(WIDE_SHARED_BYTES, 69_632, "gemm_tile.cuh's sizeof(Tf32Wide::Tiles)");
        // The grid's y limit, counted in the build's tiles: exactly 65,535 tiles of M fit.
        for (tf32, tile) in [(None, TILE_M), (Some(Wide), WIDE_TILE)] {
            assert_eq!(tile_grid("matmul", MAX_GRID_Y * tile, 1, 1, tf32).unwrap().grid_dim.1, MAX_GRID_Y as u32);
            let err = tile_grid("matmul", MAX_GRID_Y * tile + 1, 1, 1, tf32).unwrap_err().to_string();
            assert!(err.contains("above the grid's limit"), "{err}");
        }
        assert_eq!(tiles_64(2, 300, 129), 2 * 5 * 3);
    }

    /// The peak kernel's expected sums, from the formula written out for one lane, and exact in f32
    /// at the most rounds allowed.
    #[test]
    fn the_mma_peak_sums_follow_the_fragment_layout() {
        // Lane 5: group 1, t4 = 1; rows 1 and 9, columns 2 and 3.
        let entry = |r: i64, c: i64| -> i64 { (0..8).map(|k| ((r + 2 * k) % 5 - 2) * ((3 * k + c) % 7 - 3)).sum() };
        let lane5 = entry(1, 2) + entry(1, 3) + entry(9, 2) + entry(9, 3);
        let sums = mma_peak_expected(64, 3);
        assert_eq!(sums[5], (lane5 * 3 * 8) as f32);
        assert_eq!(sums[37], sums[5], "every warp holds the same fragments");
        let most = mma_peak_expected(32, MMA_PEAK_MAX_ROUNDS).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(most > 0.0 && most < (1 << 24) as f32, "{most} is not exact in f32");
    }

    #[test]
    fn a_tf32_scope_restores_the_previous_setting_when_dropped() {
        assert!(!allow_tf32(), "off by default");
        {
            let _outer = Tf32Scope::new(true);
            assert!(allow_tf32());
            {
                let _inner = Tf32Scope::new(false);
                assert!(!allow_tf32());
            }
            assert!(allow_tf32(), "the inner scope gives back the outer one's setting");
            let failing = || -> Result<()> {
                let _scope = Tf32Scope::new(false);
                Err(Error::Invalid("an error returned early".into()))
            };
            assert!(failing().is_err());
            assert!(allow_tf32(), "an early return restores it too");
        }
        assert!(!allow_tf32());
        // Per thread: another thread's scope never changes this one.
        let _here = Tf32Scope::new(true);
        std::thread::spawn(|| assert!(!allow_tf32(), "a new thread starts without TF32")).join().unwrap();
    }

    #[test]
    fn split_k_cuts_long_k_into_tile_multiples_only_when_tiles_are_few() {
        // Many tiles: no split.
        assert_eq!(split_k(10_000, 100_000, 1 << 20, 132), (1, 100_000));
        // Short K: no split.
        assert_eq!(split_k(1, 300, 64, 132), (1, 300));
        for (tiles, k, out_len, sms) in [(1, 600, 128, 132), (2, 6272, 1600, 132), (26, 600, 101_632, 132), (3, 100_003, 9, 4)] {
            let (splits, len) = split_k(tiles, k, out_len, sms);
            assert!(splits > 1, "{tiles} tiles, K = {k}: expected a split");
            assert_eq!(len % TILE_K, 0);
            assert!(len >= MIN_SPLIT_K.min(k));
            // The slices cover K exactly: the last one is non-empty.
            assert!((splits - 1) * len < k && splits * len >= k, "{splits} × {len} vs {k}");
            assert!(splits <= MAX_SPLITS && splits * out_len <= SPLIT_BUDGET.max(out_len));
        }
    }
}
