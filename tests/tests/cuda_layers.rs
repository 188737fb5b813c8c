//! The GPU kernels of the training layers (kernels-cuda's max pool, batch norm and dropout masks, reached
//! through circulant-model's public layers on f32 CUDA tensors) and the convolution (cuDNN's
//! with the `cudnn` feature, else candle's with vendor/candle-core's backward) against the CPU
//! custom ops on the same inputs: values and gradients, on odd sizes.
//! Skips, printing why, when no CUDA device is usable; fails instead when
//! `CIRCULANT_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use circulant_kernels::testing::{assert_close, cuda_device};
use circulant_model::{dropout, max_pool2d, max_pool2d_relu, BatchNorm2d, Conv2dLayer};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Deterministic pseudo-random values in [0, 1) (a small LCG: no RNG crate here).
fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `(y, dx)` of a pool on `device`: `y` and the gradient of `sum(y · wts)`.
fn pool_on(
    device: &Device,
    x: &[f32],
    dims: (usize, usize, usize, usize),
    wts: &[f32],
    (k, s, relu): (usize, usize, bool),
) -> Result<(Vec<f32>, Vec<f32>), Box<dyn std::error::Error>> {
    let x = Var::from_vec(x.to_vec(), dims, device)?;
    let y = if relu {
        max_pool2d_relu(&x, k, s)?
    } else {
        max_pool2d(&x, k, s)?
    };
    let wts = Tensor::from_slice(wts, y.dims(), device)?;
    let grads = (&y * &wts)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).ok_or("no gradient for x")?;
    Ok((host(&y)?, host(dx)?))
}

/// Max pool with and without the fused ReLU: overlapping 3/2 windows, non-overlapping 2/2 on
/// odd sizes (trailing rows and columns in no window), stride 1 and 3/3, values of both signs
/// with many ties (the first maximum of a window takes its gradient). The kernels add the
/// same gradients in the same order as the CPU op, so values and gradients are equal.
#[test]
fn max_pool_matches_the_cpu_op() -> TestResult {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    for (i, &(n, c, h, w, k, s)) in [
        (2, 3, 13, 13, 3, 2),
        (2, 3, 7, 9, 2, 2),
        (1, 2, 8, 9, 3, 2),
        (2, 1, 6, 5, 2, 1),
        (3, 4, 9, 11, 3, 3),
        (1, 1, 3, 3, 3, 2),
        (8, 16, 55, 55, 3, 2),
    ]
    .iter()
    .enumerate()
    {
        let len = n * c * h * w;
        // 8 levels in -4..=3: ties in most windows, and negative windows for the ReLU.
        let x: Vec<f32> = uniform(len, i as u64)
            .iter()
            .map(|u| (u * 8.0).floor() - 4.0)
            .collect();
        let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
        let wts: Vec<f32> = uniform(n * c * oh * ow, 100 + i as u64)
            .iter()
            .map(|u| u - 0.5)
            .collect();
        for relu in [false, true] {
            let case = format!("{n}x{c}x{h}x{w} k{k} s{s} relu {relu}");
            let args = (k, s, relu);
            let (y, dx) = pool_on(&dev, &x, (n, c, h, w), &wts, args)?;
            let (y_cpu, dx_cpu) = pool_on(&Device::Cpu, &x, (n, c, h, w), &wts, args)?;
            assert_eq!(y, y_cpu, "{case}: output");
            assert_eq!(dx, dx_cpu, "{case}: gradient");
        }
    }
    Ok(())
}

/// One train-mode step of a batch norm on `device`: the output, the running statistics after
/// it and the gradients of `sum(y · wts)` with respect to the input, weight and bias.
struct BnStep {
    y: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    dx: Vec<f32>,
    dweight: Vec<f32>,
    dbias: Vec<f32>,
}

fn bn_step(
    device: &Device,
    x: &[f32],
    dims: (usize, usize, usize, usize),
    (weight, bias): (&[f32], &[f32]),
    wts: &[f32],
) -> Result<BnStep, Box<dyn std::error::Error>> {
    let c = dims.1;
    let var = |v: &[f32]| Var::from_slice(v, v.len(), device);
    let bn = BatchNorm2d::new(
        var(weight)?,
        var(bias)?,
        var(&vec![0.0; c])?,
        var(&vec![1.0; c])?,
    )?;
    let xv = Var::from_slice(x, dims, device)?;
    let y = bn.forward(&xv, true)?;
    let wts = Tensor::from_slice(wts, dims, device)?;
    let grads = (&y * &wts)?.sum_all()?.backward()?;
    let grad = |t: &Tensor| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        Ok(host(grads.get(t).ok_or("missing gradient")?)?)
    };
    Ok(BnStep {
        y: host(&y)?,
        running_mean: host(bn.running_mean())?,
        running_var: host(bn.running_var())?,
        dx: grad(xv.as_tensor())?,
        dweight: grad(bn.weight().as_tensor())?,
        dbias: grad(bn.bias().as_tensor())?,
    })
}

