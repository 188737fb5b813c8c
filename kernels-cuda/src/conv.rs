//! 2-D convolutions through cuDNN (feature `cudnn`): the forward pass, the input gradient and
//! the weight gradient of an NCHW convolution with a square kernel, on candle's stream, as
//! PyTorch runs them (`cudnnConvolutionForward`, `BackwardData`, `BackwardFilter`, the
//! algorithm from cuDNN's heuristics). f32 computes with plain FMA math (no TF32, as PyTorch
//! with `allow_tf32 = False`); bf16 and f16 on tensor cores, accumulating in f32. The
//! descriptors and algorithms are made once per (device, thread, sizes, element type) and
//! cached; workspaces come from the stream's memory pool per call.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::cuda::{CudaDType, CudaDevice, DeviceId};
use candle_core::{Error, Result, WithDType};
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    CudnnError, FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};

use crate::storage::check_len;

/// The op named in errors.
const OP: &str = "conv2d (cudnn)";

/// Sizes of a convolution: `n` images of `c_in x h x w`, `c_out` filters of `c_in x k x k`,
/// zero padding `padding` on every side, stride `stride`, no dilation or groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvDims {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub padding: usize,
    pub stride: usize,
}

impl ConvDims {
    /// Output height and width, after checking the sizes.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let Self {
            h,
            w,
            k,
            padding: p,
            stride: s,
            ..
        } = *self;
        if k == 0 || s == 0 || h + 2 * p < k || w + 2 * p < k {
            return Err(Error::Msg(format!("{OP}: invalid sizes {self:?}")).bt());
        }
        Ok(((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1))
    }

    fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }

    fn w_len(&self) -> usize {
        self.c_out * self.c_in * self.k * self.k
    }

    fn y_len(&self) -> Result<usize> {
        let (oh, ow) = self.out_hw()?;
        Ok(self.n * self.c_out * oh * ow)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// An element type cuDNN convolves in: f32, bf16 or f16 (accumulating in f32).
pub trait ConvFloat:
    sealed::Sealed + CudnnDataType + CudaDType + WithDType + DeviceRepr + ValidAsZeroBits + 'static
{
    /// The math the convolution descriptor allows.
    const MATH: cudnnMathType_t;
}

impl ConvFloat for f32 {
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_FMA_MATH;
}

impl ConvFloat for half::bf16 {
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
}

impl ConvFloat for half::f16 {
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
}

/// The cuDNN descriptors of one convolution.
struct Descriptors<T: ConvFloat> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

impl<T: ConvFloat> Descriptors<T> {
    fn forward(&self) -> ConvForward<'_, T, f32, T> {
        ConvForward {
            conv: &self.conv,
            x: &self.x,
            w: &self.w,
            y: &self.y,
        }
    }

    fn input_grad(&self) -> ConvBackwardData<'_, T, f32, T> {
        ConvBackwardData {
            conv: &self.conv,
            dx: &self.x,
            w: &self.w,
            dy: &self.y,
        }
    }

    fn weight_grad(&self) -> ConvBackwardFilter<'_, T, f32, T> {
        ConvBackwardFilter {
            conv: &self.conv,
            x: &self.x,
            dw: &self.w,
            dy: &self.y,
        }
    }
}

/// The descriptors of one convolution and the algorithm (with its workspace size in bytes)
/// of each pass, chosen when the pass first runs: an inference-only convolution never asks
/// for (or fails on) the gradients' algorithms.
struct Plan<T: ConvFloat> {
    desc: Descriptors<T>,
    dims: ConvDims,
    fwd: Cell<Option<(cudnnConvolutionFwdAlgo_t, usize)>>,
    bwd_data: Cell<Option<(cudnnConvolutionBwdDataAlgo_t, usize)>>,
    bwd_filter: Cell<Option<(cudnnConvolutionBwdFilterAlgo_t, usize)>>,
}

/// The value in `cell`, or `pick()`'s, then kept there.
fn chosen<A: Copy>(
    cell: &Cell<Option<(A, usize)>>,
    pick: impl FnOnce() -> std::result::Result<(A, usize), (&'static str, CudnnError)>,
    d: ConvDims,
) -> Result<(A, usize)> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = pick().map_err(|(what, e)| wrap(what, d, e))?;
    cell.set(Some(v));
    Ok(v)
}

