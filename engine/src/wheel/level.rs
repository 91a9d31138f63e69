//! One level of the wheel: 64 slot list heads and a bitmap of which are occupied.
//!
//! Level `n` has slots `64^n` ticks wide, so it spans `64^(n+1)` ticks. An entry sits at the level where its
//! deadline first differs from `elapsed` (the highest differing 6-bit digit), which gives the invariant the
//! wheel relies on:
//!
//! * every entry at level `n` has a deadline in the same `64^(n+1)`-aligned block as `elapsed`, in a slot
//!   strictly after `elapsed`'s own slot; so every entry at a lower level expires before any entry at a
//!   higher level, and the earliest entry is in the first occupied slot of the lowest non-empty level.
//!
//! The top level is the one exception: deadlines beyond its block are parked in it too (see
//! `Wheel::place`), in a slot *before* `elapsed`'s, which stands for that slot in the *next* block. Those
//! slots start no later than the deadlines in them, so the entries are re-placed (cascaded) in time and never
//! fire early.

use super::entry::{push_front, unlink, Entry, NONE};

/// Bits of the deadline each level resolves.
pub(super) const LEVEL_BITS: u32 = 6;
/// Slots per level: one per bit of the `u64` occupancy bitmap.
pub(super) const LEVEL_SLOTS: usize = 1 << LEVEL_BITS;
/// Six levels span `64^6 = 2^36` ticks (about 218 years at 100 ms ticks); anything further is cascaded.
pub(super) const LEVELS: usize = 6;

pub(super) struct Level {
    /// `LEVEL_BITS * level`: `deadline >> shift` is the deadline's slot counter at this level.
    shift: u32,
    /// Head of each slot's list, `NONE` when empty.
    heads: [u32; LEVEL_SLOTS],
    /// Bit `s` is set exactly when `heads[s] != NONE`; lets `next_occupied` find a slot in O(1).
    occupied: u64,
}

impl Level {
    pub(super) fn new(level: usize) -> Level {
        Level { shift: LEVEL_BITS * level as u32, heads: [NONE; LEVEL_SLOTS], occupied: 0 }
    }

    /// The slot a tick falls into at this level.
    pub(super) fn slot_for(&self, tick: u64) -> usize {
        ((tick >> self.shift) as usize) & (LEVEL_SLOTS - 1)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.occupied == 0
    }

    /// The occupied slots in the order `elapsed` will reach them, each with the tick at which it starts.
    ///
    /// Occupied slots after `elapsed`'s are in the current block; occupied slots before it (only ever at the
    /// top level) are in the next block, hence later. `elapsed`'s own slot is never occupied (module invariant).
    pub(super) fn occupied_slots(&self, elapsed: u64) -> impl Iterator<Item = (usize, u64)> {
        let elapsed_slot = self.slot_for(elapsed);
        debug_assert_eq!(self.occupied & (1 << elapsed_slot), 0, "elapsed's own slot is occupied");
        let shift = self.shift;
        let block_span = 1u64 << (shift + LEVEL_BITS);
        let block_start = elapsed & !(block_span - 1);
        let later_in_block = self.occupied & (u64::MAX << elapsed_slot);
        let in_next_block = self.occupied & !(u64::MAX << elapsed_slot);
        let starts = move |block_start: u64| move |slot: usize| (slot, block_start + ((slot as u64) << shift));
        // Only computed when there are slots in the next block, which only happens when some deadline lies
        // beyond this block, so it cannot overflow.
        let next_block_start = if in_next_block != 0 { block_start + block_span } else { 0 };
        set_bits(later_in_block).map(starts(block_start)).chain(set_bits(in_next_block).map(starts(next_block_start)))
    }

    /// The first occupied slot `elapsed` will reach, and the tick at which it starts.
    pub(super) fn next_occupied(&self, elapsed: u64) -> Option<(usize, u64)> {
        if self.occupied == 0 {
            return None;
        }
        self.occupied_slots(elapsed).next()
    }

    pub(super) fn head(&self, slot: usize) -> u32 {
        self.heads[slot]
    }

    pub(super) fn push(&mut self, entries: &mut [Entry], slot: usize, key: u32) {
        push_front(entries, &mut self.heads[slot], key);
        self.occupied |= 1 << slot;
    }

    pub(super) fn remove(&mut self, entries: &mut [Entry], slot: usize, key: u32) {
        unlink(entries, &mut self.heads[slot], key);
        if self.heads[slot] == NONE {
            self.occupied &= !(1 << slot);
        }
    }

    /// Empties `slot` and returns its former head; the entries keep their links to each other, so the caller
    /// can walk the detached list (reading `next` before re-linking each entry elsewhere).
    pub(super) fn take(&mut self, slot: usize) -> u32 {
        self.occupied &= !(1 << slot);
        std::mem::replace(&mut self.heads[slot], NONE)
    }
}

/// Indexes of the set bits of `bits`, lowest first.
fn set_bits(mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let index = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            index
        })
    })
}
