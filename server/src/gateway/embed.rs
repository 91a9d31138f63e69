//! The gateway as a library: [`GatewayServer`] runs the Centrifugo-compatible client protocol and server API
//! on an engine of its own, on a port of its own, beside a program's own routes (its axum or hyper app on
//! another port), built from a config struct rather than a file, with the program's own [`Authorizer`]
//! deciding who connects and subscribes, and the server API callable in process ([`GatewayServer::api`]).
//! The program may also serve the endpoint on its own port and routes: it checks the upgrade with
//! [`GatewayServer::admit`], answers the 101 itself and hands the socket over with [`GatewayServer::adopt`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use tetherd::gateway::authorizer::{Authorizer, ConnectDecision, Credentials};
//! use tetherd::gateway::config::GatewayConfig;
//! use tetherd::gateway::embed::{GatewayServer, GatewayServerConfig};
//!
//! struct Everyone;
//! impl Authorizer for Everyone {
//!     fn connect(&self, _request: &tether::UpgradeRequest) -> ConnectDecision {
//!         ConnectDecision::Allow(Credentials { user: "guest".into(), ..Default::default() })
//!     }
//! }
//!
//! let gateway = GatewayConfig::from_json(r#"{"channel": {"without_namespace": {"allow_subscribe_for_client": true}}}"#)
//!     .unwrap();
//! let engine = tether::Config { listen: Some("127.0.0.1:8000".parse().unwrap()), ..Default::default() };
//! let server = GatewayServer::start(GatewayServerConfig { engine, gateway, authorizer: Some(Arc::new(Everyone)) })
//!     .unwrap();
//! // Clients connect to ws://127.0.0.1:8000/connection/websocket; the program publishes in process:
//! server.api("publish", r#"{"channel": "news", "data": {"text": "hello"}}"#).unwrap();
//! server.wait();
//! ```

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::proto::Role;
use tether::{Adoption, Engine, EngineHandle, HttpError, UpgradeRequest};

use super::admission::{admit, Admission};

use super::authorizer::Authorizer;
use super::client::GatewayHandler;
use super::config::GatewayConfig;
use super::tenants::{Initial, TenantTable};
use super::{Gateway, Notice};

/// What a [`GatewayServer`] is made of.
pub struct GatewayServerConfig {
    /// The engine: `listen` is the gateway's own address (clients connect to `/connection/websocket` there,
    /// the API answers on `/api/<method>`), plus shards, keepalive of the TCP sockets and capacity. The
    /// gateway adds its own connection profile (no WebSocket pings: the protocol pings; its message size
    /// limit).
    pub engine: tether::Config,
    /// The Centrifugo-format settings: token keys, namespaces, history, presence, limits. Build it with
    /// `GatewayConfig::default()` and its fields, or parse it (`from_json`, `from_toml`, `from_yaml`).
    pub gateway: GatewayConfig,
    /// The program's connect and subscribe decisions; `None` = the config's rules alone.
    pub authorizer: Option<Arc<dyn Authorizer>>,
}

/// A running gateway: its own engine and shards.
pub struct GatewayServer {
    engine: Engine<GatewayHandler>,
    table: Arc<TenantTable>,
}

impl GatewayServer {
    /// Checks the config (token keys), starts the engine and returns once it listens.
    pub fn start(config: GatewayServerConfig) -> Result<GatewayServer, String> {
        let GatewayServerConfig { mut engine, gateway, authorizer } = config;
        let max_message_size = gateway.message_size_limit;
        let profile = engine.add_profile(Gateway::engine_profile(max_message_size, &engine));
        let initial = Initial { default: Some(gateway), named: Vec::new(), authorizer };
        // No files behind it: a reload (POST /admin/reload) finds nothing to re-read and is refused without
        // an admin key anyway.
        let table = TenantTable::new(initial, None, Box::new(|| Ok(Vec::new())), None, profile, max_message_size)?;
        let table = Arc::new(table);
        let shared = table.clone();
        let engine = Engine::start(engine, move |_shard| GatewayHandler::new(shared.clone()))
            .map_err(|e| format!("cannot start the engine: {e}"))?;
        Ok(GatewayServer { engine, table })
    }

    /// The address clients connect to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.engine.local_addr()
    }

    /// The engine's handle (stats, shutdown; sends go through the gateway's API instead).
    pub fn handle(&self) -> EngineHandle {
        self.engine.handle()
    }

    /// Calls a server API method in process, as `POST /api/<method>` with `body` would (no API key needed):
    /// `publish`, `broadcast`, `presence`, `presence_stats`, `history`, `history_remove`, `subscribe`,
    /// `unsubscribe`, `disconnect`, `refresh`, `channels`, `info`, `batch`. Returns the `result` object's
    /// JSON, or the API error's code and message. Callable from any thread; never blocks on a shard. With the
    /// Redis engine (`engine.type = "redis"`), a method that reads or writes Redis waits for its answer (at
    /// most 5 s; error 100 beyond).
    pub fn api(&self, method: &str, body: &str) -> Result<String, (u32, String)> {
        let tenants = self.table.snapshot();
        let Some(gw) = tenants.default.as_ref() else { return Err((0, "no gateway".into())) };
        let notifier = self.engine.notifier();
        let notify = |shard: usize, notice: Notice| notifier.notify(shard, notice);
        let handle = self.engine.handle();
        let timeout = Duration::from_secs(5);
        if let Some(r) = super::api::redis_call(gw, &handle, &notify, method, body.as_bytes(), timeout) {
            return r.map_err(|e| (e.0 .0, e.1));
        }
        super::api::call(gw, &handle, &notify, method, body.as_bytes()).map_err(|e| (e.0 .0, e.1))
    }

    /// Checks an upgrade the program received on its own HTTP server (its own port and routes) as the
    /// gateway's endpoint would: Origin, encoding, connection rate, the [`Authorizer`]. On `Ok`, answer the
    /// 101 with [`Admission::subprotocol`] and hand the upgraded socket to [`GatewayServer::adopt`]; on `Err`,
    /// answer with that HTTP status and message. Never blocks.
    pub fn admit(&self, request: &UpgradeRequest) -> Result<Admission, HttpError> {
        let tenants = self.table.snapshot();
        let Some(gw) = tenants.default.as_ref() else {
            return Err(HttpError::new(503, "Service Unavailable", "no gateway"));
        };
        admit(gw, Instant::now(), request)
    }

    /// Hands a socket the program upgraded itself (after [`GatewayServer::admit`]) to the gateway's engine:
    /// from then on it is a gateway client like one that connected to the gateway's own port (the gateway's
    /// connection profile, its protocol pings, limits and close codes). `leftover`: the bytes the program's
    /// HTTP server read past the request. See [`EngineHandle::adopt`].
    pub fn adopt(&self, socket: impl Into<OwnedFd>, leftover: Vec<u8>, admission: Admission) -> Adoption {
        let profile = admission.gw.profile;
        self.engine.handle().adopt_with_profile(socket, Role::Server, leftover, profile, admission)
    }

    /// Stop accepting, close every client (they reconnect elsewhere) and let the shards exit within `drain`.
    pub fn shutdown(&self, drain: Duration) {
        self.engine.handle().shutdown(drain);
    }

    /// Wait for the shards to exit (after [`GatewayServer::shutdown`]).
    pub fn wait(self) {
        self.engine.wait();
    }
}
