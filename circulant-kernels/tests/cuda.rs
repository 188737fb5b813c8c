//! The op's public API (`block_circulant`, `circulant`) on CUDA tensors: dispatch to the GPU
//! path, dtypes, layouts and autograd, against the CPU path and the plain f64 reference.
//! `kernels_cuda` itself (spectra reuse, cuFFT chunking, determinism) is tested in
//! `kernels-cuda/tests/`. Each test skips, printing why, when no CUDA device is usable, and
//! fails instead when `CIRCULANT_REQUIRE_CUDA=1` (the binary still needs libcuda.so.1 to load).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor, Var};
use circulant_kernels::testing::{
    assert_close, cuda_device, reference_backward, reference_forward,
};
use circulant_kernels::{block_circulant, circulant};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randn(rng: &mut StdRng, len: usize) -> Vec<f64> {
    // Sum of uniforms: roughly N(0, 1), enough for value ranges.
    (0..len)
        .map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7)
        .collect()
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// (batch shape of x, p, q, b): non-powers of two, b = 1, block mode, several batch ranks.
const SHAPES: &[(&[usize], usize, usize, usize)] = &[
    (&[3], 1, 1, 1),
    (&[4], 1, 1, 2),
    (&[5], 1, 1, 7),
    (&[2, 3], 1, 1, 12),
    (&[6], 1, 1, 100),
    (&[3], 1, 1, 1000),
    (&[2], 1, 1, 1024),
    (&[4], 2, 3, 4),
    (&[5], 3, 2, 5),
    (&[2, 2], 4, 4, 16),
    (&[7], 1, 3, 9),
    (&[1], 5, 1, 6),
    (&[33], 8, 8, 64),
    (&[9], 3, 5, 31),
];

struct Case {
    dims: Vec<usize>,
    n: usize,
    p: usize,
    q: usize,
    b: usize,
    x: Vec<f64>,
    r: Vec<f64>,
    g: Vec<f64>,
}

fn case(rng: &mut StdRng, batch: &[usize], p: usize, q: usize, b: usize) -> Case {
    let n: usize = batch.iter().product();
    let mut dims = batch.to_vec();
    dims.push(q * b);
    Case {
        dims,
        n,
        p,
        q,
        b,
        x: randn(rng, n * q * b),
        r: randn(rng, p * q * b),
        g: randn(rng, n * p * b),
    }
}

impl Case {
    fn tensors(&self, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let mut y_dims = self.dims.clone();
        *y_dims.last_mut().unwrap() = self.p * self.b;
        let x = Tensor::from_slice(&self.x, self.dims.as_slice(), dev)?.to_dtype(dtype)?;
        let r = Tensor::from_slice(&self.r, (self.p, self.q, self.b), dev)?.to_dtype(dtype)?;
        let g = Tensor::from_slice(&self.g, y_dims.as_slice(), dev)?.to_dtype(dtype)?;
        Ok((x, r, g))
    }

    fn label(&self) -> String {
        format!("x {:?}, r ({}, {}, {})", self.dims, self.p, self.q, self.b)
    }
}

/// Forward on `dev`, with gradients of sum(g * y): (y, dx, dr).
fn run(c: &Case, dtype: DType, dev: &Device) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (x, r, g) = c.tensors(dtype, dev)?;
    let (x, r) = (Var::from_tensor(&x)?, Var::from_tensor(&r)?);
    let y = block_circulant(x.as_tensor(), r.as_tensor())?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("gradient of x");
    let dr = grads.get(r.as_tensor()).expect("gradient of r");
    Ok((to_f64(&y)?, to_f64(dx)?, to_f64(dr)?))
}

fn check_all_shapes(dtype: DType, tol: f64) -> Result<()> {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(1);
    for &(batch, p, q, b) in SHAPES {
        let c = case(&mut rng, batch, p, q, b);
        let label = c.label();
        let (y, dx, dr) = run(&c, dtype, &dev)?;
        let (y_cpu, dx_cpu, dr_cpu) = run(&c, dtype, &Device::Cpu)?;
        let y_ref = reference_forward(&c.x, &c.r, c.n, p, q, b);
        let (dx_ref, dr_ref) = reference_backward(&c.x, &c.r, &c.g, c.n, p, q, b);
        assert_close(&format!("y vs reference, {label}"), &y, &y_ref, tol);
        assert_close(&format!("y vs cpu, {label}"), &y, &y_cpu, tol);
        assert_close(&format!("dx vs reference, {label}"), &dx, &dx_ref, tol);
        assert_close(&format!("dx vs cpu, {label}"), &dx, &dx_cpu, tol);
        assert_close(&format!("dr vs reference, {label}"), &dr, &dr_ref, tol);
        assert_close(&format!("dr vs cpu, {label}"), &dr, &dr_cpu, tol);
    }
    Ok(())
}

