//! GPU benchmark: circulant projection (cuFFT + contraction kernels) vs a dense layer
//! (candle matmul = cuBLAS) on the same card, f32, forward and forward+backward.
//!
//! ```text
//! cargo run --release --features cuda -p circulant-kernels --example bench_cuda -- \
//!     [--quick] [--dims 4096,1048576] [--batches 1,1024] [--sum-all] [--breakdown] \
//!     [--sync-each] [--default-pool]
//! ```
//! Prints a markdown table: d in {1024, 4096, 9216, 16384, 65536} (dense too, where it fits in
//! memory) and d up to 2^20 (circulant alone), at batch 1, 128 and 1024.
//!
//! Forward+backward backpropagates the loss `sum(y * w)` (w random, as in
//! bench/torch_circulant.py), summed in stages: candle reduces a whole tensor to one value
//! in a single thread block, which at 2^30 elements takes longer than the layer itself.
//! `--sum-all` uses candle's one-step `sum_all` instead, to show that cost. `--breakdown`
//! also prints (to stderr) the circulant forward, loss and backward times separately.
//! `--sync-each` synchronises after every call, as a training loop that reads its loss does.
//! Like the trainer, the benchmark keeps freed device memory in the driver's pool
//! (`kernels_cuda::keep_freed_memory`, as the trainer does); `--default-pool` leaves the
//! driver's default.

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("bench_cuda needs the `cuda` feature: cargo run --release --features cuda -p circulant-kernels --example bench_cuda");
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() -> candle_core::Result<()> {
    bench::main()
}

#[cfg(feature = "cuda")]
mod bench {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use candle_core::{Device, Result, Tensor, Var};
    use circulant_kernels::circulant;

    const DENSE_DIMS: &[usize] = &[1024, 4096, 9216, 16384, 65536];
    const CIRCULANT_ONLY_DIMS: &[usize] = &[1 << 18, 1 << 20];
    const BATCHES: &[usize] = &[1, 128, 1024];
    /// Minimum measured time per cell (after one warm-up call).
    const MIN_SECONDS: f64 = 0.2;

    /// How the scalar loss is reduced.
    #[derive(Clone, Copy)]
    enum Reduce {
        /// Rows of at most 1024 summed in parallel, repeatedly, then one `sum_all`.
        Staged,
        /// candle's `sum_all` in one step.
        SumAll,
    }

    /// `sum(y * w)`.
    fn loss(y: &Tensor, w: &Tensor, reduce: Reduce) -> Result<Tensor> {
        let mut t = (y * w)?;
        if let Reduce::Staged = reduce {
            while t.elem_count() > 4096 {
                let n = t.elem_count();
                let Some(k) = [1024, 512, 256, 128, 64].into_iter().find(|k| n % k == 0) else {
                    break;
                };
                t = t.reshape((n / k, k))?.sum(1)?;
            }
        }
        t.sum_all()
    }

    /// Synchronise after every call (as a training loop that reads its loss does), not only
    /// around the timed loop (`--sync-each`).
    static SYNC_EACH: AtomicBool = AtomicBool::new(false);

    /// Mean milliseconds per call of `f`, synchronising the device around the timed loop.
    fn time_ms(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?; // warm-up: cuFFT plans, module loading, cuBLAS heuristics
        dev.synchronize()?;
        let sync_each = SYNC_EACH.load(Ordering::Relaxed);
        let mut iters = 1usize;
        loop {
            let start = Instant::now();
            for _ in 0..iters {
                f()?;
                if sync_each {
                    dev.synchronize()?;
                }
            }
            dev.synchronize()?;
            let secs = start.elapsed().as_secs_f64();
            if secs >= MIN_SECONDS || iters >= 4096 {
                return Ok(secs * 1e3 / iters as f64);
            }
            iters *= 2;
        }
    }

