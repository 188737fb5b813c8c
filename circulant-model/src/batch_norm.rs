//! 2-d batch normalisation with running statistics.
//!
//! In train mode on CPU the normalisation runs as one fused custom op (forward and backward are
//! single passes over per-channel planes); candle's broadcast ops would reduce the gradients of
//! the per-channel operands with a slow strided reduction. On f32 CUDA tensors (feature `cuda`)
//! kernels-cuda's kernels do the same with the statistics kept on the device (no host read).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::cpu::{f32_slice, lane_sums, use_cpu_op};
use crate::error::{Error, Result};

#[cfg(feature = "cuda")]
mod cuda;

/// 2-d batch normalisation over `(N, C, H, W)` inputs.
///
/// Train mode normalises with the batch statistics (biased variance) and updates the running
/// statistics (`running = (1 - momentum) * running + momentum * batch`, unbiased batch variance,
/// like PyTorch); eval mode uses the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// PyTorch's defaults.
    pub const EPS: f64 = 1e-5;
    pub const MOMENTUM: f64 = 0.1;

    /// Wraps the four `(C)` tensors.
    pub fn new(weight: Var, bias: Var, running_mean: Var, running_var: Var) -> Result<Self> {
        let c = weight.elem_count();
        for (name, t) in [
            ("weight", &weight),
            ("bias", &bias),
            ("running_mean", &running_mean),
            ("running_var", &running_var),
        ] {
            if t.dims() != [c] {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    expected: vec![c],
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps: Self::EPS,
            momentum: Self::MOMENTUM,
        })
    }

    pub fn num_features(&self) -> usize {
        self.weight.elem_count()
    }

    /// Trainable parameters (`weight`, `bias`).
    pub fn param_count(&self) -> usize {
        2 * self.num_features()
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// Applies the layer; `train` selects batch statistics (and updates the running ones).
    /// Eval mode as a per-channel affine map `y = x·scale + shift`, both `(c)`: `scale =
    /// weight / sqrt(running_var + eps)`, `shift = bias - running_mean·scale`.
    pub(crate) fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let rm = self.running_mean.as_detached_tensor();
        let rv = self.running_var.as_detached_tensor();
        let scale = (rv + self.eps)?
            .sqrt()?
            .recip()?
            .mul(self.weight.as_tensor())?;
        let shift = self.bias.as_tensor().sub(&rm.mul(&scale)?)?;
        Ok((scale, shift))
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.num_features() {
            return Err(Error::InputShape {
                found: x.dims().to_vec(),
                expected: format!("(N, {}, H, W)", self.num_features()),
            });
        }
        if !train {
            let (scale, shift) = self.eval_affine()?;
            let (scale, shift) = (scale.reshape((1, c, 1, 1))?, shift.reshape((1, c, 1, 1))?);
            return Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?);
        }
        let count = n * h * w;
        if count < 2 {
            return Err(Error::InputShape {
                found: x.dims().to_vec(),
                expected: "more than one value per channel in train mode".into(),
            });
        }
        let (y, mean, var) = if use_cpu_op(x) {
            let x = x.contiguous()?;
            let stats = x.apply_op1_no_bwd(&BnStats)?;
            let host = stats.to_vec2::<f32>()?;
            let op = BnTrain {
                eps: self.eps,
                mean: host[0].clone(),
                var: host[1].clone(),
            };
            let y = x.apply_op3(
                &self.weight.as_tensor().contiguous()?,
                &self.bias.as_tensor().contiguous()?,
                op,
            )?;
            (y, stats.get(0)?, stats.get(1)?)
        } else if let Some(out) = self.train_device(x)? {
            out
        } else {
            self.train_tensor_ops(x)?
        };
        let m = self.momentum;
        let unbias = count as f64 / (count - 1) as f64;
        let new_mean = ((self.running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var =
            ((self.running_var.as_detached_tensor() * (1.0 - m))? + (var * (m * unbias))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(y)
    }

    /// Train-mode normalisation through the GPU kernels for f32 CUDA tensors:
    /// `(y, batch mean, biased var)`, all on the device; `None` for other tensors.
    #[cfg(feature = "cuda")]
    fn train_device(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        if !crate::cuda::use_cuda_op(x) {
            return Ok(None);
        }
        cuda::train(x, &self.weight, &self.bias, self.eps).map(Some)
    }

    /// Without the `cuda` feature there are no GPU kernels.
    #[cfg(not(feature = "cuda"))]
    fn train_device(&self, _x: &Tensor) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        Ok(None)
    }

    /// Train-mode normalisation from candle ops (any device): `(y, batch mean, biased var)`.
    pub(crate) fn train_tensor_ops(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, c, h, w) = x.dims4()?;
        let count = (n * h * w) as f64;
        // Sum over the trailing dims first: the contiguous fast path of candle's reduce.
        let mean = (x.sum_keepdim((2, 3))?.sum_keepdim(0)? / count)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim((2, 3))?.sum_keepdim(0)? / count)?;
        let scale = (var.clone() + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?;
        let y = xc
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
    }
}

