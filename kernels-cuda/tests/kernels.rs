//! `kernels_cuda` on the GPU against the plain f64 reference: forward and backward (with the
//! forward's spectra and without them) in f32 and f64, the sizes check of saved spectra and of
//! the inputs, unaligned views, bit-identical repeated calls and batches split over several
//! cuFFT executions. The op built on it is tested in `circulant-kernels/tests/`.
//!
//! Each test skips, printing why, when no CUDA device is usable, and fails instead when
//! `CIRCULANT_REQUIRE_CUDA=1` (the binary still needs libcuda.so.1 to load).
#![cfg(feature = "cuda")]

// The reference and the device gate are circulant-kernels' `testing` module, compiled in here
// from its file: kernels-cuda cannot dev-depend on circulant-kernels, which depends on it.
#[allow(dead_code)]
#[path = "../../circulant-kernels/src/testing.rs"]
mod testing;

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda::CudaDevice;
use candle_core::{Device, Result, WithDType};
use kernels_cuda::{backward, forward, forward_keep, Dims, FftFloat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testing::{assert_close, cuda_device, reference_backward, reference_forward};

/// The CUDA device of a test, or `None` (skip) as [`cuda_device`] decides.
fn gpu() -> Option<CudaDevice> {
    match cuda_device()? {
        Device::Cuda(dev) => Some(dev),
        other => panic!("Device::new_cuda returned {other:?}"),
    }
}

fn randn(rng: &mut StdRng, len: usize) -> Vec<f64> {
    // Sum of uniforms: roughly N(0, 1), enough for value ranges.
    (0..len)
        .map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7)
        .collect()
}

fn upload<T: FftFloat + WithDType>(dev: &CudaDevice, v: &[f64]) -> Result<CudaSlice<T>> {
    let host: Vec<T> = v.iter().map(|&x| <T as WithDType>::from_f64(x)).collect();
    dev.clone_htod(&host)
}

fn download<T: FftFloat + WithDType>(dev: &CudaDevice, s: &CudaView<'_, T>) -> Result<Vec<f64>> {
    Ok(dev
        .clone_dtoh(s)?
        .into_iter()
        .map(<T as WithDType>::to_f64)
        .collect())
}

/// (n, p, q, b): non-powers of two, b = 1, odd `n*q*b` (an unaligned `dr` half in f32),
/// block mode.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (3, 1, 1, 1),
    (4, 1, 1, 2),
    (5, 1, 1, 7),
    (6, 1, 1, 12),
    (6, 1, 1, 100),
    (3, 1, 1, 1000),
    (2, 1, 1, 1024),
    (4, 2, 3, 4),
    (5, 3, 2, 5),
    (4, 4, 4, 16),
    (7, 1, 3, 9),
    (1, 5, 1, 6),
    (33, 8, 8, 64),
    (9, 3, 5, 31),
];

/// Host data of one call: x (n, q*b), r (p, q, b), g = dL/dy (n, p*b).
struct Case {
    d: Dims,
    x: Vec<f64>,
    r: Vec<f64>,
    g: Vec<f64>,
}

impl Case {
    fn new(rng: &mut StdRng, n: usize, p: usize, q: usize, b: usize) -> Self {
        Self {
            d: Dims { n, p, q, b },
            x: randn(rng, n * q * b),
            r: randn(rng, p * q * b),
            g: randn(rng, n * p * b),
        }
    }

    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let Dims { n, p, q, b } = self.d;
        let y = reference_forward(&self.x, &self.r, n, p, q, b);
        let (dx, dr) = reference_backward(&self.x, &self.r, &self.g, n, p, q, b);
        (y, [dx, dr].concat())
    }
}

/// y from `forward` and from `forward_keep`, then the packed [dx; dr] from `backward` with the
/// kept spectra and without them: checks all against the reference.
fn check<T: FftFloat + WithDType>(dev: &CudaDevice, c: &Case, tol: f64) -> Result<()> {
    let label = format!("{:?} {:?}", <T as WithDType>::DTYPE, c.d);
    let (x, r, g) = (
        upload::<T>(dev, &c.x)?,
        upload::<T>(dev, &c.r)?,
        upload::<T>(dev, &c.g)?,
    );
    let (x, r, g) = (x.slice(..), r.slice(..), g.slice(..));
    let (y_ref, grads_ref) = c.reference();

    let y = download(dev, &forward(dev, &x, &r, c.d)?.slice(..))?;
    assert_close(&format!("y, {label}"), &y, &y_ref, tol);
    let (y_keep, saved) = forward_keep(dev, &x, &r, c.d)?;
    assert!(saved.is_some(), "{label}: no spectra kept");
    let y_keep = download(dev, &y_keep.slice(..))?;
    assert!(
        y_keep == y,
        "{label}: forward_keep's y differs from forward's"
    );

    for (how, spectra) in [("saved", saved.as_ref()), ("recomputed", None)] {
        let packed = backward(dev, &x, &r, &g, c.d, spectra)?;
        let got = download(dev, &packed.slice(..))?;
        assert_close(
            &format!("[dx; dr] ({how} spectra), {label}"),
            &got,
            &grads_ref,
            tol,
        );
    }
    Ok(())
}

#[test]
fn f32_forward_and_backward_match_the_reference() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let mut rng = StdRng::seed_from_u64(1);
    for &(n, p, q, b) in SHAPES {
        check::<f32>(&dev, &Case::new(&mut rng, n, p, q, b), 2e-5)?;
    }
    Ok(())
}

