//! The inference API: loading, probabilities, top-k, input checks, threads, preprocessing.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use circulant_model::{Classifier, Error, Head, Mode, Model, ModelConfig, Network, SaveOptions};
use common::random_batch;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Classifier>();
};

fn tmp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "circulant-model-classifier-{test}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class-{i}")).collect()
}

#[test]
fn predicts_like_the_model_in_eval_mode() {
    let dev = Device::Cpu;
    let dir = tmp_dir("predict");
    let path = dir.join("m.safetensors");
    let cfg = ModelConfig::new(Network::MnistCnn, Head::Block(64), 10, 3)
        .with_head("fc2", Head::Circulant);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let opts = SaveOptions {
        class_names: Some(classes(10)),
        ..Default::default()
    };
    model.save_with(&path, &opts).unwrap();
    let clf = Classifier::load(&path, &dev).unwrap();
    assert_eq!(clf.classes().unwrap()[3], "class-3");
    assert_eq!(clf.input(), &cfg.input);
    assert_eq!(clf.num_classes(), 10);

    let x = random_batch(&cfg, 5, 1);
    // Precomputed weight spectra give exactly the model's eval logits.
    let want = model.forward(&x, Mode::Eval).unwrap();
    assert_eq!(vec2(&clf.logits(&x).unwrap()), vec2(&want));
    let probs = vec2(&clf.predict(&x).unwrap());
    let want = vec2(&candle_nn::ops::softmax_last_dim(&want).unwrap());
    assert_eq!(probs, want);
    for row in &probs {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    let top = clf.top_k(&x, 3).unwrap();
    assert_eq!(top.len(), 5);
    for (row, top) in probs.iter().zip(&top) {
        assert_eq!(top.len(), 3);
        let best = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert_eq!(top[0], (best.0, *best.1));
        assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
    }
    assert_eq!(clf.top_k(&x, 100).unwrap()[0].len(), 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A batch norm after a convolution is folded into it for inference: the logits equal the
/// model's eval forward pass (to float rounding) once the running statistics have moved away
/// from their initial values.
#[test]
fn folded_batch_norms_give_the_eval_logits() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::new(Network::CifarCnn, Head::Circulant, 10, 5);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    for seed in 0..3 {
        let x = (random_batch(&cfg, 4, 10 + seed) * 3.0).unwrap();
        let x = (x + 0.5).unwrap();
        model
            .forward(&x, Mode::Train { dropout_seed: seed })
            .unwrap();
    }
    let (_, mean) = model
        .tensors()
        .into_iter()
        .find(|(name, _)| name == "bn3.running_mean")
        .unwrap();
    assert!(
        mean.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1e-3
    );
    let clf = Classifier::new(model, None).unwrap();
    let x = random_batch(&cfg, 3, 20);
    let want = vec2(&clf.model().forward(&x, Mode::Eval).unwrap());
    let got = vec2(&clf.logits(&x).unwrap());
    for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
    }
}

#[test]
fn half_precision_checkpoints_classify() {
    let dev = Device::Cpu;
    let dir = tmp_dir("half");
    let path = dir.join("m.safetensors");
    let cfg = ModelConfig::new(Network::Mlp, Head::Circulant, 4, 3);
    let model = Model::new(cfg.clone(), &dev).unwrap();
    let opts = SaveOptions {
        dtype: DType::F16,
        class_names: None,
    };
    model.save_with(&path, &opts).unwrap();
    let clf = Classifier::load(&path, &dev).unwrap();
    assert!(clf.classes().is_none());
    let x = random_batch(&cfg, 3, 2);
    let got = vec2(&clf.predict(&x).unwrap());
    let want =
        vec2(&candle_nn::ops::softmax_last_dim(&model.forward(&x, Mode::Eval).unwrap()).unwrap());
    for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_batches_are_clear_errors() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::new(Network::CifarCnn, Head::Circulant, 10, 1);
    let clf = Classifier::new(Model::new(cfg, &dev).unwrap(), None).unwrap();
    for shape in [
        vec![2, 1, 28, 28],
        vec![3, 32, 32],
        vec![0, 3, 32, 32],
        vec![2, 3, 32, 31],
    ] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &dev).unwrap();
        let err = clf.predict(&x).unwrap_err();
        assert!(matches!(err, Error::InputShape { .. }), "{shape:?}: {err}");
        assert!(err.to_string().contains("(N, 3, 32, 32)"), "{err}");
    }
    let x = Tensor::zeros((1, 3, 32, 32), DType::F64, &dev).unwrap();
    assert!(matches!(clf.predict(&x), Err(Error::InputShape { .. })));
    // Class names must match the number of classes.
    let model = Model::new(ModelConfig::new(Network::Mlp, Head::Dense, 3, 0), &dev).unwrap();
    assert!(Classifier::new(model, Some(classes(2))).is_err());
}

