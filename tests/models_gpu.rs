//! Whole models on the GPU against the CPU: DP-CGAN's generator and discriminator (same weights,
//! same inputs) forward and backward, every parameter gradient; one full private training step
//! (same seeds) on both devices; GS-WGAN's warm-start iterations (also with TF32 allowed) and its
//! phase-2 iterations; DP-CGAN steps and DPSGD-GAN D steps replayed from a CUDA graph against the
//! same steps run eagerly.
//! Skips without a GPU, fails under `DPGAN_REQUIRE_GPU=1`.
mod common;

use dpgan::autograd::Tape;
use dpgan::backend::cuda::Tf32Scope;
use dpgan::dp::{GsWganSanitizer, NoiseMode, NoiseSource, RunKey};
use dpgan::models::dpcgan::{Discriminator, Generator, CLASSES, LATENT, PIXELS};
use dpgan::models::gswgan::{self, GeneratorArch};
use dpgan::nn::{Linear, Module};
use dpgan::tensor::{Device, Tensor};
use dpgan::train::dpcgan::{DpCgan, DpCganConfig, StepLosses};
use dpgan::train::gswgan::{CriticState, GsWganConfig, LabelledImages, PrivateTraining, WarmStart};
use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};

fn linear_on(l: &Linear, dev: &Device) -> Linear {
    Linear { weight: l.weight.to_device(dev).unwrap(), bias: l.bias.to_device(dev).unwrap() }
}

fn one_hot(rng: &mut impl Rng, g: usize, b: usize) -> Tensor {
    let labels: Vec<u32> = (0..g * b).map(|_| rng.random_range(0..CLASSES as u32)).collect();
    Tensor::one_hot(&labels, CLASSES, &[g, b], &Device::Cpu).unwrap()
}

/// Mean BCE of `logits` against a fixed target in (0, 1), so that no gradient vanishes by symmetry.
fn loss(tape: &Tape, logits: &Tensor) -> Tensor {
    let target = logits.full_like(logits.shape(), 0.7).unwrap();
    tape.mean_all(&tape.bce_with_logits(logits, &target).unwrap()).unwrap()
}

/// The loss and each parameter's gradient, as host vectors.
fn loss_and_grads(tape: &Tape, loss: &Tensor, params: &[&Tensor]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let grads = tape.backward(loss).unwrap();
    (loss.to_vec().unwrap(), params.iter().map(|p| grads.of(p).unwrap().to_vec().unwrap()).collect())
}

/// Two chained layers, reductions over the batch and up to 794 inputs, a mean over the batch and
/// 784 pixels: the f32 preset for long and chained reductions.
const MODEL_TOL: f64 = common::tol::F32_LONG;

/// G: `[z, onehot(y)] → Linear → ReLU → Linear → tanh`, fed through a fixed linear read-out to a
/// scalar loss; G > 1 (model groups) and an odd batch.
#[test]
fn cuda_generator_forward_backward_matches_cpu() {
    common::on_cuda("cuda_generator_forward_backward_matches_cpu", |dev| {
        let mut rng = common::rng("cuda_generator_forward_backward_matches_cpu");
        let (g, b) = (2, 37);
        let cpu = Generator::new(g, &mut rng, &Device::Cpu).unwrap();
        let gpu = Generator { hidden: linear_on(&cpu.hidden, dev), output: linear_on(&cpu.output, dev) };
        let z = common::randn(&mut rng, &[g, b, LATENT]);
        let labels = one_hot(&mut rng, g, b);
        let readout = common::uniform(&mut rng, &[g, 1, PIXELS], -0.1, 0.1);
        let run = |model: &Generator, d: &Device| {
            let tape = Tape::new();
            model.params().into_iter().for_each(|p| tape.watch(p));
            let images = model.forward(&tape, &z.to_device(d).unwrap(), &labels.to_device(d).unwrap()).unwrap();
            let logits = tape.matmul(&images, &readout.to_device(d).unwrap(), false, true).unwrap();
            let l = loss(&tape, &logits);
            let out = images.to_vec().unwrap();
            (out, loss_and_grads(&tape, &l, &model.params()))
        };
        let (images_cpu, (loss_cpu, grads_cpu)) = run(&cpu, &Device::Cpu);
        let (images_gpu, (loss_gpu, grads_gpu)) = run(&gpu, dev);
        common::assert_close("generator images", &images_gpu, &images_cpu, common::tol::F32_REDUCTION);
        common::assert_close("generator loss", &loss_gpu, &loss_cpu, MODEL_TOL);
        for (k, (a, e)) in grads_gpu.iter().zip(&grads_cpu).enumerate() {
            common::assert_close(&format!("generator parameter {k} gradient"), a, e, MODEL_TOL);
        }
    });
}

