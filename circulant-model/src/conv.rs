//! 2-d convolution with a fast CPU backward pass.
//!
//! candle computes the input gradient of `conv2d` with `conv_transpose2d`, whose CPU kernel is a
//! direct loop several times slower than the forward convolution. For stride 1 the input
//! gradient is itself a convolution (of the output gradient with the spatially flipped,
//! channel-transposed kernel), so on CPU (f32) this layer runs candle's `conv2d` plus the bias
//! inside a custom op whose backward computes the input gradient with `conv2d` (skipped when the
//! input needs none), the weight gradient as one matrix product with the im2col matrix of the
//! input, and the bias gradient with a contiguous reduction.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::cpu::{f32_slice, use_cpu_op};
use crate::error::{Error, Result};

/// A 2-d convolution without groups or dilation: weight `(c_out, c_in, k, k)`, bias `(c_out)`.
#[derive(Clone, Debug)]
pub struct Conv2dLayer {
    weight: Var,
    bias: Var,
    padding: usize,
    stride: usize,
}

impl Conv2dLayer {
    /// Wraps the weight `(c_out, c_in, k, k)` and bias `(c_out)`.
    pub fn new(weight: Var, bias: Var, padding: usize, stride: usize) -> Result<Self> {
        let (c_out, _, kh, kw) = weight.dims4()?;
        if kh != kw || bias.dims() != [c_out] || stride == 0 {
            return Err(Error::InvalidConfig(format!(
                "conv weight {:?} / bias {:?} / stride {stride} not supported",
                weight.dims(),
                bias.dims()
            )));
        }
        Ok(Self {
            weight,
            bias,
            padding,
            stride,
        })
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// Trainable parameters.
    pub fn param_count(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }

    /// `x: (N, c_in, H, W)` -> `(N, c_out, H', W')`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c_in, _, _) = x.dims4()?;
        let (c_out, wc_in, _, _) = self.weight.dims4()?;
        if c_in != wc_in {
            return Err(Error::InputShape {
                found: x.dims().to_vec(),
                expected: format!("(N, {wc_in}, H, W) for a conv with {c_out} outputs"),
            });
        }
        if use_cpu_op(x) && use_cpu_op(&self.weight) {
            let op = Conv2dOp {
                padding: self.padding,
                stride: self.stride,
            };
            Ok(x.contiguous()?.apply_op3(
                &self.weight.as_tensor().contiguous()?,
                &self.bias.as_tensor().contiguous()?,
                op,
            )?)
        } else {
            let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
            Ok(y.broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)?)
        }
    }
}

/// `conv2d(x, w) + b` on CPU (f32) with a conv2d-based backward.
struct Conv2dOp {
    padding: usize,
    stride: usize,
}

/// A detached CPU tensor holding a copy of a contiguous f32 custom-op input.
fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    Tensor::from_slice(f32_slice(s, l)?, l.shape(), &Device::Cpu)
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-bias"
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
        let x = cpu_tensor(s1, l1)?;
        let w = cpu_tensor(s2, l2)?;
        let bias = f32_slice(s3, l3)?;
        let y = x.conv2d(&w, self.padding, self.stride, 1, 1)?;
        let (_, c_out, oh, ow) = y.dims4()?;
        if bias.len() != c_out {
            candle_core::bail!("conv2d: bias {:?} for {c_out} channels", l3.dims())
        }
        let mut out = y.flatten_all()?.to_vec1::<f32>()?;
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, o)| {
                let b = bias[plane % c_out];
                o.iter_mut().for_each(|v| *v += b);
            });
        Ok((CpuStorage::F32(out), y.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x_tracked = x.track_op();
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach().contiguous()?);
        let (_, _, k, _) = w.dims4()?;
        let (p, s) = (self.padding, self.stride);

        let grad_b = grad.sum_keepdim((2, 3))?.sum(0)?.flatten_all()?;

        // dW = G · cols, with G the output gradient as (c_out, N·L) and cols the im2col matrix
        // (N·L, c_in·k·k) of the input: one large matrix product.
        let grad_w = {
            let (n, c_in, h, wd) = x.dims4()?;
            let (_, c_out, oh, ow) = grad.dims4()?;
            let g = Geometry {
                c_in,
                h,
                w: wd,
                k,
                padding: p,
                stride: s,
                oh,
                ow,
            };
            let x_host = x.flatten_all()?.to_vec1::<f32>()?;
            let cols = Tensor::from_vec(
                im2col(&x_host, n, &g),
                (n * oh * ow, c_in * k * k),
                x.device(),
            )?;
            let g_t = grad
                .reshape((n, c_out, oh * ow))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((c_out, n * oh * ow))?;
            g_t.matmul(&cols)?.reshape((c_out, c_in, k, k))?
        };

        let grad_x = if !x_tracked {
            // The input is plain data (e.g. the images): no gradient needed.
            None
        } else if s == 1 && p < k {
            // The convolution of the gradient with the flipped, transposed kernel.
            let w_t = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
            Some(grad.conv2d(&w_t, k - 1 - p, 1, 1, 1)?)
        } else {
            // candle's conv_transpose2d takes one output padding for both dims: use the larger
            // one and trim (extra output padding only appends rows/columns).
            let (h, wd) = (x.dim(2)?, x.dim(3)?);
            let out_h = (grad.dim(2)? - 1) * s + k - 2 * p;
            let out_w = (grad.dim(3)? - 1) * s + k - 2 * p;
            let out_padding = (h - out_h).max(wd - out_w);
            Some(
                grad.conv_transpose2d(&w, p, out_padding, s, 1)?
                    .narrow(2, 0, h)?
                    .narrow(3, 0, wd)?,
            )
        };
        Ok((grad_x, Some(grad_w.contiguous()?), Some(grad_b)))
    }
}

