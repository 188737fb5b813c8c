//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter), as in PyTorch.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::fused::{self, AdamWUpdate, Moment};
use super::{restore, zeros_like, Optimizer};

/// `w *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    steps: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, weight_decay: f64) -> Result<Self> {
        Ok(AdamW {
            m: zeros_like(&params)?,
            v: zeros_like(&params)?,
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            steps: 0,
        })
    }

    /// One update; `fused` allows the one-pass ops of CPU and (feature `cuda`) CUDA tensors
    /// (tests turn them off to check the tensor-op form, which other devices run).
    fn update(&mut self, grads: &GradStore, lr: f64, fused: bool) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = grad.detach().contiguous()?;
            if fused && fused::supported(&g) {
                self.m[i].inplace_op2(
                    &g,
                    &Moment {
                        decay: b1,
                        square: false,
                    },
                )?;
                self.v[i].inplace_op2(
                    &g,
                    &Moment {
                        decay: b2,
                        square: true,
                    },
                )?;
                let update = AdamWUpdate {
                    lr,
                    weight_decay: self.weight_decay,
                    c1,
                    c2,
                    eps: self.eps,
                };
                var.as_tensor()
                    .inplace_op3(&self.m[i], &self.v[i], &update)?;
                continue;
            }
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mut w = var.as_tensor().detach();
            if self.weight_decay != 0.0 {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.eps)?)?;
            var.set(&(w - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.update(grads, lr, true)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (((n, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            out.push((format!("adam_m.{n}"), m.clone()));
            out.push((format!("adam_v.{n}"), v.clone()));
        }
        out
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        self.m = self
            .params
            .iter()
            .map(|(n, v)| restore(tensors, "adam_m", n, v))
            .collect::<Result<_>>()?;
        self.v = self
            .params
            .iter()
            .map(|(n, v)| restore(tensors, "adam_v", n, v))
            .collect::<Result<_>>()?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Both forms (one-pass CPU ops and tensor ops) against PyTorch's rule on scalars.
    #[test]
    fn matches_reference_on_a_quadratic() -> Result<()> {
        let (lr, wd) = (0.05, 0.1);
        for fused in [true, false] {
            let var = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], wd)?;
            for _ in 0..7 {
                let loss = ((var.as_tensor() - 3.0)?.sqr()?.sum_all()? * 0.5)?;
                opt.update(&loss.backward()?, lr, fused)?;
            }
            let got = var.as_tensor().to_vec1::<f64>()?;
            for (g, w0) in got.iter().zip([1.0f64, -2.0]) {
                let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
                for t in 1..=7 {
                    let gr = w - 3.0;
                    w *= 1.0 - lr * wd;
                    m = 0.9 * m + 0.1 * gr;
                    v = 0.999 * v + 0.001 * gr * gr;
                    let mh = m / (1.0 - 0.9f64.powi(t));
                    let vh = v / (1.0 - 0.999f64.powi(t));
                    w -= lr * mh / (vh.sqrt() + 1e-8);
                }
                assert!((g - w).abs() < 1e-12, "fused {fused}: {g} vs {w}");
            }
        }
        Ok(())
    }

    /// The one-pass f32 ops on a tensor large enough to be split over threads equal the
    /// tensor-op form.
    #[test]
    fn fused_f32_matches_tensor_ops() -> Result<()> {
        let n = 100_003;
        let init: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut finals = Vec::new();
        for fused in [true, false] {
            let var = Var::from_vec(init.clone(), n, &Device::Cpu)?;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], 0.01)?;
            for _ in 0..3 {
                let loss = (var.as_tensor().sqr()?.sum_all()? * 0.5)?;
                opt.update(&loss.backward()?, 1e-2, fused)?;
            }
            finals.push(var.as_tensor().to_vec1::<f32>()?);
        }
        for (a, b) in finals[0].iter().zip(&finals[1]) {
            assert!((a - b).abs() < 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        Ok(())
    }
}
