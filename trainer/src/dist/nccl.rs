//! Gradient sums over NCCL (cudarc's `nccl` module), on candle's CUDA stream.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{CudaDevice, DType, Device, Storage, Tensor};
use cudarc::driver::CudaContext;
use cudarc::nccl::{result::NcclError, Comm, Id, ReduceOp};

use super::reduce::Collective;
use super::rendezvous;
use super::world::World;

/// Bytes of an NCCL unique id.
const ID_BYTES: usize = 128;

fn nccl(what: &str) -> impl FnOnce(NcclError) -> anyhow::Error + '_ {
    move |e| anyhow!("NCCL {what} failed: {:?}", e.0)
}

/// One rank's NCCL communicator, issuing its work on the stream of a candle CUDA device.
pub struct NcclComm {
    comm: Comm,
    device: CudaDevice,
}

impl NcclComm {
    /// Joins the world: rank 0 makes the NCCL unique id and hands it to the other ranks over
    /// the TCP rendezvous on `MASTER_PORT` (waiting up to `timeout` for all of them).
    pub fn connect(world: &World, device: &Device, timeout: Duration) -> Result<Self> {
        let id = if world.rank == 0 {
            let listener = rendezvous::bind(&world.master)?;
            let id = Id::new().map_err(nccl("ncclGetUniqueId"))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            rendezvous::serve(listener, world.size, &bytes, timeout)?;
            id
        } else {
            let bytes = rendezvous::join(&world.master, world.rank, world.size, ID_BYTES, timeout)?;
            let mut internal = [0 as std::ffi::c_char; ID_BYTES];
            internal
                .iter_mut()
                .zip(&bytes)
                .for_each(|(c, &b)| *c = b as std::ffi::c_char);
            Id::uninit(internal)
        };
        Self::init(world.rank, world.size, id, device)
    }

    /// A world of one rank (tests).
    #[cfg(test)]
    pub fn single(device: &Device) -> Result<Self> {
        Self::init(0, 1, Id::new().map_err(nccl("ncclGetUniqueId"))?, device)
    }

    fn init(rank: usize, size: usize, id: Id, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            bail!("NCCL needs a CUDA device, got {device:?}");
        };
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .context("cannot make the CUDA context current")?;
        let comm = Comm::from_rank(stream, rank, size, id).map_err(nccl("ncclCommInitRank"))?;
        Ok(NcclComm {
            comm,
            device: dev.clone(),
        })
    }
}

impl Collective for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn sum(&mut self, flat: &Tensor) -> Result<Tensor> {
        if flat.dtype() != DType::F32 || flat.rank() != 1 {
            bail!(
                "NCCL sums take 1-D f32 tensors, got {:?} {:?}",
                flat.dtype(),
                flat.dims()
            );
        }
        let n = flat.elem_count();
        let stream = self.comm.stream();
        let mut out = stream.alloc_zeros::<f32>(n)?;
        {
            let (storage, layout) = flat.storage_and_layout();
            let Storage::Cuda(cuda) = &*storage else {
                bail!("NCCL sums take CUDA tensors");
            };
            let (start, end) = layout
                .contiguous_offsets()
                .context("NCCL sums take contiguous tensors")?;
            let src = cuda.as_cuda_slice::<f32>()?.slice(start..end);
            self.comm
                .all_reduce(&src, &mut out, &ReduceOp::Sum)
                .map_err(nccl("ncclAllReduce"))?;
        }
        Ok(kernels_cuda::tensor_from_slice(out, &self.device, n))
    }
}

/// The GPU of local rank `local_rank`: `local_rank` modulo the GPUs visible (several ranks share
/// a GPU when there are fewer GPUs than ranks, e.g. for tests).
pub fn gpu_for(local_rank: usize) -> Result<usize> {
    let count = CudaContext::device_count().context("cannot count the CUDA devices")?;
    if count <= 0 {
        bail!("no CUDA device is visible");
    }
    Ok(local_rank % count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CUDA device, or `None` (printing why) unless `CIRCULANT_REQUIRE_CUDA=1`, which turns a
    /// missing device into a failure (as `circulant_kernels::testing::cuda_device`).
    fn cuda_device() -> Option<Device> {
        let err = match Device::new_cuda(0) {
            Ok(dev) => return Some(dev),
            Err(e) => e.to_string(),
        };
        if std::env::var("CIRCULANT_REQUIRE_CUDA").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("CIRCULANT_REQUIRE_CUDA is set but no CUDA device is usable: {err}");
        }
        eprintln!(
            "skipping: no CUDA device: {} (set CIRCULANT_REQUIRE_CUDA=1 to fail instead)",
            err.lines().next().unwrap_or_default()
        );
        None
    }

    /// One rank: the all-reduce (through the buckets) gives every tensor back unchanged.
    #[test]
    fn one_rank_all_reduce_gives_the_tensors_back() -> Result<()> {
        let Some(dev) = cuda_device() else {
            return Ok(());
        };
        let comm = NcclComm::single(&dev)?;
        let mut sync = super::super::GradSync::with_bucket_elems(Box::new(comm), 1000);
        let ts = [vec![3usize, 5], vec![700], vec![2, 2, 2], vec![]]
            .iter()
            .enumerate()
            .map(|(i, s)| Ok(Tensor::randn(i as f32, 1.0, s.as_slice(), &dev)?))
            .collect::<Result<Vec<_>>>()?;
        let out = sync.sum(&ts)?;
        for (a, b) in out.iter().zip(&ts) {
            assert_eq!(a.dims(), b.dims());
            let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
            let b: Vec<f32> = b.flatten_all()?.to_vec1()?;
            assert_eq!(a, b);
        }
        // Through the rendezvous too, on a free local port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let world = World {
            size: 1,
            rank: 0,
            local_rank: 0,
            master: format!("127.0.0.1:{port}")
                .parse()
                .map_err(anyhow::Error::msg)?,
        };
        let mut comm = NcclComm::connect(&world, &dev, Duration::from_secs(10))?;
        let x = Tensor::arange(0f32, 10., &dev)?;
        assert_eq!(comm.sum(&x)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        Ok(())
    }
}
