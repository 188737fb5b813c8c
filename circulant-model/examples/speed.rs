//! Per-image CPU time of a whole network: inference forward (eval mode) and a training
//! forward + backward (cross-entropy, no optimiser step), for several heads and batch sizes.
//!
//! ```text
//! cargo run --release -p circulant-model --example speed -- NETWORK [BATCHES] [HEADS] [CLASSES]
//! cargo run --release -p circulant-model --example speed -- alexnet 1,32 dense,circulant 1000
//! ```
//! Prints a markdown table of medians (one warm-up, then repeats for about 3 s, at least 3).
//! Inputs are random: the time does not depend on the values.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use circulant_model::{Head, Mode, Model, ModelConfig, Network};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Median seconds of `f`: one warm-up call, then repeats for about `budget` (3 to 50 runs).
fn median_s(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 50) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn list<T: std::str::FromStr>(arg: Option<&String>, default: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    arg.map_or(default, |s| s)
        .split(',')
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| format!("bad value `{s}`: {e}").into())
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let net: Network = args.first().map_or("mnist-cnn", |s| s).parse()?;
    let batches: Vec<usize> = list(args.get(1), "1,256")?;
    let heads: Vec<Head> = list(args.get(2), "dense,circulant")?;
    let classes: usize = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let dev = Device::Cpu;
    let budget = Duration::from_secs(3);
    println!(
        "{net}, {classes} classes, CPU, {} rayon threads, f32, median per batch\n",
        rayon::current_num_threads()
    );
    println!("| head | params | batch | inference ms/batch | inference img/s | fwd+bwd ms/batch | fwd+bwd ms/img |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &head in &heads {
        let model = Model::new(ModelConfig::new(net, head, classes, 0), &dev)?;
        let inp = &model.config().input;
        for &batch in &batches {
            let x = Tensor::randn(0f32, 1., (batch, inp.channels, inp.height, inp.width), &dev)?;
            let y = Tensor::zeros(batch, DType::U32, &dev)?;
            let infer = median_s(budget, || {
                model.forward(&x, Mode::Eval)?;
                Ok(())
            })?;
            let mut step = 0;
            let train = median_s(budget, || {
                step += 1;
                let logits = model.forward(&x, Mode::Train { dropout_seed: step })?;
                candle_nn::loss::cross_entropy(&logits, &y)?.backward()?;
                Ok(())
            })?;
            println!(
                "| {head} | {} | {batch} | {:.2} | {:.0} | {:.1} | {:.2} |",
                model.param_count(),
                infer * 1e3,
                batch as f64 / infer,
                train * 1e3,
                train * 1e3 / batch as f64
            );
        }
    }
    Ok(())
}
