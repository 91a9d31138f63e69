//! Hierarchical timing wheel: one per shard, at most one entry (the next deadline) per connection slot.
//!
//! Time is in ticks (`u64`; the shard maps `Instant`s to ticks). Keys are connection slot indexes (`u32`,
//! dense). Layout follows tokio's timer wheel: six levels of 64 slots, a `u64` occupancy bitmap per
//! level so that the next occupied slot is found with a `trailing_zeros` instead of a scan, and entries
//! threaded through per-slot intrusive lists (see `entry.rs`) so that schedule, cancel and re-arm are O(1)
//! and allocate nothing once the entry table has grown to the highest key.
//!
//! Why a wheel and not a heap: every connection re-arms its keepalive deadline on every ping and on much
//! inbound traffic; a heap would pay O(log n) per re-arm plus lazy-deletion garbage, a wheel pays a few index
//! writes.
//!
//! Expired entries are moved to a *pending* list and handed out one per `poll` call, so the caller can
//! schedule and cancel (including re-arming the key it was just given) between calls without the wheel
//! holding any borrowed iterator.

mod entry;
mod level;

use entry::{push_front, unlink, Entry, Location, NONE};
use level::{Level, LEVELS, LEVEL_BITS, LEVEL_SLOTS};

/// How many entries `next_expiration` will look at to turn a coarse slot's start into an exact deadline.
/// Bounded so that a slot holding a hundred thousand connections does not make every sleep decision O(n).
const EXACT_SCAN_LIMIT: usize = 64;

/// A hierarchical timing wheel keyed by `u32` connection slot.
///
/// Invariants (checked by the tests against a reference model):
/// * every scheduled entry with `deadline <= elapsed` is in the pending list, every other one is in exactly
///   one wheel slot, chosen relative to `elapsed` as described in `level.rs`;
/// * a slot is never entered by `elapsed` while still occupied: `poll` cascades every slot whose start it
///   passes, so entries are always re-placed before their deadline and never fire early.
pub struct Wheel {
    /// Indexed by key; grown on demand and never shrunk, so re-arming never allocates.
    entries: Vec<Entry>,
    levels: [Level; LEVELS],
    /// Head of the list of entries whose deadline has passed and that `poll` has not yet returned.
    pending: u32,
    /// A lower bound on the deadlines in `pending` (exact unless a pending entry was cancelled): pending
    /// entries may be due *before* `elapsed` (scheduled in the past), and `next_expiration` must not report a
    /// tick later than the earliest of them.
    pending_low: u64,
    elapsed: u64,
    len: usize,
}

impl Wheel {
    /// An empty wheel at tick 0; its entry table grows with the highest key scheduled.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A wheel whose entry table already holds keys `0..keys`, so scheduling them never allocates.
    pub fn with_capacity(keys: usize) -> Self {
        Wheel {
            entries: vec![Entry::VACANT; keys],
            levels: std::array::from_fn(Level::new),
            pending: NONE,
            pending_low: 0,
            elapsed: 0,
            len: 0,
        }
    }

    /// The tick the wheel has been advanced to; every deadline <= elapsed has been returned by poll
    /// (or is pending: `poll` will return it before advancing further).
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Schedule `key` to expire at `deadline` (a tick). If `key` is already scheduled it is moved (re-armed),
    /// O(1). A deadline <= elapsed() expires at the next poll.
    ///
    /// # Panics
    /// If `key == u32::MAX`, which is reserved as the "no entry" link.
    pub fn schedule(&mut self, key: u32, deadline: u64) {
        assert_ne!(key, NONE, "key u32::MAX is reserved");
        let index = key as usize;
        if index >= self.entries.len() {
            // `resize` grows the capacity geometrically, so growing key by key stays amortised O(1).
            self.entries.resize(index + 1, Entry::VACANT);
        }
        if self.entries[index].is_scheduled() {
            self.detach(key);
        } else {
            self.len += 1;
        }
        self.entries[index].deadline = deadline;
        self.place(key);
    }

