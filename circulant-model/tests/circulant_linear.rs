//! `CirculantLinear` against a dense `Linear` whose weight is the explicitly expanded matrix.

use candle_core::{Device, Module, Tensor, Var};
use circulant_kernels::testing;
use circulant_model::{CirculantLinear, CirculantMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Index into the flattened `r` of weight entry `(s, t)` of the `k × d` weight, from the
/// definitions (`circulant_kernels::testing::r_index`): block `W[i*b+s, j*b+t] =
/// r[i, j, (s - t) mod b]` with `q = ceil(d / b)` input blocks; paper `W[s, t] =
/// r[(s - t) mod n]`, `n = max(d, k)`, is the single block of size `n`.
fn r_index(mode: CirculantMode, d: usize, k: usize, s: usize, t: usize) -> usize {
    match mode {
        CirculantMode::Paper => testing::r_index(1, d.max(k), s, t),
        CirculantMode::Block(b) => testing::r_index(d.div_ceil(b), b, s, t),
    }
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn check(d: usize, k: usize, mode: CirculantMode, sign_flip: bool) {
    let dev = Device::Cpu;
    let what = format!("d={d} k={k} {mode:?} sign_flip={sign_flip}");
    let mut rng = StdRng::seed_from_u64((d * 1000 + k) as u64);
    let layer = CirculantLinear::new(d, k, mode, sign_flip, &mut rng, &dev).unwrap();
    // Non-trivial bias so its gradient path is exercised with a non-zero value.
    let r = host(layer.r());
    let signs = layer.signs().map(host).unwrap_or_else(|| vec![1.0; d]);
    assert!(signs.iter().all(|s| *s == 1.0 || *s == -1.0));
    if sign_flip {
        assert!(signs.contains(&-1.0) || d < 4, "{what}: no sign flipped");
    }

    // Explicit dense weight on the host.
    let mut w = vec![0f32; k * d];
    for s in 0..k {
        for t in 0..d {
            w[s * d + t] = r[r_index(mode, d, k, s, t)] * signs[t];
        }
    }
    assert_close(
        &format!("{what} dense_weight"),
        &host(&layer.dense_weight().unwrap()),
        &w,
        0.0,
    );

    let n = 3;
    let x = Var::from_tensor(&random(&mut rng, &[n, d])).unwrap();
    let g = random(&mut rng, &[n, k]);

    // Circulant path.
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.dims(), [n, k], "{what}");
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = host(grads.get(&x).unwrap());
    let gr = host(grads.get(layer.r()).unwrap());
    let gb = host(grads.get(layer.bias()).unwrap());

    // Dense reference.
    let wv = Var::from_vec(w, (k, d), &dev).unwrap();
    let bv = Var::from_tensor(layer.bias().as_tensor()).unwrap();
    let x2 = Var::from_tensor(x.as_tensor()).unwrap();
    let lin = candle_nn::Linear::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone()));
    let y_ref = lin.forward(&x2).unwrap();
    let grads_ref = (&y_ref * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gw = host(grads_ref.get(&wv).unwrap());
    let mut gr_ref = vec![0f32; r.len()];
    for s in 0..k {
        for t in 0..d {
            gr_ref[r_index(mode, d, k, s, t)] += gw[s * d + t] * signs[t];
        }
    }

    assert_close(&format!("{what} y"), &host(&y), &host(&y_ref), 1e-4);
    assert_close(
        &format!("{what} dx"),
        &gx,
        &host(grads_ref.get(&x2).unwrap()),
        1e-4,
    );
    assert_close(&format!("{what} dr"), &gr, &gr_ref, 1e-4);
    assert_close(
        &format!("{what} dbias"),
        &gb,
        &host(grads_ref.get(&bv).unwrap()),
        1e-4,
    );
}

#[test]
fn paper_mode_matches_dense() {
    for (d, k) in [(12, 5), (8, 8), (5, 12), (1, 1), (30, 1)] {
        check(d, k, CirculantMode::Paper, true);
        check(d, k, CirculantMode::Paper, false);
    }
}

#[test]
fn block_mode_matches_dense() {
    for (d, k, b) in [
        (12, 8, 4), // exact multiples, k < d
        (10, 7, 4), // padding on both sides
        (7, 13, 3), // k > d
        (8, 8, 8),  // one block
        (6, 5, 1),  // b = 1: a dense layer
        (5, 6, 16), // b > d, k
    ] {
        check(d, k, CirculantMode::Block(b), true);
        check(d, k, CirculantMode::Block(b), false);
    }
}

#[test]
fn parameter_counts() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(0);
    // The example: mnist-cnn's fc2 in paper mode.
    let fc2 = CirculantLinear::new(1024, 10, CirculantMode::Paper, true, &mut rng, &dev).unwrap();
    assert_eq!(fc2.r().dims(), [1024]);
    assert_eq!(fc2.param_count(), 1034);
    assert_eq!(fc2.dense_equivalent(), 10250);
    let blk =
        CirculantLinear::new(100, 30, CirculantMode::Block(16), true, &mut rng, &dev).unwrap();
    assert_eq!(blk.r().dims(), [2, 7, 16]);
    assert_eq!(blk.param_count(), 2 * 7 * 16 + 30);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(0);
    let layer = CirculantLinear::new(8, 4, CirculantMode::Paper, true, &mut rng, &dev).unwrap();
    let x = Tensor::zeros((2, 7), candle_core::DType::F32, &dev).unwrap();
    assert!(layer.forward(&x).is_err());
    assert!(CirculantLinear::new(8, 4, CirculantMode::Block(0), true, &mut rng, &dev).is_err());
    let r = Var::zeros(7, candle_core::DType::F32, &dev).unwrap();
    let b = Var::zeros(4, candle_core::DType::F32, &dev).unwrap();
    let err = CirculantLinear::from_parts(8, 4, CirculantMode::Paper, r, None, b).unwrap_err();
    assert!(err.to_string().contains("`r`"), "{err}");
}

#[test]
fn init_scale_matches_dense_fan_in() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(1);
    let layer = CirculantLinear::new(400, 100, CirculantMode::Paper, true, &mut rng, &dev).unwrap();
    let bound = 1.0 / 20.0;
    let r = host(layer.r());
    assert!(r.iter().all(|v| v.abs() <= bound));
    assert!(r.iter().any(|v| v.abs() > 0.9 * bound));
    let layer =
        CirculantLinear::new(100, 10, CirculantMode::Block(64), true, &mut rng, &dev).unwrap();
    let bound = 1.0 / 128f32.sqrt(); // fan_in = q * b = 2 * 64
    assert!(host(layer.r()).iter().all(|v| v.abs() <= bound));
}
