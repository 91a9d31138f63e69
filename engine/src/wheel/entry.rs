//! One entry per key, and the intrusive doubly-linked lists that thread entries into slots.
//!
//! Entries live in one `Vec<Entry>` indexed by key; lists link them by `u32` index instead of by pointer so that
//! moving an entry between slots is a handful of index writes: no allocation, no `unsafe`, and the table can be
//! grown (reallocated) without invalidating anything.

use super::level::{LEVELS, LEVEL_SLOTS};

/// "No entry" in a `prev` / `next` link or a list head. Keys are therefore `< u32::MAX`.
pub(super) const NONE: u32 = u32::MAX;

/// Where an entry is linked: a (level, slot) pair packed as `level * 64 + slot`, the pending list, or nowhere.
///
/// Kept to 16 bits so that `Entry` stays 24 bytes: at a million keys the table is the wheel's whole footprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Location(u16);

impl Location {
    /// Not in any list: the key has no deadline.
    pub(super) const UNSCHEDULED: Location = Location(u16::MAX);
    /// In the pending list: the deadline has been reached and `poll` will hand the key out.
    pub(super) const PENDING: Location = Location(u16::MAX - 1);

    pub(super) fn slot(level: usize, slot: usize) -> Location {
        debug_assert!(level < LEVELS && slot < LEVEL_SLOTS);
        Location((level * LEVEL_SLOTS + slot) as u16)
    }

    /// The (level, slot) this entry is linked into, or `None` for pending and unscheduled entries.
    pub(super) fn level_slot(self) -> Option<(usize, usize)> {
        let packed = usize::from(self.0);
        (packed < LEVELS * LEVEL_SLOTS).then_some((packed / LEVEL_SLOTS, packed % LEVEL_SLOTS))
    }
}

/// A key's single timer. `prev` / `next` are only meaningful while `location` is not `UNSCHEDULED`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    /// The tick at which the key expires; kept exact even while the entry sits in a coarse slot, so that
    /// cascading can re-place it precisely and `deadline()` needs no arithmetic.
    pub(super) deadline: u64,
    pub(super) prev: u32,
    pub(super) next: u32,
    pub(super) location: Location,
}

impl Entry {
    pub(super) const VACANT: Entry = Entry { deadline: 0, prev: NONE, next: NONE, location: Location::UNSCHEDULED };

    pub(super) fn is_scheduled(&self) -> bool {
        self.location != Location::UNSCHEDULED
    }
}

/// Links `key` at the front of the list starting at `head`. Front insertion is enough: order within a slot
/// does not matter, because a slot is always emptied as a whole.
pub(super) fn push_front(entries: &mut [Entry], head: &mut u32, key: u32) {
    let old_head = *head;
    let entry = &mut entries[key as usize];
    entry.prev = NONE;
    entry.next = old_head;
    if old_head != NONE {
        entries[old_head as usize].prev = key;
    }
    *head = key;
}

/// Unlinks `key` from the list starting at `head`; `key` must be in that list.
pub(super) fn unlink(entries: &mut [Entry], head: &mut u32, key: u32) {
    let Entry { prev, next, .. } = entries[key as usize];
    if prev == NONE {
        debug_assert_eq!(*head, key, "an entry without a predecessor must be the list head");
        *head = next;
    } else {
        entries[prev as usize].next = next;
    }
    if next != NONE {
        entries[next as usize].prev = prev;
    }
    let entry = &mut entries[key as usize];
    entry.prev = NONE;
    entry.next = NONE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_small() {
        assert!(std::mem::size_of::<Entry>() <= 24);
    }

    #[test]
    fn location_round_trips() {
        for level in 0..LEVELS {
            for slot in 0..LEVEL_SLOTS {
                assert_eq!(Location::slot(level, slot).level_slot(), Some((level, slot)));
            }
        }
        assert_eq!(Location::PENDING.level_slot(), None);
        assert_eq!(Location::UNSCHEDULED.level_slot(), None);
    }

    #[test]
    fn list_links_and_unlinks() {
        let mut entries = vec![Entry::VACANT; 4];
        let mut head = NONE;
        for key in 0..4 {
            push_front(&mut entries, &mut head, key);
        }
        // List is 3, 2, 1, 0: remove middle, head and tail.
        unlink(&mut entries, &mut head, 2);
        unlink(&mut entries, &mut head, 3);
        unlink(&mut entries, &mut head, 0);
        assert_eq!(head, 1);
        assert_eq!(entries[1].prev, NONE);
        assert_eq!(entries[1].next, NONE);
        unlink(&mut entries, &mut head, 1);
        assert_eq!(head, NONE);
    }
}
