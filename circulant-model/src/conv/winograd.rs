//! Stride-1 convolutions with a 3×3 or 5×5 kernel as Winograd's minimal filtering F(4×4, 3×3)
//! or F(2×2, 5×5) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR
//! 2016).
//!
//! Each `M×M` block of output pixels (a *tile*) is computed from the `N×N` input patch under
//! it (`N = M + k - 1`): `Y = Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`. The sum over input channels
//! is, for each of the `N²` positions ξ of the transformed patch, a product of the `(c_out,
//! c_in)` matrix of transformed filters `U[ξ]` with the `(c_in, tiles)` matrix of transformed
//! patches `V[ξ]`: `N²` multiply-adds per tile and channel pair instead of im2col's `M²·k²`
//! (36 instead of 144 for F(4×4, 3×3), 36 instead of 100 for F(2×2, 5×5)). The transforms
//! are small constant matrices, written out per algorithm as additions and a few
//! multiplications ([`Algo`]).
//!
//! Work is split into tasks of up to [`Algo::TILES`] consecutive tiles (across images), each
//! transforming its patches into a thread-owned scratch buffer, running its `N²` products and
//! writing its output pixels; with fewer than three blocks of tiles per thread each thread
//! takes an equal run of them, and with fewer than two the output channels are split too.
//! The filter, input and output transforms run on vectors of channels or tiles
//! ([`super::lanes`]): the input (planes, or a strided convolution's input rearranged, see
//! `space_to_depth`) is first copied into a padded layout with 16 channels side by side
//! ([`Blocked`]), so that each entry of 16 patches is one load.
//!
//! The backward pass runs the same way: the input gradient is a Winograd convolution of the
//! output gradient with the flipped filters ([`input_grad_geometry`]), and the weight gradient
//! of a 3×3 kernel is F(2×2, 3×3)'s adjoint in `g` ([`weight_grad`]).

use rayon::prelude::*;

use super::lanes::{with_lanes, Lane, LANES};
use super::{space_to_depth, Geometry};
use crate::cpu::{gemm_block, matmul, with_kept, with_scratch, KeptBuffer, Mat, SendPtr};

/// The input of a Winograd convolution.
#[derive(Clone, Copy)]
pub(super) enum Input<'a> {
    /// `(n, c_in, h, w)` planes, read as 0 where the mask (shaped alike), if any, is not
    /// positive (the backward pass of a fused ReLU).
    Planes(&'a [f32], Option<&'a [f32]>),
    /// The input of the strided convolution `g`, rearranged as `space_to_depth` describes.
    SpaceToDepth(&'a Geometry, &'a [f32]),
}

/// One Winograd algorithm F(M×M, R×R): its `M×M` output tiles, `N×N` input patches (`N = M +
/// R - 1`) and the 1-d transforms it applies to the columns, then the rows, of each block.
pub(super) trait Algo<const M: usize, const N: usize, const R: usize> {
    /// Tiles per task of the forward pass.
    const TILES: usize;
    /// `Bᵀ·a`: the input transform.
    fn bt<L: Lane>(a: [L; N]) -> [L; N];
    /// `G·a`: the filter transform.
    fn g<L: Lane>(a: [L; R]) -> [L; N];
    /// `Aᵀ·a`: the output transform.
    fn at<L: Lane>(a: [L; N]) -> [L; M];
}

/// The adjoint transforms of an [`Algo`], which its weight gradient runs on.
pub(super) trait Adjoint<const M: usize, const N: usize, const R: usize>:
    Algo<M, N, R>
{
    /// `Gᵀ·a`: the adjoint of the filter transform (the weight gradient's output transform).
    fn gt(a: [f32; N]) -> [f32; R];
    /// `A·a`: the adjoint of the output transform (the weight gradient's transform of `dY`).
    fn a<L: Lane>(a: [L; M]) -> [L; N];
}

/// F(2×2, 3×3) on the points 0, 1, -1, ∞: the 3×3 weight gradient.
pub(super) struct F2x3;

impl Algo<2, 4, 3> for F2x3 {
    /// On the AlexNet and cifar-cnn 3×3 convolutions, 32 to 256 ran within the machine's noise
    /// of each other (2-vCPU AMD EPYC, 2026-11-30).
    const TILES: usize = 64;

    /// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    #[inline(always)]
    fn bt<L: Lane>(a: [L; 4]) -> [L; 4] {
        [a[0] - a[2], a[1] + a[2], a[2] - a[1], a[1] - a[3]]
    }

    /// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
    #[inline(always)]
    fn g<L: Lane>([a, b, c]: [L; 3]) -> [L; 4] {
        [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c]
    }

    /// `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
    #[inline(always)]
    fn at<L: Lane>(a: [L; 4]) -> [L; 2] {
        [a[0] + a[1] + a[2], a[1] - a[2] - a[3]]
    }
}

impl Adjoint<2, 4, 3> for F2x3 {
    #[inline(always)]
    fn gt(a: [f32; 4]) -> [f32; 3] {
        let (s, d) = (0.5 * (a[1] + a[2]), 0.5 * (a[1] - a[2]));
        [a[0] + s, d, s + a[3]]
    }

