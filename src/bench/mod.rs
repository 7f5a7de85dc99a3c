//! Kernel benchmarks: `dpgan bench kernels`. This file holds the pure parts (FLOP and byte counts,
//! the median, the report and its atomic JSON file, the table); `cases.rs` builds the cases at the
//! shapes DP-CGAN and GS-WGAN use; `kernels.rs` validates each against the CPU backend, times it
//! with CUDA events on the device's stream and measures the ceilings.
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

pub mod cases;
pub mod kernels;
pub mod step;

/// Bytes in one f32.
pub const F32: f64 = 4.0;

/// `2·M·N·K`: one multiply and one add per term of a matrix product.
pub fn gemm_flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}

/// The fewest bytes a matrix product moves: A `[M, K]` and B `[K, N]` read once, C `[M, N]`
/// written once, in f32.
pub fn gemm_bytes(m: usize, n: usize, k: usize) -> f64 {
    F32 * (m * k + k * n + m * n) as f64
}

/// The geometry of one convolution, as a benchmark case states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_hw: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// `(H + 2·padding − K) / stride + 1`.
    pub fn out_hw(&self) -> usize {
        (self.in_hw + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// `2·B·HO·WO·O·C·K²`: the same for the forward pass, the input gradient and the weight
    /// gradient (each is one implicit GEMM of that size).
    pub fn flops(&self) -> f64 {
        let o = self.out_hw();
        2.0 * (self.batch * o * o * self.out_channels * self.in_channels * self.kernel * self.kernel) as f64
    }
    /// x, w and y once each (two read, one written, whichever direction): the fewest bytes.
    pub fn bytes(&self) -> f64 {
        let x = self.batch * self.in_channels * self.in_hw * self.in_hw;
        let w = self.out_channels * self.in_channels * self.kernel * self.kernel;
        let o = self.out_hw();
        let y = self.batch * self.out_channels * o * o;
        F32 * (x + w + y) as f64
    }
}

/// The median of `samples` (the mean of the middle two for an even count); `None` when empty or
/// when a sample is NaN.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) })
}

/// GFLOP/s or GB/s from a count and milliseconds.
pub fn rate_g(count: f64, ms: f64) -> f64 {
    count / (ms * 1e-3) / 1e9
}

/// The device's measured ceilings, taken in the same run as the cases.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ceilings {
    /// A large device-to-device copy, bytes read plus bytes written.
    pub copy_gbps: f64,
    pub copy_bytes: f64,
    /// A large square GEMM through dpgan's own kernel, f32 and TF32 (register-staged, through the
    /// cp.async pipeline, and on wide tiles).
    pub gemm_f32_gflops: f64,
    pub gemm_tf32_gflops: f64,
    pub gemm_tf32_cp_async_gflops: f64,
    pub gemm_tf32_wide_gflops: f64,
    pub gemm_n: usize,
    /// The tensor cores' TF32 rate: back-to-back `mma.sync` m16n8k8 products from registers on
    /// every SM, no memory traffic. TF32 cases' `%peak` is against it.
    pub mma_tf32_gflops: f64,
}

/// One timed case.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CaseResult {
    pub name: String,
    pub family: String,
    pub shape: String,
    pub median_ms: f64,
    /// Achieved GFLOP/s; `None` for memory-bound families whose FLOPs are not worth counting.
    pub gflops: Option<f64>,
    /// Achieved GB/s over the bytes stated in `bytes_note`.
    pub gbps: f64,
    pub bytes: f64,
    pub bytes_note: String,
    /// Timed samples (each one event pair around `calls_per_run` calls).
    pub runs: usize,
    pub calls_per_run: usize,
    /// Input sets rotated between calls, and the bytes they span.
    pub input_sets: usize,
    pub rotated_bytes: f64,
    /// Whether the rotated inputs still fit in twice the L2 (then L2 may flatter the figure).
    pub l2_resident: bool,
    pub tf32: bool,
    /// The TF32 build (`Tf32Pipeline::label`: "tf32", "tf32 cp.async", "tf32 wide"); None in f32.
    pub tf32_build: Option<String>,
    /// ‖gpu − cpu‖ / ‖cpu‖ on the small validation instance.
    pub validation_error: f64,
}

