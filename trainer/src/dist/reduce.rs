//! Summing gradients over the ranks, a bucket per collective call.

use anyhow::{bail, Result};
use candle_core::{Shape, Tensor};

use super::bucket::{self, BUCKET_BYTES};

/// A sum over every rank of a world: NCCL's all-reduce (`dist::nccl`), or a stand-in in tests.
/// Every rank calls [`Collective::sum`] with tensors of the same length, in the same order.
pub trait Collective {
    fn rank(&self) -> usize;
    /// The element-wise sum over the ranks of a contiguous 1-D f32 tensor.
    fn sum(&mut self, flat: &Tensor) -> Result<Tensor>;
}

/// Sums lists of tensors over the ranks, flattened into buckets of at most [`BUCKET_BYTES`].
pub struct GradSync {
    comm: Box<dyn Collective>,
    max_elems: usize,
}

impl GradSync {
    pub fn new(comm: Box<dyn Collective>) -> Self {
        Self::with_bucket_elems(comm, BUCKET_BYTES / 4)
    }

    /// Buckets of at most `max_elems` f32 elements.
    pub fn with_bucket_elems(comm: Box<dyn Collective>, max_elems: usize) -> Self {
        GradSync {
            comm,
            max_elems: max_elems.max(1),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The sum over the ranks of each tensor (f32, any shapes; the same list on every rank).
    pub fn sum(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if let Some(t) = tensors
            .iter()
            .find(|t| t.dtype() != candle_core::DType::F32)
        {
            bail!("gradient sums take f32 tensors, got {:?}", t.dtype());
        }
        let shapes: Vec<Shape> = tensors.iter().map(|t| t.shape().clone()).collect();
        let numels: Vec<usize> = shapes.iter().map(|s| s.elem_count()).collect();
        let mut out = Vec::with_capacity(tensors.len());
        for b in bucket::plan(&numels, self.max_elems) {
            let summed = self.comm.sum(&bucket::flatten(&tensors[b.clone()])?)?;
            out.extend(bucket::unflatten(&summed, &shapes[b])?);
        }
        Ok(out)
    }
}

/// In-process stand-ins for NCCL, for tests on the CPU.
#[cfg(test)]
pub mod testing {
    use std::sync::{Arc, Barrier, Mutex};

    use super::*;

    /// Ranks as threads of one process: every [`Collective::sum`] waits for all of them.
    pub struct ThreadComm {
        rank: usize,
        shared: Arc<Shared>,
        /// Collective calls made by this rank.
        pub calls: usize,
    }

    struct Shared {
        slots: Mutex<Vec<Vec<f32>>>,
        barrier: Barrier,
    }

    /// One communicator per rank of a world of `size`.
    pub fn thread_group(size: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); size]),
            barrier: Barrier::new(size),
        });
        (0..size)
            .map(|rank| ThreadComm {
                rank,
                shared: shared.clone(),
                calls: 0,
            })
            .collect()
    }

    impl Collective for ThreadComm {
        fn rank(&self) -> usize {
            self.rank
        }

        fn sum(&mut self, flat: &Tensor) -> Result<Tensor> {
            self.calls += 1;
            self.shared.slots.lock().unwrap()[self.rank] = flat.to_vec1::<f32>()?;
            self.shared.barrier.wait();
            let total = {
                let slots = self.shared.slots.lock().unwrap();
                let mut total = vec![0f32; slots[0].len()];
                for s in slots.iter() {
                    if s.len() != total.len() {
                        bail!("ranks summed tensors of different lengths");
                    }
                    total.iter_mut().zip(s).for_each(|(t, x)| *t += x);
                }
                total
            };
            self.shared.barrier.wait();
            Ok(Tensor::from_vec(total, flat.elem_count(), flat.device())?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::thread_group;
    use super::*;
    use candle_core::Device;

    /// Counts calls and leaves the tensor as it is (a world of one).
    struct Counting(std::rc::Rc<std::cell::Cell<usize>>);

    impl Collective for Counting {
        fn rank(&self) -> usize {
            0
        }
        fn sum(&mut self, flat: &Tensor) -> Result<Tensor> {
            self.0.set(self.0.get() + 1);
            Ok(flat.clone())
        }
    }

    #[test]
    fn one_call_per_bucket() -> Result<()> {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut sync = GradSync::with_bucket_elems(Box::new(Counting(calls.clone())), 10);
        let dev = Device::Cpu;
        let ts = [6usize, 3, 12, 2, 2]
            .iter()
            .map(|&n| Ok(Tensor::ones(n, candle_core::DType::F32, &dev)?))
            .collect::<Result<Vec<_>>>()?;
        let out = sync.sum(&ts)?;
        assert_eq!(calls.get(), 3); // [6, 3], [12], [2, 2]
        assert_eq!(out.len(), 5);
        assert!(GradSync::new(Box::new(Counting(calls)))
            .sum(&[ts[0].to_dtype(candle_core::DType::F64)?])
            .is_err());
        Ok(())
    }

    #[test]
    fn ranks_get_the_sum_of_every_tensor() {
        let handles: Vec<_> = thread_group(3)
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || -> Result<Vec<Vec<f32>>> {
                    let r = comm.rank() as f32;
                    let mut sync = GradSync::with_bucket_elems(Box::new(comm), 5);
                    let dev = Device::Cpu;
                    let a = (Tensor::arange(0f32, 6., &dev)?.reshape((2, 3))? + r as f64)?;
                    let b = Tensor::full(r, (), &dev)?;
                    let c = Tensor::full(10. * r, 4, &dev)?;
                    let out = sync.sum(&[a, b, c])?;
                    assert_eq!(out[0].dims(), [2, 3]);
                    assert_eq!(out[1].dims(), [0usize; 0]);
                    out.iter()
                        .map(|t| Ok(t.flatten_all()?.to_vec1()?))
                        .collect()
                })
            })
            .collect();
        for h in handles {
            let out = h.join().unwrap().unwrap();
            assert_eq!(out[0], vec![3., 6., 9., 12., 15., 18.]);
            assert_eq!(out[1], vec![3.]);
            assert_eq!(out[2], vec![30.; 4]);
        }
    }
}