#[test]
fn f32_forward_and_gradients_match_cpu_and_reference() -> Result<()> {
    check_all_shapes(DType::F32, 2e-5)
}

#[test]
fn f64_forward_and_gradients_match_cpu_and_reference() -> Result<()> {
    check_all_shapes(DType::F64, 1e-11)
}

#[test]
fn half_precision_inputs_are_computed_in_f32() -> Result<()> {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(2);
    let c = case(&mut rng, &[6], 3, 2, 24);
    let y_ref = reference_forward(&c.x, &c.r, c.n, c.p, c.q, c.b);
    for dtype in [DType::F16, DType::BF16] {
        let (x, r, _) = c.tensors(dtype, &dev)?;
        let y = block_circulant(&x, &r)?;
        assert_eq!(y.dtype(), dtype);
        // Inputs and output are rounded to 8 (bf16) or 11 (f16) bits.
        assert_close(&format!("{dtype:?} y"), &to_f64(&y)?, &y_ref, 3e-2);
    }
    Ok(())
}

#[test]
fn inputs_with_start_offsets_are_read_from_their_offset() -> Result<()> {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(3);
    let (n, p, q, b) = (5, 2, 3, 10);
    let xs = randn(&mut rng, (n + 3) * q * b);
    let rs = randn(&mut rng, (p + 1) * q * b);
    let x_full = Tensor::from_slice(&xs, (n + 3, q * b), &dev)?.to_dtype(DType::F32)?;
    let r_full = Tensor::from_slice(&rs, (p + 1, q, b), &dev)?.to_dtype(DType::F32)?;
    // Narrowing the leading dim keeps the tensors contiguous with a non-zero start offset.
    let x = x_full.narrow(0, 2, n)?;
    let r = r_full.narrow(0, 1, p)?;
    let y = to_f64(&block_circulant(&x, &r)?)?;
    let y_ref = reference_forward(&xs[2 * q * b..(2 + n) * q * b], &rs[q * b..], n, p, q, b);
    assert_close("y from offset inputs", &y, &y_ref, 2e-5);
    // A transposed (non-contiguous) input goes through the same path after a copy.
    let xt = Tensor::from_slice(&xs[..q * b * n], (q * b, n), &dev)?
        .to_dtype(DType::F32)?
        .t()?;
    let y = to_f64(&block_circulant(&xt, &r)?)?;
    let xt_host = to_f64(&xt)?;
    assert_close(
        "y from a transposed input",
        &y,
        &reference_forward(&xt_host, &rs[q * b..], n, p, q, b),
        2e-5,
    );
    Ok(())
}

#[test]
fn circulant_large_d_matches_cpu() -> Result<()> {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    let mut rng = StdRng::seed_from_u64(5);
    for (n, d) in [(3usize, 1usize << 16), (2, 65_537), (1, 1 << 20)] {
        let xs = randn(&mut rng, n * d);
        let rs = randn(&mut rng, d);
        let y = |dev: &Device| -> Result<Vec<f64>> {
            let x = Tensor::from_slice(&xs, (n, d), dev)?.to_dtype(DType::F32)?;
            let r = Tensor::from_slice(&rs, d, dev)?.to_dtype(DType::F32)?;
            to_f64(&circulant(&x, &r)?)
        };
        assert_close(
            &format!("circulant d = {d}"),
            &y(&dev)?,
            &y(&Device::Cpu)?,
            1e-4,
        );
    }
    Ok(())
}

#[test]
fn dtype_mismatch_is_an_error_not_a_panic() -> Result<()> {
    let Some(dev) = cuda_device() else {
        return Ok(());
    };
    let x = Tensor::zeros((2, 8), DType::F32, &dev)?;
    let r = Tensor::zeros((1, 1, 8), DType::F64, &dev)?;
    let err = block_circulant(&x, &r).unwrap_err().to_string();
    assert!(err.contains("F32") && err.contains("F64"), "{err}");
    Ok(())
}
