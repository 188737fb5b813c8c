//! Error type of the crate.

use std::path::PathBuf;

/// Errors raised while building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from a candle tensor operation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The safetensors file is malformed.
    #[error("invalid safetensors file {path}: {source}")]
    SafeTensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// The checkpoint has no `config` entry in its `__metadata__`.
    #[error("checkpoint {path} has no model config (missing __metadata__ key \"config\")")]
    MissingConfig { path: PathBuf },

    /// The config JSON could not be parsed.
    #[error("invalid model config JSON: {0}")]
    ConfigJson(#[from] serde_json::Error),

    /// A network name that is not one of `mnist-cnn`, `mlp`, `cifar-cnn`, `alexnet`.
    #[error("unknown network `{0}` (expected one of: mnist-cnn, mlp, cifar-cnn, alexnet)")]
    UnknownNetwork(String),

    /// A head string that is not `dense`, `circulant` or `block:<b>` with b >= 1.
    #[error("invalid head `{0}` (expected `dense`, `circulant` or `block:<b>` with b >= 1)")]
    InvalidHead(String),

    /// The model configuration is inconsistent.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),

    /// A tensor the model needs is absent from the checkpoint.
    #[error("checkpoint is missing tensor `{name}`")]
    MissingTensor { name: String },

    /// A checkpoint tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?} in the checkpoint, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A checkpoint tensor is not stored as f32, f16 or bf16.
    #[error("tensor `{name}` has dtype {found}, expected F32, F16 or BF16")]
    DTypeMismatch { name: String, found: String },

    /// A checkpoint dtype other than F32, F16 or BF16 was asked for.
    #[error("unsupported checkpoint dtype {0:?} (expected F32, F16 or BF16)")]
    UnsupportedDType(candle_core::DType),

    /// A `__metadata__` entry of the checkpoint (other than `config`) is malformed.
    #[error("invalid checkpoint metadata `{key}`: {reason}")]
    InvalidMetadata { key: String, reason: String },

    /// The checkpoint holds a tensor the model does not use.
    #[error("checkpoint has unexpected tensor `{name}` (not part of this model)")]
    UnexpectedTensor { name: String },

    /// The input given to a layer or network has the wrong shape.
    #[error("bad input shape {found:?}: expected {expected}")]
    InputShape { found: Vec<usize>, expected: String },

    /// An image could not be turned into model input.
    #[error("image {index}: {reason}")]
    Image { index: usize, reason: String },

    /// A `hf://owner/repo[/file][@rev]` reference could not be parsed.
    #[error("invalid hub reference `{input}`: {reason}")]
    HubRef { input: String, reason: String },

    /// Fetching a checkpoint from the Hugging Face hub failed.
    #[error("hub: {0}")]
    Hub(String),
}

/// Result alias using [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
