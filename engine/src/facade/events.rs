//! The program's end of the event channel: [`Event`] and [`Events`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::handler::Notice;
use super::message::OwnedMessage;
use super::shared::Shared;
use crate::handle::Notifier;
use crate::handler::Closed;
use crate::ids::ConnId;

/// What happened to a connection. For each connection, in this order: one `Opened`, its `Message`s in the
/// order they arrived, one `Closed`. Events of different connections interleave.
#[derive(Clone, Debug)]
pub enum Event {
    /// The WebSocket is open (accepted and upgraded, or adopted).
    Opened {
        /// The connection, for [`AsyncHandle::send`](super::AsyncHandle::send) and the other calls.
        conn: ConnId,
        /// The peer's address, when the kernel told it.
        peer: Option<SocketAddr>,
    },
    /// A whole message arrived.
    Message {
        /// The connection it came on.
        conn: ConnId,
        /// The message (text stays a `String`).
        message: OwnedMessage,
    },
    /// The connection is gone; `conn` is never seen again.
    Closed {
        /// The connection that closed.
        conn: ConnId,
        /// How it ended: code, reason, who started it, cause, peer and duration (as in the close log line).
        report: Closed,
    },
}

impl Event {
    /// The connection the event is about.
    pub fn conn(&self) -> ConnId {
        match self {
            Event::Opened { conn, .. } | Event::Message { conn, .. } | Event::Closed { conn, .. } => *conn,
        }
    }
}

/// The stream of [`Event`]s from every shard: bounded ([`FacadeOptions::event_capacity`](super::FacadeOptions::event_capacity)),
/// in order per connection. Ends (`None`) once every shard has stopped and everything they queued was taken.
///
/// **When the consumer is slow.** Shards never wait for the consumer. Once the channel is full, each shard
/// keeps its further events in its own backlog, in order, and hands them over as the consumer makes room
/// (the consumer wakes it when the channel is half empty). `Opened` and `Closed` are never dropped. A message
/// that finds its shard's backlog past [`FacadeOptions::backlog_bytes`](super::FacadeOptions::backlog_bytes)
/// is not dropped silently: its connection is closed with 1008 "consumer too slow"
/// ([`FacadeStats::slow_consumer_closes`](super::FacadeStats::slow_consumer_closes)), that message and any
/// later ones of the connection are not delivered ([`FacadeStats::messages_dropped`](super::FacadeStats::messages_dropped)),
/// and its `Closed` event (code 1008) comes after the messages that were delivered. While a shard's backlog is
/// past its bound, new upgrades on it are answered 503. So memory stays bounded and the program always learns
/// of a loss through a `Closed`, never by a gap.
///
/// Events a shard still held when it stopped (the engine shut down while the consumer was behind) are lost.
/// Dropping `Events` discards every later event; the connections live on.
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) notifier: Notifier<Notice>,
}

impl Events {
    /// The next event; `None` once the engine has stopped and every event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await;
        self.taken();
        event
    }

    /// The next event if one is waiting now (`None` if none is, or the engine has stopped).
    pub fn try_recv(&mut self) -> Option<Event> {
        let event = self.rx.try_recv().ok();
        self.taken();
        event
    }

    /// Poll for the next event (to adapt `Events` to a `Stream` trait): `Ready(None)` once the engine has
    /// stopped and every event was taken.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let poll = self.rx.poll_recv(cx);
        if poll.is_ready() {
            self.taken();
        }
        poll
    }

    /// Block the calling thread for the next event, for programs without an async runtime. Panics if called
    /// from within an async runtime (use `recv().await` there).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        let event = self.rx.blocking_recv();
        self.taken();
        event
    }

    /// Events waiting in the channel now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event waits in the channel now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// After taking events: once the channel is half empty, wake the shards that hold events back. A full
    /// notice queue needs no retry: that shard is busy and retries its backlog every loop iteration.
    fn taken(&self) {
        if !self.shared.any_backlogged.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if self.rx.len() > self.shared.event_capacity / 2 {
            return;
        }
        for shard in self.shared.take_backlogged() {
            let _ = self.notifier.notify(shard, Notice::Drain);
        }
    }
}
