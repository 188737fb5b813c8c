//! Test support shared by the workspace's tests; not part of the API (hidden from the docs).
//!
//! - The definition of the projection as plain loops, the one reference the tests compare
//!   against: `W[i*b + s, j*b + t] = r[i, j, (s - t) mod b]` ([`r_index`]) and `y = x Wᵀ`.
//! - [`cuda_device`]: how every GPU test gets its device, and skips or fails without one.
//!
//! `kernels-cuda`'s tests compile this same file (`#[path]`): that crate cannot dev-depend on
//! this one, which depends on it. So it uses nothing but `std` and `candle_core`.

use std::io::Write;

use candle_core::Device;

/// Flat index into `r: (p, q, b)` (row-major) of the entry `W[row, col]` of the dense
/// `(p*b) × (q*b)` matrix of the block-circulant projection:
/// `W[i*b + s, j*b + t] = r[i, j, (s - t) mod b]`. The circulant case
/// `W[s, t] = r[(s - t) mod n]` is `q = 1, b = n`.
pub fn r_index(q: usize, b: usize, row: usize, col: usize) -> usize {
    let (i, s) = (row / b, row % b);
    let (j, t) = (col / b, col % b);
    (i * q + j) * b + (s + b - t) % b
}

/// [`r_index`] of every entry of the dense `(p*b) × (q*b)` matrix, row-major.
pub fn dense_index(p: usize, q: usize, b: usize) -> Vec<u32> {
    let (rows, cols) = (p * b, q * b);
    (0..rows * cols)
        .map(|k| {
            let idx = r_index(q, b, k / cols, k % cols);
            u32::try_from(idx).expect("r has more than u32::MAX elements")
        })
        .collect()
}

/// `y (n, p*b) = x (n, q*b) Wᵀ` with `W` from `r (p, q, b)`, all row-major, in f64:
/// `y[m, i*b + s] = Σ_j Σ_t r[i, j, (s - t) mod b] · x[m, j*b + t]`.
pub fn reference_forward(x: &[f64], r: &[f64], n: usize, p: usize, q: usize, b: usize) -> Vec<f64> {
    let (rows, cols) = (p * b, q * b);
    assert_eq!(x.len(), n * cols, "reference_forward: x length");
    assert_eq!(r.len(), p * q * b, "reference_forward: r length");
    let mut y = vec![0.0; n * rows];
    for m in 0..n {
        for row in 0..rows {
            y[m * rows + row] = (0..cols)
                .map(|col| r[r_index(q, b, row, col)] * x[m * cols + col])
                .sum();
        }
    }
    y
}

/// `(dx, dr)`, the gradients of `sum(g * y)` with `y = reference_forward(x, r, ..)`, in f64.
#[allow(clippy::too_many_arguments)]
pub fn reference_backward(
    x: &[f64],
    r: &[f64],
    g: &[f64],
    n: usize,
    p: usize,
    q: usize,
    b: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (p * b, q * b);
    assert_eq!(x.len(), n * cols, "reference_backward: x length");
    assert_eq!(r.len(), p * q * b, "reference_backward: r length");
    assert_eq!(g.len(), n * rows, "reference_backward: g length");
    let mut dx = vec![0.0; n * cols];
    let mut dr = vec![0.0; p * q * b];
    for m in 0..n {
        for row in 0..rows {
            let gv = g[m * rows + row];
            for col in 0..cols {
                let k = r_index(q, b, row, col);
                dx[m * cols + col] += gv * r[k];
                dr[k] += gv * x[m * cols + col];
            }
        }
    }
    (dx, dr)
}

/// The environment variable that turns a GPU test's skip into a failure. The GPU run scripts
/// set it to `1`; any value but empty or `0` counts.
pub const REQUIRE_CUDA: &str = "CIRCULANT_REQUIRE_CUDA";

/// CUDA device 0 for a GPU test. When none is usable: panics if [`REQUIRE_CUDA`] is set, so
/// that a GPU run cannot pass by skipping; otherwise prints `skipping: no CUDA device: <why>`
/// to stderr (past the harness's capture: a skip must be visible) and returns `None`.
pub fn cuda_device() -> Option<Device> {
    let err = match Device::new_cuda(0) {
        Ok(dev) => return Some(dev),
        Err(e) => e.to_string(),
    };
    let required = std::env::var(REQUIRE_CUDA).is_ok_and(|v| !v.is_empty() && v != "0");
    if required {
        panic!("{REQUIRE_CUDA} is set but no CUDA device is usable: {err}");
    }
    let reason = err.lines().next().unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "skipping: no CUDA device: {reason} (set {REQUIRE_CUDA}=1 to fail instead)"
    );
    None
}

/// Asserts `max |got - want| <= tol * max(1, max |want|)` (a NaN fails), naming `what` and
/// the worst element.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (idx, err) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        // A NaN wins (and then fails the assertion below).
        .fold((0, 0.0f64), |m, (i, e)| {
            if e > m.1 || (e.is_nan() && !m.1.is_nan()) {
                (i, e)
            } else {
                m
            }
        });
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} at {idx} (got {}, want {}) exceeds {tol:e} * {scale}",
        got[idx],
        want[idx]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_the_matrix_written_out_by_hand() {
        // circ([1, 2, 3]) = [[1, 3, 2], [2, 1, 3], [3, 2, 1]]: W[s, t] = r[(s - t) mod 3].
        assert_eq!(dense_index(1, 1, 3), [0, 2, 1, 1, 0, 2, 2, 1, 0]);
        // r (1, 2, 2) = [[1, 2], [3, 4]]: W = [[1, 2, 3, 4], [2, 1, 4, 3]].
        assert_eq!(dense_index(1, 2, 2), [0, 1, 2, 3, 1, 0, 3, 2]);
        // Two rows of x, each (q*b = 4).
        let (r, x) = (
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 10.0, 100.0, 1000.0, 0.0, 0.0, 0.0, 1.0],
        );
        assert_eq!(
            reference_forward(&x, &r, 2, 1, 2, 2),
            [4321.0, 3412.0, 4.0, 3.0]
        );
        let g = [1.0, 0.0, 0.0, 1.0];
        let (dx, dr) = reference_backward(&x, &r, &g, 2, 1, 2, 2);
        // dx = g W (row 0 of W for the first row of x, row 1 for the second).
        assert_eq!(dx, [1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 4.0, 3.0]);
        // dr[k] = Σ g[m, row] x[m, col] over the entries (row, col) of W holding r[k].
        assert_eq!(dr, [1.0, 10.0, 101.0, 1000.0]);
    }
}
