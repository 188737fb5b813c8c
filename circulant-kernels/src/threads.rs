//! Keeping candle's element-wise thread pool out of rayon's way.
//!
//! This crate's CPU kernels run on rayon's pool. candle 0.11 runs its large element-wise CPU
//! ops (64k elements and more: the adds that accumulate gradients, activations) on a second,
//! "barrier" pool of `CANDLE_NUM_THREADS` threads, by default one per core. The two pools take
//! turns, and the idle one's spinning workers slow the busy one: on 2 cores, a circulant
//! fwd+bwd at d = 4096, batch 128 takes 1.09–1.16 ms with both pools and 0.84–0.92 ms
//! without candle's, and `mnist-cnn` training runs 13–23% faster (docs/BENCHMARKS.md).

/// Makes candle run its element-wise CPU ops on the calling thread (`CANDLE_NUM_THREADS=1`),
/// leaving the cores to rayon. Call it at the start of `main`, before any tensor op (candle
/// sizes its pool once, on first use). An existing `CANDLE_NUM_THREADS` is left alone. Returns
/// whether the setting was made.
pub fn serial_candle_elementwise() -> bool {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return false;
    }
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    true
}
