//! Receiving: multishot receive completions, the handshake bytes, and the dispatch of protocol events to the
//! handler. An event borrows the receive buffer (single-frame messages reach `on_message` with no copy) and
//! the connection's reader, which is moved out of the slot meanwhile, so the handler's `Ctx` can write to
//! any connection, this one included, through the one write path.

use super::slot::{flag, Phase};
use super::{with_ctx, Shard};
use crate::handler::{ConnectError, Handler, Message};
use crate::metrics::{add, bump};
use crate::proto::{CloseCause, CloseInfo, Event, Initiator, Input, MessageKind};
use crate::ring::{self, Completion, Op};

impl<H: Handler> Shard<H> {
    /// A completion of the multishot receive of `slot` (into the large buffers with `large`).
    pub(super) fn on_recv(&mut self, slot: u32, c: Completion, large: bool) {
        let r = self.core.ring_index(slot);
        let more = c.more();
        if !more {
            self.core.slots[slot as usize].clear(flag::RECV_ARMED);
        }
        if c.result > 0 {
            let Some(bid) = c.buffer_id() else { return };
            if more && self.core.slots[slot as usize].has(flag::RECV_PAUSED) {
                // Bytes for a paused slot whose receive goes on: the cancel missed it (it was already
                // running). Cancel again; these bytes are delivered (see pause.rs).
                self.core.cancel_recv(slot);
            }
            add(&self.core.metrics.bytes_in, c.result as u64);
            self.on_bytes(slot, bid, c.result as usize, large);
            self.bufs.pool(r, large).release(bid, c.buffer_more());
            let phase = self.core.slots[slot as usize].phase;
            if !more && phase != Phase::Closing && phase != Phase::Free {
                self.core.arm_recv(slot);
            }
            if phase == Phase::Closing {
                self.core.advance_teardown(slot);
            }
            return;
        }
        if let Some(bid) = c.buffer_id() {
            self.bufs.pool(r, large).release(bid, c.buffer_more());
        }
        let phase = self.core.slots[slot as usize].phase;
        if c.result == -libc::ENOBUFS && phase != Phase::Closing {
            // Every provided buffer was in use: the multishot receive ended. Arm it again once this batch of
            // completions has recycled its buffers; re-armed at once, it would find the ring still empty and
            // fail again (thousands of times a second at 200,000 connections).
            bump(&self.core.metrics.recv_buffer_exhausted);
            if !more {
                self.core.starved.push(slot);
            }
            return;
        }
        if phase == Phase::Closing {
            self.core.advance_teardown(slot);
            return;
        }
        if c.result == -libc::ECANCELED && !more && phase == Phase::Open {
            // Cancelled to move the connection to the large buffers (`go_large`): receive again, there (a
            // cancel for a pause ends here too; `arm_recv` then leaves it to the deadline).
            self.core.arm_recv(slot);
            return;
        }
        // EOF or a socket error: the peer is gone.
        let why = if c.result == 0 { "connection closed by peer".to_string() } else { ring::errno_str(c.result) };
        self.peer_gone(slot, &why);
    }

    /// TCP ended under an open or handshaking connection.
    fn peer_gone(&mut self, slot: u32, why: &str) {
        self.peer_ended(slot, why, false);
    }

    /// Nothing more comes from the peer (TCP ended, or its TLS close_notify came: then, with `goodbye`, what
    /// is queued for TLS still goes out, our close_notify last).
    pub(super) fn peer_ended(&mut self, slot: u32, why: &str, goodbye: bool) {
        let s = &mut self.core.slots[slot as usize];
        if s.phase == Phase::Connecting || (s.phase == Phase::Handshake && s.has(flag::CLIENT)) {
            self.fail_connect(slot, ConnectError::Closed);
            return;
        }
        let info = match s.writer.as_mut().and_then(|w| w.handle_eof(why)) {
            Some(info) => info,
            // A kept-alive HTTP client leaving between requests (keepalive.rs): nothing was cut short.
            None if s.has(flag::HTTP_IDLE) && s.reader.handshake_bytes().is_empty() => {
                CloseInfo::new(0, "http client closed", Initiator::Peer, CloseCause::HttpRejected)
            }
            None => CloseInfo::new(1006, why, Initiator::Abnormal, CloseCause::Abnormal),
        };
        s.out.clear();
        if !goodbye {
            self.core.abandon_tls(slot);
        }
        self.core.teardown(slot, info, goodbye);
    }

