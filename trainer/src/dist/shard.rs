//! Which samples each rank trains on.
//!
//! An epoch is one permutation of the training set (`data::epoch_order`, the same for every
//! world size), cut into global batches of `world × batch` samples, as a one-process run with
//! that batch size would cut it. Rank `r` trains on the `r`-th contiguous part of each global
//! batch. Every global batch but the last is full (`batch` samples per rank); the last one, of
//! `t` samples, is split as evenly as possible: the first `t % world` ranks take
//! `t / world + 1` samples, the others `t / world`, so a rank may take none when `t < world`.
//! Such a rank still takes part in the step (with a zero gradient): each rank weighs its
//! gradient by its share `n_r / t`, so the summed gradient is the mean over the `t` samples,
//! as in the one-process run. Every sample is trained on exactly once per epoch.

use std::ops::Range;

use anyhow::{bail, Result};

/// The part of `0..len` that rank `rank` of `world` takes: even parts, the first `len % world`
/// ranks one item more.
pub fn split(len: usize, world: usize, rank: usize) -> Range<usize> {
    let (base, extra) = (len / world.max(1), len % world.max(1));
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Steps of an epoch of `len` samples with global batches of `global_batch`.
pub fn steps_per_epoch(len: usize, global_batch: usize) -> usize {
    len.div_ceil(global_batch.max(1))
}

/// The steps of one epoch, from where it stands, for one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochShard {
    len: usize,
    batch: usize,
    world: usize,
    rank: usize,
    /// Steps of the epoch already done.
    first_step: usize,
    /// Samples of the epoch already trained on: where `first_step` starts in the permutation.
    offset: usize,
}

impl EpochShard {
    /// An epoch of `len` samples, `batch` per rank and step, seen by rank `rank` of `world`,
    /// of which `done_steps` steps covering `done_samples` samples are done (0 and 0 at its
    /// start). A run resumed with another world size continues at `done_samples` with its own
    /// global batch size.
    pub fn new(
        len: usize,
        batch: usize,
        world: usize,
        rank: usize,
        done_steps: usize,
        done_samples: usize,
    ) -> Result<Self> {
        if batch == 0 || world == 0 || rank >= world {
            bail!("bad data shard: batch {batch}, rank {rank} of {world}");
        }
        if done_samples > len {
            bail!("the run has trained on {done_samples} samples of an epoch of {len}");
        }
        Ok(EpochShard {
            len,
            batch,
            world,
            rank,
            first_step: done_steps,
            offset: done_samples,
        })
    }

    /// Samples per step over every rank.
    pub fn global_batch(&self) -> usize {
        self.batch * self.world
    }

    /// The first step still to do.
    pub fn first_step(&self) -> usize {
        self.first_step
    }

    /// The number of steps of the whole epoch (done ones included).
    pub fn steps(&self) -> usize {
        self.first_step + steps_per_epoch(self.len - self.offset, self.global_batch())
    }

    /// Positions in the epoch's permutation of global batch `step` (empty outside
    /// `first_step()..steps()`).
    pub fn global_range(&self, step: usize) -> Range<usize> {
        if step < self.first_step || step >= self.steps() {
            return 0..0;
        }
        let start = self.offset + (step - self.first_step) * self.global_batch();
        start..(start + self.global_batch()).min(self.len)
    }

    /// Positions in the permutation of this rank's part of global batch `step`.
    pub fn rank_range(&self, step: usize) -> Range<usize> {
        let g = self.global_range(step);
        let part = split(g.len(), self.world, self.rank);
        g.start + part.start..g.start + part.end
    }

