//! The candle custom ops: `Forward` (differentiable) and `Backward` (packed dx and dr).

use crate::buffers::Buffer;
use crate::cpu;
use crate::erased::{float_dtype, Erased};
use crate::fft::Real;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use kernels_cuda::Dims;
use rustfft::num_complex::Complex;
use std::sync::Mutex;

/// `y = block_circulant(x, r)`; both inputs are contiguous (the public functions ensure it).
pub(crate) struct Forward {
    dims: Dims,
    /// Keep the spectra of x and r for the backward pass (set when a gradient may be asked for).
    keep_spectra: bool,
    /// The spectra of x and r that the backward pass needs again: a [`CpuSpectra`] or, on a
    /// GPU, a `kernels_cuda::Spectra`, of the inputs' float type.
    saved: Mutex<Option<Erased>>,
}

/// Spectra of x and r computed by the CPU forward pass.
struct CpuSpectra<T: Real> {
    x: Buffer<T>,
    r: Vec<Complex<T>>,
}

impl Forward {
    pub fn new(dims: Dims, keep_spectra: bool) -> Self {
        Self {
            dims,
            keep_spectra,
            saved: Mutex::new(None),
        }
    }

    fn cpu<T: Real>(&self, x: &[T], r: &[T]) -> Result<Vec<T>> {
        let d = self.dims;
        let rs = cpu::weight_spectra(r, d)?;
        let (y, xs) = cpu::forward(x, &rs, d)?;
        if self.keep_spectra {
            self.save(Erased::new(CpuSpectra { x: xs, r: rs }));
        }
        Ok(y)
    }

    fn save(&self, saved: Erased) {
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
    }
}

/// `[dx ; dr]` flattened, from `(x, r, g)`, reusing the forward pass's spectra where present.
pub(crate) struct Backward {
    dims: Dims,
    saved: Option<Erased>,
}

impl Backward {
    fn cpu<T: Real>(&self, x: &[T], r: &[T], g: &[T]) -> Result<Vec<T>> {
        let d = self.dims;
        let saved = self.saved.as_ref().and_then(Erased::get::<CpuSpectra<T>>);
        let computed;
        let (xs, rs) = match saved {
            Some(s) => (&s.x[..], &s.r[..]),
            None => {
                computed = (cpu::spectra(x, d)?, cpu::weight_spectra(r, d)?);
                (&computed.0[..], &computed.1[..])
            }
        };
        cpu::backward(xs, rs, g, d)
    }
}

