//! Dropout masks (`dropout.cu`) drawn on the device, as circulant-model draws them on the CPU.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::shapes;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));
/// Name under which candle caches the loaded module, per device.
const MODULE: &str = "kernels_cuda_dropout";

/// `len` mask values: element `i` is `scale` when the high 32 bits of SplitMix64's output `i`
/// from `seed` are `>= threshold`, else 0. One launch, no host data.
pub fn dropout_mask(
    dev: &CudaDevice,
    len: usize,
    seed: u64,
    threshold: u32,
    scale: f32,
) -> Result<CudaSlice<f32>> {
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { dev.alloc::<f32>(len)? };
    if len == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func("dropout_mask_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(&mut out)
        .arg(&len)
        .arg(&seed)
        .arg(&threshold)
        .arg(&scale);
    // SAFETY: the arguments match dropout_mask_f32; `out` holds `len` elements.
    unsafe { builder.launch(shapes::elementwise(len).config()) }.w()?;
    Ok(out)
}
