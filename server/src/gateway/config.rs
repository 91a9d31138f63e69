//! The gateway's configuration: a Centrifugo v6 configuration file (JSON, TOML or YAML) read into
//! [`GatewayConfig`].
//!
//! Option names, nesting and defaults are Centrifugo v6's (`internal/configtypes/types.go`, `namespace.go`,
//! `internal/config/validate.go`). The file is parsed into a `serde_json::Value` tree first (TOML and YAML are
//! converted to the same tree), then the options tetherd implements are read from it; every other key present
//! in the file is listed, as a dotted path, in [`GatewayConfig::unknown`] so the caller can warn about it.
//!
//! Durations accept Go duration strings as Centrifugo does (`"25s"`, `"720h"`, `"1m30s"`, `"1.5h"`, `"300ms"`)
//! and, unlike Centrifugo (which reads a bare number as nanoseconds), a plain number is a number of seconds.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

/// Centrifugo's default `client.ping_interval`.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Centrifugo's default `client.pong_timeout`.
const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(8);
/// Centrifugo's default `client.expired_close_delay` and `client.expired_sub_close_delay`.
const DEFAULT_EXPIRED_CLOSE_DELAY: Duration = Duration::from_secs(25);
/// Centrifugo's default `client.stale_close_delay`.
const DEFAULT_STALE_CLOSE_DELAY: Duration = Duration::from_secs(10);
/// Centrifugo's default `channel.history_meta_ttl` (30 days).
const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(720 * 3600);

/// Keys of `client.token` (and of `client.subscription_token`, plus `enabled`) that tetherd reads.
const TOKEN_KEYS: [&str; 6] =
    ["hmac_secret_key", "rsa_public_key", "ecdsa_public_key", "audience", "issuer", "user_id_claim"];

/// Boolean channel options, in the order of [`bool_fields`].
const NS_BOOL_KEYS: [&str; 19] = [
    "presence",
    "join_leave",
    "force_push_join_leave",
    "force_recovery",
    "allow_recovery",
    "force_positioning",
    "allow_positioning",
    "allow_subscribe_for_client",
    "allow_subscribe_for_anonymous",
    "allow_publish_for_client",
    "allow_publish_for_subscriber",
    "allow_publish_for_anonymous",
    "allow_presence_for_client",
    "allow_presence_for_subscriber",
    "allow_presence_for_anonymous",
    "allow_history_for_client",
    "allow_history_for_subscriber",
    "allow_history_for_anonymous",
    "allow_user_limited_channels",
];

/// Non-boolean channel options tetherd reads.
const NS_OTHER_KEYS: [&str; 3] = ["history_size", "history_ttl", "history_meta_ttl"];

/// Keys used to verify JWTs (`client.token` or `client.subscription_token`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenKeys {
    /// `hmac_secret_key`: the HS256/384/512 secret; "" = none.
    pub hmac_secret_key: String,
    /// `rsa_public_key`: PEM for RS256/384/512; "" = none.
    pub rsa_public_key: String,
    /// `ecdsa_public_key`: PEM for ES256/384; "" = none.
    pub ecdsa_public_key: String,
    /// `audience`: required `aud` value; "" = not checked.
    pub audience: String,
    /// `issuer`: required `iss` value; "" = not checked.
    pub issuer: String,
    /// `user_id_claim`: the claim holding the user id; "" = `sub`.
    pub user_id_claim: String,
}

/// Options of a channel namespace (or of `channel.without_namespace`); everything off / zero by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceOptions {
    /// `presence`: keep presence information for channels.
    pub presence: bool,
    /// `join_leave`: send join/leave pushes.
    pub join_leave: bool,
    /// `force_push_join_leave`: push join/leave even if the subscriber did not ask.
    pub force_push_join_leave: bool,
    /// `history_size`: publications kept in history; 0 = no history.
    pub history_size: usize,
    /// `history_ttl`: how long history is kept; zero = no history.
    pub history_ttl: Duration,
    /// `history_meta_ttl`: how long stream meta (offset, epoch) is kept; zero = use
    /// [`GatewayConfig::history_meta_ttl`].
    pub history_meta_ttl: Duration,
    /// `force_recovery`: recovery on for every subscriber.
    pub force_recovery: bool,
    /// `allow_recovery`: a subscriber may ask for recovery.
    pub allow_recovery: bool,
    /// `force_positioning`: positioning on for every subscriber.
    pub force_positioning: bool,
    /// `allow_positioning`: a subscriber may ask for positioning.
    pub allow_positioning: bool,
    /// `allow_subscribe_for_client`: authenticated clients may subscribe without a token.
    pub allow_subscribe_for_client: bool,
    /// `allow_subscribe_for_anonymous`: anonymous clients may subscribe without a token.
    pub allow_subscribe_for_anonymous: bool,
    /// `allow_publish_for_client`: authenticated clients may publish.
    pub allow_publish_for_client: bool,
    /// `allow_publish_for_subscriber`: subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// `allow_publish_for_anonymous`: anonymous clients may publish (with one of the two above).
    pub allow_publish_for_anonymous: bool,
    /// `allow_presence_for_client`: authenticated clients may call presence.
    pub allow_presence_for_client: bool,
    /// `allow_presence_for_subscriber`: subscribers may call presence.
    pub allow_presence_for_subscriber: bool,
    /// `allow_presence_for_anonymous`: anonymous clients may call presence (with one of the two above).
    pub allow_presence_for_anonymous: bool,
    /// `allow_history_for_client`: authenticated clients may call history.
    pub allow_history_for_client: bool,
    /// `allow_history_for_subscriber`: subscribers may call history.
    pub allow_history_for_subscriber: bool,
    /// `allow_history_for_anonymous`: anonymous clients may call history (with one of the two above).
    pub allow_history_for_anonymous: bool,
    /// `allow_user_limited_channels`: `ns:name#42,43` may be subscribed by users 42 and 43 without a token.
    pub allow_user_limited_channels: bool,
}

impl NamespaceOptions {
    /// History is kept: `history_size > 0` and `history_ttl > 0`.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// The boolean fields of `o`, in the order of [`NS_BOOL_KEYS`].
fn bool_fields(o: &mut NamespaceOptions) -> [&mut bool; 19] {
    [
        &mut o.presence,
        &mut o.join_leave,
        &mut o.force_push_join_leave,
        &mut o.force_recovery,
        &mut o.allow_recovery,
        &mut o.force_positioning,
        &mut o.allow_positioning,
        &mut o.allow_subscribe_for_client,
        &mut o.allow_subscribe_for_anonymous,
        &mut o.allow_publish_for_client,
        &mut o.allow_publish_for_subscriber,
        &mut o.allow_publish_for_anonymous,
        &mut o.allow_presence_for_client,
        &mut o.allow_presence_for_subscriber,
        &mut o.allow_presence_for_anonymous,
        &mut o.allow_history_for_client,
        &mut o.allow_history_for_subscriber,
        &mut o.allow_history_for_anonymous,
        &mut o.allow_user_limited_channels,
    ]
}

/// A channel namespace: `channel.namespaces[]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Namespace {
    /// `name`: matches `^[-a-zA-Z0-9_.]{2,}$`, unique.
    pub name: String,
    /// The namespace's channel options.
    pub options: NamespaceOptions,
}

