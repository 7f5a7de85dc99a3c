//! `dpgan info`: what this binary is (version, whether kernels were compiled and for which targets)
//! and which CUDA devices it can use, or exactly why none. `--kernels` adds every kernel in
//! [`Kernel::ALL`] with ptxas's per-target report, so register pressure and spills are visible
//! without rerunning nvcc. Nothing here may panic on a machine without a GPU or a driver.
use std::fmt;

use clap::Args;
use dpgan::backend::cuda::module::{CUDA_ARCHS, FATBIN, NVCC_VERSION, PTXAS_REPORT, PTX_ARCH};
use dpgan::backend::cuda::{device_count, kernel_resources, CudaDevice, Kernel, KernelResources};
use dpgan::{Error, Result};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Also list every kernel with registers, spills, shared memory and stack per SASS target.
    #[arg(long)]
    kernels: bool,
    #[command(flatten)]
    json: super::json::JsonOut,
}

#[derive(Serialize)]
struct Report {
    version: &'static str,
    build: Build,
    devices: Vec<DeviceEntry>,
    /// Why there is no usable device; `None` when the driver reported at least one.
    no_device_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernels: Option<Vec<KernelEntry>>,
    /// ptxas reported these entry points but `Kernel::ALL` lacks them, so nothing can launch them.
    #[serde(skip_serializing_if = "Option::is_none")]
    unlisted_kernels: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Build {
    kernels_compiled: bool,
    nvcc: Option<&'static str>,
    sass: Vec<&'static str>,
    ptx: Option<String>,
}

#[derive(Serialize)]
struct DeviceEntry {
    ordinal: usize,
    #[serde(flatten)]
    properties: Option<DeviceSummary>,
    /// Why this device could not be opened (e.g. no SASS or PTX in the fatbin it can run).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct DeviceSummary {
    name: String,
    compute_capability: String,
    multiprocessors: i32,
    total_memory_bytes: usize,
}

#[derive(Serialize)]
struct KernelEntry {
    symbol: &'static str,
    family: &'static str,
    /// Dynamic shared memory its launches pass (`Kernel::dynamic_shared_bytes`), beside ptxas's
    /// static figure.
    dynamic_shared_bytes: u32,
    /// One per SASS target ptxas compiled it for; empty when the build had no nvcc.
    resources: Vec<Resources>,
}

#[derive(Serialize)]
struct Resources {
    arch: String,
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    shared_bytes: u32,
    stack_bytes: u32,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let report = gather(args.kernels);
    args.json.emit(&report, || report.to_string())
}

fn gather(with_kernels: bool) -> Report {
    let (devices, no_device_reason) = probe_devices();
    let build = Build {
        kernels_compiled: FATBIN.is_some(),
        nvcc: FATBIN.map(|_| NVCC_VERSION),
        sass: CUDA_ARCHS.to_vec(),
        ptx: PTX_ARCH.map(str::to_string),
    };
    let (kernels, unlisted_kernels) = if with_kernels {
        let (k, u) = kernel_table(&kernel_resources(PTXAS_REPORT));
        (Some(k), Some(u))
    } else {
        (None, None)
    };
    Report { version: env!("CARGO_PKG_VERSION"), build, devices, no_device_reason, kernels, unlisted_kernels }
}

/// Every device the driver reports, opened to read its properties, or the reason there are none.
fn probe_devices() -> (Vec<DeviceEntry>, Option<String>) {
    let count = match device_count() {
        Ok(n) => n,
        Err(Error::NoDevice(why)) => return (Vec::new(), Some(why)),
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let devices = (0..count)
        .map(|ordinal| match CudaDevice::open(ordinal) {
            Ok(dev) => {
                let p = dev.properties();
                let properties = DeviceSummary {
                    name: p.name.clone(),
                    compute_capability: format!("{}.{}", p.compute_capability.0, p.compute_capability.1),
                    multiprocessors: p.multiprocessors,
                    total_memory_bytes: p.total_memory,
                };
                DeviceEntry { ordinal, properties: Some(properties), error: None }
            }
            Err(e) => DeviceEntry { ordinal, properties: None, error: Some(e.to_string()) },
        })
        .collect();
    (devices, None)
}

/// Joins `Kernel::ALL` with ptxas's report (rows in arch order), and lists reported symbols the
/// table does not know.
fn kernel_table(reported: &[KernelResources]) -> (Vec<KernelEntry>, Vec<String>) {
    let arch_number = |a: &str| a.trim_start_matches("sm_").parse::<u32>().unwrap_or(u32::MAX);
    let entries = Kernel::ALL
        .iter()
        .map(|&k| {
            let mut resources: Vec<Resources> = reported
                .iter()
                .filter(|r| r.kernel == k.symbol())
                .map(|r| Resources {
                    arch: r.arch.clone(),
                    registers: r.registers,
                    spill_stores: r.spill_stores,
                    spill_loads: r.spill_loads,
                    shared_bytes: r.shared_bytes,
                    stack_bytes: r.stack_bytes,
                })
                .collect();
            resources.sort_by_key(|r| arch_number(&r.arch));
            KernelEntry { symbol: k.symbol(), family: k.family(), dynamic_shared_bytes: k.dynamic_shared_bytes(), resources }
        })
        .collect();
    let mut unlisted: Vec<String> =
        reported.iter().filter(|r| !Kernel::ALL.iter().any(|k| k.symbol() == r.kernel)).map(|r| r.kernel.clone()).collect();
    unlisted.sort();
    unlisted.dedup();
    (entries, unlisted)
}

/// The text form: a few lines of build and devices, then the kernel table when asked for.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dpgan {}", self.version)?;
        match self.build.nvcc {
            Some(nvcc) => {
                let ptx = self.build.ptx.as_deref().unwrap_or("none");
                writeln!(f, "kernels: compiled by nvcc ({nvcc}); SASS {}; PTX {ptx}", self.build.sass.join(" "))?;
            }
            None => writeln!(f, "kernels: none; this build had no nvcc, so only the CPU backend is available")?,
        }
        match &self.no_device_reason {
            Some(why) => writeln!(f, "no CUDA device: {why}")?,
            None => {
                writeln!(f, "CUDA devices: {}", self.devices.len())?;
                for d in &self.devices {
                    writeln!(f, "  {d}")?;
                }
            }
        }
        if let Some(kernels) = &self.kernels {
            writeln!(f)?;
            write_kernel_table(f, kernels, self.build.kernels_compiled)?;
        }
        if let Some(unlisted) = self.unlisted_kernels.as_ref().filter(|u| !u.is_empty()) {
            writeln!(f, "compiled but missing from Kernel::ALL (nothing launches them): {}", unlisted.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for DeviceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.properties {
            Some(p) => {
                let gib = p.total_memory_bytes as f64 / (1u64 << 30) as f64;
                let (name, cc, sms) = (&p.name, &p.compute_capability, p.multiprocessors);
                write!(f, "cuda:{}  {name}  compute capability {cc}  {sms} SMs  {gib:.1} GiB", self.ordinal)
            }
            None => write!(f, "cuda:{}  cannot be opened: {}", self.ordinal, self.error.as_deref().unwrap_or("unknown reason")),
        }
    }
}

fn write_kernel_table(f: &mut fmt::Formatter<'_>, kernels: &[KernelEntry], compiled: bool) -> fmt::Result {
    if !compiled {
        writeln!(f, "this build had no nvcc: the binary holds no kernels and there is no ptxas report.")?;
        writeln!(f, "Kernel::ALL lists {} kernels that a build with nvcc compiles:", kernels.len())?;
    }
    let sym_w = kernels.iter().map(|k| k.symbol.len()).max().unwrap_or(0).max("symbol".len());
    let fam_w = kernels.iter().map(|k| k.family.len()).max().unwrap_or(0).max("family".len());
    writeln!(
        f,
        "{:sym_w$}  {:fam_w$}  {:6}  {:>4}  {:>11}  {:>10}  {:>10}  {:>11}  {:>9}",
        "symbol", "family", "arch", "regs", "spill store", "spill load", "smem bytes", "stack bytes", "dyn smem"
    )?;
    for k in kernels {
        if k.resources.is_empty() {
            let why = if compiled { "not in ptxas's report" } else { "-" };
            writeln!(f, "{:sym_w$}  {:fam_w$}  {why}", k.symbol, k.family)?;
        }
        for r in &k.resources {
            writeln!(
                f,
                "{:sym_w$}  {:fam_w$}  {:6}  {:>4}  {:>11}  {:>10}  {:>10}  {:>11}  {:>9}",
                k.symbol,
                k.family,
                r.arch,
                r.registers,
                r.spill_stores,
                r.spill_loads,
                r.shared_bytes,
                r.stack_bytes,
                k.dynamic_shared_bytes
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device lines cannot be exercised without a GPU, so their two forms are checked here.
    #[test]
    fn device_entries_render_as_text_and_flat_json() {
        let summary = DeviceSummary {
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: "9.0".into(),
            multiprocessors: 132,
            total_memory_bytes: 85_045_231_616,
        };
        let ok = DeviceEntry { ordinal: 0, properties: Some(summary), error: None };
        assert_eq!(ok.to_string(), "cuda:0  NVIDIA H100 80GB HBM3  compute capability 9.0  132 SMs  79.2 GiB");
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(json["multiprocessors"], 132);
        assert!(json.get("error").is_none());
        let failed = DeviceEntry { ordinal: 1, properties: None, error: Some("no kernel image".into()) };
        assert_eq!(failed.to_string(), "cuda:1  cannot be opened: no kernel image");
        assert_eq!(serde_json::to_value(&failed).unwrap(), serde_json::json!({"ordinal": 1, "error": "no kernel image"}));
    }

    #[test]
    fn table_joins_the_report_and_flags_unknown_symbols() {
        let sym = Kernel::ALL[0].symbol();
        let report = format!(
            "ptxas info    : Compiling entry function '{sym}' for 'sm_90'\nptxas info    : Function properties for {sym}\n    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
             ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem\n\
             ptxas info    : Compiling entry function '{sym}' for 'sm_80'\nptxas info    : Used 32 registers\n\
             ptxas info    : Compiling entry function 'stray_kernel_fwd_f32' for 'sm_80'\nptxas info    : Used 8 registers\n"
        );
        let (entries, unlisted) = kernel_table(&kernel_resources(&report));
        assert_eq!(entries.len(), Kernel::ALL.len());
        let archs: Vec<&str> = entries[0].resources.iter().map(|r| r.arch.as_str()).collect();
        assert_eq!(archs, ["sm_80", "sm_90"]);
        let sm90 = &entries[0].resources[1];
        assert_eq!((sm90.registers, sm90.spill_stores, sm90.shared_bytes, sm90.stack_bytes), (40, 4, 1024, 8));
        assert_eq!(unlisted, ["stray_kernel_fwd_f32"]);
    }
}
