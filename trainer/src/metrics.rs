//! The run's metric files: `metrics.jsonl` (one line per epoch, then the test result) and
//! `metrics-steps.jsonl` (one line every `--log-every` steps).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;

/// File name of the per-epoch metrics in the run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the per-step training metrics.
pub const STEPS_FILE: &str = "metrics-steps.jsonl";

/// One line of `metrics.jsonl`: statistics of one epoch.
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
    /// Validation figures (absent with `--val-split 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top5: Option<f64>,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// The epoch was interrupted (`--max-steps`); its figures cover the steps done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// The last line of `metrics.jsonl`: the test split, evaluated once when training stops.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TestRecord {
    /// The weights evaluated: `best.safetensors` (chosen on validation) or `model.safetensors`.
    pub checkpoint: String,
    /// Epochs and steps trained when the run stopped.
    pub epochs_done: usize,
    pub step: u64,
    pub test_loss: f64,
    pub test_acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_top5: Option<f64>,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
}

/// One line of `metrics-steps.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub epoch: usize,
    pub step: u64,
    pub lr: f64,
    /// Loss of this step's batch.
    pub loss: f64,
    /// Running means over the epoch so far.
    pub train_loss: f64,
    pub train_acc: f64,
    /// Training throughput since the epoch (or this process) started.
    pub images_per_sec: f64,
}

/// Rewrites `DIR/metrics.jsonl` (atomically): the finished epochs, the interrupted one, the
/// test result.
pub fn write_jsonl(
    dir: &Path,
    history: &[EpochRecord],
    partial: Option<&EpochRecord>,
    test: Option<&TestRecord>,
) -> Result<()> {
    let mut s = String::new();
    for r in history.iter().chain(partial) {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    if let Some(t) = test {
        s.push_str(&serde_json::to_string(t)?);
        s.push('\n');
    }
    write_atomic(dir.join(METRICS_FILE), s.as_bytes())?;
    Ok(())
}

/// Appends one line to `DIR/metrics-steps.jsonl`.
pub fn append_step(dir: &Path, r: &StepRecord) -> Result<()> {
    let path = dir.join(STEPS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(r)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Drops the lines of `DIR/metrics-steps.jsonl` after `step` (written after the checkpoint a
/// run resumes from).
pub fn truncate_steps(dir: &Path, step: u64) -> Result<()> {
    let path = dir.join(STEPS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<StepRecord>(l).is_ok_and(|r| r.step <= step))
        .flat_map(|l| [l, "\n"])
        .collect();
    if kept.len() != text.len() {
        write_atomic(&path, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_after_the_checkpoint_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |step| StepRecord {
            epoch: 1,
            step,
            lr: 0.1,
            loss: 1.0,
            train_loss: 1.0,
            train_acc: 0.5,
            images_per_sec: 10.0,
        };
        for s in [2, 4, 6] {
            append_step(dir.path(), &rec(s)).unwrap();
        }
        truncate_steps(dir.path(), 4).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STEPS_FILE)).unwrap();
        let steps: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<StepRecord>(l).unwrap().step)
            .collect();
        assert_eq!(steps, [2, 4]);
    }
}
