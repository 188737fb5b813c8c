//! Process settings the trainer makes once at start (a library never does): thread pools, the
//! C heap, huge pages, denormal floats, the GPU memory pool. Each can be overridden from the
//! environment; `trainer --help` lists them, and docs/BENCHMARKS.md has the measurements behind
//! them.

use candle_core::Device;

/// Environment variable that, set to `0`, leaves the CUDA memory pool's default alone.
pub const KEEP_DEVICE_MEMORY: &str = "CIRCULANT_KEEP_DEVICE_MEMORY";

/// Environment variable that, set to `1`, keeps denormal floats (no flush to zero).
pub const KEEP_DENORMALS: &str = "CIRCULANT_KEEP_DENORMALS";

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
    if !env_is(crate::huge_pages::NO_HUGE_PAGES, "1") {
        crate::huge_pages::enable();
    }
    if !env_is(KEEP_DENORMALS, "1") {
        flush_denormals();
    }
}

/// Whether the environment variable `name` is set to `value` (around spaces).
fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == value)
}

/// Makes this thread's SSE/AVX arithmetic treat denormal floats (below 2^-126 in f32) as 0,
/// inputs and results (MXCSR's DAZ and FTZ bits), as TensorFlow does on the CPU; threads
/// started later (rayon's) inherit it. Tiny gradients reach that range once a network fits its
/// batch, and Intel cores take a slow microcode path for each such operand: a mnist-cnn batch-1
/// training step ran 3.7× slower on a Xeon (docs/bench/denormals-2026-12-01-cpu.txt).
fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ_DAZ: u32 = 0x8040;
        let mut csr = 0u32;
        // SAFETY: stmxcsr / ldmxcsr read and write this thread's MXCSR through a valid u32;
        // setting FTZ and DAZ changes no other state.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
    }
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
    if env_is(KEEP_DEVICE_MEMORY, "0") {
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

    /// After `flush_denormals`, a thread started later computes with denormals as 0.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn denormals_are_flushed_in_later_threads() {
        use std::hint::black_box;
        let tiny = f32::MIN_POSITIVE / 4.0;
        // A real multiplication (`x * 1.0` alone would be folded away).
        let times_one = move || black_box(tiny) * black_box(1.0f32);
        // Threads of their own on both sides: the compiler may move arithmetic across the
        // MXCSR write, not across starting a thread.
        let (keeps, flushes) = std::thread::spawn(move || {
            let keeps = std::thread::spawn(times_one).join().unwrap();
            flush_denormals();
            (keeps, std::thread::spawn(times_one).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(keeps, tiny);
        assert_eq!(flushes, 0.0);
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
