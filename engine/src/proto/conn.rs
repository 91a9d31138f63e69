//! The per-connection WebSocket state machine (RFC 6455 sections 5 and 7), after the handshake.
//!
//! No I/O and no clock: the caller hands in received bytes and `now`, and takes the bytes this
//! module appends to `out` to the socket. Modelled on quinn-proto: `poll_event` drains input into
//! events, `poll_timeout` / `handle_timeout` drive keepalive and the close deadline.
//!
//! A connection is two halves. The [`Reader`] holds what receiving needs (a frame split across
//! inputs, a fragmented message being reassembled); the [`Writer`] holds the connection's state
//! (open, closing, closed), keepalive bookkeeping and the client-role mask generator. An event
//! borrows only the reader (and the input), so while the application handles a message the
//! writer is free: a reply goes through [`Writer::send_message`] on the one write path, checked
//! against the state (nothing is written after our Close).
//!
//! Memory: an idle connection owns no heap memory. The `partial` buffer holds only the tail of
//! a frame split across inputs and the `message` buffer only a fragmented message being
//! reassembled; both are replaced by `Vec::new()` as soon as their content has been consumed
//! (at the next `poll_event` call when an event still borrowed them). permessage-deflate adds nothing in
//! shared mode (a byte of the writer); a dedicated connection's own streams live in `State::Open`, made at
//! its first compressed message (see `deflate.rs`).

use std::time::{Duration, Instant};

pub use super::close::{CloseCause, CloseInfo, Initiator};
use super::deflate::{self, Codec, Own, PerConn};
use super::frame::{
    parse_header, valid_close_code, write_close, write_frame, FrameHeader, ProtocolError, MAX_CONTROL_PAYLOAD,
    OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use super::spares::Spares;

/// RSV1 in a frame header's `rsv` (bits 6..4 of the first byte, shifted down): permessage-deflate's "this
/// message is compressed", on the first frame of a data message only.
const RSV1: u8 = 0b100;

/// Which end of the connection this side is. It decides masking: a client masks every frame it sends and a
/// server none, and a frame masked the wrong way for the role fails the connection with 1002.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Accepted (or adopted) connection: sends unmasked frames, requires masked ones.
    Server,
    /// Outbound connection: masks every frame it sends, requires unmasked ones.
    Client,
}

/// When a keepalive ping is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PingMode {
    /// Every `ping_interval`, whatever the peer sends (the default).
    #[default]
    Interval,
    /// Only after `ping_interval` in which nothing was heard from the peer: a frame from it (a message, its own
    /// ping, a pong) moves the next ping to one interval after it. A connection that talks, or whose peer
    /// pings more often than we do, is not pinged after its first ping; a silent one is pinged as in
    /// `Interval`, so a dead peer is found as soon (`ping_interval + pong_timeout` after it was last heard).
    /// Bytes trickled inside one frame count only as [`PROGRESS_AS_LIFE`] allows. The first ping keeps its
    /// time (a random point of the first interval with `ping_jitter`): were it moved by the first frames,
    /// connections that reconnect together and speak at once would ping together from then on.
    Idle,
}

impl PingMode {
    /// `interval` or `idle`, as [`parse_ping_mode`](crate::config::parse_ping_mode) reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            PingMode::Interval => "interval",
            PingMode::Idle => "idle",
        }
    }
}

/// Shared by every connection of a profile; passed by reference, never copied into a connection.
#[derive(Clone, Debug)]
pub struct ProtoConfig {
    /// A frame or reassembled message larger than this -> close 1009.
    pub max_message_size: usize,
    /// Keepalive ping period; None = never ping.
    pub ping_interval: Option<Duration>,
    /// Whether a ping goes out every interval or only after an interval without a frame from the peer.
    pub ping_mode: PingMode,
    /// After a ping, a peer that sends no frame at all within this is dead (close 1011).
    pub pong_timeout: Duration,
    /// How long to wait for the peer's Close after we sent ours.
    pub close_timeout: Duration,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        ProtoConfig {
            max_message_size: 16 << 20,
            ping_interval: Some(Duration::from_secs(20)),
            ping_mode: PingMode::Interval,
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// The type of a data message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MessageKind {
    /// UTF-8 text. A received Text message has been checked (invalid UTF-8 fails the connection with 1007).
    Text,
    /// Arbitrary bytes.
    Binary,
}

impl MessageKind {
    /// The data frame opcode.
    pub fn opcode(self) -> u8 {
        match self {
            MessageKind::Text => OP_TEXT,
            MessageKind::Binary => OP_BINARY,
        }
    }
}

/// What [`Reader::poll_event`] and [`Writer::handle_timeout`] report. Payloads borrow the reader's buffers or
/// the input, so an event must be handled before the next call.
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    /// One complete (reassembled, unmasked, inflated when compressed, UTF-8-checked for Text) message.
    Message {
        /// Text or Binary.
        kind: MessageKind,
        /// The whole message, at most `max_message_size` bytes.
        payload: &'a [u8],
    },
    /// The peer pinged us; the Pong is already written to `out` (informational).
    Ping(&'a [u8]),
    /// rtt = now - time our outstanding ping was sent, when the payload matches it.
    Pong {
        /// The Pong's payload (ours are the ping's 8-byte big-endian counter).
        payload: &'a [u8],
        /// The round trip of our outstanding ping when this Pong answers it; `None` for an unsolicited Pong
        /// or one that answers an earlier ping.
        rtt: Option<Duration>,
    },
    /// Returned by handle_timeout when it wrote a keepalive ping to `out`.
    PingSent,
    /// The connection is finished: flush `out`, then close TCP. Returned exactly once.
    Closed(CloseInfo),
}

/// Why a message could not be sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SendError {
    /// The close handshake has started (or finished): no more data may be sent.
    Closed,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection is closing or closed")
    }
}

impl std::error::Error for SendError {}

/// Received bytes plus a read position. Frames are unmasked in place, so the slice is mutable.
#[derive(Debug)]
pub struct Input<'b> {
    data: &'b mut [u8],
    pos: usize,
}

impl<'b> Input<'b> {
    /// All of `data`, nothing consumed yet.
    pub fn new(data: &'b mut [u8]) -> Self {
        Input { data, pos: 0 }
    }
    /// Every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

enum State {
    /// Open. In dedicated deflate mode the connection's own compression streams live here (the enum had
    /// room for a pointer): they serve no purpose once our Close is out.
    Open(Option<Box<Own>>),
    /// We sent Close(code, reason); waiting for the peer's Close until `deadline`. Boxed: a connection spends
    /// little time here, and the boxed form keeps every idle connection 24 bytes smaller.
    CloseSent(Box<CloseSent>),
    Closed,
}

struct CloseSent {
    code: u16,
    cause: CloseCause,
    reason: Box<str>,
    deadline: Instant,
}

/// Where an event's payload lives; resolved to a slice only when the event is returned, so the
/// frame loop never holds a borrow across iterations.
#[derive(Clone, Copy)]
enum Src {
    Input(usize, usize),
    Partial(usize, usize),
    Message,
}

enum Action {
    Nothing,
    Message(MessageKind, Src),
    Ping(Src),
    Pong(Src, Option<Duration>),
    Closed(CloseInfo),
}

/// Both halves together, for callers that need no split (tests, simple drivers).
pub struct Connection {
    /// The receiving half.
    pub reader: Reader,
    /// The sending half and the connection's state.
    pub writer: Writer,
    /// The compression state a shard would share (this connection's own, here; boxed, it is 96 bytes).
    pub codec: Box<Codec>,
    /// The spare reassembly buffers a shard would share (this connection's own, here).
    pub spares: Spares,
}

/// The receiving half: what a frame or message in progress needs. `Default` is the empty reader of a
/// new connection (the shard moves it out of the slot while an event borrows it).
#[derive(Default)]
pub struct Reader {
    /// The start of a frame that did not fit the previous input (at most one frame, bounded by
    /// max_message_size + 14). Empty whenever frames end on input boundaries.
    partial: Vec<u8>,
    /// The last event borrowed `partial`; free it on the next call.
    release_partial: bool,
    rx: Rx,
}

/// The reader's state apart from `partial`, so a frame payload borrowed from `partial` can be handed to
/// the state machine.
#[derive(Default)]
struct Rx {
    /// A fragmented message being reassembled; empty otherwise.
    message: Vec<u8>,
    /// Prefix of `message` known to be valid UTF-8 (a Text message in progress).
    utf8_valid_to: u32,
    /// Kind of the fragmented message in progress.
    fragment: Option<MessageKind>,
    /// The fragmented message in progress is compressed (RSV1 on its first frame): `message` holds the
    /// compressed bytes until its last frame.
    compressed: bool,
    /// The last event borrowed `message`; free it on the next call.
    release_message: bool,
}

/// The sending half and the connection's state: every byte written to the peer goes through it.
pub struct Writer {
    state: State,
    /// When the last ping was sent (the connection's start before the first one; in [`PingMode::Idle`], after
    /// the first ping, also when the peer was last heard, if later): the next keepalive ping is due at
    /// `last_ping_at + ping_interval`.
    last_ping_at: Instant,
    /// When the outstanding ping actually went out (for its RTT).
    ping_sent_at: Instant,
    /// Set when a ping is sent while none is pending; any inbound frame clears it (its header, and its end).
    /// The pong deadline is `pong_wait_since + pong_timeout`.
    pong_wait_since: Option<Instant>,
    /// Payload bytes of a frame still arriving, counted since `pong_wait_since` was set: bytes inside a frame
    /// clear the pong wait only in quantity ([`PROGRESS_AS_LIFE`]), so a peer that trickles one endless frame
    /// and never answers a ping is still closed at the pong deadline.
    mid_frame_bytes: u32,
    /// Counter of pings we sent; the outstanding one is its 8-byte big-endian value.
    ping_counter: u64,
    /// xorshift64 state for client-role mask keys.
    rng: u64,
    role: Role,
    /// The outstanding ping (`ping_counter`) has not been answered yet: its pong yields an rtt.
    rtt_pending: bool,
    /// permessage-deflate as negotiated: [`deflate::OFF`] (the default), [`deflate::NEVER_COMPRESS`] or the
    /// window this side compresses with; dedicated mode's own streams are in `State::Open`.
    deflate: u8,
}

/// Payload bytes of one frame, arriving after a ping, that count as a sign of life in place of a pong (the
/// peer cannot answer a ping in the middle of a frame). A peer sending a large frame at any honest speed
/// (16 KiB within pong_timeout) keeps its connection; one trickling a few bytes at a time does not.
pub const PROGRESS_AS_LIFE: u32 = 16 << 10;

/// Room in `partial` for `more` bytes of a frame of `total` bytes. It grows with the bytes that arrived
/// (doubling, capped at `total`), never to the length a header announces: a 14-byte header must not cost
/// the 16 MiB it claims (address space, and resident pages where the allocator or the kernel's huge pages
/// touch them), whatever the peer sends after it.
fn grow_partial(partial: &mut Vec<u8>, more: usize, total: usize) {
    let need = partial.len() + more;
    if need > partial.capacity() {
        let target = (partial.capacity() * 2).min(total).max(need);
        partial.reserve_exact(target - partial.len());
    }
}

fn after(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

impl Connection {
    /// Open state; `seed` feeds the xorshift used for client-role mask keys; the first ping is due one
    /// ping_interval after `now` (see [`Writer::new`]; `_cfg` is not kept: every call takes the config).
    pub fn new(role: Role, now: Instant, _cfg: &ProtoConfig, seed: u64) -> Self {
        Connection {
            reader: Reader::default(),
            writer: Writer::new(role, now, seed),
            codec: Box::default(),
            spares: Spares::default(),
        }
    }

    /// Server or client, fixed at creation.
    pub fn role(&self) -> Role {
        self.writer.role
    }

    /// See [`Reader::poll_event`].
    pub fn poll_event<'a>(
        &'a mut self,
        input: &'a mut Input<'_>,
        out: &mut Vec<u8>,
        now: Instant,
        cfg: &ProtoConfig,
    ) -> Option<Event<'a>> {
        self.reader.poll_event(&mut self.writer, &mut self.codec, &mut self.spares, input, out, now, cfg)
    }

