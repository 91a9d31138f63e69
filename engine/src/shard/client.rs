//! The client role: `socket` straight into a direct descriptor, the socket options accepted sockets inherit
//! from the listener (linked uring_cmd setsockopts), optional `bind`, `connect`, the upgrade request with a
//! random key and the check of the 101 answer. The same wheel drives client pings, pong deadlines, the
//! handshake deadline and delayed starts.

use std::time::Duration;

use tracing::debug;

use super::slot::{flag, ClientState, Phase};
use super::{with_ctx, Core, Shard};
use crate::config::Config;
use crate::handler::{ConnectError, ConnectRequest, Handler};
use crate::metrics::bump;
use crate::proto::deflate;
use crate::proto::handshake::{self, ResponseParse};
use crate::proto::{CloseCause, CloseInfo, Initiator, Role};
use crate::ring::{self, Completion, Op, Token};

/// The options the listener gives accepted sockets, as (level, option, value) for outbound sockets, which
/// have no listener to inherit from.
pub(super) fn client_sockopts(cfg: &Config) -> Vec<(i32, i32, i32)> {
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as i32;
    let mut out = Vec::new();
    if let Some(ka) = cfg.socket_keepalive() {
        out.push((libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1));
        out.push((libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(ka.idle)));
        out.push((libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(ka.interval)));
        out.push((libc::IPPROTO_TCP, libc::TCP_KEEPCNT, ka.count.clamp(1, 127) as i32));
    }
    if let Some(t) = cfg.tcp_user_timeout {
        out.push((libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, t.as_millis().min(i32::MAX as u128) as i32));
    }
    out
}

impl Core {
    /// Start an outbound connection now, or hold it in the wheel until `not_before`.
    pub(super) fn connect(&mut self, request: Box<ConnectRequest>) {
        if self.shutting_down {
            self.failed_connects.push((request.tag, ConnectError::Closed));
            return;
        }
        let later = request.not_before.filter(|t| *t > self.now);
        let index = super::park(&mut self.pending_connects, request);
        match later {
            Some(at) => {
                let tick = self.tick_at(at);
                self.wheel.schedule(self.connect_key_base + index, tick);
            }
            None => self.issue_socket(index),
        }
    }

    pub(super) fn start_delayed_connect(&mut self, index: u32) {
        if self.pending_connects.get(index as usize).is_some_and(Option::is_some) {
            self.issue_socket(index);
        }
    }

    /// The ring with the most free slots, counting the sockets on their way into each (socket ops and
    /// adopted sockets' installs in flight); counts one more on its way in.
    pub(super) fn claim_emptiest_ring(&mut self) -> usize {
        let r = (0..self.rings.len()).min_by_key(|r| self.ring_open[*r] + self.ring_sockets[*r]).unwrap_or(0);
        self.ring_sockets[r] += 1;
        r
    }

    /// Open the socket on the ring with the most free slots (its table may be full: the socket op then
    /// fails with ENFILE and the connect reports NoCapacity).
    fn issue_socket(&mut self, index: u32) {
        let Some(Some(request)) = self.pending_connects.get(index as usize) else { return };
        let ipv6 = request.addr.is_ipv6();
        let r = self.claim_emptiest_ring();
        self.rings[r].socket(ipv6, index);
    }
}

