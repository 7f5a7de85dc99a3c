//! The embedded fatbin, what the build put in it, and the one table of kernel symbols that both the
//! launchers and `dpgan info` use. Functions are looked up once, when a device is opened.
use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, CudaModule};

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernels_build.rs"));

/// Declares the kernels: one enum variant per `extern "C"` symbol in `kernels/`, named
/// `{family}_{op}_{fwd|bwd}_{dtype}`.
macro_rules! kernel_table {
    ($($variant:ident => $symbol:literal,)+) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Kernel { $($variant,)+ }

        impl Kernel {
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant,)+];
            pub fn symbol(self) -> &'static str {
                match self { $(Kernel::$variant => $symbol,)+ }
            }
        }
    };
}

kernel_table! {
    Fill => "elementwise_fill_fwd_f32",
    Unary => "elementwise_unary_fwd_f32",
    BinarySame => "elementwise_binary_same_fwd_f32",
    BinaryBroadcast => "elementwise_binary_broadcast_fwd_f32",
    SumToInner => "reduce_sum_to_inner_fwd_f32",
    SumToOuter => "reduce_sum_to_outer_fwd_f32",
    SumSqToInner => "reduce_sum_sq_to_inner_fwd_f32",
    SumSqToOuter => "reduce_sum_sq_to_outer_fwd_f32",
    SumProdToInner => "reduce_sum_prod_to_inner_fwd_f32",
    SumProdToOuter => "reduce_sum_prod_to_outer_fwd_f32",
    LogSoftmax => "reduce_log_softmax_fwd_f32",
    SgdUpdate => "optim_sgd_update_f32",
    SgdMomentumUpdate => "optim_sgd_momentum_update_f32",
    AdamUpdate => "optim_adam_update_f32",
    EmaUpdate => "optim_ema_update_f32",
    SgdUpdateForeach => "optim_sgd_update_foreach_f32",
    AdamUpdateForeach => "optim_adam_update_foreach_f32",
    EmaUpdateForeach => "optim_ema_update_foreach_f32",
    GaussianAddPhilox => "rng_gaussian_add_philox_f32",
    GaussianAddChacha => "rng_gaussian_add_chacha_f32",
    PublicDrawsPhilox => "rng_public_draws_philox_f32",
    SanitizeRowsPhilox => "dp_sanitize_rows_philox_f32",
    SanitizeRowsChacha => "dp_sanitize_rows_chacha_f32",
    Conv2dWeightGradSqNorms => "dp_conv2d_weight_grad_sq_norms_bwd_f32",
    GaussianAddDividePhilox => "dp_gaussian_add_divide_philox_f32",
    GaussianAddDivideChacha => "dp_gaussian_add_divide_chacha_f32",
    NoisedSgdUpdatePhilox => "dp_noised_sgd_update_philox_f32",
    NoisedSgdUpdateChacha => "dp_noised_sgd_update_chacha_f32",
    NoisedAdamUpdatePhilox => "dp_noised_adam_update_philox_f32",
    NoisedAdamUpdateChacha => "dp_noised_adam_update_chacha_f32",
    NoisedSgdUpdateForeachPhilox => "dp_noised_sgd_update_foreach_philox_f32",
    NoisedSgdUpdateForeachChacha => "dp_noised_sgd_update_foreach_chacha_f32",
    NoisedAdamUpdateForeachPhilox => "dp_noised_adam_update_foreach_philox_f32",
    NoisedAdamUpdateForeachChacha => "dp_noised_adam_update_foreach_chacha_f32",
    MaxPool2x2Gather => "pool_max2x2_gather_fwd_f32",
    MaxPool2x2Scatter => "pool_max2x2_scatter_bwd_f32",
    UpsampleNearest2x => "pool_upsample_nearest2x_fwd_f32",
    SumPool2x2 => "pool_sum2x2_fwd_f32",
    Narrow => "shape_narrow_fwd_f32",
    Pad => "shape_pad_fwd_f32",
    ConcatPart => "shape_concat_part_fwd_f32",
    GatherRows => "shape_gather_rows_fwd_f32",
    PowerIteration => "norm_power_iteration_fwd_f32",
    PowerIterationWtu => "norm_power_iteration_wtu_fwd_f32",
    PowerIterationWv => "norm_power_iteration_wv_fwd_f32",
    PowerIterationNormalizeU => "norm_power_iteration_normalize_u_fwd_f32",
    SpectralDivideBwd => "norm_spectral_divide_bwd_f32",
    PixelNorm => "norm_pixel_norm_fwd_f32",
    PixelNormBwd => "norm_pixel_norm_bwd_f32",
    GemmNN => "gemm_grouped_nn_fwd_f32",
    GemmTN => "gemm_grouped_tn_fwd_f32",
    GemmNT => "gemm_grouped_nt_fwd_f32",
    GemmTT => "gemm_grouped_tt_fwd_f32",
    GemmNNTf32 => "gemm_grouped_nn_fwd_tf32",
    GemmTNTf32 => "gemm_grouped_tn_fwd_tf32",
    GemmNTTf32 => "gemm_grouped_nt_fwd_tf32",
    GemmTTTf32 => "gemm_grouped_tt_fwd_tf32",
    GemmNNTf32CpAsync => "gemm_grouped_nn_fwd_tf32_cp_async",
    GemmTNTf32CpAsync => "gemm_grouped_tn_fwd_tf32_cp_async",
    GemmNTTf32CpAsync => "gemm_grouped_nt_fwd_tf32_cp_async",
    GemmTTTf32CpAsync => "gemm_grouped_tt_fwd_tf32_cp_async",
    GemmNNTf32Wide => "gemm_grouped_nn_fwd_tf32_wide",
    GemmTNTf32Wide => "gemm_grouped_tn_fwd_tf32_wide",
    GemmNTTf32Wide => "gemm_grouped_nt_fwd_tf32_wide",
    GemmTTTf32Wide => "gemm_grouped_tt_fwd_tf32_wide",
    GemmMmaPeak => "gemm_mma_peak_fwd_tf32",
    GemmNTBias => "gemm_grouped_nt_bias_fwd_f32",
    GemmNTBiasTf32 => "gemm_grouped_nt_bias_fwd_tf32",
    Conv2d => "conv_conv2d_fwd_f32",
    Conv2dBias => "conv_conv2d_bias_fwd_f32",
    Conv2dInputGrad => "conv_conv2d_input_grad_bwd_f32",
    Conv2dWeightGrad => "conv_conv2d_weight_grad_bwd_f32",
    Conv2dTf32 => "conv_conv2d_fwd_tf32",
    Conv2dBiasTf32 => "conv_conv2d_bias_fwd_tf32",
    Conv2dInputGradTf32 => "conv_conv2d_input_grad_bwd_tf32",
    Conv2dWeightGradTf32 => "conv_conv2d_weight_grad_bwd_tf32",
    Conv2dTf32CpAsync => "conv_conv2d_fwd_tf32_cp_async",
    Conv2dBiasTf32CpAsync => "conv_conv2d_bias_fwd_tf32_cp_async",
    Conv2dInputGradTf32CpAsync => "conv_conv2d_input_grad_bwd_tf32_cp_async",
    Conv2dWeightGradTf32CpAsync => "conv_conv2d_weight_grad_bwd_tf32_cp_async",
    Conv2dTf32Wide => "conv_conv2d_fwd_tf32_wide",
    Conv2dBiasTf32Wide => "conv_conv2d_bias_fwd_tf32_wide",
    Conv2dInputGradTf32Wide => "conv_conv2d_input_grad_bwd_tf32_wide",
    Conv2dWeightGradTf32Wide => "conv_conv2d_weight_grad_bwd_tf32_wide",
}

