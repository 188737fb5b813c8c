//! CUDA path of the op (feature `cuda`): unpacks candle's CUDA storages and calls
//! `kernels_cuda` (cuFFT + contraction kernels). Everything stays on the GPU.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::CudaView;
use candle_core::cuda::CudaStorage;
use candle_core::{DType, Error, Layout, Result};
use kernels_cuda::{BlockDims, FftFloat, Spectra};

use crate::dims::Dims;

/// Spectra of x and r kept on the GPU by the forward pass for the backward pass.
pub(crate) enum Saved {
    F32(Spectra<f32>),
    F64(Spectra<f64>),
}

/// The float types of the GPU path, with their variant of [`Saved`].
trait Float: FftFloat {
    fn wrap(spectra: Spectra<Self>) -> Saved;
    fn unwrap(saved: &Saved) -> Option<&Spectra<Self>>;
}

macro_rules! impl_float {
    ($t:ty, $variant:ident) => {
        impl Float for $t {
            fn wrap(spectra: Spectra<$t>) -> Saved {
                Saved::$variant(spectra)
            }
            fn unwrap(saved: &Saved) -> Option<&Spectra<$t>> {
                match saved {
                    Saved::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
impl_float!(f32, F32);
impl_float!(f64, F64);

fn block_dims(d: Dims) -> BlockDims {
    BlockDims {
        n: d.n,
        p: d.p,
        q: d.q,
        b: d.b,
    }
}

/// The contiguous elements of `s` described by `l`, as a view of its `T` slice.
fn view<'a, T: FftFloat>(what: &str, s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| {
        Error::Msg(format!(
            "block_circulant (cuda): internal error: non-contiguous {what} {l:?}"
        ))
        .bt()
    })?;
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// The common dtype (f32 or f64) of `inputs`, which must all live on the first one's device.
/// Errors are worded as on the CPU path.
fn check_inputs(op: &str, inputs: &[(&str, &CudaStorage)]) -> Result<DType> {
    let dtypes: Vec<DType> = inputs.iter().map(|(_, s)| s.dtype()).collect();
    let (_, first) = inputs[0];
    for &(what, s) in &inputs[1..] {
        if s.device().id() != first.device().id() {
            return Err(Error::Msg(format!(
                "{op}: {what} is on {:?} but {} is on {:?}: all inputs must be on the same device",
                s.device(),
                inputs[0].0,
                first.device()
            ))
            .bt());
        }
    }
    match dtypes[0] {
        dt @ (DType::F32 | DType::F64) if dtypes.iter().all(|&d| d == dt) => Ok(dt),
        _ => Err(Error::Msg(format!(
            "{op}: unsupported dtypes {dtypes:?}: inputs must all be f32 or all f64"
        ))
        .bt()),
    }
}

fn forward_t<T: Float>(
    x: &CudaStorage,
    lx: &Layout,
    r: &CudaStorage,
    lr: &Layout,
    d: Dims,
    keep_spectra: bool,
) -> Result<(CudaStorage, Option<Saved>)> {
    let dev = x.device();
    let (x, r, d) = (
        view::<T>("x", x, lx)?,
        view::<T>("r", r, lr)?,
        block_dims(d),
    );
    let (y, saved) = if keep_spectra {
        let (y, spectra) = kernels_cuda::forward_keep::<T>(dev, &x, &r, d)?;
        (y, spectra.map(T::wrap))
    } else {
        (kernels_cuda::forward::<T>(dev, &x, &r, d)?, None)
    };
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), saved))
}

fn backward_t<T: Float>(
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    d: Dims,
    saved: Option<&Saved>,
) -> Result<CudaStorage> {
    let dev = x.0.device();
    let packed = kernels_cuda::backward::<T>(
        dev,
        &view::<T>("x", x.0, x.1)?,
        &view::<T>("r", r.0, r.1)?,
        &view::<T>("grad", g.0, g.1)?,
        block_dims(d),
        saved.and_then(T::unwrap),
    )?;
    Ok(CudaStorage::wrap_cuda_slice(packed, dev.clone()))
}

/// `y` (n, p*b) from `x` (n, q*b) and `r` (p, q, b): contiguous (start offsets allowed),
/// f32 or f64, same device; with their spectra when `keep_spectra`.
pub(crate) fn forward(
    x: &CudaStorage,
    lx: &Layout,
    r: &CudaStorage,
    lr: &Layout,
    d: Dims,
    keep_spectra: bool,
) -> Result<(CudaStorage, Option<Saved>)> {
    match check_inputs("block_circulant", &[("x", x), ("r", r)])? {
        DType::F64 => forward_t::<f64>(x, lx, r, lr, d, keep_spectra),
        _ => forward_t::<f32>(x, lx, r, lr, d, keep_spectra),
    }
}

/// Packed `[dx (n*q*b) ; dr (p*q*b)]` from `x` (n, q*b), `r` (p, q, b) and `g` = dL/dy
/// (n, p*b), reusing the forward pass's spectra where given; see `kernels_cuda::backward` for
/// the formulas.
pub(crate) fn backward(
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    d: Dims,
    saved: Option<&Saved>,
) -> Result<CudaStorage> {
    match check_inputs(
        "block_circulant_backward",
        &[("x", x.0), ("r", r.0), ("grad", g.0)],
    )? {
        DType::F64 => backward_t::<f64>(x, r, g, d, saved),
        _ => backward_t::<f32>(x, r, g, d, saved),
    }
}
