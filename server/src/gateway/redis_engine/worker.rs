//! The Redis thread: one tokio runtime, one RESP3 connection per Redis instance carrying both commands and
//! PUB/SUB pushes.
//!
//! Why one connection for both: Redis writes to a connection in the order it executes commands, so a
//! publication made before a subscriber's stream read reaches this node as a push *before* the read's reply,
//! and one made after it arrives after. When a subscribe's read completes, the loop first takes every push
//! already received; publications with offsets above the read's top that were fanned out before the
//! subscriber joined its topic become the reply's `extra`s; those at or below it are in the reply's position
//! (or its recovered publications). The reply, the extras and every later publication then reach the shard in
//! one ordered queue (`EngineHandle::notify_in_order`, `publish_on`): no gap, no duplicate.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tether::{EngineHandle, Prepared};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

use super::link::Link;
use super::scripts::{self, Keys};
use super::{
    with_offset, BatchDone, BatchItem, Done, HistoryOpts, Job, Outcome, RedisError, ReplyTo, SubscribeJob, Totals,
};
use crate::gateway::broker::{client_text, glob, join_leave_topic, ClientId, Position, Subscribed};
use crate::gateway::history::{new_epoch, Recovery};
use crate::gateway::protocol;
use crate::gateway::Notice;

pub struct Worker {
    keys: Keys,
    topic_prefix: Box<str>,
    engine: Arc<OnceLock<EngineHandle>>,
    totals: Arc<Totals>,
    target: Target,
    timeout: Duration,
    presence_ttl: Duration,
    presence_every: Duration,
}

/// This node's interest in a channel: its subscribers per shard.
#[derive(Default)]
struct Local {
    by_shard: Vec<u32>,
    total: u32,
    /// Redis confirmed this node's PUB/SUB subscription.
    confirmed: bool,
}

/// A subscribe waiting for its stream read, and the publications of its channel seen meanwhile.
struct Pending {
    job: Box<SubscribeJob>,
    seen: Vec<(u64, Arc<str>, Arc<str>)>,
}

/// A stream read: top offset, epoch, entries (offset, payload).
struct Read {
    top: u64,
    epoch: String,
    entries: Vec<(u64, String)>,
}

enum Internal {
    SubRead { id: u64, result: Result<Read, RedisError> },
}

impl Worker {
    pub fn new(
        options: &crate::gateway::config::RedisOptions,
        key_prefix: String,
        topic_prefix: String,
        engine: Arc<OnceLock<EngineHandle>>,
        totals: Arc<Totals>,
    ) -> Result<Worker, String> {
        let mut clients = Vec::new();
        for address in &options.addresses {
            // RESP3: PUB/SUB pushes and command replies on one connection.
            let sep = if address.contains('?') { '&' } else { '?' };
            let url =
                if address.contains("protocol=") { address.clone() } else { format!("{address}{sep}protocol=resp3") };
            clients
                .push(redis::Client::open(url.as_str()).map_err(|e| format!("engine.redis.address {address}: {e}"))?);
        }
        let target = if options.cluster {
            // Checked here so that a bad seed is one error line at start-up.
            redis::cluster::ClusterClient::new(options.addresses.iter().map(String::as_str).collect::<Vec<_>>())
                .map_err(|e| format!("engine.redis.cluster_address: {e}"))?;
            Target::Cluster(options.addresses.clone())
        } else {
            Target::Single(clients)
        };
        Ok(Worker {
            keys: Keys::new(key_prefix, options.cluster),
            topic_prefix: topic_prefix.into(),
            engine,
            totals,
            target,
            timeout: options.timeout,
            presence_ttl: options.presence_ttl,
            presence_every: options.presence_update_interval,
        })
    }

