//! The shard side of the facade: [`FacadeHandler`], one per shard, a plain [`Handler`].
//!
//! - **Events.** Each callback becomes an [`Event`] pushed into the one bounded channel without waiting. When
//!   the channel is full, the shard keeps its events in its own FIFO backlog, in order, and every later
//!   event of the shard goes behind them, so a connection's Opened, Messages and Closed can never pass each
//!   other. Opened and Closed are always kept. A message that finds the backlog past `backlog_bytes` closes
//!   its connection with 1008 "consumer too slow" instead (it and the connection's later messages are not
//!   delivered, counted); its Closed event follows. While the backlog is past its bound, upgrades are
//!   answered 503, so the Opened/Closed it holds stay bounded by the connections of the shard.
//! - **Sends.** A send arrives as a notice and is written at once when the connection's queue has room
//!   ([`Ctx::send_queue_room`]); else it parks in the connection's state (`ConnState::parked`, in order,
//!   with its reply) and the shard asks for [`Handler::on_writable`], which writes the parked sends while
//!   room lasts. A parked send is answered `NotOpen` when its connection closes; one whose caller gave up
//!   (dropped the future) is skipped.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::events::Event;
use super::message::OwnedMessage;
use super::shared::{bump, drop_one, Shared};
use crate::context::Ctx;
use crate::handle::SendError;
use crate::handler::{Closed, Handler, Message, Upgrade};
use crate::ids::ConnId;
use crate::proto::handshake::{HttpError, UpgradeRequest};

/// What the program's side asks of a shard (through the engine's [`Notifier`](crate::Notifier)).
pub(crate) enum Notice {
    /// `send().await`: write when there is room, answer on `reply`.
    Send { conn: ConnId, message: OwnedMessage, reply: oneshot::Sender<Result<(), SendError>> },
    /// `try_send`: write if there is room now, else drop (counted).
    TrySend { conn: ConnId, message: OwnedMessage },
    /// `close`: answer the parked sends `NotOpen`, then start the close handshake.
    Close { conn: ConnId, code: u16, reason: Box<str> },
    /// The consumer made room in the event channel: push the backlog.
    Drain,
}

/// A send waiting for room in its connection's queue.
pub(crate) struct Parked {
    message: OwnedMessage,
    reply: oneshot::Sender<Result<(), SendError>>,
}

/// The facade's state in each connection's slot ([`Handler::Conn`]): empty (no allocation) unless sends wait.
#[derive(Default)]
pub(crate) struct ConnState {
    /// Sends waiting for room, oldest first.
    parked: VecDeque<Parked>,
    /// Closed as a slow consumer: its later messages are not delivered.
    dropping: bool,
}

/// What one event weighs in the backlog's bound: its payload plus the event itself.
fn cost(event: &Event) -> usize {
    std::mem::size_of::<Event>() + if let Event::Message { message, .. } = event { message.len() } else { 0 }
}

pub(crate) struct FacadeHandler {
    shard: usize,
    events: mpsc::Sender<Event>,
    /// Events waiting for room in the channel, oldest first; everything the shard emits goes behind them.
    backlog: VecDeque<Event>,
    backlog_bytes: usize,
    /// `FacadeOptions::backlog_bytes`.
    bound: usize,
    shared: Arc<Shared>,
}

impl FacadeHandler {
    pub fn new(shard: usize, events: mpsc::Sender<Event>, shared: Arc<Shared>, bound: usize) -> FacadeHandler {
        FacadeHandler { shard, events, backlog: VecDeque::new(), backlog_bytes: 0, bound, shared }
    }

