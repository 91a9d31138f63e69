//! One shard: one thread, one io_uring, one timing wheel, one slab of connections, and the loop that joins them.
//!
//! A connection's slot index is its direct-descriptor index in the ring's file table: the kernel allocates it at
//! accept (or socket creation), so the slab needs no allocator of its own. A slot moves through
//! `Free -> Handshake -> Open -> Closing -> Free`; it returns to `Free` only once every operation the kernel
//! had in flight for it (receive, send, peer-name lookup, shutdown, close) has completed, so no completion can
//! ever reach a later occupant of the slot (the generation in every token double-checks this).
//!
//! Each slot has at most one entry in the wheel: its next deadline (handshake, ping, pong, close or teardown),
//! re-armed in O(1) whenever it changes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use tracing::{debug, error, info, warn};

use crate::engine::{
    Capacity, Closed, CmdQueue, Config, ConnId, ConnectError, ConnectRequest, Ctx, Engine, EngineHandle, Handler,
    Message, SendQueuePolicy, ShardLink, Shared, Upgrade,
};
use crate::metrics::{add, bump, CloseReason, ShardMetrics};
use crate::proto::handshake::{self, RequestParse, ResponseParse};
use crate::proto::{CloseInfo, Connection, Event, Initiator, Input, MessageKind, ProtoConfig, Role};
use crate::ring::{self, Completion, Op, Ring, RingConfig, SockoptValue, Token, Waker};
use crate::wheel::Wheel;

/// What other threads (and handlers, for other connections) ask a shard to do.
pub(crate) enum Command {
    Send { conn: ConnId, kind: MessageKind, data: Vec<u8> },
    Broadcast { kind: MessageKind, data: Arc<[u8]> },
    Close { conn: ConnId, code: u16, reason: String },
    Ping { conn: ConnId },
    Connect(Box<ConnectRequest>),
    Run(Box<dyn FnOnce(&mut Ctx<'_>) + Send>),
    Notify(Box<dyn std::any::Any + Send>),
    Shutdown { drain: Duration },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Free,
    /// Client role: socket created, bind/connect in flight.
    Connecting,
    /// Waiting for (server) the upgrade request or (client) the 101 response.
    Handshake,
    Open,
    /// Final bytes flushing, then shutdown, then close.
    Closing,
}

/// Per-slot flags, packed to keep the slot small.
mod flag {
    pub const RECV_ARMED: u16 = 1 << 0;
    pub const SEND_INFLIGHT: u16 = 1 << 1;
    pub const PEERNAME_PENDING: u16 = 1 << 2;
    pub const SHUTDOWN_SUBMITTED: u16 = 1 << 3;
    pub const SHUTDOWN_DONE: u16 = 1 << 4;
    pub const CLOSE_SUBMITTED: u16 = 1 << 5;
    /// Past max_connections: answer the upgrade with 503.
    pub const OVER_CAPACITY: u16 = 1 << 6;
    /// Closing: flush `out` before shutting down.
    pub const FLUSH_FIRST: u16 = 1 << 7;
    pub const WAS_OPEN: u16 = 1 << 8;
    pub const DIRTY: u16 = 1 << 9;
    pub const CLIENT: u16 = 1 << 10;
    /// An op whose completion we must wait for before close (bind/connect/setsockopt chain).
    pub const ADDR_OP_PENDING: u16 = 1 << 11;
    /// The ring's address buffer of the slot holds the peer (SO_PEERNAME came back, or connect was issued).
    pub const PEER_KNOWN: u16 = 1 << 12;
}

/// The client half's state while connecting and handshaking.
struct ClientState {
    request: Box<ConnectRequest>,
    key: String,
}

/// Why and how a connection is ending; fixed by the first decision to close it.
struct Ending {
    info: CloseInfo,
    reason: CloseReason,
}

struct Slot {
    generation: u32,
    phase: Phase,
    flags: u16,
    /// Bytes of the send in flight (for the send-queue bound).
    inflight_len: u32,
    created_at: Instant,
    /// Handshake bytes until the request (or response) is complete; empty afterwards.
    handshake: Vec<u8>,
    proto: Option<Connection>,
    /// Bytes waiting for the next send.
    out: Vec<u8>,
    ending: Option<Box<Ending>>,
    client: Option<Box<ClientState>>,
}

impl Slot {
    fn free(now: Instant) -> Slot {
        Slot {
            generation: 0,
            phase: Phase::Free,
            flags: 0,
            inflight_len: 0,
            created_at: now,
            handshake: Vec::new(),
            proto: None,
            out: Vec::new(),
            ending: None,
            client: None,
        }
    }
    fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    fn set(&mut self, f: u16) {
        self.flags |= f;
    }
    fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }
}

/// Reusable send buffers, so a busy connection does not allocate per send and an idle one holds none.
const POOL_MAX: usize = 1024;
const POOL_BUF_MAX: usize = 64 << 10;

struct Core {
    index: u16,
    cfg: Config,
    proto_cfg: ProtoConfig,
    ring: Ring,
    wheel: Wheel,
    slots: Vec<Slot>,
    epoch: Instant,
    now: Instant,
    tick_nanos: u128,
    metrics: Arc<ShardMetrics>,
    shared: Arc<Shared>,
    listener: Option<OwnedFd>,
    listener_ipv6: bool,
    accept_armed: bool,
    /// The table was full; accept is re-armed when a slot frees.
    accept_paused: bool,
    /// After an unexpected accept error, accept is re-armed no sooner than this (no hot error loop).
    accept_retry_at: Option<Instant>,
    shutting_down: bool,
    drain_deadline: Option<Instant>,
    drain_requested: Duration,
    queue: CmdQueue,
    dirty: Vec<u32>,
    pool: Vec<Vec<u8>>,
    /// Outbound connections waiting for their socket op to complete (the socket op's tag indexes this).
    pending_connects: Vec<Option<Box<ConnectRequest>>>,
    /// (level, option, value) set on every outbound socket: the keepalive and TCP_USER_TIMEOUT that
    /// accepted sockets inherit from the listener.
    client_sockopts: Vec<(i32, i32, SockoptValue)>,
    rng: u64,
}

/// Spawns the shard threads and waits until each ring is up.
pub(crate) fn start<H, F>(config: Config, capacity: Capacity, make_handler: F) -> io::Result<Engine>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    let config = Config { recv_buffers: capacity.recv_buffers, ..config };
    let listeners = match config.listen {
        Some(addr) => bind_listeners(&config, addr, capacity.shards)?,
        None => Vec::new(),
    };
    let local_addr = listeners.first().and_then(|l| l.local_addr().ok()).and_then(|a| a.as_socket());