/// The contiguous data of a CPU tensor of element type `T`.
fn data<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("block_circulant: internal error: non-contiguous input {l:?}"),
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "block_circulant"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match float_dtype(self.name(), &[s1.dtype(), s2.dtype()])? {
            DType::F64 => CpuStorage::F64(self.cpu(data(s1, l1)?, data(s2, l2)?)?),
            _ => CpuStorage::F32(self.cpu(data(s1, l1)?, data(s2, l2)?)?),
        };
        Ok((out, self.dims.out_shape(l1.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (out, saved) = crate::cuda::forward(s1, l1, s2, l2, self.dims, self.keep_spectra)?;
        if let Some(saved) = saved {
            self.save(saved);
        }
        Ok((out, self.dims.out_shape(l1.shape())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.dims;
        let op = Backward {
            dims: d,
            saved: self.saved.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let packed = x.apply_op3_no_bwd(r, &g.contiguous()?, &op)?;
        let dx_len = d.n * d.q * d.b;
        let dx = packed.narrow(0, 0, dx_len)?.reshape(x.shape())?;
        let dr = packed
            .narrow(0, dx_len, d.p * d.q * d.b)?
            .reshape(r.shape())?;
        Ok((Some(dx), Some(dr)))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "block_circulant_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dtypes = [s1.dtype(), s2.dtype(), s3.dtype()];
        let out = match float_dtype(self.name(), &dtypes)? {
            DType::F64 => CpuStorage::F64(self.cpu(data(s1, l1)?, data(s2, l2)?, data(s3, l3)?)?),
            _ => CpuStorage::F32(self.cpu(data(s1, l1)?, data(s2, l2)?, data(s3, l3)?)?),
        };
        Ok((out, Shape::from(self.dims.packed_grad_len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let saved = self.saved.as_ref();
        let out = crate::cuda::backward((s1, l1), (s2, l2), (s3, l3), self.dims, saved)?;
        Ok((out, Shape::from(self.dims.packed_grad_len())))
    }
}

/// `y = block_circulant(x, r)` from spectra of `r` computed beforehand (no backward pass).
pub(crate) struct Precomputed<'a> {
    pub r_dims: [usize; 3],
    /// A `Vec<Complex<T>>` from [`cpu_weight_spectra`].
    pub spectra: &'a Erased,
}

impl Precomputed<'_> {
    fn cpu<T: Real>(&self, x: &[T], l: &Layout) -> Result<Vec<T>> {
        let d = Dims::new("block_circulant", l.dims(), &self.r_dims)?;
        let Some(rs) = self.spectra.get::<Vec<Complex<T>>>() else {
            bail!("block_circulant: x's dtype differs from the precomputed weight's")
        };
        Ok(cpu::forward(x, rs, d)?.0)
    }
}

impl CustomOp1 for Precomputed<'_> {
    fn name(&self) -> &'static str {
        "block_circulant_precomputed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match float_dtype(self.name(), &[s.dtype()])? {
            DType::F64 => CpuStorage::F64(self.cpu(data(s, l)?, l)?),
            _ => CpuStorage::F32(self.cpu(data(s, l)?, l)?),
        };
        let d = Dims::new("block_circulant", l.dims(), &self.r_dims)?;
        Ok((out, d.out_shape(l.shape())))
    }
}

/// Spectra of `r: (p, q, b)` (contiguous, CPU, f32 or f64) as [`Precomputed`] uses them.
pub(crate) fn cpu_weight_spectra(r: &Tensor) -> Result<Erased> {
    let &[p, q, b] = r.dims() else {
        bail!("block_circulant: r must have rank 3, got {:?}", r.dims())
    };
    let d = Dims::new("block_circulant", &[q * b], &[p, q, b])?;
    let r = r.flatten_all()?;
    match r.dtype() {
        DType::F32 => Ok(Erased::new(cpu::weight_spectra(&r.to_vec1::<f32>()?, d)?)),
        DType::F64 => Ok(Erased::new(cpu::weight_spectra(&r.to_vec1::<f64>()?, d)?)),
        dt => bail!("block_circulant: precomputed weights must be f32 or f64, got {dt:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The backward op recomputes the spectra when the forward pass kept none.
    #[test]
    fn backward_without_saved_spectra_matches_autograd() {
        let dev = Device::Cpu;
        let d = Dims::new("t", &[3, 14], &[2, 2, 7]).unwrap();
        let x = Var::from_tensor(&Tensor::rand(-1f64, 1., (3, 14), &dev).unwrap()).unwrap();
        let r = Var::from_tensor(&Tensor::rand(-1f64, 1., (2, 2, 7), &dev).unwrap()).unwrap();
        let g = Tensor::rand(-1f64, 1., (3, 14), &dev).unwrap();
        let y = crate::block_circulant(&x, &r).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let op = Backward {
            dims: d,
            saved: None,
        };
        let packed = x.apply_op3_no_bwd(&r, &g, &op).unwrap();
        let want = Tensor::cat(
            &[
                grads.get(&x).unwrap().flatten_all().unwrap(),
                grads.get(&r).unwrap().flatten_all().unwrap(),
            ],
            0,
        )
        .unwrap();
        let err: f64 = (packed - want)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 1e-12, "max abs err {err}");
    }

    /// Pooled spectra buffers come back with the values of their last use (an odd batch
    /// leaves part of each block unwritten): results must not depend on them.
    #[test]
    fn results_do_not_depend_on_reused_buffers() {
        let dev = Device::Cpu;
        let r = Var::from_tensor(&Tensor::rand(-1f64, 1., (2, 3, 9), &dev).unwrap()).unwrap();
        let grads = |x: &Tensor| {
            let x = Var::from_tensor(x).unwrap();
            let y = crate::block_circulant(&x, &r).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            [flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&r).unwrap())]
        };
        let x = Tensor::rand(-1f64, 1., (5, 27), &dev).unwrap();
        let first = grads(&x);
        for _ in 0..3 {
            grads(&(Tensor::rand(-1f64, 1., (5, 27), &dev).unwrap() * 1e3).unwrap());
            assert_eq!(grads(&x), first);
        }
    }
}
