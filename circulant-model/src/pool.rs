//! Max pooling with a correct backward pass.
//!
//! candle's `max_pool2d` has no backward for overlapping windows (AlexNet's 3/2) and scales the
//! gradient by `1/k²` otherwise, so it is not used. The custom op runs on f32 CPU tensors and,
//! with the `cuda` feature, f32 CUDA tensors (kernels-cuda's max pool kernels, one launch per
//! pass); f16 and bf16 tensors are pooled in f32; other tensors use candle ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, use_cpu_op, with_scratch};
use crate::cuda::use_cuda_op;
use crate::error::{Error, Result};

#[cfg(feature = "cuda")]
mod cuda;

/// Max pooling of `(N, C, H, W)` with a `k x k` window and stride `stride` (no padding, output
/// size rounded down, as PyTorch's `MaxPool2d(k, stride)`). The gradient goes to the first
/// maximum of each window.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    pool(x, k, stride, false)
}

/// `relu(max_pool2d(x))`, which equals `max_pool2d(relu(x))`, in one pass on the CPU and the
/// GPU (the gradient reaches a window's first maximum only where the output is positive).
pub fn max_pool2d_relu(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    pool(x, k, stride, true)
}

fn pool(x: &Tensor, k: usize, stride: usize, relu: bool) -> Result<Tensor> {
    check(x, k, stride)?;
    if matches!(x.dtype(), DType::F16 | DType::BF16) {
        // The f32 op, so that the gradient still goes to the first maximum: candle's ops share
        // it among tied maxima, frequent at half precision.
        let y = pool(&x.to_dtype(DType::F32)?, k, stride, relu)?;
        return Ok(y.to_dtype(x.dtype())?);
    }
    if use_cpu_op(x) || use_cuda_op(x) {
        Ok(x.contiguous()?.apply_op1(MaxPool { k, stride, relu })?)
    } else if relu {
        Ok(max_pool2d_tensor_ops(x, k, stride)?.relu()?)
    } else {
        max_pool2d_tensor_ops(x, k, stride)
    }
}

fn check(x: &Tensor, k: usize, stride: usize) -> Result<()> {
    if k == 0 || stride == 0 {
        return Err(Error::InvalidConfig(format!(
            "max pool needs k, stride >= 1, got {k}, {stride}"
        )));
    }
    let (_, _, h, w) = x.dims4()?;
    if h < k || w < k {
        return Err(Error::InputShape {
            found: x.dims().to_vec(),
            expected: format!("spatial size >= {k} for a {k}x{k} max pool"),
        });
    }
    Ok(())
}

/// The same function from differentiable candle ops (any device): non-overlapping windows
/// reshape and reduce, overlapping ones take the maximum of `k` strided views per spatial dim.
pub(crate) fn max_pool2d_tensor_ops(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    check(x, k, stride)?;
    let (n, c, h, w) = x.dims4()?;
    if k == stride {
        let (oh, ow) = (h / k, w / k);
        let x = x.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?;
        return Ok(x
            .reshape((n, c, oh, k, ow, k))?
            .max_keepdim(5)?
            .max_keepdim(3)?
            .reshape((n, c, oh, ow))?);
    }
    let x = max_pool_dim(x, 2, k, stride)?;
    max_pool_dim(&x, 3, k, stride)
}

/// `out[.., i, ..] = max_{d < k} x[.., stride * i + d, ..]` along `dim`.
fn max_pool_dim(x: &Tensor, dim: usize, k: usize, stride: usize) -> Result<Tensor> {
    let size = x.dim(dim)?;
    let o = (size - k) / stride + 1;
    // View `d` is `x[d .. d + stride * o]` reshaped to `(o, stride)`, column 0. The zero padding
    // only fills columns > 0 of the last row, which are never selected.
    let need = k - 1 + stride * o;
    let x = x.pad_with_zeros(dim, 0, need.saturating_sub(size))?;
    let view = |d: usize| -> Result<Tensor> {
        let v = x.narrow(dim, d, stride * o)?;
        let mut shape = v.dims().to_vec();
        shape[dim] = o;
        shape.insert(dim + 1, stride);
        Ok(v.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?)
    };
    let mut out = view(0)?;
    for d in 1..k {
        out = out.maximum(&view(d)?)?;
    }
    Ok(out)
}

/// Geometry of one pooling call.
#[derive(Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    s: usize,
}

impl Geom {
    /// The number of planes (`N·C`) and the geometry of `(N, C, H, W)` input `dims`.
    fn new(dims: &[usize], k: usize, s: usize) -> candle_core::Result<(usize, Self)> {
        let &[n, c, h, w] = dims else {
            candle_core::bail!("max pool: expected (N, C, H, W), got {dims:?}")
        };
        if k == 0 || s == 0 || h < k || w < k {
            candle_core::bail!("max pool: a {k}x{k} window, stride {s}, over {dims:?}")
        }
        let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
        Ok((n * c, Self { h, w, oh, ow, k, s }))
    }