    #[inline(always)]
    fn a<L: Lane>([p, q]: [L; 2]) -> [L; 4] {
        [p, p + q, p - q, L::ZERO - q]
    }
}

/// F(4×4, 3×3) on the points 0, 1, -1, 2, -2, ∞: 36 multiply-adds per 16 output pixels and
/// channel pair instead of F(2×2, 3×3)'s 64. Its float32 outputs and input gradients were
/// within 6e-6 to 1e-5 of the float64 ones relative to the largest (F(2×2, 3×3): 2e-7 to
/// 5e-7; 64 and 192 input channels). Its adjoint, as a weight gradient, was up to 1.2e-4 off
/// on values of 0.2 (over the tests' tolerance), so the weight gradient keeps F(2×2, 3×3).
pub(super) struct F4x3;

impl Algo<4, 6, 3> for F4x3 {
    /// AlexNet's conv3, conv4 and conv5 forward at batch 32 took 29/38/25, 22/28/20,
    /// 18/23/16 and 18/24/17 ms with 16, 32, 64 and 128 (2-vCPU Xeon with AVX-512,
    /// 2026-12-03; with 32 or fewer the products ran on gemm's narrower kernel).
    const TILES: usize = 64;

    /// `Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
    /// [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`.
    #[inline(always)]
    fn bt<L: Lane>(a: [L; 6]) -> [L; 6] {
        let (p, q) = (a[4] - a[2] * 4.0, a[3] - a[1] * 4.0);
        let (r, s) = (a[4] - a[2], (a[3] - a[1]) * 2.0);
        [
            a[0] * 4.0 - a[2] * 5.0 + a[4],
            p + q,
            p - q,
            r + s,
            r - s,
            a[1] * 4.0 - a[3] * 5.0 + a[5],
        ]
    }

    /// `G = [[¼, 0, 0], -⅙·[1, 1, 1], -⅙·[1, -1, 1], [1/24, 1/12, ⅙], [1/24, -1/12, ⅙],
    /// [0, 0, 1]]`.
    #[inline(always)]
    fn g<L: Lane>([a, b, c]: [L; 3]) -> [L; 6] {
        let (even, even2, b12) = (a + c, a * (1.0 / 24.0) + c * (1.0 / 6.0), b * (1.0 / 12.0));
        [
            a * 0.25,
            (even + b) * (-1.0 / 6.0),
            (even - b) * (-1.0 / 6.0),
            even2 + b12,
            even2 - b12,
            c,
        ]
    }

    /// `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
    /// [0, 1, -1, 8, -8, 1]]`.
    #[inline(always)]
    fn at<L: Lane>(m: [L; 6]) -> [L; 4] {
        let (s, d) = ((m[1] + m[2], m[3] + m[4]), (m[1] - m[2], m[3] - m[4]));
        [
            m[0] + s.0 + s.1,
            d.0 + d.1 * 2.0,
            s.0 + s.1 * 4.0,
            d.0 + d.1 * 8.0 + m[5],
        ]
    }
}

/// F(2×2, 5×5) on the points 0, 1, -1, 2, -2, ∞ (the input transform of [`F4x3`]): its
/// float32 result is within ~2e-6 of the exact one relative to the largest output (F(2×2,
/// 3×3): ~2e-7). Its adjoint, as a weight gradient, was ~1e-5 off and no faster than im2col's
/// on AlexNet's conv2 (2-vCPU AMD EPYC Zen 5, 2026-12-02), so 5×5 weight gradients take im2col.
pub(super) struct F2x5;

impl Algo<2, 6, 5> for F2x5 {
    /// AlexNet's conv2 forward at batch 32 took 54, 43, 40.5 and 41 ms with 16, 32, 64 and
    /// 128 (2-vCPU Xeon with AVX-512, 2026-12-03).
    const TILES: usize = 64;

    #[inline(always)]
    fn bt<L: Lane>(a: [L; 6]) -> [L; 6] {
        F4x3::bt(a)
    }

    /// `G = [[¼, 0, 0, 0, 0], -⅙·[1, 1, 1, 1, 1], -⅙·[1, -1, 1, -1, 1],
    /// [1/24, 1/12, ⅙, ⅓, ⅔], [1/24, -1/12, ⅙, -⅓, ⅔], [0, 0, 0, 0, 1]]`.
    #[inline(always)]
    fn g<L: Lane>([a, b, c, d, e]: [L; 5]) -> [L; 6] {
        let (even, odd) = (a + c + e, b + d);
        let even2 = a * (1.0 / 24.0) + c * (1.0 / 6.0) + e * (2.0 / 3.0);
        let odd2 = b * (1.0 / 12.0) + d * (1.0 / 3.0);
        [
            a * 0.25,
            (even + odd) * (-1.0 / 6.0),
            (even - odd) * (-1.0 / 6.0),
            even2 + odd2,
            even2 - odd2,
            e,
        ]
    }

    /// `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]]`.
    #[inline(always)]
    fn at<L: Lane>(m: [L; 6]) -> [L; 2] {
        let (s, d) = ((m[1] + m[2], m[3] + m[4]), (m[1] - m[2], m[3] - m[4]));
        [m[0] + s.0 + s.1, d.0 + d.1 * 2.0 + m[5]]
    }
}

