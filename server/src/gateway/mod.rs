//! The gateway: Centrifugo's client protocol v2 (JSON) and server HTTP API on the engine, so that the stock
//! Centrifugo SDKs and API clients work against tetherd unchanged (GATEWAY-PROTOCOL.md).
//!
//! It is an application of the engine (a [`tether::Handler`]), not a part of the shard loop:
//!
//! | module | concern |
//! | --- | --- |
//! | `config` | the Centrifugo-format configuration file, namespaces |
//! | `auth` | JWT verification of connection and subscription tokens |
//! | `protocol` | commands, replies, pushes, codes; the JSON codec |
//! | `session` | one client's state: phase, user, subscriptions, ping and expiry deadlines |
//! | `client` | the client protocol: each command of a connected (or connecting) client |
//! | `broker` | channels: history streams, presence, subscriber counts; where a publication gets its offset |
//! | `history` | one channel's stream and the recovery decision |
//! | `registry` | user -> connections, client id -> connection |
//! | `redis_engine` | `engine.type = "redis"`: channels, history and presence shared by nodes through Redis |
//! | `api` | the server HTTP API |
//! | `admin` | `POST /admin/reload` |
//! | `metrics` | the gateway's counters for `/metrics` |
//! | `tenants` | many gateways on one node: routes `/t/NAME/...`, the table shards read, reload |
//! | `admission` | whether an upgrade may open (origin, encoding, connection rate, the embedder's say) |
//! | `authorizer` | the embedder's connect and subscribe decisions (in-process connect/subscribe proxy) |
//! | `embed` | [`embed::GatewayServer`]: the gateway as a library, on a port of its own |
//!
//! A publication flows: API call or client publish -> [`broker::Broker::publish`] (offset and epoch, history
//! append, the push encoded once) -> the engine's topic on every shard -> every subscriber's send queue.

pub mod admin;
pub mod admission;
pub mod api;
pub mod auth;
pub mod authorizer;
pub mod broker;
pub mod client;
pub mod config;
pub mod embed;
pub mod history;
pub mod metrics;
pub mod protocol;
pub mod redis_engine;
pub mod registry;
pub mod session;
pub mod tenants;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tether::{ConnId, Profile};

use self::auth::Verifier;
use self::broker::Broker;
use self::config::GatewayConfig;
use self::metrics::GatewayMetrics;
use self::registry::Registry;
use self::session::Timing;

/// What a gateway keeps across a reload of its config: channels, connections, counters.
pub struct State {
    pub broker: Broker,
    /// The Redis engine's thread when `engine.type = "redis"`: channels, history and presence then live in
    /// Redis, shared with the other nodes (the broker keeps only what it must on this node).
    pub redis: Option<redis_engine::RedisLink>,
    pub registry: Registry,
    pub metrics: GatewayMetrics,
    /// Connected clients (past `connect`), for `client.connection_limit`.
    connected: AtomicUsize,
    /// Set when a reload removed this tenant: its upgraded clients may no longer connect.
    retired: AtomicBool,
    /// New connections admitted in the current second, for `client.connection_rate_limit`.
    admitted: Mutex<(Instant, usize)>,
    /// Client publications admitted in the current second, for `client.publication_rate_limit`.
    published: Mutex<(Instant, usize)>,
    /// This node's id in `info`.
    pub node_id: String,
    pub started: Instant,
    pub started_wall: SystemTime,
}

/// One gateway (the `--gateway` one, or one tenant's): its config and the state it shares with the
/// gateways that earlier versions of its config built. Every shard's handler and the API share it.
pub struct Gateway {
    /// The tenant's name; `None` for the gateway of `--gateway`.
    pub tenant: Option<Arc<str>>,
    pub config: GatewayConfig,
    pub verifier: Verifier,
    /// Keys for subscription tokens when they differ from the connection tokens'.
    pub sub_verifier: Option<Verifier>,
    pub state: Arc<State>,
    /// The config's deadlines, counted from the state's epoch.
    pub timing: Timing,
    /// The engine profile of gateway connections (set once the engine config is built).
    pub profile: tether::ProfileId,
    /// Set when a reload put a new config of the same gateway in force: connections move to it at their
    /// next event.
    superseded: AtomicBool,
    /// The embedder's connect and subscribe decisions, asked before the config's rules.
    pub authorizer: Option<Arc<dyn self::authorizer::Authorizer>>,
}

impl std::ops::Deref for Gateway {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl Gateway {
    /// Builds a gateway from a loaded config. `profile` is the engine profile registered for client
    /// connections (see [`Gateway::engine_profile`]); `tenant` names it (its channels then live in their own
    /// engine topics and its routes under `/t/NAME/`).
    pub fn new(config: GatewayConfig, profile: tether::ProfileId) -> Result<Gateway, String> {
        Gateway::tenant(None, config, profile)
    }

    pub fn tenant(tenant: Option<&str>, config: GatewayConfig, profile: tether::ProfileId) -> Result<Gateway, String> {
        let prefix = tenant.map_or_else(String::new, |t| format!("\u{1}{t}\u{0}"));
        let redis = match &config.redis {
            Some(options) => {
                // Tenants' keys never meet: `{prefix}.t:NAME.client.{channel}` beside `{prefix}.client.{channel}`.
                let keys = match tenant {
                    Some(t) => format!("{}.t:{t}", options.prefix),
                    None => options.prefix.clone(),
                };
                Some(redis_engine::RedisLink::start(options, keys, prefix.clone())?)
            }
            None => None,
        };
        let state = State {
            redis,
            broker: Broker::new(config.history_meta_ttl, prefix),
            registry: Registry::default(),
            metrics: GatewayMetrics::default(),
            connected: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            admitted: Mutex::new((Instant::now(), 0)),
            published: Mutex::new((Instant::now(), 0)),
            node_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        };
        Gateway::with_state(tenant.map(Arc::from), config, profile, Arc::new(state))
    }