    /// Index (within the plane) of the first maximum of output `(i, j)`'s window.
    #[inline]
    fn argmax(&self, plane: &[f32], i: usize, j: usize) -> usize {
        let mut best = i * self.s * self.w + j * self.s;
        let mut best_v = plane[best];
        for di in 0..self.k {
            let row = (i * self.s + di) * self.w + j * self.s;
            for (dj, &v) in plane[row..row + self.k].iter().enumerate() {
                if v > best_v {
                    best_v = v;
                    best = row + dj;
                }
            }
        }
        best
    }
}

struct MaxPool {
    k: usize,
    stride: usize,
    relu: bool,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (planes, g) = Geom::new(l.dims(), self.k, self.stride)?;
        let mut out = vec![0f32; planes * g.oh * g.ow];
        let floor = if self.relu { 0.0 } else { f32::NEG_INFINITY };
        // The larger of two values, the first on a tie or NaN (as `argmax` scans a window).
        let larger = |m: f32, v: f32| if v > m { v } else { m };
        out.par_chunks_mut(g.oh * g.ow)
            .zip(x.par_chunks(g.h * g.w))
            .for_each(|(o, plane)| {
                with_scratch(g.w, |rows| {
                    for (i, o) in o.chunks_mut(g.ow).enumerate() {
                        // The maximum over the window's k rows of each input column, then over
                        // each window's k columns.
                        let top = i * g.s * g.w;
                        rows.copy_from_slice(&plane[top..top + g.w]);
                        for di in 1..g.k {
                            let row = &plane[top + di * g.w..][..g.w];
                            for (m, &v) in rows.iter_mut().zip(row) {
                                *m = larger(*m, v);
                            }
                        }
                        for (j, o) in o.iter_mut().enumerate() {
                            let win = &rows[j * g.s..][..g.k];
                            *o = win[1..]
                                .iter()
                                .fold(win[0], |m, &v| larger(m, v))
                                .max(floor);
                        }
                    }
                })
            });
        let mut dims = l.dims().to_vec();
        dims[2] = g.oh;
        dims[3] = g.ow;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(s, l, self.k, self.stride, self.relu)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dx = arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolBwd {
                k: self.k,
                stride: self.stride,
                relu: self.relu,
            },
        )?;
        Ok(Some(dx))
    }
}

/// `(x, grad_out) -> grad_x`: each output's gradient goes to its window's first maximum (with
/// `relu`, only where that maximum is positive).
struct MaxPoolBwd {
    k: usize,
    stride: usize,
    relu: bool,
}

