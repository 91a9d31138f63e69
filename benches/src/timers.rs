//! The keepalive timer workload and the structures `tether::wheel::Wheel` is measured against.
//!
//! The workload is the engine's: every connection has one deadline (its next ping), 20 s away at 100 ms ticks,
//! i.e. 200 ticks. Connections arrive at different times, so deadlines are spread over a whole interval; any
//! inbound message pushes the connection's deadline a full interval out again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

/// One tick of the engine's clock.
pub const TICK: Duration = Duration::from_millis(100);
/// The default ping interval (20 s) in ticks.
pub const INTERVAL_TICKS: u64 = 200;
/// Re-arms land up to this many ticks after a full interval, so re-armed keys do not all share one slot.
pub const REARM_JITTER_TICKS: u64 = 20;

/// xorshift64*: deterministic, dependency-free, and fast enough that generating inputs never dominates.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// The inputs for `n` connections, generated once and shared by every structure so that all of them see the
/// same deadlines in the same order.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `first_deadline[k]`: key `k`'s first deadline, spread uniformly over ticks `1..=INTERVAL_TICKS`.
    pub first_deadline: Vec<u64>,
    /// `rearm_deadline[k]`: key `k`'s deadline after activity, a full interval (plus jitter) past the first.
    pub rearm_deadline: Vec<u64>,
    /// The order in which connections see activity or go away: a random permutation of the keys, because
    /// messages do not arrive in slot order.
    pub activity_order: Vec<u32>,
}

impl Workload {
    pub fn new(n: usize) -> Workload {
        let mut rng = Rng::new(0x7e7e_7e7e ^ n as u64);
        let first_deadline: Vec<u64> = (0..n).map(|_| 1 + rng.below(INTERVAL_TICKS)).collect();
        let rearm_deadline =
            first_deadline.iter().map(|first| first + INTERVAL_TICKS + rng.below(REARM_JITTER_TICKS)).collect();
        let mut activity_order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            activity_order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        Workload { first_deadline, rearm_deadline, activity_order }
    }

    pub fn len(&self) -> usize {
        self.first_deadline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first_deadline.is_empty()
    }
}

/// A binary heap with lazy deletion: the usual "many timers" structure when a wheel is not at hand.
///
/// Re-arm pushes a new entry and bumps the key's generation; cancel only bumps the generation; stale entries
/// are skipped when they reach the top. So re-arm is O(log n) and leaves garbage behind that stays in memory
/// (and costs a pop) until its old deadline comes round.
#[derive(Debug, Default)]
pub struct HeapTimers {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// The live generation of each key; a heap entry is live iff its generation matches and the key is armed.
    generation: Vec<u32>,
    armed: Vec<bool>,
    len: usize,
}

impl HeapTimers {
    pub fn with_capacity(keys: usize) -> HeapTimers {
        HeapTimers {
            heap: BinaryHeap::with_capacity(keys),
            generation: vec![0; keys],
            armed: vec![false; keys],
            len: 0,
        }
    }

    /// Arms or re-arms `key` at `deadline`.
    pub fn schedule(&mut self, key: u32, deadline: u64) {
        let index = key as usize;
        if index >= self.generation.len() {
            self.generation.resize(index + 1, 0);
            self.armed.resize(index + 1, false);
        }
        self.generation[index] = self.generation[index].wrapping_add(1);
        if !self.armed[index] {
            self.armed[index] = true;
            self.len += 1;
        }
        self.heap.push(Reverse((deadline, key, self.generation[index])));
    }

    pub fn cancel(&mut self, key: u32) -> bool {
        match self.armed.get_mut(key as usize) {
            Some(armed) if *armed => {
                *armed = false;
                self.generation[key as usize] = self.generation[key as usize].wrapping_add(1);
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    /// Pops one key whose deadline is `<= now`, skipping stale entries.
    pub fn poll(&mut self, now: u64) -> Option<u32> {
        while let Some(&Reverse((deadline, key, generation))) = self.heap.peek() {
            if deadline > now {
                return None;
            }
            self.heap.pop();
            let index = key as usize;
            if self.armed[index] && self.generation[index] == generation {
                self.armed[index] = false;
                self.len -= 1;
                return Some(key);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries in the heap, live and stale.
    pub fn heap_entries(&self) -> usize {
        self.heap.len()
    }

    /// Bytes held: heap capacity plus the per-key generation and armed tables.
    pub fn bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<Reverse<(u64, u32, u32)>>()
            + self.generation.capacity() * std::mem::size_of::<u32>()
            + self.armed.capacity() * std::mem::size_of::<bool>()
    }
}

/// Bytes of one `tether::wheel` entry. The entry type is private to the engine; its doc comment states the
/// 24 bytes (`deadline: u64, prev: u32, next: u32, location: u16`, padded), and `timer_memory` checks it by
/// counting allocations.
pub const WHEEL_ENTRY_BYTES: usize = 24;
/// The wheel's fixed part: six levels of 64 `u32` heads, a `u64` bitmap and a `u32` shift (272 B padded).
pub const WHEEL_FIXED_BYTES: usize = 6 * 272;

/// A waker that records which connection it belongs to when fired, standing in for the connection's task:
/// with one `Sleep` per connection, the timer driver wakes exactly the tasks whose timers fired, and only
/// those poll their `Sleep` again.
pub struct IndexWaker {
    pub index: u32,
    pub fired: Arc<Mutex<Vec<u32>>>,
}

impl Wake for IndexWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.lock().unwrap().push(self.index);
    }
}

/// One waker per connection, all reporting into `fired`.
pub fn index_wakers(n: usize, fired: &Arc<Mutex<Vec<u32>>>) -> Vec<Waker> {
    (0..n as u32).map(|index| Waker::from(Arc::new(IndexWaker { index, fired: fired.clone() }))).collect()
}

/// A current-thread runtime with the time driver: enough to create and register `Sleep`s.
pub fn time_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_lazy_deletion() {
        let mut heap = HeapTimers::with_capacity(4);
        heap.schedule(0, 10);
        heap.schedule(1, 5);
        heap.schedule(1, 20);
        heap.schedule(2, 7);
        assert!(heap.cancel(2));
        assert!(!heap.cancel(2));
        assert_eq!(heap.len(), 2);
        assert_eq!(heap.poll(9), None);
        assert_eq!(heap.poll(10), Some(0));
        assert_eq!(heap.poll(19), None);
        assert_eq!(heap.poll(20), Some(1));
        assert!(heap.is_empty());
        assert_eq!(heap.heap_entries(), 0);
    }

    #[test]
    fn workload_shape() {
        let work = Workload::new(1000);
        assert!(work.first_deadline.iter().all(|d| (1..=INTERVAL_TICKS).contains(d)));
        let mut order = work.activity_order.clone();
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }
}
