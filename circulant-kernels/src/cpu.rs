//! CPU kernels: complex FFTs of pairs of rows, a per-frequency contraction, inverse FFTs.
//!
//! The weight matrix `W` is real, so `W (x1 + i·x2) = W x1 + i·W x2`: rows are taken in pairs,
//! one complex FFT of `x1 + i·x2` per length-b block replaces the real FFTs of both rows, and
//! the real and imaginary parts of one inverse FFT are the two output rows. At b = 4096 this
//! takes 55% of the time of realfft's real transforms (docs/BENCHMARKS.md), whose
//! pre/post-processing passes cost as much as the FFTs themselves. A row without a partner (an
//! odd last row, a batch of one) gets a real FFT and is processed on its half spectrum (b/2+1
//! values, the rest of its block unused); the blocks of r get real FFTs mirrored to full
//! spectra.
//!
//! With `Ẑ`, `R̂`, `Ĝ` the FFTs of the blocks of a pair of rows, of r and of the pair's upstream
//! gradient:
//! - forward: `Ŷ[i] = Σ_j R̂[i,j] · Ẑ[j]`;
//! - input gradient: `dẐ[j] = Σ_i conj(R̂[i,j]) · Ĝ[i]`;
//! - weight gradient: with `S[i,j] = Σ_pairs conj(Ẑ[j]) · Ĝ[i]` (summed over the batch in the
//!   frequency domain), the spectrum of `dr[i,j]` is `(S[k] + conj(S[-k])) / 2`: the terms that
//!   mix the two rows of a pair cancel. Then one inverse FFT per block.
//!
//! The forward pass keeps `Ẑ` and `R̂` so the backward pass transforms only the gradient.
//! Pairs of rows are split across threads (see `parallel`).

use crate::buffers::Buffer;
use crate::fft::{Plans, Real, Workspace};
use crate::parallel::{map_rows, map_rows2};
use crate::simd;
use candle_core::Result;
use kernels_cuda::Dims;
use rustfft::num_complex::Complex;
use std::mem::MaybeUninit;