    /// Queue an event: into the channel if nothing of this shard waits, else behind the backlog.
    fn emit(&mut self, event: Event) {
        if self.backlog.is_empty() {
            match self.events.try_send(event) {
                // Closed: the program dropped its `Events`; nobody listens any more.
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(event)) => self.hold(event),
            }
            self.flush();
        } else {
            self.hold(event);
        }
    }

    fn hold(&mut self, event: Event) {
        self.backlog_bytes += cost(&event);
        self.backlog.push_back(event);
        bump(&self.shared.counters.events_backlogged);
    }

    /// Push the backlog into the channel while it has room; if some is left, raise the shard's flag (the
    /// consumer wakes the shard once it has made room) and try once more, for a consumer that made room
    /// between the first try and the flag.
    fn flush(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        self.push_out();
        if !self.backlog.is_empty() {
            self.shared.mark_backlogged(self.shard);
            self.push_out();
        }
    }

    fn push_out(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            let weight = cost(&event);
            match self.events.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog_bytes -= weight;
                    drop_one(&self.shared.counters.events_backlogged);
                }
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
            }
        }
    }

    fn send(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: OwnedMessage, reply: Reply) {
        if reply.is_closed() {
            return; // the caller gave up before the shard got to it
        }
        let Some(state) = ctx.state(conn) else {
            let _ = reply.send(Err(SendError::NotOpen));
            return;
        };
        // Behind sends that wait already: never overtake them.
        if !state.parked.is_empty() {
            state.parked.push_back(Parked { message, reply });
            bump(&self.shared.counters.sends_waiting);
            return;
        }
        match ctx.send_queue_room(conn) {
            None => {
                let _ = reply.send(Err(SendError::NotOpen));
            }
            Some(0) => {
                if let Some(state) = ctx.state(conn) {
                    state.parked.push_back(Parked { message, reply });
                    bump(&self.shared.counters.sends_waiting);
                    ctx.notify_writable(conn);
                }
            }
            Some(_) => {
                let _ = reply.send(ctx.send(conn, message.as_message()));
            }
        }
    }

    fn try_send(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: OwnedMessage) {
        let Some(state) = ctx.state(conn) else { return };
        if !state.parked.is_empty() || ctx.send_queue_room(conn) == Some(0) {
            bump(&self.shared.counters.try_send_dropped);
            return;
        }
        let _ = ctx.send(conn, message.as_message());
    }

    /// Write parked sends while the connection's queue has room; ask again when it runs out.
    fn write_parked(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        loop {
            let Some(parked) = ctx.state(conn).and_then(|s| s.parked.pop_front()) else { return };
            if parked.reply.is_closed() {
                drop_one(&self.shared.counters.sends_waiting);
                continue;
            }
            match ctx.send_queue_room(conn) {
                Some(0) => {
                    if let Some(state) = ctx.state(conn) {
                        state.parked.push_front(parked);
                    }
                    ctx.notify_writable(conn);
                    return;
                }
                room => {
                    drop_one(&self.shared.counters.sends_waiting);
                    let result = match room {
                        None => Err(SendError::NotOpen),
                        Some(_) => ctx.send(conn, parked.message.as_message()),
                    };
                    let _ = parked.reply.send(result);
                }
            }
        }
    }

    /// Answer every parked send of `conn` with `NotOpen` (the connection is closing or closed).
    fn fail_parked(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let Some(state) = ctx.state(conn) else { return };
        for parked in state.parked.drain(..) {
            drop_one(&self.shared.counters.sends_waiting);
            let _ = parked.reply.send(Err(SendError::NotOpen));
        }
        state.parked = VecDeque::new();
    }
}

type Reply = oneshot::Sender<Result<(), SendError>>;

impl Handler for FacadeHandler {
    type Conn = ConnState;
    type Notice = Notice;

    fn on_upgrade(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _request: &UpgradeRequest) -> Upgrade {
        if self.backlog_bytes > self.bound {
            bump(&self.shared.counters.upgrades_refused);
            return Upgrade::Reject(HttpError {
                status: 503,
                reason: "Service Unavailable",
                message: "the application is not keeping up; try again later".into(),
            });
        }
        Upgrade::Accept(Default::default())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let peer = ctx.peer(conn);
        self.emit(Event::Opened { conn, peer });
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let Some(state) = ctx.state(conn) else { return };
        if state.dropping {
            bump(&self.shared.counters.messages_dropped);
            return;
        }
        // The bound is checked before a message joins the backlog: an empty backlog always takes one message.
        if !self.backlog.is_empty() && self.backlog_bytes > self.bound {
            state.dropping = true;
            bump(&self.shared.counters.messages_dropped);
            bump(&self.shared.counters.slow_consumer_closes);
            ctx.close(conn, 1008, "consumer too slow");
            return;
        }
        self.emit(Event::Message { conn, message: message.into() });
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        self.write_parked(ctx, conn);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, closed: &Closed) {
        self.fail_parked(ctx, conn);
        self.emit(Event::Closed { conn, report: closed.clone() });
    }

    fn on_tick(&mut self, _ctx: &mut Ctx<'_, Self>) {
        self.flush();
        // The notice queue was drained at the top of this iteration: wake senders that found it full.
        let waiting = &self.shared.inbox_waiting[self.shard];
        if waiting.load(Ordering::Relaxed) && waiting.swap(false, Ordering::SeqCst) {
            self.shared.inbox_room[self.shard].notify_waiters();
        }
    }

    fn on_notice(&mut self, ctx: &mut Ctx<'_, Self>, notice: Notice) {
        match notice {
            Notice::Send { conn, message, reply } => self.send(ctx, conn, message, reply),
            Notice::TrySend { conn, message } => self.try_send(ctx, conn, message),
            Notice::Close { conn, code, reason } => {
                self.fail_parked(ctx, conn);
                ctx.close(conn, code, &reason);
            }
            Notice::Drain => self.flush(),
        }
    }
}

impl Drop for FacadeHandler {
    /// The shard is stopping: hand the channel what fits (the rest is lost, as documented on `Events`), and
    /// wake senders waiting for room in its notice queue, which will never come: they see the shutdown.
    fn drop(&mut self) {
        self.push_out();
        self.shared.inbox_room[self.shard].notify_waiters();
    }
}
