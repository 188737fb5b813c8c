//! The FFT op against an explicit dense circulant matrix: forward and gradients.

mod common;

use candle_core::{DType, Tensor, Var};
use circulant_kernels::{block_circulant, circulant, WeightSpectra};
use common::{dense_apply, randn, rel_err, rng};

const SIZES: [usize; 9] = [1, 2, 3, 7, 16, 100, 784, 1000, 1024];

/// Grids (p, q) to try for a block size: small blocks get bigger grids.
fn grids(b: usize) -> Vec<(usize, usize)> {
    if b <= 16 {
        vec![(1, 1), (2, 3), (3, 2), (4, 4)]
    } else if b <= 100 {
        vec![(1, 1), (2, 3), (3, 1)]
    } else {
        vec![(1, 1), (2, 1), (1, 2)]
    }
}

fn batch_shapes(row: usize) -> Vec<Vec<usize>> {
    vec![vec![row], vec![5, row], vec![2, 3, row]]
}

#[test]
fn forward_matches_dense_f64_and_f32() {
    let mut rng = rng("forward_matches_dense");
    for b in SIZES {
        for (p, q) in grids(b) {
            for shape in batch_shapes(q * b) {
                let x = randn(&mut rng, &shape);
                let r = randn(&mut rng, &[p, q, b]);
                let want = dense_apply(&x, &r).unwrap();
                let got = block_circulant(&x, &r).unwrap();
                assert_eq!(got.dims(), want.dims());
                let e = rel_err(&got, &want);
                assert!(e < 1e-10, "f64 b={b} p={p} q={q} {shape:?}: rel err {e}");

                let (x32, r32) = (
                    x.to_dtype(DType::F32).unwrap(),
                    r.to_dtype(DType::F32).unwrap(),
                );
                let got32 = block_circulant(&x32, &r32).unwrap();
                assert_eq!(got32.dtype(), DType::F32);
                let e = rel_err(&got32, &want);
                assert!(e < 1e-4, "f32 b={b} p={p} q={q} {shape:?}: rel err {e}");
            }
        }
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn precomputed_weight_spectra_match_dense() {
    let mut rng = rng("precomputed_weight_spectra_match_dense");
    for b in SIZES {
        for (p, q) in grids(b) {
            let r = randn(&mut rng, &[p, q, b]);
            let w = WeightSpectra::block(&r).unwrap();
            let r32 = r.to_dtype(DType::F32).unwrap();
            let w32 = WeightSpectra::block(&r32).unwrap();
            for shape in batch_shapes(q * b) {
                let x = randn(&mut rng, &shape);
                let want = dense_apply(&x, &r).unwrap();
                let got = w.apply(&x).unwrap();
                assert_eq!(got.dims(), want.dims());
                let e = rel_err(&got, &want);
                assert!(e < 1e-10, "f64 b={b} p={p} q={q} {shape:?}: rel err {e}");
                // f32: the same numbers as the differentiable op.
                let x32 = x.to_dtype(DType::F32).unwrap();
                let got32 = w32.apply(&x32).unwrap();
                assert_eq!(bits(&got32), bits(&block_circulant(&x32, &r32).unwrap()));
            }
        }
    }
}

#[test]
fn precomputed_weight_spectra_other_cases() {
    let mut rng = rng("precomputed_weight_spectra_other_cases");
    let (n, b) = (100, 16);
    let r = randn(&mut rng, &[n]);
    let x = randn(&mut rng, &[3, n]);
    let got = WeightSpectra::circulant(&r).unwrap().apply(&x).unwrap();
    assert!(rel_err(&got, &circulant(&x, &r).unwrap()) < 1e-12);
    // Half precision keeps r and computes through the op (in f32).
    let (r16, x16) = (
        r.to_dtype(DType::F16).unwrap(),
        x.to_dtype(DType::F16).unwrap(),
    );
    let got16 = WeightSpectra::circulant(&r16).unwrap().apply(&x16).unwrap();
    assert_eq!(got16.dtype(), DType::F16);
    assert!(rel_err(&got16.to_dtype(DType::F64).unwrap(), &got) < 1e-2);
    // x tracking gradients: differentiable in x.
    let rb = randn(&mut rng, &[2, 3, b]);
    let w = WeightSpectra::block(&rb).unwrap();
    let xv = Var::from_tensor(&randn(&mut rng, &[4, 3 * b])).unwrap();
    let y = w.apply(&xv).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let y2 = block_circulant(&xv, &rb).unwrap();
    let g2 = y2.sum_all().unwrap().backward().unwrap();
    assert!(rel_err(g.get(&xv).unwrap(), g2.get(&xv).unwrap()) < 1e-12);
    // A snapshot of a variable r, with or without precomputed spectra (f16 keeps r).
    for dt in [DType::F64, DType::F16] {
        let rv = Var::from_tensor(&rb.to_dtype(dt).unwrap()).unwrap();
        let ws = WeightSpectra::block(&rv).unwrap();
        let x = randn(&mut rng, &[2, 3 * b]).to_dtype(dt).unwrap();
        let before = ws.apply(&x).unwrap();
        rv.set(&rv.zeros_like().unwrap()).unwrap();
        assert_eq!(rel_err(&ws.apply(&x).unwrap(), &before), 0.0, "{dt:?}");
    }
    // Errors, not panics.
    assert!(w.apply(&randn(&mut rng, &[4, 3 * b + 1])).is_err());
    assert!(w.apply(&xv.to_dtype(DType::F32).unwrap()).is_err());
    assert!(WeightSpectra::block(&r).is_err());
    assert!(WeightSpectra::circulant(&rb).is_err());
    assert!(WeightSpectra::block(&randn(&mut rng, &[0, 1, 4])).is_err());
}

#[test]
fn circulant_is_the_one_block_case() {
    let mut rng = rng("circulant_is_the_one_block_case");
    for n in SIZES {
        let x = randn(&mut rng, &[3, n]);
        let r = randn(&mut rng, &[n]);
        let want = dense_apply(&x, &r.reshape((1, 1, n)).unwrap()).unwrap();
        let got = circulant(&x, &r).unwrap();
        assert_eq!(got.dims(), &[3, n]);
        assert!(rel_err(&got, &want) < 1e-10, "n={n}");
    }
}

#[test]
fn gradients_match_dense_autograd() {
    let mut rng = rng("gradients_match_dense_autograd");
    for b in SIZES {
        for (p, q) in grids(b) {
            for shape in batch_shapes(q * b) {
                let x = Var::from_tensor(&randn(&mut rng, &shape)).unwrap();
                let r = Var::from_tensor(&randn(&mut rng, &[p, q, b])).unwrap();
                let mut out_shape = shape.clone();
                *out_shape.last_mut().unwrap() = p * b;
                let w = randn(&mut rng, &out_shape);

                let loss = (block_circulant(&x, &r).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                let want = (dense_apply(&x, &r).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let want = want.backward().unwrap();
                for (name, v) in [("x", &x), ("r", &r)] {
                    let e = rel_err(grads.get(v).unwrap(), want.get(v).unwrap());
                    assert!(
                        e < 1e-10,
                        "d{name} b={b} p={p} q={q} {shape:?}: rel err {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn gradients_in_f32_match_f64() {
    let mut rng = rng("gradients_in_f32_match_f64");
    for (p, q, b) in [(1, 1, 1000), (2, 3, 7), (3, 2, 100)] {
        let x = randn(&mut rng, &[4, q * b]);
        let r = randn(&mut rng, &[p, q, b]);
        let w = randn(&mut rng, &[4, p * b]);
        let grads = |dt: DType| {
            let x = Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap();
            let r = Var::from_tensor(&r.to_dtype(dt).unwrap()).unwrap();
            let y = block_circulant(&x, &r).unwrap();
            let loss = (y * w.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            (g.get(&x).unwrap().clone(), g.get(&r).unwrap().clone())
        };
        let (dx64, dr64) = grads(DType::F64);
        let (dx32, dr32) = grads(DType::F32);
        assert_eq!(dx32.dtype(), DType::F32);
        assert!(rel_err(&dx32, &dx64) < 1e-4, "dx p={p} q={q} b={b}");
        assert!(rel_err(&dr32, &dr64) < 1e-4, "dr p={p} q={q} b={b}");
    }
}

/// Central finite differences of `sum(y * w)` in f64, entry by entry.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = rng("gradients_match_finite_differences");
    for (p, q, b) in [(1, 1, 5), (2, 3, 4), (1, 2, 7)] {
        let x = randn(&mut rng, &[3, q * b]);
        let r = randn(&mut rng, &[p, q, b]);
        let w = randn(&mut rng, &[3, p * b]);
        let loss = |x: &Tensor, r: &Tensor| -> f64 {
            let y = block_circulant(x, r).unwrap();
            (y * &w).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        let (xv, rv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&r).unwrap());
        let y = block_circulant(&xv, &rv).unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (which, t) in [(0, &x), (1, &r)] {
            let analytic: Vec<f64> = grads
                .get(if which == 0 { &xv } else { &rv })
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
            let h = 1e-6;
            for k in 0..base.len() {
                let bump = |delta: f64| {
                    let mut v = base.clone();
                    v[k] += delta;
                    let t2 = Tensor::from_vec(v, t.shape(), t.device()).unwrap();
                    if which == 0 {
                        loss(&t2, &r)
                    } else {
                        loss(&x, &t2)
                    }
                };
                let numeric = (bump(h) - bump(-h)) / (2.0 * h);
                let err = (numeric - analytic[k]).abs();
                assert!(
                    err < 1e-6 * (1.0 + numeric.abs()),
                    "p={p} q={q} b={b} input {which} entry {k}: numeric {numeric} analytic {}",
                    analytic[k]
                );
            }
        }
    }
}
