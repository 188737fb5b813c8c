//! `trainer predict`: class probabilities for image files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use image::GenericImageView;
use serde::Serialize;

use crate::checkpoint::class_names;
use crate::cli::PredictArgs;
use crate::data::imagefolder::is_image;
use crate::data::transform::{self, eval_crop_pct, Transform};
use crate::data::{Normalize, Shape};
use crate::eval::{checkpoint_file, load_model};

/// Images per forward pass.
const CHUNK: usize = 32;

#[derive(Serialize)]
struct Ranked<'a> {
    class: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    probability: f32,
}

#[derive(Serialize)]
struct Prediction<'a> {
    file: &'a str,
    class: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    probabilities: &'a [f32],
    /// The `--top-k` most probable classes, most probable first.
    top: Vec<Ranked<'a>>,
}

/// The image files named by `inputs`: files as given, directories expanded to the images they
/// hold (sorted by name).
fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && is_image(f))
                .collect();
            if inside.is_empty() {
                bail!("{} holds no PNG or JPEG images", p.display());
            }
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Classes by decreasing probability (ties: lower index first).
fn ranking(p: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx
}

/// `trainer predict`.
pub fn run(args: PredictArgs) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let device = crate::device::parse(&args.device)?;
    let checkpoint = checkpoint_file(&args.checkpoint)?;
    let (model, info) = load_model(&checkpoint, &device)?;
    let cache = model.eval_cache()?;
    let config = info.config;
    let shape = Shape::of(&config.input);
    let norm = Normalize::new(&config.input)?;
    let t = Transform::Eval {
        crop_pct: eval_crop_pct(shape),
    };
    let names =
        class_names(&checkpoint, info.class_names).filter(|n| n.len() == config.num_classes);
    let files = image_files(&args.images)?;
    let mut fitted_reported = false;
    for chunk in files.chunks(CHUNK) {
        let mut buf = vec![0f32; chunk.len() * shape.numel()];
        for (path, out) in chunk.iter().zip(buf.chunks_exact_mut(shape.numel())) {
            let img = transform::decode(path)?;
            let (w, h) = img.dimensions();
            let channels = img.color().channel_count() as usize;
            let grey_in = channels <= 2;
            if !fitted_reported
                && ((w as usize, h as usize) != (shape.w, shape.h) || grey_in != (shape.c == 1))
            {
                eprintln!(
                    "note: {} is {w}x{h} {}; the network takes {}x{} {} images, so images are \
                     resized and converted to fit (reported once)",
                    path.display(),
                    if grey_in { "grey" } else { "colour" },
                    shape.w,
                    shape.h,
                    if shape.c == 1 { "grey" } else { "RGB" }
                );
                fitted_reported = true;
            }
            transform::apply(img, t, shape, &norm, out)?;
        }
        let x = Tensor::from_vec(buf, (chunk.len(), shape.c, shape.h, shape.w), &device)?;
        let logits = model.forward_eval_with(&x, &cache)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        for (path, p) in chunk.iter().zip(probs) {
            let order = ranking(&p);
            let label = |k: usize| names.as_ref().map(|n| n[k].as_str());
            let top: Vec<Ranked> = order
                .iter()
                .take(args.top_k)
                .map(|&k| Ranked {
                    class: k,
                    label: label(k),
                    probability: p[k],
                })
                .collect();
            let file = path.to_string_lossy();
            if args.json {
                let pred = Prediction {
                    file: &file,
                    class: order[0],
                    label: label(order[0]),
                    probabilities: &p,
                    top,
                };
                println!("{}", serde_json::to_string(&pred)?);
            } else {
                let shown: Vec<String> = top
                    .iter()
                    .map(|r| {
                        let l = r.label.map(|l| format!(" ({l})")).unwrap_or_default();
                        format!("class {}{l}, probability {:.4}", r.class, r.probability)
                    })
                    .collect();
                println!("{file}: {}", shown.join("; "));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_sorts_by_probability_then_index() {
        assert_eq!(ranking(&[0.1, 0.5, 0.1, 0.3]), [1, 3, 0, 2]);
    }
}
