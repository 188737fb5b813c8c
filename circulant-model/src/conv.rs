//! 2-d convolution: candle's `conv2d` on the GPU, an im2col + gemm (or, for 3×3 and 5×5
//! kernels, Winograd) custom op on the CPU.
//!
//! Why a custom CPU op: candle 0.11's CPU `conv2d` gathers its patches with scattered writes
//! inside nested rayon loops, and its input gradient goes through `conv_transpose2d`, a direct
//! loop; together they held most of a mnist-cnn training step (profile and before/after
//! numbers: docs/bench/profile-2026-11-30-cpu.md).
//!
//! The CPU op's paths, one module each: `im2col` (patch matrices and one product per block of
//! output rows, any kernel), `winograd` (3×3 and 5×5 stride-1 kernels; `lanes` holds the
//! vectors its transforms run on) and `space_to_depth` (strided kernels rearranged into a
//! stride-1 3×3 one for Winograd); `cudnn` runs CUDA tensors through cuDNN.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use std::sync::{Arc, OnceLock};

#[cfg(feature = "cudnn")]
mod cudnn;
mod im2col;
mod lanes;
mod space_to_depth;
mod winograd;

use crate::cpu::{f32_slice, lane_sums, use_cpu_op};
use crate::error::{Error, Result};
use winograd::Input;

/// A 2-d convolution without groups or dilation: weight `(c_out, c_in, k, k)`, bias `(c_out)`.
#[derive(Clone, Debug)]
pub struct Conv2dLayer {
    weight: Var,
    bias: Var,
    padding: usize,
    stride: usize,
}

/// A convolution's weight and bias for inference (see `Model::eval_cache`), a snapshot: on the
/// CPU, the Winograd filters of the weight are computed at the first call that runs as
/// Winograd and kept for the next ones.
#[derive(Clone)]
pub(crate) struct PreparedConv {
    weight: Tensor,
    bias: Tensor,
    filters: Filters,
}

/// Transformed Winograd filters, computed once (see [`PreparedConv`]).
type Filters = Arc<OnceLock<Vec<f32>>>;

impl std::fmt::Debug for PreparedConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedConv")
            .field("weight", &self.weight.dims())
            .field("winograd_filters", &self.filters.get().map(Vec::len))
            .finish()
    }
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
        self.forward_impl(x, false)
    }

    /// `relu(conv2d(x))`: on the CPU the ReLU is fused into the op (no second pass over the
    /// output, and its backward masks the output gradient inside the op).
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, true)
    }

    /// The forward pass, followed by a ReLU when `relu` (fused into the op on the CPU).
    pub(crate) fn forward_impl(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        self.forward_with(x, self.weight.as_tensor(), self.bias.as_tensor(), relu)
    }

    /// The weight and bias of this convolution followed by the per-channel affine map
    /// `y·scale + shift` (an eval-mode batch norm), as one convolution.
    pub(crate) fn fold(&self, scale: &Tensor, shift: &Tensor) -> Result<(Tensor, Tensor)> {
        let c_out = self.bias.dim(0)?;
        let weight = self
            .weight
            .as_detached_tensor()
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = self.bias.as_detached_tensor().mul(scale)?.add(shift)?;
        Ok((weight.detach(), bias.detach()))
    }

    /// The forward pass with `weight` and `bias` (shaped as this layer's) in place of the
    /// layer's own.
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        relu: bool,
    ) -> Result<Tensor> {
        self.forward_op(x, (weight, bias, None), relu)
    }

    /// Copies of `weight` and `bias` (shaped as this layer's) prepared for
    /// [`Self::forward_prepared`]: a snapshot, which training the layer's own `Var`s in place
    /// leaves as it is.
    pub(crate) fn prepare(&self, weight: &Tensor, bias: &Tensor) -> Result<PreparedConv> {
        Ok(PreparedConv {
            weight: weight.detach().copy()?,
            bias: bias.detach().copy()?,
            filters: Filters::default(),
        })
    }

    /// The forward pass with a prepared weight and bias: on the CPU, 3×3 and 5×5 convolutions
    /// (and strided ones whose space-to-depth form is 3×3) then run as Winograd at any batch,
    /// their filters transformed once.
    pub(crate) fn forward_prepared(
        &self,
        x: &Tensor,
        p: &PreparedConv,
        relu: bool,
    ) -> Result<Tensor> {
        self.forward_op(x, (&p.weight, &p.bias, Some(&p.filters)), relu)
    }

    fn forward_op(
        &self,
        x: &Tensor,
        (weight, bias, filters): (&Tensor, &Tensor, Option<&Filters>),
        relu: bool,
    ) -> Result<Tensor> {
        let (_, c_in, _, _) = x.dims4()?;
        let (c_out, wc_in, _, _) = weight.dims4()?;
        if c_in != wc_in {
            return Err(Error::InputShape {
                found: x.dims().to_vec(),
                expected: format!("(N, {wc_in}, H, W) for a conv with {c_out} outputs"),
            });
        }
        if use_cpu_op(x) && use_cpu_op(weight) {
            let op = Conv2dOp {
                padding: self.padding,
                stride: self.stride,
                relu,
                filters: filters.cloned(),
            };
            Ok(x.contiguous()?
                .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?)
        } else {
            let y = self.conv2d(x, weight)?;
            let y = y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?;
            Ok(if relu { y.relu()? } else { y })
        }
    }

    /// `conv2d(x, weight)` outside the CPU op: through cuDNN (feature `cudnn`) for CUDA
    /// tensors, candle's `conv2d` otherwise.
    fn conv2d(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cudnn")]
        if cudnn::applies(x, weight) {
            return Ok(cudnn::conv2d(x, weight, self.padding, self.stride)?);
        }
        Ok(x.conv2d(weight, self.padding, self.stride, 1, 1)?)
    }
}

