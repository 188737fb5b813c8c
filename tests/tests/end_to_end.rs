//! End to end on the CPU, through the crates' public APIs only: build a `circulant_model::Model`
//! (mnist-cnn and mlp, circulant and block-circulant heads), train it with candle-nn's SGD on
//! deterministic synthetic data until its loss drops, save it, load it back (logits and
//! tensors bit-identical), and load it as a `Classifier` (probabilities = softmax of the
//! model's eval logits).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, ops, Optimizer, SGD};
use circulant_model::{Classifier, Head, Mode, Model, ModelConfig, Network};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const CLASSES: usize = 4;
const BATCH: usize = 16;
/// Training stops once the eval loss is below this fraction of its initial value...
const DROP: f32 = 0.5;
/// ... which must happen within this many SGD steps.
const MAX_STEPS: usize = 40;
const LR: f64 = 0.05;

/// A small LCG: deterministic numbers in [0, 1) with no RNG crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The synthetic task: each input is its class's fixed random template plus noise.
struct Task {
    shape: (usize, usize, usize),
    templates: Vec<Vec<f32>>,
}

impl Task {
    fn new(config: &ModelConfig) -> Self {
        let i = &config.input;
        let len = i.channels * i.height * i.width;
        let mut rng = Lcg(7);
        let templates = (0..CLASSES)
            .map(|_| (0..len).map(|_| 2.0 * rng.next() - 1.0).collect())
            .collect();
        Self {
            shape: (i.channels, i.height, i.width),
            templates,
        }
    }

    /// `n` inputs `(n, C, H, W)` and labels `(n,)`, the same for the same `seed`.
    fn batch(&self, n: usize, seed: u64) -> candle_core::Result<(Tensor, Tensor)> {
        let mut rng = Lcg(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for _ in 0..n {
            let class = (rng.next() * CLASSES as f32) as usize % CLASSES;
            ys.push(class as u32);
            xs.extend(self.templates[class].iter().map(|t| t + rng.next() - 0.5));
        }
        let (c, h, w) = self.shape;
        Ok((
            Tensor::from_vec(xs, (n, c, h, w), &Device::Cpu)?,
            Tensor::from_vec(ys, n, &Device::Cpu)?,
        ))
    }
}

fn eval_loss(model: &Model, x: &Tensor, y: &Tensor) -> Result<f32> {
    let logits = model.forward(x, Mode::Eval)?;
    Ok(loss::cross_entropy(&logits, y)?.to_scalar::<f32>()?)
}

fn bits(t: &Tensor) -> candle_core::Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

/// A checkpoint path of its own per test case, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let file = format!("circulant-e2e-{}-{name}.safetensors", std::process::id());
        Self(std::env::temp_dir().join(file))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn end_to_end(network: Network, head: Head) -> Result {
    let what = format!("{network} {head}");
    let config = ModelConfig::new(network, head, CLASSES, 3);
    let task = Task::new(&config);
    let model = Model::new(config, &Device::Cpu)?;

    // Train until the loss on a held-out batch drops.
    let (x_eval, y_eval) = task.batch(2 * BATCH, 1_000_000)?;
    let initial = eval_loss(&model, &x_eval, &y_eval)?;
    let vars = model.trainable().into_iter().map(|(_, v)| v).collect();
    let mut sgd = SGD::new(vars, LR)?;
    let mut losses = vec![initial];
    for step in 0..MAX_STEPS as u64 {
        let (x, y) = task.batch(BATCH, step)?;
        let logits = model.forward(&x, Mode::Train { dropout_seed: step })?;
        sgd.backward_step(&loss::cross_entropy(&logits, &y)?)?;
        losses.push(eval_loss(&model, &x_eval, &y_eval)?);
        if losses[losses.len() - 1] < DROP * initial {
            break;
        }
    }
    let last = losses[losses.len() - 1];
    println!(
        "{what}: eval loss {initial:.4} -> {last:.4} in {} steps",
        losses.len() - 1
    );
    assert!(
        last.is_finite() && last < DROP * initial,
        "{what}: eval loss did not drop below {DROP} x {initial} in {MAX_STEPS} SGD steps: {losses:?}"
    );

    // Save, load: the same tensors and the same logits, bit for bit.
    let file = TempFile::new(&format!("{network}-{head}").replace(':', "-"));
    model.save(&file.0)?;
    let loaded = Model::load(&file.0, &Device::Cpu)?;
    assert_eq!(loaded.config(), model.config(), "{what}: config after load");
    let (saved, reloaded) = (model.tensors(), loaded.tensors());
    assert_eq!(
        saved.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        reloaded.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "{what}: tensor names after load"
    );
    for ((name, a), (_, b)) in saved.iter().zip(&reloaded) {
        assert_eq!(a.dims(), b.dims(), "{what}: shape of {name} after load");
        assert!(bits(a)? == bits(b)?, "{what}: {name} changed by save/load");
    }
    let logits = model.forward(&x_eval, Mode::Eval)?;
    assert_eq!(logits.dims(), &[2 * BATCH, CLASSES]);
    assert!(
        bits(&logits)? == bits(&loaded.forward(&x_eval, Mode::Eval)?)?,
        "{what}: logits of the loaded model differ"
    );

    // The classifier of the same file: softmax of the eval logits.
    let classifier = Classifier::load(&file.0, &Device::Cpu)?;
    let probs = classifier.predict(&x_eval)?;
    assert_eq!(probs.dtype(), DType::F32);
    let want = ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
    let got = probs.to_vec2::<f32>()?;
    assert_eq!(got.len(), want.len(), "{what}: predict rows");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), CLASSES, "{what}: predict row {i} length");
        for (k, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "{what}: predict[{i}][{k}] = {a}, softmax of the logits {b}"
            );
        }
    }
    Ok(())
}

#[test]
fn mnist_cnn_circulant_trains_saves_loads_and_classifies() -> Result {
    end_to_end(Network::MnistCnn, Head::Circulant)
}

#[test]
fn mnist_cnn_block_trains_saves_loads_and_classifies() -> Result {
    end_to_end(Network::MnistCnn, Head::Block(64))
}

#[test]
fn mlp_circulant_trains_saves_loads_and_classifies() -> Result {
    end_to_end(Network::Mlp, Head::Circulant)
}

#[test]
fn mlp_block_trains_saves_loads_and_classifies() -> Result {
    end_to_end(Network::Mlp, Head::Block(64))
}
