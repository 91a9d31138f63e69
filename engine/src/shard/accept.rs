//! The server side: one SO_REUSEPORT listener per shard, multishot accept into direct descriptors, the
//! upgrade request (with the application's say in `on_upgrade`) and plain HTTP answers (`on_http`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error, warn};

use super::slot::{flag, Phase, Slot};
use super::{with_ctx, Core, Shard};
use crate::config::Config;
use crate::handler::{Handler, Upgrade};
use crate::metrics::bump;
use crate::per_ip::Verdict;
use crate::proto::deflate;
use crate::proto::handshake::{self, HttpError, RequestParse};
use crate::proto::{CloseCause, CloseInfo, Initiator, Role};
use crate::ring::Completion;

/// One SO_REUSEPORT listener per shard; the kernel spreads new connections over them. Options set here are
/// inherited by every accepted socket (TCP_NODELAY, keepalive, TCP_USER_TIMEOUT), which saves a setsockopt
/// per connection.
pub(super) fn bind_listeners(cfg: &Config, addr: SocketAddr, shards: usize) -> io::Result<Vec<socket2::Socket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(shards);
    let mut addr = addr;
    if addr.port() != 0 {
        // SO_REUSEPORT would let this process silently share the port with another server already
        // listening there (same user). A plain bind first turns that into a clear "address in use".
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        drop(probe);
    }
    for _ in 0..shards {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nodelay(true)?;
        apply_keepalive(&s, cfg)?;
        s.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        s.listen(cfg.backlog)?;
        if addr.port() == 0 {
            // Every shard must listen on the same port the first one got.
            addr = s.local_addr()?.as_socket().unwrap_or(addr);
        }
        out.push(s);
    }
    Ok(out)
}

fn apply_keepalive(s: &socket2::Socket, cfg: &Config) -> io::Result<()> {
    crate::adopt::set_tcp_timeouts(s, cfg.socket_keepalive(), cfg.tcp_user_timeout)
}

/// How long a connection refused by the per-IP limits may take to send its request before it is answered
/// anyway (a flood of refused connections must not hold slots for the whole handshake_timeout).
const REFUSED_WAIT: Duration = Duration::from_secs(1);

fn unavailable(message: String) -> HttpError {
    HttpError { status: 503, reason: "Service Unavailable", message }
}

impl Core {
    /// Arm ring `r`'s multishot accept on its listener.
    pub(super) fn arm_accept(&mut self, r: usize) {
        let a = &mut self.acceptors[r];
        if let Some(l) = &a.listener {
            let fd = l.as_raw_fd();
            self.rings[r].accept_multi(fd);
            a.armed = true;
        }
    }

    pub(super) fn retry_accept(&mut self) {
        for r in 0..self.acceptors.len() {
            let a = &self.acceptors[r];
            if a.retry_at.is_some_and(|t| self.now >= t) && !a.armed && !self.shutting_down {
                self.arm_accept(r);
            }
        }
    }

    /// The earliest accept retry of any ring (for the loop's sleep).
    pub(super) fn next_accept_retry(&self) -> Option<std::time::Instant> {
        self.acceptors.iter().filter_map(|a| a.retry_at).min()
    }

