//! One connection's slot: its phase, flags, protocol halves, queued output and how it is ending.
//!
//! A connection's slot index is its direct-descriptor index in the ring's file table: the kernel allocates it at
//! accept (or socket creation), so the slab needs no allocator of its own. A slot moves through
//! `Free -> (Connecting ->) Handshake -> Open -> Closing -> Free`; it returns to `Free` only once every
//! operation the kernel had in flight for it has completed (see `lifecycle.rs`).

use crate::handler::ConnectRequest;
use crate::per_ip::Verdict;
use crate::proto::{CloseInfo, Reader, Writer};
use crate::ring::SendBuf;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    Free,
    /// Client role: socket created, bind/connect in flight.
    Connecting,
    /// Waiting for (server) the upgrade request or (client) the 101 response.
    Handshake,
    Open,
    /// Final bytes flushing, then the slot's operations ended, then close.
    Closing,
}

/// Per-slot flags, packed to keep the slot small.
pub(crate) mod flag {
    pub const RECV_ARMED: u32 = 1 << 0;
    pub const SEND_INFLIGHT: u32 = 1 << 1;
    pub const PEERNAME_PENDING: u32 = 1 << 2;
    /// Closing: the slot's operations were told to end (receive and abandoned send cancelled).
    pub const OPS_ENDED: u32 = 1 << 3;
    /// The handler asked to hear when the send queue has room again (`Ctx::notify_writable`).
    pub const WANT_WRITABLE: u32 = 1 << 4;
    pub const CLOSE_SUBMITTED: u32 = 1 << 5;
    /// Past max_connections: answer the upgrade with 503.
    pub const OVER_CAPACITY: u32 = 1 << 6;
    /// Closing: flush `out` before ending the slot's operations.
    pub const FLUSH_FIRST: u32 = 1 << 7;
    pub const WAS_OPEN: u32 = 1 << 8;
    pub const DIRTY: u32 = 1 << 9;
    pub const CLIENT: u32 = 1 << 10;
    /// An op whose completion we must wait for before close (bind/connect/setsockopt chain).
    pub const ADDR_OP_PENDING: u32 = 1 << 11;
    /// The ring's address buffer of the slot holds the peer (SO_PEERNAME came back, or connect was issued).
    pub const PEER_KNOWN: u32 = 1 << 12;
    /// A complete request arrived before the peer address: handled when SO_PEERNAME completes.
    pub const REQUEST_WAITING: u32 = 1 << 13;
    /// A plain HTTP request whose answer the handler deferred (`Ctx::defer_http`): input is ignored until
    /// the answer comes (`EngineHandle::answer_http`) or the handshake deadline answers 504.
    pub const HTTP_DEFERRED: u32 = 1 << 14;
    /// The connection speaks TLS (its state in `Core::tls`, made at the first bytes for an accepted one).
    pub const TLS: u32 = 1 << 15;
    /// The connection receives into its ring's large buffers (shard/rxbufs.rs): its receive is re-armed
    /// there, as `Op::RecvLarge`. Until the small receive it had ends, that one may still be armed.
    pub const RECV_LARGE: u32 = 1 << 16;
    /// The handler paused the receive (`pause.rs`) until the slot's deadline in `Core::paused`: it is not
    /// armed again before.
    pub const RECV_PAUSED: u32 = 1 << 17;
    /// The plain HTTP request being answered lets the connection stay open (`keepalive.rs`).
    pub const KEEP_ALIVE: u32 = 1 << 18;
    /// Answered, kept open: waiting (until `Config::http_keepalive`) for the next request's first bytes.
    pub const HTTP_IDLE: u32 = 1 << 19;
    /// The plain HTTP request being answered is a HEAD: its answer carries the head only.
    pub const HEAD_REQUEST: u32 = 1 << 20;
    /// `100 Continue` went out for the request being read (`RequestParse::Continue`): not sent twice.
    pub const CONTINUE_SENT: u32 = 1 << 21;
    /// Operations whose completions must all arrive before the descriptor is closed.
    pub const BUSY: u32 = RECV_ARMED | SEND_INFLIGHT | PEERNAME_PENDING | ADDR_OP_PENDING;
}

/// The client half's state while connecting and handshaking.
pub(crate) struct ClientState {
    pub request: Box<ConnectRequest>,
    pub key: String,
}

pub(crate) struct Slot {
    pub generation: u32,
    pub phase: Phase,
    pub flags: u32,
    /// Index into the shard's profiles.
    pub profile: u8,
    /// The per-IP limits' verdict on an accepted connection (None: not tracked). `Admitted` is released when
    /// the slot is freed; a refusal is answered once the request is complete.
    pub per_ip: Option<Verdict>,
    /// Bytes of the send in flight (for the send-queue bound).
    pub inflight_len: u32,
    /// When the slot was taken, in nanoseconds since the shard's epoch (8 bytes instead of an Instant's 16).
    pub created_at: u64,
    /// The application's deadline (a wheel tick), 0 = none.
    pub app_tick: u64,
    /// Receiving half of the protocol (moved out while an event borrows it). Until the connection opens, its
    /// buffer holds the handshake bytes (`Reader::handshake_buf`).
    pub reader: Reader,
    /// Sending half and state; `Some` from Open on.
    pub writer: Option<Writer>,
    /// Bytes waiting for the next send.
    pub out: SendBuf,
    /// How the connection ends: fixed by the first decision to close it.
    pub ending: Option<Box<CloseInfo>>,
    pub client: Option<Box<ClientState>>,
}

impl Slot {
    pub fn free(created_at: u64) -> Slot {
        Slot {
            generation: 0,
            phase: Phase::Free,
            flags: 0,
            profile: 0,
            per_ip: None,
            inflight_len: 0,
            created_at,
            app_tick: 0,
            reader: Reader::default(),
            writer: None,
            out: SendBuf::default(),
            ending: None,
            client: None,
        }
    }
    pub fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }
    pub fn set(&mut self, f: u32) {
        self.flags |= f;
    }
    pub fn clear(&mut self, f: u32) {
        self.flags &= !f;
    }
    /// Bytes queued for the peer: waiting and in flight.
    pub fn queued(&self) -> usize {
        self.out.len() + self.inflight_len as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_stays_small() {
        let size = std::mem::size_of::<Slot>();
        println!("size_of::<Slot>() = {size}");
        assert!(size <= 232, "{size}");
    }
}