/// Train-mode batch norm (statistics, normalisation, running statistics, gradients) on the GPU
/// against the CPU ops: N·H·W from 2 to several reduction blocks per channel and never a
/// multiple of the block sizes, values offset from 0 (the shifted variance) and a constant
/// channel (variance 0).
#[test]
fn batch_norm_train_matches_the_cpu_op() -> TestResult {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    for (i, &(n, c, h, w)) in [
        (1, 2, 1, 2),
        (2, 3, 1, 3),
        (3, 5, 7, 9),
        (16, 8, 33, 35),
        (64, 4, 32, 33),
    ]
    .iter()
    .enumerate()
    {
        let seed = 10 * i as u64;
        let hw = h * w;
        let mut x: Vec<f32> = uniform(n * c * hw, seed)
            .iter()
            .map(|u| 4.0 * u - 2.0 + 5.0)
            .collect();
        for b in 0..n {
            x[(b * c + 1) * hw..][..hw].fill(2.5);
        }
        let weight: Vec<f32> = uniform(c, seed + 1).iter().map(|u| u + 0.5).collect();
        let bias: Vec<f32> = uniform(c, seed + 2).iter().map(|u| u - 0.5).collect();
        let wts: Vec<f32> = uniform(x.len(), seed + 3).iter().map(|u| u - 0.5).collect();
        let dims = (n, c, h, w);
        let gpu = bn_step(&dev, &x, dims, (&weight, &bias), &wts)?;
        let cpu = bn_step(&Device::Cpu, &x, dims, (&weight, &bias), &wts)?;
        let case = |what: &str| format!("{n}x{c}x{h}x{w}: {what}");
        for (what, got, want, tol) in [
            ("y", &gpu.y, &cpu.y, 1e-4),
            ("running mean", &gpu.running_mean, &cpu.running_mean, 1e-5),
            ("running var", &gpu.running_var, &cpu.running_var, 1e-5),
            ("dx", &gpu.dx, &cpu.dx, 1e-4),
            ("dweight", &gpu.dweight, &cpu.dweight, 1e-4),
            ("dbias", &gpu.dbias, &cpu.dbias, 1e-4),
        ] {
            assert_close(&case(what), &widen(got), &widen(want), tol);
        }
    }
    Ok(())
}

/// Dropout masks drawn by the kernel are the CPU's, bit for bit (odd sizes, several rates and
/// seeds, f32 and bf16 activations), and the mask passes the gradient as on the CPU.
#[test]
fn dropout_matches_the_cpu_op() -> TestResult {
    let Some(gpu) = cuda_device() else {
        return Ok(());
    };
    for (len, p, seed) in [
        (1, 0.5, 0),
        (1031, 0.5, 7),
        (4097 * 3, 0.1, 99),
        (257, 0.9, 1 << 40),
    ] {
        let values = uniform(len, seed);
        for dtype in [DType::F32, DType::BF16] {
            let run =
                |device: &Device| -> Result<(Vec<f32>, Vec<f32>), Box<dyn std::error::Error>> {
                    let x = Var::from_vec(values.clone(), len, device)?;
                    let y = dropout(&x.as_tensor().to_dtype(dtype)?, p, seed)?;
                    let grads = y.to_dtype(DType::F32)?.sum_all()?.backward()?;
                    let dx = grads.get(x.as_tensor()).ok_or("no gradient for x")?;
                    Ok((host(&y)?, host(dx)?))
                };
            let (cpu, gpu_run) = (run(&Device::Cpu)?, run(&gpu)?);
            let what = format!("len {len}, p {p}, seed {seed}, {dtype:?}");
            // The same zeros (the mask's bits); f32 products equal, bf16 ones within rounding.
            let zeros = |v: &[f32]| v.iter().map(|&a| a == 0.0).collect::<Vec<_>>();
            assert_eq!(zeros(&cpu.0), zeros(&gpu_run.0), "mask, {what}");
            assert_eq!(cpu.1, gpu_run.1, "dx, {what}");
            if dtype == DType::F32 {
                assert_eq!(cpu.0, gpu_run.0, "y, {what}");
            } else {
                assert_close(
                    &format!("y, {what}"),
                    &widen(&gpu_run.0),
                    &widen(&cpu.0),
                    1e-2,
                );
            }
        }
    }
    Ok(())
}