/// D: `[x, onehot(y)] → Linear → ReLU → Linear`, logits, every parameter gradient, and the
/// per-example clipping views (input and output gradient of each layer).
#[test]
fn cuda_discriminator_forward_backward_matches_cpu() {
    common::on_cuda("cuda_discriminator_forward_backward_matches_cpu", |dev| {
        let mut rng = common::rng("cuda_discriminator_forward_backward_matches_cpu");
        for (g, b) in [(1, 1), (3, 29)] {
            let cpu = Discriminator::new(g, &mut rng, &Device::Cpu).unwrap();
            let gpu = Discriminator { hidden: linear_on(&cpu.hidden, dev), output: linear_on(&cpu.output, dev) };
            let images = common::uniform(&mut rng, &[g, b, PIXELS], -1.0, 1.0);
            let labels = one_hot(&mut rng, g, b);
            let run = |model: &Discriminator, d: &Device| {
                let tape = Tape::new();
                model.params().into_iter().for_each(|p| tape.watch(p));
                let pass = model.forward(&tape, &images.to_device(d).unwrap(), &labels.to_device(d).unwrap()).unwrap();
                let l = loss(&tape, &pass.logits);
                let grads = tape.backward(&l).unwrap();
                let views: Vec<Vec<f32>> = pass.layer_grads(&grads).unwrap().iter().map(per_example_norms).collect();
                let params: Vec<Vec<f32>> = model.params().iter().map(|p| grads.of(p).unwrap().to_vec().unwrap()).collect();
                (pass.logits.to_vec().unwrap(), l.to_vec().unwrap(), params, views)
            };
            let (logits_cpu, loss_cpu, grads_cpu, views_cpu) = run(&cpu, &Device::Cpu);
            let (logits_gpu, loss_gpu, grads_gpu, views_gpu) = run(&gpu, dev);
            common::assert_close(&format!("G{g} B{b}: logits"), &logits_gpu, &logits_cpu, common::tol::F32_REDUCTION);
            common::assert_close(&format!("G{g} B{b}: loss"), &loss_gpu, &loss_cpu, MODEL_TOL);
            for (k, (a, e)) in grads_gpu.iter().zip(&grads_cpu).enumerate() {
                common::assert_close(&format!("G{g} B{b}: parameter {k} gradient"), a, e, MODEL_TOL);
            }
            for (k, (a, e)) in views_gpu.iter().zip(&views_cpu).enumerate() {
                common::assert_close(&format!("G{g} B{b}: layer {k} per-example squared norms"), a, e, MODEL_TOL);
            }
        }
    });
}

fn per_example_norms(layer: &dpgan::dp::clip::LayerGrad) -> Vec<f32> {
    layer.per_example_sq_norms().unwrap().to_vec().unwrap()
}

fn weights(run: &DpCgan) -> Vec<Vec<f32>> {
    run.discriminator.params().into_iter().chain(run.generator.params()).map(|p| p.to_vec().unwrap()).collect()
}

/// One private DP-CGAN step from the same seeds on both devices: the models start equal (weights
/// are drawn on the host), the noise is the same counter-based stream on both, so the losses and
/// every updated weight agree to f32 rounding. Run with the clip binding and noise on.
#[test]
fn cuda_dpcgan_private_step_matches_cpu() {
    common::on_cuda("cuda_dpcgan_private_step_matches_cpu", |dev| {
        let mut data_rng = common::rng("cuda_dpcgan_private_step_matches_cpu");
        let b = 33;
        let config = DpCganConfig { clip: 0.05, batch_divisor: b as f32, ..DpCganConfig::default() };
        let images = common::uniform(&mut data_rng, &[1, b, PIXELS], -1.0, 1.0);
        let labels = one_hot(&mut data_rng, 1, b);
        let (model_seed, step_seed, noise_seed): (u64, u64, u64) = (data_rng.random(), data_rng.random(), data_rng.random());
        let step = |d: &Device| {
            let noise = NoiseSource::from_seed(noise_seed, NoiseMode::Fast);
            let mut run = DpCgan::new(config, noise, &mut ChaCha8Rng::seed_from_u64(model_seed), d).unwrap();
            let before = weights(&run);
            let losses = run
                .private_step(
                    &images.to_device(d).unwrap(),
                    &labels.to_device(d).unwrap(),
                    images.shape()[1],
                    &mut ChaCha8Rng::seed_from_u64(step_seed),
                )
                .unwrap();
            let l = [losses.discriminator.to_vec().unwrap(), losses.generator.to_vec().unwrap()].concat();
            (before, l, weights(&run))
        };
        let (before_cpu, losses_cpu, after_cpu) = step(&Device::Cpu);
        let (before_gpu, losses_gpu, after_gpu) = step(dev);
        assert_eq!(before_gpu, before_cpu, "both runs start from the same weights");
        common::assert_close("D and G losses", &losses_gpu, &losses_cpu, MODEL_TOL);
        for (k, (a, e)) in after_gpu.iter().zip(&after_cpu).enumerate() {
            common::assert_close(&format!("parameter {k} after the step"), a, e, MODEL_TOL);
        }
        // The step moved every tensor, or the comparison above proves less than it says.
        for (k, (a, e)) in after_cpu.iter().zip(&before_cpu).enumerate() {
            assert!(a != e, "parameter {k} did not move");
        }
    });
}

