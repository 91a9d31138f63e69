//! The shard's one timing wheel. Each slot has at most one entry: its next deadline, the earliest of the
//! protocol's (ping, pong, close), the application's (`Ctx::set_timer`), the end of a paused receive
//! (`pause.rs`) and, outside Open, the handshake or
//! teardown deadline. Delayed connects (`ConnectRequest::not_before`) use keys past the slots.
//!
//! Deadlines round *up* to the tick (default 10 ms), so nothing fires early. The loop sleeps until the
//! wheel's next expiration (at most 1 s).

use std::time::{Duration, Instant};

use tracing::info;

use super::slot::{flag, Phase};
use super::{with_ctx, Core, Shard};
use crate::handler::{ConnectError, Handler};
use crate::metrics::bump;
use crate::proto::handshake::{self, HttpError};
use crate::proto::{CloseCause, CloseInfo, Event, Initiator};

impl Core {
    /// How long the ring may sleep: until the wheel's next deadline, at most one second.
    pub(super) fn sleep_budget(&self) -> Duration {
        let mut budget = self.cfg.handler_tick.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
        if let Some(tick) = self.wheel.next_expiration() {
            let at = self.epoch + Duration::from_nanos((tick as u128 * self.tick_nanos).min(u64::MAX as u128) as u64);
            budget = budget.min(at.saturating_duration_since(self.now));
        }
        for d in [self.drain_deadline, self.next_accept_retry()].into_iter().flatten() {
            budget = budget.min(d.saturating_duration_since(self.now));
        }
        if !self.dirty.is_empty()
            || !self.fanout.is_empty()
            || !self.writable.is_empty()
            || !self.tls_waiting.is_empty()
        {
            budget = Duration::ZERO;
        }
        budget.max(Duration::from_micros(100))
    }

    pub(super) fn now_tick(&self) -> u64 {
        ((self.now - self.epoch).as_nanos() / self.tick_nanos) as u64
    }

    /// The first tick at or after `at`: a deadline never fires early.
    pub(super) fn tick_at(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        (nanos.div_ceil(self.tick_nanos) as u64).max(1)
    }

    pub(super) fn schedule(&mut self, slot: u32, at: Instant) {
        let tick = self.tick_at(at);
        self.wheel.schedule(slot, tick);
    }

    /// Re-arm an open slot's wheel entry: the earlier of its protocol and application deadlines.
    pub(super) fn rearm(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open {
            return;
        }
        let cfg = &self.profiles[s.profile as usize].proto;
        let proto = s.writer.as_ref().and_then(|w| w.poll_timeout(cfg)).map(|at| self.tick_at(at));
        let app = (s.app_tick != 0).then_some(s.app_tick);
        let resume = self.resume_at(slot);
        match proto.into_iter().chain(app).chain(resume).min() {
            Some(tick) => self.wheel.schedule(slot, tick),
            None => {
                self.wheel.cancel(slot);
            }
        }
    }

    /// Set or clear the application's deadline of an open or handshaking slot.
    pub(super) fn set_app_timer(&mut self, slot: u32, at: Option<Instant>) {
        let tick = at.map_or(0, |at| self.tick_at(at));
        self.slots[slot as usize].app_tick = tick;
        self.rearm(slot);
    }

    /// A handshake that did not complete in time: 408 and close (a connection the per-IP limits refused gets
    /// its 503 or 429 instead, at its shorter deadline).
    fn handshake_timeout(&mut self, slot: u32) {
        if self.slots[slot as usize].has(flag::HTTP_IDLE) {
            self.idle_timeout(slot);
            return;
        }
        let id = self.id(slot);
        if self.slots[slot as usize].has(flag::HTTP_DEFERRED) {
            info!("deferred HTTP answer not given in time conn={id}");
            self.slots[slot as usize].clear(flag::HTTP_DEFERRED | flag::KEEP_ALIVE);
            let resp = crate::handler::HttpResponse::new(
                504,
                "Gateway Timeout",
                "text/plain; charset=utf-8",
                "the answer did not come in time\n",
            );
            self.answer_http(slot, &resp);
            return;
        }
        if self.refuse_per_ip(slot) {
            return;
        }
        info!("handshake timeout conn={id}");
        bump(&self.metrics.handshake_timeouts);
        let err = HttpError {
            status: 408,
            reason: "Request Timeout",
            message: "upgrade request not completed in time".into(),
        };
        let resp = handshake::reject_response(&err);
        self.lend_out(slot);
        let s = &mut self.slots[slot as usize];
        *s.reader.handshake_buf() = Vec::new();
        s.out.bytes_mut().extend_from_slice(&resp);
        let info = CloseInfo::new(0, "handshake timeout", Initiator::Local, CloseCause::HandshakeTimeout);
        self.teardown(slot, info, true);
    }

    /// The protocol's deadline of an open slot, if due: a ping goes out, or the connection ends.
    fn protocol_timeout(&mut self, slot: u32) {
        self.lend_out(slot);
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        let cfg = &self.profiles[s.profile as usize].proto;
        let Some(writer) = s.writer.as_mut() else { return };
        match writer.handle_timeout(now, s.out.bytes_mut(), cfg) {
            Some(Event::PingSent) => {
                bump(&self.metrics.pings_sent);
                self.mark_dirty(slot);
                self.rearm(slot);
            }
            Some(Event::Closed(info)) => {
                s.reader.clear();
                if info.cause == CloseCause::PongTimeout {
                    bump(&self.metrics.pong_timeouts);
                }
                self.teardown(slot, info, true);
            }
            _ => self.rearm(slot),
        }
    }
}

impl<H: Handler> Shard<H> {
    pub(super) fn expire_timers(&mut self) {
        let now_tick = self.core.now_tick();
        while let Some(key) = self.core.wheel.poll(now_tick) {
            if key >= self.core.connect_key_base {
                self.core.start_delayed_connect(key - self.core.connect_key_base);
                continue;
            }
            let slot = key;
            let Some(s) = self.core.slots.get_mut(slot as usize) else { continue };
            match s.phase {
                Phase::Free => {}
                Phase::Connecting => self.fail_connect(slot, ConnectError::Timeout),
                Phase::Handshake if s.has(flag::CLIENT) => self.fail_connect(slot, ConnectError::Timeout),
                Phase::Handshake => self.core.handshake_timeout(slot),
                Phase::Open => {
                    self.core.resume_if_due(slot, now_tick);
                    let s = &mut self.core.slots[slot as usize];
                    if s.app_tick != 0 && s.app_tick <= now_tick {
                        s.app_tick = 0;
                        let id = self.core.id(slot);
                        with_ctx!(self, |h, ctx| h.on_timer(&mut ctx, id));
                        if self.core.slots[slot as usize].phase != Phase::Open {
                            continue;
                        }
                    }
                    self.core.protocol_timeout(slot);
                }
                Phase::Closing => self.core.teardown_overdue(slot),
            }
        }
    }
}
