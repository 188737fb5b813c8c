//! FFT plans (cached per length and shared across calls and threads) and per-thread scratch.
//! The kernels transform two real rows at once as one complex signal (rustfft), and a row
//! without a partner with a real FFT (realfft) whose half spectrum is mirrored to the full one
//! (see `cpu`).

use candle_core::Result;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};
use std::sync::{Arc, Mutex, OnceLock};

/// A float type the CPU kernels run in (f32 or f64), with its process-wide FFT planners.
pub(crate) trait Real: FftNum + Default + candle_core::WithDType {
    /// The complex-FFT planner shared by every call; it caches plans per length.
    fn planner() -> &'static Mutex<FftPlanner<Self>>;
    /// The real-FFT planner shared by every call.
    fn real_planner() -> &'static Mutex<RealFftPlanner<Self>>;
    /// Spectra buffers free for reuse (see `buffers`).
    fn free_buffers() -> &'static Mutex<Vec<Vec<Complex<Self>>>>;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn planner() -> &'static Mutex<FftPlanner<$t>> {
                static PLANNER: OnceLock<Mutex<FftPlanner<$t>>> = OnceLock::new();
                PLANNER.get_or_init(|| Mutex::new(FftPlanner::new()))
            }
            fn real_planner() -> &'static Mutex<RealFftPlanner<$t>> {
                static PLANNER: OnceLock<Mutex<RealFftPlanner<$t>>> = OnceLock::new();
                PLANNER.get_or_init(|| Mutex::new(RealFftPlanner::new()))
            }
            fn free_buffers() -> &'static Mutex<Vec<Vec<Complex<$t>>>> {
                static FREE: Mutex<Vec<Vec<Complex<$t>>>> = Mutex::new(Vec::new());
                &FREE
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// Forward and inverse complex and real FFTs of one length.
pub(crate) struct Plans<T: Real> {
    fwd: Arc<dyn Fft<T>>,
    inv: Arc<dyn Fft<T>>,
    real_fwd: Arc<dyn RealToComplex<T>>,
    real_inv: Arc<dyn ComplexToReal<T>>,
}

impl<T: Real> Plans<T> {
    /// Fetches (or builds once) the plans for length `b`.
    pub fn new(b: usize) -> Self {
        let (fwd, inv) = {
            let mut planner = T::planner().lock().unwrap_or_else(|e| e.into_inner());
            (planner.plan_fft_forward(b), planner.plan_fft_inverse(b))
        };
        let mut planner = T::real_planner().lock().unwrap_or_else(|e| e.into_inner());
        Self {
            fwd,
            inv,
            real_fwd: planner.plan_fft_forward(b),
            real_inv: planner.plan_fft_inverse(b),
        }
    }

    /// Scratch buffers for one thread.
    pub fn workspace(&self) -> Workspace<'_, T> {
        let scratch = [
            self.fwd.get_inplace_scratch_len(),
            self.inv.get_inplace_scratch_len(),
            self.real_fwd.get_scratch_len(),
            self.real_inv.get_scratch_len(),
        ];
        Workspace {
            plans: self,
            real: vec![T::zero(); self.real_fwd.len()],
            scratch: vec![Complex::default(); scratch.into_iter().max().unwrap_or(0)],
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
    /// The transform length b.
    pub fn len(&self) -> usize {
        self.plans.fwd.len()
    }

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

    /// Half spectra of the real length-b blocks of `input`: the first b/2+1 values of each
    /// b-value block of `out` (the rest is left as it was).
    pub fn rfft_half(&mut self, input: &[T], out: &mut [Complex<T>]) -> Result<()> {
        let b = self.len();
        for (block, spec) in input.chunks_exact(b).zip(out.chunks_exact_mut(b)) {
            self.real.copy_from_slice(block);
            self.plans
                .real_fwd
                .process_with_scratch(&mut self.real, &mut spec[..b / 2 + 1], &mut self.scratch)
                .map_err(fft_error)?;
        }
        Ok(())
    }

    /// Full spectra (b values each, as [`Self::fft`] gives them) of the real length-b blocks of
    /// `input`: [`Self::rfft_half`], then the mirror image `out[b-k] = conj(out[k])`.
    pub fn rfft(&mut self, input: &[T], out: &mut [Complex<T>]) -> Result<()> {
        self.rfft_half(input, out)?;
        let b = self.len();
        for spec in out.chunks_exact_mut(b) {
            let (half, rest) = spec.split_at_mut(b / 2 + 1);
            // rest[m] = spec[b/2 + 1 + m] = conj(spec[b - b/2 - 1 - m]), taken from half[1..].
            let mirror = half[1..]
                .iter()
                .rev()
                .skip(usize::from(b.is_multiple_of(2)));
            for (v, h) in rest.iter_mut().zip(mirror) {
                *v = h.conj();
            }
        }
        Ok(())
    }

    /// Real length-b blocks of `out` from Hermitian full spectra in `spec` (unnormalised
    /// inverse; only the first b/2+1 values of each block are read, and they are clobbered).
    pub fn irfft(&mut self, spec: &mut [Complex<T>], out: &mut [T]) -> Result<()> {
        let b = self.len();
        let nf = b / 2 + 1;
        for (spec, block) in spec.chunks_exact_mut(b).zip(out.chunks_exact_mut(b)) {
            // A real signal's DC and Nyquist terms are real; drop rounding residue.
            spec[0].im = T::zero();
            if b.is_multiple_of(2) {
                spec[b / 2].im = T::zero();
            }
            self.plans
                .real_inv
                .process_with_scratch(&mut spec[..nf], block, &mut self.scratch)
                .map_err(fft_error)?;
        }
        Ok(())
    }

    /// [`Self::irfft`] into memory not yet initialised: every value of `out` is written.
    pub fn irfft_uninit(
        &mut self,
        spec: &mut [Complex<T>],
        out: &mut [std::mem::MaybeUninit<T>],
    ) -> Result<()> {
        let b = self.len();
        let mut block = std::mem::take(&mut self.real);
        let mut run = || {
            for (spec, out) in spec.chunks_exact_mut(b).zip(out.chunks_exact_mut(b)) {
                self.irfft(spec, &mut block)?;
                out.iter_mut().zip(&block).for_each(|(o, &v)| {
                    o.write(v);
                });
            }
            Ok(())
        };
        let done = run();
        self.real = block;
        done
    }
}

fn fft_error(e: realfft::FftError) -> candle_core::Error {
    candle_core::Error::Msg(format!("circulant: FFT failed: {e}"))
}