/// The `Q×Q` block of entries `at(i, j)` (explicit loops: `std::array::from_fn` was not
/// inlined in the transforms' loops).
#[inline(always)]
fn block<L: Lane, const Q: usize>(at: impl Fn(usize, usize) -> L) -> [[L; Q]; Q] {
    let mut d = [[L::ZERO; Q]; Q];
    for (i, row) in d.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = at(i, j);
        }
    }
    d
}

/// `f` applied to the columns of the `Q×Q` block `d`, then to the rows of the result:
/// `F·d·Fᵀ` for the `P×Q` matrix `F` of `f`.
#[inline(always)]
fn sandwich<L: Lane, const P: usize, const Q: usize>(
    f: impl Fn([L; Q]) -> [L; P],
    d: &[[L; Q]; Q],
) -> [[L; P]; P] {
    let mut cols = [[L::ZERO; P]; Q];
    for (s, col) in cols.iter_mut().enumerate() {
        let mut v = [L::ZERO; Q];
        for (r, v) in v.iter_mut().enumerate() {
            *v = d[r][s];
        }
        *col = f(v);
    }
    let mut out = [[L::ZERO; P]; P];
    for (i, row) in out.iter_mut().enumerate() {
        let mut v = [L::ZERO; Q];
        for (s, v) in v.iter_mut().enumerate() {
            *v = cols[s][i];
        }
        *row = f(v);
    }
    out
}

/// Runs `$f::<M, N, R, Algo>($args)` for the forward algorithm of the geometry's kernel size
/// (3 or 5, which [`applies`] and [`input_grad_geometry`] guarantee).
macro_rules! by_kernel {
    ($g:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $g.k {
            3 => $f::<4, 6, 3, F4x3>($($arg),*),
            5 => $f::<2, 6, 5, F2x5>($($arg),*),
            k => unreachable!("no Winograd algorithm for {k}×{k} kernels"),
        }
    };
}

/// Input or output channels below which the im2col path is faster (the products are then too
/// thin for `N²` separate ones to pay off; a 5×5 input gradient into one channel, mnist-cnn's
/// conv1, ran 5× slower as Winograd).
const MIN_CHANNELS: usize = 16;

/// Output side below which 5×5 convolutions take im2col: on mnist-cnn's conv2 (8×8 outputs,
/// its input gradient 12×12 from 8×8 padded by 4) F(2×2, 5×5) was no faster (2-vCPU AMD EPYC
/// Zen 5, 2026-12-02).
const MIN_SIDE_5X5: usize = 16;

/// Output pixels (over the whole batch) below which the im2col path is faster: the filter
/// transform and `N²` products with few columns then cost more than they save. 3×3
/// (F(4×4, 3×3)): AlexNet's conv3 to conv5 (13×13 outputs) ran at im2col's speed at batch 4
/// to 6 and 15-20% faster at batch 8; cifar-cnn's conv5 (8×8) 7% slower at batch 8 and 25%
/// faster at 16. 5×5: AlexNet's conv2 at batch 1 (27×27 outputs) ran its forward pass 9%
/// faster as Winograd, but forward and backward 10% slower. (2-vCPU Xeon with AVX-512,
/// 2026-12-03.)
fn min_pixels(k: usize) -> usize {
    if k == 3 {
        1024
    } else {
        2048
    }
}

/// Values between the starts of two transformed planes holding `len` values: `len` and one
/// cache line more, so that the `N²` planes a transform writes or reads together do not start
/// at the same offset modulo 4 KiB (planes of 64 tiles often span a multiple of 4 KiB, and
/// 16 streams in the same L1 sets made the transforms 5× slower). The extra [`LANES`] values
/// also let the output transform read whole vectors past a plane's last tile.
fn padded(len: usize) -> usize {
    len + LANES
}

/// Whether the forward pass of `g` runs as Winograd (F(4×4, 3×3) or F(2×2, 5×5)).
pub(super) fn applies(g: &Geometry) -> bool {
    applies_prepared(g) && g.n * g.oh * g.ow >= min_pixels(g.k)
}

/// Whether the forward pass of `g` runs as Winograd when its filters were transformed
/// beforehand ([`filters`], for inference): at any number of output pixels. Without the filter
/// transform, AlexNet's conv2 to conv5 at batch 1 (27×27 and 13×13 outputs) took 0.6–0.8 of
/// im2col's time; with it, conv3 to conv5 took 1.7–2× (2-vCPU Xeon with AVX-512, 2026-12-03).
pub(super) fn applies_prepared(g: &Geometry) -> bool {
    (g.k == 3 || (g.k == 5 && g.oh.min(g.ow) >= MIN_SIDE_5X5))
        && g.stride == 1
        && g.c_in.min(g.c_out) >= MIN_CHANNELS
}

