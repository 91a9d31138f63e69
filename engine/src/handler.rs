//! The [`Handler`] trait (the application, called on the shard threads) and the values it sees and returns.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::ProfileId;
use crate::context::Ctx;
use crate::ids::ConnId;
use crate::proto::handshake::{HttpError, HttpRequest, UpgradeRequest};
use crate::proto::{CloseInfo, MessageKind};

/// The application. One instance per shard, called on that shard's thread; it must never block.
///
/// `Conn` is per-connection state the engine keeps in the connection's slot (reach it with
/// [`Ctx::state`]): created with `Default` when a connection takes the slot, dropped after `on_close`, so
/// the application needs no map of connections. `Notice` is the typed message other threads send to a
/// shard with [`Notifier::notify`](crate::Notifier::notify), handled in `on_notice`.
///
/// A panic in a callback is not survived: the shard thread logs it (`shard thread panicked`) and aborts the
/// process, for a supervisor to restart it. A shard that died alone would leave its connections hanging,
/// and unwinding past the ring is not safe (the kernel may still write into the shard's buffers). Return
/// errors, or close the one connection, instead of panicking.
///
/// ```no_run
/// use tether::{Config, ConnId, Ctx, Engine, Handler, Message};
///
/// #[derive(Default)]
/// struct Seen { messages: u64 }
///
/// struct Echo;
/// impl Handler for Echo {
///     type Conn = Seen;
///     type Notice = ();
///     fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
///         if let Some(seen) = ctx.state(conn) {
///             seen.messages += 1;
///         }
///         let _ = ctx.send(conn, message);
///     }
/// }
///
/// let engine = Engine::start(Config::default(), |_shard| Echo).unwrap();
/// engine.wait();
/// ```
pub trait Handler: Send + Sized + 'static {
    /// Per-connection application state, kept in the connection's slot.
    type Conn: Default + Send + 'static;
    /// What other threads send this handler through a [`Notifier`](crate::Notifier).
    type Notice: Send + 'static;

    /// An upgrade request arrived; accept it (optionally choosing a subprotocol, response headers and a
    /// profile) or refuse it with an HTTP error. `ctx.state(conn)` is already there to fill.
    fn on_upgrade(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _request: &UpgradeRequest) -> Upgrade {
        Upgrade::Accept(Accept::default())
    }
    /// A plain HTTP request (no `Upgrade: websocket`) arrived, with its body; its answer is sent and the
    /// connection closed.
    fn on_http(&mut self, _ctx: &mut Ctx<'_, Self>, _request: &HttpRequest) -> HttpResponse {
        HttpResponse::not_found()
    }
    /// The WebSocket is open (server: 101 sent; client: 101 received and checked).
    fn on_open(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId) {}
    /// A whole message arrived (fragments reassembled, text checked as UTF-8; invalid text closes with 1007
    /// before this is called). It borrows the receive buffer: copy what must outlive the call.
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>);
    /// The peer pinged (the pong is already on its way).
    fn on_ping(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _payload: &[u8]) {}
    /// A pong arrived; `rtt` is set when it answered our latest ping.
    fn on_pong(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _rtt: Option<Duration>) {}
    /// `conn`'s send queue has drained to half its bound or less, after the handler asked with
    /// [`Ctx::notify_writable`]: messages held back for want of room ([`Ctx::send_queue_room`] was `Some(0)`)
    /// can go now. Called once per request, after the shard's completions.
    fn on_writable(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId) {}
    /// The deadline set with [`Ctx::set_timer`] for this connection has come.
    fn on_timer(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId) {}
    /// The connection is gone and its slot about to be freed; `ctx.state(conn)` still holds its state, and
    /// `conn` will never be seen again.
    fn on_close(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _closed: &Closed) {}
    /// Text the application adds to the connection's close log line (field `app`), e.g. the user and what
    /// the close code means in its protocol. Called just before `on_close`, with the state still there.
    fn close_note(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _info: &CloseInfo) -> Option<String> {
        None
    }
    /// An outbound connection (client role) failed before it opened. `tag` is the one given to `connect`.
    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_, Self>, _tag: u64, _error: &ConnectError) {}
    /// A socket handed over with [`EngineHandle::adopt`](crate::EngineHandle::adopt) is now this shard's
    /// connection `conn`, open; `context` is the value given to `adopt` (downcast it). Called before
    /// `on_open`, with `ctx.state(conn)` there to fill; the leftover bytes are handled after `on_open`.
    fn on_adopt(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _context: Box<dyn std::any::Any + Send>) {}
    /// An outbound connection reached the open state. Called before `on_open`.
    fn on_connected(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _tag: u64) {}
    /// Called once per loop iteration with the shard's clock, after completions and timers ran
    /// (at least every `Config::handler_tick` when that is set).
    fn on_tick(&mut self, _ctx: &mut Ctx<'_, Self>) {}
    /// A notice sent with [`Notifier::notify`](crate::Notifier::notify) arrived on this shard.
    fn on_notice(&mut self, _ctx: &mut Ctx<'_, Self>, _notice: Self::Notice) {}
}

/// A complete message as the handler sees it; borrowed from the receive buffer, valid during the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, valid UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }
    /// The payload (a text message's UTF-8 bytes).
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
    /// Status code (200, 404 ...).
    pub status: u16,
    /// Reason phrase of the status line ("OK").
    pub reason: &'static str,
    /// The Content-Type header's value.
    pub content_type: &'static str,
    /// Extra header lines (name, value); lines that could split the response are left out.
    pub headers: Vec<(String, String)>,
    /// The body; Content-Length is set from it.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// An answer with no extra headers.
    pub fn new(status: u16, reason: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse { status, reason, content_type, headers: Vec::new(), body: body.into() }
    }
    /// 404, what `on_http` answers by default.
    pub fn not_found() -> Self {
        HttpResponse::new(404, "Not Found", "text/plain", "not found: this is a WebSocket endpoint\n")
    }
    /// Adds a header line (one with a line break in it is left out when the answer is written).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the handler says about an upgrade request.
pub enum Upgrade {
    /// Send the 101 and open the WebSocket, as `Accept` says.
    Accept(Accept),
    /// Answer with this HTTP error and close.
    Reject(HttpError),
}

impl From<Accept> for Upgrade {
    fn from(a: Accept) -> Upgrade {
        Upgrade::Accept(a)
    }
}

/// How to accept an upgrade: the subprotocol (one the client offered), extra response headers, and the
/// connection's [`Profile`](crate::Profile).
///
/// ```
/// use tether::{Accept, ProfileId};
/// let accept = Accept::new().subprotocol("v2.json").header("X-Node", "a").profile(ProfileId::DEFAULT);
/// assert_eq!(accept.subprotocol.as_deref(), Some("v2.json"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    /// The subprotocol to answer with; it must be one the client offered (500 otherwise).
    pub subprotocol: Option<String>,
    /// Extra header lines of the 101 answer.
    pub headers: Vec<(String, String)>,
    /// The connection's profile (keepalive, limits); the default profile unless set.
    pub profile: ProfileId,
}