/// FFTs of the blocks of every pair of rows of `x: (n, q*b)`, as `x[2k] + i·x[2k+1]`:
/// `ceil(n/2)` pairs of `q*b` values.
pub(crate) fn spectra<T: Real>(x: &[T], d: Dims) -> Result<Buffer<T>> {
    let len = d.q * d.b;
    let mut out = Buffer::take(d.n.div_ceil(2) * len);
    let plans = Plans::<T>::new(d.b);
    map_rows(&mut out, len, |pairs, out| {
        let mut ws = plans.workspace();
        let rows = &x[2 * pairs.start * len..(2 * pairs.end * len).min(x.len())];
        for (z, rows) in out.chunks_exact_mut(len).zip(rows.chunks(2 * len)) {
            transform(&mut ws, rows, z)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// `R̂ / b` for every block of `r: (p, q, b)` (full spectra of b values), so that inverse FFTs
/// need no scaling.
pub(crate) fn weight_spectra<T: Real>(r: &[T], d: Dims) -> Result<Vec<Complex<T>>> {
    let scale = inv_len::<T>(d.b);
    let mut rs = vec![Complex::default(); r.len()];
    Plans::<T>::new(d.b).workspace().rfft(r, &mut rs)?;
    rs.iter_mut().for_each(|v| *v *= scale);
    Ok(rs)
}

/// `y = x Wᵀ` for the block-circulant `W` given by `rs = weight_spectra(r)`, and the spectra of
/// `x` (as [`spectra`] returns them, for the backward pass), in one pass over the rows.
pub(crate) fn forward<T: Real>(x: &[T], rs: &[Complex<T>], d: Dims) -> Result<(Vec<T>, Buffer<T>)> {
    let (in_row, out_row, b) = (d.q * d.b, d.p * d.b, d.b);
    let mut y = Vec::with_capacity(d.n * out_row);
    let mut xs = Buffer::take(d.n.div_ceil(2) * in_row);
    let plans = Plans::<T>::new(b);
    let rows = y.spare_capacity_mut();
    map_rows2(rows, 2 * out_row, &mut xs, in_row, |pairs, y, xs| {
        let mut ws = plans.workspace();
        let mut acc = vec![Complex::default(); out_row];
        let x = &x[2 * pairs.start * in_row..(2 * pairs.end * in_row).min(x.len())];
        for ((y, zs), x) in y
            .chunks_mut(2 * out_row)
            .zip(xs.chunks_exact_mut(in_row))
            .zip(x.chunks(2 * in_row))
        {
            forward_pair(&mut ws, rs, x, zs, &mut acc, y)?;
        }
        Ok(())
    })?;
    // SAFETY: `forward_pair` wrote every value of every row (through `inverse`).
    unsafe { y.set_len(d.n * out_row) };
    Ok((y, xs))
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
    let (in_row, out_row) = (q * b, p * b);
    let mut out = Vec::with_capacity(d.packed_grad_len());
    let plans = Plans::<T>::new(b);
    let (dx, dr) = out.spare_capacity_mut().split_at_mut(d.n * in_row);
    let partials = map_rows(dx, 2 * in_row, |pairs, dx| {
        let mut ws = plans.workspace();
        let mut gs = vec![Complex::default(); out_row];
        let mut acc = vec![Complex::default(); in_row];
        let mut sums = vec![Complex::<T>::default(); p * q * b];
        let xs = &xs[pairs.start * in_row..pairs.end * in_row];
        let g = &g[2 * pairs.start * out_row..(2 * pairs.end * out_row).min(g.len())];
        for ((dx, zs), g) in dx
            .chunks_mut(2 * in_row)
            .zip(xs.chunks_exact(in_row))
            .zip(g.chunks(2 * out_row))
        {
            backward_pair(&mut ws, rs, g, zs, &mut gs, &mut acc, &mut sums, dx, q)?;
        }
        Ok(sums)
    })?;

    // Sum the per-thread partial spectra in a fixed order, then one inverse FFT per block.
    let mut parts = partials.into_iter();
    let mut total = (parts.next()).unwrap_or_else(|| vec![Complex::default(); p * q * b]);
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, v)| *t += v);
    }
    let nf = b / 2 + 1;
    let half = inv_len::<T>(b) * <T as candle_core::WithDType>::from_f64(0.5);
    map_rows(dr, b, |blocks, dr| {
        let mut ws = plans.workspace();
        let mut acc = vec![Complex::default(); b];
        let total = &total[blocks.start * b..blocks.end * b];
        for (dr, s) in dr.chunks_exact_mut(b).zip(total.chunks_exact(b)) {
            // acc[k] = (s[k] + conj(s[-k])) / (2b), with s[-k] = s[b - k] for k > 0; the
            // real inverse reads k <= b/2 only.
            acc[0] = (s[0] + s[0].conj()) * half;
            for ((a, s), mirror) in acc[1..nf].iter_mut().zip(&s[1..]).zip(s[1..].iter().rev()) {
                *a = (s + mirror.conj()) * half;
            }
            ws.irfft_uninit(&mut acc, dr)?;
        }
        Ok(())
    })?;
    // SAFETY: `backward_pair` wrote every value of dx, `irfft_uninit` every value of dr.
    unsafe { out.set_len(d.packed_grad_len()) };
    Ok(out)
}

simd::with_avx2! {
    /// The forward pass of one pair of rows `x` (or a lone row): their spectra into `zs`, the
    /// output rows into `y`.
    fn forward_pair<T: Real>(
        ws: &mut Workspace<'_, T>,
        rs: &[Complex<T>],
        x: &[T],
        zs: &mut [Complex<T>],
        acc: &mut [Complex<T>],
        y: &mut [MaybeUninit<T>],
    ) -> Result<()> {
        let (b, in_row) = (ws.len(), zs.len());
        let len = transform(ws, x, zs)?;
        for (acc, rs) in acc.chunks_exact_mut(b).zip(rs.chunks_exact(in_row)) {
            contract(blocks(rs, b, len), blocks(zs, b, len), &mut acc[..len], false);
        }
        inverse(ws, acc, y)
    }
}

simd::with_avx2! {
    /// The backward pass of one pair of rows with upstream gradient `g` and input spectra `zs`:
    /// their input gradient into `dx`, their part of the weight gradient's spectrum added to
    /// `sums`. `gs` and `acc` are scratch.
    #[allow(clippy::too_many_arguments)]
    fn backward_pair<T: Real>(
        ws: &mut Workspace<'_, T>,
        rs: &[Complex<T>],
        g: &[T],
        zs: &[Complex<T>],
        gs: &mut [Complex<T>],
        acc: &mut [Complex<T>],
        sums: &mut [Complex<T>],
        dx: &mut [MaybeUninit<T>],
        q: usize,
    ) -> Result<()> {
        let b = ws.len();
        let len = transform(ws, g, gs)?;
        for (j, acc) in acc.chunks_exact_mut(b).enumerate() {
            let col = rs[j * b..].chunks(b).step_by(q).map(|w| &w[..len]);
            contract(col, blocks(gs, b, len), &mut acc[..len], true);
        }
        inverse(ws, acc, dx)?;
        for (s_i, g_i) in sums.chunks_exact_mut(q * b).zip(gs.chunks_exact(b)) {
            for (s_ij, z_j) in s_i.chunks_exact_mut(b).zip(zs.chunks_exact(b)) {
                add_cross(s_ij, z_j, g_i, len);
            }
        }
        Ok(())
    }
}

/// Spectra `z` (blocks of b values) of one or two rows (`rows` holds `z.len()` or twice as
/// many values): the complex FFT of `row1 + i·row2` for two, the real FFT's half spectrum for
/// one. Returns how many values of each block are valid: b, or b/2+1 for one row.
#[inline(always)]
fn transform<T: Real>(
    ws: &mut Workspace<'_, T>,
    rows: &[T],
    z: &mut [Complex<T>],
) -> Result<usize> {
    let b = ws.len();
    let (first, second) = rows.split_at(z.len());
    if second.is_empty() {
        ws.rfft_half(first, z)?;
        return Ok(b / 2 + 1);
    }
    for ((z, &a), &b) in z.iter_mut().zip(first).zip(second) {
        *z = Complex::new(a, b);
    }
    ws.fft(z);
    Ok(b)
}

/// The first `len` values of each length-b block of `v`.
#[inline(always)]
fn blocks<T: Real>(v: &[Complex<T>], b: usize, len: usize) -> impl Iterator<Item = &[Complex<T>]> {
    v.chunks_exact(b).map(move |block| &block[..len])
}

/// The inverse of [`transform`] (unnormalised), clobbering `z`: real parts into the first row,
/// imaginary parts into the second when `rows` holds two; for one row only the half spectrum
/// of each block is read.
#[inline(always)]
fn inverse<T: Real>(
    ws: &mut Workspace<'_, T>,
    z: &mut [Complex<T>],
    rows: &mut [MaybeUninit<T>],
) -> Result<()> {
    let (first, second) = rows.split_at_mut(z.len());
    if second.is_empty() {
        return ws.irfft_uninit(z, first);
    }
    ws.ifft(z);
    first.iter_mut().zip(z.iter()).for_each(|(v, z)| {
        v.write(z.re);
    });
    second.iter_mut().zip(z.iter()).for_each(|(v, z)| {
        v.write(z.im);
    });
    Ok(())
}

/// `s += conj(z) · g` for one block (b values) of a pair's spectra. For a lone row (`len` =
/// b/2+1, half spectra) the product is Hermitian: its values at -k (k = 1..b-len; the Nyquist
/// bin is its own mirror) are added as the conjugates of those at k.
#[inline(always)]
fn add_cross<T: Real>(s: &mut [Complex<T>], z: &[Complex<T>], g: &[Complex<T>], len: usize) {
    for ((s, z), g) in s[..len].iter_mut().zip(z).zip(g) {
        *s += z.conj() * g;
    }
    let b = s.len();
    for k in 1..=b - len {
        s[b - k] += (z[k].conj() * g[k]).conj();
    }
}

/// `acc = Σ_k w_k · v_k` (with `conj(w_k)` when `conj`), element-wise over frequencies.
#[inline(always)]
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
