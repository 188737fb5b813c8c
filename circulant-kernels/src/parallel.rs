//! Parallel loops on candle's own CPU thread pool.
//!
//! candle runs its CPU ops on a pool of pinned worker threads that spin for a while after each
//! op; a second pool (rayon's) would compete with them for the same cores. Running on candle's
//! pool avoids that. Work is split into one contiguous range of rows per thread, so results
//! (including the order of partial sums) depend only on the thread count.

use candle_core::utils::barrier_pool;
use candle_core::Result;
use std::ops::Range;
use std::sync::Mutex;

/// Splits `out` into consecutive chunks of whole rows (`row_len` values each), one per thread,
/// runs `f(rows, chunk)` on every chunk in parallel and returns the results in row order.
pub(crate) fn map_rows<T: Send, R: Send>(
    out: &mut [T],
    row_len: usize,
    f: impl Fn(Range<usize>, &mut [T]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let n = out.len() / row_len.max(1);
    if n == 0 {
        return Ok(Vec::new());
    }
    let per_task = n.div_ceil(barrier_pool().n_workers() + 1);
    if per_task == n {
        return Ok(vec![f(0..n, out)?]);
    }
    let jobs: Vec<_> = out
        .chunks_mut(per_task * row_len)
        .enumerate()
        .map(|(k, chunk)| {
            let start = k * per_task;
            Mutex::new((start..start + chunk.len() / row_len, chunk))
        })
        .collect();
    let results: Vec<Mutex<Option<Result<R>>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    // One item per job: whichever thread takes job k, it covers the same rows.
    barrier_pool().execute_chunked(jobs.len(), |range| {
        for k in range {
            let mut job = jobs[k].lock().unwrap_or_else(|e| e.into_inner());
            let (rows, chunk) = &mut *job;
            let res = f(rows.clone(), chunk);
            *results[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
        }
    });
    results
        .into_iter()
        .map(|slot| {
            let res = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            res.unwrap_or_else(|| candle_core::bail!("circulant: a parallel task did not run"))
        })
        .collect()
}
