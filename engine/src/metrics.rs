//! Per-shard counters, written by the shard thread and readable from any thread.
//!
//! Every counter is a relaxed atomic owned by exactly one shard: the shard is the only writer, so an increment
//! never contends, and a reader on another thread sees a value that is at most a few operations stale. Totals
//! are sums over shards taken at read time.
//!
//! Each counter is declared once, in the `counters!` list below, with its exposition name, kind and help:
//! the atomic in [`ShardMetrics`], the number in [`Stats`], the snapshot, the merge and the list
//! [`COUNTERS`] that exporters (tetherd's `/metrics`) walk all come from that one line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use crate::proto::CloseCause;

/// Close codes that get their own counter; anything else lands in `other`.
pub const TRACKED_CLOSE_CODES: [u16; 13] =
    [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013, 1015];

/// How an exporter should present a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up.
    Counter,
    /// A level that goes up and down.
    Gauge,
}

/// One entry of [`COUNTERS`]: the exposition name, kind, help text and how to read it from [`Stats`].
#[derive(Clone, Copy)]
pub struct CounterInfo {
    /// Exposition name, without a prefix (e.g. `connections_open` for [`Stats::open`]).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// One line of help text (the same as the [`Stats`] field's doc).
    pub help: &'static str,
    /// Reads this counter's value from a [`Stats`] (one shard's or a merged total).
    pub get: fn(&Stats) -> u64,
}

macro_rules! counters {
    ($( $field:ident => $name:literal, $kind:ident, $help:literal; )*) => {
        /// The counters of one shard.
        #[derive(Default, Debug)]
        pub struct ShardMetrics {
            $( #[doc = $help] pub $field: AtomicU64, )*
            closed_by_code: [AtomicU64; TRACKED_CLOSE_CODES.len() + 1],
            closed_by_reason: [AtomicU64; CloseCause::ALL.len()],
        }

        /// Counters as plain numbers: one shard's, or the sum over all shards.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            /// Shards these numbers cover: 1 for a [`ShardMetrics::snapshot`], the sum after [`Stats::merge`]
            /// (0 for `Stats::default()`).
            pub shards: usize,
            $( #[doc = $help] pub $field: u64, )*
            /// Commands waiting in the inbox when the stats were read (a gauge).
            pub inbox_depth: u64,
            /// Source addresses the per-IP limits track when the stats were read (a gauge of the table all
            /// shards share: reported by shard 0, 0 for the others, so the total is the table's size).
            pub per_ip_addresses: u64,
            /// (code as text, count), codes with a zero count left out; "other" for untracked codes.
            pub closed_by_code: Vec<(String, u64)>,
            /// (cause, count) for every [`CloseCause`], zero counts included, in [`CloseCause::ALL`] order.
            /// Counts every close, including connections that never spoke WebSocket.
            pub closed_by_reason: Vec<(CloseCause, u64)>,
        }

        impl ShardMetrics {
            fn load_counters(&self, s: &mut Stats) {
                $( s.$field = self.$field.load(Relaxed); )*
            }
        }

        impl Stats {
            fn add_counters(&mut self, o: &Stats) {
                $( self.$field += o.$field; )*
            }
        }

        /// Every counter, in declaration order (plus `inbox_depth`), for exporters.
        pub const COUNTERS: &[CounterInfo] = &[
            $( CounterInfo { name: $name, kind: Kind::$kind, help: $help, get: |s| s.$field }, )*
            CounterInfo {
                name: "inbox_depth",
                kind: Kind::Gauge,
                help: "Commands waiting in a shard's inbox",
                get: |s| s.inbox_depth,
            },
            CounterInfo {
                name: "per_ip_addresses",
                kind: Kind::Gauge,
                help: "Source addresses tracked by the per-IP limits (one table for all shards, shown on shard 0)",
                get: |s| s.per_ip_addresses,
            },
        ];
    };
}

counters! {
    open => "connections_open", Gauge, "Connections holding a slot (handshaking, open or closing)";
    websocket_open => "websockets_open", Gauge, "Connections past the WebSocket upgrade and not yet closed";
    accepted => "accepted", Counter, "Connections accepted";
    adopted => "adopted", Counter, "Upgraded sockets adopted from another HTTP stack";
    connected => "connected", Counter, "Outbound (client role) connections that reached the open state";
    connect_failed => "connect_failed", Counter, "Outbound connections that failed before opening";
    closed => "closed", Counter, "Connections closed, for any reason";
    rejected_capacity => "rejected_capacity", Counter, "Connections refused with 503 at max_connections";
    rejected_ip_connections => "rejected_ip_connections", Counter, "Requests refused with 503 because their source address held per_ip_max_connections";
    rejected_ip_rate => "rejected_ip_rate", Counter, "Requests refused with 429 because their source address opened connections faster than per_ip_handshake_rate";
    pings_sent => "pings_sent", Counter, "Ping frames sent";
    pongs_received => "pongs_received", Counter, "Pong frames received";
    pings_received => "pings_received", Counter, "Ping frames received from peers";
    pong_timeouts => "pong_timeouts", Counter, "Connections closed because no frame came within pong_timeout";
    handshake_timeouts => "handshake_timeouts", Counter, "Connections closed because the upgrade did not finish within handshake_timeout";
    tls_handshakes => "tls_handshakes", Counter, "TLS handshakes completed (both roles)";
    tls_failures => "tls_failures", Counter, "Connections whose TLS failed (a handshake refused or broken, a bad record)";
    tls_plain_http => "tls_plain_http", Counter, "Plaintext HTTP requests that came to a TLS listener (answered 400)";
    tls_handshakes_deferred => "tls_handshakes_deferred", Counter, "TLS handshake steps put off to the next loop iteration by tls_handshakes_per_loop";
    messages_in => "messages_in", Counter, "Messages received";
    messages_out => "messages_out", Counter, "Messages queued to connections";
    bytes_in => "bytes_in", Counter, "Bytes received";
    bytes_out => "bytes_out", Counter, "Bytes sent";
    send_dropped => "send_dropped", Counter, "Messages dropped because a send queue was full (policy drop)";
    recv_buffer_exhausted => "recv_buffer_exhausted", Counter, "Times the provided receive buffers ran out and a receive had to be re-armed";
    recv_paused => "recv_paused", Counter, "Receives the handler paused (Ctx::pause_receive)";
    recv_moved_large => "recv_moved_large", Counter, "Connections moved to the large receive buffers (a frame spanned more than one small buffer)";
    accept_table_full => "accept_table_full", Counter, "Accepts refused by the kernel because the registered file table was full";
    inbox_full => "inbox_full", Counter, "Commands and notices refused because a shard's inbox was full";
    publications => "publications", Counter, "Topic publications handled by a shard (each shard counts its own)";
    deliveries => "deliveries", Counter, "Topic publications queued to subscribers";
    topics => "topics", Gauge, "Topics with at least one subscriber";
    subscriptions => "subscriptions", Gauge, "Connection-topic subscriptions";
    send_pool_bytes => "send_pool_bytes", Gauge, "Capacity of the idle output buffers a shard keeps for reuse";
}

/// Sets a gauge. The shard is its only writer.
#[inline]
pub(crate) fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Relaxed);
}

