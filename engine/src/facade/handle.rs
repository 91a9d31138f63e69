//! [`AsyncHandle`]: the program's side of the facade (send with back-pressure, close, topics, adopt).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::handler::Notice;
use super::message::OwnedMessage;
use super::shared::{FacadeStats, Shared};
use crate::adopt::Adoption;
use crate::handle::{EngineHandle, Notifier, SendError};
use crate::handler::Message;
use crate::ids::ConnId;
use crate::proto::Role;

/// Reach the connections from async code: cheap to clone, `Send + Sync`, usable from any thread or task.
///
/// Sends, `try_send` and `close` for one connection travel through its shard's notice queue, so they are
/// applied in the order they were made. Topic calls go through the engine's command inbox
/// ([`EngineHandle`]), in order among themselves.
#[derive(Clone)]
pub struct AsyncHandle {
    pub(crate) engine: EngineHandle,
    pub(crate) notifier: Notifier<Notice>,
    pub(crate) shared: Arc<Shared>,
}

impl AsyncHandle {
    /// Send `message` to `conn`, waiting while the connection's send queue is full: the future resolves
    /// `Ok(())` once the message is in the queue (accepted by the same write path and bound as every other
    /// write), so a program that awaits each send never holds more than the profile's `max_send_queue` plus
    /// one message per connection, plus the sends it has in flight.
    ///
    /// While it waits, the message is held on the connection's shard (no task or timer per connection);
    /// the shard writes it when the queue drains to half its bound ([`Handler::on_writable`](crate::Handler::on_writable)).
    /// `Err(`[`SendError::NotOpen`]`)` if the connection is not open or closes before the message could be
    /// queued (including by [`close`](AsyncHandle::close)); `Err(NoShard)` for an id of no shard. A full notice
    /// queue is waited on too, not returned.
    ///
    /// The message is handed to the shard when `send` is called, so sends made one after another keep their
    /// order even if their futures are awaited together. Dropping the future before it resolves withdraws the
    /// message if the shard has not written it yet. The future is `'static`: it can be spawned.
    pub fn send(
        &self,
        conn: ConnId,
        message: impl Into<OwnedMessage>,
    ) -> impl Future<Output = Result<(), SendError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let notice = Notice::Send { conn, message: message.into(), reply };
        let shard = conn.shard();
        let first = if shard >= self.notifier.shards() {
            Err(None)
        } else {
            self.notifier.notify_or_return(shard, notice).map_err(Some)
        };
        let handle = self.clone();
        async move {
            match first {
                Ok(()) => {}
                Err(None) => return Err(SendError::NoShard),
                Err(Some(notice)) => handle.deliver_waiting(shard, notice).await?,
            }
            // The shard dropped the reply unanswered: it stopped.
            answer.await.unwrap_or(Err(SendError::NotOpen))
        }
    }

    /// Wait for room in `shard`'s notice queue (see `shared.rs`).
    async fn deliver_waiting(&self, shard: usize, mut notice: Notice) -> Result<(), SendError> {
        let room = &self.shared.inbox_room[shard];
        loop {
            if self.engine.shared.shutting_down.load(Ordering::Acquire) {
                return Err(SendError::NotOpen);
            }
            let notified = room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.shared.inbox_waiting[shard].store(true, Ordering::SeqCst);
            match self.notifier.notify_or_return(shard, notice) {
                Ok(()) => return Ok(()),
                Err(back) => notice = back,
            }
            notified.await;
        }
    }

    /// Send without waiting: the message goes to the shard, which writes it if the connection's queue has
    /// room and no earlier send is waiting, and otherwise drops it (counted in
    /// [`FacadeStats::try_send_dropped`]). Kept in order with [`send`](AsyncHandle::send) for the same
    /// connection. For messages that may be lost (the latest price, a typing indicator); use `send().await`
    /// for those that may not. `Err(InboxFull)` if the shard's notice queue is full (nothing was sent).
    pub fn try_send(&self, conn: ConnId, message: impl Into<OwnedMessage>) -> Result<(), SendError> {
        self.notifier.notify(conn.shard(), Notice::TrySend { conn, message: message.into() })
    }

    /// Start the close handshake with `code` and `reason`, after the messages already queued. Sends still
    /// waiting for room resolve `Err(NotOpen)`. The connection's `Closed` event follows once it is gone.
    /// `Err(InboxFull)` if the shard's notice queue is full (try again).
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        self.notifier.notify(conn.shard(), Notice::Close { conn, code, reason: reason.into() })
    }

    /// Publish to every subscriber of `topic` on every shard, encoded once ([`EngineHandle::publish`]).
    /// Subscribers whose queue is full meet their profile's send-queue policy: a publication does not wait.
    pub fn publish(&self, topic: &str, message: Message<'_>) -> Result<(), SendError> {
        self.engine.publish(topic, message.kind(), message.as_bytes())
    }

    /// Subscribe `conn` to `topic` ([`EngineHandle::subscribe`]); subscriptions end with the connection.
    pub fn subscribe(&self, conn: ConnId, topic: impl Into<Arc<str>>) -> Result<(), SendError> {
        self.engine.subscribe(conn, topic)
    }

    /// Unsubscribe `conn` from `topic` ([`EngineHandle::unsubscribe`]).
    pub fn unsubscribe(&self, conn: ConnId, topic: &str) -> Result<(), SendError> {
        self.engine.unsubscribe(conn, topic)
    }

    /// Take over a WebSocket another HTTP stack upgraded ([`EngineHandle::adopt`]): `.await` the
    /// [`Adoption`] for its id. Its `Opened` event is queued before the adoption resolves; its messages
    /// and `Closed` come through [`Events`](super::Events) like any other connection's.
    pub fn adopt(&self, socket: impl Into<OwnedFd>, role: Role, leftover: Vec<u8>) -> Adoption {
        self.engine.adopt(socket, role, leftover, ())
    }

    /// The facade's counters (slow-consumer closes, dropped messages, waiting sends...).
    pub fn stats(&self) -> FacadeStats {
        self.shared.stats()
    }

    /// The engine underneath: its [`stats`](EngineHandle::stats), [`shutdown`](EngineHandle::shutdown),
    /// pings, broadcasts.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}
