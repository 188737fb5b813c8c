//! Datasets: where samples come from and how they become normalised model input.

pub mod cifar;
pub mod hub;
pub mod idx;
pub mod imagefolder;
pub mod loader;
pub mod memory;
pub mod synthetic;
pub mod transform;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use circulant_model::init::mix;
use circulant_model::InputSpec;

use crate::cli::DatasetKind;

pub use loader::Loader;

/// Debian's `dataset-fashion-mnist` package installs the idx files here.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// One split of a dataset: random access to normalised samples.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Writes sample `index` as normalised CHW f32 into `out` (length C*H*W of the model input)
    /// and returns its label. `augment` is the per-sample augmentation seed (training only).
    fn load(&self, index: usize, augment: Option<u64>, out: &mut [f32]) -> Result<u32>;
}

/// A dataset: train and test splits with the same classes.
pub struct Dataset {
    /// Where the data came from (without split sizes).
    pub description: String,
    pub train: Arc<dyn Source>,
    pub test: Arc<dyn Source>,
    pub num_classes: usize,
    /// Class names, when the dataset has them.
    pub class_names: Option<Vec<String>>,
}

/// What to open and how samples must look.
#[derive(Clone, Debug)]
pub struct DataOptions {
    pub kind: DatasetKind,
    pub data_dir: Option<PathBuf>,
    /// Shape and normalisation of the model input.
    pub input: InputSpec,
    /// Run seed (synthetic data is generated from it).
    pub seed: u64,
    /// Whether the train split is needed (eval only needs the test split).
    pub need_train: bool,
    pub synthetic_train: usize,
    pub synthetic_test: usize,
    pub synthetic_classes: usize,
    /// Smallest crop area for random-resized-crop (image folders).
    pub min_crop_scale: f64,
}

/// Shape of one sample, channels first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn of(input: &InputSpec) -> Self {
        Shape {
            c: input.channels,
            h: input.height,
            w: input.width,
        }
    }
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// Per-channel normalisation: pixels scaled to [0, 1], then `(p - mean[c]) / std[c]`.
#[derive(Clone, Debug)]
pub struct Normalize {
    scale: Vec<f32>,
    offset: Vec<f32>,
}

impl Normalize {
    /// From the model's input spec; checks that mean/std have one entry per channel.
    pub fn new(input: &InputSpec) -> Result<Self> {
        let c = input.channels;
        if input.mean.len() != c || input.std.len() != c {
            bail!(
                "the input spec has {} channels but {} means and {} stds",
                c,
                input.mean.len(),
                input.std.len()
            );
        }
        if input.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            bail!(
                "the input spec has a zero or non-finite std: {:?}",
                input.std
            );
        }
        Ok(Normalize {
            scale: input.std.iter().map(|s| 1.0 / (255.0 * s)).collect(),
            offset: input
                .mean
                .iter()
                .zip(&input.std)
                .map(|(m, s)| m / s)
                .collect(),
        })
    }

    /// Normalised value of pixel byte `p` in channel `c`.
    #[inline]
    pub fn apply(&self, c: usize, p: u8) -> f32 {
        p as f32 * self.scale[c] - self.offset[c]
    }
}

/// Opens the dataset described by `opts`.
pub fn open(opts: &DataOptions) -> Result<Dataset> {
    let shape = Shape::of(&opts.input);
    let norm = Normalize::new(&opts.input)?;
    match opts.kind {
        DatasetKind::Synthetic => synthetic::open(opts, shape, norm),
        DatasetKind::Mnist | DatasetKind::FashionMnist => open_mnist_like(opts, shape, norm),
        DatasetKind::Cifar10 => {
            let Some(dir) = &opts.data_dir else {
                bail!(
                    "cifar10 needs --data-dir: a directory with data_batch_1.bin..data_batch_5.bin and \
                     test_batch.bin (the CIFAR-10 binary version), or an image folder with \
                     train/<class>/*.png and test/<class>/*.png"
                );
            };
            if let Some(bin_dir) = cifar::find_binary_dir(dir) {
                cifar::open(&bin_dir, opts, shape, norm)
            } else if imagefolder::looks_like_imagefolder(dir) {
                imagefolder::open(dir, opts, shape, norm)
            } else {
                bail!(
                    "{} holds neither the CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin) \
                     nor an image folder (train/<class>/ and test/<class>/ or val/<class>/)",
                    dir.display()
                );
            }
        }
        DatasetKind::Imagefolder => {
            let Some(dir) = &opts.data_dir else {
                bail!(
                    "imagefolder needs --data-dir DIR with DIR/train/<class>/*.jpg and \
                     DIR/val/<class>/*.jpg (or DIR/test/<class>/)"
                );
            };
            imagefolder::open(dir, opts, shape, norm)
        }
    }
}

