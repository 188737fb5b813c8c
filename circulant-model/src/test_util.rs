//! Helpers shared by the unit tests of the CPU ops.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

/// A CPU variable of `shape` with values uniform in [-1, 1).
pub(crate) fn random_var(rng: &mut StdRng, shape: &[usize]) -> Var {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Var::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The values of an f32 tensor, flattened.
pub(crate) fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The gradients of `sum(y · gy)`: backpropagation of the output gradient `gy`.
pub(crate) fn weighted_grads(y: &Tensor, gy: &Tensor) -> GradStore {
    (y * gy).unwrap().sum_all().unwrap().backward().unwrap()
}