/// The gateway's settings from a Centrifugo v6 configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// `client.token.*`: keys for connection tokens (and subscription tokens unless
    /// [`subscription_token`](Self::subscription_token) is set).
    pub token: TokenKeys,
    /// `client.subscription_token.*` when its `enabled` is true; `None` = subscription tokens use `token`.
    pub subscription_token: Option<TokenKeys>,
    /// `client.allowed_origins`: patterns such as `"https://*.example.com"` or `"*"`.
    pub allowed_origins: Vec<String>,
    /// `client.allow_anonymous_connect_without_token`.
    pub allow_anonymous_connect_without_token: bool,
    /// `client.insecure`: no authentication or permission checks at all.
    pub insecure: bool,
    /// `client.ping_interval`, default 25s; zero = pings disabled (Centrifugo's `-1`).
    pub ping_interval: Duration,
    /// `client.pong_timeout`, default 8s; zero = pong check disabled (Centrifugo's `-1`); must be below
    /// `ping_interval`.
    pub pong_timeout: Duration,
    /// `client.channel_limit`, default 128.
    pub channel_limit: usize,
    /// `client.user_connection_limit`, default 0 = unlimited.
    pub user_connection_limit: usize,
    /// `client.connection_limit`: connected clients of this gateway (tenant) on this node, default 0 =
    /// unlimited (tetherd's `--max-connections` still bounds the node); 3504 beyond.
    pub connection_limit: usize,
    /// `client.connection_rate_limit`: new WebSocket connections per second on this node, default 0 =
    /// unlimited; the upgrade is answered HTTP 503 beyond.
    pub connection_rate_limit: usize,
    /// `client.command_rate_limit`: commands per second one connection may send (a token bucket), default
    /// 100; 0 = unlimited. Beyond it a command gets error 111; a client that keeps going until it owes a
    /// whole burst is closed with 3013.
    pub command_rate_limit: usize,
    /// `client.publication_rate_limit` (Tether's own; Centrifugo has none): publications per second that
    /// clients (not the API) may make over all of this gateway's connections on this node, default 0 =
    /// unlimited. Beyond it a publish command gets error 111. `command_rate_limit` bounds one connection;
    /// this bounds a tenant whose many connections each stay under it.
    pub publication_rate_limit: usize,
    /// `client.command_rate_burst`: the bucket's size, default 0 = automatic: the larger of twice the rate
    /// and `channel_limit` + 32, so that a reconnect that resubscribes every channel in one frame is never
    /// refused.
    pub command_rate_burst: usize,
    /// `client.command_rate_max_pause` (Tether's own), default 1s, 0 = never: after a command refused with
    /// 111, stop reading from that connection until its bucket holds a command again, at most this long.
    /// The client's further commands wait in TCP (its window closes) instead of each being read, parsed and
    /// answered 111; they are answered once the pause ends. A pause is also kept under a quarter of
    /// `client.pong_timeout` ([`GatewayConfig::command_pause_cap`]), so a pong is never read too late.
    pub command_rate_max_pause: Duration,
    /// `client.expired_close_delay`, default 25s.
    pub expired_close_delay: Duration,
    /// `client.expired_sub_close_delay`, default 25s.
    pub expired_sub_close_delay: Duration,
    /// `client.stale_close_delay`, default 10s.
    pub stale_close_delay: Duration,
    /// `client.history_max_publication_limit`, default 300.
    pub history_max_publication_limit: usize,
    /// `client.recovery_max_publication_limit`, default 300.
    pub recovery_max_publication_limit: usize,
    /// `channel.history_meta_ttl`, default 720h.
    pub history_meta_ttl: Duration,
    /// `channel.max_length`, default 255.
    pub channel_max_length: usize,
    /// `http_api.key`; "" = none.
    pub api_key: String,
    /// `http_api.insecure`: the server API needs no key.
    pub api_insecure: bool,
    /// `websocket.message_size_limit`, default 65536.
    pub message_size_limit: usize,
    /// `channel.without_namespace`: options of channels without a namespace.
    pub without_namespace: NamespaceOptions,
    /// `channel.namespaces`.
    pub namespaces: Vec<Namespace>,
    /// `engine.type = "redis"` and `engine.redis.*`: channels, history and presence shared with other nodes
    /// through Redis; `None` = the memory engine (one node).
    pub redis: Option<RedisOptions>,
    /// Dotted paths of options present in the file that tetherd does not implement, e.g. `engine.type`,
    /// `channel.namespaces[chat].subscribe_proxy_enabled`.
    pub unknown: Vec<String>,
}

impl Default for GatewayConfig {
    /// Centrifugo v6's defaults.
    fn default() -> GatewayConfig {
        GatewayConfig {
            token: TokenKeys::default(),
            subscription_token: None,
            allowed_origins: Vec::new(),
            allow_anonymous_connect_without_token: false,
            insecure: false,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            channel_limit: 128,
            user_connection_limit: 0,
            connection_limit: 0,
            connection_rate_limit: 0,
            command_rate_limit: 100,
            command_rate_burst: 0,
            command_rate_max_pause: Duration::from_secs(1),
            publication_rate_limit: 0,
            expired_close_delay: DEFAULT_EXPIRED_CLOSE_DELAY,
            expired_sub_close_delay: DEFAULT_EXPIRED_CLOSE_DELAY,
            stale_close_delay: DEFAULT_STALE_CLOSE_DELAY,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            history_meta_ttl: DEFAULT_HISTORY_META_TTL,
            channel_max_length: 255,
            api_key: String::new(),
            api_insecure: false,
            message_size_limit: 65536,
            without_namespace: NamespaceOptions::default(),
            namespaces: Vec::new(),
            redis: None,
            unknown: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// Reads `path`; the format is chosen by extension: `.json`, `.toml`, `.yaml`/`.yml` (anything else is
    /// read as JSON). Error text names the file and the bad key or value.
    pub fn load(path: &Path) -> Result<GatewayConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let parsed = match ext.as_deref() {
            Some("toml") => GatewayConfig::from_toml(&text),
            Some("yaml" | "yml") => GatewayConfig::from_yaml(&text),
            _ => GatewayConfig::from_json(&text),
        };
        parsed.map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a JSON configuration.
    pub fn from_json(text: &str) -> Result<GatewayConfig, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        GatewayConfig::from_value(&value)
    }

    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<GatewayConfig, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?;
        GatewayConfig::from_value(&toml_to_json(toml::Value::Table(table)))
    }