impl<H: Handler> Shard<H> {
    pub(super) fn on_socket(&mut self, r: usize, token: Token, c: Completion) {
        let core = &mut self.core;
        core.ring_sockets[r] = core.ring_sockets[r].saturating_sub(1);
        let Some(request) = core.pending_connects.get_mut(token.slot as usize).and_then(Option::take) else {
            return;
        };
        if c.result < 0 {
            bump(&core.metrics.connect_failed);
            let err = if -c.result == libc::ENFILE || -c.result == libc::EMFILE {
                ConnectError::NoCapacity
            } else {
                ConnectError::Io(format!("socket: {}", ring::errno_str(c.result)))
            };
            core.failed_connects.push((request.tag, err));
            return;
        }
        let slot = core.rings[r].slot_of(c.result as u32);
        core.take_slot(slot, true);
        let generation = core.slots[slot as usize].generation;
        let key_bytes = {
            let a = core.next_random().to_ne_bytes();
            let b = core.next_random().to_ne_bytes();
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&a);
            k[8..].copy_from_slice(&b);
            k
        };
        let key = handshake::generate_key(key_bytes);
        let s = &mut core.slots[slot as usize];
        s.set(flag::ADDR_OP_PENDING);
        let bind = request.bind;
        let addr = request.addr;
        s.client = Some(Box::new(ClientState { request, key }));
        // TCP_NODELAY: pings and echoes are latency measurements. Linked, so the bind/connect after it runs
        // only once it is set.
        let ring = &mut core.rings[r];
        ring.enable_sockopt(slot, generation, libc::IPPROTO_TCP, libc::TCP_NODELAY, true);
        for &(level, name, value) in &core.client_sockopts {
            ring.set_sockopt(slot, generation, level, name, value, true);
        }
        match bind {
            Some(b) => {
                // Bind the address only and let connect pick the port: a bind to port 0 scans the whole
                // ephemeral range per call (quadratic at tens of thousands of sockets on one address), and
                // connect's choice also lets one port serve several destinations.
                ring.enable_sockopt(slot, generation, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, true);
                ring.bind(slot, generation, b)
            }
            None => {
                ring.connect(slot, generation, addr);
                core.slots[slot as usize].set(flag::PEER_KNOWN);
            }
        }
        let deadline = core.now + core.cfg.handshake_timeout;
        core.schedule(slot, deadline);
    }

    pub(super) fn on_connect_step(&mut self, slot: u32, op: Op, c: Completion) {
        let core = &mut self.core;
        let s = &mut core.slots[slot as usize];
        s.clear(flag::ADDR_OP_PENDING);
        if s.phase == Phase::Closing {
            core.advance_teardown(slot);
            return;
        }
        if c.result < 0 {
            let what = if op == Op::Bind { "bind" } else { "connect" };
            let err = ConnectError::Io(format!("{what}: {}", ring::errno_str(c.result)));
            self.fail_connect(slot, err);
            return;
        }
        let generation = s.generation;
        if op == Op::Bind {
            let addr = s.client.as_ref().map(|c| c.request.addr);
            if let Some(addr) = addr {
                s.set(flag::ADDR_OP_PENDING);
                s.set(flag::PEER_KNOWN);
                core.ring(slot).connect(slot, generation, addr);
            }
            return;
        }
        // Connected: send the upgrade request and wait for the 101 (with TLS, the ClientHello goes first and
        // the request waits in the queue until the handshake is done).
        let tls = s.client.as_ref().and_then(|c| c.request.tls.clone());
        if let Some(tls) = tls {
            if let Err(e) = core.start_client_tls(slot, &tls) {
                self.fail_connect(slot, ConnectError::Io(format!("tls: {e}")));
                return;
            }
        }
        let s = &mut core.slots[slot as usize];
        let Some(client) = s.client.as_ref() else { return };
        let mut headers: Vec<&str> =
            client.request.headers.iter().map(String::as_str).filter(|h| !h.contains(['\r', '\n'])).collect();
        let offer = deflate_offer(&core.cfg, &client.request.headers);
        if let Some(offer) = &offer {
            headers.push(offer);
        }
        let req = handshake::client_request(&client.request.host, &client.request.path, &client.key, &headers);
        s.phase = Phase::Handshake;
        core.lend_out(slot);
        core.slots[slot as usize].out.bytes_mut().extend_from_slice(&req);
        core.arm_recv(slot);
        core.mark_dirty(slot);
    }

    pub(super) fn client_handshake(&mut self, slot: u32) {
        let core = &mut self.core;
        let s = &core.slots[slot as usize];
        let Some(client) = s.client.as_ref() else { return };
        match handshake::parse_response(s.reader.handshake_bytes(), &client.key, core.cfg.max_handshake_size) {
            ResponseParse::Partial => {}
            ResponseParse::Rejected { status, reason } => {
                self.fail_connect(slot, ConnectError::Rejected { status, reason })
            }
            ResponseParse::Invalid(why) => self.fail_connect(slot, ConnectError::Invalid(why)),
            ResponseParse::Accepted { consumed, extensions } => {
                // What we offered decides what the answer may hold (nothing, when the request's own headers
                // carried the extensions: then they are the application's business).
                let mode = match deflate_offer(&core.cfg, &client.request.headers) {
                    Some(_) => core.cfg.deflate,
                    None if own_extensions(&client.request.headers) => return self.open_client(slot, consumed, None),
                    None => deflate::Deflate::Off,
                };
                match deflate::accept_response(&extensions, mode) {
                    Ok(negotiated) => self.open_client(slot, consumed, negotiated),
                    Err(why) => self.fail_connect(slot, ConnectError::Invalid(why)),
                }
            }
        }
    }

    /// The 101 was checked: open, tell the handler, then handle what came after the 101.
    fn open_client(&mut self, slot: u32, consumed: usize, deflate: Option<deflate::PerConn>) {
        let core = &mut self.core;
        core.open_slot(slot, core.slots[slot as usize].profile, Role::Client, deflate.unwrap_or_default());
        let tag = core.slots[slot as usize].client.take().map_or(0, |c| c.request.tag);
        bump(&core.metrics.connected);
        let id = core.id(slot);
        with_ctx!(self, |h, ctx| h.on_connected(&mut ctx, id, tag));
        if self.core.slots[slot as usize].phase == Phase::Open {
            self.opened(slot, consumed);
        }
    }

    /// An outbound connection failed before opening: tell the handler and free the slot.
    pub(super) fn fail_connect(&mut self, slot: u32, err: ConnectError) {
        let core = &mut self.core;
        bump(&core.metrics.connect_failed);
        let s = &mut core.slots[slot as usize];
        let tag = s.client.as_ref().map_or(0, |c| c.request.tag);
        s.client = None;
        s.out.clear();
        debug!(shard = core.index, slot, error = %err, "connect failed");
        let info = CloseInfo::new(0, err.to_string(), Initiator::Local, CloseCause::Abnormal);
        with_ctx!(self, |h, ctx| h.on_connect_failed(&mut ctx, tag, &err));
        self.core.teardown(slot, info, false);
    }
}

/// The request's headers name extensions themselves (the application's own negotiation).
fn own_extensions(headers: &[String]) -> bool {
    headers.iter().any(|h| h.get(..25).is_some_and(|n| n.eq_ignore_ascii_case("sec-websocket-extensions:")))
}

/// The Sec-WebSocket-Extensions line the client role adds: permessage-deflate as configured, unless the
/// request carries its own.
fn deflate_offer(cfg: &Config, headers: &[String]) -> Option<String> {
    if own_extensions(headers) {
        return None;
    }
    deflate::client_offer(cfg.deflate).map(|offer| format!("Sec-WebSocket-Extensions: {offer}"))
}
