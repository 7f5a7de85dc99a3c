//! CUDA GEMM and conv kernels at the shapes the two algorithms use: `cargo bench --bench cuda_ops`.
//!
//! Each case is first validated against the CPU backend (at batch 2, so that the CPU stays quick),
//! then timed with `dpgan::bench`'s CUDA-event timer (warm-up, then the median of event-pair samples
//! of several calls on the device's stream; one input set, so small cases may sit in L2: `dpgan
//! bench kernels` rotates inputs and covers every family). Every call allocates its output, as a
//! training step does. Printed beside a large square GEMM in f32 and TF32 measured in the same run.
//! Without a GPU it says why and exits.
use dpgan::backend::cuda::{set_allow_tf32, CudaDevice};
use dpgan::backend::ops;
use dpgan::bench::kernels::{relative_error, time_calls, Iterations};
use dpgan::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    Tensor::randn(shape, rng, &Device::Cpu).expect("cpu tensor")
}

/// Median milliseconds per call of `f` on `dev`'s stream.
fn time_ms(dev: &CudaDevice, mut f: impl FnMut() -> Tensor) -> f64 {
    time_calls(dev, Iterations::new(false), |_| {
        drop(f());
        Ok(())
    })
    .expect("CUDA-event timing")
}

fn report(name: &str, flops: f64, ms: f64, error: f64) {
    println!("{name:<52} {ms:>9.3} ms {:>9.2} TFLOP/s   (validated: rel. error {error:.1e})", flops / ms / 1e9);
}

/// One op on operands built by `make(batch)`: validated at batch 2 against the CPU, timed at `batch`.
fn case(
    dev: &Device,
    rng: &mut ChaCha8Rng,
    name: &str,
    batch: usize,
    make: impl Fn(&mut ChaCha8Rng, usize) -> Vec<Tensor>,
    op: impl Fn(&[Tensor]) -> Tensor,
    flops: impl Fn(usize) -> f64,
) {
    let small = make(rng, 2);
    let want = op(&small);
    let on_dev: Vec<Tensor> = small.iter().map(|t| t.to_device(dev).expect("upload")).collect();
    let error = relative_error(&op(&on_dev).to_vec().expect("download"), &want.to_vec().expect("cpu values"));
    let operands: Vec<Tensor> = make(rng, batch).iter().map(|t| t.to_device(dev).expect("upload")).collect();
    let Device::Cuda(cuda) = dev else { unreachable!("the benchmark runs on a CUDA device") };
    let ms = time_ms(cuda, || op(&operands));
    report(name, flops(batch), ms, error);
}

fn main() {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("cuda_ops: no GPU benchmark: {e}");
            return;
        }
    };
    let Device::Cuda(cuda) = &dev else { unreachable!("Device::cuda gives a CUDA device") };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    println!("{} ({} SMs)", cuda.properties().name, cuda.properties().multiprocessors);

    for tf32 in [false, true] {
        set_allow_tf32(tf32);
        let precision = if tf32 { "tf32" } else { "f32" };
        println!("\n{:<52} {:>12} {:>17}", format!("case ({precision})"), "median", "throughput");
        let n = 4096;
        case(
            &dev,
            &mut rng,
            &format!("ceiling: gemm {n}³"),
            n,
            |rng, b| vec![randn(rng, &[1, b.max(64), n]), randn(rng, &[1, n, n])],
            |t| ops::matmul(&t[0], &t[1], false, false).unwrap(),
            |b| 2.0 * (b * n * n) as f64,
        );

        // DP-CGAN discriminator, B = 600: [600, 794] · [128, 794]ᵀ and the weight gradient xᵀ · dy.
        case(
            &dev,
            &mut rng,
            "dp-cgan D linear 794→128, B=600 (fwd)",
            600,
            |rng, b| vec![randn(rng, &[1, b, 794]), randn(rng, &[1, 128, 794])],
            |t| ops::matmul(&t[0], &t[1], false, true).unwrap(),
            |b| 2.0 * (b * 794 * 128) as f64,
        );
        case(
            &dev,
            &mut rng,
            "dp-cgan D linear 794→128, B=600 (dW)",
            600,
            |rng, b| vec![randn(rng, &[1, b, 794]), randn(rng, &[1, b, 128])],
            |t| ops::matmul(&t[0], &t[1], true, false).unwrap(),
            |b| 2.0 * (b * 794 * 128) as f64,
        );

        // GS-WGAN discriminator convs (5×5 s2 p2) and the ResNet generator's 3×3 256→256 at 32², batch 32.
        for (name, cin, cout, hw, k, s, p) in [
            ("gs-wgan D conv1 1→64 5×5 s2, 28²", 1, 64, 28, 5, 2, 2),
            ("gs-wgan D conv2 64→128 5×5 s2, 14²", 64, 128, 14, 5, 2, 2),
            ("gs-wgan D conv3 128→256 5×5 s2, 7²", 128, 256, 7, 5, 2, 2),
            ("resnet G 256→256 3×3 p1, 32²", 256, 256, 32, 3, 1, 1),
        ] {
            let out = (hw + 2 * p - k) / s + 1;
            let flops = move |b: usize| 2.0 * (b * out * out * cout * cin * k * k) as f64;
            let x_w = move |rng: &mut ChaCha8Rng, b: usize| vec![randn(rng, &[1, b, cin, hw, hw]), randn(rng, &[1, cout, cin, k, k])];
            case(&dev, &mut rng, &format!("{name} (fwd)"), 32, x_w, |t| ops::conv2d(&t[0], &t[1], s, p).unwrap(), flops);
            let dy_w = move |rng: &mut ChaCha8Rng, b: usize| vec![randn(rng, &[1, b, cout, out, out]), randn(rng, &[1, cout, cin, k, k])];
            let dx = move |t: &[Tensor]| ops::conv2d_input_grad(&t[0], &t[1], (hw, hw), s, p).unwrap();
            case(&dev, &mut rng, &format!("{name} (dx)"), 32, dy_w, dx, flops);
            let x_dy = move |rng: &mut ChaCha8Rng, b: usize| vec![randn(rng, &[1, b, cin, hw, hw]), randn(rng, &[1, b, cout, out, out])];
            let dw = move |t: &[Tensor]| ops::conv2d_weight_grad(&t[0], &t[1], (k, k), s, p).unwrap();
            case(&dev, &mut rng, &format!("{name} (dW)"), 32, x_dy, dw, flops);
        }
    }
    set_allow_tf32(false);
}
