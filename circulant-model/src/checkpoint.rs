//! Saving and loading models as single safetensors files (layout: docs/CHECKPOINT_FORMAT.md).
//!
//! Tensors are written with candle's safetensors support; files hold f32 tensors by default,
//! or f16 / bf16 ones for half-size files ([`SaveOptions::dtype`]). Loading accepts all three
//! and computes in f32: the file is memory-mapped and each tensor copied (or widened to f32)
//! once, into the model's own variable.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use safetensors::tensor::SafeTensors;

use crate::builder::{check_dtype, Source};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Model;

/// `__metadata__` key of the model config JSON.
pub const CONFIG_KEY: &str = "config";
/// `__metadata__` key of the checkpoint format version.
pub const FORMAT_KEY: &str = "format";
/// `__metadata__` key of the class names (a JSON list of strings, optional).
pub const CLASSES_KEY: &str = "classes";
/// `__metadata__` key of the tensor dtype (`f32`, `f16` or `bf16`; absent means `f32`).
pub const DTYPE_KEY: &str = "dtype";
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

/// The name of a checkpoint dtype in `__metadata__["dtype"]`.
fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::UnsupportedDType(other)),
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(Error::InvalidMetadata {
            key: DTYPE_KEY.into(),
            reason: format!("`{s}` is not one of f32, f16, bf16"),
        }),
    }
}

fn check_class_names(names: &[String], config: &ModelConfig) -> Result<()> {
    if names.len() != config.num_classes {
        return Err(Error::InvalidMetadata {
            key: CLASSES_KEY.into(),
            reason: format!(
                "{} class names for a model with {} classes",
                names.len(),
                config.num_classes
            ),
        });
    }
    Ok(())
}

/// How [`Model::save_with`] writes a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct SaveOptions {
    /// Class names stored under `__metadata__["classes"]` (one per class, in class order).
    pub class_names: Option<Vec<String>>,
    /// Tensor dtype in the file: `F32` (default, exact), or `F16` / `BF16` for half-size files.
    pub dtype: DType,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            class_names: None,
            dtype: DType::F32,
        }
    }
}

/// What a checkpoint says about itself: read from its header, without its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    pub config: ModelConfig,
    /// Class names, when the checkpoint stores them.
    pub class_names: Option<Vec<String>>,
    /// Dtype of the stored tensors (`F32` for files without a `dtype` entry).
    pub dtype: DType,
}

impl CheckpointInfo {
    /// Reads the header of a checkpoint file (the tensor data is not read).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_metadata(&read_metadata(path)?).map_err(|e| with_path(e, path))
    }

    /// Parses the `__metadata__` map of a checkpoint.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Self> {
        let json = meta.get(CONFIG_KEY).ok_or_else(|| Error::MissingConfig {
            path: PathBuf::from("<memory>"),
        })?;
        let config = ModelConfig::from_json(json)?;
        let class_names = match meta.get(CLASSES_KEY) {
            None => None,
            Some(s) => {
                let names: Vec<String> =
                    serde_json::from_str(s).map_err(|e| Error::InvalidMetadata {
                        key: CLASSES_KEY.into(),
                        reason: format!("not a JSON list of strings: {e}"),
                    })?;
                check_class_names(&names, &config)?;
                Some(names)
            }
        };
        let dtype = match meta.get(DTYPE_KEY) {
            None => DType::F32,
            Some(s) => parse_dtype(s)?,
        };
        Ok(Self {
            config,
            class_names,
            dtype,
        })
    }

    /// Parses the header of the bytes of a checkpoint file.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        let mem = Path::new("<memory>");
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(st_err(mem))?;
        Self::from_metadata(meta.metadata().as_ref().unwrap_or(&HashMap::new()))
    }
}

/// Puts `path` into the errors that name a file.
fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::MissingConfig { .. } => Error::MissingConfig {
            path: path.to_path_buf(),
        },
        Error::SafeTensors { source, .. } => Error::SafeTensors {
            path: path.to_path_buf(),
            source,
        },
        e => e,
    }
}

/// Serialises named tensors and a config into safetensors bytes (f32, no class names).
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)], config: &ModelConfig) -> Result<Vec<u8>> {
    to_safetensors_bytes_with(tensors, config, &SaveOptions::default())
}