    /// Parses a YAML configuration (an empty document is an empty configuration).
    pub fn from_yaml(text: &str) -> Result<GatewayConfig, String> {
        let value: Value = serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        GatewayConfig::from_value(&value)
    }

    /// Namespace options for `channel`: the namespace is the part before the first `:` after stripping one
    /// leading `$`; no `:` (or an empty namespace part) gives `without_namespace`; an unknown namespace gives
    /// `None` (error 102 "unknown channel").
    /// The command bucket's size: `client.command_rate_burst`, or when 0 the larger of twice the rate and
    /// `channel_limit` + 32.
    pub fn command_burst(&self) -> usize {
        match self.command_rate_burst {
            0 => (2 * self.command_rate_limit).max(self.channel_limit + 32),
            n => n,
        }
    }

    pub fn namespace_for(&self, channel: &str) -> Option<&NamespaceOptions> {
        let rest = channel.strip_prefix('$').unwrap_or(channel);
        match rest.split_once(':') {
            Some((ns, _)) if !ns.is_empty() => self.namespaces.iter().find(|n| n.name == ns).map(|n| &n.options),
            _ => Some(&self.without_namespace),
        }
    }

    /// The private-channel rule: `channel` starts with `$`.
    pub fn is_private(channel: &str) -> bool {
        channel.starts_with('$')
    }

    /// Reads the known options from a parsed file, collects unknown keys, validates.
    fn from_value(root: &Value) -> Result<GatewayConfig, String> {
        let mut cfg = GatewayConfig::default();
        let Some(root) = object(Some(root), "the top level")? else {
            return Ok(cfg);
        };
        let mut unknown = Vec::new();
        report_unknown(root, "", &["client", "channel", "http_api", "websocket", "engine"], &[], &mut unknown);
        if let Some(engine) = object(root.get("engine"), "engine")? {
            cfg.redis = read_engine(engine, &mut unknown)?;
        }

        if let Some(client) = object(root.get("client"), "client")? {
            read_client(client, &mut cfg, &mut unknown)?;
        }
        if let Some(channel) = object(root.get("channel"), "channel")? {
            read_channel(channel, &mut cfg, &mut unknown)?;
        }
        if let Some(api) = object(root.get("http_api"), "http_api")? {
            report_unknown(api, "http_api", &["key", "insecure"], &[], &mut unknown);
            read_string(api, "http_api", "key", &mut cfg.api_key)?;
            read_bool(api, "http_api", "insecure", &mut cfg.api_insecure)?;
        }
        if let Some(ws) = object(root.get("websocket"), "websocket")? {
            report_unknown(ws, "websocket", &["message_size_limit"], &[], &mut unknown);
            read_usize(ws, "websocket", "message_size_limit", &mut cfg.message_size_limit)?;
        }
        cfg.unknown = unknown;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The longest pause after a refused command: `command_rate_max_pause`, under a quarter of
    /// `pong_timeout` when the pong check is on.
    pub fn command_pause_cap(&self) -> Duration {
        match self.pong_timeout.is_zero() {
            true => self.command_rate_max_pause,
            false => self.command_rate_max_pause.min(self.pong_timeout / 4),
        }
    }

    /// Centrifugo's checks on the options tetherd reads.
    fn validate(&self) -> Result<(), String> {
        if self.command_rate_limit > 0 && self.command_rate_burst > 0 && self.command_rate_burst <= self.channel_limit {
            return Err(format!(
                "client.command_rate_burst ({}) must exceed client.channel_limit ({}): a reconnecting client \
                 resubscribes every channel in one frame",
                self.command_rate_burst, self.channel_limit
            ));
        }
        if !self.ping_interval.is_zero() && !self.pong_timeout.is_zero() && self.pong_timeout >= self.ping_interval {
            return Err(format!(
                "client.pong_timeout ({:?}) must be less than client.ping_interval ({:?})",
                self.pong_timeout, self.ping_interval
            ));
        }
        check_whole_seconds(self.history_meta_ttl, "channel.history_meta_ttl")?;
        validate_options(&self.without_namespace, self.history_meta_ttl, "channel.without_namespace")?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !valid_namespace_name(&ns.name) {
                return Err(format!(
                    "channel.namespaces[{i}].name: invalid namespace name {:?} (must match ^[-a-zA-Z0-9_.]{{2,}}$)",
                    ns.name
                ));
            }
            if self.namespaces[..i].iter().any(|other| other.name == ns.name) {
                return Err(format!("channel.namespaces: namespace name must be unique: {}", ns.name));
            }
            validate_options(&ns.options, self.history_meta_ttl, &format!("channel.namespaces[{}]", ns.name))?;
        }
        Ok(())
    }
}

/// `engine.redis.*` (Centrifugo's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// `engine.redis.address`: one `redis://host:port[/db]` (or `host:port`), or a list: channels are then
    /// spread over the instances by name (client-side sharding), as Centrifugo does.
    pub addresses: Vec<String>,
    /// `engine.redis.prefix`, default `"centrifugo"`: the start of every key and PUB/SUB channel name.
    pub prefix: String,
    /// `engine.redis.presence_ttl`, default 60s: a node's presence entries expire this long after its last
    /// refresh (a node that dies leaves none behind for longer).
    pub presence_ttl: Duration,
    /// `engine.redis.presence_update_interval` (Centrifugo's `client.presence_update_interval`), default 27s.
    pub presence_update_interval: Duration,
    /// `engine.redis.connect_timeout`, default 1s; also the answer timeout of one Redis command.
    pub timeout: Duration,
    /// `engine.redis.cluster_address` was given: `addresses` are a Redis Cluster's seed nodes (sharded
    /// PUB/SUB, keys with the channel as hash tag).
    pub cluster: bool,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            prefix: "centrifugo".into(),
            presence_ttl: Duration::from_secs(60),
            presence_update_interval: Duration::from_secs(27),
            timeout: Duration::from_secs(1),
            cluster: false,
        }
    }
}

