//! The one write path. Every data message to a connection, whoever sends it (the handler for this or
//! another connection, another thread, a topic publication), goes through [`Core::write`]: the connection's
//! protocol writer (so nothing follows our Close and client frames are masked), then the send-queue bound.
//!
//! The bound: a message is accepted while the bytes already queued (waiting and in flight) are at most the
//! profile's `max_send_queue`; so an empty queue always takes one message of any size (a 16 MiB echo with a
//! 4 MiB bound), and a connection holds at most `max_send_queue` plus one message. Past it, policy `drop`
//! drops the message (counted), policy `close` drops what waits (whole frames only: a send in flight is
//! finished), queues Close 1008 "send queue full" and tears the connection down, bounded by close_timeout.
//!
//! Room and writability: `send_queue_room` tells a handler whether the next message fits the bound, and a
//! handler that found none asks with `notify_writable` (the slot's `WANT_WRITABLE` flag) to hear
//! `on_writable` once the queue has drained to half the bound (hysteresis: a connection at the bound is not
//! woken per frame). Only slots that asked pay anything: one flag test per completed send.
//!
//! Output accumulates per slot and is flushed once per loop iteration: every frame written during the
//! iteration goes out in one `send` (or one `sendmsg` when shared frames are spliced in).

use super::slot::{flag, Phase};
use super::Core;
use crate::config::SendQueuePolicy;
use crate::handle::SendError;
use crate::metrics::{add, bump, set};
use crate::prepared::Prepared;
use crate::proto::{CloseCause, CloseInfo, Initiator, MessageKind};
use crate::ring::{self, Completion, SendBuf};

