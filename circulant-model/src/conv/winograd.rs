//! The forward pass of a 3×3, stride-1 convolution as Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Each 2×2 block of output pixels (a *tile*) is computed from the 4×4 input patch under it:
//! `Y = Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`. The sum over input channels is, for each of the
//! 16 positions ξ of the 4×4 transformed patch, a product of the `(c_out, c_in)` matrix of
//! transformed filters `U[ξ]` with the `(c_in, tiles)` matrix of transformed patches `V[ξ]`:
//! 16 multiply-adds per tile and channel pair instead of im2col's 36 (4 pixels × 9 taps).
//! The transforms themselves are additions (and halvings, for the filters) only.
//!
//! Work is split into tasks of [`TILES`] consecutive tiles (across images), each transforming
//! its patches into a thread-owned scratch buffer, running its 16 products and writing its
//! output pixels; with fewer than two blocks of tiles per thread the output channels are split
//! too.
//!
//! The backward pass runs the same way: the input gradient is a Winograd convolution of the
//! output gradient with the flipped filters ([`input_grad_geometry`]), and the weight gradient
//! is the algorithm's adjoint in `g` ([`weight_grad`]).

use rayon::prelude::*;

use super::Geometry;
use crate::cpu::{gemm_block, matmul, with_scratch, Mat, SendPtr};

/// Tiles per task. On the AlexNet and cifar-cnn 3×3 convolutions, 32 to 256 ran within the
/// machine's noise of each other (2-vCPU AMD EPYC, 2026-11-30).
const TILES: usize = 64;

/// Input channels below which the im2col path is faster (its products are then too thin for
/// 16 separate ones to pay off).
const MIN_C_IN: usize = 16;

/// Tiles (over the whole batch) below which the im2col path is faster: the filter transform
/// and 16 products with few columns then cost more than they save (AlexNet's 3×3
/// convolutions at batch 1, 49 tiles: 3-4× slower than im2col).
const MIN_TILES: usize = 512;

/// Values between the starts of two transformed planes holding `len` values: `len` and one
/// cache line more, so that the 16 planes a transform writes or reads together do not start
/// at the same offset modulo 4 KiB (planes of 64 tiles often span a multiple of 4 KiB, and
/// 16 streams in the same L1 sets made the transforms 5× slower).
fn padded(len: usize) -> usize {
    len + 16
}

/// Whether the forward pass of `g` runs as Winograd F(2×2, 3×3).
pub(super) fn applies(g: &Geometry) -> bool {
    g.k == 3
        && g.stride == 1
        && g.c_in >= MIN_C_IN
        && g.n * g.oh.div_ceil(2) * g.ow.div_ceil(2) >= MIN_TILES
}

/// The input gradient of the convolution `g` as a convolution of its output gradient, when that
/// runs as Winograd: `dx[c, iy, ix] = Σ_o Σ_ky,kx w[o, c, 2-ky, 2-kx] · dy[o, iy+ky-p', ix+kx-p']`
/// with `p' = 2 - p`, a 3×3, stride-1 convolution of `dy` `(n, c_out, oh, ow)` into `(n, c_in,
/// h, w)` with the weight [`flipped`] gives.
pub(super) fn input_grad_geometry(g: &Geometry) -> Option<Geometry> {
    if g.k != 3 || g.stride != 1 || g.padding > 2 {
        return None;
    }
    let t = Geometry {
        n: g.n,
        c_in: g.c_out,
        h: g.oh,
        w: g.ow,
        c_out: g.c_in,
        k: 3,
        padding: 2 - g.padding,
        stride: 1,
        oh: g.h,
        ow: g.w,
    };
    applies(&t).then_some(t)
}

/// The weight of [`input_grad_geometry`]'s convolution: `w'[c, o] = rot180(w[o, c])`, shaped
/// `(c_in, c_out, 3, 3)`.
pub(super) fn flipped(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for (oc, k) in w.chunks_exact(9).enumerate() {
        let (o, c) = (oc / c_in, oc % c_in);
        let dst = &mut out[(c * c_out + o) * 9..][..9];
        for (d, v) in dst.iter_mut().zip(k.iter().rev()) {
            *d = *v;
        }
    }
    out
}

