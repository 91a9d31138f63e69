//! `tether::wheel::Wheel` against the other ways of keeping one keepalive timer per connection.
//!
//! Structures: the wheel; one `tokio::time::Sleep` per connection; `tokio_util::time::DelayQueue`; a
//! `BinaryHeap` with lazy deletion. Operations, each over all `n` connections (see `tether_benches::timers`
//! for the workload):
//!
//! * `schedule`: arm `n` keys, deadlines spread over one 200-tick interval;
//! * `rearm`: activity on every connection, in random order, pushes its deadline an interval out;
//! * `cancel`: every connection goes away, in random order;
//! * `expire`: time advances tick by tick across the whole interval; every key fires once and is re-armed
//!   for the next interval;
//! * `expire_after_rearm`: as `expire`, but starting from the state `rearm` leaves behind, and advancing
//!   until every key has fired at its re-armed deadline. This is where structures that make re-arm cheap by
//!   deferring work (tokio's `Sleep::reset` only raises the deadline when it is later; the heap leaves a stale
//!   entry behind) pay for it.
//!
//! Each measurement covers the `n` operations only: set-up and tear-down (including dropping what the
//! operation left) run outside the timed region (`iter_custom`). Criterion reports time per `n` operations;
//! `benches/scripts/wheel-table.py` divides by `n` for ns per operation.
//!
//! Quick run: `cargo bench -p tether-benches --bench wheel -- --warm-up-time 1 --measurement-time 3`.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use tether::wheel::Wheel;
use tether_benches::timers::{index_wakers, HeapTimers, Workload, INTERVAL_TICKS, REARM_JITTER_TICKS, TICK};
use tokio::time::Sleep;
use tokio_util::time::{delay_queue, DelayQueue};

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// Runs `setup` untimed, `routine` timed, then drops both results untimed; `iters` times.
fn timed<S, R>(iters: u64, mut setup: impl FnMut() -> S, mut routine: impl FnMut(&mut S) -> R) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut state = setup();
        let start = Instant::now();
        let output = black_box(routine(&mut state));
        total += start.elapsed();
        drop(output);
        drop(state);
    }
    total
}

// ---------------------------------------------------------------------------------------------------------
// The two structures with the same synchronous shape: the wheel and the heap.

trait KeyTimers {
    fn with_capacity(keys: usize) -> Self;
    fn schedule(&mut self, key: u32, deadline: u64);
    fn cancel(&mut self, key: u32) -> bool;
    fn poll(&mut self, now: u64) -> Option<u32>;
}

impl KeyTimers for Wheel {
    fn with_capacity(keys: usize) -> Self {
        Wheel::with_capacity(keys)
    }
    fn schedule(&mut self, key: u32, deadline: u64) {
        Wheel::schedule(self, key, deadline)
    }
    fn cancel(&mut self, key: u32) -> bool {
        Wheel::cancel(self, key)
    }
    fn poll(&mut self, now: u64) -> Option<u32> {
        Wheel::poll(self, now)
    }
}

impl KeyTimers for HeapTimers {
    fn with_capacity(keys: usize) -> Self {
        HeapTimers::with_capacity(keys)
    }
    fn schedule(&mut self, key: u32, deadline: u64) {
        HeapTimers::schedule(self, key, deadline)
    }
    fn cancel(&mut self, key: u32) -> bool {
        HeapTimers::cancel(self, key)
    }
    fn poll(&mut self, now: u64) -> Option<u32> {
        HeapTimers::poll(self, now)
    }
}

fn scheduled<T: KeyTimers>(work: &Workload) -> T {
    let mut timers = T::with_capacity(work.len());
    for (key, deadline) in work.first_deadline.iter().enumerate() {
        timers.schedule(key as u32, *deadline);
    }
    timers
}

fn rearmed<T: KeyTimers>(work: &Workload) -> T {
    let mut timers = scheduled::<T>(work);
    for &key in &work.activity_order {
        timers.schedule(key, work.rearm_deadline[key as usize]);
    }
    timers
}

/// Advances tick by tick from `from` to `to`, re-arming every fired key an interval later; returns how many
/// fired.
fn expire_ticks<T: KeyTimers>(timers: &mut T, from: u64, to: u64) -> usize {
    let mut fired = 0;
    for tick in from..=to {
        while let Some(key) = timers.poll(tick) {
            fired += 1;
            timers.schedule(key, tick + INTERVAL_TICKS);
        }
    }
    fired
}

/// The tick by which every re-armed key has fired.
const REARMED_HORIZON: u64 = 2 * INTERVAL_TICKS + REARM_JITTER_TICKS;