/// Everything one `dpgan bench kernels` run measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BenchReport {
    pub device: String,
    pub compute_capability: String,
    pub l2_bytes: usize,
    /// UTC, ISO 8601.
    pub date: String,
    pub git_commit: Option<String>,
    pub quick: bool,
    pub timing: String,
    pub ceilings: Ceilings,
    pub cases: Vec<CaseResult>,
    /// Secure-mode (ChaCha20) noise time over fast-mode (Philox) noise time at the same size.
    pub secure_noise_cost: Option<f64>,
    /// Whether every case ran: `bench kernels --json PATH` rewrites PATH after each case with
    /// the cases so far (false), so that a run cut short still leaves what it measured.
    pub complete: bool,
}

/// `median_ms` of the case named `secure` over that of `fast`, when both are there.
pub fn time_ratio(cases: &[CaseResult], secure: &str, fast: &str) -> Option<f64> {
    let ms = |name: &str| cases.iter().find(|c| c.name == name).map(|c| c.median_ms);
    Some(ms(secure)? / ms(fast)?)
}

/// Writes `value` as pretty JSON to `path` atomically: a temporary file in the same directory,
/// flushed and synced, then renamed over `path`, so a reader never sees half a report.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?;
    text.push('\n');
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file name"))?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::file(&tmp, format!("cannot write: {e}")));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::file(path, format!("cannot move {} into place: {e}", tmp.display()))
    })
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's civil-from-days).
pub fn utc_iso8601(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The commit this binary measures: `DPGAN_GIT_COMMIT` if set, else `git rev-parse HEAD` in the
/// source tree it was built from (with `-dirty` when the tree has changes); `None` if neither works.
pub fn git_commit() -> Option<String> {
    if let Ok(c) = std::env::var("DPGAN_GIT_COMMIT") {
        return Some(c).filter(|c| !c.is_empty());
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"]).filter(|h| !h.is_empty())?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.ceilings;
        writeln!(
            f,
            "{} (cc {}, L2 {:.0} MiB), {}, commit {}",
            self.device,
            self.compute_capability,
            self.l2_bytes as f64 / 1048576.0,
            self.date,
            self.git_commit.as_deref().unwrap_or("unknown")
        )?;
        writeln!(f, "timing: {}", self.timing)?;
        writeln!(
            f,
            "ceilings: copy {:.0} GB/s ({:.0} MiB read + written); gemm {}³ f32 {:.0} GFLOP/s, tf32 {:.0}, tf32 cp.async {:.0}, tf32 wide {:.0} GFLOP/s; tensor cores (mma.sync tf32) {:.0} GFLOP/s",
            c.copy_gbps,
            c.copy_bytes / 1048576.0,
            c.gemm_n,
            c.gemm_f32_gflops,
            c.gemm_tf32_gflops,
            c.gemm_tf32_cp_async_gflops,
            c.gemm_tf32_wide_gflops,
            c.mma_tf32_gflops
        )?;
        let w = self.cases.iter().map(|r| r.name.chars().count()).max().unwrap_or(4).max(4);
        writeln!(
            f,
            "{:w$}  {:10}  {:>10}  {:>9}  {:>6}  {:>8}  {:>6}  {:>4}  L2",
            "case", "family", "median ms", "GFLOP/s", "%peak", "GB/s", "%copy", "sets"
        )?;
        for r in &self.cases {
            // A TF32 case against the tensor cores' rate, an f32 one against the f32 GEMM.
            let peak = if r.tf32 { c.mma_tf32_gflops } else { c.gemm_f32_gflops };
            let (gf, gf_pct) = match r.gflops {
                Some(g) => (format!("{g:.0}"), format!("{:.0}", 100.0 * g / peak)),
                None => ("-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:w$}  {:10}  {:>10.4}  {gf:>9}  {gf_pct:>6}  {:>8.1}  {:>6.0}  {:>4}  {}",
                r.name,
                r.family,
                r.median_ms,
                r.gbps,
                100.0 * r.gbps / c.copy_gbps,
                r.input_sets,
                if r.l2_resident { "resident" } else { "rotated" }
            )?;
        }
        if let Some(r) = self.secure_noise_cost {
            writeln!(f, "secure-mode noise costs {r:.2}× fast-mode noise at the same size")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_counts() {
        assert_eq!(gemm_flops(600, 128, 794), 2.0 * 600.0 * 128.0 * 794.0);
        assert_eq!(gemm_bytes(2, 3, 4), 4.0 * (8 + 12 + 6) as f64);
    }

    #[test]
    fn conv_counts_match_the_gs_wgan_layers() {
        // D conv1: [32, 1, 28, 28] → [32, 64, 14, 14] with a 5×5 kernel.
        let c = ConvShape { batch: 32, in_channels: 1, out_channels: 64, in_hw: 28, kernel: 5, stride: 2, padding: 2 };
        assert_eq!(c.out_hw(), 14);
        assert_eq!(c.flops(), 2.0 * (32 * 14 * 14 * 64 * 25) as f64);
        assert_eq!(c.bytes(), 4.0 * (32 * 784 + 64 * 25 + 32 * 64 * 196) as f64);
        // D conv3: 7 → 4.
        let c3 = ConvShape { batch: 32, in_channels: 128, out_channels: 256, in_hw: 7, kernel: 5, stride: 2, padding: 2 };
        assert_eq!(c3.out_hw(), 4);
        // ResNet G 3×3 p1 keeps the size; docs/algorithms.md §3 counts ≈3.3 GFLOP per sample forward, of which
        // the two 256→256 convs at 32² are ≈2.4.
        let g = ConvShape { batch: 1, in_channels: 256, out_channels: 256, in_hw: 32, kernel: 3, stride: 1, padding: 1 };
        assert_eq!(g.out_hw(), 32);
        assert!((2.0 * g.flops() / 1e9 - 2.416).abs() < 1e-3);
    }

    #[test]
    fn median_of_odd_even_and_bad_inputs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn rates() {
        assert!((rate_g(2e9, 1.0) - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc_iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_iso8601(1_795_537_476), "2026-11-24T16:24:36Z");
    }

    fn sample_report() -> BenchReport {
        let case = CaseResult {
            name: "linear 794→128 fwd".into(),
            family: "gemm".into(),
            shape: "[600,794]·[128,794]ᵀ".into(),
            median_ms: 0.01,
            gflops: Some(1219.2),
            gbps: 100.0,
            bytes: 1e6,
            bytes_note: "x, W read, y written".into(),
            runs: 30,
            calls_per_run: 10,
            input_sets: 4,
            rotated_bytes: 4e6,
            l2_resident: true,
            tf32: false,
            tf32_build: None,
            validation_error: 1e-7,
        };
        let ceilings = Ceilings {
            copy_gbps: 3000.0,
            copy_bytes: 2.0 * 1073741824.0,
            gemm_f32_gflops: 40000.0,
            gemm_tf32_gflops: 200000.0,
            gemm_tf32_cp_async_gflops: 210000.0,
            gemm_tf32_wide_gflops: 260000.0,
            gemm_n: 4096,
            mma_tf32_gflops: 400000.0,
        };
        BenchReport {
            device: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: "9.0".into(),
            l2_bytes: 52_428_800,
            date: utc_iso8601(0),
            git_commit: None,
            quick: true,
            timing: "median".into(),
            ceilings,
            cases: vec![case],
            secure_noise_cost: Some(2.5),
            complete: true,
        }
    }

    #[test]
    fn json_is_written_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.json");
        fs::write(&path, "old").unwrap();
        let report = sample_report();
        write_json_atomic(&path, &report).unwrap();
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["device"], "NVIDIA H100 80GB HBM3");
        assert_eq!(v["ceilings"]["gemm_n"], 4096);
        assert_eq!(v["complete"], true);
        let case = &v["cases"][0];
        for key in ["name", "family", "shape", "median_ms", "gflops", "gbps", "runs"] {
            assert!(case.get(key).is_some(), "case lacks {key}");
        }
        // Only the report is left: the temporary file was renamed, not copied.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("bench.json")]);
    }

    #[test]
    fn a_failed_write_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("bench.json");
        let err = write_json_atomic(&path, &sample_report()).unwrap_err();
        assert!(err.to_string().contains("cannot write"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn table_has_one_row_per_case() {
        let text = sample_report().to_string();
        assert!(text.contains("ceilings: copy 3000 GB/s"), "{text}");
        let row = text.lines().find(|l| l.starts_with("linear 794→128 fwd")).expect("case row");
        assert!(row.contains("1219") && row.contains("resident"), "{row}");
        assert!(text.contains("secure-mode noise costs 2.50×"), "{text}");
    }

    #[test]
    fn ratio_of_two_named_cases() {
        let mut fast = sample_report().cases.remove(0);
        fast.name = "fast".into();
        let mut secure = fast.clone();
        secure.name = "secure".into();
        secure.median_ms = 3.0 * fast.median_ms;
        let cases = [fast, secure];
        assert!((time_ratio(&cases, "secure", "fast").unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(time_ratio(&cases, "secure", "missing"), None);
    }
}
