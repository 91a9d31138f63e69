//! TLS between the ring and the protocol, for slots with `flag::TLS`. Three narrow points:
//!
//! - **Receive** (`Shard::on_tls_bytes`): the ciphertext in the provided receive buffer goes to the
//!   connection's [`TlsConn`] (decrypted in place there); the plaintext it carried is then handled exactly as
//!   a plaintext connection's bytes are (`Shard::on_plain`: the upgrade request, or frames for the protocol).
//! - **Send** (`Core::tls_wire`): a connection's queue keeps plaintext frames, shared ones spliced in as
//!   usual; at send time they are encrypted into one wire buffer from the shard's pool, after the TLS records
//!   rustls made (handshake, tickets) and before a final close_notify. Nothing is encrypted before the
//!   handshake is done: a client's upgrade request waits in its queue until then.
//! - **The handshake cap** (`Core::tls_budget`): at most `tls_handshakes_per_loop` handshake steps per loop
//!   iteration; input past it is kept (`TlsConn::stash`) and taken up first thing next iteration
//!   (`Shard::resume_tls`), so a flood of ClientHellos (a key exchange and a signature each) queues behind
//!   itself instead of in front of open connections.
//!
//! An accepted connection's TLS state is made at its first bytes, so a connection that never sends costs
//! nothing more than a plaintext one; the handshake deadline covers the TLS handshake (the slot is in
//! `Phase::Handshake` all along).

use tracing::debug;

use super::slot::{flag, Phase};
use super::{Core, Shard};
use crate::handler::{ConnectError, Handler};
use crate::metrics::bump;
use crate::proto::handshake;
use crate::proto::{CloseCause, CloseInfo, Initiator};
use crate::ring::SendBuf;
use crate::tls::conn::{TlsConn, TlsFailure};
use crate::tls::ClientTls;

/// What a batch of ciphertext did, beyond the plaintext it carried.
pub(super) enum TlsStep {
    Go,
    /// The peer sent close_notify.
    PeerClosed,
    /// Past this iteration's handshake budget: the input was kept for the next.
    Deferred,
    Failed(TlsFailure),
}

impl Core {
    fn tls_slot(&mut self, slot: u32) -> &mut Option<Box<TlsConn>> {
        let idx = slot as usize;
        if idx >= self.tls.len() {
            self.tls.resize_with(idx + 1, || None);
        }
        &mut self.tls[idx]
    }

    /// An accepted connection on a TLS listener: mark it (its state comes with its first bytes).
    pub(super) fn mark_tls(&mut self, slot: u32) {
        self.slots[slot as usize].set(flag::TLS);
        *self.tls_slot(slot) = None;
    }

    /// An outbound connection just connected with TLS: its ClientHello goes out first.
    pub(super) fn start_client_tls(&mut self, slot: u32, tls: &ClientTls) -> Result<(), String> {
        let conn = TlsConn::client(tls)?;
        self.slots[slot as usize].set(flag::TLS);
        *self.tls_slot(slot) = Some(Box::new(conn));
        Ok(())
    }

    /// Run received ciphertext through the slot's TLS; plaintext goes to `plain`.
    pub(super) fn tls_receive(&mut self, slot: u32, data: &mut [u8], plain: &mut Vec<u8>) -> TlsStep {
        if !matches!(self.slots[slot as usize].phase, Phase::Handshake | Phase::Open) {
            return TlsStep::Go;
        }
        if self.tls_slot(slot).is_none() {
            let Some(server) = self.cfg.tls.as_ref() else {
                return TlsStep::Failed(TlsFailure::Protocol("no TLS configuration".into()));
            };
            match TlsConn::server(server.config()) {
                Ok(conn) => self.tls[slot as usize] = Some(Box::new(conn)),
                Err(e) => return TlsStep::Failed(TlsFailure::Protocol(e)),
            }
        }
        let Some(conn) = self.tls[slot as usize].as_deref_mut() else { return TlsStep::Go };
        if !conn.established() {
            if self.tls_budget == 0 {
                if let Err(f) = conn.stash(data) {
                    return TlsStep::Failed(f);
                }
                // Queued once however many receives it defers (a flag, not a search of the queue).
                if conn.start_waiting() {
                    let generation = self.slots[slot as usize].generation;
                    self.tls_waiting.push_back((slot, generation));
                }
                bump(&self.metrics.tls_handshakes_deferred);
                return TlsStep::Deferred;
            }
            self.tls_budget -= 1;
        }
        let result = conn.receive(data, plain);
        let pending = conn.has_pending();
        match result {
            Ok(received) => {
                if received.established_now {
                    bump(&self.metrics.tls_handshakes);
                }
                if pending || received.established_now {
                    self.mark_dirty(slot);
                }
                if received.peer_closed {
                    TlsStep::PeerClosed
                } else {
                    TlsStep::Go
                }
            }
            Err(f) => TlsStep::Failed(f),
        }
    }