    let mut links = Vec::with_capacity(capacity.shards);
    let mut inboxes = Vec::with_capacity(capacity.shards);
    for _ in 0..capacity.shards {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker = Waker::new()?;
        let metrics = Arc::new(ShardMetrics::default());
        links.push(ShardLink { tx, waker: waker.clone(), metrics: metrics.clone() });
        inboxes.push((rx, waker, metrics));
    }
    let shared = Arc::new(Shared {
        links,
        open_total: Default::default(),
        max_connections: capacity.max_connections,
        shutting_down: Default::default(),
    });
    let handle = EngineHandle { shared: shared.clone() };

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, io::Result<()>)>();
    let mut threads = Vec::with_capacity(capacity.shards);
    let mut listeners = listeners.into_iter();
    for (index, (rx, waker, metrics)) in inboxes.into_iter().enumerate() {
        let handler = make_handler(index);
        let listener: Option<OwnedFd> = listeners.next().map(|s| s.into());
        let cfg = config.clone();
        let handle = handle.clone();
        let ready = ready_tx.clone();
        let slots = capacity.slots_per_shard;
        let t = std::thread::Builder::new().name(format!("tether-shard-{index}")).spawn(move || {
            let mut core = match Core::new(index as u16, cfg, slots, listener, metrics, handle.shared.clone()) {
                Ok(core) => {
                    let _ = ready.send((index, Ok(())));
                    core
                }
                Err(e) => {
                    let _ = ready.send((index, Err(e)));
                    return;
                }
            };
            let mut handler = handler;
            if let Err(e) = core.run(&mut handler, &handle, rx, waker) {
                error!(shard = index, error = %e, "shard stopped on a ring error");
            }
        })?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut first_error = None;
    for _ in 0..capacity.shards {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(e))) => {
                first_error.get_or_insert(io::Error::new(e.kind(), format!("shard {index}: {e}")));
            }
            Err(_) => {
                first_error.get_or_insert(io::Error::other("a shard thread died during start-up"));
            }
        }
    }
    if let Some(e) = first_error {
        handle.shutdown(Duration::ZERO);
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    Ok(Engine::from_parts(handle, threads, local_addr, capacity))
}