    pub fn run(self, jobs: UnboundedReceiver<Job>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the Redis thread's runtime");
                return;
            }
        };
        rt.block_on(self.main(jobs));
    }

    async fn main(self, mut jobs: UnboundedReceiver<Job>) {
        let (push_tx, mut push_rx) = unbounded_channel::<PushInfo>();
        let mut conns = Vec::new();
        match &self.target {
            Target::Single(clients) => {
                for client in clients {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_push_sender(push_tx.clone())
                        .set_automatic_resubscription()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_secs(1));
                    match ConnectionManager::new_lazy_with_config(client.clone(), config) {
                        Ok(c) => conns.push(Link::Single(c)),
                        Err(e) => {
                            tracing::error!(error = %e, "Redis connection manager");
                            return;
                        }
                    }
                }
            }
            Target::Cluster(seeds) => {
                let cell = Arc::new(tokio::sync::OnceCell::new());
                conns.push(Link::Cluster(cell.clone()));
                let (seeds, timeout, push_tx) = (seeds.clone(), self.timeout, push_tx.clone());
                // The cluster may not be up yet: keep trying, a second apart.
                tokio::spawn(async move {
                    loop {
                        let client = redis::cluster::ClusterClient::builder(seeds.clone())
                            .use_protocol(redis::ProtocolVersion::RESP3)
                            .push_sender(push_tx.clone())
                            .connection_timeout(timeout)
                            .response_timeout(timeout)
                            .build();
                        match client {
                            Ok(client) => match client.get_async_connection().await {
                                Ok(c) => {
                                    let _ = cell.set(c);
                                    info!("connected to the Redis Cluster");
                                    return;
                                }
                                Err(e) => warn!(error = %e, "Redis Cluster not reachable; retrying"),
                            },
                            Err(e) => {
                                tracing::error!(error = %e, "Redis Cluster client");
                                return;
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        }
        let instances = conns.len();
        let (done_tx, mut done_rx) = unbounded_channel();
        let mut st = State {
            keys: self.keys.clone(),
            topic_prefix: self.topic_prefix.clone(),
            engine: self.engine.clone(),
            totals: self.totals.clone(),
            conns,
            channels: HashMap::new(),
            presence: HashMap::new(),
            pending: HashMap::new(),
            pending_by_channel: HashMap::new(),
            next_id: 1,
            done_tx,
            presence_ttl: self.presence_ttl,
            up: vec![true; instances],
        };
        let mut refresh = tokio::time::interval(self.presence_every);
        // A PING a second keeps each connection checked (and remade, with its PUB/SUB subscriptions, after
        // Redis comes back) even when no job is running.
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        let (beat_tx, mut beat_rx) = unbounded_channel::<(usize, bool)>();
        loop {
            tokio::select! {
                biased;
                Some(internal) = done_rx.recv() => {
                    while let Ok(p) = push_rx.try_recv() {
                        st.push(p);
                    }
                    st.internal(internal);
                }
                Some(p) = push_rx.recv() => st.push(p),
                job = jobs.recv() => match job {
                    Some(job) => st.job(job),
                    None => break,
                },
                Some((i, ok)) = beat_rx.recv() => st.health(i, ok),
                _ = heartbeat.tick() => {
                    for (i, c) in st.conns.iter().enumerate() {
                        let mut c = c.clone();
                        let tx = beat_tx.clone();
                        tokio::spawn(async move {
                            let ok = redis::cmd("PING").query_async::<Value>(&mut c).await.is_ok();
                            let _ = tx.send((i, ok));
                        });
                    }
                }
                _ = refresh.tick() => st.refresh_presence(),
            }
        }
    }
}

/// Where the connections go.
enum Target {
    /// One instance per address (channels spread over them by name).
    Single(Vec<redis::Client>),
    /// A Redis Cluster, from these seed addresses.
    Cluster(Vec<String>),
}

struct State {
    keys: Keys,
    topic_prefix: Box<str>,
    engine: Arc<OnceLock<EngineHandle>>,
    totals: Arc<Totals>,
    conns: Vec<Link>,
    channels: HashMap<Arc<str>, Local>,
    /// This node's presence entries, refreshed every `presence_update_interval`.
    presence: HashMap<Arc<str>, HashMap<ClientId, String>>,
    pending: HashMap<u64, Pending>,
    pending_by_channel: HashMap<Arc<str>, Vec<u64>>,
    next_id: u64,
    done_tx: UnboundedSender<Internal>,
    presence_ttl: Duration,
    up: Vec<bool>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` as (offset, the `d` field).
fn entries(v: Value) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for e in items(v) {
        let mut e = items(e).into_iter();
        let (Some(id), Some(fields)) = (e.next(), e.next()) else { continue };
        let Some(offset) = text(&id).and_then(|id| id.split('-').next().and_then(|o| o.parse().ok())) else { continue };
        let fields = items(fields);
        let mut it = fields.iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if text(k).as_deref() == Some("d") {
                if let Some(d) = text(v) {
                    out.push((offset, d));
                }
            }
        }
    }
    out
}

fn err(e: redis::RedisError) -> RedisError {
    format!("redis: {e}")
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(u64::from(!d.is_zero()))
}

impl State {
    /// The Redis instance that holds `channel` (client-side sharding by name).
    fn instance(&self, channel: &str) -> usize {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in channel.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        (h % self.conns.len() as u64) as usize
    }

    fn conn(&self, channel: &str) -> Link {
        self.conns[self.instance(channel)].clone()
    }

    fn topic(&self, channel: &str) -> Arc<str> {
        format!("{}{channel}", self.topic_prefix).into()
    }

    fn health(&mut self, i: usize, ok: bool) {
        if self.up[i] != ok {
            if ok {
                info!(instance = i, "Redis is reachable again");
                // A Redis that restarted knows none of this node's PUB/SUB subscriptions or presence entries:
                // make them again (both idempotent).
                let channels: Vec<String> =
                    self.channels.keys().filter(|ch| self.instance(ch) == i).map(|ch| self.keys.pubsub(ch)).collect();
                if !channels.is_empty() {
                    let mut c = self.conns[i].clone();
                    tokio::spawn(async move {
                        for channel in channels {
                            if let Err(e) = c.subscribe(&channel).await {
                                warn!(error = %e, "resubscribing after a reconnect");
                                break;
                            }
                        }
                    });
                }
                self.refresh_presence();
            } else {
                warn!(instance = i, "Redis unreachable; reconnecting with backoff");
            }
            self.up[i] = ok;
        }
    }

    /// Hands `outcome` to the shard that waits for it, in order with the publications queued after it.
    fn finish(engine: &OnceLock<EngineHandle>, reply: ReplyTo, outcome: Outcome) {
        if let ReplyTo::Caller(tx) = reply {
            let _ = tx.send(outcome);
            return;
        }
        let (Some(shard), Some(engine)) = (reply.shard(), engine.get()) else { return };
        if engine.notify_in_order(shard, Notice::Redis(Box::new(Done { reply, outcome }))).is_err() {
            warn!(shard, "a Redis outcome could not be queued (inbox full)");
        }
    }

    fn job(&mut self, job: Job) {
        match job {
            Job::Subscribe(job) => self.subscribe(job),
            Job::Unsubscribe { shard, channel, presence, leave } => self.unsubscribe(shard, channel, presence, leave),
            Job::Channels { pattern, reply } => {
                let mut list: Vec<(Arc<str>, u32)> = self
                    .channels
                    .iter()
                    .filter(|(name, l)| l.total > 0 && (pattern.is_empty() || glob(&pattern, name)))
                    .map(|(name, l)| (name.clone(), l.total))
                    .collect();
                list.sort();
                Self::finish(&self.engine, reply, Outcome::Channels(list));
            }
            Job::Batch { items, reply } => {
                let mut runs = Vec::with_capacity(items.len());
                for item in items {
                    runs.push(match item {
                        BatchItem::Ready(json) => Err(json),
                        BatchItem::Run { name, method, job } => Ok((name, method, self.request(*job))),
                    });
                }
                let engine = self.engine.clone();
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(runs.len());
                    // In order: a batch's publications get their offsets in the order they were listed.
                    for run in runs {
                        out.push(match run {
                            Err(json) => BatchDone::Ready(json),
                            Ok((name, method, Some(fut))) => BatchDone::Done { name, method, outcome: fut.await },
                            Ok((name, _, None)) => BatchDone::Ready(format!("{{\"{name}\":{{}}}}")),
                        });
                    }
                    Self::finish(&engine, reply, Outcome::Batch(out));
                });
            }
            job => {
                let reply = job.reply().clone();
                if let Some(fut) = self.request(job) {
                    let engine = self.engine.clone();
                    tokio::spawn(async move { Self::finish(&engine, reply, fut.await) });
                }
            }
        }
    }

    /// The Redis work of a request-style job (publish, presence, history), to await for its outcome.
    fn request(&mut self, job: Job) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>> {
        Some(match job {
            Job::Publish { channels, publication, .. } => Box::pin(self.publish(channels, publication)),
            Job::Presence { channel, stats, .. } => {
                let mut c = self.conn(&channel);
                let (data, expire) = (self.keys.presence_data(&channel), self.keys.presence_expire(&channel));
                Box::pin(async move {
                    let result = scripts::PRESENCE_GET
                        .key(data)
                        .key(expire)
                        .arg(unix_now())
                        .invoke_async::<Value>(&mut c)
                        .await
                        .map_err(err)
                        .map(|v| {
                            let flat: Vec<String> = items(v).iter().filter_map(text).collect();
                            flat.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect()
                        });
                    Outcome::Presence { stats, result }
                })
            }
            Job::History { channel, history, since, limit, reverse, .. } => {
                let mut c = self.conn(&channel);
                let (stream, meta) = (self.keys.stream(&channel), self.keys.meta(&channel));
                Box::pin(async move {
                    let (op, start, end) = match (limit, reverse, &since) {
                        (0, _, _) => ("", String::new(), String::new()),
                        (_, false, Some((o, _))) => ("fwd", (o + 1).to_string(), "+".into()),
                        (_, false, None) => ("fwd", "-".into(), "+".into()),
                        (_, true, Some((o, _))) => ("rev", o.saturating_sub(1).to_string(), "-".into()),
                        (_, true, None) => ("rev", "+".into(), "-".into()),
                    };
                    let read = read_stream(&mut c, stream, meta, &history, op, start, end, limit).await;
                    Outcome::History(match read {
                        Err(e) => Err(Some(e)),
                        Ok(read) if since.as_ref().is_some_and(|(_, e)| !e.is_empty() && *e != read.epoch) => Err(None),
                        Ok(read) => {
                            // A reverse page since offset 1 asks for offsets below 1: none.
                            let none = reverse && since.as_ref().is_some_and(|(o, _)| *o <= 1);
                            let pubs = if none {
                                Vec::new()
                            } else {
                                read.entries.iter().map(|(o, d)| with_offset(d, *o)).collect()
                            };
                            Ok((pubs, Position { offset: read.top, epoch: read.epoch.into() }))
                        }
                    })
                })
            }
            Job::HistoryRemove { channel, .. } => {
                let mut c = self.conn(&channel);
                let stream = self.keys.stream(&channel);
                Box::pin(async move {
                    let result =
                        redis::cmd("DEL").arg(stream).query_async::<Value>(&mut c).await.map(|_| ()).map_err(err);
                    Outcome::Removed(result)
                })
            }
            Job::Subscribe(_) | Job::Unsubscribe { .. } | Job::Channels { .. } | Job::Batch { .. } => return None,
        })
    }

    fn publish(
        &mut self,
        channels: Vec<(Arc<str>, Option<HistoryOpts>)>,
        publication: Arc<str>,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let targets: Vec<_> = channels
            .into_iter()
            .map(|(ch, h)| {
                let c = self.conn(&ch);
                let keys = (self.keys.stream(&ch), self.keys.meta(&ch), self.keys.pubsub(&ch));
                (c, h, keys)
            })
            .collect();
        async move {
            let mut results = Vec::with_capacity(targets.len());
            for (mut c, history, (stream, meta, pubsub)) in targets {
                let result = match history {
                    Some(h) => scripts::PUBLISH_WITH_HISTORY
                        .key(stream)
                        .key(meta)
                        .arg(&*publication)
                        .arg(h.size)
                        .arg(secs(h.ttl))
                        .arg(h.meta_ttl.as_secs())
                        .arg(&*new_epoch())
                        .arg(pubsub)
                        .arg(c.publish_command())
                        .invoke_async::<(u64, String)>(&mut c)
                        .await
                        .map(|(offset, epoch)| Some(Position { offset, epoch: epoch.into() }))
                        .map_err(err),
                    None => redis::cmd(c.publish_command())
                        .arg(pubsub)
                        .arg(format!("__p1:0:__{publication}"))
                        .query_async::<Value>(&mut c)
                        .await
                        .map(|_| None)
                        .map_err(err),
                };
                results.push(result);
            }
            Outcome::Published(results)
        }
    }

    fn subscribe(&mut self, job: Box<SubscribeJob>) {
        let channel = job.channel.clone();
        let local = self.channels.entry_ref(&*channel).or_default();
        let shard = job.conn.shard();
        if local.by_shard.len() <= shard {
            local.by_shard.resize(shard + 1, 0);
        }
        local.by_shard[shard] += 1;
        local.total += 1;
        self.totals.subscriptions.fetch_add(1, Relaxed);
        if local.total == 1 {
            self.totals.channels.fetch_add(1, Relaxed);
        }
        let need_subscribe = !local.confirmed;
        if let Some((client, info)) = &job.presence {
            self.presence.entry_ref(&*channel).or_default().insert(*client, info.clone());
            self.presence_add(&channel, vec![(*client, info.clone())]);
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut c = self.conn(&channel);
        let pubsub = self.keys.pubsub(&channel);
        let (stream, meta) = (self.keys.stream(&channel), self.keys.meta(&channel));
        let history = job.history;
        let recover = job.recover.as_ref().map(|r| r.1);
        let limit = job.recovery_limit;
        self.pending_by_channel.entry_ref(&*channel).or_default().push(id);
        self.pending.insert(id, Pending { job, seen: Vec::new() });
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = async {
                if need_subscribe {
                    c.subscribe(&pubsub).await.map_err(err)?;
                }
                match history {
                    None => Ok(Read { top: 0, epoch: String::new(), entries: Vec::new() }),
                    Some(h) => match recover {
                        // One more than the limit tells a recovery that would be cut short.
                        Some(offset) => {
                            read_stream(
                                &mut c,
                                stream,
                                meta,
                                &h,
                                "fwd",
                                (offset + 1).to_string(),
                                "+".into(),
                                limit + 1,
                            )
                            .await
                        }
                        None => read_stream(&mut c, stream, meta, &h, "", String::new(), String::new(), 0).await,
                    },
                }
            }
            .await;
            let _ = done.send(Internal::SubRead { id, result });
        });
    }

    fn internal(&mut self, internal: Internal) {
        let Internal::SubRead { id, result } = internal;
        let Some(p) = self.pending.remove(&id) else { return };
        let job = p.job;
        if let Some(ids) = self.pending_by_channel.get_mut(&*job.channel) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.pending_by_channel.remove(&*job.channel);
            }
        }
        let result = result.map(|read| {
            if let Some(local) = self.channels.get_mut(&*job.channel) {
                local.confirmed = true;
            }
            let mut out = Subscribed::default();
            if job.history.is_some() {
                if job.positioned {
                    out.position = Some(Position { offset: read.top, epoch: read.epoch.as_str().into() });
                }
                if let Some((want_epoch, offset)) = &job.recover {
                    let same_epoch = want_epoch.is_empty() || *want_epoch == read.epoch;
                    let complete = read.top == *offset
                        || (read.entries.first().is_some_and(|e| e.0 == offset + 1)
                            && read.entries.last().is_some_and(|e| e.0 == read.top)
                            && read.entries.len() <= job.recovery_limit);
                    let recovered = same_epoch && complete;
                    out.recovery = Some(Recovery {
                        recovered,
                        publications: if recovered {
                            read.entries.iter().map(|(o, d)| with_offset(d, *o)).collect()
                        } else {
                            Vec::new()
                        },
                    });
                }
            }
            let extra: Vec<Arc<str>> = p
                .seen
                .into_iter()
                .filter(|(offset, epoch, _)| job.history.is_some() && *offset > read.top && **epoch == *read.epoch)
                .map(|(_, _, body)| body)
                .collect();
            (out, extra)
        });
        let ok = result.is_ok();
        let outcome =
            Outcome::Subscribed { channel: job.channel.clone(), token: job.token, answer: job.answer.clone(), result };
        Self::finish(&self.engine, job.reply.clone(), outcome);
        if let (true, Some(info)) = (ok, &job.join) {
            self.publish_raw(&job.channel, format!("__j__{info}"));
        }
    }

    fn publish_raw(&self, channel: &str, payload: String) {
        let mut c = self.conn(channel);
        let pubsub = self.keys.pubsub(channel);
        tokio::spawn(async move {
            if let Err(e) = redis::cmd(c.publish_command()).arg(pubsub).arg(payload).query_async::<Value>(&mut c).await
            {
                debug!(error = %e, "join/leave publish failed");
            }
        });
    }

    fn unsubscribe(&mut self, shard: usize, channel: Arc<str>, presence: Option<ClientId>, leave: Option<String>) {
        if let Some(local) = self.channels.get_mut(&*channel) {
            if let Some(n) = local.by_shard.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
            local.total = local.total.saturating_sub(1);
            self.totals.subscriptions.fetch_sub(1, Relaxed);
            if local.total == 0 {
                self.totals.channels.fetch_sub(1, Relaxed);
                self.channels.remove(&*channel);
                let mut c = self.conn(&channel);
                let pubsub = self.keys.pubsub(&channel);
                tokio::spawn(async move {
                    let _ = c.unsubscribe(&pubsub).await;
                });
            }
        }
        if let Some(client) = presence {
            if let Some(m) = self.presence.get_mut(&*channel) {
                m.remove(&client);
                if m.is_empty() {
                    self.presence.remove(&*channel);
                }
            }
            let mut c = self.conn(&channel);
            let (data, expire) = (self.keys.presence_data(&channel), self.keys.presence_expire(&channel));
            let id = client_text(&client);
            tokio::spawn(async move {
                let _ = scripts::PRESENCE_REMOVE.key(data).key(expire).arg(id).invoke_async::<Value>(&mut c).await;
            });
        }
        if let Some(info) = leave {
            self.publish_raw(&channel, format!("__l__{info}"));
        }
    }

    fn presence_add(&self, channel: &str, entries: Vec<(ClientId, String)>) {
        let mut c = self.conn(channel);
        let ttl = secs(self.presence_ttl);
        let mut inv = scripts::PRESENCE_ADD.key(self.keys.presence_data(channel));
        inv.key(self.keys.presence_expire(channel)).arg(ttl).arg(unix_now() + ttl);
        for (client, info) in entries {
            inv.arg(client_text(&client)).arg(info);
        }
        tokio::spawn(async move {
            if let Err(e) = inv.invoke_async::<Value>(&mut c).await {
                debug!(error = %e, "presence update failed");
            }
        });
    }

    fn refresh_presence(&self) {
        for (channel, entries) in &self.presence {
            self.presence_add(channel, entries.iter().map(|(c, i)| (*c, i.clone())).collect());
        }
    }

    /// A PUB/SUB message: to this node's subscribers of the channel, and to the subscribes in flight.
    fn push(&mut self, p: PushInfo) {
        match p.kind {
            PushKind::Message | PushKind::SMessage => {}
            PushKind::Disconnection => {
                warn!("Redis connection lost; publications until it is back are not delivered to this node");
                return;
            }
            _ => return,
        }
        let mut data = p.data.iter();
        let (Some(name), Some(payload)) = (data.next().and_then(text), data.next().and_then(text)) else { return };
        let Some(channel) = self.keys.channel_of(&name) else { return };
        let (kind, body, offset_epoch) = if let Some(rest) = payload.strip_prefix("__p1:") {
            let Some((head, body)) = rest.split_once("__") else { return };
            let Some((offset, epoch)) = head.split_once(':') else { return };
            let offset: u64 = offset.parse().unwrap_or(0);
            ("pub", with_offset(body, offset), Some((offset, epoch)))
        } else if let Some(info) = payload.strip_prefix("__j__") {
            ("join", format!("{{\"info\":{info}}}").into(), None)
        } else if let Some(info) = payload.strip_prefix("__l__") {
            ("leave", format!("{{\"info\":{info}}}").into(), None)
        } else {
            return;
        };
        if let (Some((offset, epoch)), Some(ids)) = (offset_epoch, self.pending_by_channel.get(channel)) {
            if offset > 0 {
                let epoch: Arc<str> = epoch.into();
                for id in ids {
                    if let Some(p) = self.pending.get_mut(id) {
                        p.seen.push((offset, epoch.clone(), body.clone()));
                    }
                }
            }
        }
        let Some(local) = self.channels.get(channel) else { return };
        let Some(engine) = self.engine.get() else { return };
        let topic = self.topic(channel);
        let topic = if kind == "pub" { topic } else { join_leave_topic(&topic).into() };
        let prepared = Prepared::text(&protocol::push(channel, kind, &body));
        for (shard, n) in local.by_shard.iter().enumerate() {
            if *n > 0 && engine.publish_on(shard, &topic, &prepared).is_err() {
                warn!(shard, "a publication from Redis could not be queued (inbox full)");
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_stream(
    c: &mut Link,
    stream: String,
    meta: String,
    h: &HistoryOpts,
    op: &str,
    start: String,
    end: String,
    count: usize,
) -> Result<Read, RedisError> {
    let v: Value = scripts::READ_STREAM
        .key(stream)
        .key(meta)
        .arg(&*new_epoch())
        .arg(h.meta_ttl.as_secs())
        .arg(op)
        .arg(start)
        .arg(end)
        .arg(count.max(1))
        .invoke_async(c)
        .await
        .map_err(err)?;
    let mut parts = items(v).into_iter();
    let top = parts.next().as_ref().and_then(text).and_then(|t| t.parse().ok()).unwrap_or(0);
    let epoch = parts.next().as_ref().and_then(text).unwrap_or_default();
    let entries = parts.next().map(entries).unwrap_or_default();
    Ok(Read { top, epoch, entries })
}
