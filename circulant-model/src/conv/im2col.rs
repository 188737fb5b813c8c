//! The im2col path of the convolution op: each output block's patch matrix (`im2col`), one
//! product with the weight per block, and the adjoint scatter of the input gradient
//! (`col2im`).

use rayon::prelude::*;

use std::ops::Range;

use super::{plane_sum, Geometry};
use crate::cpu::{gemm_block, matmul, transpose, with_scratch, Mat, SendPtr};

/// Output pixels per block of the forward pass (see [`Geometry::blocks`]) and of the im2col
/// backward pass: measured on the AlexNet convolutions (docs/bench/).
const BLOCK_PIXELS: usize = 256;

/// Patch-matrix values (256 KiB) up to which the im2col backward pass takes an image whole.
const SMALL_PATCHES: usize = 1 << 16;

impl Geometry {
    /// `relu?(conv2d(x, w) + bias)` into `y` (`(n, c_out, oh, ow)`, every value written): one
    /// task per (image, block of output rows), its patch columns, then one product into
    /// those rows of every output channel.
    pub(super) fn im2col_forward(
        &self,
        (x, w, bias): (&[f32], &[f32], &[f32]),
        relu: bool,
        y: &mut [f32],
    ) {
        let (l, ckk, blocks) = (self.l(), self.ckk(), self.blocks());
        let out = SendPtr(y.as_mut_ptr());
        let weight = Mat::rows(w, self.c_out, ckk);
        (0..self.n * blocks).into_par_iter().for_each(|task| {
            let (i, j) = (task / blocks, task % blocks);
            let oys = j * self.oh / blocks..(j + 1) * self.oh / blocks;
            let offset = i * self.out_len() + oys.start * self.ow;
            let len = oys.len() * self.ow;
            with_scratch(ckk * len, |cols| {
                self.im2col(&x[i * self.in_len()..][..self.in_len()], oys, cols, false);
                // SAFETY: task (i, j) alone touches rows `oys` of image i's output planes,
                // `c_out` runs of `len` values `l` apart from `offset`, all inside `y`.
                unsafe {
                    let rows =
                        |o: usize| std::slice::from_raw_parts_mut(out.add(offset + o * l).0, len);
                    for (o, b) in bias.iter().enumerate() {
                        rows(o).fill(*b);
                    }
                    gemm_block(out.add(offset), l, weight, Mat::rows(cols, ckk, len), true);
                    if relu {
                        for o in 0..self.c_out {
                            rows(o).iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                    }
                }
            })
        });
    }

    /// The output columns `ox` whose input column `ox·stride + kx - padding` lies in the image.
    fn valid_ox(&self, kx: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride, self.padding);
        let lo = p.saturating_sub(kx).div_ceil(s);
        let hi = if self.w + p > kx {
            ((self.w + p - kx - 1) / s + 1).min(self.ow)
        } else {
            0
        };
        lo.min(hi)..hi
    }