/// Reads the `engine` section: `None` for the memory engine.
fn read_engine(engine: &Map<String, Value>, unknown: &mut Vec<String>) -> Result<Option<RedisOptions>, String> {
    report_unknown(engine, "engine", &["type", "redis"], &[], unknown);
    let mut kind = String::from("memory");
    read_string(engine, "engine", "type", &mut kind)?;
    match kind.as_str() {
        "memory" => return Ok(None),
        "redis" => {}
        other => return Err(format!("engine.type: {other:?} is not supported (\"memory\" or \"redis\")")),
    }
    let mut o = RedisOptions::default();
    let Some(redis) = object(engine.get("redis"), "engine.redis")? else { return Ok(Some(o)) };
    const KNOWN: [&str; 6] =
        ["address", "prefix", "presence_ttl", "presence_update_interval", "connect_timeout", "cluster_address"];
    report_unknown(redis, "engine.redis", &KNOWN, &[], unknown);
    let key = if redis.get("cluster_address").is_some_and(|v| !v.is_null()) {
        if redis.get("address").is_some_and(|v| !v.is_null()) {
            return Err("engine.redis: give address or cluster_address, not both".into());
        }
        o.cluster = true;
        "cluster_address"
    } else {
        "address"
    };
    match redis.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) => o.addresses = vec![a.clone()],
        Some(Value::Array(_)) => {
            let mut list = Vec::new();
            read_string_list(redis, "engine.redis", key, &mut list)?;
            if list.is_empty() {
                return Err(format!("engine.redis.{key}: an empty list"));
            }
            o.addresses = list;
        }
        Some(_) => return Err(format!("engine.redis.{key}: expected a string or a list of strings")),
    }
    for a in &mut o.addresses {
        if !a.contains("://") {
            *a = format!("redis://{a}");
        }
    }
    read_string(redis, "engine.redis", "prefix", &mut o.prefix)?;
    read_duration(redis, "engine.redis", "presence_ttl", false, &mut o.presence_ttl)?;
    read_duration(redis, "engine.redis", "presence_update_interval", false, &mut o.presence_update_interval)?;
    read_duration(redis, "engine.redis", "connect_timeout", false, &mut o.timeout)?;
    if o.presence_update_interval >= o.presence_ttl {
        return Err(format!(
            "engine.redis.presence_update_interval ({:?}) must be less than engine.redis.presence_ttl ({:?})",
            o.presence_update_interval, o.presence_ttl
        ));
    }
    Ok(Some(o))
}

/// Reads the `client` section.
fn read_client(client: &Map<String, Value>, cfg: &mut GatewayConfig, unknown: &mut Vec<String>) -> Result<(), String> {
    const KNOWN: [&str; 20] = [
        "token",
        "subscription_token",
        "allowed_origins",
        "allow_anonymous_connect_without_token",
        "insecure",
        "ping_interval",
        "pong_timeout",
        "channel_limit",
        "user_connection_limit",
        "connection_limit",
        "connection_rate_limit",
        "command_rate_limit",
        "command_rate_burst",
        "command_rate_max_pause",
        "publication_rate_limit",
        "expired_close_delay",
        "expired_sub_close_delay",
        "stale_close_delay",
        "history_max_publication_limit",
        "recovery_max_publication_limit",
    ];
    let p = "client";
    report_unknown(client, p, &KNOWN, &[], unknown);
    if let Some(token) = object(client.get("token"), "client.token")? {
        cfg.token = read_token(token, "client.token", &[], unknown)?;
    }
    if let Some(sub) = object(client.get("subscription_token"), "client.subscription_token")? {
        let keys = read_token(sub, "client.subscription_token", &["enabled"], unknown)?;
        let mut enabled = false;
        read_bool(sub, "client.subscription_token", "enabled", &mut enabled)?;
        cfg.subscription_token = enabled.then_some(keys);
    }
    read_string_list(client, p, "allowed_origins", &mut cfg.allowed_origins)?;
    read_bool(client, p, "allow_anonymous_connect_without_token", &mut cfg.allow_anonymous_connect_without_token)?;
    read_bool(client, p, "insecure", &mut cfg.insecure)?;
    read_duration(client, p, "ping_interval", true, &mut cfg.ping_interval)?;
    read_duration(client, p, "pong_timeout", true, &mut cfg.pong_timeout)?;
    read_usize(client, p, "channel_limit", &mut cfg.channel_limit)?;
    read_usize(client, p, "user_connection_limit", &mut cfg.user_connection_limit)?;
    read_usize(client, p, "connection_limit", &mut cfg.connection_limit)?;
    read_usize(client, p, "connection_rate_limit", &mut cfg.connection_rate_limit)?;
    read_usize(client, p, "command_rate_limit", &mut cfg.command_rate_limit)?;
    read_usize(client, p, "command_rate_burst", &mut cfg.command_rate_burst)?;
    read_duration(client, p, "command_rate_max_pause", false, &mut cfg.command_rate_max_pause)?;
    read_usize(client, p, "publication_rate_limit", &mut cfg.publication_rate_limit)?;
    read_duration(client, p, "expired_close_delay", false, &mut cfg.expired_close_delay)?;
    read_duration(client, p, "expired_sub_close_delay", false, &mut cfg.expired_sub_close_delay)?;
    read_duration(client, p, "stale_close_delay", false, &mut cfg.stale_close_delay)?;
    read_usize(client, p, "history_max_publication_limit", &mut cfg.history_max_publication_limit)?;
    read_usize(client, p, "recovery_max_publication_limit", &mut cfg.recovery_max_publication_limit)?;
    Ok(())
}

/// Reads a token section (`client.token` or `client.subscription_token`).
fn read_token(
    obj: &Map<String, Value>,
    prefix: &str,
    extra_known: &[&str],
    unknown: &mut Vec<String>,
) -> Result<TokenKeys, String> {
    report_unknown(obj, prefix, &TOKEN_KEYS, extra_known, unknown);
    let mut keys = TokenKeys::default();
    read_string(obj, prefix, "hmac_secret_key", &mut keys.hmac_secret_key)?;
    read_string(obj, prefix, "rsa_public_key", &mut keys.rsa_public_key)?;
    read_string(obj, prefix, "ecdsa_public_key", &mut keys.ecdsa_public_key)?;
    read_string(obj, prefix, "audience", &mut keys.audience)?;
    read_string(obj, prefix, "issuer", &mut keys.issuer)?;
    read_string(obj, prefix, "user_id_claim", &mut keys.user_id_claim)?;
    Ok(keys)
}

