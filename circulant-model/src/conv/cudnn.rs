//! Convolutions of CUDA tensors through cuDNN (feature `cudnn`): kernels-cuda's forward pass
//! as a candle op whose backward pass is cuDNN's input and weight gradients, each an op of its
//! own. candle's `conv2d` (with its `cudnn` feature) runs the forward pass on cuDNN too, but
//! allows TF32 for f32 and takes the gradients as other convolutions (see vendor/README.md).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use kernels_cuda::{contiguous_view, ConvDims, ConvFloat};

/// Whether `conv2d(x, w)` runs here: CUDA tensors of one element type, f32, bf16 or f16.
pub(super) fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cuda()
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// `conv2d(x, w)` (no bias) through cuDNN, with its gradients.
pub(super) fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv2d::Forward { padding, stride })
}

/// One cuDNN call, as a candle op on two contiguous tensors of one element type.
enum Conv2d {
    /// `(x (N, c_in, H, W), w (c_out, c_in, k, k))` -> `y`.
    Forward { padding: usize, stride: usize },
    /// `(dy, w)` -> `dx`.
    InputGrad(ConvDims),
    /// `(x, dy)` -> `dw`.
    WeightGrad(ConvDims),
}

fn dims(x: &[usize], w: &[usize], padding: usize, stride: usize) -> Result<ConvDims> {
    let (&[n, c_in, h, width], &[c_out, wc_in, kh, kw]) = (x, w) else {
        bail!("conv2d (cudnn): expected 4-d input and weight, got {x:?} and {w:?}")
    };
    if wc_in != c_in || kh != kw {
        bail!("conv2d (cudnn): weight {w:?} for input {x:?} (square kernels only)")
    }
    Ok(ConvDims {
        n,
        c_in,
        h,
        w: width,
        c_out,
        k: kh,
        padding,
        stride,
    })
}

impl Conv2d {
    /// Runs the call on the inputs' `T` data; the result and its shape.
    fn run<T: ConvFloat>(
        &self,
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let (a, b) = (
            contiguous_view::<T>(self.name(), s1, l1)?,
            contiguous_view::<T>(self.name(), s2, l2)?,
        );
        let (out, shape) = match *self {
            Self::Forward { padding, stride } => {
                let d = dims(l1.dims(), l2.dims(), padding, stride)?;
                let (oh, ow) = d.out_hw()?;
                let y = kernels_cuda::conv2d_forward(dev, &a, &b, d)?;
                (y, (d.n, d.c_out, oh, ow))
            }
            Self::InputGrad(d) => (
                kernels_cuda::conv2d_backward_data(dev, &a, &b, d)?,
                (d.n, d.c_in, d.h, d.w),
            ),
            Self::WeightGrad(d) => (
                kernels_cuda::conv2d_backward_filter(dev, &a, &b, d)?,
                (d.c_out, d.c_in, d.k, d.k),
            ),
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape.into()))
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        match self {
            Self::Forward { .. } => "conv2d-cudnn",
            Self::InputGrad(_) => "conv2d-cudnn-input-grad",
            Self::WeightGrad(_) => "conv2d-cudnn-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op, called on CPU tensors", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (a, b) = ((s1, l1), (s2, l2));
        match s1.dtype() {
            DType::F32 => self.run::<f32>(a, b),
            DType::BF16 => self.run::<bf16>(a, b),
            DType::F16 => self.run::<f16>(a, b),
            dt => bail!("{}: no cuDNN convolution in {dt:?}", self.name()),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Self::Forward { padding, stride } = *self else {
            bail!("{}: no backward pass", self.name())
        };
        let d = dims(x.dims(), w.dims(), padding, stride)?;
        let grad = grad.contiguous()?;
        // Plain data (the images) needs no input gradient...
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &Self::InputGrad(d))?)
        } else {
            None
        };
        // Nor does a frozen (untracked) weight.
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &Self::WeightGrad(d))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}
