//! Real-FFT plans (cached per length and shared across calls and threads) and per-thread scratch.

use candle_core::Result;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, FftNum, RealFftPlanner, RealToComplex};
use std::sync::{Arc, Mutex, OnceLock};

/// Spectra of an input, kept by the forward pass for the backward pass.
pub(crate) enum Spectra {
    F32(Vec<Complex<f32>>),
    F64(Vec<Complex<f64>>),
}

/// A float type the CPU kernels run in (f32 or f64), with its process-wide FFT planner.
pub(crate) trait Real: FftNum + Default + candle_core::WithDType {
    /// The planner shared by every call; it caches plans per length.
    fn planner() -> &'static Mutex<RealFftPlanner<Self>>;
    /// Wraps spectra of this type.
    fn wrap(spectra: Vec<Complex<Self>>) -> Spectra;
    /// The spectra, if they are of this type.
    fn unwrap(spectra: &Spectra) -> Option<&[Complex<Self>]>;
}

macro_rules! impl_real {
    ($t:ty, $variant:ident) => {
        impl Real for $t {
            fn planner() -> &'static Mutex<RealFftPlanner<$t>> {
                static PLANNER: OnceLock<Mutex<RealFftPlanner<$t>>> = OnceLock::new();
                PLANNER.get_or_init(|| Mutex::new(RealFftPlanner::new()))
            }
            fn wrap(spectra: Vec<Complex<$t>>) -> Spectra {
                Spectra::$variant(spectra)
            }
            fn unwrap(spectra: &Spectra) -> Option<&[Complex<$t>]> {
                match spectra {
                    Spectra::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
impl_real!(f32, F32);
impl_real!(f64, F64);

/// Forward and inverse real FFTs of one length.
pub(crate) struct Plans<T: Real> {
    fwd: Arc<dyn RealToComplex<T>>,
    inv: Arc<dyn ComplexToReal<T>>,
}

impl<T: Real> Plans<T> {
    /// Fetches (or builds once) the plans for length `b`.
    pub fn new(b: usize) -> Self {
        let mut planner = T::planner().lock().unwrap_or_else(|e| e.into_inner());
        Self {
            fwd: planner.plan_fft_forward(b),
            inv: planner.plan_fft_inverse(b),
        }
    }

    /// Scratch buffers for one thread.
    pub fn workspace(&self) -> Workspace<'_, T> {
        let scratch = self.fwd.get_scratch_len().max(self.inv.get_scratch_len());
        Workspace {
            plans: self,
            real: vec![T::zero(); self.fwd.len()],
            scratch: vec![Complex::default(); scratch],
        }
    }
}

/// One thread's buffers; every transform reuses them, so the hot loop allocates nothing.
pub(crate) struct Workspace<'a, T: Real> {
    plans: &'a Plans<T>,
    real: Vec<T>,
    scratch: Vec<Complex<T>>,
}

impl<T: Real> Workspace<'_, T> {
    /// Real FFT of each length-b block of `input` into consecutive `b/2+1` slots of `out`.
    pub fn rfft_blocks(&mut self, input: &[T], out: &mut [Complex<T>]) -> Result<()> {
        let b = self.real.len();
        for (block, spec) in input.chunks_exact(b).zip(out.chunks_exact_mut(b / 2 + 1)) {
            self.real.copy_from_slice(block);
            self.plans
                .fwd
                .process_with_scratch(&mut self.real, spec, &mut self.scratch)
                .map_err(fft_error)?;
        }
        Ok(())
    }

    /// Inverse real FFT (unnormalised) of `spec` into `out`; `spec` is clobbered.
    pub fn irfft(&mut self, spec: &mut [Complex<T>], out: &mut [T]) -> Result<()> {
        // The spectrum of a real signal has real DC and Nyquist terms; drop rounding residue.
        spec[0].im = T::zero();
        if out.len().is_multiple_of(2) {
            spec[spec.len() - 1].im = T::zero();
        }
        self.plans
            .inv
            .process_with_scratch(spec, out, &mut self.scratch)
            .map_err(fft_error)
    }
}

fn fft_error(e: realfft::FftError) -> candle_core::Error {
    candle_core::Error::Msg(format!("circulant: FFT failed: {e}"))
}
