//! `Classifier::from_hub` / `HubRef::fetch` against a hub cache laid out on disk (no network).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use circulant_model::{Classifier, Error, Head, HubRef, Model, ModelConfig, Network, SaveOptions};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `<cache>/models--owner--repo/{refs/main, blobs/<etag>, snapshots/<COMMIT>/model.safetensors}`,
/// the snapshot file a symlink to the blob as the hub client writes it.
fn fake_cache(cache: &Path, classes: &[&str]) -> Model {
    let repo = cache.join("models--owner--repo");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, classes.len(), 3);
    let model = Model::new(cfg, &Device::Cpu).unwrap();
    let blob = repo.join("blobs/3f1c0a9e");
    let opts = SaveOptions {
        class_names: Some(classes.iter().map(|s| s.to_string()).collect()),
        dtype: DType::F16,
    };
    model.save_with(&blob, &opts).unwrap();
    std::os::unix::fs::symlink("../../blobs/3f1c0a9e", snap.join("model.safetensors")).unwrap();
    model
}

fn tmp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("circulant-hub-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn loads_from_the_hub_cache_offline() {
    let home = tmp_dir("home");
    let cache = home.join("hub");
    fake_cache(&cache, &["a", "b", "c"]);

    // Explicit cache directory, by branch and by commit.
    for spec in [
        "hf://owner/repo",
        &format!("hf://owner/repo/model.safetensors@{COMMIT}"),
    ] {
        let path = HubRef::parse(spec).unwrap().fetch(Some(&cache)).unwrap();
        assert!(
            path.ends_with(format!("snapshots/{COMMIT}/model.safetensors")),
            "{path:?}"
        );
        let clf = Classifier::load(&path, &Device::Cpu).unwrap();
        assert_eq!(clf.classes().unwrap(), ["a", "b", "c"]);
    }

    // The default cache under HF_HOME, with downloads forbidden. (The only test of this binary
    // that touches the environment.)
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let clf = Classifier::from_hub("owner/repo", None, Some("main"), &Device::Cpu).unwrap();
    assert_eq!(clf.classes().unwrap()[2], "c");
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(clf.predict(&x).unwrap().dims(), &[2, 3]);

    // Not cached + offline: an error, no network access.
    let err = Classifier::from_hub("owner/repo", Some("best.safetensors"), None, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Hub(_)), "{err}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
    let err = Classifier::from_hub("owner", None, None, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, Error::HubRef { .. }), "{err}");
    std::fs::remove_dir_all(&home).unwrap();
}
