//! CPU kernels: real FFTs per length-b block, a per-frequency contraction, inverse FFTs.
//!
//! With `X̂`, `R̂`, `Ĝ` the real FFTs of the blocks of x, r and the upstream gradient g:
//! - forward: `Ŷ[n,i] = Σ_j R̂[i,j] · X̂[n,j]`;
//! - input gradient: `dX̂[n,j] = Σ_i conj(R̂[i,j]) · Ĝ[n,i]`;
//! - weight gradient: `dR̂[i,j] = Σ_n conj(X̂[n,j]) · Ĝ[n,i]`, summed over the batch in the
//!   frequency domain, then one inverse FFT per block.
//!
//! The forward pass keeps `X̂` and `R̂` so the backward pass needs no FFT of x or r (4 FFTs per
//! sample in all, the minimum). Rows are split across threads (see `parallel`).

use crate::dims::Dims;
use crate::fft::{Plans, Real};
use crate::parallel::map_rows;
use candle_core::Result;
use realfft::num_complex::Complex;

/// Real FFTs of every length-b block of `x`: (n, q*b) → n*q spectra of b/2+1 values.
pub(crate) fn spectra<T: Real>(x: &[T], d: Dims) -> Result<Vec<Complex<T>>> {
    blocks_spectra(x, d.n * d.q, d.b)
}

/// `R̂ / b` for every block of `r: (p, q, b)`, so that inverse FFTs need no scaling.
pub(crate) fn weight_spectra<T: Real>(r: &[T], d: Dims) -> Result<Vec<Complex<T>>> {
    let mut rs = blocks_spectra(r, d.p * d.q, d.b)?;
    let scale = inv_len::<T>(d.b);
    rs.iter_mut().for_each(|v| *v *= scale);
    Ok(rs)
}

fn blocks_spectra<T: Real>(v: &[T], blocks: usize, b: usize) -> Result<Vec<Complex<T>>> {
    let nf = b / 2 + 1;
    let mut out = vec![Complex::default(); blocks * nf];
    let plans = Plans::<T>::new(b);
    map_rows(&mut out, nf, |k, out| {
        plans
            .workspace()
            .rfft_blocks(&v[k.start * b..k.end * b], out)
    })?;
    Ok(out)
}

/// `y = x Wᵀ` for the block-circulant `W` given by `r: (p, q, b)`, from `xs = spectra(x)` and
/// `rs = weight_spectra(r)`.
pub(crate) fn forward<T: Real>(xs: &[Complex<T>], rs: &[Complex<T>], d: Dims) -> Result<Vec<T>> {
    let (q, b, nf) = (d.q, d.b, d.freqs());
    let mut y = vec![T::zero(); d.n * d.p * b];
    let plans = Plans::<T>::new(b);
    map_rows(&mut y, d.p * b, |rows, y| {
        let mut ws = plans.workspace();
        let mut acc = vec![Complex::default(); nf];
        let xs = &xs[rows.start * q * nf..rows.end * q * nf];
        for (y, xs) in y.chunks_exact_mut(d.p * b).zip(xs.chunks_exact(q * nf)) {
            for (y, rs) in y.chunks_exact_mut(b).zip(rs.chunks_exact(q * nf)) {
                contract(rs.chunks_exact(nf), xs.chunks_exact(nf), &mut acc, false);
                ws.irfft(&mut acc, y)?;
            }
        }
        Ok(())
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
    let (p, q, b, nf) = (d.p, d.q, d.b, d.freqs());
    let mut out = vec![T::zero(); d.packed_grad_len()];
    let plans = Plans::<T>::new(b);
    let (dx, dr) = out.split_at_mut(d.n * q * b);
    let partials = map_rows(dx, q * b, |rows, dx| {
        let mut ws = plans.workspace();
        let mut gs = vec![Complex::default(); p * nf];
        let mut acc = vec![Complex::default(); nf];
        let mut drs = vec![Complex::<T>::default(); p * q * nf];
        let xs = &xs[rows.start * q * nf..rows.end * q * nf];
        let g = &g[rows.start * p * b..rows.end * p * b];
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
    })?;

    // Sum the per-thread partial spectra in a fixed order, then one inverse FFT per block.
    let mut parts = partials.into_iter();
    let Some(mut total) = parts.next() else {
        return Ok(out);
    };
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
    }
    let scale = inv_len::<T>(b);
    map_rows(dr, b, |blocks, dr| {
        let mut ws = plans.workspace();
        let mut acc = vec![Complex::default(); nf];
        let total = &total[blocks.start * nf..blocks.end * nf];
        for (dr, spec) in dr.chunks_exact_mut(b).zip(total.chunks_exact(nf)) {
            acc.iter_mut().zip(spec).for_each(|(a, s)| *a = *s * scale);
            ws.irfft(&mut acc, dr)?;
        }
        Ok(())
    })?;
    Ok(out)
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
