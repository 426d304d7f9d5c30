//! Which data-plane thread this is, for state kept per thread.
//!
//! `egret sidecar|gateway` run one single-threaded runtime per core (`--concurrency`). An
//! upstream connection's socket is registered with the I/O driver of the runtime that opened
//! it, and its readiness is delivered by that runtime's thread: used from another thread, every
//! request would cost cross-thread wake-ups, and wait whenever the owning thread is busy. So
//! the upstream pools are keyed by shard as well as by destination (`upstream::PoolKey`), and
//! each data-plane thread reuses only its own connections — Envoy's per-worker connection pools.
//! Threads that never call [`set`] (tests, multi-threaded runtimes) all share shard 0.

use std::cell::Cell;

thread_local! {
    static SHARD: Cell<u16> = const { Cell::new(0) };
}

/// Mark this thread as data-plane thread `i`.
pub fn set(i: u16) {
    SHARD.with(|s| s.set(i));
}

/// This thread's shard.
pub fn current() -> u16 {
    SHARD.with(Cell::get)
}
