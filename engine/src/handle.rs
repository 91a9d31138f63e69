//! Reaching the shards from any thread: [`EngineHandle`] (send, close, publish, connect, stats, shutdown),
//! [`Notifier`] (typed notices to the handlers) and [`Engine`] (the running threads).
//!
//! Each shard has one bounded inbox of [`Command`]s and one bounded queue of notices, both woken through
//! the shard's eventfd. A full inbox is never waited on: the call returns [`SendError::InboxFull`] and the
//! shard counts it (`inbox_full`); shutdown does not go through the inbox, so it is never refused.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::adopt::{AdoptError, AdoptErrorKind, AdoptJob, Adoption};
use crate::capacity::Capacity;
use crate::command::Command;
use crate::config::ProfileId;
use crate::handler::{ConnectRequest, Handler};
use crate::ids::ConnId;
use crate::mailbox::MailboxTx;
use crate::metrics::Stats;
use crate::prepared::Prepared;
use crate::proto::{MessageKind, Role};

/// Why a message (or command) was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection is not open (closing, closed, never existed on this shard).
    NotOpen,
    /// Send-queue policy `drop`: the queue was full and the message was dropped (counted in `send_dropped`).
    Dropped,
    /// Send-queue policy `close`: the queue was full and the connection is being closed with 1008.
    SlowConsumer,
    /// The owning shard's inbox is full; nothing was queued (counted in `inbox_full`).
    InboxFull,
    /// No such shard.
    NoShard,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::NotOpen => "connection not open",
            SendError::Dropped => "send queue full: message dropped",
            SendError::SlowConsumer => "send queue full: connection closed",
            SendError::InboxFull => "shard inbox full",
            SendError::NoShard => "no such shard",
        })
    }
}

impl std::error::Error for SendError {}

pub(crate) struct ShardLink {
    pub inbox: MailboxTx<Command>,
    /// Rouses the shard for a shutdown (which does not go through the inbox).
    pub waker: crate::ring::Waker,
}

pub(crate) struct Shared {
    pub links: Vec<ShardLink>,
    /// Connections holding a slot, over all shards: compared with max_connections at accept.
    pub open_total: AtomicUsize,
    pub max_connections: usize,
    /// Set by [`EngineHandle::shutdown`]; each shard checks it every loop iteration.
    pub shutting_down: AtomicBool,
    pub drain_nanos: AtomicU64,
    /// The per-source-address limits, one table for every shard.
    pub per_ip: crate::per_ip::PerIp,
    /// The options adopted sockets get, and the shard the next one goes to (round robin).
    pub adopt_sockopts: crate::adopt::AdoptSockopts,
    pub next_adopt: AtomicUsize,
}

/// Send, close, publish, connect and read stats from any thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
}

impl EngineHandle {
    pub(crate) fn deliver(&self, shard: usize, cmd: Command) -> Result<(), SendError> {
        let link = self.shared.links.get(shard).ok_or(SendError::NoShard)?;
        link.inbox.try_send(cmd).map_err(|_| SendError::InboxFull)
    }

