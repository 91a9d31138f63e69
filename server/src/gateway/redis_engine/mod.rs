//! The Redis engine (`engine.type = "redis"`): channels, history and presence shared by every tetherd node
//! on the same Redis, laid out as Centrifugo's Redis engine lays them out (GATEWAY-PROTOCOL.md section 10):
//!
//! | what | Redis |
//! | --- | --- |
//! | publications between nodes | PUB/SUB channel `{prefix}.client.{channel}`, payload `__p1:{offset}:{epoch}__{publication JSON}`; joins `__j__{info}`, leaves `__l__{info}` |
//! | history | stream `{prefix}.stream.{channel}` (entry id = offset) + meta hash `{prefix}.stream.meta.{channel}` (`e` epoch, `s` top offset), appended and published by one Lua script |
//! | presence | hash `{prefix}.presence.data.{channel}` (client id -> ClientInfo JSON) + sorted set `{prefix}.presence.expire.{channel}` (client id -> expiry), refreshed by the owning node |
//!
//! (Key names are Centrifugo's; payloads are the client protocol's JSON, not Centrifugo's protobuf, so a
//! mixed fleet shares keys but not messages.)
//!
//! Shards never block on Redis: a shard hands a [`Job`] to the [`RedisLink`] and goes on; the Redis thread
//! (its own tokio runtime, redis-rs) does the work and hands the outcome back to the shard that holds the
//! connection (a client command's reply, a deferred API answer) as a [`Done`] notice queued in order with the
//! publications it fans out, so a subscriber's reply, its recovered publications and the live ones arrive
//! exactly in offset order (see `worker`).

mod link;
mod scripts;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tether::{ConnId, EngineHandle};

use super::broker::{ClientId, Position, Subscribed};
use super::config::RedisOptions;

/// History options of a channel's namespace, as Redis needs them.
#[derive(Clone, Copy, Debug)]
pub struct HistoryOpts {
    pub size: usize,
    pub ttl: Duration,
    pub meta_ttl: Duration,
}

/// Where the outcome of a job goes.
#[derive(Clone, Debug)]
pub enum ReplyTo {
    /// A client command: reply to command `id` of `conn`.
    Command { conn: ConnId, id: u32 },
    /// A server-side subscription (API `subscribe`): a `subscribe` push.
    Push { conn: ConnId },
    /// A server-side subscription of a connect (token `channels`): its result goes in the connect reply.
    ConnectSub { conn: ConnId },
    /// A deferred server API request on connection `conn` (answered with `EngineHandle::answer_http`).
    Api { conn: ConnId, method: ApiMethod },
    /// A thread waiting on this channel (`GatewayServer::api` of an embedder).
    Caller(std::sync::mpsc::Sender<Outcome>),
    /// Nobody waits.
    Nobody,
}

impl ReplyTo {
    /// The shard whose handler finishes the job.
    pub fn shard(&self) -> Option<usize> {
        match self {
            ReplyTo::Command { conn, .. }
            | ReplyTo::Push { conn }
            | ReplyTo::ConnectSub { conn }
            | ReplyTo::Api { conn, .. } => Some(conn.shard()),
            ReplyTo::Caller(_) | ReplyTo::Nobody => None,
        }
    }
}

/// Which API method a deferred answer belongs to (its result's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiMethod {
    Publish,
    Broadcast,
    Presence,
    PresenceStats,
    History,
    HistoryRemove,
    Channels,
    Batch,
}

/// What a subscribe's reply says besides the broker's answer (built by the shard, carried through Redis
/// unchanged).
#[derive(Clone, Debug, Default)]
pub struct SubAnswer {
    /// The subscription token's remaining seconds, when it expires.
    pub ttl: Option<u64>,
    pub recoverable: bool,
    pub positioned: bool,
    /// The client's own offset when it asked to recover.
    pub recover_offset: Option<u64>,
    /// The token's `data`.
    pub data: Option<Arc<str>>,
}