/// Geometry `(N, C, H*W)` of a batch-norm input.
fn geometry(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let &[n, c, h, w] = l.dims() else {
        candle_core::bail!("batch norm: expected (N, C, H, W), got {:?}", l.dims())
    };
    Ok((n, c, h * w))
}

/// Per-channel sums over the planes of channel `ch` (f64 accumulation across planes): without
/// `b`, `(Σ (a - shift), Σ (a - shift)²)`; with `b`, `(Σ a, Σ a·(b - shift))`.
fn channel_sums(
    a: &[f32],
    b: Option<&[f32]>,
    (n, c, hw): (usize, usize, usize),
    ch: usize,
    shift: f32,
) -> (f64, f64) {
    let (mut s1, mut s2) = (0f64, 0f64);
    for i in 0..n {
        let off = (i * c + ch) * hw;
        let pa = &a[off..off + hw];
        let (t1, t2) = match b {
            None => lane_sums(pa, pa, |u, _| {
                let d = u - shift;
                (d, d * d)
            }),
            Some(b) => lane_sums(pa, &b[off..off + hw], |u, v| (u, u * (v - shift))),
        };
        s1 += f64::from(t1);
        s2 += f64::from(t2);
    }
    (s1, s2)
}

/// `x -> (2, C)`: the per-channel batch mean (row 0) and biased variance (row 1).
struct BnStats;

impl CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let g @ (n, c, hw) = geometry(l)?;
        let count = (n * hw) as f64;
        // Shifted by the channel's first value for a stable one-pass variance.
        let (mean, var): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let shift = x[ch * hw];
                let (s, ss) = channel_sums(x, None, g, ch, shift);
                let m = s / count;
                let var = (ss / count - m * m).max(0.0);
                ((f64::from(shift) + m) as f32, var as f32)
            })
            .unzip();
        Ok((CpuStorage::F32([mean, var].concat()), (2, c).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::stats(s, l)
    }
}

/// `(x, weight, bias) -> y` normalised with the batch statistics `mean`, `var` (from
/// [`BnStats`]).
struct BnTrain {
    eps: f64,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
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
        let x = f32_slice(s1, l1)?;
        let (gamma, beta) = (f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (_, c, hw) = geometry(l1)?;
        let (mean, var) = (&self.mean, &self.var);
        if mean.len() != c || gamma.len() != c || beta.len() != c {
            candle_core::bail!("batch norm: {c} channels, statistics for {}", mean.len())
        }
        let scale: Vec<f32> = (0..c)
            .map(|ch| (f64::from(gamma[ch]) / (f64::from(var[ch]) + self.eps).sqrt()) as f32)
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let ch = plane % c;
                let (m, a, b) = (mean[ch], scale[ch], beta[ch]);
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = (v - m) * a + b;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = BnBwd {
            eps: self.eps,
            mean: self.mean.clone(),
            var: self.var.clone(),
            gamma: gamma.detach().to_vec1::<f32>()?,
        };
        let packed = x
            .detach()
            .contiguous()?
            .apply_op2_no_bwd(&grad.detach().contiguous()?, &op)?;
        unpack_grads(&packed, x, self.mean.len())
    }
}

