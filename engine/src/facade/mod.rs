//! The async facade: the engine for programs that are not written as a [`Handler`](crate::Handler).
//!
//! [`AsyncEngine::start`] runs the engine with the facade's own handler on every shard and returns the
//! program's two ends: an [`AsyncHandle`] (cheap to clone, `Send + Sync`) to send, close, publish and adopt,
//! and one [`Events`] stream of [`Event`]s (`Opened`, `Message`, `Closed` with the close report) from every
//! connection. The program needs no task and no timer per connection: keepalive, deadlines and queues stay
//! on the shards, and a program holds only what it awaits.
//!
//! ```no_run
//! use tether::{AsyncEngine, Config, Event, FacadeOptions};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let config = Config { listen: Some("127.0.0.1:9001".parse().unwrap()), ..Config::default() };
//!     let (engine, mut events) = AsyncEngine::start(config, FacadeOptions::default())?;
//!     let handle = engine.handle();
//!     while let Some(event) = events.recv().await {
//!         match event {
//!             Event::Opened { conn, peer } => println!("{conn} open from {peer:?}"),
//!             // Echo. `send` waits while the connection's send queue is full: a client that reads slowly
//!             // slows this loop down instead of growing memory.
//!             Event::Message { conn, message } => {
//!                 let _ = handle.send(conn, message).await;
//!             }
//!             Event::Closed { conn, report } => println!("{conn} closed: {} {}", report.info.code, report.info.reason),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # How it is built, and why
//!
//! The facade is an ordinary [`Handler`](crate::Handler) (`handler.rs`) plus the program's side: no branch
//! in the shard loop. Everything the program asks travels as a typed notice
//! ([`Notifier`](crate::Notifier)) to the connection's shard, which acts on it in its own thread; nothing
//! the program calls ever blocks a shard, and no shard ever waits for the program.
//!
//! - **Back-pressure on sends.** A send is written at once if the connection's queue has room
//!   ([`Ctx::send_queue_room`](crate::Ctx::send_queue_room)); otherwise the message parks in the connection's
//!   slot state with the sender's reply and the shard asks for
//!   [`Handler::on_writable`](crate::Handler::on_writable), which the engine calls once the queue has
//!   drained to half its bound. The awaiting `send` resolves only then, so the profile's send-queue policy
//!   (close with 1008, or drop) never applies to `send().await`: it waits instead. The waker is the reply
//!   itself (a tokio `oneshot`): no timer, no polling.
//! - **Events.** One bounded channel for every shard (a tokio `mpsc`: the engine uses tokio's runtime-free
//!   `sync` primitives only, so any executor can drive it). What happens when the consumer is slow is
//!   documented on [`Events`]: shards hold their further events back in order, `Opened`/`Closed` are never
//!   dropped, and a connection whose messages would overflow the backlog is closed with 1008 "consumer too
//!   slow" (counted) rather than losing messages silently. Closing was chosen over pausing the connection's
//!   reads because the engine keeps one multishot receive per connection and pausing it would add state and
//!   a resume path to the hot loop, for a case (a program that cannot keep up) that closing reports clearly.
//! - **Ordering.** A connection lives on one shard and the shard emits its events in order, behind any it
//!   holds back, so per-connection order holds in the one channel. Sends, `try_send` and `close` for one
//!   connection share its shard's notice queue, so they apply in the order they were made.
//!
//! Counters: [`AsyncHandle::stats`] ([`FacadeStats`]); the engine's own through
//! [`AsyncHandle::engine`].

mod events;
mod handle;
mod handler;
mod message;
mod shared;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use events::{Event, Events};
pub use handle::AsyncHandle;
pub use message::OwnedMessage;
pub use shared::FacadeStats;

use crate::capacity::Capacity;
use crate::config::Config;
use crate::handle::Engine;
use handler::FacadeHandler;
use shared::Shared;

/// The facade's own settings (the engine's are in [`Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FacadeOptions {
    /// Events the channel holds for the consumer, shared by every shard (at least 1). Default 4096.
    pub event_capacity: usize,
    /// Bytes of events one shard may hold back while the channel is full (payloads plus the size of an
    /// [`Event`] each). A message is held while the backlog is at most this before it (so an empty backlog
    /// always takes one message); past it, its connection is closed with 1008 "consumer too slow" and new
    /// upgrades on the shard are answered 503 (see [`Events`]). Default 8 MiB.
    pub backlog_bytes: usize,
}

impl Default for FacadeOptions {
    fn default() -> Self {
        FacadeOptions { event_capacity: 4096, backlog_bytes: 8 << 20 }
    }
}

/// A running engine driven from async code: the shard threads with the facade's handler. Get the
/// program's [`AsyncHandle`] from it; [`AsyncEngine::start`] also returns the [`Events`].
pub struct AsyncEngine {
    engine: Engine<FacadeHandler>,
    handle: AsyncHandle,
}

impl AsyncEngine {
    /// Bind the listener, start the shard threads (each with the facade's handler) and return once every
    /// ring is up, with the stream of events. Needs no async runtime itself; call it from anywhere.
    pub fn start(config: Config, options: FacadeOptions) -> io::Result<(AsyncEngine, Events)> {
        let capacity = crate::capacity::plan_capacity(&config)?;
        // tokio's channel refuses 0 and anything past usize::MAX >> 3.
        let event_capacity = options.event_capacity.clamp(1, usize::MAX >> 4);
        let shared = Arc::new(Shared::new(capacity.shards, event_capacity));
        let (tx, rx) = mpsc::channel(event_capacity);
        let bound = options.backlog_bytes;
        let engine = crate::shard::start(config, capacity, |shard| {
            FacadeHandler::new(shard, tx.clone(), shared.clone(), bound)
        })?;
        // The shards hold the only senders: the stream ends when they stop.
        drop(tx);
        let notifier = engine.notifier();
        let handle = AsyncHandle { engine: engine.handle(), notifier: notifier.clone(), shared: shared.clone() };
        let events = Events { rx, shared, notifier };
        Ok((AsyncEngine { engine, handle }, events))
    }

    /// The program's handle (a clone; they are cheap).
    pub fn handle(&self) -> AsyncHandle {
        self.handle.clone()
    }

    /// The listening address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.engine.local_addr()
    }

    /// How many shards, rings and connections the engine planned for.
    pub fn capacity(&self) -> &Capacity {
        self.engine.capacity()
    }

    /// Stop accepting, close every connection with 1001 and let the shards exit within `drain`
    /// ([`EngineHandle::shutdown`](crate::EngineHandle::shutdown)); the events stream ends after the last
    /// `Closed` the shards could hand over.
    pub fn shutdown(&self, drain: Duration) {
        self.handle.engine.shutdown(drain);
    }

    /// Block until every shard thread has exited (after [`shutdown`](AsyncEngine::shutdown)). From async code,
    /// call it on a blocking thread (`tokio::task::spawn_blocking`).
    pub fn wait(self) {
        self.engine.wait();
    }
}
