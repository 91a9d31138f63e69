//! The memory broker: what a channel holds beyond its subscribers' sockets (history stream, presence, the
//! node-wide subscriber count), and the one place a publication is given its offset and handed to the
//! engine's topics.
//!
//! Channels are spread over striped locks by name. Everything that must agree with delivery order happens
//! under the channel's lock: an offset is assigned and the encoded push queued to every shard's inbox
//! before the next publication of that channel can start, and a subscribe reads the stream's top and queues
//! its topic subscription to its own shard's inbox in the same critical section. Each shard works through
//! its inbox in order, so a subscriber gets exactly the publications after the position it was told, live,
//! and the ones before it (if it recovers) in its subscribe reply: no gap, no duplicate. A lock is held for
//! an append and a few queue pushes; no socket I/O happens under it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard};
use tether::{ConnId, EngineHandle, Prepared};

use super::config::NamespaceOptions;
use super::history::{new_epoch, Recovery, Stream};
use super::protocol::{self, ErrorCode};

/// A client id: the bytes of its UUID.
pub type ClientId = [u8; 16];

/// The text form of a client id (a hyphenated UUID).
pub fn client_text(id: &ClientId) -> String {
    uuid::Uuid::from_bytes(*id).hyphenated().to_string()
}

pub fn parse_client(text: &str) -> Option<ClientId> {
    uuid::Uuid::parse_str(text).ok().map(|u| *u.as_bytes())
}

/// One presence entry (per client and channel).
#[derive(Clone, Debug)]
pub struct Presence {
    pub user: Arc<str>,
    pub conn_info: Option<Arc<str>>,
    pub chan_info: Option<Arc<str>>,
}

impl Presence {
    /// `ClientInfo` JSON of this entry for `client`.
    pub fn info_json(&self, client: &ClientId) -> String {
        let mut out = String::new();
        protocol::client_info(
            &mut out,
            &self.user,
            &client_text(client),
            self.conn_info.as_deref(),
            self.chan_info.as_deref(),
        );
        out
    }
}

#[derive(Default)]
struct Channel {
    /// Subscribers per shard (indexed by shard): publications go only to shards that have some.
    by_shard: smallvec::SmallVec<[u32; 2]>,
    /// Boxed: most channels (personal ones above all) keep no history, and pay 8 bytes for that.
    stream: Option<Box<Stream>>,
    /// Boxed: channels without presence (most) pay 8 bytes.
    presence: Option<Box<HashMap<ClientId, Presence>>>,
    subscribers: u32,
}

impl Channel {
    fn unused(&self) -> bool {
        self.subscribers == 0 && self.presence.as_ref().is_none_or(|p| p.is_empty()) && self.stream.is_none()
    }

    fn add_subscriber(&mut self, shard: usize) {
        if self.by_shard.len() <= shard {
            self.by_shard.resize(shard + 1, 0);
        }
        self.by_shard[shard] += 1;
        self.subscribers += 1;
    }

    fn remove_subscriber(&mut self, shard: usize) {
        if let Some(n) = self.by_shard.get_mut(shard) {
            *n = n.saturating_sub(1);
        }
        self.subscribers = self.subscribers.saturating_sub(1);
    }

    /// Queues `frame` to `topic` on every shard holding a subscriber of this channel.
    fn fan_out(&self, handle: &EngineHandle, topic: &str, frame: &str) -> Result<(), tether::SendError> {
        let mut shards = self.by_shard.iter().enumerate().filter(|(_, n)| **n > 0).map(|(s, _)| s).peekable();
        if shards.peek().is_none() {
            return Ok(());
        }
        let prepared = Prepared::text(frame);
        let topic: Arc<str> = topic.into();
        let mut result = Ok(());
        for shard in shards {
            if let Err(e) = handle.publish_on(shard, &topic, &prepared) {
                result = Err(e);
            }
        }
        result
    }
}

/// The join and leave pushes of a channel travel on this topic (after the channel's own topic name), which
/// only the subscribers that get them are members of.
pub fn join_leave_topic(topic: &str) -> String {
    format!("{topic}\u{0}jl")
}

/// Where a publication landed in its channel's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// A publication to make.
pub struct Publish<'a> {
    pub channel: &'a str,
    pub ns: &'a NamespaceOptions,
    /// Raw JSON.
    pub data: &'a str,
    /// The publisher's ClientInfo JSON (client publishes).
    pub info: Option<&'a str>,
    /// A JSON object of strings.
    pub tags: Option<&'a str>,
    pub skip_history: bool,
}

