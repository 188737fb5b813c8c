//! Everything a run writes into its directory, behind one gate: the writer (rank 0 of a
//! data-parallel run, or the only process) writes; every other rank writes nothing.

use anyhow::{Context, Result};
use candle_core::Tensor;
use circulant_model::checkpoint::SaveOptions;
use circulant_model::Model;

use crate::checkpoint::{self, TrainState};
use crate::dist::Role;
use crate::metrics::{self, StepRecord};
use crate::plot;

use super::run_dir::RunDir;

/// The files of a run, written only by the writer.
#[derive(Clone, Copy)]
pub struct Output<'a> {
    dir: &'a RunDir,
    role: Role,
}

impl<'a> Output<'a> {
    pub fn new(dir: &'a RunDir, role: Role) -> Self {
        Output { dir, role }
    }

    pub fn dir(&self) -> &'a RunDir {
        self.dir
    }

    /// Whether this process writes (and reports) the run.
    pub fn writes(&self) -> bool {
        self.role.writes()
    }

    /// `train_state.safetensors`: everything a resume needs.
    pub fn state(
        &self,
        state: &TrainState,
        model: &Model,
        optimizer: impl FnOnce() -> Vec<(String, Tensor)>,
        order: &[u32],
    ) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        checkpoint::save_state(self.dir.path(), state, model, optimizer(), order)
    }

    /// A model checkpoint `name`, with the class names in its metadata.
    pub fn model(&self, name: &str, model: &Model, class_names: Option<Vec<String>>) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        let path = self.dir.join(name);
        let options = SaveOptions {
            class_names,
            ..Default::default()
        };
        model
            .save_with(&path, &options)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// `metrics.jsonl` and `curves.png` from the state's records.
    pub fn metrics(&self, state: &TrainState, title: &str) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        metrics::write_jsonl(
            self.dir.path(),
            &state.history,
            state.partial.as_ref(),
            state.test.as_ref(),
        )?;
        let mut records = state.history.clone();
        records.extend(state.partial.clone());
        if let Err(e) = plot::draw(&self.dir.join(plot::CURVES_FILE), title, &records) {
            eprintln!("warning: {e:#}");
        }
        Ok(())
    }

    /// A line of `metrics-steps.jsonl`.
    pub fn step(&self, record: &StepRecord) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        metrics::append_step(self.dir.path(), record)
    }

    /// Drops the lines of `metrics-steps.jsonl` after `step` (on resume).
    pub fn truncate_steps(&self, step: u64) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        metrics::truncate_steps(self.dir.path(), step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{BEST_FILE, MODEL_FILE, STATE_FILE};
    use crate::cli::{DatasetKind, TrainArgs};
    use crate::metrics::EpochRecord;
    use crate::train::settings;
    use circulant_model::{ModelConfig, Network};

    /// Calls every writer of a run, as a run does at an epoch end, a step log and a resume.
    fn write_everything(out: &Output) -> Result<()> {
        let args = TrainArgs {
            dataset: Some(DatasetKind::Synthetic),
            model: Some(Network::Mlp),
            ..Default::default()
        };
        let (config, _) = settings::resolve(&args, None)?;
        let mc = ModelConfig::new(Network::Mlp, config.run.head, 10, 1);
        let model = Model::new(mc.clone(), &candle_core::Device::Cpu)?;
        let mut state = TrainState::new(mc, config, [8, 2, 2]);
        state.history.push(EpochRecord {
            epoch: 1,
            step: 1,
            lr: 0.1,
            train_loss: 2.0,
            train_acc: 0.1,
            val_loss: Some(2.0),
            val_acc: Some(0.1),
            val_top5: None,
            seconds: 1.0,
            images_per_sec: 8.0,
            partial: false,
        });
        out.truncate_steps(0)?;
        out.step(&StepRecord {
            epoch: 1,
            step: 1,
            lr: 0.1,
            loss: 2.0,
            train_loss: 2.0,
            train_acc: 0.1,
            images_per_sec: 8.0,
        })?;
        out.state(&state, &model, Vec::new, &[0, 1])?;
        out.model(MODEL_FILE, &model, None)?;
        out.model(BEST_FILE, &model, None)?;
        out.metrics(&state, "title")
    }

    #[test]
    fn only_the_writer_writes_the_run_directory() {
        let tmp = tempfile::tempdir().unwrap();
        // A rank other than 0: its run directory is not even created.
        let silent_dir = tmp.path().join("silent");
        let dir = RunDir::detached(&silent_dir);
        let out = Output::new(&dir, Role::of_rank(1));
        assert!(!out.writes());
        write_everything(&out).unwrap();
        assert!(!silent_dir.exists());
        // Not even into an existing directory.
        let dir = RunDir::detached(tmp.path());
        write_everything(&Output::new(&dir, Role::of_rank(3))).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        // Rank 0 writes everything.
        let written = tmp.path().join("written");
        let dir = RunDir::fresh(&written).unwrap();
        write_everything(&Output::new(&dir, Role::of_rank(0))).unwrap();
        for f in [
            STATE_FILE,
            MODEL_FILE,
            BEST_FILE,
            "metrics.jsonl",
            "metrics-steps.jsonl",
        ] {
            assert!(written.join(f).is_file(), "{f} missing");
        }
    }
}