/// Reads the `channel` section.
fn read_channel(
    channel: &Map<String, Value>,
    cfg: &mut GatewayConfig,
    unknown: &mut Vec<String>,
) -> Result<(), String> {
    let p = "channel";
    report_unknown(channel, p, &["history_meta_ttl", "max_length", "without_namespace", "namespaces"], &[], unknown);
    read_duration(channel, p, "history_meta_ttl", false, &mut cfg.history_meta_ttl)?;
    read_usize(channel, p, "max_length", &mut cfg.channel_max_length)?;
    if let Some(wn) = object(channel.get("without_namespace"), "channel.without_namespace")? {
        cfg.without_namespace = read_options(wn, "channel.without_namespace", &[], unknown)?;
    }
    match channel.get("namespaces") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("channel.namespaces[{i}]");
                let Some(obj) = object(Some(item), &at)? else {
                    return Err(format!("{at}: expected an object, got null"));
                };
                let name = match obj.get("name") {
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => return Err(format!("{at}.name: missing namespace name")),
                    Some(v) => return Err(format!("{at}.name: expected a string, got {}", describe(v))),
                };
                let options = read_options(obj, &format!("channel.namespaces[{name}]"), &["name"], unknown)?;
                cfg.namespaces.push(Namespace { name, options });
            }
        }
        Some(v) => return Err(format!("channel.namespaces: expected an array, got {}", describe(v))),
    }
    Ok(())
}

/// Reads channel options (`channel.without_namespace` or one namespace).
fn read_options(
    obj: &Map<String, Value>,
    prefix: &str,
    extra_known: &[&str],
    unknown: &mut Vec<String>,
) -> Result<NamespaceOptions, String> {
    report_unknown(obj, prefix, &NS_BOOL_KEYS, &[&NS_OTHER_KEYS[..], extra_known].concat(), unknown);
    let mut o = NamespaceOptions::default();
    read_usize(obj, prefix, "history_size", &mut o.history_size)?;
    read_duration(obj, prefix, "history_ttl", false, &mut o.history_ttl)?;
    read_duration(obj, prefix, "history_meta_ttl", false, &mut o.history_meta_ttl)?;
    for (key, field) in NS_BOOL_KEYS.iter().zip(bool_fields(&mut o)) {
        read_bool(obj, prefix, key, field)?;
    }
    Ok(o)
}

/// Centrifugo's `validateChannelOptions`, for the options tetherd reads.
fn validate_options(o: &NamespaceOptions, global_meta_ttl: Duration, at: &str) -> Result<(), String> {
    check_whole_seconds(o.history_ttl, &format!("{at}.history_ttl"))?;
    check_whole_seconds(o.history_meta_ttl, &format!("{at}.history_meta_ttl"))?;
    if (o.history_size == 0) != o.history_ttl.is_zero() {
        return Err(format!("{at}: both history_size and history_ttl are required for history"));
    }
    let meta_ttl = if o.history_meta_ttl.is_zero() { global_meta_ttl } else { o.history_meta_ttl };
    if meta_ttl < o.history_ttl {
        return Err(format!(
            "{at}: history_ttl ({:?}) can not be greater than history meta ttl ({meta_ttl:?})",
            o.history_ttl
        ));
    }
    if o.force_recovery && !o.history_enabled() {
        return Err(format!("{at}: both history_size and history_ttl are required for force_recovery"));
    }
    Ok(())
}

/// Centrifugo refuses sub-second precision for history TTLs.
fn check_whole_seconds(d: Duration, at: &str) -> Result<(), String> {
    if d.subsec_nanos() != 0 {
        return Err(format!("{at}: malformed duration {d:?}, sub-second precision is not supported for this key"));
    }
    Ok(())
}

/// Centrifugo v6's namespace name rule: `^[-a-zA-Z0-9_.]{2,}$`.
fn valid_namespace_name(name: &str) -> bool {
    name.len() >= 2 && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `prefix.key`, or `key` at the top level.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Adds to `out` the dotted path of every leaf under each key of `obj` that is in neither known list.
fn report_unknown(obj: &Map<String, Value>, prefix: &str, known: &[&str], more: &[&str], out: &mut Vec<String>) {
    for (key, value) in obj {
        if !known.contains(&key.as_str()) && !more.contains(&key.as_str()) {
            collect_leaves(value, &join(prefix, key), out);
        }
    }
}

/// Adds the dotted paths of the set values under `value` (objects are descended; null, `{}` and `[]` are
/// skipped; arrays and scalars are reported as one path).
fn collect_leaves(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, v) in map {
                collect_leaves(v, &format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) if items.is_empty() => {}
        _ => out.push(path.to_string()),
    }
}

/// The object at `path`; `None` when absent or null; an error naming `path` for any other type.
fn object<'a>(value: Option<&'a Value>, path: &str) -> Result<Option<&'a Map<String, Value>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(v) => Err(format!("{path}: expected an object, got {}", describe(v))),
    }
}

/// A short description of a value for error text: its type and (abridged) content.
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let mut text = value.to_string();
    if text.len() > 60 {
        let mut cut = 57;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    format!("{kind} {text}")
}

/// Reads boolean `key` of `obj` into `out` when present and not null.
fn read_bool(obj: &Map<String, Value>, prefix: &str, key: &str, out: &mut bool) -> Result<(), String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Bool(b)) => {
            *out = *b;
            Ok(())
        }
        Some(v) => Err(format!("{}: expected true or false, got {}", join(prefix, key), describe(v))),
    }
}

/// Reads string `key` of `obj` into `out` when present and not null (a number is taken as its text, as
/// Centrifugo's weakly typed decoding does: `key: 12345` in YAML is the string "12345").
fn read_string(obj: &Map<String, Value>, prefix: &str, key: &str, out: &mut String) -> Result<(), String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            out.clone_from(s);
            Ok(())
        }
        Some(Value::Number(n)) => {
            *out = n.to_string();
            Ok(())
        }
        Some(v) => Err(format!("{}: expected a string, got {}", join(prefix, key), describe(v))),
    }
}

/// Reads a list of strings `key` of `obj` into `out` when present and not null.
fn read_string_list(obj: &Map<String, Value>, prefix: &str, key: &str, out: &mut Vec<String>) -> Result<(), String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            let mut list = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => list.push(s.clone()),
                    v => return Err(format!("{}[{i}]: expected a string, got {}", join(prefix, key), describe(v))),
                }
            }
            *out = list;
            Ok(())
        }
        Some(v) => Err(format!("{}: expected an array of strings, got {}", join(prefix, key), describe(v))),
    }
}

/// Reads non-negative integer `key` of `obj` into `out` when present and not null.
fn read_usize(obj: &Map<String, Value>, prefix: &str, key: &str, out: &mut usize) -> Result<(), String> {
    let Some(value) = obj.get(key).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let n = match value {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
        }
        _ => None,
    };
    match n.and_then(|n| usize::try_from(n).ok()) {
        Some(n) => {
            *out = n;
            Ok(())
        }
        None => Err(format!("{}: expected a non-negative integer, got {}", join(prefix, key), describe(value))),
    }
}