/// What a subscribe asks of Redis.
#[derive(Debug)]
pub struct SubscribeJob {
    pub conn: ConnId,
    pub channel: Arc<str>,
    /// `Some` when the namespace keeps history: the position (and a recovery) is read from the stream.
    pub history: Option<HistoryOpts>,
    /// `Some((epoch, offset))`: recover from there.
    pub recover: Option<(String, u64)>,
    pub recovery_limit: usize,
    /// The client's presence entry (its ClientInfo JSON), when the namespace keeps presence.
    pub presence: Option<(ClientId, String)>,
    /// Whether the reply carries the stream position.
    pub positioned: bool,
    /// Publish a join with this ClientInfo JSON once subscribed.
    pub join: Option<String>,
    /// The session's token for this pending subscription (a resubscribe gets another).
    pub token: u32,
    pub reply: ReplyTo,
    pub answer: SubAnswer,
}

/// Work for the Redis thread.
#[derive(Debug)]
pub enum Job {
    /// Publish `publication` (the push body without its offset) to each channel, appending it to the
    /// channel's history when it has `HistoryOpts`.
    Publish {
        channels: Vec<(Arc<str>, Option<HistoryOpts>)>,
        publication: Arc<str>,
        reply: ReplyTo,
    },
    Subscribe(Box<SubscribeJob>),
    /// A subscription of a connection on `shard` ended: drop the node's interest, the presence entry, and
    /// publish the leave (ClientInfo JSON) when given.
    Unsubscribe {
        shard: usize,
        channel: Arc<str>,
        presence: Option<ClientId>,
        leave: Option<String>,
    },
    /// Presence of a channel; `stats` only says which answer the reply wants.
    Presence {
        channel: Arc<str>,
        stats: bool,
        reply: ReplyTo,
    },
    /// A history page: `since` (offset, epoch), `limit` 0 = only the position.
    History {
        channel: Arc<str>,
        history: HistoryOpts,
        since: Option<(u64, String)>,
        limit: usize,
        reverse: bool,
        reply: ReplyTo,
    },
    HistoryRemove {
        channel: Arc<str>,
        reply: ReplyTo,
    },
    /// This node's channels with subscribers whose names match `pattern` (empty: all).
    Channels {
        pattern: String,
        reply: ReplyTo,
    },
    /// An API batch: its items run one after another; the answers come back together.
    Batch {
        items: Vec<BatchItem>,
        reply: ReplyTo,
    },
}

impl Job {
    /// Where the job's outcome goes.
    pub fn reply(&self) -> &ReplyTo {
        const NOBODY: ReplyTo = ReplyTo::Nobody;
        match self {
            Job::Publish { reply, .. }
            | Job::Presence { reply, .. }
            | Job::History { reply, .. }
            | Job::HistoryRemove { reply, .. }
            | Job::Channels { reply, .. }
            | Job::Batch { reply, .. } => reply,
            Job::Subscribe(job) => &job.reply,
            Job::Unsubscribe { .. } => &NOBODY,
        }
    }
}

/// One command of an API batch.
#[derive(Debug)]
pub enum BatchItem {
    /// Answered already (a method that needs no Redis, or an error): its reply JSON.
    Ready(String),
    /// A method that Redis answers, under its name.
    Run { name: String, method: ApiMethod, job: Box<Job> },
}

/// One answer of an API batch.
#[derive(Debug)]
pub enum BatchDone {
    Ready(String),
    Done { name: String, method: ApiMethod, outcome: Outcome },
}

/// A failed Redis operation, in words for logs and API errors.
pub type RedisError = String;