/// The input gradient of the convolution `g` as a convolution of its output gradient, when that
/// runs as Winograd: `dx[c, iy, ix] = Σ_o Σ_ky,kx w[o, c, k-1-ky, k-1-kx] · dy[o, iy+ky-p',
/// ix+kx-p']` with `p' = k-1-p`, a `k×k`, stride-1 convolution of `dy` `(n, c_out, oh, ow)`
/// into `(n, c_in, h, w)` with the flipped weight ([`with_filters`] with `flip`).
pub(super) fn input_grad_geometry(g: &Geometry) -> Option<Geometry> {
    if g.stride != 1 || g.padding >= g.k {
        return None;
    }
    let t = Geometry {
        n: g.n,
        c_in: g.c_out,
        h: g.oh,
        w: g.ow,
        c_out: g.c_in,
        k: g.k,
        padding: g.k - 1 - g.padding,
        stride: 1,
        oh: g.h,
        ow: g.w,
    };
    applies(&t).then_some(t)
}

/// `f(u)` with the transformed filters `U[ξ] = G g Gᵀ` of the convolution `g`, in a buffer the
/// calling thread keeps: `N²` row-major `(c_out, c_in)` planes, plane `ξ = N·i + j` holding
/// entry `(i, j)` of every `N×N` `U`. The filters `g[o, c]` are those of the `(c_out, c_in, k, k)`
/// weight `w`, or with `flip` (for [`input_grad_geometry`]'s convolution `g`, `w` then shaped
/// `(c_in, c_out, k, k)`) `rot180(w[c, o])`.
pub(super) fn with_filters<O>(
    g: &Geometry,
    w: &[f32],
    flip: bool,
    f: impl FnOnce(&[f32]) -> O,
) -> O {
    let n = by_kernel!(g, patch_side());
    with_kept(&FILTERS, n * n * g.c_out * g.c_in, |u| {
        by_kernel!(g, fill_filters(g, (w, flip), u));
        f(u)
    })
}

/// The transformed filters of the convolution `g` (as [`with_filters`] without `flip`), in a
/// buffer of their own.
pub(super) fn filters(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let n = by_kernel!(g, patch_side());
    let mut u = vec![0f32; n * n * g.c_out * g.c_in];
    by_kernel!(g, fill_filters(g, (w, false), &mut u));
    u
}

/// `N`, the side of the algorithm's input patches.
fn patch_side<const M: usize, const N: usize, const R: usize, T: Algo<M, N, R>>() -> usize {
    N
}

/// The transformed filters of [`with_filters`] into `u`.
fn fill_filters<const M: usize, const N: usize, const R: usize, T: Algo<M, N, R>>(
    g: &Geometry,
    (w, flip): (&[f32], bool),
    u: &mut [f32],
) {
    /// Output channels per rayon task (AlexNet's filter transforms ran 1.5-2× slower with 16).
    const ROWS: usize = 4;
    let (plane, chunk) = (g.c_out * g.c_in, ROWS * g.c_in);
    // Task b writes rows b·ROWS.. of each of the N² planes.
    let mut planes: Vec<_> = u.chunks_mut(plane).map(|p| p.chunks_mut(chunk)).collect();
    let tasks: Vec<Vec<&mut [f32]>> = (0..g.c_out.div_ceil(ROWS))
        .map(|_| {
            planes
                .iter_mut()
                .map(|p| p.next().expect("one chunk per task"))
                .collect()
        })
        .collect();
    tasks.into_par_iter().enumerate().for_each(|(b, mut dst)| {
        with_lanes!(transform_filters::<M, N, R, T>(
            g,
            (w, flip),
            b * ROWS,
            &mut dst
        ))
    });
}

/// The transformed filters of the output channels `o0..` into the chunks `dst` of the `N²`
/// planes (whole rows), [`LANES`] input channels side by side, `L::WIDTH` at a time.
#[inline(always)]
fn transform_filters<const M: usize, const N: usize, const R: usize, T: Algo<M, N, R>, L: Lane>(
    g: &Geometry,
    (w, flip): (&[f32], bool),
    o0: usize,
    dst: &mut [&mut [f32]],
) {
    let (rows, kk) = (dst[0].len() / g.c_in, R * R);
    for c0 in (0..g.c_in).step_by(LANES) {
        let n = LANES.min(g.c_in - c0);
        for r in 0..rows {
            // Entry (y, x) of the filter of pair (o, c0 + i) at k[y][x][i].
            let (o, mut k) = (o0 + r, [[[0f32; LANES]; R]; R]);
            for (i, c) in (c0..c0 + n).enumerate() {
                let src = if flip {
                    &w[(c * g.c_out + o) * kk..][..kk]
                } else {
                    &w[(o * g.c_in + c) * kk..][..kk]
                };
                for (e, &v) in src.iter().enumerate() {
                    let e = if flip { kk - 1 - e } else { e };
                    k[e / R][e % R][i] = v;
                }
            }
            let mut out = [[[0f32; LANES]; N]; N];
            for l in (0..LANES).step_by(L::WIDTH) {
                let u = sandwich(
                    #[inline(always)]
                    |a| T::g(a),
                    &block::<L, R>(|y, x| L::load(&k[y][x][l..])),
                );
                for (u, out) in u.iter().zip(&mut out) {
                    for (u, out) in u.iter().zip(out) {
                        u.store(&mut out[l..]);
                    }
                }
            }
            let at = r * g.c_in + c0;
            for (xi, d) in dst.iter_mut().enumerate() {
                d[at..at + n].copy_from_slice(&out[xi / N][xi % N][..n]);
            }
        }
    }
}