/// Geometry of one convolution.
struct Geometry {
    c_in: usize,
    h: usize,
    w: usize,
    k: usize,
    padding: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

/// The im2col matrix of `x (n, c_in, h, w)`: row `(img, oy, ox)`, column `(c, ky, kx)` holds
/// `x[img, c, oy·stride + ky - padding, ox·stride + kx - padding]` (0 outside the image).
fn im2col(x: &[f32], n: usize, g: &Geometry) -> Vec<f32> {
    let ckk = g.c_in * g.k * g.k;
    let per_image = g.oh * g.ow * ckk;
    let mut cols = vec![0f32; n * per_image];
    cols.par_chunks_mut(per_image)
        .zip(x.par_chunks(g.c_in * g.h * g.w))
        .for_each(|(out, img)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let row = &mut out[(oy * g.ow + ox) * ckk..][..ckk];
                    for c in 0..g.c_in {
                        for ky in 0..g.k {
                            let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                            if iy < 0 || iy >= g.h as isize {
                                continue;
                            }
                            let src = &img[(c * g.h + iy as usize) * g.w..][..g.w];
                            let dst = &mut row[(c * g.k + ky) * g.k..][..g.k];
                            for (kx, d) in dst.iter_mut().enumerate() {
                                let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                if ix >= 0 && ix < g.w as isize {
                                    *d = src[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        });
    cols
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random_var(rng: &mut StdRng, shape: &[usize]) -> Var {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn host(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Forward and gradients equal candle's own conv2d (whose backward uses conv_transpose2d).
    #[test]
    fn matches_candle_conv2d() {
        let mut rng = StdRng::seed_from_u64(0);
        for (c_in, c_out, h, w, k, p, s) in [
            (3, 4, 9, 9, 3, 1, 1),
            (2, 3, 8, 7, 5, 0, 1),
            (2, 3, 8, 8, 5, 2, 1),
            (3, 2, 23, 23, 11, 2, 4),
            (2, 2, 10, 10, 3, 1, 2),
            (2, 2, 9, 9, 3, 1, 2),
        ] {
            let x = random_var(&mut rng, &[2, c_in, h, w]);
            let wt = random_var(&mut rng, &[c_out, c_in, k, k]);
            let b = random_var(&mut rng, &[c_out]);
            let conv = Conv2dLayer::new(wt.clone(), b.clone(), p, s).unwrap();
            let y = conv.forward(&x).unwrap();
            let y_ref = x
                .conv2d(&wt, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(y.dims(), y_ref.dims());
            let g = random_var(&mut rng, y.dims());
            let grads = (&y * g.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads_ref = (&y_ref * g.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let case = format!("c_in {c_in} c_out {c_out} {h}x{w} k{k} p{p} s{s}");
            for (what, a, b) in [
                ("y", host(&y), host(&y_ref)),
                (
                    "dx",
                    host(grads.get(&x).unwrap()),
                    host(grads_ref.get(&x).unwrap()),
                ),
                (
                    "dw",
                    host(grads.get(&wt).unwrap()),
                    host(grads_ref.get(&wt).unwrap()),
                ),
                (
                    "db",
                    host(grads.get(&b).unwrap()),
                    host(grads_ref.get(&b).unwrap()),
                ),
            ] {
                for (u, v) in a.iter().zip(&b) {
                    assert!(
                        (u - v).abs() < 1e-4 * (1.0 + v.abs()),
                        "{case} {what}: {u} vs {v}"
                    );
                }
            }
        }
        // Plain data as input: no input gradient, same weight gradient.
        let x = Tensor::ones((1, 2, 6, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let wt = random_var(&mut rng, &[3, 2, 3, 3]);
        let b = random_var(&mut rng, &[3]);
        let conv = Conv2dLayer::new(wt.clone(), b, 1, 1).unwrap();
        let grads = conv
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        let y_ref = x.conv2d(&wt, 1, 1, 1, 1).unwrap();
        let grads_ref = y_ref.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            host(grads.get(&wt).unwrap()).len(),
            host(grads_ref.get(&wt).unwrap()).len()
        );
        for (u, v) in host(grads.get(&wt).unwrap())
            .iter()
            .zip(&host(grads_ref.get(&wt).unwrap()))
        {
            assert!(
                (u - v).abs() < 1e-4 * (1.0 + v.abs()),
                "plain input dw: {u} vs {v}"
            );
        }
    }
}
