//! kernels-cuda's CUDA C kernels (`kernels-cuda/src/*.cu`), compiled as C++ for the CPU by
//! build.rs, and a launcher that runs them under an emulated grid. The tests in `tests/` run
//! every kernel this way against a plain reference, so the kernels' index arithmetic,
//! grid-stride loops and block reductions are checked in CI, where there is no GPU. What this
//! does not check: the PTX nvcc makes, the launches' argument lists in kernels-cuda (the GPU
//! tests do), races between blocks (blocks run one after another) and between a block's threads
//! (they run one at a time).
//!
//! A kernel is called as a plain function from the launch's body; it reads its thread and
//! block indices from the emulator. Complex values are `[re, im]` pairs (`float2`, `double2`).

use std::ffi::c_void;

pub use kernels_cuda::shapes::{self, LaunchShape};

/// Grid or block sizes as CUDA's `dim3`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dim3 {
    x: u32,
    y: u32,
    z: u32,
}

impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Dim3 { x, y, z }
    }
}

/// How a launch runs a block's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One after another on the calling thread: for kernels without `__syncthreads()` (one
    /// that calls it aborts the process with a message).
    Serial,
    /// As fibers on the calling thread that switch at `__syncthreads()`: every thread of the
    /// block runs up to the barrier before any goes past it.
    Synced,
}

extern "C" {
    fn emu_launch(
        grid: Dim3,
        block: Dim3,
        threads: i32,
        body: extern "C" fn(*mut c_void),
        ctx: *mut c_void,
    );
}

/// Runs `body` once for every thread of a launch of `shape`, all on the calling thread, and
/// returns when all have finished (with `Threads::Synced`, calls are interleaved at barriers).
/// Launches run one at a time, whatever the calling thread.
///
/// # Safety
/// `body` must call kernels with arguments that match their C signatures and pointers valid
/// for the whole launch.
pub unsafe fn launch<F: Fn()>(shape: LaunchShape, threads: Threads, body: F) {
    extern "C" fn trampoline<F: Fn()>(ctx: *mut c_void) {
        // SAFETY: `ctx` is the `&F` passed below, alive until emu_launch returns.
        let body = unsafe { &*(ctx as *const F) };
        body();
    }
    let ctx = &body as *const F as *mut c_void;
    // SAFETY: the caller vouches for the kernels' arguments; emu_launch only calls back into
    // `trampoline` with `ctx`.
    unsafe {
        emu_launch(
            shape.grid.into(),
            shape.block.into(),
            i32::from(threads == Threads::Synced),
            trampoline::<F>,
            ctx,
        )
    };
}

/// A complex value as the kernels store it (`float2`, `double2`).
pub type Complex<R> = [R; 2];

macro_rules! circulant_kernels {
    ($r:ty, [$($contraction:ident),+], $r2c:ident, $c2r:ident) => {
        extern "C" {
            $(
                /// `out = scale · sum a · w` over one index (circulant.cu names `a` and `w`
                /// per kernel).
                pub fn $contraction(
                    a: *const Complex<$r>,
                    w: *const Complex<$r>,
                    out: *mut Complex<$r>,
                    n: usize,
                    p: usize,
                    q: usize,
                    nf: usize,
                    b: usize,
                    scale: $r,
                );
            )+
            pub fn $r2c(input: *const $r, out: *mut Complex<$r>, count: usize);
            pub fn $c2r(input: *const Complex<$r>, out: *mut $r, count: usize);
        }
    };
}

circulant_kernels!(
    f32,
    [
        circ_contract_f32,
        circ_contract_dx_f32,
        circ_contract_dr_f32
    ],
    circ_r2c_len1_f32,
    circ_c2r_len1_f32
);
circulant_kernels!(
    f64,
    [
        circ_contract_f64,
        circ_contract_dx_f64,
        circ_contract_dr_f64
    ],
    circ_r2c_len1_f64,
    circ_c2r_len1_f64
);

macro_rules! optim_kernels {
    ($t:ty, $ema:ident, $adamw:ident, $buffer:ident, $update:ident) => {
        extern "C" {
            pub fn $ema(dst: *mut $t, src: *const $t, n: usize, a: $t, b: $t, square: i32);
            pub fn $adamw(
                w: *mut $t,
                m: *const $t,
                v: *const $t,
                n: usize,
                decay: $t,
                lr: $t,
                c1: $t,
                c2: $t,
                eps: $t,
            );
            pub fn $buffer(buf: *mut $t, g: *const $t, w: *const $t, n: usize, mu: $t, wd: $t);
            pub fn $update(
                w: *mut $t,
                g: *const $t,
                buf: *const $t,
                n: usize,
                lr: $t,
                mu: $t,
                wd: $t,
                rule: i32,
            );
        }
    };
}

optim_kernels!(
    f32,
    optim_ema_f32,
    optim_adamw_f32,
    optim_sgd_buffer_f32,
    optim_sgd_update_f32
);
optim_kernels!(
    f64,
    optim_ema_f64,
    optim_adamw_f64,
    optim_sgd_buffer_f64,
    optim_sgd_update_f64
);

extern "C" {
    pub fn bn_partial_stats_f32(x: *const f32, partial: *mut f64, n: u32, c: u32, hw: u32);
    pub fn bn_partial_grads_f32(
        dy: *const f32,
        x: *const f32,
        stats: *const f32,
        partial: *mut f64,
        n: u32,
        c: u32,
        hw: u32,
    );
    pub fn bn_finish_stats_f32(
        x: *const f32,
        partial: *const f64,
        stats: *mut f32,
        n: u32,
        c: u32,
        hw: u32,
        splits: u32,
    );
    pub fn bn_finish_grads_f32(
        partial: *const f64,
        stats: *const f32,
        gamma: *const f32,
        grads: *mut f32,
        coef: *mut f32,
        n: u32,
        c: u32,
        hw: u32,
        splits: u32,
        eps: f64,
    );
    pub fn bn_forward_f32(
        x: *const f32,
        stats: *const f32,
        gamma: *const f32,
        beta: *const f32,
        y: *mut f32,
        total: usize,
        c: u32,
        hw: u32,
        eps: f32,
    );
    pub fn bn_backward_dx_f32(
        x: *const f32,
        dy: *const f32,
        stats: *const f32,
        coef: *const f32,
        dx: *mut f32,
        total: usize,
        c: u32,
        hw: u32,
    );

    pub fn dropout_mask_f32(out: *mut f32, n: usize, seed: u64, threshold: u32, scale: f32);

    pub fn max_pool_fwd_f32(
        x: *const f32,
        y: *mut f32,
        planes: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        k: usize,
        s: usize,
        relu: i32,
    );
    pub fn max_pool_bwd_f32(
        x: *const f32,
        gy: *const f32,
        dx: *mut f32,
        planes: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        k: usize,
        s: usize,
        relu: i32,
    );
}
