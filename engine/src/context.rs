//! [`Ctx`]: the handler's view of its shard during a callback.
//!
//! Everything a callback does to a connection of its own shard happens at once, through the same write path
//! the engine uses (the connection's protocol state, its send-queue bound and policy): a reply is ordered
//! after everything written to that connection before it, and nothing is ever written after its Close. A
//! connection on another shard is reached through that shard's inbox.
//!
//! This module depends on nothing in `shard/`: the shard implements [`ShardOps`] for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::handle::{EngineHandle, Notifier, SendError};
use crate::handler::{ConnectRequest, Handler, Message};
use crate::ids::ConnId;
use crate::prepared::Prepared;

/// What a [`Ctx`] asks of its shard. Implemented by the shard; dyn so that the public API does not depend
/// on it.
pub(crate) trait ShardOps {
    fn index(&self) -> u16;
    fn now(&self) -> Instant;
    fn handle(&self) -> &EngineHandle;
    /// The connection's slot if `conn` is a live connection of this shard.
    fn slot_of(&self, conn: ConnId) -> Option<u32>;
    fn send(&mut self, conn: ConnId, message: Message<'_>) -> Result<(), SendError>;
    fn send_prepared(&mut self, conn: ConnId, prepared: &Prepared) -> Result<(), SendError>;
    fn close(&mut self, conn: ConnId, code: u16, reason: &str);
    fn ping(&mut self, conn: ConnId) -> Result<(), SendError>;
    fn connect(&mut self, request: ConnectRequest);
    fn subscribe(&mut self, conn: ConnId, topic: &str) -> bool;
    fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> bool;
    /// Deliver to this shard's subscribers; returns how many got it.
    fn publish_local(&mut self, topic: &str, prepared: &Prepared) -> usize;
    fn set_timer(&mut self, conn: ConnId, at: Option<Instant>) -> bool;
    /// See [`Ctx::pause_receive`].
    fn pause_receive(&mut self, conn: ConnId, until: Instant) -> bool;
    fn peer(&self, conn: ConnId) -> Option<SocketAddr>;
    /// See [`Ctx::send_queue_room`].
    fn send_queue_room(&self, conn: ConnId) -> Option<usize>;
    /// See [`Ctx::notify_writable`].
    fn notify_writable(&mut self, conn: ConnId) -> bool;
    /// See [`Ctx::defer_http`].
    fn defer_http(&mut self, conn: ConnId) -> bool;
    /// See [`Ctx::answer_http`].
    fn answer_http(&mut self, conn: ConnId, response: &crate::handler::HttpResponse) -> bool;
}

/// The handler's view of its shard during a callback: send, close, subscribe, set timers and reach the
/// connection's state, without locks.
pub struct Ctx<'a, H: Handler> {
    pub(crate) ops: &'a mut dyn ShardOps,
    pub(crate) states: &'a mut Vec<H::Conn>,
    pub(crate) notifier: &'a Notifier<H::Notice>,
}

impl<'a, H: Handler> Ctx<'a, H> {
    /// Send a message to any connection: at once on this shard, through the owning shard's inbox otherwise.
    /// `Err` says why it was not queued: the connection is not open, the send-queue policy dropped it or cut
    /// the connection, or the other shard's inbox is full.
    pub fn send(&mut self, conn: ConnId, message: Message<'_>) -> Result<(), SendError> {
        self.ops.send(conn, message)
    }

    /// Send a message encoded once ([`Prepared`]): the same bytes are queued, shared, to each connection.
    pub fn send_prepared(&mut self, conn: ConnId, prepared: &Prepared) -> Result<(), SendError> {
        self.ops.send_prepared(conn, prepared)
    }

    /// Send one message to many connections, encoded once. Returns how many accepted it.
    pub fn send_many(&mut self, conns: &[ConnId], message: Message<'_>) -> usize {
        let prepared = Prepared::new(message.kind(), message.as_bytes());
        conns.iter().filter(|c| self.ops.send_prepared(**c, &prepared).is_ok()).count()
    }