/// A DP-CGAN private step captured into a CUDA graph does nothing until replayed (the weights are
/// unchanged after the capture), and one replay equals the same step run eagerly from the same
/// state and seeds bit for bit: the same kernels with the same parameters in the same order.
#[test]
fn cuda_graph_replay_of_a_dp_cgan_step_equals_the_eager_step() {
    common::on_cuda("cuda_graph_replay_of_a_dp_cgan_step_equals_the_eager_step", |dev| {
        let Device::Cuda(cuda) = dev else { unreachable!("on_cuda hands out a CUDA device") };
        let mut data_rng = common::rng("cuda_graph_replay_of_a_dp_cgan_step_equals_the_eager_step");
        let b = 33;
        let config = DpCganConfig { clip: 0.05, batch_divisor: b as f32, ..DpCganConfig::default() };
        let images = common::uniform(&mut data_rng, &[1, b, PIXELS], -1.0, 1.0).to_device(dev).unwrap();
        let labels = one_hot(&mut data_rng, 1, b).to_device(dev).unwrap();
        let (model_seed, step_seed, noise_seed): (u64, u64, u64) = (data_rng.random(), data_rng.random(), data_rng.random());
        let model = || {
            let noise = NoiseSource::from_seed(noise_seed, NoiseMode::Fast);
            DpCgan::new(config, noise, &mut ChaCha8Rng::seed_from_u64(model_seed), dev).unwrap()
        };
        let mut eager = model();
        let eager_losses = eager.private_step(&images, &labels, b, &mut ChaCha8Rng::seed_from_u64(step_seed)).unwrap();
        let mut captured = model();
        let before = weights(&captured);
        let (losses, graph) =
            cuda.capture(|| captured.private_step(&images, &labels, b, &mut ChaCha8Rng::seed_from_u64(step_seed))).unwrap();
        assert_eq!(weights(&captured), before, "the capture ran the step");
        graph.replay().unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        for (k, (a, e)) in weights(&captured).into_iter().zip(weights(&eager)).enumerate() {
            assert_eq!(bits(a), bits(e), "parameter {k} after one replay");
        }
        for (what, a, e) in [
            ("D loss", &losses.discriminator, &eager_losses.discriminator),
            ("G loss", &losses.generator, &eager_losses.generator),
            ("finiteness flag", &losses.nonfinite, &eager_losses.nonfinite),
        ] {
            assert_eq!(bits(a.to_vec().unwrap()), bits(e.to_vec().unwrap()), "{what} after one replay");
        }
        assert!(weights(&eager) != before, "the step moved nothing, so the comparison proves nothing");
    });
}

/// A resident training set of `records` random records on `dev`, and a maker of identical DP-CGAN
/// models whose D divides its sum by `fake`: what the replay tests step.
fn dpcgan_on_resident_data<'d>(
    dev: &'d Device,
    rng: &mut ChaCha8Rng,
    records: usize,
    fake: usize,
) -> (dpgan::train::resident::ResidentData, impl Fn() -> DpCgan + 'd) {
    let pixels: Vec<f32> = (0..records * PIXELS).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels: Vec<u32> = (0..records).map(|_| rng.random_range(0..CLASSES as u32)).collect();
    let data = dpgan::train::resident::ResidentData::from_parts(pixels, &labels, dev).unwrap();
    let config = DpCganConfig { clip: 0.05, batch_divisor: fake as f32, ..DpCganConfig::default() };
    let (model_seed, noise_seed): (u64, u64) = (rng.random(), rng.random());
    let model = move || {
        let noise = NoiseSource::from_seed(noise_seed, NoiseMode::Fast);
        DpCgan::new(config, noise, &mut ChaCha8Rng::seed_from_u64(model_seed), dev).unwrap()
    };
    (data, model)
}

/// `got`'s model and step losses equal `want`'s bit for bit: every parameter, both losses and the
/// finiteness flag.
fn assert_same_dpcgan_step(what: &str, got: (&DpCgan, &StepLosses), want: (&DpCgan, &StepLosses)) {
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for (k, (a, w)) in weights(got.0).into_iter().zip(weights(want.0)).enumerate() {
        assert_eq!(bits(a), bits(w), "{what}: parameter {k}");
    }
    let (g, w) = (got.1, want.1);
    for (loss, a, b) in
        [("D loss", &g.discriminator, &w.discriminator), ("G loss", &g.generator, &w.generator), ("flag", &g.nonfinite, &w.nonfinite)]
    {
        assert_eq!(bits(a.to_vec().unwrap()), bits(b.to_vec().unwrap()), "{what}: {loss}");
    }
}

/// Batches of the given sizes of records drawn (with repeats) from `records`.
fn random_batches(rng: &mut ChaCha8Rng, sizes: &[usize], records: usize) -> Vec<Vec<u32>> {
    sizes.iter().map(|&n| (0..n).map(|_| rng.random_range(0..records as u32)).collect()).collect()
}

