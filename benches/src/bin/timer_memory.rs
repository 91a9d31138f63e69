//! Bytes per connection of each keepalive timer structure, counted by the allocator.
//!
//! `cargo run --release -p tether-benches --bin timer_memory -- [N ...]` (default 10000 100000 1000000).
//!
//! A `#[global_allocator]` wrapping `System` keeps a count of live heap bytes; each structure is built for `n`
//! connections (every timer armed, and for tokio's `Sleep` polled once so that it is registered with the
//! driver) and the growth in live bytes is divided by `n`. Measured twice: right after arming, and after every
//! connection re-armed once (where the lazy-deletion heap has grown to two entries per connection).
//! Not counted: the connection's own task / waker, which exists whatever the timer is.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Waker};

use tether::wheel::Wheel;
use tether_benches::timers::{time_runtime, HeapTimers, Workload, TICK, WHEEL_ENTRY_BYTES, WHEEL_FIXED_BYTES};
use tokio_util::time::DelayQueue;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Live bytes added by `build`, with what it returns kept alive until measured.
fn grown<T>(build: impl FnOnce() -> T) -> (isize, T) {
    let before = live();
    let value = build();
    (live() - before, value)
}

fn row(name: &str, n: usize, armed: isize, rearmed: isize, note: &str) {
    println!("| {name} | {n} | {:.1} | {:.1} | {note} |", armed as f64 / n as f64, rearmed as f64 / n as f64);
}

fn main() {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args().skip(1).map(|arg| arg.parse().expect("sizes are integers")).collect();
        if args.is_empty() {
            vec![10_000, 100_000, 1_000_000]
        } else {
            args
        }
    };
    println!("| structure | connections | bytes/conn armed | bytes/conn after one re-arm each | note |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for n in sizes {
        let work = Workload::new(n);
        let rearm_all = |schedule: &mut dyn FnMut(u32, u64)| {
            for &key in &work.activity_order {
                schedule(key, work.rearm_deadline[key as usize]);
            }
        };

        let (armed, mut wheel) = grown(|| {
            let mut wheel = Wheel::with_capacity(n);
            for (key, deadline) in work.first_deadline.iter().enumerate() {
                wheel.schedule(key as u32, *deadline);
            }
            wheel
        });
        let (rearm_growth, ()) = grown(|| rearm_all(&mut |key, deadline| wheel.schedule(key, deadline)));
        row(
            "tether::wheel::Wheel",
            n,
            armed,
            armed + rearm_growth,
            &format!(
                "computed: {WHEEL_ENTRY_BYTES} B/key entry table; the six levels ({WHEEL_FIXED_BYTES} B) are inline in \
                 `Wheel` (size_of = {} B), once per shard",
                std::mem::size_of::<Wheel>()
            ),
        );
        drop(wheel);

        let (armed, mut heap) = grown(|| {
            let mut heap = HeapTimers::with_capacity(n);
            for (key, deadline) in work.first_deadline.iter().enumerate() {
                heap.schedule(key as u32, *deadline);
            }
            heap
        });
        let (rearm_growth, ()) = grown(|| rearm_all(&mut |key, deadline| heap.schedule(key, deadline)));
        row(
            "BinaryHeap + lazy deletion",
            n,
            armed,
            armed + rearm_growth,
            &format!(
                "computed: 16 B/entry + 5 B/key; {} entries after re-arm, capacity {:.1} B/conn",
                heap.heap_entries(),
                heap.bytes() as f64 / n as f64
            ),
        );
        drop(heap);

        let runtime = time_runtime();
        let _context = runtime.enter();
        // The driver allocates its own wheel on first use; do that before counting.
        drop(tokio::time::sleep(TICK));
        let base = tokio::time::Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        let (armed, mut sleeps) = grown(|| {
            let mut sleeps = Vec::with_capacity(n);
            for deadline in &work.first_deadline {
                let mut sleep = Box::pin(tokio::time::sleep_until(base + TICK * *deadline as u32));
                assert!(sleep.as_mut().poll(&mut cx).is_pending());
                sleeps.push(sleep);
            }
            sleeps
        });
        let (rearm_growth, ()) = grown(|| {
            rearm_all(&mut |key, deadline| sleeps[key as usize].as_mut().reset(base + TICK * deadline as u32))
        });
        row(
            "tokio Sleep per connection (Pin<Box<Sleep>>)",
            n,
            armed,
            armed + rearm_growth,
            &format!(
                "size_of::<Sleep>() = {} B, plus the Vec of boxes (8 B/conn)",
                std::mem::size_of::<tokio::time::Sleep>()
            ),
        );
        drop(sleeps);

        let (armed, (mut queue, keys)) = grown(|| {
            let mut queue = DelayQueue::with_capacity(n);
            let keys: Vec<_> = work
                .first_deadline
                .iter()
                .enumerate()
                .map(|(key, deadline)| queue.insert_at(key as u32, base + TICK * *deadline as u32))
                .collect();
            (queue, keys)
        });
        let (rearm_growth, ()) = grown(|| {
            rearm_all(&mut |key, deadline| queue.reset_at(&keys[key as usize], base + TICK * deadline as u32))
        });
        row(
            "tokio_util DelayQueue<u32>",
            n,
            armed,
            armed + rearm_growth,
            "slab entries, plus the caller's Vec<Key> (8 B/conn)",
        );
        drop((queue, keys));
    }
}
