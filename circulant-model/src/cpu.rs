//! Helpers for the CPU custom ops (fused batch norm, max pool, conv).

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// The contiguous f32 data of a custom-op input.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let Some((o1, o2)) = l.contiguous_offsets() else {
        candle_core::bail!("custom op: expected a contiguous input")
    };
    Ok(&s.as_slice::<f32>()?[o1..o2])
}

/// Whether a tensor can go through the CPU custom ops (f32 on the CPU).
pub(crate) fn use_cpu_op(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}
