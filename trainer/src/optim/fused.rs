//! One-pass updates for the optimizers.
//!
//! Written with tensor ops, an AdamW update is about fourteen passes over each parameter, each
//! allocating a new tensor; these in-place ops do it in three passes (first moment, second
//! moment, weight) and SGD in one or two, without allocating. f32 and f64 tensors on the CPU
//! and, with the `cuda` feature, on CUDA devices (one kernels-cuda launch per tensor and op,
//! rounding as the CPU does); other devices and dtypes use the tensor-op form.

use std::ops::{Add, Div, Mul, Sub};

use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
mod cuda;

/// Elements per rayon task: large enough that small tensors stay on one thread.
const CHUNK: usize = 1 << 15;

/// Whether `t` can be updated by these ops.
pub fn supported(t: &Tensor) -> bool {
    let device = t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda());
    device && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// The floating-point types the ops run on.
trait Real:
    Copy
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    fn of(v: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

fn range<'a, T>(v: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{name}: expected a contiguous tensor"),
    }
}

fn range_mut<'a, T>(v: &'a mut [T], l: &Layout, name: &str) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => bail!("{name}: expected a contiguous tensor"),
    }
}

/// The operands of an in-place op as slices of one dtype.
enum Operands<'a, const N: usize> {
    F32(&'a mut [f32], [&'a [f32]; N]),
    F64(&'a mut [f64], [&'a [f64]; N]),
}

fn operands<'a, const N: usize>(
    name: &str,
    dst: &'a mut CpuStorage,
    dst_l: &Layout,
    srcs: [(&'a CpuStorage, &Layout); N],
) -> Result<Operands<'a, N>> {
    let mismatch = || candle_core::Error::Msg(format!("{name}: f32 or f64 operands of one dtype"));
    Ok(match dst {
        CpuStorage::F32(d) => {
            let mut s: [&[f32]; N] = [&[]; N];
            for (slot, (src, l)) in s.iter_mut().zip(srcs) {
                let CpuStorage::F32(v) = src else {
                    return Err(mismatch());
                };
                *slot = range(v, l, name)?;
            }
            Operands::F32(range_mut(d, dst_l, name)?, s)
        }
        CpuStorage::F64(d) => {
            let mut s: [&[f64]; N] = [&[]; N];
            for (slot, (src, l)) in s.iter_mut().zip(srcs) {
                let CpuStorage::F64(v) = src else {
                    return Err(mismatch());
                };
                *slot = range(v, l, name)?;
            }
            Operands::F64(range_mut(d, dst_l, name)?, s)
        }
        _ => return Err(mismatch()),
    })
}

/// Runs `f(dst_chunk, src_chunks)` over matching chunks of `dst` and the sources, in parallel
/// for large tensors.
fn for_chunks<T: Real, const N: usize>(
    name: &str,
    dst: &mut [T],
    srcs: [&[T]; N],
    f: impl Fn(&mut [T], [&[T]; N]) + Sync,
) -> Result<()> {
    if srcs.iter().any(|s| s.len() != dst.len()) {
        bail!("{name}: operands of different sizes")
    }
    dst.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, d)| f(d, srcs.map(|s| &s[i * CHUNK..][..d.len()])));
    Ok(())
}

/// Implements candle's `InplaceOp2` (one source) or `InplaceOp3` (two) for a type with
/// `fn run<T: Real>(&self, dst: &mut [T], srcs: [&[T]; N]) -> Result<()>` (the CPU) and, with
/// the `cuda` feature, `fn device_update(&self) -> kernels_cuda::Update` (CUDA).
macro_rules! inplace_op {
    ($ty:ty, InplaceOp2, $name:literal) => {
        impl InplaceOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                dst: &mut CpuStorage,
                dst_l: &Layout,
                s1: &CpuStorage,
                l1: &Layout,
            ) -> Result<()> {
                match operands($name, dst, dst_l, [(s1, l1)])? {
                    Operands::F32(d, s) => self.run(d, s),
                    Operands::F64(d, s) => self.run(d, s),
                }
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                dst: &mut candle_core::CudaStorage,
                dst_l: &Layout,
                s1: &candle_core::CudaStorage,
                l1: &Layout,
            ) -> Result<()> {
                cuda::update($name, self.device_update(), dst, dst_l, &[(s1, l1)])
            }
        }
    };
    ($ty:ty, InplaceOp3, $name:literal) => {
        impl InplaceOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                dst: &mut CpuStorage,
                dst_l: &Layout,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<()> {
                match operands($name, dst, dst_l, [(s1, l1), (s2, l2)])? {
                    Operands::F32(d, s) => self.run(d, s),
                    Operands::F64(d, s) => self.run(d, s),
                }
            }

            #[cfg(feature = "cuda")]
            #[allow(clippy::too_many_arguments)]
            fn cuda_fwd(
                &self,
                dst: &mut candle_core::CudaStorage,
                dst_l: &Layout,
                s1: &candle_core::CudaStorage,
                l1: &Layout,
                s2: &candle_core::CudaStorage,
                l2: &Layout,
            ) -> Result<()> {
                cuda::update(
                    $name,
                    self.device_update(),
                    dst,
                    dst_l,
                    &[(s1, l1), (s2, l2)],
                )
            }
        }
    };
}

