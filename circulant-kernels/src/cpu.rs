//! CPU kernels: real FFTs per length-b block, a per-frequency contraction, inverse FFTs.
//!
//! With `X̂`, `R̂`, `Ĝ` the real FFTs of the blocks of x, r and the upstream gradient g:
//! - forward: `Ŷ[n,i] = Σ_j R̂[i,j] · X̂[n,j]`;
//! - input gradient: `dX̂[n,j] = Σ_i conj(R̂[i,j]) · Ĝ[n,i]`;
//! - weight gradient: `dR̂[i,j] = Σ_n conj(X̂[n,j]) · Ĝ[n,i]`, summed over the batch in the
//!   frequency domain, then one inverse FFT per block.
//!
//! The forward pass keeps `X̂` so the backward pass needs no FFT of `x` (4 FFTs per sample in
//! all, the minimum). The batch is split into one contiguous range of rows per rayon thread, so results only depend
//! on the thread count (partial sums are reduced in a fixed order).

use crate::dims::Dims;
use crate::fft::{Plans, Real};
use candle_core::Result;
use rayon::prelude::*;
use realfft::num_complex::Complex;

/// Real FFTs of every length-b block of `x`: (n, q*b) → n*q spectra of b/2+1 values.
pub(crate) fn spectra<T: Real>(x: &[T], d: Dims) -> Result<Vec<Complex<T>>> {
    let nf = d.freqs();
    let mut xs = vec![Complex::default(); d.n * d.q * nf];
    if xs.is_empty() {
        return Ok(xs);
    }
    let plans = Plans::<T>::new(d.b);
    let rows = rows_per_task(d.n);
    xs.par_chunks_mut(rows * d.q * nf)
        .zip(x.par_chunks(rows * d.q * d.b))
        .try_for_each(|(xs, x)| plans.workspace().rfft_blocks(x, xs))?;
    Ok(xs)
}

/// `y = x Wᵀ` for the block-circulant `W` given by `r: (p, q, b)`, from `xs = spectra(x)` and
/// `rs = weight_spectra(r)`.
pub(crate) fn forward<T: Real>(xs: &[Complex<T>], rs: &[Complex<T>], d: Dims) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); d.n * d.p * d.b];
    if y.is_empty() {
        return Ok(y);
    }
    let plans = Plans::<T>::new(d.b);
    let nf = d.freqs();
    let rows = rows_per_task(d.n);
    y.par_chunks_mut(rows * d.p * d.b)
        .zip(xs.par_chunks(rows * d.q * nf))
        .try_for_each(|(y, xs)| {
            let mut ws = plans.workspace();
            let mut acc = vec![Complex::default(); nf];
            for (y, xs) in y.chunks_exact_mut(d.p * d.b).zip(xs.chunks_exact(d.q * nf)) {
                for (y, rs) in y.chunks_exact_mut(d.b).zip(rs.chunks_exact(d.q * nf)) {
                    contract(rs.chunks_exact(nf), xs.chunks_exact(nf), &mut acc, false);
                    ws.irfft(&mut acc, y)?;
                }
            }
            Ok::<_, candle_core::Error>(())
        })?;
    Ok(y)
}

/// Gradients of `sum(y * g)`, given `xs = spectra(x)` and `rs = weight_spectra(r)`:
/// `dx` (n*q*b values) then `dr` (p*q*b values).
pub(crate) fn backward<T: Real>(
    xs: &[Complex<T>],
    rs: &[Complex<T>],
    g: &[T],
    d: Dims,
) -> Result<Vec<T>> {
    let (p, q, b) = (d.p, d.q, d.b);
    let mut out = vec![T::zero(); d.packed_grad_len()];
    if d.n == 0 {
        return Ok(out);
    }
    let plans = Plans::<T>::new(b);
    let nf = d.freqs();
    let (dx, dr) = out.split_at_mut(d.n * q * b);
    let rows = rows_per_task(d.n);
    let partials = dx
        .par_chunks_mut(rows * q * b)
        .zip(xs.par_chunks(rows * q * nf))
        .zip(g.par_chunks(rows * p * b))
        .map(|((dx, xs), g)| {
            let mut ws = plans.workspace();
            let mut gs = vec![Complex::default(); p * nf];
            let mut acc = vec![Complex::default(); nf];
            let mut drs = vec![Complex::<T>::default(); p * q * nf];
            for ((dx, xs), g) in dx
                .chunks_exact_mut(q * b)
                .zip(xs.chunks_exact(q * nf))
                .zip(g.chunks_exact(p * b))
            {
                ws.rfft_blocks(g, &mut gs)?;
                for (j, dx) in dx.chunks_exact_mut(b).enumerate() {
                    let col = rs[j * nf..].chunks(nf).step_by(q);
                    contract(col, gs.chunks_exact(nf), &mut acc, true);
                    ws.irfft(&mut acc, dx)?;
                }
                for (dr_i, g_i) in drs.chunks_exact_mut(q * nf).zip(gs.chunks_exact(nf)) {
                    for (dr_ij, x_j) in dr_i.chunks_exact_mut(nf).zip(xs.chunks_exact(nf)) {
                        for ((acc, x), g) in dr_ij.iter_mut().zip(x_j).zip(g_i) {
                            *acc += x.conj() * g;
                        }
                    }
                }
            }
            Ok(drs)
        })
        .collect::<Result<Vec<_>>>()?;

    let mut drs = partials.into_iter();
    let mut total = drs.next().unwrap_or_default();
    for part in drs {
        total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
    }
    let scale = inv_len::<T>(b);
    total.iter_mut().for_each(|v| *v *= scale);
    dr.par_chunks_mut(b)
        .zip(total.par_chunks_mut(nf))
        .try_for_each(|(dr, spec)| plans.workspace().irfft(spec, dr))?;
    Ok(out)
}

/// `R̂ / b` for every block of `r` (p*q spectra of b/2+1 values), so inverse FFTs need no scaling.
pub(crate) fn weight_spectra<T: Real>(r: &[T], d: Dims) -> Result<Vec<Complex<T>>> {
    let plans = Plans::<T>::new(d.b);
    let nf = d.freqs();
    let mut rs = vec![Complex::default(); d.p * d.q * nf];
    rs.par_chunks_mut(nf)
        .zip(r.par_chunks(d.b))
        .try_for_each(|(spec, block)| plans.workspace().rfft_blocks(block, spec))?;
    let scale = inv_len::<T>(d.b);
    rs.iter_mut().for_each(|v| *v *= scale);
    Ok(rs)
}

/// `acc = Σ_k w_k · v_k` (with `conj(w_k)` when `conj`), element-wise over frequencies.
fn contract<'a, T: Real>(
    w: impl Iterator<Item = &'a [Complex<T>]>,
    v: impl Iterator<Item = &'a [Complex<T>]>,
    acc: &mut [Complex<T>],
    conj: bool,
) {
    for (k, (w, v)) in w.zip(v).enumerate() {
        for ((a, w), v) in acc.iter_mut().zip(w).zip(v) {
            let w = if conj { w.conj() } else { *w };
            *a = if k == 0 { w * v } else { *a + w * v };
        }
    }
}

fn inv_len<T: Real>(b: usize) -> T {
    <T as candle_core::WithDType>::from_f64(1.0 / b as f64)
}

/// Rows per parallel task: one contiguous range per rayon thread.
fn rows_per_task(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}
