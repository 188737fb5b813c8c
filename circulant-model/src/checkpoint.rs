//! Saving and loading models as single safetensors files (layout: docs/CHECKPOINT_FORMAT.md).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{SafeTensors, TensorView};
use safetensors::Dtype;

use crate::builder::Source;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Model;

/// `__metadata__` key of the model config JSON.
pub const CONFIG_KEY: &str = "config";
/// `__metadata__` key of the checkpoint format version.
pub const FORMAT_KEY: &str = "format";
/// Value stored under [`FORMAT_KEY`].
pub const FORMAT_VERSION: &str = "circulant-model/1";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn st_err(path: &Path) -> impl FnOnce(safetensors::SafeTensorError) -> Error + '_ {
    move |source| Error::SafeTensors {
        path: path.to_path_buf(),
        source,
    }
}

fn to_le_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Serialises named f32 tensors and a config into safetensors bytes.
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)], config: &ModelConfig) -> Result<Vec<u8>> {
    let bytes = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), t.dims().to_vec(), to_le_bytes(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|source| Error::SafeTensors {
                    path: PathBuf::from(name),
                    source,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([
        (CONFIG_KEY.to_string(), config.to_json()?),
        (FORMAT_KEY.to_string(), FORMAT_VERSION.to_string()),
    ]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|source| Error::SafeTensors {
        path: PathBuf::from("<memory>"),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        // Persist the rename itself; not every platform can open a directory, so best effort.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the `__metadata__` map of a safetensors file from its header only.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(io_err(path))?;
    let n = u64::from_le_bytes(n);
    // safetensors caps headers at 100 MB.
    if n > 100_000_000 {
        return Err(Error::SafeTensors {
            path: path.to_path_buf(),
            source: safetensors::SafeTensorError::HeaderTooLarge,
        });
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| Error::SafeTensors {
            path: path.to_path_buf(),
            source: safetensors::SafeTensorError::InvalidHeaderDeserialization(e),
        })?;
    let mut out = HashMap::new();
    if let Some(meta) = header.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            if let Some(v) = v.as_str() {
                out.insert(k.clone(), v.to_string());
            }
        }
    }
    Ok(out)
}

impl Model {
    /// Writes one safetensors file: every tensor of [`Model::tensors`] as f32, the config JSON
    /// under `__metadata__["config"]`. Written atomically (temp file, fsync, rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = to_safetensors_bytes(&self.tensors(), self.config())?;
        write_atomic(path.as_ref(), &bytes)
    }

    /// Rebuilds a model from a checkpoint file alone. Errors name the missing, misshapen or
    /// unexpected tensor; an unknown network or a missing config is an error too.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Self::from_safetensors_bytes(&bytes, device).map_err(|e| match e {
            Error::MissingConfig { .. } => Error::MissingConfig {
                path: path.to_path_buf(),
            },
            Error::SafeTensors { source, .. } => Error::SafeTensors {
                path: path.to_path_buf(),
                source,
            },
            e => e,
        })
    }

    /// Rebuilds a model from the bytes of a checkpoint file.
    pub fn from_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let mem = Path::new("<memory>");
        let st = SafeTensors::deserialize(bytes).map_err(st_err(mem))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(st_err(mem))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CONFIG_KEY))
            .ok_or_else(|| Error::MissingConfig {
                path: mem.to_path_buf(),
            })?;
        let config = ModelConfig::from_json(json)?;
        Model::build(config, Source::Load(&st), device)
    }

    /// Reads only the config of a checkpoint file (the tensor data is not read).
    pub fn read_config(path: impl AsRef<Path>) -> Result<ModelConfig> {
        let path = path.as_ref();
        let meta = read_metadata(path)?;
        let json = meta.get(CONFIG_KEY).ok_or_else(|| Error::MissingConfig {
            path: path.to_path_buf(),
        })?;
        ModelConfig::from_json(json)
    }
}
