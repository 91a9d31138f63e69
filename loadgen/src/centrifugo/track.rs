//! Where each subscription stands in its channel's stream, across reconnects, and the gaps and duplicates that
//! shows. Pure: offsets in, verdicts and counts out.
//!
//! The rule checked: from the first subscribe's offset on, every offset of the channel is seen exactly once
//! per subscription, live or recovered. Publications of a channel arrive in offset order (the server's
//! promise), so a subscription only needs the last offset it saw: one past it is the next, a jump is a gap
//! (the missing offsets are counted), anything at or below it a duplicate. A failed recovery (the server says
//! `recovered: false`) is counted apart, with the offsets it lost, and restarts the count from the server's
//! position.

use hashbrown::HashMap;

/// The epochs a shard has seen, interned: a subscription keeps a `u32`, not a string.
#[derive(Default)]
pub struct Epochs {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Epochs {
    pub fn intern(&mut self, epoch: &str) -> u32 {
        if let Some(&id) = self.ids.get(epoch) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(epoch.into());
        self.ids.insert(epoch.into(), id);
        id
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Not subscribed (never, or the connection closed).
    #[default]
    Idle,
    /// The subscribe command is out, no answer yet.
    Subscribing,
    Subscribed,
}

/// One (connection, channel) subscription. 24 bytes; kept for the logical connection, so the position
/// survives its reconnects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubState {
    pub phase: Phase,
    /// `offset` and `epoch` are known (the channel has a recoverable stream).
    pub positioned: bool,
    /// The last offset seen.
    pub offset: u64,
    /// Interned in [`Epochs`].
    pub epoch: u32,
}

/// Counts over many subscriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Offsets never seen (each missing offset counts once).
    pub gaps: u64,
    /// Publications whose offset was seen before.
    pub duplicates: u64,
    /// Recovering subscribes the server answered with `recovered: true`.
    pub recovered: u64,
    /// Recovering subscribes answered with `recovered: false`.
    pub not_recovered: u64,
    /// Offsets lost to those failed recoveries (same epoch only).
    pub unrecovered_offsets: u64,
    /// A subscribe answered with another epoch than the one we held.
    pub epoch_changes: u64,
    /// Publications of a subscription with no position (no history on the channel): not checked.
    pub untracked: u64,
    /// Publications of a channel this connection was not subscribed to (or before the subscribe reply).
    pub unexpected: u64,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.unrecovered_offsets += o.unrecovered_offsets;
        self.epoch_changes += o.epoch_changes;
        self.untracked += o.untracked;
        self.unexpected += o.unexpected;
    }
}

/// What one publication was, for the subscription that got it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A new offset (or an untracked subscription): a delivery.
    New,
    /// Seen before: still a delivery, counted as a duplicate.
    Duplicate,
    /// Not subscribed: not a delivery.
    Unexpected,
}

impl SubState {
    /// What the subscribe command asks for: `Some((offset, epoch))` = recover from there.
    pub fn recover_from(&self) -> Option<(u64, u32)> {
        self.positioned.then_some((self.offset, self.epoch))
    }

    pub fn begin(&mut self) {
        self.phase = Phase::Subscribing;
    }

    /// A successful subscribe reply. `epoch` is the reply's epoch interned (`None` when it had none). The
    /// reply's publications (when recovered) go through [`SubState::publication`] afterwards.
    pub fn subscribed(&mut self, recoverable: bool, epoch: Option<u32>, offset: u64, recovered: bool, t: &mut Tally) {
        let asked = self.phase == Phase::Subscribing && self.positioned;
        self.phase = Phase::Subscribed;
        let epoch = epoch.filter(|_| recoverable);
        if !asked {
            match epoch {
                Some(e) => (self.positioned, self.offset, self.epoch) = (true, offset, e),
                None => self.positioned = false,
            }
            return;
        }
        if recovered {
            t.recovered += 1;
            if epoch.is_some_and(|e| e != self.epoch) {
                t.epoch_changes += 1;
            }
            // Our own position stands: the recovered publications advance it.
            return;
        }
        t.not_recovered += 1;
        match epoch {
            Some(e) if e == self.epoch => {
                t.unrecovered_offsets += offset.saturating_sub(self.offset);
                self.offset = offset;
            }
            Some(e) => {
                t.epoch_changes += 1;
                (self.offset, self.epoch) = (offset, e);
            }
            None => self.positioned = false,
        }
    }

    /// The subscribe failed (an error reply) or the server ended it (an unsubscribe push).
    pub fn unsubscribed(&mut self) -> bool {
        std::mem::replace(&mut self.phase, Phase::Idle) == Phase::Subscribed
    }

