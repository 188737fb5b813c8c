//! The contraction kernels of `circulant.cu` (PTX built by build.rs) and their launches.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use crate::dims::Dims;
use crate::dtype::FftFloat;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/circulant.ptx"));
/// Name under which candle caches the loaded module, per device.
const MODULE: &str = "kernels_cuda_circulant";

const THREADS: u32 = 256;
/// Grid-stride loops cover any size; more blocks than this add nothing.
const MAX_BLOCKS: usize = 1 << 20;
/// Block shape of `circ_contract_dr` (DR_F x DR_N in circulant.cu).
const DR_F: usize = 32;
const DR_N: u32 = 8;
const MAX_GRID_Y: usize = 65_535;

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
    let cfg = match which {
        Contraction::GradR => {
            let nf = d.nf();
            let gx = u32::try_from(nf.div_ceil(DR_F))
                .map_err(|_| Error::Msg(format!("circulant (cuda): {nf} bins is too many")).bt())?;
            LaunchConfig {
                grid_dim: (gx, (d.p * d.q).min(MAX_GRID_Y) as u32, 1),
                block_dim: (DR_F as u32, DR_N, 1),
                shared_mem_bytes: 0,
            }
        }
        Contraction::Forward | Contraction::GradX => elementwise_config(len),
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
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok(out)
}

/// `THREADS`-wide blocks over `len` elements for a grid-stride kernel (at most `MAX_BLOCKS`).
pub(crate) fn elementwise_config(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
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
    unsafe { builder.launch(elementwise_config(count)) }.w()?;
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
    unsafe { builder.launch(elementwise_config(count)) }.w()?;
    Ok(())
}
