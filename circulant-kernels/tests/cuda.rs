//! GPU path vs CPU path and vs a plain O(d^2) reference, on random inputs. Each test prints
//! why it skips when no CUDA device is usable (the binary still needs libcuda.so.1 to load).
#![cfg(feature = "cuda")]

use std::io::Write;

use candle_core::{DType, Device, Result, Tensor, Var};
use circulant_kernels::{block_circulant, circulant};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            // Straight to stderr, past the test harness's capture: a skip must be visible.
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "skipping: no CUDA device: {reason}");
            None
        }
    }
}

fn randn(rng: &mut StdRng, len: usize) -> Vec<f64> {
    // Sum of uniforms: roughly N(0, 1), enough for value ranges.
    (0..len)
        .map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7)
        .collect()
}

/// y[n, i*b+s] = sum_j sum_t r[i,j,(s-t) mod b] x[n, j*b+t], in f64.
fn reference_forward(x: &[f64], r: &[f64], n: usize, p: usize, q: usize, b: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * p * b];
    for nn in 0..n {
        for i in 0..p {
            for s in 0..b {
                let mut acc = 0.0;
                for j in 0..q {
                    for t in 0..b {
                        acc += r[(i * q + j) * b + (s + b - t) % b] * x[nn * q * b + j * b + t];
                    }
                }
                y[nn * p * b + i * b + s] = acc;
            }
        }
    }
    y
}

/// (dx, dr) of sum(g * y), in f64.
#[allow(clippy::too_many_arguments)]
fn reference_backward(
    x: &[f64],
    r: &[f64],
    g: &[f64],
    n: usize,
    p: usize,
    q: usize,
    b: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; n * q * b];
    let mut dr = vec![0.0; p * q * b];
    for nn in 0..n {
        for i in 0..p {
            for j in 0..q {
                for s in 0..b {
                    let gv = g[nn * p * b + i * b + s];
                    for t in 0..b {
                        let u = (s + b - t) % b;
                        dx[nn * q * b + j * b + t] += gv * r[(i * q + j) * b + u];
                        dr[(i * q + j) * b + u] += gv * x[nn * q * b + j * b + t];
                    }
                }
            }
        }
    }
    (dx, dr)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// max |a - b| <= tol * max(1, max |want|), with a message naming `what`.
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (idx, err) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f64), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} at {idx} (got {}, want {}) exceeds {tol:e} * {scale}",
        got[idx],
        want[idx]
    );
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
    let Some(dev) = cuda() else { return Ok(()) };
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
    let Some(dev) = cuda() else { return Ok(()) };
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
    let Some(dev) = cuda() else { return Ok(()) };
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
fn repeated_calls_are_bit_identical() -> Result<()> {
    // Cached cuFFT plans and the deterministic batch reduction of dr give identical results.
    let Some(dev) = cuda() else { return Ok(()) };
    let mut rng = StdRng::seed_from_u64(4);
    let c = case(&mut rng, &[64], 4, 4, 48);
    let first = run(&c, DType::F32, &dev)?;
    for _ in 0..3 {
        assert!(
            run(&c, DType::F32, &dev)? == first,
            "results changed between calls"
        );
    }
    Ok(())
}

#[test]
fn circulant_large_d_matches_cpu() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
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
fn batches_beyond_one_cufft_execution_are_chunked() -> Result<()> {
    // 129 rows of 2^20 exceed the 2^27 elements of one cuFFT execution: 128 + 1 rows.
    let Some(dev) = cuda() else { return Ok(()) };
    let (n, d) = (129usize, 1usize << 20);
    let mut rng = StdRng::seed_from_u64(6);
    let rs: Vec<f32> = randn(&mut rng, d).into_iter().map(|v| v as f32).collect();
    // A cheap input whose product is known: row k is the impulse at position k, so
    // y[k] = r shifted by k (circ(r) e_k = column k of circ(r)).
    let mut xs = vec![0f32; n * d];
    for k in 0..n {
        xs[k * d + k] = 1.0;
    }
    let x = Tensor::from_vec(xs, (n, d), &dev)?;
    let r = Tensor::from_slice(&rs, d, &dev)?;
    let y = circulant(&x, &r)?.to_vec2::<f32>()?;
    for (k, row) in y.iter().enumerate() {
        let want: Vec<f64> = (0..d).map(|s| rs[(s + d - k) % d] as f64).collect();
        let got: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        assert_close(&format!("row {k}"), &got, &want, 1e-5);
    }
    Ok(())
}

