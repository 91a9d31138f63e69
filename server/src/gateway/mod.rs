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
//! | `api` | the server HTTP API |
//! | `metrics` | the gateway's counters for `/metrics` |
//!
//! A publication flows: API call or client publish -> [`broker::Broker::publish`] (offset and epoch, history
//! append, the push encoded once) -> the engine's topic on every shard -> every subscriber's send queue.

pub mod api;
pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod history;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod session;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tether::{ConnId, Profile};

use self::auth::Verifier;
use self::broker::Broker;
use self::config::GatewayConfig;
use self::metrics::GatewayMetrics;
use self::registry::Registry;

/// The node-wide state every shard's handler and the API share.
pub struct Gateway {
    pub config: GatewayConfig,
    pub verifier: Verifier,
    /// Keys for subscription tokens when they differ from the connection tokens'.
    pub sub_verifier: Option<Verifier>,
    pub broker: Broker,
    pub registry: Registry,
    pub metrics: GatewayMetrics,
    /// This node's id in `info`.
    pub node_id: String,
    pub started: Instant,
    pub started_wall: SystemTime,
    /// The engine profile of gateway connections (set once the engine config is built).
    pub profile: tether::ProfileId,
}

impl Gateway {
    /// Builds the shared state from a loaded config. `profile` is the engine profile registered for client
    /// connections (see [`Gateway::engine_profile`]).
    pub fn new(config: GatewayConfig, profile: tether::ProfileId) -> Result<Gateway, String> {
        let verifier = Verifier::new(&config.token).map_err(|e| format!("client.token: {e}"))?;
        let sub_verifier = match &config.subscription_token {
            Some(keys) => Some(Verifier::new(keys).map_err(|e| format!("client.subscription_token: {e}"))?),
            None => None,
        };
        let broker = Broker::new(config.history_meta_ttl);
        Ok(Gateway {
            config,
            verifier,
            sub_verifier,
            broker,
            registry: Registry::default(),
            metrics: GatewayMetrics::default(),
            node_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            profile,
        })
    }

    /// The engine profile for client connections: no WebSocket-level pings (the protocol's own `{}` pings
    /// keep the connection alive and find dead peers, as the SDKs expect), the configured message size
    /// limit (1009 beyond), and a slow subscriber whose send queue overflows closed with 3008 "slow" (the
    /// SDKs reconnect and recover) instead of 1008.
    pub fn engine_profile(config: &GatewayConfig, base: &tether::Config) -> Profile {
        Profile {
            ping_interval: None,
            max_message_size: config.message_size_limit,
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
}

pub use client::GatewayHandler;