    pub(super) fn on_accept(&mut self, r: usize, c: Completion) {
        if !c.more() {
            self.acceptors[r].armed = false;
        }
        if c.result < 0 {
            let a = &mut self.acceptors[r];
            match -c.result {
                libc::ENFILE | libc::EMFILE => {
                    bump(&self.metrics.accept_table_full);
                    if !a.paused {
                        warn!(shard = self.index, ring = r, "file table full: accepting paused until a slot frees");
                    }
                    a.paused = true;
                }
                libc::ECANCELED => {}
                e => {
                    if a.retry_at.is_none() {
                        warn!(shard = self.index, ring = r, error = %io::Error::from_raw_os_error(e), "accept failed; retrying in 100ms");
                    }
                    if !a.armed {
                        a.retry_at = Some(self.now + Duration::from_millis(100));
                    }
                    return;
                }
            }
            let a = &self.acceptors[r];
            if !a.armed && !a.paused && !self.shutting_down {
                self.arm_accept(r);
            }
            return;
        }
        self.acceptors[r].retry_at = None;
        let slot = self.rings[r].slot_of(c.result as u32);
        self.take_slot(slot, false);
        if self.shutting_down {
            let info = CloseInfo::new(1001, "server shutting down", Initiator::Local, CloseCause::Shutdown);
            self.teardown(slot, info, false);
        } else {
            bump(&self.metrics.accepted);
            let open_total = self.shared.open_total.load(Ordering::Relaxed);
            if open_total > self.shared.max_connections {
                self.slots[slot as usize].set(flag::OVER_CAPACITY);
            }
            if self.cfg.tls.is_some() {
                self.mark_tls(slot);
            }
            let (generation, ipv6) = (self.slots[slot as usize].generation, self.listener_ipv6);
            self.ring(slot).peer_name(slot, generation, ipv6);
            self.slots[slot as usize].set(flag::PEERNAME_PENDING);
            self.arm_recv(slot);
            let deadline = self.now + self.cfg.handshake_timeout;
            self.schedule(slot, deadline);
        }
        let a = &self.acceptors[r];
        if !a.armed && !a.paused && !self.shutting_down {
            self.arm_accept(r);
        }
    }

