//! One shard: one thread, its ring, one timing wheel, one slab of connections, and the loop that joins them.
//!
//! [`Core`] is the mechanics (slots, ring, wheel, write path, teardown) and never calls the application;
//! [`Shard`] owns the core, the receive buffers and the handler, and is the only place that calls the
//! handler, through a [`Ctx`] over the core. One concern per file:
//!
//! | file | concern |
//! | --- | --- |
//! | `slot.rs` | a connection's slot, phases and flags |
//! | `lifecycle.rs` | the teardown order, as a pure function of the flags |
//! | `accept.rs` | listeners, accept, the server side of the upgrade, plain HTTP answers |
//! | `recv.rs` | receive completions and dispatch of protocol events to the handler |
//! | `send.rs` | the one write path, the send-queue bound, flushing and send completions |
//! | `close.rs` | teardown, close completions, the close log line |
//! | `timers.rs` | the wheel: protocol, application and handshake deadlines, delayed connects |
//! | `client.rs` | the client role: socket, connect, the client side of the upgrade |
//! | `adopt.rs` | sockets another HTTP stack upgraded, moved into a ring's table |
//! | `inbox.rs` | commands from other threads |
//! | `ops.rs` | what a handler's `Ctx` can do (`ShardOps` for the core) |
//! | `tls.rs` | TLS between the ring and the protocol: decrypt received bytes, encrypt at send, the handshake cap |
//! | `topics.rs` | topic subscriptions |
//!
//! Each slot has at most one entry in the wheel: its next deadline (handshake, ping, pong, close, teardown or
//! the application's), re-armed in O(1) whenever it changes.

mod accept;
mod adopt;
mod client;
mod close;
mod inbox;
mod keepalive;
mod lifecycle;
mod ops;
mod pause;
mod pool;
mod recv;
mod rxbufs;
mod send;
mod slot;
mod timers;
mod tls;
mod topics;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::capacity::Capacity;
use crate::command::Command;
use crate::config::{Config, Profile, SendQueuePolicy};
use crate::handle::{Engine, EngineHandle, Notifier, ShardLink, Shared};
use crate::handler::{ConnectError, ConnectRequest, Handler};
use crate::ids::ConnId;
use crate::mailbox::{mailbox, MailboxRx};
use crate::metrics::ShardMetrics;
use crate::proto::{ProtoConfig, Role, Writer};
use crate::ring::{self, BufRing, Completion, Op, Ring, RingConfig, SockoptValue, Token, Waker};
use crate::wheel::Wheel;

use rxbufs::RecvBufs;
use slot::{Phase, Slot};
use topics::Topics;