/// DP-CGAN training steps replayed from one CUDA graph equal the same steps run eagerly bit for
/// bit: an eager step, then a capture (which runs the step once), then replays with batches of
/// other sizes (padded to the captured rows with weight-0 rows), new generator keys and noise
/// steps, a changed learning rate and Adam's next corrections, all read from the step block. A
/// replay that repeated a captured value would differ from the second replay on. Batches near 300
/// records take the block's indices where an eager gather would upload them; one past the rows is
/// refused without moving the model.
#[test]
fn cuda_graph_replays_of_dp_cgan_training_steps_equal_the_eager_steps() {
    common::on_cuda("cuda_graph_replays_of_dp_cgan_training_steps_equal_the_eager_steps", |dev| {
        let mut data_rng = common::rng("cuda_graph_replays_of_dp_cgan_training_steps_equal_the_eager_steps");
        let (records, rows, fake) = (1000usize, 320usize, 300usize);
        let (data, model) = dpcgan_on_resident_data(dev, &mut data_rng, records, fake);
        let batches = random_batches(&mut data_rng, &[300, 287, 320, 0, 311], records);
        let (mut eager, mut graphed) = (model(), model());
        let mut captured = None;
        for (step, batch) in batches.iter().enumerate() {
            let lr = if step >= 3 { 0.07 } else { 0.15 };
            eager.set_discriminator_lr(lr);
            graphed.set_discriminator_lr(lr);
            let rng = || ChaCha8Rng::seed_from_u64(1000 + step as u64);
            let e = eager.private_step_bound(&data, batch, rows, fake, &mut rng()).unwrap();
            let g = match step {
                0 => graphed.private_step_bound(&data, batch, rows, fake, &mut rng()).unwrap(),
                1 => {
                    let c = graphed.capture_private_step(&data, batch, rows, fake, &mut rng()).unwrap();
                    let losses = c.losses().clone();
                    captured = Some(c);
                    losses
                }
                _ => captured.as_mut().unwrap().step(&mut graphed, batch, &mut rng()).unwrap().clone(),
            };
            assert_same_dpcgan_step(&format!("step {step}"), (&graphed, &g), (&eager, &e));
        }
        assert_eq!((graphed.steps_taken(), graphed.generator_adam_steps()), (5, 5));
        let before = weights(&graphed);
        let too_many: Vec<u32> = (0..rows as u32 + 1).collect();
        let err = captured.as_mut().unwrap().step(&mut graphed, &too_many, &mut ChaCha8Rng::seed_from_u64(9)).err().unwrap();
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert_eq!((weights(&graphed), graphed.steps_taken()), (before, 5), "a refused replay moved the model");
    });
}

/// A capture the driver refuses leaves no trace. Forced here by a copy from pageable memory at the
/// capture's end, after the whole step was recorded (its allocations, launches and in-place
/// updates): `run_step` puts the model's counts back and takes that step eagerly with the same
/// values, and every later step eagerly; all equal the bound eager steps bit for bit. The device
/// stays usable: a second model captures (refusal off) right after and its replays equal them too.
#[test]
fn cuda_refused_captures_fall_back_to_the_same_eager_steps() {
    use dpgan::backend::cuda::set_force_capture_refusal;
    use dpgan::train::captured::{self, StepGraph};
    let name = "cuda_refused_captures_fall_back_to_the_same_eager_steps";
    common::on_cuda(name, |dev| {
        let mut data_rng = common::rng(name);
        let (records, rows, fake) = (500usize, 64usize, 60usize);
        let (data, model) = dpcgan_on_resident_data(dev, &mut data_rng, records, fake);
        let batches = random_batches(&mut data_rng, &[60, 57, 64, 31, 60], records);
        let (mut eager, mut refused, mut graphed) = (model(), model(), model());
        let (mut refused_graph, mut graph) = (StepGraph::Pending, StepGraph::Pending);
        for (step, batch) in batches.iter().enumerate() {
            let rng = || ChaCha8Rng::seed_from_u64(2000 + step as u64);
            let e = eager.private_step_bound(&data, batch, rows, fake, &mut rng()).unwrap();
            set_force_capture_refusal(true);
            let r = captured::run_step(&mut refused_graph, &mut refused, &data, batch, rows, fake, &mut rng());
            set_force_capture_refusal(false);
            let r = r.unwrap();
            let g = captured::run_step(&mut graph, &mut graphed, &data, batch, rows, fake, &mut rng()).unwrap();
            assert_same_dpcgan_step(&format!("after a refusal, step {step}"), (&refused, &r), (&eager, &e));
            assert_same_dpcgan_step(&format!("captured, step {step}"), (&graphed, &g), (&eager, &e));
        }
        let why = refused_graph.refusal().expect("the forced refusal was not reported");
        let forced = ["copying 1 floats to the device", "freeing memory inside the capture", "ending the capture"];
        assert!(forced.iter().any(|f| why.contains(f)), "{why}");
        assert!(matches!(graph, StepGraph::Captured(_)), "the capture after a refusal failed");
        for m in [&refused, &graphed] {
            assert_eq!((m.steps_taken(), m.generator_adam_steps()), (5, 5));
        }
    });
}

