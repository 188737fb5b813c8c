//! Forward and backward of the block-circulant projection on the GPU:
//! batched real FFTs (cuFFT), a per-frequency contraction kernel, inverse real FFTs.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};

use crate::chunks::chunks;
use crate::dims::Dims;
use crate::dtype::FftFloat;
use crate::kernels::{complex_to_real, contract, real_to_complex, Contraction};
use crate::plan::{lock, plan};
use crate::storage::check_len;

/// The op named in errors.
const OP: &str = "circulant (cuda)";

fn cufft_err(
    what: &'static str,
    len: usize,
    rows: usize,
) -> impl FnOnce(cudarc::cufft::result::CufftError) -> Error {
    move |e| {
        Error::wrap(e).context(format!(
            "circulant (cuda): cuFFT {what} (length {len}, batch {rows})"
        ))
    }
}

/// cuFFT rejects real buffers that are not aligned like its complex type
/// (`CUFFT_INVALID_VALUE`): a view at an odd offset, such as the `dr` half of the packed
/// gradient when `n * q * b` is odd, goes through an aligned copy instead.
fn is_aligned<T: FftFloat, P: DevicePtr<T>>(dev: &CudaDevice, buf: &P) -> bool {
    let stream = dev.cuda_stream();
    let (ptr, _sync) = buf.device_ptr(&stream);
    ptr % std::mem::align_of::<T::Complex>() as u64 == 0
}

/// Half spectra (rows, len/2+1) of `rows` contiguous real signals of length `len`.
fn rfft<T: FftFloat>(
    dev: &CudaDevice,
    input: &CudaView<'_, T>,
    len: usize,
    rows: usize,
) -> Result<CudaSlice<T::Complex>> {
    let nf = len / 2 + 1;
    // SAFETY: every element is written by the transforms below.
    let mut out = unsafe { dev.alloc::<T::Complex>(rows * nf)? };
    if len == 1 {
        real_to_complex::<T>(dev, input, &mut out.slice_mut(..))?;
        return Ok(out);
    }
    let aligned_copy;
    let input = if is_aligned(dev, input) {
        input.slice(..)
    } else {
        aligned_copy = dev.cuda_stream().clone_dtod(input).w()?;
        aligned_copy.slice(..)
    };
    for (start, count) in chunks(rows, len) {
        let shared = plan(dev, len, count, T::FORWARD)?;
        let plan = lock(&shared);
        dev.cuda_stream().context().bind_to_thread().w()?;
        let src = input.slice(start * len..(start + count) * len);
        let mut dst = out.slice_mut(start * nf..(start + count) * nf);
        T::exec_forward(&plan, &src, &mut dst).map_err(cufft_err("forward", len, count))?;
    }
    Ok(out)
}

/// Real signals from half spectra, written into `out` (rows * len). Unnormalised: the
/// contraction kernels fold in 1/len. Overwrites `spectra`.
fn irfft<T: FftFloat>(
    dev: &CudaDevice,
    spectra: &mut CudaSlice<T::Complex>,
    out: &mut CudaViewMut<'_, T>,
    len: usize,
    rows: usize,
) -> Result<()> {
    let nf = len / 2 + 1;
    if len == 1 {
        return complex_to_real::<T>(dev, &spectra.slice(..), out);
    }
    if !is_aligned(dev, out) {
        // SAFETY: every element is written by the inverse transform.
        let mut tmp = unsafe { dev.alloc::<T>(rows * len)? };
        irfft(dev, spectra, &mut tmp.slice_mut(..), len, rows)?;
        return dev.cuda_stream().memcpy_dtod(&tmp, out).w();
    }
    for (start, count) in chunks(rows, len) {
        let shared = plan(dev, len, count, T::INVERSE)?;
        let plan = lock(&shared);
        dev.cuda_stream().context().bind_to_thread().w()?;
        let mut src = spectra.slice_mut(start * nf..(start + count) * nf);
        let mut dst = out.slice_mut(start * len..(start + count) * len);
        T::exec_inverse(&plan, &mut src, &mut dst).map_err(cufft_err("inverse", len, count))?;
    }
    Ok(())
}

/// Half spectra of `x` and `r` computed by [`forward_keep`]; [`backward`] reuses them instead
/// of transforming `x` and `r` again (4 transforms of batch rows per training step, not 5).
pub struct Spectra<T: FftFloat> {
    dims: Dims,
    x: CudaSlice<T::Complex>,
    r: CudaSlice<T::Complex>,
}

