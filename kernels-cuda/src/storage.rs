//! Access to the data of candle's CUDA storages, as the custom ops of the crates above get them,
//! and tensors made from device buffers.

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, Error, Layout, Result, Shape, Storage, Tensor};

/// The contiguous `T` data that layout `l` describes in `s`; `what` names the tensor in the
/// error for a non-contiguous layout.
pub fn contiguous_view<'a, T: CudaDType>(
    what: &str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what}: expected a contiguous tensor, got layout {l:?}")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// A contiguous tensor of `shape` on `dev` owning `slice` (which holds `shape`'s elements), with
/// no autograd history.
pub fn tensor_from_slice<T: CudaDType>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// An error unless `got == want`: `op`'s `what` has `got` elements where the sizes `d` need
/// `want`.
pub(crate) fn check_len(
    op: &str,
    what: &str,
    got: usize,
    want: usize,
    d: &impl std::fmt::Debug,
) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::Msg(format!(
        "{op}: {what} has {got} elements, expected {want} for {d:?}"
    ))
    .bt())
}
