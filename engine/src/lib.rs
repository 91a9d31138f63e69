//! Tether: a sharded io_uring WebSocket connection engine.
//!
//! One shard = one thread, its io_uring ring, one timing wheel, one slab of connections. The application
//! plugs in a [`Handler`] (one per shard, called on that shard's thread, never blocking) and talks to
//! connections from anywhere through an [`EngineHandle`]. ARCHITECTURE.md at the repository root describes
//! the shape of the crate.
//!
//! # The model
//!
//! - **Shards.** [`Engine::start`] starts one shard thread per core (or [`Config::shards`]). A shard owns its
//!   connections outright: its io_uring ring(s), its registered file table (connections are direct
//!   descriptors, not process fds), one timing wheel for every deadline of every connection, and its
//!   [`Handler`]. Connections never move between shards. With `listen` set, each shard has its own
//!   SO_REUSEPORT listener and the kernel spreads new connections over them; adopted sockets
//!   ([`EngineHandle::adopt`]) go to the shards in turn.
//! - **[`ConnId`]** names one connection for its whole life: (shard, slot, generation). It is `Copy`, cheap to
//!   store, and a stale id (the connection closed, the slot reused) is refused by every call, never
//!   delivered to the slot's next occupant.
//! - **What runs where.** Every [`Handler`] callback runs on its shard's thread, with a [`Ctx`] that acts on
//!   that shard at once (no locks, no queue). A callback must not block: no blocking I/O, no waiting on locks
//!   other threads hold for long, no `Adoption::wait` or `block_on`; each blocked millisecond delays every
//!   connection of the shard (pongs, deadlines). Hand slow work to another thread and come back with a
//!   [`Notifier`] notice or an [`EngineHandle`] call. [`EngineHandle`] and [`Notifier`] are `Send + Sync +
//!   Clone` and never block: a full shard inbox returns [`SendError::InboxFull`].
//! - **A panic** in a callback aborts the process (see [`Handler`]).
//!
//! # Limits and their defaults
//!
//! Every limit is in [`Config`] (per connection ones also in a [`Profile`]); the defaults work together, so a
//! legal maximum-size message always fits:
//!
//! | limit | default | past it |
//! | --- | --- | --- |
//! | `max_message_size` | 16 MiB | close 1009 |
//! | `max_send_queue` | 4 MiB (an empty queue always takes one message) | `send_queue_policy`: close 1008 (or drop) |
//! | `max_handshake_size` | 8 KiB | HTTP 431 |
//! | `max_http_body` | 1 MiB | HTTP 413 |
//! | `http_keepalive` | 60 s idle between plain HTTP requests on one connection | connection closed, no answer |
//! | `ping_interval` / `pong_timeout` | 20 s / 10 s (`ping_mode`: every interval; `Idle`: only after a silent one) | close 1011 |
//! | `handshake_timeout` / `close_timeout` | 10 s / 5 s | HTTP 408 (client role: `ConnectError::Timeout`) / connection dropped |
//! | `tcp_keepalive` / `tcp_user_timeout` | idle `ping_interval + pong_timeout` (30 s; 15 s without pings), 5 s x 3 / 30 s | kernel resets the connection |
//! | `max_connections` | what the fd limit and shards allow | HTTP 503 (adopt: `AdoptErrorKind::AtCapacity`) |
//! | `inbox_capacity` | 65,536 commands per shard | `SendError::InboxFull` |
//! | `per_ip_max_connections` / `per_ip_handshake_rate` | off | HTTP 503 / 429 with Retry-After |
//!
//! # Sizing capacity
//!
//! A ring's registered file table is capped by RLIMIT_NOFILE, so [`plan_capacity`] gives a shard as many
//! rings as `max_connections` needs (threads stay = cores); [`Engine::capacity`] says what was chosen.
//! Memory: about 300-400 bytes of user space per idle connection in the engine (slot, wheel entry, the
//! application's `Handler::Conn`), plus the receive buffers (`recv_buffers` x 4 KiB per ring, shared by all
//! its connections) and the kernel's own socket memory (a few KiB per TCP connection, twice on loopback
//! where both ends are on the box). BENCHMARKS.md has measured figures up to a million connections.
//!
//! # The seams
//!
//! **One write path.** Everything written to a connection goes through its protocol writer and its
//! send-queue bound, whoever writes it: [`Ctx::send`] in a callback (at once, for any connection of the
//! shard, in order), [`EngineHandle::send`] from another thread (through the shard's inbox), a topic
//! publication. Nothing is ever written after our Close; `Err(`[`SendError`]`)` says why a message was not
//! queued.
//!
//! **Upgrade.** [`Handler::on_upgrade`] sees the whole request ([`UpgradeRequest`]: path, query, headers,
//! peer, offered subprotocols and extensions) and answers with an [`Accept`] (subprotocol, response headers,
//! a per-connection [`Profile`]) or an HTTP error. [`Handler::on_http`] answers plain requests (with their
//! body) and gets a [`Ctx`] too, so an API endpoint reaches the engine without globals.
//!
//! ```no_run
//! use tether::{Accept, Config, ConnId, Ctx, Engine, Handler, HttpError, Message, Profile, ProfileId, Upgrade, UpgradeRequest};
//!
//! struct Chat { relaxed: ProfileId }
//!
//! impl Handler for Chat {
//!     type Conn = Option<String>; // the user, kept in the connection's slot
//!     type Notice = ();
//!     fn on_upgrade(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, req: &UpgradeRequest) -> Upgrade {
//!         let Some(user) = req.header("x-user") else {
//!             return Upgrade::Reject(HttpError { status: 401, reason: "Unauthorized", message: "who?".into() });
//!         };
//!         *ctx.state(conn).unwrap() = Some(user.to_string());
//!         ctx.subscribe(conn, "lobby");
//!         let mut accept = Accept::new().header("X-Served-By", "tether").profile(self.relaxed);
//!         if req.protocols.iter().any(|p| p == "chat.v1") {
//!             accept = accept.subprotocol("chat.v1");
//!         }
//!         accept.into()
//!     }
//!     fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
//!         let user = ctx.state(conn).and_then(|u| u.clone()).unwrap_or_default();
//!         let line = format!("{user}: {}", String::from_utf8_lossy(message.as_bytes()));
//!         // Encoded once; the same bytes reach every subscriber on every shard.
//!         let _ = ctx.publish("lobby", Message::Text(&line));
//!     }
//! }
//!
//! let mut config = Config::default();
//! let relaxed = config.add_profile(Profile { ping_interval: Some(std::time::Duration::from_secs(50)), ..Profile::of(&config) });
//! let engine = Engine::start(config, move |_| Chat { relaxed }).unwrap();
//! engine.wait();
//! ```
//!
//! **Per-connection state and timers.** [`Handler::Conn`] is kept in the connection's slot ([`Ctx::state`]),
//! and [`Ctx::set_timer`] sets a deadline the shard's one wheel drives ([`Handler::on_timer`]): no map of
//! connections and no timer heap on the application's side.
//!
//! ```no_run
//! use std::time::Duration;
//! use tether::{ConnId, Ctx, Handler, Message};
//!
//! /// Closes a connection that sends nothing for 30 s (besides the engine's own keepalive).
//! #[derive(Default)]
//! struct Idle { messages: u64 }
//! struct App;
//! impl Handler for App {
//!     type Conn = Idle;
//!     type Notice = ();
//!     fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
//!         let at = ctx.now() + Duration::from_secs(30);
//!         ctx.set_timer(conn, at);
//!     }
//!     fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _m: Message<'_>) {
//!         ctx.state(conn).unwrap().messages += 1;
//!         let at = ctx.now() + Duration::from_secs(30);
//!         ctx.set_timer(conn, at); // re-armed in O(1)
//!     }
//!     fn on_timer(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
//!         ctx.close(conn, 1000, "idle");
//!     }
//! }
//! ```
//!
//! **Topics and prepared frames.** [`Ctx::subscribe`], [`Ctx::publish`], [`EngineHandle::publish`],
//! [`Ctx::send_many`], [`EngineHandle::broadcast`]: a [`Prepared`] frame is encoded once and shared by
//! reference in every subscriber's send queue (sent with `sendmsg`), on every shard.
//!
//! **Typed inbox and notices.** Other threads reach a shard through a bounded inbox of typed commands
//! ([`EngineHandle`]) and a bounded queue of the handler's own [`Handler::Notice`] type ([`Notifier`]); a
//! full queue returns [`SendError::InboxFull`] (counted in `inbox_full`, depth in `inbox_depth`), never blocks.
//!
//! ```no_run
//! use tether::{Config, ConnId, Ctx, Engine, Handler, Message};
//!
//! enum Control { Report(std::sync::mpsc::Sender<u64>) }
//! struct Counter { seen: u64 }
//! impl Handler for Counter {
//!     type Conn = ();
//!     type Notice = Control;
//!     fn on_message(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _m: Message<'_>) { self.seen += 1; }
//!     fn on_notice(&mut self, _ctx: &mut Ctx<'_, Self>, notice: Control) {
//!         match notice { Control::Report(tx) => { let _ = tx.send(self.seen); } }
//!     }
//! }
//! let engine = Engine::start(Config::default(), |_| Counter { seen: 0 }).unwrap();
//! let (tx, rx) = std::sync::mpsc::channel();
//! for shard in 0..engine.handle().shards() {
//!     engine.notifier().notify(shard, Control::Report(tx.clone())).unwrap();
//! }
//! let total: u64 = rx.iter().take(engine.handle().shards()).sum();
//! # let _ = total;
//! ```
//!
//! **An async facade.** Programs that are not written as a [`Handler`] (a tokio service, say) start an
//! [`AsyncEngine`] instead and get an [`AsyncHandle`] (`send(conn, message).await` waits while the
//! connection's send queue is full) and one [`Events`] stream (`Opened`, `Message`, `Closed`), in order per
//! connection and bounded; see [`facade`].
//!
//! **Typed close causes.** [`Closed::info`]`.cause` is a [`CloseCause`] (pong timeout, close timeout,
//! protocol error, peer, shutdown, slow consumer...), the same enum the metrics count by.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod adopt;
pub mod capacity;
mod command;
pub mod config;
mod context;
pub mod facade;
mod handle;
mod handler;
mod ids;
mod mailbox;
pub mod metrics;
mod per_ip;
mod prepared;
pub mod proto;
#[allow(unsafe_code)]
mod ring;
mod shard;
pub mod tls;
pub mod wheel;

pub use adopt::{AdoptError, AdoptErrorKind, Adoption};
pub use capacity::{auto_recv_buffers, plan_capacity, Capacity};
pub use config::{
    parse_optional_duration, parse_ping_mode, parse_tcp_keepalive, parse_tcp_user_timeout, Config, Deflate, PingMode,
    Profile, ProfileId, SendQueuePolicy, TcpKeepalive,
};
pub use context::Ctx;
pub use facade::{AsyncEngine, AsyncHandle, Event, Events, FacadeOptions, FacadeStats, OwnedMessage};
pub use handle::{Engine, EngineHandle, Notifier, SendError};
pub use handler::{Accept, Closed, ConnectError, ConnectRequest, Handler, HttpResponse, Message, Upgrade};
pub use ids::ConnId;
pub use metrics::{ShardMetrics, Stats};
pub use prepared::Prepared;
pub use proto::handshake::{HttpError, HttpRequest, UpgradeRequest};
pub use proto::{CloseCause, CloseInfo, Initiator, MessageKind};
pub use tls::{ClientTls, TlsError, TlsServer};
