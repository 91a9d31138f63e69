//! HTTP/1.1 keep-alive for plain HTTP requests (the server API, `/metrics`): after an answer, a connection
//! whose client allowed it (`RequestParse::Http::keep_alive`) stays in the handshake phase and waits for its
//! next request, instead of paying a TCP handshake and teardown per request.
//!
//! - The request's bytes leave the handshake buffer when it is parsed; what follows them (a pipelined next
//!   request) waits there until the answer is out, so answers go in request order. The shard serves such a
//!   waiting request after the completions (`serve_pipelined`), one per connection per loop iteration.
//! - Idle (`flag::HTTP_IDLE`): until `Config::http_keepalive` after the answer. The first bytes of the next
//!   request give it `handshake_timeout` to complete (a slow next request is answered 408, as a first one
//!   is); an idle connection past its deadline is closed without an answer.
//! - The answer says `Connection: close` and the connection ends after it when the client asked, when
//!   keep-alive is off, when the server is shutting down, for the engine's own refusals (4xx, per-IP
//!   limits) and for a 504 to a deferred answer that never came.
//! - The answer to a HEAD request is its head alone (`flag::HEAD_REQUEST`), so a kept-alive client does not
//!   read the body as the start of the next answer.
//! - A client that closes an idle connection ends it normally (code 0, as after an answer), not as an
//!   abnormal 1006.
//! - Bytes waiting behind an unanswered request are bounded by the largest legal request
//!   (`max_handshake_size + max_http_body`): a client past it is answered 431 and closed.

use super::slot::{flag, Phase};
use super::{Core, Shard};
use crate::handler::Handler;
use crate::proto::handshake::{self, HttpError};
use crate::proto::{CloseCause, CloseInfo, Initiator};

impl Core {
    /// Whether the answer to the slot's current request keeps the connection open.
    pub(super) fn keeps_alive(&self, slot: u32) -> bool {
        self.slots[slot as usize].has(flag::KEEP_ALIVE) && self.cfg.http_keepalive.is_some() && !self.shutting_down
    }

    /// Queue `response` (made with `Connection: keep-alive`) and wait for the next request.
    pub(super) fn answer_and_keep(&mut self, slot: u32, response: &[u8]) {
        self.lend_out(slot);
        let idle = self.cfg.http_keepalive.unwrap_or_default();
        let deadline = self.now + idle;
        let s = &mut self.slots[slot as usize];
        s.clear(flag::KEEP_ALIVE);
        s.set(flag::HTTP_IDLE);
        s.out.bytes_mut().extend_from_slice(response);
        let generation = s.generation;
        let rest = s.reader.handshake_buf();
        if rest.is_empty() {
            *rest = Vec::new(); // an idle connection holds no buffer
        } else {
            self.pipelined.push((slot, generation));
        }
        self.schedule(slot, deadline);
        self.mark_dirty(slot);
    }

    /// Bytes of a next request came to a kept-alive connection: it is no longer idle and has
    /// `handshake_timeout` to complete the request. Returns false if the connection was closed instead
    /// (too many bytes waiting behind an unanswered request).
    pub(super) fn next_request_bytes(&mut self, slot: u32) -> bool {
        let waiting = self.slots[slot as usize].reader.handshake_bytes().len();
        if waiting > self.cfg.max_handshake_size + self.cfg.max_http_body {
            let err = HttpError::new(431, "Request Header Fields Too Large", "too many bytes sent ahead of the answer");
            let resp = handshake::reject_response(&err);
            self.http_answer(slot, resp, err.status);
            return false;
        }
        let s = &mut self.slots[slot as usize];
        if s.has(flag::HTTP_IDLE) {
            s.clear(flag::HTTP_IDLE);
            let deadline = self.now + self.cfg.handshake_timeout;
            self.schedule(slot, deadline);
        }
        true
    }

    /// The keep-alive deadline of an idle connection passed: close it, no answer owed.
    pub(super) fn idle_timeout(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.clear(flag::HTTP_IDLE);
        *s.reader.handshake_buf() = Vec::new();
        let info = CloseInfo::new(0, "http keep-alive idle", Initiator::Local, CloseCause::HttpRejected);
        self.teardown(slot, info, true);
    }
}

impl<H: Handler> Shard<H> {
    /// Serve the requests that came pipelined behind an answered one (see the module doc).
    pub(super) fn serve_pipelined(&mut self) {
        if self.core.pipelined.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.core.pipelined);
        for &(slot, generation) in &ready {
            let s = &self.core.slots[slot as usize];
            if s.phase == Phase::Handshake && s.generation == generation && !s.reader.handshake_bytes().is_empty() {
                self.handshake_step(slot);
            }
        }
        ready.clear();
        if self.core.pipelined.is_empty() {
            self.core.pipelined = ready;
        }
    }
}
