//! The public API: [`Config`], the [`Handler`] trait, [`Engine`], [`EngineHandle`] and [`ConnId`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::metrics::{ShardMetrics, Stats};
use crate::proto::handshake::{HttpError, HttpRequest, UpgradeRequest};
use crate::proto::{CloseInfo, MessageKind};
use crate::ring::Waker;
use crate::shard::{self, Command};

/// Identifies one connection for its whole life: (shard, slot, generation). A slot is reused by later
/// connections with a new generation, so a stale id never reaches a newer connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub(crate) fn new(shard: u16, slot: u32, generation: u32) -> ConnId {
        debug_assert!(slot < (1 << 24));
        ConnId(((shard as u64) << 48) | (((slot as u64) & 0xff_ffff) << 24) | (generation as u64 & 0xff_ffff))
    }
    pub fn shard(self) -> usize {
        (self.0 >> 48) as usize
    }
    pub(crate) fn slot(self) -> u32 {
        ((self.0 >> 24) & 0xff_ffff) as u32
    }
    pub(crate) fn generation(self) -> u32 {
        (self.0 & 0xff_ffff) as u32
    }
    /// The id as one number (stable for logs and maps).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.shard(), self.slot(), self.generation())
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

/// TCP keepalive probes set on every socket: first probe after `idle`, then every `interval`, `count` probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive { idle: Duration::from_secs(15), interval: Duration::from_secs(5), count: 3 }
    }
}

fn is_off(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "off" | "none" | "false" | "disabled")
}

/// A humantime duration where `0`, `0s` or `off` means disabled (`None`). Shared by tetherd and tether-load.
pub fn parse_optional_duration(s: &str) -> Result<Option<Duration>, String> {
    if is_off(s) {
        return Ok(None);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 500ms, 1s or 20s, or off ({e})"))?;
    Ok(if d.is_zero() { None } else { Some(d) })
}

/// TCP_USER_TIMEOUT as people write it: a humantime duration in whole milliseconds up to u32::MAX, or
/// `0`/`off` for the kernel default (`None`). Shared by tetherd and tether-load.
pub fn parse_tcp_user_timeout(s: &str) -> Result<Option<Duration>, String> {
    let Some(d) = parse_optional_duration(s)? else {
        return Ok(None);
    };
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms (or 0/off to disable)".into());
    }
    if d.as_millis() > u32::MAX as u128 {
        return Err("too long for TCP_USER_TIMEOUT (at most about 49 days)".into());
    }
    Ok(Some(d))
}

/// TCP keepalive as people write it: `IDLE,INTERVAL,COUNT` (e.g. `15s,5s,3`), or `off` (`None`). The kernel
/// counts idle and interval in whole seconds (1..=32767) and allows 1..=127 probes. Shared by tetherd and
/// tether-load.
pub fn parse_tcp_keepalive(s: &str) -> Result<Option<TcpKeepalive>, String> {
    if is_off(s) || s == "0" {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err("expected IDLE,INTERVAL,COUNT such as 15s,5s,3, or off".into());
    }
    let secs = |what: &str, text: &str| -> Result<Duration, String> {
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("{what} \"{text}\" is not a duration such as 15s ({e})"))?;
        if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > 32767 {
            return Err(format!("{what} must be a whole number of seconds from 1s to 32767s"));
        }
        Ok(d)
    };
    let idle = secs("IDLE", parts[0])?;
    let interval = secs("INTERVAL", parts[1])?;
    let count = parts[2]
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=127).contains(n))
        .ok_or_else(|| format!("COUNT \"{}\" must be a whole number from 1 to 127", parts[2]))?;
    Ok(Some(TcpKeepalive { idle, interval, count }))
}

/// What to do when a connection's send queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SendQueuePolicy {
    /// Close the connection with 1008 "send queue full": a consumer that cannot keep up is cut loose.
    #[default]
    Close,
    /// Drop the message and count it in `send_dropped`; the connection stays.
    Drop,
}

