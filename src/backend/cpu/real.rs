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
                // SAFETY: the assert bounds every address the strides reach; c aliases neither input.
                unsafe { $gemm(m, k, n, 1.0, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1) }
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