/// One convolution's inputs, weights and output weights `wts` (the loss is `sum(conv(x) · wts)`).
struct ConvCase<'a> {
    x: &'a [f32],
    x_dims: (usize, usize, usize, usize),
    /// Whether `x` asks for a gradient (not for plain images).
    track_x: bool,
    weight: &'a [f32],
    bias: &'a [f32],
    k: usize,
    padding: usize,
    stride: usize,
    wts: &'a [f32],
}

/// `(y, dx, dweight, dbias)`, `dx` empty when `x` asks for no gradient.
type ConvGrads = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn conv_on(device: &Device, c: &ConvCase) -> Result<ConvGrads, Box<dyn std::error::Error>> {
    let xv = Var::from_vec(c.x.to_vec(), c.x_dims, device)?;
    let x = if c.track_x {
        xv.as_tensor().clone()
    } else {
        xv.as_detached_tensor()
    };
    let w_dims = (c.bias.len(), c.x_dims.1, c.k, c.k);
    let weight = Var::from_vec(c.weight.to_vec(), w_dims, device)?;
    let bias = Var::from_vec(c.bias.to_vec(), c.bias.len(), device)?;
    let conv = Conv2dLayer::new(weight.clone(), bias.clone(), c.padding, c.stride)?;
    let y = conv.forward(&x)?;
    let wts = Tensor::from_slice(c.wts, y.dims(), device)?;
    let grads = (&y * &wts)?.sum_all()?.backward()?;
    let dx = match grads.get(xv.as_tensor()) {
        Some(dx) => host(dx)?,
        None => Vec::new(),
    };
    let dw = host(grads.get(weight.as_tensor()).ok_or("no weight gradient")?)?;
    let db = host(grads.get(bias.as_tensor()).ok_or("no bias gradient")?)?;
    Ok((host(&y)?, dx, dw, db))
}

/// A convolution on the GPU against the CPU op: stride 1 with 3×3 and 5×5 kernels and several
/// paddings, a strided 3×3, and an AlexNet-like 11×11 stride-4 first layer on plain images (no
/// input gradient on either device). With the `cudnn` feature all three passes are cuDNN's
/// (circulant-model's cuDNN op); without it the convolution is candle's, its input gradient a
/// conv2d with the flipped kernel at stride 1 and conv_transpose2d otherwise. The tolerance
/// leaves room for cuDNN's FFT and Winograd algorithms, which round differently from a sum.
#[test]
fn convolution_matches_the_cpu_op() -> TestResult {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    for (i, &(n, ci, co, h, w, k, p, s, track_x)) in [
        (2, 3, 8, 9, 11, 3, 1, 1, true),
        (2, 4, 6, 13, 13, 5, 2, 1, true),
        (1, 5, 4, 8, 7, 3, 0, 1, true),
        (3, 16, 24, 12, 12, 3, 1, 1, true),
        (2, 3, 4, 15, 15, 3, 1, 2, true),
        // The last input row and column lie under no output pixel: their gradient is 0.
        (2, 3, 4, 16, 16, 3, 0, 2, true),
        (2, 3, 4, 31, 31, 11, 2, 4, false),
    ]
    .iter()
    .enumerate()
    {
        let seed = 1000 + 10 * i as u64;
        let centred = |len: usize, seed: u64| -> Vec<f32> {
            uniform(len, seed).iter().map(|u| u - 0.5).collect()
        };
        let x = centred(n * ci * h * w, seed);
        let wt = centred(co * ci * k * k, seed + 1);
        let b = centred(co, seed + 2);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let wts = centred(n * co * oh * ow, seed + 3);
        let case = format!("{n}x{ci}x{h}x{w} -> {co}, k{k} p{p} s{s}");
        let c = ConvCase {
            x: &x,
            x_dims: (n, ci, h, w),
            track_x,
            weight: &wt,
            bias: &b,
            k,
            padding: p,
            stride: s,
            wts: &wts,
        };
        let (gpu, cpu) = (conv_on(&dev, &c)?, conv_on(&Device::Cpu, &c)?);
        assert_eq!(
            gpu.1.len(),
            cpu.1.len(),
            "{case}: input gradient present on one side only"
        );
        for (what, g, c) in [
            ("output", &gpu.0, &cpu.0),
            ("input gradient", &gpu.1, &cpu.1),
            ("weight gradient", &gpu.2, &cpu.2),
            ("bias gradient", &gpu.3, &cpu.3),
        ] {
            assert_close(&format!("{case}: {what}"), &widen(g), &widen(c), 1e-2);
        }
    }
    Ok(())
}
