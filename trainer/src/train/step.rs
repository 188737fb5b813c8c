//! One optimizer step: the training computation shared by `trainer train` and `trainer bench`.

use anyhow::Result;
use candle_core::Tensor;
use circulant_model::{Mode, Model};

use crate::cli::OptimizerKind;
use crate::data::{derive_seed, Shape};
use crate::eval;
use crate::optim::{AdamW, Optimizer, Schedule, Sgd};
use crate::train::settings::TrainConfig;

/// A model with its optimizer and learning-rate schedule.
pub struct Trainer {
    pub model: Model,
    pub optimizer: Box<dyn Optimizer>,
    schedule: Schedule,
    seed: u64,
    shape: Shape,
}

/// What one step computed.
pub struct StepResult {
    /// Mean cross-entropy of the batch; when it is not finite the weights were not updated.
    pub loss: f64,
    /// Correct top-1 predictions in the batch.
    pub correct: u64,
    /// Learning rate of the step.
    pub lr: f64,
}

impl Trainer {
    /// Wraps `model` with the optimizer and schedule of `config`, for epochs of
    /// `steps_per_epoch` steps.
    pub fn new(model: Model, config: &TrainConfig, steps_per_epoch: u64) -> Result<Self> {
        let a = &config.adjustable;
        let optimizer: Box<dyn Optimizer> = match config.run.optimizer {
            OptimizerKind::Sgd => Box::new(Sgd::new(
                model.trainable(),
                a.momentum,
                a.nesterov,
                a.weight_decay,
            )?),
            OptimizerKind::Adamw => Box::new(AdamW::new(model.trainable(), a.weight_decay)?),
        };
        let schedule = Schedule {
            kind: a.schedule,
            base_lr: a.lr,
            warmup: a.warmup,
            total_steps: a.epochs as u64 * steps_per_epoch,
            step_size: a.step_epochs as u64 * steps_per_epoch,
            gamma: a.gamma,
        };
        let shape = Shape::of(&model.config().input);
        Ok(Trainer {
            model,
            optimizer,
            schedule,
            seed: config.run.seed,
            shape,
        })
    }

    /// Learning rate at `global_step`.
    pub fn lr(&self, global_step: u64) -> f64 {
        self.schedule.lr(global_step)
    }

    /// Step number `global_step` (0-based) on a batch of normalised CHW images: forward,
    /// cross-entropy, backward, optimizer update.
    pub fn step(
        &mut self,
        images: Vec<f32>,
        labels: &[u32],
        global_step: u64,
    ) -> Result<StepResult> {
        let n = labels.len();
        let Shape { c, h, w } = self.shape;
        let device = self.model.device().clone();
        let x = Tensor::from_vec(images, (n, c, h, w), &device)?;
        let y = Tensor::from_slice(labels, n, &device)?;
        let lr = self.lr(global_step);
        let dropout_seed = derive_seed(self.seed, &[0xD0, global_step]);
        let logits = self.model.forward(&x, Mode::Train { dropout_seed })?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Ok(StepResult {
                loss: loss_value,
                correct: 0,
                lr,
            });
        }
        let grads = loss.backward()?;
        self.optimizer.step(&grads, lr)?;
        let (_, correct, _) = eval::score(&eval::host_logits(&logits)?, labels)?;
        Ok(StepResult {
            loss: loss_value,
            correct,
            lr,
        })
    }
}
