//! The load itself: a [`Handler`] per shard that owns its connections' state and measurements, and the driver
//! that paces connects from the main thread, holds, closes, and gathers the shards' numbers.
//!
//! Hot path: every callback touches only shard-local state (the connection's own state, kept by the engine in
//! its slot, and a histogram). Message pacing uses the engine's per-connection timers and reconnect backoff
//! its delayed connects, so the handler keeps no map of connections and no timer heap. The main thread reads
//! the shards at most once a second by sending each one a [`Control::Snapshot`] notice; the shard answers
//! with a copy of its counters and histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tether::{
    CloseCause, Closed, Config, ConnId, ConnectError, ConnectRequest, Ctx, Engine, EngineHandle, Handler, Initiator,
    Message, Notifier, PingMode,
};

use crate::centrifugo::client::{CentConn, CentShard};
use crate::centrifugo::stats::{self as cent_stats, ApiStats, CentStats};
use crate::centrifugo::{self, api::Publisher, CentrifugoConfig};
use crate::report::{self, new_histogram, Report, Summary};
use crate::url::Target;
use crate::window::EchoWindow;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    pub connections: usize,
    /// New connections per second during the ramp.
    pub rate: f64,
    /// At most this many first connects in flight (issued, neither open nor failed yet): the ramp waits
    /// rather than pile SYNs into full listen queues, where they are dropped and retried after 1, 3, 7 s
    /// and the handshakes miss their deadlines. 0 = no bound.
    pub max_connecting: usize,
    /// How long to hold the connections once the ramp is done.
    pub duration: Duration,
    /// Client pings (the engine's keepalive pings); `None` = no pings.
    pub ping_interval: Option<Duration>,
    /// The first ping at a random point of the first interval (the engine's `ping_jitter`).
    pub ping_jitter: bool,
    /// Every interval, or only after one without a frame from the server (the engine's `ping_mode`).
    pub ping_mode: PingMode,
    pub pong_timeout: Duration,
    /// Messages per second per connection (echo traffic); 0 = idle.
    pub message_rate: f64,
    /// One message in flight per connection, the next sent when the echo arrives (from the end of the
    /// ramp); `message_rate` is then ignored.
    pub closed_loop: bool,
    pub message_size: usize,
    /// What an echo message carries besides its header (zeros, or a JSON document).
    pub payload: Payload,
    pub reconnect: bool,
    /// Source addresses to bind, round robin; empty = let the kernel choose.
    pub source_ips: Vec<IpAddr>,
    /// Extra header lines of every upgrade request (`Name: value`), e.g. a session cookie.
    pub headers: Vec<String>,
    /// Shard threads; 0 = one per CPU (each opens as many rings as its share of the connections needs).
    pub shards: usize,
    pub handshake_timeout: Duration,
    /// TCP keepalive and TCP_USER_TIMEOUT of every client socket (`None` = off / kernel default).
    pub tcp_keepalive: Option<tether::TcpKeepalive>,
    pub tcp_user_timeout: Option<Duration>,
    /// How long the end of the run waits without progress: for the close handshakes, the final echoes
    /// (and, with Centrifugo, the last deliveries). While answers keep coming the wait goes on, up to 10x
    /// this in all.
    pub close_wait: Duration,
    /// At the end of the hold, send one message on every open connection and wait (while they come, see
    /// `close_wait`) for the echoes: proof that each held connection still works end to end.
    pub final_echo: bool,
    /// Final echoes out at once per shard; 0 (the default) = a window that follows their latency
    /// ([`crate::window`]).
    pub final_window: usize,
    pub progress: ProgressMode,
    /// `--protocol centrifugo`: speak the Centrifugo client protocol and publish; `None` = echo.
    pub centrifugo: Option<CentrifugoConfig>,
    /// permessage-deflate offered in every upgrade request (`Off`: none, the default).
    pub deflate: tether::Deflate,
    /// TLS for a wss:// target (`None`: plaintext).
    pub tls: Option<tether::ClientTls>,
}

/// The default bound on first connects in flight: the accept queues of a server of a few cores (4,096
/// each) hold that many, and at 10 s per handshake it still allows 1,000 new connections a second.
pub const DEFAULT_MAX_CONNECTING: usize = 10_000;

impl LoadConfig {
    /// Defaults for everything but the target.
    pub fn new(target: Target) -> LoadConfig {
        LoadConfig {
            source_ips: crate::url::default_source_ips(&target.addr, 1000),
            headers: Vec::new(),
            target,
            connections: 1000,
            rate: 10_000.0,
            max_connecting: DEFAULT_MAX_CONNECTING,
            duration: Duration::from_secs(60),
            ping_interval: Some(Duration::from_secs(5)),
            ping_jitter: true,
            ping_mode: PingMode::Interval,
            pong_timeout: Duration::from_secs(10),
            message_rate: 0.0,
            closed_loop: false,
            message_size: 64,
            payload: Payload::Zeros,
            reconnect: false,
            shards: 0,
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(tether::TcpKeepalive::default()),
            tcp_user_timeout: Some(Duration::from_secs(30)),
            close_wait: Duration::from_secs(10),
            final_echo: false,
            final_window: 0,
            progress: ProgressMode::Auto,
            centrifugo: None,
            deflate: tether::Deflate::Off,
            tls: None,
        }
    }
}

/// How the once-a-second progress line is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// An indicatif line when stderr is a terminal, plain lines otherwise.
    Auto,
    Plain,
    Off,
}

/// One point of the per-second time series (the plot).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub open: u64,
    /// Ping RTT percentiles of the pongs that arrived during this second (ms), None when there were none.
    pub ping_p50_ms: Option<f64>,
    pub ping_p99_ms: Option<f64>,
    /// Drops so far.
    pub drops: u64,
}

/// Everything a run produced.
pub struct Outcome {
    pub report: Report,
    pub samples: Vec<Sample>,
    pub ping_rtt: Histogram<u64>,
    /// `--protocol centrifugo`: publish-to-receive latency of live publications (us).
    pub delivery_latency: Option<Histogram<u64>>,
}

// ----- connect tags -----

// A connect tag carries everything on_connected / on_connect_failed need: the logical connection's index, two
// flags, how many attempts in a row failed (the backoff), and when the request was issued (µs since the run's
// epoch, wrapping), for the handshake latency.
const TAG_INDEX_MASK: u64 = (1 << 28) - 1;
/// Not the first attempt for this index.
const TAG_RETRY: u64 = 1 << 28;
/// This index has been open before: a success is a reconnect.
const TAG_WAS_OPEN: u64 = 1 << 29;
const TAG_ATTEMPT_SHIFT: u32 = 30;
const TAG_ATTEMPT_MASK: u64 = 0xf;
const TAG_TIME_SHIFT: u32 = 34;
/// 30 bits of µs: wraps every ~18 minutes, far longer than any handshake.
const TAG_TIME_MASK: u64 = (1 << 30) - 1;

/// Marks our echo payloads: `[send time µs LE][MAGIC LE][padding]`.
const PAYLOAD_MAGIC: u64 = 0x646c_7265_6874_6574; // "tetherld"
/// Marks the `--final-echo` payloads, counted apart from the echo traffic.
const FINAL_MAGIC: u64 = 0x6c6e_6966_6874_6574; // "tethfinl"
/// The engine's timer tick: echo messages are paced by the wheel, and a fine tick keeps their cadence.
const MESSAGE_TICK: Duration = Duration::from_millis(10);
const PAYLOAD_HEADER: usize = 16;

/// What an echo message carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// A binary message: `[send time µs LE][magic LE]` and zeros (compression's best case).
    #[default]
    Zeros,
    /// A text message: a JSON document of exactly the message size (at least [`JSON_MIN_SIZE`]) with varied
    /// keys, strings and numbers, its first fields the header: `{"ts":"<send time µs, 16 hex
    /// digits>","kind":"<magic, 8 ASCII letters>","doc":"<pool index, 4 digits>",...}`. The documents are
    /// made once per run from a fixed seed (the same bytes against every server) and sent in turn; an echo
    /// counts only when it is text and equals the document sent, header aside.
    Json,
}

