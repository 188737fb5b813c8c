//! Where a model's tensors come from while it is built: seeded init or a loaded checkpoint.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use safetensors::tensor::SafeTensors;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::init::{rng_for, Init};

/// Source of tensor values.
pub(crate) enum Source<'a> {
    /// Initialise every tensor from `rng_for(seed, name)`.
    Init { seed: u64 },
    /// Take every tensor from a parsed safetensors file.
    Load(&'a SafeTensors<'a>),
}

/// The tensors of a built model, by kind.
pub(crate) struct Store {
    /// Trainable parameters.
    pub varmap: VarMap,
    /// Non-trainable state updated during training (batch-norm running statistics).
    pub buffers: BTreeMap<String, Var>,
    /// Fixed tensors (sign vectors).
    pub fixed: BTreeMap<String, Tensor>,
}

/// Creates the named tensors of a model, checking names and shapes when loading.
pub(crate) struct Builder<'a> {
    source: Source<'a>,
    device: Device,
    store: Store,
    used: BTreeSet<String>,
}

impl<'a> Builder<'a> {
    pub fn new(source: Source<'a>, device: &Device) -> Self {
        Self {
            source,
            device: device.clone(),
            store: Store {
                varmap: VarMap::new(),
                buffers: BTreeMap::new(),
                fixed: BTreeMap::new(),
            },
            used: BTreeSet::new(),
        }
    }

    fn values(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        if !self.used.insert(name.to_string()) {
            return Err(Error::InvalidConfig(format!(
                "tensor `{name}` defined twice"
            )));
        }
        match &self.source {
            Source::Init { seed } => {
                let len = shape.iter().product();
                Ok(init.sample(len, &mut rng_for(*seed, name)))
            }
            Source::Load(st) => {
                let view = st.tensor(name).map_err(|_| Error::MissingTensor {
                    name: name.to_string(),
                })?;
                if view.dtype() != Dtype::F32 {
                    return Err(Error::DTypeMismatch {
                        name: name.to_string(),
                        found: format!("{:?}", view.dtype()),
                    });
                }
                if view.shape() != shape {
                    return Err(Error::ShapeMismatch {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found: view.shape().to_vec(),
                    });
                }
                Ok(view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
    }

    /// A trainable parameter, registered in the model's `VarMap`.
    pub fn trainable(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let var = Var::from_vec(self.values(name, shape, init)?, shape, &self.device)?;
        self.store
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// A non-trainable tensor updated in train mode (saved, never returned by `trainable()`).
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let var = Var::from_vec(self.values(name, shape, init)?, shape, &self.device)?;
        self.store.buffers.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// A fixed tensor (saved, never trained).
    pub fn fixed(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = Tensor::from_vec(self.values(name, shape, init)?, shape, &self.device)?;
        self.store.fixed.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Ends the build; when loading, rejects tensors of the file the model did not use.
    pub fn finish(self) -> Result<Store> {
        if let Source::Load(st) = &self.source {
            let mut names = st.names();
            names.sort();
            if let Some(extra) = names.into_iter().find(|n| !self.used.contains(*n)) {
                return Err(Error::UnexpectedTensor {
                    name: extra.to_string(),
                });
            }
        }
        Ok(self.store)
    }
}
