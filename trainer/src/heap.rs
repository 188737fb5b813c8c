//! Allocator setting for training loops.
//!
//! Every step allocates and frees many multi-MB tensors. With glibc's defaults the heap shrinks
//! after each free and the next step page-faults the memory back in; at d = 4096, batch 128 this
//! more than doubles the circulant layer's fwd+bwd time (docs/BENCHMARKS.md). Keeping 256 MiB
//! of slack at the top of the heap (`M_TOP_PAD`, like `MALLOC_TOP_PAD_=268435456`) avoids it.

/// Keeps 256 MiB of heap slack (glibc on Linux only; elsewhere a no-op). An explicit
/// `MALLOC_TOP_PAD_` in the environment wins.
pub fn keep_heap_slack() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_TOP_PAD_").is_none() {
        // SAFETY: mallopt only changes a glibc tuning parameter; it is called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        }
    }
}
