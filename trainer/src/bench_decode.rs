//! Hidden `trainer bench-decode`: image-folder decode throughput of the training pipeline.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use circulant_model::InputSpec;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::cli::BenchDecodeArgs;
use crate::data::imagefolder::{class_names, list_split, ImageFolderSource};
use crate::data::loader::{default_workers, LoaderConfig};
use crate::data::{epoch_order, Loader, Normalize, Shape, Source};

/// Writes `n` synthetic `size`x`size` JPEGs (smooth colour fields with noise) into
/// `dir/train/class_k/` for 10 classes, plus one per class into `dir/val/`.
pub fn generate_jpegs(dir: &Path, n: usize, size: u32) -> Result<()> {
    let jobs: Vec<(String, usize)> = (0..n)
        .map(|i| ("train".to_string(), i))
        .chain((0..10).map(|i| ("val".to_string(), i)))
        .collect();
    jobs.par_iter().try_for_each(|(split, i)| -> Result<()> {
        let class = i % 10;
        let d = dir.join(split).join(format!("class_{class}"));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(*i as u64);
        let (a, b, c): (f32, f32, f32) = (rng.random(), rng.random(), rng.random());
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let (fx, fy) = (x as f32 / size as f32, y as f32 / size as f32);
            let n: f32 = rng.random_range(-20.0..20.0);
            let r = 255.0 * (0.5 + 0.5 * (6.0 * a * fx + 3.0 * fy).sin()) + n;
            let g = 255.0 * (0.5 + 0.5 * (5.0 * b * fy + class as f32).cos()) + n;
            let bl = 255.0 * c * (fx * fy) + n;
            image::Rgb([
                r.clamp(0.0, 255.0) as u8,
                g.clamp(0.0, 255.0) as u8,
                bl.clamp(0.0, 255.0) as u8,
            ])
        });
        let p = d.join(format!("img_{i:06}.jpg"));
        img.save_with_format(&p, image::ImageFormat::Jpeg)
            .with_context(|| format!("cannot write {}", p.display()))
    })
}

/// `trainer bench-decode`.
pub fn run(args: BenchDecodeArgs) -> Result<()> {
    if let Some(n) = args.generate {
        let t = Instant::now();
        generate_jpegs(&args.data_dir, n, args.generate_size)?;
        println!(
            "wrote {n} {0}x{0} JPEGs to {1} in {2:.1}s",
            args.generate_size,
            args.data_dir.join("train").display(),
            t.elapsed().as_secs_f64()
        );
    }
    let train = args.data_dir.join("train");
    let classes = class_names(&train)?;
    let files = list_split(&train, &classes)?;
    let input = InputSpec {
        channels: args.channels,
        height: args.image_size,
        width: args.image_size,
        mean: vec![0.45; args.channels],
        std: vec![0.225; args.channels],
    };
    let shape = Shape::of(&input);
    let norm = Normalize::new(&input)?;
    let source: Arc<dyn Source> = Arc::new(ImageFolderSource::new(
        files,
        shape,
        norm,
        crate::data::transform::default_min_crop_scale(shape),
    ));
    let workers = args.workers.unwrap_or_else(default_workers);
    let cfg = LoaderConfig::new(args.batch_size.max(1), shape.numel(), workers)?;
    let n = source.len();
    let order = Arc::new(epoch_order(n, 0, 0));
    let augment = (!args.eval).then_some(1);
    let t = Instant::now();
    let mut count = 0usize;
    for batch in Loader::spawn(source, order, 0, augment, &cfg) {
        count += batch?.labels.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "decoded {count} images to {shape} in {secs:.2}s: {:.0} images/s ({workers} decode threads, batch {}, {} transform)",
        count as f64 / secs,
        args.batch_size,
        if args.eval { "eval (resize + center crop)" } else { "train (random-resized-crop + flip)" }
    );
    Ok(())
}