    /// Queue a message for `conn` (its shard encodes it through the connection's write path).
    pub fn send(&self, conn: ConnId, kind: MessageKind, data: Vec<u8>) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::Send { conn, kind, data })
    }

    /// Queue a message encoded once; the same bytes go to every connection it is sent to.
    pub fn send_prepared(&self, conn: ConnId, prepared: &Prepared) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::SendPrepared { conn, prepared: prepared.clone() })
    }

    /// Close `conn` with a Close frame of `code` and `reason` (the close handshake, then TCP), after what was
    /// queued before it.
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::Close { conn, code, reason: reason.into() })
    }

    /// Send a ping now; its RTT reaches `on_pong`.
    pub fn ping(&self, conn: ConnId) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::Ping { conn })
    }

    /// Subscribe `conn` to `topic` (on the connection's shard). An `Arc<str>` the application keeps anyway is
    /// shared by the shard's topic table rather than copied (a `&str` works too).
    pub fn subscribe(&self, conn: ConnId, topic: impl Into<Arc<str>>) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::Subscribe { conn, topic: topic.into() })
    }

    /// Remove `conn` from `topic`'s subscribers.
    pub fn unsubscribe(&self, conn: ConnId, topic: &str) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::Unsubscribe { conn, topic: topic.into() })
    }

    /// Answer a plain HTTP request that the handler deferred with [`Ctx::defer_http`](crate::Ctx::defer_http):
    /// the response is written and the connection closed. `Err(NotOpen)` when that request's connection is
    /// gone (the client left, or the handshake deadline answered 504 first).
    pub fn answer_http(&self, conn: ConnId, response: crate::handler::HttpResponse) -> Result<(), SendError> {
        self.deliver(conn.shard(), Command::HttpAnswer { conn, response: Box::new(response) })
    }

    /// Hand `notice` to `shard`'s handler ([`Handler::on_notice`](crate::Handler::on_notice)) in order with
    /// the commands this thread queued to that shard (sends, subscribes, publications): a notice queued
    /// before a publication is handled before the publication is delivered. (Notices sent through a
    /// [`Notifier`] travel in a queue of their own and may overtake commands.) `notice` must be the
    /// handler's `Notice` type; one of another type is dropped with an error log.
    pub fn notify_in_order<N: Send + 'static>(&self, shard: usize, notice: N) -> Result<(), SendError> {
        self.deliver(shard, Command::Notice(Box::new(notice)))
    }

    /// Publish to every subscriber of `topic` on every shard: encoded once, the same bytes queued to each.
    /// `Err` if some shard's inbox was full (its subscribers miss this publication).
    pub fn publish(&self, topic: &str, kind: MessageKind, data: &[u8]) -> Result<(), SendError> {
        let prepared = Prepared::new(kind, data);
        self.publish_prepared(topic, &prepared)
    }

    /// [`EngineHandle::publish`] of a frame encoded already.
    pub fn publish_prepared(&self, topic: &str, prepared: &Prepared) -> Result<(), SendError> {
        self.publish_to_others(usize::MAX, &topic.into(), prepared)
    }

    /// Publish to the subscribers of `topic` on one shard only (an application that knows where a topic's
    /// subscribers are spares the other shards a command each). Publications queued to one shard are
    /// delivered in the order they were queued, and after any subscribe queued to that shard before them.
    pub fn publish_on(&self, shard: usize, topic: &Arc<str>, prepared: &Prepared) -> Result<(), SendError> {
        self.deliver(shard, Command::Publish { topic: topic.clone(), prepared: prepared.clone() })
    }

    /// Publish to every shard but `except` (the caller's own, which delivered already).
    pub(crate) fn publish_to_others(
        &self,
        except: usize,
        topic: &Arc<str>,
        prepared: &Prepared,
    ) -> Result<(), SendError> {
        let mut result = Ok(());
        for shard in (0..self.shared.links.len()).filter(|s| *s != except) {
            let cmd = Command::Publish { topic: topic.clone(), prepared: prepared.clone() };
            if let Err(e) = self.deliver(shard, cmd) {
                result = Err(e);
            }
        }
        result
    }

    /// Send one message to every open connection of every shard, encoded once.
    pub fn broadcast(&self, kind: MessageKind, data: &[u8]) -> Result<(), SendError> {
        let prepared = Prepared::new(kind, data);
        let mut result = Ok(());
        for shard in 0..self.shared.links.len() {
            if let Err(e) = self.deliver(shard, Command::Broadcast { prepared: prepared.clone() }) {
                result = Err(e);
            }
        }
        result
    }

    /// Take over a WebSocket connection another HTTP stack accepted and upgraded (axum, hyper...): `socket`
    /// is its TCP socket (a `std::net::TcpStream`, or tokio's after `into_std()`), `role` which side of the
    /// WebSocket this end is, `leftover` the bytes the other stack read past the handshake (hyper's
    /// `Parts::read_buf`; they are handled as the first bytes received), and `context` any value, handed to
    /// [`Handler::on_adopt`] on the shard (before `on_open`) so the application can fill the connection's
    /// state (the user its own auth found, say).
    ///
    /// The socket gets TCP_NODELAY and the engine's keepalive options, moves into a shard's registered file
    /// table (shards take turns), and its process descriptor is closed: adopted sockets do not count
    /// against the process's fd limit. Keepalive, limits and every callback then work as for accepted
    /// sockets. The [`Adoption`] resolves to the connection's id once the shard holds it; on refusal
    /// ([`AdoptError`]) the socket comes back untouched when the engine never took it.
    ///
    /// ```no_run
    /// # fn demo(handle: tether::EngineHandle, stream: std::net::TcpStream, leftover: Vec<u8>) {
    /// use tether::proto::Role;
    /// match handle.adopt(stream, Role::Server, leftover, String::from("alice")).wait() {
    ///     Ok(conn) => println!("adopted as {conn}"),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn adopt(
        &self,
        socket: impl Into<OwnedFd>,
        role: Role,
        leftover: Vec<u8>,
        context: impl Any + Send,
    ) -> Adoption {
        self.adopt_with_profile(socket, role, leftover, ProfileId::DEFAULT, context)
    }

    /// [`EngineHandle::adopt`] with the connection's [`Profile`](crate::Profile) (keepalive, message size and
    /// send-queue limits) chosen, as [`Accept::profile`](crate::Accept::profile) does for accepted ones. An id
    /// this engine never registered means the default profile.
    pub fn adopt_with_profile(
        &self,
        socket: impl Into<OwnedFd>,
        role: Role,
        leftover: Vec<u8>,
        profile: ProfileId,
        context: impl Any + Send,
    ) -> Adoption {
        self.adopt_negotiated(socket, role, leftover, profile, Default::default(), context)
    }

    /// [`EngineHandle::adopt_with_profile`] for a connection whose upgrade negotiated permessage-deflate:
    /// the other stack answered the offer with what
    /// [`deflate::accept_offer`](crate::proto::deflate::accept_offer) returned (the answer goes in its 101's
    /// `Sec-WebSocket-Extensions`) and `deflate` is the [`PerConn`](crate::proto::deflate::PerConn) that came
    /// with it, so the engine compresses and inflates as agreed (with the engine's shared codec, or the
    /// connection's own streams in dedicated mode). `PerConn::default()` means no extension.
    pub fn adopt_negotiated(
        &self,
        socket: impl Into<OwnedFd>,
        role: Role,
        leftover: Vec<u8>,
        profile: ProfileId,
        deflate: crate::proto::deflate::PerConn,
        context: impl Any + Send,
    ) -> Adoption {
        let socket: OwnedFd = socket.into();
        let shared = &self.shared;
        if shared.shutting_down.load(Ordering::Relaxed) {
            return Adoption::ready(Err(AdoptError::new(AdoptErrorKind::ShuttingDown, Some(socket))));
        }
        if shared.open_total.load(Ordering::Relaxed) >= shared.max_connections {
            return Adoption::ready(Err(AdoptError::new(AdoptErrorKind::AtCapacity, Some(socket))));
        }
        let peer = match crate::adopt::prepare(&socket, &shared.adopt_sockopts) {
            Ok(peer) => peer,
            Err(e) => return Adoption::ready(Err(AdoptError::new(AdoptErrorKind::Io(e.to_string()), Some(socket)))),
        };
        let shards = shared.links.len().max(1);
        let shard = shared.next_adopt.fetch_add(1, Ordering::Relaxed) % shards;
        let (adoption, reply) = Adoption::pending();
        let profile = profile.index();
        let job = AdoptJob { socket, role, leftover, peer, profile, deflate, context: Box::new(context), reply };
        let Some(link) = shared.links.get(shard) else {
            job.refuse(AdoptErrorKind::ShuttingDown);
            return adoption;
        };
        if let Err(Command::Adopt(job)) = link.inbox.try_send(Command::Adopt(Box::new(job))) {
            job.refuse(AdoptErrorKind::InboxFull);
        }
        adoption
    }

    /// Open an outbound connection on `shard` (client role).
    pub fn connect(&self, shard: usize, request: ConnectRequest) -> Result<(), SendError> {
        self.deliver(shard, Command::Connect(Box::new(request)))
    }

    /// How many shards run.
    pub fn shards(&self) -> usize {
        self.shared.links.len()
    }

    /// The sum of every shard's counters.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in self.shard_stats() {
            total.merge(&s);
        }
        total
    }

    /// Each shard's counters (with its inbox depth now; shard 0's with the per-IP table's size).
    pub fn shard_stats(&self) -> Vec<Stats> {
        self.shared
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut s = l.inbox.metrics().snapshot();
                s.inbox_depth = l.inbox.len() as u64;
                if i == 0 {
                    s.per_ip_addresses = self.shared.per_ip.len() as u64;
                }
                s
            })
            .collect()
    }

    /// Stop accepting, send Close 1001 to every connection, and let each shard exit once its connections are
    /// closed or `drain` has passed. Returns immediately; [`Engine::wait`] waits for the exit. Never refused,
    /// whatever the inboxes hold.
    pub fn shutdown(&self, drain: Duration) {
        self.shared.drain_nanos.store(drain.as_nanos().min(u64::MAX as u128) as u64, Ordering::SeqCst);
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for link in &self.shared.links {
            link.waker.wake();
        }
    }

    /// The connection bound in force (the configured one, or what the limits allowed).
    pub fn max_connections(&self) -> usize {
        self.shared.max_connections
    }
}