    /// Remove `key`'s entry; returns whether it was scheduled. O(1).
    pub fn cancel(&mut self, key: u32) -> bool {
        match self.entries.get(key as usize) {
            Some(entry) if entry.is_scheduled() => {
                self.detach(key);
                self.entries[key as usize].location = Location::UNSCHEDULED;
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    /// The deadline `key` is scheduled at, if any.
    pub fn deadline(&self, key: u32) -> Option<u64> {
        self.entries.get(key as usize).filter(|entry| entry.is_scheduled()).map(|entry| entry.deadline)
    }

    /// Advance time to `now` and return ONE expired key (deadline <= now), removing its entry; `None` when
    /// nothing more is due at `now`, at which point `elapsed() == max(now, elapsed())`.
    ///
    /// Meant to be called in a loop, with schedule / cancel allowed between calls. Keys come out in
    /// non-decreasing deadline order, except that keys scheduled in the past come out first.
    ///
    /// Empty stretches are skipped by jumping straight to the next occupied slot, so the cost is per occupied
    /// slot passed, not per tick.
    pub fn poll(&mut self, now: u64) -> Option<u32> {
        let now = now.max(self.elapsed);
        loop {
            if self.pending != NONE {
                return Some(self.pop_pending());
            }
            match self.next_slot() {
                Some((level, slot, start)) if start <= now => {
                    // Entries are re-placed relative to the slot's start (or a later tick at the top level),
                    // which is no later than any of them is due: nothing below this level is occupied.
                    self.elapsed =
                        if level == LEVELS - 1 { self.top_level_cascade_tick(slot, start, now) } else { start };
                    self.cascade(level, slot);
                }
                _ => {
                    // Safe to jump: the next occupied slot starts after `now`, so no entry crosses into the
                    // slot `now` is in (see the invariant in `level`).
                    self.elapsed = now;
                    return None;
                }
            }
        }
    }

    /// The earliest tick at which `poll` may return something; never later than the earliest deadline.
    ///
    /// Exact when at most `EXACT_SCAN_LIMIT` (64) entries have to be looked at to be sure (always with that
    /// many keys or fewer); otherwise the start of the slot holding the earliest entry, where a poll only
    /// cascades and the next call gives a tighter answer. `None` when empty.
    pub fn next_expiration(&self) -> Option<u64> {
        if self.pending != NONE {
            return Some(self.pending_low);
        }
        let (index, level) = self.levels.iter().enumerate().find(|(_, level)| !level.is_empty())?;
        let mut slots = level.occupied_slots(self.elapsed);
        if index == 0 {
            // A finest-level slot is one tick wide: its start is its entries' deadline.
            return slots.next().map(|(_, start)| start);
        }
        // The first slot usually holds the earliest entry, but at the top level a slot may also hold entries
        // parked from beyond the wheel's span, so keep going while a later slot could still start earlier.
        let mut earliest = u64::MAX;
        let mut budget = EXACT_SCAN_LIMIT;
        for (slot, start) in slots {
            if start >= earliest {
                break;
            }
            let mut key = level.head(slot);
            while key != NONE {
                if budget == 0 {
                    // Every entry not yet seen is in this slot or a later one, so due at `start` or later.
                    return Some(earliest.min(start));
                }
                budget -= 1;
                let entry = &self.entries[key as usize];
                earliest = earliest.min(entry.deadline);
                key = entry.next;
            }
        }
        Some(earliest)
    }

    /// Keys scheduled (in a slot or pending).
    pub fn len(&self) -> usize {
        self.len
    }

    /// No key is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first occupied slot of the lowest non-empty level: by the level invariant it holds the earliest
    /// wheel entry. Returns (level, slot, tick the slot starts).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        self.levels
            .iter()
            .enumerate()
            .find(|(_, level)| !level.is_empty())
            .and_then(|(index, level)| level.next_occupied(self.elapsed).map(|(slot, start)| (index, slot, start)))
    }

    /// Links an unlinked entry (its `deadline` already set) into the pending list or the right slot.
    fn place(&mut self, key: u32) {
        let deadline = self.entries[key as usize].deadline;
        if deadline <= self.elapsed {
            if self.pending == NONE || deadline < self.pending_low {
                self.pending_low = deadline;
            }
            push_front(&mut self.entries, &mut self.pending, key);
            self.entries[key as usize].location = Location::PENDING;
            return;
        }
        let (level, slot) = self.slot_for(deadline);
        self.levels[level].push(&mut self.entries, slot, key);
        self.entries[key as usize].location = Location::slot(level, slot);
    }

    /// The (level, slot) for a deadline after `elapsed`: the level of the highest 6-bit digit in which the
    /// two differ, so that the slot is after `elapsed`'s and only lower levels are finer.
    fn slot_for(&self, deadline: u64) -> (usize, usize) {
        debug_assert!(deadline > self.elapsed);
        let highest_differing_bit = 63 - (deadline ^ self.elapsed).leading_zeros();
        let level = (highest_differing_bit / LEVEL_BITS) as usize;
        if level < LEVELS {
            return (level, self.levels[level].slot_for(deadline));
        }
        // Past the top level's block: park the entry at the top level in a slot of the *next* block (a slot
        // numbered before elapsed's). If the deadline is within one turn of the top level, its own slot there
        // starts no later than the deadline; if it is further, the last slot of the turn does. Either way the
        // slot is reached before the deadline and the entry is re-placed from there.
        let top = &self.levels[LEVELS - 1];
        let top_slot_shift = LEVEL_BITS * (LEVELS as u32 - 1);
        let elapsed_slot = top.slot_for(self.elapsed);
        let elapsed_slot_start = self.elapsed & !((1u64 << top_slot_shift) - 1);
        let turn_end = elapsed_slot_start.checked_add(1u64 << (top_slot_shift + LEVEL_BITS));
        let slot = match turn_end {
            Some(turn_end) if deadline >= turn_end => (elapsed_slot + LEVEL_SLOTS - 1) % LEVEL_SLOTS,
            _ => top.slot_for(deadline),
        };
        (LEVELS - 1, slot)
    }

    /// How far `elapsed` may jump when cascading the top-level `slot` (starting at `start <= now`).
    ///
    /// Entries parked from beyond the wheel's span would otherwise come back to the top level one turn
    /// (`2^36` ticks) at a time: 2^28 cascades to reach a deadline near `u64::MAX`. Instead jump straight to
    /// the earliest of `now`, the slot's earliest deadline, and the tick before the next occupied slot: nothing
    /// is due before that tick, and no other occupied slot is passed, so the level invariant still holds.
    fn top_level_cascade_tick(&self, slot: usize, start: u64, now: u64) -> u64 {
        let top = &self.levels[LEVELS - 1];
        let before_next_slot =
            top.occupied_slots(self.elapsed).nth(1).map_or(u64::MAX, |(_, next_start)| next_start - 1);
        let mut tick = now.min(before_next_slot);
        let mut key = top.head(slot);
        while key != NONE {
            let entry = &self.entries[key as usize];
            tick = tick.min(entry.deadline);
            key = entry.next;
        }
        debug_assert!(tick >= start);
        tick
    }

    /// Unlinks a scheduled entry from whichever list holds it; leaves `location` stale for the caller to set.
    fn detach(&mut self, key: u32) {
        let location = self.entries[key as usize].location;
        match location.level_slot() {
            Some((level, slot)) => self.levels[level].remove(&mut self.entries, slot, key),
            None => {
                debug_assert_eq!(location, Location::PENDING);
                unlink(&mut self.entries, &mut self.pending, key);
            }
        }
    }

    /// Empties a slot whose start `elapsed` has just reached and re-places each entry relative to it: the
    /// ones due now go to pending, the rest drop to a finer level (or, if still past the top level's block,
    /// to a later top-level slot).
    fn cascade(&mut self, level: usize, slot: usize) {
        let mut key = self.levels[level].take(slot);
        while key != NONE {
            let next = self.entries[key as usize].next;
            self.place(key);
            key = next;
        }
    }

    fn pop_pending(&mut self) -> u32 {
        let key = self.pending;
        unlink(&mut self.entries, &mut self.pending, key);
        self.entries[key as usize].location = Location::UNSCHEDULED;
        self.len -= 1;
        key
    }
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Wheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wheel")
            .field("elapsed", &self.elapsed)
            .field("len", &self.len)
            .field("next_expiration", &self.next_expiration())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Ticks spanned by the six levels; deadlines further away are parked at the top level and cascaded.
    const SPAN: u64 = 1 << (LEVEL_BITS * LEVELS as u32);

    /// Drains `poll(now)`, returning the keys in the order they came out.
    fn drain(wheel: &mut Wheel, now: u64) -> Vec<u32> {
        let mut fired = Vec::new();
        while let Some(key) = wheel.poll(now) {
            fired.push(key);
        }
        fired
    }

    /// Schedules one key at `deadline`, polls every tick from `from` up to `deadline - 1` in large and small
    /// jumps (never firing), then checks it fires exactly at `deadline`.
    fn assert_fires_exactly_at(from: u64, deadline: u64) {
        let mut wheel = Wheel::new();
        assert!(wheel.poll(from).is_none());
        wheel.schedule(7, deadline);
        // Approach the deadline by halving the remaining distance: exercises every cascade on the way.
        let mut now = from;
        while now + 1 < deadline {
            now += (deadline - now) / 2;
            assert_eq!(wheel.poll(now), None, "fired early at {now} (deadline {deadline})");
            assert_eq!(wheel.deadline(7), Some(deadline));
            let next = wheel.next_expiration().unwrap();
            assert!(next > now && next <= deadline, "next_expiration {next}, now {now}");
        }
        assert_eq!(wheel.next_expiration(), Some(deadline), "exact once nothing else is in the slot");
        assert_eq!(wheel.poll(deadline - 1), None);
        assert_eq!(wheel.poll(deadline), Some(7));
        assert_eq!(wheel.poll(deadline), None);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiration(), None);
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut wheel = Wheel::new();
        wheel.schedule(3, 10);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.deadline(3), Some(10));
        assert_eq!(wheel.next_expiration(), Some(10));
        assert_eq!(wheel.poll(9), None);
        assert_eq!(wheel.elapsed(), 9);
        assert_eq!(wheel.poll(10), Some(3));
        assert_eq!(wheel.poll(10), None);
        assert_eq!(wheel.deadline(3), None);
        assert!(wheel.is_empty());
    }

