//! Pausing a connection's receive ([`Ctx::pause_receive`](crate::Ctx::pause_receive)): its multishot receive
//! is cancelled and not armed again until the deadline. Meanwhile the kernel's receive queue fills, TCP's
//! window closes and the peer is slowed by TCP itself: a client over its rate costs no receive completion,
//! no parse and no answer while it waits, and what it sent meanwhile arrives later in full buffers, one
//! completion for many messages.
//!
//! The deadline lives in `Core::paused` (few slots are paused at a time; the slot itself only carries the
//! `RECV_PAUSED` flag) and is part of the slot's one wheel entry (`Core::rearm`). Bytes the kernel had
//! already handed over (the rest of the buffer being delivered, completions that raced the cancel) are still
//! delivered. A cancel can miss a receive the kernel is running at that moment: the next completion of a
//! paused slot that says more will come cancels again (`on_recv`). A close from our side ends the pause, so
//! that the peer's Close is read.

use std::time::Instant;

use super::slot::{flag, Phase};
use super::Core;
use crate::metrics::bump;
use crate::ring::Op;

impl Core {
    /// Stop receiving on an open slot until `until` (a later call replaces the deadline). False if the slot
    /// is not open or our Close is out.
    pub(super) fn pause_recv(&mut self, slot: u32, until: Instant) -> bool {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open || !s.writer.as_ref().is_some_and(|w| w.is_open()) {
            return false;
        }
        let tick = self.tick_at(until);
        if tick <= self.now_tick() {
            self.resume_recv(slot);
            return true;
        }
        self.paused.insert(slot, tick);
        let s = &mut self.slots[slot as usize];
        if !s.has(flag::RECV_PAUSED) {
            s.set(flag::RECV_PAUSED);
            bump(&self.metrics.recv_paused);
            if s.has(flag::RECV_ARMED) {
                self.cancel_recv(slot);
            }
        }
        self.rearm(slot);
        true
    }

    /// End a pause: receive again (once the cancelled receive's last completion is in, if it is not yet).
    pub(super) fn resume_recv(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.has(flag::RECV_PAUSED) {
            return;
        }
        s.clear(flag::RECV_PAUSED);
        self.paused.remove(&slot);
        let s = &self.slots[slot as usize];
        if s.phase == Phase::Open && !s.has(flag::RECV_ARMED) {
            self.arm_recv(slot);
        }
    }

    /// A paused slot whose deadline has come receives again.
    pub(super) fn resume_if_due(&mut self, slot: u32, now_tick: u64) {
        if self.resume_at(slot).is_some_and(|at| at <= now_tick) {
            self.resume_recv(slot);
        }
    }

    /// The wheel tick at which a paused slot receives again.
    pub(super) fn resume_at(&self, slot: u32) -> Option<u64> {
        if !self.slots[slot as usize].has(flag::RECV_PAUSED) {
            return None;
        }
        self.paused.get(&slot).copied()
    }

    /// The slot is ending: forget its pause (its receive is cancelled by the teardown).
    pub(super) fn forget_pause(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.has(flag::RECV_PAUSED) {
            s.clear(flag::RECV_PAUSED);
            self.paused.remove(&slot);
        }
    }

    /// Cancel the slot's multishot receive by its token: the small one, and the large one for a slot that
    /// moved (or is moving) there.
    pub(super) fn cancel_recv(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        let (large, generation) = (s.has(flag::RECV_LARGE), s.generation);
        let ring = self.ring(slot);
        ring.cancel_op(Op::Recv, slot, generation);
        if large {
            ring.cancel_op(Op::RecvLarge, slot, generation);
        }
    }
}
