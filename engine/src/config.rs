//! [`Config`]: everything the engine can be told, with its defaults written once (`Config::default`), the
//! per-connection [`Profile`]s, and the parsers tetherd and tether-load share for the socket options.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::proto::{Deflate, PingMode};

/// TCP keepalive probes set on every socket: first probe after `idle`, then every `interval`, `count` probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe (TCP_KEEPIDLE; whole seconds, 1 s to 32767 s). `None` (the default,
    /// `auto`): [`auto_idle`](TcpKeepalive::auto_idle) of the default profile's pings, so the kernel probes
    /// only a connection that the WebSocket pings leave quiet.
    pub idle: Option<Duration>,
    /// Time between probes (TCP_KEEPINTVL; whole seconds, 1 s to 32767 s). Default 5 s.
    pub interval: Duration,
    /// Unanswered probes before the kernel resets the connection (TCP_KEEPCNT; 1 to 127). Default 3, so a dead
    /// peer is found after `idle + count * interval`.
    pub count: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive { idle: None, interval: Duration::from_secs(5), count: 3 }
    }
}

impl TcpKeepalive {
    /// The idle time before the first probe when none is given, for a connection that pings every
    /// `ping_interval` (`None`: no pings) with `pong_timeout`: 15 s without pings; with pings,
    /// `ping_interval + pong_timeout` in whole seconds (30 s for the defaults 20 s and 10 s). A connection
    /// whose pings are answered then never goes idle that long, so it gets no probes: measured, a 15 s idle
    /// under 20 s pings made the kernel probe (and the peer answer) on every connection in every ping
    /// interval at both ends, 69% more packets than the pings themselves (BENCHMARKS.md section 6).
    pub fn auto_idle(ping_interval: Option<Duration>, pong_timeout: Duration) -> Duration {
        match ping_interval.filter(|d| !d.is_zero()) {
            None => Duration::from_secs(15),
            Some(p) => {
                let d = p.saturating_add(pong_timeout);
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                Duration::from_secs(secs.clamp(1, 32767))
            }
        }
    }
}

/// TCP keepalive with every value decided: what a socket is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SocketKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
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

/// TCP keepalive as people write it: `IDLE,INTERVAL,COUNT` (e.g. `15s,5s,3`; IDLE may be `auto`), `auto`
/// (or `on`: the default, `auto,5s,3`), or `off` (`None`). The kernel counts idle and interval in whole seconds
/// (1..=32767) and allows 1..=127 probes. Shared by tetherd and tether-load.
pub fn parse_tcp_keepalive(s: &str) -> Result<Option<TcpKeepalive>, String> {
    let s = s.trim();
    if is_off(s) || s == "0" {
        return Ok(None);
    }
    if ["auto", "on", "true"].iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return Ok(Some(TcpKeepalive::default()));
    }
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err("expected IDLE,INTERVAL,COUNT such as 15s,5s,3 or auto,5s,3, or auto, or off".into());
    }
    let secs = |what: &str, text: &str| -> Result<Duration, String> {
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("{what} \"{text}\" is not a duration such as 15s ({e})"))?;
        if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > 32767 {
            return Err(format!("{what} must be a whole number of seconds from 1s to 32767s"));
        }
        Ok(d)
    };
    let idle = if parts[0].eq_ignore_ascii_case("auto") { None } else { Some(secs("IDLE", parts[0])?) };
    let interval = secs("INTERVAL", parts[1])?;
    let count = parts[2]
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=127).contains(n))
        .ok_or_else(|| format!("COUNT \"{}\" must be a whole number from 1 to 127", parts[2]))?;
    Ok(Some(TcpKeepalive { idle, interval, count }))
}

