//! Train-mode batch normalisation (`batch_norm.cu`) on f32: per-channel statistics (2
//! launches), the normalisation (1) and its gradients (3). The statistics stay on the device as
//! a `(2, c)` buffer `[mean; biased var]`; nothing is read back to the host.

use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use crate::shapes;
use crate::storage::check_len;

/// The op named in errors.
const OP: &str = "batch norm (cuda)";

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/batch_norm.ptx"));
/// Name under which candle caches the loaded module, per device.
const MODULE: &str = "kernels_cuda_batch_norm";

/// Sizes of a batch-norm input: `(n, c, hw)`, contiguous, `hw` = H·W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

/// The sizes as the kernels take them (32-bit counts), after checking them.
struct Checked {
    n: u32,
    c: u32,
    hw: u32,
    len: usize,
    splits: u32,
}

impl BnDims {
    fn check(&self) -> Result<Checked> {
        let count = self.n.checked_mul(self.hw);
        let len = count.and_then(|m| m.checked_mul(self.c));
        let (Some(count), Some(len)) = (count, len) else {
            return Err(self.error("too many elements"));
        };
        if count < 2 || self.c == 0 {
            return Err(self.error("needs a channel and more than one value per channel"));
        }
        let small = |v: usize| u32::try_from(v).map_err(|_| self.error("a size over u32::MAX"));
        // The kernels count a channel's values in 32 bits, with room for a block's slice past
        // the end.
        if count > i32::MAX as usize {
            return Err(self.error("more than 2^31 values per channel"));
        }
        // Grid x of the reductions holds the channels (at most 2^31 - 1 blocks).
        if self.c >= 1 << 31 {
            return Err(self.error("too many channels"));
        }
        Ok(Checked {
            n: small(self.n)?,
            c: small(self.c)?,
            hw: small(self.hw)?,
            len,
            splits: shapes::bn_splits(count),
        })
    }

    fn error(&self, why: &str) -> Error {
        Error::Msg(format!("batch norm (cuda): {why} for {self:?}")).bt()
    }
}

