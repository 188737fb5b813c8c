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

/// One of a convolution's three cuDNN passes.
trait Pass {
    /// The pass's algorithm enum.
    type Algo: Copy;
    /// The pass named in errors.
    const NAME: &'static str;
    /// The algorithm that needs no workspace, taken when the heuristic's workspace cannot be
    /// allocated (as PyTorch falls back when memory is short).
    const FALLBACK: Self::Algo;
    /// cuDNN's heuristic choice.
    fn pick(&self) -> std::result::Result<Self::Algo, CudnnError>;
    /// The workspace `algo` needs, in bytes.
    fn workspace_size(&self, algo: Self::Algo) -> std::result::Result<usize, CudnnError>;
}

/// `Pass` for cudarc's descriptor view `$op` of one pass.
macro_rules! pass {
    ($op:ident, $algo:ident, $name:literal, $fallback:ident) => {
        impl<T: ConvFloat> Pass for $op<'_, T, f32, T> {
            type Algo = $algo;
            const NAME: &'static str = $name;
            const FALLBACK: $algo = $algo::$fallback;
            fn pick(&self) -> std::result::Result<$algo, CudnnError> {
                self.pick_algorithm()
            }
            fn workspace_size(&self, algo: $algo) -> std::result::Result<usize, CudnnError> {
                self.get_workspace_size(algo)
            }
        }
    };
}

pass!(
    ConvForward,
    cudnnConvolutionFwdAlgo_t,
    "forward",
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM
);
pass!(
    ConvBackwardData,
    cudnnConvolutionBwdDataAlgo_t,
    "input gradient",
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_0
);
pass!(
    ConvBackwardFilter,
    cudnnConvolutionBwdFilterAlgo_t,
    "weight gradient",
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
);

/// The descriptors of one convolution and the algorithm (with its workspace size in bytes)
/// of each pass, chosen when the pass first runs: an inference-only convolution never asks
/// for (or fails on) the gradients' algorithms.
struct Plan<T: ConvFloat> {
    desc: Descriptors<T>,
    fwd: Cell<Option<(cudnnConvolutionFwdAlgo_t, usize)>>,
    bwd_data: Cell<Option<(cudnnConvolutionBwdDataAlgo_t, usize)>>,
    bwd_filter: Cell<Option<(cudnnConvolutionBwdFilterAlgo_t, usize)>>,
}

/// The algorithm of `pass` (kept in `cell` once chosen) and its workspace from the stream's
/// pool. When that workspace cannot be allocated, the pass's [`Pass::FALLBACK`] (kept from
/// then on) with its own workspace, if it has one that fits.
fn algo_and_workspace<P: Pass>(
    dev: &CudaDevice,
    pass: &P,
    cell: &Cell<Option<(P::Algo, usize)>>,
    d: ConvDims,
) -> Result<(P::Algo, Option<CudaSlice<u8>>)> {
    let err = |what: &str, e| wrap(&format!("{} {what}", P::NAME), d, e);
    let (algo, bytes) = match cell.get() {
        Some(chosen) => chosen,
        None => {
            let algo = pass.pick().map_err(|e| err("algorithm", e))?;
            let bytes = pass.workspace_size(algo).map_err(|e| err("workspace", e))?;
            cell.set(Some((algo, bytes)));
            (algo, bytes)
        }
    };
    let short = match workspace(dev, bytes) {
        Ok(ws) => return Ok((algo, ws)),
        Err(e) => e,
    };
    let fallback = pass
        .workspace_size(P::FALLBACK)
        .ok()
        .filter(|&b| b < bytes)
        .and_then(|b| Some((b, workspace(dev, b).ok()?)));
    match fallback {
        Some((b, ws)) => {
            cell.set(Some((P::FALLBACK, b)));
            Ok((P::FALLBACK, ws))
        }
        None => Err(Error::Msg(format!(
            "{OP}: {} workspace of {bytes} bytes for {d:?}: {short}",
            P::NAME
        ))
        .bt()),
    }
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
            fwd: Cell::new(None),
            bwd_data: Cell::new(None),
            bwd_filter: Cell::new(None),
        })
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
    let op = plan.desc.forward();
    let (algo, mut ws) = algo_and_workspace(dev, &op, &plan.fwd, d)?;
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
    let op = plan.desc.input_grad();
    let (algo, mut ws) = algo_and_workspace(dev, &op, &plan.bwd_data, d)?;
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
    let op = plan.desc.weight_grad();
    let (algo, mut ws) = algo_and_workspace(dev, &op, &plan.bwd_filter, d)?;
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
