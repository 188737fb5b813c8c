//! GPU benchmark: circulant projection (cuFFT + contraction kernels) vs a dense layer
//! (candle matmul = cuBLAS) on the same card, f32, forward and forward+backward.
//!
//! ```text
//! cargo run --release --features cuda -p circulant-kernels --example bench_cuda [-- --quick]
//! ```
//! Prints a markdown table: d in {1024, 4096, 9216, 16384, 65536} (dense too, where it fits in
//! memory) and d up to 2^20 (circulant alone), at batch 1, 128 and 1024.

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
    use std::time::Instant;

    use candle_core::{Device, Result, Tensor, Var};
    use circulant_kernels::circulant;

    const DENSE_DIMS: &[usize] = &[1024, 4096, 9216, 16384, 65536];
    const CIRCULANT_ONLY_DIMS: &[usize] = &[1 << 18, 1 << 20];
    const BATCHES: &[usize] = &[1, 128, 1024];
    /// Minimum measured time per cell (after one warm-up call).
    const MIN_SECONDS: f64 = 0.2;

    /// Mean milliseconds per call of `f`, synchronising the device around the timed loop.
    fn time_ms(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?; // warm-up: cuFFT plans, module loading, cuBLAS heuristics
        dev.synchronize()?;
        let mut iters = 1usize;
        loop {
            let start = Instant::now();
            for _ in 0..iters {
                f()?;
            }
            dev.synchronize()?;
            let secs = start.elapsed().as_secs_f64();
            if secs >= MIN_SECONDS || iters >= 4096 {
                return Ok(secs * 1e3 / iters as f64);
            }
            iters *= 2;
        }
    }

    fn circulant_cells(dev: &Device, d: usize, batch: usize) -> Result<(f64, f64)> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, d), dev)?)?;
        let r = Var::from_tensor(&Tensor::randn(0f32, 1., d, dev)?)?;
        let fwd = time_ms(dev, || circulant(x.as_tensor(), r.as_tensor()).map(drop))?;
        let fwd_bwd = time_ms(dev, || {
            let y = circulant(x.as_tensor(), r.as_tensor())?;
            y.sum_all()?.backward().map(drop)
        })?;
        Ok((fwd, fwd_bwd))
    }

    fn dense_cells(dev: &Device, d: usize, batch: usize) -> Result<(f64, f64)> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, d), dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (d, d), dev)?)?;
        let fwd = time_ms(dev, || x.as_tensor().matmul(&w.as_tensor().t()?).map(drop))?;
        let fwd_bwd = time_ms(dev, || {
            let y = x.as_tensor().matmul(&w.as_tensor().t()?)?;
            y.sum_all()?.backward().map(drop)
        })?;
        Ok((fwd, fwd_bwd))
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
        let quick = std::env::args().any(|a| a == "--quick");
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
        println!("circulant (cuFFT) vs dense (cuBLAS), f32, mean ms per call on CUDA device 0");
        println!();
        println!("| d | batch | circulant fwd | circulant fwd+bwd | dense fwd | dense fwd+bwd | fwd speedup | fwd+bwd speedup |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut skipped_u32 = false;
        for (&d, dense) in dense_dims
            .iter()
            .map(|d| (d, true))
            .chain(circ_dims.iter().map(|d| (d, false)))
        {
            for &batch in batches {
                let (cf, cfb) = cells(circulant_cells(&dev, d, batch));
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
                    cells(dense_cells(&dev, d, batch))
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
