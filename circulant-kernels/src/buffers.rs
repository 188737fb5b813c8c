//! Spectra buffers reused across calls. A multi-MiB buffer freshly obtained from the system
//! costs a page fault per 4 KiB page on its first write, and glibc's default malloc hands such
//! buffers back to the system when they are freed: at d = 4096, batch 128 these faults took
//! longer than the transforms (docs/bench/op-plain-call-2026-11-30-cpu.md). The spectra of `x`
//! (one per call, kept for the backward pass) therefore come from a small per-type pool and go
//! back to it when dropped.

use crate::fft::Real;
use rustfft::num_complex::Complex;
use std::ops::{Deref, DerefMut};

/// Buffers kept for reuse, per element type: at most this many...
const MAX_KEPT: usize = 8;
/// ...holding at most this many bytes together (larger ones are freed).
const MAX_KEPT_BYTES: usize = 256 << 20;

/// A buffer of complex values that returns to its pool when dropped.
pub(crate) struct Buffer<T: Real> {
    data: Vec<Complex<T>>,
}

impl<T: Real> Buffer<T> {
    /// A buffer of `len` values: a free one of that length (contents left from its last
    /// use: callers write every value they read), else one resized from a larger free one,
    /// else a new one.
    pub fn take(len: usize) -> Self {
        let reused = {
            let mut free = T::free_buffers().lock().unwrap_or_else(|e| e.into_inner());
            let exact = free.iter().position(|b| b.len() == len);
            let larger = || {
                (free.iter().enumerate())
                    .filter(|(_, b)| b.capacity() >= len)
                    .min_by_key(|(_, b)| b.capacity())
                    .map(|(k, _)| k)
            };
            exact.or_else(larger).map(|k| free.swap_remove(k))
        };
        let data = match reused {
            Some(mut data) => {
                data.resize(len, Complex::default());
                data
            }
            None => vec![Complex::default(); len],
        };
        Self { data }
    }
}

impl<T: Real> Drop for Buffer<T> {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.capacity() == 0 {
            return;
        }
        let mut free = T::free_buffers().lock().unwrap_or_else(|e| e.into_inner());
        free.push(data);
        let bytes = |free: &Vec<Vec<Complex<T>>>| {
            free.iter().map(|b| b.capacity()).sum::<usize>() * size_of::<Complex<T>>()
        };
        // Free the oldest first.
        while free.len() > MAX_KEPT || bytes(&free) > MAX_KEPT_BYTES {
            free.remove(0);
        }
    }
}

impl<T: Real> Deref for Buffer<T> {
    type Target = [Complex<T>];
    fn deref(&self) -> &Self::Target {
        &self.data
    }
}

impl<T: Real> DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // f64 only here: the f32 pool is shared with the op tests running in parallel.
    #[test]
    fn reuses_freed_buffers_and_bounds_the_pool() {
        let a = Buffer::<f64>::take(1000);
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        drop(a);
        let b = Buffer::<f64>::take(1000);
        assert_eq!(
            b.as_ptr(),
            ptr,
            "a freed buffer of the same length is reused"
        );
        drop(b);
        let c = Buffer::<f64>::take(600);
        assert_eq!((c.len(), c.as_ptr()), (600, ptr), "a larger one is shrunk");
        drop(c);
        let many: Vec<_> = (0..2 * MAX_KEPT)
            .map(|k| Buffer::<f64>::take(10 + k))
            .collect();
        drop(many);
        let free = f64::free_buffers().lock().unwrap();
        assert!(free.len() <= MAX_KEPT);
        // The oldest went first: the last ones dropped are kept.
        assert!(free.iter().any(|b| b.len() == 10 + 2 * MAX_KEPT - 1));
        drop(free);
        let huge = Buffer::<f64>::take(MAX_KEPT_BYTES / size_of::<Complex<f64>>() + 1);
        drop(huge);
        let free = f64::free_buffers().lock().unwrap();
        let bytes: usize = free.iter().map(|b| b.capacity() * 16).sum();
        assert!(bytes <= MAX_KEPT_BYTES, "{bytes} bytes kept");
    }
}