    /// Start the close handshake with `code` and `reason`.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.ops.close(conn, code, reason);
    }

    /// Send a ping now (its RTT is reported to `on_pong`), on this shard or another.
    pub fn ping(&mut self, conn: ConnId) -> Result<(), SendError> {
        self.ops.ping(conn)
    }

    /// Open an outbound connection from this shard (at `request.not_before` if set).
    pub fn connect(&mut self, request: ConnectRequest) {
        self.ops.connect(request);
    }

    /// Subscribe a connection of this shard to `topic`; false if it was already subscribed or is not a live
    /// connection of this shard. Subscriptions end with the connection.
    pub fn subscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        self.ops.subscribe(conn, topic)
    }

    /// False if it was not subscribed.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        self.ops.unsubscribe(conn, topic)
    }

    /// Publish to every subscriber of `topic` on every shard, encoded once. Returns the deliveries on this
    /// shard; the other shards get it through their inboxes (`Err` if one was full: that shard's subscribers
    /// miss it).
    pub fn publish(&mut self, topic: &str, message: Message<'_>) -> Result<usize, SendError> {
        let prepared = Prepared::new(message.kind(), message.as_bytes());
        let local = self.ops.publish_local(topic, &prepared);
        let topic: Arc<str> = topic.into();
        self.ops.handle().publish_to_others(self.ops.index() as usize, &topic, &prepared)?;
        Ok(local)
    }

    /// Call [`Handler::on_timer`] for `conn` at `at` (rounded up to the wheel's tick); replaces the timer set
    /// before. The shard's one wheel drives it: no timer of the application's own is needed. False if `conn`
    /// is not a live connection of this shard.
    pub fn set_timer(&mut self, conn: ConnId, at: Instant) -> bool {
        self.ops.set_timer(conn, Some(at))
    }

    /// Remove the timer set with [`Ctx::set_timer`] (the engine's own deadlines stay). False if `conn` is not
    /// a live connection of this shard.
    pub fn cancel_timer(&mut self, conn: ConnId) -> bool {
        self.ops.set_timer(conn, None)
    }

    /// Stop reading from `conn` (a connection of this shard) until `until`; a later call replaces the
    /// deadline, one at or before now ends the pause. Meanwhile the kernel's receive queue fills and TCP's
    /// window closes, so a peer that sends faster than the application will serve is slowed by TCP itself,
    /// and what it sent arrives afterwards in full buffers. Messages already received are still delivered
    /// (the rest of the buffer being handled, so `on_message` can come again during the pause). Closing the
    /// connection ends the pause, so that the peer's Close is read. The pong deadline keeps running: keep
    /// pauses well under `pong_timeout`. False if `conn` is not a live open connection of this shard.
    pub fn pause_receive(&mut self, conn: ConnId, until: Instant) -> bool {
        self.ops.pause_receive(conn, until)
    }

    /// The connection's application state ([`Handler::Conn`]), for a live connection of this shard.
    pub fn state(&mut self, conn: ConnId) -> Option<&mut H::Conn> {
        let slot = self.ops.slot_of(conn)? as usize;
        if self.states.len() <= slot {
            self.states.resize_with(slot + 1, Default::default);
        }
        self.states.get_mut(slot)
    }

    /// Whether a message sent to `conn` now would fit its send-queue bound (a connection of this shard):
    ///
    /// - `None`: the connection takes no data (not a live open connection of this shard, or our Close is
    ///   out); a send would return [`SendError::NotOpen`].
    /// - `Some(0)`: the queue is past the profile's `max_send_queue`; a send now would meet the profile's
    ///   [`SendQueuePolicy`](crate::SendQueuePolicy) (dropped, or the connection closed with 1008).
    /// - `Some(n)`, `n > 0`: the next message is accepted whatever its size (an empty queue always takes one
    ///   message); messages (frames, headers included) of fewer than `n` bytes in total leave room for one
    ///   more.
    ///
    /// A handler that must not lose a message checks this first and, on `Some(0)`, keeps the message and
    /// calls [`Ctx::notify_writable`].
    pub fn send_queue_room(&self, conn: ConnId) -> Option<usize> {
        self.ops.send_queue_room(conn)
    }

    /// Ask for [`Handler::on_writable`] once `conn`'s send queue has drained to half its bound or less: at
    /// the end of this batch of callbacks if it is there already, else after the send that brings it there.
    /// One call, one report (asking again before it came changes nothing); not called for a connection that
    /// closes meanwhile (`on_close` is). Costs nothing for connections that never ask. False if `conn` is not
    /// an open connection of this shard.
    pub fn notify_writable(&mut self, conn: ConnId) -> bool {
        self.ops.notify_writable(conn)
    }

    /// The peer's address, when the kernel told it.
    pub fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        self.ops.peer(conn)
    }

    /// Inside [`Handler::on_http`]: the answer to `request` comes later, from any thread through
    /// [`EngineHandle::answer_http`](crate::EngineHandle::answer_http) (or [`Ctx::answer_http`] on this
    /// shard) with `request.conn`; what `on_http` returns is then ignored. Until the answer comes the
    /// connection's further input is ignored; if it has not come by the handshake deadline the engine answers
    /// 504 itself. False (and nothing deferred) outside `on_http`.
    pub fn defer_http(&mut self, request: &crate::HttpRequest) -> bool {
        request.conn.is_some_and(|conn| self.ops.defer_http(conn))
    }

    /// Answers a deferred HTTP request of this shard (see [`Ctx::defer_http`]); false if its connection is
    /// gone or was not waiting.
    pub fn answer_http(&mut self, conn: ConnId, response: &crate::handler::HttpResponse) -> bool {
        self.ops.answer_http(conn, response)
    }

    /// Send `notice` to `shard`'s handler ([`Handler::on_notice`]).
    pub fn notify(&self, shard: usize, notice: H::Notice) -> Result<(), SendError> {
        self.notifier.notify(shard, notice)
    }

    /// This shard's index (0-based), as in [`ConnId::shard`].
    pub fn shard(&self) -> usize {
        self.ops.index() as usize
    }

    /// The shard's clock at the start of this loop iteration.
    pub fn now(&self) -> Instant {
        self.ops.now()
    }

    /// The engine's handle, to reach other shards or keep for another thread.
    pub fn handle(&self) -> &EngineHandle {
        self.ops.handle()
    }
}
