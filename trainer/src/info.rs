//! `trainer info`: what a checkpoint holds.

use anyhow::{Context, Result};
use candle_core::Device;
use serde_json::json;

use crate::cli::InfoArgs;
use crate::eval::{checkpoint_file, load_model};

/// `trainer info`.
pub fn run(args: InfoArgs) -> Result<()> {
    let path = &checkpoint_file(&args.checkpoint)?;
    let (model, info) = load_model(path, &Device::Cpu)?;
    let config = info.config;
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let report = model.param_report();
    let input = &config.input;
    if args.json {
        let layers: Vec<_> = report
            .layers
            .iter()
            .map(|l| {
                json!({"name": l.name, "kind": l.kind, "params": l.params,
                       "dense_equivalent": l.dense_equivalent})
            })
            .collect();
        let v = json!({
            "checkpoint": path.to_string_lossy(),
            "file_size": size,
            "network": config.network,
            "heads": config.heads,
            "num_classes": config.num_classes,
            "class_names": info.class_names,
            "dtype": format!("{:?}", info.dtype).to_lowercase(),
            "input": input,
            "seed": config.seed,
            "sign_flip": config.sign_flip,
            "layers": layers,
            "params": report.total(),
            "dense_equivalent": report.dense_equivalent_total(),
            "compression": report.compression(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let heads: Vec<String> = config
        .heads
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "checkpoint   {} ({})",
        path.display(),
        indicatif::HumanBytes(size)
    );
    println!("network      {}", config.network);
    println!("heads        {}", heads.join(", "));
    let names = match &info.class_names {
        Some(n) if n.len() <= 12 => format!(" ({})", n.join(", ")),
        Some(n) => format!(" ({}, ..., {})", n[..3].join(", "), n[n.len() - 1]),
        None => String::new(),
    };
    println!("classes      {}{names}", config.num_classes);
    println!("stored as    {:?}", info.dtype);
    println!(
        "input        {}x{}x{}, mean {:?}, std {:?}",
        input.channels, input.height, input.width, input.mean, input.std
    );
    println!(
        "seed         {} (sign flips {})",
        config.seed,
        if config.sign_flip { "on" } else { "off" }
    );
    println!();
    let w = report
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<w$}  {:<10}  {:>12}  {:>16}",
        "layer", "kind", "params", "dense-equivalent"
    );
    for l in &report.layers {
        println!(
            "{:<w$}  {:<10}  {:>12}  {:>16}",
            l.name, l.kind, l.params, l.dense_equivalent
        );
    }
    println!(
        "{:<w$}  {:<10}  {:>12}  {:>16}",
        "total",
        "",
        report.total(),
        report.dense_equivalent_total()
    );
    println!(
        "compression  {:.2}x (dense-equivalent / actual parameters)",
        report.compression()
    );
    Ok(())
}