/// Serialises named tensors and a config into safetensors bytes, as `options` says.
pub fn to_safetensors_bytes_with(
    tensors: &[(String, Tensor)],
    config: &ModelConfig,
    options: &SaveOptions,
) -> Result<Vec<u8>> {
    let dtype = dtype_name(options.dtype)?;
    let mut metadata = HashMap::from([
        (CONFIG_KEY.to_string(), config.to_json()?),
        (FORMAT_KEY.to_string(), FORMAT_VERSION.to_string()),
    ]);
    if options.dtype != DType::F32 {
        metadata.insert(DTYPE_KEY.to_string(), dtype.to_string());
    }
    if let Some(names) = &options.class_names {
        check_class_names(names, config)?;
        metadata.insert(CLASSES_KEY.to_string(), serde_json::to_string(names)?);
    }
    // Contiguous CPU tensors of the file's dtype: candle's `View` then cannot fail.
    let tensors = tensors
        .iter()
        .map(|(name, t)| {
            let t = t
                .to_device(&Device::Cpu)?
                .to_dtype(options.dtype)?
                .contiguous()?;
            Ok((name.as_str(), t))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(tensors, Some(metadata)).map_err(st_err(Path::new("<memory>")))
}

/// Writes `bytes` to `path` atomically: a temp file `.<name>.tmp-<pid>` in the same directory,
/// fsync, rename over `path`, then a best-effort fsync of the directory.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
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

/// The values of a stored f32, f16 or bf16 tensor as f32, in one pass over its bytes
/// (safetensors stores little-endian values).
fn f32_values(data: &[u8], dtype: DType) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    use half::{bf16, f16};

    if dtype == DType::F32 {
        let len = data.len() / 4;
        let mut values = Vec::<f32>::with_capacity(len);
        // SAFETY: `values` has room for `len * 4` bytes, which do not overlap `data`; every bit
        // pattern is an f32, and a byte copy needs no alignment of `data`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), values.as_mut_ptr().cast::<u8>(), len * 4);
            values.set_len(len);
        }
        return values;
    }
    let mut values = vec![0f32; data.len() / 2];
    // SAFETY: every bit pattern is a u16.
    let (head, bits, _) = unsafe { data.align_to::<u16>() };
    if cfg!(target_endian = "little") && head.is_empty() && bits.len() == values.len() {
        // Vectorised where the CPU converts halves (F16C).
        match dtype {
            DType::F16 => bits
                .reinterpret_cast::<f16>()
                .convert_to_f32_slice(&mut values),
            _ => bits
                .reinterpret_cast::<bf16>()
                .convert_to_f32_slice(&mut values),
        }
    } else {
        for (v, b) in values.iter_mut().zip(data.chunks_exact(2)) {
            let b = [b[0], b[1]];
            *v = match dtype {
                DType::F16 => f16::from_le_bytes(b).to_f32(),
                _ => bf16::from_le_bytes(b).to_f32(),
            };
        }
    }
    values
}

/// The tensors of a parsed safetensors file (f32, f16 or bf16; any other dtype is an error
/// naming the tensor), as f32 variables on `device`: each made by one copy (or one widening
/// pass) of its bytes, for [`Source::Loaded`] to take without another copy.
fn load_tensors(st: &SafeTensors<'_>, device: &Device) -> Result<HashMap<String, Tensor>> {
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = DType::try_from(view.dtype()).map_err(|_| Error::DTypeMismatch {
                name: name.clone(),
                found: format!("{:?}", view.dtype()),
            })?;
            check_dtype(&name, dtype)?;
            let values = f32_values(view.data(), dtype);
            let var = Var::from_vec(values, view.shape(), device)?;
            Ok((name, var.as_tensor().clone()))
        })
        .collect()
}

/// The bytes of a checkpoint file: memory-mapped when it is a non-empty regular file (the
/// tensors are then copied once, from the page cache into the model), read otherwise.
enum FileBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<Self> {
        let mapped = File::open(path).ok().and_then(|f| {
            let meta = f.metadata().ok()?;
            if !meta.is_file() || meta.len() == 0 {
                return None;
            }
            // SAFETY: the map lives while the model is built from it. The file must not be
            // truncated meanwhile; checkpoints are replaced by rename (`write_atomic`), which
            // leaves an open file as it was.
            unsafe { memmap2::Mmap::map(&f) }.ok()
        });
        Ok(match mapped {
            Some(map) => Self::Mapped(map),
            // Anything else (a pipe, a directory, a missing file) is read as before, with its
            // error.
            None => Self::Read(std::fs::read(path).map_err(io_err(path))?),
        })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Read(bytes) => bytes,
        }
    }
}

impl Model {
    /// Writes one f32 safetensors file: every tensor of [`Model::tensors`], the config JSON
    /// under `__metadata__["config"]`. Same as [`Model::save_with`] with default options.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path, &SaveOptions::default())
    }

    /// Writes one safetensors file as `options` says (dtype, class names), atomically (temp
    /// file, fsync, rename; see [`write_atomic`]).
    pub fn save_with(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<()> {
        let bytes = to_safetensors_bytes_with(&self.tensors(), self.config(), options)?;
        write_atomic(path.as_ref(), &bytes)
    }

    /// Rebuilds a model from a checkpoint file alone (f32, f16 or bf16 tensors; the model
    /// computes in f32). Errors name the missing, misshapen or unexpected tensor; an unknown
    /// network or a missing config is an error too. The file is memory-mapped while the model
    /// is built: it must not be truncated meanwhile (replacing it by rename, as
    /// [`write_atomic`] does, is safe).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::load_with_info(path, device)?.0)
    }

    /// [`Model::load`], also returning what the checkpoint's metadata says (class names,
    /// stored dtype).
    pub fn load_with_info(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, CheckpointInfo)> {
        let path = path.as_ref();
        let bytes = FileBytes::open(path)?;
        Self::from_safetensors_bytes_with_info(bytes.bytes(), device)
            .map_err(|e| with_path(e, path))
    }

    /// Rebuilds a model from the bytes of a checkpoint file.
    pub fn from_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        Ok(Self::from_safetensors_bytes_with_info(bytes, device)?.0)
    }

    /// [`Model::from_safetensors_bytes`], also returning the checkpoint's metadata.
    pub fn from_safetensors_bytes_with_info(
        bytes: &[u8],
        device: &Device,
    ) -> Result<(Self, CheckpointInfo)> {
        let st = SafeTensors::deserialize(bytes).map_err(st_err(Path::new("<memory>")))?;
        let info = CheckpointInfo::from_safetensors_bytes(bytes)?;
        let tensors = load_tensors(&st, device)?;
        let model = Model::build(info.config.clone(), Source::Loaded(tensors), device)?;
        Ok((model, info))
    }

    /// Builds a model from named tensors (as [`Model::tensors`] returns them; f32, f16 or bf16,
    /// on any device), checking names and shapes as loading does. The model gets its own copy
    /// of every tensor, in f32 on `device`.
    pub fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Model::build(config, Source::Tensors(tensors), device)
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