/// Adds one to a counter. The shard is its only writer.
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

#[inline]
pub(crate) fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Relaxed);
}

impl ShardMetrics {
    /// `code` 0 means the connection never spoke WebSocket (plain HTTP, refused upgrade, handshake timeout):
    /// it is counted by cause only, so the close-code counters describe WebSocket connections alone.
    pub(crate) fn record_close(&self, code: u16, cause: CloseCause) {
        bump(&self.closed);
        bump(&self.closed_by_reason[cause.index()]);
        if code == 0 {
            return;
        }
        let i = TRACKED_CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(TRACKED_CLOSE_CODES.len());
        bump(&self.closed_by_code[i]);
    }

    /// A plain-number copy of every counter.
    pub fn snapshot(&self) -> Stats {
        let mut by_code: Vec<(String, u64)> = TRACKED_CLOSE_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(std::iter::once("other".to_string()))
            .zip(self.closed_by_code.iter().map(|c| c.load(Relaxed)))
            .collect();
        by_code.retain(|(_, n)| *n > 0);
        let by_reason =
            CloseCause::ALL.iter().zip(self.closed_by_reason.iter()).map(|(r, c)| (*r, c.load(Relaxed))).collect();
        let mut s = Stats { shards: 1, closed_by_code: by_code, closed_by_reason: by_reason, ..Stats::default() };
        self.load_counters(&mut s);
        s
    }
}

impl Stats {
    /// Adds another shard's counters into these.
    pub fn merge(&mut self, other: &Stats) {
        self.shards += other.shards;
        self.add_counters(other);
        self.inbox_depth += other.inbox_depth;
        self.per_ip_addresses += other.per_ip_addresses;
        for (code, n) in &other.closed_by_code {
            match self.closed_by_code.iter_mut().find(|(c, _)| c == code) {
                Some((_, total)) => *total += n,
                None => self.closed_by_code.push((code.clone(), *n)),
            }
        }
        self.closed_by_code.sort();
        for (reason, n) in &other.closed_by_reason {
            match self.closed_by_reason.iter_mut().find(|(r, _)| r == reason) {
                Some((_, total)) => *total += n,
                None => self.closed_by_reason.push((*reason, *n)),
            }
        }
    }

    /// Count of closes with this code.
    pub fn closed_with(&self, code: u16) -> u64 {
        let code = code.to_string();
        self.closed_by_code.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n)
    }

    /// Count of closes for this cause.
    pub fn closed_for(&self, cause: CloseCause) -> u64 {
        self.closed_by_reason.iter().find(|(r, _)| *r == cause).map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_merge_count_every_counter() {
        let a = ShardMetrics::default();
        let b = ShardMetrics::default();
        for (i, info) in COUNTERS.iter().enumerate() {
            assert!(!info.help.is_empty(), "{} has no help", info.name);
            let _ = i;
        }
        bump(&a.accepted);
        add(&b.accepted, 2);
        bump(&a.pings_sent);
        a.record_close(1006, CloseCause::Abnormal);
        b.record_close(1006, CloseCause::Abnormal);
        b.record_close(0, CloseCause::HttpRejected);
        b.record_close(4001, CloseCause::LocalClose);
        let mut total = Stats::default();
        total.merge(&a.snapshot());
        total.merge(&b.snapshot());
        assert_eq!(total.shards, 2);
        assert_eq!(total.accepted, 3);
        assert_eq!(total.pings_sent, 1);
        assert_eq!(total.closed, 4);
        assert_eq!(total.closed_with(1006), 2);
        assert_eq!(total.closed_with(1000), 0);
        assert_eq!(total.closed_by_code.iter().find(|(c, _)| c == "other").map(|x| x.1), Some(1));
        assert_eq!(total.closed_for(CloseCause::Abnormal), 2);
        assert_eq!(total.closed_for(CloseCause::HttpRejected), 1);
        assert_eq!(total.closed_for(CloseCause::Shutdown), 0);
        let accepted = COUNTERS.iter().find(|c| c.name == "accepted").unwrap();
        assert_eq!((accepted.get)(&total), 3);
    }
}