/// Everything the engine can be told. `Config::default()` is a sane server on 127.0.0.1:9001.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; `None` for a client-only engine (the load generator).
    pub listen: Option<SocketAddr>,
    /// Shard threads; 0 = one per CPU. More are started if `max_connections` needs them.
    pub shards: usize,
    /// Upper bound on concurrent connections over all shards; 0 = whatever the limits allow.
    pub max_connections: usize,
    /// listen(2) backlog of each shard's SO_REUSEPORT socket.
    pub backlog: i32,
    /// Timing wheel resolution.
    pub tick: Duration,
    /// Server ping cadence; `None` disables pings.
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    /// `None` disables TCP keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `None` leaves the kernel default.
    pub tcp_user_timeout: Option<Duration>,
    pub max_message_size: usize,
    /// Largest HTTP upgrade request accepted (431 beyond).
    pub max_handshake_size: usize,
    /// Bytes queued for one connection (written or waiting) before `send_queue_policy` applies.
    pub max_send_queue: usize,
    pub send_queue_policy: SendQueuePolicy,
    /// Provided receive buffers per shard (a power of two, at most 32768) and their size. 0 = auto:
    /// [`AUTO_RECV_BUFFERS`] per shard while there are no more shards than cores; when capacity needs more
    /// shards than cores (20,000 connections per ring), the same total per core is shared out among them, at
    /// least [`MIN_AUTO_RECV_BUFFERS`] each: the cores can only drain so many receives at once, and every
    /// buffer ends up resident (4 KiB each), which would otherwise dominate the memory of idle connections.
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    /// Submission queue entries per ring (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Registered file table slots per ring; 0 = RLIMIT_NOFILE (the kernel caps it there).
    pub slots_per_shard: u32,
    /// Wake each shard at least this often to call [`Handler::on_tick`] (for applications with their own
    /// timers, such as the load generator's message rate); `None` = only when the loop wakes anyway.
    pub handler_tick: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9001))),
            shards: 0,
            max_connections: 0,
            backlog: 4096,
            tick: Duration::from_millis(100),
            ping_interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            tcp_keepalive: Some(TcpKeepalive::default()),
            tcp_user_timeout: Some(Duration::from_secs(30)),
            max_message_size: 16 << 20,
            max_handshake_size: 8192,
            max_send_queue: 4 << 20,
            send_queue_policy: SendQueuePolicy::Close,
            recv_buffers: 0,
            recv_buffer_size: 4096,
            ring_entries: 4096,
            slots_per_shard: 0,
            handler_tick: None,
        }
    }
}

/// A complete message as the handler sees it; borrowed from the receive buffer, valid during the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// A plain HTTP answer (for requests without an upgrade, or a refused upgrade).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16, reason: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse { status, reason, content_type, body: body.into() }
    }
    pub fn not_found() -> Self {
        HttpResponse::new(404, "Not Found", "text/plain", "not found: this is a WebSocket endpoint\n")
    }
}

/// What the handler says about an upgrade request.
pub enum Upgrade {
    Accept,
    Reject(HttpError),
}

/// Details of a finished connection, for `on_close` and the close log line.
#[derive(Clone, Debug)]
pub struct Closed {
    pub info: CloseInfo,
    pub peer: Option<SocketAddr>,
    pub duration: Duration,
    /// Whether the WebSocket upgrade had completed (false for refused or timed-out handshakes).
    pub was_open: bool,
}

