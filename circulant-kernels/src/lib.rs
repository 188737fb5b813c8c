//! Circulant and block-circulant projections as differentiable candle ops.
//!
//! The circulant projection of Cheng et al. (ICCV 2015, "An exploration of parameter redundancy
//! in deep networks with circulant projections") replaces a dense `d × d` weight by `circ(r)`,
//! computed with real FFTs in O(d log d). [`block_circulant`] generalises it to a `p × q` grid of
//! `b × b` circulant blocks (CirCNN); [`circulant`] is the case `p = q = 1`.
//!
//! Both functions are differentiable in `x` and `r` through candle's autograd. CPU tensors of
//! dtype f32 and f64 are computed exactly in that dtype; f16 and bf16 are computed in f32 and
//! returned in the input dtype. With the `cuda` feature, CUDA tensors run on the GPU.

mod buffers;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod erased;
mod fft;
mod op;
mod parallel;
mod simd;
#[doc(hidden)]
pub mod testing;

use candle_core::{bail, DType, Device, Result, Tensor};
use kernels_cuda::Dims;

/// Block-circulant projection: `x: (..., q*b)`, `r: (p, q, b)` → `y: (..., p*b)` with
/// `y[n, i*b + s] = Σ_j Σ_t r[i, j, (s - t) mod b] · x[n, j*b + t]`.
///
/// Block `(i, j)` of the weight matrix is the circulant matrix whose first column is `r[i, j, :]`.
pub fn block_circulant(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    let dims = Dims::new("block_circulant", x.dims(), r.dims())?;
    apply(x, r, dims, "block_circulant")
}

/// Circulant projection `y = circ(r) · x`: `x: (..., n)`, `r: (n,)` → `y: (..., n)`, where
/// `circ(r)` is the `n × n` circulant matrix whose first column is `r`.
pub fn circulant(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    let &[n] = r.dims() else {
        bail!(
            "circulant: r must have rank 1 (n,), got shape {:?}",
            r.dims()
        )
    };
    let dims = Dims::new("circulant", x.dims(), &[1, 1, n])?;
    apply(x, &r.reshape((1, 1, n))?, dims, "circulant")
}

/// The weight of a (block-)circulant projection with its spectra computed once, for repeated
/// inference calls with a fixed `r` (eval mode): [`WeightSpectra::apply`] then transforms only
/// `x`. It holds a snapshot of `r`: later changes to a variable `r` are not seen.
///
/// CPU f32 / f64 weights keep their spectra; other weights (f16, bf16, CUDA) keep `r` and
/// `apply` calls [`block_circulant`]. When `x` tracks gradients, `apply` also calls
/// [`block_circulant`] (differentiable in `x`; `r` is a constant).
#[derive(Clone)]
pub struct WeightSpectra {
    r: Tensor,
    spectra: Option<erased::Erased>,
}

impl std::fmt::Debug for WeightSpectra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightSpectra")
            .field("r_shape", &self.r.dims())
            .field("dtype", &self.r.dtype())
            .field("precomputed", &self.spectra.is_some())
            .finish()
    }
}

impl WeightSpectra {
    /// For [`block_circulant`]`(x, r)` with `r: (p, q, b)`.
    pub fn block(r: &Tensor) -> Result<Self> {
        let &[p, q, b] = r.dims() else {
            bail!(
                "block_circulant: r must have rank 3 (p, q, b), got shape {:?}",
                r.dims()
            )
        };
        Dims::new("block_circulant", &[q * b], &[p, q, b])?;
        // A copy: a snapshot even of a variable updated in place later.
        let r = r.detach().copy()?;
        let spectra = match (r.device(), r.dtype()) {
            (Device::Cpu, DType::F32 | DType::F64) => Some(op::cpu_weight_spectra(&r)?),
            _ => None,
        };
        Ok(Self { r, spectra })
    }

    /// For [`circulant`]`(x, r)` with `r: (n,)`.
    pub fn circulant(r: &Tensor) -> Result<Self> {
        let &[n] = r.dims() else {
            bail!(
                "circulant: r must have rank 1 (n,), got shape {:?}",
                r.dims()
            )
        };
        Self::block(&r.reshape((1, 1, n))?)
    }

    /// `block_circulant(x, r)`: `x: (..., q*b)` → `(..., p*b)`, same dtype as `r`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let Some(spectra) = &self.spectra else {
            return block_circulant(x, &self.r);
        };
        check_device(x.device(), self.r.device(), "block_circulant")?;
        if x.track_op() {
            return block_circulant(x, &self.r);
        }
        if x.dtype() != self.r.dtype() {
            bail!(
                "block_circulant: x is {:?} and r is {:?}: both must have the same dtype",
                x.dtype(),
                self.r.dtype()
            )
        }
        let &[p, q, b] = self.r.dims() else {
            bail!(
                "block_circulant: internal error: r of rank {}",
                self.r.rank()
            )
        };
        Dims::new("block_circulant", x.dims(), &[p, q, b])?;
        x.contiguous()?.apply_op1_no_bwd(&op::Precomputed {
            r_dims: [p, q, b],
            spectra,
        })
    }

    /// The weight these spectra are of (`(p, q, b)`).
    pub fn r(&self) -> &Tensor {
        &self.r
    }
}

fn apply(x: &Tensor, r: &Tensor, dims: Dims, op: &str) -> Result<Tensor> {
    check_device(x.device(), r.device(), op)?;
    match (x.dtype(), r.dtype()) {
        (DType::F32, DType::F32) | (DType::F64, DType::F64) => {
            let keep_spectra = x.track_op() || r.track_op();
            x.contiguous()?
                .apply_op2(&r.contiguous()?, op::Forward::new(dims, keep_spectra))
        }
        (dt @ (DType::F16 | DType::BF16), dr) if dr == dt => {
            let (x32, r32) = (x.to_dtype(DType::F32)?, r.to_dtype(DType::F32)?);
            apply(&x32, &r32, dims, op)?.to_dtype(dt)
        }
        (dx, dr) => bail!(
            "{op}: x is {dx:?} and r is {dr:?}: both must have the same dtype, one of f32, f64, f16, bf16"
        ),
    }
}

fn check_device(x: &Device, r: &Device, op: &str) -> Result<()> {
    if !x.same_device(r) {
        bail!("{op}: x is on {x:?} but r is on {r:?}: both must be on the same device")
    }
    match x {
        Device::Cpu => Ok(()),
        Device::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
        Device::Cuda(_) => bail!(
            "{op}: CUDA tensors need the `cuda` feature of circulant-kernels (build with --features cuda)"
        ),
        Device::Metal(_) => bail!("{op}: Metal devices are not supported; use the CPU or CUDA"),
    }
}
