//! Train-mode batch norm on f32 CUDA tensors through kernels-cuda: the batch statistics are a
//! `(2, C)` device tensor `[mean; biased var]` that the normalisation and backward ops hold
//! and read on the device, so a training step never waits for the host.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, Layout, Shape, Tensor, Var};
use kernels_cuda::BnDims;

use super::{geometry, unpack_grads, BnStats};
use crate::cuda::{f32_view, with_f32_view};
use crate::error::Result;

fn dims(l: &Layout) -> candle_core::Result<BnDims> {
    let (n, c, hw) = geometry(l)?;
    Ok(BnDims { n, c, hw })
}

/// [`BnStats`] on the GPU: the `(2, C)` statistics of `x`, left on the device.
pub(super) fn stats(s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
    let d = dims(l)?;
    let dev = s.device();
    let stats = kernels_cuda::batch_norm_stats(dev, &f32_view(s, l)?, d)?;
    Ok((
        CudaStorage::wrap_cuda_slice(stats, dev.clone()),
        (2, d.c).into(),
    ))
}

/// `(y, batch mean, biased var)` of the layer with `weight` and `bias` on `x`, as the CPU path
/// (statistics op, then the normalisation with a backward), every value on the device.
pub(super) fn train(
    x: &Tensor,
    weight: &Var,
    bias: &Var,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&BnStats)?;
    let op = BnTrainDevice {
        eps,
        stats: stats.clone(),
    };
    let y = x.apply_op3(
        &weight.as_tensor().contiguous()?,
        &bias.as_tensor().contiguous()?,
        op,
    )?;
    Ok((y, stats.get(0)?, stats.get(1)?))
}

/// `(x, weight, bias) -> y` normalised with the device statistics `stats` (from [`BnStats`]).
struct BnTrainDevice {
    eps: f64,
    stats: Tensor,
}

impl CustomOp3 for BnTrainDevice {
    fn name(&self) -> &'static str {
        "batch-norm-train-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let (x, gamma, beta) = (f32_view(s1, l1)?, f32_view(s2, l2)?, f32_view(s3, l3)?);
        let y = with_f32_view(&self.stats, |stats| {
            kernels_cuda::batch_norm_forward(dev, &x, stats, &gamma, &beta, dims(l1)?, self.eps)
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = BnBwdDevice {
            eps: self.eps,
            stats: self.stats.clone(),
        };
        let packed = x.detach().contiguous()?.apply_op3_no_bwd(
            &grad.detach().contiguous()?,
            &gamma.detach().contiguous()?,
            &op,
        )?;
        unpack_grads(&packed, x, gamma.elem_count())
    }
}

/// `(x, dy, weight) -> [dx, dweight, dbias]` packed in one vector, with the device statistics
/// `stats` of the forward pass.
struct BnBwdDevice {
    eps: f64,
    stats: Tensor,
}

impl CustomOp3 for BnBwdDevice {
    fn name(&self) -> &'static str {
        "batch-norm-train-bwd-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if l1.dims() != l2.dims() {
            bail!("batch norm backward: {:?} vs {:?}", l1.dims(), l2.dims())
        }
        let dev = s1.device();
        let (x, dy, gamma) = (f32_view(s1, l1)?, f32_view(s2, l2)?, f32_view(s3, l3)?);
        let packed = with_f32_view(&self.stats, |stats| {
            kernels_cuda::batch_norm_backward(dev, &x, &dy, stats, &gamma, dims(l1)?, self.eps)
        })?;
        let len = packed.len();
        Ok((
            CudaStorage::wrap_cuda_slice(packed, dev.clone()),
            len.into(),
        ))
    }
}
