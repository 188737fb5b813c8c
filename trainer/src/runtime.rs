//! Process settings the trainer makes once at start (a library never does): thread pools, the
//! C heap, the GPU memory pool. Each can be overridden from the environment; `trainer --help`
//! lists them, and docs/BENCHMARKS.md has the measurements behind them.

use candle_core::Device;

/// Environment variable that, set to `0`, leaves the CUDA memory pool's default alone.
pub const KEEP_DEVICE_MEMORY: &str = "CIRCULANT_KEEP_DEVICE_MEMORY";

/// The environment variables to set, given the current environment (`get`):
/// - `CANDLE_NUM_THREADS=1`: candle's element-wise ops run on the calling thread instead of a
///   second thread pool that takes turns with rayon's (13–23% faster mnist-cnn steps on 2 cores);
/// - `RAYON_NUM_THREADS=<available cores>`: the same thread count rayon picks by itself, but
///   candle 0.11 otherwise reads `/proc/cpuinfo` at every matmul to find it (8% of a mnist-cnn
///   training profile).
fn thread_settings(get: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    let mut set = Vec::new();
    if get("CANDLE_NUM_THREADS").is_none() {
        set.push(("CANDLE_NUM_THREADS", "1".to_string()));
    }
    if get("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        set.push(("RAYON_NUM_THREADS", cores.to_string()));
    }
    set
}

/// Applies the process settings. Call it first thing in `main`, before any other thread starts.
pub fn configure() {
    for (name, value) in thread_settings(|k| std::env::var(k).ok()) {
        // Sound here: no other thread exists yet.
        std::env::set_var(name, value);
    }
    keep_freed_heap_memory();
}

/// Makes glibc keep freed memory mapped: allocations up to 32 MiB come from the heap
/// (`M_MMAP_THRESHOLD`), the heap is trimmed only when more than 1 GiB at its top is free
/// (`M_TRIM_THRESHOLD`) and grows with 256 MiB of slack (`M_TOP_PAD`). Training frees and
/// allocates multi-MB buffers every step; with glibc's self-adjusting defaults they may go back
/// to the kernel at every free and be faulted in again (up to 2× slower steps). A setting given
/// in the environment (`MALLOC_MMAP_THRESHOLD_`, ...) is left alone. Returns whether every
/// setting made was accepted.
fn keep_freed_heap_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 32 << 20),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 1 << 30),
            ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, 256 << 20),
        ];
        let mut accepted = true;
        for (env, param, value) in settings {
            if std::env::var_os(env).is_none() {
                // SAFETY: mallopt only changes a malloc tuning parameter.
                accepted &= unsafe { libc::mallopt(param, value) } == 1;
            }
        }
        accepted
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// For a device that runs a training or benchmark loop: keeps freed GPU memory in the CUDA
/// memory pool (candle's default pool hands it back to the driver at every synchronisation,
/// so large layers map their buffers again every step). Does nothing on the CPU, or when
/// [`KEEP_DEVICE_MEMORY`] is `0`.
pub fn prepare_device(device: &Device) {
    if std::env::var(KEEP_DEVICE_MEMORY).is_ok_and(|v| v.trim() == "0") {
        return;
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        if let Err(e) = kernels_cuda::keep_freed_memory(dev) {
            eprintln!("warning: {e}; going on with the driver's default memory pool");
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_settings_leave_the_environment_s_choice_alone() {
        let set = thread_settings(|_| None);
        assert_eq!(set[0], ("CANDLE_NUM_THREADS", "1".to_string()));
        assert_eq!(set[1].0, "RAYON_NUM_THREADS");
        assert!(set[1].1.parse::<usize>().unwrap() >= 1);
        assert!(thread_settings(|_| Some("3".into())).is_empty());
    }

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

    /// With the settings applied, freeing and re-allocating an 8 MiB buffer (a d = 4096,
    /// batch 512 activation) reuses the same pages instead of faulting them in again.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_buffers_stay_mapped() {
        assert!(keep_freed_heap_memory());
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