/// The `(dx, dweight, dbias)` of a backward op's packed `[dx; dweight; dbias]` for input `x`
/// with `c` channels.
type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);
fn unpack_grads(packed: &Tensor, x: &Tensor, c: usize) -> candle_core::Result<Grads3> {
    let len = x.elem_count();
    Ok((
        Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
        Some(packed.narrow(0, len, c)?),
        Some(packed.narrow(0, len + c, c)?),
    ))
}

/// `(x, dy) -> [dx, dweight, dbias]`, packed in one vector.
struct BnBwd {
    eps: f64,
    mean: Vec<f32>,
    var: Vec<f32>,
    gamma: Vec<f32>,
}

impl CustomOp2 for BnBwd {
    fn name(&self) -> &'static str {
        "batch-norm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let dy = f32_slice(s2, l2)?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("batch norm backward: {:?} vs {:?}", l1.dims(), l2.dims())
        }
        let g @ (n, c, hw) = geometry(l1)?;
        let count = (n * hw) as f64;
        let inv_std: Vec<f64> = self
            .var
            .iter()
            .map(|v| 1.0 / (f64::from(*v) + self.eps).sqrt())
            .collect();
        // dbeta = Σ dy, dgamma = Σ dy · x̂ with x̂ = (x - mean) · inv_std.
        let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (s, sx) = channel_sums(dy, Some(x), g, ch, self.mean[ch]);
                (s, sx * inv_std[ch])
            })
            .unzip();
        // dx = gamma · inv_std · (dy - dbeta / M - x̂ · dgamma / M).
        // Room for the two parameter gradients packed after dx.
        let mut dx = Vec::with_capacity(x.len() + 2 * c);
        dx.resize(x.len(), 0f32);
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
            .enumerate()
            .for_each(|(plane, (dp, (xp, gp)))| {
                let ch = plane % c;
                let k = (f64::from(self.gamma[ch]) * inv_std[ch]) as f32;
                let m = self.mean[ch];
                let b = (dbeta[ch] / count) as f32;
                let a = (dgamma[ch] * inv_std[ch] / count) as f32;
                for ((o, &xv), &gv) in dp.iter_mut().zip(xp).zip(gp) {
                    *o = k * (gv - b - (xv - m) * a);
                }
            });
        dx.extend(dgamma.iter().chain(&dbeta).map(|&v| v as f32));
        let len = dx.len();
        Ok((CpuStorage::F32(dx), len.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::host;
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn layer(c: usize, rng: &mut StdRng) -> BatchNorm2d {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..c).map(|_| rng.random_range(0.5..1.5)).collect();
        let b: Vec<f32> = (0..c).map(|_| rng.random_range(-0.5..0.5)).collect();
        BatchNorm2d::new(
            Var::from_vec(w, c, &dev).unwrap(),
            Var::from_vec(b, c, &dev).unwrap(),
            Var::from_vec(vec![0f32; c], c, &dev).unwrap(),
            Var::from_vec(vec![1f32; c], c, &dev).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn matches_host_reference() {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(0);
        let (n, c, hw) = (2, 3, 4);
        let vals: Vec<f32> = (0..n * c * hw)
            .map(|_| rng.random_range(-2.0..3.0))
            .collect();
        let x = Tensor::from_vec(vals.clone(), (n, c, 2, 2), &dev).unwrap();
        let bn = layer(c, &mut rng);
        let (wv, bv) = (host(bn.weight()), host(bn.bias()));
        // Three train steps on the same batch; check the last output and the running stats.
        bn.forward(&x, true).unwrap();
        bn.forward(&x, true).unwrap();
        let y = host(&bn.forward(&x, true).unwrap());
        let rm = host(bn.running_mean());
        let rv = host(bn.running_var());
        let ye = host(&bn.forward(&x, false).unwrap());
        for ch in 0..c {
            let xs: Vec<f32> = (0..n)
                .flat_map(|i| vals[(i * c + ch) * hw..][..hw].to_vec())
                .collect();
            let m = xs.iter().sum::<f32>() / xs.len() as f32;
            let var = xs.iter().map(|v| (v - m).powi(2)).sum::<f32>() / xs.len() as f32;
            let (mut erm, mut erv) = (0f32, 1f32);
            for _ in 0..3 {
                erm = 0.9 * erm + 0.1 * m;
                erv = 0.9 * erv + 0.1 * var * 8.0 / 7.0;
            }
            assert!((rm[ch] - erm).abs() < 1e-5 && (rv[ch] - erv).abs() < 1e-5);
            for i in 0..n {
                for p in 0..hw {
                    let idx = (i * c + ch) * hw + p;
                    let e = (vals[idx] - m) / (var + 1e-5).sqrt() * wv[ch] + bv[ch];
                    assert!((y[idx] - e).abs() < 1e-4, "train {} vs {e}", y[idx]);
                    let e = (vals[idx] - erm) / (erv + 1e-5).sqrt() * wv[ch] + bv[ch];
                    assert!((ye[idx] - e).abs() < 1e-4, "eval {} vs {e}", ye[idx]);
                }
            }
        }
    }

    /// The fused CPU op and the candle-ops version agree, forward and gradients.
    /// The batch statistics of both paths (the CPU op's and the tensor ops' that other devices
    /// run) against a float64 loop, including a constant channel (variance 0).
    #[test]
    fn batch_statistics_match_float64_reference() {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(4);
        let (n, c, h, w) = (3, 3, 5, 7);
        let mut vals: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.random_range(-1.0..1.0) + 5.0)
            .collect();
        for b in 0..n {
            vals[(b * c + 1) * h * w..][..h * w].fill(2.5);
        }
        let x = Tensor::from_vec(vals.clone(), (n, c, h, w), &dev).unwrap();
        let (mut want_mean, mut want_var) = (Vec::new(), Vec::new());
        for ch in 0..c {
            let xs: Vec<f64> = (0..n)
                .flat_map(|b| {
                    vals[(b * c + ch) * h * w..][..h * w]
                        .iter()
                        .map(|&v| v as f64)
                })
                .collect();
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            want_mean.push(m);
            want_var.push(xs.iter().map(|v| (v - m).powi(2)).sum::<f64>() / xs.len() as f64);
        }
        let cpu = x
            .apply_op1_no_bwd(&BnStats)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (_, mean, var) = layer(c, &mut rng).train_tensor_ops(&x).unwrap();
        for (path, got_mean, got_var) in [
            ("cpu op", cpu[0].clone(), cpu[1].clone()),
            ("tensor ops", host(&mean), host(&var)),
        ] {
            for ch in 0..c {
                let (m, v) = (got_mean[ch] as f64, got_var[ch] as f64);
                assert!((m - want_mean[ch]).abs() < 1e-5, "{path} mean {ch}: {m}");
                assert!((v - want_var[ch]).abs() < 1e-5, "{path} var {ch}: {v}");
            }
            assert_eq!(got_var[1], 0.0, "{path}: the constant channel's variance");
        }
    }

    #[test]
    fn fused_matches_tensor_ops() {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(1);
        let (n, c, h, w) = (3, 4, 5, 6);
        let vals: Vec<f32> = (0..n * c * h * w)
            .map(|i| rng.random_range(-1.0..1.0) + (i % 3) as f32 + 10.0)
            .collect();
        let x = Var::from_vec(vals, (n, c, h, w), &dev).unwrap();
        let bn = layer(c, &mut rng);
        let wts: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let wts = Tensor::from_vec(wts, (n, c, h, w), &dev).unwrap();

        let y = bn.forward(&x, true).unwrap();
        let (y_ref, mean, var) = bn.train_tensor_ops(&x).unwrap();
        let g = (&y * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&y_ref * &wts)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let close = |what: &str, a: Vec<f32>, b: Vec<f32>| {
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-3 * (1.0 + v.abs()), "{what}: {u} vs {v}");
            }
        };
        close("y", host(&y), host(&y_ref));
        close("mean", host(&mean), {
            let rm = host(bn.running_mean());
            rm.iter().map(|v| v / 0.1).collect()
        });
        assert!(host(&var).iter().all(|v| *v > 0.0));
        for (what, t) in [
            ("dx", x.as_tensor()),
            ("dweight", bn.weight().as_tensor()),
            ("dbias", bn.bias().as_tensor()),
        ] {
            close(what, host(g.get(t).unwrap()), host(g_ref.get(t).unwrap()));
        }
    }
}
