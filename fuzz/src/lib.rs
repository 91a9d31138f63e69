//! What the fuzz targets share: the driver of the connection state machine (`conn_server`, `conn_client`) and
//! the checks on the bytes a connection writes.
//!
//! The driver plays a [`Script`]: the peer's bytes (raw, or frames built from arbitrary fields) go onto a wire
//! and are delivered in chunks of arbitrary sizes, interleaved with clock steps, timer runs, the application's
//! sends, pings and closes, and TCP EOF. After every step it checks what must always hold:
//!
//! - every byte written is part of a well-formed frame: RSV bits clear, a known opcode, masked exactly in the
//!   client role, control frames final and at most 125 bytes, a Close payload empty or a sendable code plus a
//!   UTF-8 reason, Text payloads UTF-8, and nothing at all after our Close;
//! - `Closed` is reported exactly once, with a code that fits its cause, and nothing happens after it;
//! - a message is at most `max_message_size` bytes and a Text message is UTF-8;
//! - the receive buffers stay within one maximum-size frame (twice, for `Vec` growth) and are freed when the
//!   connection is closed;
//! - `handle_timeout` acts exactly when `poll_timeout` says something is due, and a keepalive ping moves the
//!   next deadline past `now` (no busy loop);
//! - the result does not depend on how the wire was chopped: the script is played a second time with every
//!   chunk delivered one byte at a time, and the events and written bytes must be identical.

use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use tether::proto::frame::{
    parse_header, write_frame, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,
};
use tether::proto::{
    CloseCause, CloseInfo, Connection, Event, Initiator, Input, MessageKind, PingMode, ProtoConfig, Role,
};

/// A close code an endpoint may put on the wire (RFC 6455 section 7.4; 1004, 1005, 1006 and 1015 never).
pub fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A connection's life: its configuration, then what happens to it.
///
/// Decoded front to back by a hand-written [`Arbitrary`] impl (little-endian integers, each variable-length
/// field preceded by its length) rather than the derived one, so that the seed corpora can be written as
/// plain byte strings (fuzz/seeds.py): `max_message_size`, `ping_interval_ms`, `pong_timeout_ms`,
/// `close_timeout_ms` (u16 each), `seed` (u64; its low bit picks the ping mode), then operations until the
/// input ends, each a tag byte (modulo 9, in the order of [`Op`]) and its fields.
#[derive(Debug)]
pub struct Script {
    /// Small limits, so the 1009 paths are reachable with small inputs.
    max_message_size: u16,
    /// Milliseconds; 0 = no keepalive pings (the engine's profiles map a zero interval to `None`).
    ping_interval_ms: u16,
    pong_timeout_ms: u16,
    close_timeout_ms: u16,
    seed: u64,
    ops: Vec<Op>,
}

#[derive(Debug)]
enum Op {
    /// Raw bytes from the peer onto the wire (delivered by `Deliver`). Encoded: len u8, bytes.
    Bytes(Vec<u8>),
    /// A frame from the peer: `head` is the first header byte as is (FIN, RSV, opcode), masked the way the
    /// peer's role requires unless `wrong_mask`. Encoded: head u8, flags u8 (bit 0: wrong_mask), key
    /// [u8; 4], len u16, payload.
    Frame { head: u8, wrong_mask: bool, key: [u8; 4], payload: Vec<u8> },
    /// The next `n` bytes of the wire arrive as one input (0: everything pending). Encoded: u16.
    Deliver(u16),
    /// The clock moves `ms` forward; the timers run as the shard's wheel would run them. Encoded: u16.
    Advance(u16),
    /// `handle_timeout` now, due or not (the wheel rounds deadlines to its ticks).
    Tick,
    /// The application sends a message (Text payloads are made UTF-8, as `Message::Text(&str)` guarantees).
    /// Encoded: flags u8 (bit 0: text), len u16, payload.
    Send { text: bool, payload: Vec<u8> },
    /// The application pings.
    Ping,
    /// The application closes. Encoded: code u16, len u8, reason (made UTF-8).
    Close { code: u16, reason: String },
    /// TCP EOF from the peer.
    Eof,
}

/// `len` bytes, or what is left when fewer.
fn bytes(u: &mut Unstructured<'_>, len: usize) -> Vec<u8> {
    let len = len.min(u.len());
    u.bytes(len).map(<[u8]>::to_vec).unwrap_or_default()
}

