//! The max pool op on f32 CUDA tensors: kernels-cuda's forward and backward kernels.

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, Layout, Result, Shape};
use kernels_cuda::PoolDims;

use crate::cuda::f32_view;

fn pool_dims(l: &Layout, k: usize, stride: usize) -> Result<PoolDims> {
    let (planes, g) = super::Geom::new(l.dims(), k, stride)?;
    Ok(PoolDims {
        planes,
        h: g.h,
        w: g.w,
        k,
        stride,
    })
}

/// `(N, C, OH, OW)` window maxima of `x` (first maximum; floored at 0 with `relu`).
pub(super) fn forward(
    s: &CudaStorage,
    l: &Layout,
    k: usize,
    stride: usize,
    relu: bool,
) -> Result<(CudaStorage, Shape)> {
    let d = pool_dims(l, k, stride)?;
    let (oh, ow) = d.out_hw()?;
    let dev = s.device();
    let y = kernels_cuda::max_pool_forward(dev, &f32_view(s, l)?, d, relu)?;
    let mut dims = l.dims().to_vec();
    dims[2] = oh;
    dims[3] = ow;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        Shape::from(dims),
    ))
}

/// `dx` (shaped as `x`) from `x` and the output gradient `gy`.
pub(super) fn backward(
    (x, lx): (&CudaStorage, &Layout),
    (gy, lg): (&CudaStorage, &Layout),
    k: usize,
    stride: usize,
    relu: bool,
) -> Result<(CudaStorage, Shape)> {
    let d = pool_dims(lx, k, stride)?;
    let dev = x.device();
    let dx = kernels_cuda::max_pool_backward(dev, &f32_view(x, lx)?, &f32_view(gy, lg)?, d, relu)?;
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        lx.shape().clone(),
    ))
}