    /// Take a freshly allocated descriptor slot into use.
    pub(super) fn take_slot(&mut self, slot: u32, client: bool) {
        let idx = slot as usize;
        if idx >= self.slots.len() {
            self.slots.resize_with(idx + 1, || Slot::free(0));
        }
        let s = &mut self.slots[idx];
        if s.phase != Phase::Free {
            // The kernel only reuses an index after our close completed, which frees the slot first.
            error!(shard = self.index, slot, phase = ?s.phase, "descriptor slot handed out while still in use");
        }
        let generation = s.generation.wrapping_add(1) & 0xff_ffff;
        *s = Slot::free(self.now.saturating_duration_since(self.epoch).as_nanos() as u64);
        s.generation = generation;
        s.phase = if client { Phase::Connecting } else { Phase::Handshake };
        s.flags = if client { flag::CLIENT } else { 0 };
        bump(&self.metrics.open);
        let r = self.ring_index(slot);
        self.ring_open[r] += 1;
        self.shared.open_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Answer a plain HTTP request or a refused upgrade, then close once it is sent.
    pub(super) fn http_answer(&mut self, slot: u32, response: Vec<u8>, status: u16) {
        self.lend_out(slot);
        let s = &mut self.slots[slot as usize];
        *s.reader.handshake_buf() = Vec::new();
        s.out.bytes_mut().extend_from_slice(&response);
        let info = CloseInfo::new(0, format!("http {status}"), Initiator::Local, CloseCause::HttpRejected);
        self.teardown(slot, info, true);
    }

    /// The client of a plain request waits for `100 Continue` before it sends the body: send it, once.
    fn send_continue(&mut self, slot: u32) {
        if self.slots[slot as usize].has(flag::CONTINUE_SENT) {
            return;
        }
        self.lend_out(slot);
        let s = &mut self.slots[slot as usize];
        s.set(flag::CONTINUE_SENT);
        s.out.bytes_mut().extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.mark_dirty(slot);
    }

    /// Writes `resp` as the answer to the slot's plain HTTP request, then waits for the next request
    /// (keep-alive, `keepalive.rs`) or closes the connection.
    pub(super) fn answer_http(&mut self, slot: u32, resp: &crate::handler::HttpResponse) {
        let headers: Vec<String> = resp.headers.iter().filter_map(|(n, v)| handshake::header_line(n, v)).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let keep = self.keeps_alive(slot);
        let mut bytes =
            handshake::http_response_on(resp.status, resp.reason, resp.content_type, &headers, &resp.body, keep);
        let s = &mut self.slots[slot as usize];
        if s.has(flag::HEAD_REQUEST) {
            // A HEAD answer is the head alone (Content-Length still the body's): bytes after it would be read
            // as the start of the next answer on a kept-alive connection.
            s.clear(flag::HEAD_REQUEST);
            bytes.truncate(bytes.len() - resp.body.len());
        }
        if keep {
            self.answer_and_keep(slot, &bytes);
        } else {
            self.http_answer(slot, bytes, resp.status);
        }
    }

    /// The deferred answer to the slot's request came (ignored if the slot is not waiting for one).
    pub(super) fn answer_deferred(&mut self, slot: u32, resp: &crate::handler::HttpResponse) {
        let s = &mut self.slots[slot as usize];
        if s.phase != Phase::Handshake || !s.has(flag::HTTP_DEFERRED) {
            return;
        }
        s.clear(flag::HTTP_DEFERRED);
        self.answer_http(slot, resp);
    }

    /// The handler defers the answer to the slot's plain HTTP request (only during `on_http`).
    pub(super) fn defer_http(&mut self, slot: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        if s.phase != Phase::Handshake || s.has(flag::CLIENT) {
            return false;
        }
        s.set(flag::HTTP_DEFERRED);
        true
    }

    fn reject(&mut self, slot: u32, err: &HttpError) {
        let resp = handshake::reject_response(err);
        self.http_answer(slot, resp, err.status);
    }

    /// Shard 0 removes the per-IP entries whose rate bucket refilled with no connection open, about once a
    /// second (entries are otherwise removed as their last connection closes).
    pub(super) fn sweep_per_ip(&mut self) {
        if self.index == 0 && self.now >= self.next_ip_sweep && self.shared.per_ip.enabled() {
            self.shared.per_ip.sweep(self.now);
            self.next_ip_sweep = self.now + Duration::from_secs(1);
        }
    }

    /// The peer of an accepted connection is known: charge it to its address's per-IP limits.
    fn charge_peer(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if !self.shared.per_ip.enabled() || s.has(flag::CLIENT) || s.phase != Phase::Handshake {
            return;
        }
        let Some(peer) = self.peer_addr(slot) else { return };
        let verdict = self.shared.per_ip.admit(peer.ip(), self.now);
        self.slots[slot as usize].per_ip = Some(verdict);
        if verdict != Verdict::Admitted {
            // A refused connection keeps its slot only until its request is complete, or a second at most.
            let deadline = self.now + self.cfg.handshake_timeout.min(REFUSED_WAIT);
            self.schedule(slot, deadline);
        }
    }

    /// A complete request from an address past its per-IP limits (or its refused connection's deadline): 503 (connections held) or 429 (rate),
    /// with Retry-After. Returns whether the request was refused.
    pub(super) fn refuse_per_ip(&mut self, slot: u32) -> bool {
        let verdict = self.slots[slot as usize].per_ip;
        let (status, reason, message, counter) = match verdict {
            Some(Verdict::TooMany) => (
                503,
                "Service Unavailable",
                format!("too many connections from your address (at most {})", self.cfg.per_ip_max_connections),
                &self.metrics.rejected_ip_connections,
            ),
            Some(Verdict::TooFast) => (
                429,
                "Too Many Requests",
                format!("too many new connections from your address (at most {}/s)", self.cfg.per_ip_handshake_rate),
                &self.metrics.rejected_ip_rate,
            ),
            _ => return false,
        };
        bump(counter);
        let retry = format!("Retry-After: {}", self.shared.per_ip.retry_after(verdict.unwrap_or(Verdict::TooMany)));
        debug!(conn = %self.id(slot), status, "refused by the per-IP limits");
        let body = format!("{message}\n");
        let resp = handshake::http_response(status, reason, "text/plain; charset=utf-8", &[&retry], body.as_bytes());
        self.http_answer(slot, resp, status);
        true
    }
}

impl<H: Handler> Shard<H> {
    /// SO_PEERNAME came back; a request that arrived before it is handled now.
    pub(super) fn on_peer_name(&mut self, slot: u32, c: Completion) {
        let s = &mut self.core.slots[slot as usize];
        s.clear(flag::PEERNAME_PENDING);
        if c.result > 0 {
            s.set(flag::PEER_KNOWN);
            self.core.charge_peer(slot);
        }
        let s = &mut self.core.slots[slot as usize];
        if s.has(flag::REQUEST_WAITING) && s.phase == Phase::Handshake {
            s.clear(flag::REQUEST_WAITING);
            self.server_handshake(slot);
        }
        self.core.advance_teardown(slot);
    }