/// `--payload json`: where the header's fields sit (every document starts with the same 55 bytes but for
/// their values).
const JSON_TS: std::ops::Range<usize> = 7..23;
const JSON_KIND: std::ops::Range<usize> = 33..41;
const JSON_DOC: std::ops::Range<usize> = 50..54;
const JSON_HEADER: usize = 55;
/// The smallest JSON document: the header, an empty event list and an empty note.
pub const JSON_MIN_SIZE: usize = JSON_HEADER + r#","events":[],"note":""}"#.len();
/// Documents in the pool: enough that, sent in turn, the same one comes back only after 64 KB and more (past
/// a 32 KB deflate window with context takeover), at most 4 MiB of them.
const JSON_POOL: usize = 64;

/// The pool of `--payload json` documents of `size` bytes (raised to [`JSON_MIN_SIZE`]), deterministic.
pub fn json_documents(size: usize) -> Vec<Vec<u8>> {
    let size = size.max(JSON_MIN_SIZE);
    let count = (4 << 20) / size;
    (0..count.clamp(1, JSON_POOL)).map(|i| json_document(size, i)).collect()
}

/// One document: the header (send time and magic zeroed, filled in per send), a list of events, and a note
/// of words that pads it to exactly `size` bytes. ASCII only, so it is valid UTF-8 however it is cut.
fn json_document(size: usize, index: usize) -> Vec<u8> {
    const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"];
    const TYPES: &[&str] = &["click", "view", "scroll", "purchase", "login", "logout", "search", "share"];
    const CITIES: &[&str] = &["Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi", "Lima", "Oslo", "Pune", "Austin"];
    const WORDS: &[&str] = &[
        "lorem", "ipsum", "dolor", "sit", "amet", "socket", "frame", "latency", "buffer", "shard", "ring", "message",
        "server", "client", "window", "token", "channel", "stream", "update", "status", "quick",
    ];
    // splitmix64 from a fixed seed per document: the same pool in every run.
    let mut state = 0x7e7e_5eed_0000_0000u64 ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let pick = |list: &[&'static str], r: u64| list[(r % list.len() as u64) as usize];
    let mut doc = format!(r#"{{"ts":"{:016x}","kind":"tetherld","doc":"{:04}""#, 0, index % 10_000);
    debug_assert_eq!(doc.len(), JSON_HEADER);
    doc.push_str(r#","events":["#);
    // Room the tail needs: `],"note":"` and `"}`.
    let tail = r#"],"note":""}"#.len();
    let mut first = true;
    loop {
        let event = format!(
            r#"{{"id":{},"user":"{}_{}","type":"{}","score":{}.{:02},"ok":{},"city":"{}","tags":["{}","{}"]}}"#,
            next() % 1_000_000_000,
            pick(USERS, next()),
            next() % 1000,
            pick(TYPES, next()),
            next() % 1000,
            next() % 100,
            next() % 2 == 0,
            pick(CITIES, next()),
            pick(WORDS, next()),
            pick(WORDS, next()),
        );
        let sep = usize::from(!first);
        if doc.len() + sep + event.len() + tail > size {
            break;
        }
        if !first {
            doc.push(',');
        }
        doc.push_str(&event);
        first = false;
    }
    doc.push_str(r#"],"note":""#);
    let room = size - doc.len() - 2;
    let mut note = String::with_capacity(room + 16);
    while note.len() < room {
        if !note.is_empty() {
            note.push(' ');
        }
        note.push_str(pick(WORDS, next()));
    }
    note.truncate(room);
    doc.push_str(&note);
    doc.push_str("\"}");
    debug_assert_eq!(doc.len(), size);
    doc.into_bytes()
}

/// Writes the send time and magic into a copy of a pool document.
fn json_stamp(doc: &mut [u8], micros: u64, magic: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in doc[JSON_TS].iter_mut().enumerate() {
        *b = HEX[((micros >> (60 - 4 * i)) & 0xf) as usize];
    }
    doc[JSON_KIND].copy_from_slice(&magic.to_le_bytes());
}

/// An echoed JSON document: (send time, magic) when it is one of `pool`'s, stamped, and unchanged.
fn json_check(pool: &[Vec<u8>], bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() < JSON_HEADER {
        return None;
    }
    let mut micros = 0u64;
    for &b in &bytes[JSON_TS] {
        let digit = (b as char).to_digit(16)?;
        micros = micros << 4 | digit as u64;
    }
    let mut index = 0usize;
    for &b in &bytes[JSON_DOC] {
        index = index * 10 + (b as char).to_digit(10)? as usize;
    }
    let doc = pool.get(index)?;
    let same = doc.len() == bytes.len()
        && doc[..JSON_TS.start] == bytes[..JSON_TS.start]
        && doc[JSON_TS.end..JSON_KIND.start] == bytes[JSON_TS.end..JSON_KIND.start]
        && doc[JSON_KIND.end..] == bytes[JSON_KIND.end..];
    let magic = u64::from_le_bytes(bytes[JSON_KIND].try_into().expect("8 bytes"));
    same.then_some((micros, magic))
}

const PHASE_RAMP: u8 = 0;
const PHASE_HOLD: u8 = 1;
const PHASE_CLOSING: u8 = 2;

/// What the shards share: read-only settings plus a few counters the driver polls while ramping.
struct Shared {
    epoch: Instant,
    phase: AtomicU8,
    /// When the hold began and ended (`micros` since `epoch`; `u64::MAX` until then), the same instants as the
    /// report's hold duration: the pings sent and answered between the two are the hold's (not those of the
    /// ramp, a Centrifugo run's subscribe phase, the drain, the final echo or the closes).
    hold_start_us: AtomicU64,
    hold_end_us: AtomicU64,
    target: Target,
    source_ips: Vec<IpAddr>,
    headers: Arc<[String]>,
    tls: Option<tether::ClientTls>,
    reconnect: bool,
    message_interval: Option<Duration>,
    closed_loop: bool,
    final_window: usize,
    message_size: usize,
    /// `--payload json`: the documents sent in turn (empty for zeros).
    json_docs: Arc<[Vec<u8>]>,
    /// First attempts that finished (opened or failed).
    first_resolved: AtomicU64,
    /// Logical connections that opened at least once.
    opened: AtomicU64,
    /// The first connect error, worded for the user.
    first_error: OnceLock<String>,
    centrifugo: Option<Arc<CentrifugoConfig>>,
    /// Centrifugo subscriptions in place, over all shards.
    subscribed: Arc<AtomicU64>,
    /// Centrifugo publication sequence numbers (API publisher and client publishes).
    publication_seq: Arc<AtomicU64>,
    /// Shard threads (as the engine plans them) and logical connections.
    shards: usize,
    connections: u64,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// `flags` carries TAG_RETRY / TAG_WAS_OPEN and the attempt count.
    fn request(&self, index: u64, flags: u64, now: Instant) -> ConnectRequest {
        let bind = if self.source_ips.is_empty() {
            None
        } else {
            Some(SocketAddr::new(self.source_ips[index as usize % self.source_ips.len()], 0))
        };
        let tag = (index & TAG_INDEX_MASK) | flags | ((self.micros(now) & TAG_TIME_MASK) << TAG_TIME_SHIFT);
        ConnectRequest {
            addr: self.target.addr,
            bind,
            host: self.target.host.clone(),
            path: self.target.path.clone(),
            tag,
            not_before: None,
            headers: self.headers.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// The user-facing wording of a connect error (the line after `error: ` for a bad target).
pub fn describe_connect_error(url: &str, error: &ConnectError) -> String {
    match error {
        ConnectError::Io(text) => {
            let text = text.strip_prefix("connect: ").unwrap_or(text);
            let text = match text.find(" (os error") {
                Some(i) => &text[..i],
                None => text,
            };
            format!("cannot connect to {url}: {text}")
        }
        ConnectError::Rejected { .. } | ConnectError::Invalid(_) => error.to_string(),
        other => format!("cannot connect to {url}: {other}"),
    }
}

// ----- per-shard state -----

/// A shard's counters and histograms. Merged over shards for the report.
#[derive(Clone)]
pub struct ShardStats {
    pub established: u64,
    pub failed: u64,
    pub reconnects: u64,
    pub retry_failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub drops_by_code: BTreeMap<u16, u64>,
    pub drops_ramp: u64,
    pub drops_hold: u64,
    pub pong_timeouts: u64,
    pub pings_answered: u64,
    pub pongs_late: u64,
    pub server_pings: u64,
    pub messages_sent: u64,
    pub messages_echoed: u64,
    pub final_sent: u64,
    pub final_echoed: u64,
    /// Final echoes still waiting for room in the shard's window.
    pub final_queued: u64,
    pub closed_clean: u64,
    pub closed_unclean: u64,
    pub handshake_us: Histogram<u64>,
    pub ping_rtt_us: Histogram<u64>,
    /// The RTTs of pings sent and answered in the hold (after the ramp, before the end): the steady state,
    /// without the pings the ramp's queues held up.
    pub ping_rtt_hold_us: Histogram<u64>,
    pub echo_us: Histogram<u64>,
    /// `--final-echo` round trips.
    pub final_echo_us: Histogram<u64>,
    /// The most final echoes a shard had out at once (the sum over shards when merged): how far the
    /// window opened while there were echoes left to send.
    pub final_window_peak: u64,
    pub server_ping_interval_ms: Histogram<u64>,
    pub cent: CentStats,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            established: 0,
            failed: 0,
            reconnects: 0,
            retry_failed: 0,
            errors: BTreeMap::new(),
            drops_by_code: BTreeMap::new(),
            drops_ramp: 0,
            drops_hold: 0,
            pong_timeouts: 0,
            pings_answered: 0,
            pongs_late: 0,
            server_pings: 0,
            messages_sent: 0,
            messages_echoed: 0,
            final_sent: 0,
            final_queued: 0,
            final_echoed: 0,
            closed_clean: 0,
            closed_unclean: 0,
            handshake_us: new_histogram(),
            ping_rtt_us: new_histogram(),
            ping_rtt_hold_us: new_histogram(),
            echo_us: new_histogram(),
            final_echo_us: new_histogram(),
            final_window_peak: 0,
            server_ping_interval_ms: new_histogram(),
            cent: CentStats::default(),
        }
    }
}

impl ShardStats {
    pub fn drops(&self) -> u64 {
        self.drops_ramp + self.drops_hold
    }

    pub fn merge(&mut self, o: &ShardStats) {
        self.established += o.established;
        self.failed += o.failed;
        self.reconnects += o.reconnects;
        self.retry_failed += o.retry_failed;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.drops_by_code {
            *self.drops_by_code.entry(*k).or_default() += v;
        }
        self.drops_ramp += o.drops_ramp;
        self.drops_hold += o.drops_hold;
        self.pong_timeouts += o.pong_timeouts;
        self.pings_answered += o.pings_answered;
        self.pongs_late += o.pongs_late;
        self.server_pings += o.server_pings;
        self.messages_sent += o.messages_sent;
        self.messages_echoed += o.messages_echoed;
        self.final_sent += o.final_sent;
        self.final_echoed += o.final_echoed;
        self.final_queued += o.final_queued;
        self.closed_clean += o.closed_clean;
        self.closed_unclean += o.closed_unclean;
        // Same bounds everywhere: adding cannot fail.
        let _ = self.handshake_us.add(&o.handshake_us);
        let _ = self.ping_rtt_us.add(&o.ping_rtt_us);
        let _ = self.ping_rtt_hold_us.add(&o.ping_rtt_hold_us);
        let _ = self.echo_us.add(&o.echo_us);
        let _ = self.final_echo_us.add(&o.final_echo_us);
        self.final_window_peak += o.final_window_peak;
        let _ = self.server_ping_interval_ms.add(&o.server_ping_interval_ms);
        self.cent.merge(&o.cent);
    }
}

/// Messages from the driver to a shard's handler (its typed notices).
pub enum Control {
    /// Answer with a copy of the stats and the ping RTTs since the last snapshot.
    Snapshot(mpsc::Sender<(usize, Box<ShardStats>, Histogram<u64>)>),
    /// Close every connection with 1000 and stop reconnecting.
    CloseAll,
    /// Stop the echo traffic and send one `FINAL_MAGIC` message on every open connection.
    FinalEcho,
    /// Closed loop: start one message on every open connection (the ramp is over).
    StartClosedLoop,
    /// Centrifugo: client publishes and `--reconnect-every` cycles start.
    StartPublishing,
    /// Centrifugo: they stop.
    StopPublishing,
}

/// A connection's own state, kept by the engine in its slot.
#[derive(Default)]
pub struct Conn {
    /// The logical connection (stable across reconnects).
    pub(crate) index: u32,
    /// Where this connection sits in the handler's `open` list.
    pos: u32,
    last_server_ping: Option<Instant>,
    /// We started its close: its end is not a drop.
    pub(crate) closing: bool,
    /// When its current echo message was due (the cadence is kept from due times, not firing times).
    message_due: Option<Instant>,
    /// Its final echo is out and not back yet (it holds a place in the shard's window).
    final_pending: bool,
    /// `--protocol centrifugo`: the protocol state.
    pub(crate) cent: CentConn,
}

/// The load generator's handler: one per shard.
pub struct LoadHandler {
    shard: usize,
    shared: Arc<Shared>,
    /// This shard's open connections, for the driver's final echo and close-all. Each connection's state
    /// (including its position here) lives in its slot, so removal is O(1) and there is no map.
    open: Vec<ConnId>,
    stats: ShardStats,
    /// Ping RTTs since the last snapshot (the progress line's p99 and the plot).
    recent_ping_us: Histogram<u64>,
    /// The final echo went out: no more echo traffic, also on connections that open later.
    traffic_done: bool,
    /// The final echo's connections still to send on (popped from the end), the echoes out, and how many
    /// may be out (it follows their latency).
    final_queue: Vec<ConnId>,
    final_inflight: usize,
    final_window: EchoWindow,
    closing: bool,
    rng: u64,
    /// `--payload json`: the pool document to send next, and the send buffer.
    next_doc: usize,
    json_buf: Vec<u8>,
    /// Echoes that came back different from what was sent (`--payload json` checks whole documents).
    bad_echoes: u64,
    /// `--protocol centrifugo`.
    cent: Option<CentShard>,
}

const MAX_ERROR_KINDS: usize = 32;

impl LoadHandler {
    fn new(shard: usize, shared: Arc<Shared>) -> LoadHandler {
        let seed = shared.epoch.elapsed().as_nanos() as u64 ^ (shard as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let final_window = match shared.final_window {
            0 => EchoWindow::default(),
            n => EchoWindow::fixed(n),
        };
        let cent = shared.centrifugo.as_ref().map(|cfg| {
            CentShard::new(
                cfg.clone(),
                shared.connections,
                shared.shards,
                shard,
                shared.epoch,
                shared.subscribed.clone(),
                shared.publication_seq.clone(),
            )
        });
        LoadHandler {
            shard,
            cent,
            shared,
            open: Vec::new(),
            stats: ShardStats::default(),
            recent_ping_us: new_histogram(),
            traffic_done: false,
            final_queue: Vec::new(),
            final_inflight: 0,
            final_window,
            closing: false,
            rng: seed | 1,
            next_doc: shard,
            json_buf: Vec::new(),
            bad_echoes: 0,
        }
    }

    /// Uniform in [0, 1).
    fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Reconnect `index` after an exponential backoff (1 s, 2 s, 4s ... 30 s, ±20 % jitter): a connect the
    /// engine holds in its wheel until then. `attempt` counts the failures in a row before this one.
    /// `force`: also without `--reconnect` (a Centrifugo close code that advises a reconnect).
    fn schedule_retry(&mut self, ctx: &mut Ctx<'_, Self>, index: u32, was_open: u64, attempt: u64, force: bool) {
        if !(self.shared.reconnect || force) || self.closing {
            return;
        }
        let base = Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30));
        let delay = base.mul_f64(0.8 + 0.4 * self.random()).min(Duration::from_secs(30));
        let at = ctx.now() + delay;
        let next = (attempt + 1).min(TAG_ATTEMPT_MASK) << TAG_ATTEMPT_SHIFT;
        let mut request = self.shared.request(index as u64, was_open | TAG_RETRY | next, at);
        request.not_before = Some(at);
        ctx.connect(request);
    }

    fn forget_open(&mut self, ctx: &mut Ctx<'_, Self>, pos: u32) {
        let pos = pos as usize;
        if pos >= self.open.len() {
            return;
        }
        self.open.swap_remove(pos);
        if let Some(&moved) = self.open.get(pos) {
            if let Some(c) = ctx.state(moved) {
                c.pos = pos as u32;
            }
        }
    }

    /// Send final echoes while the window has room. All at once, a million of them (on two cores, with the
    /// server) took long enough that the pongs behind them missed their deadlines: half the connections
    /// were dropped with 1011 in the final echo. The window follows the echoes' latency (`window.rs`).
    fn pump_final(&mut self, ctx: &mut Ctx<'_, Self>) {
        while self.final_inflight < self.final_window.size() && !self.closing {
            let Some(conn) = self.final_queue.pop() else { break };
            if ctx.state(conn).is_none_or(|c| c.closing) || !self.send_message(ctx, conn, FINAL_MAGIC) {
                continue;
            }
            if let Some(c) = ctx.state(conn) {
                c.final_pending = true;
            }
            self.final_inflight += 1;
            self.stats.final_sent += 1;
        }
        self.stats.final_window_peak = self.stats.final_window_peak.max(self.final_inflight as u64);
        self.stats.final_queued = self.final_queue.len() as u64;
    }

    /// `conn`'s final echo came back or it closed: its place in the window is free.
    fn final_done(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        if let Some(c) = ctx.state(conn).filter(|c| c.final_pending) {
            c.final_pending = false;
            self.final_inflight -= 1;
            self.pump_final(ctx);
        }
    }

    /// Closed loop: the next message on `conn`, unless the traffic or the connection is ending.
    fn next_closed_loop(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        if self.traffic_done || self.closing || ctx.state(conn).is_none_or(|c| c.closing) {
            return;
        }
        if self.send_message(ctx, conn, PAYLOAD_MAGIC) {
            self.stats.messages_sent += 1;
        }
    }

    /// The next echo message on `conn` is due at `at`: the engine's timer for the connection fires then.
    fn arm_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, at: Instant) {
        if let Some(c) = ctx.state(conn) {
            c.message_due = Some(at);
        }
        ctx.set_timer(conn, at);
    }

    fn phase_drop(&mut self) {
        match self.shared.phase.load(Relaxed) {
            PHASE_RAMP => self.stats.drops_ramp += 1,
            _ => self.stats.drops_hold += 1,
        }
    }

    fn send_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, magic: u64) -> bool {
        if !self.shared.json_docs.is_empty() {
            let docs = &self.shared.json_docs;
            let doc = &docs[self.next_doc % docs.len()];
            self.next_doc = self.next_doc.wrapping_add(1);
            self.json_buf.clear();
            self.json_buf.extend_from_slice(doc);
            json_stamp(&mut self.json_buf, self.shared.micros(Instant::now()), magic);
            // ASCII throughout (the pool's words, digits, hex and the magic's letters).
            let text = std::str::from_utf8(&self.json_buf).expect("JSON payloads are ASCII");
            return ctx.send(conn, Message::Text(text)).is_ok();
        }
        let size = self.shared.message_size.max(PAYLOAD_HEADER);
        let mut payload = vec![0u8; size];
        payload[..8].copy_from_slice(&self.shared.micros(Instant::now()).to_le_bytes());
        payload[8..16].copy_from_slice(&magic.to_le_bytes());
        ctx.send(conn, Message::Binary(&payload)).is_ok()
    }
}

impl Handler for LoadHandler {
    type Conn = Conn;
    type Notice = Control;

    fn on_connected(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, tag: u64) {
        let now = ctx.now();
        let issued = (tag >> TAG_TIME_SHIFT) & TAG_TIME_MASK;
        let latency = self.shared.micros(now).wrapping_sub(issued) & TAG_TIME_MASK;
        self.stats.handshake_us.saturating_record(latency.max(1));
        let index = (tag & TAG_INDEX_MASK) as u32;
        if tag & TAG_WAS_OPEN == 0 {
            self.stats.established += 1;
            self.shared.opened.fetch_add(1, Relaxed);
        } else {
            self.stats.reconnects += 1;
        }
        if tag & TAG_RETRY == 0 {
            self.shared.first_resolved.fetch_add(1, Relaxed);
        }
        let closing = self.closing;
        let pos = self.open.len() as u32;
        if let Some(c) = ctx.state(conn) {
            *c = Conn { index, pos, closing, ..Conn::default() };
        }
        self.open.push(conn);
        if closing {
            ctx.close(conn, 1000, "load test done");
        } else if let Some(cent) = &mut self.cent {
            cent.on_open(ctx, conn);
        } else if self.shared.closed_loop && self.shared.phase.load(Relaxed) == PHASE_HOLD {
            // A connection that opens during the hold (a reconnect) joins the closed loop at once.
            self.next_closed_loop(ctx, conn);
        } else if let Some(interval) = self.shared.message_interval.filter(|_| !self.traffic_done) {
            // Spread the first message over one interval so connections do not send in lockstep.
            let first = now + interval.mul_f64(self.random());
            self.arm_message(ctx, conn, first);
        }
    }

    fn on_connect_failed(&mut self, ctx: &mut Ctx<'_, Self>, tag: u64, error: &ConnectError) {
        let _ = self.shared.first_error.set(describe_connect_error(&self.shared.target.url, error));
        if tag & TAG_RETRY == 0 {
            self.stats.failed += 1;
            self.shared.first_resolved.fetch_add(1, Relaxed);
        } else {
            self.stats.retry_failed += 1;
        }
        let text = error.to_string();
        if self.stats.errors.len() < MAX_ERROR_KINDS || self.stats.errors.contains_key(&text) {
            *self.stats.errors.entry(text).or_default() += 1;
        }
        let index = (tag & TAG_INDEX_MASK) as u32;
        let attempt = (tag >> TAG_ATTEMPT_SHIFT) & TAG_ATTEMPT_MASK;
        self.schedule_retry(ctx, index, tag & TAG_WAS_OPEN, attempt, false);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        if let Some(cent) = &mut self.cent {
            match message {
                Message::Text(text) => cent.on_message(ctx, conn, text, &mut self.stats.cent),
                // The JSON protocol is text only.
                Message::Binary(_) => self.stats.cent.malformed += 1,
            }
            return;
        }
        let bytes = message.as_bytes();
        let (sent, magic) = if self.shared.json_docs.is_empty() {
            if bytes.len() < PAYLOAD_HEADER {
                return;
            }
            let sent = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            (sent, u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
        } else {
            match (&message, json_check(&self.shared.json_docs, bytes)) {
                (Message::Text(_), Some(header)) => header,
                _ => {
                    self.bad_echoes += 1;
                    if self.bad_echoes == 1 {
                        tracing::warn!(
                            shard = self.shard,
                            len = bytes.len(),
                            "an echo differs from the JSON document sent"
                        );
                    }
                    return;
                }
            }
        };
        if magic == FINAL_MAGIC {
            let now = self.shared.micros(ctx.now());
            self.stats.final_echo_us.saturating_record(now.saturating_sub(sent).max(1));
            self.stats.final_echoed += 1;
            self.final_window.on_echo(sent, now);
            self.final_done(ctx, conn);
        } else if magic == PAYLOAD_MAGIC {
            let latency = self.shared.micros(ctx.now()).saturating_sub(sent);
            self.stats.echo_us.saturating_record(latency.max(1));
            self.stats.messages_echoed += 1;
            if self.shared.closed_loop {
                self.next_closed_loop(ctx, conn);
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        if let Some(cent) = &mut self.cent {
            cent.on_timer(ctx, conn, &mut self.stats.cent);
            return;
        }
        let Some(interval) = self.shared.message_interval else { return };
        if self.traffic_done || ctx.state(conn).is_none_or(|c| c.closing) {
            return;
        }
        let now = ctx.now();
        let due = ctx.state(conn).and_then(|c| c.message_due).unwrap_or(now);
        let (count, next) = messages_due(due, now, interval);
        for _ in 0..count {
            if self.send_message(ctx, conn, PAYLOAD_MAGIC) {
                self.stats.messages_sent += 1;
            }
        }
        self.arm_message(ctx, conn, next);
    }

    fn on_ping(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _payload: &[u8]) {
        self.stats.server_pings += 1;
        let now = ctx.now();
        if let Some(c) = ctx.state(conn) {
            if let Some(prev) = c.last_server_ping.replace(now) {
                let ms = now.saturating_duration_since(prev).as_millis() as u64;
                self.stats.server_ping_interval_ms.saturating_record(ms.max(1));
            }
        }
    }

    fn on_pong(&mut self, ctx: &mut Ctx<'_, Self>, _conn: ConnId, rtt: Option<Duration>) {
        match rtt {
            Some(rtt) => {
                let us = (rtt.as_micros() as u64).max(1);
                self.stats.ping_rtt_us.saturating_record(us);
                let now_us = self.shared.micros(ctx.now());
                if now_us.saturating_sub(us) >= self.shared.hold_start_us.load(Relaxed)
                    && now_us <= self.shared.hold_end_us.load(Relaxed)
                {
                    self.stats.ping_rtt_hold_us.saturating_record(us);
                }
                self.recent_ping_us.saturating_record(us);
                self.stats.pings_answered += 1;
            }
            None => self.stats.pongs_late += 1,
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, closed: &Closed) {
        self.final_done(ctx, conn);
        let Some(c) = ctx.state(conn) else { return };
        let (index, pos, closing, cycling) = (c.index, c.pos, c.closing, c.cent.cycling);
        self.forget_open(ctx, pos);
        let info = &closed.info;
        let code = match (info.initiator, info.code) {
            (Initiator::Abnormal, _) => 1006,
            (_, 0) => 1005,
            (_, code) => code,
        };
        if let Some(cent) = &mut self.cent {
            cent.on_close(index, code, &mut self.stats.cent);
        }
        if closing {
            if info.code == 1000 && info.initiator != Initiator::Abnormal {
                self.stats.closed_clean += 1;
            } else {
                self.stats.closed_unclean += 1;
            }
            return;
        }
        if cycling && !self.closing {
            // `--reconnect-every`: back at once, to recover.
            self.stats.cent.cycles += 1;
            ctx.connect(self.shared.request(index as u64, TAG_WAS_OPEN | TAG_RETRY, ctx.now()));
            return;
        }
        // A close we did not start: a drop.
        *self.stats.drops_by_code.entry(code).or_default() += 1;
        if info.cause == CloseCause::PongTimeout {
            self.stats.pong_timeouts += 1;
        }
        self.phase_drop();
        let advised = self.cent.is_some() && centrifugo::reconnect_advised(code);
        self.schedule_retry(ctx, index, TAG_WAS_OPEN, 0, advised);
    }

    fn on_notice(&mut self, ctx: &mut Ctx<'_, Self>, control: Control) {
        match control {
            Control::Snapshot(reply) => {
                let mut recent = self.recent_ping_us.clone();
                std::mem::swap(&mut recent, &mut self.recent_ping_us);
                self.recent_ping_us.reset();
                let _ = reply.send((self.shard, Box::new(self.stats.clone()), recent));
            }
            Control::FinalEcho => {
                // The echo traffic ends here, so that every message sent before the final one is echoed
                // before it (each connection's messages stay in order) and the counts can be compared.
                self.traffic_done = true;
                for &conn in &self.open {
                    ctx.cancel_timer(conn);
                }
                self.final_queue = self.open.iter().rev().copied().collect();
                self.pump_final(ctx);
            }
            Control::StartPublishing => {
                if let Some(cent) = &mut self.cent {
                    cent.start_publishing(ctx, &self.open);
                }
            }
            Control::StopPublishing => {
                if let Some(cent) = &mut self.cent {
                    cent.stop_publishing(ctx, &self.open);
                }
            }
            Control::StartClosedLoop => {
                for i in 0..self.open.len() {
                    let conn = self.open[i];
                    self.next_closed_loop(ctx, conn);
                }
            }
            Control::CloseAll => {
                self.closing = true;
                for i in 0..self.open.len() {
                    let conn = self.open[i];
                    if let Some(c) = ctx.state(conn) {
                        c.closing = true;
                    }
                    ctx.cancel_timer(conn);
                    ctx.close(conn, 1000, "load test done");
                }
            }
        }
    }
}

// ----- the driver -----

/// Reads the shards and the engine's counters, integrates connection time, prints the progress line and
/// records the per-second samples.
struct Monitor {
    handle: EngineHandle,
    notifier: Notifier<Control>,
    epoch: Instant,
    target_connections: u64,
    last_poll: Instant,
    last_second: Instant,
    connection_seconds: f64,
    peak_open: u64,
    latest: Vec<Option<Box<ShardStats>>>,
    samples: Vec<Sample>,
    prev_opens: u64,
    prev_answered: u64,
    prev_deliveries: u64,
    /// The handshakes recorded up to the last progress line: the line's handshake p99 is of those since.
    prev_handshakes: Histogram<u64>,
    progress: Progress,
    phase: &'static str,
}

enum Progress {
    Bar(indicatif::ProgressBar),
    Plain,
    Off,
}

const POLL_EVERY: Duration = Duration::from_millis(100);
/// The drain after publishing ends gives up when neither deliveries nor subscriptions moved for this long.
const DRAIN_STALL: Duration = Duration::from_secs(2);
const SECOND: Duration = Duration::from_secs(1);

impl Monitor {
    fn new(
        handle: EngineHandle,
        notifier: Notifier<Control>,
        epoch: Instant,
        target: u64,
        mode: ProgressMode,
    ) -> Monitor {
        use std::io::IsTerminal;
        let progress = match mode {
            ProgressMode::Off => Progress::Off,
            ProgressMode::Plain => Progress::Plain,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(target),
                    indicatif::ProgressDrawTarget::stderr_with_hz(2),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:20.cyan/blue} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                Progress::Bar(bar)
            }
            ProgressMode::Auto => Progress::Plain,
        };
        let shards = handle.shards();
        Monitor {
            handle,
            notifier,
            epoch,
            target_connections: target,
            last_poll: epoch,
            last_second: epoch,
            connection_seconds: 0.0,
            peak_open: 0,
            latest: (0..shards).map(|_| None).collect(),
            samples: vec![Sample::default()],
            prev_opens: 0,
            prev_answered: 0,
            prev_deliveries: 0,
            prev_handshakes: new_histogram(),
            progress,
            phase: "ramp",
        }
    }

    /// Called often by the driver's loops; does its work at most every 100 ms / once a second.
    fn poll(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_poll) >= POLL_EVERY {
            let open = self.open_websockets();
            self.connection_seconds += open as f64 * now.duration_since(self.last_poll).as_secs_f64();
            self.peak_open = self.peak_open.max(open);
            self.last_poll = now;
        }
        if now.duration_since(self.last_second) >= SECOND {
            self.last_second += SECOND;
            if now.duration_since(self.last_second) > SECOND {
                self.last_second = now;
            }
            self.second();
        }
    }

    fn open_websockets(&self) -> u64 {
        self.handle.shard_stats().iter().map(|s| s.websocket_open).sum()
    }

    /// Ask every shard for its numbers; returns the merged stats and the RTTs since the last request.
    fn snapshot(&mut self, wait: Duration) -> (ShardStats, Histogram<u64>) {
        let (tx, rx) = mpsc::channel();
        let shards = self.handle.shards();
        for shard in 0..shards {
            notify(&self.notifier, shard, Control::Snapshot(tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + wait;
        let mut recent = new_histogram();
        let mut answered = 0;
        while answered < shards {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((shard, stats, rtts)) => {
                    self.latest[shard] = Some(stats);
                    let _ = recent.add(&rtts);
                    answered += 1;
                }
                Err(_) => break,
            }
        }
        let mut total = ShardStats::default();
        for s in self.latest.iter().flatten() {
            total.merge(s);
        }
        (total, recent)
    }

    fn second(&mut self) {
        let (total, recent) = self.snapshot(Duration::from_millis(300));
        let open = self.open_websockets();
        self.peak_open = self.peak_open.max(open);
        let t_s = self.epoch.elapsed().as_secs_f64();
        let q = |q: f64| (!recent.is_empty()).then(|| recent.value_at_quantile(q) as f64 / 1000.0);
        let sample = Sample { t_s, open, ping_p50_ms: q(0.5), ping_p99_ms: q(0.99), drops: total.drops() };
        let opens = total.established + total.reconnects;
        // The handshakes completed since the last line: the total's histogram less the last line's (the
        // shards' histograms only grow; a shard that did not answer in time keeps its last copy). The total's
        // histogram is kept for the next line (moved: nothing below reads it).
        let mut handshakes = total.handshake_us.clone();
        let hs_p99 = match handshakes.subtract(&self.prev_handshakes) {
            Ok(()) if !handshakes.is_empty() => Some(handshakes.value_at_quantile(0.99) as f64 / 1000.0),
            _ => None,
        };
        self.prev_handshakes = total.handshake_us;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}ms"));
        let mut line = format!(
            "[{:>5.0}s] {:<7} open {}/{}  conn/s {}  handshake p99 {}  pings/s {}  ping p99 {}  drops {}",
            t_s,
            self.phase,
            open,
            self.target_connections,
            opens.saturating_sub(self.prev_opens),
            ms(hs_p99),
            total.pings_answered.saturating_sub(self.prev_answered),
            ms(sample.ping_p99_ms),
            sample.drops,
        );
        if total.cent.connects > 0 {
            let c = &total.cent;
            let _ = write!(
                line,
                "  deliveries/s {}  gaps {}  dups {}",
                c.deliveries.saturating_sub(self.prev_deliveries),
                c.tally.gaps,
                c.tally.duplicates
            );
            self.prev_deliveries = c.deliveries;
        }
        self.prev_opens = opens;
        self.prev_answered = total.pings_answered;
        match &self.progress {
            Progress::Bar(bar) => {
                bar.set_position(open.min(self.target_connections));
                bar.set_message(line);
            }
            Progress::Plain => eprintln!("{line}"),
            Progress::Off => {}
        }
        self.samples.push(sample);
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = &self.progress {
            bar.finish_and_clear();
        }
    }
}

/// A load run's result: the numbers, or the one-line reason the target is unusable.
pub fn run(cfg: &LoadConfig, stop: &AtomicBool) -> anyhow::Result<Outcome> {
    anyhow::ensure!(cfg.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(cfg.connections as u64 <= TAG_INDEX_MASK, "--connections is too large");
    anyhow::ensure!(cfg.rate > 0.0, "--rate must be positive");
    if let Some(c) = &cfg.centrifugo {
        anyhow::ensure!(c.channels > 0, "--channels must be at least 1");
        anyhow::ensure!(
            (1..=c.channels).contains(&c.subscriptions_per_connection),
            "--subscriptions-per-connection must be between 1 and --channels"
        );
        anyhow::ensure!(
            (1..=c.channels).contains(&c.publish_batch),
            "--publish-batch must be between 1 and --channels"
        );
    }
    let n = cfg.connections;
    let config = Config {
        listen: None,
        shards: cfg.shards,
        max_connections: n + n / 8 + 256,
        ping_interval: cfg.ping_interval.filter(|d| !d.is_zero()),
        ping_jitter: cfg.ping_jitter,
        ping_mode: cfg.ping_mode,
        pong_timeout: cfg.pong_timeout,
        handshake_timeout: cfg.handshake_timeout,
        tcp_keepalive: cfg.tcp_keepalive,
        tcp_user_timeout: cfg.tcp_user_timeout,
        tick: MESSAGE_TICK,
        deflate: cfg.deflate,
        ..Config::default()
    };
    let planned_shards =
        tether::plan_capacity(&config).map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?.shards;
    let cent_cfg = cfg.centrifugo.clone().map(Arc::new);
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        epoch,
        phase: AtomicU8::new(PHASE_RAMP),
        hold_start_us: AtomicU64::new(u64::MAX),
        hold_end_us: AtomicU64::new(u64::MAX),
        target: cfg.target.clone(),
        source_ips: cfg.source_ips.clone(),
        headers: cfg.headers.clone().into(),
        tls: cfg.tls.clone(),
        reconnect: cfg.reconnect || cent_cfg.as_ref().is_some_and(|c| c.reconnect_every.is_some()),
        message_interval: (cfg.message_rate > 0.0 && !cfg.closed_loop)
            .then(|| Duration::from_secs_f64(1.0 / cfg.message_rate)),
        closed_loop: cfg.closed_loop,
        final_window: cfg.final_window,
        message_size: cfg.message_size,
        json_docs: match cfg.payload {
            Payload::Zeros => Arc::from(Vec::new()),
            Payload::Json => json_documents(cfg.message_size).into(),
        },
        first_resolved: AtomicU64::new(0),
        opened: AtomicU64::new(0),
        first_error: OnceLock::new(),
        centrifugo: cent_cfg.clone(),
        subscribed: Arc::new(AtomicU64::new(0)),
        publication_seq: Arc::new(AtomicU64::new(0)),
        shards: planned_shards,
        connections: n as u64,
    });
    let engine = {
        let shared = shared.clone();
        Engine::start(config, move |i| LoadHandler::new(i, shared.clone()))
            .map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?
    };
    let handle = engine.handle();
    let notifier = engine.notifier();
    let shards = handle.shards();
    anyhow::ensure!(shards == planned_shards, "the engine started {shards} shards, {planned_shards} planned");
    let mut issued = 0usize;
    // A full inbox refuses the connect: the rest of this round waits for the next one.
    let issue = |count: usize, issued: &mut usize| {
        for _ in 0..count {
            let index = *issued;
            if handle.connect(index % shards, shared.request(index as u64, 0, Instant::now())).is_err() {
                break;
            }
            *issued += 1;
        }
    };

    // Probe: the first few connections decide whether the target is usable at all.
    let probe = n.min(10);
    issue(probe, &mut issued);
    let probe_deadline = Instant::now() + cfg.handshake_timeout + Duration::from_secs(2);
    while shared.first_resolved.load(Relaxed) < probe as u64 && Instant::now() < probe_deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if shared.opened.load(Relaxed) == 0 {
        let why = shared
            .first_error
            .get()
            .cloned()
            .unwrap_or_else(|| format!("cannot connect to {}: no answer", cfg.target.url));
        handle.shutdown(Duration::from_millis(500));
        wait_bounded(engine, Duration::from_secs(5));
        anyhow::bail!(why);
    }

    let mut monitor = Monitor::new(handle.clone(), notifier.clone(), epoch, n as u64, cfg.progress);
    // Ramp: pace the rest; the clock started with the probe.
    let mut interrupted = false;
    while issued < n {
        if stop.load(Relaxed) {
            interrupted = true;
            break;
        }
        let due = ((epoch.elapsed().as_secs_f64() * cfg.rate) as usize).min(n);
        let connecting = issued.saturating_sub(shared.first_resolved.load(Relaxed) as usize);
        let room = if cfg.max_connecting == 0 { usize::MAX } else { cfg.max_connecting.saturating_sub(connecting) };
        if due > issued && room > 0 {
            issue((due - issued).min(room), &mut issued);
        }
        monitor.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    let last_issue = Instant::now();
    let resolve_deadline = last_issue + cfg.handshake_timeout + Duration::from_secs(2);
    while !interrupted && shared.first_resolved.load(Relaxed) < issued as u64 && Instant::now() < resolve_deadline {
        if stop.load(Relaxed) {
            interrupted = true;
        }
        monitor.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    let ramp = epoch.elapsed();

    // Hold.
    shared.phase.store(PHASE_HOLD, Relaxed);
    if cfg.closed_loop && !interrupted {
        for shard in 0..shards {
            notify(&notifier, shard, Control::StartClosedLoop);
        }
    }
    // Centrifugo: publishing starts once every subscription is in place.
    let mut setup = Duration::ZERO;
    let mut publisher = None;
    let want_subscribed = cent_cfg.as_ref().map_or(0, |c| n as u64 * c.subscriptions_per_connection as u64);
    if let Some(cc) = cent_cfg.as_ref().filter(|_| !interrupted) {
        monitor.phase = "subscribe";
        let setup_start = Instant::now();
        let deadline = setup_start + cfg.handshake_timeout;
        while shared.subscribed.load(Relaxed) < want_subscribed && Instant::now() < deadline {
            if stop.load(Relaxed) {
                interrupted = true;
                break;
            }
            monitor.poll();
            std::thread::sleep(Duration::from_millis(2));
        }
        setup = setup_start.elapsed();
        for shard in 0..shards {
            notify(&notifier, shard, Control::StartPublishing);
        }
        if cc.publish_via == centrifugo::PublishVia::Api && cc.publish_rate > 0.0 {
            publisher = Some(Publisher::start(cc.clone(), n as u64, epoch, shared.publication_seq.clone()));
        }
    }

    monitor.phase = "hold";
    let hold_start = Instant::now();
    shared.hold_start_us.store(shared.micros(hold_start), Relaxed);
    while !interrupted && hold_start.elapsed() < cfg.duration {
        if stop.load(Relaxed) {
            interrupted = true;
        }
        monitor.poll();
        std::thread::sleep(Duration::from_millis(5));
    }
    let hold = hold_start.elapsed();
    shared.hold_end_us.store(shared.micros(hold_start + hold), Relaxed);

    // Centrifugo: stop publishing and cycling, then wait for the last deliveries and reconnects.
    let mut api_stats = ApiStats::default();
    let mut drain = Duration::ZERO;
    let mut subscribed_at_end = 0;
    if cent_cfg.is_some() {
        for shard in 0..shards {
            notify(&notifier, shard, Control::StopPublishing);
        }
        if let Some(p) = publisher.take() {
            api_stats = p.stop();
        }
        monitor.phase = "drain";
        let drain_start = Instant::now();
        let mut wait = ProgressWait::new(DRAIN_STALL, cfg.close_wait);
        while !interrupted {
            if stop.load(Relaxed) {
                interrupted = true;
            }
            let (s, _) = monitor.snapshot(Duration::from_secs(2));
            let c = &s.cent;
            let subscribed = shared.subscribed.load(Relaxed);
            let delivered = c.deliveries - c.tally.duplicates;
            let answered = c.published + c.publish_failed >= c.publish_commands;
            if answered
                && subscribed >= want_subscribed
                && delivered >= c.expected_deliveries + api_stats.expected_deliveries
            {
                break;
            }
            if wait.expired((c.deliveries, subscribed)) {
                break;
            }
            monitor.poll();
            std::thread::sleep(Duration::from_millis(20));
        }
        drain = drain_start.elapsed();
        subscribed_at_end = shared.subscribed.load(Relaxed);
    }

    let end_start = Instant::now();
    if cfg.final_echo && !interrupted {
        monitor.phase = "final echo";
        for shard in 0..shards {
            notify(&notifier, shard, Control::FinalEcho);
        }
        // Wait for every echo while they keep coming; the snapshot answers come after the FinalEcho notices.
        let mut wait = ProgressWait::new(cfg.close_wait, cfg.close_wait * PROGRESS_WAIT_CAP);
        loop {
            let (s, _) = monitor.snapshot(Duration::from_secs(2));
            if (s.final_queued == 0 && s.final_echoed >= s.final_sent) || wait.expired(s.final_echoed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let final_echo = end_start.elapsed();

    // Close everything with 1000 and wait (bounded) for the handshakes.
    shared.phase.store(PHASE_CLOSING, Relaxed);
    monitor.phase = "closing";
    monitor.poll();
    let connection_seconds = monitor.connection_seconds;
    for shard in 0..shards {
        notify(&notifier, shard, Control::CloseAll);
    }
    let mut wait = ProgressWait::new(cfg.close_wait, cfg.close_wait * PROGRESS_WAIT_CAP);
    let mut left_open = handle.stats().open;
    while !wait.expired(left_open) {
        std::thread::sleep(Duration::from_millis(10));
        left_open = handle.shard_stats().iter().map(|s| s.open).sum();
        if left_open == 0 {
            break;
        }
        monitor.poll();
    }
    let end = end_start.elapsed();
    let (total, _) = monitor.snapshot(Duration::from_secs(2));
    monitor.finish();
    let engine_stats = handle.stats();
    if std::env::var_os("TETHER_LOAD_DEBUG").is_some() {
        eprintln!("client engine: {engine_stats:?}");
    }
    handle.shutdown(Duration::from_millis(500));
    wait_bounded(engine, Duration::from_secs(5));

    let mut report = build_report(
        cfg,
        shards,
        &total,
        &engine_stats,
        Timings { ramp, hold, final_echo, end, total: epoch.elapsed() },
        connection_seconds,
        monitor.peak_open,
        left_open,
        interrupted,
    );
    if let Some(cc) = &cent_cfg {
        let phases = cent_stats::Phases { setup, publishing: hold, drain, subscribed_at_end };
        report.centrifugo = Some(cent_stats::report(cc, &total.cent, &api_stats, &phases));
    }
    let delivery_latency = cent_cfg.is_some().then_some(total.cent.latency_us);
    Ok(Outcome { report, samples: std::mem::take(&mut monitor.samples), ping_rtt: total.ping_rtt_us, delivery_latency })
}

/// Sends a control notice, retrying for up to a second while the shard's queue is full.
fn notify(notifier: &Notifier<Control>, shard: usize, control: Control) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut control = Some(control);
    while let Some(c) = control.take() {
        match notifier.notify_or_return(shard, c) {
            Ok(()) => return,
            Err(back) if Instant::now() < deadline => {
                control = Some(back);
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => tracing::warn!(shard, "control notice dropped: the shard's queue stayed full"),
        }
    }
}

/// A connection's echo messages at a timer firing `now` for the message due at `due`: how many to send and
/// when the next is due. A fixed cadence from the due times. The wheel fires up to one tick late, so with
/// intervals shorter than the tick several messages are due at a firing: those of one tick are sent, or a
/// connection could not send more than 100 a second. Further behind (a busy loop), the cadence starts
/// afresh rather than with a burst.
fn messages_due(due: Instant, now: Instant, interval: Duration) -> (u32, Instant) {
    let late = now.saturating_duration_since(due).min(MESSAGE_TICK);
    let count = 1 + (late.as_nanos() / interval.as_nanos().max(1)) as u32;
    let next = due + interval * count;
    (count, if next > now { next } else { now + interval })
}

/// The end of a run waits for answers (the Centrifugo drain's deliveries, final echoes, close handshakes)
/// while they keep coming: it gives up when what it watches has not moved for `stall`, and after `cap` in
/// all. A fixed deadline would cut a large run's clean end short: at 700,000 connections on two cores the
/// close handshakes alone take longer than the 30 s a smaller run needs.
struct ProgressWait<T> {
    stall: Duration,
    cap: Duration,
    start: Instant,
    last: Option<T>,
    moved: Instant,
}

/// The final echo and the close handshakes wait `--close-wait` without progress, this many times it in all.
const PROGRESS_WAIT_CAP: u32 = 10;

impl<T: PartialEq> ProgressWait<T> {
    fn new(stall: Duration, cap: Duration) -> Self {
        let now = Instant::now();
        ProgressWait { stall, cap, start: now, last: None, moved: now }
    }

    /// Whether to stop waiting, given what is watched now.
    fn expired(&mut self, now_seen: T) -> bool {
        let now = Instant::now();
        if self.last.as_ref() != Some(&now_seen) {
            self.last = Some(now_seen);
            self.moved = now;
        }
        now - self.moved >= self.stall || now - self.start >= self.cap
    }
}

/// Waits for the engine's threads, at most `limit`: a wedged shard must not hang the report (its threads end
/// with the process).
pub fn wait_bounded<H: Handler>(engine: Engine<H>, limit: Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        engine.wait();
        let _ = tx.send(());
    });
    if rx.recv_timeout(limit).is_err() {
        tracing::warn!("engine threads did not exit within {limit:?} of shutdown");
    }
}

struct Timings {
    ramp: Duration,
    hold: Duration,
    /// The final echo.
    final_echo: Duration,
    /// The final echo and the close handshakes.
    end: Duration,
    total: Duration,
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    cfg: &LoadConfig,
    shards: usize,
    s: &ShardStats,
    engine: &tether::Stats,
    t: Timings,
    connection_seconds: f64,
    peak_open: u64,
    left_open: u64,
    interrupted: bool,
) -> Report {
    let drops = s.drops();
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let active_minutes = (t.ramp + t.hold).as_secs_f64() / 60.0;
    Report {
        target: cfg.target.url.clone(),
        duration_s: round2(t.hold.as_secs_f64()),
        ramp_s: round2(t.ramp.as_secs_f64()),
        end_s: round2(t.end.as_secs_f64()),
        final_echo_s: round2(t.final_echo.as_secs_f64()),
        total_s: round2(t.total.as_secs_f64()),
        shards,
        source_ips: cfg.source_ips.len(),
        connections: report::Connections {
            requested: cfg.connections as u64,
            established: s.established,
            failed: s.failed,
            peak_open,
            reconnects: s.reconnects,
            retry_failed: s.retry_failed,
            errors: s.errors.clone(),
        },
        connect_rate_per_s: if t.ramp.is_zero() { 0.0 } else { round2(s.established as f64 / t.ramp.as_secs_f64()) },
        connection_hours: (connection_seconds / 3600.0 * 1e4).round() / 1e4,
        handshake_us: Summary::of(&s.handshake_us),
        ping_rtt_us: Summary::of(&s.ping_rtt_us),
        ping_rtt_hold_us: Summary::of(&s.ping_rtt_hold_us),
        echo_us: Summary::of(&s.echo_us),
        final_echo_us: Summary::of(&s.final_echo_us),
        final_window_peak: s.final_window_peak,
        server_ping_interval_ms: Summary::of(&s.server_ping_interval_ms),
        pings: report::Pings {
            sent: engine.pings_sent,
            answered: s.pings_answered,
            late: s.pongs_late,
            server_pings: s.server_pings,
        },
        messages: report::Messages {
            sent: s.messages_sent,
            echoed: s.messages_echoed,
            final_sent: s.final_sent,
            final_echoed: s.final_echoed,
        },
        drops: report::Drops {
            total: drops,
            per_1k_conn_hours: if connection_seconds > 0.0 {
                round2(drops as f64 * 1000.0 / (connection_seconds / 3600.0))
            } else {
                0.0
            },
            per_minute: if active_minutes > 0.0 { round2(drops as f64 / active_minutes) } else { 0.0 },
            by_code: s.drops_by_code.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            by_phase: report::ByPhase { ramp: s.drops_ramp, hold: s.drops_hold },
            pong_timeouts: s.pong_timeouts,
        },
        closes: report::Closes { clean: s.closed_clean, unclean: s.closed_unclean, left_open },
        peak_rss_mib: report::peak_rss_mib(),
        interrupted,
        centrifugo: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_messages_keep_their_cadence_below_the_timer_tick() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // 500 a second (2 ms) fired 7 ms late: this one and the three due meanwhile, the next at +8 ms.
        assert_eq!(messages_due(t, t + ms(7), ms(2)), (4, t + ms(8)));
        // 1 a second, fired 7 ms late: one, the cadence kept.
        assert_eq!(messages_due(t, t + ms(7), ms(1000)), (1, t + ms(1000)));
        // Far behind (a stalled loop): one tick's worth, then afresh from now, no burst.
        assert_eq!(messages_due(t, t + ms(3000), ms(1000)), (1, t + ms(4000)));
        assert_eq!(messages_due(t, t + ms(500), ms(2)), (6, t + ms(502)));
        // Over a second of firings every 10 ms at 2 ms intervals: 500 messages.
        let (mut due, mut sent, mut now) = (t, 0, t);
        while now < t + ms(1000) {
            now += ms(10);
            while due <= now {
                let (n, next) = messages_due(due, now, ms(2));
                sent += n;
                due = next;
            }
        }
        assert!((495..=505).contains(&sent), "{sent} messages in a second at 500/s");
    }

    #[test]
    fn the_end_waits_while_answers_come_and_stops_when_they_stall_or_at_the_cap() {
        // Moving: past the stall time in all, still waiting.
        let mut w = ProgressWait::new(Duration::from_millis(1000), Duration::from_secs(10));
        let start = Instant::now();
        let (mut n, mut stalled) = (0, start);
        while start.elapsed() < Duration::from_millis(1500) {
            n += 1;
            stalled = Instant::now();
            assert!(!w.expired(n), "gave up while the count moved ({:?})", start.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stalled: gives up one stall time after the last move.
        while !w.expired(n) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stalled.elapsed() >= Duration::from_millis(1000));
        // Always moving: stops at the cap.
        let mut w = ProgressWait::new(Duration::from_millis(20), Duration::from_millis(200));
        let start = Instant::now();
        let mut n = 0;
        while !w.expired(n) {
            n += 1;
            assert!(start.elapsed() < Duration::from_secs(30), "no cap");
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn json_documents_are_json_of_the_size_asked_and_echo_checked() {
        for size in [0, JSON_MIN_SIZE, 100, 1024, 16 * 1024] {
            let pool = json_documents(size);
            let want = size.max(JSON_MIN_SIZE);
            assert!(pool.len() > 1 || want > 65_536, "size {size}: {} documents", pool.len());
            for (i, doc) in pool.iter().enumerate() {
                assert_eq!(doc.len(), want, "size {size}, document {i}");
                let mut sent = doc.clone();
                json_stamp(&mut sent, 0x0123_4567_89ab_cdef, PAYLOAD_MAGIC);
                // Valid UTF-8 and valid JSON, its header in the fields the check reads.
                let text = std::str::from_utf8(&sent).expect("UTF-8");
                let value: serde_json::Value = serde_json::from_str(text).expect("JSON");
                assert_eq!(value["ts"], "0123456789abcdef");
                assert_eq!(value["kind"], "tetherld");
                assert_eq!(value["doc"], format!("{i:04}"));
                assert_eq!(json_check(&pool, &sent), Some((0x0123_4567_89ab_cdef, PAYLOAD_MAGIC)));
                json_stamp(&mut sent, 42, FINAL_MAGIC);
                assert_eq!(json_check(&pool, &sent), Some((42, FINAL_MAGIC)));
                // Any other change to the body is a wrong echo.
                let mut bad = sent.clone();
                let last = bad.len() - 3;
                bad[last] ^= 1;
                assert_eq!(json_check(&pool, &bad), None);
                assert_eq!(json_check(&pool, &sent[..sent.len() - 1]), None);
            }
        }
        // A realistic document: events with varied keys and values, not one repeated byte.
        let pool = json_documents(1024);
        let value: serde_json::Value = serde_json::from_slice(&pool[0]).expect("JSON");
        let events = value["events"].as_array().expect("events");
        assert!(events.len() >= 5, "{value}");
        assert_ne!(events[0], events[1]);
        assert_ne!(pool[0][JSON_HEADER..], pool[1][JSON_HEADER..]);
        // The same pool every run (servers compared see the same bytes).
        assert_eq!(pool, json_documents(1024));
        // A binary zeros payload is not taken for a JSON echo.
        assert_eq!(json_check(&pool, &[0u8; 1024]), None);
    }
}