    /// Row `iy` of the input for output row `oy` and kernel row `ky`, if inside the image.
    fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.padding)
            .filter(|&iy| iy < self.h)
    }

    /// The columns of output rows `oys` of one image's patch matrix, a `(c_in·k·k,
    /// oys.len()·ow)` matrix in `cols`: row `(c, ky, kx)`, column `(oy, ox)` holds
    /// `img[c, oy·stride + ky - padding, ox·stride + kx - padding]`, 0 outside. With `parallel`
    /// the rows are shared out over rayon's threads.
    fn im2col(&self, img: &[f32], oys: Range<usize>, cols: &mut [f32], parallel: bool) {
        let (k, l) = (self.k, oys.len() * self.ow);
        let cols = &mut cols[..self.ckk() * l];
        // One task per input channel and kernel row: `k` rows of the patch matrix.
        let task = |(i, rows): (usize, &mut [f32])| self.im2col_rows(img, i, oys.clone(), rows);
        if parallel {
            cols.par_chunks_mut(k * l).enumerate().for_each(task);
        } else {
            cols.chunks_mut(k * l).enumerate().for_each(task);
        }
    }

    /// The `k` patch-matrix rows `(c, ky, 0..k)`, `i = c·k + ky`, restricted to the columns of
    /// output rows `oys`.
    fn im2col_rows(&self, img: &[f32], i: usize, oys: Range<usize>, rows: &mut [f32]) {
        let (c, ky) = (i / self.k, i % self.k);
        let plane = &img[c * self.h * self.w..][..self.h * self.w];
        let (l, s, ow) = (oys.len() * self.ow, self.stride, self.ow);
        for kx in 0..self.k {
            let (done, row) = rows.split_at_mut(kx * l);
            let row = &mut row[..l];
            if s > 1 && kx >= s {
                // Column `ox` of row `kx` reads padded input column `ox·s + kx`, which column
                // `ox + 1` of row `kx - s` read already: a shifted copy instead of a strided
                // gather, and one new value at the end.
                let prev = &done[(kx - s) * l..][..l];
                let last = ((ow - 1) * s + kx)
                    .checked_sub(self.padding)
                    .filter(|&ix| ix < self.w);
                for (r, oy) in oys.clone().enumerate() {
                    let dst = &mut row[r * ow..][..ow];
                    for (d, &v) in dst.iter_mut().zip(&prev[r * ow + 1..][..ow - 1]) {
                        *d = v;
                    }
                    dst[ow - 1] = match (self.iy(oy, ky), last) {
                        (Some(iy), Some(ix)) => plane[iy * self.w + ix],
                        _ => 0.0,
                    };
                }
                continue;
            }
            let valid = self.valid_ox(kx);
            for (r, oy) in oys.clone().enumerate() {
                let dst = &mut row[r * ow..][..ow];
                let Some(iy) = self.iy(oy, ky) else {
                    dst.fill(0.0);
                    continue;
                };
                let src = &plane[iy * self.w..][..self.w];
                // Rows are short (often < 16 values): plain loops, no memset/memcpy calls.
                for d in &mut dst[..valid.start] {
                    *d = 0.0;
                }
                for d in &mut dst[valid.end..] {
                    *d = 0.0;
                }
                let dst = &mut dst[valid.clone()];
                if dst.is_empty() {
                    continue;
                }
                let x0 = valid.start * s + kx - self.padding;
                gather(dst, &src[x0..], s);
            }
        }
    }

    /// The adjoint of [`Self::im2col`] over output rows `oys`: adds each entry of the `(c_in·k·k,
    /// oys.len()·ow)` patch matrix `cols` onto the input pixel it was read from in `img`. With
    /// `parallel` the channels are shared out over rayon's threads.
    fn col2im(&self, cols: &[f32], oys: Range<usize>, img: &mut [f32], parallel: bool) {
        let (plane, rows) = (self.h * self.w, self.k * self.k * oys.len() * self.ow);
        let task = |(img, cols): (&mut [f32], &[f32])| self.col2im_channel(cols, oys.clone(), img);
        if parallel {
            img.par_chunks_mut(plane)
                .zip(cols.par_chunks(rows))
                .for_each(task);
        } else {
            img.chunks_mut(plane).zip(cols.chunks(rows)).for_each(task);
        }
    }

    /// [`Self::col2im`] of one input channel from its `k·k` patch-matrix rows.
    fn col2im_channel(&self, cols: &[f32], oys: Range<usize>, img: &mut [f32]) {
        let (k, l, s, ow) = (self.k, oys.len() * self.ow, self.stride, self.ow);
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[(ky * k + kx) * l..][..l];
                let valid = self.valid_ox(kx);
                if valid.is_empty() {
                    continue;
                }
                let x0 = valid.start * s + kx - self.padding;
                for (r, oy) in oys.clone().enumerate() {
                    let Some(iy) = self.iy(oy, ky) else { continue };
                    let dst = &mut img[iy * self.w..][..self.w];
                    let src = &row[r * ow..][valid.clone()];
                    if s == 1 {
                        for (d, v) in dst[x0..x0 + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (i, v) in src.iter().enumerate() {
                            dst[x0 + i * s] += v;
                        }
                    }
                }
            }
        }
    }

    /// The output-row blocks of the forward pass, per image: blocks of about [`BLOCK_PIXELS`]
    /// output pixels, so that a block's patch matrix stays in the L2 cache, and, for few
    /// images, enough blocks to share out evenly over rayon's threads. Block `j` of `blocks`
    /// holds rows `j·oh/blocks .. (j+1)·oh/blocks`.
    fn blocks(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let mut blocks = self.l().div_ceil(BLOCK_PIXELS).clamp(1, self.oh);
        if self.n * blocks < 8 * threads {
            while blocks < self.oh && !(self.n * blocks).is_multiple_of(threads) {
                blocks += 1;
            }
        }
        blocks
    }

    /// How many images each rayon task of the backward pass takes, and whether the products
    /// themselves should be split over the threads instead (fewer images than threads).
    fn split(&self) -> (usize, bool) {
        let threads = rayon::current_num_threads().max(1);
        if self.n >= threads {
            (self.n.div_ceil(threads).max(1), false)
        } else {
            (1, true)
        }
    }

    /// The weight and bias gradients into `dwb` (`[dW, db]`) and, with `dx`, the input gradient
    /// as `col2im(Wᵀ·dy)`, image by image and, within an image, block by block of about
    /// [`BLOCK_PIXELS`] output pixels from the block's patch matrix; `dy` is read as 0 where a
    /// `relu_y` is not positive.
    pub(super) fn im2col_grads(
        &self,
        (x, w): (&[f32], &[f32]),
        (dy, relu_y): (&[f32], Option<&[f32]>),
        dwb: &mut [f32],
        dx: Option<&mut [f32]>,
    ) {
        let (per_task, parallel_gemm) = self.split();
        let (l, ckk, c_out) = (self.l(), self.ckk(), self.c_out);
        let wn = c_out * ckk;
        let weight_t = Mat::rows(w, c_out, ckk).t();
        let tasks = self.n.div_ceil(per_task);
        // Small patch matrices whole: more, smaller products cost more calls than they save
        // (mnist-cnn's conv1 trained 3-5% slower in blocks).
        let rows = if parallel_gemm || ckk * l <= SMALL_PATCHES {
            self.oh
        } else {
            BLOCK_PIXELS.div_ceil(self.ow).min(self.oh)
        };
        let row_blocks = (0..self.oh)
            .step_by(rows)
            .map(|y| y..(y + rows).min(self.oh));
        let mut dx_chunks: Vec<Option<&mut [f32]>> = match dx {
            Some(dx) => dx.chunks_mut(per_task * self.in_len()).map(Some).collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        // Each task sums its images' weight and bias gradients into its own buffer, the weight
        // gradient transposed, `(c_in·k·k, c_out)`: as `cols · dyᵀ` gemm then repacks the
        // (c_out, pixels) `dy` rather than the (c_in·k·k, pixels) patch matrix, which `dy ·
        // colsᵀ` into a row-major `dW` had it transpose (15% of AlexNet's conv1 backward).
        let partial: Vec<Vec<f32>> = dx_chunks
            .par_iter_mut()
            .zip(x.par_chunks(per_task * self.in_len()))
            .zip(dy.par_chunks(per_task * self.out_len()))
            .enumerate()
            .map(|(task, ((dxs, xs), dys))| {
                let mut acc = vec![0f32; wn + c_out];
                let mut masked = vec![0f32; if relu_y.is_some() { self.out_len() } else { 0 }];
                let mut dxs = dxs.as_deref_mut().map(|d| d.chunks_mut(self.in_len()));
                for (i, (img, gy)) in xs
                    .chunks(self.in_len())
                    .zip(dys.chunks(self.out_len()))
                    .enumerate()
                {
                    let gy = match relu_y {
                        Some(y) => {
                            let y = &y[(task * per_task + i) * self.out_len()..][..self.out_len()];
                            for ((m, &d), &v) in masked.iter_mut().zip(gy).zip(y) {
                                *m = if v > 0.0 { d } else { 0.0 };
                            }
                            &masked[..]
                        }
                        None => gy,
                    };
                    let (dw_t, db) = acc.split_at_mut(wn);
                    for (b, plane) in db.iter_mut().zip(gy.chunks(l)) {
                        *b += plane_sum(plane, None);
                    }
                    let mut dx = dxs.as_mut().and_then(|d| d.next());
                    // Block by block of output rows, the patch matrix staying in the L2 cache.
                    for oys in row_blocks.clone() {
                        let len = oys.len() * self.ow;
                        let gy = Mat::strided(&gy[oys.start * self.ow..], c_out, len, l);
                        with_scratch(ckk * len, |cols| {
                            self.im2col(img, oys.clone(), cols, parallel_gemm);
                            let patches = Mat::rows(cols, ckk, len);
                            matmul(dw_t, patches, gy.t(), true, parallel_gemm);
                            if let Some(dx) = dx.as_deref_mut() {
                                matmul(cols, weight_t, gy, false, parallel_gemm);
                                self.col2im(cols, oys.clone(), dx, parallel_gemm);
                            }
                        });
                    }
                }
                acc
            })
            .collect();
        let mut partial = partial.into_iter();
        if let Some(mut total) = partial.next() {
            for p in partial {
                for (a, v) in total.iter_mut().zip(&p) {
                    *a += v;
                }
            }
            let (dw_t, db) = total.split_at(wn);
            transpose(dw_t, ckk, c_out, &mut dwb[..wn]);
            dwb[wn..].copy_from_slice(db);
        }
    }
}

