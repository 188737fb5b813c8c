//! The trainer's global allocator: the system allocator, asking Linux to back the large blocks
//! it hands out (weights, activations, gradients: 4 MiB and more) with transparent huge pages
//! (`madvise(MADV_HUGEPAGE)`, which kernels configured with THP in `madvise` mode, the common
//! default, otherwise never use). Reading a weight matrix once per call, as a batch-1 dense
//! layer does, then misses the TLB every 2 MiB instead of every 4 KiB, and a fresh buffer takes
//! one page fault per 2 MiB instead of 512 (docs/BENCHMARKS.md has the measurements).
//!
//! Off until [`enable`] runs (`runtime::configure` calls it unless
//! `CIRCULANT_NO_HUGE_PAGES=1`); elsewhere than on Linux it does nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that, set to `1`, keeps the kernel's default pages.
pub const NO_HUGE_PAGES: &str = "CIRCULANT_NO_HUGE_PAGES";

/// Blocks of at least this many bytes are advised.
const MIN_BYTES: usize = 4 << 20;

/// The huge page size of x86-64 and most aarch64 kernels; only whole, aligned ones are advised.
const HUGE_PAGE: usize = 2 << 20;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the advice on for blocks allocated from now on.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// [`System`], with large blocks advised to use huge pages.
pub struct HugePageAlloc;

// SAFETY: every block comes from `System` with the caller's layout and goes back to it; the
// advice changes how the kernel backs the pages, never their contents or ownership.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        advise(q, new_size);
        q
    }
}

/// Advises the whole huge pages inside `[p, p + len)` when enabled and `len` is large enough.
/// The memory around them may belong to other blocks of the same heap: the advice only lets
/// the kernel use huge pages there too.
#[inline]
fn advise(p: *mut u8, len: usize) {
    if p.is_null() || len < MIN_BYTES || !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside a block this process owns; MADV_HUGEPAGE changes
            // no data. A failure (a kernel without THP) leaves the default pages.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Advised blocks keep their contents through allocation, growth and release.
    #[test]
    fn large_blocks_work_as_the_system_allocator_s() {
        enable();
        let a = HugePageAlloc;
        for size in [16, MIN_BYTES - 1, MIN_BYTES, 3 * HUGE_PAGE + 123] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero sizes; each block is written within its length and freed once.
            unsafe {
                let z = a.alloc_zeroed(layout);
                assert!(!z.is_null());
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                a.dealloc(z, layout);
                let p = a.alloc(layout);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 7, size);
                let q = a.realloc(p, layout, 2 * size);
                assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 7));
                a.dealloc(q, Layout::from_size_align(2 * size, 64).unwrap());
            }
        }
    }
}
