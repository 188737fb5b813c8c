//! Where a model's tensors come from while it is built: seeded init or a loaded checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};
use crate::init::{rng_for, Init};

/// Source of tensor values.
pub(crate) enum Source {
    /// Initialise every tensor from `rng_for(seed, name)`.
    Init { seed: u64 },
    /// Take every tensor from a map of named tensors (a train state, a caller's tensors): f32,
    /// f16 or bf16 on any device, converted to f32 on the model's device and copied.
    Tensors(HashMap<String, Tensor>),
    /// As `Tensors`, for tensors that belong to the model alone (read from a checkpoint file):
    /// f32 variables on the model's device are taken as they are, without a copy.
    Loaded(HashMap<String, Tensor>),
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

/// The values of one tensor: drawn on the host, or taken from the source map.
enum Values {
    Host(Vec<f32>),
    Tensor(Tensor),
}

/// Creates the named tensors of a model, checking names, shapes and dtypes when loading.
pub(crate) struct Builder {
    source: Source,
    device: Device,
    store: Store,
    used: BTreeSet<String>,
}

/// Accepted checkpoint dtypes: F32, F16, BF16.
pub(crate) fn check_dtype(name: &str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::DTypeMismatch {
            name: name.to_string(),
            found: format!("{other:?}"),
        }),
    }
}

impl Builder {
    pub fn new(source: Source, device: &Device) -> Self {
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

    fn values(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Values> {
        if !self.used.insert(name.to_string()) {
            return Err(Error::InvalidConfig(format!(
                "tensor `{name}` defined twice"
            )));
        }
        let owned = matches!(self.source, Source::Loaded(_));
        match &mut self.source {
            Source::Init { seed } => {
                let len = shape.iter().product();
                Ok(Values::Host(init.sample(len, &mut rng_for(*seed, name))))
            }
            Source::Tensors(map) | Source::Loaded(map) => {
                let t = map.remove(name).ok_or_else(|| Error::MissingTensor {
                    name: name.to_string(),
                })?;
                check_dtype(name, t.dtype())?;
                if t.dims() != shape {
                    return Err(Error::ShapeMismatch {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                let t = t.to_device(&self.device)?.to_dtype(DType::F32)?;
                // Never share storage with a caller's variable.
                Ok(Values::Tensor(if owned { t } else { t.detach() }))
            }
        }
    }

    fn var(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        Ok(match self.values(name, shape, init)? {
            Values::Host(v) => Var::from_vec(v, shape, &self.device)?,
            // `from_tensor` copies the storage of a tensor that is not a variable (a loaded f32
            // variable is taken as it is).
            Values::Tensor(t) => Var::from_tensor(&t)?,
        })
    }

    /// A trainable parameter, registered in the model's `VarMap`.
    pub fn trainable(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let var = self.var(name, shape, init)?;
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
        let var = self.var(name, shape, init)?;
        self.store.buffers.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// A fixed tensor (saved, never trained).
    pub fn fixed(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = match self.values(name, shape, init)? {
            Values::Host(v) => Tensor::from_vec(v, shape, &self.device)?,
            Values::Tensor(t) => t.detach().copy()?,
        };
        self.store.fixed.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Ends the build; when loading, rejects tensors of the file the model did not use.
    pub fn finish(self) -> Result<Store> {
        if let Source::Tensors(map) | Source::Loaded(map) = &self.source {
            // Every used name was removed from the map: what is left is unexpected.
            if let Some(extra) = map.keys().min() {
                return Err(Error::UnexpectedTensor {
                    name: extra.clone(),
                });
            }
        }
        Ok(self.store)
    }
}