impl Kernel {
    /// The family is the symbol's first word, which is also its source file in `kernels/`.
    pub fn family(self) -> &'static str {
        self.symbol().split('_').next().unwrap_or("")
    }

    /// Bytes of dynamic shared memory the kernel's launches pass, and its function is opted into
    /// when the module loads: the wide TF32 build's four-stage pipeline; 0 for every other kernel.
    pub fn dynamic_shared_bytes(self) -> u32 {
        if self.symbol().ends_with("_tf32_wide") {
            super::gemm::WIDE_SHARED_BYTES
        } else {
            0
        }
    }
}

/// Function handles of every kernel, indexed by [`Kernel`].
pub(crate) struct KernelTable {
    functions: Vec<CudaFunction>,
}

impl KernelTable {
    pub(crate) fn load(module: &Arc<CudaModule>) -> Result<Self> {
        let functions = Kernel::ALL
            .iter()
            .map(|k| {
                let f = module.load_function(k.symbol()).map_err(|e| Error::cuda(format!("looking up kernel {}", k.symbol()), e))?;
                let bytes = k.dynamic_shared_bytes();
                if bytes > 0 {
                    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                        .map_err(|e| Error::cuda(format!("opting kernel {} into {bytes} bytes of shared memory", k.symbol()), e))?;
                }
                Ok(f)
            })
            .collect::<Result<_>>()?;
        Ok(KernelTable { functions })
    }

    pub(crate) fn get(&self, k: Kernel) -> &CudaFunction {
        &self.functions[k as usize]
    }
}

/// One line of ptxas's report for one kernel and target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: String,
    pub arch: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
}