/// `dst[j] = src[j·s]`, the strides of AlexNet-like stems (1, 2, 4) written for the compiler
/// to vectorise (a generic strided loop ran one value at a time: 45% of AlexNet conv1's im2col).
#[inline(always)]
fn gather(dst: &mut [f32], src: &[f32], s: usize) {
    #[inline(always)]
    fn fixed<const S: usize>(dst: &mut [f32], src: &[f32]) {
        let whole = (src.len() / S).min(dst.len());
        let (head, tail) = dst.split_at_mut(whole);
        for (d, run) in head.iter_mut().zip(src.chunks_exact(S)) {
            *d = run[0];
        }
        for (j, d) in tail.iter_mut().enumerate() {
            *d = src[(whole + j) * S];
        }
    }
    match s {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        _ => {
            for (d, run) in dst.iter_mut().zip(src.chunks(s)) {
                *d = run[0];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gather` picks every `s`-th value for each stride, whether or not the source ends inside
    /// the last stride.
    #[test]
    fn gather_takes_every_strided_value() {
        let src: Vec<f32> = (0..64).map(|v| v as f32).collect();
        for s in 1..=5 {
            for n in 1..8 {
                for len in (n - 1) * s + 1..=n * s + 1 {
                    let mut dst = vec![-1.0; n];
                    gather(&mut dst, &src[..len], s);
                    let want: Vec<f32> = (0..n).map(|j| (j * s) as f32).collect();
                    assert_eq!(dst, want, "stride {s}, {n} values from {len}");
                }
            }
        }
    }
}
