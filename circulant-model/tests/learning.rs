//! Every network with every head learns a small synthetic task: inputs are noisy copies of
//! one random template per class; the eval loss must drop well below chance (ln C).

use candle_core::{Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use circulant_model::{Head, Mode, Model, ModelConfig, Network};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLASSES: usize = 4;

struct Task {
    templates: Vec<Vec<f32>>,
    shape: [usize; 3],
}

impl Task {
    fn new(cfg: &ModelConfig) -> Self {
        let inp = &cfg.input;
        let shape = [inp.channels, inp.height, inp.width];
        let len: usize = shape.iter().product();
        let mut rng = StdRng::seed_from_u64(100);
        let templates = (0..CLASSES)
            .map(|_| (0..len).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        Self { templates, shape }
    }

    fn batch(&self, n: usize, seed: u64) -> (Tensor, Tensor) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for _ in 0..n {
            let c = rng.random_range(0..CLASSES);
            ys.push(c as u32);
            xs.extend(
                self.templates[c]
                    .iter()
                    .map(|t| t + rng.random_range(-0.5f32..0.5)),
            );
        }
        let [c, h, w] = self.shape;
        (
            Tensor::from_vec(xs, (n, c, h, w), &Device::Cpu).unwrap(),
            Tensor::from_vec(ys, n, &Device::Cpu).unwrap(),
        )
    }
}

fn loss(model: &Model, x: &Tensor, y: &Tensor, mode: Mode) -> Tensor {
    let logits = model.forward(x, mode).unwrap();
    candle_nn::loss::cross_entropy(&logits, y).unwrap()
}

fn accuracy(model: &Model, x: &Tensor, y: &Tensor) -> f32 {
    let pred = model
        .forward(x, Mode::Eval)
        .unwrap()
        .argmax(D::Minus1)
        .unwrap();
    let ok = pred
        .eq(y)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    ok.mean_all().unwrap().to_scalar::<f32>().unwrap()
}

/// `steps` AdamW steps at `batch`, then `settle` train-mode forward passes without updates so
/// that batch-norm running statistics (momentum 0.1) catch up with the trained weights.
fn learns(net: Network, head: Head, steps: usize, batch: usize, lr: f64, settle: usize) {
    let cfg = ModelConfig::new(net, head, CLASSES, 1);
    let task = Task::new(&cfg);
    let model = Model::new(cfg, &Device::Cpu).unwrap();
    let vars = model.trainable().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let (xe, ye) = task.batch(32, 999);
    let chance = (CLASSES as f32).ln();
    let start = std::time::Instant::now();
    for step in 0..steps {
        let (x, y) = task.batch(batch, step as u64);
        let l = loss(
            &model,
            &x,
            &y,
            Mode::Train {
                dropout_seed: step as u64,
            },
        );
        opt.backward_step(&l).unwrap();
    }
    for i in 0..settle {
        let (x, _) = task.batch(16, 10_000 + i as u64);
        model
            .forward(
                &x,
                Mode::Train {
                    dropout_seed: i as u64,
                },
            )
            .unwrap();
    }
    let final_loss = loss(&model, &xe, &ye, Mode::Eval)
        .to_scalar::<f32>()
        .unwrap();
    let acc = accuracy(&model, &xe, &ye);
    println!(
        "{net} {head}: eval loss {final_loss:.4} (chance {chance:.3}), acc {acc:.2}, {steps} steps in {:.1?}",
        start.elapsed()
    );
    assert!(
        final_loss < 0.4 * chance,
        "{net} {head}: eval loss {final_loss} not well below chance {chance}"
    );
}

const HEADS: [Head; 3] = [Head::Dense, Head::Circulant, Head::Block(64)];

#[test]
fn mlp_learns() {
    for head in HEADS {
        learns(Network::Mlp, head, 30, 16, 1e-3, 0);
    }
}

#[test]
fn mnist_cnn_learns() {
    for head in HEADS {
        learns(Network::MnistCnn, head, 30, 16, 1e-3, 0);
    }
}

#[test]
fn cifar_cnn_learns() {
    for head in HEADS {
        learns(Network::CifarCnn, head, 16, 8, 3e-4, 20);
    }
}

/// AlexNet is heavy on CPU: check that one SGD step at batch 2 reduces the loss on that batch
/// (dense and circulant heads) instead of a full learning run.
#[test]
fn alexnet_one_step() {
    for head in [Head::Dense, Head::Circulant] {
        let cfg = ModelConfig::new(Network::AlexNet, head, CLASSES, 1);
        let task = Task::new(&cfg);
        let model = Model::new(cfg, &Device::Cpu).unwrap();
        let vars: Vec<_> = model.trainable().into_iter().map(|(_, v)| v).collect();
        let mut opt = candle_nn::SGD::new(vars, 0.01).unwrap();
        let (x, y) = task.batch(2, 0);
        let start = std::time::Instant::now();
        let before = loss(&model, &x, &y, Mode::Eval);
        let l = loss(&model, &x, &y, Mode::Train { dropout_seed: 0 });
        let grads = l.backward().unwrap();
        for (name, var) in model.trainable() {
            assert!(
                grads.get(&var).is_some(),
                "alexnet {head}: no gradient for {name}"
            );
        }
        opt.step(&grads).unwrap();
        let after = loss(&model, &x, &y, Mode::Eval);
        let (before, after) = (
            before.to_scalar::<f32>().unwrap(),
            after.to_scalar::<f32>().unwrap(),
        );
        println!(
            "alexnet {head}: loss {before:.4} -> {after:.4} in {:.1?}",
            start.elapsed()
        );
        assert!(after < before, "alexnet {head}: {before} -> {after}");
    }
}