type PlanKey = (DeviceId, TypeId, ConvDims);

// cuDNN handles are neither Send nor Sync: one per (thread, device), as candle keeps its own.
thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static PLANS: RefCell<HashMap<PlanKey, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

fn wrap(what: &str, d: ConvDims, e: CudnnError) -> Error {
    Error::Msg(format!("{OP}: {what} for {d:?}: {e:?}")).bt()
}

fn int(v: usize, d: ConvDims) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Msg(format!("{OP}: {v} too large in {d:?}")).bt())
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())
            .map_err(|e| Error::Msg(format!("{OP}: creating a handle: {e:?}")).bt())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

impl<T: ConvFloat> Plan<T> {
    fn new(dev: &CudaDevice, d: ConvDims) -> Result<Self> {
        let cudnn = handle(dev)?;
        let (oh, ow) = d.out_hw()?;
        let (p, s) = (int(d.padding, d)?, int(d.stride, d)?);
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let err = |what, e| wrap(what, d, e);
        let mut conv = cudnn
            .create_conv2d::<f32>(
                [p, p],
                [s, s],
                [1, 1],
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(|e| err("convolution descriptor", e))?;
        conv.set_math_type(T::MATH)
            .map_err(|e| err("math type", e))?;
        let dims = |a, b, c, e| -> Result<[i32; 4]> {
            Ok([int(a, d)?, int(b, d)?, int(c, d)?, int(e, d)?])
        };
        let x = cudnn
            .create_4d_tensor::<T>(nchw, dims(d.n, d.c_in, d.h, d.w)?)
            .map_err(|e| err("input descriptor", e))?;
        let w = cudnn
            .create_4d_filter::<T>(nchw, dims(d.c_out, d.c_in, d.k, d.k)?)
            .map_err(|e| err("filter descriptor", e))?;
        let y = cudnn
            .create_4d_tensor::<T>(nchw, dims(d.n, d.c_out, oh, ow)?)
            .map_err(|e| err("output descriptor", e))?;
        Ok(Self {
            desc: Descriptors { conv, x, w, y },
            dims: d,
            fwd: Cell::new(None),
            bwd_data: Cell::new(None),
            bwd_filter: Cell::new(None),
        })
    }

    fn forward_algo(&self) -> Result<(cudnnConvolutionFwdAlgo_t, usize)> {
        let pick = || {
            let op = self.desc.forward();
            let algo = op.pick_algorithm().map_err(|e| ("forward algorithm", e))?;
            let size = op.get_workspace_size(algo);
            Ok((algo, size.map_err(|e| ("forward workspace", e))?))
        };
        chosen(&self.fwd, pick, self.dims)
    }

    fn input_grad_algo(&self) -> Result<(cudnnConvolutionBwdDataAlgo_t, usize)> {
        let pick = || {
            let op = self.desc.input_grad();
            let algo = op
                .pick_algorithm()
                .map_err(|e| ("input-gradient algorithm", e))?;
            let size = op.get_workspace_size(algo);
            Ok((algo, size.map_err(|e| ("input-gradient workspace", e))?))
        };
        chosen(&self.bwd_data, pick, self.dims)
    }

    fn weight_grad_algo(&self) -> Result<(cudnnConvolutionBwdFilterAlgo_t, usize)> {
        let pick = || {
            let op = self.desc.weight_grad();
            let algo = op
                .pick_algorithm()
                .map_err(|e| ("weight-gradient algorithm", e))?;
            let size = op.get_workspace_size(algo);
            Ok((algo, size.map_err(|e| ("weight-gradient workspace", e))?))
        };
        chosen(&self.bwd_filter, pick, self.dims)
    }

    /// The cached plan of `d` on `dev` for this thread, made on first use.
    fn get(dev: &CudaDevice, d: ConvDims) -> Result<Rc<Self>> {
        let key = (dev.id(), TypeId::of::<T>(), d);
        if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
            return plan
                .downcast::<Self>()
                .map_err(|_| Error::Msg(format!("{OP}: plan cache type mismatch")).bt());
        }
        let plan = Rc::new(Self::new(dev, d)?);
        PLANS.with(|p| p.borrow_mut().insert(key, plan.clone()));
        Ok(plan)
    }
}

