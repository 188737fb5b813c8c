//! Helpers for the CPU custom ops (fused batch norm, max pool, conv).

use candle_core::{CpuStorage, DType, Layout, Tensor};
use rayon::prelude::*;

/// The contiguous f32 data of a custom-op input.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let Some((o1, o2)) = l.contiguous_offsets() else {
        candle_core::bail!("custom op: expected a contiguous input")
    };
    Ok(&s.as_slice::<f32>()?[o1..o2])
}

/// Whether a tensor can go through the CPU custom ops (f32 on the CPU).
pub(crate) fn use_cpu_op(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// A strided read-only view of a `rows x cols` f32 matrix: element `(i, j)` is
/// `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows x cols` matrix in `data` (which holds at least `rows * cols` values).
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The `rows x cols` matrix whose rows start `rs` values apart in `data`.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            rs,
            ..Self::rows(data, rows, cols)
        }
    }

    /// The transposed view (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `lo..hi` (no copy).
    fn row_range(self, lo: usize, hi: usize) -> Self {
        Self {
            data: &self.data[lo * self.rs..],
            rows: hi - lo,
            ..self
        }
    }

    /// Columns `lo..hi` (no copy).
    fn col_range(self, lo: usize, hi: usize) -> Self {
        Self {
            data: &self.data[lo * self.cs..],
            cols: hi - lo,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`) for a row-major `dst` of
/// `a.rows x b.cols`, through the `gemm` crate candle's own CPU matmul uses. With `parallel`
/// (and enough work) `dst` is cut into one block of rows (or of columns, when it is wider than
/// tall) per rayon thread, each a single-threaded gemm: for the AlexNet conv products and the
/// batch-1 dense products this ran 5-35% faster than gemm's own rayon split (the batch-1
/// products are matrix-vector reads of the weight, and one thread per half of it reads it
/// at a higher total bandwidth).
pub(crate) fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && dst.len() >= m * n && a.fits() && b.fits(),
        "matmul: ({m} x {k}) · ({} x {n}) into {} values",
        b.rows,
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let out = SendPtr(dst.as_mut_ptr());
    // SAFETY (both calls): the assertion above keeps every block inside `dst`, `a` and `b`, and
    // the blocks of `dst` the tasks write are disjoint.
    if threads < 2 || m * n * k < PARALLEL_MIN_MACS {
        unsafe { gemm_block(out, n, a, b, accumulate) };
        return;
    }
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let block = len.div_ceil(threads).next_multiple_of(BLOCK_ALIGN).min(len);
    (0..len.div_ceil(block)).into_par_iter().for_each(|t| {
        let (lo, hi) = (t * block, ((t + 1) * block).min(len));
        unsafe {
            if by_rows {
                gemm_block(out.add(lo * n), n, a.row_range(lo, hi), b, accumulate)
            } else {
                gemm_block(out.add(lo), n, a, b.col_range(lo, hi), accumulate)
            }
        }
    });
}

/// Products smaller than this (multiply-adds) run on one thread: gemm's own threshold.
const PARALLEL_MIN_MACS: usize = 48 * 48 * 256;

/// Row or column blocks of a split product start at multiples of this (whole gemm
/// micro-tiles).
const BLOCK_ALIGN: usize = 16;

/// A pointer into an output buffer, shared by tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

// SAFETY: the tasks holding a `SendPtr` write disjoint parts of one buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// # Safety
    /// `offset` must stay inside the buffer.
    pub(crate) unsafe fn add(self, offset: usize) -> Self {
        Self(self.0.add(offset))
    }
}

/// `dst = a · b` (or `+=`) on the calling thread, `dst` row-major with row stride `dst_rs`.
///
/// # Safety
/// `dst` must point at `a.rows` rows of `dst_rs` values with room for `b.cols` in each, and
/// no other thread may touch those values during the call.
pub(crate) unsafe fn gemm_block(dst: SendPtr, dst_rs: usize, a: Mat, b: Mat, accumulate: bool) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        dst.0,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Lanes of [`lane_sums`].
const LANES: usize = 8;

/// `(Σ f(a, b).0, Σ f(a, b).1)` over pairs of values of `a` and `b` (as long as `a`), in
/// [`LANES`] running sums per total: the compiler vectorises it, where one running sum (as
/// `Iterator::sum` keeps) is a chain of dependent additions (the batch norm statistics and the
/// conv bias gradient took 10-20% of a cifar-cnn training step that way).
#[inline(always)]
pub(crate) fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    let (mut t1, mut t2) = ([0f32; LANES], [0f32; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (ca, cb) in ca.zip(cb) {
        for k in 0..LANES {
            let (x, y) = f(ca[k], cb[k]);
            t1[k] += x;
            t2[k] += y;
        }
    }
    let (mut s1, mut s2) = (t1.iter().sum::<f32>(), t2.iter().sum::<f32>());
    for (&u, &v) in ra.iter().zip(rb) {
        let (x, y) = f(u, v);
        s1 += x;
        s2 += y;
    }
    (s1, s2)
}

/// Runs `f` on a scratch buffer of `len` values owned by the calling thread and reused across
/// calls: no allocation and no zero-fill in the hot path (an AlexNet batch-1 inference spent 5%
/// of its time zeroing fresh im2col buffers that are then overwritten). The contents are
/// whatever the last user left: `f` must write every value it reads. A nested call on the same
/// thread (rayon may run another task while this one waits) gets a fresh buffer. Each thread
/// keeps its largest buffer (an AlexNet conv1 patch matrix: 4.4 MB).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: KeptBuffer = const { std::cell::RefCell::new(Vec::new()) };
    }
    with_kept(&SCRATCH, len, f)
}

/// A buffer a thread keeps between calls of [`with_kept`].
pub(crate) type KeptBuffer = std::cell::RefCell<Vec<f32>>;

/// Runs `f` on the first `len` values of the calling thread's buffer `key` (grown as needed,
/// never shrunk), or on a fresh zeroed one when a nested call on this thread holds it.
pub(crate) fn with_kept<R>(
    key: &'static std::thread::LocalKey<KeptBuffer>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `dst = srcᵀ` for the row-major `(rows, cols)` matrix `src`, in 16 × 16 blocks over rayon's
/// threads by blocks of `dst` rows: each whole block is copied row by row into a local tile and
/// written column by column, so that both sides move whole runs of 16 values (reading the
/// strided side value by value took 1.4–1.9× as long on AlexNet's weight gradients).
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 16;
    dst[..rows * cols]
        .par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(jb, dst)| {
            let j0 = jb * B;
            let mut tile = [[0f32; B]; B];
            for i0 in (0..rows).step_by(B) {
                if j0 + B <= cols && i0 + B <= rows {
                    for (di, row) in tile.iter_mut().enumerate() {
                        row.copy_from_slice(&src[(i0 + di) * cols + j0..][..B]);
                    }
                    for (dj, out) in dst.chunks_exact_mut(rows).enumerate() {
                        for (di, v) in out[i0..i0 + B].iter_mut().enumerate() {
                            *v = tile[di][dj];
                        }
                    }
                } else {
                    for (dj, out) in dst.chunks_mut(rows).enumerate() {
                        for i in i0..(i0 + B).min(rows) {
                            out[i] = src[i * cols + j0 + dj];
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `a · b` in float64, `a` and `b` read through their strides.
    fn reference(a: Mat, b: Mat) -> Vec<f64> {
        let at = |m: &Mat, i: usize, j: usize| m.data[i * m.rs + j * m.cs] as f64;
        let mut out = vec![0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols).map(|p| at(&a, i, p) * at(&b, p, j)).sum();
            }
        }
        out
    }

    /// Whole 16 × 16 blocks, partial ones on either edge and thin matrices all transpose
    /// exactly, on 3 threads.
    #[test]
    fn transpose_matches_plain_loop() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (rows, cols) in [
            (16, 16),
            (48, 32),
            (17, 33),
            (33, 17),
            (1, 40),
            (40, 1),
            (363, 64),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut got = vec![f32::NAN; rows * cols];
            pool.install(|| transpose(&src, rows, cols, &mut got));
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        got[j * rows + i],
                        src[i * cols + j],
                        "{rows}x{cols} at ({i}, {j})"
                    );
                }
            }
        }
    }

    /// Products split over threads by rows and by columns (uneven blocks on 3 threads),
    /// single-threaded ones, transposed operands and accumulation all equal a float64
    /// reference, for odd sizes on both sides of the split threshold.
    #[test]
    fn matmul_matches_float64_reference() {
        let mut rng = StdRng::seed_from_u64(3);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, k, n) in [
            (1, 1000, 700),
            (1, 3, 5),
            (300, 97, 41),
            (5, 301, 703),
            (33, 65, 517),
            (7, 0, 9),
        ] {
            let data = |len: usize, rng: &mut StdRng| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let (a_rows, a_cols, b_rows, b_cols) = (
                data(m * k, &mut rng),
                data(k * m, &mut rng),
                data(k * n, &mut rng),
                data(n * k, &mut rng),
            );
            let init = data(m * n, &mut rng);
            for (a, b) in [
                (Mat::rows(&a_rows, m, k), Mat::rows(&b_rows, k, n)),
                (Mat::rows(&a_cols, k, m).t(), Mat::rows(&b_cols, n, k).t()),
            ] {
                let want = reference(a, b);
                for (parallel, accumulate) in
                    [(true, false), (true, true), (false, false), (false, true)]
                {
                    let mut dst = init.clone();
                    pool.install(|| matmul(&mut dst, a, b, accumulate, parallel));
                    for (i, (got, want)) in dst.iter().zip(&want).enumerate() {
                        let want = want + if accumulate { init[i] as f64 } else { 0.0 };
                        assert!(
                            (*got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "({m} x {k}) · ({k} x {n}) parallel {parallel} accumulate {accumulate} [{i}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