    fn circulant_cells(
        dev: &Device,
        d: usize,
        batch: usize,
        reduce: Reduce,
        breakdown: bool,
    ) -> Result<(f64, f64)> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, d), dev)?)?;
        let r = Var::from_tensor(&Tensor::randn(0f32, 1., d, dev)?)?;
        let w = Tensor::randn(0f32, 1., (batch, d), dev)?;
        let fwd = time_ms(dev, || circulant(x.as_tensor(), r.as_tensor()).map(drop))?;
        let fwd_bwd = time_ms(dev, || {
            let y = circulant(x.as_tensor(), r.as_tensor())?;
            loss(&y, &w, reduce)?.backward().map(drop)
        })?;
        if breakdown {
            let fwd_loss = time_ms(dev, || {
                let y = circulant(x.as_tensor(), r.as_tensor())?;
                loss(&y, &w, reduce).map(drop)
            })?;
            eprintln!(
                "breakdown d={d} batch={batch}: fwd {fwd:.3} ms, +loss {:.3}, +backward {:.3} \
                 (of which the op's own backward {:.3})",
                fwd_loss - fwd,
                fwd_bwd - fwd_loss,
                op_backward_ms(dev, x.as_tensor(), r.as_tensor(), &w)?
            );
        }
        Ok((fwd, fwd_bwd))
    }

    /// The op's backward alone (`kernels_cuda::backward` with the forward's spectra), without
    /// candle's autograd around it: `w` stands for the upstream gradient.
    fn op_backward_ms(dev: &Device, x: &Tensor, r: &Tensor, w: &Tensor) -> Result<f64> {
        use candle_core::cuda::cudarc::driver::CudaView;
        use candle_core::{Layout, Storage};
        let Device::Cuda(cuda) = dev else {
            return Ok(f64::NAN);
        };
        fn view<'a>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, f32>> {
            let (Storage::Cuda(s), Some((start, end))) = (s, l.contiguous_offsets()) else {
                candle_core::bail!("bench_cuda: expected a contiguous CUDA tensor")
            };
            Ok(s.as_cuda_slice::<f32>()?.slice(start..end))
        }
        let (xs, xl) = x.storage_and_layout();
        let (rs, rl) = r.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (xv, rv, gv) = (view(&xs, xl)?, view(&rs, rl)?, view(&ws, wl)?);
        let (n, d) = x.dims2()?;
        let dims = kernels_cuda::Dims {
            n,
            p: 1,
            q: 1,
            b: d,
        };
        let (_, saved) = kernels_cuda::forward_keep(cuda, &xv, &rv, dims)?;
        time_ms(dev, || {
            kernels_cuda::backward(cuda, &xv, &rv, &gv, dims, saved.as_ref()).map(drop)
        })
    }

    fn dense_cells(dev: &Device, d: usize, batch: usize, reduce: Reduce) -> Result<(f64, f64)> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, d), dev)?)?;
        let weight = Var::from_tensor(&Tensor::randn(0f32, 1., (d, d), dev)?)?;
        let w = Tensor::randn(0f32, 1., (batch, d), dev)?;
        let fwd = time_ms(dev, || {
            x.as_tensor().matmul(&weight.as_tensor().t()?).map(drop)
        })?;
        let fwd_bwd = time_ms(dev, || {
            let y = x.as_tensor().matmul(&weight.as_tensor().t()?)?;
            loss(&y, &w, reduce)?.backward().map(drop)
        })?;
        Ok((fwd, fwd_bwd))
    }

    /// The comma-separated sizes after `flag`, if given.
    fn list_arg(args: &[String], flag: &str) -> Result<Option<Vec<usize>>> {
        let Some(i) = args.iter().position(|a| a == flag) else {
            return Ok(None);
        };
        let value = args.get(i + 1).map(String::as_str).unwrap_or_default();
        value
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                        "bench_cuda: {flag} takes positive sizes separated by commas, got {value:?}"
                    ))
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Free device memory in bytes, if the driver tells.
    fn free_bytes() -> Option<usize> {
        candle_core::cuda::cudarc::driver::result::mem_get_info()
            .ok()
            .map(|(free, _)| free)
    }

    /// Table cells for a (fwd, fwd+bwd) measurement: milliseconds, "OOM" or "error".
    fn cells(v: Result<(f64, f64)>) -> (String, String) {
        match v {
            Ok((fwd, fwd_bwd)) => (format!("{fwd:.3}"), format!("{fwd_bwd:.3}")),
            Err(e) => {
                let msg = e.to_string();
                let c = if msg.contains("OUT_OF_MEMORY") {
                    "OOM"
                } else {
                    eprintln!("error: {msg}");
                    "error"
                };
                (c.to_string(), c.to_string())
            }
        }
    }

    fn speedup(circ: &str, dense: &str) -> String {
        match (circ.parse::<f64>(), dense.parse::<f64>()) {
            (Ok(c), Ok(d)) if c > 0.0 => format!("{:.1}x", d / c),
            _ => "-".to_string(),
        }
    }

    pub fn main() -> Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let reduce = if args.iter().any(|a| a == "--sum-all") {
            Reduce::SumAll
        } else {
            Reduce::Staged
        };
        let only_dims = list_arg(&args, "--dims")?;
        let only_batches = list_arg(&args, "--batches")?;
        let breakdown = args.iter().any(|a| a == "--breakdown");
        SYNC_EACH.store(args.iter().any(|a| a == "--sync-each"), Ordering::Relaxed);
        let dev = Device::new_cuda(0).map_err(|e| {
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or_default().to_string();
            candle_core::Error::Msg(format!("bench_cuda: no CUDA device: {reason}"))
        })?;
        let (dense_dims, circ_dims, batches): (&[usize], &[usize], &[usize]) = if quick {
            (&[1024, 4096], &[1 << 16], &[1, 128])
        } else {
            (DENSE_DIMS, CIRCULANT_ONLY_DIMS, BATCHES)
        };
        let (dense_dims, circ_dims, batches) = match &only_dims {
            // Given sizes: dense where it is benchmarked at all.
            Some(dims) => (
                dims.iter()
                    .copied()
                    .filter(|d| DENSE_DIMS.contains(d))
                    .collect(),
                dims.iter()
                    .copied()
                    .filter(|d| !DENSE_DIMS.contains(d))
                    .collect(),
                batches.to_vec(),
            ),
            None => (dense_dims.to_vec(), circ_dims.to_vec(), batches.to_vec()),
        };
        let batches = only_batches.unwrap_or(batches);
        let loss_name = match reduce {
            Reduce::Staged => "sum(y * w) summed in stages",
            Reduce::SumAll => "sum(y * w) by candle's one-step sum_all",
        };
        println!("circulant (cuFFT) vs dense (cuBLAS), f32, mean ms per call on CUDA device 0");
        let pool = if args.iter().any(|a| a == "--default-pool") {
            "the driver's default memory pool (freed memory released at each synchronisation)"
        } else {
            kernels_cuda::keep_freed_memory(dev.as_cuda_device()?)?;
            "freed memory kept in the pool (kernels_cuda::keep_freed_memory, as the trainer does)"
        };
        println!("fwd+bwd: backward of the loss {loss_name}; {pool}");
        if SYNC_EACH.load(Ordering::Relaxed) {
            println!("synchronised after every call (--sync-each)");
        }
        println!();
        println!("| d | batch | circulant fwd | circulant fwd+bwd | dense fwd | dense fwd+bwd | fwd speedup | fwd+bwd speedup |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut skipped_u32 = false;
        for (&d, dense) in dense_dims
            .iter()
            .map(|d| (d, true))
            .chain(circ_dims.iter().map(|d| (d, false)))
        {
            for &batch in &batches {
                let (cf, cfb) = cells(circulant_cells(&dev, d, batch, reduce, breakdown));
                // Dense fwd+bwd holds w, its gradient and a transposed copy: ~3 d^2 floats.
                let need = 4 * (3 * d * d + 4 * batch * d);
                let fits = free_bytes().is_none_or(|free| need < free / 10 * 9);
                let (df, dfb) = if !dense {
                    ("-".to_string(), "-".to_string())
                } else if d * d >= 1 << 32 {
                    skipped_u32 = true;
                    ("n/a".to_string(), "n/a".to_string())
                } else if !fits {
                    ("no memory".to_string(), "no memory".to_string())
                } else {
                    cells(dense_cells(&dev, d, batch, reduce))
                };
                println!(
                    "| {d} | {batch} | {cf} | {cfb} | {df} | {dfb} | {} | {} |",
                    speedup(&cf, &df),
                    speedup(&cfb, &dfb)
                );
            }
        }
        if skipped_u32 {
            println!();
            println!(
                "n/a: candle's CUDA element-wise kernels take a 32-bit element count, so a d x d \
                 weight with d^2 >= 2^32 cannot be initialised or updated (CUDA_ERROR_INVALID_VALUE)."
            );
        }
        Ok(())
    }
}
