//! Initialises a model and saves it as a checkpoint, printing its parameter report.
//!
//! `cargo run --release -p circulant-model --example save_model -- mnist-cnn circulant 10 out.safetensors`

use candle_core::Device;
use circulant_model::{Head, Model, ModelConfig, Network};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        return Err("usage: save_model <network> <head> <num_classes> <path>".into());
    }
    let net: Network = args[0].parse()?;
    let head: Head = args[1].parse()?;
    let classes: usize = args[2].parse()?;
    let model = Model::new(ModelConfig::new(net, head, classes, 0), &Device::Cpu)?;
    model.save(&args[3])?;
    let size = std::fs::metadata(&args[3])?.len();
    println!("{}\n{net} {head}: {size} bytes", model.param_report());
    Ok(())
}