/// The application. One instance per shard, called on that shard's thread; never blocks.
pub trait Handler: Send + 'static {
    /// An upgrade request arrived; accept (default) or refuse it with an HTTP error.
    fn on_upgrade(&mut self, _conn: ConnId, _request: &UpgradeRequest) -> Upgrade {
        Upgrade::Accept
    }
    /// A plain HTTP request (no `Upgrade: websocket`) arrived; its answer is sent and the connection closed.
    fn on_http(&mut self, _request: &HttpRequest) -> HttpResponse {
        HttpResponse::not_found()
    }
    /// The WebSocket is open (server: 101 sent; client: 101 received and checked).
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId) {}
    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, message: Message<'_>);
    /// The peer pinged (the pong is already on its way).
    fn on_ping(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _payload: &[u8]) {}
    /// A pong arrived; `rtt` is set when it answered our latest ping.
    fn on_pong(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _rtt: Option<Duration>) {}
    /// The connection is gone and its slot free; `conn` will never be seen again.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _closed: &Closed) {}
    /// An outbound connection (client role) failed before it opened. `tag` is the one given to `connect`.
    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_>, _tag: u64, _error: &ConnectError) {}
    /// An outbound connection reached the open state. Called before `on_open`.
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _tag: u64) {}
    /// Called once per loop iteration with the shard's clock, after completions and timers ran
    /// (at least every `Config::handler_tick` when that is set).
    fn on_tick(&mut self, _ctx: &mut Ctx<'_>) {}
    /// A value sent with [`EngineHandle::notify`] arrived on this shard.
    fn on_notify(&mut self, _ctx: &mut Ctx<'_>, _message: Box<dyn std::any::Any + Send>) {}
}

/// Why an outbound connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// socket/bind/connect failed (errno text).
    Io(String),
    /// The server answered the upgrade with another status.
    Rejected { status: u16, reason: String },
    /// The server's answer broke the handshake rules (e.g. wrong Sec-WebSocket-Accept).
    Invalid(String),
    /// No answer within handshake_timeout.
    Timeout,
    /// The shard had no free slot.
    NoCapacity,
    /// The connection closed before the handshake finished.
    Closed,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Rejected { status, reason } => {
                write!(f, "server answered HTTP {status} {reason} instead of 101")
            }
            ConnectError::Invalid(e) => write!(f, "invalid handshake response: {e}"),
            ConnectError::Timeout => write!(f, "handshake timed out"),
            ConnectError::NoCapacity => write!(f, "no free connection slot"),
            ConnectError::Closed => write!(f, "connection closed during the handshake"),
        }
    }
}

/// An outbound WebSocket connection to open (client role).
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    pub addr: SocketAddr,
    /// Local address to bind first (port 0 picks one), to spread over source addresses.
    pub bind: Option<SocketAddr>,
    /// Host header value.
    pub host: String,
    pub path: String,
    /// Returned in `on_connected` / `on_connect_failed`.
    pub tag: u64,
}

pub(crate) type CmdQueue = Vec<Command>;

/// The handler's view of its shard during a callback: send and close without locks.
pub struct Ctx<'a> {
    pub(crate) shard: u16,
    pub(crate) now: std::time::Instant,
    /// The connection whose event is being handled, with its output buffer, when the role allows writing
    /// straight into it (server role frames need no per-connection state).
    pub(crate) direct: Option<(ConnId, &'a mut Vec<u8>)>,
    pub(crate) queue: &'a mut CmdQueue,
    pub(crate) handle: &'a EngineHandle,
}

impl<'a> Ctx<'a> {
    /// Queue a message to any connection (on this shard or another).
    pub fn send(&mut self, conn: ConnId, message: Message<'_>) {
        if let Some((current, out)) = self.direct.as_mut() {
            if *current == conn {
                crate::proto::frame::write_frame(out, true, opcode(message.kind()), None, message.as_bytes());
                return;
            }
        }
        self.send_owned(conn, message.kind(), message.as_bytes().to_vec());
    }
    /// Queue an owned message (no copy).
    pub fn send_owned(&mut self, conn: ConnId, kind: MessageKind, data: Vec<u8>) {
        if conn.shard() == self.shard as usize {
            self.queue.push(Command::Send { conn, kind, data });
        } else {
            self.handle.send(conn, kind, data);
        }
    }
    /// Start the close handshake with `code` and `reason`.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        if conn.shard() == self.shard as usize {
            self.queue.push(Command::Close { conn, code, reason: reason.into() });
        } else {
            self.handle.close(conn, code, reason);
        }
    }
    /// Send a ping now (RTT is reported to `on_pong`).
    pub fn ping(&mut self, conn: ConnId) {
        self.queue.push(Command::Ping { conn });
    }
    /// Open an outbound connection from this shard.
    pub fn connect(&mut self, request: ConnectRequest) {
        self.queue.push(Command::Connect(Box::new(request)));
    }
    pub fn shard(&self) -> usize {
        self.shard as usize
    }
    /// The shard's clock at the start of this loop iteration.
    pub fn now(&self) -> std::time::Instant {
        self.now
    }
    pub fn handle(&self) -> &EngineHandle {
        self.handle
    }
}