fn open_mnist_like(opts: &DataOptions, shape: Shape, norm: Normalize) -> Result<Dataset> {
    let fashion = opts.kind == DatasetKind::FashionMnist;
    let names = if fashion {
        Some(
            [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )
    } else {
        Some((0..10).map(|d| d.to_string()).collect())
    };
    let mnist_shape = Shape { c: 1, h: 28, w: 28 };
    if shape != mnist_shape {
        bail!(
            "{} images are 1x28x28 but the model takes {shape} input; of the networks, \
             mnist-cnn and mlp take 1x28x28 images",
            opts.kind
        );
    }
    let dir: Option<PathBuf> = match &opts.data_dir {
        Some(d) => Some(d.clone()),
        None if fashion && idx::has_mnist_files(Path::new(DEBIAN_FASHION_MNIST)) => {
            Some(PathBuf::from(DEBIAN_FASHION_MNIST))
        }
        None => None,
    };
    let raw = match &dir {
        Some(dir) => idx::load_dir(dir, &opts.kind.to_string(), opts.need_train)?,
        None => hub::load(opts.kind)?,
    };
    let from = match &dir {
        Some(d) => d.display().to_string(),
        None => "the Hugging Face hub".to_string(),
    };
    let description = format!("{} from {from}", opts.kind);
    let train = memory::MemorySource::new(
        raw.train_images,
        raw.train_labels,
        mnist_shape,
        norm.clone(),
        memory::Augment::None,
    )?;
    let test = memory::MemorySource::new(
        raw.test_images,
        raw.test_labels,
        mnist_shape,
        norm,
        memory::Augment::None,
    )?;
    Ok(Dataset {
        description,
        train: Arc::new(train),
        test: Arc::new(test),
        num_classes: 10,
        class_names: names,
    })
}

/// Some samples of another split, in the order of `indices`.
pub struct Subset {
    inner: Arc<dyn Source>,
    indices: Vec<u32>,
}

impl Subset {
    pub fn new(inner: Arc<dyn Source>, indices: Vec<u32>) -> Self {
        Subset { inner, indices }
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn load(&self, index: usize, augment: Option<u64>, out: &mut [f32]) -> Result<u32> {
        self.inner.load(self.indices[index] as usize, augment, out)
    }
}

/// Splits `n` training samples into (train, validation) index lists: `val` samples drawn at
/// random (deterministic from `seed`), the rest for training; both lists in ascending order.
pub fn split_indices(n: usize, val: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut all: Vec<u32> = (0..n as u32).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, &[0x5A11]));
    all.shuffle(&mut rng);
    let (v, t) = all.split_at(val.min(n));
    let (mut v, mut t) = (v.to_vec(), t.to_vec());
    v.sort_unstable();
    t.sort_unstable();
    (t, v)
}

/// Derives an independent seed from a base seed and a list of values (e.g. epoch, index).
pub fn derive_seed(base: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(base), |acc, &p| mix(acc ^ mix(p)))
}

/// Shuffled sample order for `epoch`, from `StdRng` seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<u32> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, &[0x0D4A, epoch as u64]));
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        let a = epoch_order(100, 7, 3);
        let b = epoch_order(100, 7, 3);
        let c = epoch_order(100, 7, 4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<u32>>());
    }

    #[test]
    fn split_is_a_deterministic_partition() {
        let (t, v) = split_indices(50, 7, 1);
        assert_eq!((t.len(), v.len()), (43, 7));
        assert_eq!(split_indices(50, 7, 1), (t.clone(), v.clone()));
        assert_ne!(split_indices(50, 7, 2).1, v);
        let mut all: Vec<u32> = t.iter().chain(&v).copied().collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<u32>>());
        assert_eq!(split_indices(5, 0, 1), ((0..5).collect(), vec![]));
    }

    #[test]
    fn normalize_matches_formula() {
        let spec = InputSpec {
            channels: 2,
            height: 1,
            width: 1,
            mean: vec![0.5, 0.0],
            std: vec![0.25, 1.0],
        };
        let n = Normalize::new(&spec).unwrap();
        for p in [0u8, 17, 128, 255] {
            let want0 = (p as f32 / 255.0 - 0.5) / 0.25;
            let want1 = p as f32 / 255.0;
            assert!((n.apply(0, p) - want0).abs() < 1e-5);
            assert!((n.apply(1, p) - want1).abs() < 1e-6);
        }
    }
}