/// An exponential moving average of the gradient `g` or of its square:
/// `dst = decay·dst + (1 - decay)·g` (or `g²`).
pub struct Moment {
    pub decay: f64,
    pub square: bool,
}

impl Moment {
    fn run<T: Real>(&self, m: &mut [T], [g]: [&[T]; 1]) -> Result<()> {
        let (a, b) = (T::of(self.decay), T::of(1.0 - self.decay));
        let square = self.square;
        for_chunks("optimizer-moment", m, [g], |m, [g]| {
            for (m, &g) in m.iter_mut().zip(g) {
                *m = a * *m + b * if square { g * g } else { g };
            }
        })
    }
}

#[cfg(feature = "cuda")]
impl Moment {
    fn device_update(&self) -> kernels_cuda::Update {
        kernels_cuda::Update::Ema {
            a: self.decay,
            b: 1.0 - self.decay,
            square: self.square,
        }
    }
}

inplace_op!(Moment, InplaceOp2, "optimizer-moment");

/// AdamW's weight update from its moments `m`, `v`:
/// `w = w·(1 - lr·wd) - lr·(m / c1) / (sqrt(v / c2) + eps)`, with the bias corrections
/// `c1 = 1 - β1^t`, `c2 = 1 - β2^t`.
pub struct AdamWUpdate {
    pub lr: f64,
    pub weight_decay: f64,
    pub c1: f64,
    pub c2: f64,
    pub eps: f64,
}

impl AdamWUpdate {
    fn run<T: Real>(&self, w: &mut [T], [m, v]: [&[T]; 2]) -> Result<()> {
        let decay = T::of(1.0 - self.lr * self.weight_decay);
        let (lr, c1, c2, eps) = (
            T::of(self.lr),
            T::of(self.c1),
            T::of(self.c2),
            T::of(self.eps),
        );
        for_chunks("adamw-update", w, [m, v], |w, [m, v]| {
            for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                *w = *w * decay - lr * ((m / c1) / ((v / c2).sqrt() + eps));
            }
        })
    }
}

#[cfg(feature = "cuda")]
impl AdamWUpdate {
    fn device_update(&self) -> kernels_cuda::Update {
        kernels_cuda::Update::AdamW {
            decay: 1.0 - self.lr * self.weight_decay,
            lr: self.lr,
            c1: self.c1,
            c2: self.c2,
            eps: self.eps,
        }
    }
}

inplace_op!(AdamWUpdate, InplaceOp3, "adamw-update");

/// SGD's momentum buffer: `buf = momentum·buf + (g + wd·w)`.
pub struct SgdBuffer {
    pub momentum: f64,
    pub weight_decay: f64,
}

impl SgdBuffer {
    fn run<T: Real>(&self, buf: &mut [T], [g, w]: [&[T]; 2]) -> Result<()> {
        let (mu, wd) = (T::of(self.momentum), T::of(self.weight_decay));
        for_chunks("sgd-buffer", buf, [g, w], |buf, [g, w]| {
            for ((b, &g), &w) in buf.iter_mut().zip(g).zip(w) {
                *b = mu * *b + (g + wd * w);
            }
        })
    }
}

#[cfg(feature = "cuda")]
impl SgdBuffer {
    fn device_update(&self) -> kernels_cuda::Update {
        kernels_cuda::Update::SgdBuffer {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }
}

inplace_op!(SgdBuffer, InplaceOp3, "sgd-buffer");

/// SGD's weight update: `w -= lr·d` with `d = buf` (momentum), `g' + momentum·buf` (Nesterov)
/// or `g'` (no momentum; `buf` is then ignored), where `g' = g + wd·w`.
pub struct SgdUpdate {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl SgdUpdate {
    fn run<T: Real>(&self, w: &mut [T], [g, buf]: [&[T]; 2]) -> Result<()> {
        let (lr, mu, wd) = (
            T::of(self.lr),
            T::of(self.momentum),
            T::of(self.weight_decay),
        );
        let (plain, nesterov) = (self.momentum == 0.0, self.nesterov);
        for_chunks("sgd-update", w, [g, buf], |w, [g, buf]| {
            for ((w, &g), &b) in w.iter_mut().zip(g).zip(buf) {
                let d = if plain {
                    g + wd * *w
                } else if nesterov {
                    (g + wd * *w) + mu * b
                } else {
                    b
                };
                *w = *w - lr * d;
            }
        })
    }
}

#[cfg(feature = "cuda")]
impl SgdUpdate {
    fn device_update(&self) -> kernels_cuda::Update {
        use kernels_cuda::SgdRule;
        kernels_cuda::Update::Sgd {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            rule: if self.momentum == 0.0 {
                SgdRule::Plain
            } else if self.nesterov {
                SgdRule::Nesterov
            } else {
                SgdRule::Momentum
            },
        }
    }
}

inplace_op!(SgdUpdate, InplaceOp3, "sgd-update");