/// DPSGD-GAN D steps replayed from one CUDA graph equal the same steps run eagerly bit for bit,
/// with an eager G step between D steps (which moves G in place, where the graph reads it): an
/// eager D step, a capture, then replays with Poisson-like batches of other sizes padded to the
/// captured rows, new keys, noise steps and D's next Adam corrections from the step block.
#[test]
fn cuda_graph_replays_of_dpsgd_gan_d_steps_equal_the_eager_steps() {
    use dpgan::train::dpsgd_gan::{DpsgdGan, DpsgdGanConfig};
    common::on_cuda("cuda_graph_replays_of_dpsgd_gan_d_steps_equal_the_eager_steps", |dev| {
        let mut data_rng = common::rng("cuda_graph_replays_of_dpsgd_gan_d_steps_equal_the_eager_steps");
        let (records, rows, b) = (500usize, 40usize, 16usize);
        let pixels: Vec<f32> = (0..records * PIXELS).map(|_| data_rng.random_range(0.0..1.0)).collect();
        let labels: Vec<u32> = (0..records).map(|_| data_rng.random_range(0..CLASSES as u32)).collect();
        let data = dpgan::train::resident::ResidentData::from_parts(pixels, &labels, dev).unwrap();
        let config = DpsgdGanConfig { batch_size: b, ..DpsgdGanConfig::default() };
        let (model_seed, noise_seed): (u64, u64) = (data_rng.random(), data_rng.random());
        let model = || {
            DpsgdGan::new(config, 8, NoiseSource::from_seed(noise_seed, NoiseMode::Fast), &mut ChaCha8Rng::seed_from_u64(model_seed), dev)
                .unwrap()
        };
        let batches: Vec<Vec<u32>> =
            [16, 11, 40, 0, 23].iter().map(|&n| (0..n).map(|_| data_rng.random_range(0..records as u32)).collect()).collect();
        let (mut eager, mut graphed) = (model(), model());
        let all = |m: &DpsgdGan| -> Vec<Vec<u32>> {
            let d = m.discriminator.params().into_iter();
            d.chain(m.generator.params()).map(|t| t.to_vec().unwrap().into_iter().map(f32::to_bits).collect()).collect()
        };
        let mut captured = None;
        for (step, batch) in batches.iter().enumerate() {
            let rng = || ChaCha8Rng::seed_from_u64(2000 + step as u64);
            let e = eager.discriminator_step_bound(&data, batch, rows, &mut rng()).unwrap();
            let g = match step {
                0 => graphed.discriminator_step_bound(&data, batch, rows, &mut rng()).unwrap(),
                1 => {
                    let c = graphed.capture_discriminator_step(&data, batch, rows, &mut rng()).unwrap();
                    let losses = c.losses().clone();
                    captured = Some(c);
                    losses
                }
                _ => captured.as_mut().unwrap().step(&mut graphed, batch, &mut rng()).unwrap().clone(),
            };
            assert_eq!(all(&graphed), all(&eager), "D step {step}: parameters");
            for (what, a, w) in [("loss", &g.loss, &e.loss), ("flag", &g.nonfinite, &e.nonfinite)] {
                assert_eq!(a.to_vec().unwrap(), w.to_vec().unwrap(), "D step {step}: {what}");
            }
            // An eager G step between D steps, the same on both.
            for m in [&mut eager, &mut graphed] {
                m.generator_step(&mut ChaCha8Rng::seed_from_u64(3000 + step as u64), dev).unwrap();
            }
        }
        assert_eq!(all(&graphed), all(&eager), "after the last G step");
        assert_eq!(graphed.d_steps_taken(), 5);
    });
}

// ---- GS-WGAN ----

fn module_values(m: &impl Module) -> Vec<Vec<f32>> {
    m.params().iter().map(|t| t.to_vec().unwrap()).collect()
}

fn gswgan_data(rng: &mut impl Rng, n: usize) -> LabelledImages {
    let pixels = (0..n * gswgan::PIXELS).map(|_| rng.random::<f32>()).collect();
    LabelledImages::new(pixels, (0..n).map(|_| rng.random_range(0..10)).collect()).unwrap()
}

/// Two warm-start iterations of a group of two members (ResNet G at width 16, two WGAN-GP critic
/// steps each: the penalty's second-order backward included) on `device`, optionally with TF32
/// allowed: every D and G parameter afterwards, and each iteration's critic and generator losses.
fn warm_start_on(device: &Device, seeds: &[u64], data: &LabelledImages, tf32: bool) -> (Vec<Vec<f32>>, Vec<f32>) {
    let _tf32 = Tf32Scope::new(tf32);
    let config = GsWganConfig { critic_steps: 2, batch_size: 8, ..GsWganConfig::default() };
    let slices = vec![(0..12).collect(), (12..24).collect()];
    let mut w = WarmStart::new(GeneratorArch::Resnet, 16, seeds, slices, config, device).unwrap();
    let mut losses = Vec::new();
    for _ in 0..2 {
        let l = w.iteration(data).unwrap();
        losses.extend(l.critic.to_vec().unwrap());
        losses.extend(l.generator.to_vec().unwrap());
    }
    (module_values(&w.discriminators).into_iter().chain(module_values(&w.generators)).collect(), losses)
}

