//! Classifies image files with a checkpoint and prints each image's top-5 classes.
//!
//! `cargo run --release -p circulant-model --features image --example classify -- \
//!     runs/x/model.safetensors a.png b.jpg`

use candle_core::Device;
use circulant_model::Classifier;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(checkpoint), images) = (args.next(), args.collect::<Vec<_>>()) else {
        return Err("usage: classify CHECKPOINT IMAGE...".into());
    };
    if images.is_empty() {
        return Err("usage: classify CHECKPOINT IMAGE...".into());
    }
    let clf = Classifier::load(&checkpoint, &Device::Cpu)?;
    let decoded = images
        .iter()
        .map(|p| image::open(p).map_err(|e| format!("{p}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = clf.preprocess(&decoded)?;
    for (path, top) in images.iter().zip(clf.top_k(&batch, 5)?) {
        println!("{path}");
        for (class, p) in top {
            let name = clf
                .classes()
                .map_or(class.to_string(), |c| c[class].clone());
            println!("  {:6.2}%  {name}", 100.0 * p);
        }
    }
    Ok(())
}
