//! One SGD step of `mnist-cnn` with circulant heads on CUDA matches the same step on the CPU;
//! a bf16 mixed-precision step on CUDA follows the f32 step.
//! Skips, printing why, when no CUDA device is usable; fails instead when
//! `CIRCULANT_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, Optimizer, SGD};
use circulant_kernels::testing::cuda_device;
use circulant_model::{Head, Mode, Model, ModelConfig, Network};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

const BATCH: usize = 16;

/// Deterministic pseudo-random inputs in [0, 1) and labels (a small LCG: no RNG crate here).
fn batch() -> (Vec<f32>, Vec<u32>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let images = (0..BATCH * 28 * 28).map(|_| next()).collect();
    let labels = (0..BATCH).map(|_| (next() * 10.0) as u32 % 10).collect();
    (images, labels)
}

struct Step {
    loss: f32,
    /// (name, parameter before, parameter after), flattened.
    params: Vec<(String, Vec<f32>, Vec<f32>)>,
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

fn train_step(
    head: Head,
    device: &Device,
    compute: DType,
) -> Result<Step, Box<dyn std::error::Error>> {
    let config = ModelConfig::new(Network::MnistCnn, head, 10, 7);
    let model = Model::new(config, device)?;
    let (images, labels) = batch();
    let x = Tensor::from_vec(images, (BATCH, 1, 28, 28), device)?;
    let y = Tensor::from_vec(labels, BATCH, device)?;
    let vars = model.trainable();
    let before = vars
        .iter()
        .map(|(_, v)| flat(v.as_tensor()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let logits = model.forward_mixed(&x, Mode::Train { dropout_seed: 11 }, compute)?;
    let loss = loss::cross_entropy(&logits, &y)?;
    let mut sgd = SGD::new(vars.iter().map(|(_, v)| v.clone()).collect(), 0.05)?;
    sgd.backward_step(&loss)?;
    let params = vars
        .iter()
        .zip(before)
        .map(|((name, v), b)| Ok((name.clone(), b, flat(v.as_tensor())?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Step {
        loss: loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?,
        params,
    })
}

fn max_abs(v: impl Iterator<Item = f32>) -> f32 {
    v.fold(0.0, |m, x| m.max(x.abs()))
}

fn check(head: Head) -> TestResult {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    let gpu = train_step(head, &dev, DType::F32)?;
    let cpu = train_step(head, &Device::Cpu, DType::F32)?;
    assert!(
        (gpu.loss - cpu.loss).abs() <= 1e-4 * cpu.loss.abs().max(1.0),
        "{head}: loss {} on CUDA vs {} on CPU",
        gpu.loss,
        cpu.loss
    );
    assert_eq!(gpu.params.len(), cpu.params.len());
    let mut fc_updated = false;
    for ((name, g0, g1), (cname, c0, c1)) in gpu.params.iter().zip(&cpu.params) {
        assert_eq!(name, cname);
        let init_err = max_abs(g0.iter().zip(c0).map(|(a, b)| a - b));
        assert!(
            init_err <= 1e-6 * max_abs(c0.iter().copied()).max(1.0),
            "{head}: {name} initialised differently on CUDA (max difference {init_err:e})"
        );
        // Compare the updates (after - before), relative to the largest CPU update.
        let cpu_delta: Vec<f32> = c1.iter().zip(c0).map(|(a, b)| a - b).collect();
        let gpu_delta: Vec<f32> = g1.iter().zip(g0).map(|(a, b)| a - b).collect();
        let scale = max_abs(cpu_delta.iter().copied());
        let err = max_abs(gpu_delta.iter().zip(&cpu_delta).map(|(a, b)| a - b));
        assert!(
            err <= 2e-3 * scale + 1e-7,
            "{head}: update of {name} differs by {err:e} (largest CPU update {scale:e})"
        );
        fc_updated |= name.starts_with("fc1") && scale > 0.0;
    }
    assert!(fc_updated, "{head}: the step did not update fc1");
    Ok(())
}

#[test]
fn mnist_cnn_step_with_circulant_heads_matches_cpu() -> TestResult {
    check(Head::Circulant)
}

#[test]
fn mnist_cnn_step_with_block_circulant_heads_matches_cpu() -> TestResult {
    check(Head::Block(100))
}

/// The bf16 step on CUDA (bf16 activations, f32 weights) moves every parameter the way the f32
/// CPU step does: loss within 2%, each update with cosine similarity > 0.99 to the f32 one
/// (updates negligible in f32, such as nothing here, must stay negligible).
#[test]
fn mnist_cnn_bf16_step_follows_the_f32_step() -> TestResult {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    for head in [Head::Circulant, Head::Dense] {
        let gpu = train_step(head, &dev, DType::BF16)?;
        let cpu = train_step(head, &Device::Cpu, DType::F32)?;
        assert!(
            (gpu.loss - cpu.loss).abs() <= 0.02 * cpu.loss.abs(),
            "{head}: bf16 loss {} vs f32 {}",
            gpu.loss,
            cpu.loss
        );
        let norm = |v: &[f32]| v.iter().map(|u| f64::from(u * u)).sum::<f64>().sqrt();
        let deltas: Vec<(String, Vec<f32>, Vec<f32>)> = gpu
            .params
            .iter()
            .zip(&cpu.params)
            .map(|((name, g0, g1), (_, c0, c1))| {
                let d = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x - y).collect();
                (name.clone(), d(g1, g0), d(c1, c0))
            })
            .collect();
        let largest = deltas.iter().map(|(_, _, c)| norm(c)).fold(0f64, f64::max);
        for (name, g, c) in &deltas {
            if norm(c) < 1e-3 * largest {
                assert!(
                    norm(g) < 1e-2 * largest,
                    "{head}: {name} moved in bf16 only"
                );
                continue;
            }
            let dot: f64 = g.iter().zip(c).map(|(a, b)| f64::from(a * b)).sum();
            let cos = dot / (norm(g) * norm(c));
            assert!(
                cos > 0.99,
                "{head}: update of {name}: cosine {cos} to the f32 update"
            );
        }
    }
    Ok(())
}
