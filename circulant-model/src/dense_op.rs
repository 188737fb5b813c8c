//! `y = x·Wᵀ + b` (optionally followed by a ReLU) as one CPU op.
//!
//! Written with candle ops, a dense layer is a matmul, two transposes and a broadcast add, and
//! its backward pass adds each intermediate gradient into a zero-filled buffer before the next;
//! this op runs one gemm forward and three products backward (`dx = g·W`, `dW = gᵀ·x`,
//! `db = Σ g`), returned packed (docs/bench/profile-2026-11-30-cpu.md).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::cpu::{f32_slice, matmul, transpose, with_scratch, Mat};

/// `relu?(x·Wᵀ + b)` for `x: (n, in)`, `W: (out, in)`, `b: (out)`, all contiguous f32 on the
/// CPU.
pub(crate) fn dense_forward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    relu: bool,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, DenseOp { relu })
}

struct DenseOp {
    relu: bool,
}

/// `(n, in, out)` of a dense call, checked.
fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, d) = x.shape().dims2()?;
    let (k, d2) = w.shape().dims2()?;
    if d != d2 {
        candle_core::bail!("dense: input {:?} for weight {:?}", x.dims(), w.dims())
    }
    Ok((n, d, k))
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, k) = dims(l1, l2)?;
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if b.len() != k {
            candle_core::bail!("dense: bias {:?} for {k} outputs", l3.dims())
        }
        let mut y = vec![0f32; n * k];
        if n < k {
            // As `yᵀ = W·xᵀ`, gemm repacks x instead of the larger W (a transposed copy of
            // AlexNet's 9216 -> 4096 weight at every call otherwise).
            with_scratch(n * k, |y_t| {
                matmul(y_t, Mat::rows(w, k, d), Mat::rows(x, n, d).t(), false, true);
                transpose(y_t, k, n, &mut y);
            });
            for row in y.chunks_mut(k) {
                for (v, b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        } else {
            for row in y.chunks_mut(k) {
                row.copy_from_slice(b);
            }
            matmul(
                &mut y,
                Mat::rows(x, n, d),
                Mat::rows(w, k, d).t(),
                true,
                true,
            );
        }
        if self.relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok((CpuStorage::F32(y), (n, k).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        // The fused ReLU passes the gradient only where the output is positive.
        let grad = if self.relu {
            grad.apply_op2_no_bwd(&res.detach(), &ReluMask)?
        } else {
            grad
        };
        let backward = DenseBackward {
            input_grad: x.track_op(),
        };
        let (x, w) = (x.detach(), w.detach());
        let packed = x.apply_op3_no_bwd(&w, &grad, &backward)?;
        let (k, wn) = (w.dim(0)?, w.elem_count());
        let grad_w = packed.narrow(0, 0, wn)?.reshape(w.shape())?;
        let grad_b = packed.narrow(0, wn, k)?;
        let grad_x = if backward.input_grad {
            Some(
                packed
                    .narrow(0, wn + k, x.elem_count())?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        Ok((grad_x, Some(grad_w), Some(grad_b)))
    }
}

/// `g` where `y > 0`, else 0.
struct ReluMask;

impl candle_core::CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, y) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if g.len() != y.len() {
            candle_core::bail!("relu mask: {:?} vs {:?}", l1.dims(), l2.dims())
        }
        let out = g
            .iter()
            .zip(y)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The gradients of [`DenseOp`] from `(x, W, g)`, packed as `[dW (out·in), db (out), dx (n·in,
/// with input_grad only)]`.
struct DenseBackward {
    input_grad: bool,
}

impl CustomOp3 for DenseBackward {
    fn name(&self) -> &'static str {
        "dense-bias-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d, k) = dims(l1, l2)?;
        let (x, w, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if l3.dims() != [n, k] {
            candle_core::bail!("dense backward: gradient {:?} for ({n}, {k})", l3.dims())
        }
        let dx_len = if self.input_grad { n * d } else { 0 };
        let mut out = vec![0f32; k * d + k + dx_len];
        let (dw, rest) = out.split_at_mut(k * d);
        let (db, dx) = rest.split_at_mut(k);
        let g_mat = Mat::rows(g, n, k);
        matmul(dw, g_mat.t(), Mat::rows(x, n, d), false, true);
        for row in g.chunks(k) {
            for (b, v) in db.iter_mut().zip(row) {
                *b += v;
            }
        }
        if self.input_grad {
            matmul(dx, g_mat, Mat::rows(w, k, d), false, true);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), len.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{host, random_var, weighted_grads};

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Values and all three gradients against a float64 loop, with and without the ReLU, for
    /// odd sizes and a single row.
    #[test]
    fn matches_float64_reference() {
        let mut rng = StdRng::seed_from_u64(3);
        for (n, d, k) in [(1, 7, 5), (13, 33, 17), (64, 100, 3)] {
            for relu in [false, true] {
                let x = random_var(&mut rng, &[n, d]);
                let w = random_var(&mut rng, &[k, d]);
                let b = random_var(&mut rng, &[k]);
                let y = dense_forward(&x, &w, &b, relu).unwrap();
                let gy = random_var(&mut rng, &[n, k]);
                let grads = weighted_grads(&y, gy.as_tensor());
                let (xs, ws, bs, gs) = (host(&x), host(&w), host(&b), host(&gy));
                let mut ry = vec![0f64; n * k];
                let (mut rdx, mut rdw, mut rdb) =
                    (vec![0f64; n * d], vec![0f64; k * d], vec![0f64; k]);
                for i in 0..n {
                    for o in 0..k {
                        let mut acc = bs[o] as f64;
                        for j in 0..d {
                            acc += xs[i * d + j] as f64 * ws[o * d + j] as f64;
                        }
                        let pass = !relu || acc > 0.0;
                        ry[i * k + o] = if pass { acc } else { 0.0 };
                        let g = if pass { gs[i * k + o] as f64 } else { 0.0 };
                        rdb[o] += g;
                        for j in 0..d {
                            rdx[i * d + j] += g * ws[o * d + j] as f64;
                            rdw[o * d + j] += g * xs[i * d + j] as f64;
                        }
                    }
                }
                for (what, got, want) in [
                    ("y", host(&y), ry),
                    ("dx", host(grads.get(&x).unwrap()), rdx),
                    ("dw", host(grads.get(&w).unwrap()), rdw),
                    ("db", host(grads.get(&b).unwrap()), rdb),
                ] {
                    assert_eq!(got.len(), want.len());
                    for (u, v) in got.iter().zip(&want) {
                        assert!(
                            (*u as f64 - v).abs() < 1e-4 * (1.0 + v.abs()),
                            "({n}, {d}, {k}) relu {relu} {what}: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }
}