/// Parse a ping mode: `interval` (a ping every interval) or `idle` (only after an interval without a frame
/// from the peer).
pub fn parse_ping_mode(s: &str) -> Result<PingMode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "interval" => Ok(PingMode::Interval),
        "idle" => Ok(PingMode::Idle),
        other => Err(format!("ping mode \"{other}\" must be interval or idle")),
    }
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
    /// Shard threads; 0 = one per CPU. The count never follows `max_connections`: a shard that must hold more
    /// connections than one ring's file table gets more rings instead (see [`plan_capacity`](crate::plan_capacity)).
    /// At most 65535.
    pub shards: usize,
    /// Upper bound on concurrent connections over all shards; 0 = whatever the limits allow. Past it an
    /// upgrade request is answered 503 and [`EngineHandle::adopt`](crate::EngineHandle::adopt) refuses with
    /// `AtCapacity`.
    pub max_connections: usize,
    /// listen(2) backlog of each shard's SO_REUSEPORT socket.
    pub backlog: i32,
    /// Timing wheel resolution (at least 1 ms; default 10 ms). Every deadline (keepalive, timeouts,
    /// [`Ctx::set_timer`](crate::Ctx::set_timer)) fires at the first tick at or after it: up to one tick late,
    /// never early.
    pub tick: Duration,
    /// Server ping cadence; `None` disables pings.
    pub ping_interval: Option<Duration>,
    /// The first ping of a connection at a random point of its first interval (default), so that connections
    /// that open together (a ramp, a mass reconnect) do not ping together for the rest of their lives; `false`:
    /// one whole interval after the open.
    pub ping_jitter: bool,
    /// [`PingMode::Interval`] (default): a ping every `ping_interval`. [`PingMode::Idle`]: only after an
    /// interval in which nothing was heard from the peer, so connections that talk, or whose peer pings
    /// often enough, cost no pings; silent ones are pinged and a dead peer is found as soon.
    pub ping_mode: PingMode,
    /// After a ping, how long the peer has to send any frame at all (a pong or anything else; 16 KiB of a large
    /// frame in progress also counts). Past it the connection is closed with 1011 "pong timeout"
    /// ([`CloseCause::PongTimeout`](crate::CloseCause::PongTimeout)) without waiting for the peer's Close.
    /// Default 10 s.
    pub pong_timeout: Duration,
    /// How long a new connection has to send a complete upgrade (or plain HTTP) request: past it it is
    /// answered 408 and closed ([`CloseCause::HandshakeTimeout`](crate::CloseCause::HandshakeTimeout)). For an
    /// outbound connection, the time to connect and receive the 101 (past it the connect fails with
    /// [`ConnectError::Timeout`](crate::ConnectError::Timeout)). Default 10 s.
    pub handshake_timeout: Duration,
    /// How long to wait for the peer's Close after we sent ours; past it the connection is dropped
    /// ([`CloseCause::CloseTimeout`](crate::CloseCause::CloseTimeout)). This value is the default profile's;
    /// for every connection, whatever its profile, it also bounds flushing the last output of a closing
    /// connection and each step of its teardown. Default 5 s.
    pub close_timeout: Duration,
    /// `None` disables TCP keepalive. Default: on, idle `auto` (the default profile's `ping_interval +
    /// pong_timeout`, 30 s; 15 s when it does not ping), 5 s x 3 probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `None` leaves the kernel default.
    pub tcp_user_timeout: Option<Duration>,
    /// Largest message accepted from a peer, in bytes: one frame's payload, or a fragmented message's payloads
    /// together. Past it the connection is failed with 1009 "message too big", decided at the frame header
    /// before any of the payload is buffered. Messages sent to the peer are bounded by `max_send_queue`
    /// instead. Default 16 MiB.
    pub max_message_size: usize,
    /// Largest HTTP upgrade request accepted (431 beyond).
    pub max_handshake_size: usize,
    /// Bytes queued for one connection (written or waiting) before `send_queue_policy` applies.
    pub max_send_queue: usize,
    /// What a send that finds the queue past `max_send_queue` does: close the connection (default, 1008
    /// "send queue full") or drop the message.
    pub send_queue_policy: SendQueuePolicy,
    /// Provided receive buffers per ring (a power of two, at most 32768; anything else fails
    /// [`Engine::start`](crate::Engine::start)), shared by all the ring's connections. 0 = auto:
    /// [`AUTO_RECV_BUFFERS`](crate::capacity::AUTO_RECV_BUFFERS) per shard thread, shared out among its rings
    /// when `max_connections` needs several (rounded down to a power of two, at least
    /// [`MIN_AUTO_RECV_BUFFERS`](crate::capacity::MIN_AUTO_RECV_BUFFERS) each): a core can only drain so many
    /// receives at once, and every buffer ends up resident (4 KiB each), which would otherwise dominate the
    /// memory of idle connections. [`Engine::capacity`](crate::Engine::capacity) says what was chosen.
    pub recv_buffers: u16,
    /// Bytes in each provided receive buffer (at least 256, else [`Engine::start`](crate::Engine::start)
    /// fails). Default 4096.
    pub recv_buffer_size: u32,
    /// Bytes in each large receive buffer; 0 = no large buffers. A plaintext connection one of whose frames
    /// spans more than one `recv_buffer_size` buffer is moved, once, to receive into a second pool of the
    /// ring: `recv_large_buffers` buffers of this size, allocated when the ring first needs them. A large
    /// message then usually lands whole in one buffer and reaches the handler in place, instead of arriving
    /// in many completions and being copied together. Must be larger than `recv_buffer_size`, else
    /// [`Engine::start`](crate::Engine::start) fails. Default 64 KiB.
    pub recv_large_buffer_size: u32,
    /// Large receive buffers per ring (a power of two, at most 32768). Default 64: 4 MiB per ring that
    /// has a connection sending large frames.
    pub recv_large_buffers: u16,
    /// Submission queue entries per ring (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Completions a shard handles between two submissions at most: after this many it submits what they
    /// produced so far (replies, pongs, closes), so that the first replies of a large batch leave while the
    /// rest of it is handled, and one `io_uring_enter` does not carry thousands of sends. 0 = submit once per
    /// loop iteration, after the whole batch. Default 512 (measured: BENCHMARKS.md section 6).
    pub submit_every: usize,
    /// Registered file table slots per ring; 0 = RLIMIT_NOFILE (the kernel caps it there).
    pub slots_per_shard: u32,
    /// Largest body of a plain HTTP request (Content-Length; 413 beyond). Upgrade requests have none.
    pub max_http_body: usize,
    /// How long a connection may wait, idle, for its next plain HTTP request after an answer (HTTP/1.1
    /// keep-alive: an API client publishing many times reuses one connection instead of a TCP handshake and
    /// teardown per call). Once the next request's first bytes arrive, it has `handshake_timeout` to
    /// complete. An idle connection past it is closed without an answer. `None`: every answer carries
    /// `Connection: close` and the connection ends after it. Default 60 s.
    pub http_keepalive: Option<Duration>,
    /// Commands (sends, closes, publications, connects) other threads may have waiting for one shard; past
    /// it their calls return [`SendError::InboxFull`](crate::SendError::InboxFull) and the shard counts the
    /// refusal (`inbox_full`). The same bound applies to each shard's notice queue.
    pub inbox_capacity: usize,
    /// Per-connection profiles an application can pick at upgrade ([`Accept::profile`](crate::Accept::profile));
    /// add them with [`Config::add_profile`]. The settings above are the default profile.
    pub profiles: Vec<Profile>,
    /// Connections one source address may hold at once (an IPv6 peer counts by its /64), over all shards;
    /// past it a request is answered 503 with Retry-After, before any upgrade, whatever its path. 0 (the
    /// default) = unlimited: load tests open hundreds of thousands of connections from loopback.
    pub per_ip_max_connections: u32,
    /// New connections per second one source address may open (a token bucket with a burst of the same size,
    /// at least one), over all shards; past it a request is answered 429 with Retry-After. 0.0 (the default)
    /// = unlimited.
    pub per_ip_handshake_rate: f64,
    /// Wake each shard at least this often to call [`Handler::on_tick`](crate::Handler::on_tick) (for applications with their own
    /// timers, such as the load generator's message rate); `None` = only when the loop wakes anyway.
    pub handler_tick: Option<Duration>,
    /// permessage-deflate (RFC 7692): [`Deflate::Shared`] (default) accepts offers without context takeover
    /// either way, so a connection keeps no compression state (one compressor and one inflater per shard);
    /// [`Deflate::Dedicated`] keeps context takeover with its own streams per connection (costly: see
    /// README); [`Deflate::Off`] declines every offer. The client role offers it unless `Off`.
    pub deflate: Deflate,
    /// Messages shorter than this (bytes) are sent uncompressed even where deflate was negotiated. Default 64.
    pub deflate_threshold: usize,
    /// zlib compression level of permessage-deflate, 0-9 (1: fastest, 9: smallest; 0 stores). Default 6,
    /// zlib's own.
    pub deflate_level: u32,
    /// TLS on the listener (wss:// and https://): every accepted connection must speak it; a plaintext HTTP
    /// request gets 400 and a close. `None` (the default): plaintext. See [`TlsServer`](crate::TlsServer).
    pub tls: Option<crate::tls::TlsServer>,
    /// TLS handshake steps (a ClientHello answered, a Finished checked) a shard takes per loop iteration at
    /// most; the rest wait for the next iteration, so a flood of new TLS clients (a ClientHello costs a key
    /// exchange and a signature) cannot starve open connections' pongs and messages. Default 64.
    pub tls_handshakes_per_loop: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9001))),
            shards: 0,
            max_connections: 0,
            backlog: 4096,
            tick: Duration::from_millis(10),
            ping_interval: Some(Duration::from_secs(20)),
            ping_jitter: true,
            ping_mode: PingMode::Interval,
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
            recv_large_buffer_size: 64 << 10,
            recv_large_buffers: 64,
            ring_entries: 4096,
            submit_every: 512,
            slots_per_shard: 0,
            max_http_body: 1 << 20,
            http_keepalive: Some(Duration::from_secs(60)),
            inbox_capacity: 65536,
            profiles: Vec::new(),
            per_ip_max_connections: 0,
            per_ip_handshake_rate: 0.0,
            handler_tick: None,
            deflate: Deflate::Shared,
            deflate_threshold: crate::proto::deflate::DEFAULT_THRESHOLD,
            deflate_level: crate::proto::deflate::DEFAULT_LEVEL,
            tls: None,
            tls_handshakes_per_loop: 64,
        }
    }
}

