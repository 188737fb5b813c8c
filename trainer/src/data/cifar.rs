//! CIFAR-10 binary batches (`data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::memory::{Augment, MemorySource};
use super::{DataOptions, Dataset, Normalize, Shape};

/// Bytes per record: one label byte, then 32x32 red, green and blue planes.
const RECORD: usize = 1 + 3 * 32 * 32;

const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// `dir` or `dir/cifar-10-batches-bin` when it holds `test_batch.bin`.
pub fn find_binary_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| d.join("test_batch.bin").is_file() || d.join("data_batch_1.bin").is_file())
}

/// Reads one batch file: pixels (CHW per image) and labels.
pub fn read_batch(path: &Path) -> Result<(Vec<u8>, Vec<u32>)> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {}: the CIFAR-10 binary version needs data_batch_1.bin .. data_batch_5.bin \
             and test_batch.bin",
            path.display()
        )
    })?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "{} is truncated or not a CIFAR-10 batch: {} bytes is not a multiple of {RECORD} \
             (one label byte + 3072 pixel bytes per image)",
            path.display(),
            bytes.len()
        );
    }
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            bail!(
                "{}: label {} of image {i} is out of range for 10 classes",
                path.display(),
                rec[0]
            );
        }
        labels.push(rec[0] as u32);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((pixels, labels))
}

/// Opens the binary batches in `dir`.
pub fn open(dir: &Path, opts: &DataOptions, shape: Shape, norm: Normalize) -> Result<Dataset> {
    let cifar = Shape { c: 3, h: 32, w: 32 };
    if shape != cifar {
        bail!(
            "CIFAR-10 binary batches hold 3x32x32 images but the model expects {shape} input; \
             use --model cifar-cnn (or give an image folder to resize from)"
        );
    }
    let (mut train_px, mut train_l) = (Vec::new(), Vec::new());
    if opts.need_train {
        for k in 1..=5 {
            let (p, l) = read_batch(&dir.join(format!("data_batch_{k}.bin")))?;
            train_px.extend(p);
            train_l.extend(l);
        }
    }
    let (test_px, test_l) = read_batch(&dir.join("test_batch.bin"))?;
    let names = std::fs::read_to_string(dir.join("batches.meta.txt"))
        .ok()
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|v| v.len() == 10)
        .unwrap_or_else(|| CLASSES.iter().map(|s| s.to_string()).collect());
    let description = format!("cifar10 binary batches from {}", dir.display());
    Ok(Dataset {
        description,
        train: Arc::new(MemorySource::new(
            train_px,
            train_l,
            cifar,
            norm.clone(),
            Augment::PadCropFlip { pad: 4 },
        )?),
        test: Arc::new(MemorySource::new(
            test_px,
            test_l,
            cifar,
            norm,
            Augment::None,
        )?),
        num_classes: 10,
        class_names: Some(names),
    })
}
