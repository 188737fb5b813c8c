//! Workspace-level tests, in `tests/` (this library holds only the README doc-tests).
//!
//! - `end_to_end.rs`, on the CPU: models built, trained with candle-nn's SGD, saved, loaded back
//!   and classified through the crates' public APIs only.
//! - `cuda_training.rs` (feature `cuda`): one training step on the GPU against the same step on
//!   the CPU; skips without a usable device unless `CIRCULANT_REQUIRE_CUDA=1`.
//! - `cuda_layers.rs` (feature `cuda`): the max pool and train-mode batch norm kernels against
//!   the CPU ops (values and gradients); skips and fails as `cuda_training.rs`.
//! - the Rust code blocks of the README, compiled and run as doc-tests.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