#[test]
fn serves_several_threads() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::new(Network::Mlp, Head::Block(32), 10, 5);
    let clf = Classifier::new(Model::new(cfg.clone(), &dev).unwrap(), Some(classes(10))).unwrap();
    let batches: Vec<Tensor> = (0..4).map(|i| random_batch(&cfg, 3, 10 + i)).collect();
    let want: Vec<_> = batches
        .iter()
        .map(|b| vec2(&clf.predict(b).unwrap()))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = batches
            .iter()
            .map(|b| {
                let clf = &clf;
                s.spawn(move || {
                    (0..5)
                        .map(|_| vec2(&clf.predict(b).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&want) {
            for got in h.join().unwrap() {
                assert_eq!(&got, want);
            }
        }
    });
}

#[cfg(feature = "image")]
#[test]
fn preprocess_resizes_converts_and_normalises() {
    use image::{DynamicImage, GrayImage, Rgb, RgbImage};

    let dev = Device::Cpu;
    let mut cfg = ModelConfig::new(Network::CifarCnn, Head::Circulant, 10, 1);
    cfg.input.mean = vec![0.5, 0.0, 0.25];
    cfg.input.std = vec![0.5, 1.0, 0.25];
    let clf = Classifier::new(Model::new(cfg, &dev).unwrap(), None).unwrap();
    // A 64x48 RGB image, left half red, right half blue: resized to 43x32 and centre-cropped.
    let rgb = RgbImage::from_fn(64, 48, |x, _| {
        if x < 32 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let grey = GrayImage::from_pixel(10, 20, image::Luma([51]));
    let imgs = [DynamicImage::ImageRgb8(rgb), DynamicImage::ImageLuma8(grey)];
    let x = clf.preprocess(&imgs).unwrap();
    assert_eq!(x.dims(), &[2, 3, 32, 32]);
    let img0 = x.get(0).unwrap().to_vec3::<f32>().unwrap();
    // Red channel: (1 - 0.5) / 0.5 = 1 on the left, (0 - 0.5) / 0.5 = -1 on the right.
    assert!((img0[0][16][0] - 1.0).abs() < 1e-6);
    assert!((img0[0][16][31] + 1.0).abs() < 1e-6);
    // Blue channel: (0 - 0.25) / 0.25 = -1 left, 3 right.
    assert!((img0[2][0][0] + 1.0).abs() < 1e-6);
    assert!((img0[2][0][31] - 3.0).abs() < 1e-6);
    // A grey image becomes three equal channels: 0.2 normalised per channel.
    let img1 = x.get(1).unwrap().to_vec3::<f32>().unwrap();
    for (c, want) in [(0, (0.2 - 0.5) / 0.5), (1, 0.2), (2, (0.2 - 0.25) / 0.25)] {
        for row in &img1[c] {
            for v in row {
                assert!((v - want).abs() < 1e-5, "channel {c}: {v} vs {want}");
            }
        }
    }
    clf.predict(&x).unwrap();
    assert!(clf.preprocess(&[]).is_err());
    let err = clf
        .preprocess(&[DynamicImage::ImageLuma8(GrayImage::new(0, 5))])
        .unwrap_err();
    assert!(matches!(err, Error::Image { index: 0, .. }), "{err}");
}
