//! When a run saves, and what: the train state (everything a resume needs) and
//! `model.safetensors` at every epoch end, every `--save-every` steps inside an epoch, at a
//! `--max-steps` stop and when training ends; `best.safetensors` when validation improves.
//! The run checks the training statistics and the weights finite before it calls
//! [`Checkpointer::save`] (`Run::save`): a diverged run never overwrites its last good checkpoint.

use anyhow::Result;

use super::output::Output;
use super::step::Trainer;
use crate::checkpoint::{TrainState, BEST_FILE, MODEL_FILE};

/// The checkpoints of a run: their cadence, and the step of the last one written.
pub struct Checkpointer<'a> {
    out: Output<'a>,
    save_every: Option<u64>,
    last_saved: Option<u64>,
}

impl<'a> Checkpointer<'a> {
    /// Checkpoints written through `out`, every `save_every` steps inside an epoch (none for
    /// `None` or 0); `resumed_at`: the step of the checkpoint a resumed run starts from.
    pub fn new(out: Output<'a>, save_every: Option<u64>, resumed_at: Option<u64>) -> Self {
        Checkpointer {
            out,
            save_every: save_every.filter(|&k| k > 0),
            last_saved: resumed_at,
        }
    }

    /// Whether a periodic checkpoint falls on `step` (a step number counted from 1).
    pub fn periodic_due(&self, step: u64) -> bool {
        self.save_every.is_some_and(|k| step.is_multiple_of(k))
    }

    /// The step of the last checkpoint on disk (written by this process or the one resumed).
    pub fn last_saved(&self) -> Option<u64> {
        self.last_saved
    }

    /// Writes the train state, then `model.safetensors` (each atomically), at
    /// `state.global_step`.
    pub fn save(&mut self, state: &TrainState, trainer: &Trainer, order: &[u32]) -> Result<()> {
        self.save_state(state, trainer, order)?;
        self.out
            .model(MODEL_FILE, &trainer.model, state.class_names.clone())?;
        self.last_saved = Some(state.global_step);
        Ok(())
    }

    /// Writes the train state alone (the weights on disk are already these).
    pub fn save_state(&self, state: &TrainState, trainer: &Trainer, order: &[u32]) -> Result<()> {
        self.out
            .state(state, &trainer.model, || trainer.optimizer.state(), order)
    }

    /// Writes `best.safetensors`: the weights of the best validation epoch so far.
    pub fn save_best(&self, state: &TrainState, trainer: &Trainer) -> Result<()> {
        self.out
            .model(BEST_FILE, &trainer.model, state.class_names.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Role;
    use crate::train::run_dir::RunDir;

    #[test]
    fn periodic_checkpoints_fall_on_multiples_of_save_every() {
        let dir = RunDir::detached(std::path::Path::new("unused"));
        let out = Output::new(&dir, Role::of_rank(0));
        let every3 = Checkpointer::new(out, Some(3), Some(7));
        let due: Vec<u64> = (1..=10).filter(|&s| every3.periodic_due(s)).collect();
        assert_eq!(due, [3, 6, 9]);
        assert_eq!(every3.last_saved(), Some(7));
        for never in [None, Some(0)] {
            let c = Checkpointer::new(out, never, None);
            assert!(!(1..=10).any(|s| c.periodic_due(s)));
            assert_eq!(c.last_saved(), None);
        }
    }
}