    pub(super) fn server_handshake(&mut self, slot: u32) {
        let core = &mut self.core;
        let parsed = handshake::parse_request(
            core.slots[slot as usize].reader.handshake_bytes(),
            core.cfg.max_handshake_size,
            core.cfg.max_http_body,
        );
        if !matches!(parsed, RequestParse::Partial) && core.slots[slot as usize].has(flag::PEERNAME_PENDING) {
            // The application is promised the peer address: wait for SO_PEERNAME (it completes right after
            // the accept in practice).
            core.slots[slot as usize].set(flag::REQUEST_WAITING);
            return;
        }
        if !matches!(parsed, RequestParse::Partial) && core.refuse_per_ip(slot) {
            return;
        }
        let id = core.id(slot);
        let peer = core.peer_addr(slot);
        match parsed {
            RequestParse::Partial => {}
            RequestParse::Continue => core.send_continue(slot),
            RequestParse::Reject(err) => {
                debug!(conn = %id, status = err.status, message = %err.message, "upgrade refused");
                core.reject(slot, &err);
            }
            RequestParse::Http { mut request, consumed, keep_alive } => {
                // The request is parsed out: what follows it is the next request (keepalive.rs).
                let s = &mut core.slots[slot as usize];
                s.reader.handshake_buf().drain(..consumed);
                s.clear(flag::CONTINUE_SENT);
                if keep_alive {
                    s.set(flag::KEEP_ALIVE);
                }
                if request.method == "HEAD" {
                    s.set(flag::HEAD_REQUEST);
                }
                request.peer = peer;
                request.conn = Some(id);
                let resp = with_ctx!(self, |h, ctx| h.on_http(&mut ctx, &request));
                if self.core.slots[slot as usize].has(flag::HTTP_DEFERRED) {
                    return; // answered later through EngineHandle::answer_http
                }
                self.core.answer_http(slot, &resp);
            }
            RequestParse::Upgrade { mut request, consumed } => {
                if core.slots[slot as usize].has(flag::OVER_CAPACITY) {
                    bump(&core.metrics.rejected_capacity);
                    let max = core.shared.max_connections;
                    core.reject(slot, &unavailable(format!("server at capacity ({max} connections)")));
                    return;
                }
                if core.shutting_down {
                    core.reject(slot, &unavailable("server shutting down".into()));
                    return;
                }
                request.peer = peer;
                let verdict = with_ctx!(self, |h, ctx| h.on_upgrade(&mut ctx, id, &request));
                let accept = match verdict {
                    Upgrade::Reject(err) => {
                        self.core.reject(slot, &err);
                        return;
                    }
                    Upgrade::Accept(accept) => accept,
                };
                let core = &mut self.core;
                if core.slots[slot as usize].phase != Phase::Handshake {
                    return; // the handler closed it
                }
                if let Some(p) = &accept.subprotocol {
                    if !request.protocols.iter().any(|o| o == p) {
                        error!(conn = %id, protocol = %p, "on_upgrade chose a subprotocol the client did not offer");
                        let err = HttpError {
                            status: 500,
                            reason: "Internal Server Error",
                            message: "server chose an unoffered subprotocol".into(),
                        };
                        core.reject(slot, &err);
                        return;
                    }
                }
                let profile = core.profile_or_default(accept.profile.index());
                let mut headers: Vec<String> =
                    accept.headers.iter().filter_map(|(n, v)| handshake::header_line(n, v)).collect();
                // permessage-deflate, unless the application answered the extensions itself.
                let mut deflate = Default::default();
                if !accept.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")) {
                    if let Some((negotiated, answer)) = deflate::accept_offer(&request.extensions, core.cfg.deflate) {
                        headers.extend(handshake::header_line("Sec-WebSocket-Extensions", &answer));
                        deflate = negotiated;
                    }
                }
                let key = handshake::accept_key(request.key.as_bytes());
                let resp = handshake::upgrade_response(&key, accept.subprotocol.as_deref(), &headers);
                core.lend_out(slot);
                core.slots[slot as usize].out.bytes_mut().extend_from_slice(&resp);
                core.open_slot(slot, profile, Role::Server, deflate);
                self.opened(slot, consumed);
            }
        }
    }
}