/// `conv2d(x, w) + b` on the CPU (f32).
///
/// candle's CPU `conv2d` (tiled im2col with scattered writes, nested rayon loops) took ~40% of
/// a mnist-cnn training step and its backward goes through the slow `conv_transpose2d`
/// (docs/bench/). This op runs the classic im2col + gemm scheme instead (`im2col`): per
/// (image, block of output rows) task (see [`Geometry::blocks`]), the block's columns of the `(c_in·k·k, L)`
/// patch matrix and one product with the `(c_out, c_in·k·k)` weight, the bias folded in. 3×3
/// and 5×5, stride-1 convolutions with enough channels and output pixels take Winograd's
/// F(4×4, 3×3) or F(2×2, 5×5) instead (see `winograd`): 36 multiply-adds per 4×4 outputs and
/// channel pair, not 144, or per 2×2 outputs, not 100; so do strided ones that rearrange into
/// such a 3×3 convolution (see `space_to_depth`). The backward pass recomputes the patch
/// matrix, takes `dW += G·colsᵀ` and `dcols = Wᵀ·G` per image and scatters `dcols` back onto
/// the input gradient; its images are split over rayon's threads (or, for fewer images than
/// threads, the products are). With `relu` the op returns `relu(conv2d(x, w) + b)`.
struct Conv2dOp {
    padding: usize,
    stride: usize,
    relu: bool,
    /// The weight's Winograd filters, computed once, for inference ([`PreparedConv`]).
    filters: Option<Filters>,
}