/// Reads duration `key` of `obj` into `out` when present and not null: a Go duration string (`"25s"`,
/// `"1m30s"`, `"720h"`) or a number of seconds. With `negative_disables` a negative value (Centrifugo's `-1`)
/// reads as zero (disabled); otherwise a negative value is an error.
fn read_duration(
    obj: &Map<String, Value>,
    prefix: &str,
    key: &str,
    negative_disables: bool,
    out: &mut Duration,
) -> Result<(), String> {
    let Some(value) = obj.get(key).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let parsed = match value {
        Value::String(s) => parse_go_duration(s.trim()),
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()).and_then(|f| {
            let d = Duration::try_from_secs_f64(f.abs()).ok()?;
            Some((f < 0.0, d))
        }),
        _ => None,
    };
    match parsed {
        Some((false, d)) => {
            *out = d;
            Ok(())
        }
        Some((true, d)) if negative_disables || d.is_zero() => {
            *out = Duration::ZERO;
            Ok(())
        }
        Some((true, _)) => {
            Err(format!("{}: duration must not be negative, got {}", join(prefix, key), describe(value)))
        }
        None => Err(format!(
            "{}: invalid duration {} (expected e.g. \"25s\", \"1m30s\", \"720h\" or a number of seconds)",
            join(prefix, key),
            describe(value)
        )),
    }
}

/// Parses a Go `time.ParseDuration` string (`"300ms"`, `"1.5h"`, `"2h45m"`, `"-1s"`, `"0"`); returns whether
/// it is negative, and its magnitude.
fn parse_go_duration(s: &str) -> Option<(bool, Duration)> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(r) => r.split_at(r.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            _ => return None,
        };
        let whole: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        total = total.checked_add(whole.checked_mul(unit_nanos)?)?;
        if !frac_part.is_empty() {
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().ok()?;
            total = total.checked_add(frac * unit_nanos / 10u128.pow(digits.len() as u32))?;
        }
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    Some((negative, Duration::new(secs, (total % NANOS_PER_SEC) as u32)))
}

/// Converts a TOML value into the JSON tree the reader works on (datetimes become strings).
fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(table.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
        "client": {
            "token": {"hmac_secret_key": "secret", "audience": "tether", "user_id_claim": "uid"},
            "subscription_token": {"enabled": true, "hmac_secret_key": "sub-secret"},
            "allowed_origins": ["https://*.example.com", "http://localhost:3000"],
            "allow_anonymous_connect_without_token": true,
            "ping_interval": "20s",
            "pong_timeout": 5,
            "channel_limit": 64,
            "user_connection_limit": 3,
            "expired_close_delay": "1m30s",
            "history_max_publication_limit": 100
        },
        "channel": {
            "history_meta_ttl": "48h",
            "max_length": 128,
            "without_namespace": {"presence": true, "allow_subscribe_for_client": true},
            "namespaces": [
                {"name": "chat", "presence": true, "join_leave": true, "history_size": 10, "history_ttl": "300s",
                 "force_recovery": true, "allow_publish_for_subscriber": true},
                {"name": "news", "allow_history_for_anonymous": true}
            ]
        },
        "http_api": {"key": "api-key"},
        "websocket": {"message_size_limit": 1048576}
    }"#;

    const TOML: &str = r#"
        [client]
        allowed_origins = ["https://*.example.com", "http://localhost:3000"]
        allow_anonymous_connect_without_token = true
        ping_interval = "20s"
        pong_timeout = 5
        channel_limit = 64
        user_connection_limit = 3
        expired_close_delay = "1m30s"
        history_max_publication_limit = 100

        [client.token]
        hmac_secret_key = "secret"
        audience = "tether"
        user_id_claim = "uid"

        [client.subscription_token]
        enabled = true
        hmac_secret_key = "sub-secret"

        [channel]
        history_meta_ttl = "48h"
        max_length = 128

        [channel.without_namespace]
        presence = true
        allow_subscribe_for_client = true

        [[channel.namespaces]]
        name = "chat"
        presence = true
        join_leave = true
        history_size = 10
        history_ttl = "300s"
        force_recovery = true
        allow_publish_for_subscriber = true

        [[channel.namespaces]]
        name = "news"
        allow_history_for_anonymous = true

        [http_api]
        key = "api-key"

        [websocket]
        message_size_limit = 1048576
    "#;

    const YAML: &str = r#"
client:
  token:
    hmac_secret_key: secret
    audience: tether
    user_id_claim: uid
  subscription_token:
    enabled: true
    hmac_secret_key: sub-secret
  allowed_origins:
    - "https://*.example.com"
    - "http://localhost:3000"
  allow_anonymous_connect_without_token: true
  ping_interval: 20s
  pong_timeout: 5
  channel_limit: 64
  user_connection_limit: 3
  expired_close_delay: 1m30s
  history_max_publication_limit: 100
channel:
  history_meta_ttl: 48h
  max_length: 128
  without_namespace:
    presence: true
    allow_subscribe_for_client: true
  namespaces:
    - name: chat
      presence: true
      join_leave: true
      history_size: 10
      history_ttl: 300s
      force_recovery: true
      allow_publish_for_subscriber: true
    - name: news
      allow_history_for_anonymous: true
http_api:
  key: api-key
websocket:
  message_size_limit: 1048576
