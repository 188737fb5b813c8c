//! Times forward, backward and optimiser step of one training step on CPU.
//!
//! `cargo run --release -p circulant-model --example step_time -- cifar-cnn circulant 32 5`

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use circulant_model::{Head, Mode, Model, ModelConfig, Network};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let net: Network = args.first().map_or("cifar-cnn", |s| s).parse()?;
    let head: Head = args.get(1).map_or("dense", |s| s).parse()?;
    let batch: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let dev = Device::Cpu;
    let model = Model::new(ModelConfig::new(net, head, 10, 0), &dev)?;
    let inp = &model.config().input;
    let x = Tensor::randn(0f32, 1., (batch, inp.channels, inp.height, inp.width), &dev)?;
    let y = Tensor::zeros(batch, candle_core::DType::U32, &dev)?;
    let vars = model.trainable().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(vars, ParamsAdamW::default())?;
    println!("{net} {head} batch {batch}: {} params", model.param_count());
    for step in 0..steps {
        let t0 = Instant::now();
        let logits = model.forward(
            &x,
            Mode::Train {
                dropout_seed: step as u64,
            },
        )?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        let t_eval = Instant::now();
        model.forward(&x, Mode::Eval)?;
        println!(
            "step {step}: forward {:.3?}  backward {:.3?}  optimiser {:.3?}  | eval forward {:.3?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t_eval.elapsed()
        );
    }
    Ok(())
}
