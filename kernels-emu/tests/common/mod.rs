//! Helpers shared by the emulated-kernel tests.

#![allow(dead_code)]

use kernels_emu::{shapes, LaunchShape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values uniform in `[lo, hi)`.
pub fn uniform(rng: &mut StdRng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The launches a grid-stride kernel over `len` elements is tried with: kernels-cuda's own
/// (256-wide blocks covering `len`), and 3 blocks of 32 threads, where most threads loop.
pub fn grid_stride_launches(len: usize) -> [LaunchShape; 2] {
    [
        shapes::elementwise(len),
        LaunchShape {
            grid: (3, 1, 1),
            block: (32, 1, 1),
        },
    ]
}

/// Asserts `|got - want| <= tol · (1 + |want|)` element by element.
pub fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}
