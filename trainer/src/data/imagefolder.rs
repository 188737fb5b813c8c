//! ImageNet-layout folders (`DIR/train/<class>/*.jpg`, `DIR/val/<class>/*.jpg` or `DIR/test/`),
//! streamed from disk: only file names are held in memory, images are decoded per batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::transform::{self, Transform};
use super::{DataOptions, Dataset, Normalize, Shape, Source};

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPEG"];

/// Whether `dir` has a `train/` folder and a `val/` or `test/` folder.
pub fn looks_like_imagefolder(dir: &Path) -> bool {
    dir.join("train").is_dir() && (dir.join("val").is_dir() || dir.join("test").is_dir())
}

/// Whether `p` has a PNG or JPEG extension.
pub fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// Class folder names under `split_dir`, sorted.
pub fn class_names(split_dir: &Path) -> Result<Vec<String>> {
    let names: Vec<String> = sorted_entries(split_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
        .collect();
    if names.is_empty() {
        bail!(
            "{} has no class folders; expected {0}/<class>/*.jpg",
            split_dir.display()
        );
    }
    Ok(names)
}

/// Image files of one split with their class index (classes given by `classes`).
pub fn list_split(split_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>> {
    let present = class_names(split_dir)?;
    if let Some(unknown) = present.iter().find(|c| !classes.contains(c)) {
        bail!(
            "{} has class folder '{unknown}' which the training split does not have",
            split_dir.display()
        );
    }
    let mut files = Vec::new();
    for (k, name) in classes.iter().enumerate() {
        let d = split_dir.join(name);
        if !d.is_dir() {
            continue;
        }
        files.extend(
            sorted_entries(&d)?
                .into_iter()
                .filter(|p| is_image(p) && p.is_file())
                .map(|p| (p, k as u32)),
        );
    }
    if files.is_empty() {
        bail!(
            "{} has no images (.jpg, .jpeg or .png) in its class folders",
            split_dir.display()
        );
    }
    Ok(files)
}

/// One split of an image folder.
pub struct ImageFolderSource {
    files: Vec<(PathBuf, u32)>,
    shape: Shape,
    norm: Normalize,
    min_scale: f64,
    crop_pct: f64,
}

impl ImageFolderSource {
    pub fn new(files: Vec<(PathBuf, u32)>, shape: Shape, norm: Normalize, min_scale: f64) -> Self {
        ImageFolderSource {
            files,
            shape,
            norm,
            min_scale,
            crop_pct: transform::eval_crop_pct(shape),
        }
    }
}

impl Source for ImageFolderSource {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn load(&self, index: usize, augment: Option<u64>, out: &mut [f32]) -> Result<u32> {
        let (path, label) = &self.files[index];
        let img = transform::decode(path)?;
        let t = match augment {
            Some(seed) => Transform::Train {
                seed,
                min_scale: self.min_scale,
            },
            None => Transform::Eval {
                crop_pct: self.crop_pct,
            },
        };
        transform::apply(img, t, self.shape, &self.norm, out)
            .with_context(|| format!("cannot transform image {}", path.display()))?;
        Ok(*label)
    }
}

/// Opens `dir` as an image folder.
pub fn open(dir: &Path, opts: &DataOptions, shape: Shape, norm: Normalize) -> Result<Dataset> {
    if !dir.is_dir() {
        bail!("data directory {} does not exist", dir.display());
    }
    let train_dir = dir.join("train");
    // The test split: test/, or val/ when there is no test/ (as in ImageNet's layout).
    let test_dir = ["test", "val"]
        .iter()
        .map(|s| dir.join(s))
        .find(|d| d.is_dir());
    let Some(test_dir) = test_dir else {
        bail!(
            "{} has no val/ or test/ folder; expected {0}/train/<class>/*.jpg and {0}/val/<class>/*.jpg",
            dir.display()
        );
    };
    let classes = if train_dir.is_dir() {
        class_names(&train_dir)?
    } else if opts.need_train {
        bail!(
            "{} has no train/ folder; expected {0}/train/<class>/*.jpg",
            dir.display()
        );
    } else {
        class_names(&test_dir)?
    };
    let train_files = if opts.need_train {
        list_split(&train_dir, &classes)?
    } else {
        Vec::new()
    };
    let test_files = list_split(&test_dir, &classes)?;
    let description = format!(
        "image folder {}: {} classes read as {shape}, test split from {}/",
        dir.display(),
        classes.len(),
        test_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("test"),
    );
    Ok(Dataset {
        description,
        train: Arc::new(ImageFolderSource::new(
            train_files,
            shape,
            norm.clone(),
            opts.min_crop_scale,
        )),
        test: Arc::new(ImageFolderSource::new(
            test_files,
            shape,
            norm,
            opts.min_crop_scale,
        )),
        num_classes: classes.len(),
        class_names: Some(classes),
    })
}
