//! Max pooling (`max_pool.cu`): forward and backward of circulant-model's `max_pool2d` on f32,
//! one launch each.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use crate::shapes;
use crate::storage::check_len;

/// The op named in errors.
const OP: &str = "max pool (cuda)";

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/max_pool.ptx"));
/// Name under which candle caches the loaded module, per device.
const MODULE: &str = "kernels_cuda_max_pool";

/// Sizes of a pooling call: `planes` (N·C) planes of `h x w`, a `k x k` window, stride `stride`,
/// no padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
}

impl PoolDims {
    /// Output height and width (rounded down), after checking the window fits.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let Self {
            h, w, k, stride, ..
        } = *self;
        if k == 0 || stride == 0 || h < k || w < k {
            return Err(Error::Msg(format!("max pool (cuda): invalid sizes {self:?}")).bt());
        }
        Ok(((h - k) / stride + 1, (w - k) / stride + 1))
    }

    fn input_len(&self) -> usize {
        self.planes * self.h * self.w
    }
}

/// `(planes, oh, ow)`: each window's maximum (with `relu`, floored at 0), from contiguous `x`
/// `(planes, h, w)`.
pub fn max_pool_forward(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    d: PoolDims,
    relu: bool,
) -> Result<CudaSlice<f32>> {
    let (oh, ow) = d.out_hw()?;
    check_len(OP, "x", x.len(), d.input_len(), &d)?;
    let len = d.planes * oh * ow;
    // SAFETY: every element is written by the kernel below.
    let mut y = unsafe { dev.alloc::<f32>(len)? };
    if len == 0 {
        return Ok(y);
    }
    let func = dev.get_or_load_custom_func("max_pool_fwd_f32", MODULE, PTX)?;
    let relu = i32::from(relu);
    let mut builder = func.builder();
    builder
        .arg(x)
        .arg(&mut y)
        .arg(&d.planes)
        .arg(&d.h)
        .arg(&d.w)
        .arg(&oh)
        .arg(&ow)
        .arg(&d.k)
        .arg(&d.stride)
        .arg(&relu);
    // SAFETY: the arguments match max_pool_fwd_f32; the lengths were checked above.
    unsafe { builder.launch(shapes::elementwise(len).config()) }.w()?;
    Ok(y)
}

/// `dx (planes, h, w)`: each output's gradient `gy (planes, oh, ow)` added to its window's
/// first maximum in `x` (with `relu`, only where that maximum is > 0); the same sums in the
/// same order as the CPU op.
pub fn max_pool_backward(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    gy: &CudaView<'_, f32>,
    d: PoolDims,
    relu: bool,
) -> Result<CudaSlice<f32>> {
    let (oh, ow) = d.out_hw()?;
    check_len(OP, "x", x.len(), d.input_len(), &d)?;
    check_len(OP, "grad", gy.len(), d.planes * oh * ow, &d)?;
    let len = d.input_len();
    // SAFETY: every element is written by the kernel below.
    let mut dx = unsafe { dev.alloc::<f32>(len)? };
    if len == 0 {
        return Ok(dx);
    }
    let func = dev.get_or_load_custom_func("max_pool_bwd_f32", MODULE, PTX)?;
    let relu = i32::from(relu);
    let mut builder = func.builder();
    builder
        .arg(x)
        .arg(gy)
        .arg(&mut dx)
        .arg(&d.planes)
        .arg(&d.h)
        .arg(&d.w)
        .arg(&oh)
        .arg(&ow)
        .arg(&d.k)
        .arg(&d.stride)
        .arg(&relu);
    // SAFETY: the arguments match max_pool_bwd_f32; the lengths were checked above.
    unsafe { builder.launch(shapes::elementwise(len).config()) }.w()?;
    Ok(dx)
}
