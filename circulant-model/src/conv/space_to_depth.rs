//! Strided convolutions as stride-1 ones. With stride `s`, `conv(x, w)` equals the stride-1
//! convolution of `z`, the padded input with each `s×s` block of pixels turned into `s²`
//! channels, with `w` rearranged the same way: a `⌈k/s⌉×⌈k/s⌉` kernel on `s²·c_in` channels
//! (zero where `s·q + r ≥ k`). AlexNet's conv1 (11×11, stride 4, 3 channels) becomes a 3×3
//! convolution on 48 channels, which runs as Winograd F(4×4, 3×3): 36 multiply-adds per 16
//! outputs and channel pair on 48·64 pairs instead of 363·64 per output, and no strided
//! im2col. `z` holds each input value once: rearranging it, and its gradient back, are copies.

use std::ops::Range;

use rayon::prelude::*;

use super::lanes::LANES;
use super::{winograd, Geometry};

/// The stride-1 convolution of `z` equal to the strided `g`, where it is 3×3 and runs as
/// Winograd (with `prepared` filters, [`winograd::applies_prepared`]):
/// `(n, s²·c_in, oh + q - 1, ow + q - 1)` inputs, a `q×q` kernel (`q = ⌈k/s⌉`), no padding.
pub(super) fn geometry(g: &Geometry, prepared: bool) -> Option<Geometry> {
    if g.stride < 2 {
        return None;
    }
    let (s, q) = (g.stride, g.k.div_ceil(g.stride));
    let t = Geometry {
        n: g.n,
        c_in: g.c_in * s * s,
        h: g.oh + q - 1,
        w: g.ow + q - 1,
        c_out: g.c_out,
        k: q,
        padding: 0,
        stride: 1,
        oh: g.oh,
        ow: g.ow,
    };
    let runs = if prepared {
        winograd::applies_prepared(&t)
    } else {
        winograd::applies(&t)
    };
    (t.k == 3 && runs).then_some(t)
}

/// The positions `b` of a row of `z` (`t.w` of them) whose input column `s·b + r - padding`
/// lies in the image, and that column for the first of them.
fn valid(g: &Geometry, t: &Geometry, r: usize) -> (Range<usize>, usize) {
    let (s, p) = (g.stride, g.padding);
    let lo = p.saturating_sub(r).div_ceil(s);
    let hi = if g.w + p > r {
        ((g.w + p - r - 1) / s + 1).min(t.w)
    } else {
        0
    };
    let lo = lo.min(hi);
    (lo..hi, (lo * s + r).saturating_sub(p))
}

/// One `(hp, wp, LANES)` block of the Winograd input layout (`winograd::Blocked`) of `z`
/// (`t`'s input, see [`geometry`]): its channels `chans` of image `img`, from the input `x` of
/// `g`. Channel `(c·s + ry)·s + rx`, pixel `(by, bx)` of `z` holds `x[c, s·by + ry - p, s·bx +
/// rx - p]`; 0 outside the image, past `t`'s `(h, w)` and in the lanes past `chans`.
pub(super) fn fill_block(
    g: &Geometry,
    t: &Geometry,
    x: &[f32],
    img: usize,
    chans: Range<usize>,
    dst: &mut [f32],
    wp: usize,
) {
    let (s, p) = (g.stride, g.padding);
    // Input row `(c, iy)` zero-padded: `padded[j]` holds column `j - p` (the `s·t.w` columns
    // `z` reads).
    let mut padded = vec![0f32; s * wp];
    for (by, row) in dst.chunks_exact_mut(wp * LANES).enumerate() {
        // Lanes in runs of one input row each: `(c, ry)` and `rx` from `rx0` up.
        let mut l = 0;
        while l < LANES {
            let ch = chans.start + l;
            let (c, ry, rx0) = (ch / (s * s), ch / s % s, ch % s);
            let run = (s - rx0).min(LANES - l);
            let iy = (s * by + ry)
                .checked_sub(p)
                .filter(|&iy| iy < g.h && by < t.h && ch < chans.end);
            let lanes = l..l + run.min(chans.end.saturating_sub(ch));
            l += run;
            let Some(iy) = iy else {
                for px in row.chunks_exact_mut(LANES) {
                    px[lanes.start..lanes.start + run].fill(0.0);
                }
                continue;
            };
            let src = &x[((img * g.c_in + c) * g.h + iy) * g.w..][..g.w];
            let (lo, hi) = (p.min(s * t.w), (p + g.w).min(s * t.w));
            padded[..lo].fill(0.0);
            padded[lo..hi].copy_from_slice(&src[..hi - lo]);
            padded[hi..].fill(0.0);
            let pixels = row.chunks_exact_mut(LANES).zip(padded.chunks_exact(s));
            match (s, run, lanes.len()) {
                (4, 4, 4) => copy_runs::<4>(pixels, lanes.start, rx0),
                (2, 2, 2) => copy_runs::<2>(pixels, lanes.start, rx0),
                _ => {
                    for (px, src) in pixels {
                        let (run, rest) =
                            px[lanes.start..lanes.start + run].split_at_mut(lanes.len());
                        run.copy_from_slice(&src[rx0..rx0 + lanes.len()]);
                        rest.fill(0.0);
                    }
                }
            }
        }
    }
}

