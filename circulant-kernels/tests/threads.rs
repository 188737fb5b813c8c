//! `serial_candle_elementwise` leaves candle's barrier pool without worker threads. A test
//! binary of its own: candle sizes the pool once per process.

use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn candle_elementwise_pool_runs_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        eprintln!("skipping: CANDLE_NUM_THREADS is set in the environment");
        return;
    }
    assert!(circulant_kernels::threads::serial_candle_elementwise());
    let calls = AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute(|_tid| {
        calls.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "candle's pool still has workers"
    );
}