    /// Bytes arrived in buffer `bid`: taken out of it whatever the phase (so the buffer's consumption stays in
    /// step with the kernel's), handled unless the connection is closing. A TLS slot's bytes are decrypted
    /// first (`tls.rs`).
    fn on_bytes(&mut self, slot: u32, bid: u16, len: usize, large: bool) {
        let r = self.core.ring_index(slot);
        if self.core.slots[slot as usize].has(flag::TLS) {
            self.on_tls_bytes(slot, r, bid, len);
            return;
        }
        let data = self.bufs.pool(r, large).take(bid, len);
        match self.core.slots[slot as usize].phase {
            Phase::Handshake => {
                self.core.slots[slot as usize].reader.handshake_buf().extend_from_slice(data);
                self.handshake_step(slot);
            }
            Phase::Open => {
                deliver(&mut self.core, &mut self.states, &self.notifier, &mut self.handler, slot, data);
                if !large {
                    self.go_large(slot, r);
                }
            }
            _ => {}
        }
    }

    /// If a frame of this (plaintext, open) connection spans more than one small receive buffer, move it to
    /// the large ones (shard/rxbufs.rs): cancel its receive, whose last completion (ECANCELED, or any last
    /// one) re-arms it there.
    fn go_large(&mut self, slot: u32, r: usize) {
        let s = &self.core.slots[slot as usize];
        if s.phase != Phase::Open || s.has(flag::RECV_LARGE) || !self.bufs.wants_large(s.reader.assembling()) {
            return;
        }
        if !self.bufs.ensure_large(r, &mut self.core.rings[r]) {
            return;
        }
        bump(&self.core.metrics.recv_moved_large);
        let s = &mut self.core.slots[slot as usize];
        s.set(flag::RECV_LARGE);
        if s.has(flag::RECV_ARMED) {
            let generation = s.generation;
            self.core.rings[r].cancel_op(Op::Recv, slot, generation);
        }
    }

    /// Plaintext a TLS connection's records carried: what `on_bytes` does with a plaintext connection's bytes.
    pub(super) fn on_plain(&mut self, slot: u32, data: &mut [u8]) {
        match self.core.slots[slot as usize].phase {
            Phase::Handshake => {
                self.core.slots[slot as usize].reader.handshake_buf().extend_from_slice(data);
                self.handshake_step(slot);
            }
            Phase::Open => deliver(&mut self.core, &mut self.states, &self.notifier, &mut self.handler, slot, data),
            _ => {}
        }
    }

    /// More bytes of the upgrade request (server) or of the 101 (client) are in the handshake buffer.
    pub(super) fn handshake_step(&mut self, slot: u32) {
        if self.core.slots[slot as usize].has(flag::CLIENT) {
            self.client_handshake(slot);
            return;
        }
        if !self.core.next_request_bytes(slot) {
            return;
        }
        if !self.core.slots[slot as usize].has(flag::REQUEST_WAITING | flag::HTTP_DEFERRED) {
            self.server_handshake(slot);
        }
    }

    /// The connection just reached Open: tell the handler, then handle bytes that came after the handshake.
    pub(super) fn opened(&mut self, slot: u32, consumed: usize) {
        let id = self.core.id(slot);
        with_ctx!(self, |h, ctx| h.on_open(&mut ctx, id));
        let mut rest = std::mem::take(self.core.slots[slot as usize].reader.handshake_buf());
        let mut ended = None;
        if rest.len() > consumed && self.core.slots[slot as usize].phase == Phase::Open {
            let mut input = Input::new(&mut rest[consumed..]);
            ended = dispatch(&mut self.core, &mut self.states, &self.notifier, &mut self.handler, slot, &mut input);
        }
        self.core.after_events(slot, ended);
    }
}

