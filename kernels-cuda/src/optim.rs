//! In-place optimizer updates (`optim.cu`) in f32 and f64: one launch per tensor per update,
//! rounding each step as the trainer's CPU ops do.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use crate::dtype::FftFloat;
use crate::shapes;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"));
/// Name under which candle caches the loaded module, per device.
const MODULE: &str = "kernels_cuda_optim";

/// How [`Update::Sgd`] forms the step `d` from `g' = s1 + wd·dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgdRule {
    /// `d = g'` (no momentum; `s2` is not read).
    Plain,
    /// `d = g' + momentum·s2` (`s2` the momentum buffer).
    Nesterov,
    /// `d = s2` (the momentum buffer).
    Momentum,
}

/// One in-place update of `dst` from the sources `s1`, `s2`. The coefficients are converted to
/// the tensors' type before the launch (as the CPU ops convert theirs).
#[derive(Clone, Copy, Debug)]
pub enum Update {
    /// `dst = a·dst + b·s1` (or `b·s1²` with `square`); `s2` is not read.
    Ema { a: f64, b: f64, square: bool },
    /// AdamW's weight from its moments `m = s1`, `v = s2`:
    /// `dst = dst·decay - lr·((m / c1) / (sqrt(v / c2) + eps))`.
    AdamW {
        decay: f64,
        lr: f64,
        c1: f64,
        c2: f64,
        eps: f64,
    },
    /// SGD's momentum buffer from `g = s1`, `w = s2`: `dst = momentum·dst + (g + wd·w)`.
    SgdBuffer { momentum: f64, weight_decay: f64 },
    /// SGD's weight step from `g = s1` and the buffer `s2`: `dst = dst - lr·d` ([`SgdRule`]).
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        rule: SgdRule,
    },
}

/// The kernel arguments of an update after the pointers and the length.
struct Args {
    kernel: &'static str,
    /// Whether the kernel takes `s2`.
    reads_s2: bool,
    /// The first `count` of `scalars` are passed, then `flag` if any.
    scalars: [f64; 5],
    count: usize,
    flag: Option<i32>,
}

impl Update {
    fn args(self) -> Args {
        let args = |kernel, reads_s2, scalars: &[f64], flag| {
            let mut all = [0.0; 5];
            all[..scalars.len()].copy_from_slice(scalars);
            Args {
                kernel,
                reads_s2,
                scalars: all,
                count: scalars.len(),
                flag,
            }
        };
        match self {
            Self::Ema { a, b, square } => args("optim_ema", false, &[a, b], Some(square.into())),
            Self::AdamW {
                decay,
                lr,
                c1,
                c2,
                eps,
            } => args("optim_adamw", true, &[decay, lr, c1, c2, eps], None),
            Self::SgdBuffer {
                momentum,
                weight_decay,
            } => args("optim_sgd_buffer", true, &[momentum, weight_decay], None),
            Self::Sgd {
                lr,
                momentum,
                weight_decay,
                rule,
            } => {
                let rule = match rule {
                    SgdRule::Plain => 0,
                    SgdRule::Nesterov => 1,
                    SgdRule::Momentum => 2,
                };
                let scalars = [lr, momentum, weight_decay];
                args("optim_sgd_update", true, &scalars, Some(rule))
            }
        }
    }
}

/// Applies `update` to `dst` in place on `dev`'s stream; `s1` and `s2` have `dst`'s length.
pub fn update_in_place<T: FftFloat>(
    dev: &CudaDevice,
    update: Update,
    dst: &mut CudaViewMut<'_, T>,
    s1: &CudaView<'_, T>,
    s2: &CudaView<'_, T>,
) -> Result<()> {
    let n = dst.len();
    if s1.len() != n || s2.len() != n {
        return Err(Error::Msg(format!(
            "optimizer update (cuda): operands of {n}, {} and {} elements",
            s1.len(),
            s2.len()
        ))
        .bt());
    }
    if n == 0 {
        return Ok(());
    }
    let args = update.args();
    let scalars = args.scalars.map(T::from_f64);
    let func =
        dev.get_or_load_custom_func(&format!("{}_{}", args.kernel, T::SUFFIX), MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(dst).arg(s1);
    if args.reads_s2 {
        builder.arg(s2);
    }
    builder.arg(&n);
    for c in &scalars[..args.count] {
        builder.arg(c);
    }
    if let Some(flag) = &args.flag {
        builder.arg(flag);
    }
    // SAFETY: `args` lists the parameters of its kernel in optim.cu, in order; the lengths
    // were checked above.
    unsafe { builder.launch(shapes::elementwise(n).config()) }.w()?;
    Ok(())
}