/// `relu?(conv2d(x, w) + bias)` into `y` (`(n, c_out, oh, ow)`, every value written), with
/// `u = filters(w)`.
pub(super) fn forward(g: &Geometry, x: Input, u: &[f32], bias: &[f32], relu: bool, y: &mut [f32]) {
    by_kernel!(g, forward_with(g, x, u, bias, relu, y))
}

fn forward_with<const M: usize, const N: usize, const R: usize, T: Algo<M, N, R>>(
    g: &Geometry,
    x: Input,
    u: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    let tiles = g.n * g.oh.div_ceil(M) * g.ow.div_ceil(M);
    let threads = rayon::current_num_threads().max(1);
    let blocks = tiles.div_ceil(T::TILES);
    // With fewer tile blocks than about two per thread, split the output channels as well.
    let groups = if blocks >= 2 * threads {
        1
    } else {
        threads.min(g.c_out.div_ceil(16)).max(1)
    };
    let per_group = g.c_out.div_ceil(groups);
    // Blocks of tiles: with the channels split, `blocks` equal ones; with fewer than three
    // blocks of `T::TILES` per thread, an equal run of tiles per thread cut into such blocks
    // (196 tiles, a 56×56 output, in blocks of 64 left one of two threads 128 tiles and the
    // other 68: 11% slower); otherwise blocks of `T::TILES`, which the threads share out as
    // they finish (with runs per thread 112×112 ran 3% slower, its runs ending in 8 tiles).
    let ranges: Vec<std::ops::Range<usize>> = if groups > 1 {
        let per_block = tiles.div_ceil(blocks);
        (0..blocks)
            .map(|b| b * per_block..((b + 1) * per_block).min(tiles))
            .collect()
    } else if blocks >= 3 * threads {
        (0..tiles)
            .step_by(T::TILES)
            .map(|t| t..(t + T::TILES).min(tiles))
            .collect()
    } else {
        (0..threads)
            .flat_map(|r| {
                let (lo, hi) = (r * tiles / threads, (r + 1) * tiles / threads);
                (lo..hi)
                    .step_by(T::TILES)
                    .map(move |t| t..(t + T::TILES).min(hi))
            })
            .collect()
    };
    Blocked::with::<M, N, _>(&INPUT, g, x, |xb| {
        let ld = xb.ld();
        let out = SendPtr(y.as_mut_ptr());
        (0..ranges.len() * groups).into_par_iter().for_each(|task| {
            let (blk, grp) = (task / groups, task % groups);
            let ts = ranges[blk].clone();
            let os = grp * per_group..((grp + 1) * per_group).min(g.c_out);
            if ts.is_empty() || os.is_empty() {
                return;
            }
            let (nt, no) = (ts.len(), os.len());
            let (vs, ms) = (padded(ld * nt), padded(no * nt));
            with_scratch(N * N * (vs + ms), |buf| {
                let (v, m) = buf.split_at_mut(N * N * vs);
                let tiles = tile_list::<M>(g, ts);
                transform_input::<M, N, R, T>(xb, &tiles, v, vs);
                let plane = g.c_out * g.c_in;
                for xi in 0..N * N {
                    let a = Mat::rows(&u[xi * plane + os.start * g.c_in..], no, g.c_in);
                    let b = Mat::strided(&v[xi * vs..], nt, g.c_in, ld).t();
                    // SAFETY: plane ξ of `m` holds `no · nt` values.
                    unsafe { gemm_block(SendPtr(m[xi * ms..].as_mut_ptr()), nt, a, b, false) };
                }
                // SAFETY: this task alone writes the pixels of tiles `ts` in channels `os`.
                unsafe {
                    transform_output::<M, N, R, T>(g, (m, ms), &tiles, os, (bias, relu), out)
                };
            })
        });
    })
}

/// Tiles per task of [`weight_grad`]: the inner dimension of its products.
const GRAD_TILES: usize = 256;

/// The weight gradient of the convolution `g` (when [`weight_grad_applies`]) as its Winograd algorithm run
/// backwards: with `V = Bᵀ d B` the transformed input patch of a tile and `Z = A dY Aᵀ` its
/// transformed 2×2 output gradient (zero outside the output, and where a `mask` is given and
/// not positive), `dW[o, c] = Gᵀ (Σ_tiles Z[o] ⊙ V[c]) G`: `N²` products over the tiles per
/// block of them instead of im2col's product over `k²` taps per pixel. Into `dw` (`(c_out,
/// c_in, k, k)`, overwritten).
pub(super) fn weight_grad(
    g: &Geometry,
    x: Input,
    (dy, mask): (&[f32], Option<&[f32]>),
    dw: &mut [f32],
) {
    match g.k {
        3 => weight_grad_with::<2, 4, 3, F2x3>(g, x, (dy, mask), dw),
        k => unreachable!("no Winograd weight gradient for {k}×{k} kernels"),
    }
}

/// Whether the weight gradient of `g` runs as [`weight_grad`].
pub(super) fn weight_grad_applies(g: &Geometry) -> bool {
    g.k == 3 && applies(g)
}