impl<'a> Arbitrary<'a> for Script {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut script = Script {
            max_message_size: u.arbitrary()?,
            ping_interval_ms: u.arbitrary()?,
            pong_timeout_ms: u.arbitrary()?,
            close_timeout_ms: u.arbitrary()?,
            seed: u.arbitrary()?,
            ops: Vec::new(),
        };
        while !u.is_empty() {
            script.ops.push(Op::arbitrary(u)?);
        }
        Ok(script)
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? % 9 {
            0 => {
                let len = u8::arbitrary(u)? as usize;
                Op::Bytes(bytes(u, len))
            }
            1 => {
                let head = u.arbitrary()?;
                let wrong_mask = u8::arbitrary(u)? & 1 == 1;
                let key = u.arbitrary()?;
                let len = u16::arbitrary(u)? as usize;
                Op::Frame { head, wrong_mask, key, payload: bytes(u, len) }
            }
            2 => Op::Deliver(u.arbitrary()?),
            3 => Op::Advance(u.arbitrary()?),
            4 => Op::Tick,
            5 => {
                let text = u8::arbitrary(u)? & 1 == 1;
                let len = u16::arbitrary(u)? as usize;
                Op::Send { text, payload: bytes(u, len) }
            }
            6 => Op::Ping,
            7 => {
                let code = u.arbitrary()?;
                let len = u8::arbitrary(u)? as usize;
                Op::Close { code, reason: String::from_utf8_lossy(&bytes(u, len)).into_owned() }
            }
            _ => Op::Eof,
        })
    }
}

/// An event, owned, for comparing two runs.
#[derive(Debug, PartialEq)]
enum Ev {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>, Option<Duration>),
    PingSent,
    Closed(CloseInfo),
    SendRefused,
}

/// Plays `script` on a connection in `role`, checking every step, once as written and once with every
/// input chopped into single bytes; panics on any violation.
pub fn run(role: Role, script: &Script) {
    let start = Instant::now();
    let whole = Player::new(role, script, start, false).play(script);
    let bytewise = Player::new(role, script, start, true).play(script);
    assert_eq!(whole.0, bytewise.0, "events depend on how the input was chopped");
    assert!(whole.1 == bytewise.1, "written bytes depend on how the input was chopped");
}

struct Player {
    conn: Connection,
    cfg: ProtoConfig,
    role: Role,
    start: Instant,
    now: Instant,
    /// Deliver inputs one byte at a time.
    bytewise: bool,
    /// The peer's bytes; `delivered` of them have been handed to the connection.
    wire: Vec<u8>,
    delivered: usize,
    /// Everything the connection wrote, and how much of it has been checked.
    out: Vec<u8>,
    checked: usize,
    /// We wrote a Close frame.
    close_written: bool,
    events: Vec<Ev>,
    closed: bool,
    /// A ping (keepalive or the application's) was sent: a pong may carry an rtt.
    pinged: bool,
}

impl Player {
    fn new(role: Role, s: &Script, start: Instant, bytewise: bool) -> Player {
        let cfg = ProtoConfig {
            max_message_size: s.max_message_size as usize,
            ping_interval: (s.ping_interval_ms > 0).then(|| Duration::from_millis(s.ping_interval_ms as u64)),
            // The seed's low bit picks the ping mode, so the committed corpora exercise both.
            ping_mode: if s.seed & 1 == 1 { PingMode::Idle } else { PingMode::Interval },
            pong_timeout: Duration::from_millis(s.pong_timeout_ms as u64),
            close_timeout: Duration::from_millis(s.close_timeout_ms as u64),
        };
        Player {
            conn: Connection::new(role, start, &cfg, s.seed),
            cfg,
            role,
            start,
            now: start,
            bytewise,
            wire: Vec::new(),
            delivered: 0,
            out: Vec::new(),
            checked: 0,
            close_written: false,
            events: Vec::new(),
            closed: false,
            pinged: false,
        }
    }

