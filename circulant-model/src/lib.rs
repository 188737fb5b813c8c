//! Layers and networks with circulant fully-connected heads.
//!
//! - [`CirculantLinear`]: the FC layer of "An exploration of parameter redundancy in deep networks
//!   with circulant projections" (paper mode) or its block-circulant (CirCNN) generalisation;
//!   [`DenseLinear`] is the baseline.
//! - [`Model`]: `mnist-cnn`, `mlp`, `cifar-cnn` and `alexnet`, each FC layer dense or circulant
//!   ([`Head`]), seeded initialisation, seeded dropout, safetensors checkpoints that carry their
//!   own config ([`checkpoint`]: f32 or half-size f16/bf16 files, class names).
//! - [`Classifier`]: inference from a checkpoint (file or, with the `hub` feature, the Hugging
//!   Face hub): probabilities, top-k, class names, and with the `image` feature preprocessing.

pub mod batch_norm;
mod builder;
pub mod checkpoint;
mod classifier;
pub mod config;
pub mod conv;
mod cpu;
mod cuda;
mod dense_op;
pub mod dropout;
pub mod error;
pub mod hub;
pub mod init;
pub mod linear;
mod model;
mod networks;
pub mod pool;
pub mod report;
#[cfg(test)]
mod test_util;

pub use batch_norm::BatchNorm2d;
pub use checkpoint::{CheckpointInfo, SaveOptions};
pub use classifier::Classifier;
pub use config::{Head, InputSpec, ModelConfig, Network};
pub use conv::Conv2dLayer;
pub use dropout::dropout;
pub use error::{Error, Result};
pub use hub::HubRef;
pub use linear::{CirculantLinear, CirculantMode, DenseLinear, FcLayer};
pub use model::{EvalCache, Mode, Model};
pub use pool::{max_pool2d, max_pool2d_relu};
pub use report::{LayerParams, ParamReport};
