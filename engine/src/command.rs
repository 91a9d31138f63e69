//! [`Command`]: the typed work other threads (and other shards) queue in a shard's bounded inbox.

use std::sync::Arc;

use crate::handler::ConnectRequest;
use crate::ids::ConnId;
use crate::prepared::Prepared;
use crate::proto::MessageKind;

pub(crate) enum Command {
    Send {
        conn: ConnId,
        kind: MessageKind,
        data: Vec<u8>,
    },
    SendPrepared {
        conn: ConnId,
        prepared: Prepared,
    },
    Publish {
        topic: Arc<str>,
        prepared: Prepared,
    },
    Broadcast {
        prepared: Prepared,
    },
    Subscribe {
        conn: ConnId,
        topic: Arc<str>,
    },
    Unsubscribe {
        conn: ConnId,
        topic: Arc<str>,
    },
    Close {
        conn: ConnId,
        code: u16,
        reason: Box<str>,
    },
    Ping {
        conn: ConnId,
    },
    Connect(Box<ConnectRequest>),
    Adopt(Box<crate::adopt::AdoptJob>),
    /// The answer to a plain HTTP request whose handler deferred it ([`crate::Ctx::defer_http`]).
    HttpAnswer {
        conn: ConnId,
        response: Box<crate::handler::HttpResponse>,
    },
    /// A handler notice queued in order with the commands (the shard downcasts it to `H::Notice`).
    Notice(Box<dyn std::any::Any + Send>),
}
