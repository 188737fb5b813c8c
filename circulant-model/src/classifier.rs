//! Inference: a loaded model with its class names and input preprocessing.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::CheckpointInfo;
use crate::config::{InputSpec, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{EvalCache, Model};

/// A model ready for inference: eval mode, circulant weight spectra computed once and batch
/// norms folded into the convolutions before them (see [`Model::eval_cache`]), class names
/// and input spec from the checkpoint. `Send + Sync`: one classifier can serve several threads.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use circulant_model::checkpoint::SaveOptions;
/// use circulant_model::{Classifier, Head, Model, ModelConfig, Network};
///
/// # fn main() -> circulant_model::Result<()> {
/// let dev = Device::Cpu;
/// let model = Model::new(ModelConfig::new(Network::Mlp, Head::Circulant, 3, 0), &dev)?;
/// let dir = std::env::temp_dir().join(format!("classifier-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("model.safetensors");
/// let classes = ["cat", "dog", "fox"].map(String::from).to_vec();
/// model.save_with(&path, &SaveOptions { class_names: Some(classes), ..Default::default() })?;
///
/// let clf = Classifier::load(&path, &dev)?;
/// let spec = clf.input();
/// let batch = Tensor::zeros((2, spec.channels, spec.height, spec.width), candle_core::DType::F32, &dev)?;
/// let probs = clf.predict(&batch)?; // (2, 3), rows sum to 1
/// assert_eq!(probs.dims(), &[2, 3]);
/// let top = clf.top_k(&batch, 2)?;
/// assert_eq!(top[0].len(), 2);
/// println!("{}: {:.3}", clf.classes().unwrap()[top[0][0].0], top[0][0].1);
/// std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
pub struct Classifier {
    model: Model,
    cache: EvalCache,
    classes: Option<Vec<String>>,
}

impl Classifier {
    /// Wraps a model; `classes` (if any) must hold one name per class.
    pub fn new(model: Model, classes: Option<Vec<String>>) -> Result<Self> {
        if let Some(names) = &classes {
            if names.len() != model.config().num_classes {
                return Err(Error::InvalidConfig(format!(
                    "{} class names for a model with {} classes",
                    names.len(),
                    model.config().num_classes
                )));
            }
        }
        let cache = model.eval_cache()?;
        Ok(Self {
            model,
            cache,
            classes,
        })
    }

    /// Loads a checkpoint file (f32, f16 or bf16) with its class names.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (model, info) = Model::load_with_info(path, device)?;
        Self::with_info(model, info)
    }

    /// Loads a checkpoint from the bytes of its file.
    pub fn from_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let (model, info) = Model::from_safetensors_bytes_with_info(bytes, device)?;
        Self::with_info(model, info)
    }

    /// Loads `file` (default `model.safetensors`) of the hub model repository `repo`
    /// (`owner/name`) at `revision` (default `main`), from the local hub cache when it is
    /// there, downloading it otherwise (see [`crate::HubRef::fetch`]; `HF_HUB_OFFLINE=1`
    /// forbids downloads).
    #[cfg(feature = "hub")]
    pub fn from_hub(
        repo: &str,
        file: Option<&str>,
        revision: Option<&str>,
        device: &Device,
    ) -> Result<Self> {
        let mut spec = String::from(crate::HubRef::SCHEME) + repo;
        if let Some(f) = file {
            spec = spec + "/" + f;
        }
        if let Some(r) = revision {
            spec = spec + "@" + r;
        }
        Self::load(crate::HubRef::parse(&spec)?.fetch(None)?, device)
    }

    fn with_info(model: Model, info: CheckpointInfo) -> Result<Self> {
        Self::new(model, info.class_names)
    }

    /// The underlying model (its weights must not be changed: the classifier keeps their
    /// spectra and folded convolutions).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model, giving up the classifier.
    pub fn into_model(self) -> Model {
        self.model
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The class names stored in the checkpoint, if any.
    pub fn classes(&self) -> Option<&[String]> {
        self.classes.as_deref()
    }

    pub fn num_classes(&self) -> usize {
        self.model.config().num_classes
    }

    /// The input the model takes: `(N, channels, height, width)` f32, normalised with
    /// `mean`/`std` after scaling pixels to [0, 1].
    pub fn input(&self) -> &InputSpec {
        &self.model.config().input
    }

    /// Logits `(N, classes)` of a preprocessed batch `(N, channels, height, width)`, in eval mode.
    pub fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        let batch = if batch.device().same_device(self.model.device()) {
            batch.clone()
        } else {
            batch.to_device(self.model.device())?
        };
        self.model.forward_eval_with(&batch, &self.cache)
    }

    /// Softmax probabilities `(N, classes)` of a preprocessed batch.
    pub fn predict(&self, batch: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(&self.logits(batch)?)?)
    }

    /// The `k` most probable classes of each image, as `(class index, probability)`, most
    /// probable first (`k` is capped at the number of classes).
    pub fn top_k(&self, batch: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        let probs = self
            .predict(batch)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        Ok(probs
            .into_iter()
            .map(|row| {
                let mut ranked: Vec<(usize, f32)> = row.into_iter().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                ranked.truncate(k);
                ranked
            })
            .collect())
    }

    /// Images as a model batch `(N, channels, height, width)` on the model's device: each image
    /// is resized (shorter side to the input size, or to size / 0.875 for inputs of 128 pixels
    /// and more, the trainer's eval convention) and centre-cropped to the input size, converted
    /// to grey or RGB, scaled to [0, 1] and normalised with the input's mean and std.
    #[cfg(feature = "image")]
    pub fn preprocess(&self, images: &[image::DynamicImage]) -> Result<Tensor> {
        let spec = self.input();
        if images.is_empty() {
            return Err(Error::InputShape {
                found: vec![0],
                expected: "at least one image".into(),
            });
        }
        let per_image = spec.channels * spec.height * spec.width;
        let mut data = Vec::with_capacity(images.len() * per_image);
        for (index, img) in images.iter().enumerate() {
            preprocess_one(img, spec, &mut data)
                .map_err(|reason| Error::Image { index, reason })?;
        }
        let shape = (images.len(), spec.channels, spec.height, spec.width);
        Ok(Tensor::from_vec(data, shape, self.model.device())?)
    }
}