/// Sends typed notices ([`Handler::Notice`]) to the shards' handlers from any thread. Cheap to clone.
pub struct Notifier<N> {
    pub(crate) links: Arc<[MailboxTx<N>]>,
}

impl<N> Clone for Notifier<N> {
    fn clone(&self) -> Self {
        Notifier { links: self.links.clone() }
    }
}

impl<N: Send + 'static> Notifier<N> {
    /// Hand `notice` to `shard`'s handler ([`Handler::on_notice`]) on its thread.
    pub fn notify(&self, shard: usize, notice: N) -> Result<(), SendError> {
        if shard >= self.links.len() {
            return Err(SendError::NoShard);
        }
        self.notify_or_return(shard, notice).map_err(|_| SendError::InboxFull)
    }

    /// Like [`Notifier::notify`], but a notice that could not be queued comes back (to retry later).
    pub fn notify_or_return(&self, shard: usize, notice: N) -> Result<(), N> {
        match self.links.get(shard) {
            Some(link) => link.try_send(notice),
            None => Err(notice),
        }
    }

    /// How many shards there are to notify.
    pub fn shards(&self) -> usize {
        self.links.len()
    }
}

/// A running engine: shard threads plus the handles to reach them.
pub struct Engine<H: Handler> {
    pub(crate) handle: EngineHandle,
    pub(crate) notifier: Notifier<H::Notice>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) capacity: Capacity,
}

impl<H: Handler> Engine<H> {
    /// Bind the listeners, start the shard threads and return once every ring is up. `make_handler(i)` makes
    /// shard `i`'s handler.
    pub fn start<F>(config: crate::Config, make_handler: F) -> std::io::Result<Engine<H>>
    where
        F: Fn(usize) -> H,
    {
        let capacity = crate::capacity::plan_capacity(&config)?;
        crate::shard::start(config, capacity, make_handler)
    }

    /// A handle to reach the shards from any thread.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// A notifier for the handlers' typed notices.
    pub fn notifier(&self) -> Notifier<H::Notice> {
        self.notifier.clone()
    }

    /// The listening address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The threads, rings and slots the engine planned from the limits.
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