    fn play(mut self, script: &Script) -> (Vec<Ev>, Vec<u8>) {
        for op in &script.ops {
            self.step(op);
            self.check_out();
            self.check_buffers();
        }
        // Whatever is still on the wire arrives at the end.
        self.deliver(usize::MAX);
        self.check_out();
        self.check_buffers();
        (self.events, self.out)
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Bytes(bytes) => self.wire.extend_from_slice(bytes),
            Op::Frame { head, wrong_mask, key, payload } => {
                // The peer of a server is a client: it masks.
                let masked = (self.role == Role::Server) != *wrong_mask;
                let at = self.wire.len();
                write_frame(&mut self.wire, false, 0, masked.then_some(*key), payload);
                self.wire[at] = *head;
            }
            Op::Deliver(n) => self.deliver(if *n == 0 { usize::MAX } else { *n as usize }),
            Op::Advance(ms) => {
                self.now += Duration::from_millis(*ms as u64);
                self.run_timers();
            }
            Op::Tick => self.tick(),
            Op::Send { text, payload } => {
                let (kind, payload) = if *text {
                    (MessageKind::Text, String::from_utf8_lossy(payload).into_owned().into_bytes())
                } else {
                    (MessageKind::Binary, payload.clone())
                };
                let open = self.conn.is_open();
                let before = self.out.len();
                match self.conn.send_message(&mut self.out, kind, &payload) {
                    Ok(()) => assert!(open, "sent after close"),
                    Err(_) => {
                        assert!(!open, "send refused on an open connection");
                        assert_eq!(self.out.len(), before, "a refused send wrote bytes");
                        self.events.push(Ev::SendRefused);
                    }
                }
            }
            Op::Ping => {
                let open = self.conn.is_open();
                let before = self.out.len();
                match self.conn.send_ping(&mut self.out, self.now) {
                    Ok(()) => {
                        assert!(open);
                        self.pinged = true;
                    }
                    Err(_) => {
                        assert!(!open);
                        assert_eq!(self.out.len(), before);
                        self.events.push(Ev::SendRefused);
                    }
                }
            }
            Op::Close { code, reason } => {
                let open = self.conn.is_open();
                let before = self.out.len();
                self.conn.close(&mut self.out, *code, reason, self.now, &self.cfg);
                if open {
                    assert!(!self.conn.is_open() && !self.conn.is_closed(), "close did not start the handshake");
                } else {
                    assert_eq!(self.out.len(), before, "close wrote twice");
                }
            }
            Op::Eof => {
                let info = self.conn.handle_eof("eof");
                match info {
                    Some(info) => {
                        assert_eq!(
                            (info.code, info.initiator, info.cause),
                            (1006, Initiator::Abnormal, CloseCause::Abnormal)
                        );
                        self.closed_event(info);
                    }
                    None => assert!(self.closed, "handle_eof on a live connection returned nothing"),
                }
                assert!(self.conn.is_closed());
            }
        }
    }

    /// Hands the next `n` wire bytes to the connection (one input, or one per byte) and drains its events.
    fn deliver(&mut self, n: usize) {
        let end = self.delivered.saturating_add(n).min(self.wire.len());
        let mut chunk = self.wire[self.delivered..end].to_vec();
        self.delivered = end;
        if self.bytewise {
            for b in chunk {
                self.feed(&mut [b]);
            }
        } else {
            self.feed(&mut chunk);
        }
    }

    fn feed(&mut self, data: &mut [u8]) {
        let len = data.len();
        let mut input = Input::new(data);
        let mut polls = 0;
        loop {
            polls += 1;
            assert!(polls <= len + 2, "poll_event keeps returning events");
            let max = self.cfg.max_message_size;
            let pinged = self.pinged;
            let since_start = self.now - self.start;
            let Some(event) = self.conn.poll_event(&mut input, &mut self.out, self.now, &self.cfg) else { break };
            let ev = match event {
                Event::Message { kind, payload } => {
                    assert!(payload.len() <= max, "message of {} bytes over the {max} limit", payload.len());
                    if kind == MessageKind::Text {
                        std::str::from_utf8(payload).expect("a Text message that is not UTF-8");
                    }
                    Ev::Message(kind, payload.to_vec())
                }
                Event::Ping(payload) => {
                    assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
                    Ev::Ping(payload.to_vec())
                }
                Event::Pong { payload, rtt } => {
                    assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
                    if let Some(rtt) = rtt {
                        assert!(pinged && rtt <= since_start, "rtt {rtt:?} without a ping");
                    }
                    Ev::Pong(payload.to_vec(), rtt)
                }
                Event::PingSent => panic!("poll_event returned PingSent"),
                Event::Closed(info) => {
                    check_close_info(&info);
                    self.closed_event(info);
                    continue;
                }
            };
            assert!(!self.closed, "an event after Closed: {ev:?}");
            self.events.push(ev);
        }
        assert!(input.is_empty(), "poll_event left input unread");
    }

    /// Runs due timers the way the shard does: whenever `poll_timeout` is due.
    fn run_timers(&mut self) {
        for _ in 0..3 {
            match self.conn.poll_timeout(&self.cfg) {
                Some(due) if due <= self.now => self.tick(),
                _ => return,
            }
        }
        let due = self.conn.poll_timeout(&self.cfg);
        assert!(due.is_none_or(|d| d > self.now), "timers still due after three runs: a busy loop");
    }

    fn tick(&mut self) {
        let due = self.conn.poll_timeout(&self.cfg);
        let is_due = due.is_some_and(|d| d <= self.now);
        assert!(!self.closed || due.is_none(), "poll_timeout {due:?} on a closed connection");
        let before = self.out.len();
        let event = self.conn.handle_timeout(self.now, &mut self.out, &self.cfg);
        assert_eq!(event.is_some(), is_due, "handle_timeout did {event:?} with the deadline {due:?}");
        match event {
            None => assert_eq!(self.out.len(), before, "handle_timeout wrote bytes but reported nothing"),
            Some(Event::PingSent) => {
                self.pinged = true;
                let next = self.conn.poll_timeout(&self.cfg);
                assert!(
                    next.is_some_and(|d| d > self.now) || self.cfg.pong_timeout.is_zero(),
                    "after a keepalive ping the next deadline is {next:?}, not after now"
                );
                self.events.push(Ev::PingSent);
            }
            Some(Event::Closed(info)) => {
                assert!(matches!(info.cause, CloseCause::PongTimeout | CloseCause::CloseTimeout));
                check_close_info(&info);
                self.closed_event(info);
            }
            Some(other) => panic!("handle_timeout returned {other:?}"),
        }
    }

    fn closed_event(&mut self, info: CloseInfo) {
        assert!(!self.closed, "Closed twice: {info:?}");
        assert!(self.conn.is_closed());
        self.closed = true;
        self.events.push(Ev::Closed(info));
    }

    /// The bytes written since the last check are whole, well-formed frames.
    fn check_out(&mut self) {
        while self.checked < self.out.len() {
            assert!(!self.close_written, "bytes written after our Close");
            let rest = &self.out[self.checked..];
            let h = parse_header(rest).expect("we wrote an invalid header").expect("we wrote half a header");
            let total = h.header_len + h.payload_len as usize;
            assert!(rest.len() >= total, "we wrote half a frame");
            assert_eq!(h.rsv, 0);
            assert_eq!(h.mask.is_some(), self.role == Role::Client, "masking does not match the role");
            let mut payload = rest[h.header_len..total].to_vec();
            if let Some(m) = h.mask {
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
            }
            match h.opcode {
                OP_TEXT => {
                    assert!(h.fin);
                    std::str::from_utf8(&payload).expect("we sent a Text frame that is not UTF-8");
                }
                OP_BINARY => assert!(h.fin),
                OP_PING | OP_PONG | OP_CLOSE => {
                    assert!(h.fin && payload.len() <= MAX_CONTROL_PAYLOAD, "bad control frame {h:?}");
                    if h.opcode == OP_CLOSE {
                        self.close_written = true;
                        assert_ne!(payload.len(), 1, "a one-byte Close payload");
                        if let [hi, lo, reason @ ..] = &payload[..] {
                            let code = u16::from_be_bytes([*hi, *lo]);
                            assert!(sendable_close_code(code), "we sent close code {code}");
                            std::str::from_utf8(reason).expect("we sent a close reason that is not UTF-8");
                        }
                    }
                }
                other => panic!("we wrote opcode {other}"),
            }
            self.checked += total;
        }
    }

    fn check_buffers(&self) {
        let held = self.conn.buffered_capacity();
        if self.closed {
            assert_eq!(held, 0, "a closed connection holds {held} bytes");
        }
        let bound = 2 * (self.cfg.max_message_size + 14) + 64;
        assert!(held <= bound, "receive buffers hold {held} bytes, over {bound}");
    }
}

/// The code of a `Closed` fits its cause.
fn check_close_info(info: &CloseInfo) {
    match info.cause {
        CloseCause::ProtocolError => assert!(matches!(info.code, 1002 | 1007 | 1009), "{info:?}"),
        CloseCause::PeerClose => {
            assert_eq!(info.initiator, Initiator::Peer);
            assert!(info.code == 1005 || sendable_close_code(info.code), "{info:?}");
        }
        CloseCause::PongTimeout => assert_eq!(info.code, 1011),
        _ => {}
    }
}