pub(crate) fn opcode(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Text => 0x1,
        MessageKind::Binary => 0x2,
    }
}

pub(crate) struct ShardLink {
    pub tx: Sender<Command>,
    pub waker: Waker,
    pub metrics: Arc<ShardMetrics>,
}

pub(crate) struct Shared {
    pub links: Vec<ShardLink>,
    /// Connections holding a slot, over all shards: compared with max_connections at accept.
    pub open_total: AtomicUsize,
    pub max_connections: usize,
    pub shutting_down: AtomicBool,
}

/// Send, close, connect and read stats from any thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
}

impl EngineHandle {
    fn deliver(&self, shard: usize, cmd: Command) {
        if let Some(link) = self.shared.links.get(shard) {
            if link.tx.send(cmd).is_ok() {
                link.waker.wake();
            }
        }
    }
    pub fn send(&self, conn: ConnId, kind: MessageKind, data: Vec<u8>) {
        self.deliver(conn.shard(), Command::Send { conn, kind, data });
    }
    pub fn send_text(&self, conn: ConnId, text: &str) {
        self.send(conn, MessageKind::Text, text.as_bytes().to_vec());
    }
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) {
        self.deliver(conn.shard(), Command::Close { conn, code, reason: reason.into() });
    }
    /// Send one message to every open connection of every shard (one shared copy of the payload).
    pub fn broadcast(&self, kind: MessageKind, data: Vec<u8>) {
        let data: Arc<[u8]> = data.into();
        for shard in 0..self.shared.links.len() {
            self.deliver(shard, Command::Broadcast { kind, data: data.clone() });
        }
    }
    /// Open an outbound connection on `shard` (client role).
    pub fn connect(&self, shard: usize, request: ConnectRequest) {
        self.deliver(shard, Command::Connect(Box::new(request)));
    }
    /// Hand `message` to the shard's handler ([`Handler::on_notify`]) on its thread.
    pub fn notify(&self, shard: usize, message: Box<dyn std::any::Any + Send>) {
        self.deliver(shard, Command::Notify(message));
    }
    /// Run `f` with a [`Ctx`] on the given shard's thread.
    pub fn run_on(&self, shard: usize, f: Box<dyn FnOnce(&mut Ctx<'_>) + Send>) {
        self.deliver(shard, Command::Run(f));
    }
    pub fn shards(&self) -> usize {
        self.shared.links.len()
    }
    /// The sum of every shard's counters.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for link in &self.shared.links {
            total.merge(&link.metrics.snapshot());
        }
        total
    }
    /// Each shard's counters.
    pub fn shard_stats(&self) -> Vec<Stats> {
        self.shared.links.iter().map(|l| l.metrics.snapshot()).collect()
    }
    /// Stop accepting, send Close 1001 to every connection, and let each shard exit once its connections are
    /// closed or `drain` has passed. Returns immediately; [`Engine::wait`] waits for the exit.
    pub fn shutdown(&self, drain: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for shard in 0..self.shared.links.len() {
            self.deliver(shard, Command::Shutdown { drain });
        }
    }
    pub fn max_connections(&self) -> usize {
        self.shared.max_connections
    }
}

/// What the limits allow, worked out at start-up and logged.
#[derive(Clone, Debug)]
pub struct Capacity {
    pub shards: usize,
    pub slots_per_shard: u32,
    pub max_connections: usize,
    pub rlimit_nofile: u64,
    /// Provided receive buffers per shard (`Config::recv_buffers`, or what auto chose).
    pub recv_buffers: u16,
}

/// Receive buffers per shard under `recv_buffers = 0` while shards <= cores.
pub const AUTO_RECV_BUFFERS: u16 = 2048;
/// The fewest receive buffers auto gives a shard.
pub const MIN_AUTO_RECV_BUFFERS: u16 = 256;

