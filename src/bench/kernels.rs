//! Validation and timing of the cases in `cases.rs`, and the device's ceilings.
//!
//! Each case is validated once on a small instance against the CPU backend (‖gpu − cpu‖ / ‖cpu‖
//! over every output and every operand an in-place op mutates; 1e-3 in f32, 1e-2 in TF32); a
//! mismatch aborts the run. Then: warm-up calls, and `runs` samples, each one pair of CUDA events on
//! the device's stream around `calls_per_run` consecutive calls; a sample's time is its elapsed
//! time over its calls, and the case reports the median sample. Batching calls inside a sample keeps
//! the event overhead (a few µs) out of µs-sized kernels; the host's launch cost stays in, as it does
//! in a training step. Outputs are allocated per call, as in a step (from the stream-ordered pool).
//!
//! L2: inputs rotate over enough sets that the bytes a case touches span twice the L2 (capped at
//! [`MAX_INPUT_SETS`] sets, 2 with `--quick`); cases that still fit are marked `l2_resident`.
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cases::{all_cases, gemm_case, pick, randn, Case, Op, Size};
use super::{median, rate_g, BenchReport, CaseResult, Ceilings};
use crate::backend::cuda::{mma_peak, mma_peak_expected, CudaDevice, Tf32Pipeline, Tf32PipelineScope, Tf32Scope};
use crate::backend::ops;
use crate::error::{Error, Result};
use crate::tensor::{Device, Storage, Tensor};

/// The most input sets a case rotates over.
pub const MAX_INPUT_SETS: usize = 256;
/// The square GEMM ceiling's size and the copy ceiling's bytes (one way).
pub const CEILING_GEMM_N: usize = 4096;
pub const CEILING_COPY_BYTES: usize = 1 << 30;

/// How many warm-up calls, samples and calls per sample.
#[derive(Clone, Copy, Debug)]
pub struct Iterations {
    pub warmup: usize,
    pub runs: usize,
    pub calls_per_run: usize,
    pub max_sets: usize,
}

impl Iterations {
    pub fn new(quick: bool) -> Self {
        if quick {
            Iterations { warmup: 1, runs: 3, calls_per_run: 2, max_sets: 2 }
        } else {
            Iterations { warmup: 5, runs: 31, calls_per_run: 10, max_sets: MAX_INPUT_SETS }
        }
    }
}

/// `‖got − want‖ / ‖want‖` (or `‖got‖` when `want` is zero); NaN when anything is NaN.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::NAN;
    }
    let diff: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Runs `case` on the CPU and on `dev` at its small size and compares every output and every