fn weight_grad_with<const M: usize, const N: usize, const R: usize, T: Adjoint<M, N, R>>(
    g: &Geometry,
    x: Input,
    (dy, mask): (&[f32], Option<&[f32]>),
    dw: &mut [f32],
) {
    let tiles = g.n * g.oh.div_ceil(M) * g.ow.div_ceil(M);
    let plane = g.c_in * g.c_out;
    // N² planes `Mᵀ[ξ]` (c_in, c_out) summed over one contiguous run of tiles per thread, in
    // blocks of up to GRAD_TILES, then over the runs in order: for a given thread count the
    // sum does not depend on which thread took which run (a resumed training run repeats the
    // uninterrupted one bit for bit). One run per thread, not more: each run's planes are
    // summed again at the end (with two per thread that sum took a third of AlexNet conv4's
    // weight gradient).
    let runs = rayon::current_num_threads().clamp(1, tiles.div_ceil(GRAD_TILES).max(1));
    // The output gradient laid out as an M×M-patch input: the transforms of both sides then
    // run on vectors of channels.
    let gy = Geometry {
        c_in: g.c_out,
        h: g.oh,
        w: g.ow,
        k: 1,
        padding: 0,
        stride: 1,
        ..*g
    };
    let partials: Vec<Vec<f32>> = Blocked::with::<M, N, _>(&INPUT, g, x, |xb| {
        Blocked::with::<M, M, _>(&GRAD, &gy, Input::Planes(dy, mask), |gb| {
            let (ld, ldg) = (xb.ld(), gb.ld());
            (0..runs)
                .into_par_iter()
                .map(|run| {
                    let mut acc = vec![0f32; N * N * plane];
                    let start = run * tiles / runs;
                    let len = (run + 1) * tiles / runs - start;
                    let blocks = len.div_ceil(GRAD_TILES);
                    for blk in 0..blocks {
                        let ts = start + blk * len / blocks..start + (blk + 1) * len / blocks;
                        let nt = ts.len();
                        let (vs, zs) = (padded(ld * nt), padded(nt * ldg));
                        with_scratch(N * N * (vs + zs), |buf| {
                            let (v, z) = buf.split_at_mut(N * N * vs);
                            let tiles = tile_list::<M>(g, ts);
                            transform_input::<M, N, R, T>(xb, &tiles, v, vs);
                            transform_grad::<M, N, R, T>(gb, &tiles, z, zs);
                            for xi in 0..N * N {
                                let a = Mat::strided(&v[xi * vs..], nt, g.c_in, ld).t();
                                let b = Mat::strided(&z[xi * zs..], nt, g.c_out, ldg);
                                matmul(&mut acc[xi * plane..][..plane], a, b, true, false);
                            }
                        });
                    }
                    acc
                })
                .collect()
        })
    });
    // dW[o, c] = Gᵀ (Σ_runs M[c, o]) G, the runs summed in order. A task takes a few output
    // channels: for each c it reads a short contiguous stretch of every plane of every run.
    let (c_in, c_out) = (g.c_in, g.c_out);
    dw.par_chunks_mut(OUT_CHUNK * R * R * c_in)
        .enumerate()
        .for_each(|(chunk, dw)| {
            let os = chunk * OUT_CHUNK..(chunk * OUT_CHUNK + OUT_CHUNK).min(c_out);
            let mut sum = vec![[0f32; OUT_CHUNK]; N * N];
            for c in 0..c_in {
                for (xi, sum) in sum.iter_mut().enumerate() {
                    let at = xi * plane + c * c_out + os.start;
                    sum.fill(0.0);
                    for p in &partials {
                        for (s, v) in sum.iter_mut().zip(&p[at..at + os.len()]) {
                            *s += v;
                        }
                    }
                }
                for (i, dw) in dw.chunks_exact_mut(R * R * c_in).enumerate() {
                    let mv = block::<f32, N>(|a, b| sum[N * a + b][i]);
                    let k = &mut dw[c * R * R..][..R * R];
                    for (r, row) in sandwich(T::gt, &mv).iter().enumerate() {
                        k[R * r..R * r + R].copy_from_slice(row);
                    }
                }
            }
        });
}

/// Output channels per task of [`weight_grad`]'s final transform: one cache line of each plane.
const OUT_CHUNK: usize = 16;

/// `Z[ξ][t][o] = (A dY Aᵀ)[ξ]` for the M×M output-gradient block `dY` of channel `o` under each
/// tile `t`, [`LANES`] channels at a time from the blocked gradient `gb`, into `z`: `N²`
/// row-major `(tiles.len(), gb.ld())` planes, `plane` values apart.
fn transform_grad<const M: usize, const N: usize, const R: usize, T: Adjoint<M, N, R>>(
    gb: &Blocked,
    tiles: &[Tile],
    z: &mut [f32],
    plane: usize,
) {
    with_lanes!(transform_patches::<M, N>(
        gb,
        tiles,
        #[inline(always)]
        |a| T::a(a),
        (z, plane)
    ))
}