    /// This rank's samples of the steps still to do, in order: cut into chunks of `batch`, they
    /// are its batches (only the last may be shorter, or missing when its part is empty).
    pub fn local_order(&self, order: &[u32]) -> Vec<u32> {
        (self.first_step..self.steps())
            .flat_map(|k| order[self.rank_range(k)].iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_and_covers() {
        for len in 0..40 {
            for world in 1..10 {
                let parts: Vec<_> = (0..world).map(|r| split(len, world, r)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }

    /// Every sample once per epoch, global batches as a one-process run with `world × batch`
    /// cuts them, full per-rank batches but in the last step, and per-rank orders that the
    /// loader cuts into exactly the per-step parts.
    #[test]
    fn every_sample_exactly_once_across_world_sizes_and_tails() {
        for world in 1..=9 {
            for batch in 1..=5 {
                for len in 0..=70 {
                    check_epoch(len, batch, world, 0, 0);
                }
            }
        }
    }

    fn check_epoch(len: usize, batch: usize, world: usize, done_steps: usize, done: usize) {
        let order: Vec<u32> = (0..len as u32).rev().collect();
        let shards: Vec<EpochShard> = (0..world)
            .map(|r| EpochShard::new(len, batch, world, r, done_steps, done).unwrap())
            .collect();
        let steps = shards[0].steps();
        let mut seen = Vec::new();
        let g = batch * world;
        for k in done_steps..steps {
            let global = shards[0].global_range(k);
            assert_eq!(global.start, done + (k - done_steps) * g);
            assert_eq!(global.len(), g.min(len - global.start));
            for s in &shards {
                assert_eq!(s.steps(), steps);
                assert_eq!(s.global_range(k), global);
                let part = s.rank_range(k);
                if k + 1 < steps {
                    assert_eq!(part.len(), batch, "full step {k} of {len}/{batch}/{world}");
                } else {
                    assert!(part.len() <= batch);
                }
                seen.extend(part);
            }
        }
        assert_eq!(
            seen,
            (done..len).collect::<Vec<_>>(),
            "{len}/{batch}/{world}"
        );
        for s in &shards {
            let local = s.local_order(&order);
            let parts: Vec<Vec<u32>> = (done_steps..steps)
                .map(|k| order[s.rank_range(k)].to_vec())
                .filter(|p| !p.is_empty())
                .collect();
            let chunks: Vec<Vec<u32>> = local.chunks(batch).map(|c| c.to_vec()).collect();
            assert_eq!(chunks, parts, "{len}/{batch}/{world} rank {}", s.rank);
        }
        // The global batches are the one-process run's batches with `world × batch`.
        if done == 0 {
            let one = EpochShard::new(len, g, 1, 0, 0, 0).unwrap();
            assert_eq!(one.steps(), steps);
            let chunks: Vec<Vec<u32>> = one
                .local_order(&order)
                .chunks(g)
                .map(|c| c.to_vec())
                .collect();
            let globals: Vec<Vec<u32>> = (0..steps)
                .map(|k| order[shards[0].global_range(k)].to_vec())
                .collect();
            assert_eq!(chunks, globals);
        }
    }

    #[test]
    fn uneven_tail_weights_and_empty_parts() {
        // 10 samples, 4 ranks of batch 2: a full step of 8, then a tail of 2 for ranks 0 and 1.
        let s: Vec<_> = (0..4)
            .map(|r| EpochShard::new(10, 2, 4, r, 0, 0).unwrap())
            .collect();
        assert_eq!(s[0].steps(), 2);
        let tail: Vec<_> = s.iter().map(|s| s.rank_range(1)).collect();
        assert_eq!(tail, vec![8..9, 9..10, 10..10, 10..10]);
        assert!(s[3].local_order(&(0..10).collect::<Vec<_>>()) == vec![6, 7]);
    }

    #[test]
    fn resuming_mid_epoch_with_another_world_size_covers_the_rest() {
        // Stopped after 3 steps of 2 ranks × 4 (24 samples), continued by 1, 3 or 5 ranks.
        for world in [1, 2, 3, 5] {
            for len in [24, 25, 40, 77] {
                check_epoch(len, 4, world, 3, 24);
            }
        }
        assert!(EpochShard::new(10, 1, 1, 0, 11, 11).is_err());
        assert!(EpochShard::new(10, 0, 1, 0, 0, 0).is_err());
        assert!(EpochShard::new(10, 1, 2, 2, 0, 0).is_err());
        // Out-of-range steps are empty.
        let s = EpochShard::new(10, 2, 2, 1, 1, 4).unwrap();
        assert_eq!((s.global_range(0), s.global_range(3)), (0..0, 0..0));
    }
}
