//! `trainer bench`: training and inference throughput of a network on random data, through the
//! same training step as `trainer train` (model, loss, backward, optimizer), and inference as `predict`
//! runs it.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use circulant_model::{Mode, Model, ModelConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cli::{BenchArgs, DatasetKind, Precision, TrainArgs};
use crate::data::Shape;
use crate::train::{settings, Trainer};

/// The `--json` line.
#[derive(Serialize)]
struct Report {
    network: String,
    head: String,
    batch: usize,
    device: String,
    precision: Precision,
    train_img_s: f64,
    infer_img_s: f64,
}

/// Classes of the benchmarked networks: ImageNet's for AlexNet, 10 for the others.
fn classes(network: circulant_model::Network) -> usize {
    if network == circulant_model::Network::AlexNet {
        1000
    } else {
        10
    }
}

/// `trainer bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.steps == 0 || args.batch_size == 0 {
        bail!("--steps and --batch-size must be at least 1");
    }
    let device = crate::device::parse(&args.device)?;
    crate::runtime::prepare_device(&device);
    let train_args = TrainArgs {
        dataset: Some(DatasetKind::Synthetic),
        model: Some(args.model),
        head: Some(args.head),
        batch_size: Some(args.batch_size),
        optimizer: Some(args.optimizer),
        precision: Some(args.precision),
        ..Default::default()
    };
    let (config, _) = settings::resolve(&train_args, None)?;
    let mc = ModelConfig::new(args.model, args.head, classes(args.model), 0);
    let shape = Shape::of(&mc.input);
    let model = Model::new(mc.clone(), &device)?;
    let mut trainer = Trainer::new(model, &config, args.steps as u64)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let n = args.batch_size;
    let batch: Vec<f32> = (0..n * shape.numel())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..mc.num_classes as u32))
        .collect();

    // The batch stays on the device, as in bench/torch_train.py. The steps queue their work on
    // the device without waiting for it (as in `trainer train`); the clock starts and stops on a
    // device that has finished everything queued.
    let x = trainer.upload(batch)?;
    for s in 0..args.warmup {
        trainer.step(&x, &labels, s as u64)?;
    }
    device.synchronize()?;
    let t = Instant::now();
    for s in 0..args.steps {
        trainer.step(&x, &labels, (args.warmup + s) as u64)?;
    }
    device.synchronize()?;
    let train_img_s = (n * args.steps) as f64 / t.elapsed().as_secs_f64();

    // Inference in f32 as `Classifier::logits` (and `predict`, `eval`) runs it: eval mode with
    // the circulant weights' spectra computed once, before the clock starts; in bf16, the
    // mixed-precision forward pass in eval mode. Timed as the training steps (and as
    // bench/torch_train.py does): queued without reading the logits back, the last ones checked
    // once the clock has stopped.
    let cache = trainer.model.eval_cache()?;
    let infer = |model: &Model| -> Result<Tensor> {
        Ok(match args.precision {
            Precision::F32 => model.forward_eval_with(&x, &cache)?,
            p => model.forward_mixed(&x, Mode::Eval, p.compute_dtype())?,
        })
    };
    for _ in 0..args.warmup {
        infer(&trainer.model)?;
    }
    device.synchronize()?;
    let t = Instant::now();
    let mut logits = infer(&trainer.model)?;
    for _ in 1..args.steps {
        logits = infer(&trainer.model)?;
    }
    device.synchronize()?;
    let infer_img_s = (n * args.steps) as f64 / t.elapsed().as_secs_f64();
    let sum = logits
        .to_dtype(DType::F32)?
        .abs()?
        .sum_all()?
        .to_scalar::<f32>()?;
    if !sum.is_finite() {
        bail!("non-finite logits during the benchmark");
    }

    let report = Report {
        network: args.model.to_string(),
        head: args.head.to_string(),
        batch: n,
        device: args.device.clone(),
        precision: args.precision,
        train_img_s,
        infer_img_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} with {} heads, batch {n} on {}: training {train_img_s:.1} img/s, inference \
             {infer_img_s:.1} img/s ({} + {} steps)",
            report.network, report.head, report.device, args.warmup, args.steps
        );
    }
    Ok(())
}
