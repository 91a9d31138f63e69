//! Ending connections: the decision (`teardown`, the first decision wins), the steps (`lifecycle.rs` decides,
//! this file acts on the ring), and the close completion that logs, counts, tells the handler and frees the
//! slot. The kernel cannot hand a descriptor index out again before that close completes, so a completion can
//! never reach a newer occupant; the generation in each token checks it anyway. Every step is bounded by
//! close_timeout through the wheel (then the slot's operations are cancelled again, each by its token).

use std::sync::atomic::Ordering;

use tracing::{debug, info};

use super::lifecycle::{next_step, Step};
use super::slot::{flag, Phase};
use super::{with_ctx, Core, Shard};
use crate::handler::{Closed, Handler};
use crate::metrics::drop_one;
use crate::per_ip::Verdict;
use crate::proto::{CloseCause, CloseInfo, Initiator};
use crate::ring::Op;

impl Core {
    /// Start the close handshake (Open), or end a connection that never opened.
    pub(super) fn close_conn(&mut self, slot: u32, code: u16, reason: &str, cause: CloseCause) {
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        match s.phase {
            Phase::Open => {
                if !s.writer.as_ref().is_some_and(|w| w.is_open()) {
                    return;
                }
                self.lend_out(slot);
                let s = &mut self.slots[slot as usize];
                let cfg = &self.profiles[s.profile as usize].proto;
                let Some(w) = s.writer.as_mut() else { return };
                w.close(s.out.bytes_mut(), code, reason, cause, now, cfg);
                s.reader.on_local_close();
                // The peer's Close must be read: a paused receive resumes.
                self.resume_recv(slot);
                let s = &mut self.slots[slot as usize];
                if s.ending.is_none() {
                    s.ending = Some(Box::new(CloseInfo::new(code, reason, Initiator::Local, cause)));
                }
                self.mark_dirty(slot);
                self.rearm(slot);
            }
            Phase::Handshake | Phase::Connecting => {
                self.teardown(slot, CloseInfo::new(code, reason, Initiator::Local, cause), false);
            }
            Phase::Closing | Phase::Free => {}
        }
    }

    /// Decide to end a connection. With `flush`, queued bytes (a Close frame, an HTTP answer) go out first.
    /// The first decision wins: later calls only move the teardown along.
    pub(super) fn teardown(&mut self, slot: u32, info: CloseInfo, flush: bool) {
        let s = &mut self.slots[slot as usize];
        if s.ending.is_none() {
            s.ending = Some(Box::new(info));
        }
        if s.phase == Phase::Closing {
            self.advance_teardown(slot);
            return;
        }
        if s.phase == Phase::Open {
            drop_one(&self.metrics.websocket_open);
        }
        s.phase = Phase::Closing;
        self.forget_pause(slot);
        let s = &mut self.slots[slot as usize];
        let inflight = s.has(flag::SEND_INFLIGHT);
        if flush && (inflight || self.has_output(slot) || self.owes_close_notify(slot)) {
            let s = &mut self.slots[slot as usize];
            s.set(flag::FLUSH_FIRST);
            // A peer that never reads must not hold the slot: bound the flush.
            let deadline = self.now + self.cfg.close_timeout;
            self.schedule(slot, deadline);
        }
        self.advance_teardown(slot);
    }

    /// Take every teardown step that can be taken now (see `lifecycle.rs`).
    pub(super) fn advance_teardown(&mut self, slot: u32) {
        loop {
            if self.slots[slot as usize].phase != Phase::Closing {
                return;
            }
            let queued = self.has_output(slot);
            let s = &mut self.slots[slot as usize];
            match next_step(s.flags, queued) {
                Step::Wait => return,
                Step::Send => self.start_send(slot),
                Step::EndOps => {
                    s.clear(flag::FLUSH_FIRST);
                    s.set(flag::OPS_ENDED);
                    self.cancel_inflight(slot);
                    let deadline = self.now + self.cfg.close_timeout;
                    self.schedule(slot, deadline);
                }
                Step::Close => {
                    s.set(flag::CLOSE_SUBMITTED);
                    let generation = s.generation;
                    self.wheel.cancel(slot);
                    self.ring(slot).close(slot, generation);
                    return;
                }
            }
        }
    }

