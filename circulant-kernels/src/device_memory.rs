//! Keeping freed GPU memory in the process, for training and benchmark loops.
//!
//! candle allocates device memory from the CUDA driver's stream-ordered pool, whose default
//! is to hand freed memory back to the driver at every synchronisation. A training loop
//! synchronises every step (to read its loss), so each step maps its buffers again: on an
//! H200 that doubles the circulant layer's forward time at d = 2^16..2^20, batch 1024
//! (docs/BENCHMARKS.md). [`keep_freed_device_memory`] keeps the memory in the pool.

use candle_core::{Device, Result};

/// Environment variable that, set to `0`, leaves the driver's default pool setting alone.
pub const ENV: &str = "CIRCULANT_KEEP_DEVICE_MEMORY";

/// Makes `device`'s memory pool keep freed memory for reuse (release threshold "never").
/// Returns whether a setting was made: `false` on the CPU, on Metal, without the `cuda`
/// feature, and when [`ENV`] is `0`. The cost is memory: the pool holds on to the process's
/// peak use.
pub fn keep_freed_device_memory(device: &Device) -> Result<bool> {
    if std::env::var(ENV).is_ok_and(|v| v.trim() == "0") {
        return Ok(false);
    }
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => kernels_cuda::keep_freed_memory(dev).map(|()| true),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nothing_to_set_on_the_cpu() {
        assert!(!super::keep_freed_device_memory(&candle_core::Device::Cpu).unwrap());
    }
}