/// Where a tile lies: its `M×M` output block, and its `N×N` input patch at the same offset in
/// the padded input of [`Blocked`].
#[derive(Clone, Copy)]
struct Tile {
    /// Image index.
    img: usize,
    /// Top-left output pixel.
    oy: usize,
    ox: usize,
}

/// The `M×M` tiles `ts` (numbered image by image, row by row) of `g`.
fn tile_list<const M: usize>(g: &Geometry, ts: std::ops::Range<usize>) -> Vec<Tile> {
    let (th, tw) = (g.oh.div_ceil(M), g.ow.div_ceil(M));
    ts.map(|t| {
        let (img, ty, tx) = (t / (th * tw), t / tw % th, t % tw);
        Tile {
            img,
            oy: M * ty,
            ox: M * tx,
        }
    })
    .collect()
}

thread_local! {
    /// The calling thread's [`Blocked`] input, and the weight gradient's blocked output gradient.
    static INPUT: KeptBuffer = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's transformed filters ([`with_filters`]).
    static FILTERS: KeptBuffer = const { std::cell::RefCell::new(Vec::new()) };
    static GRAD: KeptBuffer = const { std::cell::RefCell::new(Vec::new()) };
}

/// The input of a convolution (or, for the weight gradient, its output gradient) laid out for
/// [`transform_patches`]: per image, blocks of [`LANES`] channels, each an `(hp, wp, LANES)`
/// array of the channels' zero-padded planes (channel fastest, so that the same pixel of a
/// block's channels is one vector), zero outside the image, in the channels past `c_in`, and
/// where a mask is given and not positive.
struct Blocked<'a> {
    data: &'a [f32],
    /// Channel blocks per image.
    blocks: usize,
    /// Padded rows and columns: every tile's `N×N` patch lies inside.
    hp: usize,
    wp: usize,
}

impl Blocked<'_> {
    /// `f(blocked)` for the input of `g`, laid out in a buffer the calling thread keeps
    /// between calls (with a fresh, zeroed one per call cifar-cnn inferred 6-9% slower on a
    /// 2-vCPU Xeon, 2026-12-03).
    fn with<const M: usize, const N: usize, O>(
        key: &'static std::thread::LocalKey<KeptBuffer>,
        g: &Geometry,
        input: Input,
        f: impl FnOnce(&Blocked) -> O,
    ) -> O {
        let blocks = g.c_in.div_ceil(LANES);
        // The last tile's patch ends N - M past its M×M output block.
        let (hp, wp) = (M * g.oh.div_ceil(M) + N - M, M * g.ow.div_ceil(M) + N - M);
        let len = g.n * blocks * hp * wp * LANES;
        let fill = |data: &mut [f32]| {
            data.par_chunks_mut(hp * wp * LANES)
                .enumerate()
                .for_each(|(ib, dst)| {
                    let (img, cb) = (ib / blocks, ib % blocks);
                    let chans = cb * LANES..(cb * LANES + LANES).min(g.c_in);
                    match input {
                        Input::Planes(x, mask) => fill_planes(g, (x, mask), img, chans, dst, wp),
                        Input::SpaceToDepth(sg, x) => {
                            space_to_depth::fill_block(sg, g, x, img, chans, dst, wp)
                        }
                    }
                });
        };
        let blocked = |data: &mut [f32]| {
            fill(data);
            f(&Blocked {
                data,
                blocks,
                hp,
                wp,
            })
        };
        with_kept(key, len, blocked)
    }

    /// Values per row of the transformed-input planes: the channels rounded up to blocks.
    fn ld(&self) -> usize {
        self.blocks * LANES
    }
}

/// One `(hp, wp, LANES)` block of [`Blocked`]: channels `chans` of image `img` of the planes
/// `x` (read as 0 where `mask` is not positive), zero-padded.
fn fill_planes(
    g: &Geometry,
    (x, mask): (&[f32], Option<&[f32]>),
    img: usize,
    chans: std::ops::Range<usize>,
    dst: &mut [f32],
    wp: usize,
) {
    let (p, hw, lanes) = (g.padding, g.h * g.w, chans.len());
    // Zero what the copy leaves: the padding, and a partial block's last lanes.
    if lanes < LANES {
        dst.fill(0.0);
    } else {
        let rows = wp * LANES;
        dst[..p * rows].fill(0.0);
        dst[(p + g.h) * rows..].fill(0.0);
        for row in dst.chunks_exact_mut(rows).skip(p).take(g.h) {
            row[..p * LANES].fill(0.0);
            row[(p + g.w) * LANES..].fill(0.0);
        }
    }
    let first = (img * g.c_in + chans.start) * hw;
    // Row by row, so that the destination row stays in L1 across the lanes.
    for y in 0..g.h {
        let row = &mut dst[((y + p) * wp + p) * LANES..][..g.w * LANES];
        for l in 0..lanes {
            let at = first + l * hw + y * g.w;
            let (src, dst) = (&x[at..][..g.w], row[l..].iter_mut().step_by(LANES));
            match mask {
                Some(m) => {
                    let m = &m[at..][..g.w];
                    for ((d, &v), &m) in dst.zip(src).zip(m) {
                        *d = if m > 0.0 { v } else { 0.0 };
                    }
                }
                None => dst.zip(src).for_each(|(d, &v)| *d = v),
            }
        }
    }
}

