//! A split held in memory as bytes (MNIST, CIFAR-10 batches, synthetic data).

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

use super::{Normalize, Shape, Source};

/// Training augmentation for in-memory images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    None,
    /// Random crop of the image zero-padded by `pad` pixels, then a random horizontal flip.
    PadCropFlip {
        pad: usize,
    },
}

/// Images stored channels-first as bytes, one after the other.
pub struct MemorySource {
    pixels: Vec<u8>,
    labels: Vec<u32>,
    shape: Shape,
    norm: Normalize,
    augment: Augment,
}

impl MemorySource {
    /// `pixels` holds `labels.len()` images of `shape`, CHW, one byte per value.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u32>,
        shape: Shape,
        norm: Normalize,
        augment: Augment,
    ) -> Result<Self> {
        if pixels.len() != labels.len() * shape.numel() {
            bail!(
                "{} bytes of pixels for {} labels of {shape} images",
                pixels.len(),
                labels.len()
            );
        }
        Ok(MemorySource {
            pixels,
            labels,
            shape,
            norm,
            augment,
        })
    }
}

impl Source for MemorySource {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn load(&self, index: usize, augment: Option<u64>, out: &mut [f32]) -> Result<u32> {
        let Shape { c, h, w } = self.shape;
        let n = self.shape.numel();
        let Some(src) = self.pixels.get(index * n..(index + 1) * n) else {
            bail!("sample {index} out of range ({} samples)", self.len());
        };
        match (self.augment, augment) {
            (Augment::PadCropFlip { pad }, Some(seed)) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
                let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
                let flip = rng.random_bool(0.5);
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let sx = if flip { w - 1 - x } else { x } as isize + dx;
                            let sy = y as isize + dy;
                            let v = if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h
                            {
                                self.norm
                                    .apply(ch, src[(ch * h + sy as usize) * w + sx as usize])
                            } else {
                                // Zero padding in normalised space (the mean colour).
                                0.0
                            };
                            out[(ch * h + y) * w + x] = v;
                        }
                    }
                }
            }
            _ => {
                let plane = h * w;
                for (i, (o, &p)) in out.iter_mut().zip(src).enumerate() {
                    *o = self.norm.apply(i / plane, p);
                }
            }
        }
        Ok(self.labels[index])
    }
}
