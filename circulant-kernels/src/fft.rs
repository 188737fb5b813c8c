//! Complex FFT plans (cached per length and shared across calls and threads) and per-thread
//! scratch. The kernels transform two real rows at once as one complex signal (see `cpu`), so
//! only complex transforms of the block length are needed.

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};
use std::sync::{Arc, Mutex, OnceLock};

/// Spectra of an input, kept by the forward pass for the backward pass.
pub(crate) enum Spectra {
    F32(Vec<Complex<f32>>),
    F64(Vec<Complex<f64>>),
}

/// A float type the CPU kernels run in (f32 or f64), with its process-wide FFT planner.
pub(crate) trait Real: FftNum + Default + candle_core::WithDType {
    /// The planner shared by every call; it caches plans per length.
    fn planner() -> &'static Mutex<FftPlanner<Self>>;
    /// Wraps spectra of this type.
    fn wrap(spectra: Vec<Complex<Self>>) -> Spectra;
    /// The spectra, if they are of this type.
    fn unwrap(spectra: &Spectra) -> Option<&[Complex<Self>]>;
}

macro_rules! impl_real {
    ($t:ty, $variant:ident) => {
        impl Real for $t {
            fn planner() -> &'static Mutex<FftPlanner<$t>> {
                static PLANNER: OnceLock<Mutex<FftPlanner<$t>>> = OnceLock::new();
                PLANNER.get_or_init(|| Mutex::new(FftPlanner::new()))
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

/// Forward and inverse complex FFTs of one length.
pub(crate) struct Plans<T: Real> {
    fwd: Arc<dyn Fft<T>>,
    inv: Arc<dyn Fft<T>>,
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
        let scratch = (self.fwd.get_inplace_scratch_len()).max(self.inv.get_inplace_scratch_len());
        Workspace {
            plans: self,
            scratch: vec![Complex::default(); scratch],
        }
    }
}

/// One thread's buffers; every transform reuses them, so the hot loop allocates nothing.
pub(crate) struct Workspace<'a, T: Real> {
    plans: &'a Plans<T>,
    scratch: Vec<Complex<T>>,
}

impl<T: Real> Workspace<'_, T> {
    /// In-place forward FFT of every length-b block of `buf` (its length is a multiple of b).
    pub fn fft(&mut self, buf: &mut [Complex<T>]) {
        if !buf.is_empty() {
            self.plans.fwd.process_with_scratch(buf, &mut self.scratch);
        }
    }

    /// In-place inverse FFT (unnormalised) of every length-b block of `buf`.
    pub fn ifft(&mut self, buf: &mut [Complex<T>]) {
        if !buf.is_empty() {
            self.plans.inv.process_with_scratch(buf, &mut self.scratch);
        }
    }
}
