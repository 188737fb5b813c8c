//! `circulant` fwd+bwd at d = 4096, batch 128 in a loop, as a plain library call: the median
//! time of a call. For profiles and page-fault counts:
//!
//! ```text
//! cargo build --release -p circulant-kernels --example op_loop
//! perf stat -e page-faults target/release/examples/op_loop [ITERS] [--after-dense] [--dense]
//! ```
//! `--after-dense` first runs 5 fwd+bwd of candle's dense layer with a 4096 × 4096 weight in
//! the same process (as `cargo bench -p circulant-kernels` does before this case). `--dense`
//! times that dense layer (candle `Linear`, batch 128) in place of the circulant op, for the
//! same figure in a process of its own.

use candle_core::{Device, Module, Tensor, Var};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let rand = |shape: &[usize]| Var::from_tensor(&Tensor::rand(-1f32, 1., shape, &Device::Cpu)?);
    if std::env::args().any(|a| a == "--after-dense") {
        let (x, w) = (rand(&[1, 4096])?, rand(&[4096, 4096])?);
        let dense = candle_nn::Linear::new(w.as_tensor().clone(), None);
        for _ in 0..5 {
            dense.forward(x.as_tensor())?.backward()?;
        }
    }
    let dense = std::env::args().any(|a| a == "--dense");
    let (x, r) = (rand(&[128, 4096])?, rand(&[4096])?);
    let w = if dense {
        Some(rand(&[4096, 4096])?)
    } else {
        None
    };
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        match &w {
            Some(w) => candle_nn::Linear::new(w.as_tensor().clone(), None)
                .forward(x.as_tensor())?
                .backward()?,
            None => circulant_kernels::circulant(x.as_tensor(), r.as_tensor())?.backward()?,
        };
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} d=4096 batch=128 fwd+bwd: median {:.3} ms over {} calls",
        if dense {
            "dense (candle Linear)"
        } else {
            "circulant"
        },
        times[times.len() / 2],
        times.len()
    );
    Ok(())
}