/// Geometry of one convolution over `n` images.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    padding: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &Layout, w: &Layout, padding: usize, stride: usize) -> candle_core::Result<Self> {
        let (n, c_in, h, wd) = x.shape().dims4()?;
        let (c_out, wc_in, k, k2) = w.shape().dims4()?;
        if wc_in != c_in || k != k2 || h + 2 * padding < k || wd + 2 * padding < k {
            candle_core::bail!(
                "conv2d: input {:?}, weight {:?}, padding {padding}",
                x.dims(),
                w.dims()
            )
        }
        Ok(Self {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            k,
            padding,
            stride,
            oh: (h + 2 * padding - k) / stride + 1,
            ow: (wd + 2 * padding - k) / stride + 1,
        })
    }

    /// Rows of the patch matrix: `c_in·k·k`.
    fn ckk(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Output pixels per channel: `oh·ow`.
    fn l(&self) -> usize {
        self.oh * self.ow
    }

    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.c_out * self.l()
    }
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
        let g = Geometry::new(l1, l2, self.padding, self.stride)?;
        let (x, w, bias) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if bias.len() != g.c_out {
            candle_core::bail!("conv2d: bias {:?} for {} channels", l3.dims(), g.c_out)
        }
        let mut y = vec![0f32; g.n * g.out_len()];
        let shape = (g.n, g.c_out, g.oh, g.ow);
        let prepared = self.filters.as_deref();
        // Winograd's forward pass of `t` on `x` with the filters of `w`: those kept, or
        // transformed for this call.
        let mut winograd = |t: &Geometry, x: Input, w: &[f32]| {
            let mut run = |u: &[f32]| winograd::forward(t, x, u, bias, self.relu, &mut y);
            match prepared {
                Some(kept) => run(kept.get_or_init(|| winograd::filters(t, w))),
                None => winograd::with_filters(t, w, false, run),
            }
        };
        if let Some(t) = space_to_depth::geometry(&g, prepared.is_some()) {
            // The rearranged weight, unless its filters are kept already.
            let w2 = match prepared.and_then(OnceLock::get) {
                Some(_) => Vec::new(),
                None => space_to_depth::weight(&g, &t, w),
            };
            winograd(&t, Input::SpaceToDepth(&g, x), &w2);
            return Ok((CpuStorage::F32(y), shape.into()));
        }
        let plain = match prepared {
            Some(_) => winograd::applies_prepared(&g),
            None => winograd::applies(&g),
        };
        if plain {
            winograd(&g, Input::Planes(x, None), w);
            return Ok((CpuStorage::F32(y), shape.into()));
        }
        g.im2col_forward((x, w, bias), self.relu, &mut y);
        Ok((CpuStorage::F32(y), shape.into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let backward = Conv2dBackward {
            padding: self.padding,
            stride: self.stride,
            // Plain data (e.g. the images) needs no input gradient.
            input_grad: x.track_op(),
            relu_output: self.relu.then(|| res.detach()),
        };
        let (x, w) = (x.detach(), w.detach());
        let packed = x.apply_op3_no_bwd(&w, &grad.detach().contiguous()?, &backward)?;
        let (c_out, wn) = (w.dim(0)?, w.elem_count());
        let grad_w = packed.narrow(0, 0, wn)?.reshape(w.shape())?;
        let grad_b = packed.narrow(0, wn, c_out)?;
        let grad_x = if backward.input_grad {
            let dx = packed.narrow(0, wn + c_out, x.elem_count())?;
            Some(dx.reshape(x.shape())?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_w), Some(grad_b)))
    }
}

/// The gradients of [`Conv2dOp`] from `(x, w, dy)`, packed into one vector
/// `[dW (c_out·c_in·k·k), db (c_out), dx (n·c_in·h·w, with input_grad only)]`. With
/// `relu_output` (the op's output after a fused ReLU) `dy` is first masked where it is 0.
struct Conv2dBackward {
    padding: usize,
    stride: usize,
    input_grad: bool,
    relu_output: Option<Tensor>,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d-bias-backward"
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
        let g = Geometry::new(l1, l2, self.padding, self.stride)?;
        let (x, w, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if l3.dims() != [g.n, g.c_out, g.oh, g.ow] {
            candle_core::bail!("conv2d backward: gradient {:?} for {g:?}", l3.dims())
        }
        let relu_output = self.relu_output.as_ref().map(|y| y.storage_and_layout());
        let relu_y = match &relu_output {
            Some((storage, layout)) => match &**storage {
                candle_core::Storage::Cpu(s) if layout.dims() == l3.dims() => {
                    Some(f32_slice(s, layout)?)
                }
                _ => candle_core::bail!("conv2d backward: the ReLU output is not a CPU f32 tensor"),
            },
            None => None,
        };
        let (ckk, c_out) = (g.ckk(), g.c_out);
        let wn = c_out * ckk;
        let dx_len = if self.input_grad { g.n * g.in_len() } else { 0 };
        let mut out = vec![0f32; wn + c_out + dx_len];
        let (dwb, dx) = out.split_at_mut(wn + c_out);
        let strided = space_to_depth::geometry(&g, false)
            .filter(|t| !self.input_grad || winograd::input_grad_geometry(t).is_some());
        if let Some(t) = strided {
            let dx = self.input_grad.then_some(dx);
            self.strided_grads((&g, &t), (x, w), (dy, relu_y), dwb, dx);
            let len = out.len();
            return Ok((CpuStorage::F32(out), len.into()));
        }
        // The input gradient as a Winograd convolution of dy after the per-image tasks, or
        // within them as `col2im(Wᵀ·dy)`.
        let dx_winograd = self
            .input_grad
            .then(|| winograd::input_grad_geometry(&g))
            .flatten();
        // The 3×3 weight gradient as Winograd F(2×2, 3×3) where the forward pass runs as
        // Winograd (and the input gradient needs no per-image patch matrix), or per image from
        // im2col.
        if winograd::weight_grad_applies(&g) && (!self.input_grad || dx_winograd.is_some()) {
            let (dw, db) = dwb.split_at_mut(wn);
            winograd::weight_grad(&g, Input::Planes(x, None), (dy, relu_y), dw);
            g.bias_grad((dy, relu_y), db);
        } else {
            let dx = (self.input_grad && dx_winograd.is_none()).then_some(&mut *dx);
            g.im2col_grads((x, w), (dy, relu_y), dwb, dx);
        }
        if let Some(t) = dx_winograd {
            let zero_bias = vec![0f32; g.c_in];
            winograd::with_filters(&t, w, true, |u| {
                winograd::forward(&t, Input::Planes(dy, relu_y), u, &zero_bias, false, dx)
            });
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), len.into()))
    }
}

