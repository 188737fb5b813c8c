//! Median times of the circulant op against candle's dense `Linear` and the bare-FFT floor.
//!
//! `cargo bench -p circulant-kernels --bench circulant` prints a markdown table;
//! `-- --quick` runs only the d = 4096 rows (the headline comparison). A second table gives
//! the ratio of the op's fwd+bwd to the FFT floor from alternating blocks of runs. The op is
//! measured as a plain library call: process settings (the `trainer`'s `CANDLE_NUM_THREADS=1`,
//! `MALLOC_TOP_PAD_=268435456` and friends) apply only when given in the environment, and the
//! header line says which are.

use candle_core::{Device, Module, Tensor, Var};
use circulant_kernels::{block_circulant, circulant};
use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Median wall time of `f` in milliseconds: warm-up calls for at least 0.2 s (at least one),
/// then repeats for ~`budget` (3 to 50 runs). After other work (a long single-threaded dense
/// backward, say) the first calls on this VM run up to 2× slower for a few hundred ms, which a
/// single warm-up call left in the median of the cheap cases.
fn median_ms(budget: Duration, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    f();
    while warm.elapsed() < Duration::from_millis(200) {
        f();
    }
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

/// The FFTs the op cannot avoid: 4 transforms of length d per sample (of x, y, g and dx),
/// planned once, batch split across rayon's threads (as the op does), in one of two forms.
#[derive(Clone, Copy)]
enum Floor {
    /// realfft's real FFTs, one row at a time: rfft + irfft, twice per sample.
    Real,
    /// rustfft's complex FFTs of two rows at once (`x1 + i·x2`, as the op computes them):
    /// FFT + inverse FFT, twice per pair of samples.
    Paired,
}

impl Floor {
    fn label(self) -> &'static str {
        match self {
            Floor::Real => "FFT floor, real (4 rfft/irfft per sample)",
            Floor::Paired => "FFT floor, paired (4 complex FFTs per 2 samples)",
        }
    }
}

/// Planned transforms and the data they run on.
enum Work {
    Real(
        Arc<dyn RealToComplex<f32>>,
        Arc<dyn ComplexToReal<f32>>,
        Vec<f32>,
    ),
    Paired(Arc<dyn Fft<f32>>, Arc<dyn Fft<f32>>, Vec<Complex<f32>>),
}

struct FftFloor {
    d: usize,
    work: Work,
    rows: usize,
}

impl FftFloor {
    fn new(kind: Floor, d: usize, batch: usize) -> Self {
        let threads = rayon::current_num_threads();
        match kind {
            Floor::Real => {
                let mut planner = RealFftPlanner::<f32>::new();
                let (fwd, inv) = (planner.plan_fft_forward(d), planner.plan_fft_inverse(d));
                Self {
                    d,
                    work: Work::Real(fwd, inv, vec![0.5; batch * d]),
                    rows: batch.div_ceil(threads),
                }
            }
            Floor::Paired => {
                let mut planner = FftPlanner::<f32>::new();
                let pairs = batch.div_ceil(2);
                let (fwd, inv) = (planner.plan_fft_forward(d), planner.plan_fft_inverse(d));
                Self {
                    d,
                    work: Work::Paired(fwd, inv, vec![Complex::new(0.5, 0.25); pairs * d]),
                    rows: pairs.div_ceil(threads),
                }
            }
        }
    }

    fn run(&mut self) {
        let (d, rows) = (self.d, self.rows);
        match &mut self.work {
            Work::Real(fwd, inv, data) => data.par_chunks_mut(rows * d).for_each(|chunk| {
                let mut spec = fwd.make_output_vec();
                let mut scratch = fwd.make_scratch_vec();
                scratch.resize(scratch.len().max(inv.get_scratch_len()), Complex::default());
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
            }),
            Work::Paired(fwd, inv, data) => data.par_chunks_mut(rows * d).for_each(|chunk| {
                let len = fwd
                    .get_inplace_scratch_len()
                    .max(inv.get_inplace_scratch_len());
                let mut scratch = vec![Complex::default(); len];
                for _ in 0..2 {
                    fwd.process_with_scratch(chunk, &mut scratch);
                    inv.process_with_scratch(chunk, &mut scratch);
                }
            }),
        }
    }
}

fn fft_floor_ms(budget: Duration, kind: Floor, d: usize, batch: usize) -> f64 {
    let mut floor = FftFloor::new(kind, d, batch);
    median_ms(budget, || floor.run())
}

fn print_floors(budget: Duration, d: usize, batch: usize) {
    for kind in [Floor::Real, Floor::Paired] {
        let ms = fft_floor_ms(budget, kind, d, batch);
        println!("| {} | {d} | {batch} | | {ms:.3} |", kind.label());
    }
}

/// Median of `runs` timed calls of `f`, in seconds.
fn block_median(runs: usize, f: &mut dyn FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// fwd+bwd of the circulant op divided by the FFT floor `kind`, timed in alternating blocks of 8 runs
/// (the ratio of the two block medians), so that both sides of each ratio see the same machine
/// state: host noise on a shared VM moves whole-run medians by 30% or more between runs.
/// Returns (median ratio, lower and upper quartile, blocks).
fn floor_ratio(budget: Duration, kind: Floor, d: usize, batch: usize) -> (f64, f64, f64, usize) {
    let x = rand(&[batch, d]);
    let r = rand(&[d]);
    let mut floor = FftFloor::new(kind, d, batch);
    let mut op = || {
        circulant(x.as_tensor(), &r).unwrap().backward().unwrap();
    };
    let mut ratios = Vec::new();
    let start = Instant::now();
    while ratios.len() < 5 || (start.elapsed() < budget && ratios.len() < 100) {
        let op_s = block_median(8, &mut op);
        let floor_s = block_median(8, &mut || floor.run());
        ratios.push(op_s / floor_s);
    }
    ratios.sort_by(f64::total_cmp);
    let q = |f: f64| ratios[((ratios.len() - 1) as f64 * f).round() as usize];
    (q(0.5), q(0.25), q(0.75), ratios.len())
}

fn row(case: &str, d: usize, batch: usize, (fwd, fb): (f64, f64)) {
    println!("| {case} | {d} | {batch} | {fwd:.3} | {fb:.3} |");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings: Vec<String> = [
        "CANDLE_NUM_THREADS",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
    .collect();
    let settings = match settings.is_empty() {
        true => "none (a plain library call)".to_string(),
        false => settings.join(" "),
    };
    let budget = Duration::from_secs(if quick { 2 } else { 3 });
    println!(
        "threads: {} (rayon), dtype f32, median ms, process settings: {settings}\n",
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
            print_floors(budget, d, batch);
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
            print_floors(budget, d, batch);
        }
    }
    let pairs: &[usize] = if quick { &[4096] } else { &[1024, 4096, 16384] };
    println!(
        "\ncirculant fwd+bwd / FFT floor, timed in alternating blocks of 8 runs (batch 128):\n"
    );
    println!("| d | floor | median ratio | quartiles | blocks |\n|---|---|---|---|---|");
    for &d in pairs {
        for kind in [Floor::Real, Floor::Paired] {
            let (median, lo, hi, n) = floor_ratio(budget, kind, d, 128);
            println!(
                "| {d} | {} | {median:.2} | {lo:.2}–{hi:.2} | {n} |",
                kind.label()
            );
        }
    }
    println!();
    println!("| case | d | batch | fwd ms | fwd+bwd ms |\n|---|---|---|---|---|");
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
