//! Per-epoch metrics and `metrics.jsonl`.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;

/// File name of the metrics log in the run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`: statistics of one finished epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimizer steps done at the end of the epoch.
    pub step: u64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top5: Option<f64>,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Training throughput.
    pub images_per_sec: f64,
}

/// Rewrites `DIR/metrics.jsonl` (atomically) from the run's history.
pub fn write_jsonl(dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut s = String::new();
    for r in history {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    write_atomic(&dir.join(METRICS_FILE), s.as_bytes())
}