/// What to write.
pub(super) enum Payload<'a> {
    Bytes(MessageKind, &'a [u8]),
    Prepared(&'a Prepared),
}

impl Core {
    /// Queue one data message to `slot` through its writer, within the send-queue bound.
    pub(super) fn write(&mut self, slot: u32, payload: Payload<'_>) -> Result<(), SendError> {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open || !s.writer.as_ref().is_some_and(|w| w.is_open()) {
            return Err(SendError::NotOpen);
        }
        let profile = &self.profiles[s.profile as usize];
        if s.queued() > profile.max_send_queue {
            return match profile.policy {
                SendQueuePolicy::Drop => {
                    bump(&self.metrics.send_dropped);
                    Err(SendError::Dropped)
                }
                SendQueuePolicy::Close => {
                    self.slow_consumer(slot);
                    Err(SendError::SlowConsumer)
                }
            };
        }
        self.lend_out(slot);
        let s = &mut self.slots[slot as usize];
        let Some(writer) = s.writer.as_mut() else { return Err(SendError::NotOpen) };
        let codec = &mut self.codec;
        match payload {
            Payload::Bytes(kind, data) => {
                writer.send_message(s.out.bytes_mut(), kind, data, codec).map_err(|_| SendError::NotOpen)?
            }
            // Masked (client role), or compressed with a window or a context of its own: its own frame.
            Payload::Prepared(p) if writer.masks() || (writer.compresses() && !writer.shares_compressed_frames()) => {
                writer.send_message(s.out.bytes_mut(), p.kind(), p.payload(), codec).map_err(|_| SendError::NotOpen)?
            }
            // The compressed form, made once (by the first connection that needs it) and shared like the
            // plain one.
            Payload::Prepared(p) if writer.compresses() => s.out.push_shared(p.deflated_frame(codec)),
            Payload::Prepared(p) => s.out.push_shared(p.frame().clone()),
        }
        bump(&self.metrics.messages_out);
        self.mark_dirty(slot);
        Ok(())
    }

    /// Whether the next message to `slot` is accepted, and how much room is left: `None` if the connection
    /// does not take data (not open, or our Close is out), `Some(0)` if the bound would refuse it,
    /// `Some(n)` with `n > 0` if it is accepted whatever its size; `n` is `max_send_queue + 1` minus the
    /// bytes queued, so messages (frames) of fewer than `n` bytes in total still leave room for one more.
    pub(super) fn send_queue_room(&self, slot: u32) -> Option<usize> {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open || !s.writer.as_ref().is_some_and(|w| w.is_open()) {
            return None;
        }
        let bound = self.profiles[s.profile as usize].max_send_queue;
        Some(bound.saturating_add(1).saturating_sub(s.queued()))
    }

    /// The queue level at or below which a connection that asked is writable again: half the bound.
    fn writable_level(&self, slot: u32) -> usize {
        self.profiles[self.slots[slot as usize].profile as usize].max_send_queue / 2
    }

    /// The handler wants `on_writable` for `slot` once its queue is at or below half the bound: at the next
    /// report if it is there already, else after the send that brings it there. Asking again before it
    /// fired changes nothing.
    pub(super) fn want_writable(&mut self, slot: u32) -> bool {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open {
            return false;
        }
        if s.has(flag::WANT_WRITABLE) {
            return true;
        }
        self.slots[slot as usize].set(flag::WANT_WRITABLE);
        self.check_writable(slot);
        true
    }

    /// A send completed on a slot that asked for `on_writable`: queue the report if the queue is low enough.
    fn check_writable(&mut self, slot: u32) {
        if self.slots[slot as usize].queued() <= self.writable_level(slot) {
            self.writable.push((slot, self.slots[slot as usize].generation));
        }
    }

    /// The queue overflowed under policy `close`: drop the waiting frames, queue the profile's overflow Close
    /// (1008 "send queue full" by default) and tear down.
    fn slow_consumer(&mut self, slot: u32) {
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        s.out.clear();
        let profile = &self.profiles[s.profile as usize];
        let (code, reason) = profile.overflow_close;
        if let Some(w) = s.writer.as_mut() {
            w.close(s.out.bytes_mut(), code, reason, CloseCause::SlowConsumer, now, &profile.proto);
        }
        s.reader.on_local_close();
        let info = CloseInfo::new(code, reason, Initiator::Local, CloseCause::SlowConsumer);
        self.teardown(slot, info, true);
    }

    /// After a batch of protocol events: close if the protocol said so; otherwise hold control replies (pongs
    /// to a peer that never reads) to the same bound, mark for flushing and re-arm the timer.
    pub(super) fn after_events(&mut self, slot: u32, ended: Option<CloseInfo>) {
        if let Some(info) = ended {
            self.teardown(slot, info, true);
            return;
        }
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open {
            return;
        }
        let p = &self.profiles[s.profile as usize];
        // Pongs are never refused one by one; a peer that pings and never reads is cut off once they pass
        // what a whole message may take.
        if s.queued() > p.max_send_queue.saturating_add(p.proto.max_message_size) {
            self.slow_consumer(slot);
            return;
        }
        self.mark_dirty(slot);
        self.rearm(slot);
    }

    pub(super) fn give_back(&mut self, buf: Vec<u8>) {
        self.pool.give_back(buf);
        set(&self.metrics.send_pool_bytes, self.pool.bytes() as u64);
    }

    /// A pooled (empty) buffer, if there is one.
    pub(super) fn pooled(&mut self) -> Option<Vec<u8>> {
        let buf = self.pool.take()?;
        set(&self.metrics.send_pool_bytes, self.pool.bytes() as u64);
        Some(buf)
    }

    /// Give the slot a pooled output buffer if it has none, so writes do not allocate.
    pub(super) fn lend_out(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if s.out.capacity() == 0 && s.out.is_empty() {
            if let Some(buf) = self.pooled() {
                self.slots[slot as usize].out = SendBuf::with_bytes(buf);
            }
        }
    }

    /// An empty queue's buffer goes back to the pool: a connection with nothing queued holds none.
    pub(super) fn release_out(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.out.is_empty() && s.out.capacity() > 0 {
            let buf = s.out.take_bytes();
            self.give_back(buf);
        }
    }

    pub(super) fn mark_dirty(&mut self, slot: u32) {
        if !self.has_output(slot) {
            self.release_out(slot);
            return;
        }
        let s = &mut self.slots[slot as usize];
        if !s.has(flag::DIRTY) && !s.has(flag::SEND_INFLIGHT) {
            s.set(flag::DIRTY);
            self.dirty.push(slot);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let s = &mut self.slots[slot as usize];
            s.clear(flag::DIRTY);
            if s.phase != Phase::Free && !s.has(flag::SEND_INFLIGHT) && self.has_output(slot) {
                self.start_send(slot);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    pub(super) fn start_send(&mut self, slot: u32) {
        let buf = if self.slots[slot as usize].has(flag::TLS) {
            match self.tls_wire(slot) {
                Some(wire) => wire,
                None => return,
            }
        } else {
            std::mem::take(&mut self.slots[slot as usize].out)
        };
        let s = &mut self.slots[slot as usize];
        s.inflight_len = buf.len().min(u32::MAX as usize) as u32;
        s.set(flag::SEND_INFLIGHT);
        let generation = s.generation;
        self.ring(slot).send(slot, generation, buf, 0);
    }

    pub(super) fn on_send(&mut self, slot: u32, c: Completion) {
        let Some((mut buf, offset)) = self.ring(slot).take_send(slot) else { return };
        let s = &mut self.slots[slot as usize];
        if c.result < 0 {
            s.clear(flag::SEND_INFLIGHT);
            s.inflight_len = 0;
            s.out.clear();
            let closing = s.phase == Phase::Closing;
            self.give_back(buf.take_bytes());
            if closing {
                self.advance_teardown(slot);
            } else {
                let why = ring::errno_str(c.result);
                let s = &mut self.slots[slot as usize];
                let info = s
                    .writer
                    .as_mut()
                    .and_then(|w| w.handle_eof(&why))
                    .unwrap_or_else(|| CloseInfo::new(1006, why, Initiator::Abnormal, CloseCause::Abnormal));
                self.teardown(slot, info, false);
            }
            return;
        }
        add(&self.metrics.bytes_out, c.result as u64);
        let sent = offset + c.result as usize;
        if sent < buf.len() && c.result > 0 {
            // Partial send: the rest goes out before anything queued after it.
            let generation = s.generation;
            self.ring(slot).send(slot, generation, buf, sent);
            return;
        }
        s.clear(flag::SEND_INFLIGHT);
        s.inflight_len = 0;
        self.give_back(buf.take_bytes());
        let s = &mut self.slots[slot as usize];
        if s.phase == Phase::Closing {
            self.advance_teardown(slot);
            return;
        }
        if s.has(flag::WANT_WRITABLE) {
            self.check_writable(slot);
        }
        if self.has_output(slot) {
            self.start_send(slot);
        }
    }
}