impl Accept {
    /// Accept with no subprotocol, no extra headers, the default profile.
    pub fn new() -> Accept {
        Accept::default()
    }
    /// Answer with `protocol` (one of `UpgradeRequest::protocols`).
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Accept {
        self.subprotocol = Some(protocol.into());
        self
    }
    /// Add a header line to the 101 answer.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Accept {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Use `profile` (from [`Config::add_profile`](crate::Config::add_profile)) for this connection.
    pub fn profile(mut self, profile: ProfileId) -> Accept {
        self.profile = profile;
        self
    }
}

/// Details of a finished connection, for `on_close` and the close log line.
#[derive(Clone, Debug)]
pub struct Closed {
    /// How it ended: code, reason, who started it and the typed cause.
    pub info: CloseInfo,
    /// The peer's address, when it was known.
    pub peer: Option<SocketAddr>,
    /// From the accept (or connect) to the end.
    pub duration: Duration,
    /// Whether the WebSocket upgrade had completed (false for refused or timed-out handshakes).
    pub was_open: bool,
}

/// Why an outbound connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// socket/bind/connect failed (errno text).
    Io(String),
    /// The server answered the upgrade with another status.
    Rejected {
        /// The HTTP status it answered with.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
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
    /// The server's address.
    pub addr: SocketAddr,
    /// Local address to bind first (port 0 picks one), to spread over source addresses.
    pub bind: Option<SocketAddr>,
    /// Host header value.
    pub host: String,
    /// The request target: path and query (`/chat?room=1`).
    pub path: String,
    /// Returned in `on_connected` / `on_connect_failed`.
    pub tag: u64,
    /// Start no sooner than this (a reconnect's backoff); the shard's wheel holds it until then.
    pub not_before: Option<Instant>,
    /// Extra header lines of the upgrade request (`Name: value`, no line breaks; lines with one are left
    /// out), shared by every connection given the same list.
    pub headers: std::sync::Arc<[String]>,
    /// Speak TLS (wss://) with this client config and server name; `None`: plaintext (ws://).
    pub tls: Option<crate::tls::ClientTls>,
}
