//! Dropout with seeded masks, the same bits on the CPU and on a GPU.

use candle_core::{Device, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::init::{mix, GOLDEN};

/// Inverted dropout with a mask drawn from `seed`: element `i` of `x` (row-major) is zeroed
/// when the high 32 bits of SplitMix64's output `i` from `seed` are below `p · 2^32`, and the
/// others are scaled by `1 / (1 - p)`. Each element's draw depends only on `(seed, i)`, so the
/// mask is drawn in parallel on the CPU and by one kernel on a CUDA device (`cuda` feature),
/// with the same bits.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::InvalidConfig(format!(
            "dropout probability must be in [0, 1), got {p}"
        )));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    // p < 1, so p · 2^32 < 2^32.
    let threshold = (f64::from(p) * 4_294_967_296.0) as u32;
    let mask = mask(x.shape(), x.device(), seed, threshold, 1.0 / (1.0 - p))?;
    Ok(x.mul(&mask.to_dtype(x.dtype())?)?)
}

/// High 32 bits of SplitMix64's output `i` from `seed`.
fn draw(seed: u64, i: usize) -> u32 {
    (mix(seed.wrapping_add((i as u64).wrapping_mul(GOLDEN))) >> 32) as u32
}

/// The f32 mask: `scale` where the draw is `>= threshold`, else 0.
fn mask(shape: &Shape, device: &Device, seed: u64, threshold: u32, scale: f32) -> Result<Tensor> {
    let len = shape.elem_count();
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let m = kernels_cuda::dropout_mask(dev, len, seed, threshold, scale)?;
        return Ok(kernels_cuda::tensor_from_slice(m, dev, shape.clone()));
    }
    let values: Vec<f32> = (0..len)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|i| {
            if draw(seed, i) >= threshold {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(values, shape.clone(), device)?)
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

    /// The draws are SplitMix64's outputs (published values for state 0), high halves.
    #[test]
    fn draws_are_splitmix64_outputs() {
        let want = [
            0xe220_a839_7b1d_cdafu64,
            0x6e78_9e6a_a1b9_65f4,
            0x06c4_5d18_8009_454f,
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(draw(0, i), (w >> 32) as u32, "output {i}");
        }
    }

    /// Each element is kept exactly when its own draw says so, in every dtype.
    #[test]
    fn elements_follow_their_draws() {
        let x = Tensor::arange(1f32, 1001., &Device::Cpu)
            .unwrap()
            .reshape((10, 100))
            .unwrap();
        let threshold = (0.3f64 * 4_294_967_296.0) as u32;
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let y = dropout(&x.to_dtype(dtype).unwrap(), 0.3, 77).unwrap();
            let y = y.to_dtype(candle_core::DType::F32).unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, v) in y.iter().enumerate() {
                let want = if draw(77, i) >= threshold {
                    (i + 1) as f32 / 0.7
                } else {
                    0.0
                };
                assert!(
                    (v - want).abs() <= 1e-4 * want,
                    "element {i}: {v} vs {want}"
                );
            }
        }
    }
}