/// Parses ptxas -v output ("Compiling entry function 'X' for 'sm_90'", "Used N registers, ...").
pub fn kernel_resources(report: &str) -> Vec<KernelResources> {
    let mut out = Vec::new();
    let mut current: Option<KernelResources> = None;
    let number_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find(|part| part.contains(unit))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse::<u32>().ok()))
            .unwrap_or(0)
    };
    // ptxas also reports non-inlined device functions (CUDA's f64 trig slow path, for one) after an
    // entry: their "Function properties" block must not overwrite the entry's stack and spills.
    let mut properties_of_current = false;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(k) = current.take() {
                out.push(k);
            }
            let kernel = rest.split('\'').next().unwrap_or("").to_string();
            let arch = line.rsplit("for '").next().unwrap_or("").trim_end_matches(['\'', ' ']).to_string();
            current =
                Some(KernelResources { kernel, arch, registers: 0, spill_stores: 0, spill_loads: 0, shared_bytes: 0, stack_bytes: 0 });
            properties_of_current = false;
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            properties_of_current = current.as_ref().is_some_and(|k| k.kernel == name.trim());
        } else if let Some(k) = current.as_mut() {
            if line.contains("bytes stack frame") && properties_of_current {
                k.stack_bytes = number_before(line, "bytes stack frame");
                k.spill_stores = number_before(line, "bytes spill stores");
                k.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers");
                k.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::{kernel_resources, Kernel, FATBIN, PTXAS_REPORT};

    /// Shared memory a block may opt into, per SASS target (CUDA programming guide, compute
    /// capabilities table).
    fn max_block_shared_bytes(arch: &str) -> u32 {
        match arch {
            "sm_80" | "sm_87" => 163 * 1024,
            "sm_86" | "sm_89" | "sm_120" => 99 * 1024,
            "sm_90" | "sm_100" => 227 * 1024,
            other => panic!("no shared-memory limit known for {other}: add it here"),
        }
    }

    /// Every tiled kernel (gemm_tile.cuh's 256 threads a block) can launch on every compiled arch:
    /// its registers, allocated per warp in units of 256, for 8 warps within an SM's 64 Ki, and its
    /// static plus dynamic shared memory within what a block may opt into. A kernel past either
    /// would fail its first launch ("too many resources requested").
    #[test]
    fn every_tiled_kernel_fits_an_sm_on_every_compiled_arch() {
        if FATBIN.is_none() {
            eprintln!("this build had no nvcc: no ptxas report to check");
            return;
        }
        let reported = kernel_resources(PTXAS_REPORT);
        let tiled: Vec<Kernel> =
            Kernel::ALL.iter().copied().filter(|k| matches!(k.family(), "gemm" | "conv") || k.symbol().starts_with("dp_conv2d")).collect();
        assert_eq!(tiled.len(), 36, "19 GEMMs (with the mma ceiling), 16 convolutions, the conv norms");
        for k in tiled {
            let rows: Vec<_> = reported.iter().filter(|r| r.kernel == k.symbol()).collect();
            assert!(!rows.is_empty(), "{} not in ptxas's report", k.symbol());
            for r in rows {
                let per_warp = (r.registers * 32).div_ceil(256) * 256;
                assert!(per_warp * 8 <= 65_536, "{} on {}: {} registers do not fit 256 threads", k.symbol(), r.arch, r.registers);
                let shared = r.shared_bytes + k.dynamic_shared_bytes();
                assert!(shared <= max_block_shared_bytes(&r.arch), "{} on {}: {shared} bytes of shared memory", k.symbol(), r.arch);
            }
        }
    }

    /// The shape of nvcc 13's `-Xptxas -v` output around a kernel that calls the f64 trig slow path.
    #[test]
    fn a_device_function_after_an_entry_does_not_overwrite_its_figures() {
        let report = "ptxas info    : Compiling entry function 'rng_x_f32' for 'sm_90'
ptxas info    : Function properties for rng_x_f32
    40 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 40 bytes cumulative stack size, 256 bytes smem
ptxas info    : Compile time = 23.994 ms
ptxas info    : Function properties for __internal_trig_reduction_slowpathd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'other_f32' for 'sm_90'
ptxas info    : Function properties for other_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers
";
        let k = kernel_resources(report);
        assert_eq!(k.len(), 2);
        assert_eq!(
            (k[0].kernel.as_str(), k[0].registers, k[0].stack_bytes, k[0].spill_stores, k[0].spill_loads),
            ("rng_x_f32", 32, 40, 8, 4)
        );
        assert_eq!(k[0].shared_bytes, 256);
        assert_eq!((k[1].kernel.as_str(), k[1].registers, k[1].stack_bytes), ("other_f32", 10, 0));
    }
}
