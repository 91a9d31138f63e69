//! How a connection ends: who started it, the close code and reason, and the typed cause.

/// Who ended the connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Initiator {
    /// This side (the application, the engine's keepalive or limits, a drain).
    Local,
    /// The peer started the close handshake.
    Peer,
    /// TCP ended without a close handshake.
    Abnormal,
}

impl Initiator {
    /// `local`, `peer` or `abnormal`, for logs and labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Initiator::Local => "local",
            Initiator::Peer => "peer",
            Initiator::Abnormal => "abnormal",
        }
    }
}

/// Why a connection ended, as the engine saw it: callers match on this, never on reason strings. Each has a
/// counter in the metrics (`closed_by_reason`, labelled with [`CloseCause::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCause {
    /// The peer started the close handshake.
    PeerClose,
    /// The application started the close handshake (`Ctx::close`, `EngineHandle::close`).
    LocalClose,
    /// No frame within pong_timeout after a ping.
    PongTimeout,
    /// The upgrade request (or, client role, the 101 answer) did not complete within handshake_timeout.
    HandshakeTimeout,
    /// The peer did not answer our Close within close_timeout.
    CloseTimeout,
    /// The peer broke the protocol (1002, 1007, 1009 ...).
    ProtocolError,
    /// TCP ended without a close handshake (EOF, reset, TCP_USER_TIMEOUT), or an outbound connect failed.
    Abnormal,
    /// The upgrade was refused (400, 426, 431, 503, application reject) or it was a plain HTTP request.
    HttpRejected,
    /// The per-connection send queue overflowed (policy `close`).
    SlowConsumer,
    /// The engine was shutting down.
    Shutdown,
    /// TLS failed: a handshake that did not complete (a bad ClientHello, an untrusted certificate, plaintext
    /// on the TLS port) or a record that did not decrypt.
    TlsError,
}

impl CloseCause {
    /// Every cause, in declaration order: `ALL[c.index()] == c`.
    pub const ALL: [CloseCause; 11] = [
        CloseCause::PeerClose,
        CloseCause::LocalClose,
        CloseCause::PongTimeout,
        CloseCause::HandshakeTimeout,
        CloseCause::CloseTimeout,
        CloseCause::ProtocolError,
        CloseCause::Abnormal,
        CloseCause::HttpRejected,
        CloseCause::SlowConsumer,
        CloseCause::Shutdown,
        CloseCause::TlsError,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::PeerClose => "peer_close",
            CloseCause::LocalClose => "local_close",
            CloseCause::PongTimeout => "pong_timeout",
            CloseCause::HandshakeTimeout => "handshake_timeout",
            CloseCause::CloseTimeout => "close_timeout",
            CloseCause::ProtocolError => "protocol_error",
            CloseCause::Abnormal => "abnormal",
            CloseCause::HttpRejected => "http_rejected",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::Shutdown => "shutdown",
            CloseCause::TlsError => "tls_error",
        }
    }

    /// Position in [`CloseCause::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a connection ended. `code` 0 means it never spoke WebSocket (a plain HTTP request, a refused or
/// timed-out upgrade, a failed connect).
#[derive(Clone, Debug, PartialEq)]
pub struct CloseInfo {
    /// The close code: the peer's when it started the close (1005 when its Close had no code), ours when we
    /// did (including 1011 for a pong timeout and the code a protocol error failed it with), 1006 when TCP
    /// ended without a close handshake, 0 when it never spoke WebSocket.
    pub code: u16,
    /// The reason that came with `code` (the peer's text, or ours); may be empty.
    pub reason: String,
    /// Who ended the connection.
    pub initiator: Initiator,
    /// Why, as a type to match on.
    pub cause: CloseCause,
}

impl CloseInfo {
    /// Builds one from its parts.
    pub fn new(code: u16, reason: impl Into<String>, initiator: Initiator, cause: CloseCause) -> CloseInfo {
        CloseInfo { code, reason: reason.into(), initiator, cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all() {
        for (i, c) in CloseCause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }
}