/// What a subscribe needs from the broker.
pub struct Subscribe<'a> {
    pub conn: ConnId,
    /// Shared with the session, the broker's channel table and the engine's topic table.
    pub channel: &'a Arc<str>,
    pub ns: &'a NamespaceOptions,
    /// Whether the reply carries the stream position (positioned or recoverable).
    pub positioned: bool,
    /// `Some((epoch, offset))` when the client asks to recover from there.
    pub recover: Option<(&'a str, u64)>,
    pub recovery_limit: usize,
    pub join_leave: bool,
    /// The client's presence entry (and the source of join's info), when the namespace keeps presence or
    /// emits join/leave.
    pub client: ClientId,
    pub presence: Option<Presence>,
}

#[derive(Debug, Default)]
pub struct Subscribed {
    /// The stream position when positioned.
    pub position: Option<Position>,
    /// The recovery outcome when the client asked to recover and the channel keeps history.
    pub recovery: Option<Recovery>,
}

/// What ends a subscription (an unsubscribe, or the connection's close).
pub struct Unsubscribe<'a> {
    /// The shard that holds the connection.
    pub shard: usize,
    /// `Some` while the connection is alive and its topic subscription must be dropped.
    pub conn: Option<ConnId>,
    pub channel: &'a str,
    pub join_leave: bool,
    pub client: ClientId,
    /// Presence was kept for it: remove it, and publish a leave when the namespace emits them.
    pub had_presence: bool,
    pub emit_leave: bool,
}

/// One stripe of channels, by name.
type Stripe = HashMap<Arc<str>, Channel>;

pub struct Broker {
    stripes: Box<[Mutex<Stripe>]>,
    history_meta_ttl: Duration,
    /// Put before a channel's name to make its engine topic: "" for the `--gateway` gateway (the channel
    /// name is the topic), `"\u{1}NAME\u{0}"` for tenant NAME, so that tenants never share a topic (a
    /// channel name cannot hold `\0`).
    topic_prefix: Box<str>,
    /// Publication pushes queued to subscribers (one per subscriber per publication).
    deliveries: AtomicU64,
}

const STRIPES: usize = 64;

impl Broker {
    pub fn new(history_meta_ttl: Duration, topic_prefix: String) -> Broker {
        Broker {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            history_meta_ttl,
            topic_prefix: topic_prefix.into(),
            deliveries: AtomicU64::new(0),
        }
    }

    /// The engine topic of `channel`: the name itself (one copy shared by session, broker and engine) unless
    /// this broker serves a tenant.
    pub fn topic(&self, channel: &Arc<str>) -> Arc<str> {
        if self.topic_prefix.is_empty() {
            channel.clone()
        } else {
            format!("{}{channel}", self.topic_prefix).into()
        }
    }