    /// A flush or teardown step did not finish within close_timeout.
    pub(super) fn teardown_overdue(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.has(flag::FLUSH_FIRST) {
            // Give up on the output: shut down now.
            s.clear(flag::FLUSH_FIRST);
            s.out.clear();
            self.abandon_tls(slot);
            self.advance_teardown(slot);
        } else {
            self.cancel_inflight(slot);
            let deadline = self.now + self.cfg.close_timeout;
            self.schedule(slot, deadline);
        }
    }

    /// Cancel, each by its token, the operations of the slot that close must wait for: the multishot
    /// receive, a send (reached only when its output is abandoned: a flush waits for it instead) and a
    /// pending connect. Bind and the peer-name lookup complete inline and are not cancellable; a request
    /// that already completed is not found, which is harmless.
    fn cancel_inflight(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        let (flags, generation) = (s.flags, s.generation);
        if flags & flag::RECV_ARMED != 0 {
            // A moved slot's armed receive is the large one, or (just moved) still the small one: both.
            self.cancel_recv(slot);
        }
        let ring = self.ring(slot);
        if flags & flag::SEND_INFLIGHT != 0 {
            ring.cancel_op(Op::Send, slot, generation);
        }
        if flags & flag::ADDR_OP_PENDING != 0 {
            ring.cancel_op(Op::Connect, slot, generation);
        }
    }
}

impl<H: Handler> Shard<H> {
    /// The descriptor is closed: log, count, tell the handler, free the slot.
    pub(super) fn finalize(&mut self, slot: u32) {
        let core = &mut self.core;
        let id = core.id(slot);
        let s = &mut core.slots[slot as usize];
        let info = s
            .ending
            .take()
            .map(|b| *b)
            .unwrap_or_else(|| CloseInfo::new(1006, "closed", Initiator::Abnormal, CloseCause::Abnormal));
        let created = core.epoch + std::time::Duration::from_nanos(s.created_at);
        let duration = core.now.saturating_duration_since(created);
        let was_open = s.has(flag::WAS_OPEN);
        let client = s.has(flag::CLIENT);
        let ip_counted = s.per_ip == Some(Verdict::Admitted);
        // Every operation of the slot has completed: nothing writes the address buffer any more.
        let peer = core.peer_addr(slot);
        let code = info.code;
        if let (true, Some(peer)) = (ip_counted, peer) {
            core.shared.per_ip.release(peer.ip(), core.now);
        }
        core.metrics.record_close(code, info.cause);
        let peer_text = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        // What the application adds to the close line (a user, what the code means to its protocol).
        let note = if was_open { with_ctx!(self, |h, ctx| h.close_note(&mut ctx, id, &info)) } else { None };
        if was_open || code != 0 {
            info!(
                conn = %id,
                peer = %peer_text,
                code,
                reason = ?info.reason,
                cause = info.cause.as_str(),
                initiator = %info.initiator.as_str(),
                duration_ms = duration.as_millis() as u64,
                role = %if client { "client" } else { "server" },
                app = note.as_deref().unwrap_or(""),
                "close"
            );
        } else {
            debug!(conn = %id, peer = %peer_text, reason = ?info.reason, duration_ms = duration.as_millis() as u64, "http connection done");
        }
        // Counted free before the handler hears of it: whoever learns of the close from `on_close` finds
        // the counters already showing it.
        let core = &mut self.core;
        drop_one(&core.metrics.open);
        core.shared.open_total.fetch_sub(1, Ordering::Relaxed);
        if was_open {
            let closed = Closed { info, peer, duration, was_open };
            with_ctx!(self, |h, ctx| h.on_close(&mut ctx, id, &closed));
        }
        if let Some(state) = self.states.get_mut(slot as usize) {
            *state = Default::default();
        }
        self.core.free_slot(slot);
    }
}

impl Core {
    fn free_slot(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.phase = Phase::Free;
        s.flags = 0;
        s.writer = None;
        s.reader.clear();
        *s.reader.handshake_buf() = Vec::new();
        s.client = None;
        s.app_tick = 0;
        if let Some(t) = self.tls.get_mut(slot as usize) {
            *t = None;
        }
        let out = s.out.take_bytes();
        self.give_back(out);
        self.wheel.cancel(slot);
        self.topics.remove_slot(slot);
        self.sync_topic_gauges();
        let r = self.ring_index(slot);
        self.ring_open[r] -= 1;
        let a = &mut self.acceptors[r];
        if a.paused && !self.shutting_down {
            a.paused = false;
            if !a.armed {
                self.arm_accept(r);
            }
        }
    }
}
