//! Data-parallel training: every rank (process, one per GPU) holds the whole model, trains on
//! its shard of each global batch, and sums the gradients with NCCL's all-reduce, flattened into
//! a few large buckets. Rank 0 alone writes the run directory.
//!
//! - [`world`]: who this process is (`--gpus`, `--nnodes`, ... or WORLD_SIZE, RANK, ...);
//! - [`launch`]: `--gpus N` starts N workers of this node and waits for them;
//! - [`rendezvous`]: rank 0 hands the NCCL unique id to the others over TCP;
//! - [`shard`]: which samples of each epoch each rank trains on;
//! - [`bucket`], [`reduce`]: gradients summed over the ranks, a bucket per call;
//! - `nccl` (feature `nccl`): the sums on the GPU;
//! - [`role`]: who writes the run directory.

pub mod bucket;
pub mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
// Only the sums over NCCL use these outside tests.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub mod reduce;
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub mod rendezvous;
pub mod role;
pub mod shard;
pub mod world;

use std::time::Duration;

use anyhow::{anyhow, Result};
use candle_core::Device;

pub use reduce::GradSync;
pub use role::Role;
pub use world::{plan, DistFlags, Master, Plan, World};

/// Whether this trainer was built with NCCL (the `nccl` feature).
pub const HAS_NCCL: bool = cfg!(feature = "nccl");

/// Fails unless the trainer was built with the `nccl` feature; `what` names what asked for
/// several processes.
pub fn require_nccl(what: &str) -> Result<()> {
    if !HAS_NCCL {
        return Err(no_nccl(what));
    }
    Ok(())
}

fn no_nccl(what: &str) -> anyhow::Error {
    anyhow!(
        "{what} asks for several training processes, which needs a trainer built with NCCL: \
         `cargo build --release -p trainer --features nccl` (CUDA toolkit and NCCL: \
         scripts/prepare-cuda-toolkit.sh); without it, train on one device (--device cuda)"
    )
}

/// The device of rank `world`: GPU `LOCAL_RANK` (modulo the GPUs visible).
pub fn device_spec(world: &World) -> Result<String> {
    #[cfg(feature = "nccl")]
    return Ok(format!("cuda:{}", nccl::gpu_for(world.local_rank)?));
    #[cfg(not(feature = "nccl"))]
    {
        let _ = world;
        Err(no_nccl("a data-parallel run"))
    }
}

/// Connects this rank to the others (rendezvous, then NCCL) and returns its gradient sums.
pub fn connect(world: &World, device: &Device, timeout: Duration) -> Result<GradSync> {
    #[cfg(feature = "nccl")]
    return Ok(GradSync::new(Box::new(nccl::NcclComm::connect(
        world, device, timeout,
    )?)));
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (world, device, timeout);
        Err(no_nccl("a data-parallel run"))
    }
}