/// A profile as the shard uses it.
pub(crate) struct ProfileRt {
    pub proto: ProtoConfig,
    pub max_send_queue: usize,
    pub policy: SendQueuePolicy,
    pub overflow_close: (u16, &'static str),
}

impl ProfileRt {
    fn new(p: &Profile) -> ProfileRt {
        ProfileRt {
            proto: ProtoConfig {
                max_message_size: p.max_message_size,
                ping_interval: p.ping_interval.filter(|d| !d.is_zero()),
                ping_mode: p.ping_mode,
                pong_timeout: p.pong_timeout,
                close_timeout: p.close_timeout,
            },
            max_send_queue: p.max_send_queue,
            policy: p.send_queue_policy,
            overflow_close: p.overflow_close,
        }
    }
}

/// Scratch buffers larger than this are freed rather than kept (the pool's own bound, `pool.rs`).
const POOL_BUF_MAX: usize = pool::BUF_MAX;

/// One ring's accept state: its own SO_REUSEPORT listener (the kernel spreads new connections evenly over all
/// of them, so the rings of a thread fill evenly and a burst has every listener's backlog to wait in) and its
/// multishot accept into that ring's table.
struct Acceptor {
    listener: Option<OwnedFd>,
    armed: bool,
    /// The ring's table was full; accept is re-armed when one of its slots frees.
    paused: bool,
    /// After an unexpected accept error, accept is re-armed no sooner than this (no hot error loop).
    retry_at: Option<Instant>,
}

pub(crate) struct Core {
    index: u16,
    cfg: Config,
    profiles: Vec<ProfileRt>,
    /// permessage-deflate's compressors and inflater, shared by every connection of the shard that negotiated
    /// it without context takeover (see proto/deflate.rs); allocated on first use.
    codec: crate::proto::Codec,
    /// Reassembly buffers the shard's readers share (see proto/spares.rs): a frame spanning receives is
    /// assembled in one, returned when delivered.
    spares: crate::proto::Spares,
    /// The thread's rings; ring `r` holds the slots `r`, `r + rings`, `r + 2 * rings` ... (numbered in
    /// turn, `RingConfig::position`). Ring 0 is the one the thread sleeps on; the others signal it through
    /// `child_wake`.
    rings: Vec<Ring>,
    /// Slots in use per ring, and socket ops in flight per ring (the client role opens sockets on the
    /// emptiest, counting those still on their way).
    ring_open: Vec<u32>,
    ring_sockets: Vec<u32>,
    /// The eventfd every other ring signals when it posts completions (None with one ring).
    child_wake: Option<Waker>,
    wheel: Wheel,
    slots: Vec<Slot>,
    topics: Topics,
    /// Publications still being delivered, oldest first (see inbox.rs: a large fan-out goes out in chunks).
    fanout: std::collections::VecDeque<inbox::Fanout>,
    epoch: Instant,
    now: Instant,
    tick_nanos: u128,
    metrics: Arc<ShardMetrics>,
    shared: Arc<Shared>,
    handle: EngineHandle,
    acceptors: Vec<Acceptor>,
    listener_ipv6: bool,
    shutting_down: bool,
    drain_deadline: Option<Instant>,
    drain_requested: Duration,
    dirty: Vec<u32>,
    /// Slots whose receive ended for want of a provided buffer, re-armed after the batch.
    starved: Vec<u32>,
    /// Paused receives (`pause.rs`) and the wheel tick each resumes at: few at a time, so kept here rather
    /// than in every slot.
    paused: hashbrown::HashMap<u32, u64>,
    /// Idle output buffers (`pool.rs`).
    pool: pool::Pool,
    /// Outbound connections waiting for their socket op (or their start time): the socket op's tag and the
    /// wheel key (`connect_key_base + index`) name an entry here.
    pending_connects: Vec<Option<Box<ConnectRequest>>>,
    connect_key_base: u32,
    /// Adopted sockets waiting for their install op (the op's tag names an entry here).
    pending_adopts: Vec<Option<Box<crate::adopt::AdoptJob>>>,
    /// (level, option, value) set on every outbound socket: the keepalive and TCP_USER_TIMEOUT that
    /// accepted sockets inherit from the listener.
    client_sockopts: Vec<(i32, i32, SockoptValue)>,
    /// Connects that failed inside a core operation (the shard reports them to the handler).
    failed_connects: Vec<(u64, ConnectError)>,
    /// Connections (slot, generation) whose send queue drained after the handler asked
    /// (`Ctx::notify_writable`); the shard calls `on_writable` for them after the completions.
    writable: Vec<(u32, u32)>,
    /// Kept-alive connections (slot, generation) whose next HTTP request came with the one just answered
    /// (pipelined): the shard serves it after the completions, one request per connection per iteration.
    pipelined: Vec<(u32, u32)>,
    rng: u64,
    /// When shard 0 next sweeps the shared per-IP table for expired rate buckets.
    next_ip_sweep: Instant,
    /// Per-slot TLS state (slots with `flag::TLS`), indexed like `slots`; `None` for plaintext connections.
    tls: Vec<Option<Box<crate::tls::conn::TlsConn>>>,
    /// TLS handshake steps left in this loop iteration (`Config::tls_handshakes_per_loop`).
    tls_budget: usize,
    /// Handshaking TLS connections (slot, generation) whose input waits for the next iteration's budget.
    tls_waiting: std::collections::VecDeque<(u32, u32)>,
    /// Where queued frames with shared pieces are put together before they are encrypted.
    tls_scratch: Vec<u8>,
}

/// The shard thread's state. `core` holds the rings, `bufs` each ring's provided receive buffers (index for
/// index, rxbufs.rs); the rings keep the buffers' memory mapped until they are gone, whatever the drop order.
pub(crate) struct Shard<H: Handler> {
    core: Core,
    bufs: RecvBufs,
    handler: H,
    /// Per-slot application state, grown on demand.
    states: Vec<H::Conn>,
    notifier: Notifier<H::Notice>,
    notices: MailboxRx<H::Notice>,
    inbox: MailboxRx<Command>,
    waker: Waker,
    /// Plaintext a TLS connection's records carried, on its way to the protocol (reused).
    plain: Vec<u8>,
}

/// Puts `item` in the first free entry of `table` (or a new one at the end) and returns its index: the tag
/// of a pending operation (a connect waiting for its socket, an adopted socket waiting for its install).
fn park<T>(table: &mut Vec<Option<T>>, item: T) -> u32 {
    match table.iter().position(Option::is_none) {
        Some(i) => {
            table[i] = Some(item);
            i as u32
        }
        None => {
            table.push(Some(item));
            (table.len() - 1) as u32
        }
    }
}

/// Runs a handler callback with a `Ctx` over the shard's core.
macro_rules! with_ctx {
    ($shard:expr, |$h:ident, $ctx:ident| $body:expr) => {{
        let shard = &mut *$shard;
        let mut $ctx =
            $crate::context::Ctx { ops: &mut shard.core, states: &mut shard.states, notifier: &shard.notifier };
        let $h = &mut shard.handler;
        $body
    }};
}
pub(crate) use with_ctx;

/// Spawns the shard threads and waits until each ring is up.
pub(crate) fn start<H, F>(config: Config, capacity: Capacity, make_handler: F) -> io::Result<Engine<H>>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    let config = Config { recv_buffers: capacity.recv_buffers, ..config };
    let rings = capacity.rings_per_shard;
    let listeners = match config.listen {
        Some(addr) => accept::bind_listeners(&config, addr, capacity.shards * rings)?,
        None => Vec::new(),
    };
    let local_addr = listeners.first().and_then(|l| l.local_addr().ok()).and_then(|a| a.as_socket());