fn bench_keyed<T: KeyTimers>(c: &mut Criterion, name: &str, work: &Workload) {
    let n = work.len();
    group(c, "schedule", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || T::with_capacity(n),
                |timers| {
                    for (key, deadline) in work.first_deadline.iter().enumerate() {
                        timers.schedule(key as u32, *deadline);
                    }
                },
            )
        })
    });
    group(c, "rearm", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || scheduled::<T>(work),
                |timers| {
                    for &key in &work.activity_order {
                        timers.schedule(key, work.rearm_deadline[key as usize]);
                    }
                },
            )
        })
    });
    group(c, "cancel", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || scheduled::<T>(work),
                |timers| {
                    for &key in &work.activity_order {
                        timers.cancel(key);
                    }
                },
            )
        })
    });
    group(c, "expire", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || scheduled::<T>(work),
                |timers| {
                    let fired = expire_ticks(timers, 1, INTERVAL_TICKS);
                    assert_eq!(fired, n);
                },
            )
        })
    });
    group(c, "expire_after_rearm", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || rearmed::<T>(work),
                |timers| {
                    // Keys re-armed an interval out fire again before the horizon; count the first firing of
                    // each only by stopping at the horizon and checking at least n fired.
                    let fired = expire_ticks(timers, 1, REARMED_HORIZON);
                    assert!(fired >= n);
                },
            )
        })
    });
}

// ---------------------------------------------------------------------------------------------------------
// One `tokio::time::Sleep` per connection.

/// A current-thread runtime with the clock paused: `tokio::time::advance` moves time, no real time passes.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("tokio runtime")
}

struct Sleeps {
    sleeps: Vec<Pin<Box<Sleep>>>,
    base: tokio::time::Instant,
}

fn at(base: tokio::time::Instant, tick: u64) -> tokio::time::Instant {
    base + TICK * tick as u32
}

/// Creates and polls one `Sleep` per connection, the way a connection task does when it first awaits its
/// ping timer (an unpolled `Sleep` is not registered with the driver yet).
fn create_sleeps(work: &Workload, wakers: &[Waker], base: tokio::time::Instant) -> Vec<Pin<Box<Sleep>>> {
    work.first_deadline
        .iter()
        .zip(wakers)
        .map(|(deadline, waker)| {
            let mut sleep = Box::pin(tokio::time::sleep_until(at(base, *deadline)));
            assert!(sleep.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
            sleep
        })
        .collect()
}

fn sleeps_setup(work: &Workload, wakers: &[Waker], rearm: bool) -> Sleeps {
    let base = tokio::time::Instant::now();
    let mut sleeps = create_sleeps(work, wakers, base);
    if rearm {
        for &key in &work.activity_order {
            sleeps[key as usize].as_mut().reset(at(base, work.rearm_deadline[key as usize]));
        }
    }
    Sleeps { sleeps, base }
}

/// Advances the paused clock tick by tick; each connection whose timer fired (its waker was called) polls
/// its `Sleep` and re-arms it an interval later, as its task would. Returns how many fired.
async fn sleeps_expire(state: &mut Sleeps, wakers: &[Waker], fired: &Mutex<Vec<u32>>, to: u64) -> usize {
    let mut count = 0;
    let mut woken = Vec::new();
    for tick in 1..=to {
        tokio::time::advance(TICK).await;
        std::mem::swap(&mut woken, &mut *fired.lock().unwrap());
        for &key in &woken {
            let index = key as usize;
            let mut cx = Context::from_waker(&wakers[index]);
            let sleep = &mut state.sleeps[index];
            if sleep.as_mut().poll(&mut cx).is_ready() {
                count += 1;
                sleep.as_mut().reset(at(state.base, tick + INTERVAL_TICKS));
                let _ = sleep.as_mut().poll(&mut cx);
            }
        }
        woken.clear();
    }
    count
}

fn bench_tokio_sleep(c: &mut Criterion, work: &Workload) {
    let n = work.len();
    let name = "tokio_sleep";
    let runtime = paused_runtime();
    let fired = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let wakers = index_wakers(n, &fired);
    let _context = runtime.enter();
    let reset_fired = || fired.lock().unwrap().clear();

    group(c, "schedule", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| timed(iters, tokio::time::Instant::now, |base| create_sleeps(work, &wakers, *base)))
    });
    group(c, "rearm", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || sleeps_setup(work, &wakers, false),
                |state| {
                    for &key in &work.activity_order {
                        state.sleeps[key as usize].as_mut().reset(at(state.base, work.rearm_deadline[key as usize]));
                    }
                },
            )
        })
    });
    group(c, "cancel", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    let state = sleeps_setup(work, &wakers, false);
                    let mut slots: Vec<Option<Pin<Box<Sleep>>>> = state.sleeps.into_iter().map(Some).collect();
                    slots.shrink_to_fit();
                    slots
                },
                |slots| {
                    for &key in &work.activity_order {
                        drop(slots[key as usize].take());
                    }
                },
            )
        })
    });
    for (operation, rearm, to) in [("expire", false, INTERVAL_TICKS), ("expire_after_rearm", true, REARMED_HORIZON)] {
        group(c, operation, n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut state = sleeps_setup(work, &wakers, rearm);
                    reset_fired();
                    // Unconstrained: each connection's task would have its own coop budget; this one future
                    // polls them all, and with the budget `Sleep` would report Pending after 128 polls.
                    total += runtime.block_on(tokio::task::unconstrained(async {
                        let start = Instant::now();
                        let count = sleeps_expire(&mut state, &wakers, &fired, to).await;
                        let elapsed = start.elapsed();
                        assert!(count >= n, "{count} of {n} fired");
                        elapsed
                    }));
                    drop(state);
                    reset_fired();
                }
                total
            })
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// `tokio_util::time::DelayQueue`: tokio's own wheel, as a collection.

