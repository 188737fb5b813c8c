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
    /// Minor page faults of the whole process so far.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn minor_faults() -> i64 {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage.ru_minflt
        }
    }

    /// With the settings applied, freeing and re-allocating an 8 MiB buffer (the size of a
    /// d = 4096, batch 512 activation) reuses the same pages instead of faulting them in again.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_buffers_stay_mapped() {
        let from_env = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_TOP_PAD_",
        ]
        .iter()
        .all(|v| std::env::var_os(v).is_some());
        assert_eq!(super::keep_freed_memory(), !from_env);
        const LEN: usize = 8 << 20;
        let touch = || {
            let mut v = vec![0u8; LEN];
            v.iter_mut().step_by(4096).for_each(|b| *b = 1);
            std::hint::black_box(&v);
        };
        touch();
        let before = minor_faults();
        for _ in 0..50 {
            touch();
        }
        let faults = minor_faults() - before;
        // Each cycle would fault 2048 pages if the buffer went back to the kernel.
        assert!(faults < 50 * 2048 / 10, "{faults} page faults in 50 cycles");
    }
}
