//! `trainer`: train, evaluate and run networks with circulant fully-connected heads.

mod bench;
mod checkpoint;
mod cli;
mod data;
mod device;
mod eval;
mod info;
mod metrics;
mod optim;
mod plot;
mod predict;
mod progress;
mod train;

use clap::Parser;

fn main() {
    // Training allocates and frees multi-MB tensors every step; keeping the freed memory
    // mapped halves the step time (see circulant_kernels::heap).
    circulant_kernels::heap::keep_freed_memory();
    // One CPU thread pool (rayon) instead of two taking turns: 13-23% faster mnist-cnn training on 2 cores
    // (see circulant_kernels::threads). CANDLE_NUM_THREADS in the environment wins.
    circulant_kernels::threads::serial_candle_elementwise();
    // clap prints its own errors and exits with status 2 (0 for --help / --version).
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Train(args) => train::run(*args),
        cli::Command::Eval(args) => eval::run(args),
        cli::Command::Predict(args) => predict::run(args),
        cli::Command::Info(args) => info::run(args),
        cli::Command::BenchDecode(args) => bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
