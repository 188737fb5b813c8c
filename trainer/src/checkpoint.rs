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
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
pub use circulant_model::checkpoint::write_atomic;
use circulant_model::{Model, ModelConfig};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::metrics::{EpochRecord, TestRecord};
use crate::train::settings::TrainConfig;

/// The latest weights, in the circulant-model format.
pub const MODEL_FILE: &str = "model.safetensors";
/// The weights with the best validation accuracy so far.
pub const BEST_FILE: &str = "best.safetensors";
/// Everything needed to resume.
pub const STATE_FILE: &str = "train_state.safetensors";
/// Class names, one JSON list, next to the checkpoints of runs made before the checkpoints
/// stored them (read, no longer written).
pub const CLASSES_FILE: &str = "classes.json";

const STATE_FORMAT: u32 = 2;

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
    /// Best validation accuracy of a finished epoch (`best.safetensors` holds its weights).
    pub best_val_acc: Option<f64>,
    /// One record per finished epoch (metrics.jsonl is rewritten from it).
    pub history: Vec<EpochRecord>,
    /// The epoch interrupted by `--max-steps`, validated where it stopped.
    pub partial: Option<EpochRecord>,
    /// The test result, once training has stopped.
    pub test: Option<TestRecord>,
    pub class_names: Option<Vec<String>>,
    /// Sizes of the train, validation and test splits, checked on resume.
    pub train_len: usize,
    pub val_len: usize,
    pub test_len: usize,
    /// Processes of the data-parallel run that wrote the state (1: one process). A run resumed
    /// with another number keeps its place in the epoch's sample order but cuts the rest of
    /// the epoch into other batches.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl TrainState {
    pub fn new(model: ModelConfig, config: TrainConfig, splits: [usize; 3]) -> Self {
        let [train_len, val_len, test_len] = splits;
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
            partial: None,
            test: None,
            class_names: None,
            train_len,
            val_len,
            test_len,
            world_size: 1,
        }
    }
}

/// Writes `train_state.safetensors` into `dir` atomically.
pub fn save_state(
    dir: &Path,
    state: &TrainState,
    model: &Model,
    optimizer_state: Vec<(String, Tensor)>,
    order: &[u32],
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model
        .tensors()
        .into_iter()
        .map(|(name, t)| (format!("model.{name}"), t))
        .chain(optimizer_state)
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    tensors.push(("data.order".into(), Tensor::new(order, &Device::Cpu)?));
    let meta = HashMap::from([("train_state".to_string(), serde_json::to_string(state)?)]);
    let bytes = safetensors::serialize(tensors, Some(meta))?;
    write_atomic(dir.join(STATE_FILE), &bytes)?;
    Ok(())
}

/// A train state read back from disk.
pub struct LoadedState {
    pub state: TrainState,
    /// Optimizer tensors, on the target device.
    pub optimizer: HashMap<String, Tensor>,
    /// Model tensors by name (without the `model.` prefix), on the CPU.
    pub model_tensors: HashMap<String, Tensor>,
    pub order: Vec<u32>,
}

/// Reads `DIR/train_state.safetensors`.
pub fn load_state(dir: &Path, device: &Device) -> Result<LoadedState> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("train_state"))
        .with_context(|| format!("{} has no train_state metadata", path.display()))?;
    let format = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["format"].as_u64());
    if format != Some(STATE_FORMAT as u64) {
        bail!(
            "{} has train-state format {}, this trainer reads format {STATE_FORMAT} (format 1 \
             runs chose their best epoch on the test split); its model.safetensors still loads, \
             but the run cannot be resumed: start a new one",
            path.display(),
            format.map_or("unknown".into(), |f| f.to_string())
        );
    }
    let state: TrainState = serde_json::from_str(json)
        .with_context(|| format!("{}: unreadable train_state metadata", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let (mut optimizer, mut model_tensors, mut order) = (HashMap::new(), HashMap::new(), None);
    for (name, t) in tensors {
        if name == "data.order" {
            order = Some(
                t.to_vec1::<u32>()
                    .with_context(|| format!("{}: data.order is not u32", path.display()))?,
            );
        } else if t.dtype() != DType::F32 {
            bail!("{}: tensor {name} is not f32", path.display());
        } else if let Some(model_name) = name.strip_prefix("model.") {
            model_tensors.insert(model_name.to_string(), t);
        } else {
            optimizer.insert(name, t.to_device(device)?);
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

/// Rebuilds the model saved in a train state (names and shapes checked as for any checkpoint).
pub fn model_from_state(loaded: &LoadedState, device: &Device) -> Result<Model> {
    Model::from_tensors(
        loaded.state.model.clone(),
        loaded.model_tensors.clone(),
        device,
    )
    .context("cannot rebuild the model saved in the train state")
}

/// The class names of a checkpoint: from its metadata, or, for files written before they were
/// stored there, from the `classes.json` beside it.
pub fn class_names(checkpoint: &Path, stored: Option<Vec<String>>) -> Option<Vec<String>> {
    stored.or_else(|| {
        let s = std::fs::read_to_string(checkpoint.parent()?.join(CLASSES_FILE)).ok()?;
        serde_json::from_str(&s).ok()
    })
}
