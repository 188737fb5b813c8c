//! Median times of the circulant op against candle's dense `Linear` and the bare-FFT floor.
//!
//! `cargo bench -p circulant-kernels --bench circulant` prints a markdown table;
//! `-- --quick` runs only the d = 4096 rows (the headline comparison). The bench first calls
//! [`circulant_kernels::heap::keep_freed_memory`], as the `trainer` does; `-- --default-heap`
//! measures with glibc's default malloc settings instead. It also calls
//! [`circulant_kernels::threads::serial_candle_elementwise`] (as the `trainer` does);
//! `-- --candle-pool` keeps candle's element-wise thread pool instead.

use candle_core::{Device, Module, Tensor, Var};
use circulant_kernels::{block_circulant, circulant};
use rayon::prelude::*;
use realfft::RealFftPlanner;
use std::time::{Duration, Instant};

/// Median wall time of `f` in milliseconds: one warm-up, then repeats for ~`budget` (3 to 50 runs).
fn median_ms(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 50) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn rand(shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::rand(-1f32, 1f32, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Forward and forward+backward (gradients for the input and the weights) of `op`.
fn time_op(budget: Duration, x: &Var, op: impl Fn(&Tensor) -> Tensor) -> (f64, f64) {
    let fwd = median_ms(budget, || {
        op(x.as_tensor());
    });
    let fwd_bwd = median_ms(budget, || {
        op(x.as_tensor()).backward().unwrap();
    });
    (fwd, fwd_bwd)
}

/// The FFTs the op cannot avoid: 4 real FFTs of length d per sample (rfft x, irfft y,
/// rfft g, irfft dx), planned once, batch split across rayon's threads (as the op does).
fn fft_floor_ms(budget: Duration, d: usize, batch: usize) -> f64 {
    let mut planner = RealFftPlanner::<f32>::new();
    let (fwd, inv) = (planner.plan_fft_forward(d), planner.plan_fft_inverse(d));
    let mut data = vec![0.5f32; batch * d];
    let rows = batch.div_ceil(rayon::current_num_threads());
    median_ms(budget, || {
        data.par_chunks_mut(rows * d).for_each(|chunk| {
            let mut spec = fwd.make_output_vec();
            let mut scratch = fwd.make_scratch_vec();
            scratch.resize(scratch.len().max(inv.get_scratch_len()), Default::default());
            for row in chunk.chunks_exact_mut(d) {
                for _ in 0..2 {
                    fwd.process_with_scratch(row, &mut spec, &mut scratch)
                        .unwrap();
                    spec[0].im = 0.0;
                    if d.is_multiple_of(2) {
                        spec[d / 2].im = 0.0;
                    }
                    inv.process_with_scratch(&mut spec, row, &mut scratch)
                        .unwrap();
                }
            }
        })
    })
}

fn row(case: &str, d: usize, batch: usize, (fwd, fb): (f64, f64)) {
    println!("| {case} | {d} | {batch} | {fwd:.3} | {fb:.3} |");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let pool = if std::env::args().any(|a| a == "--candle-pool") {
        "candle's element-wise pool kept (--candle-pool)"
    } else if circulant_kernels::threads::serial_candle_elementwise() {
        "candle element-wise ops on the calling thread (threads::serial_candle_elementwise)"
    } else {
        "CANDLE_NUM_THREADS from the environment"
    };
    let heap = if std::env::args().any(|a| a == "--default-heap") {
        "glibc defaults (--default-heap)"
    } else if circulant_kernels::heap::keep_freed_memory() {
        "freed memory kept (heap::keep_freed_memory)"
    } else {
        "unchanged (not glibc, or MALLOC_* settings in the environment)"
    };
    let budget = Duration::from_secs(if quick { 2 } else { 3 });
    println!(
        "threads: {} (rayon), dtype f32, median ms, malloc: {heap}, {pool}\n",
        rayon::current_num_threads()
    );
    println!("| case | d | batch | fwd ms | fwd+bwd ms |\n|---|---|---|---|---|");
    let dims: &[usize] = if quick {
        &[4096]
    } else {
        &[1024, 4096, 9216, 16384, 65536]
    };
    for &d in dims {
        for batch in [1, 128] {
            let x = rand(&[batch, d]);
            let r = rand(&[d]);
            row(
                "circulant",
                d,
                batch,
                time_op(budget, &x, |x| circulant(x, &r).unwrap()),
            );
            if d * d * 4 > 8 << 30 {
                println!(
                    "| dense (candle Linear) | {d} | {batch} | skipped: {} GiB weight | |",
                    (d * d * 4) >> 30
                );
            } else {
                let w = rand(&[d, d]);
                let lin = candle_nn::Linear::new(w.as_tensor().clone(), None);
                row(
                    "dense (candle Linear)",
                    d,
                    batch,
                    time_op(budget, &x, |x| lin.forward(x).unwrap()),
                );
            }
            let floor = fft_floor_ms(budget, d, batch);
            println!("| FFT floor (4 rfft/irfft per sample) | {d} | {batch} | | {floor:.3} |");
        }
    }
    if !quick {
        let d = 1 << 20;
        for batch in [1, 128] {
            let x = rand(&[batch, d]);
            let r = rand(&[d]);
            row(
                "circulant",
                d,
                batch,
                time_op(budget, &x, |x| circulant(x, &r).unwrap()),
            );
            let floor = fft_floor_ms(budget, d, batch);
            println!("| FFT floor (4 rfft/irfft per sample) | {d} | {batch} | | {floor:.3} |");
        }
    }
    for b in [256, 1024] {
        let (d, batch) = (4096, 128);
        let x = rand(&[batch, d]);
        let r = rand(&[d / b, d / b, b]);
        let case = format!("block-circulant b={b}");
        row(
            &case,
            d,
            batch,
            time_op(budget, &x, |x| block_circulant(x, &r).unwrap()),
        );
    }
}
