//! Dtypes, non-contiguous inputs, empty batches and the errors on bad input.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use circulant_kernels::{block_circulant, circulant};
use common::{dense_apply, randn, rel_err, rng};

#[test]
fn half_precision_is_computed_in_f32() {
    let mut rng = rng("half_precision_is_computed_in_f32");
    let x = randn(&mut rng, &[4, 2 * 64]);
    let r = randn(&mut rng, &[3, 2, 64]);
    let want = dense_apply(&x, &r).unwrap();
    for dt in [DType::F16, DType::BF16] {
        let (xh, rh) = (x.to_dtype(dt).unwrap(), r.to_dtype(dt).unwrap());
        // Compare with the exact result on the rounded inputs, so only the output rounding counts.
        let exact = dense_apply(
            &xh.to_dtype(DType::F64).unwrap(),
            &rh.to_dtype(DType::F64).unwrap(),
        )
        .unwrap();
        let y = block_circulant(&xh, &rh).unwrap();
        assert_eq!(y.dtype(), dt);
        let tol = if dt == DType::F16 { 2e-3 } else { 1e-2 };
        assert!(rel_err(&y, &exact) < tol, "{dt:?}: {}", rel_err(&y, &exact));
        assert!(rel_err(&y, &want) < 5e-2, "{dt:?} vs unrounded");

        let (xv, rv) = (
            Var::from_tensor(&xh).unwrap(),
            Var::from_tensor(&rh).unwrap(),
        );
        let g = block_circulant(&xv, &rv)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(g.get(&xv).unwrap().dtype(), dt);
        assert_eq!(g.get(&rv).unwrap().dims(), &[3, 2, 64]);
    }
}

#[test]
fn non_contiguous_inputs() {
    let mut rng = rng("non_contiguous_inputs");
    // x as a transpose: (6, 21) viewed from a (21, 6) tensor.
    let xt = randn(&mut rng, &[21, 6]).t().unwrap();
    assert!(!xt.is_contiguous());
    let r = randn(&mut rng, &[2, 3, 7]);
    let want = dense_apply(&xt.contiguous().unwrap(), &r).unwrap();
    assert!(rel_err(&block_circulant(&xt, &r).unwrap(), &want) < 1e-10);

    // x and r as narrows of larger tensors (offsets and strides).
    let big = randn(&mut rng, &[5, 30]);
    let xn = big.narrow(1, 4, 21).unwrap();
    let rbig = randn(&mut rng, &[2, 3, 9]);
    let rn = rbig.narrow(2, 1, 7).unwrap();
    assert!(!xn.is_contiguous() && !rn.is_contiguous());
    let want = dense_apply(&xn.contiguous().unwrap(), &rn.contiguous().unwrap()).unwrap();
    assert!(rel_err(&block_circulant(&xn, &rn).unwrap(), &want) < 1e-10);

    // A strided r for the 1-D op, and its gradient flowing back through the view.
    let rv = Var::from_tensor(&randn(&mut rng, &[12, 2])).unwrap();
    let r1 = rv.as_tensor().narrow(1, 1, 1).unwrap().squeeze(1).unwrap();
    let x1 = randn(&mut rng, &[3, 12]);
    let grads = circulant(&x1, &r1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g: Vec<Vec<f64>> = grads.get(&rv).unwrap().to_vec2().unwrap();
    assert!(g.iter().all(|row| row[0] == 0.0) && g.iter().any(|row| row[1] != 0.0));
}

#[test]
fn empty_batch_gives_empty_output_and_zero_grad() {
    let x = Var::from_tensor(&Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let r = Var::from_tensor(&Tensor::ones((2, 1, 8), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let y = block_circulant(&x, &r).unwrap();
    assert_eq!(y.dims(), &[0, 16]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let dr: Vec<f32> = g.get(&r).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(dr, vec![0.0; 16]);
}

fn err(res: candle_core::Result<Tensor>) -> String {
    match res {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_shapes() {
    let dev = Device::Cpu;
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev).unwrap();

    let e = err(block_circulant(&t(&[4, 10]), &t(&[2, 3, 4])));
    assert!(
        e.contains("[4, 10]") && e.contains("[2, 3, 4]") && e.contains("q*b = 12"),
        "{e}"
    );
    let e = err(block_circulant(&t(&[4, 12]), &t(&[12])));
    assert!(e.contains("rank 3") && e.contains("[12]"), "{e}");
    let e = err(block_circulant(&t(&[4, 0]), &t(&[1, 1, 0])));
    assert!(e.contains("at least 1") && e.contains("[1, 1, 0]"), "{e}");
    let e = err(circulant(&t(&[3, 8]), &t(&[2, 4])));
    assert!(e.contains("rank 1") && e.contains("[2, 4]"), "{e}");
    let e = err(circulant(&t(&[3, 8]), &t(&[7])));
    assert!(e.contains("[3, 8]") && e.contains("[1, 1, 7]"), "{e}");
    let scalar = Tensor::new(1f32, &dev).unwrap();
    let e = err(circulant(&scalar, &t(&[1])));
    assert!(e.contains("scalar"), "{e}");

    let e = err(circulant(
        &t(&[3, 8]),
        &t(&[8]).to_dtype(DType::F64).unwrap(),
    ));
    assert!(e.contains("F32") && e.contains("F64"), "{e}");
    let ints = Tensor::zeros((3, 8), DType::U32, &dev).unwrap();
    let e = err(circulant(
        &ints,
        &Tensor::zeros(8, DType::U32, &dev).unwrap(),
    ));
    assert!(e.contains("U32"), "{e}");
}
