//! GPU path of the circulant projection: batched real FFTs with cuFFT (through cudarc) on
//! candle's CUDA stream, and small CUDA kernels (compiled to PTX at build time) for the
//! per-frequency contractions of the forward pass and of both gradients.
//!
//! Everything is behind the `cuda` feature; without it the crate is empty and builds with no
//! CUDA toolkit. cuFFT plans are created once per (device, thread, length, batch) and cached.

#[cfg(feature = "cuda")]
mod circulant;
#[cfg(feature = "cuda")]
mod dtype;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod plan;
#[cfg(feature = "cuda")]
mod pool;

#[cfg(feature = "cuda")]
pub use circulant::{backward, forward, forward_keep, BlockDims, Spectra};
#[cfg(feature = "cuda")]
pub use dtype::FftFloat;
#[cfg(feature = "cuda")]
pub use pool::keep_freed_memory;