struct Queue {
    queue: DelayQueue<u32>,
    keys: Vec<delay_queue::Key>,
    base: tokio::time::Instant,
}

fn queue_setup(work: &Workload, rearm: bool) -> Queue {
    let base = tokio::time::Instant::now();
    let mut queue = DelayQueue::with_capacity(work.len());
    let mut keys: Vec<_> = work
        .first_deadline
        .iter()
        .enumerate()
        .map(|(key, deadline)| queue.insert_at(key as u32, at(base, *deadline)))
        .collect();
    keys.shrink_to_fit();
    if rearm {
        for &key in &work.activity_order {
            queue.reset_at(&keys[key as usize], at(base, work.rearm_deadline[key as usize]));
        }
    }
    Queue { queue, keys, base }
}

async fn queue_expire(state: &mut Queue, to: u64) -> usize {
    let mut count = 0;
    let mut cx = Context::from_waker(Waker::noop());
    for tick in 1..=to {
        tokio::time::advance(TICK).await;
        while let Poll::Ready(Some(expired)) = state.queue.poll_expired(&mut cx) {
            count += 1;
            let key = expired.into_inner();
            state.keys[key as usize] = state.queue.insert_at(key, at(state.base, tick + INTERVAL_TICKS));
        }
    }
    count
}

fn bench_delay_queue(c: &mut Criterion, work: &Workload) {
    let n = work.len();
    let name = "delay_queue";
    let runtime = paused_runtime();
    let _context = runtime.enter();

    group(c, "schedule", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || (tokio::time::Instant::now(), DelayQueue::with_capacity(n), Vec::with_capacity(n)),
                |(base, queue, keys)| {
                    for (key, deadline) in work.first_deadline.iter().enumerate() {
                        keys.push(queue.insert_at(key as u32, at(*base, *deadline)));
                    }
                },
            )
        })
    });
    group(c, "rearm", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || queue_setup(work, false),
                |state| {
                    for &key in &work.activity_order {
                        state
                            .queue
                            .reset_at(&state.keys[key as usize], at(state.base, work.rearm_deadline[key as usize]));
                    }
                },
            )
        })
    });
    group(c, "cancel", n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || queue_setup(work, false),
                |state| {
                    for &key in &work.activity_order {
                        black_box(state.queue.remove(&state.keys[key as usize]));
                    }
                },
            )
        })
    });
    for (operation, rearm, to) in [("expire", false, INTERVAL_TICKS), ("expire_after_rearm", true, REARMED_HORIZON)] {
        group(c, operation, n).bench_with_input(BenchmarkId::new(name, n), work, |b, work| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut state = queue_setup(work, rearm);
                    total += runtime.block_on(tokio::task::unconstrained(async {
                        let start = Instant::now();
                        let count = queue_expire(&mut state, to).await;
                        let elapsed = start.elapsed();
                        assert!(count >= n, "{count} of {n} fired");
                        elapsed
                    }));
                    drop(state);
                }
                total
            })
        });
    }
}

// ---------------------------------------------------------------------------------------------------------

/// A group for one operation at one size: flat sampling (every sample runs the same number of iterations,
/// which keeps the million-key cases to a handful of set-ups) and throughput in keys.
fn group<'a>(c: &'a mut Criterion, operation: &str, n: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(operation);
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group
}

fn timers(c: &mut Criterion) {
    for n in SIZES {
        let work = Workload::new(n);
        bench_keyed::<Wheel>(c, "wheel", &work);
        bench_keyed::<HeapTimers>(c, "heap", &work);
        bench_tokio_sleep(c, &work);
        bench_delay_queue(c, &work);
    }
}

criterion_group!(benches, timers);
criterion_main!(benches);
