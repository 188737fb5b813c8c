//! `trainer info`: what a checkpoint holds.

use anyhow::{Context, Result};
use candle_core::Device;
use serde_json::json;

use crate::cli::InfoArgs;
use crate::eval::{load_model, read_config};

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `trainer info`.
pub fn run(args: InfoArgs) -> Result<()> {
    let path = &args.checkpoint;
    let config = read_config(path)?;
    let model = load_model(path, &Device::Cpu)?;
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
    println!("checkpoint   {} ({})", path.display(), human_bytes(size));
    println!("network      {}", config.network);
    println!("heads        {}", heads.join(", "));
    println!("classes      {}", config.num_classes);
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