    /// See [`Writer::send_message`].
    pub fn send_message(&mut self, out: &mut Vec<u8>, kind: MessageKind, payload: &[u8]) -> Result<(), SendError> {
        self.writer.send_message(out, kind, payload, &mut self.codec)
    }

    /// See [`Writer::send_ping`].
    pub fn send_ping(&mut self, out: &mut Vec<u8>, now: Instant) -> Result<(), SendError> {
        self.writer.send_ping(out, now)
    }

    /// Start the close handshake as the application ([`CloseCause::LocalClose`]) and drop a message in
    /// progress; see [`Writer::close`].
    pub fn close(&mut self, out: &mut Vec<u8>, code: u16, reason: &str, now: Instant, cfg: &ProtoConfig) {
        self.writer.close(out, code, reason, CloseCause::LocalClose, now, cfg);
        self.reader.on_local_close();
    }

    /// See [`Writer::poll_timeout`].
    pub fn poll_timeout(&self, cfg: &ProtoConfig) -> Option<Instant> {
        self.writer.poll_timeout(cfg)
    }

    /// See [`Writer::handle_timeout`]; frees the reader's buffers when the connection finishes.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>, cfg: &ProtoConfig) -> Option<Event<'static>> {
        let event = self.writer.handle_timeout(now, out, cfg);
        if matches!(event, Some(Event::Closed(_))) {
            self.reader.clear();
        }
        event
    }

    /// See [`Writer::handle_eof`]; frees the reader's buffers.
    pub fn handle_eof(&mut self, reason: &str) -> Option<CloseInfo> {
        let info = self.writer.handle_eof(reason);
        self.reader.clear();
        info
    }

    /// [`Event::Closed`] was returned (or `handle_eof` reported the end): nothing more happens.
    pub fn is_closed(&self) -> bool {
        self.writer.is_closed()
    }

    /// Data may still be sent: no Close has been sent or received.
    pub fn is_open(&self) -> bool {
        self.writer.is_open()
    }

    /// Heap bytes held by this connection's buffers (0 when idle).
    pub fn buffered_capacity(&self) -> usize {
        self.reader.buffered_capacity()
    }
}

impl Reader {
    /// Consume bytes from `input` and return the next event, or None when input is exhausted.
    /// Call in a loop until None. Control replies are appended to `out` through `writer`. `codec` is the
    /// shard's permessage-deflate state: compressed messages (when `writer` negotiated deflate) are inflated
    /// with it, capped at `cfg.max_message_size`. `spares` are the shard's spare buffers: a frame that spans
    /// inputs, a fragmented or an inflated message is assembled in one, and it goes back once delivered.
    #[allow(clippy::too_many_arguments)]
    pub fn poll_event<'a>(
        &'a mut self,
        writer: &mut Writer,
        codec: &mut Codec,
        spares: &mut Spares,
        input: &'a mut Input<'_>,
        out: &mut Vec<u8>,
        now: Instant,
        cfg: &ProtoConfig,
    ) -> Option<Event<'a>> {
        loop {
            if self.release_partial {
                spares.give(std::mem::take(&mut self.partial));
                self.release_partial = false;
            }
            if self.rx.release_message {
                spares.give(std::mem::take(&mut self.rx.message));
                self.rx.release_message = false;
            }
            if matches!(writer.state, State::Closed) {
                input.pos = input.data.len();
                return None;
            }
            let action = if self.partial.is_empty() {
                self.step_input(writer, codec, spares, input, out, now, cfg)?
            } else {
                self.step_partial(writer, codec, spares, input, out, now, cfg)?
            };
            if matches!(action, Action::Closed(_)) {
                self.release_partial = true;
                input.pos = input.data.len();
            }
            if matches!(action, Action::Nothing) {
                continue;
            }
            return Some(self.event(action, input));
        }
    }

    fn event<'a>(&'a self, action: Action, input: &'a Input<'_>) -> Event<'a> {
        let bytes = |src: Src| -> &'a [u8] {
            match src {
                Src::Input(s, e) => &input.data[s..e],
                Src::Partial(s, e) => &self.partial[s..e],
                Src::Message => &self.rx.message,
            }
        };
        match action {
            // Filtered out by poll_event; an empty message keeps this total.
            Action::Nothing => Event::Message { kind: MessageKind::Binary, payload: &[] },
            Action::Message(kind, src) => Event::Message { kind, payload: bytes(src) },
            Action::Ping(src) => Event::Ping(bytes(src)),
            Action::Pong(src, rtt) => Event::Pong { payload: bytes(src), rtt },
            Action::Closed(info) => Event::Closed(info),
        }
    }

    /// Next frame from the input itself (no partial frame pending). None: input exhausted.
    #[allow(clippy::too_many_arguments)]
    fn step_input(
        &mut self,
        w: &mut Writer,
        z: &mut Codec,
        spares: &mut Spares,
        input: &mut Input<'_>,
        out: &mut Vec<u8>,
        now: Instant,
        cfg: &ProtoConfig,
    ) -> Option<Action> {
        let start = input.pos;
        let buf = input.data.get_mut(start..).filter(|b| !b.is_empty())?;
        let mut sm = Machine::new(&mut self.rx, w, z, spares, cfg);
        let header = match parse_header(buf) {
            Err(e) => return Some(sm.fail(out, e)),
            Ok(None) => {
                sm.spares.lend_to(&mut self.partial);
                self.partial.extend_from_slice(buf);
                input.pos = input.data.len();
                return None;
            }
            Ok(Some(h)) => h,
        };
        let total = match sm.check_header(&header, cfg) {
            Ok(t) => t,
            Err(e) => return Some(sm.fail(out, e)),
        };
        sm.w.alive(now, sm.idle);
        if buf.len() < total {
            sm.spares.lend_to(&mut self.partial);
            grow_partial(&mut self.partial, buf.len(), total);
            self.partial.extend_from_slice(buf);
            input.pos = input.data.len();
            return None;
        }
        let (s, e) = (start + header.header_len, start + total);
        input.pos = e;
        let payload = &mut input.data[s..e];
        if let Some(m) = header.mask {
            fastwebsockets::unmask(payload, m);
        }
        Some(sm.on_frame(&header, payload, Src::Input(s, e), out, now))
    }

    /// Continue the frame started in `partial` with bytes from input. None: still incomplete.
    #[allow(clippy::too_many_arguments)]
    fn step_partial(
        &mut self,
        w: &mut Writer,
        z: &mut Codec,
        spares: &mut Spares,
        input: &mut Input<'_>,
        out: &mut Vec<u8>,
        now: Instant,
        cfg: &ProtoConfig,
    ) -> Option<Action> {
        if input.is_empty() {
            return None;
        }
        let mut sm = Machine::new(&mut self.rx, w, z, spares, cfg);
        // Whether the header completes with this input (a frame starting) or came with an earlier one.
        let mut fresh = false;
        let header = loop {
            match parse_header(&self.partial) {
                Err(e) => return Some(sm.fail(out, e)),
                Ok(Some(h)) => break h,
                Ok(None) => {
                    fresh = true;
                    // At most 13 single-byte steps: headers are short, this path is rare.
                    let b = *input.data.get(input.pos)?;
                    self.partial.push(b);
                    input.pos += 1;
                }
            }
        };
        let total = match sm.check_header(&header, cfg) {
            Ok(t) => t,
            Err(e) => return Some(sm.fail(out, e)),
        };
        if fresh {
            sm.w.alive(now, sm.idle);
        }
        // Invariant: partial never holds more than one frame, so partial.len() <= total.
        let missing = total.saturating_sub(self.partial.len());
        if missing > 0 {
            let take = missing.min(input.remaining());
            grow_partial(&mut self.partial, take, total);
            self.partial.extend_from_slice(&input.data[input.pos..input.pos + take]);
            input.pos += take;
            if !fresh {
                sm.w.frame_progress(take, now, sm.idle);
            }
            if take < missing {
                return None;
            }
        }
        let (s, e) = (header.header_len, total);
        let payload = &mut self.partial[s..e];
        if let Some(m) = header.mask {
            fastwebsockets::unmask(payload, m);
        }
        self.release_partial = true;
        Some(sm.on_frame(&header, payload, Src::Partial(s, e), out, now))
    }

    /// Before the connection opens the reader has nothing to do, so its partial-frame buffer holds the
    /// handshake bytes (one buffer per connection instead of two). Take them out (`std::mem::take`) when the
    /// connection opens.
    pub fn handshake_buf(&mut self) -> &mut Vec<u8> {
        &mut self.partial
    }

    /// The handshake bytes received so far (see [`Reader::handshake_buf`]).
    pub fn handshake_bytes(&self) -> &[u8] {
        &self.partial
    }

    /// We sent Close: a message in progress will never be delivered now.
    pub fn on_local_close(&mut self) {
        if !self.rx.release_message {
            self.rx.message = Vec::new();
        }
    }

    /// The connection finished outside poll_event (no event borrows the buffers): free everything.
    pub fn clear(&mut self) {
        *self = Reader::default();
    }

    /// Heap bytes held by the receive buffers (0 when idle).
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.rx.message.capacity()
    }

    /// Bytes of a frame that did not fit the inputs so far (0 when frames end on input boundaries).
    pub fn assembling(&self) -> usize {
        self.partial.len()
    }
}