/// A workspace of `bytes` from the stream's pool (none for 0).
fn workspace(dev: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    // SAFETY: cuDNN uses the workspace as scratch; its contents are never read before written.
    Ok(if bytes == 0 {
        None
    } else {
        Some(unsafe { dev.alloc::<u8>(bytes)? })
    })
}

/// `y (n, c_out, oh, ow) = conv2d(x (n, c_in, h, w), w (c_out, c_in, k, k))`, all contiguous.
pub fn conv2d_forward<T: ConvFloat>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    d: ConvDims,
) -> Result<CudaSlice<T>> {
    let len = d.y_len()?;
    check_len(OP, "x", x.len(), d.x_len(), &d)?;
    check_len(OP, "w", w.len(), d.w_len(), &d)?;
    if len == 0 || d.x_len() == 0 {
        return dev.alloc_zeros::<T>(len);
    }
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut y = unsafe { dev.alloc::<T>(len)? };
    let plan = Plan::<T>::get(dev, d)?;
    let (algo, bytes) = plan.forward_algo()?;
    let mut ws = workspace(dev, bytes)?;
    let op = plan.desc.forward();
    // SAFETY: the buffers match the plan's descriptors (lengths checked above).
    unsafe { op.launch(algo, ws.as_mut(), (one(), zero()), x, w, &mut y) }
        .map_err(|e| wrap("forward", d, e))?;
    Ok(y)
}

/// `dx (n, c_in, h, w)`: the input gradient from the output gradient `dy` and the weight `w`.
pub fn conv2d_backward_data<T: ConvFloat>(
    dev: &CudaDevice,
    dy: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    d: ConvDims,
) -> Result<CudaSlice<T>> {
    check_len(OP, "grad", dy.len(), d.y_len()?, &d)?;
    check_len(OP, "w", w.len(), d.w_len(), &d)?;
    let len = d.x_len();
    if len == 0 || d.w_len() == 0 {
        return dev.alloc_zeros::<T>(len);
    }
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut dx = unsafe { dev.alloc::<T>(len)? };
    let plan = Plan::<T>::get(dev, d)?;
    let (algo, bytes) = plan.input_grad_algo()?;
    let mut ws = workspace(dev, bytes)?;
    let op = plan.desc.input_grad();
    // SAFETY: the buffers match the plan's descriptors (lengths checked above).
    unsafe { op.launch(algo, ws.as_mut(), (one(), zero()), &mut dx, w, dy) }
        .map_err(|e| wrap("input gradient", d, e))?;
    Ok(dx)
}

/// `dw (c_out, c_in, k, k)`: the weight gradient from the input `x` and the output gradient
/// `dy`, summed over the images.
pub fn conv2d_backward_filter<T: ConvFloat>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
    d: ConvDims,
) -> Result<CudaSlice<T>> {
    check_len(OP, "x", x.len(), d.x_len(), &d)?;
    check_len(OP, "grad", dy.len(), d.y_len()?, &d)?;
    let len = d.w_len();
    if len == 0 || d.x_len() == 0 {
        return dev.alloc_zeros::<T>(len);
    }
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut dw = unsafe { dev.alloc::<T>(len)? };
    let plan = Plan::<T>::get(dev, d)?;
    let (algo, bytes) = plan.weight_grad_algo()?;
    let mut ws = workspace(dev, bytes)?;
    let op = plan.desc.weight_grad();
    // SAFETY: the buffers match the plan's descriptors (lengths checked above).
    unsafe { op.launch(algo, ws.as_mut(), (one(), zero()), x, &mut dw, dy) }
        .map_err(|e| wrap("weight gradient", d, e))?;
    Ok(dw)
}

fn one<T: WithDType>() -> T {
    T::from_f64(1.0)
}

fn zero<T: WithDType>() -> T {
    T::from_f64(0.0)
}