impl Config {
    /// Register a per-connection profile; returns its id for [`Accept::profile`](crate::Accept::profile).
    /// At most 255 profiles besides the default.
    pub fn add_profile(&mut self, profile: Profile) -> ProfileId {
        assert!(self.profiles.len() < u8::MAX as usize, "at most 255 profiles");
        self.profiles.push(profile);
        ProfileId(self.profiles.len() as u8)
    }

    /// TCP keepalive as sockets get it (listeners pass it on to accepted sockets): an `auto` idle follows
    /// this config's own (the default profile's) pings.
    pub(crate) fn socket_keepalive(&self) -> Option<SocketKeepalive> {
        self.tcp_keepalive.map(|k| SocketKeepalive {
            idle: k.idle.unwrap_or_else(|| TcpKeepalive::auto_idle(self.ping_interval, self.pong_timeout)),
            interval: k.interval,
            count: k.count,
        })
    }

    /// The settings of profile `id` (the default profile is this config's own settings).
    pub fn profile(&self, id: ProfileId) -> Profile {
        match id.0 {
            0 => Profile::of(self),
            n => self.profiles.get(n as usize - 1).cloned().unwrap_or_else(|| Profile::of(self)),
        }
    }
}

/// The settings that can differ per connection: keepalive, the close deadline and size limits. A connection
/// gets the default profile (the [`Config`]'s own settings) unless the application picks another at upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Ping cadence; `None` (or zero) disables pings.
    pub ping_interval: Option<Duration>,
    /// Every interval or only after an idle one (see [`Config::ping_mode`]).
    pub ping_mode: PingMode,
    /// After a ping, how long the peer has to send any frame; past it close 1011 (see [`Config::pong_timeout`]).
    pub pong_timeout: Duration,
    /// How long to wait for the peer's Close after ours (see [`Config::close_timeout`]).
    pub close_timeout: Duration,
    /// Largest message accepted from the peer, in bytes; past it close 1009 (see [`Config::max_message_size`]).
    pub max_message_size: usize,
    /// Bytes queued beyond the message being sent before `send_queue_policy` applies (one message of any
    /// size is always accepted into an empty queue).
    pub max_send_queue: usize,
    /// What a send past `max_send_queue` does: close with `overflow_close` (default) or drop the message.
    pub send_queue_policy: SendQueuePolicy,
    /// The Close sent when the queue overflows under policy `close`: 1008 "send queue full" by default (a
    /// protocol on top may have its own code, e.g. Centrifugo's 3008 "slow", which its clients reconnect on).
    pub overflow_close: (u16, &'static str),
}