impl Writer {
    /// An open connection's writer. `seed` feeds the xorshift used for client-role mask keys (0 is replaced
    /// by a fixed constant); the first keepalive ping is due one ping_interval after `now`
    /// ([`Writer::schedule_first_ping`] moves it).
    pub fn new(role: Role, now: Instant, seed: u64) -> Writer {
        Writer {
            state: State::Open(None),
            last_ping_at: now,
            ping_sent_at: now,
            pong_wait_since: None,
            mid_frame_bytes: 0,
            ping_counter: 0,
            rng: if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed },
            role,
            rtt_pending: false,
            deflate: deflate::OFF,
        }
    }

    /// Server or client, fixed at creation.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Move the next keepalive ping to `at` (it is due at `at`, then every ping_interval): spreads the pings
    /// of connections that opened together over the interval.
    pub fn schedule_first_ping(&mut self, at: Instant, cfg: &ProtoConfig) {
        if let Some(interval) = cfg.ping_interval {
            self.last_ping_at = at.checked_sub(interval).unwrap_or(self.last_ping_at);
        }
    }

    /// Append a data message (a single frame, masked in client role) to out, compressed (RSV1 set) when
    /// permessage-deflate is in use and `codec` says it is worth it.
    /// Err if the connection is closing or closed: nothing is written after our Close.
    pub fn send_message(
        &mut self,
        out: &mut Vec<u8>,
        kind: MessageKind,
        payload: &[u8],
        codec: &mut Codec,
    ) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        let mask = self.out_mask();
        let bits = self.deflate;
        match codec.compress(bits, self.own_streams(), payload) {
            Some(compressed) => {
                let start = out.len();
                write_frame(out, true, kind.opcode(), mask, compressed);
                out[start] |= RSV1 << 4;
            }
            None => write_frame(out, true, kind.opcode(), mask, payload),
        }
        Ok(())
    }

    /// Use permessage-deflate as negotiated at the upgrade (call while open).
    pub fn set_deflate(&mut self, negotiated: PerConn) {
        let (bits, own) = negotiated.into_parts();
        self.deflate = bits;
        if let State::Open(slot) = &mut self.state {
            *slot = own;
        }
    }

    /// permessage-deflate was negotiated: RSV1 may mark a received message compressed.
    pub fn deflate_on(&self) -> bool {
        self.deflate != deflate::OFF
    }

    /// Messages to this connection may go out compressed: a frame encoded once without compression cannot
    /// simply be shared with it when a compressed form exists.
    pub fn compresses(&self) -> bool {
        deflate::compresses(self.deflate)
    }

    /// Messages to this connection are compressed the way a shared, compressed-once frame is (the shard's
    /// compressor, 15-bit window, no context).
    pub fn shares_compressed_frames(&self) -> bool {
        let own = match &self.state {
            State::Open(own) => own.as_deref(),
            _ => None,
        };
        deflate::shares_frames(self.deflate, own)
    }

    fn own_streams(&mut self) -> Option<&mut Own> {
        match &mut self.state {
            State::Open(own) => own.as_deref_mut(),
            _ => None,
        }
    }

    /// Frames written by this side are masked (client role): a frame encoded once for many connections can
    /// only be shared by server-role connections.
    pub fn masks(&self) -> bool {
        self.role == Role::Client
    }

    /// An app-initiated ping, tracked for rtt (and the pong deadline) like keepalive pings.
    pub fn send_ping(&mut self, out: &mut Vec<u8>, now: Instant) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        self.write_ping(out, now);
        Ok(())
    }

    /// Start the close handshake: write Close(code, reason) to out and wait up to close_timeout
    /// for the peer's Close. No-op unless open. The reader should drop a message in progress
    /// ([`Reader::on_local_close`]).
    pub fn close(
        &mut self,
        out: &mut Vec<u8>,
        code: u16,
        reason: &str,
        cause: CloseCause,
        now: Instant,
        cfg: &ProtoConfig,
    ) {
        if !self.is_open() {
            return;
        }
        let mask = self.out_mask();
        write_close(out, mask, code, reason);
        // Far-future fallback if now + close_timeout overflows: "never" in practice.
        let deadline = after(now, cfg.close_timeout).unwrap_or(now + Duration::from_secs(86400 * 365));
        self.state = State::CloseSent(Box::new(CloseSent { code, cause, reason: reason.into(), deadline }));
        self.pong_wait_since = None;
    }

    /// The next instant handle_timeout must run; None if nothing is pending.
    pub fn poll_timeout(&self, cfg: &ProtoConfig) -> Option<Instant> {
        match &self.state {
            State::Closed => None,
            State::CloseSent(c) => Some(c.deadline),
            State::Open(_) => {
                let ping = cfg.ping_interval.and_then(|i| after(self.last_ping_at, i));
                let pong = self.pong_wait_since.and_then(|t| after(t, cfg.pong_timeout));
                match (ping, pong) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Run due timers: write a keepalive ping (PingSent), or finish the connection on the pong or
    /// close deadline. None if nothing was due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>, cfg: &ProtoConfig) -> Option<Event<'static>> {
        let info = match &self.state {
            State::Closed => return None,
            State::CloseSent(c) => {
                if now < c.deadline {
                    return None;
                }
                CloseInfo::new(c.code, "close timeout", Initiator::Local, CloseCause::CloseTimeout)
            }
            State::Open(_) => {
                let pong_due = self.pong_wait_since.and_then(|t| after(t, cfg.pong_timeout));
                if pong_due.is_some_and(|d| d <= now) {
                    let mask = self.out_mask();
                    write_close(out, mask, 1011, "pong timeout");
                    CloseInfo::new(1011, "pong timeout", Initiator::Local, CloseCause::PongTimeout)
                } else {
                    let ping_due = cfg.ping_interval.and_then(|i| after(self.last_ping_at, i));
                    if let Some(due) = ping_due.filter(|d| *d <= now) {
                        self.write_ping(out, now);
                        // Keep a fixed cadence: the next ping is due one interval after this one was due,
                        // not after the (tick-rounded, later) moment it went out, unless we fell a whole
                        // interval behind (then start afresh rather than send a burst).
                        let interval = cfg.ping_interval.unwrap_or_default();
                        if now.saturating_duration_since(due) < interval {
                            self.last_ping_at = due;
                        }
                        return Some(Event::PingSent);
                    }
                    return None;
                }
            }
        };
        self.state = State::Closed;
        Some(Event::Closed(info))
    }

    /// TCP EOF or error from the peer: Closed{1006, reason, Abnormal} unless already closed.
    pub fn handle_eof(&mut self, reason: &str) -> Option<CloseInfo> {
        if self.is_closed() {
            return None;
        }
        self.state = State::Closed;
        Some(CloseInfo::new(1006, reason, Initiator::Abnormal, CloseCause::Abnormal))
    }

    /// Closed was returned.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Data may still be sent.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    fn out_mask(&mut self) -> Option<[u8; 4]> {
        match self.role {
            Role::Server => None,
            Role::Client => {
                // xorshift64: mask keys need to be unpredictable to scripts in a browser, not
                // cryptographically strong; the seed comes from the caller.
                let mut x = self.rng;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.rng = x;
                Some(((x >> 32) as u32).to_ne_bytes())
            }
        }
    }

    /// The peer is alive (a frame began or ended, at `now`): no pong is awaited any more, and with `idle`
    /// (the profile's [`PingMode::Idle`]), once the first ping went out, the next ping is one interval away.
    fn alive(&mut self, now: Instant, idle: bool) {
        self.pong_wait_since = None;
        self.mid_frame_bytes = 0;
        if idle && self.ping_counter != 0 && now > self.last_ping_at {
            self.last_ping_at = now;
        }
    }

    /// `n` more payload bytes of a frame whose header came earlier.
    fn frame_progress(&mut self, n: usize, now: Instant, idle: bool) {
        if self.pong_wait_since.is_some() || idle {
            self.mid_frame_bytes = self.mid_frame_bytes.saturating_add(n.min(u32::MAX as usize) as u32);
            if self.mid_frame_bytes >= PROGRESS_AS_LIFE {
                self.alive(now, idle);
            }
        }
    }

    fn write_ping(&mut self, out: &mut Vec<u8>, now: Instant) {
        self.ping_counter = self.ping_counter.wrapping_add(1);
        let mask = self.out_mask();
        write_frame(out, true, OP_PING, mask, &self.ping_counter.to_be_bytes());
        self.last_ping_at = now;
        self.ping_sent_at = now;
        self.rtt_pending = true;
        // Keep the earliest unanswered ping: a later ping must not push the deadline out.
        if self.pong_wait_since.is_none() {
            self.pong_wait_since = Some(now);
            self.mid_frame_bytes = 0;
        }
    }
}

/// The receive-side state machine over both halves for the frame being handled.
struct Machine<'s> {
    rx: &'s mut Rx,
    w: &'s mut Writer,
    z: &'s mut Codec,
    spares: &'s mut Spares,
    /// The profile's max_message_size: the bound on an inflated message.
    max: usize,
    /// The profile pings in [`PingMode::Idle`]: a sign of life moves the next ping.
    idle: bool,
}

impl<'s> Machine<'s> {
    fn new(rx: &'s mut Rx, w: &'s mut Writer, z: &'s mut Codec, spares: &'s mut Spares, cfg: &ProtoConfig) -> Self {
        Machine { rx, w, z, spares, max: cfg.max_message_size, idle: cfg.ping_mode == PingMode::Idle }
    }
}

