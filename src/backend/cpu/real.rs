//! The element types the CPU backend computes in: f32 (what training uses, what the kernels are
//! compared with) and f64 (for finite-difference gradient checks, where f32 rounding would swamp
//! the difference quotient).
use num_traits::Float;

use crate::error::Result;
use crate::tensor::{DType, Device, Storage, Tensor};

pub trait Real: Float + std::ops::AddAssign + std::ops::MulAssign + Default + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn of(x: f32) -> Self;
    fn of_f64(x: f64) -> Self;
    fn f64(self) -> f64;
    /// The host slice of a CPU tensor of this type (ops has checked device and dtype).
    fn host(t: &Tensor) -> &[Self];
    fn host_mut(t: &mut Tensor) -> Result<&mut Vec<Self>>;
    fn wrap(data: Vec<Self>, shape: &[usize]) -> Result<Tensor>;
    /// `c (m×n) = op(a)·op(b) + beta·c`, row-major, transposes as strides.
    #[allow(clippy::too_many_arguments)]
    fn gemm(m: usize, k: usize, n: usize, a: &[Self], trans_a: bool, b: &[Self], trans_b: bool, beta: Self, c: &mut [Self]);
}

/// Row and column strides of op(X) (rows×cols) stored row-major.
fn strides(trans: bool, rows: usize, cols: usize) -> (isize, isize) {
    if trans {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

/// Threads for one GEMM: 1 unless it is large enough (2^28 multiply-adds, milliseconds of work) that
/// starting threads costs next to nothing beside it, and never more than rows or cores. The models'
/// many small products run on one thread: a pool waking for each of them cost more than it gained
/// (a DP-CGAN step 68 → 56 ms on two cores with matrixmultiply's own threading off).
fn gemm_threads(m: usize, k: usize, n: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if (m as u128) * (k as u128) * (n as u128) < 1 << 28 {
        return 1;
    }
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()));
    cores.min(m / 16).max(1)
}

macro_rules! impl_real {
    ($t:ty, $dtype:expr, $variant:ident, $gemm:path) => {
        impl Real for $t {
            const DTYPE: DType = $dtype;
            fn of(x: f32) -> Self {
                x as $t
            }
            fn of_f64(x: f64) -> Self {
                x as $t
            }
            fn f64(self) -> f64 {
                self as f64
            }
            fn host(t: &Tensor) -> &[Self] {
                match t.storage() {
                    Storage::$variant(v) => v,
                    _ => unreachable!("ops checks device and dtype before dispatching to the CPU backend"),
                }
            }
            fn host_mut(t: &mut Tensor) -> Result<&mut Vec<Self>> {
                match t.storage_mut()? {
                    Storage::$variant(v) => Ok(v),
                    _ => unreachable!("ops checks device and dtype before dispatching to the CPU backend"),
                }
            }
            fn wrap(data: Vec<Self>, shape: &[usize]) -> Result<Tensor> {
                Tensor::from_storage_checked(Storage::$variant(data), shape, &Device::Cpu)
            }
            fn gemm(m: usize, k: usize, n: usize, a: &[Self], trans_a: bool, b: &[Self], trans_b: bool, beta: Self, c: &mut [Self]) {
                if m == 0 || n == 0 {
                    return;
                }
                if k == 0 {
                    // BLAS semantics, as in the k > 0 path: beta = 0 overwrites c, whatever it held
                    // (0·NaN would keep a NaN).
                    if beta == 0.0 {
                        c[..m * n].fill(0.0);
                    } else {
                        c[..m * n].iter_mut().for_each(|v| *v *= beta);
                    }
                    return;
                }
                assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm operands shorter than their shapes");
                let (rsa, csa) = strides(trans_a, m, k);
                let (rsb, csb) = strides(trans_b, k, n);
                // Rows of c in bands, one per thread (one band below the threshold). A band is the
                // same product on fewer rows, and each element's sum runs over k in the same order
                // whatever the banding, so the result does not depend on the thread count.
                let bands = gemm_threads(m, k, n);
                let rows = m.div_ceil(bands);
                let (a_addr, b_addr) = (a.as_ptr() as usize, b.as_ptr() as usize);
                let run = |band: &mut [Self], r0: usize| {
                    let r = band.len() / n;
                    let a_band = (a_addr as *const Self).wrapping_offset(r0 as isize * rsa);
                    // SAFETY: the assert bounds every address the strides reach for rows 0..m, and
                    // this band reads rows r0..r0 + r of op(a) and writes its own rows of c, which
                    // aliases neither input.
                    unsafe {
                        $gemm(r, k, n, 1.0, a_band, rsa, csa, b_addr as *const Self, rsb, csb, beta, band.as_mut_ptr(), n as isize, 1)
                    }
                };
                if bands == 1 {
                    run(&mut c[..m * n], 0);
                } else {
                    std::thread::scope(|s| {
                        for (i, band) in c[..m * n].chunks_mut(rows * n).enumerate() {
                            s.spawn(move || run(band, i * rows));
                        }
                    });
                }
            }
        }
    };
}

impl_real!(f32, DType::F32, Cpu, matrixmultiply::sgemm);
impl_real!(f64, DType::F64, CpuF64, matrixmultiply::dgemm);

/// Runs `$body` with `$T` bound to the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use by_dtype;