/// `px[l..l + S] = src[rx..rx + S]` for every pixel `px` and its input columns `src`: a whole
/// run of lanes (`rx = 0`) as one vector move.
#[inline(always)]
fn copy_runs<'a, const S: usize>(
    pixels: impl Iterator<Item = (&'a mut [f32], &'a [f32])>,
    l: usize,
    rx: usize,
) {
    for (px, src) in pixels {
        let src: &[f32; S] = src[rx..rx + S].try_into().unwrap();
        px[l..l + S].copy_from_slice(src);
    }
}

/// The input gradient `dx` (`(n, c_in, h, w)`, overwritten) from the gradient `dz` of `z`
/// (`(n, s²·c_in, t.h, t.w)`): the adjoint of the rearrangement [`fill_block`] describes,
/// which copies every input value to one place of `z` (input values no output reads have no
/// place there and get 0).
pub(super) fn input_grad(g: &Geometry, t: &Geometry, dz: &[f32], dx: &mut [f32]) {
    let s = g.stride;
    dx[..g.n * g.in_len()]
        .par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(i, plane)| {
            let (img, c) = (i / g.c_in, i % g.c_in);
            for (iy, row) in plane.chunks_mut(g.w).enumerate() {
                let (by, ry) = ((iy + g.padding) / s, (iy + g.padding) % s);
                row.fill(0.0);
                if by >= t.h {
                    continue;
                }
                for rx in 0..s {
                    let ch = (c * s + ry) * s + rx;
                    let src = &dz[((img * t.c_in + ch) * t.h + by) * t.w..][..t.w];
                    let (bxs, x0) = valid(g, t, rx);
                    for (j, &v) in src[bxs].iter().enumerate() {
                        row[x0 + j * s] = v;
                    }
                }
            }
        });
}

/// The `(c_out, s²·c_in, q, q)` kernel of `t` from the `(c_out, c_in, k, k)` weight `w` of `g`.
pub(super) fn weight(g: &Geometry, t: &Geometry, w: &[f32]) -> Vec<f32> {
    let mut w2 = vec![0f32; t.c_out * t.c_in * t.k * t.k];
    each_tap(g, t, |from, to| w2[to] = w[from]);
    w2
}

/// The weight gradient of `g` (`(c_out, c_in, k, k)`, overwritten) from that of `t`'s kernel:
/// the taps [`weight`] copied, read back.
pub(super) fn weight_grad(g: &Geometry, t: &Geometry, dw2: &[f32], dw: &mut [f32]) {
    each_tap(g, t, |from, to| dw[from] = dw2[to]);
}

/// `f(i, j)` for every tap, `i` its index in `g`'s weight and `j` in `t`'s.
fn each_tap(g: &Geometry, t: &Geometry, mut f: impl FnMut(usize, usize)) {
    let (s, k, q) = (g.stride, g.k, t.k);
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for ky in 0..k {
                for kx in 0..k {
                    let ch = (c * s + ky % s) * s + kx % s;
                    let i = ((o * g.c_in + c) * k + ky) * k + kx;
                    let j = ((o * t.c_in + ch) * q + ky / s) * q + kx / s;
                    f(i, j);
                }
            }
        }
    }
}