impl Machine<'_> {
    /// Fail the connection: send Close(code, reason) (unless we already sent one) and finish.
    fn fail(&mut self, out: &mut Vec<u8>, e: ProtocolError) -> Action {
        if matches!(self.w.state, State::Open(_)) {
            let mask = self.w.out_mask();
            write_close(out, mask, e.code, e.reason);
        }
        self.w.state = State::Closed;
        self.rx.fragment = None;
        self.rx.compressed = false;
        self.rx.release_message = true;
        Action::Closed(CloseInfo::new(e.code, e.reason, Initiator::Local, CloseCause::ProtocolError))
    }

    /// Validate a header before any of its payload is buffered; returns the frame's total length.
    fn check_header(&mut self, h: &FrameHeader, cfg: &ProtoConfig) -> Result<usize, ProtocolError> {
        // RSV2 and RSV3 mean nothing to us; RSV1 only with permessage-deflate, on the first frame of a data
        // message.
        let compressed_ok = self.w.deflate_on() && matches!(h.opcode, OP_TEXT | OP_BINARY);
        if h.rsv & !RSV1 != 0 || (h.rsv & RSV1 != 0 && !compressed_ok) {
            return Err(ProtocolError::new(1002, "reserved bits set"));
        }
        if !matches!(h.opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
            return Err(ProtocolError::new(1002, "unknown opcode"));
        }
        match (self.w.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::new(1002, "unmasked client frame")),
            (Role::Client, true) => return Err(ProtocolError::new(1002, "masked server frame")),
            _ => {}
        }
        let buffered = if h.is_control() {
            if !h.fin {
                return Err(ProtocolError::new(1002, "fragmented control frame"));
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::new(1002, "control frame too long"));
            }
            0
        } else {
            match (self.rx.fragment.is_some(), h.opcode == OP_CONTINUATION) {
                (false, true) => return Err(ProtocolError::new(1002, "unexpected continuation frame")),
                (true, false) => return Err(ProtocolError::new(1002, "expected continuation frame")),
                (true, true) => self.rx.message.len(),
                (false, false) => 0,
            }
        };
        let room = cfg.max_message_size.saturating_sub(buffered) as u64;
        if h.payload_len > room {
            return Err(ProtocolError::new(1009, "message too big"));
        }
        usize::try_from(h.payload_len)
            .ok()
            .and_then(|n| n.checked_add(h.header_len))
            .ok_or(ProtocolError::new(1009, "message too big"))
    }

    /// A complete, unmasked frame whose header passed check_header.
    fn on_frame(&mut self, h: &FrameHeader, payload: &[u8], src: Src, out: &mut Vec<u8>, now: Instant) -> Action {
        // A whole frame is a sign of life (also one whose header came before the ping).
        self.w.alive(now, self.idle);
        let open = matches!(self.w.state, State::Open(_));
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                let kind = if h.opcode == OP_TEXT { MessageKind::Text } else { MessageKind::Binary };
                let compressed = h.rsv & RSV1 != 0;
                if compressed {
                    return self.on_compressed_start(kind, h.fin, payload, open, out);
                }
                if h.fin {
                    if !open {
                        return Action::Nothing;
                    }
                    if kind == MessageKind::Text && simdutf8::basic::from_utf8(payload).is_err() {
                        return self.fail(out, ProtocolError::new(1007, "invalid UTF-8 in text message"));
                    }
                    return Action::Message(kind, src);
                }
                self.rx.fragment = Some(kind);
                if !open {
                    return Action::Nothing;
                }
                self.spares.lend_to(&mut self.rx.message);
                self.rx.message.extend_from_slice(payload);
                self.rx.utf8_valid_to = 0;
                self.continue_message(kind, false, out)
            }
            OP_CONTINUATION => {
                let Some(kind) = self.rx.fragment else {
                    return Action::Nothing; // excluded by check_header
                };
                if h.fin {
                    self.rx.fragment = None;
                }
                if !open {
                    self.rx.compressed &= !h.fin;
                    return Action::Nothing;
                }
                self.rx.message.extend_from_slice(payload);
                if self.rx.compressed {
                    if !h.fin {
                        return Action::Nothing;
                    }
                    self.rx.compressed = false;
                    let compressed = std::mem::take(&mut self.rx.message);
                    let action = self.inflate(kind, &compressed, out);
                    self.spares.give(compressed);
                    return action;
                }
                self.continue_message(kind, h.fin, out)
            }
            OP_PING => {
                if !open {
                    return Action::Nothing;
                }
                let mask = self.w.out_mask();
                write_frame(out, true, OP_PONG, mask, payload);
                Action::Ping(src)
            }
            OP_PONG => {
                let rtt = if self.w.rtt_pending && payload == self.w.ping_counter.to_be_bytes() {
                    self.w.rtt_pending = false;
                    Some(now.saturating_duration_since(self.w.ping_sent_at))
                } else {
                    None
                };
                Action::Pong(src, rtt)
            }
            OP_CLOSE => self.on_close(payload, out),
            _ => Action::Nothing, // excluded by check_header
        }
    }

    /// The first frame of a compressed message: inflate it now if it is the only one, else keep its
    /// compressed bytes until the last frame (a shared inflater cannot hold one connection's half-inflated
    /// message while others use it; the compressed bytes count against max_message_size as they arrive).
    fn on_compressed_start(
        &mut self,
        kind: MessageKind,
        fin: bool,
        payload: &[u8],
        open: bool,
        out: &mut Vec<u8>,
    ) -> Action {
        if !fin {
            self.rx.fragment = Some(kind);
            self.rx.compressed = true;
            if open {
                self.spares.lend_to(&mut self.rx.message);
                self.rx.message.extend_from_slice(payload);
            }
            return Action::Nothing;
        }
        if !open {
            return Action::Nothing;
        }
        self.inflate(kind, payload, out)
    }

    /// Inflate a whole compressed message into `message` (capped at max_message_size: 1009 past it),
    /// check a Text message's UTF-8, deliver it.
    fn inflate(&mut self, kind: MessageKind, compressed: &[u8], out: &mut Vec<u8>) -> Action {
        self.spares.lend_to(&mut self.rx.message);
        let mut inflated = std::mem::take(&mut self.rx.message);
        if let Err(e) = self.z.inflate(self.w.own_streams(), compressed, self.max, &mut inflated) {
            return self.fail(out, e);
        }
        if kind == MessageKind::Text && simdutf8::basic::from_utf8(&inflated).is_err() {
            return self.fail(out, ProtocolError::new(1007, "invalid UTF-8 in text message"));
        }
        self.rx.message = inflated;
        self.rx.utf8_valid_to = 0;
        self.rx.release_message = true;
        Action::Message(kind, Src::Message)
    }

    /// After appending a fragment to `message`: check UTF-8 so far, deliver on the final one.
    fn continue_message(&mut self, kind: MessageKind, fin: bool, out: &mut Vec<u8>) -> Action {
        if kind == MessageKind::Text {
            let from = (self.rx.utf8_valid_to as usize).min(self.rx.message.len());
            match simdutf8::compat::from_utf8(&self.rx.message[from..]) {
                Ok(_) => self.rx.utf8_valid_to = self.rx.message.len() as u32,
                // An incomplete sequence at the end may be completed by the next fragment.
                Err(e) if e.error_len().is_none() && !fin => {
                    self.rx.utf8_valid_to = (from + e.valid_up_to()) as u32;
                }
                Err(_) => return self.fail(out, ProtocolError::new(1007, "invalid UTF-8 in text message")),
            }
        }
        if !fin {
            return Action::Nothing;
        }
        self.rx.utf8_valid_to = 0;
        self.rx.release_message = true;
        Action::Message(kind, Src::Message)
    }

    fn on_close(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Action {
        match std::mem::replace(&mut self.w.state, State::Closed) {
            State::CloseSent(c) => {
                self.rx.fragment = None;
                self.rx.compressed = false;
                self.rx.release_message = true;
                Action::Closed(CloseInfo::new(c.code, c.reason, Initiator::Local, c.cause))
            }
            State::Closed => Action::Nothing,
            State::Open(own) => {
                self.w.state = State::Open(own); // so fail() still sends its Close
                let (code, reason) = match payload {
                    [] => (1005, String::new()),
                    [_] => return self.fail(out, ProtocolError::new(1002, "invalid close payload")),
                    [hi, lo, rest @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !valid_close_code(code) {
                            return self.fail(out, ProtocolError::new(1002, "invalid close code"));
                        }
                        match std::str::from_utf8(rest) {
                            Ok(r) => (code, r.to_string()),
                            Err(_) => return self.fail(out, ProtocolError::new(1007, "invalid UTF-8 in close reason")),
                        }
                    }
                };
                let mask = self.w.out_mask();
                // write_close sends an empty payload for 1005: echo "no code" as no code.
                write_close(out, mask, code, "");
                self.w.state = State::Closed;
                self.rx.fragment = None;
                self.rx.compressed = false;
                self.rx.release_message = true;
                Action::Closed(CloseInfo::new(code, reason, Initiator::Peer, CloseCause::PeerClose))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::write_header;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Clone)]
    enum Ev {
        Msg(MessageKind, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>, Option<Duration>),
        PingSent,
        Closed(CloseInfo),
    }

    fn own(e: Event<'_>) -> Ev {
        match e {
            Event::Message { kind, payload } => Ev::Msg(kind, payload.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong { payload, rtt } => Ev::Pong(payload.to_vec(), rtt),
            Event::PingSent => Ev::PingSent,
            Event::Closed(i) => Ev::Closed(i),
        }
    }

    fn cfg() -> ProtoConfig {
        ProtoConfig::default()
    }

    fn server(now: Instant) -> Connection {
        Connection::new(Role::Server, now, &cfg(), 1)
    }

    /// Feed `bytes` as one input; collect events until None.
    fn feed(c: &mut Connection, bytes: &[u8], out: &mut Vec<u8>, now: Instant, cfg: &ProtoConfig) -> Vec<Ev> {
        let mut data = bytes.to_vec();
        let mut input = Input::new(&mut data);
        let mut evs = Vec::new();
        while let Some(e) = c.poll_event(&mut input, out, now, cfg) {
            evs.push(own(e));
        }
        assert!(input.is_empty());
        evs
    }

    fn feed_chunks(c: &mut Connection, bytes: &[u8], cuts: &[usize], out: &mut Vec<u8>, now: Instant) -> Vec<Ev> {
        let mut evs = Vec::new();
        let mut prev = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(prev, bytes.len());
            evs.extend(feed(c, &bytes[prev..cut], out, now, &cfg()));
            prev = cut;
        }
        evs
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client-to-server frame.
    fn cframe(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, fin, opcode, Some(MASK), payload);
        v
    }

    fn close_payload(code: u16, reason: &str) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(reason.as_bytes());
        v
    }

    /// Parse the frames a connection wrote: (opcode, masked, unmasked payload).
    fn frames(mut buf: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut v = Vec::new();
        while !buf.is_empty() {
            let h = parse_header(buf).unwrap().unwrap();
            let end = h.header_len + h.payload_len as usize;
            let mut p = buf[h.header_len..end].to_vec();
            if let Some(m) = h.mask {
                fastwebsockets::unmask(&mut p, m);
            }
            assert!(h.fin);
            v.push((h.opcode, h.mask.is_some(), p));
            buf = &buf[end..];
        }
        v
    }

    fn closed(code: u16, initiator: Initiator) -> impl Fn(&Ev) -> bool {
        move |e| matches!(e, Ev::Closed(i) if i.code == code && i.initiator == initiator)
    }

    /// Feed and expect the connection to be failed with `code`, a Close(code) written.
    fn expect_fail(bytes: &[u8], code: u16) {
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        let evs = feed(&mut c, bytes, &mut out, now, &cfg());
        assert!(evs.last().is_some_and(closed(code, Initiator::Local)), "{evs:?}");
        assert!(c.is_closed());
        let f = frames(&out);
        assert_eq!(f.last().unwrap().0, OP_CLOSE);
        assert_eq!(&f.last().unwrap().2[..2], &code.to_be_bytes());
        assert_eq!(c.buffered_capacity(), 0);
        // input after Closed is ignored
        assert!(feed(&mut c, &cframe(true, OP_TEXT, b"x"), &mut out, now, &cfg()).is_empty());
    }

    #[test]
    fn first_ping_can_be_moved_into_the_first_interval() {
        let now = Instant::now();
        let cfg = ProtoConfig { ping_interval: Some(Duration::from_secs(10)), ..cfg() };
        let mut w = Writer::new(Role::Server, now, 1);
        assert_eq!(w.poll_timeout(&cfg), Some(now + Duration::from_secs(10)));
        w.schedule_first_ping(now + Duration::from_secs(3), &cfg);
        assert_eq!(w.poll_timeout(&cfg), Some(now + Duration::from_secs(3)));
        let mut out = Vec::new();
        assert_eq!(w.handle_timeout(now + Duration::from_secs(2), &mut out, &cfg), None);
        assert_eq!(w.handle_timeout(now + Duration::from_secs(3), &mut out, &cfg), Some(Event::PingSent));
        // Then the fixed cadence: one interval after the first ping.
        let next = w.poll_timeout(&cfg).unwrap();
        assert_eq!(next.min(now + Duration::from_secs(13)), now + Duration::from_secs(13));
    }

    #[test]
    fn connection_is_small() {
        let size = std::mem::size_of::<Connection>();
        println!("size_of::<Connection>() = {size}");
        assert!(size <= 192, "{size}");
    }

    #[test]
    fn echo_text_and_binary() {
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        let mut bytes = cframe(true, OP_TEXT, "héllo".as_bytes());
        bytes.extend(cframe(true, OP_BINARY, &[0, 1, 2, 255]));
        let evs = feed(&mut c, &bytes, &mut out, now, &cfg());
        assert_eq!(evs, [Ev::Msg(MessageKind::Text, "héllo".into()), Ev::Msg(MessageKind::Binary, vec![0, 1, 2, 255])]);
        assert!(out.is_empty());
        for e in &evs {
            if let Ev::Msg(k, p) = e {
                c.send_message(&mut out, *k, p).unwrap();
            }
        }
        assert_eq!(
            frames(&out),
            [(OP_TEXT, false, "héllo".as_bytes().to_vec()), (OP_BINARY, false, vec![0, 1, 2, 255])]
        );
        assert_eq!(c.buffered_capacity(), 0);
    }

    #[test]
    fn in_place_message_borrows_input() {
        let now = Instant::now();
        let mut c = server(now);
        let mut data = cframe(true, OP_BINARY, &[5; 100]);
        let range = data.as_ptr_range();
        let mut input = Input::new(&mut data);
        let mut out = Vec::new();
        match c.poll_event(&mut input, &mut out, now, &cfg()) {
            Some(Event::Message { payload, .. }) => assert!(range.contains(&payload.as_ptr())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lengths_whole_and_chunked() {
        for len in [0usize, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = cframe(true, OP_BINARY, &payload);
            let now = Instant::now();
            let mut out = Vec::new();
            let mut c = server(now);
            assert_eq!(feed(&mut c, &bytes, &mut out, now, &cfg()), [Ev::Msg(MessageKind::Binary, payload.clone())]);
            let mut c = server(now);
            let cuts: Vec<usize> = (1..).map(|i| i * 4096).take_while(|&c| c < bytes.len()).collect();
            assert_eq!(
                feed_chunks(&mut c, &bytes, &cuts, &mut out, now),
                [Ev::Msg(MessageKind::Binary, payload)],
                "len {len}"
            );
            assert_eq!(c.buffered_capacity(), 0);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn reassembly_buffers_go_back_to_the_spares() {
        // A frame spanning inputs is assembled in a spare buffer; once delivered the buffer is kept, and the
        // next large frame starts in it (no allocation, no regrowth).
        let payload = vec![5u8; 16 << 10];
        let bytes = cframe(true, OP_BINARY, &payload);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut c = server(now);
        let cuts = [4096, 8192, 12288];
        assert_eq!(feed_chunks(&mut c, &bytes, &cuts, &mut out, now), [Ev::Msg(MessageKind::Binary, payload.clone())]);
        let kept = c.spares.held_bytes();
        assert!(kept >= bytes.len(), "the delivered frame's buffer is kept: {kept}");
        assert_eq!(c.buffered_capacity(), 0, "an idle connection holds no buffer");
        assert!(feed(&mut c, &bytes[..4096], &mut out, now, &cfg()).is_empty());
        assert_eq!(c.spares.held_bytes(), 0, "the next frame took the kept buffer");
        assert_eq!(c.buffered_capacity(), kept, "with its room: no regrowth");
        assert_eq!(feed(&mut c, &bytes[4096..], &mut out, now, &cfg()), [Ev::Msg(MessageKind::Binary, payload)]);
        assert_eq!(c.spares.held_bytes(), kept);
        // A fragmented message is assembled the same way.
        let mut stream = cframe(false, OP_BINARY, &[1; 6000]);
        stream.extend(cframe(true, OP_CONTINUATION, &[2; 6000]));
        let mut want = vec![1u8; 6000];
        want.extend([2u8; 6000]);
        assert_eq!(feed(&mut c, &stream, &mut out, now, &cfg()), [Ev::Msg(MessageKind::Binary, want)]);
        assert_eq!(c.spares.held_bytes(), kept, "the message went back where it came from");
        assert!(out.is_empty());
    }

    fn fragmented_stream() -> Vec<u8> {
        let mut b = cframe(false, OP_TEXT, b"Hel");
        b.extend(cframe(true, OP_PING, b"p"));
        b.extend(cframe(false, OP_CONTINUATION, b"lo "));
        b.extend(cframe(true, OP_PONG, b"unsolicited"));
        b.extend(cframe(true, OP_CONTINUATION, "wörld".as_bytes()));
        b.extend(cframe(true, OP_BINARY, &[9; 300]));
        b.extend(cframe(false, OP_BINARY, &[1]));
        b.extend(cframe(true, OP_CONTINUATION, &[2]));
        b
    }

    fn fragmented_expected() -> Vec<Ev> {
        vec![
            Ev::Ping(b"p".to_vec()),
            Ev::Pong(b"unsolicited".to_vec(), None),
            Ev::Msg(MessageKind::Text, "Hello wörld".into()),
            Ev::Msg(MessageKind::Binary, vec![9; 300]),
            Ev::Msg(MessageKind::Binary, vec![1, 2]),
        ]
    }

    #[test]
    fn fragmented_with_interleaved_control() {
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        assert_eq!(feed(&mut c, &fragmented_stream(), &mut out, now, &cfg()), fragmented_expected());
        assert_eq!(frames(&out), [(OP_PONG, false, b"p".to_vec())]);
        assert_eq!(c.buffered_capacity(), 0);
    }

    #[test]
    fn byte_at_a_time_gives_same_events() {
        let bytes = fragmented_stream();
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(feed_chunks(&mut c, &bytes, &cuts, &mut out, now), fragmented_expected());
        assert_eq!(frames(&out), [(OP_PONG, false, b"p".to_vec())]);
        // and every single split point
        for cut in 1..bytes.len() {
            let mut c = server(now);
            let mut out = Vec::new();
            assert_eq!(feed_chunks(&mut c, &bytes, &[cut], &mut out, now), fragmented_expected(), "cut {cut}");
        }
    }

    #[test]
    fn protocol_errors_1002() {
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, true, OP_TEXT, None, b"hi");
        expect_fail(&unmasked, 1002);
        let mut rsv = cframe(true, OP_TEXT, b"hi");
        rsv[0] |= 0x40;
        expect_fail(&rsv, 1002);
        expect_fail(&cframe(true, 3, b""), 1002);
        expect_fail(&cframe(true, 0xB, b""), 1002);
        expect_fail(&cframe(true, OP_PING, &[0; 126]), 1002);
        expect_fail(&cframe(false, OP_PING, b""), 1002);
        expect_fail(&cframe(true, OP_CONTINUATION, b"x"), 1002);
        let mut two_starts = cframe(false, OP_TEXT, b"a");
        two_starts.extend(cframe(true, OP_BINARY, b"b"));
        expect_fail(&two_starts, 1002);
        // non-minimal length
        expect_fail(&[0x82, 0xFE, 0, 5, 1, 2, 3, 4, 0, 0, 0, 0, 0], 1002);
    }

    #[test]
    fn too_big_1009() {
        let small = ProtoConfig { max_message_size: 1000, ..cfg() };
        let now = Instant::now();
        // Only the header of a huge frame: fails before buffering anything.
        let mut hdr = Vec::new();
        write_header(&mut hdr, true, OP_BINARY, Some(MASK), 1 << 40);
        let mut c = server(now);
        let mut out = Vec::new();
        let evs = feed(&mut c, &hdr, &mut out, now, &small);
        assert!(evs.last().is_some_and(closed(1009, Initiator::Local)), "{evs:?}");
        assert_eq!(c.buffered_capacity(), 0);
        // Fragments adding up to more than the limit.
        let mut c = server(now);
        let mut out = Vec::new();
        let mut b = cframe(false, OP_BINARY, &[0; 600]);
        b.extend(cframe(true, OP_CONTINUATION, &[0; 600]));
        let evs = feed(&mut c, &b, &mut out, now, &small);
        assert_eq!(evs.len(), 1);
        assert!(closed(1009, Initiator::Local)(&evs[0]));
        assert_eq!(frames(&out)[0].2[..2], 1009u16.to_be_bytes());
        // exactly at the limit is fine
        let mut c = server(now);
        let evs = feed(&mut c, &cframe(true, OP_BINARY, &[0; 1000]), &mut out, now, &small);
        assert_eq!(evs, [Ev::Msg(MessageKind::Binary, vec![0; 1000])]);
    }

    #[test]
    fn bad_utf8_1007() {
        expect_fail(&cframe(true, OP_TEXT, &[b'a', 0xFF, b'b']), 1007);
        // incomplete sequence in a final single frame
        expect_fail(&cframe(true, OP_TEXT, &[b'a', 0xE2, 0x82]), 1007);
        // fail fast: the first fragment is already invalid, no final fragment needed
        expect_fail(&cframe(false, OP_TEXT, &[b'a', 0xC0, 0x80]), 1007);
        // incomplete at the end of the final fragment
        let mut b = cframe(false, OP_TEXT, b"a");
        b.extend(cframe(true, OP_CONTINUATION, &[0xE2, 0x82]));
        expect_fail(&b, 1007);
        // invalid in a later fragment, before the message ends
        let mut b = cframe(false, OP_TEXT, b"ok");
        b.extend(cframe(false, OP_CONTINUATION, &[0xED, 0xA0, 0x80])); // surrogate
        expect_fail(&b, 1007);
        // a sequence split across fragments is fine: € = E2 82 AC
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        let mut b = cframe(false, OP_TEXT, &[b'x', 0xE2]);
        b.extend(cframe(false, OP_CONTINUATION, &[0x82]));
        b.extend(cframe(true, OP_CONTINUATION, &[0xAC, b'y']));
        assert_eq!(feed(&mut c, &b, &mut out, now, &cfg()), [Ev::Msg(MessageKind::Text, "x€y".into())]);
        // binary is never checked
        let evs = feed(&mut c, &cframe(true, OP_BINARY, &[0xFF]), &mut out, now, &cfg());
        assert_eq!(evs, [Ev::Msg(MessageKind::Binary, vec![0xFF])]);
    }

    #[test]
    fn peer_initiated_close() {
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        let evs = feed(&mut c, &cframe(true, OP_CLOSE, &close_payload(1001, "bye")), &mut out, now, &cfg());
        assert_eq!(
            evs,
            [Ev::Closed(CloseInfo {
                code: 1001,
                reason: "bye".into(),
                initiator: Initiator::Peer,
                cause: CloseCause::PeerClose
            })]
        );
        assert_eq!(frames(&out), [(OP_CLOSE, false, 1001u16.to_be_bytes().to_vec())]);
        assert!(c.is_closed() && !c.is_open());
        assert_eq!(c.send_message(&mut out, MessageKind::Text, b"x"), Err(SendError::Closed));
        assert_eq!(c.handle_eof("eof"), None);
        assert_eq!(c.poll_timeout(&cfg()), None);

        // empty close -> 1005, empty reply
        let mut c = server(now);
        let mut out = Vec::new();
        let evs = feed(&mut c, &cframe(true, OP_CLOSE, b""), &mut out, now, &cfg());
        assert_eq!(
            evs,
            [Ev::Closed(CloseInfo {
                code: 1005,
                reason: "".into(),
                initiator: Initiator::Peer,
                cause: CloseCause::PeerClose
            })]
        );
        assert_eq!(frames(&out), [(OP_CLOSE, false, vec![])]);
    }

    #[test]
    fn invalid_close_payloads() {
        expect_fail(&cframe(true, OP_CLOSE, &[3]), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
            expect_fail(&cframe(true, OP_CLOSE, &close_payload(code, "")), 1002);
        }
        let mut bad = close_payload(1000, "");
        bad.push(0xFF);
        expect_fail(&cframe(true, OP_CLOSE, &bad), 1007);
        for code in [1000u16, 1003, 1007, 1011, 1013, 3000, 4999] {
            let now = Instant::now();
            let mut c = server(now);
            let evs = feed(&mut c, &cframe(true, OP_CLOSE, &close_payload(code, "")), &mut Vec::new(), now, &cfg());
            assert!(closed(code, Initiator::Peer)(&evs[0]), "{code}");
        }
    }

    #[test]
    fn local_close_handshake() {
        let now = Instant::now();
        let mut c = server(now);
        let mut out = Vec::new();
        // a message in progress is dropped by close
        feed(&mut c, &cframe(false, OP_TEXT, b"par"), &mut out, now, &cfg());
        c.close(&mut out, 1001, "going away", now, &cfg());
        assert!(!c.is_open() && !c.is_closed());
        assert_eq!(frames(&out), [(OP_CLOSE, false, close_payload(1001, "going away"))]);
        assert_eq!(c.send_message(&mut out, MessageKind::Text, b"x"), Err(SendError::Closed));
        assert_eq!(c.send_ping(&mut out, now), Err(SendError::Closed));
        assert_eq!(c.poll_timeout(&cfg()), Some(now + Duration::from_secs(5)));
        out.clear();
        // data after our Close is ignored; the peer's Close finishes it with our code
        let mut b = cframe(true, OP_CONTINUATION, b"tial");
        b.extend(cframe(true, OP_TEXT, b"ignored"));
        b.extend(cframe(true, OP_PING, b"ignored"));
        b.extend(cframe(true, OP_CLOSE, &close_payload(1001, "")));
        let evs = feed(&mut c, &b, &mut out, now, &cfg());
        assert_eq!(
            evs,
            [Ev::Closed(CloseInfo {
                code: 1001,
                reason: "going away".into(),
                initiator: Initiator::Local,
                cause: CloseCause::LocalClose
            })]
        );
        assert!(out.is_empty(), "no second Close, no pong");
        assert!(c.is_closed());
        assert_eq!(c.buffered_capacity(), 0);
        assert_eq!(c.handle_timeout(now + Duration::from_secs(60), &mut out, &cfg()), None);
    }

    #[test]
    fn close_timeout() {
        let t0 = Instant::now();
        let mut c = server(t0);
        let mut out = Vec::new();
        c.close(&mut out, 1000, "done", t0, &cfg());
        assert!(c.handle_timeout(t0 + Duration::from_secs(4), &mut out, &cfg()).is_none());
        out.clear();
        match c.handle_timeout(t0 + Duration::from_secs(5), &mut out, &cfg()) {
            Some(Event::Closed(i)) => {
                assert_eq!(
                    i,
                    CloseInfo {
                        code: 1000,
                        reason: "close timeout".into(),
                        initiator: Initiator::Local,
                        cause: CloseCause::CloseTimeout
                    }
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
        assert!(c.is_closed());
        assert!(c.handle_timeout(t0 + Duration::from_secs(50), &mut out, &cfg()).is_none());
        assert_eq!(c.handle_eof("late"), None);
    }

    #[test]
    fn eof_is_abnormal() {
        let t0 = Instant::now();
        let mut c = server(t0);
        let mut out = Vec::new();
        feed(&mut c, &cframe(true, OP_TEXT, b"abc")[..4], &mut out, t0, &cfg());
        assert!(c.buffered_capacity() > 0);
        assert_eq!(
            c.handle_eof("connection reset"),
            Some(CloseInfo {
                code: 1006,
                reason: "connection reset".into(),
                initiator: Initiator::Abnormal,
                cause: CloseCause::Abnormal
            })
        );
        assert_eq!(c.buffered_capacity(), 0);
        assert_eq!(c.handle_eof("again"), None);
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// `PingMode::Idle`: once the first ping went out (at its own time), whatever the peer sends moves the
    /// next ping one interval past it; a silent peer is pinged and timed out as in `Interval`. The same
    /// script in `Interval` pings on the fixed cadence.
    #[test]
    fn idle_mode_pings_only_after_an_interval_without_a_frame() {
        let t0 = Instant::now();
        let idle = ProtoConfig { ping_mode: PingMode::Idle, ..cfg() };
        for (mode, cfg) in [("idle", idle), ("interval", cfg())] {
            let mut c = Connection::new(Role::Server, t0, &cfg, 1);
            let mut out = Vec::new();
            // A message at 15 s does not move the first ping (it keeps its place in the interval).
            assert_eq!(feed(&mut c, &cframe(true, OP_TEXT, b"hi"), &mut out, t0 + secs(15), &cfg).len(), 1);
            assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(20)), "{mode}");
            assert!(matches!(c.handle_timeout(t0 + secs(20), &mut out, &cfg), Some(Event::PingSent)), "{mode}");
            feed(&mut c, &cframe(true, OP_PONG, &1u64.to_be_bytes()), &mut out, t0 + secs(20), &cfg);
            // From then on a message at 35 s and the peer's own ping at 50 s each put the next ping an
            // interval away in idle mode; interval mode pings at 40 s and 60 s regardless.
            feed(&mut c, &cframe(true, OP_TEXT, b"hi"), &mut out, t0 + secs(35), &cfg);
            out.clear();
            let pinged_at_40 = matches!(c.handle_timeout(t0 + secs(40), &mut out, &cfg), Some(Event::PingSent));
            assert_eq!(pinged_at_40, mode == "interval", "{mode}");
            if mode == "interval" {
                continue;
            }
            assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(55)));
            feed(&mut c, &cframe(true, OP_PING, b"p"), &mut out, t0 + secs(50), &cfg);
            assert_eq!(frames(&out), [(OP_PONG, false, b"p".to_vec())]);
            out.clear();
            assert!(c.handle_timeout(t0 + secs(55), &mut out, &cfg).is_none(), "pinged a peer heard at 50 s");
            // Then silence: the ping comes one interval after the peer was last heard, and the pong deadline
            // after it as always.
            assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(70)));
            assert!(c.handle_timeout(t0 + secs(69), &mut out, &cfg).is_none());
            assert!(matches!(c.handle_timeout(t0 + secs(70), &mut out, &cfg), Some(Event::PingSent)));
            assert_eq!(frames(&out)[0].0, OP_PING);
            assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(80)));
            assert!(matches!(
                c.handle_timeout(t0 + secs(80), &mut out, &cfg),
                Some(Event::Closed(CloseInfo { code: 1011, .. }))
            ));
        }
    }

    /// In `PingMode::Idle` a frame trickled a byte at a time is not a sign of life until `PROGRESS_AS_LIFE`
    /// bytes of it came: a peer that only trickles is still pinged, and closed at the pong deadline.
    #[test]
    fn idle_mode_does_not_count_a_trickle_as_talk() {
        let t0 = Instant::now();
        let cfg = ProtoConfig { ping_mode: PingMode::Idle, ..cfg() };
        let pinged = |at: u64| {
            let mut c = Connection::new(Role::Server, t0, &cfg, 1);
            let mut out = Vec::new();
            c.send_ping(&mut out, t0).unwrap();
            feed(&mut c, &cframe(true, OP_PONG, &1u64.to_be_bytes()), &mut out, t0 + secs(at), &cfg);
            c
        };
        let mut c = pinged(0);
        let mut out = Vec::new();
        let frame = cframe(true, OP_BINARY, &[7u8; 100]);
        // The header at 1 s (a frame began: a sign of life), then one byte a second.
        feed(&mut c, &frame[..8], &mut out, t0 + secs(1), &cfg);
        for i in 0..25 {
            feed(&mut c, &frame[8 + i..9 + i], &mut out, t0 + secs(2 + i as u64), &cfg);
        }
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(21)));
        assert!(matches!(c.handle_timeout(t0 + secs(21), &mut out, &cfg), Some(Event::PingSent)));
        // Enough bytes of one frame do count.
        let big = cframe(true, OP_BINARY, &vec![7u8; 40 << 10]);
        let mut d = pinged(0);
        feed(&mut d, &big[..8], &mut out, t0 + secs(1), &cfg);
        feed(&mut d, &big[8..8 + (20 << 10)], &mut out, t0 + secs(10), &cfg);
        assert_eq!(d.poll_timeout(&cfg), Some(t0 + secs(30)));
    }

    #[test]
    fn keepalive_ping_and_pong_timeout() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut c = server(t0);
        let mut out = Vec::new();
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(20)));
        assert!(c.handle_timeout(t0 + secs(19), &mut out, &cfg).is_none());
        assert!(matches!(c.handle_timeout(t0 + secs(20), &mut out, &cfg), Some(Event::PingSent)));
        let f = frames(&out);
        assert_eq!(f, [(OP_PING, false, 1u64.to_be_bytes().to_vec())]);
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(30)));
        out.clear();
        assert!(c.handle_timeout(t0 + secs(29), &mut out, &cfg).is_none());
        match c.handle_timeout(t0 + secs(30), &mut out, &cfg) {
            Some(Event::Closed(i)) => {
                assert_eq!(
                    i,
                    CloseInfo {
                        code: 1011,
                        reason: "pong timeout".into(),
                        initiator: Initiator::Local,
                        cause: CloseCause::PongTimeout
                    }
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(frames(&out), [(OP_CLOSE, false, close_payload(1011, "pong timeout"))]);
        assert!(c.is_closed());
        assert_eq!(c.poll_timeout(&cfg), None);
    }

    #[test]
    fn any_inbound_frame_cancels_pong_deadline() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut c = server(t0);
        let mut out = Vec::new();
        assert!(matches!(c.handle_timeout(t0 + secs(20), &mut out, &cfg), Some(Event::PingSent)));
        // a data frame (not a pong) at t0+25
        let evs = feed(&mut c, &cframe(true, OP_TEXT, b"busy"), &mut out, t0 + secs(25), &cfg);
        assert_eq!(evs.len(), 1);
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(40)));
        assert!(c.handle_timeout(t0 + secs(35), &mut out, &cfg).is_none());
        // the matching pong still yields an rtt
        let evs = feed(&mut c, &cframe(true, OP_PONG, &1u64.to_be_bytes()), &mut out, t0 + secs(26), &cfg);
        assert_eq!(evs, [Ev::Pong(1u64.to_be_bytes().to_vec(), Some(secs(6)))]);
        // a second pong with the same payload has no rtt
        let evs = feed(&mut c, &cframe(true, OP_PONG, &1u64.to_be_bytes()), &mut out, t0 + secs(27), &cfg);
        assert_eq!(evs, [Ev::Pong(1u64.to_be_bytes().to_vec(), None)]);
        // next ping at last ping + interval
        out.clear();
        assert!(matches!(c.handle_timeout(t0 + secs(40), &mut out, &cfg), Some(Event::PingSent)));
        assert_eq!(frames(&out), [(OP_PING, false, 2u64.to_be_bytes().to_vec())]);
        let evs = feed(&mut c, &cframe(true, OP_PONG, &2u64.to_be_bytes()), &mut out, t0 + secs(41), &cfg);
        assert_eq!(evs, [Ev::Pong(2u64.to_be_bytes().to_vec(), Some(secs(1)))]);
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(60)));
        // a partial frame counts as a sign of life too
        assert!(matches!(c.handle_timeout(t0 + secs(60), &mut out, &cfg), Some(Event::PingSent)));
        feed(&mut c, &cframe(true, OP_BINARY, &[0; 50])[..10], &mut out, t0 + secs(61), &cfg);
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(80)));
    }

    #[test]
    fn an_announced_length_is_not_reserved_up_front() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut c = server(t0);
        let mut out = Vec::new();
        let frame = cframe(true, OP_BINARY, &vec![7u8; (16 << 20) - 1]);
        feed(&mut c, &frame[..114], &mut out, t0, &cfg);
        assert!(c.buffered_capacity() < 4096, "a header alone reserved {} bytes", c.buffered_capacity());
        // As the bytes come, in receive-buffer chunks, the buffer grows with them, never past the frame.
        let mut evs = Vec::new();
        for chunk in frame[114..].chunks(4096) {
            evs.extend(feed(&mut c, chunk, &mut out, t0, &cfg));
            assert!(c.buffered_capacity() <= frame.len());
        }
        assert!(matches!(evs.as_slice(), [Ev::Msg(MessageKind::Binary, p)] if p.len() == (16 << 20) - 1));
    }

    #[test]
    fn a_frame_trickled_after_a_ping_is_no_pong() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut c = server(t0);
        let mut out = Vec::new();
        // A 1 MB frame whose header (and a byte) came before the ping.
        let frame = cframe(true, OP_BINARY, &vec![7u8; 1 << 20]);
        feed(&mut c, &frame[..15], &mut out, t0 + secs(1), &cfg);
        assert!(matches!(c.handle_timeout(t0 + secs(20), &mut out, &cfg), Some(Event::PingSent)));
        // A byte a second after the ping: still due at the pong deadline.
        for (i, at) in (21..30).enumerate() {
            feed(&mut c, &frame[15 + i..16 + i], &mut out, t0 + secs(at), &cfg);
            assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(30)), "a trickled byte moved the pong deadline");
        }
        assert!(matches!(c.handle_timeout(t0 + secs(30), &mut out, &cfg), Some(Event::Closed(_))));

        // At an honest speed (PROGRESS_AS_LIFE bytes after the ping) the frame keeps its connection.
        let mut c = server(t0);
        feed(&mut c, &frame[..15], &mut out, t0 + secs(1), &cfg);
        assert!(matches!(c.handle_timeout(t0 + secs(20), &mut out, &cfg), Some(Event::PingSent)));
        let chunk = PROGRESS_AS_LIFE as usize;
        feed(&mut c, &frame[15..15 + chunk], &mut out, t0 + secs(25), &cfg);
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(40)), "steady progress counts as a sign of life");
        // And the frame's end counts too.
        assert!(matches!(c.handle_timeout(t0 + secs(40), &mut out, &cfg), Some(Event::PingSent)));
        let evs = feed(&mut c, &frame[15 + chunk..], &mut out, t0 + secs(41), &cfg);
        assert!(matches!(evs.as_slice(), [Ev::Msg(MessageKind::Binary, p)] if p.len() == 1 << 20));
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(60)));
    }

    #[test]
    fn app_ping_and_no_keepalive() {
        let t0 = Instant::now();
        let cfg = ProtoConfig { ping_interval: None, ..cfg() };
        let mut c = Connection::new(Role::Server, t0, &cfg, 1);
        let mut out = Vec::new();
        assert_eq!(c.poll_timeout(&cfg), None);
        assert!(c.handle_timeout(t0 + secs(1000), &mut out, &cfg).is_none());
        c.send_ping(&mut out, t0).unwrap();
        assert_eq!(c.poll_timeout(&cfg), Some(t0 + secs(10)));
        let p = frames(&out)[0].2.clone();
        let evs = feed(&mut c, &cframe(true, OP_PONG, &p), &mut out, t0 + Duration::from_millis(3), &cfg);
        assert_eq!(evs, [Ev::Pong(p, Some(Duration::from_millis(3)))]);
        assert_eq!(c.poll_timeout(&cfg), None);
    }

    #[test]
    fn client_role_masks_and_rejects_masked_input() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut c = Connection::new(Role::Client, t0, &cfg, 42);
        let mut out = Vec::new();
        c.send_message(&mut out, MessageKind::Text, b"hello").unwrap();
        c.send_message(&mut out, MessageKind::Text, b"hello").unwrap();
        let masks: Vec<_> = {
            let h1 = parse_header(&out).unwrap().unwrap();
            let h2 = parse_header(&out[h1.header_len + 5..]).unwrap().unwrap();
            vec![h1.mask.unwrap(), h2.mask.unwrap()]
        };
        assert_ne!(masks[0], masks[1]);
        assert_eq!(frames(&out), [(OP_TEXT, true, b"hello".to_vec()), (OP_TEXT, true, b"hello".to_vec())]);
        out.clear();
        // a server frame (unmasked) is accepted; a ping is answered with a masked pong
        let mut b = Vec::new();
        write_frame(&mut b, true, OP_BINARY, None, b"srv");
        write_frame(&mut b, true, OP_PING, None, b"pp");
        let evs = feed(&mut c, &b, &mut out, t0, &cfg);
        assert_eq!(evs, [Ev::Msg(MessageKind::Binary, b"srv".to_vec()), Ev::Ping(b"pp".to_vec())]);
        assert_eq!(frames(&out), [(OP_PONG, true, b"pp".to_vec())]);
        out.clear();
        c.close(&mut out, 1000, "bye", t0, &cfg);
        assert_eq!(frames(&out), [(OP_CLOSE, true, close_payload(1000, "bye"))]);
        // masked input -> 1002
        let mut c = Connection::new(Role::Client, t0, &cfg, 7);
        let mut out = Vec::new();
        let evs = feed(&mut c, &cframe(true, OP_TEXT, b"x"), &mut out, t0, &cfg);
        assert!(closed(1002, Initiator::Local)(&evs[0]));
        let f = frames(&out);
        assert_eq!(f[0].0, OP_CLOSE);
        assert!(f[0].1, "client's close is masked");
    }

    #[test]
    fn server_output_never_masked() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut c = server(t0);
        let mut out = Vec::new();
        c.send_message(&mut out, MessageKind::Binary, &[1; 70_000]).unwrap();
        c.send_ping(&mut out, t0).unwrap();
        feed(&mut c, &cframe(true, OP_PING, b"x"), &mut out, t0, &cfg);
        c.handle_timeout(t0 + secs(20), &mut out, &cfg);
        c.close(&mut out, 1000, "", t0, &cfg);
        let f = frames(&out);
        assert_eq!(f.len(), 5);
        assert!(f.iter().all(|(_, masked, _)| !masked));
    }

    #[test]
    fn idle_connection_holds_no_heap() {
        let t0 = Instant::now();
        let mut c = server(t0);
        let mut out = Vec::new();
        let bytes = fragmented_stream();
        let cuts: Vec<usize> = (1..).map(|i| i * 7).take_while(|&c| c < bytes.len()).collect();
        let evs = feed_chunks(&mut c, &bytes, &cuts, &mut out, t0);
        assert_eq!(evs, fragmented_expected());
        assert_eq!(c.buffered_capacity(), 0);
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    struct Msg {
        binary: bool,
        payload: Vec<u8>,
        /// Fragment sizes (the rest goes into the final fragment).
        frags: Vec<usize>,
        ping_between: bool,
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        (
            any::<bool>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 65530..65600),
            ],
            ".{0,40}",
            proptest::collection::vec(0usize..50, 0..4),
            any::<bool>(),
        )
            .prop_map(|(binary, bin, text, frags, ping_between)| Msg {
                binary,
                payload: if binary { bin } else { text.into_bytes() },
                frags,
                ping_between,
            })
    }

    fn encode(msgs: &[Msg], mask_seed: u8) -> (Vec<u8>, Vec<Ev>) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mask = Some([mask_seed, i as u8, 3, 4]);
            let mut rest: &[u8] = &m.payload;
            let mut first = true;
            for &f in &m.frags {
                let n = f.min(rest.len());
                let op = if !first {
                    OP_CONTINUATION
                } else if m.binary {
                    OP_BINARY
                } else {
                    OP_TEXT
                };
                write_frame(&mut bytes, false, op, mask, &rest[..n]);
                rest = &rest[n..];
                first = false;
                if m.ping_between {
                    write_frame(&mut bytes, true, OP_PING, mask, &[i as u8]);
                    expected.push(Ev::Ping(vec![i as u8]));
                }
            }
            let op = if !first {
                OP_CONTINUATION
            } else if m.binary {
                OP_BINARY
            } else {
                OP_TEXT
            };
            write_frame(&mut bytes, true, op, mask, rest);
            let kind = if m.binary { MessageKind::Binary } else { MessageKind::Text };
            expected.push(Ev::Msg(kind, m.payload.clone()));
        }
        (bytes, expected)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn random_splits_same_messages(
            msgs in proptest::collection::vec(msg_strategy(), 1..6),
            mut cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
            seed in any::<u8>(),
        ) {
            let (bytes, expected) = encode(&msgs, seed);
            let t0 = Instant::now();
            let mut c = server(t0);
            let mut out_whole = Vec::new();
            let whole = feed(&mut c, &bytes, &mut out_whole, t0, &cfg());
            prop_assert_eq!(&whole, &expected);
            let mut cut_pos: Vec<usize> = cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
            cut_pos.sort_unstable();
            let mut c = server(t0);
            let mut out_split = Vec::new();
            let split = feed_chunks(&mut c, &bytes, &cut_pos, &mut out_split, t0);
            prop_assert_eq!(&split, &expected);
            prop_assert_eq!(out_whole, out_split);
            prop_assert_eq!(c.buffered_capacity(), 0);
        }

        #[test]
        fn garbage_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
            client in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let cfg = ProtoConfig { max_message_size: 1 << 20, ..cfg() };
            let role = if client { Role::Client } else { Role::Server };
            let mut c = Connection::new(role, t0, &cfg, 3);
            let mut out = Vec::new();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut prev = 0;
            for cut in cuts.into_iter().chain(std::iter::once(data.len())) {
                let cut = cut.clamp(prev, data.len());
                let mut chunk = data[prev..cut].to_vec();
                let mut input = Input::new(&mut chunk);
                let mut closes = 0;
                while let Some(e) = c.poll_event(&mut input, &mut out, t0, &cfg) {
                    if matches!(e, Event::Closed(_)) {
                        closes += 1;
                    }
                }
                prop_assert!(closes <= 1);
                prev = cut;
            }
            let _ = c.handle_timeout(t0 + secs(100), &mut out, &cfg);
            let _ = c.handle_eof("eof");
            prop_assert!(c.is_closed());
        }

        #[test]
        fn garbage_after_valid_prefix_never_panics(
            msgs in proptest::collection::vec(msg_strategy(), 0..3),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let (mut bytes, _) = encode(&msgs, 1);
            bytes.extend(tail);
            let t0 = Instant::now();
            let mut c = server(t0);
            let cuts: Vec<usize> = (1..).map(|i| i * 13).take_while(|&c| c < bytes.len()).collect();
            feed_chunks(&mut c, &bytes, &cuts, &mut Vec::new(), t0);
        }
    }

    // --- permessage-deflate ------------------------------------------------------------------------------

    fn deflate_server(now: Instant) -> Connection {
        let mut c = server(now);
        c.writer.set_deflate(PerConn::shared(15));
        c
    }

    /// `payload` compressed the way a peer would (no trailing 00 00 ff ff).
    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut codec = Codec::new(0);
        codec.compress_shared(payload).unwrap().to_vec()
    }

    /// A client frame with RSV1 set.
    fn cframe_rsv1(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = cframe(fin, opcode, payload);
        v[0] |= 0x40;
        v
    }

    fn feed_deflate(bytes: &[u8], cfg: &ProtoConfig) -> (Vec<Ev>, Vec<u8>) {
        let now = Instant::now();
        let mut c = deflate_server(now);
        let mut out = Vec::new();
        let evs = feed(&mut c, bytes, &mut out, now, cfg);
        (evs, out)
    }

    #[test]
    fn compressed_messages_are_inflated() {
        let text = "deflate me ".repeat(20);
        let z = deflated(text.as_bytes());
        // One frame, and the same message in three fragments (RSV1 on the first only).
        let mut bytes = cframe_rsv1(true, OP_TEXT, &z);
        let (a, b) = z.split_at(z.len() / 3);
        let (b, c) = b.split_at(b.len() / 2);
        bytes.extend(cframe_rsv1(false, OP_TEXT, a));
        bytes.extend(cframe(false, OP_CONTINUATION, b));
        bytes.extend(cframe(true, OP_CONTINUATION, c));
        // An uncompressed message between them is fine too.
        bytes.extend(cframe(true, OP_BINARY, b"plain"));
        let (evs, _) = feed_deflate(&bytes, &cfg());
        let msg = Ev::Msg(MessageKind::Text, text.clone().into_bytes());
        assert_eq!(evs, vec![msg.clone(), msg, Ev::Msg(MessageKind::Binary, b"plain".to_vec())]);
        // Split anywhere.
        let now = Instant::now();
        let mut conn = deflate_server(now);
        let evs = feed_chunks(&mut conn, &bytes, &[1, 5, 30, 31, 60], &mut Vec::new(), now);
        assert_eq!(evs.len(), 3);
    }

    #[test]
    fn rsv1_rules() {
        let z = deflated(b"hello hello hello hello hello hello hello hello hello hello hello");
        // Not negotiated: 1002.
        expect_fail(&cframe_rsv1(true, OP_TEXT, &z), 1002);
        let fail_with = |bytes: &[u8], code: u16| {
            let (evs, _) = feed_deflate(bytes, &cfg());
            assert!(evs.last().is_some_and(closed(code, Initiator::Local)), "{evs:?}");
        };
        // Negotiated: not on control frames, not on continuations, never RSV2 / RSV3.
        fail_with(&cframe_rsv1(true, OP_PING, b""), 1002);
        let mut cont = cframe_rsv1(false, OP_TEXT, &z[..3]);
        cont.extend(cframe_rsv1(true, OP_CONTINUATION, &z[3..]));
        fail_with(&cont, 1002);
        let mut rsv2 = cframe(true, OP_TEXT, b"x");
        rsv2[0] |= 0x20;
        fail_with(&rsv2, 1002);
        // Invalid UTF-8 after inflating: 1007; garbage: 1007.
        fail_with(&cframe_rsv1(true, OP_TEXT, &deflated(&[0xff; 100])), 1007);
        fail_with(&cframe_rsv1(true, OP_BINARY, &[0xff; 20]), 1007);
    }

    #[test]
    fn inflating_past_the_limit_is_1009() {
        let bomb = deflated(&vec![b'a'; 8 << 20]);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let small = ProtoConfig { max_message_size: 1 << 20, ..cfg() };
        let (evs, out) = feed_deflate(&cframe_rsv1(true, OP_BINARY, &bomb), &small);
        assert!(evs.last().is_some_and(closed(1009, Initiator::Local)), "{evs:?}");
        assert_eq!(&frames(&out)[0].2[..2], &1009u16.to_be_bytes());
    }

    #[test]
    fn sent_messages_are_compressed_and_masked() {
        let now = Instant::now();
        let text = "compress me please ".repeat(10);
        for role in [Role::Server, Role::Client] {
            let mut c = Connection::new(role, now, &cfg(), 7);
            c.writer.set_deflate(PerConn::shared(15));
            let mut out = Vec::new();
            c.send_message(&mut out, MessageKind::Text, text.as_bytes()).unwrap();
            c.send_message(&mut out, MessageKind::Text, b"short").unwrap();
            let h = parse_header(&out).unwrap().unwrap();
            assert_eq!(h.rsv, RSV1);
            assert_eq!(h.mask.is_some(), role == Role::Client);
            let mut payload = out[h.header_len..h.header_len + h.payload_len as usize].to_vec();
            if let Some(m) = h.mask {
                fastwebsockets::unmask(&mut payload, m);
            }
            let mut inflated = Vec::new();
            Codec::new(0).inflate(None, &payload, 1 << 20, &mut inflated).unwrap();
            assert_eq!(inflated, text.as_bytes());
            // Below the threshold: plain.
            let rest = &out[h.header_len + h.payload_len as usize..];
            assert_eq!(parse_header(rest).unwrap().unwrap().rsv, 0);
        }
    }
}
