//! What a process of a run may write.

/// Rank 0 (or the only process) writes the run directory: checkpoints, metrics, curves, the
/// lock. The other ranks of a data-parallel run write nothing there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Writer,
    Silent,
}

impl Role {
    pub fn of_rank(rank: usize) -> Self {
        if rank == 0 {
            Role::Writer
        } else {
            Role::Silent
        }
    }

    pub fn writes(self) -> bool {
        self == Role::Writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rank_zero_writes() {
        assert!(Role::of_rank(0).writes());
        assert!((1..64).all(|r| !Role::of_rank(r).writes()));
    }
}
