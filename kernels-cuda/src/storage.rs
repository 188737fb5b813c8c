//! Access to the data of candle's CUDA storages, as the custom ops of the crates above get them.

use candle_core::cuda::cudarc::driver::CudaView;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, Layout, Result};

use crate::dtype::FftFloat;

/// The contiguous `T` data that layout `l` describes in `s`; `what` names the tensor in the
/// error for a non-contiguous layout.
pub fn contiguous_view<'a, T: FftFloat>(
    what: &str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what}: expected a contiguous tensor, got layout {l:?}")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}
