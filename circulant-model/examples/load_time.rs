//! Times `Classifier::load` of checkpoint files: each file loaded `reps` times in this process
//! (the first load may read a cold page cache), printing every time and the median.
//!
//! `cargo run --release -p circulant-model --example load_time -- 7 a.safetensors b.safetensors`

use std::time::Instant;

use candle_core::Device;
use circulant_model::Classifier;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: load_time <reps> <checkpoint>...".into());
    }
    let reps: usize = args[0].parse()?;
    if reps == 0 {
        return Err("reps must be at least 1".into());
    }
    for path in &args[1..] {
        let size = std::fs::metadata(path)?.len();
        let mut secs = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            let clf = Classifier::load(path, &Device::Cpu)?;
            secs.push(start.elapsed().as_secs_f64());
            drop(clf);
        }
        let times: Vec<String> = secs.iter().map(|s| format!("{s:.3}")).collect();
        secs.sort_by(f64::total_cmp);
        println!(
            "{path} ({size} bytes): {} s; median {:.3} s",
            times.join(", "),
            secs[reps / 2]
        );
    }
    Ok(())
}
