//! cuFFT plans, created once and cached per (device, thread, length, batch, transform type).
//!
//! A plan is bound to candle's stream of its device. Candle's default CUDA device uses the
//! per-thread default stream, and a plan's work area must not be shared by two streams, so
//! the calling thread is part of the key. Each plan sits behind its own mutex: cuFFT allows
//! concurrent execution only with distinct plans.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;

use candle_core::cuda::{CudaDevice, DeviceId};
use candle_core::{Error, Result};
use cudarc::cufft::{sys, CudaFft};

/// Beyond this many cached plans the least recently used one is dropped (each plan owns a work
/// area). A training run uses about six per circulant layer and batch size (the training
/// batch, the last partial one, the evaluation batch).
const MAX_PLANS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    device: DeviceId,
    thread: ThreadId,
    len: usize,
    batch: usize,
    kind: sys::cufftType,
}

/// A cached plan; lock it for the duration of one execution.
pub(crate) type SharedPlan = Arc<Mutex<CudaFft>>;

/// The plans, each with the count of lookups when it was last used.
#[derive(Default)]
struct Plans {
    plans: HashMap<PlanKey, (SharedPlan, u64)>,
    lookups: u64,
}

type Cache = Mutex<Plans>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_forward(kind: sys::cufftType) -> bool {
    matches!(kind, sys::cufftType::CUFFT_R2C | sys::cufftType::CUFFT_D2Z)
}

/// The plan for `batch` contiguous real transforms of length `len` (half spectra of
/// `len / 2 + 1` bins, also contiguous) of type `kind`, on `dev`'s stream.
pub(crate) fn plan(
    dev: &CudaDevice,
    len: usize,
    batch: usize,
    kind: sys::cufftType,
) -> Result<SharedPlan> {
    let key = PlanKey {
        device: dev.id(),
        thread: std::thread::current().id(),
        len,
        batch,
        kind,
    };
    let mut cache = lock(cache());
    cache.lookups += 1;
    let now = cache.lookups;
    if let Some((plan, used)) = cache.plans.get_mut(&key) {
        *used = now;
        return Ok(plan.clone());
    }
    let to_i32 = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| {
            Error::Msg(format!(
                "circulant (cuda): cuFFT {what} {v} does not fit a 32-bit plan"
            ))
            .bt()
        })
    };
    let real = to_i32(len, "length")?;
    let complex = to_i32(len / 2 + 1, "length")?;
    let batch_i32 = to_i32(batch, "batch")?;
    let (idist, odist) = if is_forward(kind) {
        (real, complex)
    } else {
        (complex, real)
    };
    let plan = CudaFft::plan_many(
        &[real],
        Some(&[idist]),
        1,
        idist,
        Some(&[odist]),
        1,
        odist,
        kind,
        batch_i32,
        dev.cuda_stream(),
    )
    .map_err(|e| {
        Error::wrap(e).context(format!(
            "circulant (cuda): creating a cuFFT {kind:?} plan (length {len}, batch {batch})"
        ))
    })?;
    if cache.plans.len() >= MAX_PLANS {
        let oldest = cache.plans.iter().min_by_key(|(_, (_, used))| *used);
        if let Some(oldest) = oldest.map(|(k, _)| *k) {
            cache.plans.remove(&oldest);
        }
    }
    let plan = Arc::new(Mutex::new(plan));
    cache.plans.insert(key, (plan.clone(), now));
    Ok(plan)
}
