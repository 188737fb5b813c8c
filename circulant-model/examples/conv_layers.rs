//! CPU time of the convolutions (each followed by a ReLU, fused as in the networks:
//! [`Conv2dLayer::forward_relu`]) of AlexNet (and its first max pool),
//! cifar-cnn, mnist-cnn or one per stage of ResNet-18, no autograd, to set beside `bench/torch_conv_layers.py` (same
//! layers, same figure: the fastest of 100 calls after 5 warm-up calls, the one least disturbed
//! by other work on the machine). With `train`, each call is the forward pass and the backward
//! pass of the sum of the outputs (input, weight and bias gradients; no input gradient for the
//! first layer, whose input is the images) instead. `LAYER=conv2` (say) times that layer alone.
//! Run it with the allocator settings the `trainer` binary applies (`MALLOC_MMAP_THRESHOLD_=
//! 33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456`): without them every
//! large output is a fresh mapping, and its page faults cost AlexNet's conv1 a third of its time.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p circulant-model --example conv_layers -- [BATCH] [alexnet|cifar|mnist|resnet] [train]
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use circulant_model::{max_pool2d, Conv2dLayer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fastest_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..5 {
        f()?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..100 {
        let s = Instant::now();
        f()?;
        best = best.min(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(1), |s| s.parse())?;
    let net = std::env::args().nth(2).unwrap_or_else(|| "alexnet".into());
    let train = match std::env::args().nth(3).as_deref() {
        None => false,
        Some("train") => true,
        Some(other) => return Err(format!("unknown mode {other:?}: train or nothing").into()),
    };
    let dev = Device::Cpu;
    // name, c_in, c_out, kernel, stride, padding, input side
    let layers: &[(&str, usize, usize, usize, usize, usize, usize)] = match net.as_str() {
        "alexnet" => &[
            ("conv1", 3, 64, 11, 4, 2, 224),
            ("conv2", 64, 192, 5, 1, 2, 27),
            ("conv3", 192, 384, 3, 1, 1, 13),
            ("conv4", 384, 256, 3, 1, 1, 13),
            ("conv5", 256, 256, 3, 1, 1, 13),
        ],
        "cifar" => &[
            ("conv1", 3, 64, 3, 1, 1, 32),
            ("conv2", 64, 64, 3, 1, 1, 32),
            ("conv3", 64, 128, 3, 1, 1, 16),
            ("conv4", 128, 128, 3, 1, 1, 16),
            ("conv5", 128, 256, 3, 1, 1, 8),
        ],
        // One 3×3 convolution per stage of torchvision's ResNet-18, after its 7×7 stem.
        "resnet" => &[
            ("conv1", 3, 64, 7, 2, 3, 224),
            ("layer1", 64, 64, 3, 1, 1, 56),
            ("layer2", 128, 128, 3, 1, 1, 28),
            ("layer3", 256, 256, 3, 1, 1, 14),
            ("layer4", 512, 512, 3, 1, 1, 7),
        ],
        "mnist" => &[
            ("conv1", 1, 32, 5, 1, 0, 28),
            ("conv2", 32, 64, 5, 1, 0, 12),
        ],
        other => {
            return Err(
                format!("unknown network {other:?}: alexnet, cifar, mnist or resnet").into(),
            )
        }
    };
    let mut total = 0.0;
    for (i, &(name, ci, co, k, s, p, h)) in layers.iter().enumerate() {
        if std::env::var("LAYER").is_ok_and(|only| only != name) {
            continue;
        }
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(co, DType::F32, &dev)?)?;
        let conv = Conv2dLayer::new(w, b, p, s)?;
        let x = Tensor::randn(0f32, 1.0, (n, ci, h, h), &dev)?;
        // The first layer reads the images: no input gradient, as in the network.
        let xv = Var::from_tensor(&x)?;
        let input = if i == 0 { &x } else { xv.as_tensor() };
        let ms = fastest_ms(|| {
            if train {
                conv.forward_relu(input)?.sum_all()?.backward()?;
            } else {
                conv.forward_relu(&x)?;
            }
            Ok(())
        })?;
        total += ms;
        println!("{name} b{n} {ms:.3} ms");
    }
    if net == "alexnet" && !train {
        let x = Tensor::randn(0f32, 1.0, (n, 64, 55, 55), &dev)?;
        let ms = fastest_ms(|| {
            max_pool2d(&x, 3, 2)?;
            Ok(())
        })?;
        println!("pool1 {ms:.3} ms");
    }
    println!("conv total {total:.3} ms");
    Ok(())
}