impl CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let gy = f32_slice(s2, l2)?;
        let (planes, g) = Geom::new(l1.dims(), self.k, self.stride)?;
        if gy.len() != planes * g.oh * g.ow {
            candle_core::bail!("max pool backward: gradient shape {:?}", l2.dims())
        }
        let mut dx = vec![0f32; x.len()];
        let relu = self.relu;
        dx.par_chunks_mut(g.h * g.w)
            .zip(x.par_chunks(g.h * g.w))
            .zip(gy.par_chunks(g.oh * g.ow))
            .for_each(|((d, plane), go)| {
                for i in 0..g.oh {
                    for j in 0..g.ow {
                        let best = g.argmax(plane, i, j);
                        if !relu || plane[best] > 0.0 {
                            d[best] += go[i * g.ow + j];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward((s1, l1), (s2, l2), self.k, self.stride, self.relu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Naive max pool and the gradient of `sum(out * weights)` (distinct inputs).
    fn naive(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        k: usize,
        s: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
        let mut out = Vec::new();
        let mut grad = vec![0f32; x.len()];
        for b in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = b * h * w + s * i * w + s * j;
                    for di in 0..k {
                        for dj in 0..k {
                            let idx = b * h * w + (s * i + di) * w + s * j + dj;
                            if x[idx] > x[best] {
                                best = idx;
                            }
                        }
                    }
                    grad[best] += (out.len() % 7) as f32 + 1.0;
                    out.push(x[best]);
                }
            }
        }
        (out, grad)
    }

    #[test]
    fn matches_naive() {
        let dev = Device::Cpu;
        for (h, w, k, s) in [
            (7, 7, 3, 2),
            (13, 13, 3, 2),
            (8, 9, 3, 2),
            (6, 5, 2, 1),
            (8, 8, 2, 2),
            (9, 11, 3, 3),
        ] {
            let dims = (2, 3, h, w);
            let len = 2 * 3 * h * w;
            // A permutation of 0..len (7919 is prime and larger than len): distinct values.
            let vals: Vec<f32> = (0..len).map(|i| ((i * 7919 + 11) % len) as f32).collect();
            let (want, want_grad) = naive(&vals, dims, k, s);
            let x = Var::from_vec(vals, dims, &dev).unwrap();
            for (path, y) in [
                ("cpu op", max_pool2d(&x, k, s).unwrap()),
                ("tensor ops", max_pool2d_tensor_ops(&x, k, s).unwrap()),
                // All inputs are >= 0 here: the fused ReLU changes nothing.
                ("cpu op + relu", max_pool2d_relu(&x, k, s).unwrap()),
            ] {
                let case = format!("{path} {h}x{w} k{k} s{s}");
                assert_eq!(y.dims(), [2, 3, (h - k) / s + 1, (w - k) / s + 1], "{case}");
                let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, want, "{case}");
                let wts: Vec<f32> = (0..got.len()).map(|i| (i % 7) as f32 + 1.0).collect();
                let wts = Tensor::from_vec(wts, y.dims(), &dev).unwrap();
                let g = (&y * &wts).unwrap().sum_all().unwrap().backward().unwrap();
                let g = g.get(&x).unwrap().flatten_all().unwrap();
                assert_eq!(g.to_vec1::<f32>().unwrap(), want_grad, "gradient {case}");
            }
        }
        let small = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(max_pool2d(&small, 3, 2).is_err());
        assert!(max_pool2d(&small, 0, 2).is_err());
    }

    /// The fused ReLU equals candle's `relu` after (and before) the pool, values and gradients,
    /// on inputs of both signs.
    #[test]
    fn fused_relu_matches_separate_relu() {
        let dev = Device::Cpu;
        for (h, w, k, s) in [(7, 7, 3, 2), (8, 8, 2, 2), (9, 11, 3, 3)] {
            let len = 2 * 3 * h * w;
            let vals: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 + 11) % len) as f32 - len as f32 / 2.0)
                .collect();
            let x = Var::from_vec(vals, (2, 3, h, w), &dev).unwrap();
            let fused = max_pool2d_relu(&x, k, s).unwrap();
            let wts = Tensor::from_vec(
                (0..fused.elem_count())
                    .map(|i| (i % 5) as f32 - 2.0)
                    .collect(),
                fused.dims(),
                &dev,
            )
            .unwrap();
            let grad_of = |y: &Tensor| {
                let g = (y * &wts).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let host = |y: &Tensor| y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for reference in [
                max_pool2d_tensor_ops(&x, k, s).unwrap().relu().unwrap(),
                max_pool2d_tensor_ops(&x.relu().unwrap(), k, s).unwrap(),
            ] {
                assert_eq!(host(&fused), host(&reference), "{h}x{w} k{k} s{s}");
                assert_eq!(grad_of(&fused), grad_of(&reference), "{h}x{w} k{k} s{s}");
            }
        }
    }

    /// The op's own geometry refuses what `pool` refuses, so no call reaches it with a window
    /// larger than the input.
    #[test]
    fn geometry_refuses_windows_that_do_not_fit() {
        assert!(Geom::new(&[2, 3, 8, 8], 3, 2).is_ok());
        for (dims, k, s) in [
            (&[1, 1, 2, 8][..], 3, 1),
            (&[1, 1, 8, 2][..], 3, 1),
            (&[1, 1, 8, 8][..], 0, 1),
            (&[1, 1, 8, 8][..], 2, 0),
            (&[1, 8, 8][..], 2, 2),
        ] {
            assert!(Geom::new(dims, k, s).is_err(), "{dims:?} k{k} s{s}");
        }
    }

    /// Half-precision inputs with tied maxima: each window's gradient reaches one element, as
    /// in f32, not every tied one.
    #[test]
    fn half_precision_sends_each_gradient_to_one_maximum() -> Result<()> {
        let x = Var::from_tensor(&Tensor::ones((1, 2, 4, 4), DType::F32, &Device::Cpu)?)?;
        for (dtype, relu) in [
            (DType::F16, false),
            (DType::F16, true),
            (DType::BF16, false),
        ] {
            let h = x.to_dtype(dtype)?;
            let y = if relu {
                max_pool2d_relu(&h, 2, 2)?
            } else {
                max_pool2d(&h, 2, 2)?
            };
            assert_eq!(y.dtype(), dtype);
            let grads = y.to_dtype(DType::F32)?.sum_all()?.backward()?;
            let g = grads.get(&x).expect("gradient");
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            // 2 planes of 2x2 windows: 8 ones, the rest zeros.
            assert_eq!(
                g.iter().filter(|&&v| v == 1.0).count(),
                8,
                "{dtype:?}: {g:?}"
            );
            assert_eq!(
                g.iter().filter(|&&v| v == 0.0).count(),
                24,
                "{dtype:?}: {g:?}"
            );
        }
        Ok(())
    }
}
