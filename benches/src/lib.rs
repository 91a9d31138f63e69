//! Shared pieces of the benchmarks: the timer workload, the structures the timing wheel is compared against,
//! and the tiny command line the peer echo servers share.
//!
//! Everything here exists to be measured (`benches/wheel.rs`, `bin/timer_memory.rs`) or to be a conventional
//! peer for side-by-side runs (`bin/echo-*.rs`); none of it is used by the engine.

pub mod args;
pub mod timers;
