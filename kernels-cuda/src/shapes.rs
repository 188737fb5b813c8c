//! Grid and block shapes of the kernels' launches: plain arithmetic, built without the `cuda`
//! feature too, so that kernels-emu runs the kernels on the CPU in the shapes used on a GPU.

/// A launch's grid and block sizes, `(x, y, z)` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchShape {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// Threads per block of the grid-stride kernels and of batch norm's reductions (BN_THREADS in
/// batch_norm.cu).
pub const THREADS: u32 = 256;
/// Grid-stride loops cover any size; more blocks than this add nothing.
const MAX_BLOCKS: usize = 1 << 20;
/// Block shape of `circ_contract_dr`: frequencies x batch lanes (DR_F x DR_N in circulant.cu).
const DR_F: u32 = 32;
const DR_N: u32 = 8;
/// CUDA's limit on grid y.
const MAX_GRID_Y: usize = 65_535;
/// Values of a channel one batch-norm reduction block takes at least.
const BN_PER_BLOCK: usize = 16 * THREADS as usize;
/// Most reduction blocks per channel (grid y).
const BN_MAX_SPLITS: usize = 256;

/// `THREADS`-wide blocks over `len` elements for a grid-stride kernel.
pub fn elementwise(len: usize) -> LaunchShape {
    LaunchShape {
        grid: (len.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32, 1, 1),
        block: (THREADS, 1, 1),
    }
}

/// `circ_contract_dr` over half spectra of `nf` bins and `p x q` blocks: a block row per
/// `(i, j)` (up to grid y's limit; a row then loops), or `None` if `nf` needs more than 2^32
/// blocks.
pub fn contract_dr(nf: usize, p: usize, q: usize) -> Option<LaunchShape> {
    let gx = u32::try_from(nf.div_ceil(DR_F as usize)).ok()?;
    Some(LaunchShape {
        grid: (gx, p.saturating_mul(q).min(MAX_GRID_Y) as u32, 1),
        block: (DR_F, DR_N, 1),
    })
}

/// Reduction blocks per channel of `count` values (batch norm).
pub fn bn_splits(count: usize) -> u32 {
    count.div_ceil(BN_PER_BLOCK).clamp(1, BN_MAX_SPLITS) as u32
}

/// Batch norm's reductions: a grid `(c, splits)` of `THREADS`-wide blocks.
pub fn bn_reduce(c: u32, splits: u32) -> LaunchShape {
    LaunchShape {
        grid: (c, splits, 1),
        block: (THREADS, 1, 1),
    }
}

/// One thread per channel.
pub fn per_channel(c: u32) -> LaunchShape {
    LaunchShape {
        grid: (c.div_ceil(THREADS), 1, 1),
        block: (THREADS, 1, 1),
    }
}

#[cfg(feature = "cuda")]
impl LaunchShape {
    /// The shape as cudarc takes it (no dynamic shared memory).
    pub(crate) fn config(self) -> cudarc::driver::LaunchConfig {
        cudarc::driver::LaunchConfig {
            grid_dim: self.grid,
            block_dim: self.block,
            shared_mem_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_their_work() {
        for len in [1, 255, 256, 257, 1 << 20, (1 << 28) + 1] {
            let s = elementwise(len);
            let threads = s.grid.0 as usize * s.block.0 as usize;
            assert!(
                threads >= len.min(MAX_BLOCKS * THREADS as usize),
                "len {len}"
            );
            assert!(s.grid.0 >= 1);
        }
        let s = contract_dr(33, 3, 5).unwrap();
        assert_eq!(
            s,
            LaunchShape {
                grid: (2, 15, 1),
                block: (32, 8, 1)
            }
        );
        assert_eq!(contract_dr(1, 1000, 1000).unwrap().grid.1, 65_535);
        assert_eq!(bn_splits(1), 1);
        assert_eq!(bn_splits(BN_PER_BLOCK + 1), 2);
        assert_eq!(bn_splits(usize::MAX / 2), 256);
        assert_eq!(per_channel(257).grid, (2, 1, 1));
    }
}