#[test]
fn cuda_gswgan_warm_start_iterations_match_cpu() {
    common::on_cuda("cuda_gswgan_warm_start_iterations_match_cpu", |dev| {
        let mut rng = common::rng("cuda_gswgan_warm_start_iterations_match_cpu");
        let data = gswgan_data(&mut rng, 24);
        let seeds = [rng.random(), rng.random()];
        let (params_cpu, losses_cpu) = warm_start_on(&Device::Cpu, &seeds, &data, false);
        let (params_gpu, losses_gpu) = warm_start_on(dev, &seeds, &data, false);
        common::assert_close("critic and generator losses", &losses_gpu, &losses_cpu, MODEL_TOL);
        for (k, (a, e)) in params_gpu.iter().zip(&params_cpu).enumerate() {
            common::assert_close(&format!("parameter {k} after two iterations"), a, e, MODEL_TOL);
        }
    });
}

/// The same iterations with TF32 allowed: the ResNet's 3 × 3 convs (64 channels) take the tensor
/// cores, so the values move off the f32 ones (the TF32 path ran), but stay within TF32's
/// accuracy of the CPU: inputs rounded to 10 mantissa bits (2⁻¹¹ relative each), f32
/// accumulation, then two Adam steps of lr 1e-4 whose size does not depend on that rounding.
#[test]
fn cuda_gswgan_warm_start_with_tf32_stays_close_to_f32() {
    const TF32_TOL: f64 = 1e-2;
    common::on_cuda("cuda_gswgan_warm_start_with_tf32_stays_close_to_f32", |dev| {
        let mut rng = common::rng("cuda_gswgan_warm_start_with_tf32_stays_close_to_f32");
        let data = gswgan_data(&mut rng, 24);
        let seeds = [rng.random(), rng.random()];
        let (params_cpu, losses_cpu) = warm_start_on(&Device::Cpu, &seeds, &data, false);
        let (params_f32, _) = warm_start_on(dev, &seeds, &data, false);
        let (params_tf32, losses_tf32) = warm_start_on(dev, &seeds, &data, true);
        assert_ne!(params_tf32, params_f32, "TF32 allowed changed nothing: the tensor-core path did not run");
        common::assert_close("critic and generator losses (TF32)", &losses_tf32, &losses_cpu, TF32_TOL);
        for (k, (a, e)) in params_tf32.iter().zip(&params_cpu).enumerate() {
            common::assert_close(&format!("parameter {k} after two TF32 iterations"), a, e, TF32_TOL);
        }
    });
}

/// Two phase-2 iterations on `device` (one critic of width `base` on records 0..20 with its own
/// Adam, the ResNet generator of width `base` through the sanitiser, B = 8, two critic steps), TF32
/// allowed or not, every value finite: G's, G_s's and the critic's parameters afterwards, each
/// iteration's losses, and the trained models.
fn phase_two_on(
    device: &Device,
    base: usize,
    seeds: (u64, u64, u64),
    data: &LabelledImages,
    tf32: bool,
) -> (Vec<Vec<f32>>, Vec<f32>, PrivateTraining, CriticState) {
    let (d_seed, g_seed, batch_seed) = seeds;
    let _tf32 = Tf32Scope::new(tf32);
    let config = GsWganConfig { critic_steps: 2, batch_size: 8, ..GsWganConfig::default() };
    let discriminator = gswgan::Discriminator::new(1, base, &mut ChaCha20Rng::seed_from_u64(d_seed), device).unwrap();
    let mut critic = CriticState::new(discriminator, (0..20).collect(), ChaCha20Rng::seed_from_u64(batch_seed), &config).unwrap();
    let sanitizer = GsWganSanitizer::new(1.0, 1.07).unwrap();
    let key = RunKey::replayable(g_seed);
    let mut training = PrivateTraining::new(GeneratorArch::Resnet, base, g_seed, sanitizer, &key, NoiseMode::Fast, config, device).unwrap();
    let mut losses = Vec::new();
    for _ in 0..2 {
        let l = training.iteration(&mut critic, data).unwrap();
        assert_eq!(l.nonfinite.to_vec().unwrap(), vec![0.0], "every value finite");
        losses.extend(l.critic.to_vec().unwrap());
        losses.extend(l.generator.to_vec().unwrap());
    }
    let params = [module_values(&training.generator), module_values(&training.ema), module_values(&critic.discriminator)].concat();
    (params, losses, training, critic)
}

/// Two phase-2 iterations (one critic with its own Adam, the generator through the sanitiser:
/// per-example clipping of the image gradients, Philox noise from the same key on both devices,
/// the EMA) on the GPU against the CPU: G, G_s and the critic's parameters, and the losses.
#[test]
fn cuda_gswgan_phase_two_iterations_match_cpu() {
    common::on_cuda("cuda_gswgan_phase_two_iterations_match_cpu", |dev| {
        let mut rng = common::rng("cuda_gswgan_phase_two_iterations_match_cpu");
        let data = gswgan_data(&mut rng, 20);
        let seeds: (u64, u64, u64) = (rng.random(), rng.random(), rng.random());
        let (params_cpu, losses_cpu, ..) = phase_two_on(&Device::Cpu, 8, seeds, &data, false);
        let (params_gpu, losses_gpu, ..) = phase_two_on(dev, 8, seeds, &data, false);
        common::assert_close("critic and generator losses", &losses_gpu, &losses_cpu, MODEL_TOL);
        for (k, (a, e)) in params_gpu.iter().zip(&params_cpu).enumerate() {
            common::assert_close(&format!("parameter {k} after two phase-2 iterations"), a, e, MODEL_TOL);
        }
    });
}