    /// Whether the slot has bytes the next send would carry. For TLS: records rustls made, and plaintext
    /// frames once the handshake is done (before it, the upgrade request of a client waits); a closing
    /// connection that flushes also owes its close_notify.
    pub(super) fn has_output(&self, slot: u32) -> bool {
        let s = &self.slots[slot as usize];
        if !s.has(flag::TLS) {
            return !s.out.is_empty();
        }
        let Some(t) = self.tls.get(slot as usize).and_then(|t| t.as_deref()) else { return false };
        t.has_pending()
            || (t.established()
                && (!s.out.is_empty()
                    || (s.phase == Phase::Closing && s.has(flag::FLUSH_FIRST) && t.wants_close_notify())))
    }

    /// Teardown with a flush: a TLS connection still owes a close_notify after its last bytes.
    pub(super) fn owes_close_notify(&self, slot: u32) -> bool {
        self.slots[slot as usize].has(flag::TLS)
            && self.tls.get(slot as usize).and_then(|t| t.as_deref()).is_some_and(|t| t.wants_close_notify())
    }

    /// The output of a closing TLS connection is given up: nothing more goes out.
    pub(super) fn abandon_tls(&mut self, slot: u32) {
        if let Some(t) = self.tls.get_mut(slot as usize).and_then(|t| t.as_deref_mut()) {
            t.abandon();
        }
    }

    /// TLS failed: what rustls queued (its alert) and `last` are the connection's last bytes.
    fn end_tls_with(&mut self, slot: u32, last: &[u8]) {
        if let Some(t) = self.tls.get_mut(slot as usize).and_then(|t| t.as_deref_mut()) {
            t.end_with(last);
        }
    }

    /// The bytes the next send of a TLS slot carries: rustls' records, then the queued frames encrypted
    /// (once established), then a close_notify when a closing connection flushes. `None`: nothing to send
    /// (or TLS failed: the slot is torn down).
    pub(super) fn tls_wire(&mut self, slot: u32) -> Option<SendBuf> {
        let mut wire = self.pooled().unwrap_or_default();
        let idx = slot as usize;
        let mut scratch = std::mem::take(&mut self.tls_scratch);
        let s = &mut self.slots[idx];
        let closing = s.phase == Phase::Closing;
        let mut failed = None;
        match self.tls.get_mut(idx).and_then(|t| t.as_deref_mut()) {
            None => s.out.clear(),
            Some(t) => {
                t.take_pending(&mut wire);
                if t.established() && !s.out.is_empty() {
                    let plain: &[u8] = if s.out.has_shared() {
                        scratch.clear();
                        s.out.append_to(&mut scratch);
                        &scratch
                    } else {
                        s.out.own_bytes()
                    };
                    if let Err(e) = t.encrypt(plain, &mut wire) {
                        failed = Some(e);
                    }
                    s.out.clear();
                } else if !t.established() && closing {
                    // A plaintext answer (a 408) to a connection that never finished its TLS handshake: it
                    // could not read it.
                    s.out.clear();
                }
                if closing && s.has(flag::FLUSH_FIRST) && failed.is_none() {
                    t.close_notify(&mut wire);
                }
            }
        }
        if scratch.capacity() <= super::POOL_BUF_MAX {
            scratch.clear();
            self.tls_scratch = scratch;
        }
        // The plaintext queue's buffer goes back to the pool as a plaintext connection's does when its
        // queue leaves with the send: an idle connection holds none.
        self.release_out(idx as u32);
        if let Some(e) = failed {
            debug!(conn = %self.id(slot), error = %e, "TLS encrypt failed");
            bump(&self.metrics.tls_failures);
            self.give_back(wire);
            self.abandon_tls(slot);
            let info = CloseInfo::new(1006, format!("tls: {e}"), Initiator::Local, CloseCause::TlsError);
            self.teardown(slot, info, false);
            return None;
        }
        if wire.is_empty() {
            self.give_back(wire);
            return None;
        }
        Some(SendBuf::from_vec(wire))
    }
}

