//! Helpers shared by circulant-model's integration tests.

use candle_core::{Device, Tensor};
use circulant_model::ModelConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `n` images of `cfg`'s input shape, values uniform in [-1, 1) from `seed`, on the CPU.
pub fn random_batch(cfg: &ModelConfig, n: usize, seed: u64) -> Tensor {
    let inp = &cfg.input;
    let len = n * inp.channels * inp.height * inp.width;
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, (n, inp.channels, inp.height, inp.width), &Device::Cpu).unwrap()
}