/// Phase 2 with TF32 allowed (`train gs-wgan --tf32`): the ResNet's 3 × 3 convs (64 channels) and
/// D's take the tensor cores, so the values move off the f32 ones, but stay within TF32's accuracy
/// of the CPU after two iterations; and the sanitiser, which takes whatever image gradient the
/// TF32 products give, still bounds every row exactly (σ = 0: each row at norm C/B to f32
/// rounding), which is what the guarantee rests on.
#[test]
fn cuda_gswgan_phase_two_with_tf32_stays_close_to_f32_and_clips_exactly() {
    const TF32_TOL: f64 = 1e-2;
    common::on_cuda("cuda_gswgan_phase_two_with_tf32_stays_close_to_f32_and_clips_exactly", |dev| {
        let mut rng = common::rng("cuda_gswgan_phase_two_with_tf32_stays_close_to_f32_and_clips_exactly");
        let data = gswgan_data(&mut rng, 20);
        let seeds: (u64, u64, u64) = (rng.random(), rng.random(), rng.random());
        let (_, _, batch_seed) = seeds;
        let (params_cpu, losses_cpu, ..) = phase_two_on(&Device::Cpu, 16, seeds, &data, false);
        let (params_f32, ..) = phase_two_on(dev, 16, seeds, &data, false);
        let (params_tf32, losses_tf32, mut training, mut critic) = phase_two_on(dev, 16, seeds, &data, true);
        assert_ne!(params_tf32, params_f32, "TF32 allowed changed nothing: the tensor-core path did not run");
        common::assert_close("critic and generator losses (TF32)", &losses_tf32, &losses_cpu, TF32_TOL);
        for (k, (a, e)) in params_tf32.iter().zip(&params_cpu).enumerate() {
            common::assert_close(&format!("parameter {k} after two TF32 phase-2 iterations"), a, e, TF32_TOL);
        }
        // The image gradient of G's samples under TF32, sanitised with σ = 0: every row at C/B.
        let _tf32 = Tf32Scope::new(true);
        let mut draws = vec![ChaCha20Rng::seed_from_u64(batch_seed)];
        let b = 8;
        let z = gswgan::bernoulli_latent(&mut draws, b, dev).unwrap();
        let labels = gswgan::uniform_one_hot_labels(&mut draws, b, dev).unwrap();
        let fake = training.generator.forward(&Tape::new(), &z, &labels).unwrap();
        let (_, grad) = dpgan::train::gswgan::image_gradient(&mut critic.discriminator, &fake, &labels).unwrap();
        let exact = GsWganSanitizer::new(1.0, 0.0).unwrap();
        let key = NoiseSource::from_seed(batch_seed, NoiseMode::Fast).next_key();
        let rows = exact.sanitize(&grad, &key).unwrap().to_vec().unwrap();
        let bound = exact.clip_norm / b as f64;
        for (i, row) in rows.chunks(gswgan::PIXELS).enumerate() {
            let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            assert!((norm - bound).abs() <= 1e-6 * bound, "row {i}: norm {norm}, C/B = {bound}");
        }
    });
}

/// GS-WGAN phase-2 iterations on a working critic, captured into CUDA graphs (one per pattern of
/// batch sizes) and replayed, equal the eager iterations on the selected critics bit for bit:
/// losses, G, G_s and every critic's tensors, Adam state and batch position. Three critics on
/// slices of 12 in batches of 8 (three critic steps: sizes 8, 4, 8 or 4, 8, 4), one of them kept
/// on the host and paged through the working critic; choices that repeat, so both patterns are
/// captured and replayed with other critics, keys, noise steps, EMA decays and bias corrections.
#[test]
fn cuda_graph_replays_of_gswgan_phase_two_iterations_equal_the_eager_iterations() {
    let name = "cuda_graph_replays_of_gswgan_phase_two_iterations_equal_the_eager_iterations";
    common::on_cuda(name, |dev| phase_two_graphed_against_eager(dev, name, false));
}

/// The same iterations with every capture refused by the driver (forced by a copy from pageable
/// memory at the capture's end, after the whole iteration was recorded): the first capture's
/// iteration is taken eagerly after its counts are put back, every later one eagerly, and all
/// equal the eager iterations bit for bit; no graph is kept.
#[test]
fn cuda_refused_captures_of_gswgan_phase_two_iterations_fall_back_to_the_eager_iterations() {
    let name = "cuda_refused_captures_of_gswgan_phase_two_iterations_fall_back_to_the_eager_iterations";
    common::on_cuda(name, |dev| {
        dpgan::backend::cuda::set_force_capture_refusal(true);
        phase_two_graphed_against_eager(dev, name, true);
        dpgan::backend::cuda::set_force_capture_refusal(false);
    });
}