/// What `recv_buffers = 0` means for `shards` shards on `cores` cores: AUTO_RECV_BUFFERS per core, shared out,
/// rounded down to a power of two, at least MIN_AUTO_RECV_BUFFERS.
pub fn auto_recv_buffers(shards: usize, cores: usize) -> u16 {
    let share = AUTO_RECV_BUFFERS as usize * cores.max(1) / shards.max(1);
    let share = share.clamp(MIN_AUTO_RECV_BUFFERS as usize, AUTO_RECV_BUFFERS as usize);
    // Largest power of two <= share.
    (1usize << (usize::BITS - 1 - share.leading_zeros())) as u16
}

/// A running engine: shard threads plus the handle to reach them.
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    capacity: Capacity,
}

/// Slots kept back in each ring's file table so that a connection past max_connections can still be accepted
/// and told 503 instead of being left in the kernel's backlog.
pub(crate) const RESERVED_SLOTS: u32 = 64;

impl Engine {
    /// Bind the listeners, start the shard threads and return once every ring is up.
    pub fn start<H, F>(config: Config, make_handler: F) -> io::Result<Engine>
    where
        H: Handler,
        F: Fn(usize) -> H,
    {
        let capacity = plan_capacity(&config)?;
        shard::start(config, capacity, make_handler)
    }

    pub(crate) fn from_parts(
        handle: EngineHandle,
        threads: Vec<JoinHandle<()>>,
        local_addr: Option<SocketAddr>,
        capacity: Capacity,
    ) -> Engine {
        Engine { handle, threads, local_addr, capacity }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
    /// The listening address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }
    /// Wait for every shard thread to exit (after [`EngineHandle::shutdown`]).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Works out shards and slots from the config and RLIMIT_NOFILE.
pub fn plan_capacity(config: &Config) -> io::Result<Capacity> {
    let rlimit_nofile = crate::ring::nofile_limit();
    let table_max = rlimit_nofile.min(u32::MAX as u64 / 2) as u32;
    let slots = if config.slots_per_shard == 0 { table_max } else { config.slots_per_shard.min(table_max) };
    let slots = slots.min(1 << 24);
    if slots <= RESERVED_SLOTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("only {slots} file table slots per ring (RLIMIT_NOFILE {rlimit_nofile}); need more than {RESERVED_SLOTS}"),
        ));
    }
    let usable = (slots - RESERVED_SLOTS) as usize;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut shards = if config.shards == 0 { cores } else { config.shards };
    if config.max_connections > 0 {
        shards = shards.max(config.max_connections.div_ceil(usable));
    }
    if shards > u16::MAX as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many shards"));
    }
    let max_connections = if config.max_connections == 0 { shards * usable } else { config.max_connections };
    let recv_buffers = if config.recv_buffers == 0 { auto_recv_buffers(shards, cores) } else { config.recv_buffers };
    Ok(Capacity { shards, slots_per_shard: slots, max_connections, rlimit_nofile, recv_buffers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_recv_buffers_share_a_per_core_budget() {
        // No more shards than cores: the full count each.
        assert_eq!(auto_recv_buffers(1, 2), 2048);
        assert_eq!(auto_recv_buffers(2, 2), 2048);
        assert_eq!(auto_recv_buffers(8, 16), 2048);
        // More shards than cores (capacity-driven): the per-core budget shared out, as a power of two.
        assert_eq!(auto_recv_buffers(4, 2), 1024);
        assert_eq!(auto_recv_buffers(11, 2), 256);
        assert_eq!(auto_recv_buffers(3, 2), 1024);
        // Never below the floor.
        assert_eq!(auto_recv_buffers(26, 2), 256);
        assert_eq!(auto_recv_buffers(0, 0), 2048);
    }

    #[test]
    fn capacity_resolves_auto_recv_buffers() {
        let explicit = Config { recv_buffers: 512, listen: None, ..Config::default() };
        assert_eq!(plan_capacity(&explicit).unwrap().recv_buffers, 512);
        let auto = Config { listen: None, ..Config::default() };
        let cap = plan_capacity(&auto).unwrap();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(cap.recv_buffers, auto_recv_buffers(cap.shards, cores));
        assert!(cap.recv_buffers.is_power_of_two());
    }
}