/// Bytes for an open connection: through the protocol and the handler, then what the events left to do.
fn deliver<H: Handler>(
    core: &mut super::Core,
    states: &mut Vec<H::Conn>,
    notifier: &crate::handle::Notifier<H::Notice>,
    handler: &mut H,
    slot: u32,
    data: &mut [u8],
) {
    let mut input = Input::new(data);
    let ended = dispatch(core, states, notifier, handler, slot, &mut input);
    core.after_events(slot, ended);
}

/// Feed one input buffer through the connection's protocol state and the handler. Returns how the connection
/// ends if the protocol finished it. Stops early if the handler closed the connection.
fn dispatch<H: Handler>(
    core: &mut super::Core,
    states: &mut Vec<H::Conn>,
    notifier: &crate::handle::Notifier<H::Notice>,
    handler: &mut H,
    slot: u32,
    input: &mut Input<'_>,
) -> Option<CloseInfo> {
    let idx = slot as usize;
    let id = core.id(slot);
    let mut reader = std::mem::take(&mut core.slots[idx].reader);
    let now = core.now;
    let metrics = core.metrics.clone();
    let ended = loop {
        core.lend_out(slot);
        let s = &mut core.slots[idx];
        if s.phase != Phase::Open {
            break None;
        }
        let Some(writer) = s.writer.as_mut() else { break None };
        let cfg = &core.profiles[s.profile as usize].proto;
        let (codec, spares) = (&mut core.codec, &mut core.spares);
        let Some(event) = reader.poll_event(writer, codec, spares, input, s.out.bytes_mut(), now, cfg) else {
            break None;
        };
        let mut ctx = crate::context::Ctx::<H> { ops: &mut *core, states: &mut *states, notifier };
        match event {
            Event::Message { kind, payload } => {
                bump(&metrics.messages_in);
                let message = match kind {
                    MessageKind::Text => match simdutf8::basic::from_utf8(payload) {
                        Ok(text) => Message::Text(text),
                        Err(_) => continue,
                    },
                    MessageKind::Binary => Message::Binary(payload),
                };
                handler.on_message(&mut ctx, id, message);
            }
            Event::Ping(payload) => {
                bump(&metrics.pings_received);
                handler.on_ping(&mut ctx, id, payload);
            }
            Event::Pong { rtt, .. } => {
                bump(&metrics.pongs_received);
                handler.on_pong(&mut ctx, id, rtt);
            }
            Event::PingSent => bump(&metrics.pings_sent),
            // A close we started keeps the cause it was started for (shutdown ...): teardown keeps the first
            // ending it is given.
            Event::Closed(info) => break Some(info),
        }
    };
    let s = &mut core.slots[idx];
    if s.phase == Phase::Open && ended.is_none() {
        s.reader = reader;
    }
    ended
}

impl super::Core {
    /// Re-arm the receives that ended for want of a buffer (see `on_recv`).
    pub(super) fn rearm_starved(&mut self) {
        for slot in std::mem::take(&mut self.starved) {
            let s = &self.slots[slot as usize];
            if matches!(s.phase, Phase::Handshake | Phase::Open) && !s.has(flag::RECV_ARMED) {
                self.arm_recv(slot);
            }
        }
    }

    /// Arm the slot's multishot receive, unless the handler paused it (`pause.rs` arms it at the deadline).
    pub(super) fn arm_recv(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.has(flag::RECV_PAUSED) {
            return;
        }
        s.set(flag::RECV_ARMED);
        let (generation, large) = (s.generation, s.has(flag::RECV_LARGE));
        self.ring(slot).recv_multi(slot, generation, large);
    }
}