/// The outcome of a job, handed to the shard named by its [`ReplyTo`].
#[derive(Debug)]
pub enum Outcome {
    /// One result per channel of the publish.
    Published(Vec<Result<Option<Position>, RedisError>>),
    /// `extra`: live publications (push bodies) that came between the stream read and the subscription
    /// taking effect on the shard; sent right after the reply.
    Subscribed {
        channel: Arc<str>,
        token: u32,
        answer: SubAnswer,
        result: Result<(Subscribed, Vec<Arc<str>>), RedisError>,
    },
    /// (client id text, ClientInfo JSON) of every live entry.
    Presence {
        stats: bool,
        result: Result<Vec<(String, String)>, RedisError>,
    },
    /// Publications (push bodies) and the stream position, or `Err(None)` for error 112 (another epoch).
    History(Result<(Vec<Arc<str>>, Position), Option<RedisError>>),
    Removed(Result<(), RedisError>),
    /// (channel, subscribers on this node).
    Channels(Vec<(Arc<str>, u32)>),
    Batch(Vec<BatchDone>),
}

/// A finished job: what the shard's handler gets back (as `Notice::Redis`).
#[derive(Debug)]
pub struct Done {
    pub reply: ReplyTo,
    pub outcome: Outcome,
}

/// What the Redis thread counts for `info` and `/metrics`.
#[derive(Default)]
pub struct Totals {
    pub channels: AtomicUsize,
    pub subscriptions: AtomicU64,
}

/// A gateway's link to its Redis thread. Jobs never block the caller.
pub struct RedisLink {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    engine: Arc<OnceLock<EngineHandle>>,
    totals: Arc<Totals>,
    _thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisLink")
    }
}

impl RedisLink {
    /// Starts the Redis thread for one gateway: `key_prefix` starts its keys (the configured prefix, plus the
    /// tenant's name), `topic_prefix` its engine topics (as the memory broker's). Connections to Redis are
    /// made lazily and remade with backoff when lost.
    pub fn start(options: &RedisOptions, key_prefix: String, topic_prefix: String) -> Result<RedisLink, String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = Arc::new(OnceLock::new());
        let totals = Arc::new(Totals::default());
        let w = worker::Worker::new(options, key_prefix, topic_prefix, engine.clone(), totals.clone())?;
        let thread = std::thread::Builder::new()
            .name("tetherd-redis".into())
            .spawn(move || w.run(rx))
            .map_err(|e| format!("the Redis thread: {e}"))?;
        Ok(RedisLink { jobs: tx, engine, totals, _thread: thread })
    }

    /// (channels with subscribers on this node, their subscriptions).
    pub fn totals(&self) -> (usize, u64) {
        (self.totals.channels.load(Relaxed), self.totals.subscriptions.load(Relaxed))
    }

    /// Queues `job`. The first job tells the thread the engine to deliver through.
    pub fn submit(&self, handle: &EngineHandle, job: Job) {
        if self.engine.get().is_none() {
            let _ = self.engine.set(handle.clone());
        }
        if self.jobs.send(job).is_err() {
            tracing::error!("the Redis thread is gone; job dropped");
        }
    }
}

/// The publication body `{"data":..}` with `"offset":N` put first (bodies travel through Redis without
/// their offset: the Lua script assigns it).
pub fn with_offset(body: &str, offset: u64) -> Arc<str> {
    if offset == 0 || !body.starts_with('{') {
        return body.into();
    }
    let mut out = String::with_capacity(body.len() + 24);
    out.push_str("{\"offset\":");
    out.push_str(&offset.to_string());
    if body.len() > 2 {
        out.push(',');
    }
    out.push_str(&body[1..]);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_go_first() {
        assert_eq!(&*with_offset(r#"{"data":1}"#, 7), r#"{"offset":7,"data":1}"#);
        assert_eq!(&*with_offset(r#"{"data":1}"#, 0), r#"{"data":1}"#);
        let v: serde_json::Value = serde_json::from_str(&with_offset(r#"{"data":{"a":[1]},"info":{}}"#, 12)).unwrap();
        assert_eq!(v["offset"], 12);
        assert_eq!(v["data"]["a"][0], 1);
    }
}
