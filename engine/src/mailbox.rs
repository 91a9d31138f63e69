//! A bounded queue into one shard that costs no memory while empty: crossbeam's unbounded (linked-block)
//! channel plus a depth counter that refuses past `capacity`. (A crossbeam `bounded` channel allocates and
//! initialises every slot up front: 65,536 commands were 4 MiB per shard, resident before any connection.)
//! Every accepted item wakes the shard; a refusal is counted in the shard's `inbox_full`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::metrics::{bump, ShardMetrics};
use crate::ring::Waker;

pub(crate) struct MailboxTx<T> {
    tx: Sender<T>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    waker: Waker,
    metrics: Arc<ShardMetrics>,
}

pub(crate) struct MailboxRx<T> {
    rx: Receiver<T>,
    depth: Arc<AtomicUsize>,
}

pub(crate) fn mailbox<T>(capacity: usize, waker: Waker, metrics: Arc<ShardMetrics>) -> (MailboxTx<T>, MailboxRx<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let depth = Arc::new(AtomicUsize::new(0));
    (MailboxTx { tx, depth: depth.clone(), capacity: capacity.max(1), waker, metrics }, MailboxRx { rx, depth })
}

impl<T> MailboxTx<T> {
    /// Queue `item` and wake the shard; a full (or closed) mailbox gives it back.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        if self.depth.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            bump(&self.metrics.inbox_full);
            return Err(item);
        }
        match self.tx.send(item) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                Err(e.into_inner())
            }
        }
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }
}

impl<T> MailboxRx<T> {
    pub fn try_recv(&self) -> Option<T> {
        let item = self.rx.try_recv().ok()?;
        self.depth.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }

    pub fn len(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_capacity_and_counts_it() {
        let metrics = Arc::new(ShardMetrics::default());
        let (tx, rx) = mailbox::<u32>(2, Waker::new().unwrap(), metrics.clone());
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!((tx.len(), metrics.snapshot().inbox_full), (2, 1));
        assert_eq!(rx.try_recv(), Some(1));
        assert!(tx.try_send(4).is_ok());
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(4));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.len(), 0);
    }
}
