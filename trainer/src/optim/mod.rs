//! Optimizers with savable state, and learning-rate schedules.

pub mod adamw;
mod fused;
pub mod schedule;
pub mod sgd;

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub use adamw::AdamW;
pub use schedule::Schedule;
pub use sgd::Sgd;

/// A first-order optimizer whose complete state can be saved and restored, so that a resumed
/// run continues bit for bit.
pub trait Optimizer {
    /// Applies one update with learning rate `lr`. Variables without a gradient are skipped.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;
    /// The state tensors, named `<kind>.<param>` (e.g. `momentum.fc1.weight`).
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores the state saved by [`Optimizer::state`] after `steps` updates.
    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()>;
}

/// Zero buffers shaped like each parameter.
fn zeros_like(params: &[(String, Var)]) -> Result<Vec<Tensor>> {
    Ok(params
        .iter()
        .map(|(_, v)| v.as_tensor().zeros_like())
        .collect::<candle_core::Result<_>>()?)
}

/// Takes `<prefix>.<param>` from `tensors`, checking its shape against the parameter.
fn restore(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    name: &str,
    like: &Var,
) -> Result<Tensor> {
    let key = format!("{prefix}.{name}");
    let Some(t) = tensors.get(&key) else {
        bail!("the optimizer state has no tensor {key}: the run was saved by another optimizer or network");
    };
    if t.dims() != like.dims() {
        bail!(
            "optimizer tensor {key} has shape {:?} but the parameter has {:?}",
            t.dims(),
            like.dims()
        );
    }
    Ok(t.to_device(like.device())?.to_dtype(like.dtype())?)
}
