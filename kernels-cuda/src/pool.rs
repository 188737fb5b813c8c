//! The driver's memory pool that candle's stream-ordered allocations come from.

use candle_core::cuda::CudaDevice;
use candle_core::{Error, Result};
use cudarc::driver::sys;

/// Sets the release threshold of `dev`'s default memory pool to "never": memory freed by one
/// training step stays in the pool for the next instead of being handed back to the driver
/// at every synchronisation (the default threshold is 0). Costs memory: the pool keeps up to
/// the peak of what the process used.
pub fn keep_freed_memory(dev: &CudaDevice) -> Result<()> {
    let stream = dev.cuda_stream();
    let cu_device = stream.context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: plain driver calls on a valid device with valid out-pointers.
    let status = unsafe {
        match sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device) {
            sys::CUresult::CUDA_SUCCESS => sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            ),
            failed => failed,
        }
    };
    match status {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        failed => Err(Error::Msg(format!(
            "cuda: setting the release threshold of device {}'s memory pool failed: {failed:?}",
            cu_device
        ))
        .bt()),
    }
}
