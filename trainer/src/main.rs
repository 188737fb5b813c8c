//! `trainer`: train, evaluate and run networks with circulant fully-connected heads.

mod bench;
mod bench_decode;
mod checkpoint;
mod cli;
mod data;
mod device;
mod dist;
mod eval;
mod export;
mod huge_pages;
mod info;
mod metrics;
mod optim;
mod plot;
mod predict;
mod progress;
mod runtime;
mod train;

#[global_allocator]
static ALLOC: huge_pages::HugePageAlloc = huge_pages::HugePageAlloc;

fn main() {
    runtime::configure();
    // clap prints its own errors and exits with status 2 (0 for --help / --version).
    let cli = cli::parse();
    let result = match cli.command {
        cli::Command::Train(args) => train::run(*args),
        cli::Command::Eval(args) => eval::run(args),
        cli::Command::Predict(args) => predict::run(args),
        cli::Command::Info(args) => info::run(args),
        cli::Command::Export(args) => export::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::BenchDecode(args) => bench_decode::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