impl Conv2dBackward {
    /// The gradients of the strided convolution `g` through its stride-1 form `t` (see
    /// `space_to_depth`): weight gradient as Winograd, input gradient (with `dx`) as
    /// Winograd of the rearranged input's gradient, rearranged back.
    fn strided_grads(
        &self,
        (g, t): (&Geometry, &Geometry),
        (x, w): (&[f32], &[f32]),
        (dy, relu_y): (&[f32], Option<&[f32]>),
        dwb: &mut [f32],
        dx: Option<&mut [f32]>,
    ) {
        let (dw, db) = dwb.split_at_mut(g.c_out * g.ckk());
        let mut dw2 = vec![0f32; t.c_out * t.ckk()];
        let z = Input::SpaceToDepth(g, x);
        winograd::weight_grad(t, z, (dy, relu_y), &mut dw2);
        space_to_depth::weight_grad(g, t, &dw2, dw);
        g.bias_grad((dy, relu_y), db);
        let (Some(dx), Some(tg)) = (dx, winograd::input_grad_geometry(t)) else {
            return;
        };
        // The gradient of `z`, rearranged back into `dx`.
        let w2 = space_to_depth::weight(g, t, w);
        let (zero_bias, mut dz) = (vec![0f32; t.c_in], vec![0f32; g.n * t.in_len()]);
        winograd::with_filters(&tg, &w2, true, |u| {
            let dy = Input::Planes(dy, relu_y);
            winograd::forward(&tg, dy, u, &zero_bias, false, &mut dz)
        });
        space_to_depth::input_grad(g, t, &dz, dx);
    }
}

impl Geometry {
    /// `db[o] = Σ dy[·, o, ·, ·]`, `dy` read as 0 where a `relu_y` (the fused ReLU's output) is
    /// not positive.
    fn bias_grad(&self, (dy, relu_y): (&[f32], Option<&[f32]>), db: &mut [f32]) {
        let l = self.l();
        db.par_iter_mut().enumerate().for_each(|(o, b)| {
            *b = (0..self.n)
                .map(|i| {
                    let at = (i * self.c_out + o) * l;
                    plane_sum(&dy[at..][..l], relu_y.map(|y| &y[at..][..l]))
                })
                .sum();
        });
    }
}

