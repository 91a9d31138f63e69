//! Per-shard counters, written by the shard thread and readable from any thread.
//!
//! Every counter is a relaxed atomic owned by exactly one shard: the shard is the only writer, so an increment
//! never contends, and a reader on another thread sees a value that is at most a few operations stale. Totals
//! are sums over shards taken at read time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Close codes that get their own counter; anything else lands in `other`.
pub const TRACKED_CLOSE_CODES: [u16; 13] =
    [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013, 1015];

/// Why a connection ended, as the engine saw it. One counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer started the close handshake.
    PeerClose,
    /// The application (or a drain) started the close handshake and the peer answered.
    LocalClose,
    /// No frame within pong_timeout after a ping.
    PongTimeout,
    /// The upgrade request did not complete within handshake_timeout.
    HandshakeTimeout,
    /// The peer did not answer our Close within close_timeout.
    CloseTimeout,
    /// The peer broke the protocol (1002, 1007, 1009 ...).
    ProtocolError,
    /// TCP ended without a close handshake (EOF, reset, TCP_USER_TIMEOUT).
    Abnormal,
    /// The upgrade was refused (400, 426, 431, 503, application reject) or it was a plain HTTP request.
    HttpRejected,
    /// The per-connection send queue overflowed.
    SlowConsumer,
    /// The engine was shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::PeerClose,
        CloseReason::LocalClose,
        CloseReason::PongTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::CloseTimeout,
        CloseReason::ProtocolError,
        CloseReason::Abnormal,
        CloseReason::HttpRejected,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClose => "peer_close",
            CloseReason::LocalClose => "local_close",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::CloseTimeout => "close_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Abnormal => "abnormal",
            CloseReason::HttpRejected => "http_rejected",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        CloseReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// The counters of one shard.
#[derive(Default, Debug)]
pub struct ShardMetrics {
    /// Connections holding a slot now (handshaking, open or closing).
    pub open: AtomicU64,
    /// Connections that completed the WebSocket upgrade and are not yet closed.
    pub websocket_open: AtomicU64,
    pub accepted: AtomicU64,
    /// Outbound (client role) connections that reached the open state.
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub closed: AtomicU64,
    /// Connections refused with 503 because the engine was at max_connections.
    pub rejected_capacity: AtomicU64,
    pub pings_sent: AtomicU64,
    pub pongs_received: AtomicU64,
    pub pings_received: AtomicU64,
    pub pong_timeouts: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Messages dropped because a send queue was full (policy `drop`).
    pub send_dropped: AtomicU64,
    /// Times the provided-buffer ring ran dry and a multishot receive had to be re-armed.
    pub recv_buffer_exhausted: AtomicU64,
    /// Accepts refused by the kernel because the registered file table was full.
    pub accept_table_full: AtomicU64,
    closed_by_code: [AtomicU64; TRACKED_CLOSE_CODES.len() + 1],
    closed_by_reason: [AtomicU64; CloseReason::ALL.len()],
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

impl ShardMetrics {
    /// `code` 0 means the connection never spoke WebSocket (plain HTTP, refused upgrade, handshake timeout):
    /// it is counted by reason only, so the close-code counters describe WebSocket connections alone.
    pub(crate) fn record_close(&self, code: u16, reason: CloseReason) {
        bump(&self.closed);
        bump(&self.closed_by_reason[reason.index()]);
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
            CloseReason::ALL.iter().zip(self.closed_by_reason.iter()).map(|(r, c)| (*r, c.load(Relaxed))).collect();
        Stats {
            shards: 1,
            open: self.open.load(Relaxed),
            websocket_open: self.websocket_open.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            connect_failed: self.connect_failed.load(Relaxed),
            closed: self.closed.load(Relaxed),
            rejected_capacity: self.rejected_capacity.load(Relaxed),
            pings_sent: self.pings_sent.load(Relaxed),
            pongs_received: self.pongs_received.load(Relaxed),
            pings_received: self.pings_received.load(Relaxed),
            pong_timeouts: self.pong_timeouts.load(Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            send_dropped: self.send_dropped.load(Relaxed),
            recv_buffer_exhausted: self.recv_buffer_exhausted.load(Relaxed),
            accept_table_full: self.accept_table_full.load(Relaxed),
            closed_by_code: by_code,
            closed_by_reason: by_reason,
        }
    }
}

/// Counters as plain numbers: one shard's, or the sum over all shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub shards: usize,
    pub open: u64,
    pub websocket_open: u64,
    pub accepted: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub closed: u64,
    pub rejected_capacity: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub pings_received: u64,
    pub pong_timeouts: u64,
    pub handshake_timeouts: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub send_dropped: u64,
    pub recv_buffer_exhausted: u64,
    pub accept_table_full: u64,
    /// (code as text, count), codes with a zero count left out; "other" for untracked codes.
    pub closed_by_code: Vec<(String, u64)>,
    pub closed_by_reason: Vec<(CloseReason, u64)>,
}

impl Stats {
    /// Adds another shard's counters into these.
    pub fn merge(&mut self, other: &Stats) {
        self.shards += other.shards;
        self.open += other.open;
        self.websocket_open += other.websocket_open;
        self.accepted += other.accepted;
        self.connected += other.connected;
        self.connect_failed += other.connect_failed;
        self.closed += other.closed;
        self.rejected_capacity += other.rejected_capacity;
        self.pings_sent += other.pings_sent;
        self.pongs_received += other.pongs_received;
        self.pings_received += other.pings_received;
        self.pong_timeouts += other.pong_timeouts;
        self.handshake_timeouts += other.handshake_timeouts;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.send_dropped += other.send_dropped;
        self.recv_buffer_exhausted += other.recv_buffer_exhausted;
        self.accept_table_full += other.accept_table_full;
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

    /// Count of closes for this reason.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed_by_reason.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}
