//! Evaluation: loss, top-1 and top-5 accuracy on a split; the `eval` command.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use circulant_model::checkpoint::CheckpointInfo;
use circulant_model::{HubRef, Model};
use serde::Serialize;

use crate::cli::EvalArgs;
use crate::data::loader::{default_workers, LoaderConfig};
use crate::data::{self, DataOptions, Loader, Shape, Source};

/// Results of an evaluation pass.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    pub samples: usize,
    /// Top-5 accuracy, reported when there are more than 10 classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
}

/// Sums over a batch of logits: (cross-entropy sum, top-1 hits, top-5 hits).
/// Ties count in favour of the lower class index (like argmax).
pub fn score(logits: &[Vec<f32>], labels: &[u32]) -> Result<(f64, u64, u64)> {
    let (mut loss, mut top1, mut top5) = (0.0f64, 0u64, 0u64);
    for (row, &y) in logits.iter().zip(labels) {
        let y = y as usize;
        if y >= row.len() {
            bail!(
                "label {y} is out of range for a model with {} classes",
                row.len()
            );
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[y] as f64;
        let t = row[y];
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(k, &v)| v > t || (v == t && k < y) || v.is_nan())
            .count();
        top1 += (rank == 0) as u64;
        top5 += (rank < 5) as u64;
    }
    Ok((loss, top1, top5))
}

/// Logits as rows of f32 on the host.
pub fn host_logits(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Evaluates `model` on every sample of `source`, in order, behind a progress bar named
/// `label` that shows the running loss and accuracy (hidden unless `show_progress`).
pub fn evaluate(
    model: &Model,
    source: Arc<dyn Source>,
    cfg: &LoaderConfig,
    label: &str,
    show_progress: bool,
) -> Result<EvalResult> {
    let n = source.len();
    if n == 0 {
        bail!("the {label} split is empty");
    }
    let shape = Shape::of(&model.config().input);
    let bar = crate::progress::bar(
        n.div_ceil(cfg.batch_size) as u64,
        label.to_string(),
        show_progress,
    );
    let order = Arc::new((0..n as u32).collect::<Vec<u32>>());
    let cache = model.eval_cache()?;
    let (mut loss, mut top1, mut top5, mut seen) = (0.0, 0, 0, 0);
    for batch in Loader::spawn(source, order, 0, None, cfg) {
        let batch = batch?;
        let b = batch.labels.len();
        let x = Tensor::from_vec(batch.images, (b, shape.c, shape.h, shape.w), model.device())?;
        let logits = model.forward_eval_with(&x, &cache)?;
        let (l, t1, t5) = score(&host_logits(&logits)?, &batch.labels)?;
        loss += l;
        top1 += t1;
        top5 += t5;
        seen += b;
        bar.inc(1);
        bar.set_message(format!(
            "loss {:.4} acc {:.2}%",
            loss / seen as f64,
            100.0 * top1 as f64 / seen as f64
        ));
    }
    bar.finish_and_clear();
    Ok(EvalResult {
        accuracy: top1 as f64 / n as f64,
        loss: loss / n as f64,
        samples: n,
        top5: (model.config().num_classes > 10).then(|| top5 as f64 / n as f64),
    })
}

/// `trainer eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let device = crate::device::parse(&args.device)?;
    let checkpoint = checkpoint_file(&args.checkpoint)?;
    let config = read_info(&checkpoint)?.config;
    let opts = DataOptions {
        kind: args.dataset,
        data_dir: args.data_dir.clone(),
        input: config.input.clone(),
        seed: args.seed,
        need_train: false,
        synthetic_train: 0,
        synthetic_test: args.synthetic_test,
        synthetic_classes: config.num_classes,
        min_crop_scale: 1.0,
    };
    let dataset = data::open(&opts)?;
    if dataset.num_classes != config.num_classes {
        bail!(
            "{} was trained for {} classes but {} has {}; evaluate it on the dataset it was \
             trained on (`trainer info --checkpoint {0}` shows the network and its input)",
            args.checkpoint.display(),
            config.num_classes,
            args.dataset,
            dataset.num_classes
        );
    }
    let (model, _) = load_model(&checkpoint, &device)?;
    let shape = Shape::of(&config.input);
    let workers = args.workers.unwrap_or_else(default_workers);
    let cfg = LoaderConfig::new(args.batch_size.max(1), shape.numel(), workers)?;
    let r = evaluate(&model, dataset.test.clone(), &cfg, "test", !args.json)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let top5 = r
            .top5
            .map(|t| format!(", top-5 {:.2}%", 100.0 * t))
            .unwrap_or_default();
        println!(
            "{}: test accuracy {:.2}%{top5}, loss {:.4} on the {} test images of {}",
            args.checkpoint.display(),
            100.0 * r.accuracy,
            r.loss,
            r.samples,
            dataset.description
        );
    }
    Ok(())
}

/// The local file of a `--checkpoint` argument: a path as given, or for
/// `hf://owner/repo[/file][@rev]` the file in the Hugging Face hub cache (downloaded if missing,
/// unless `HF_HUB_OFFLINE=1`).
pub fn checkpoint_file(arg: &Path) -> Result<PathBuf> {
    let Some(s) = arg.to_str().filter(|s| HubRef::is_hub_ref(s)) else {
        return Ok(arg.to_path_buf());
    };
    fetch(&HubRef::parse(s)?)
}

#[cfg(feature = "hub")]
fn fetch(hub_ref: &HubRef) -> Result<PathBuf> {
    hub_ref
        .fetch(None)
        .with_context(|| format!("cannot fetch {hub_ref} from the Hugging Face hub"))
}

#[cfg(not(feature = "hub"))]
fn fetch(hub_ref: &HubRef) -> Result<PathBuf> {
    bail!(
        "{hub_ref}: this trainer was built without hub support; rebuild it with \
         `cargo build --release -p trainer --features hub`, or download the file and pass its path"
    )
}

/// Reads what a checkpoint says about itself (config, class names, dtype), with a clear error.
pub fn read_info(path: &Path) -> Result<CheckpointInfo> {
    if !path.is_file() {
        bail!("checkpoint {} does not exist", path.display());
    }
    CheckpointInfo::read(path).with_context(|| {
        format!(
            "{} is not a circulant-model checkpoint (model.safetensors / best.safetensors)",
            path.display()
        )
    })
}

/// Loads a checkpoint with a clear error: [`read_info`]'s for a missing file or one that is not
/// a checkpoint, otherwise why its tensors could not be loaded.
pub fn load_model(path: &Path, device: &candle_core::Device) -> Result<(Model, CheckpointInfo)> {
    Model::load_with_info(path, device).or_else(|e| {
        read_info(path)?;
        Err(anyhow::Error::new(e).context(format!("cannot load checkpoint {}", path.display())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_matches_hand_computation() {
        let logits = vec![
            vec![2.0f32, 1.0, 0.0],
            vec![0.0, 0.0, 3.0],
            vec![1.0, 1.0, 1.0],
        ];
        let labels = [0u32, 1, 1];
        let (loss, t1, t5) = score(&logits, &labels).unwrap();
        assert!(score(&logits, &[0, 0, 3]).is_err());
        let lse = |r: &[f32]| r.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        let want = (lse(&logits[0]) - 2.0) + (lse(&logits[1]) - 0.0) + (lse(&logits[2]) - 1.0);
        assert!((loss - want).abs() < 1e-9);
        // Row 0 correct; row 1 wrong; row 2 is a tie, won by class 0.
        assert_eq!(t1, 1);
        assert_eq!(t5, 3);
    }
}