    /// The same gateway with a new config (a reload): channels, history, presence and connections carry
    /// over; once it is in force, call [`Gateway::supersede`] on this one and connections move to the new
    /// config at their next event.
    pub fn reconfigured(&self, config: GatewayConfig) -> Result<Gateway, String> {
        if config.redis != self.config.redis {
            tracing::warn!(
                tenant = self.tenant.as_deref().unwrap_or("(gateway)"),
                "engine options changed in a reload: they take effect at the next restart"
            );
        }
        let gw = Gateway::with_state(self.tenant.clone(), config, self.profile, self.state.clone())?;
        Ok(gw.with_authorizer(self.authorizer.clone()))
    }

    /// The same gateway asking `authorizer` at each upgrade and token-less subscribe.
    pub fn with_authorizer(mut self, authorizer: Option<Arc<dyn self::authorizer::Authorizer>>) -> Gateway {
        self.authorizer = authorizer;
        self
    }

    fn with_state(
        tenant: Option<Arc<str>>,
        config: GatewayConfig,
        profile: tether::ProfileId,
        state: Arc<State>,
    ) -> Result<Gateway, String> {
        let verifier = Verifier::new(&config.token).map_err(|e| format!("client.token: {e}"))?;
        let sub_verifier = match &config.subscription_token {
            Some(keys) => Some(Verifier::new(keys).map_err(|e| format!("client.subscription_token: {e}"))?),
            None => None,
        };
        let timing = Timing {
            epoch: state.started,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            stale_close_delay: config.stale_close_delay,
            expired_close_delay: config.expired_close_delay,
            expired_sub_close_delay: config.expired_sub_close_delay,
        };
        Ok(Gateway {
            tenant,
            config,
            verifier,
            sub_verifier,
            state,
            timing,
            profile,
            superseded: AtomicBool::new(false),
            authorizer: None,
        })
    }

    /// The engine profile for client connections: no WebSocket-level pings (the protocol's own `{}` pings
    /// keep the connection alive and find dead peers, as the SDKs expect), the configured message size
    /// limit (1009 beyond), and a slow subscriber whose send queue overflows closed with 3008 "slow" (the
    /// SDKs reconnect and recover) instead of 1008. With tenants, `max_message_size` is the largest of their
    /// limits and each tenant's own is checked per message.
    pub fn engine_profile(max_message_size: usize, base: &tether::Config) -> Profile {
        Profile {
            ping_interval: None,
            max_message_size,
            overflow_close: (protocol::Disconnect::SLOW.code, protocol::Disconnect::SLOW.reason),
            ..Profile::of(base)
        }
    }

    pub fn subscription_verifier(&self) -> &Verifier {
        self.sub_verifier.as_ref().unwrap_or(&self.verifier)
    }

    /// Unix seconds now.
    pub fn now_unix() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Counts a connected client against `client.connection_limit`; false (and nothing counted) beyond it.
    pub fn admit_client(&self) -> bool {
        let n = self.state.connected.fetch_add(1, Ordering::Relaxed);
        let limit = self.config.connection_limit;
        if limit > 0 && n >= limit {
            self.state.connected.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A reload replaced this config with a newer one.
    pub fn supersede(&self) {
        // Release / Acquire: a shard that sees the flag also sees the table the reload put in force.
        self.superseded.store(true, Ordering::Release);
    }

    pub fn superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// A reload removed this tenant.
    pub fn retire(&self) {
        self.state.retired.store(true, Ordering::Relaxed);
    }

    pub fn retired(&self) -> bool {
        self.state.retired.load(Ordering::Relaxed)
    }

    pub fn client_gone(&self) {
        self.state.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connected clients (past `connect`) on this node.
    pub fn connected(&self) -> usize {
        self.state.connected.load(Ordering::Relaxed)
    }

    /// Counts a new connection against `client.connection_rate_limit` (per second, fixed windows); false
    /// beyond it.
    pub fn admit_connection(&self, now: Instant) -> bool {
        admit_in_window(&self.state.admitted, self.config.connection_rate_limit, now)
    }

    /// Counts a client's publication against `client.publication_rate_limit` (over all of this gateway's
    /// connections on this node, per second, fixed windows); false beyond it.
    pub fn admit_publication(&self, now: Instant) -> bool {
        admit_in_window(&self.state.published, self.config.publication_rate_limit, now)
    }
}

/// One more event in the current one-second window of `w`, if fewer than `limit` (0: unlimited) came in it.
fn admit_in_window(w: &Mutex<(Instant, usize)>, limit: usize, now: Instant) -> bool {
    if limit == 0 {
        return true;
    }
    let mut w = w.lock();
    if now.saturating_duration_since(w.0) >= Duration::from_secs(1) {
        *w = (now, 0);
    }
    if w.1 >= limit {
        return false;
    }
    w.1 += 1;
    true
}

/// What the API (on any thread) asks of the shard that holds a connection.
#[derive(Debug)]
pub enum Notice {
    /// Server-side subscribe: the client gets a `subscribe` push.
    Subscribe { conn: ConnId, channel: Arc<str>, info: Option<Arc<str>>, data: Option<Arc<str>> },
    /// Server-side unsubscribe: the client gets an `unsubscribe` push (code 2000).
    Unsubscribe { conn: ConnId, channel: Arc<str> },
    /// Refresh the connection's expiry (`expire_at` unix seconds; `None`: never), or expire it now.
    Refresh { conn: ConnId, expired: bool, expire_at: Option<u64> },
    /// A job of the Redis engine finished: its reply, or its API answer.
    Redis(Box<redis_engine::Done>),
}

pub use client::GatewayHandler;