impl<H: Handler> Shard<H> {
    /// Ciphertext arrived in buffer `bid` of ring `r` for a TLS slot.
    pub(super) fn on_tls_bytes(&mut self, slot: u32, r: usize, bid: u16, len: usize) {
        let data = self.bufs.pool(r, false).take(bid, len);
        let mut plain = std::mem::take(&mut self.plain);
        let step = self.core.tls_receive(slot, data, &mut plain);
        self.after_tls(slot, step, &mut plain);
        plain.clear();
        if plain.capacity() <= super::POOL_BUF_MAX {
            self.plain = plain;
        }
    }

    /// Hand what TLS decrypted to the protocol, then act on how TLS went.
    fn after_tls(&mut self, slot: u32, step: TlsStep, plain: &mut [u8]) {
        if !plain.is_empty() {
            self.on_plain(slot, plain);
        }
        let s = &self.core.slots[slot as usize];
        if !matches!(s.phase, Phase::Handshake | Phase::Open) {
            return;
        }
        match step {
            TlsStep::Go | TlsStep::Deferred => {}
            // The peer ended its TLS session: answer with our own close_notify (RFC 8446 6.1, RFC 5246
            // 7.2.1), then close; for the WebSocket it is an end without a close handshake (1006).
            TlsStep::PeerClosed => self.peer_ended(slot, "TLS close_notify", true),
            TlsStep::Failed(failure) => self.tls_failed(slot, failure),
        }
    }

    fn tls_failed(&mut self, slot: u32, failure: TlsFailure) {
        let client = self.core.slots[slot as usize].has(flag::CLIENT);
        let id = self.core.id(slot);
        match failure {
            TlsFailure::PlainHttp if !client => {
                bump(&self.core.metrics.tls_plain_http);
                debug!(conn = %id, "plaintext HTTP request on the TLS port");
                let body = b"This port speaks TLS: use https:// or wss://\n";
                let resp = handshake::http_response(400, "Bad Request", "text/plain; charset=utf-8", &[], body);
                self.core.end_tls_with(slot, &resp);
                let s = &mut self.core.slots[slot as usize];
                s.out.clear();
                *s.reader.handshake_buf() = Vec::new();
                let info =
                    CloseInfo::new(0, "http 400 (plaintext on the TLS port)", Initiator::Local, CloseCause::TlsError);
                self.core.teardown(slot, info, true);
            }
            TlsFailure::PlainHttp | TlsFailure::Protocol(_) => {
                let why = match failure {
                    TlsFailure::Protocol(why) => why,
                    TlsFailure::PlainHttp => "plaintext from the server".into(),
                };
                bump(&self.core.metrics.tls_failures);
                debug!(conn = %id, error = %why, "TLS failed");
                if client && self.core.slots[slot as usize].phase == Phase::Handshake {
                    self.fail_connect(slot, ConnectError::Io(format!("tls: {why}")));
                    return;
                }
                // The alert rustls queued (if any) goes out; no close_notify after it.
                let s = &mut self.core.slots[slot as usize];
                s.out.clear();
                let open = s.phase == Phase::Open;
                self.core.end_tls_with(slot, &[]);
                let code = if open { 1006 } else { 0 };
                let info = CloseInfo::new(code, format!("tls: {why}"), Initiator::Local, CloseCause::TlsError);
                self.core.teardown(slot, info, true);
            }
        }
    }

    /// Handshake input put off by last iteration's budget, oldest first, while this one's lasts.
    pub(super) fn resume_tls(&mut self) {
        self.core.tls_budget = self.core.cfg.tls_handshakes_per_loop.max(1);
        let mut plain = std::mem::take(&mut self.plain);
        while self.core.tls_budget > 0 {
            let Some((slot, generation)) = self.core.tls_waiting.pop_front() else { break };
            let s = &self.core.slots[slot as usize];
            if s.generation != generation || !matches!(s.phase, Phase::Handshake | Phase::Open) {
                continue;
            }
            if let Some(t) = self.core.tls.get_mut(slot as usize).and_then(|t| t.as_deref_mut()) {
                t.stop_waiting();
            }
            let step = self.core.tls_receive(slot, &mut [], &mut plain);
            self.after_tls(slot, step, &mut plain);
            plain.clear();
        }
        self.plain = plain;
    }
}