impl Profile {
    /// The default profile of `config`: start from it and change what differs.
    pub fn of(config: &Config) -> Profile {
        Profile {
            ping_interval: config.ping_interval.filter(|d| !d.is_zero()),
            ping_mode: config.ping_mode,
            pong_timeout: config.pong_timeout,
            close_timeout: config.close_timeout,
            max_message_size: config.max_message_size,
            max_send_queue: config.max_send_queue,
            send_queue_policy: config.send_queue_policy,
            overflow_close: (1008, "send queue full"),
        }
    }
}

/// Names a [`Profile`]: `ProfileId::DEFAULT` or what [`Config::add_profile`] returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProfileId(pub(crate) u8);

impl ProfileId {
    /// The default profile: the [`Config`]'s own settings, which a connection gets unless the application
    /// picks another at upgrade.
    pub const DEFAULT: ProfileId = ProfileId(0);

    /// The profile's position: 0 for the default, `n` for the `n`th profile [`Config::add_profile`] added.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_idle_follows_the_pings_unless_given() {
        let s = Duration::from_secs;
        let mut c = Config::default();
        let ka = |c: &Config| c.socket_keepalive().map(|k| (k.idle, k.interval, k.count));
        assert_eq!(ka(&c), Some((s(30), s(5), 3)), "defaults: 20 s pings + 10 s pong timeout");
        c.ping_interval = None;
        assert_eq!(ka(&c), Some((s(15), s(5), 3)), "no pings");
        c.ping_interval = Some(Duration::ZERO);
        assert_eq!(ka(&c), Some((s(15), s(5), 3)), "zero = no pings");
        c.ping_interval = Some(Duration::from_millis(4500));
        c.pong_timeout = Duration::from_millis(200);
        assert_eq!(ka(&c), Some((s(5), s(5), 3)), "rounded up to whole seconds");
        c.ping_interval = Some(s(40_000));
        assert_eq!(ka(&c), Some((s(32767), s(5), 3)), "the kernel's most");
        c.tcp_keepalive = parse_tcp_keepalive("7s,2s,4").unwrap();
        assert_eq!(ka(&c), Some((s(7), s(2), 4)), "given");
        c.tcp_keepalive = parse_tcp_keepalive("auto,2s,4").unwrap();
        c.ping_interval = Some(s(20));
        c.pong_timeout = s(10);
        assert_eq!(ka(&c), Some((s(30), s(2), 4)), "auto idle, given interval and count");
        c.tcp_keepalive = parse_tcp_keepalive("off").unwrap();
        assert_eq!(ka(&c), None);
        assert_eq!(parse_tcp_keepalive(" Auto "), Ok(Some(TcpKeepalive::default())));
        assert_eq!(parse_tcp_keepalive("on"), Ok(Some(TcpKeepalive::default())));
        assert!(parse_tcp_keepalive("auto,5s").is_err());
    }
}