/// `Σ plane`, its values read as 0 where `relu_y` (the fused ReLU's output) is not positive.
fn plane_sum(plane: &[f32], relu_y: Option<&[f32]>) -> f32 {
    match relu_y {
        Some(y) => lane_sums(plane, y, |d, y| (if y > 0.0 { d } else { 0.0 }, 0.0)).0,
        None => lane_sums(plane, plane, |v, _| (v, 0.0)).0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{host, random_var, weighted_grads};
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

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
            let grads = weighted_grads(&y, g.as_tensor());
            let grads_ref = weighted_grads(&y_ref, g.as_tensor());
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

    /// A plain float64 convolution: `y[b, o, oy, ox] = bias[o] + Σ w[o, c, ky, kx] ·
    /// x[b, c, oy·s + ky - p, ox·s + kx - p]`, and its gradients for the output gradient `gy`.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &[f32],
        (n, c_in, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        (c_out, k): (usize, usize),
        bias: &[f32],
        (p, s): (usize, usize),
        gy: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let mut y = vec![0f64; n * c_out * oh * ow];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; wt.len()];
        let mut db = vec![0f64; c_out];
        for b in 0..n {
            for o in 0..c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((b * c_out + o) * oh + oy) * ow + ox;
                        let g = gy[yi] as f64;
                        let mut acc = bias[o] as f64;
                        db[o] += g;
                        for c in 0..c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - p as isize;
                                    let ix = (ox * s + kx) as isize - p as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * c_in + c) * h + iy as usize) * w + ix as usize;
                                    let wi = ((o * c_in + c) * k + ky) * k + kx;
                                    acc += wt[wi] as f64 * x[xi] as f64;
                                    dx[xi] += wt[wi] as f64 * g;
                                    dw[wi] += x[xi] as f64 * g;
                                }
                            }
                        }
                        y[yi] = acc;
                    }
                }
            }
        }
        (y, dx, dw, db)
    }

    /// Forward and all three gradients of one case `(n, c_in, c_out, h, w, k, p, s)` equal the
    /// float64 reference.
    fn check_against_reference(
        rng: &mut StdRng,
        (n, c_in, c_out, h, w, k, p, s): (usize, usize, usize, usize, usize, usize, usize, usize),
    ) {
        let x = random_var(rng, &[n, c_in, h, w]);
        let wt = random_var(rng, &[c_out, c_in, k, k]);
        let b = random_var(rng, &[c_out]);
        let y = Conv2dLayer::new(wt.clone(), b.clone(), p, s)
            .unwrap()
            .forward(&x)
            .unwrap();
        let gy = random_var(rng, y.dims());
        let grads = weighted_grads(&y, gy.as_tensor());
        let (ry, rdx, rdw, rdb) = reference(
            &host(&x),
            (n, c_in, h, w),
            &host(&wt),
            (c_out, k),
            &host(&b),
            (p, s),
            &host(&gy),
        );
        let case = format!("n {n} c_in {c_in} c_out {c_out} {h}x{w} k{k} p{p} s{s}");
        for (what, got, want) in [
            ("y", host(&y), ry),
            ("dx", host(grads.get(&x).unwrap()), rdx),
            ("dw", host(grads.get(&wt).unwrap()), rdw),
            ("db", host(grads.get(&b).unwrap()), rdb),
        ] {
            assert_close(&got, &want, &format!("{case} {what}"));
        }
    }

    /// `got` equals the float64 `want` within the tests' tolerance.
    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (u, v) in got.iter().zip(want) {
            assert!(
                (*u as f64 - v).abs() < 1e-4 * (1.0 + v.abs()),
                "{what}: {u} vs {v}"
            );
        }
    }

    /// Forward and all three gradients equal the float64 reference, for odd sizes, strides,
    /// paddings and batches below and above the thread count (both ways of splitting work).
    #[test]
    fn matches_float64_reference() {
        let mut rng = StdRng::seed_from_u64(1);
        for case in [
            (1, 1, 3, 7, 5, 3, 0, 1),
            (5, 2, 3, 9, 11, 3, 1, 1),
            (3, 3, 4, 13, 13, 5, 2, 1),
            (2, 3, 5, 23, 19, 11, 2, 4),
            // One image: with more than one thread the forward splits its output rows.
            (1, 2, 3, 70, 61, 11, 3, 4),
            (4, 2, 2, 10, 9, 3, 1, 2),
            // Strides 4 and 2 with more output pixels than one block of the backward pass.
            (3, 3, 4, 87, 83, 11, 2, 4),
            (3, 8, 3, 45, 41, 5, 1, 2),
            (1, 4, 6, 8, 8, 5, 4, 3),
            (7, 1, 2, 4, 4, 1, 0, 1),
            // 3×3, stride 1, c_in and c_out >= 16, >= 1024 output pixels: the Winograd
            // forward and input gradient, on odd and even sizes with paddings 0-2; with
            // c_out < 16, im2col.
            (2, 16, 5, 32, 31, 3, 1, 1),
            (1, 17, 40, 49, 47, 3, 0, 1),
            (3, 16, 17, 33, 34, 3, 2, 1),
            (2, 16, 16, 32, 32, 3, 1, 1),
            (3, 5, 18, 30, 29, 3, 2, 1),
            // Filter transform tasks of 4 output channels (33: the last takes 1) and input
            // channels in blocks of 16 (40: the last takes 8).
            (2, 40, 33, 32, 32, 3, 1, 1),
            // 5×5, stride 1, >= 2048 output pixels: Winograd F(2×2, 5×5) on odd and even sizes
            // with paddings 0-4.
            (3, 16, 20, 32, 31, 5, 2, 1),
            (1, 17, 20, 50, 49, 5, 0, 1),
            (3, 16, 16, 27, 27, 5, 2, 1),
            (2, 16, 17, 30, 29, 5, 4, 1),
            (3, 18, 16, 33, 34, 5, 1, 1),
            (2, 16, 16, 32, 32, 5, 3, 1),
            // Strided, with s²·c_in and c_out >= 16 and >= 1024 output pixels: as a 3×3
            // stride-1 convolution of the input rearranged (`space_to_depth`). 11×11 stride 4
            // (AlexNet's conv1: 48 channels, partial tiles); 5×5 stride 2 (kernel taps past 5
            // zero, 20 channels: a partial block); 7×7 stride 3 (runs of 3 lanes across
            // blocks of 16); 9×9 stride 3, no padding.
            (3, 3, 16, 99, 95, 11, 2, 4),
            (2, 5, 17, 70, 67, 5, 1, 2),
            (2, 2, 16, 70, 70, 7, 3, 3),
            (3, 2, 16, 71, 66, 9, 0, 3),
        ] {
            check_against_reference(&mut rng, case);
        }
    }

    /// The Winograd transforms equal the float64 reference at each narrower vector width
    /// than the CPU's widest (which every other test runs), with channel and tile counts that
    /// leave partial vectors.
    #[test]
    fn winograd_at_every_lane_width_matches_float64_reference() {
        let mut rng = StdRng::seed_from_u64(5);
        for cap in [lanes::Width::Portable, lanes::Width::Avx] {
            lanes::test_cap::with(cap, || {
                for case in [(2, 17, 20, 32, 31, 3, 1, 1), (3, 16, 18, 30, 29, 5, 2, 1)] {
                    check_against_reference(&mut rng, case);
                }
            });
        }
    }

    /// A prepared convolution (inference) runs as Winograd below the pixel thresholds, with
    /// its filters transformed at the first call and kept, equals the float64 reference and
    /// keeps its snapshot of the weight; one with too few channels for Winograd keeps im2col
    /// and transforms nothing.
    #[test]
    fn prepared_forward_matches_float64_reference() {
        let mut rng = StdRng::seed_from_u64(6);
        for ((n, c_in, c_out, h, w, k, p, s), winograd) in [
            ((1, 16, 17, 13, 13, 3, 1, 1), true),
            ((2, 17, 16, 20, 19, 5, 2, 1), true),
            ((1, 3, 16, 99, 95, 11, 2, 4), true),
            ((1, 3, 8, 9, 9, 3, 1, 1), false),
        ] {
            let x = random_var(&mut rng, &[n, c_in, h, w]);
            let wt = random_var(&mut rng, &[c_out, c_in, k, k]);
            let b = random_var(&mut rng, &[c_out]);
            let conv = Conv2dLayer::new(wt.clone(), b.clone(), p, s).unwrap();
            let prepared = conv.prepare(wt.as_tensor(), b.as_tensor()).unwrap();
            let y = conv.forward_prepared(&x, &prepared, false).unwrap();
            let case = format!("n {n} c_in {c_in} c_out {c_out} {h}x{w} k{k} p{p} s{s}");
            assert_eq!(prepared.filters.get().is_some(), winograd, "{case}");
            let gy = vec![0f32; y.elem_count()];
            let (ry, ..) = reference(
                &host(&x),
                (n, c_in, h, w),
                &host(&wt),
                (c_out, k),
                &host(&b),
                (p, s),
                &gy,
            );
            let got = host(&y);
            assert_close(&got, &ry, &case);
            let again = conv.forward_prepared(&x, &prepared, false).unwrap();
            assert_eq!(host(&again), got, "{case}: second call");
            // A snapshot: training the layer's weight after preparing changes nothing.
            wt.set(&wt.as_tensor().zeros_like().unwrap()).unwrap();
            let after = conv.forward_prepared(&x, &prepared, false).unwrap();
            assert_eq!(host(&after), got, "{case}: weight changed after preparing");
        }
    }

    /// However the Winograd forward splits its tiles over the threads, it equals the float64
    /// reference: with many threads and few tiles per thread it splits the output channels as
    /// well (12 threads); with two to three blocks of tiles per thread, it gives each thread an
    /// equal run of tiles (243 tiles on 2 threads, 400 on 3).
    #[test]
    fn winograd_tile_splits_match_float64_reference() {
        let mut rng = StdRng::seed_from_u64(3);
        for (threads, case) in [
            (12, (1, 17, 40, 49, 47, 3, 1, 1)),
            (2, (3, 16, 17, 33, 34, 3, 2, 1)),
            (3, (4, 16, 16, 40, 40, 3, 1, 1)),
        ] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| check_against_reference(&mut rng, case));
        }
    }

    /// The weight gradient (Winograd for 3×3, whose tile blocks are summed in a fixed order;
    /// im2col for 5×5) gives the same bits on repeated calls on many threads (exact resume
    /// depends on it).
    #[test]
    fn winograd_weight_gradient_is_deterministic() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        for (c_in, c_out, h, k) in [(16, 16, 40, 3), (16, 16, 40, 5)] {
            let x = random_var(&mut rng, &[4, c_in, h, h]);
            let wt = random_var(&mut rng, &[c_out, c_in, k, k]);
            let b = random_var(&mut rng, &[c_out]);
            let conv = Conv2dLayer::new(wt.clone(), b, k / 2, 1).unwrap();
            let gy = random_var(&mut rng, &[4, c_out, h, h]);
            let dw = || {
                let y = conv.forward(&x).unwrap();
                host(weighted_grads(&y, gy.as_tensor()).get(&wt).unwrap())
            };
            let first = pool.install(dw);
            for _ in 0..4 {
                assert_eq!(pool.install(dw), first, "{k}×{k}");
            }
        }
    }

    /// The fused ReLU equals candle's `relu` after the layer, values and all three gradients.
    #[test]
    fn fused_relu_matches_separate_relu() {
        let mut rng = StdRng::seed_from_u64(2);
        for (n, c_in, c_out, h, k, p, s) in [
            (3, 2, 4, 9, 3, 1, 1),
            (1, 3, 5, 12, 5, 2, 2),
            (2, 16, 20, 32, 3, 1, 1),
            (2, 3, 16, 99, 11, 2, 4),
        ] {
            let x = random_var(&mut rng, &[n, c_in, h, h]);
            let wt = random_var(&mut rng, &[c_out, c_in, k, k]);
            let b = random_var(&mut rng, &[c_out]);
            let conv = Conv2dLayer::new(wt.clone(), b.clone(), p, s).unwrap();
            let fused = conv.forward_relu(&x).unwrap();
            let separate = conv.forward(&x).unwrap().relu().unwrap();
            let gy = random_var(&mut rng, fused.dims());
            let grads = |y: &Tensor| {
                let g = weighted_grads(y, gy.as_tensor());
                [&x, &wt, &b].map(|v| host(g.get(v).unwrap()))
            };
            assert_eq!(host(&fused), host(&separate));
            for (a, b) in grads(&fused).iter().zip(grads(&separate)) {
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() < 1e-5 * (1.0 + v.abs()), "{u} vs {v}");
                }
            }
        }
    }
}
