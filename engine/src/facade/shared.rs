//! What the program's side (handle, event stream) and the shards' handlers share: the wake-up flags in both
//! directions and the facade's counters ([`FacadeStats`]).
//!
//! Two waits cross threads, and neither may block a shard:
//! - **Events backlog -> consumer -> shard.** A shard whose events found the channel full keeps them in its
//!   backlog and raises `backlogged[shard]` (and `any_backlogged`); the consumer, once it has drained the
//!   channel to half, lowers the flags and sends that shard a `Drain` notice. The shard raises its flag before
//!   a last try, so a consumer that made room in between is not missed; every loop iteration (at least once a
//!   second) retries anyway.
//! - **Notice queue full -> sender waits -> shard.** A `send().await` that finds the shard's notice queue full
//!   registers on `inbox_room[shard]`, raises `inbox_waiting[shard]` and tries again; the shard, after each
//!   drain of its queue, wakes the waiters if the flag is up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The facade's counters, summed over shards ([`AsyncHandle::stats`](super::AsyncHandle::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FacadeStats {
    /// Connections closed with 1008 "consumer too slow": one of their messages found the event channel
    /// full and their shard's backlog past [`FacadeOptions::backlog_bytes`](super::FacadeOptions::backlog_bytes).
    pub slow_consumer_closes: u64,
    /// Received messages not delivered as events because their connection was closed as a slow consumer
    /// (the one that overflowed and any that arrived after it).
    pub messages_dropped: u64,
    /// [`AsyncHandle::try_send`](super::AsyncHandle::try_send) messages dropped because their connection's
    /// send queue had no room (or earlier sends were still waiting for room).
    pub try_send_dropped: u64,
    /// Upgrades answered 503 because their shard's event backlog was past its bound.
    pub upgrades_refused: u64,
    /// Sends waiting for room in their connection's send queue now (a gauge).
    pub sends_waiting: u64,
    /// Events held in the shards' backlogs now, waiting for room in the channel (a gauge).
    pub events_backlogged: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub slow_consumer_closes: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub try_send_dropped: AtomicU64,
    pub upgrades_refused: AtomicU64,
    pub sends_waiting: AtomicU64,
    pub events_backlogged: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

pub(crate) struct Shared {
    /// Per shard: events wait in the shard's backlog (see the module docs).
    pub backlogged: Box<[AtomicBool]>,
    /// Some shard raised its `backlogged` flag: the consumer looks at the per-shard flags only then.
    pub any_backlogged: AtomicBool,
    /// Per shard: a sender waits for room in the shard's notice queue.
    pub inbox_waiting: Box<[AtomicBool]>,
    pub inbox_room: Box<[Notify]>,
    /// The event channel's capacity: the consumer wakes backlogged shards once it is half empty.
    pub event_capacity: usize,
    pub counters: Counters,
}

impl Shared {
    pub fn new(shards: usize, event_capacity: usize) -> Shared {
        Shared {
            backlogged: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            any_backlogged: AtomicBool::new(false),
            inbox_waiting: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            inbox_room: (0..shards).map(|_| Notify::new()).collect(),
            event_capacity,
            counters: Counters::default(),
        }
    }

    /// Shard `shard` holds events back: raised before its last try (see the module docs).
    pub fn mark_backlogged(&self, shard: usize) {
        self.backlogged[shard].store(true, Ordering::SeqCst);
        self.any_backlogged.store(true, Ordering::SeqCst);
    }

    /// The shards to wake because they hold events back; lowers their flags.
    pub fn take_backlogged(&self) -> impl Iterator<Item = usize> + '_ {
        let any = self.any_backlogged.load(Ordering::SeqCst) && self.any_backlogged.swap(false, Ordering::SeqCst);
        self.backlogged
            .iter()
            .enumerate()
            .filter(move |(_, flag)| any && flag.swap(false, Ordering::SeqCst))
            .map(|(shard, _)| shard)
    }

    pub fn stats(&self) -> FacadeStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FacadeStats {
            slow_consumer_closes: load(&c.slow_consumer_closes),
            messages_dropped: load(&c.messages_dropped),
            try_send_dropped: load(&c.try_send_dropped),
            upgrades_refused: load(&c.upgrades_refused),
            sends_waiting: load(&c.sends_waiting),
            events_backlogged: load(&c.events_backlogged),
        }
    }
}