"#;

    #[test]
    fn defaults_are_centrifugos() {
        let d = GatewayConfig::default();
        assert_eq!(d.ping_interval, Duration::from_secs(25));
        assert_eq!(d.pong_timeout, Duration::from_secs(8));
        assert_eq!(d.channel_limit, 128);
        assert_eq!(d.user_connection_limit, 0);
        assert_eq!(d.expired_close_delay, Duration::from_secs(25));
        assert_eq!(d.expired_sub_close_delay, Duration::from_secs(25));
        assert_eq!(d.stale_close_delay, Duration::from_secs(10));
        assert_eq!(d.history_max_publication_limit, 300);
        assert_eq!(d.recovery_max_publication_limit, 300);
        assert_eq!(d.history_meta_ttl, Duration::from_secs(720 * 3600));
        assert_eq!(d.channel_max_length, 255);
        assert_eq!(d.message_size_limit, 65536);
        // The tenancy limits: none on connections or publications unless configured, 100 commands a second
        // per connection (Centrifugo's own default), a pause of at most 1 s after a refusal.
        assert_eq!((d.connection_limit, d.connection_rate_limit, d.publication_rate_limit), (0, 0, 0));
        assert_eq!((d.command_rate_limit, d.command_rate_burst), (100, 0));
        assert_eq!(d.command_rate_max_pause, Duration::from_secs(1));
        // ... and they work together: a reconnect that resubscribes every channel it may hold in one frame
        // fits the automatic burst, and a pause never outlasts a quarter of the pong deadline.
        assert!(d.command_burst() > d.channel_limit, "burst {}", d.command_burst());
        assert_eq!(d.command_burst(), 200);
        assert_eq!(d.command_pause_cap(), Duration::from_secs(1).min(d.pong_timeout / 4));
        assert!(d.command_pause_cap() < d.pong_timeout);
        assert!(d.message_size_limit <= tether::Config::default().max_message_size);
        assert!(d.subscription_token.is_none() && d.namespaces.is_empty() && d.unknown.is_empty());
        assert_eq!(d.without_namespace, NamespaceOptions::default());
        assert!(!d.without_namespace.history_enabled());
        // An empty file of each kind gives the defaults.
        assert_eq!(GatewayConfig::from_json("{}").unwrap(), d);
        assert_eq!(GatewayConfig::from_toml("").unwrap(), d);
        assert_eq!(GatewayConfig::from_yaml("").unwrap(), d);
        assert_eq!(GatewayConfig::from_json(r#"{"client": {}, "channel": {"namespaces": []}}"#).unwrap(), d);
    }

    #[test]
    fn json_toml_yaml_agree() {
        let json = GatewayConfig::from_json(JSON).unwrap();
        assert_eq!(GatewayConfig::from_toml(TOML).unwrap(), json);
        assert_eq!(GatewayConfig::from_yaml(YAML).unwrap(), json);

        assert_eq!(json.token.hmac_secret_key, "secret");
        assert_eq!(json.token.audience, "tether");
        assert_eq!(json.token.user_id_claim, "uid");
        assert_eq!(json.subscription_token.as_ref().unwrap().hmac_secret_key, "sub-secret");
        assert_eq!(json.allowed_origins, ["https://*.example.com", "http://localhost:3000"]);
        assert!(json.allow_anonymous_connect_without_token && !json.insecure);
        assert_eq!(json.ping_interval, Duration::from_secs(20));
        assert_eq!(json.pong_timeout, Duration::from_secs(5));
        assert_eq!(json.channel_limit, 64);
        assert_eq!(json.user_connection_limit, 3);
        assert_eq!(json.expired_close_delay, Duration::from_secs(90));
        assert_eq!(json.expired_sub_close_delay, Duration::from_secs(25));
        assert_eq!(json.history_max_publication_limit, 100);
        assert_eq!(json.history_meta_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(json.channel_max_length, 128);
        assert_eq!(json.api_key, "api-key");
        assert_eq!(json.message_size_limit, 1 << 20);
        assert!(json.without_namespace.presence && json.without_namespace.allow_subscribe_for_client);
        assert_eq!(json.namespaces.len(), 2);
        let chat = &json.namespaces[0];
        assert_eq!(chat.name, "chat");
        assert!(chat.options.presence && chat.options.join_leave && chat.options.force_recovery);
        assert!(chat.options.allow_publish_for_subscriber && !chat.options.allow_publish_for_client);
        assert_eq!((chat.options.history_size, chat.options.history_ttl), (10, Duration::from_secs(300)));
        assert!(chat.options.history_enabled());
        assert!(json.namespaces[1].options.allow_history_for_anonymous);
        assert!(json.unknown.is_empty(), "{:?}", json.unknown);
    }

    #[test]
    fn subscription_token_disabled_is_none() {
        let c = GatewayConfig::from_json(r#"{"client": {"subscription_token": {"hmac_secret_key": "x"}}}"#).unwrap();
        assert!(c.subscription_token.is_none());
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn namespace_for() {
        let c = GatewayConfig::from_json(JSON).unwrap();
        let chat = &c.namespaces[0].options;
        assert_eq!(c.namespace_for("chat:1"), Some(chat));
        assert_eq!(c.namespace_for("$chat:x"), Some(chat));
        assert_eq!(c.namespace_for("chat:a:b"), Some(chat));
        assert_eq!(c.namespace_for("news"), Some(&c.without_namespace));
        assert_eq!(c.namespace_for("$news"), Some(&c.without_namespace));
        assert_eq!(c.namespace_for("news:1"), Some(&c.namespaces[1].options));
        assert_eq!(c.namespace_for(":x"), Some(&c.without_namespace));
        assert_eq!(c.namespace_for("nope:1"), None);
        assert_eq!(c.namespace_for("$$chat:1"), None);
        assert!(GatewayConfig::is_private("$chat:x"));
        assert!(!GatewayConfig::is_private("chat:$x"));
    }

    #[test]
    fn unknown_keys_reported() {
        let c = GatewayConfig::from_json(
            r#"{
                "engine": {"type": "redis", "redis": {"address": "localhost:6379", "sentinel_address": "x"}},
                "log": {},
                "proxies": [],
                "consumers": [{"name": "a"}],
                "http_api": {"key": "k", "external": true},
                "client": {"token": {"jwks_public_endpoint": "https://x"}, "queue_max_size": 10,
                           "subscription_token": {"enabled": true, "issuer_regex": "x"}},
                "channel": {
                    "private_prefix": "$",
                    "without_namespace": {"delta_publish": true},
                    "namespaces": [{"name": "chat", "subscribe_proxy_enabled": true, "map": {"mode": "x"}}]
                }
            }"#,
        )
        .unwrap();
        let mut unknown = c.unknown.clone();
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "channel.namespaces[chat].map.mode",
                "channel.namespaces[chat].subscribe_proxy_enabled",
                "channel.private_prefix",
                "channel.without_namespace.delta_publish",
                "client.queue_max_size",
                "client.subscription_token.issuer_regex",
                "client.token.jwks_public_endpoint",
                "consumers",
                "engine.redis.sentinel_address",
                "http_api.external",
            ]
        );
        assert_eq!(c.api_key, "k");
        assert!(c.subscription_token.is_some());
        let redis = c.redis.expect("the redis engine");
        assert_eq!(redis.addresses, ["redis://localhost:6379"]);
        assert_eq!(redis.prefix, "centrifugo");
        assert!(!redis.cluster);
        let cluster = GatewayConfig::from_json(
            r#"{"engine": {"type": "redis", "redis": {"cluster_address": ["10.0.0.1:7000", "redis://10.0.0.2:7000"]}}}"#,
        )
        .unwrap()
        .redis
        .unwrap();
        assert!(cluster.cluster);
        assert_eq!(cluster.addresses, ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
        let both = r#"{"engine": {"type": "redis", "redis": {"address": "a:1", "cluster_address": "b:1"}}}"#;
        assert!(GatewayConfig::from_json(both).unwrap_err().contains("not both"));
        let bad = r#"{"engine": {"type": "nats"}}"#;
        assert!(GatewayConfig::from_json(bad).unwrap_err().contains("engine.type"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("25s"), Some((false, Duration::from_secs(25))));
        assert_eq!(parse_go_duration("720h"), Some((false, Duration::from_secs(720 * 3600))));
        assert_eq!(parse_go_duration("1m30s"), Some((false, Duration::from_secs(90))));
        assert_eq!(parse_go_duration("1.5h"), Some((false, Duration::from_secs(5400))));
        assert_eq!(parse_go_duration("300ms"), Some((false, Duration::from_millis(300))));
        assert_eq!(parse_go_duration("2us"), Some((false, Duration::from_micros(2))));
        assert_eq!(parse_go_duration("-1s"), Some((true, Duration::from_secs(1))));
        assert_eq!(parse_go_duration("0"), Some((false, Duration::ZERO)));
        for bad in ["", "25", "s", "1d", "1.s.", "abc", "-", "1m 30s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
        let c = GatewayConfig::from_json(
            r#"{"client": {"ping_interval": -1, "pong_timeout": "-1s",
            "stale_close_delay": 2.5}}"#,
        )
        .unwrap();
        assert_eq!((c.ping_interval, c.pong_timeout), (Duration::ZERO, Duration::ZERO));
        assert_eq!(c.stale_close_delay, Duration::from_millis(2500));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = GatewayConfig::from_json(r#"{"client": {"expired_close_delay": "25x"}}"#).unwrap_err();
        assert!(e.contains("client.expired_close_delay") && e.contains("25x"), "{e}");
        let e = GatewayConfig::from_json(r#"{"channel": {"namespaces": [{"name": "chat", "history_ttl": true}]}}"#)
            .unwrap_err();
        assert!(e.contains("channel.namespaces[chat].history_ttl"), "{e}");
        let e = GatewayConfig::from_json(r#"{"client": {"stale_close_delay": "-5s"}}"#).unwrap_err();
        assert!(e.contains("client.stale_close_delay"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let cases = [
            (r#"{"client": {"insecure": "yes"}}"#, "client.insecure"),
            (r#"{"client": {"channel_limit": -1}}"#, "client.channel_limit"),
            (r#"{"client": {"channel_limit": 1.5}}"#, "client.channel_limit"),
            (r#"{"client": {"allowed_origins": "*"}}"#, "client.allowed_origins"),
            (r#"{"client": {"allowed_origins": ["*", 1]}}"#, "client.allowed_origins[1]"),
            (r#"{"client": {"token": {"hmac_secret_key": true}}}"#, "client.token.hmac_secret_key"),
            (r#"{"client": {"token": "x"}}"#, "client.token"),
            (r#"{"client": []}"#, "client"),
            (r#"{"channel": {"namespaces": {}}}"#, "channel.namespaces"),
            (r#"{"channel": {"namespaces": [{"presence": true}]}}"#, "channel.namespaces[0].name"),
            (r#"{"channel": {"without_namespace": {"presence": 1}}}"#, "channel.without_namespace.presence"),
            (r#"{"websocket": {"message_size_limit": "64k"}}"#, "websocket.message_size_limit"),
            (r#"[]"#, "top level"),
        ];
        for (text, key) in cases {
            let e = GatewayConfig::from_json(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        // A numeric secret in YAML is read as its text.
        let c = GatewayConfig::from_yaml("http_api:\n  key: 12345\n").unwrap();
        assert_eq!(c.api_key, "12345");
    }

    #[test]
    fn pong_must_be_below_ping() {
        let e = GatewayConfig::from_json(r#"{"client": {"ping_interval": "10s", "pong_timeout": "10s"}}"#).unwrap_err();
        assert!(e.contains("client.pong_timeout") && e.contains("client.ping_interval"), "{e}");
        assert!(GatewayConfig::from_json(r#"{"client": {"ping_interval": "5s"}}"#).is_err());
        assert!(GatewayConfig::from_json(r#"{"client": {"ping_interval": "10s", "pong_timeout": "9s"}}"#).is_ok());
        assert!(GatewayConfig::from_json(r#"{"client": {"ping_interval": -1}}"#).is_ok());
    }

    #[test]
    fn namespace_validation() {
        let bad_name = r#"{"channel": {"namespaces": [{"name": "a"}]}}"#;
        assert!(GatewayConfig::from_json(bad_name).unwrap_err().contains("invalid namespace name"));
        let bad_char = r#"{"channel": {"namespaces": [{"name": "a:b"}]}}"#;
        assert!(GatewayConfig::from_json(bad_char).unwrap_err().contains("invalid namespace name"));
        let dup = r#"{"channel": {"namespaces": [{"name": "chat"}, {"name": "chat"}]}}"#;
        assert!(GatewayConfig::from_json(dup).unwrap_err().contains("unique"));
        let ok = r#"{"channel": {"namespaces": [{"name": "my-ns_2.v1"}]}}"#;
        assert_eq!(GatewayConfig::from_json(ok).unwrap().namespaces[0].name, "my-ns_2.v1");
        // Centrifugo's history checks.
        let size_only = r#"{"channel": {"namespaces": [{"name": "ch", "history_size": 10}]}}"#;
        assert!(GatewayConfig::from_json(size_only).unwrap_err().contains("channel.namespaces[ch]"));
        let recovery = r#"{"channel": {"without_namespace": {"force_recovery": true}}}"#;
        assert!(GatewayConfig::from_json(recovery).unwrap_err().contains("channel.without_namespace"));
        let over_meta = r#"{"channel": {"history_meta_ttl": "1h",
            "without_namespace": {"history_size": 1, "history_ttl": "2h"}}}"#;
        assert!(GatewayConfig::from_json(over_meta).is_err());
        let own_meta = r#"{"channel": {"history_meta_ttl": "1h",
            "without_namespace": {"history_size": 1, "history_ttl": "2h", "history_meta_ttl": "3h"}}}"#;
        assert!(GatewayConfig::from_json(own_meta).is_ok());
        let subsecond = r#"{"channel": {"without_namespace": {"history_size": 1, "history_ttl": "1.5s"}}}"#;
        assert!(GatewayConfig::from_json(subsecond).unwrap_err().contains("history_ttl"));
    }

    #[test]
    fn load_by_extension() {
        let dir = std::env::temp_dir().join(format!("tetherd-gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = GatewayConfig::from_json(JSON).unwrap();
        for (name, text) in [("c.json", JSON), ("c.toml", TOML), ("c.yaml", YAML), ("c.yml", YAML), ("c.conf", JSON)] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            assert_eq!(GatewayConfig::load(&path).unwrap(), json, "{name}");
        }
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[client]\nping_interval = \"soon\"\n").unwrap();
        let e = GatewayConfig::load(&bad).unwrap_err();
        assert!(e.contains("bad.toml") && e.contains("client.ping_interval"), "{e}");
        let missing = GatewayConfig::load(&dir.join("missing.json")).unwrap_err();
        assert!(missing.contains("missing.json"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