/// `(2, c)` statistics of contiguous `x (n, c, hw)`: per-channel mean (row 0) and biased
/// variance (row 1) over the `n·hw` values, shifted by the channel's first value as the CPU
/// op.
pub fn batch_norm_stats(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    d: BnDims,
) -> Result<CudaSlice<f32>> {
    let k = d.check()?;
    check_len(OP, "x", x.len(), k.len, &d)?;
    // SAFETY: every element is written by the reduction kernel (one per block).
    let mut partial = unsafe { dev.alloc::<f64>(2 * d.c * k.splits as usize)? };
    // SAFETY: every element is written by bn_finish_stats (one thread per channel).
    let mut stats = unsafe { dev.alloc::<f32>(2 * d.c)? };
    let func = dev.get_or_load_custom_func("bn_partial_stats_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(x)
        .arg(&mut partial)
        .arg(&k.n)
        .arg(&k.c)
        .arg(&k.hw);
    // SAFETY: matches bn_partial_stats_f32, launched with BN_THREADS-wide blocks.
    unsafe { builder.launch(shapes::bn_reduce(k.c, k.splits).config()) }.w()?;
    let func = dev.get_or_load_custom_func("bn_finish_stats_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(x)
        .arg(&partial)
        .arg(&mut stats)
        .arg(&k.n)
        .arg(&k.c)
        .arg(&k.hw)
        .arg(&k.splits);
    // SAFETY: matches bn_finish_stats_f32; `partial` holds c * splits pairs.
    unsafe { builder.launch(shapes::per_channel(k.c).config()) }.w()?;
    Ok(stats)
}

/// `y = (x - mean)·gamma / sqrt(var + eps) + beta` per channel, from contiguous `x (n, c, hw)`,
/// `stats (2, c)` (from [`batch_norm_stats`]), `gamma (c)` and `beta (c)`.
pub fn batch_norm_forward(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    stats: &CudaView<'_, f32>,
    gamma: &CudaView<'_, f32>,
    beta: &CudaView<'_, f32>,
    d: BnDims,
    eps: f64,
) -> Result<CudaSlice<f32>> {
    let k = d.check()?;
    check_len(OP, "x", x.len(), k.len, &d)?;
    check_len(OP, "stats", stats.len(), 2 * d.c, &d)?;
    check_len(OP, "weight", gamma.len(), d.c, &d)?;
    check_len(OP, "bias", beta.len(), d.c, &d)?;
    // SAFETY: every element is written by the kernel below.
    let mut y = unsafe { dev.alloc::<f32>(k.len)? };
    let func = dev.get_or_load_custom_func("bn_forward_f32", MODULE, PTX)?;
    let eps = eps as f32;
    let mut builder = func.builder();
    builder
        .arg(x)
        .arg(stats)
        .arg(gamma)
        .arg(beta)
        .arg(&mut y)
        .arg(&k.len)
        .arg(&k.c)
        .arg(&k.hw)
        .arg(&eps);
    // SAFETY: matches bn_forward_f32; the lengths were checked above.
    unsafe { builder.launch(shapes::elementwise(k.len).config()) }.w()?;
    Ok(y)
}

/// Gradients of [`batch_norm_forward`] (batch statistics, so through the mean and variance
/// too) given `dy`, packed as the CPU op's: `[dx (n·c·hw); dweight (c); dbias (c)]`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    dy: &CudaView<'_, f32>,
    stats: &CudaView<'_, f32>,
    gamma: &CudaView<'_, f32>,
    d: BnDims,
    eps: f64,
) -> Result<CudaSlice<f32>> {
    let k = d.check()?;
    check_len(OP, "x", x.len(), k.len, &d)?;
    check_len(OP, "grad", dy.len(), k.len, &d)?;
    check_len(OP, "stats", stats.len(), 2 * d.c, &d)?;
    check_len(OP, "weight", gamma.len(), d.c, &d)?;
    // SAFETY: the reductions write every element of `partial` and the tail of `out`, and
    // bn_backward_dx its head; bn_finish_grads writes every coefficient.
    let mut partial = unsafe { dev.alloc::<f64>(2 * d.c * k.splits as usize)? };
    let mut coef = unsafe { dev.alloc::<f32>(3 * d.c)? };
    let mut out = unsafe { dev.alloc::<f32>(k.len + 2 * d.c)? };

    let func = dev.get_or_load_custom_func("bn_partial_grads_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(dy)
        .arg(x)
        .arg(stats)
        .arg(&mut partial)
        .arg(&k.n)
        .arg(&k.c)
        .arg(&k.hw);
    // SAFETY: matches bn_partial_grads_f32, launched with BN_THREADS-wide blocks.
    unsafe { builder.launch(shapes::bn_reduce(k.c, k.splits).config()) }.w()?;

    let (mut dx, mut grads) = out.split_at_mut(k.len);
    let func = dev.get_or_load_custom_func("bn_finish_grads_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(&partial)
        .arg(stats)
        .arg(gamma)
        .arg(&mut grads)
        .arg(&mut coef)
        .arg(&k.n)
        .arg(&k.c)
        .arg(&k.hw)
        .arg(&k.splits)
        .arg(&eps);
    // SAFETY: matches bn_finish_grads_f32; `grads` holds 2c values, `coef` 3c.
    unsafe { builder.launch(shapes::per_channel(k.c).config()) }.w()?;

    let func = dev.get_or_load_custom_func("bn_backward_dx_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    builder
        .arg(x)
        .arg(dy)
        .arg(stats)
        .arg(&coef)
        .arg(&mut dx)
        .arg(&k.len)
        .arg(&k.c)
        .arg(&k.hw);
    // SAFETY: matches bn_backward_dx_f32; the lengths were checked above.
    unsafe { builder.launch(shapes::elementwise(k.len).config()) }.w()?;
    Ok(out)
}
