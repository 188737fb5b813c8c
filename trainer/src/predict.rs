//! `trainer predict`: class probabilities for image files.

use anyhow::Result;
use candle_core::{DType, Tensor};
use circulant_model::Mode;
use serde::Serialize;

use crate::checkpoint::class_names_near;
use crate::cli::PredictArgs;
use crate::data::transform::{self, eval_crop_pct, Transform};
use crate::data::{Normalize, Shape};
use crate::eval::{load_model, read_config};

/// Images per forward pass.
const CHUNK: usize = 32;

#[derive(Serialize)]
struct Prediction<'a> {
    file: &'a str,
    class: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    probabilities: Vec<f32>,
}

/// `trainer predict`.
pub fn run(args: PredictArgs) -> Result<()> {
    let device = crate::device::parse(&args.device)?;
    let config = read_config(&args.checkpoint)?;
    let model = load_model(&args.checkpoint, &device)?;
    let shape = Shape::of(&config.input);
    let norm = Normalize::new(&config.input)?;
    let t = Transform::Eval {
        crop_pct: eval_crop_pct(shape),
    };
    let names = class_names_near(&args.checkpoint).filter(|n| n.len() == config.num_classes);
    for chunk in args.images.chunks(CHUNK) {
        let mut buf = vec![0f32; chunk.len() * shape.numel()];
        for (path, out) in chunk.iter().zip(buf.chunks_exact_mut(shape.numel())) {
            let img = transform::decode(path)?;
            transform::apply(img, t, shape, &norm, out)?;
        }
        let x = Tensor::from_vec(buf, (chunk.len(), shape.c, shape.h, shape.w), &device)?;
        let logits = model.forward(&x, Mode::Eval)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        for (path, p) in chunk.iter().zip(probs) {
            let class = p
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (k, &v)| {
                    if v > best.1 {
                        (k, v)
                    } else {
                        best
                    }
                })
                .0;
            let label = names.as_ref().map(|n| n[class].as_str());
            let file = path.to_string_lossy();
            if args.json {
                let pred = Prediction {
                    file: &file,
                    class,
                    label,
                    probabilities: p,
                };
                println!("{}", serde_json::to_string(&pred)?);
            } else {
                let label = label.map(|l| format!(" ({l})")).unwrap_or_default();
                println!("{file}: class {class}{label}, probability {:.4}", p[class]);
            }
        }
    }
    Ok(())
}
