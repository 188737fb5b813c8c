//! The candle custom ops: `Forward` (differentiable) and `Backward` (packed dx and dr).

use crate::dims::Dims;
use crate::{cpu, fft::Real};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `y = block_circulant(x, r)`; both inputs are contiguous (the public functions ensure it).
pub(crate) struct Forward {
    pub dims: Dims,
}

/// `[dx ; dr]` flattened, from `(x, r, g)`.
pub(crate) struct Backward {
    pub dims: Dims,
}

/// The contiguous data of a CPU tensor of element type `T`.
fn data<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("block_circulant: internal error: non-contiguous input {l:?}"),
    }
}

fn run<T: Real + candle_core::WithDType>(
    inputs: &[(&CpuStorage, &Layout)],
    kernel: impl FnOnce(&[&[T]]) -> Result<Vec<T>>,
) -> Result<CpuStorage> {
    let slices = inputs
        .iter()
        .map(|(s, l)| data::<T>(s, l))
        .collect::<Result<Vec<_>>>()?;
    Ok(T::to_cpu_storage_owned(kernel(&slices)?))
}

fn dtype_error(op: &str, storages: &[&CpuStorage]) -> candle_core::Error {
    let dtypes: Vec<_> = storages.iter().map(|s| s.dtype()).collect();
    candle_core::Error::Msg(format!(
        "{op}: unsupported dtypes {dtypes:?}: inputs must all be f32 or all f64"
    ))
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
        let d = self.dims;
        let inputs = [(s1, l1), (s2, l2)];
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                run::<f32>(&inputs, |v| cpu::forward(v[0], v[1], d))?
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                run::<f64>(&inputs, |v| cpu::forward(v[0], v[1], d))?
            }
            _ => return Err(dtype_error(self.name(), &[s1, s2])),
        };
        Ok((out, d.out_shape(l1.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::forward(s1, l1, s2, l2, self.dims)?;
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
        let g = g.contiguous()?;
        let packed = x.apply_op3_no_bwd(r, &g, &Backward { dims: d })?;
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
        let d = self.dims;
        let inputs = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                run::<f32>(&inputs, |v| cpu::backward(v[0], v[1], v[2], d))?
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                run::<f64>(&inputs, |v| cpu::backward(v[0], v[1], v[2], d))?
            }
            _ => return Err(dtype_error(self.name(), &[s1, s2, s3])),
        };
        Ok((out, Shape::from(d.packed_grad_len())))
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
        let out = crate::cuda::backward(s1, l1, s2, l2, s3, l3, self.dims)?;
        Ok((out, Shape::from(self.dims.packed_grad_len())))
    }
}