    let bound = config.inbox_capacity.max(1);
    let mut links = Vec::with_capacity(capacity.shards);
    let mut notice_links = Vec::with_capacity(capacity.shards);
    let mut inboxes = Vec::with_capacity(capacity.shards);
    for _ in 0..capacity.shards {
        let waker = Waker::new()?;
        let metrics = Arc::new(ShardMetrics::default());
        let (tx, rx) = mailbox(bound, waker.clone(), metrics.clone());
        let (ntx, nrx) = mailbox(bound, waker.clone(), metrics.clone());
        links.push(ShardLink { inbox: tx, waker: waker.clone() });
        notice_links.push(ntx);
        inboxes.push((rx, nrx, waker, metrics));
    }
    let shared = Arc::new(Shared {
        links,
        open_total: Default::default(),
        max_connections: capacity.max_connections,
        shutting_down: AtomicBool::new(false),
        drain_nanos: AtomicU64::new(0),
        per_ip: crate::per_ip::PerIp::new(config.per_ip_max_connections, config.per_ip_handshake_rate, Instant::now()),
        adopt_sockopts: crate::adopt::AdoptSockopts {
            keepalive: config.socket_keepalive(),
            user_timeout: config.tcp_user_timeout,
        },
        next_adopt: Default::default(),
    });
    let handle = EngineHandle { shared: shared.clone() };
    let notifier = Notifier { links: notice_links.into() };

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, io::Result<()>)>();
    let mut threads = Vec::with_capacity(capacity.shards);
    let mut listeners = listeners.into_iter();
    for (index, (inbox, notices, waker, metrics)) in inboxes.into_iter().enumerate() {
        let handler = make_handler(index);
        let own: Vec<Option<OwnedFd>> = (0..rings).map(|_| listeners.next().map(OwnedFd::from)).collect();
        let cfg = config.clone();
        let handle = handle.clone();
        let notifier = notifier.clone();
        let ready = ready_tx.clone();
        let table = capacity.slots_per_ring;
        let t = std::thread::Builder::new().name(format!("tether-shard-{index}")).spawn(move || {
            let built = Core::new(index as u16, cfg, table, own, metrics, handle);
            let (core, bufs) = match built {
                Ok((core, small)) => {
                    let _ = ready.send((index, Ok(())));
                    let bufs = RecvBufs::new(small, core.cfg.recv_large_buffer_size, core.cfg.recv_large_buffers);
                    (core, bufs)
                }
                Err(e) => {
                    let _ = ready.send((index, Err(e)));
                    return;
                }
            };
            let mut shard =
                Shard { core, bufs, handler, states: Vec::new(), notifier, notices, inbox, waker, plain: Vec::new() };
            // A panic (in a handler callback or in the engine) must not leave a half-live process: the
            // thread's connections would hang with no keepalive and no close while the other shards go on.
            // Unwinding out of the shard is not safe either (the kernel may still write into buffers the
            // shard owns), so the process logs the panic and aborts, for its supervisor to restart it.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.run()));
            match run {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(shard = index, error = %e, "shard stopped on a ring error"),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".into());
                    error!(shard = index, panic = %what, "shard thread panicked: aborting the process");
                    eprintln!("tether: shard {index} panicked ({what}); aborting");
                    std::process::abort();
                }
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
    Ok(Engine { handle, notifier, threads, local_addr, capacity })
}

impl Core {
    fn new(
        index: u16,
        cfg: Config,
        table: u32,
        listeners: Vec<Option<OwnedFd>>,
        metrics: Arc<ShardMetrics>,
        handle: EngineHandle,
    ) -> io::Result<(Core, Vec<BufRing>)> {
        let count = listeners.len().max(1);
        let child_wake = if count > 1 { Some(Waker::new()?) } else { None };
        let mut rings = Vec::with_capacity(count);
        let mut bufs = Vec::with_capacity(count);
        for r in 0..count {
            let (mut ring, buf) = Ring::new(RingConfig {
                entries: cfg.ring_entries,
                slots: table,
                recv_buffers: cfg.recv_buffers,
                recv_buffer_size: cfg.recv_buffer_size,
                position: r as u32,
                stride: count as u32,
                child: r > 0,
            })?;
            if let (true, Some(wake)) = (r > 0, &child_wake) {
                ring.register_eventfd(wake)?;
            }
            rings.push(ring);
            bufs.push(buf);
        }
        // Every ring keeps the option values at fixed addresses; registered in the same order, their handles
        // are the same on each.
        let mut client_sockopts = Vec::new();
        for (level, name, value) in client::client_sockopts(&cfg) {
            let handles: Vec<SockoptValue> = rings.iter_mut().map(|r| r.sockopt_value(value)).collect();
            client_sockopts.push((level, name, handles[0]));
        }
        let mut profiles = vec![ProfileRt::new(&Profile::of(&cfg))];
        profiles.extend(cfg.profiles.iter().map(ProfileRt::new));
        let listener_ipv6 = matches!(cfg.listen, Some(SocketAddr::V6(_)));
        let now = Instant::now();
        let tick_nanos = cfg.tick.as_nanos().max(1_000_000);
        let seed = (ring::random_u64() ^ ((index as u64) << 32)) | 1;
        debug!(shard = index, defer_taskrun = rings[0].defer_taskrun, rings = count, table, "shard rings ready");
        let shared = handle.shared.clone();
        let slots = count * table as usize;
        let acceptors = listeners
            .into_iter()
            .map(|listener| Acceptor { listener, armed: false, paused: false, retry_at: None })
            .collect();
        let core = Core {
            index,
            profiles,
            rings,
            ring_open: vec![0; count],
            ring_sockets: vec![0; count],
            child_wake,
            wheel: Wheel::with_capacity(slots),
            slots: Vec::with_capacity(slots),
            topics: Topics::default(),
            fanout: Default::default(),
            epoch: now,
            now,
            tick_nanos,
            metrics,
            shared,
            handle,
            acceptors,
            listener_ipv6,
            shutting_down: false,
            drain_deadline: None,
            drain_requested: Duration::ZERO,
            dirty: Vec::new(),
            starved: Vec::new(),
            paused: hashbrown::HashMap::new(),
            pool: pool::Pool::default(),
            pending_connects: Vec::new(),
            pending_adopts: Vec::new(),
            connect_key_base: slots as u32,
            client_sockopts,
            failed_connects: Vec::new(),
            writable: Vec::new(),
            pipelined: Vec::new(),
            rng: seed,
            next_ip_sweep: now,
            codec: crate::proto::Codec::with_level(cfg.deflate_threshold, cfg.deflate_level),
            spares: Default::default(),
            tls: Vec::new(),
            tls_budget: cfg.tls_handshakes_per_loop.max(1),
            tls_waiting: Default::default(),
            tls_scratch: Vec::new(),
            cfg,
        };
        Ok((core, bufs))
    }

    /// The slot's WebSocket is open (server: the 101 is queued; client: the 101 was checked; or adopted):
    /// its profile, its protocol writer in `role`, phase `Open`, counted. The first ping comes at a random
    /// point of the first interval (`ping_jitter`): connections that open together (a ramp, a mass
    /// reconnect) do not ping together for the rest of their lives.
    fn open_slot(&mut self, slot: u32, profile: u8, role: Role, deflate: crate::proto::PerConn) {
        let seed = self.next_random();
        let now = self.now;
        let mut writer = Writer::new(role, now, seed);
        writer.set_deflate(deflate);
        let cfg = &self.profiles[profile as usize].proto;
        if let Some(interval) = cfg.ping_interval.filter(|_| self.cfg.ping_jitter) {
            let fraction = (seed >> 11) as f64 / (1u64 << 53) as f64;
            writer.schedule_first_ping(now + interval.mul_f64(fraction), cfg);
        }
        let s = &mut self.slots[slot as usize];
        s.profile = profile;
        s.writer = Some(writer);
        s.phase = Phase::Open;
        s.set(slot::flag::WAS_OPEN);
        crate::metrics::bump(&self.metrics.websocket_open);
    }

    /// The profile index for `ProfileId` index `index`: one this engine never registered means the default
    /// profile (as `Config::profile` reads it).
    fn profile_or_default(&self, index: usize) -> u8 {
        if index < self.profiles.len() {
            index as u8
        } else {
            0
        }
    }

    /// The ring that holds `slot`.
    fn ring(&mut self, slot: u32) -> &mut Ring {
        let r = self.ring_index(slot);
        &mut self.rings[r]
    }

    fn ring_index(&self, slot: u32) -> usize {
        slot as usize % self.rings.len()
    }

    /// Hand every ring's queued submissions to the kernel without waiting.
    fn submit_all(&mut self) -> io::Result<()> {
        for ring in &mut self.rings {
            if ring.has_pending() {
                ring.submit()?;
            }
        }
        Ok(())
    }

    fn id(&self, slot: u32) -> ConnId {
        ConnId::new(self.index, slot, self.slots[slot as usize].generation)
    }

    /// The slot `conn` names, if that connection is still the slot's occupant (in any phase but Free).
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

    fn begin_shutdown(&mut self, drain: Duration) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.drain_deadline = Some(self.now + drain);
        self.drain_requested = drain;
        for (r, a) in self.acceptors.iter_mut().enumerate() {
            if a.armed {
                self.rings[r].cancel_accept();
            }
            // Closing the listener makes the kernel stop queueing connections for this ring.
            drop(a.listener.take());
        }
        let open = self.metrics.open.load(Ordering::Relaxed);
        info!(shard = self.index, open, drain_ms = drain.as_millis() as u64, "draining");
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].phase != Phase::Free {
                self.close_conn(slot, 1001, "server shutting down", crate::proto::CloseCause::Shutdown);
            }
        }
        // Delayed connects will never start now.
        for i in 0..self.pending_connects.len() {
            if let Some(request) = self.pending_connects[i].take() {
                self.wheel.cancel(self.connect_key_base + i as u32);
                self.failed_connects.push((request.tag, ConnectError::Closed));
            }
        }
    }

    /// Whether the shard may stop: drained, or past the drain deadline.
    fn drained(&self) -> bool {
        if !self.shutting_down {
            return false;
        }
        let open = self.metrics.open.load(Ordering::Relaxed);
        let deadline_passed = self.drain_deadline.is_some_and(|d| self.now >= d);
        if open > 0 && deadline_passed {
            if self.drain_requested.is_zero() {
                debug!(shard = self.index, open, "stopping without a drain; dropping the remaining connections");
            } else {
                warn!(shard = self.index, open, "drain deadline passed; dropping the remaining connections");
            }
        }
        open == 0 || deadline_passed
    }
}

