//! One channel's history stream: publications with offsets under an epoch, bounded by size and age, and
//! the recovery decision (GATEWAY-PROTOCOL.md §6). Pure data: the caller passes the clock and holds the lock.
//!
//! Invariants: offsets in `entries` are consecutive and end at `top`; `top` only grows while the epoch
//! lives; a new stream gets a new epoch, so a position from an earlier stream can never be taken for one of
//! this stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stored publication: its offset, when it was added, and its `Publication` JSON (offset included).
#[derive(Clone, Debug)]
pub struct Entry {
    pub offset: u64,
    pub at: Instant,
    pub publication: Arc<str>,
}

#[derive(Debug)]
pub struct Stream {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Entry>,
    /// Last publish (or creation): the stream's meta (epoch, top) lives `history_meta_ttl` past it.
    touched: Instant,
}

/// The answer to a recovering subscribe.
#[derive(Debug, PartialEq)]
pub struct Recovery {
    pub recovered: bool,
    /// The missed publications, oldest first; empty unless `recovered`.
    pub publications: Vec<Arc<str>>,
}

/// Eight random letters, as Centrifugo's epochs.
pub fn new_epoch() -> Arc<str> {
    (0..8).map(|_| fastrand::alphabetic()).collect::<String>().into()
}

impl Stream {
    pub fn new(epoch: Arc<str>, now: Instant) -> Stream {
        Stream { epoch, top: 0, entries: VecDeque::new(), touched: now }
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    pub fn top(&self) -> u64 {
        self.top
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the next publication; `make` builds its JSON from the offset it gets. Returns that offset.
    pub fn append(&mut self, now: Instant, size: usize, ttl: Duration, make: impl FnOnce(u64) -> Arc<str>) -> u64 {
        self.top += 1;
        let offset = self.top;
        self.entries.push_back(Entry { offset, at: now, publication: make(offset) });
        self.touched = now;
        self.trim(now, size, ttl);
        offset
    }

    /// Drops what is beyond `size` entries or older than `ttl`.
    pub fn trim(&mut self, now: Instant, size: usize, ttl: Duration) {
        while self.entries.len() > size {
            self.entries.pop_front();
        }
        while self.entries.front().is_some_and(|e| now.saturating_duration_since(e.at) >= ttl) {
            self.entries.pop_front();
        }
    }

    /// Whether the stream's meta outlived `meta_ttl` with no entry left (the channel can forget it).
    pub fn expired(&self, now: Instant, meta_ttl: Duration) -> bool {
        self.entries.is_empty() && now.saturating_duration_since(self.touched) >= meta_ttl
    }

    /// Empties the stream; the epoch and top stay (Centrifugo's history_remove keeps the position).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The recovery decision for a client at (`epoch`, `offset`): recovered iff the epochs agree (or the
    /// client has none) and every publication after `offset` up to `top` is still here and within `limit`.
    pub fn recover(&self, epoch: &str, offset: u64, limit: usize) -> Recovery {
        let not = Recovery { recovered: false, publications: Vec::new() };
        if !epoch.is_empty() && epoch != &*self.epoch {
            return not;
        }
        if offset == self.top {
            return Recovery { recovered: true, publications: Vec::new() };
        }
        if offset > self.top {
            return not;
        }
        let missed = self.top - offset;
        if missed > limit as u64 {
            return not;
        }
        let first = match self.entries.front() {
            Some(e) => e.offset,
            None => return not,
        };
        if first > offset + 1 {
            return not;
        }
        let skip = (offset + 1 - first) as usize;
        let publications: Vec<Arc<str>> = self.entries.iter().skip(skip).map(|e| e.publication.clone()).collect();
        debug_assert_eq!(publications.len() as u64, missed);
        Recovery { recovered: true, publications }
    }

    /// A page of history: oldest first from `since` (exclusive) or the start, or newest first before
    /// `since` (exclusive) or from the top when `reverse`; at most `limit`.
    pub fn page(&self, since: Option<u64>, limit: usize, reverse: bool) -> Vec<Arc<str>> {
        let pick = |e: &Entry| e.publication.clone();
        if reverse {
            let before = since.unwrap_or(u64::MAX);
            self.entries.iter().rev().filter(|e| e.offset < before).take(limit).map(pick).collect()
        } else {
            let after = since.unwrap_or(0);
            self.entries.iter().filter(|e| e.offset > after).take(limit).map(pick).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_with(n: u64, size: usize) -> (Stream, Instant) {
        let now = Instant::now();
        let mut s = Stream::new("EPOCHxyz".into(), now);
        for _ in 0..n {
            s.append(now, size, Duration::from_secs(60), |o| format!("p{o}").into());
        }
        (s, now)
    }

    fn names(v: &[Arc<str>]) -> Vec<&str> {
        v.iter().map(|p| &**p).collect()
    }

    #[test]
    fn offsets_grow_and_size_bounds() {
        let (s, _) = stream_with(5, 3);
        assert_eq!(s.top(), 5);
        assert_eq!(s.len(), 3);
        assert_eq!(names(&s.page(None, 10, false)), ["p3", "p4", "p5"]);
    }

    #[test]
    fn ttl_bounds() {
        let (mut s, now) = stream_with(3, 10);
        s.trim(now + Duration::from_secs(61), 10, Duration::from_secs(60));
        assert!(s.is_empty());
        assert_eq!(s.top(), 3, "the position outlives the entries");
        assert!(!s.expired(now + Duration::from_secs(61), Duration::from_secs(120)));
        assert!(s.expired(now + Duration::from_secs(121), Duration::from_secs(120)));
    }

    #[test]
    fn recovery_exact_or_nothing() {
        let (s, _) = stream_with(5, 3); // holds 3, 4, 5
        assert_eq!(
            s.recover("EPOCHxyz", 2, 300),
            Recovery { recovered: true, publications: vec!["p3".into(), "p4".into(), "p5".into()] }
        );
        assert_eq!(names(&s.recover("", 4, 300).publications), ["p5"]);
        assert_eq!(s.recover("EPOCHxyz", 5, 300), Recovery { recovered: true, publications: vec![] });
        assert!(!s.recover("EPOCHxyz", 1, 300).recovered, "offset 2 is gone: a gap");
        assert!(!s.recover("other", 4, 300).recovered, "another epoch");
        assert!(!s.recover("EPOCHxyz", 9, 300).recovered, "ahead of the stream");
        assert!(!s.recover("EPOCHxyz", 2, 2).recovered, "more than the limit");
    }

    #[test]
    fn pages() {
        let (s, _) = stream_with(6, 10);
        assert_eq!(names(&s.page(None, 2, false)), ["p1", "p2"]);
        assert_eq!(names(&s.page(Some(2), 2, false)), ["p3", "p4"]);
        assert_eq!(names(&s.page(None, 2, true)), ["p6", "p5"]);
        assert_eq!(names(&s.page(Some(5), 2, true)), ["p4", "p3"]);
        assert!(s.page(None, 0, false).is_empty());
    }

    #[test]
    fn epochs_are_eight_letters() {
        let e = new_epoch();
        assert_eq!(e.len(), 8);
        assert!(e.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(new_epoch(), new_epoch());
    }
}
