//! Helpers for the CPU custom ops (fused batch norm, max pool, conv).

use candle_core::{CpuStorage, DType, Layout, Tensor};

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

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`) for a row-major `dst` of
/// `a.rows x b.cols`, through the `gemm` crate candle's own CPU matmul uses; `parallel` lets
/// gemm split the product over rayon's threads.
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
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above keeps every index gemm computes from the sizes and strides
    // inside `dst`, `a.data` and `b.data`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
            parallelism,
        )
    }
}

/// Runs `f` on a scratch buffer of `len` values owned by the calling thread and reused across
/// calls: no allocation and no zero-fill in the hot path (an AlexNet batch-1 inference spent 5%
/// of its time zeroing fresh im2col buffers that are then overwritten). The contents are
/// whatever the last user left: `f` must write every value it reads. A nested call on the same
/// thread (rayon may run another task while this one waits) gets a fresh buffer. Each thread
/// keeps its largest buffer (an AlexNet conv1 patch matrix: 4.4 MB).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}
