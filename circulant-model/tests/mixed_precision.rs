//! Mixed precision (`Model::forward_mixed`): half-precision activations with f32 weights follow
//! the f32 forward pass and its gradients. On the CPU with f16: candle's CPU matmul has no bf16
//! kernel, and the code path is the same for both (bf16 is tested on the GPU, in the tests
//! crate's `cuda_training`).

mod common;

use candle_core::{DType, Device, Tensor};
use circulant_model::{Error, Head, Mode, Model, ModelConfig, Network};
use common::random_batch;

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Half-precision logits are f32 tensors close to the f32 ones (within 5% of their scale),
/// in eval mode and in train mode (same dropout masks, batch statistics), for every head kind
/// and a network with batch norms.
#[test]
fn half_logits_follow_f32() {
    let dev = Device::Cpu;
    for (net, head) in [
        (Network::Mlp, Head::Dense),
        (Network::MnistCnn, Head::Circulant),
        (Network::MnistCnn, Head::Dense),
        (Network::MnistCnn, Head::Block(64)),
        (Network::CifarCnn, Head::Circulant),
    ] {
        let cfg = ModelConfig::new(net, head, 10, 7);
        let model = Model::new(cfg.clone(), &dev).unwrap();
        let x = random_batch(&cfg, 3, 1);
        for mode in [Mode::Eval, Mode::Train { dropout_seed: 5 }] {
            let want = flat(&model.forward(&x, mode).unwrap());
            let got = model.forward_mixed(&x, mode, DType::F16).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let got = flat(&got);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-3;
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 0.05 * scale,
                    "{net} {head} {mode:?}: {g} vs {w} (scale {scale})"
                );
            }
        }
        // F32 as the compute type is the plain forward pass.
        let mode = Mode::Train { dropout_seed: 2 };
        assert_eq!(
            flat(&model.forward_mixed(&x, mode, DType::F32).unwrap()),
            flat(&model.forward(&x, mode).unwrap())
        );
    }
}

/// The gradients of a half-precision cross-entropy loss reach every f32 weight, in f32, pointing the
/// same way as the f32 gradients (cosine similarity > 0.99).
#[test]
fn half_gradients_follow_f32() {
    let dev = Device::Cpu;
    for (net, head) in [
        (Network::MnistCnn, Head::Circulant),
        (Network::CifarCnn, Head::Dense),
    ] {
        let cfg = ModelConfig::new(net, head, 10, 3);
        let model = Model::new(cfg.clone(), &dev).unwrap();
        let x = random_batch(&cfg, 4, 2);
        let y = Tensor::new(&[1u32, 7, 3, 0], &dev).unwrap();
        let mode = Mode::Train { dropout_seed: 9 };
        let loss = |logits: Tensor| candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        let g32 = loss(model.forward(&x, mode).unwrap()).backward().unwrap();
        let g16 = loss(model.forward_mixed(&x, mode, DType::F16).unwrap())
            .backward()
            .unwrap();
        let norm = |v: &[f32]| v.iter().map(|u| f64::from(u * u)).sum::<f64>().sqrt();
        let grads: Vec<(String, Vec<f32>, Vec<f32>)> = model
            .trainable()
            .into_iter()
            .map(|(name, var)| {
                let a = g16
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no f16 gradient"));
                assert_eq!(a.dtype(), DType::F32, "{name}");
                let b = flat(g32.get(var.as_tensor()).unwrap());
                (name, flat(a), b)
            })
            .collect();
        let largest = grads.iter().map(|(_, _, b)| norm(b)).fold(0f64, f64::max);
        for (name, a, b) in &grads {
            // A convolution's bias before a batch norm has a zero gradient up to rounding:
            // there both must be negligible next to the largest gradient.
            if norm(b) < 1e-3 * largest {
                assert!(
                    norm(a) < 1e-2 * largest,
                    "{net} {head} {name}: {} vs {}",
                    norm(a),
                    norm(b)
                );
                continue;
            }
            let dot: f64 = a.iter().zip(b).map(|(u, v)| f64::from(u * v)).sum();
            let cos = dot / (norm(a) * norm(b));
            assert!(cos > 0.99, "{net} {head} {name}: cosine {cos}");
        }
    }
}

#[test]
fn other_compute_types_are_errors() {
    let cfg = ModelConfig::new(Network::Mlp, Head::Dense, 10, 0);
    let model = Model::new(cfg.clone(), &Device::Cpu).unwrap();
    let err = model
        .forward_mixed(&random_batch(&cfg, 1, 0), Mode::Eval, DType::U8)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}
