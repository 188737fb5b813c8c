//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter), as in PyTorch.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

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
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = grad.detach();
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

    #[test]
    fn matches_reference_on_a_quadratic() -> Result<()> {
        let (lr, wd) = (0.05, 0.1);
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], wd)?;
        for _ in 0..7 {
            let loss = ((var.as_tensor() - 3.0)?.sqr()?.sum_all()? * 0.5)?;
            opt.step(&loss.backward()?, lr)?;
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
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        Ok(())
    }
}
