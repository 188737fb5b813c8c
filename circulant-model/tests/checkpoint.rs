//! Save -> load round trips and checkpoint errors.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use circulant_model::checkpoint::{read_metadata, to_safetensors_bytes, write_atomic};
use circulant_model::{
    CheckpointInfo, Error, Head, Mode, Model, ModelConfig, Network, SaveOptions,
};
use common::random_batch;

fn tmp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "circulant-model-test-{test}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn round_trip(cfg: ModelConfig, dir: &std::path::Path) -> u64 {
    let dev = Device::Cpu;
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let x = random_batch(&cfg, 3, 5);
    // A train-mode pass changes the batch-norm running statistics, which must be saved too.
    model.forward(&x, Mode::Train { dropout_seed: 9 }).unwrap();
    let path = dir.join(format!("{}-{}.safetensors", cfg.network, cfg.heads.len()));
    model.save(&path).unwrap();
    let loaded = Model::load(&path, &dev).unwrap();
    assert_eq!(loaded.config(), &cfg);
    assert_eq!(Model::read_config(&path).unwrap(), cfg);
    for (mode, what) in [
        (Mode::Eval, "eval"),
        (Mode::Train { dropout_seed: 4 }, "train"),
    ] {
        let a = model.forward(&x, mode).unwrap();
        let b = loaded.forward(&x, mode).unwrap();
        assert_eq!(bits(&a), bits(&b), "{} {what}", cfg.network);
    }
    let ta = model.tensors();
    let tb = loaded.tensors();
    assert_eq!(ta.len(), tb.len());
    for ((na, a), (nb, b)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(bits(a), bits(b), "{na}");
    }
    std::fs::metadata(&path).unwrap().len()
}