/// Appends the normalised CHW values of one image to `out`.
#[cfg(feature = "image")]
fn preprocess_one(
    img: &image::DynamicImage,
    spec: &InputSpec,
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    use image::imageops::FilterType;

    let (iw, ih) = (img.width(), img.height());
    if iw == 0 || ih == 0 {
        return Err("empty image".into());
    }
    let (w, h) = (spec.width as u32, spec.height as u32);
    let crop_pct = if spec.height.min(spec.width) >= 128 {
        0.875
    } else {
        1.0
    };
    // Scale so that the image covers the crop box, then crop its centre.
    let scale = (f64::from(w) / f64::from(iw)).max(f64::from(h) / f64::from(ih)) / crop_pct;
    let rw = ((f64::from(iw) * scale).round() as u32).max(w);
    let rh = ((f64::from(ih) * scale).round() as u32).max(h);
    let resized = img.resize_exact(rw, rh, FilterType::Triangle);
    let cropped = resized.crop_imm((rw - w) / 2, (rh - h) / 2, w, h);
    let pixels = match spec.channels {
        1 => cropped.to_luma8().into_raw(),
        3 => cropped.to_rgb8().into_raw(),
        c => {
            return Err(format!(
                "images can be read as 1 (grey) or 3 (RGB) channels, the model wants {c}"
            ))
        }
    };
    let c = spec.channels;
    for ch in 0..c {
        let (mean, std) = (spec.mean[ch], spec.std[ch]);
        out.extend(
            pixels
                .iter()
                .skip(ch)
                .step_by(c)
                .map(|&p| (f32::from(p) / 255.0 - mean) / std),
        );
    }
    Ok(())
}
