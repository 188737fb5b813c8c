//! Data-parallel training: every rank (process, one per GPU) holds the whole model, trains on
//! its shard of each global batch, and sums the gradients with NCCL's all-reduce, flattened into
//! a few large buckets. Rank 0 alone writes the run directory.
//!
//! - [`world`]: who this process is (`--gpus`, `--nnodes`, ... or WORLD_SIZE, RANK, ...);
//! - [`launch`]: `--gpus N` starts N workers of this node and waits for them;
//! - [`rendezvous`]: rank 0 hands the NCCL unique id to the others over TCP;
//! - [`shard`]: which samples of each epoch each rank trains on;
//! - [`bucket`], [`reduce`]: gradients summed over the ranks, a bucket per call;
//! - [`role`]: who writes the run directory.

pub mod bucket;
pub mod launch;
pub mod reduce;
pub mod rendezvous;
pub mod role;
pub mod shard;
pub mod world;

pub use reduce::{Collective, GradSync};
pub use role::Role;
pub use world::{plan, DistFlags, Launch, Master, Plan, World};