/// One SO_REUSEPORT listener per shard; the kernel spreads new connections over them. Options set here are
/// inherited by every accepted socket (TCP_NODELAY, keepalive, TCP_USER_TIMEOUT), which saves a setsockopt
/// per connection.
fn bind_listeners(cfg: &Config, addr: SocketAddr, shards: usize) -> io::Result<Vec<socket2::Socket>> {
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

/// The options `apply_keepalive` gives the listener, as (level, option, value) for outbound sockets, which
/// have no listener to inherit from.
fn client_sockopts(cfg: &Config) -> Vec<(i32, i32, i32)> {
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as i32;
    let mut out = Vec::new();
    if let Some(ka) = cfg.tcp_keepalive {
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

fn apply_keepalive(s: &socket2::Socket, cfg: &Config) -> io::Result<()> {
    match cfg.tcp_keepalive {
        Some(ka) => {
            s.set_keepalive(true)?;
            let params =
                socket2::TcpKeepalive::new().with_time(ka.idle).with_interval(ka.interval).with_retries(ka.count);
            s.set_tcp_keepalive(&params)?;
        }
        None => s.set_keepalive(false)?,
    }
    if let Some(t) = cfg.tcp_user_timeout {
        s.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

impl Core {
    fn new(
        index: u16,
        cfg: Config,
        slots: u32,
        listener: Option<OwnedFd>,
        metrics: Arc<ShardMetrics>,
        shared: Arc<Shared>,
    ) -> io::Result<Core> {
        let mut ring = Ring::new(RingConfig {
            entries: cfg.ring_entries,
            slots,
            recv_buffers: cfg.recv_buffers,
            recv_buffer_size: cfg.recv_buffer_size,
        })?;
        let client_sockopts = client_sockopts(&cfg)
            .into_iter()
            .map(|(level, name, value)| (level, name, ring.sockopt_value(value)))
            .collect();
        let proto_cfg = ProtoConfig {
            max_message_size: cfg.max_message_size,
            ping_interval: cfg.ping_interval.filter(|d| !d.is_zero()),
            pong_timeout: cfg.pong_timeout,
            close_timeout: cfg.close_timeout,
        };
        let listener_ipv6 = matches!(cfg.listen, Some(SocketAddr::V6(_)));
        let now = Instant::now();
        let tick_nanos = cfg.tick.as_nanos().max(1_000_000);
        let seed = seed_from(index);
        debug!(shard = index, defer_taskrun = ring.defer_taskrun, slots, "shard ring ready");
        Ok(Core {
            index,
            proto_cfg,
            ring,
            wheel: Wheel::with_capacity(slots as usize),
            slots: Vec::with_capacity(slots as usize),
            epoch: now,
            now,
            tick_nanos,
            metrics,
            shared,
            listener,
            listener_ipv6,
            accept_armed: false,
            accept_paused: false,
            accept_retry_at: None,
            shutting_down: false,
            drain_deadline: None,
            drain_requested: Duration::ZERO,
            queue: Vec::new(),
            dirty: Vec::new(),
            pool: Vec::new(),
            pending_connects: Vec::new(),
            client_sockopts,
            rng: seed,
            cfg,
        })
    }

    fn run<H: Handler>(
        &mut self,
        handler: &mut H,
        handle: &EngineHandle,
        rx: Receiver<Command>,
        waker: Waker,
    ) -> io::Result<()> {
        self.ring.arm_wake(&waker);
        if let Some(l) = &self.listener {
            let fd = l.as_raw_fd();
            self.ring.accept_multi(fd);
            self.accept_armed = true;
        }
        let mut completions = Vec::with_capacity(1024);
        loop {
            self.now = Instant::now();
            // Inbox first: commands may open, close or write to connections.
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(handler, handle, cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if !self.shutting_down {
                            self.begin_shutdown(Duration::ZERO);
                        }
                        break;
                    }
                }
            }
            if self.accept_retry_at.is_some_and(|t| self.now >= t) && !self.accept_armed && !self.shutting_down {
                self.arm_accept();
            }
            self.expire_timers(handler, handle);
            {
                let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
                handler.on_tick(&mut ctx);
            }
            self.apply_queue(handler, handle);
            self.flush_dirty();

            if self.shutting_down {
                let open = self.metrics.open.load(Ordering::Relaxed);
                let drained = open == 0;
                let deadline_passed = self.drain_deadline.is_some_and(|d| self.now >= d);
                if drained || deadline_passed {
                    if !drained {
                        if self.drain_requested.is_zero() {
                            debug!(
                                shard = self.index,
                                open, "stopping without a drain; dropping the remaining connections"
                            );
                        } else {
                            warn!(
                                shard = self.index,
                                open, "drain deadline passed; dropping the remaining connections"
                            );
                        }
                    }
                    // Let queued closes reach the kernel before the ring goes away.
                    let _ = self.ring.submit();
                    return Ok(());
                }
            }

            let timeout = self.sleep_budget();
            self.ring.submit_and_wait(timeout)?;
            completions.clear();
            self.ring.completions(&mut completions);
            self.now = Instant::now();
            for c in completions.iter().copied() {
                if Token::decode(c.user_data).is_some_and(|t| t.op == Op::Wake) {
                    waker.reset();
                    self.ring.arm_wake(&waker);
                    continue;
                }
                self.complete(handler, handle, c);
            }
            self.apply_queue(handler, handle);
        }
    }

    /// How long the ring may sleep: until the wheel's next deadline, at most one second.
    fn sleep_budget(&self) -> Duration {
        let mut budget = self.cfg.handler_tick.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
        if let Some(tick) = self.wheel.next_expiration() {
            let at = self.epoch + Duration::from_nanos((tick as u128 * self.tick_nanos).min(u64::MAX as u128) as u64);
            budget = budget.min(at.saturating_duration_since(self.now));
        }
        for d in [self.drain_deadline, self.accept_retry_at].into_iter().flatten() {
            budget = budget.min(d.saturating_duration_since(self.now));
        }
        budget.max(Duration::from_micros(100))
    }

    fn now_tick(&self) -> u64 {
        ((self.now - self.epoch).as_nanos() / self.tick_nanos) as u64
    }

    /// The first tick at or after `at`: a deadline never fires early.
    fn tick_at(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        nanos.div_ceil(self.tick_nanos) as u64
    }

    fn schedule(&mut self, slot: u32, at: Instant) {
        let tick = self.tick_at(at);
        self.wheel.schedule(slot, tick);
    }

    /// Re-arm the slot's wheel entry from its protocol state.
    fn rearm(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open {
            return;
        }
        match s.proto.as_ref().and_then(|p| p.poll_timeout(&self.proto_cfg)) {
            Some(at) => self.schedule(slot, at),
            None => {
                self.wheel.cancel(slot);
            }
        }
    }

    fn id(&self, slot: u32) -> ConnId {
        ConnId::new(self.index, slot, self.slots[slot as usize].generation)
    }

    /// The slot `conn` names, if that connection is still the slot's occupant.
    fn resolve(&self, conn: ConnId) -> Option<u32> {
        let slot = conn.slot();
        let s = self.slots.get(slot as usize)?;
        (conn.shard() == self.index as usize && s.generation & 0xff_ffff == conn.generation() && s.phase != Phase::Free)
            .then_some(slot)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: masking keys and handshake nonces for the load generator, not cryptography.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // ----- completions -----

    fn complete<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, c: Completion) {
        let Some(token) = Token::decode(c.user_data) else { return };
        tracing::trace!(?token, result = c.result, flags = c.flags, "completion");
        match token.op {
            Op::Accept => self.on_accept(c),
            Op::Socket => self.on_socket(handler, handle, token, c),
            Op::Ignore | Op::Wake => {}
            _ => {
                let slot = token.slot;
                let live = self
                    .slots
                    .get(slot as usize)
                    .is_some_and(|s| s.phase != Phase::Free && s.generation & 0xff_ffff == token.generation);
                if !live {
                    // A completion for an earlier occupant: only the buffer matters.
                    if let Some(bid) = c.buffer_id() {
                        self.ring.recycle(bid);
                    }
                    if token.op == Op::Send {
                        let _ = self.ring.take_send(slot);
                    }
                    return;
                }
                match token.op {
                    Op::Recv => self.on_recv(handler, handle, slot, c),
                    Op::Send => self.on_send(handler, handle, slot, c),
                    Op::PeerName => {
                        let s = &mut self.slots[slot as usize];
                        s.clear(flag::PEERNAME_PENDING);
                        if c.result > 0 {
                            s.set(flag::PEER_KNOWN);
                        }
                        self.maybe_close(slot);
                    }
                    Op::Shutdown => {
                        self.slots[slot as usize].set(flag::SHUTDOWN_DONE);
                        self.maybe_close(slot);
                    }
                    Op::Close => self.finalize(handler, handle, slot),
                    Op::Bind | Op::Connect => self.on_connect_step(handler, handle, slot, token.op, c),
                    _ => {}
                }
            }
        }
    }

    fn on_accept(&mut self, c: Completion) {
        if !c.more() {
            self.accept_armed = false;
        }
        if c.result < 0 {
            match -c.result {
                libc::ENFILE | libc::EMFILE => {
                    bump(&self.metrics.accept_table_full);
                    if !self.accept_paused {
                        warn!(shard = self.index, "file table full: accepting paused until a slot frees");
                    }
                    self.accept_paused = true;
                }
                libc::ECANCELED => {}
                e => {
                    if self.accept_retry_at.is_none() {
                        warn!(shard = self.index, error = %io::Error::from_raw_os_error(e), "accept failed; retrying in 100ms");
                    }
                    if !self.accept_armed {
                        self.accept_retry_at = Some(self.now + Duration::from_millis(100));
                    }
                    return;
                }
            }
            if !self.accept_armed && !self.accept_paused && !self.shutting_down {
                self.arm_accept();
            }
            return;
        }
        self.accept_retry_at = None;
        let slot = c.result as u32;
        if self.shutting_down {
            self.adopt(slot, false);
            self.teardown(
                slot,
                CloseReason::Shutdown,
                close_info(1001, "server shutting down", Initiator::Local),
                false,
            );
        } else {
            self.adopt(slot, false);
            bump(&self.metrics.accepted);
            let open_total = self.shared.open_total.load(Ordering::Relaxed);
            if open_total > self.shared.max_connections {
                self.slots[slot as usize].set(flag::OVER_CAPACITY);
            }
            self.ring.peer_name(slot, self.slots[slot as usize].generation, self.listener_ipv6);
            self.slots[slot as usize].set(flag::PEERNAME_PENDING);
            self.arm_recv(slot);
            let deadline = self.now + self.cfg.handshake_timeout;
            self.schedule(slot, deadline);
        }
        if !self.accept_armed && !self.accept_paused && !self.shutting_down {
            self.arm_accept();
        }
    }

    fn arm_accept(&mut self) {
        if let Some(l) = &self.listener {
            let fd = l.as_raw_fd();
            self.ring.accept_multi(fd);
            self.accept_armed = true;
        }
    }

    /// Take a freshly allocated descriptor slot into use.
    fn adopt(&mut self, slot: u32, client: bool) {
        let idx = slot as usize;
        if idx >= self.slots.len() {
            let now = self.now;
            self.slots.resize_with(idx + 1, || Slot::free(now));
        }
        let s = &mut self.slots[idx];
        if s.phase != Phase::Free {
            // The kernel only reuses an index after our close completed, which frees the slot first.
            error!(shard = self.index, slot, phase = ?s.phase, "descriptor slot handed out while still in use");
        }
        s.generation = s.generation.wrapping_add(1) & 0xff_ffff;
        s.phase = if client { Phase::Connecting } else { Phase::Handshake };
        s.flags = if client { flag::CLIENT } else { 0 };
        s.inflight_len = 0;
        s.created_at = self.now;
        s.handshake = Vec::new();
        s.proto = None;
        s.out = Vec::new();
        s.ending = None;
        s.client = None;
        bump(&self.metrics.open);
        self.shared.open_total.fetch_add(1, Ordering::Relaxed);
    }

    fn arm_recv(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.set(flag::RECV_ARMED);
        let generation = s.generation;
        self.ring.recv_multi(slot, generation);
    }

    fn on_recv<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32, c: Completion) {
        let more = c.more();
        if !more {
            self.slots[slot as usize].clear(flag::RECV_ARMED);
        }
        if c.result > 0 {
            let Some(bid) = c.buffer_id() else { return };
            add(&self.metrics.bytes_in, c.result as u64);
            if self.slots[slot as usize].phase == Phase::Closing {
                self.ring.recycle(bid);
            } else {
                self.on_bytes(handler, handle, slot, bid, c.result as usize);
                self.ring.recycle(bid);
            }
            if !more && self.slots[slot as usize].phase != Phase::Closing {
                self.arm_recv(slot);
            }
            if self.slots[slot as usize].phase == Phase::Closing {
                self.maybe_close(slot);
            }
            return;
        }
        if let Some(bid) = c.buffer_id() {
            self.ring.recycle(bid);
        }
        let phase = self.slots[slot as usize].phase;
        if c.result == -libc::ENOBUFS && phase != Phase::Closing {
            // Every provided buffer is in use: the multishot receive ended; arm it again now that this
            // iteration is recycling buffers.
            bump(&self.metrics.recv_buffer_exhausted);
            if !more {
                self.arm_recv(slot);
            }
            return;
        }
        if phase == Phase::Closing {
            self.maybe_close(slot);
            return;
        }
        // EOF or a socket error: the peer is gone.
        let why = if c.result == 0 { "connection closed by peer".to_string() } else { ring::errno_str(c.result) };
        self.peer_gone(handler, handle, slot, &why);
    }

    /// TCP ended under an open or handshaking connection.
    fn peer_gone<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32, why: &str) {
        let s = &mut self.slots[slot as usize];
        if s.phase == Phase::Connecting || (s.phase == Phase::Handshake && s.has(flag::CLIENT)) {
            self.fail_connect(handler, handle, slot, ConnectError::Closed);
            return;
        }
        let info = match s.proto.as_mut().and_then(|p| p.handle_eof(why)) {
            Some(info) => info,
            None => close_info(1006, why, Initiator::Abnormal),
        };
        s.out.clear();
        self.teardown(slot, CloseReason::Abnormal, info, false);
    }

    fn on_bytes<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32, bid: u16, len: usize) {
        match self.slots[slot as usize].phase {
            Phase::Handshake => {
                let data = self.ring.recv_buffer(bid, len);
                let s = &mut self.slots[slot as usize];
                s.handshake.extend_from_slice(data);
                if s.has(flag::CLIENT) {
                    self.client_handshake(handler, handle, slot);
                } else {
                    self.server_handshake(handler, handle, slot);
                }
            }
            Phase::Open => {
                // Split borrows: the ring's buffer, the slot's protocol state and output, the handler.
                let idx = slot as usize;
                self.lend_out(slot);
                let id = self.id(slot);
                let data = self.ring.recv_buffer(bid, len);
                let mut input = Input::new(data);
                let ended = dispatch(
                    &mut self.slots[idx],
                    &mut input,
                    id,
                    self.index,
                    self.now,
                    &self.proto_cfg,
                    &self.metrics,
                    &mut self.queue,
                    handler,
                    handle,
                );
                self.after_events(slot, ended);
            }
            _ => {}
        }
    }

    /// After a batch of protocol events: close if the protocol said so, otherwise bound the queue, mark for
    /// flushing and re-arm the timer.
    fn after_events(&mut self, slot: u32, ended: Option<Ending>) {
        if let Some(ending) = ended {
            self.teardown(slot, ending.reason, ending.info, true);
            return;
        }
        if !self.enforce_send_limit(slot) {
            return;
        }
        self.mark_dirty(slot);
        self.rearm(slot);
    }

    /// Checks the send-queue bound after writes; returns false if the connection was closed for it.
    fn enforce_send_limit(&mut self, slot: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        let queued = s.out.len() + s.inflight_len as usize;
        if queued <= self.cfg.max_send_queue {
            return true;
        }
        match self.cfg.send_queue_policy {
            SendQueuePolicy::Close => {
                // Nothing more will fit through: drop what is queued and cut the connection loose.
                s.out = Vec::new();
                let info = close_info(1008, "send queue full", Initiator::Local);
                self.teardown(slot, CloseReason::SlowConsumer, info, false);
                false
            }
            SendQueuePolicy::Drop => true,
        }
    }

    fn server_handshake<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32) {
        let parsed = handshake::parse_request(&self.slots[slot as usize].handshake, self.cfg.max_handshake_size);
        let id = self.id(slot);
        match parsed {
            RequestParse::Partial => {}
            RequestParse::Reject(err) => {
                debug!(conn = %id, status = err.status, message = %err.message, "upgrade refused");
                let resp = handshake::reject_response(&err);
                self.http_answer(slot, resp, err.status);
            }
            RequestParse::Http { request, .. } => {
                let resp = handler.on_http(&request);
                let bytes = handshake::http_response(resp.status, resp.reason, resp.content_type, &[], &resp.body);
                self.http_answer(slot, bytes, resp.status);
            }
            RequestParse::Upgrade { request, consumed } => {
                if self.slots[slot as usize].has(flag::OVER_CAPACITY) {
                    bump(&self.metrics.rejected_capacity);
                    let err = handshake::HttpError {
                        status: 503,
                        reason: "Service Unavailable",
                        message: format!("server at capacity ({} connections)", self.shared.max_connections),
                    };
                    let resp = handshake::reject_response(&err);
                    self.http_answer(slot, resp, 503);
                    return;
                }
                if self.shutting_down {
                    let err = handshake::HttpError {
                        status: 503,
                        reason: "Service Unavailable",
                        message: "server shutting down".into(),
                    };
                    let resp = handshake::reject_response(&err);
                    self.http_answer(slot, resp, 503);
                    return;
                }
                if let Upgrade::Reject(err) = handler.on_upgrade(id, &request) {
                    let resp = handshake::reject_response(&err);
                    self.http_answer(slot, resp, err.status);
                    return;
                }
                let accept = handshake::accept_key(request.key.as_bytes());
                let resp = handshake::upgrade_response(&accept, None);
                let seed = self.next_random();
                self.lend_out(slot);
                let s = &mut self.slots[slot as usize];
                s.out.extend_from_slice(&resp);
                s.proto = Some(Connection::new(Role::Server, self.now, &self.proto_cfg, seed));
                s.phase = Phase::Open;
                s.set(flag::WAS_OPEN);
                bump(&self.metrics.websocket_open);
                self.opened(handler, handle, slot, consumed);
            }
        }
    }

    /// The connection just reached Open: tell the handler, then handle bytes that came after the handshake.
    fn opened<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32, consumed: usize) {
        let id = self.id(slot);
        let idx = slot as usize;
        {
            let s = &mut self.slots[idx];
            let direct = if s.has(flag::CLIENT) { None } else { Some((id, &mut s.out)) };
            let mut ctx = Ctx { shard: self.index, now: self.now, direct, queue: &mut self.queue, handle };
            handler.on_open(&mut ctx, id);
        }
        let mut rest = std::mem::take(&mut self.slots[idx].handshake);
        let mut ended = None;
        if rest.len() > consumed {
            let mut input = Input::new(&mut rest[consumed..]);
            ended = dispatch(
                &mut self.slots[idx],
                &mut input,
                id,
                self.index,
                self.now,
                &self.proto_cfg,
                &self.metrics,
                &mut self.queue,
                handler,
                handle,
            );
        }
        self.after_events(slot, ended);
    }

    /// Answer a plain HTTP request or a refused upgrade, then close once it is sent.
    fn http_answer(&mut self, slot: u32, response: Vec<u8>, status: u16) {
        self.lend_out(slot);
        let s = &mut self.slots[slot as usize];
        s.handshake = Vec::new();
        s.out.extend_from_slice(&response);
        let info = close_info(0, &format!("http {status}"), Initiator::Local);
        self.teardown(slot, CloseReason::HttpRejected, info, true);
    }

    fn on_send<H: Handler>(&mut self, _handler: &mut H, _handle: &EngineHandle, slot: u32, c: Completion) {
        let Some((buf, offset)) = self.ring.take_send(slot) else { return };
        let s = &mut self.slots[slot as usize];
        if c.result < 0 {
            s.clear(flag::SEND_INFLIGHT);
            s.inflight_len = 0;
            s.out.clear();
            let closing = s.phase == Phase::Closing;
            self.give_back(buf);
            if closing {
                self.maybe_close(slot);
            } else {
                let why = ring::errno_str(c.result);
                let info = close_info(1006, &why, Initiator::Abnormal);
                self.slots[slot as usize].proto.as_mut().map(|p| p.handle_eof(&why));
                self.teardown(slot, CloseReason::Abnormal, info, false);
            }
            return;
        }
        add(&self.metrics.bytes_out, c.result as u64);
        let sent = offset + c.result as usize;
        if sent < buf.len() && c.result > 0 {
            // Partial send: the rest goes out before anything queued after it.
            let generation = s.generation;
            self.ring.send(slot, generation, buf, sent);
            return;
        }
        s.clear(flag::SEND_INFLIGHT);
        s.inflight_len = 0;
        self.give_back(buf);
        let s = &mut self.slots[slot as usize];
        if !s.out.is_empty() {
            self.start_send(slot);
        } else if s.phase == Phase::Closing {
            self.after_flush(slot);
        }
    }

    fn give_back(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= POOL_BUF_MAX && self.pool.len() < POOL_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Give the slot a pooled output buffer if it has none, so writes do not allocate.
    fn lend_out(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.out.capacity() == 0 {
            if let Some(buf) = self.pool.pop() {
                s.out = buf;
            }
        }
    }

    fn mark_dirty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.out.is_empty() {
            if s.out.capacity() > 0 {
                let buf = std::mem::take(&mut s.out);
                self.give_back(buf);
            }
            return;
        }
        if !s.has(flag::DIRTY) && !s.has(flag::SEND_INFLIGHT) {
            s.set(flag::DIRTY);
            self.dirty.push(slot);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let s = &mut self.slots[slot as usize];
            s.clear(flag::DIRTY);
            if s.phase != Phase::Free && !s.has(flag::SEND_INFLIGHT) && !s.out.is_empty() {
                self.start_send(slot);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn start_send(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let buf = std::mem::take(&mut s.out);
        s.inflight_len = buf.len() as u32;
        s.set(flag::SEND_INFLIGHT);
        let generation = s.generation;
        self.ring.send(slot, generation, buf, 0);
    }

    // ----- closing -----

    /// Decide to end a connection. With `flush`, queued bytes (a Close frame, an HTTP answer) go out first.
    /// The first decision wins: later calls only move the teardown along.
    fn teardown(&mut self, slot: u32, reason: CloseReason, info: CloseInfo, flush: bool) {
        let s = &mut self.slots[slot as usize];
        if s.ending.is_none() {
            s.ending = Some(Box::new(Ending { info, reason }));
        }
        if s.phase != Phase::Closing {
            if s.phase == Phase::Open {
                self.metrics.websocket_open.fetch_sub(1, Ordering::Relaxed);
            }
            s.phase = Phase::Closing;
        }
        let s = &mut self.slots[slot as usize];
        if flush && (!s.out.is_empty() || s.has(flag::SEND_INFLIGHT)) {
            s.set(flag::FLUSH_FIRST);
            if !s.has(flag::SEND_INFLIGHT) {
                self.start_send(slot);
            }
            // A peer that never reads must not hold the slot: bound the flush.
            let deadline = self.now + self.cfg.close_timeout;
            self.schedule(slot, deadline);
            return;
        }
        self.after_flush(slot);
    }

    /// Output is flushed (or abandoned): shut the socket down so the receive ends, then close.
    fn after_flush(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.clear(flag::FLUSH_FIRST);
        if !s.has(flag::SHUTDOWN_SUBMITTED) {
            s.set(flag::SHUTDOWN_SUBMITTED);
            let generation = s.generation;
            if s.has(flag::ADDR_OP_PENDING) || (s.has(flag::CLIENT) && s.phase == Phase::Connecting) {
                // No connected socket yet: nothing to shut down, but a connect may be waiting on an
                // unresponsive peer; cancel it rather than wait for the teardown deadline.
                s.set(flag::SHUTDOWN_DONE);
                if s.has(flag::ADDR_OP_PENDING) {
                    self.ring.cancel_slot(slot);
                }
            } else {
                self.ring.shutdown(slot, generation);
            }
            let deadline = self.now + self.cfg.close_timeout;
            self.schedule(slot, deadline);
        }
        self.maybe_close(slot);
    }

    /// Close the descriptor once nothing the kernel holds for this slot is still in flight.
    fn maybe_close(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if s.phase != Phase::Closing || s.has(flag::CLOSE_SUBMITTED) || s.has(flag::FLUSH_FIRST) {
            return;
        }
        let busy = flag::RECV_ARMED | flag::SEND_INFLIGHT | flag::PEERNAME_PENDING | flag::ADDR_OP_PENDING;
        if s.flags & busy != 0 || !s.has(flag::SHUTDOWN_DONE) {
            return;
        }
        s.set(flag::CLOSE_SUBMITTED);
        let generation = s.generation;
        self.wheel.cancel(slot);
        self.ring.close(slot, generation);
    }

    /// The descriptor is closed: log, count, tell the handler, free the slot.
    fn finalize<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32) {
        let id = self.id(slot);
        let s = &mut self.slots[slot as usize];
        let ending = s
            .ending
            .take()
            .map(|b| *b)
            .unwrap_or(Ending { info: close_info(1006, "closed", Initiator::Abnormal), reason: CloseReason::Abnormal });
        let duration = self.now.saturating_duration_since(s.created_at);
        let was_open = s.has(flag::WAS_OPEN);
        // Every operation of the slot has completed: nothing writes the address buffer any more.
        let peer = if s.has(flag::PEER_KNOWN) { self.ring.stored_addr(slot) } else { None };
        let client = s.has(flag::CLIENT);
        s.phase = Phase::Free;
        s.flags = 0;
        s.proto = None;
        s.handshake = Vec::new();
        let out = std::mem::take(&mut s.out);
        s.client = None;
        self.give_back(out);
        self.wheel.cancel(slot);
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.open_total.fetch_sub(1, Ordering::Relaxed);
        let code = ending.info.code;
        self.metrics.record_close(code, ending.reason);
        let peer_text = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        if was_open || code != 0 {
            info!(
                conn = %id,
                peer = %peer_text,
                code,
                reason = ?ending.info.reason,
                initiator = %ending.info.initiator.as_str(),
                duration_ms = duration.as_millis() as u64,
                role = %if client { "client" } else { "server" },
                "close"
            );
        } else {
            debug!(conn = %id, peer = %peer_text, reason = ?ending.info.reason, duration_ms = duration.as_millis() as u64, "http connection done");
        }
        if was_open {
            let closed = Closed { info: ending.info, peer, duration, was_open };
            let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
            handler.on_close(&mut ctx, id, &closed);
        }
        if self.accept_paused && !self.shutting_down {
            self.accept_paused = false;
            if !self.accept_armed {
                self.arm_accept();
            }
        }
    }

    // ----- timers -----

    fn expire_timers<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle) {
        let now_tick = self.now_tick();
        while let Some(slot) = self.wheel.poll(now_tick) {
            let Some(s) = self.slots.get_mut(slot as usize) else { continue };
            match s.phase {
                Phase::Free => {}
                Phase::Connecting => self.fail_connect(handler, handle, slot, ConnectError::Timeout),
                Phase::Handshake if s.has(flag::CLIENT) => {
                    self.fail_connect(handler, handle, slot, ConnectError::Timeout)
                }
                Phase::Handshake => {
                    let id = self.id(slot);
                    info!("handshake timeout conn={id}");
                    bump(&self.metrics.handshake_timeouts);
                    let err = handshake::HttpError {
                        status: 408,
                        reason: "Request Timeout",
                        message: "upgrade request not completed in time".into(),
                    };
                    let resp = handshake::reject_response(&err);
                    self.lend_out(slot);
                    let s = &mut self.slots[slot as usize];
                    s.handshake = Vec::new();
                    s.out.extend_from_slice(&resp);
                    let info = close_info(0, "handshake timeout", Initiator::Local);
                    self.teardown(slot, CloseReason::HandshakeTimeout, info, true);
                }
                Phase::Open => {
                    self.lend_out(slot);
                    let s = &mut self.slots[slot as usize];
                    let Some(proto) = s.proto.as_mut() else { continue };
                    match proto.handle_timeout(self.now, &mut s.out, &self.proto_cfg) {
                        Some(Event::PingSent) => {
                            bump(&self.metrics.pings_sent);
                            self.mark_dirty(slot);
                            self.rearm(slot);
                        }
                        Some(Event::Closed(info)) => {
                            let reason = match info.reason.as_str() {
                                "pong timeout" => {
                                    bump(&self.metrics.pong_timeouts);
                                    CloseReason::PongTimeout
                                }
                                "close timeout" => CloseReason::CloseTimeout,
                                _ => CloseReason::LocalClose,
                            };
                            self.teardown(slot, reason, info, true);
                        }
                        _ => self.rearm(slot),
                    }
                }
                Phase::Closing => {
                    // The flush or the teardown did not finish in time.
                    if s.has(flag::FLUSH_FIRST) {
                        self.after_flush(slot);
                    } else {
                        self.ring.cancel_slot(slot);
                        let deadline = self.now + self.cfg.close_timeout;
                        self.schedule(slot, deadline);
                    }
                }
            }
        }
    }

    // ----- commands -----

    fn command<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, cmd: Command) {
        match cmd {
            Command::Send { conn, kind, data } => {
                if let Some(slot) = self.resolve(conn) {
                    self.send_to(slot, kind, &data);
                }
            }
            Command::Broadcast { kind, data } => {
                for slot in 0..self.slots.len() as u32 {
                    if self.slots[slot as usize].phase == Phase::Open {
                        self.send_to(slot, kind, &data);
                    }
                }
            }
            Command::Close { conn, code, reason } => {
                if let Some(slot) = self.resolve(conn) {
                    self.close_conn(slot, code, &reason, CloseReason::LocalClose);
                }
            }
            Command::Ping { conn } => {
                if let Some(slot) = self.resolve(conn) {
                    self.lend_out(slot);
                    let now = self.now;
                    let s = &mut self.slots[slot as usize];
                    if let Some(p) = s.proto.as_mut() {
                        if p.send_ping(&mut s.out, now).is_ok() {
                            bump(&self.metrics.pings_sent);
                        }
                    }
                    self.after_events(slot, None);
                }
            }
            Command::Connect(request) => self.start_connect(handler, handle, request),
            Command::Run(f) => {
                let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
                f(&mut ctx);
            }
            Command::Notify(message) => {
                let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
                handler.on_notify(&mut ctx, message);
            }
            Command::Shutdown { drain } => self.begin_shutdown(drain),
        }
    }

    fn apply_queue<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle) {
        // Commands may queue more commands (a handler reacting to a close); bound the rounds.
        for _ in 0..16 {
            if self.queue.is_empty() {
                return;
            }
            let queue = std::mem::take(&mut self.queue);
            for cmd in queue {
                self.command(handler, handle, cmd);
            }
        }
    }

    fn send_to(&mut self, slot: u32, kind: MessageKind, data: &[u8]) {
        let s = &self.slots[slot as usize];
        if s.phase != Phase::Open {
            return;
        }
        if self.cfg.send_queue_policy == SendQueuePolicy::Drop
            && s.out.len() + s.inflight_len as usize + data.len() > self.cfg.max_send_queue
        {
            bump(&self.metrics.send_dropped);
            return;
        }
        self.lend_out(slot);
        let s = &mut self.slots[slot as usize];
        if let Some(p) = s.proto.as_mut() {
            if p.send_message(&mut s.out, kind, data).is_ok() {
                bump(&self.metrics.messages_out);
            }
        }
        if self.enforce_send_limit(slot) {
            self.mark_dirty(slot);
        }
    }

    fn close_conn(&mut self, slot: u32, code: u16, reason: &str, why: CloseReason) {
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        match s.phase {
            Phase::Open => {
                self.lend_out(slot);
                let s = &mut self.slots[slot as usize];
                if let Some(p) = s.proto.as_mut() {
                    if p.is_open() {
                        p.close(&mut s.out, code, reason, now, &self.proto_cfg);
                        if s.ending.is_none() {
                            s.ending = Some(Box::new(Ending {
                                info: close_info(code, reason, Initiator::Local),
                                reason: why,
                            }));
                        }
                    }
                }
                self.mark_dirty(slot);
                self.rearm(slot);
            }
            Phase::Handshake | Phase::Connecting => {
                let info = close_info(code, reason, Initiator::Local);
                self.teardown(slot, why, info, false);
            }
            Phase::Closing | Phase::Free => {}
        }
    }

    fn begin_shutdown(&mut self, drain: Duration) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.drain_deadline = Some(self.now + drain);
        self.drain_requested = drain;
        if self.accept_armed {
            self.ring.cancel_accept();
        }
        // Closing the listener makes the kernel stop queueing connections for this shard.
        drop(self.listener.take());
        let open = self.metrics.open.load(Ordering::Relaxed);
        info!(shard = self.index, open, drain_ms = drain.as_millis() as u64, "draining");
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].phase != Phase::Free {
                self.close_conn(slot, 1001, "server shutting down", CloseReason::Shutdown);
            }
        }
    }

    // ----- client role -----

    fn start_connect<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, request: Box<ConnectRequest>) {
        if self.shutting_down {
            let tag = request.tag;
            let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
            handler.on_connect_failed(&mut ctx, tag, &ConnectError::Closed);
            return;
        }
        let ipv6 = request.addr.is_ipv6();
        let tag = match self.pending_connects.iter().position(Option::is_none) {
            Some(i) => {
                self.pending_connects[i] = Some(request);
                i
            }
            None => {
                self.pending_connects.push(Some(request));
                self.pending_connects.len() - 1
            }
        };
        self.ring.socket(ipv6, tag as u32);
    }

    fn on_socket<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, token: Token, c: Completion) {
        let Some(request) = self.pending_connects.get_mut(token.slot as usize).and_then(Option::take) else {
            return;
        };
        if c.result < 0 {
            bump(&self.metrics.connect_failed);
            let err = if -c.result == libc::ENFILE || -c.result == libc::EMFILE {
                ConnectError::NoCapacity
            } else {
                ConnectError::Io(format!("socket: {}", ring::errno_str(c.result)))
            };
            let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
            handler.on_connect_failed(&mut ctx, request.tag, &err);
            return;
        }
        let slot = c.result as u32;
        self.adopt(slot, true);
        let generation = self.slots[slot as usize].generation;
        let key_bytes = {
            let a = self.next_random().to_ne_bytes();
            let b = self.next_random().to_ne_bytes();
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&a);
            k[8..].copy_from_slice(&b);
            k
        };
        let key = handshake::generate_key(key_bytes);
        let s = &mut self.slots[slot as usize];
        s.set(flag::ADDR_OP_PENDING);
        let bind = request.bind;
        let addr = request.addr;
        s.client = Some(Box::new(ClientState { request, key }));
        // TCP_NODELAY: pings and echoes are latency measurements. Linked, so the bind/connect after it runs
        // only once it is set.
        self.ring.enable_sockopt(slot, generation, libc::IPPROTO_TCP, libc::TCP_NODELAY, true);
        for &(level, name, value) in &self.client_sockopts {
            self.ring.set_sockopt(slot, generation, level, name, value, true);
        }
        match bind {
            Some(b) => {
                // Bind the address only and let connect pick the port: a bind to port 0 scans the whole
                // ephemeral range per call (quadratic at tens of thousands of sockets on one address), and
                // connect's choice also lets one port serve several destinations.
                self.ring.enable_sockopt(slot, generation, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, true);
                self.ring.bind(slot, generation, b)
            }
            None => {
                self.slots[slot as usize].set(flag::PEER_KNOWN);
                self.ring.connect(slot, generation, addr)
            }
        }
        let deadline = self.now + self.cfg.handshake_timeout;
        self.schedule(slot, deadline);
    }

    fn on_connect_step<H: Handler>(
        &mut self,
        handler: &mut H,
        handle: &EngineHandle,
        slot: u32,
        op: Op,
        c: Completion,
    ) {
        let s = &mut self.slots[slot as usize];
        s.clear(flag::ADDR_OP_PENDING);
        if s.phase == Phase::Closing {
            self.maybe_close(slot);
            return;
        }
        if c.result < 0 {
            let what = if op == Op::Bind { "bind" } else { "connect" };
            let err = ConnectError::Io(format!("{what}: {}", ring::errno_str(c.result)));
            self.fail_connect(handler, handle, slot, err);
            return;
        }
        let generation = s.generation;
        if op == Op::Bind {
            let addr = s.client.as_ref().map(|c| c.request.addr);
            if let Some(addr) = addr {
                self.slots[slot as usize].set(flag::ADDR_OP_PENDING);
                self.slots[slot as usize].set(flag::PEER_KNOWN);
                self.ring.connect(slot, generation, addr);
            }
            return;
        }
        // Connected: send the upgrade request and wait for the 101.
        let Some(client) = s.client.as_ref() else { return };
        let req = handshake::client_request(&client.request.host, &client.request.path, &client.key, &[]);
        s.phase = Phase::Handshake;
        self.lend_out(slot);
        self.slots[slot as usize].out.extend_from_slice(&req);
        self.arm_recv(slot);
        self.mark_dirty(slot);
    }

    fn client_handshake<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32) {
        let s = &self.slots[slot as usize];
        let Some(client) = s.client.as_ref() else { return };
        match handshake::parse_response(&s.handshake, &client.key, self.cfg.max_handshake_size) {
            ResponseParse::Partial => {}
            ResponseParse::Rejected { status, reason } => {
                self.fail_connect(handler, handle, slot, ConnectError::Rejected { status, reason })
            }
            ResponseParse::Invalid(why) => self.fail_connect(handler, handle, slot, ConnectError::Invalid(why)),
            ResponseParse::Accepted { consumed } => {
                let seed = self.next_random();
                let s = &mut self.slots[slot as usize];
                s.proto = Some(Connection::new(Role::Client, self.now, &self.proto_cfg, seed));
                s.phase = Phase::Open;
                s.set(flag::WAS_OPEN);
                let tag = s.client.take().map_or(0, |c| c.request.tag);
                bump(&self.metrics.websocket_open);
                bump(&self.metrics.connected);
                let id = self.id(slot);
                {
                    let mut ctx =
                        Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
                    handler.on_connected(&mut ctx, id, tag);
                }
                self.opened(handler, handle, slot, consumed);
            }
        }
    }

    /// An outbound connection failed before opening: tell the handler and free the slot.
    fn fail_connect<H: Handler>(&mut self, handler: &mut H, handle: &EngineHandle, slot: u32, err: ConnectError) {
        bump(&self.metrics.connect_failed);
        let s = &mut self.slots[slot as usize];
        let tag = s.client.as_ref().map_or(0, |c| c.request.tag);
        s.client = None;
        s.out.clear();
        debug!(shard = self.index, slot, error = %err, "connect failed");
        {
            let mut ctx = Ctx { shard: self.index, now: self.now, direct: None, queue: &mut self.queue, handle };
            handler.on_connect_failed(&mut ctx, tag, &err);
        }
        let info = close_info(0, &err.to_string(), Initiator::Local);
        self.teardown(slot, CloseReason::Abnormal, info, false);
    }
}