fn check_inputs<T: FftFloat>(x: &CudaView<'_, T>, r: &CudaView<'_, T>, d: Dims) -> Result<()> {
    check_len(OP, "x", x.len(), d.x_len()?, &d)?;
    check_len(OP, "r", r.len(), d.r_len()?, &d)
}

/// [`forward`], keeping the spectra of `x` and `r` when `keep`; without it they are freed
/// before `y` is allocated.
fn forward_impl<T: FftFloat>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: &CudaView<'_, T>,
    d: Dims,
    keep: bool,
) -> Result<(CudaSlice<T>, Option<Spectra<T>>)> {
    check_inputs(x, r, d)?;
    if d.is_degenerate() {
        return Ok((dev.alloc_zeros::<T>(d.y_len()?)?, None));
    }
    let xf = rfft(dev, x, d.b, d.n * d.q)?;
    let rf = rfft(dev, r, d.b, d.p * d.q)?;
    let scale = 1.0 / d.b as f64;
    let mut yf = contract::<T>(dev, Contraction::Forward, &xf, &rf, d, scale)?;
    let spectra = keep.then(|| Spectra {
        dims: d,
        x: xf,
        r: rf,
    });
    // SAFETY: every element is written by the inverse transform.
    let mut y = unsafe { dev.alloc::<T>(d.y_len()?)? };
    irfft(dev, &mut yf, &mut y.slice_mut(..), d.b, d.n * d.p)?;
    Ok((y, spectra))
}

/// `y` (n, p*b) with `y[n, i*b+s] = sum_j sum_t r[i,j,(s-t) mod b] x[n, j*b+t]`, from `x`
/// (n, q*b) and `r` (p, q, b), contiguous, on `dev`. Stays on the GPU.
pub fn forward<T: FftFloat>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: &CudaView<'_, T>,
    d: Dims,
) -> Result<CudaSlice<T>> {
    forward_impl(dev, x, r, d, false).map(|(y, _)| y)
}

/// [`forward`], also returning the spectra of `x` and `r` for [`backward`] (`None` when a
/// size is 0). Holding them costs about as much memory as `x`.
pub fn forward_keep<T: FftFloat>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: &CudaView<'_, T>,
    d: Dims,
) -> Result<(CudaSlice<T>, Option<Spectra<T>>)> {
    forward_impl(dev, x, r, d, true)
}

/// Gradients of [`forward`] given `g` = dL/dy (n, p*b), packed as one buffer
/// `[dx (n*q*b) ; dr (p*q*b)]`:
/// `dx[n, j*b+t] = sum_i sum_s g[n, i*b+s] r[i,j,(s-t) mod b]`,
/// `dr[i,j,u] = sum_n sum_s g[n, i*b+s] x[n, j*b+(s-u) mod b]` (batch summed in frequency).
/// `saved`, the spectra from [`forward_keep`] on the same `x` and `r`, spares transforming
/// them again; without it they are recomputed.
pub fn backward<T: FftFloat>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: &CudaView<'_, T>,
    g: &CudaView<'_, T>,
    d: Dims,
    saved: Option<&Spectra<T>>,
) -> Result<CudaSlice<T>> {
    check_inputs(x, r, d)?;
    check_len(OP, "grad", g.len(), d.y_len()?, &d)?;
    let (x_len, r_len) = (d.x_len()?, d.r_len()?);
    if d.is_degenerate() {
        return dev.alloc_zeros::<T>(x_len + r_len);
    }
    if let Some(s) = saved.filter(|s| s.dims != d) {
        return Err(Error::Msg(format!(
            "circulant (cuda): saved spectra are for {:?}, not {d:?}",
            s.dims
        ))
        .bt());
    }
    let scale = 1.0 / d.b as f64;
    let gf = rfft(dev, g, d.b, d.n * d.p)?;
    let computed;
    let (xf, rf) = match saved {
        Some(saved) => (&saved.x, &saved.r),
        None => {
            computed = (rfft(dev, x, d.b, d.n * d.q)?, rfft(dev, r, d.b, d.p * d.q)?);
            (&computed.0, &computed.1)
        }
    };
    let mut dxf = contract::<T>(dev, Contraction::GradX, &gf, rf, d, scale)?;
    let mut drf = contract::<T>(dev, Contraction::GradR, xf, &gf, d, scale)?;
    drop(gf);
    // SAFETY: every element is written by the two inverse transforms.
    let mut out = unsafe { dev.alloc::<T>(x_len + r_len)? };
    {
        let (mut dx, mut dr) = out.split_at_mut(x_len);
        irfft(dev, &mut dxf, &mut dx, d.b, d.n * d.q)?;
        irfft(dev, &mut drf, &mut dr, d.b, d.p * d.q)?;
    }
    Ok(out)
}
