//! Batches of images onto the model's device.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use crate::data::Shape;

/// Staging buffers of a GPU upload: the host runs at most this many batches ahead of the copies.
#[cfg(feature = "cuda")]
const SLOTS: usize = 3;

/// Moves batches of images to a device. On the CPU the vector becomes the tensor. On a GPU
/// it is copied through page-locked staging buffers ([`kernels_cuda::PinnedUpload`]): the copy
/// is queued behind the steps already on the device's stream, and the loop does not wait for
/// them, as a copy from pageable memory would.
pub struct Upload {
    device: Device,
    #[cfg(feature = "cuda")]
    pinned: Option<kernels_cuda::PinnedUpload>,
}

impl Upload {
    pub fn new(device: &Device) -> Self {
        Upload {
            device: device.clone(),
            #[cfg(feature = "cuda")]
            pinned: match device {
                Device::Cuda(d) => Some(kernels_cuda::PinnedUpload::new(d, SLOTS)),
                _ => None,
            },
        }
    }

    /// `images`, samples of `shape` (CHW) concatenated, as an (n, c, h, w) tensor on the device.
    pub fn images(&mut self, images: Vec<f32>, shape: Shape) -> Result<Tensor> {
        let numel = shape.numel();
        if numel == 0 || !images.len().is_multiple_of(numel) {
            bail!(
                "internal error: {} floats are not whole samples of {shape}",
                images.len()
            );
        }
        let dims = (images.len() / numel, shape.c, shape.h, shape.w);
        #[cfg(feature = "cuda")]
        if let (Some(pinned), Device::Cuda(dev)) = (&mut self.pinned, &self.device) {
            let x = pinned.upload(&images)?;
            return Ok(kernels_cuda::tensor_from_slice(x, dev, dims));
        }
        Ok(Tensor::from_vec(images, dims, &self.device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape { c: 2, h: 3, w: 5 };

    fn batch(n: usize, seed: f32) -> Vec<f32> {
        (0..n * SHAPE.numel()).map(|i| seed + i as f32).collect()
    }

    #[test]
    fn cpu_batches_keep_their_values_and_shape() -> Result<()> {
        let mut up = Upload::new(&Device::Cpu);
        let x = up.images(batch(4, 0.5), SHAPE)?;
        assert_eq!(x.dims(), &[4, 2, 3, 5]);
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, batch(4, 0.5));
        let e = up.images(vec![0.0; 7], SHAPE).unwrap_err().to_string();
        assert!(e.contains("not whole samples"), "{e}");
        Ok(())
    }

    /// Batches of several sizes through a ring of 3 buffers (growing one, reusing the others)
    /// while the device is busy: each arrives intact, so no buffer was refilled before the
    /// device had read it.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_batches_arrive_intact_through_the_ring() -> Result<()> {
        let Some(device) = circulant_kernels::testing::cuda_device() else {
            return Ok(());
        };
        let mut up = Upload::new(&device);
        // Queue large products first (about 2 TFLOP, tens of ms on an H200), so that the
        // copies wait behind them.
        let a = Tensor::ones((2048, 2048), candle_core::DType::F32, &device)?;
        let mut busy = a.clone();
        for _ in 0..128 {
            busy = busy.matmul(&a)?.affine(1.0 / 2048.0, 0.0)?;
        }
        let busy_done = device.as_cuda_device()?.cuda_stream().record_event(None)?;
        let sizes = [4, 4, 9, 1, 4, 16, 2, 9, 3];
        let mut sent = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            if k == 3 {
                // The ring is full: the refills from here on test something only if the device
                // has not yet reached the first copy.
                assert!(
                    !busy_done.try_is_complete()?,
                    "the device finished its queued work before the first refill: queue more"
                );
            }
            let host = batch(n, 1000.0 * k as f32);
            sent.push((up.images(host.clone(), SHAPE)?, host));
        }
        for (k, (x, host)) in sent.iter().enumerate() {
            assert_eq!(x.dims(), &[sizes[k], 2, 3, 5]);
            assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, *host, "batch {k}");
        }
        assert_eq!(busy.sum_all()?.to_scalar::<f32>()?, 2048.0 * 2048.0);
        Ok(())
    }
}
