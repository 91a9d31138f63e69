//! The shard's pool of idle output buffers: a busy connection takes one instead of allocating per send, and
//! hands it back when its queue empties, so an idle connection holds none.
//!
//! Bounded by count and by bytes. A pooled buffer keeps the capacity its last user grew it to (up to
//! [`BUF_MAX`]), so a pool bounded by count alone ratchets: each backlog that grows a buffer leaves that
//! capacity behind, and over hours under churn the pool drifts towards `count x BUF_MAX` (64 MiB a shard) of
//! memory nobody uses. The byte budget caps what the pool keeps; a buffer past it is freed.

/// Buffers kept at most.
const MAX_BUFS: usize = 1024;
/// Larger buffers are freed, not kept.
pub(super) const BUF_MAX: usize = 64 << 10;
/// Capacity kept in all, per shard: 64 buffers of the largest size, or a thousand of a small message's.
const MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
pub(super) struct Pool {
    bufs: Vec<Vec<u8>>,
    /// Sum of the pooled buffers' capacities.
    bytes: usize,
}

impl Pool {
    /// A pooled (empty) buffer, if there is one.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let buf = self.bufs.pop()?;
        self.bytes -= buf.capacity();
        Some(buf)
    }

    /// Keeps `buf` (emptied) for the next user if it is within the bounds; frees it otherwise.
    pub fn give_back(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > 0 && cap <= BUF_MAX && self.bufs.len() < MAX_BUFS && self.bytes + cap <= MAX_BYTES {
            buf.clear();
            self.bytes += cap;
            self.bufs.push(buf);
        }
    }

    /// Capacity held by the pooled buffers (the `send_pool_bytes` gauge).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_buffers_within_the_byte_budget_and_frees_the_rest() {
        let mut pool = Pool::default();
        // Grown buffers of the largest kept size: the budget holds MAX_BYTES / BUF_MAX of them, not MAX_BUFS.
        for _ in 0..MAX_BUFS {
            pool.give_back(Vec::with_capacity(BUF_MAX));
        }
        assert_eq!(pool.bufs.len(), MAX_BYTES / BUF_MAX);
        assert!(pool.bytes() <= MAX_BYTES);
        assert_eq!(pool.bytes(), pool.bufs.iter().map(Vec::capacity).sum::<usize>());
        // Taking gives the capacity back to the budget.
        let b = pool.take().expect("a pooled buffer");
        assert_eq!(b.capacity(), BUF_MAX);
        assert!(b.is_empty());
        assert_eq!(pool.bytes(), MAX_BYTES - BUF_MAX);
    }

    #[test]
    fn frees_oversized_and_empty_buffers_and_clears_what_it_keeps() {
        let mut pool = Pool::default();
        pool.give_back(Vec::with_capacity(BUF_MAX + 1));
        pool.give_back(Vec::new());
        assert_eq!((pool.bufs.len(), pool.bytes()), (0, 0));
        pool.give_back(vec![7u8; 100]);
        let b = pool.take().expect("a pooled buffer");
        assert!(b.is_empty() && b.capacity() >= 100);
        assert_eq!(pool.bytes(), 0);
        assert!(pool.take().is_none());
    }

    #[test]
    fn small_buffers_are_bounded_by_count() {
        let mut pool = Pool::default();
        for _ in 0..MAX_BUFS + 10 {
            pool.give_back(Vec::with_capacity(512));
        }
        assert_eq!(pool.bufs.len(), MAX_BUFS);
    }
}
