//! MNIST-style idx files (raw or gzip-compressed).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// idx magic number of an unsigned-byte 1-d array (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// idx magic number of an unsigned-byte 3-d array (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;

/// The four MNIST arrays, pixels as bytes (N*28*28), labels as class indices.
pub struct RawMnist {
    pub train_images: Vec<u8>,
    pub train_labels: Vec<u32>,
    pub test_images: Vec<u8>,
    pub test_labels: Vec<u32>,
}

/// The four files, each with the accepted spellings (the second is the one some mirrors use).
const FILES: [[&str; 2]; 4] = [
    ["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
    ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
    ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
    ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
];

fn find(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .flat_map(|n| [dir.join(n), dir.join(format!("{n}.gz"))])
        .find(|p| p.is_file())
}

/// Whether `dir` holds all four idx files.
pub fn has_mnist_files(dir: &Path) -> bool {
    FILES.iter().all(|names| find(dir, names).is_some())
}

fn require(dir: &Path, dataset: &str, names: &[&str]) -> Result<PathBuf> {
    find(dir, names).ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no {} (nor {1}.gz); {dataset} needs its four idx files: \
             train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
             t10k-labels-idx1-ubyte (raw or .gz)",
            dir.display(),
            names[0]
        )
    })
}

/// Reads a file, transparently gunzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .with_context(|| {
                format!(
                    "{} is a corrupt or truncated gzip file; download it again",
                    path.display()
                )
            })?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_magic(bytes: &[u8], path: &Path, expected: u32, what: &str) -> Result<()> {
    if bytes.len() < 4 {
        bail!(
            "{} is truncated: {} bytes, too short for an idx header",
            path.display(),
            bytes.len()
        );
    }
    let magic = be_u32(bytes, 0);
    if magic != expected {
        bail!(
            "{} is not an idx {what} file: magic number {magic:#010x}, expected {expected:#010x}",
            path.display()
        );
    }
    Ok(())
}

/// Parses an idx3 image file: returns (count, rows, cols, pixels).
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    check_magic(bytes, path, IMAGES_MAGIC, "image")?;
    if bytes.len() < 16 {
        bail!(
            "{} is truncated: {} bytes, too short for an idx image header (16 bytes)",
            path.display(),
            bytes.len()
        );
    }
    let (n, rows, cols) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    let need = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .and_then(|v| v.checked_add(16))
        .with_context(|| format!("{}: header sizes overflow", path.display()))?;
    if bytes.len() < need {
        bail!(
            "{} is truncated: its header announces {n} images of {rows}x{cols} ({need} bytes) \
             but it has {} bytes; download it again",
            path.display(),
            bytes.len()
        );
    }
    Ok((n, rows, cols, bytes[16..need].to_vec()))
}

/// Parses an idx1 label file; checks every label is below `num_classes`.
pub fn parse_labels(bytes: &[u8], path: &Path, num_classes: usize) -> Result<Vec<u32>> {
    check_magic(bytes, path, LABELS_MAGIC, "label")?;
    if bytes.len() < 8 {
        bail!(
            "{} is truncated: {} bytes, too short for an idx label header (8 bytes)",
            path.display(),
            bytes.len()
        );
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() < 8 + n {
        bail!(
            "{} is truncated: its header announces {n} labels ({} bytes) but it has {} bytes; \
             download it again",
            path.display(),
            8 + n,
            bytes.len()
        );
    }
    let labels: Vec<u32> = bytes[8..8 + n].iter().map(|&b| b as u32).collect();
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!(
            "{}: label {l} of sample {i} is out of range for {num_classes} classes",
            path.display()
        );
    }
    Ok(labels)
}

fn load_pair(images: &Path, labels: &Path) -> Result<(Vec<u8>, Vec<u32>)> {
    let (n, rows, cols, pixels) = parse_images(&read_maybe_gz(images)?, images)?;
    if (rows, cols) != (28, 28) {
        bail!(
            "{} holds {rows}x{cols} images; MNIST-style datasets must be 28x28",
            images.display()
        );
    }
    let l = parse_labels(&read_maybe_gz(labels)?, labels, 10)?;
    if l.len() != n {
        bail!(
            "{} has {n} images but {} has {} labels; the files belong to different datasets \
             or one is damaged",
            images.display(),
            labels.display(),
            l.len()
        );
    }
    Ok((pixels, l))
}

/// Loads the four idx files of `dataset` from `dir` (the train pair only when `need_train`).
pub fn load_dir(dir: &Path, dataset: &str, need_train: bool) -> Result<RawMnist> {
    if !dir.is_dir() {
        bail!(
            "data directory {} does not exist; pass --data-dir with the four {dataset} idx files",
            dir.display()
        );
    }
    let paths: Vec<PathBuf> = FILES
        .iter()
        .map(|names| require(dir, dataset, names))
        .collect::<Result<_>>()?;
    let (train_images, train_labels) = if need_train {
        load_pair(&paths[0], &paths[1])?
    } else {
        (Vec::new(), Vec::new())
    };
    let (test_images, test_labels) = load_pair(&paths[2], &paths[3])?;
    Ok(RawMnist {
        train_images,
        train_labels,
        test_images,
        test_labels,
    })
}

/// Encodes images as an idx3 file.
#[cfg(test)]
pub fn encode_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGES_MAGIC, n as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as an idx1 file.
#[cfg(test)]
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    for v in [LABELS_MAGIC, labels.len() as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let p = Path::new("x");
        let px: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 251) as u8).collect();
        let img = encode_images(2, 28, 28, &px);
        let (n, r, c, back) = parse_images(&img, p).unwrap();
        assert_eq!((n, r, c), (2, 28, 28));
        assert_eq!(back, px);
        let lab = encode_labels(&[3, 9]);
        assert_eq!(parse_labels(&lab, p, 10).unwrap(), vec![3, 9]);

        let e = parse_images(&img[..100], p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_images(&lab, p).unwrap_err().to_string();
        assert!(e.contains("magic number 0x00000801"), "{e}");
        let e = parse_labels(&encode_labels(&[3, 10]), p, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = parse_labels(&lab[..9], p, 10).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