#[test]
fn f64_forward_and_backward_match_the_reference() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let mut rng = StdRng::seed_from_u64(8);
    for &(n, p, q, b) in SHAPES {
        check::<f64>(&dev, &Case::new(&mut rng, n, p, q, b), 1e-11)?;
    }
    Ok(())
}

#[test]
fn views_at_unaligned_offsets_are_read_from_their_offset() -> Result<()> {
    // A view one f32 past an aligned start is not aligned like cuFFT's complex type: it goes
    // through an aligned copy.
    let Some(dev) = gpu() else { return Ok(()) };
    let mut rng = StdRng::seed_from_u64(3);
    let c = Case::new(&mut rng, 5, 2, 3, 10);
    let pad = |v: &[f64]| [&[7.0][..], v].concat();
    let (xs, rs, gs) = (
        upload::<f32>(&dev, &pad(&c.x))?,
        upload::<f32>(&dev, &pad(&c.r))?,
        upload::<f32>(&dev, &pad(&c.g))?,
    );
    let (x, r, g) = (xs.slice(1..), rs.slice(1..), gs.slice(1..));
    let (y_ref, grads_ref) = c.reference();
    let y = download(&dev, &forward(&dev, &x, &r, c.d)?.slice(..))?;
    assert_close("y from unaligned views", &y, &y_ref, 2e-5);
    let packed = backward(&dev, &x, &r, &g, c.d, None)?;
    let got = download(&dev, &packed.slice(..))?;
    assert_close("[dx; dr] from unaligned views", &got, &grads_ref, 2e-5);
    Ok(())
}

#[test]
fn inputs_of_the_wrong_length_are_an_error() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let d = Dims {
        n: 2,
        p: 1,
        q: 2,
        b: 4,
    };
    let (x, r) = (
        upload::<f32>(&dev, &[0.0; 15])?,
        upload::<f32>(&dev, &[0.0; 8])?,
    );
    let err = forward(&dev, &x.slice(..), &r.slice(..), d)
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x has 15 elements, expected 16"), "{err}");
    let x = upload::<f32>(&dev, &[0.0; 16])?;
    let err = backward(&dev, &x.slice(..), &r.slice(..), &r.slice(..7), d, None)
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("grad has 7 elements, expected 8"), "{err}");
    Ok(())
}

#[test]
fn spectra_saved_for_other_sizes_are_an_error() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Both size sets have 16 elements in x, r and y: only the saved sizes tell them apart.
    let ones = upload::<f64>(&dev, &[1.0; 16])?;
    let v = ones.slice(..);
    let d1 = Dims {
        n: 2,
        p: 2,
        q: 2,
        b: 4,
    };
    let d2 = Dims {
        n: 1,
        p: 1,
        q: 1,
        b: 16,
    };
    let (_, saved) = forward_keep(&dev, &v, &v, d1)?;
    let err = backward(&dev, &v, &v, &v, d2, saved.as_ref())
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("saved spectra are for"), "{err}");
    Ok(())
}

#[test]
fn repeated_calls_are_bit_identical() -> Result<()> {
    // Cached cuFFT plans and the deterministic batch reduction of dr give identical results.
    let Some(dev) = gpu() else { return Ok(()) };
    let mut rng = StdRng::seed_from_u64(4);
    let c = Case::new(&mut rng, 64, 4, 4, 48);
    let (x, r, g) = (
        upload::<f32>(&dev, &c.x)?,
        upload::<f32>(&dev, &c.r)?,
        upload::<f32>(&dev, &c.g)?,
    );
    let (x, r, g) = (x.slice(..), r.slice(..), g.slice(..));
    let run = || -> Result<(Vec<f32>, Vec<f32>)> {
        let (y, saved) = forward_keep(&dev, &x, &r, c.d)?;
        let packed = backward(&dev, &x, &r, &g, c.d, saved.as_ref())?;
        Ok((dev.clone_dtoh(&y)?, dev.clone_dtoh(&packed)?))
    };
    let first = run()?;
    for _ in 0..3 {
        assert!(run()? == first, "results changed between calls");
    }
    Ok(())
}

#[test]
fn batches_beyond_one_cufft_execution_are_chunked() -> Result<()> {
    // 129 rows of 2^20 exceed the 2^27 elements of one cuFFT execution: 128 + 1 rows.
    let Some(dev) = gpu() else { return Ok(()) };
    let (n, b) = (129usize, 1usize << 20);
    let mut rng = StdRng::seed_from_u64(6);
    let rs: Vec<f32> = randn(&mut rng, b).into_iter().map(|v| v as f32).collect();
    // A cheap input whose product is known: row k is the impulse at position k, so
    // y[k] = r shifted by k (circ(r) e_k = column k of circ(r)).
    let mut xs = vec![0f32; n * b];
    for k in 0..n {
        xs[k * b + k] = 1.0;
    }
    let (x, r) = (dev.clone_htod(&xs)?, dev.clone_htod(&rs)?);
    let d = Dims { n, p: 1, q: 1, b };
    let y = dev.clone_dtoh(&forward(&dev, &x.slice(..), &r.slice(..), d)?)?;
    for (k, row) in y.chunks(b).enumerate() {
        let want: Vec<f64> = (0..b).map(|s| rs[(s + b - k) % b] as f64).collect();
        let got: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        assert_close(&format!("row {k}"), &got, &want, 1e-5);
    }
    Ok(())
}