/// The transformed filters `U[ξ] = G g Gᵀ` of a `(c_out, c_in, 3, 3)` weight: 16 row-major
/// `(c_out, c_in)` planes, plane `ξ = 4·i + j` holding entry `(i, j)` of every 4×4 `U`.
pub(super) fn filters(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    /// Filters per rayon task.
    const BLOCK: usize = 1024;
    let plane = c_out * c_in;
    let mut u = vec![0f32; 16 * plane];
    // Task b writes entries b·BLOCK.. of each of the 16 planes.
    let mut planes: Vec<_> = u.chunks_mut(plane).map(|p| p.chunks_mut(BLOCK)).collect();
    let blocks: Vec<[&mut [f32]; 16]> = (0..plane.div_ceil(BLOCK))
        .map(|_| std::array::from_fn(|xi| planes[xi].next().expect("one chunk per block")))
        .collect();
    // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]] applied to a 3-vector.
    #[inline(always)]
    fn g(a: f32, b: f32, c: f32) -> [f32; 4] {
        [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
    }
    blocks
        .into_par_iter()
        .zip(w.par_chunks(9 * BLOCK))
        .for_each(|(dst, w)| {
            // The block's 4×4 filters one after the other, then scattered plane by plane.
            let mut block = vec![[0f32; 16]; w.len() / 9];
            for (u, k) in block.iter_mut().zip(w.chunks_exact(9)) {
                let cols = [
                    g(k[0], k[3], k[6]),
                    g(k[1], k[4], k[7]),
                    g(k[2], k[5], k[8]),
                ];
                for i in 0..4 {
                    let row = g(cols[0][i], cols[1][i], cols[2][i]);
                    u[4 * i..4 * i + 4].copy_from_slice(&row);
                }
            }
            for (xi, plane) in dst.into_iter().enumerate() {
                for (d, u) in plane.iter_mut().zip(&block) {
                    *d = u[xi];
                }
            }
        });
    u
}

/// `relu?(conv2d(x, w) + bias)` into `y` (`(n, c_out, oh, ow)`, every value written), with
/// `u = filters(w)`; with a `mask` (shaped as `x`), `x` is read as 0 where the mask is not
/// positive (the backward pass of a fused ReLU).
pub(super) fn forward(
    g: &Geometry,
    (x, mask): (&[f32], Option<&[f32]>),
    u: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let tiles = g.n * th * tw;
    let threads = rayon::current_num_threads().max(1);
    let blocks = tiles.div_ceil(TILES);
    // With fewer tile blocks than about two per thread, split the output channels as well.
    let groups = if blocks >= 2 * threads {
        1
    } else {
        threads.min(g.c_out.div_ceil(16)).max(1)
    };
    let per_group = g.c_out.div_ceil(groups);
    let per_block = if groups > 1 {
        tiles.div_ceil(blocks)
    } else {
        TILES
    };
    let out = SendPtr(y.as_mut_ptr());
    (0..blocks * groups).into_par_iter().for_each(|task| {
        let (blk, grp) = (task / groups, task % groups);
        let ts = blk * per_block..((blk + 1) * per_block).min(tiles);
        let os = grp * per_group..((grp + 1) * per_group).min(g.c_out);
        if ts.is_empty() || os.is_empty() {
            return;
        }
        let (nt, no) = (ts.len(), os.len());
        let (vs, ms) = (padded(g.c_in * nt), padded(no * nt));
        with_scratch(16 * (vs + ms), |buf| {
            let (v, m) = buf.split_at_mut(16 * vs);
            let tiles = tile_list(g, ts);
            transform_input(g, (x, mask), &tiles, v, vs);
            let plane = g.c_out * g.c_in;
            for xi in 0..16 {
                let a = Mat::rows(&u[xi * plane + os.start * g.c_in..], no, g.c_in);
                let b = Mat::rows(&v[xi * vs..], g.c_in, nt);
                // SAFETY: plane ξ of `m` holds `no · nt` values.
                unsafe { gemm_block(SendPtr(m[xi * ms..].as_mut_ptr()), nt, a, b, false) };
            }
            // SAFETY: this task alone writes the pixels of tiles `ts` in channels `os`.
            unsafe { transform_output(g, (m, ms), &tiles, os, bias, relu, out) };
        })
    });
}

/// Tiles per task of [`weight_grad`]: the inner dimension of its products.
const GRAD_TILES: usize = 256;

/// The weight gradient of the convolution `g` (when [`applies`]) as Winograd F(2×2, 3×3) run
/// backwards: with `V = Bᵀ d B` the transformed input patch of a tile and `Z = A dY Aᵀ` its
/// transformed 2×2 output gradient (zero outside the output, and where a `mask` is given and
/// not positive), `dW[o, c] = Gᵀ (Σ_tiles Z[o] ⊙ V[c]) G`: 16 products over the tiles per
/// block of them instead of im2col's product over 9 taps per pixel. Into `dw` (`(c_out, c_in,
/// 3, 3)`, overwritten).
pub(super) fn weight_grad(
    g: &Geometry,
    x: &[f32],
    (dy, mask): (&[f32], Option<&[f32]>),
    dw: &mut [f32],
) {
    let tiles = g.n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    let plane = g.c_in * g.c_out;
    // Per task, 16 planes `Mᵀ[ξ]` (c_in, c_out) summed over its blocks of tiles.
    let m = (0..tiles.div_ceil(GRAD_TILES))
        .into_par_iter()
        .fold(
            || vec![0f32; 16 * plane],
            |mut acc, blk| {
                let ts = blk * GRAD_TILES..((blk + 1) * GRAD_TILES).min(tiles);
                let nt = ts.len();
                let (vs, zs) = (padded(g.c_in * nt), padded(nt * g.c_out));
                with_scratch(16 * (vs + zs), |buf| {
                    let (v, z) = buf.split_at_mut(16 * vs);
                    let tiles = tile_list(g, ts);
                    transform_input(g, (x, None), &tiles, v, vs);
                    transform_grad(g, (dy, mask), &tiles, z, zs);
                    for xi in 0..16 {
                        let a = Mat::rows(&v[xi * vs..], g.c_in, nt);
                        let b = Mat::rows(&z[xi * zs..], nt, g.c_out);
                        matmul(&mut acc[xi * plane..][..plane], a, b, true, false);
                    }
                });
                acc
            },
        )
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0f32; 16 * plane]);
    // Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]] applied to a 4-vector.
    #[inline(always)]
    fn gt(a: [f32; 4]) -> [f32; 3] {
        let (s, d) = (0.5 * (a[1] + a[2]), 0.5 * (a[1] - a[2]));
        [a[0] + s, d, s + a[3]]
    }
    dw.par_chunks_mut(9 * g.c_in)
        .enumerate()
        .for_each(|(o, dw)| {
            for (c, k) in dw.chunks_exact_mut(9).enumerate() {
                let mv = |xi: usize| m[xi * plane + c * g.c_out + o];
                // Gᵀ M on the columns of M (a 3×4 result), then G on its rows.
                let cols: [[f32; 3]; 4] =
                    std::array::from_fn(|j| gt([mv(j), mv(4 + j), mv(8 + j), mv(12 + j)]));
                for r in 0..3 {
                    let row = gt([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
                    k[3 * r..3 * r + 3].copy_from_slice(&row);
                }
            }
        });
}

/// `Z[ξ][t][o] = (A dY Aᵀ)[ξ]` for the 2×2 output-gradient block `dY` of channel `o` under each
/// tile `t` (zero outside the output, and where a `mask` is given and not positive), into `z`:
/// 16 row-major `(tiles.len(), c_out)` planes, `plane` values apart.
fn transform_grad(
    g: &Geometry,
    (dy, mask): (&[f32], Option<&[f32]>),
    tiles: &[Tile],
    z: &mut [f32],
    plane: usize,
) {
    // A = [[1, 0], [1, 1], [1, -1], [0, -1]] applied to a 2-vector.
    #[inline(always)]
    fn a(p: f32, q: f32) -> [f32; 4] {
        [p, p + q, p - q, -q]
    }
    let (oh, ow) = (g.oh, g.ow);
    for (col, tile) in tiles.iter().enumerate() {
        let (rows, cols) = ((oh - tile.oy).min(2), (ow - tile.ox).min(2));
        for o in 0..g.c_out {
            let start = (tile.img * g.c_out + o) * oh * ow + tile.oy * ow + tile.ox;
            let mut d = [[0f32; 2]; 2];
            for (r, row) in d.iter_mut().enumerate().take(rows) {
                for (s, val) in row.iter_mut().enumerate().take(cols) {
                    let at = start + r * ow + s;
                    if mask.is_none_or(|m| m[at] > 0.0) {
                        *val = dy[at];
                    }
                }
            }
            // A on the columns of dY (a 4×2 result), then on its rows.
            let (c0, c1) = (a(d[0][0], d[1][0]), a(d[0][1], d[1][1]));
            for i in 0..4 {
                for (j, val) in a(c0[i], c1[i]).into_iter().enumerate() {
                    z[(4 * i + j) * plane + col * g.c_out + o] = val;
                }
            }
        }
    }
}

/// Where a tile's 4×4 input patch and 2×2 output block lie.
#[derive(Clone, Copy)]
struct Tile {
    /// Image index.
    img: usize,
    /// Top-left input pixel of the patch (may lie in the padding).
    y0: isize,
    x0: isize,
    /// Top-left output pixel.
    oy: usize,
    ox: usize,
}

/// The tiles `ts` (numbered image by image, row by row) of `g`.
fn tile_list(g: &Geometry, ts: std::ops::Range<usize>) -> Vec<Tile> {
    let (th, tw, p) = (g.oh.div_ceil(2), g.ow.div_ceil(2), g.padding as isize);
    ts.map(|t| {
        let (img, ty, tx) = (t / (th * tw), t / tw % th, t % tw);
        Tile {
            img,
            y0: 2 * ty as isize - p,
            x0: 2 * tx as isize - p,
            oy: 2 * ty,
            ox: 2 * tx,
        }
    })
    .collect()
}

/// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for the 4×4 input patch `d` of channel `c` under each tile `t`
/// (zero outside the image, and where a `mask` is given and not positive), into `v`: 16
/// row-major `(c_in, tiles.len())` planes, `plane` values apart.
fn transform_input(
    g: &Geometry,
    (x, mask): (&[f32], Option<&[f32]>),
    tiles: &[Tile],
    v: &mut [f32],
    plane: usize,
) {
    let nt = tiles.len();
    let (h, w) = (g.h as isize, g.w as isize);
    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
    #[inline(always)]
    fn bt(a: [f32; 4]) -> [f32; 4] {
        [a[0] - a[2], a[1] + a[2], a[2] - a[1], a[1] - a[3]]
    }
    for c in 0..g.c_in {
        for (col, tile) in tiles.iter().enumerate() {
            let start = (tile.img * g.c_in + c) * g.h * g.w;
            let src = &x[start..][..g.h * g.w];
            let (y0, x0) = (tile.y0, tile.x0);
            let mut d = [[0f32; 4]; 4];
            if y0 >= 0 && x0 >= 0 && y0 + 4 <= h && x0 + 4 <= w {
                for (r, row) in d.iter_mut().enumerate() {
                    let at = (y0 as usize + r) * g.w + x0 as usize;
                    *row = src[at..at + 4].try_into().expect("4 values");
                }
            } else {
                for (r, row) in d.iter_mut().enumerate() {
                    let iy = y0 + r as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    for (s, val) in row.iter_mut().enumerate() {
                        let ix = x0 + s as isize;
                        if ix >= 0 && ix < w {
                            *val = src[iy as usize * g.w + ix as usize];
                        }
                    }
                }
            }
            if let Some(mask) = mask {
                let mask = &mask[start..][..g.h * g.w];
                for (r, row) in d.iter_mut().enumerate() {
                    for (s, val) in row.iter_mut().enumerate() {
                        let (iy, ix) = (y0 + r as isize, x0 + s as isize);
                        let inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                        if inside && mask[iy as usize * g.w + ix as usize] <= 0.0 {
                            *val = 0.0;
                        }
                    }
                }
            }
            // Bᵀ on the columns of d, then on the rows of the result.
            let mut cols = [[0f32; 4]; 4];
            for (s, col) in cols.iter_mut().enumerate() {
                *col = bt([d[0][s], d[1][s], d[2][s], d[3][s]]);
            }
            for i in 0..4 {
                let out = bt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                for (j, val) in out.into_iter().enumerate() {
                    v[(4 * i + j) * plane + c * nt + col] = val;
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` (+ bias, ReLU) for every tile of `tiles` and channel of `os`, from the products
/// `m` (16 row-major `(os.len(), tiles.len())` planes, `m.1` values apart), written to the
/// output pixels inside the image.
///
/// # Safety
/// `out` points at the `(n, c_out, oh, ow)` output, and no other thread writes the pixels of
/// these tiles and channels.
unsafe fn transform_output(
    g: &Geometry,
    m: (&[f32], usize),
    tiles: &[Tile],
    os: std::ops::Range<usize>,
    bias: &[f32],
    relu: bool,
    out: SendPtr,
) {
    let ((m, plane), nt) = (m, tiles.len());
    // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
    #[inline(always)]
    fn at(a: [f32; 4]) -> [f32; 2] {
        [a[0] + a[1] + a[2], a[1] - a[2] - a[3]]
    }
    for (row, o) in os.enumerate() {
        // The 16 planes of this output channel's products.
        let mp: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi * plane + row * nt..][..nt]);
        for (col, tile) in tiles.iter().enumerate() {
            // Aᵀ on the columns of M (a 2×4 result), then on its rows.
            let mut half = [[0f32; 2]; 4];
            for (j, h) in half.iter_mut().enumerate() {
                *h = at([mp[j][col], mp[4 + j][col], mp[8 + j][col], mp[12 + j][col]]);
            }
            let px = [
                at([half[0][0], half[1][0], half[2][0], half[3][0]]),
                at([half[0][1], half[1][1], half[2][1], half[3][1]]),
            ];
            let base = (tile.img * g.c_out + o) * g.oh * g.ow + tile.oy * g.ow + tile.ox;
            for (r, px) in px.into_iter().enumerate().take(g.oh - tile.oy) {
                for (s, val) in px.into_iter().enumerate().take(g.ow - tile.ox) {
                    let val = val + bias[o];
                    *out.0.add(base + r * g.ow + s) = if relu { val.max(0.0) } else { val };
                }
            }
        }
    }
}
