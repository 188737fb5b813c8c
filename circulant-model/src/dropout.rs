//! Dropout with host-seeded masks (reproducible, unlike candle's CPU RNG).

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::init::mix;

/// Inverted dropout with a mask drawn on the host from `StdRng::seed_from_u64(seed)`:
/// each element is zeroed with probability `p` and the others are scaled by `1 / (1 - p)`.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::InvalidConfig(format!(
            "dropout probability must be in [0, 1), got {p}"
        )));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    // Keep an element when a uniform u32 is >= p * 2^32.
    let threshold = (f64::from(p) * 4_294_967_296.0) as u64;
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if u64::from(rng.random::<u32>()) >= threshold {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// The seed of the `index`-th dropout layer of a forward pass run with `dropout_seed`.
pub(crate) fn dropout_layer_seed(dropout_seed: u64, index: usize) -> u64 {
    mix(dropout_seed ^ mix(0xd0_0000 + index as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn seeded_and_scaled() {
        let x = Tensor::ones((64, 100), candle_core::DType::F32, &Device::Cpu).unwrap();
        let run = |seed| {
            dropout(&x, 0.5, seed)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b, c) = (run(3), run(3), run(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| *v == 0.0 || *v == 2.0));
        let kept = a.iter().filter(|v| **v > 0.0).count();
        assert!((2900..3500).contains(&kept), "{kept}");
        assert!(dropout(&x, 1.0, 0).is_err());
        assert!(dropout(&x, -0.1, 0).is_err());
        assert_ne!(dropout_layer_seed(1, 0), dropout_layer_seed(1, 1));
    }
}