/// `V[ξ][t][c] = (Bᵀ d B)[ξ]` for the `N×N` input patch `d` of channel `c` under each tile `t`,
/// [`LANES`] channels at a time from the blocked input `xb`, into `v`: `N²` row-major
/// `(tiles.len(), xb.ld())` planes, `plane` values apart.
fn transform_input<const M: usize, const N: usize, const R: usize, T: Algo<M, N, R>>(
    xb: &Blocked,
    tiles: &[Tile],
    v: &mut [f32],
    plane: usize,
) {
    with_lanes!(transform_patches::<N, N>(
        xb,
        tiles,
        #[inline(always)]
        |a| T::bt(a),
        (v, plane)
    ))
}

/// `F d Fᵀ` for the `P×P` patch `d` of every channel of `xb` under each tile, `F` the `N×P`
/// matrix of `f`, `L::WIDTH` channels at a time, into `out`: `N²` row-major `(tiles.len(),
/// xb.ld())` planes, `plane` values apart.
#[inline(always)]
fn transform_patches<const P: usize, const N: usize, L: Lane>(
    xb: &Blocked,
    tiles: &[Tile],
    f: impl Fn([L; P]) -> [L; N] + Copy,
    (out, plane): (&mut [f32], usize),
) {
    let (ld, row) = (xb.ld(), xb.wp * LANES);
    for (col, tile) in tiles.iter().enumerate() {
        for cb in 0..xb.blocks {
            let at = ((tile.img * xb.blocks + cb) * xb.hp + tile.oy) * row + tile.ox * LANES;
            let src = &xb.data[at..][..(P - 1) * (row + LANES) + LANES];
            let dst = col * ld + cb * LANES;
            for l in (0..LANES).step_by(L::WIDTH) {
                let d = block::<L, P>(|r, s| L::load(&src[r * row + s * LANES + l..]));
                for (i, e) in sandwich(f, &d).iter().enumerate() {
                    for (j, e) in e.iter().enumerate() {
                        e.store(&mut out[(N * i + j) * plane + dst + l..]);
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` (+ bias, ReLU) for every tile of `tiles` and channel of `os`, from the products
/// `m` (`N²` row-major `(os.len(), tiles.len())` planes, `m.1 ≥ os.len() · tiles.len() +
/// LANES` values apart), written to the output pixels inside the image, [`LANES`] tiles at a
/// time where the CPU allows.
///
/// # Safety
/// `out` points at the `(n, c_out, oh, ow)` output, and no other thread writes the pixels of
/// these tiles and channels.
unsafe fn transform_output<const M: usize, const N: usize, const R: usize, T: Algo<M, N, R>>(
    g: &Geometry,
    m: (&[f32], usize),
    tiles: &[Tile],
    os: std::ops::Range<usize>,
    (bias, relu): (&[f32], bool),
    out: SendPtr,
) {
    // SAFETY: the caller's.
    unsafe {
        with_lanes!(transform_output_with::<M, N, R, T>(
            g,
            m,
            tiles,
            os,
            (bias, relu),
            out
        ))
    }
}

/// [`transform_output`] on `L::WIDTH` tiles at a time.
///
/// # Safety
/// As [`transform_output`].
#[inline(always)]
unsafe fn transform_output_with<
    const M: usize,
    const N: usize,
    const R: usize,
    T: Algo<M, N, R>,
    L: Lane,
>(
    g: &Geometry,
    (m, plane): (&[f32], usize),
    tiles: &[Tile],
    os: std::ops::Range<usize>,
    (bias, relu): (&[f32], bool),
    out: SendPtr,
) {
    let nt = tiles.len();
    for (row, o) in os.enumerate() {
        // The N² planes of this output channel's products, each readable LANES values past
        // its last tile (the planes' padding, or the next channel's values).
        let mp: [[&[f32]; N]; N] =
            std::array::from_fn(|i| std::array::from_fn(|j| &m[(N * i + j) * plane + row * nt..]));
        for c0 in (0..nt).step_by(L::WIDTH) {
            let px = sandwich(
                #[inline(always)]
                |a| T::at(a),
                &block::<L, N>(|i, j| L::load(&mp[i][j][c0..])),
            );
            let mut vals = [[[0f32; LANES]; M]; M];
            for (px, vals) in px.iter().zip(&mut vals) {
                for (px, vals) in px.iter().zip(vals) {
                    px.store(vals);
                }
            }
            for (t, tile) in tiles[c0..(c0 + L::WIDTH).min(nt)].iter().enumerate() {
                let base = (tile.img * g.c_out + o) * g.oh * g.ow + tile.oy * g.ow + tile.ox;
                for (r, vals) in vals.iter().enumerate().take(g.oh - tile.oy) {
                    for (s, vals) in vals.iter().enumerate().take(g.ow - tile.ox) {
                        let val = vals[t] + bias[o];
                        // SAFETY: the pixel lies in the output (the caller's pointer), and
                        // only this call writes it.
                        unsafe {
                            *out.0.add(base + r * g.ow + s) = if relu { val.max(0.0) } else { val }
                        };
                    }
                }
            }
        }
    }
}
