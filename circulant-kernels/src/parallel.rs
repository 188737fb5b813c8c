//! Parallel loops over rows, on rayon's thread pool.
//!
//! Work is split into one contiguous range of rows per thread, so results (including the order
//! in which partial sums are added) depend only on the thread count (`RAYON_NUM_THREADS`).
//! candle's own CPU thread pool is not used: waking it costs about 0.6 ms per call on the
//! machines measured in `docs/BENCHMARKS.md`, more than a whole forward pass at d = 4096.

use candle_core::Result;
use rayon::prelude::*;
use std::ops::Range;

/// Splits `out` into consecutive chunks of whole rows (`row_len` values each; the last row may
/// be shorter), one per thread, runs `f(rows, chunk)` on every chunk in parallel and returns
/// the results in row order.
pub(crate) fn map_rows<T: Send, R: Send>(
    out: &mut [T],
    row_len: usize,
    f: impl Fn(Range<usize>, &mut [T]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let row_len = row_len.max(1);
    let n = out.len().div_ceil(row_len);
    if n == 0 {
        return Ok(Vec::new());
    }
    let per_task = n.div_ceil(rayon::current_num_threads().max(1));
    if per_task == n {
        return Ok(vec![f(0..n, out)?]);
    }
    out.par_chunks_mut(per_task * row_len)
        .enumerate()
        .map(|(k, chunk)| {
            let start = k * per_task;
            f(start..start + chunk.len().div_ceil(row_len), chunk)
        })
        .collect()
}

/// [`map_rows`] over two outputs with the same number of rows (`a_len` and `b_len` values per
/// row; the last row of each may be shorter): `f(rows, a_chunk, b_chunk)`.
pub(crate) fn map_rows2<A: Send, B: Send, R: Send>(
    a: &mut [A],
    a_len: usize,
    b: &mut [B],
    b_len: usize,
    f: impl Fn(Range<usize>, &mut [A], &mut [B]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let (a_len, b_len) = (a_len.max(1), b_len.max(1));
    let n = a.len().div_ceil(a_len);
    if n == 0 {
        return Ok(Vec::new());
    }
    let per_task = n.div_ceil(rayon::current_num_threads().max(1));
    if per_task == n {
        return Ok(vec![f(0..n, a, b)?]);
    }
    a.par_chunks_mut(per_task * a_len)
        .zip(b.par_chunks_mut(per_task * b_len))
        .enumerate()
        .map(|(k, (a, b))| {
            let start = k * per_task;
            f(start..start + a.len().div_ceil(a_len), a, b)
        })
        .collect()
}