fn phase_two_graphed_against_eager(dev: &Device, name: &str, refused: bool) {
    use dpgan::train::gswgan::graphed::GraphedPhaseTwo;
    use dpgan::train::gswgan::PhaseTwoStep;
    let mut rng = common::rng(name);
    let data = gswgan_data(&mut rng, 36);
    let config = GsWganConfig { critic_steps: 3, batch_size: 8, ..GsWganConfig::default() };
    let sanitizer = GsWganSanitizer::new(1.0, 1.07).unwrap();
    let noise = NoiseSource::from_seed(rng.random(), NoiseMode::Fast);
    let init_seed: u64 = rng.random();
    // G, G_s, G's Adam and three critics; critic j on `homes[j]`.
    let setup = |homes: [&Device; 3]| {
        let mut init = ChaCha8Rng::seed_from_u64(init_seed);
        let g = gswgan::Generator::new(GeneratorArch::Dcgan, 1, 8, &mut init, &Device::Cpu).unwrap();
        let mut g = g.clone();
        for e in g.entries_mut() {
            *e.tensor = e.tensor.to_device(dev).unwrap();
        }
        let critics: Vec<CriticState> = (0..3)
            .map(|j| {
                let mut d = gswgan::Discriminator::new(1, 4, &mut init, &Device::Cpu).unwrap();
                for e in d.entries_mut() {
                    *e.tensor = e.tensor.to_device(homes[j]).unwrap();
                }
                CriticState::new(d, (12 * j..12 * j + 12).collect(), ChaCha20Rng::seed_from_u64(j as u64), &config).unwrap()
            })
            .collect();
        (g.clone(), g, dpgan::optim::Adam::new(config.adam), critics)
    };
    let (mut eg, mut eema, mut eopt, mut ecritics) = setup([dev, dev, dev]);
    let (mut gg, mut gema, mut gopt, mut gcritics) = setup([dev, dev, &Device::Cpu]);
    let mut phase_two = GraphedPhaseTwo::new(&gcritics[0], dev).unwrap();
    let bits = |t: &Tensor| t.to_vec().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let choices = [0usize, 1, 0, 2, 2, 1, 0, 2, 1, 0, 0, 2, 1, 1];
    for (t, &j) in choices.iter().enumerate() {
        let t = t as u64;
        let key = noise.key_at(t, 0);
        let draws = || ChaCha20Rng::seed_from_u64(500 + t);
        let mut step = PhaseTwoStep { generator: &mut eg, optimizer: &mut eopt, ema: &mut eema, sanitizer: &sanitizer, config: &config };
        let want = step.run(&mut ecritics[j], &data, &mut draws(), &key, t).unwrap();
        let mut step = PhaseTwoStep { generator: &mut gg, optimizer: &mut gopt, ema: &mut gema, sanitizer: &sanitizer, config: &config };
        let got = phase_two.iterate(&mut step, &mut gcritics[j], &data, &mut draws(), &key, t).unwrap();
        for (what, a, w) in [
            ("critic", &got.critic, &want.critic),
            ("generator", &got.generator, &want.generator),
            ("flag", &got.nonfinite, &want.nonfinite),
        ] {
            assert_eq!(bits(a), bits(w), "iteration {t} ({:?}): {what} loss", phase_two.counts());
        }
        for ((name, a), (_, w)) in
            gg.named_tensors().into_iter().zip(eg.named_tensors()).chain(gema.named_tensors().into_iter().zip(eema.named_tensors()))
        {
            assert_eq!(bits(a), bits(w), "iteration {t}: G or G_s {name}");
        }
    }
    for (j, (a, w)) in gcritics.iter().zip(&ecritics).enumerate() {
        for ((name, x), (_, y)) in a.discriminator.named_tensors().into_iter().zip(w.discriminator.named_tensors()) {
            assert_eq!(bits(x), bits(y), "critic {j} {name}");
        }
        assert_eq!(a.optimizer.steps(), w.optimizer.steps(), "critic {j}'s Adam steps");
        let ((am, av), (wm, wv)) = (a.optimizer.moments(), w.optimizer.moments());
        for (x, y) in am.iter().zip(wm).chain(av.iter().zip(wv)) {
            assert_eq!(bits(x), bits(y), "critic {j}'s Adam moments");
        }
        assert_eq!((a.batches.passes(), a.batches.position()), (w.batches.passes(), w.batches.position()));
    }
    assert!(gcritics[2].discriminator.conv1.bias.device().is_cpu(), "the paged critic stays on the host");
    assert_eq!(gopt.steps(), eopt.steps());
    let counts = phase_two.counts();
    if refused {
        assert_eq!((phase_two.graphs(), counts.captured, counts.replayed), (0, 0, 0), "{counts:?}");
        assert!(counts.bound > 0 && counts.eager + counts.bound == choices.len() as u64, "{counts:?}");
        assert!(phase_two.refusal().is_some(), "the forced refusal was not reported");
    } else {
        assert_eq!(phase_two.graphs(), 2, "{counts:?}");
        assert!(counts.replayed >= 4 && counts.captured == 2, "{counts:?}");
        assert_eq!(phase_two.refusal(), None);
    }
}
