//! Keeping freed memory in the process (glibc's malloc), for training and benchmark loops.
//!
//! Every training step allocates and frees multi-MB buffers (activations, spectra,
//! gradients). Depending on what ran before, glibc's default, self-adjusting settings either
//! hand those buffers back to the kernel on every free (`munmap`, heap trimming) or keep them;
//! when they are handed back, the next step page-faults them in again. At d = 4096, batch 128
//! that makes the circulant layer's fwd+bwd 3× slower (docs/BENCHMARKS.md) and a whole
//! `mnist-cnn` training step 2× slower. [`keep_freed_memory`] fixes the settings so that the
//! buffers stay mapped.

/// Makes glibc keep freed memory for reuse: allocations up to 32 MiB come from the heap
/// (`M_MMAP_THRESHOLD`), the heap is trimmed only when more than 1 GiB at its top is free
/// (`M_TRIM_THRESHOLD`) and keeps 256 MiB of slack when it grows (`M_TOP_PAD`). The cost is
/// memory: a process may hold on to up to about 1 GiB it no longer uses.
///
/// Call it once at the start of `main`, before other threads start. A setting given in the
/// environment (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`) is left
/// alone. Returns whether glibc accepted every setting it was given (`false` if one was
/// rejected, or none was given); on other platforms it does nothing and returns `false`.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 32 << 20),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 1 << 30),
            ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, 256 << 20),
        ];
        let (mut given, mut accepted) = (0, 0);
        for (env, param, value) in settings {
            if std::env::var_os(env).is_none() {
                given += 1;
                // SAFETY: mallopt only changes a malloc tuning parameter.
                accepted += usize::from(unsafe { libc::mallopt(param, value) } == 1);
            }
        }
        given > 0 && accepted == given
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    /// glibc accepts all three values (it rejects, for one, an mmap threshold above 32 MiB).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        let from_env = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_TOP_PAD_",
        ]
        .iter()
        .all(|v| std::env::var_os(v).is_some());
        assert_eq!(super::keep_freed_memory(), !from_env);
        // Allocation still works, small and large.
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