/// operand (in-place ops change theirs); the worst relative error, or an error above tolerance.
fn validate(case: &Case, dev: &Device, rng: &mut ChaCha8Rng) -> Result<f64> {
    let mut cpu = (case.make)(rng, Size::Small)?;
    let mut gpu = cpu.iter().map(|t| t.to_device(dev)).collect::<Result<Vec<_>>>()?;
    let mut want = (case.op)(&mut cpu)?;
    let mut got = (case.op)(&mut gpu)?;
    want.extend(cpu);
    got.extend(gpu);
    let tolerance = if case.tf32.is_some() { 1e-2 } else { 1e-3 };
    let mut worst: f64 = 0.0;
    for (g, w) in got.iter().zip(&want) {
        let err = relative_error(&g.to_vec()?, &w.to_vec()?);
        if err.is_nan() || err > tolerance {
            return Err(Error::cuda(
                format!("validating `{}` against the CPU backend", case.name),
                format!("relative error {err:.3e} exceeds {tolerance:.0e} (output shape {:?})", g.shape()),
            ));
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// Median milliseconds per call of `call(i)` (i counts calls from 0), as the module doc says. The
/// two events are created once, before the warm-up, so that creating them is never timed.
pub fn time_calls(dev: &CudaDevice, it: Iterations, mut call: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let ctx = dev.stream().context();
    let new_event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| Error::cuda("creating a timing event", e));
    let (start, end) = (new_event()?, new_event()?);
    let mut i = 0;
    for _ in 0..it.warmup {
        call(i)?;
        i += 1;
    }
    dev.synchronize()?;
    let mut samples = Vec::with_capacity(it.runs);
    for _ in 0..it.runs {
        start.record(dev.stream()).map_err(|e| Error::cuda("recording the start event", e))?;
        for _ in 0..it.calls_per_run {
            call(i)?;
            i += 1;
        }
        end.record(dev.stream()).map_err(|e| Error::cuda("recording the end event", e))?;
        let ms = start.elapsed_ms(&end).map_err(|e| Error::cuda("reading event times", e))?;
        samples.push(ms as f64 / it.calls_per_run as f64);
    }
    dev.synchronize()?;
    median(&samples).ok_or_else(|| Error::cuda("timing", "no valid sample"))
}

fn run_case(case: &Case, dev: &Device, cuda: &CudaDevice, l2_bytes: usize, it: Iterations, rng: &mut ChaCha8Rng) -> Result<CaseResult> {
    let _tf32 = Tf32Scope::new(case.tf32.is_some());
    let _pipeline = Tf32PipelineScope::new(case.tf32.unwrap_or_default());
    let validation_error = validate(case, dev, rng)?;
    let wanted = ((2 * l2_bytes) as f64 / case.bytes).ceil() as usize;
    let input_sets = wanted.clamp(1, it.max_sets);
    let mut sets = (0..input_sets)
        .map(|_| (case.make)(rng, Size::Full)?.iter().map(|t| t.to_device(dev)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let n = sets.len();
    let median_ms = time_calls(cuda, it, |i| (case.op)(&mut sets[i % n]).map(drop))?;
    let rotated_bytes = case.bytes * input_sets as f64;
    Ok(CaseResult {
        name: case.name.clone(),
        family: case.family.to_string(),
        shape: case.shape.clone(),
        median_ms,
        gflops: case.flops.map(|f| rate_g(f, median_ms)),
        gbps: rate_g(case.bytes, median_ms),
        bytes: case.bytes,
        bytes_note: case.bytes_note.clone(),
        runs: it.runs,
        calls_per_run: it.calls_per_run,
        input_sets,
        rotated_bytes,
        l2_resident: rotated_bytes < (2 * l2_bytes) as f64,
        tf32: case.tf32.is_some(),
        tf32_build: case.tf32.map(|p| p.label().to_string()),
        validation_error,
    })
}

fn cuda_buffer(t: &Tensor) -> Result<&crate::backend::cuda::CudaBuffer> {
    match t.storage() {
        Storage::Cuda(b) => Ok(b),
        _ => Err(Error::Invalid("expected a tensor on the CUDA device".into())),
    }
}

/// A 1 GiB device-to-device copy (cuMemcpyDtoDAsync into a fresh pool allocation), bytes read plus
/// written; checked exactly on a small random buffer first.
fn copy_ceiling(dev: &Device, cuda: &CudaDevice, it: Iterations, rng: &mut ChaCha8Rng) -> Result<(f64, f64)> {
    let small = randn(rng, &[100_003])?;
    let on_dev = small.to_device(dev)?;
    if cuda_buffer(&on_dev)?.try_clone()?.download()? != small.to_vec()? {
        return Err(Error::cuda("validating the device-to-device copy", "the copy differs from its source"));
    }
    let src = Tensor::full(&[CEILING_COPY_BYTES / 4], 1.5, dev)?;
    let buf = cuda_buffer(&src)?;
    let ms = time_calls(cuda, it, |_| buf.try_clone().map(drop))?;
    let bytes = 2.0 * CEILING_COPY_BYTES as f64;
    Ok((rate_g(bytes, ms), bytes))
}

/// A square GEMM through dpgan's kernel, f32 or TF32 (through `tf32`'s pipeline), validated at 256³.
fn gemm_ceiling(
    dev: &Device,
    cuda: &CudaDevice,
    l2_bytes: usize,
    it: Iterations,
    tf32: Option<Tf32Pipeline>,
    rng: &mut ChaCha8Rng,
) -> Result<f64> {
    let n = CEILING_GEMM_N;
    let make = move |rng: &mut ChaCha8Rng, s: Size| -> Result<Vec<Tensor>> {
        let k = pick(s, 256, n);
        Ok(vec![randn(rng, &[1, k, k])?, randn(rng, &[1, k, k])?])
    };
    let op: Op = Box::new(|t| Ok(vec![ops::matmul(&t[0], &t[1], false, false)?]));
    let mut case = gemm_case(format!("ceiling gemm {n}³"), String::new(), (n, n, n), Box::new(make), op);
    case.tf32 = tf32;
    let r = run_case(&case, dev, cuda, l2_bytes, it, rng)?;
    Ok(r.gflops.unwrap_or(0.0))
}

/// The tensor cores' TF32 rate (`mma_peak`): checked exactly on two blocks first, then timed on 8
/// blocks an SM.
fn mma_ceiling(cuda: &Arc<CudaDevice>, it: Iterations) -> Result<f64> {
    let (small, _) = mma_peak(cuda, 2, 3)?;
    if small.to_vec()? != mma_peak_expected(2 * 256, 3) {
        return Err(Error::cuda("validating the mma.sync TF32 ceiling", "its sums differ from A·B added rounds × chains times"));
    }
    let blocks = 8 * cuda.properties().multiprocessors.max(1) as usize;
    let rounds = 4096;
    let mut flops = 0.0;
    let ms = time_calls(cuda, it, |_| {
        flops = mma_peak(cuda, blocks, rounds)?.1;
        Ok(())
    })?;
    Ok(rate_g(flops, ms))
}

/// Opens cuda:0 (or says why there is none), measures the ceilings, then validates and times
/// every case. `progress` hears each case's name before it runs; `snapshot` gets the report so far
/// (`complete: false`) after the ceilings and after each case, so that a run cut short by a time
/// limit or a failed validation still leaves what it measured.
pub fn run(quick: bool, mut progress: impl FnMut(&str), mut snapshot: impl FnMut(&BenchReport) -> Result<()>) -> Result<BenchReport> {
    let dev = Device::cuda(0).map_err(|e| match e {
        Error::NoDevice(why) => Error::NoDevice(format!("`dpgan bench kernels` needs a CUDA GPU: {why}")),
        other => other,
    })?;
    let Device::Cuda(cuda) = &dev else { unreachable!("Device::cuda gives a CUDA device") };
    let cuda: Arc<CudaDevice> = cuda.clone();
    let l2_bytes = cuda
        .stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map_err(|e| Error::cuda("reading the L2 size", e))?
        .max(0) as usize;
    let it = Iterations::new(quick);
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);

    progress("ceiling: device-to-device copy");
    let (copy_gbps, copy_bytes) = copy_ceiling(&dev, &cuda, it, &mut rng)?;
    progress("ceiling: gemm f32");
    let gemm_f32_gflops = gemm_ceiling(&dev, &cuda, l2_bytes, it, None, &mut rng)?;
    let mut tf32 = [0.0; 3];
    for (rate, pipeline) in tf32.iter_mut().zip(Tf32Pipeline::ALL) {
        progress(&format!("ceiling: gemm {}", pipeline.label()));
        *rate = gemm_ceiling(&dev, &cuda, l2_bytes, it, Some(pipeline), &mut rng)?;
    }
    let [gemm_tf32_gflops, gemm_tf32_cp_async_gflops, gemm_tf32_wide_gflops] = tf32;
    progress("ceiling: tensor cores (mma.sync tf32)");
    let mma_tf32_gflops = mma_ceiling(&cuda, it)?;
    let ceilings = Ceilings {
        copy_gbps,
        copy_bytes,
        gemm_f32_gflops,
        gemm_tf32_gflops,
        gemm_tf32_cp_async_gflops,
        gemm_tf32_wide_gflops,
        gemm_n: CEILING_GEMM_N,
        mma_tf32_gflops,
    };

    let p = cuda.properties();
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut report = BenchReport {
        device: p.name.clone(),
        compute_capability: format!("{}.{}", p.compute_capability.0, p.compute_capability.1),
        l2_bytes,
        date: super::utc_iso8601(seconds),
        git_commit: super::git_commit(),
        quick,
        timing: format!(
            "CUDA events on the device stream; {} warm-up calls, then the median of {} samples, each one event pair around {} calls; inputs rotated to span 2×L2 (≤ {} sets)",
            it.warmup, it.runs, it.calls_per_run, it.max_sets
        ),
        ceilings,
        cases: Vec::new(),
        secure_noise_cost: None,
        complete: false,
    };
    snapshot(&report)?;
    for case in all_cases() {
        progress(&case.name);
        report.cases.push(run_case(&case, &dev, &cuda, l2_bytes, it, &mut rng)?);
        snapshot(&report)?;
    }
    report.secure_noise_cost = super::time_ratio(&report.cases, "gaussian noise secure", "gaussian noise fast");
    report.complete = true;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_flags_nan_and_length() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(relative_error(&[f32::NAN], &[1.0]).is_nan());
        assert!(relative_error(&[1.0], &[1.0, 2.0]).is_nan());
        assert_eq!(relative_error(&[3.0, 4.0], &[0.0, 0.0]), 5.0);
    }
}
