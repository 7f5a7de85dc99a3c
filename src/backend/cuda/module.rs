//! The embedded fatbin, what the build put in it, and the one table of kernel symbols that both the
//! launchers and `dpgan info` use. Functions are looked up once, when a device is opened.
use std::sync::Arc;

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
    LogSoftmax => "reduce_log_softmax_fwd_f32",
    SgdUpdate => "optim_sgd_update_f32",
    SgdMomentumUpdate => "optim_sgd_momentum_update_f32",
    AdamUpdate => "optim_adam_update_f32",
    GemmNN => "gemm_grouped_nn_fwd_f32",
    GemmTN => "gemm_grouped_tn_fwd_f32",
    GemmNT => "gemm_grouped_nt_fwd_f32",
    GemmTT => "gemm_grouped_tt_fwd_f32",
    GemmNNTf32 => "gemm_grouped_nn_fwd_tf32",
    GemmTNTf32 => "gemm_grouped_tn_fwd_tf32",
    GemmNTTf32 => "gemm_grouped_nt_fwd_tf32",
    GemmTTTf32 => "gemm_grouped_tt_fwd_tf32",
    Conv2d => "conv_conv2d_fwd_f32",
    Conv2dInputGrad => "conv_conv2d_input_grad_bwd_f32",
    Conv2dWeightGrad => "conv_conv2d_weight_grad_bwd_f32",
    Conv2dTf32 => "conv_conv2d_fwd_tf32",
    Conv2dInputGradTf32 => "conv_conv2d_input_grad_bwd_tf32",
    Conv2dWeightGradTf32 => "conv_conv2d_weight_grad_bwd_tf32",
}

impl Kernel {
    /// The family is the symbol's first word, which is also its source file in `kernels/`.
    pub fn family(self) -> &'static str {
        self.symbol().split('_').next().unwrap_or("")
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
            .map(|k| module.load_function(k.symbol()).map_err(|e| Error::cuda(format!("looking up kernel {}", k.symbol()), e)))
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
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(k) = current.take() {
                out.push(k);
            }
            let kernel = rest.split('\'').next().unwrap_or("").to_string();
            let arch = line.rsplit("for '").next().unwrap_or("").trim_end_matches(['\'', ' ']).to_string();
            current =
                Some(KernelResources { kernel, arch, registers: 0, spill_stores: 0, spill_loads: 0, shared_bytes: 0, stack_bytes: 0 });
        } else if let Some(k) = current.as_mut() {
            if line.contains("bytes stack frame") {
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
