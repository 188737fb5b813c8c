//! Dispatch to the GPU custom ops (max pool, batch norm; feature `cuda`) and the access to
//! candle's CUDA storages they share.

use candle_core::{DType, Tensor};

/// Whether a tensor goes through the GPU custom ops (f32 on a CUDA device, built with the
/// `cuda` feature); other CUDA tensors (bf16 activations) use candle's ops.
pub(crate) fn use_cuda_op(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && t.dtype() == DType::F32
}

#[cfg(feature = "cuda")]
pub(crate) use device::{f32_view, with_f32_view};

#[cfg(feature = "cuda")]
mod device {
    use candle_core::cuda::cudarc::driver::CudaView;
    use candle_core::cuda::CudaStorage;
    use candle_core::{bail, Layout, Result, Storage, Tensor};

    /// The contiguous f32 data of a custom-op input.
    pub(crate) fn f32_view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
        kernels_cuda::contiguous_view("custom op (cuda)", s, l)
    }

    /// Runs `f` on the contiguous f32 data of a CUDA tensor an op holds (not one of its inputs),
    /// with the tensor's storage locked for reading meanwhile.
    pub(crate) fn with_f32_view<R>(
        t: &Tensor,
        f: impl FnOnce(&CudaView<'_, f32>) -> Result<R>,
    ) -> Result<R> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            bail!(
                "custom op (cuda): expected a CUDA tensor, got one on {:?}",
                t.device()
            )
        };
        f(&f32_view(s, layout)?)
    }
}
