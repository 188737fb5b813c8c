//! Plain references for the circulant ops: explicit dense matrices built with loops.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use circulant_kernels::testing::dense_index;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fresh random seed, printed so a failure can be replayed with `CIRCULANT_TEST_SEED`.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("CIRCULANT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with CIRCULANT_TEST_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// A tensor of the given shape with entries uniform in [-1, 1), in f64.
pub fn randn(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The explicit dense matrix of `r: (p, q, b)`, differentiable in `r` (gathered at
/// [`dense_index`]: `W[i*b + s, j*b + t] = r[i, j, (s - t) mod b]`).
pub fn dense_matrix(r: &Tensor) -> Result<Tensor> {
    let (p, q, b) = r.dims3()?;
    let idx = Tensor::from_vec(dense_index(p, q, b), p * b * q * b, r.device())?;
    r.flatten_all()?
        .index_select(&idx, 0)?
        .reshape((p * b, q * b))
}

/// `y = x Wᵀ` over any leading batch dims, by plain matmul.
pub fn dense_apply(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    let w = dense_matrix(r)?;
    let lead = &x.dims()[..x.rank() - 1];
    let flat = x.reshape(((), x.dim(x.rank() - 1)?))?;
    let y = flat.matmul(&w.t()?)?;
    let mut shape = lead.to_vec();
    shape.push(w.dim(0)?);
    y.reshape(shape)
}

/// Largest |a - b| relative to the largest |b| (at least 1e-30).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (a - &b).unwrap().abs().unwrap().max(0).unwrap();
    let scale = b.abs().unwrap().max(0).unwrap();
    diff.to_scalar::<f64>().unwrap() / scale.to_scalar::<f64>().unwrap().max(1e-30)
}
