//! Checkpoint files: atomic writes, and `train_state.safetensors`, the complete state needed to
//! resume a run bit for bit.
//!
//! `train_state.safetensors` holds
//! - `model.<name>`: every tensor of the model (trainable and fixed), f32;
//! - the optimizer state: `momentum.<param>` (SGD) or `adam_m.<param>` / `adam_v.<param>` (AdamW);
//! - `data.order`: the sample order of the current epoch (u32), checked on resume;
//! - `__metadata__["train_state"]`: [`TrainState`] as JSON (epoch, step, counters, history,
//!   the run configuration and the model configuration).
//!
//! It is self-contained, so a kill between writing it and `model.safetensors` is harmless.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use circulant_model::{Model, ModelConfig};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::metrics::EpochRecord;
use crate::train::TrainConfig;

/// The latest weights, in the circulant-model format.
pub const MODEL_FILE: &str = "model.safetensors";
/// The weights with the best validation accuracy so far.
pub const BEST_FILE: &str = "best.safetensors";
/// Everything needed to resume.
pub const STATE_FILE: &str = "train_state.safetensors";
/// Class names, one JSON list, next to the checkpoints.
pub const CLASSES_FILE: &str = "classes.json";

const STATE_FORMAT: u32 = 1;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync of the directory. Readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("bad file name {}", path.display()))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// Running sums of the current epoch's training statistics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochAccum {
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
}

/// Progress of a run, stored as JSON in `train_state.safetensors`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// The model configuration (network, heads, classes, input).
    pub model: ModelConfig,
    /// The run configuration that must be kept when resuming.
    pub config: TrainConfig,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of `epoch` already trained on.
    pub batch_in_epoch: usize,
    /// Optimizer steps done in total.
    pub global_step: u64,
    /// Training statistics of the epoch in progress.
    pub accum: EpochAccum,
    pub best_val_acc: Option<f64>,
    /// One record per finished epoch (metrics.jsonl is rewritten from it).
    pub history: Vec<EpochRecord>,
    pub class_names: Option<Vec<String>>,
    /// Sizes of the train and test splits, checked on resume.
    pub train_len: usize,
    pub test_len: usize,
}

impl TrainState {
    pub fn new(model: ModelConfig, config: TrainConfig, train_len: usize, test_len: usize) -> Self {
        TrainState {
            format: STATE_FORMAT,
            model,
            config,
            epoch: 0,
            batch_in_epoch: 0,
            global_step: 0,
            accum: EpochAccum::default(),
            best_val_acc: None,
            history: Vec::new(),
            class_names: None,
            train_len,
            test_len,
        }
    }
}

struct Raw {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn raw_f32(name: String, t: &Tensor) -> Result<Raw> {
    let shape = t.dims().to_vec();
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Raw {
        name,
        dtype: Dtype::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    })
}

fn serialize(raws: &[Raw], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(&str, TensorView<'_>)> = raws
        .iter()
        .map(|r| {
            Ok((
                r.name.as_str(),
                TensorView::new(r.dtype, r.shape.clone(), &r.data)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// Writes `train_state.safetensors` into `dir` atomically.
pub fn save_state(
    dir: &Path,
    state: &TrainState,
    model: &Model,
    optimizer_state: Vec<(String, Tensor)>,
    order: &[u32],
) -> Result<()> {
    let mut raws = Vec::new();
    for (name, t) in model.tensors() {
        raws.push(raw_f32(format!("model.{name}"), &t)?);
    }
    for (name, t) in optimizer_state {
        raws.push(raw_f32(name, &t)?);
    }
    raws.push(Raw {
        name: "data.order".into(),
        dtype: Dtype::U32,
        shape: vec![order.len()],
        data: order.iter().flat_map(|x| x.to_le_bytes()).collect(),
    });
    let meta = HashMap::from([("train_state".to_string(), serde_json::to_string(state)?)]);
    write_atomic(&dir.join(STATE_FILE), &serialize(&raws, meta)?)
}

/// A train state read back from disk.
pub struct LoadedState {
    pub state: TrainState,
    /// Optimizer tensors, on the target device.
    pub optimizer: HashMap<String, Tensor>,
    /// Model tensors by name (without the `model.` prefix), on the CPU.
    pub model_tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
    pub order: Vec<u32>,
}

/// Reads `DIR/train_state.safetensors`.
pub fn load_state(dir: &Path, device: &Device) -> Result<LoadedState> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        bail!(
            "{} has no {STATE_FILE}: nothing to resume (it is written after each epoch and every \
             --save-every steps)",
            dir.display()
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("train_state"))
        .with_context(|| format!("{} has no train_state metadata", path.display()))?;
    let state: TrainState = serde_json::from_str(json)
        .with_context(|| format!("{}: unreadable train_state metadata", path.display()))?;
    if state.format != STATE_FORMAT {
        bail!(
            "{} has train-state format {}, this trainer reads format {STATE_FORMAT}",
            path.display(),
            state.format
        );
    }
    let mut optimizer = HashMap::new();
    let mut model_tensors = Vec::new();
    let mut order = None;
    for (name, view) in st.tensors() {
        if name == "data.order" {
            if view.dtype() != Dtype::U32 {
                bail!("{}: data.order is not u32", path.display());
            }
            order = Some(
                view.data()
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            );
            continue;
        }
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} is not f32", path.display());
        }
        if let Some(model_name) = name.strip_prefix("model.") {
            model_tensors.push((
                model_name.to_string(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
        } else {
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            optimizer.insert(name, Tensor::from_vec(v, view.shape(), device)?);
        }
    }
    let order = order.with_context(|| format!("{} has no data.order", path.display()))?;
    Ok(LoadedState {
        state,
        optimizer,
        model_tensors,
        order,
    })
}

/// Rebuilds the model saved in a train state (the model crate validates names and shapes as
/// for any checkpoint).
pub fn model_from_state(loaded: &LoadedState, device: &Device) -> Result<Model> {
    let raws: Vec<Raw> = loaded
        .model_tensors
        .iter()
        .map(|(n, s, d)| Raw {
            name: n.clone(),
            dtype: Dtype::F32,
            shape: s.clone(),
            data: d.clone(),
        })
        .collect();
    let meta = HashMap::from([(
        "config".to_string(),
        serde_json::to_string(&loaded.state.model)?,
    )]);
    Model::from_safetensors_bytes(&serialize(&raws, meta)?, device)
        .context("cannot rebuild the model saved in the train state")
}

/// Reads the class names stored next to a checkpoint, if any.
pub fn class_names_near(checkpoint: &Path) -> Option<Vec<String>> {
    let dir = checkpoint.parent()?;
    let s = std::fs::read_to_string(dir.join(CLASSES_FILE)).ok()?;
    serde_json::from_str(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let bad = dir.path().join("missing-dir").join("f.bin");
        assert!(write_atomic(&bad, b"x")
            .unwrap_err()
            .to_string()
            .contains("cannot write"));
    }
}
