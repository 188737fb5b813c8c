//! Fully-connected layers: the dense baseline and the (block-)circulant layer.

use candle_core::{Device, Module, Tensor, Var, D};
use circulant_kernels::WeightSpectra;
use rand::Rng;

use crate::config::Head;
use crate::cpu::use_cpu_op;
use crate::dense_op::dense_forward;
use crate::error::{Error, Result};
use crate::init::Init;

fn shape_check(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(Error::ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

fn var_from(init: Init, shape: &[usize], rng: &mut impl Rng, device: &Device) -> Result<Var> {
    let len = shape.iter().product();
    Ok(Var::from_vec(init.sample(len, rng), shape, device)?)
}

/// A dense layer `y = x W^T + b` with weight `(out_dim, in_dim)` and bias `(out_dim)`.
#[derive(Clone, Debug)]
pub struct DenseLinear {
    weight: Var,
    bias: Var,
    inner: candle_nn::Linear,
}

impl DenseLinear {
    /// A freshly initialised layer: weight and bias uniform in `±1/sqrt(in_dim)`, drawn from `rng`.
    pub fn new(in_dim: usize, out_dim: usize, rng: &mut impl Rng, device: &Device) -> Result<Self> {
        let init = Init::fan_in(in_dim);
        let weight = var_from(init, &[out_dim, in_dim], rng, device)?;
        let bias = var_from(init, &[out_dim], rng, device)?;
        Self::from_parts(in_dim, out_dim, weight, bias)
    }

    /// Wraps existing variables (weight `(out_dim, in_dim)`, bias `(out_dim)`).
    pub fn from_parts(in_dim: usize, out_dim: usize, weight: Var, bias: Var) -> Result<Self> {
        shape_check("weight", &weight, &[out_dim, in_dim])?;
        shape_check("bias", &bias, &[out_dim])?;
        let inner =
            candle_nn::Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
        Ok(Self {
            weight,
            bias,
            inner,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// The trainable variables with their local names (`weight`, `bias`).
    pub fn vars(&self) -> Vec<(&'static str, Var)> {
        vec![("weight", self.weight.clone()), ("bias", self.bias.clone())]
    }

    /// Number of trainable parameters: `in_dim * out_dim + out_dim`.
    pub fn param_count(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

impl DenseLinear {
    /// The forward pass, followed by a ReLU when `relu` (fused into one op on the CPU).
    pub(crate) fn forward_impl(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        if x.rank() == 2 && use_cpu_op(x) && use_cpu_op(&self.weight) {
            return dense_forward(x, &self.weight, &self.bias, relu);
        }
        let y = match x.dims() {
            [_, _] => Self::product(x, &self.weight, &self.bias)?,
            _ => self.inner.forward(x)?,
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// `(W x^T)^T + b`: its weight gradient comes out contiguous, which makes the backward pass
    /// markedly faster than candle's `x W^T`.
    fn product(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        w.matmul(&x.t()?)?.t()?.broadcast_add(b)
    }

    /// The forward pass of a `(N, in)` batch in `dtype`, the weights cast to it at this use (their
    /// gradients come back in f32).
    pub(crate) fn forward_in(
        &self,
        x: &Tensor,
        dtype: candle_core::DType,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let y = Self::product(
            &x.to_dtype(dtype)?,
            &self.weight.to_dtype(dtype)?,
            &self.bias.to_dtype(dtype)?,
        )?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

impl Module for DenseLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_impl(x, false)
    }
}

/// Structure of a [`CirculantLinear`] weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CirculantMode {
    /// One `n x n` circulant matrix, `n = max(in_dim, out_dim)`: input zero-padded to `n`,
    /// output truncated to `out_dim`.
    Paper,
    /// A `p x q` grid of `b x b` circulant blocks (CirCNN), `q = ceil(in_dim / b)`,
    /// `p = ceil(out_dim / b)`.
    Block(usize),
}

impl CirculantMode {
    /// Shape of the trained vector `r`: `(n)` in paper mode, `(p, q, b)` in block mode.
    pub fn r_shape(&self, in_dim: usize, out_dim: usize) -> Vec<usize> {
        match *self {
            CirculantMode::Paper => vec![in_dim.max(out_dim)],
            CirculantMode::Block(b) => vec![out_dim.div_ceil(b), in_dim.div_ceil(b), b],
        }
    }

    /// `(padded input size, projected output size)`.
    fn padded_dims(&self, in_dim: usize, out_dim: usize) -> (usize, usize) {
        match *self {
            CirculantMode::Paper => {
                let n = in_dim.max(out_dim);
                (n, n)
            }
            CirculantMode::Block(b) => (in_dim.div_ceil(b) * b, out_dim.div_ceil(b) * b),
        }
    }

    /// Fan-in used for initialisation: `in_dim` (paper mode) or `q * b` (block mode).
    pub fn fan_in(&self, in_dim: usize, out_dim: usize) -> usize {
        match *self {
            CirculantMode::Paper => in_dim,
            CirculantMode::Block(_) => self.padded_dims(in_dim, out_dim).0,
        }
    }

    /// The `r` init: same scale as a dense layer of the same fan-in.
    pub fn r_init(&self, in_dim: usize, out_dim: usize) -> Init {
        Init::fan_in(self.fan_in(in_dim, out_dim))
    }

    fn check(&self) -> Result<()> {
        if *self == CirculantMode::Block(0) {
            return Err(Error::InvalidConfig("block size must be >= 1".into()));
        }
        Ok(())
    }
}

/// A fully-connected layer whose weight is circulant (paper mode) or block-circulant.
///
/// `y = trunc_k(C · pad(D x)) + bias`, with `D` a fixed ±1 diagonal (not trained, saved in
/// checkpoints) and `C` the circulant matrix whose first column is `r`
/// (`W[s, t] = r[(s - t) mod n]`); block mode uses `W[i*b+s, j*b+t] = r[i, j, (s - t) mod b]`.
#[derive(Clone, Debug)]
pub struct CirculantLinear {
    in_dim: usize,
    out_dim: usize,
    mode: CirculantMode,
    r: Var,
    signs: Option<Tensor>,
    bias: Var,
}

impl CirculantLinear {
    /// A freshly initialised layer, drawing (in this order) the sign vector (if `sign_flip`),
    /// `r` and the bias from `rng`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        mode: CirculantMode,
        sign_flip: bool,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Self> {
        mode.check()?;
        let signs = if sign_flip {
            Some(Tensor::from_vec(
                Init::Signs.sample(in_dim, rng),
                in_dim,
                device,
            )?)
        } else {
            None
        };
        let r = var_from(
            mode.r_init(in_dim, out_dim),
            &mode.r_shape(in_dim, out_dim),
            rng,
            device,
        )?;
        let bias = var_from(Init::fan_in(in_dim), &[out_dim], rng, device)?;
        Self::from_parts(in_dim, out_dim, mode, r, signs, bias)
    }

    /// Wraps existing tensors: `r` of shape [`CirculantMode::r_shape`], `signs` `(in_dim)` of ±1
    /// (or `None` for no sign flip), `bias` `(out_dim)`.
    pub fn from_parts(
        in_dim: usize,
        out_dim: usize,
        mode: CirculantMode,
        r: Var,
        signs: Option<Tensor>,
        bias: Var,
    ) -> Result<Self> {
        mode.check()?;
        if in_dim == 0 || out_dim == 0 {
            return Err(Error::InvalidConfig(
                "CirculantLinear needs in_dim, out_dim >= 1".into(),
            ));
        }
        shape_check("r", &r, &mode.r_shape(in_dim, out_dim))?;
        shape_check("bias", &bias, &[out_dim])?;
        if let Some(s) = &signs {
            shape_check("signs", s, &[in_dim])?;
        }
        Ok(Self {
            in_dim,
            out_dim,
            mode,
            r,
            signs,
            bias,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn mode(&self) -> CirculantMode {
        self.mode
    }

    pub fn r(&self) -> &Var {
        &self.r
    }

    pub fn signs(&self) -> Option<&Tensor> {
        self.signs.as_ref()
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// The trainable variables with their local names (`r`, `bias`).
    pub fn vars(&self) -> Vec<(&'static str, Var)> {
        vec![("r", self.r.clone()), ("bias", self.bias.clone())]
    }

    /// Number of trainable parameters: `n + out_dim` (paper) or `p*q*b + out_dim` (block).
    pub fn param_count(&self) -> usize {
        self.r.elem_count() + self.bias.elem_count()
    }

    /// Parameters of a dense layer of the same size: `in_dim * out_dim + out_dim`.
    pub fn dense_equivalent(&self) -> usize {
        self.in_dim * self.out_dim + self.out_dim
    }

    /// The equivalent dense weight `(out_dim, in_dim)`, sign flip, padding and truncation
    /// included. Differentiable in `r` (built by gathering `r`), for tests and export.
    pub fn dense_weight(&self) -> Result<Tensor> {
        let (d, k) = (self.in_dim, self.out_dim);
        let mut idx = Vec::with_capacity(d * k);
        match self.mode {
            CirculantMode::Paper => {
                let n = d.max(k);
                for s in 0..k {
                    idx.extend((0..d).map(|t| ((s + n - t) % n) as u32));
                }
            }
            CirculantMode::Block(b) => {
                let q = d.div_ceil(b);
                for s in 0..k {
                    let (i, si) = (s / b, s % b);
                    idx.extend((0..d).map(|t| {
                        let (j, tj) = (t / b, t % b);
                        ((i * q + j) * b + (si + b - tj) % b) as u32
                    }));
                }
            }
        }
        let idx = Tensor::from_vec(idx, d * k, self.r.device())?;
        let w = self
            .r
            .as_tensor()
            .flatten_all()?
            .index_select(&idx, 0)?
            .reshape((k, d))?;
        Ok(match &self.signs {
            Some(s) => w.broadcast_mul(s)?,
            None => w,
        })
    }
}

impl CirculantLinear {
    /// Spectra of the current `r`, computed once for [`CirculantLinear::forward_with_spectra`]
    /// (a snapshot: they do not follow later updates of `r`).
    pub fn weight_spectra(&self) -> Result<WeightSpectra> {
        Ok(match self.mode {
            CirculantMode::Paper => WeightSpectra::circulant(self.r.as_tensor())?,
            CirculantMode::Block(_) => WeightSpectra::block(self.r.as_tensor())?,
        })
    }

    /// The forward pass with the weight's spectra precomputed by
    /// [`CirculantLinear::weight_spectra`] (same result, no FFT of `r`; not differentiable in
    /// `r`).
    pub fn forward_with_spectra(&self, x: &Tensor, spectra: &WeightSpectra) -> Result<Tensor> {
        Ok(self.project(x, |x| spectra.apply(x))?)
    }

    fn project(
        &self,
        x: &Tensor,
        op: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        if x.dims().last() != Some(&self.in_dim) {
            candle_core::bail!(
                "CirculantLinear: input shape {:?}, expected last dim {}",
                x.dims(),
                self.in_dim
            )
        }
        let x = match &self.signs {
            Some(s) => x.broadcast_mul(s)?,
            None => x.clone(),
        };
        let (n_in, n_out) = self.mode.padded_dims(self.in_dim, self.out_dim);
        let x = x.pad_with_zeros(D::Minus1, 0, n_in - self.in_dim)?;
        let y = op(&x)?;
        let y = if n_out > self.out_dim {
            y.narrow(D::Minus1, 0, self.out_dim)?
        } else {
            y
        };
        y.broadcast_add(&self.bias)
    }
}

impl Module for CirculantLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.project(x, |x| match self.mode {
            CirculantMode::Paper => circulant_kernels::circulant(x, &self.r),
            CirculantMode::Block(_) => circulant_kernels::block_circulant(x, &self.r),
        })
    }
}

/// One FC layer of a network: dense or (block-)circulant.
#[derive(Clone, Debug)]
pub enum FcLayer {
    Dense(DenseLinear),
    Circulant(CirculantLinear),
}

impl FcLayer {
    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        match self {
            FcLayer::Dense(l) => l.param_count(),
            FcLayer::Circulant(l) => l.param_count(),
        }
    }

    /// Parameters of the dense layer of the same size.
    pub fn dense_equivalent(&self) -> usize {
        match self {
            FcLayer::Dense(l) => l.param_count(),
            FcLayer::Circulant(l) => l.dense_equivalent(),
        }
    }

    /// The head this layer implements.
    pub fn head(&self) -> Head {
        match self {
            FcLayer::Dense(_) => Head::Dense,
            FcLayer::Circulant(l) => match l.mode() {
                CirculantMode::Paper => Head::Circulant,
                CirculantMode::Block(b) => Head::Block(b),
            },
        }
    }
}

impl FcLayer {
    /// The forward pass, followed by a ReLU when `relu` (fused for dense layers on the CPU).
    pub(crate) fn forward_impl(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        match self {
            FcLayer::Dense(l) => l.forward_impl(x, relu),
            FcLayer::Circulant(l) if relu => l.forward(x)?.relu(),
            FcLayer::Circulant(l) => l.forward(x),
        }
    }
}

impl Module for FcLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FcLayer::Dense(l) => l.forward(x),
            FcLayer::Circulant(l) => l.forward(x),
        }
    }
}
