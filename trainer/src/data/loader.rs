//! Background batch loading: a producer thread decodes batches on a thread pool, in order, into
//! a bounded queue, so decoding overlaps training and memory stays bounded.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::{derive_seed, Source};

/// A mini-batch of normalised samples.
pub struct Batch {
    /// Index of the batch within the epoch.
    pub index: usize,
    /// `labels.len()` samples, CHW f32 each, concatenated.
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
}

/// How batches are produced.
#[derive(Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Floats per sample (C*H*W).
    pub sample_numel: usize,
    /// Decode threads.
    pub pool: Arc<rayon::ThreadPool>,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, sample_numel: usize, workers: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .context("cannot start the image decode threads")?;
        Ok(LoaderConfig {
            batch_size,
            sample_numel,
            pool: Arc::new(pool),
            prefetch: 4,
        })
    }
}

/// Default decode thread count: the number of CPUs.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Iterator over the batches of one pass; dropping it stops the producer.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
}

impl Loader {
    /// Starts producing the batches of `order` (sample indices), beginning with batch
    /// `first_batch`. With `augment = Some(seed)`, sample `i` gets augmentation seed
    /// `derive_seed(seed, [i])`, so the result does not depend on threading.
    pub fn spawn(
        source: Arc<dyn Source>,
        order: Arc<Vec<u32>>,
        first_batch: usize,
        augment: Option<u64>,
        cfg: &LoaderConfig,
    ) -> Loader {
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let cfg = cfg.clone();
        let err_tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || {
                let bs = cfg.batch_size.max(1);
                for (index, idx) in order.chunks(bs).enumerate().skip(first_batch) {
                    let mut images = vec![0f32; idx.len() * cfg.sample_numel];
                    let labels: Result<Vec<u32>> = cfg.pool.install(|| {
                        images
                            .par_chunks_mut(cfg.sample_numel)
                            .zip(idx.par_iter())
                            .map(|(out, &i)| {
                                let seed = augment.map(|s| derive_seed(s, &[i as u64]));
                                source.load(i as usize, seed, out)
                            })
                            .collect()
                    });
                    let failed = labels.is_err();
                    let msg = labels.map(|labels| Batch {
                        index,
                        images,
                        labels,
                    });
                    if tx.send(msg).is_err() || failed {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = err_tx.send(Err(anyhow::anyhow!("cannot start the batch loader: {e}")));
        }
        Loader { rx }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}