impl<H: Handler> Shard<H> {
    fn run(&mut self) -> io::Result<()> {
        self.core.rings[0].arm_wake(&self.waker);
        if let Some(wake) = &self.core.child_wake {
            self.core.rings[0].arm_child_wake(wake);
        }
        for r in 0..self.core.rings.len() {
            self.core.arm_accept(r);
        }
        let mut completions = Vec::with_capacity(1024);
        loop {
            self.core.now = Instant::now();
            if self.core.shared.shutting_down.load(Ordering::Acquire) && !self.core.shutting_down {
                let drain = Duration::from_nanos(self.core.shared.drain_nanos.load(Ordering::Acquire));
                self.core.begin_shutdown(drain);
            }
            // Inbox first: commands may open, close or write to connections.
            self.drain_inbox();
            self.resume_tls();
            self.core.fanout_step();
            self.core.retry_accept();
            self.core.sweep_per_ip();
            self.expire_timers();
            with_ctx!(self, |h, ctx| h.on_tick(&mut ctx));
            self.report_failed_connects();
            self.report_writable();
            self.serve_pipelined();
            self.core.flush_dirty();

            if self.core.drained() {
                // Let queued closes reach the kernel before the rings go away.
                let _ = self.core.submit_all();
                return Ok(());
            }

            let timeout = self.core.sleep_budget();
            for ring in &mut self.core.rings[1..] {
                if ring.has_pending() {
                    ring.submit()?;
                }
            }
            self.core.rings[0].submit_and_wait(timeout)?;
            self.core.now = Instant::now();
            let mut handled = 0usize;
            let submit_every = self.core.cfg.submit_every;
            for r in 0..self.core.rings.len() {
                completions.clear();
                self.core.rings[r].completions(&mut completions);
                for c in completions.iter().copied() {
                    if let Some(t) = Token::decode(c.user_data).filter(|t| t.op == Op::Wake) {
                        if t.slot == 0 {
                            self.waker.reset();
                            self.core.rings[0].arm_wake(&self.waker);
                        } else if let Some(wake) = &self.core.child_wake {
                            self.core.rings[0].arm_child_wake(wake);
                        }
                        continue;
                    }
                    self.complete(r, c);
                    handled += 1;
                    if submit_every != 0 && handled.is_multiple_of(submit_every) {
                        // A big batch must not hold back the first replies: send what it produced so far.
                        self.core.flush_dirty();
                        self.core.submit_all()?;
                    }
                }
            }
            self.core.rearm_starved();
            self.report_failed_connects();
            self.report_writable();
        }
    }