    /// A publication at `offset` arrived for this subscription.
    pub fn publication(&mut self, offset: u64, t: &mut Tally) -> Seen {
        if self.phase != Phase::Subscribed {
            t.unexpected += 1;
            return Seen::Unexpected;
        }
        if !self.positioned {
            t.untracked += 1;
            return Seen::New;
        }
        if offset <= self.offset {
            t.duplicates += 1;
            return Seen::Duplicate;
        }
        t.gaps += offset - self.offset - 1;
        self.offset = offset;
        Seen::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut SubState, offsets: impl IntoIterator<Item = u64>, t: &mut Tally) -> Vec<Seen> {
        offsets.into_iter().map(|o| s.publication(o, t)).collect()
    }

    #[test]
    fn live_then_recovered_then_live_is_clean() {
        let mut epochs = Epochs::default();
        let e = epochs.intern("abcd");
        let mut t = Tally::default();
        let mut s = SubState::default();
        assert_eq!(s.recover_from(), None);
        s.begin();
        s.subscribed(true, Some(e), 5, false, &mut t);
        assert_eq!(feed(&mut s, [6, 7, 8], &mut t), vec![Seen::New; 3]);
        // The connection closes; its position stays.
        assert!(s.unsubscribed());
        assert_eq!(s.recover_from(), Some((8, e)));
        assert_eq!(epochs.name(e), "abcd");
        s.begin();
        s.subscribed(true, Some(epochs.intern("abcd")), 8, true, &mut t);
        feed(&mut s, [9, 10], &mut t); // the reply's publications
        feed(&mut s, [11, 12], &mut t); // live again
        assert_eq!(t, Tally { recovered: 1, ..Tally::default() });
        assert_eq!(s.offset, 12);
    }

    #[test]
    fn gaps_and_duplicates_across_a_recovery() {
        let mut t = Tally::default();
        let mut s = SubState::default();
        s.begin();
        s.subscribed(true, Some(0), 0, false, &mut t);
        feed(&mut s, [1, 2, 4], &mut t); // 3 missing
        assert_eq!(t.gaps, 1);
        s.unsubscribed();
        s.begin();
        // Recovery replays 4 (seen live already), then 5 and 7 (6 missing), then live 7 again and 8.
        s.subscribed(true, Some(0), 4, true, &mut t);
        assert_eq!(feed(&mut s, [4, 5, 7], &mut t), vec![Seen::Duplicate, Seen::New, Seen::New]);
        assert_eq!(feed(&mut s, [7, 8], &mut t), vec![Seen::Duplicate, Seen::New]);
        assert_eq!(t, Tally { gaps: 2, duplicates: 2, recovered: 1, ..Tally::default() });
    }

    #[test]
    fn failed_recovery_is_counted_apart_and_restarts_the_count() {
        let mut t = Tally::default();
        let mut s = SubState::default();
        s.begin();
        s.subscribed(true, Some(0), 10, false, &mut t);
        feed(&mut s, [11], &mut t);
        s.unsubscribed();
        s.begin();
        // History kept too little: the server moved on to 20 without replaying 12..=20.
        s.subscribed(true, Some(0), 20, false, &mut t);
        feed(&mut s, [21, 22], &mut t);
        assert_eq!(t, Tally { not_recovered: 1, unrecovered_offsets: 9, ..Tally::default() });
        // A new epoch (server restart): offsets start again.
        s.unsubscribed();
        s.begin();
        s.subscribed(true, Some(1), 3, false, &mut t);
        feed(&mut s, [4], &mut t);
        assert_eq!(t.not_recovered, 2);
        assert_eq!(t.epoch_changes, 1);
        assert_eq!((t.gaps, t.duplicates), (0, 0));
        assert_eq!(s.recover_from(), Some((4, 1)));
    }

    #[test]
    fn unpositioned_and_unexpected() {
        let mut t = Tally::default();
        let mut s = SubState::default();
        // Before the reply: not subscribed yet.
        s.begin();
        assert_eq!(s.publication(1, &mut t), Seen::Unexpected);
        // No history: publications are deliveries but not checked.
        s.subscribed(false, None, 0, false, &mut t);
        assert_eq!(feed(&mut s, [0, 0], &mut t), vec![Seen::New; 2]);
        assert_eq!(t, Tally { untracked: 2, unexpected: 1, ..Tally::default() });
        assert_eq!(s.recover_from(), None);
        // An error reply leaves it idle.
        assert!(s.unsubscribed());
        assert!(!s.unsubscribed());
    }
}
