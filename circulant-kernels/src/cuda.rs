//! CUDA path of the op (feature `cuda`): unpacks candle's CUDA storages and calls
//! `kernels_cuda` (cuFFT + contraction kernels). Everything stays on the GPU.

use candle_core::backend::BackendStorage;
use candle_core::cuda::CudaStorage;
use candle_core::{DType, Error, Layout, Result};
use kernels_cuda::{contiguous_view, Dims, FftFloat, Spectra};

use crate::erased::{float_dtype, Erased};

/// The common dtype (f32 or f64) of `inputs`, which must all live on the first one's device.
/// Errors are worded as on the CPU path.
fn check_inputs(op: &str, inputs: &[(&str, &CudaStorage)]) -> Result<DType> {
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
    let dtypes: Vec<DType> = inputs.iter().map(|(_, s)| s.dtype()).collect();
    float_dtype(op, &dtypes)
}

fn forward_t<T: FftFloat>(
    x: &CudaStorage,
    lx: &Layout,
    r: &CudaStorage,
    lr: &Layout,
    d: Dims,
    keep_spectra: bool,
) -> Result<(CudaStorage, Option<Erased>)> {
    let dev = x.device();
    let (x, r) = (
        contiguous_view::<T>("block_circulant (cuda): x", x, lx)?,
        contiguous_view::<T>("block_circulant (cuda): r", r, lr)?,
    );
    let (y, saved) = if keep_spectra {
        let (y, spectra) = kernels_cuda::forward_keep::<T>(dev, &x, &r, d)?;
        (y, spectra.map(Erased::new))
    } else {
        (kernels_cuda::forward::<T>(dev, &x, &r, d)?, None)
    };
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), saved))
}

fn backward_t<T: FftFloat>(
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    d: Dims,
    saved: Option<&Erased>,
) -> Result<CudaStorage> {
    let dev = x.0.device();
    let packed = kernels_cuda::backward::<T>(
        dev,
        &contiguous_view::<T>("block_circulant (cuda): x", x.0, x.1)?,
        &contiguous_view::<T>("block_circulant (cuda): r", r.0, r.1)?,
        &contiguous_view::<T>("block_circulant (cuda): grad", g.0, g.1)?,
        d,
        saved.and_then(Erased::get::<Spectra<T>>),
    )?;
    Ok(CudaStorage::wrap_cuda_slice(packed, dev.clone()))
}

/// `y` (n, p*b) from `x` (n, q*b) and `r` (p, q, b): contiguous (start offsets allowed),
/// f32 or f64, same device; with their spectra (a `kernels_cuda::Spectra`) when
/// `keep_spectra`.
pub(crate) fn forward(
    x: &CudaStorage,
    lx: &Layout,
    r: &CudaStorage,
    lr: &Layout,
    d: Dims,
    keep_spectra: bool,
) -> Result<(CudaStorage, Option<Erased>)> {
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
    saved: Option<&Erased>,
) -> Result<CudaStorage> {
    match check_inputs(
        "block_circulant_backward",
        &[("x", x.0), ("r", r.0), ("grad", g.0)],
    )? {
        DType::F64 => backward_t::<f64>(x, r, g, d, saved),
        _ => backward_t::<f32>(x, r, g, d, saved),
    }
}
