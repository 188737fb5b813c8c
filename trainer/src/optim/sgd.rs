//! SGD with momentum, Nesterov momentum and L2 weight decay (PyTorch's update rule).

use std::collections::HashMap;

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::fused::{self, SgdBuffer, SgdUpdate};
use super::{restore, zeros_like, Optimizer};

/// `g = grad + wd * w; buf = momentum * buf + g; w -= lr * (nesterov ? g + momentum * buf : buf)`.
/// With `momentum = 0` it is plain SGD (no buffers).
pub struct Sgd {
    params: Vec<(String, Var)>,
    buffers: Vec<Tensor>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

impl Sgd {
    pub fn new(
        params: Vec<(String, Var)>,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    ) -> Result<Self> {
        let buffers = if momentum != 0.0 {
            zeros_like(&params)?
        } else {
            Vec::new()
        };
        Ok(Sgd {
            params,
            buffers,
            momentum,
            nesterov,
            weight_decay,
        })
    }

    /// One update; `fused` allows the one-pass ops of CPU and (feature `cuda`) CUDA tensors
    /// (tests turn them off to check the tensor-op form, which other devices run).
    fn update(&mut self, grads: &GradStore, lr: f64, fused: bool) -> Result<()> {
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = grad.detach().contiguous()?;
            if fused && fused::supported(&g) {
                let update = SgdUpdate {
                    lr,
                    momentum: self.momentum,
                    nesterov: self.nesterov,
                    weight_decay: self.weight_decay,
                };
                let w = var.as_tensor();
                if self.momentum != 0.0 {
                    let buffer = SgdBuffer {
                        momentum: self.momentum,
                        weight_decay: self.weight_decay,
                    };
                    self.buffers[i].inplace_op3(&g, w, &buffer)?;
                    w.inplace_op3(&g, &self.buffers[i], &update)?;
                } else {
                    w.inplace_op3(&g, &g, &update)?;
                }
                continue;
            }
            let w = var.as_tensor().detach();
            let mut g = g;
            if self.weight_decay != 0.0 {
                g = (g + (&w * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let buf = ((&self.buffers[i] * self.momentum)? + &g)?;
                g = if self.nesterov {
                    (g + (&buf * self.momentum)?)?
                } else {
                    buf.clone()
                };
                self.buffers[i] = buf;
            }
            var.set(&(w - (g * lr)?)?)?;
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.update(grads, lr, true)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .map(|((n, _), b)| (format!("momentum.{n}"), b.clone()))
            .collect()
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, _steps: u64) -> Result<()> {
        if self.momentum != 0.0 {
            self.buffers = self
                .params
                .iter()
                .map(|(n, v)| restore(tensors, "momentum", n, v))
                .collect::<Result<_>>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference: PyTorch's SGD on scalars.
    fn reference(
        w0: f64,
        grads_of: impl Fn(f64) -> f64,
        lr: f64,
        mu: f64,
        wd: f64,
        nesterov: bool,
        n: usize,
    ) -> f64 {
        let (mut w, mut buf) = (w0, 0.0);
        for t in 0..n {
            let mut g = grads_of(w) + wd * w;
            if mu != 0.0 {
                buf = if t == 0 { g } else { mu * buf + g };
                g = if nesterov { g + mu * buf } else { buf };
            }
            w -= lr * g;
        }
        w
    }

    #[test]
    fn matches_reference_on_a_quadratic() -> Result<()> {
        // f(w) = sum (w - 3)^2 / 2, gradient w - 3.
        for (mu, wd, nesterov) in [
            (0.0, 0.0, false),
            (0.9, 0.0, false),
            (0.9, 0.01, true),
            (0.5, 0.1, false),
        ] {
            for fused in [true, false] {
                let var = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
                let mut opt = Sgd::new(vec![("w".into(), var.clone())], mu, nesterov, wd)?;
                for _ in 0..5 {
                    let loss = ((var.as_tensor() - 3.0)?.sqr()?.sum_all()? * 0.5)?;
                    opt.update(&loss.backward()?, 0.1, fused)?;
                }
                let got = var.as_tensor().to_vec1::<f64>()?;
                for (g, w0) in got.iter().zip([1.0, -2.0]) {
                    let want = reference(w0, |w| w - 3.0, 0.1, mu, wd, nesterov, 5);
                    assert!(
                        (g - want).abs() < 1e-12,
                        "mu {mu} wd {wd} nesterov {nesterov} fused {fused}: {g} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }
}