#[test]
fn dtype_mismatch_is_an_error_not_a_panic() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let x = Tensor::zeros((2, 8), DType::F32, &dev)?;
    let r = Tensor::zeros((1, 1, 8), DType::F64, &dev)?;
    let err = block_circulant(&x, &r).unwrap_err().to_string();
    assert!(err.contains("F32") && err.contains("F64"), "{err}");
    Ok(())
}

/// The contiguous f64 data of a CUDA tensor, as a view for `kernels_cuda`.
fn cuda_view<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> candle_core::cuda::cudarc::driver::CudaView<'a, f64> {
    let candle_core::Storage::Cuda(s) = storage else {
        panic!("not a CUDA tensor")
    };
    let (start, end) = layout.contiguous_offsets().expect("contiguous");
    s.as_cuda_slice::<f64>().expect("f64").slice(start..end)
}

#[test]
fn backward_with_and_without_the_forward_spectra_match_the_reference() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let Device::Cuda(cdev) = &dev else {
        unreachable!()
    };
    let mut rng = StdRng::seed_from_u64(8);
    for &(batch, p, q, b) in &[(&[5usize][..], 2usize, 3usize, 7usize), (&[3], 1, 1, 1024)] {
        let c = case(&mut rng, batch, p, q, b);
        let (x, r, g) = c.tensors(DType::F64, &dev)?;
        let (xs, xl) = x.storage_and_layout();
        let (rs, rl) = r.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (xv, rv, gv) = (cuda_view(&xs, xl), cuda_view(&rs, rl), cuda_view(&gs, gl));
        let d = kernels_cuda::BlockDims { n: c.n, p, q, b };
        let (y, saved) = kernels_cuda::forward_keep(cdev, &xv, &rv, d)?;
        assert!(saved.is_some(), "{}: no spectra kept", c.label());
        let stream = cdev.cuda_stream();
        let y = stream.clone_dtoh(&y).map_err(candle_core::Error::wrap)?;
        let label = c.label();
        assert_close(
            &format!("y, {label}"),
            &y,
            &reference_forward(&c.x, &c.r, c.n, p, q, b),
            1e-10,
        );
        let (dx_ref, dr_ref) = reference_backward(&c.x, &c.r, &c.g, c.n, p, q, b);
        let want = [dx_ref, dr_ref].concat();
        for (how, spectra) in [("saved", saved.as_ref()), ("recomputed", None)] {
            let packed = kernels_cuda::backward(cdev, &xv, &rv, &gv, d, spectra)?;
            let got = stream
                .clone_dtoh(&packed)
                .map_err(candle_core::Error::wrap)?;
            assert_close(
                &format!("[dx; dr] ({how} spectra), {label}"),
                &got,
                &want,
                1e-10,
            );
        }
    }
    Ok(())
}

#[test]
fn spectra_saved_for_other_sizes_are_an_error() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let Device::Cuda(cdev) = &dev else {
        unreachable!()
    };
    // Both size sets have 16 elements in x, r and y: only the saved sizes tell them apart.
    let x = Tensor::ones(16, DType::F64, &dev)?;
    let (xs, xl) = x.storage_and_layout();
    let v = cuda_view(&xs, xl);
    let d1 = kernels_cuda::BlockDims {
        n: 2,
        p: 2,
        q: 2,
        b: 4,
    };
    let d2 = kernels_cuda::BlockDims {
        n: 1,
        p: 1,
        q: 1,
        b: 16,
    };
    let (_, saved) = kernels_cuda::forward_keep(cdev, &v, &v, d1)?;
    let err = kernels_cuda::backward(cdev, &v, &v, &v, d2, saved.as_ref())
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("saved spectra are for"), "{err}");
    Ok(())
}
