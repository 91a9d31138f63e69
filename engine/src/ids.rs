//! [`ConnId`]: names one connection for its whole life.

use std::fmt;

/// Identifies one connection for its whole life: (shard, slot, generation). A slot is reused by later
/// connections with a new generation, so a stale id never reaches a newer connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub(crate) fn new(shard: u16, slot: u32, generation: u32) -> ConnId {
        debug_assert!(slot < (1 << 24));
        ConnId(((shard as u64) << 48) | (((slot as u64) & 0xff_ffff) << 24) | (generation as u64 & 0xff_ffff))
    }
    /// Index of the shard that owns the connection (`0..shards`); the connection never moves to another.
    pub fn shard(self) -> usize {
        (self.0 >> 48) as usize
    }
    pub(crate) fn slot(self) -> u32 {
        ((self.0 >> 24) & 0xff_ffff) as u32
    }
    pub(crate) fn generation(self) -> u32 {
        (self.0 & 0xff_ffff) as u32
    }
    /// The id as one number (stable for logs and maps). `Display` writes it as `shard.slot.generation`.
    pub fn as_u64(self) -> u64 {
        self.0
    }
    /// The id [`as_u64`](ConnId::as_u64) gave (an id that names no live connection is simply refused by
    /// every call that takes it).
    ///
    /// ```
    /// use tether::ConnId;
    /// # let id = ConnId::from_u64((2 << 48) | (5 << 24) | 7);
    /// // `id` came from a callback; kept as a number elsewhere (a map, another service), it comes back whole.
    /// let n = id.as_u64();
    /// assert_eq!(ConnId::from_u64(n), id);
    /// assert_eq!(id.shard(), 2);
    /// assert_eq!(id.to_string(), "2.5.7"); // shard.slot.generation
    /// ```
    pub fn from_u64(n: u64) -> ConnId {
        ConnId(n)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.shard(), self.slot(), self.generation())
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}
