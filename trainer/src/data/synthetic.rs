//! Generated, learnable data for smoke tests.
//!
//! Each class has a prototype: a distinct random on/off pattern over a 4x4 grid of image cells.
//! A sample is its class prototype (bright cells on a dark background) plus uniform noise.
//! Everything is derived from the run seed, so two runs see identical data.

use std::sync::Arc;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

use super::memory::{Augment, MemorySource};
use super::{derive_seed, DataOptions, Dataset, Normalize, Shape};

const GRID: usize = 4;

fn prototypes(seed: u64, classes: usize) -> Vec<u16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, &[0x5EED]));
    let mut out: Vec<u16> = Vec::with_capacity(classes);
    while out.len() < classes {
        let m: u16 = rng.random();
        // Distinct patterns with a few cells on and a few off.
        if (3..=13).contains(&m.count_ones()) && !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

fn generate(protos: &[u16], seed: u64, split: u64, n: usize, shape: Shape) -> (Vec<u8>, Vec<u32>) {
    let Shape { c, h, w } = shape;
    let mut pixels = vec![0u8; n * shape.numel()];
    let mut labels = Vec::with_capacity(n);
    for (i, img) in pixels.chunks_exact_mut(shape.numel()).enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, &[split, i as u64]));
        let label = rng.random_range(0..protos.len());
        let mask = protos[label];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let cell = (y * GRID / h) * GRID + x * GRID / w;
                    let base: i32 = if mask >> cell & 1 == 1 { 160 } else { 50 };
                    let noise: i32 = rng.random_range(-45..=45);
                    img[(ch * h + y) * w + x] = (base + noise).clamp(0, 255) as u8;
                }
            }
        }
        labels.push(label as u32);
    }
    (pixels, labels)
}

/// Builds the synthetic dataset with the model's input shape.
pub fn open(opts: &DataOptions, shape: Shape, norm: Normalize) -> Result<Dataset> {
    let classes = opts.synthetic_classes;
    if !(2..=1000).contains(&classes) {
        bail!("--synthetic-classes must be between 2 and 1000, got {classes}");
    }
    if shape.h < GRID || shape.w < GRID {
        bail!("synthetic images need at least {GRID}x{GRID} pixels, the model wants {shape}");
    }
    if opts.synthetic_test == 0 || (opts.need_train && opts.synthetic_train == 0) {
        bail!("--synthetic-train and --synthetic-test must be at least 1");
    }
    let protos = prototypes(opts.seed, classes);
    let n_train = if opts.need_train {
        opts.synthetic_train
    } else {
        0
    };
    let (train_px, train_l) = generate(&protos, opts.seed, 1, n_train, shape);
    let (test_px, test_l) = generate(&protos, opts.seed, 2, opts.synthetic_test, shape);
    Ok(Dataset {
        description: format!(
            "synthetic {shape} images, {classes} classes (seed {})",
            opts.seed
        ),
        train: Arc::new(MemorySource::new(
            train_px,
            train_l,
            shape,
            norm.clone(),
            Augment::None,
        )?),
        test: Arc::new(MemorySource::new(
            test_px,
            test_l,
            shape,
            norm,
            Augment::None,
        )?),
        num_classes: classes,
        class_names: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_class_dependent() {
        let shape = Shape { c: 1, h: 8, w: 8 };
        let p = prototypes(3, 10);
        let (a, la) = generate(&p, 3, 1, 50, shape);
        let (b, lb) = generate(&p, 3, 1, 50, shape);
        assert_eq!((a.clone(), la.clone()), (b, lb));
        // Nearest-prototype classification of the noisy samples is (almost) perfect,
        // so the task is learnable.
        let mut correct = 0;
        for (img, &l) in a.chunks_exact(64).zip(&la) {
            let best = (0..10)
                .min_by_key(|&k| {
                    img.iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let cell = (i / 8 * GRID / 8) * GRID + (i % 8) * GRID / 8;
                            let want = if p[k] >> cell & 1 == 1 { 160 } else { 50 };
                            (v as i32 - want).abs()
                        })
                        .sum::<i32>()
                })
                .unwrap();
            correct += (best == l as usize) as usize;
        }
        assert!(correct >= 48, "{correct}");
    }
}