/// Feed one input buffer through the connection's protocol state and the handler. Returns how the connection
/// ends if the protocol finished it.
#[allow(clippy::too_many_arguments)]
fn dispatch<H: Handler>(
    slot: &mut Slot,
    input: &mut Input<'_>,
    id: ConnId,
    shard: u16,
    now: Instant,
    cfg: &ProtoConfig,
    metrics: &ShardMetrics,
    queue: &mut CmdQueue,
    handler: &mut H,
    handle: &EngineHandle,
) -> Option<Ending> {
    let client = slot.has(flag::CLIENT);
    let Slot { proto, out, .. } = slot;
    let proto = proto.as_mut()?;
    while let Some(event) = proto.poll_event(input, out, now, cfg) {
        let direct = if client { None } else { Some((id, &mut *out)) };
        let mut ctx = Ctx { shard, now, direct, queue, handle };
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
                let before = ctx.direct.as_ref().map_or(0, |(_, o)| o.len());
                handler.on_message(&mut ctx, id, message);
                if ctx.direct.as_ref().is_some_and(|(_, o)| o.len() > before) {
                    bump(&metrics.messages_out);
                }
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
            Event::Closed(info) => {
                let reason = match info.initiator {
                    Initiator::Peer => CloseReason::PeerClose,
                    Initiator::Abnormal => CloseReason::Abnormal,
                    Initiator::Local => match info.code {
                        1002 | 1003 | 1007 | 1009 => CloseReason::ProtocolError,
                        _ => CloseReason::LocalClose,
                    },
                };
                // A close we started keeps the reason it was started for (shutdown ...): teardown keeps the
                // first Ending it is given.
                return Some(Ending { info, reason });
            }
        }
    }
    None
}

fn close_info(code: u16, reason: &str, initiator: Initiator) -> CloseInfo {
    CloseInfo { code, reason: reason.to_string(), initiator }
}

fn seed_from(index: u16) -> u64 {
    (ring::random_u64() ^ ((index as u64) << 32)) | 1
}