#[test]
fn save_load_is_bit_identical() {
    let dir = tmp_dir("roundtrip");
    let size = round_trip(
        ModelConfig::new(Network::MnistCnn, Head::Circulant, 10, 1),
        &dir,
    );
    println!("mnist-cnn circulant checkpoint: {size} bytes");
    round_trip(
        ModelConfig::new(Network::Mlp, Head::Dense, 10, 2).with_head("fc2", Head::Block(64)),
        &dir,
    );
    let mut cfg = ModelConfig::new(Network::CifarCnn, Head::Block(256), 10, 3);
    cfg.sign_flip = false;
    cfg.input.mean = vec![0.5, 0.25, 0.125];
    round_trip(cfg, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write(path: &std::path::Path, tensors: &[(String, Tensor)], cfg: &ModelConfig) {
    std::fs::write(path, to_safetensors_bytes(tensors, cfg).unwrap()).unwrap();
}

#[test]
fn load_errors_are_clear() {
    let dev = Device::Cpu;
    let dir = tmp_dir("errors");
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 10, 1);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let tensors = model.tensors();
    let path = dir.join("bad.safetensors");

    // Wrong shape.
    let mut bad = tensors.clone();
    for (name, t) in bad.iter_mut() {
        if name == "fc2.r" {
            *t = Tensor::zeros(1000, candle_core::DType::F32, &dev).unwrap();
        }
    }
    write(&path, &bad, &cfg);
    let err = Model::load(&path, &dev).err().unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("fc2.r") && msg.contains("1000") && msg.contains("1024"),
        "{msg}"
    );

    // Missing tensor.
    let missing: Vec<_> = tensors
        .iter()
        .filter(|(n, _)| n != "fc1.signs")
        .cloned()
        .collect();
    write(&path, &missing, &cfg);
    let err = Model::load(&path, &dev).err().unwrap();
    assert!(
        err.to_string().contains("missing tensor `fc1.signs`"),
        "{err}"
    );

    // Unexpected tensor (a checkpoint of another head).
    let mut extra = tensors.clone();
    extra.push((
        "fc1.weight".into(),
        Tensor::zeros((1024, 784), candle_core::DType::F32, &dev).unwrap(),
    ));
    write(&path, &extra, &cfg);
    let err = Model::load(&path, &dev).err().unwrap();
    assert!(err.to_string().contains("fc1.weight"), "{err}");

    // Unknown network.
    let json = cfg.to_json().unwrap();
    let bad_json = json.replace("\"network\":\"mlp\"", "\"network\":\"vgg\"");
    assert_ne!(json, bad_json);
    let views: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                n.clone(),
                t.dims().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let raw = |meta: Option<HashMap<String, String>>| {
        let vs: Vec<(String, safetensors::tensor::TensorView)> = views
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize(vs, meta).unwrap()
    };
    std::fs::write(
        &path,
        raw(Some(HashMap::from([("config".to_string(), bad_json)]))),
    )
    .unwrap();
    let err = Model::load(&path, &dev).err().unwrap();
    assert!(
        matches!(err, Error::UnknownNetwork(ref n) if n == "vgg"),
        "{err}"
    );
    assert!(Model::read_config(&path).is_err());

    // No config.
    std::fs::write(&path, raw(None)).unwrap();
    let err = Model::load(&path, &dev).err().unwrap();
    assert!(matches!(err, Error::MissingConfig { .. }), "{err}");
    assert!(err.to_string().contains("bad.safetensors"), "{err}");

    // Not a safetensors file; no file at all.
    std::fs::write(&path, b"hello").unwrap();
    assert!(Model::load(&path, &dev).is_err());
    assert!(Model::load(dir.join("nope.safetensors"), &dev).is_err());
    assert!(Model::read_config(dir.join("nope.safetensors")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn save_is_atomic_and_overwrites() {
    let dev = Device::Cpu;
    let dir = tmp_dir("atomic");
    let path = dir.join("m.safetensors");
    let a = Model::new(ModelConfig::new(Network::Mlp, Head::Circulant, 10, 1), &dev).unwrap();
    let b = Model::new(ModelConfig::new(Network::Mlp, Head::Dense, 3, 2), &dev).unwrap();
    a.save(&path).unwrap();
    b.save(&path).unwrap();
    assert_eq!(Model::read_config(&path).unwrap(), *b.config());
    // Only the checkpoint is left in the directory (no temp files).
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(entries.len(), 1);
    // Saving into a missing directory is an error naming the path.
    let err = a.save(dir.join("missing/m.safetensors")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoint_layout() {
    // Header names, shapes, dtypes and metadata as documented in docs/CHECKPOINT_FORMAT.md.
    let dev = Device::Cpu;
    let cfg =
        ModelConfig::new(Network::MnistCnn, Head::Circulant, 10, 1).with_head("fc1", Head::Dense);
    let m = Model::new(cfg.clone(), &dev).unwrap();
    let bytes = to_safetensors_bytes(&m.tensors(), &cfg).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        [
            "conv1.bias",
            "conv1.weight",
            "conv2.bias",
            "conv2.weight",
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.r",
            "fc2.signs"
        ]
    );
    for (name, shape) in [
        ("conv1.weight", vec![32, 1, 5, 5]),
        ("fc1.weight", vec![1024, 1024]),
        ("fc2.r", vec![1024]),
        ("fc2.signs", vec![1024]),
        ("fc2.bias", vec![10]),
    ] {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let json: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(json["network"], "mnist-cnn");
    assert_eq!(json["heads"]["fc1"], "dense");
    assert_eq!(json["heads"]["fc2"], "circulant");
    assert_eq!(json["num_classes"], 10);
    assert_eq!(json["seed"], 1);
    assert_eq!(json["sign_flip"], true);
    assert_eq!(json["input"]["channels"], 1);
    assert_eq!(json["input"]["height"], 28);
    assert_eq!(json["input"]["std"][0], 1.0);
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn class_names_round_trip() {
    let dev = Device::Cpu;
    let dir = tmp_dir("classes");
    let path = dir.join("m.safetensors");
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 3, 1);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let names: Vec<String> = ["cat", "dög", "a \"quoted\" name"]
        .map(String::from)
        .to_vec();
    let opts = SaveOptions {
        class_names: Some(names.clone()),
        ..Default::default()
    };
    model.save_with(&path, &opts).unwrap();
    let info = CheckpointInfo::read(&path).unwrap();
    assert_eq!(info.config, cfg);
    assert_eq!(info.class_names.as_deref(), Some(names.as_slice()));
    assert_eq!(info.dtype, DType::F32);
    let meta = read_metadata(&path).unwrap();
    let stored: Vec<String> = serde_json::from_str(&meta["classes"]).unwrap();
    assert_eq!(stored, names);
    assert!(!meta.contains_key("dtype"));
    let (loaded, info2) = Model::load_with_info(&path, &dev).unwrap();
    assert_eq!(info2, info);
    let x = random_batch(&cfg, 2, 3);
    assert_eq!(
        bits(&model.forward(&x, Mode::Eval).unwrap()),
        bits(&loaded.forward(&x, Mode::Eval).unwrap())
    );
    // A list of the wrong length is refused when saving.
    let bad = SaveOptions {
        class_names: Some(vec!["one".into()]),
        ..Default::default()
    };
    let err = model.save_with(&path, &bad).unwrap_err();
    assert!(matches!(err, Error::InvalidMetadata { .. }), "{err}");
    // Unsupported dtypes are refused.
    let err = model
        .save_with(
            &path,
            &SaveOptions {
                dtype: DType::U8,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType(DType::U8)), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn old_files_without_classes_or_dtype_load() {
    // Written as before: config and format only.
    let dev = Device::Cpu;
    let dir = tmp_dir("old");
    let path = dir.join("old.safetensors");
    let cfg = ModelConfig::new(Network::Mlp, Head::Block(64), 10, 4);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    write(&path, &model.tensors(), &cfg);
    let meta = read_metadata(&path).unwrap();
    assert!(!meta.contains_key("classes") && !meta.contains_key("dtype"));
    let info = CheckpointInfo::read(&path).unwrap();
    assert_eq!((info.class_names, info.dtype), (None, DType::F32));
    let loaded = Model::load(&path, &dev).unwrap();
    let x = random_batch(&cfg, 2, 1);
    assert_eq!(
        bits(&model.forward(&x, Mode::Eval).unwrap()),
        bits(&loaded.forward(&x, Mode::Eval).unwrap())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn half_precision_round_trips() {
    let dev = Device::Cpu;
    let dir = tmp_dir("half");
    let cfg = ModelConfig::new(Network::MnistCnn, Head::Circulant, 10, 2);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let f32_path = dir.join("f32.safetensors");
    model.save(&f32_path).unwrap();
    let f32_size = std::fs::metadata(&f32_path).unwrap().len() as f64;
    let x = random_batch(&cfg, 4, 7);
    let want = model.forward(&x, Mode::Eval).unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for (dtype, name, tol) in [(DType::F16, "f16", 2e-3), (DType::BF16, "bf16", 2e-2)] {
        let path = dir.join(format!("{name}.safetensors"));
        let opts = SaveOptions {
            dtype,
            class_names: None,
        };
        model.save_with(&path, &opts).unwrap();
        let size = std::fs::metadata(&path).unwrap().len() as f64;
        let ratio = size / f32_size;
        assert!((0.49..0.52).contains(&ratio), "{name}: {size} / {f32_size}");
        assert_eq!(read_metadata(&path).unwrap()["dtype"], name);
        assert_eq!(CheckpointInfo::read(&path).unwrap().dtype, dtype);
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("fc1.r").unwrap().dtype(), dtype.into());
        assert_eq!(st.tensor("fc1.signs").unwrap().dtype(), dtype.into());
        // Loads as an f32 model whose outputs are close to the original's.
        let loaded = Model::load(&path, &dev).unwrap();
        for (n, t) in loaded.tensors() {
            assert_eq!(t.dtype(), DType::F32, "{n}");
        }
        let signs = loaded.tensors().into_iter().find(|(n, _)| n == "fc1.signs");
        let orig = model.tensors().into_iter().find(|(n, _)| n == "fc1.signs");
        assert_eq!(
            bits(&signs.unwrap().1),
            bits(&orig.unwrap().1),
            "signs exact"
        );
        let got = loaded.forward(&x, Mode::Eval).unwrap();
        let err = max_abs_diff(&got, &want) / scale;
        assert!(err < tol, "{name}: relative max error {err}");
        // Saving the loaded model again as f32 gives an f32 file.
        let again = dir.join(format!("{name}-again.safetensors"));
        loaded.save(&again).unwrap();
        assert_eq!(CheckpointInfo::read(&again).unwrap().dtype, DType::F32);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn from_tensors_rebuilds_and_validates() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 10, 1).with_head("fc1", Head::Dense);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let map: HashMap<String, Tensor> = model.tensors().into_iter().collect();
    let rebuilt = Model::from_tensors(cfg.clone(), map.clone(), &dev).unwrap();
    let x = random_batch(&cfg, 2, 2);
    assert_eq!(
        bits(&model.forward(&x, Mode::Eval).unwrap()),
        bits(&rebuilt.forward(&x, Mode::Eval).unwrap())
    );
    // The rebuilt model owns its variables: changing the original's does not change it.
    let (_, v) = model
        .trainable()
        .into_iter()
        .find(|(n, _)| n == "fc2.r")
        .unwrap();
    v.set(&v.zeros_like().unwrap()).unwrap();
    assert_ne!(
        bits(&model.forward(&x, Mode::Eval).unwrap()),
        bits(&rebuilt.forward(&x, Mode::Eval).unwrap())
    );
    // Half-precision tensors are accepted.
    let half: HashMap<String, Tensor> = map
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::BF16).unwrap()))
        .collect();
    Model::from_tensors(cfg.clone(), half, &dev).unwrap();

    let mut missing = map.clone();
    missing.remove("fc3.bias");
    let err = Model::from_tensors(cfg.clone(), missing, &dev)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::MissingTensor { ref name } if name == "fc3.bias"),
        "{err}"
    );

    let mut misshapen = map.clone();
    misshapen.insert("fc2.r".into(), Tensor::zeros(7, DType::F32, &dev).unwrap());
    let err = Model::from_tensors(cfg.clone(), misshapen, &dev)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::ShapeMismatch { ref name, .. } if name == "fc2.r"),
        "{err}"
    );

    let mut extra = map.clone();
    extra.insert(
        "fc9.bias".into(),
        Tensor::zeros(3, DType::F32, &dev).unwrap(),
    );
    let err = Model::from_tensors(cfg.clone(), extra, &dev).err().unwrap();
    assert!(
        matches!(err, Error::UnexpectedTensor { ref name } if name == "fc9.bias"),
        "{err}"
    );

    let mut ints = map;
    ints.insert(
        "fc3.bias".into(),
        Tensor::zeros(10, DType::I64, &dev).unwrap(),
    );
    let err = Model::from_tensors(cfg, ints, &dev).err().unwrap();
    assert!(
        matches!(err, Error::DTypeMismatch { ref name, .. } if name == "fc3.bias"),
        "{err}"
    );
}

#[test]
fn bad_metadata_is_an_error() {
    let dev = Device::Cpu;
    let dir = tmp_dir("badmeta");
    let path = dir.join("m.safetensors");
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 2, 1);
    let tensors = Model::new(cfg.clone(), &dev).unwrap().tensors();
    for (key, value, what) in [
        ("classes", "[\"a\"]", "1 class names"),
        ("classes", "{\"a\": 1}", "JSON list"),
        ("dtype", "f8", "`f8`"),
    ] {
        let meta = HashMap::from([
            ("config".to_string(), cfg.to_json().unwrap()),
            (key.to_string(), value.to_string()),
        ]);
        let bytes = safetensors::tensor::serialize(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
        )
        .unwrap();
        std::fs::write(&path, bytes).unwrap();
        let err = CheckpointInfo::read(&path).unwrap_err();
        assert!(matches!(err, Error::InvalidMetadata { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(Model::load(&path, &dev).is_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_atomic_is_public() {
    let dir = tmp_dir("write-atomic");
    let p = dir.join("f.txt");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert!(write_atomic(dir.join("no/such/dir/f"), b"x").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bytes` (a safetensors file) with one more space in its header: the tensor data then starts
/// at an odd offset, unaligned for every dtype.
fn misaligned(bytes: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = (n as u64 + 1).to_le_bytes().to_vec();
    out.extend_from_slice(&bytes[8..8 + n]);
    out.push(b' ');
    out.extend_from_slice(&bytes[8 + n..]);
    assert_eq!((8 + n + 1) % 2, 1);
    out
}

#[test]
fn loading_converts_like_candle_at_any_alignment() {
    use candle_core::safetensors::Load;
    use circulant_model::checkpoint::to_safetensors_bytes_with;

    let dev = Device::Cpu;
    let dir = tmp_dir("alignment");
    let mut cfg =
        ModelConfig::new(Network::Mlp, Head::Circulant, 10, 4).with_head("fc1", Head::Dense);
    cfg.sign_flip = true;
    let model = Model::new(cfg.clone(), &dev).unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let opts = SaveOptions {
            dtype,
            class_names: None,
        };
        let bytes = to_safetensors_bytes_with(&model.tensors(), &cfg, &opts).unwrap();
        // What candle's own conversion makes of the stored values.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want: HashMap<String, Vec<u32>> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let t = v.load(&dev).unwrap().to_dtype(DType::F32).unwrap();
                (n, bits(&t))
            })
            .collect();
        let odd = misaligned(&bytes);
        let (aligned_path, odd_path) = (dir.join("aligned"), dir.join("odd"));
        std::fs::write(&aligned_path, &bytes).unwrap();
        std::fs::write(&odd_path, &odd).unwrap();
        let loaded = [
            Model::load(&aligned_path, &dev).unwrap(),
            Model::load(&odd_path, &dev).unwrap(),
            Model::from_safetensors_bytes(&bytes, &dev).unwrap(),
            Model::from_safetensors_bytes(&odd, &dev).unwrap(),
        ];
        for (i, m) in loaded.iter().enumerate() {
            let got = m.tensors();
            assert_eq!(got.len(), want.len());
            for (n, t) in &got {
                assert_eq!(t.dtype(), DType::F32, "{dtype:?} {i} {n}");
                assert_eq!(&bits(t), &want[n], "{dtype:?} {i} {n}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loaded_models_own_their_weights_and_train() {
    let dev = Device::Cpu;
    let dir = tmp_dir("own-weights");
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 10, 5).with_head("fc2", Head::Dense);
    let path = dir.join("m.safetensors");
    Model::new(cfg.clone(), &dev).unwrap().save(&path).unwrap();
    let a = Model::load(&path, &dev).unwrap();
    let b = Model::load(&path, &dev).unwrap();
    let x = random_batch(&cfg, 2, 3);
    let before = bits(&b.forward(&x, Mode::Eval).unwrap());
    // Every trainable tensor of a loaded model gets a gradient.
    let loss = a
        .forward(&x, Mode::Eval)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in a.trainable() {
        assert!(grads.get(var.as_tensor()).is_some(), "{name}");
        // Changing one model's weights leaves the other's alone.
        var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
    }
    assert_eq!(bits(&b.forward(&x, Mode::Eval).unwrap()), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_files_are_errors_naming_the_path() {
    let dev = Device::Cpu;
    let dir = tmp_dir("unreadable");
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = Model::load(&empty, &dev).err().unwrap();
    assert!(matches!(err, Error::SafeTensors { .. }), "{err}");
    assert!(err.to_string().contains("empty.safetensors"), "{err}");
    for path in [dir.clone(), dir.join("nope.safetensors")] {
        let err = Model::load(&path, &dev).err().unwrap();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
