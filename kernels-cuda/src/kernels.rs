//! The contraction kernels of `circulant.cu` (PTX built by build.rs) and their launches.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use crate::dims::Dims;
use crate::dtype::FftFloat;
use crate::shapes;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/circulant.ptx"));
/// Name under which candle caches the loaded module, per device.
const MODULE: &str = "kernels_cuda_circulant";

/// Which contraction to run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Contraction {
    /// out[n,i,f] = scale * sum_j w[i,j,f] a[n,j,f]   (a = X^, w = R^)
    Forward,
    /// out[n,j,f] = scale * sum_i conj(w[i,j,f]) a[n,i,f]   (a = G^, w = R^)
    GradX,
    /// out[i,j,f] = scale * sum_n conj(a[n,j,f]) w[n,i,f]   (a = X^, w = G^)
    GradR,
}

impl Contraction {
    fn name(self) -> &'static str {
        match self {
            Self::Forward => "circ_contract",
            Self::GradX => "circ_contract_dx",
            Self::GradR => "circ_contract_dr",
        }
    }

    fn out_len(self, d: Dims) -> usize {
        match self {
            Self::Forward => d.n * d.p * d.nf(),
            Self::GradX => d.n * d.q * d.nf(),
            Self::GradR => d.p * d.q * d.nf(),
        }
    }
}

/// Runs `which` on the half spectra `a` and `w`, returning a new spectrum scaled by `scale`.
pub(crate) fn contract<T: FftFloat>(
    dev: &CudaDevice,
    which: Contraction,
    a: &CudaSlice<T::Complex>,
    w: &CudaSlice<T::Complex>,
    d: Dims,
    scale: f64,
) -> Result<CudaSlice<T::Complex>> {
    let len = which.out_len(d);
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { dev.alloc::<T::Complex>(len)? };
    if len == 0 {
        return Ok(out);
    }
    let shape = match which {
        Contraction::GradR => {
            let nf = d.nf();
            shapes::contract_dr(nf, d.p, d.q).ok_or_else(|| {
                Error::Msg(format!("circulant (cuda): {nf} bins is too many")).bt()
            })?
        }
        Contraction::Forward | Contraction::GradX => shapes::elementwise(len),
    };
    let name = format!("{}_{}", which.name(), T::SUFFIX);
    let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    let scale = T::from_f64(scale);
    let nf = d.nf();
    {
        let mut builder = func.builder();
        builder
            .arg(a)
            .arg(w)
            .arg(&mut out)
            .arg(&d.n)
            .arg(&d.p)
            .arg(&d.q)
            .arg(&nf)
            .arg(&d.b)
            .arg(&scale);
        // SAFETY: the argument list matches the kernel signature in circulant.cu, and the
        // buffer lengths match the sizes (checked by the callers in circulant.rs).
        unsafe { builder.launch(shape.config()) }.w()?;
    }
    Ok(out)
}

/// Spectra of length-1 signals (the values themselves), for `b = 1`.
pub(crate) fn real_to_complex<T: FftFloat>(
    dev: &CudaDevice,
    input: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T::Complex>,
) -> Result<()> {
    let count = input.len();
    let func = dev.get_or_load_custom_func(&format!("circ_r2c_len1_{}", T::SUFFIX), MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(input).arg(out).arg(&count);
    // SAFETY: matches circ_r2c_len1 in circulant.cu; `out` has `count` elements (callers).
    unsafe { builder.launch(shapes::elementwise(count).config()) }.w()?;
    Ok(())
}

/// Real parts of length-1 spectra, for `b = 1`.
pub(crate) fn complex_to_real<T: FftFloat>(
    dev: &CudaDevice,
    input: &CudaView<'_, T::Complex>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let count = input.len();
    let func = dev.get_or_load_custom_func(&format!("circ_c2r_len1_{}", T::SUFFIX), MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(input).arg(out).arg(&count);
    // SAFETY: matches circ_c2r_len1 in circulant.cu; `out` has `count` elements (callers).
    unsafe { builder.launch(shapes::elementwise(count).config()) }.w()?;
    Ok(())
}