    /// Publication pushes queued to subscribers so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Relaxed)
    }

    /// What [`Broker::topic`] puts before a channel's name.
    pub fn topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    pub fn topic_str<'c>(&self, channel: &'c str) -> std::borrow::Cow<'c, str> {
        if self.topic_prefix.is_empty() {
            channel.into()
        } else {
            format!("{}{channel}", self.topic_prefix).into()
        }
    }

    fn lock(&self, channel: &str) -> MutexGuard<'_, Stripe> {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in channel.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        self.stripes[(h % STRIPES as u64) as usize].lock()
    }

    fn entry<'m>(map: &'m mut Stripe, channel: &str) -> &'m mut Channel {
        Self::entry_with(map, channel, || channel.into())
    }

    fn entry_with<'m>(map: &'m mut Stripe, channel: &str, owned: impl FnOnce() -> Arc<str>) -> &'m mut Channel {
        if !map.contains_key(channel) {
            map.insert(owned(), Channel::default());
        }
        map.get_mut(channel).expect("inserted")
    }

    /// The channel's stream, created (with a fresh epoch) if it has none and history is on.
    fn stream<'c>(ch: &'c mut Channel, ns: &NamespaceOptions, now: Instant) -> Option<&'c mut Stream> {
        if !ns.history_enabled() {
            return None;
        }
        let s = ch.stream.get_or_insert_with(|| Box::new(Stream::new(new_epoch(), now)));
        s.trim(now, ns.history_size, ns.history_ttl);
        Some(s)
    }

    /// Publishes `p.data` (raw JSON) to `p.channel`: appends it to history when the namespace keeps one, and
    /// queues the encoded push to every shard.
    pub fn publish(&self, handle: &EngineHandle, p: Publish<'_>) -> Result<Option<Position>, ErrorCode> {
        let Publish { channel, ns, data, info, tags, skip_history } = p;
        if channel.contains('\0') {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let now = Instant::now();
        let mut map = self.lock(channel);
        let mut position = None;
        let publication = if !skip_history && ns.history_enabled() {
            {
                let ch = Self::entry(&mut map, channel);
                let stream = Self::stream(ch, ns, now).expect("history is on");
                let mut json = None;
                let offset = stream.append(now, ns.history_size, ns.history_ttl, |offset| {
                    let p: Arc<str> = protocol::publication(data, info, offset, tags).into();
                    json = Some(p.clone());
                    p
                });
                position = Some(Position { offset, epoch: stream.epoch().clone() });
                json.expect("append calls make")
            }
        } else {
            protocol::publication(data, info, 0, tags).into()
        };
        let Some(ch) = map.get(channel) else { return Ok(position) };
        let frame = protocol::push(channel, "pub", &publication);
        ch.fan_out(handle, &self.topic_str(channel), &frame).map_err(|_| ErrorCode::INTERNAL)?;
        self.deliveries.fetch_add(ch.subscribers as u64, Relaxed);
        Ok(position)
    }

    /// Takes a subscription: reads the position (and the recovered publications), queues the topic
    /// subscriptions to the connection's shard, adds presence and publishes the join — in one critical
    /// section, so that the reply's position and the live stream meet exactly.
    pub fn subscribe(&self, handle: &EngineHandle, s: Subscribe<'_>) -> Result<Subscribed, ErrorCode> {
        if s.channel.contains('\0') {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let now = Instant::now();
        let mut map = self.lock(s.channel);
        let ch = Self::entry_with(&mut map, s.channel, || s.channel.clone());
        let mut out = Subscribed::default();
        if let Some(stream) = Self::stream(ch, s.ns, now) {
            if s.positioned {
                out.position = Some(Position { offset: stream.top(), epoch: stream.epoch().clone() });
            }
            if let Some((epoch, offset)) = s.recover {
                out.recovery = Some(stream.recover(epoch, offset, s.recovery_limit));
            }
        }
        handle.subscribe(s.conn, self.topic(s.channel)).map_err(|_| ErrorCode::INTERNAL)?;
        if s.join_leave {
            handle.subscribe(s.conn, join_leave_topic(&self.topic_str(s.channel))).map_err(|_| ErrorCode::INTERNAL)?;
        }
        ch.add_subscriber(s.conn.shard());
        if let Some(p) = s.presence {
            let info = p.info_json(&s.client);
            ch.presence.get_or_insert_with(Default::default).insert(s.client, p);
            if s.ns.join_leave {
                let frame = protocol::push(s.channel, "join", &format!("{{\"info\":{info}}}"));
                let _ = ch.fan_out(handle, &join_leave_topic(&self.topic_str(s.channel)), &frame);
            }
        }
        Ok(out)
    }

    /// Ends a subscription: drops the topic subscriptions (if the connection lives), the presence entry,
    /// publishes the leave.
    pub fn unsubscribe(&self, handle: &EngineHandle, u: Unsubscribe<'_>) {
        let mut map = self.lock(u.channel);
        let topic = self.topic_str(u.channel);
        if let Some(conn) = u.conn {
            let _ = handle.unsubscribe(conn, &topic);
            if u.join_leave {
                let _ = handle.unsubscribe(conn, &join_leave_topic(&topic));
            }
        }
        let Some(ch) = map.get_mut(u.channel) else { return };
        ch.remove_subscriber(u.shard);
        if u.had_presence {
            if let Some(p) = ch.presence.as_mut().and_then(|m| m.remove(&u.client)) {
                if u.emit_leave {
                    let frame = protocol::push(u.channel, "leave", &format!("{{\"info\":{}}}", p.info_json(&u.client)));
                    let _ = ch.fan_out(handle, &join_leave_topic(&topic), &frame);
                }
            }
        }
        if ch.unused() {
            map.remove(u.channel);
        }
    }

    /// Presence of `channel`: (client, entry) pairs.
    pub fn presence(&self, channel: &str) -> Vec<(ClientId, Presence)> {
        let map = self.lock(channel);
        let Some(presence) = map.get(channel).and_then(|ch| ch.presence.as_ref()) else { return Vec::new() };
        presence.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// (clients, distinct users) in `channel`'s presence.
    pub fn presence_stats(&self, channel: &str) -> (usize, usize) {
        let map = self.lock(channel);
        let Some(presence) = map.get(channel).and_then(|ch| ch.presence.as_ref()) else { return (0, 0) };
        let mut users: Vec<&str> = presence.values().map(|p| &*p.user).collect();
        users.sort_unstable();
        users.dedup();
        (presence.len(), users.len())
    }

    /// A history page and the stream's position. `since` with another epoch is error 112.
    pub fn history(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
        since: Option<(u64, &str)>,
        limit: usize,
        reverse: bool,
    ) -> Result<(Vec<Arc<str>>, Position), ErrorCode> {
        if !ns.history_enabled() {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        let now = Instant::now();
        let mut map = self.lock(channel);
        let ch = Self::entry(&mut map, channel);
        let stream = Self::stream(ch, ns, now).expect("history is on");
        if let Some((_, epoch)) = since {
            if !epoch.is_empty() && epoch != &**stream.epoch() {
                return Err(ErrorCode::UNRECOVERABLE_POSITION);
            }
        }
        let pubs = stream.page(since.map(|s| s.0), limit, reverse);
        Ok((pubs, Position { offset: stream.top(), epoch: stream.epoch().clone() }))
    }

    pub fn history_remove(&self, channel: &str) {
        let mut map = self.lock(channel);
        if let Some(stream) = map.get_mut(channel).and_then(|c| c.stream.as_mut()) {
            stream.clear();
        }
    }

    /// Channels with at least one subscriber on this node whose name matches `pattern` (`*` wildcards; empty
    /// matches all), with their subscriber counts.
    pub fn channels(&self, pattern: &str) -> Vec<(Arc<str>, u32)> {
        let mut out = Vec::new();
        for stripe in self.stripes.iter() {
            let map = stripe.lock();
            for (name, ch) in map.iter() {
                if ch.subscribers > 0 && (pattern.is_empty() || glob(pattern, name)) {
                    out.push((name.clone(), ch.subscribers));
                }
            }
        }
        out.sort();
        out
    }

    /// (channels with subscribers, subscriptions, history entries held, channels with a stream).
    pub fn totals(&self) -> (usize, u64, u64, usize) {
        let (mut channels, mut subs, mut entries, mut streams) = (0, 0, 0, 0);
        for stripe in self.stripes.iter() {
            let map = stripe.lock();
            for ch in map.values() {
                channels += usize::from(ch.subscribers > 0);
                subs += ch.subscribers as u64;
                if let Some(s) = &ch.stream {
                    entries += s.len() as u64;
                    streams += 1;
                }
            }
        }
        (channels, subs, entries, streams)
    }

    /// Bytes the channel tables have allocated (bucket arrays only; see [`Registry::table_bytes`]).
    ///
    /// [`Registry::table_bytes`]: super::registry::Registry::table_bytes
    pub fn table_bytes(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().allocation_size()).sum()
    }

    /// Forgets streams whose entries and meta have expired, one stripe at a time.
    pub fn sweep(&self, now: Instant, ns_of: impl Fn(&str) -> Option<NamespaceOptions>) {
        for stripe in self.stripes.iter() {
            let mut map = stripe.lock();
            map.retain(|name, ch| {
                if let Some(stream) = ch.stream.as_mut() {
                    match ns_of(name) {
                        Some(ns) if ns.history_enabled() => {
                            stream.trim(now, ns.history_size, ns.history_ttl);
                            let meta =
                                if ns.history_meta_ttl.is_zero() { self.history_meta_ttl } else { ns.history_meta_ttl };
                            if stream.expired(now, meta) {
                                ch.stream = None;
                            }
                        }
                        _ => ch.stream = None,
                    }
                }
                !ch.unused()
            });
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("chat:*", "chat:1"));
        assert!(!glob("chat:*", "news:1"));
        assert!(glob("*:1", "chat:1"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("exact", "exact"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn client_ids_round_trip() {
        let id = *uuid::Uuid::new_v4().as_bytes();
        let text = client_text(&id);
        assert_eq!(text.len(), 36);
        assert_eq!(parse_client(&text), Some(id));
        assert_eq!(parse_client("nope"), None);
    }
}