    #[test]
    fn jumps_over_empty_ticks() {
        let mut wheel = Wheel::new();
        wheel.schedule(1, 1_000_000_007);
        assert_eq!(wheel.poll(1_000_000_006), None);
        assert_eq!(wheel.poll(u64::MAX / 4), Some(1));
        assert_eq!(wheel.elapsed(), 1_000_000_007);
        assert_eq!(wheel.poll(u64::MAX / 4), None);
        assert_eq!(wheel.elapsed(), u64::MAX / 4);
    }

    #[test]
    fn cancel_removes_entry() {
        let mut wheel = Wheel::new();
        assert!(!wheel.cancel(5), "never scheduled, table not even grown");
        wheel.schedule(5, 100);
        wheel.schedule(6, 100);
        assert!(wheel.cancel(5));
        assert!(!wheel.cancel(5));
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.deadline(5), None);
        assert_eq!(drain(&mut wheel, 1000), vec![6]);
        assert!(!wheel.cancel(6), "fired entries are gone");
    }

    #[test]
    fn cancel_pending_entry() {
        let mut wheel = Wheel::new();
        wheel.schedule(1, 50);
        wheel.schedule(2, 50);
        let first = wheel.poll(60).unwrap();
        let second = 3 - first;
        // `second` is pending now; cancelling it must unlink it from the pending list.
        assert!(wheel.cancel(second));
        assert_eq!(wheel.poll(60), None);
        assert!(wheel.is_empty());
    }

    #[test]
    fn rearm_earlier_and_later() {
        let mut wheel = Wheel::new();
        wheel.schedule(1, 5000);
        wheel.schedule(1, 20);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.deadline(1), Some(20));
        assert_eq!(wheel.next_expiration(), Some(20));
        assert_eq!(wheel.poll(19), None);
        wheel.schedule(1, 300_000);
        assert_eq!(wheel.poll(20), None);
        assert_eq!(wheel.poll(299_999), None);
        assert_eq!(wheel.poll(300_000), Some(1));
        assert!(wheel.is_empty());
    }

    #[test]
    fn rearm_while_draining() {
        let mut wheel = Wheel::new();
        for key in 0..10 {
            wheel.schedule(key, 100);
        }
        let mut fired = 0;
        while let Some(key) = wheel.poll(100) {
            fired += 1;
            wheel.schedule(key, 200);
        }
        assert_eq!(fired, 10);
        assert_eq!(wheel.len(), 10);
        assert_eq!(wheel.next_expiration(), Some(200));
        assert_eq!(drain(&mut wheel, 200).len(), 10);
    }

    #[test]
    fn past_deadline_fires_at_next_poll() {
        let mut wheel = Wheel::new();
        assert_eq!(wheel.poll(1000), None);
        wheel.schedule(9, 400);
        wheel.schedule(8, 1000);
        assert_eq!(wheel.next_expiration(), Some(400));
        // `now` behind elapsed counts as elapsed.
        let mut fired = drain(&mut wheel, 3);
        fired.sort_unstable();
        assert_eq!(fired, vec![8, 9]);
        assert_eq!(wheel.elapsed(), 1000);
    }

    #[test]
    fn far_deadlines_fire_exactly() {
        for deadline in [
            1,
            63,
            64,
            65,
            64 * 64 + 1,
            64 * 64 * 64 + 12_345,
            64u64.pow(5) + 1,
            64u64.pow(5) * 37 + 999,
            SPAN - 1,
            SPAN,
            SPAN + 1,
            3 * SPAN + 12_345,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_fires_exactly_at(0, deadline);
        }
        // Starting off-block exercises the top level's wrap into the next block.
        for from in [SPAN - 1, SPAN / 2 + 3, 5 * SPAN + 64u64.pow(5) * 63 + 17] {
            for distance in [1, 64 * 64 + 5, SPAN / 2, SPAN - 1, SPAN, SPAN + 1, 100 * SPAN] {
                assert_fires_exactly_at(from, from + distance);
            }
        }
    }

    #[test]
    fn many_keys_in_one_slot() {
        let mut wheel = Wheel::with_capacity(1000);
        for key in 0..1000 {
            wheel.schedule(key, 4096 + 64 + 5);
        }
        assert_eq!(wheel.len(), 1000);
        // Too many to scan: a lower bound, never later than the deadline.
        assert!(wheel.next_expiration().unwrap() <= 4096 + 64 + 5);
        assert_eq!(wheel.poll(4096 + 64 + 4), None);
        assert_eq!(wheel.next_expiration(), Some(4096 + 64 + 5));
        let mut fired = drain(&mut wheel, 4096 + 64 + 5);
        fired.sort_unstable();
        assert_eq!(fired, (0..1000).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn next_expiration_after_cascades() {
        let mut wheel = Wheel::new();
        let deadlines = [70, 200, 4_500, 300_000, 20_000_000, 2 * SPAN];
        for (key, deadline) in deadlines.iter().enumerate() {
            wheel.schedule(key as u32, *deadline);
        }
        for (key, deadline) in deadlines.iter().enumerate() {
            assert_eq!(wheel.next_expiration(), Some(*deadline));
            assert_eq!(wheel.poll(deadline - 1), None);
            assert_eq!(wheel.next_expiration(), Some(*deadline));
            assert_eq!(wheel.poll(*deadline), Some(key as u32));
            assert_eq!(wheel.poll(*deadline), None);
            assert_eq!(wheel.len(), deadlines.len() - key - 1);
        }
        assert_eq!(wheel.next_expiration(), None);
    }

    #[test]
    fn order_is_non_decreasing() {
        let mut wheel = Wheel::new();
        let mut deadlines: Vec<u64> = (0..500u64).map(|i| (i * 7919) % 100_000 + 1).collect();
        for (key, deadline) in deadlines.iter().enumerate() {
            wheel.schedule(key as u32, *deadline);
        }
        let fired: Vec<u64> = {
            let mut out = Vec::new();
            while let Some(key) = wheel.poll(u64::MAX) {
                out.push(deadlines[key as usize]);
            }
            out
        };
        deadlines.sort_unstable();
        assert_eq!(fired, deadlines);
    }

    #[test]
    fn table_grows_on_demand() {
        let mut wheel = Wheel::default();
        wheel.schedule(100_000, 3);
        wheel.schedule(2, 3);
        assert_eq!(wheel.deadline(100_000), Some(3));
        assert_eq!(wheel.deadline(99_999), None);
        assert_eq!(wheel.deadline(u32::MAX - 1), None);
        assert_eq!(wheel.len(), 2);
        let mut fired = drain(&mut wheel, 3);
        fired.sort_unstable();
        assert_eq!(fired, vec![2, 100_000]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule {
            key: u32,
            delta: u64,
        },
        Cancel {
            key: u32,
        },
        /// Advance by `by` and drain; if `rearm` is set, re-arm each fired key `rearm` ticks after `now`.
        Advance {
            by: u64,
            rearm: Option<u64>,
        },
    }

    fn delta() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => 0..200u64,
            3 => 0..5_000u64,
            2 => 0..1_000_000_000u64,
            // Past the six levels' span: exercises parking at the top level.
            1 => 0..4 * SPAN,
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..64u32, delta()).prop_map(|(key, delta)| Op::Schedule { key, delta }),
            2 => (0..64u32).prop_map(|key| Op::Cancel { key }),
            3 => (delta(), proptest::option::of(1..5_000u64))
                .prop_map(|(by, rearm)| Op::Advance { by, rearm }),
        ]
    }

    fn start() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            // Just below a top-level block boundary, so deadlines straddle it.
            SPAN - 10_000..SPAN,
            0..64 * SPAN,
        ]
    }

    /// Checks everything observable against the reference (key -> deadline).
    fn check(wheel: &Wheel, reference: &BTreeMap<u32, u64>) -> Result<(), TestCaseError> {
        prop_assert_eq!(wheel.len(), reference.len());
        prop_assert_eq!(wheel.is_empty(), reference.is_empty());
        for key in 0..64 {
            prop_assert_eq!(wheel.deadline(key), reference.get(&key).copied(), "key {}", key);
        }
        let earliest = reference.values().min().copied();
        // With at most 64 keys every slot is within the exact-scan limit, so the answer must be exact.
        prop_assert_eq!(wheel.next_expiration(), earliest);
        Ok(())
    }

    proptest! {
        // No regression files: they would land outside this module's directory.
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn matches_reference_model(start in start(), ops in proptest::collection::vec(op(), 1..200)) {
            let mut wheel = Wheel::new();
            let mut reference = BTreeMap::<u32, u64>::new();
            prop_assert_eq!(wheel.poll(start), None);
            prop_assert_eq!(wheel.elapsed(), start);
            for op in ops {
                match op {
                    Op::Schedule { key, delta } => {
                        let deadline = wheel.elapsed() + delta;
                        wheel.schedule(key, deadline);
                        reference.insert(key, deadline);
                    }
                    Op::Cancel { key } => {
                        prop_assert_eq!(wheel.cancel(key), reference.remove(&key).is_some());
                    }
                    Op::Advance { by, rearm } => {
                        let now = wheel.elapsed() + by;
                        let mut last_fired = 0;
                        let mut polls = 0;
                        while let Some(key) = wheel.poll(now) {
                            polls += 1;
                            prop_assert!(polls <= 64, "poll keeps returning keys");
                            let deadline = reference.remove(&key);
                            prop_assert!(deadline.is_some(), "fired unscheduled key {}", key);
                            let deadline = deadline.unwrap();
                            prop_assert!(deadline <= now, "key {} fired early: {} > {}", key, deadline, now);
                            prop_assert!(deadline >= last_fired, "out of order: {} after {}", deadline, last_fired);
                            last_fired = deadline;
                            if let Some(after) = rearm {
                                wheel.schedule(key, now + after);
                                reference.insert(key, now + after);
                            }
                        }
                        prop_assert_eq!(wheel.elapsed(), now);
                        let missed: Vec<_> = reference.iter().filter(|(_, deadline)| **deadline <= now).collect();
                        prop_assert!(missed.is_empty(), "due but not fired: {:?}", missed);
                    }
                }
                check(&wheel, &reference)?;
            }
        }
    }
}
