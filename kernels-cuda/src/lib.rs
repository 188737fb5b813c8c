//! GPU path of the circulant projection: batched real FFTs with cuFFT (through cudarc) on
//! candle's CUDA stream, and small CUDA kernels (compiled to PTX at build time) for the
//! per-frequency contractions of the forward pass and of both gradients. Also the kernels of
//! the other training layers that would otherwise be many candle ops: max pooling, train-mode
//! batch norm, dropout masks and the optimizers' in-place updates; host-to-device copies of
//! batches through page-locked staging buffers; and, with the `cudnn` feature, convolutions
//! through cuDNN.
//!
//! Everything but [`Dims`] (the sizes of a call, which the CPU path shares) and [`shapes`] (the
//! launches' shapes, which kernels-emu uses) is behind the `cuda` feature; without it the crate
//! builds with no CUDA toolkit. cuFFT plans are created once per
//! (device, thread, length, batch) and cached.

#[cfg(feature = "cuda")]
mod batch_norm;
#[cfg(any(feature = "cuda", test))]
mod chunks;
#[cfg(feature = "cuda")]
mod circulant;
#[cfg(feature = "cudnn")]
mod conv;
mod dims;
#[cfg(feature = "cuda")]
mod dropout;
#[cfg(feature = "cuda")]
mod dtype;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod max_pool;
#[cfg(feature = "cuda")]
mod optim;
#[cfg(feature = "cuda")]
mod plan;
#[cfg(feature = "cuda")]
mod pool;
pub mod shapes;
#[cfg(feature = "cuda")]
mod storage;
#[cfg(feature = "cuda")]
mod upload;

#[cfg(feature = "cuda")]
pub use batch_norm::{batch_norm_backward, batch_norm_forward, batch_norm_stats, BnDims};
#[cfg(feature = "cuda")]
pub use circulant::{backward, forward, forward_keep, Spectra};
#[cfg(feature = "cudnn")]
pub use conv::{conv2d_backward_data, conv2d_backward_filter, conv2d_forward, ConvDims, ConvFloat};
pub use dims::Dims;
#[cfg(feature = "cuda")]
pub use dropout::dropout_mask;
#[cfg(feature = "cuda")]
pub use dtype::FftFloat;
#[cfg(feature = "cuda")]
pub use max_pool::{max_pool_backward, max_pool_forward, PoolDims};
#[cfg(feature = "cuda")]
pub use optim::{update_in_place, SgdRule, Update};
#[cfg(feature = "cuda")]
pub use pool::keep_freed_memory;
#[cfg(feature = "cuda")]
pub use storage::{contiguous_view, tensor_from_slice};
#[cfg(feature = "cuda")]
pub use upload::PinnedUpload;