    /// One completion from ring `r`.
    fn complete(&mut self, r: usize, c: Completion) {
        let Some(token) = Token::decode(c.user_data) else { return };
        tracing::trace!(ring = r, ?token, result = c.result, flags = c.flags, "completion");
        match token.op {
            Op::Accept => self.core.on_accept(r, c),
            Op::Socket => self.on_socket(r, token, c),
            Op::Install => self.on_install(r, token, c),
            Op::Ignore | Op::Wake => {}
            _ => {
                let slot = token.slot;
                let live = self
                    .core
                    .slots
                    .get(slot as usize)
                    .is_some_and(|s| s.phase != Phase::Free && s.generation & 0xff_ffff == token.generation);
                if !live {
                    // A completion for an earlier occupant: only the buffer matters.
                    if let Some(bid) = c.buffer_id() {
                        let pool = self.bufs.pool(r, token.op == Op::RecvLarge);
                        if c.result > 0 {
                            pool.take(bid, c.result as usize);
                        }
                        pool.release(bid, c.buffer_more());
                    }
                    if token.op == Op::Send {
                        let _ = self.core.ring(slot).take_send(slot);
                    }
                    return;
                }
                match token.op {
                    Op::Recv => self.on_recv(slot, c, false),
                    Op::RecvLarge => self.on_recv(slot, c, true),
                    Op::Send => self.core.on_send(slot, c),
                    Op::PeerName => self.on_peer_name(slot, c),
                    Op::Close => self.finalize(slot),
                    Op::Bind | Op::Connect => self.on_connect_step(slot, token.op, c),
                    _ => {}
                }
            }
        }
    }

    /// Calls `on_writable` for the connections whose send queue drained after they asked. Only the reports
    /// waiting now: a handler that asks again from `on_writable` is heard at the next call, not in a loop.
    fn report_writable(&mut self) {
        if self.core.writable.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.core.writable);
        for &(slot, generation) in &ready {
            let s = &mut self.core.slots[slot as usize];
            if s.phase != Phase::Open || s.generation != generation || !s.has(slot::flag::WANT_WRITABLE) {
                continue;
            }
            s.clear(slot::flag::WANT_WRITABLE);
            let id = self.core.id(slot);
            with_ctx!(self, |h, ctx| h.on_writable(&mut ctx, id));
        }
        ready.clear();
        if self.core.writable.is_empty() {
            self.core.writable = ready;
        }
    }

    fn report_failed_connects(&mut self) {
        while !self.core.failed_connects.is_empty() {
            let failed = std::mem::take(&mut self.core.failed_connects);
            for (tag, error) in failed {
                with_ctx!(self, |h, ctx| h.on_connect_failed(&mut ctx, tag, &error));
            }
        }
    }
}
