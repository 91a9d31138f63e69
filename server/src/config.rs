//! tetherd's settings: command-line flags, `TETHER_*` environment variables, a TOML file and defaults.
//!
//! Precedence is flag > environment > file > default. clap gives the first two (every flag is declared with
//! `env = "TETHER_..."`); the file and the defaults are filled in here. Every value, wherever it came from, goes
//! through the same string parser, so `--tick 250ms`, `TETHER_TICK=250ms` and `tick = "250ms"` mean the same,
//! and an error names the flag, variable or key it came from.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use tether::{
    parse_optional_duration, parse_tcp_keepalive as parse_keepalive, parse_tcp_user_timeout as parse_user_timeout,
};
use tether::{Config, Deflate, SendQueuePolicy};
use tetherd::gateway::tenants::{parse_tenant_arg, scan_dir};

/// Defaults that are tetherd's own (the engine's come from `tether::Config::default()`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_LOG: &str = "info";

/// Declares every setting once: the clap struct (each an `Option<String>` with its env variable) and the TOML
/// file struct (each an `Option<Raw>`, unknown keys refused).
macro_rules! settings {
    ($( $field:ident : $env:literal, $value_name:literal, $help:literal; )*) => {
        /// Tether's WebSocket gateway: echoes every message, answers /healthz and /metrics.
        ///
        /// Every flag can also be given as a TETHER_* environment variable or as a key of the TOML file named by
        /// --config (same name, snake_case). Precedence: flag > environment > file > default.
        #[derive(Parser, Debug)]
        #[command(name = "tetherd", version)]
        pub struct Cli {
            /// TOML file with settings (keys as the flags, in snake_case: ping_interval = "20s").
            #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// Print the effective configuration as TOML and exit.
            #[arg(long)]
            pub print_config: bool,
            /// Serve tenant NAME on /t/NAME/connection/websocket and /t/NAME/api/<method> with this
            /// Centrifugo-format config (repeatable; also `tenant = ["NAME=FILE", ..]` in the --config file,
            /// which a reload reads again)
            #[arg(long = "tenant", value_name = "NAME=FILE")]
            pub tenant: Vec<String>,
            $(
                #[arg(long, env = $env, value_name = $value_name, help = $help)]
                pub $field: Option<String>,
            )*
        }

        /// The `--config` file: the same keys as the flags, nothing else.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            /// `tenant = ["NAME=FILE", ..]`.
            #[serde(default)]
            pub tenant: Option<Vec<String>>,
            $(
                #[serde(default)]
                pub $field: Option<Raw>,
            )*
        }
    };
}

settings! {
    listen: "TETHER_LISTEN", "ADDR", "Address to listen on";
    shards: "TETHER_SHARDS", "N", "Shard threads, 0 = one per CPU";
    max_connections: "TETHER_MAX_CONNECTIONS", "N", "Connection limit over all shards, 0 = what the limits allow";
    backlog: "TETHER_BACKLOG", "N", "listen(2) backlog per shard";
    tick: "TETHER_TICK", "DURATION", "Timing wheel resolution";
    ping_interval: "TETHER_PING_INTERVAL", "DURATION", "Server ping cadence, 0 or off disables";
    ping_jitter: "TETHER_PING_JITTER", "on|off", "First ping of a connection at a random point of its first interval (spreads the pings of connections that opened together)";
    ping_mode: "TETHER_PING_MODE", "interval|idle", "interval: a ping every interval; idle: only after an interval in which nothing came from the peer (connections that talk, or whose client pings often enough, are not pinged)";
    pong_timeout: "TETHER_PONG_TIMEOUT", "DURATION", "Close a peer silent this long after a ping";
    handshake_timeout: "TETHER_HANDSHAKE_TIMEOUT", "DURATION", "Deadline for the HTTP upgrade";
    close_timeout: "TETHER_CLOSE_TIMEOUT", "DURATION", "Deadline for the peer's Close answer";
    drain_timeout: "TETHER_DRAIN_TIMEOUT", "DURATION", "On SIGINT/SIGTERM, wait this long for connections to close";
    tcp_keepalive: "TETHER_TCP_KEEPALIVE", "IDLE,INTERVAL,COUNT", "TCP keepalive probes; IDLE auto = ping interval + pong timeout (15s without pings), so only a connection the pings leave quiet is probed; off disables";
    tcp_user_timeout: "TETHER_TCP_USER_TIMEOUT", "DURATION", "TCP_USER_TIMEOUT, 0 or off leaves the kernel default";
    max_message_size: "TETHER_MAX_MESSAGE_SIZE", "BYTES", "Largest message accepted (1009 beyond)";
    max_handshake_size: "TETHER_MAX_HANDSHAKE_SIZE", "BYTES", "Largest upgrade request accepted (431 beyond)";
    max_send_queue: "TETHER_MAX_SEND_QUEUE", "BYTES", "Bytes queued per connection before the policy applies";
    send_queue_policy: "TETHER_SEND_QUEUE_POLICY", "close|drop", "What to do when a send queue is full";
    deflate: "TETHER_DEFLATE", "shared|dedicated:BITS|off", "permessage-deflate: shared (no context takeover, nothing kept per connection), dedicated:BITS (context takeover with a 2^BITS window, 9-15, its own compressor and inflater per connection) or off";
    deflate_threshold: "TETHER_DEFLATE_THRESHOLD", "BYTES", "Messages shorter than this are sent uncompressed";
    deflate_level: "TETHER_DEFLATE_LEVEL", "0-9", "zlib compression level of permessage-deflate (1 fastest, 9 smallest)";
    tls_cert: "TETHER_TLS_CERT", "FILE", "Serve wss:// and https:// with this certificate chain (PEM, leaf first; re-read on SIGHUP); needs --tls-key";
    tls_key: "TETHER_TLS_KEY", "FILE", "The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1)";
    tls_handshakes_per_loop: "TETHER_TLS_HANDSHAKES_PER_LOOP", "N", "TLS handshake steps a shard takes per loop iteration at most (the rest wait, so a handshake flood cannot starve open connections)";
    recv_buffers: "TETHER_RECV_BUFFERS", "N", "Provided receive buffers per shard, a power of two <= 32768; 0 = auto (2048, fewer each when there are more shards than cores)";
    recv_buffer_size: "TETHER_RECV_BUFFER_SIZE", "BYTES", "Size of each receive buffer";
    recv_large_buffer_size: "TETHER_RECV_LARGE_BUFFER_SIZE", "BYTES", "Size of each large receive buffer: a plaintext connection whose frame spans more than one receive buffer moves to these (a second pool per ring, allocated on first use); larger than --recv-buffer-size, 0 = none";
    recv_large_buffers: "TETHER_RECV_LARGE_BUFFERS", "N", "Large receive buffers per ring, a power of two <= 32768";
    ring_entries: "TETHER_RING_ENTRIES", "N", "Submission queue entries per ring";
    submit_every: "TETHER_SUBMIT_EVERY", "N", "Completions a shard handles before it submits what they produced (a large batch's first replies leave while the rest is handled); 0 = once per loop iteration";
    slots_per_shard: "TETHER_SLOTS_PER_SHARD", "N", "Registered file slots per ring, 0 = RLIMIT_NOFILE";
    max_http_body: "TETHER_MAX_HTTP_BODY", "BYTES", "Largest body of a plain HTTP request (413 beyond)";
    http_keepalive: "TETHER_HTTP_KEEPALIVE", "DURATION", "How long a connection may wait idle for its next plain HTTP request (API, /metrics) after an answer; 0 or off closes after every answer";
    inbox_capacity: "TETHER_INBOX_CAPACITY", "N", "Commands other threads may queue for one shard (refused beyond, counted in inbox_full)";
    per_ip_max_connections: "TETHER_PER_IP_MAX_CONNECTIONS", "N", "Connections one source address may hold at once, over all shards (an IPv6 peer counts by its /64); past it every request is answered 503 with Retry-After; 0 = unlimited";
    per_ip_handshake_rate: "TETHER_PER_IP_HANDSHAKE_RATE", "N/s", "New connections one source address may open per second, over all shards (N, N/s or N/min; a burst of the per-second rate, at least 1); past it every request is answered 429 with Retry-After; 0 or off = unlimited";
    log: "TETHER_LOG", "LEVEL-OR-FILTER", "Log level or tracing filter (also RUST_LOG)";
    gateway: "TETHER_GATEWAY", "FILE", "Serve the Centrifugo-compatible gateway with this Centrifugo v6 config (JSON, TOML or YAML); without it tetherd echoes";
    tenants_dir: "TETHER_TENANTS_DIR", "DIR", "Serve a tenant for every NAME.json|toml|yaml in DIR (on /t/NAME/...); a reload reads the directory again";
    admin_key: "TETHER_ADMIN_KEY", "KEY", "Key for POST /admin/reload (X-Admin-Key or Authorization: Bearer); without it the endpoint is off";
}

/// A value as written in the TOML file: a string, an integer or a boolean, turned into the same text a flag
/// would carry so that one parser serves all three sources.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Int(i64),
    Bool(bool),
    Str(String),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        struct RawVisitor;
        impl serde::de::Visitor<'_> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a whole number or a boolean")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Raw, E> {
                i64::try_from(v).map(Raw::Int).map_err(|_| E::custom("number too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_string()))
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Int(n) => write!(f, "{n}"),
            // `tcp_keepalive = false` reads naturally as "off"; `true` as the default.
            Raw::Bool(false) => f.write_str("off"),
            Raw::Bool(true) => f.write_str("on"),
            Raw::Str(s) => f.write_str(s),
        }
    }
}

/// Everything tetherd runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub engine: Config,
    /// `--tls-cert`, `--tls-key` (the engine's `tls` was made from them; SIGHUP re-reads them).
    pub tls_files: Option<(PathBuf, PathBuf)>,
    pub drain_timeout: Duration,
    /// An EnvFilter directive string (already checked to parse).
    pub log: String,
    pub print_config: bool,
    /// `--gateway FILE`: serve the gateway with this Centrifugo-format config instead of echoing.
    pub gateway: Option<PathBuf>,
    /// `--tenant NAME=FILE` flags (fixed for the process's life).
    pub tenants: Vec<(String, PathBuf)>,
    /// `--tenants-dir DIR`.
    pub tenants_dir: Option<PathBuf>,
    /// The `--config` file when it has a `tenant` list (which a reload reads again).
    pub config_file: Option<PathBuf>,
    /// `--admin-key`.
    pub admin_key: Option<String>,
}

/// A bad setting; its Display is the one line printed before exiting with code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where a value came from, for error messages.
enum Origin<'a> {
    Flag,
    Env,
    File(&'a Path),
}

/// Parses the process's arguments and environment (and the file they name). clap's own errors (unknown flag,
/// `--help`, `--version`) exit through clap: code 2 for errors, 0 for help.
pub fn load() -> Result<Settings, ConfigError> {
    let matches = command().get_matches();
    from_matches(&matches)
}

/// The clap command with every flag's default appended to its help, taken from the effective defaults
/// (`Settings::defaults`, i.e. `tether::Config::default()` and tetherd's own): defaults are written once.
pub fn command() -> clap::Command {
    let defaults = Settings::defaults().to_toml();
    let mut cmd = Cli::command();
    for line in defaults.lines() {
        let Some((key, value)) = line.split_once(" = ") else { continue };
        let value = value.trim_matches('"').to_string();
        if !cmd.get_arguments().any(|a| a.get_id() == key) {
            continue;
        }
        cmd = cmd.mut_arg(key, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {value}]"))
        });
    }
    cmd
}

#[cfg(test)]
/// As [`load`] with explicit arguments (the first is the program name); clap errors are returned as text.
pub fn load_from<I, T>(args: I) -> Result<Settings, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command()
        .try_get_matches_from(args)
        .map_err(|e| ConfigError(e.to_string().lines().next().unwrap_or("").to_string()))?;
    from_matches(&matches)
}

fn from_matches(matches: &ArgMatches) -> Result<Settings, ConfigError> {
    let cli = Cli::from_arg_matches(matches).map_err(|e| ConfigError(e.to_string()))?;
    let file = match &cli.config {
        Some(path) => Some((read_file(path)?, path.as_path())),
        None => None,
    };
    resolve(&cli, matches, file.as_ref().map(|(f, p)| (f, *p)))
}

/// Reads and checks the TOML file (unknown keys are an error).
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    parse_file(&text).map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))
}

/// Parses TOML text into the file struct; the error is flattened to one line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let msg = e.message().to_string();
        match e.span() {
            Some(span) => {
                let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })
}

struct Resolver<'a> {
    matches: &'a ArgMatches,
    file: Option<(&'a FileConfig, &'a Path)>,
}

impl<'a> Resolver<'a> {
    /// Picks the value of one setting by precedence and parses it; `None` means "use the default".
    fn get<T>(
        &self,
        key: &'static str,
        cli_value: &Option<String>,
        file_value: impl Fn(&FileConfig) -> &Option<Raw>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        // An empty environment variable (`TETHER_TICK=`) counts as unset, as shells and unit files often leave them.
        let from_env = matches!(self.matches.value_source(key), Some(ValueSource::EnvVariable));
        let cli_value = cli_value.as_ref().filter(|v| !(from_env && v.trim().is_empty()));
        let (text, origin) = if let Some(v) = cli_value {
            let origin = if from_env { Origin::Env } else { Origin::Flag };
            (v.clone(), origin)
        } else if let Some((raw, path)) = self.file.and_then(|(f, p)| file_value(f).as_ref().map(|r| (r, p))) {
            (raw.to_string(), Origin::File(path))
        } else {
            return Ok(None);
        };
        parse(text.trim()).map(Some).map_err(|why| {
            let flag = format!("--{}", key.replace('_', "-"));
            let place = match origin {
                Origin::Flag => flag,
                Origin::Env => format!("{flag} (from environment variable TETHER_{})", key.to_ascii_uppercase()),
                Origin::File(path) => format!("key `{key}` in {}", path.display()),
            };
            ConfigError(format!("invalid value \"{text}\" for {place}: {why}"))
        })
    }
}

macro_rules! pick {
    ($r:expr, $cli:expr, $key:ident, $parse:expr) => {
        $r.get(stringify!($key), &$cli.$key, |f: &FileConfig| &f.$key, $parse)?
    };
}

/// Fills every setting by precedence: flag or env (clap) > file > default.
pub fn resolve(cli: &Cli, matches: &ArgMatches, file: Option<(&FileConfig, &Path)>) -> Result<Settings, ConfigError> {
    let r = Resolver { matches, file };
    let d = Config::default();
    let engine = Config {
        listen: Some(pick!(r, cli, listen, parse_listen).unwrap_or(d.listen.expect("default listens"))),
        shards: pick!(r, cli, shards, int_in(0, u16::MAX.into())).map_or(d.shards, |n| n as usize),
        max_connections: pick!(r, cli, max_connections, int_in(0, u32::MAX.into()))
            .map_or(d.max_connections, |n| n as usize),
        backlog: pick!(r, cli, backlog, int_in(1, i32::MAX as u64)).map_or(d.backlog, |n| n as i32),
        tick: pick!(r, cli, tick, parse_positive_duration).unwrap_or(d.tick),
        ping_interval: pick!(r, cli, ping_interval, parse_optional_duration).unwrap_or(d.ping_interval),
        ping_jitter: pick!(r, cli, ping_jitter, parse_on_off).unwrap_or(d.ping_jitter),
        ping_mode: pick!(r, cli, ping_mode, tether::parse_ping_mode).unwrap_or(d.ping_mode),
        pong_timeout: pick!(r, cli, pong_timeout, parse_positive_duration).unwrap_or(d.pong_timeout),
        handshake_timeout: pick!(r, cli, handshake_timeout, parse_positive_duration).unwrap_or(d.handshake_timeout),
        close_timeout: pick!(r, cli, close_timeout, parse_positive_duration).unwrap_or(d.close_timeout),
        tcp_keepalive: pick!(r, cli, tcp_keepalive, parse_keepalive).unwrap_or(d.tcp_keepalive),
        tcp_user_timeout: pick!(r, cli, tcp_user_timeout, parse_user_timeout).unwrap_or(d.tcp_user_timeout),
        max_message_size: pick!(r, cli, max_message_size, size_in(1, u32::MAX.into()))
            .map_or(d.max_message_size, |n| n as usize),
        max_handshake_size: pick!(r, cli, max_handshake_size, size_in(256, 1 << 20))
            .map_or(d.max_handshake_size, |n| n as usize),
        max_send_queue: pick!(r, cli, max_send_queue, size_in(1, u32::MAX.into()))
            .map_or(d.max_send_queue, |n| n as usize),
        send_queue_policy: pick!(r, cli, send_queue_policy, parse_policy).unwrap_or(d.send_queue_policy),
        deflate: pick!(r, cli, deflate, Deflate::parse).unwrap_or(d.deflate),
        deflate_threshold: pick!(r, cli, deflate_threshold, size_in(0, u32::MAX.into()))
            .map_or(d.deflate_threshold, |n| n as usize),
        deflate_level: pick!(r, cli, deflate_level, int_in(0, 9)).map_or(d.deflate_level, |n| n as u32),
        recv_buffers: pick!(r, cli, recv_buffers, parse_recv_buffers).unwrap_or(d.recv_buffers),
        recv_buffer_size: pick!(r, cli, recv_buffer_size, size_in(64, 1 << 20))
            .map_or(d.recv_buffer_size, |n| n as u32),
        recv_large_buffer_size: pick!(r, cli, recv_large_buffer_size, size_in(0, 16 << 20))
            .map_or(d.recv_large_buffer_size, |n| n as u32),
        recv_large_buffers: pick!(r, cli, recv_large_buffers, parse_large_buffers).unwrap_or(d.recv_large_buffers),
        ring_entries: pick!(r, cli, ring_entries, int_in(8, 32768)).map_or(d.ring_entries, |n| n as u32),
        submit_every: pick!(r, cli, submit_every, int_in(0, 1 << 20)).map_or(d.submit_every, |n| n as usize),
        slots_per_shard: pick!(r, cli, slots_per_shard, int_in(0, 1 << 24)).map_or(d.slots_per_shard, |n| n as u32),
        max_http_body: pick!(r, cli, max_http_body, size_in(0, u32::MAX.into()))
            .map_or(d.max_http_body, |n| n as usize),
        http_keepalive: pick!(r, cli, http_keepalive, parse_optional_duration).unwrap_or(d.http_keepalive),
        inbox_capacity: pick!(r, cli, inbox_capacity, int_in(1, 1 << 24)).map_or(d.inbox_capacity, |n| n as usize),
        per_ip_max_connections: pick!(r, cli, per_ip_max_connections, int_in(0, u32::MAX.into()))
            .map_or(d.per_ip_max_connections, |n| n as u32),
        per_ip_handshake_rate: pick!(r, cli, per_ip_handshake_rate, parse_rate).unwrap_or(d.per_ip_handshake_rate),
        tls_handshakes_per_loop: pick!(r, cli, tls_handshakes_per_loop, int_in(1, 1 << 20))
            .map_or(d.tls_handshakes_per_loop, |n| n as usize),
        // Settings the binary does not expose (the handler tick) keep the engine default.
        ..Config::default()
    };
    let drain_timeout = pick!(r, cli, drain_timeout, parse_duration).unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    let tls_cert = pick!(r, cli, tls_cert, parse_path);
    let tls_key = pick!(r, cli, tls_key, parse_path);
    let mut engine = engine;
    engine.tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(
            tether::TlsServer::from_pem_files(cert, key)
                .map_err(|e| ConfigError(format!("--tls-cert / --tls-key: {e}")))?,
        ),
        (None, None) => None,
        (Some(_), None) => return Err(ConfigError("--tls-cert needs --tls-key".into())),
        (None, Some(_)) => return Err(ConfigError("--tls-key needs --tls-cert".into())),
    };

    // --log / TETHER_LOG, then RUST_LOG, then the file, then "info".
    let log_given = match (&cli.log, matches.value_source("log")) {
        (Some(v), Some(ValueSource::EnvVariable)) => !v.trim().is_empty(),
        (v, _) => v.is_some(),
    };
    let rust_log = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let log = match rust_log {
        Some(rust_log) if !log_given => {
            parse_log(&rust_log).map_err(|why| {
                ConfigError(format!("invalid value \"{rust_log}\" for environment variable RUST_LOG: {why}"))
            })?;
            rust_log
        }
        _ => pick!(r, cli, log, parse_log).unwrap_or_else(|| DEFAULT_LOG.to_string()),
    };

    let gateway = pick!(r, cli, gateway, parse_path);
    let tenants_dir = pick!(r, cli, tenants_dir, parse_path);
    let admin_key = pick!(r, cli, admin_key, parse_key);
    let tenants = cli
        .tenant
        .iter()
        .map(|t| parse_tenant_arg(t).map_err(|why| ConfigError(format!("invalid value for --tenant: {why}"))))
        .collect::<Result<Vec<_>, _>>()?;
    // A reload reads the file's `tenant` list again, when it has one.
    let mut config_file = None;
    if let Some((f, path)) = file {
        file_tenants(f, path)?;
        if f.tenant.is_some() {
            config_file = Some(path.to_path_buf());
        }
    }

    Ok(Settings {
        engine,
        tls_files: tls_cert.zip(tls_key),
        drain_timeout,
        log,
        print_config: cli.print_config,
        gateway,
        tenants,
        tenants_dir,
        config_file,
        admin_key,
    })
}

/// The `tenant` list of a `--config` file.
fn file_tenants(file: &FileConfig, path: &Path) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    file.tenant
        .iter()
        .flatten()
        .map(|t| {
            parse_tenant_arg(t).map_err(|why| ConfigError(format!("config file {}: tenant: {why}", path.display())))
        })
        .collect()
}

impl Settings {
    /// Every tenant to serve, read now: the `--tenant` flags, the `tenant` list of the `--config` file, and
    /// the files in `--tenants-dir`. A reload calls this again.
    pub fn tenant_sources(&self) -> Result<Vec<(String, PathBuf)>, String> {
        let mut out = self.tenants.clone();
        if let Some(path) = &self.config_file {
            let file = read_file(path).map_err(|e| e.0)?;
            out.extend(file_tenants(&file, path).map_err(|e| e.0)?);
        }
        if let Some(dir) = &self.tenants_dir {
            out.extend(scan_dir(dir)?);
        }
        Ok(out)
    }

    /// Whether tetherd serves the gateway (with `--gateway` or any tenant source).
    pub fn serves_gateway(&self) -> bool {
        self.gateway.is_some() || !self.tenants.is_empty() || self.tenants_dir.is_some() || self.config_file.is_some()
    }
}

/// A secret given as a setting: not empty.
fn parse_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty key".into());
    }
    Ok(s.to_string())
}

// ---- parsers: text in, value or a reason out (the caller adds which flag/key) ----

/// A file path (not checked here: the gateway loader says what is wrong with the file).
pub fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("empty path".into());
    }
    Ok(PathBuf::from(s))
}

/// `127.0.0.1:9001`, `[::1]:9001`, or a host name with a port (first address it resolves to).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !s.contains(':') {
        return Err("expected an address with a port, such as 127.0.0.1:9001 or [::]:9001".into());
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| "the name resolves to no address".to_string()),
        Err(e) => Err(format!("expected an address such as 127.0.0.1:9001 ({e})")),
    }
}

/// A plain non-negative integer within `min..=max` (underscores allowed: `20_000`).
pub fn parse_int(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let digits: String = s.chars().filter(|c| *c != '_').collect();
    let n: u64 = digits.parse().map_err(|_| format!("expected a whole number between {min} and {max}"))?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(n)
}

/// A humantime duration: `500ms`, `1s`, `20s`, `1m 30s`, or a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("expected a duration such as 500ms, 1s or 20s ({e})"))
}

/// A duration that must be above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// New connections per second: `20`, `20/s`, `90/min`, decimals allowed; `0` or `off` = unlimited (0.0).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    const HINT: &str = "expected a rate such as 20, 20/s or 90/min (0 or off = unlimited)";
    if matches!(s.to_ascii_lowercase().as_str(), "off" | "none" | "unlimited") {
        return Ok(0.0);
    }
    let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = n.trim().parse().map_err(|_| HINT.to_string())?;
    if !n.is_finite() || n < 0.0 {
        return Err(HINT.into());
    }
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        _ => return Err(HINT.into()),
    };
    Ok(n / seconds)
}

/// A rate as [`parse_rate`] reads it back: `off`, `N/s`, or `N/min` below one a second.
fn fmt_rate(rate: f64) -> String {
    if rate <= 0.0 {
        "off".into()
    } else if rate < 1.0 {
        format!("{}/min", rate * 60.0)
    } else {
        format!("{rate}/s")
    }
}

/// A byte count: `4096`, `16MiB`, `64KiB`, `1MB`, `2 GiB`, `16M` (K/M/G alone are binary, KB/MB/GB decimal).
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HINT: &str = "expected a byte count such as 4096, 64KiB, 16MiB or 1MB";
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '_')).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(HINT.into());
    }
    let n: u64 = digits.parse().map_err(|_| format!("{HINT} (number too large)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("{HINT} (unknown unit \"{}\")", unit.trim())),
    };
    n.checked_mul(multiplier).ok_or_else(|| "too large".to_string())
}

/// A parser for an integer within `min..=max`.
fn int_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |s| parse_int(s, min, max)
}

/// A parser for a byte count within `min..=max`.
fn size_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> {
    move |s| parse_size_in(s, min, max)
}

fn parse_size_in(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < min || n > max {
        return Err(format!("must be between {} and {}", format_size(min), format_size(max)));
    }
    Ok(n)
}

/// Writes a byte count the short way when it is a whole number of KiB/MiB/GiB (parse_size reads it back).
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.trailing_zeros() >= shift {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

pub fn parse_policy(s: &str) -> Result<SendQueuePolicy, String> {
    match s.to_ascii_lowercase().as_str() {
        "close" => Ok(SendQueuePolicy::Close),
        "drop" => Ok(SendQueuePolicy::Drop),
        _ => Err("expected close or drop".into()),
    }
}

/// Provided buffers per shard: a power of two from 1 to 32768 (the kernel's buffer ring limit).
pub fn parse_recv_buffers(s: &str) -> Result<u16, String> {
    let n = parse_int(s, 0, 32768)?;
    if n != 0 && !n.is_power_of_two() {
        return Err("must be a power of two (1, 2, 4 ... 32768), or 0 for auto".into());
    }
    Ok(n as u16)
}

/// Large buffers per ring: a power of two from 1 to 32768.
pub fn parse_large_buffers(s: &str) -> Result<u16, String> {
    let n = parse_int(s, 1, 32768)?;
    if !n.is_power_of_two() {
        return Err("must be a power of two (1, 2, 4 ... 32768)".into());
    }
    Ok(n as u16)
}

/// A tracing EnvFilter: a level (`debug`) or directives (`info,tether=trace`).
pub fn parse_log(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("expected a level (error, warn, info, debug, trace) or a filter such as info,tether=debug".into());
    }
    tracing_subscriber::EnvFilter::builder().parse(s).map_err(|e| format!("not a log level or filter ({e})"))?;
    Ok(s.to_string())
}

// ---- printing ----

fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Settings {
    /// The effective configuration as a TOML file that `--config` reads back unchanged.
    /// Every setting at its default.
    pub fn defaults() -> Settings {
        Settings {
            engine: Config::default(),
            tls_files: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            log: DEFAULT_LOG.to_string(),
            print_config: false,
            gateway: None,
            tenants: Vec::new(),
            tenants_dir: None,
            config_file: None,
            admin_key: None,
        }
    }

    pub fn to_toml(&self) -> String {
        let c = &self.engine;
        let opt = |d: Option<Duration>| d.map_or_else(|| "off".to_string(), fmt_duration);
        let keepalive = c.tcp_keepalive.map_or_else(
            || "off".to_string(),
            |k| {
                format!(
                    "{},{},{}",
                    k.idle.map_or_else(|| "auto".into(), fmt_duration),
                    fmt_duration(k.interval),
                    k.count
                )
            },
        );
        let policy = match c.send_queue_policy {
            SendQueuePolicy::Close => "close",
            SendQueuePolicy::Drop => "drop",
        };
        let listen = c.listen.map_or_else(String::new, |a| a.to_string());
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(&value);
            out.push('\n');
        };
        line("listen", quoted(&listen));
        line("shards", c.shards.to_string());
        line("max_connections", c.max_connections.to_string());
        line("backlog", c.backlog.to_string());
        line("tick", quoted(&fmt_duration(c.tick)));
        line("ping_interval", quoted(&opt(c.ping_interval)));
        line("ping_jitter", quoted(if c.ping_jitter { "on" } else { "off" }));
        line("ping_mode", quoted(c.ping_mode.as_str()));
        line("pong_timeout", quoted(&fmt_duration(c.pong_timeout)));
        line("handshake_timeout", quoted(&fmt_duration(c.handshake_timeout)));
        line("close_timeout", quoted(&fmt_duration(c.close_timeout)));
        line("drain_timeout", quoted(&fmt_duration(self.drain_timeout)));
        line("tcp_keepalive", quoted(&keepalive));
        line("tcp_user_timeout", quoted(&opt(c.tcp_user_timeout)));
        line("max_message_size", quoted(&format_size(c.max_message_size as u64)));
        line("max_handshake_size", quoted(&format_size(c.max_handshake_size as u64)));
        line("max_send_queue", quoted(&format_size(c.max_send_queue as u64)));
        line("send_queue_policy", quoted(policy));
        line("deflate", quoted(&c.deflate.to_string()));
        line("deflate_threshold", quoted(&format_size(c.deflate_threshold as u64)));
        line("deflate_level", c.deflate_level.to_string());
        line("recv_buffers", c.recv_buffers.to_string());
        line("recv_buffer_size", quoted(&format_size(c.recv_buffer_size as u64)));
        line("recv_large_buffer_size", quoted(&format_size(c.recv_large_buffer_size as u64)));
        line("recv_large_buffers", c.recv_large_buffers.to_string());
        line("ring_entries", c.ring_entries.to_string());
        line("submit_every", c.submit_every.to_string());
        line("slots_per_shard", c.slots_per_shard.to_string());
        line("max_http_body", quoted(&format_size(c.max_http_body as u64)));
        line("http_keepalive", quoted(&opt(c.http_keepalive)));
        line("inbox_capacity", c.inbox_capacity.to_string());
        line("per_ip_max_connections", c.per_ip_max_connections.to_string());
        line("per_ip_handshake_rate", quoted(&fmt_rate(c.per_ip_handshake_rate)));
        if let Some((cert, key)) = &self.tls_files {
            line("tls_cert", quoted(&cert.display().to_string()));
            line("tls_key", quoted(&key.display().to_string()));
        }
        line("tls_handshakes_per_loop", c.tls_handshakes_per_loop.to_string());
        line("log", quoted(&self.log));
        if let Some(path) = &self.gateway {
            line("gateway", quoted(&path.display().to_string()));
        }
        if let Some(path) = &self.tenants_dir {
            line("tenants_dir", quoted(&path.display().to_string()));
        }
        if let Some(key) = &self.admin_key {
            line("admin_key", quoted(key));
        }
        if !self.tenants.is_empty() {
            let list: Vec<String> = self.tenants.iter().map(|(n, p)| quoted(&format!("{n}={}", p.display()))).collect();
            line("tenant", format!("[{}]", list.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tether::TcpKeepalive;

    /// clap reads TETHER_* from the process environment: tests that parse take this lock so that one test's
    /// variables never leak into another's run.
    static ENV: Mutex<()> = Mutex::new(());

    const ALL_ENV: [&str; 30] = [
        "TETHER_CONFIG",
        "TETHER_DEFLATE_LEVEL",
        "TETHER_TLS_CERT",
        "TETHER_TLS_KEY",
        "TETHER_TLS_HANDSHAKES_PER_LOOP",
        "TETHER_GATEWAY",
        "TETHER_TENANTS_DIR",
        "TETHER_ADMIN_KEY",
        "TETHER_LISTEN",
        "TETHER_SHARDS",
        "TETHER_MAX_CONNECTIONS",
        "TETHER_BACKLOG",
        "TETHER_TICK",
        "TETHER_PING_INTERVAL",
        "TETHER_PONG_TIMEOUT",
        "TETHER_HANDSHAKE_TIMEOUT",
        "TETHER_CLOSE_TIMEOUT",
        "TETHER_DRAIN_TIMEOUT",
        "TETHER_TCP_KEEPALIVE",
        "TETHER_TCP_USER_TIMEOUT",
        "TETHER_MAX_MESSAGE_SIZE",
        "TETHER_MAX_HANDSHAKE_SIZE",
        "TETHER_MAX_SEND_QUEUE",
        "TETHER_SEND_QUEUE_POLICY",
        "TETHER_RECV_BUFFERS",
        "TETHER_RECV_BUFFER_SIZE",
        "TETHER_RING_ENTRIES",
        "TETHER_SLOTS_PER_SHARD",
        "TETHER_LOG",
        "RUST_LOG",
    ];

    /// Runs `f` with exactly the given variables set (all other TETHER_* and RUST_LOG removed).
    fn with_env<R>(vars: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for name in ALL_ENV {
            std::env::remove_var(name);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let result = f();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        result
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tetherd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load_args(args: &[&str]) -> Result<Settings, ConfigError> {
        load_from(std::iter::once("tetherd").chain(args.iter().copied()))
    }

    #[test]
    fn help_shows_each_default_from_the_defaults() {
        let mut cmd = command();
        let help = cmd.render_long_help().to_string();
        for want in [
            "[default: 20s]",
            "[default: 127.0.0.1:9001]",
            "[default: 16MiB]",
            "[default: 4MiB]",
            "[default: auto,5s,3]",
            "[default: info]",
            "[default: 10s]",
            "[default: 1MiB]",
            "[default: 65536]",
        ] {
            assert!(help.contains(want), "missing {want} in:\n{help}");
        }
        // Each flag's default appears once, whatever its help says.
        assert_eq!(help.matches("[default: ").count(), Settings::defaults().to_toml().lines().count());
    }

    #[test]
    fn defaults_match_the_engine() {
        let s = with_env(&[], || load_args(&[])).unwrap();
        let d = Config::default();
        assert_eq!(s.engine.listen, d.listen);
        assert_eq!(s.engine.tick, Duration::from_millis(10));
        assert_eq!(s.engine.ping_interval, Some(Duration::from_secs(20)));
        assert_eq!(s.engine.tcp_keepalive, Some(TcpKeepalive::default()));
        assert_eq!(s.engine.max_message_size, 16 << 20);
        assert_eq!(s.engine.recv_buffers, 0);
        assert_eq!(s.drain_timeout, Duration::from_secs(10));
        assert_eq!(s.log, "info");
        assert!(!s.print_config);
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let file = temp_file(
            "precedence.toml",
            "ping_interval = \"7s\"\npong_timeout = \"8s\"\nclose_timeout = \"9s\"\nshards = 3\n",
        );
        let file = file.to_str().unwrap();
        let s = with_env(&[("TETHER_PING_INTERVAL", "30s"), ("TETHER_PONG_TIMEOUT", "4s")], || {
            load_args(&["--config", file, "--ping-interval", "45s"])
        })
        .unwrap();
        // flag beats env and file
        assert_eq!(s.engine.ping_interval, Some(Duration::from_secs(45)));
        // env beats file
        assert_eq!(s.engine.pong_timeout, Duration::from_secs(4));
        // file beats default
        assert_eq!(s.engine.close_timeout, Duration::from_secs(9));
        assert_eq!(s.engine.shards, 3);
        // default when nobody says anything
        assert_eq!(s.engine.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.engine.ping_mode, tether::PingMode::Interval);
    }

    #[test]
    fn ping_mode_from_file_and_flag() {
        let file = temp_file("ping_mode.toml", "ping_mode = \"idle\"\n");
        let file = file.to_str().unwrap();
        let s = load_args(&["--config", file]).unwrap();
        assert_eq!(s.engine.ping_mode, tether::PingMode::Idle);
        assert!(s.to_toml().contains("ping_mode = \"idle\"\n"), "{}", s.to_toml());
        let s = load_args(&["--config", file, "--ping-mode", "interval"]).unwrap();
        assert_eq!(s.engine.ping_mode, tether::PingMode::Interval);
        let e = load_args(&["--ping-mode", "sometimes"]).unwrap_err();
        assert!(e.0.contains("must be interval or idle"), "{e}");
    }

    #[test]
    fn config_file_from_env_and_log_from_rust_log() {
        let file = temp_file("log.toml", "log = \"warn\"\ntcp_keepalive = false\n");
        let file = file.to_str().unwrap();
        let s = with_env(&[("TETHER_CONFIG", file), ("RUST_LOG", "debug")], || load_args(&[])).unwrap();
        assert_eq!(s.log, "debug", "RUST_LOG beats the file");
        assert_eq!(s.engine.tcp_keepalive, None);
        let s = with_env(&[("TETHER_CONFIG", file)], || load_args(&[])).unwrap();
        assert_eq!(s.log, "warn");
        let s = with_env(&[("RUST_LOG", "debug"), ("TETHER_LOG", "")], || load_args(&[])).unwrap();
        assert_eq!(s.log, "debug", "an empty TETHER_LOG counts as unset");
        let s = with_env(&[("RUST_LOG", "debug"), ("TETHER_LOG", "error")], || load_args(&[])).unwrap();
        assert_eq!(s.log, "error", "TETHER_LOG beats RUST_LOG");
    }

    #[test]
    fn zero_and_off_disable() {
        let s = with_env(&[], || {
            load_args(&["--ping-interval", "0", "--tcp-user-timeout", "off", "--tcp-keepalive", "off"])
        })
        .unwrap();
        assert_eq!(s.engine.ping_interval, None);
        assert_eq!(s.engine.tcp_user_timeout, None);
        assert_eq!(s.engine.tcp_keepalive, None);
        let s = with_env(&[("TETHER_PING_INTERVAL", "0s")], || load_args(&[])).unwrap();
        assert_eq!(s.engine.ping_interval, None);
        let s = with_env(&[("TETHER_TICK", "")], || load_args(&[])).unwrap();
        assert_eq!(s.engine.tick, Duration::from_millis(10), "an empty variable counts as unset");
    }

    #[test]
    fn errors_name_the_source() {
        let e = with_env(&[], || load_args(&["--tick", "fast"])).unwrap_err();
        assert!(e.0.starts_with("invalid value \"fast\" for --tick:"), "{e}");
        let e = with_env(&[("TETHER_TICK", "0")], || load_args(&[])).unwrap_err();
        assert!(e.0.contains("--tick (from environment variable TETHER_TICK)"), "{e}");
        assert!(e.0.contains("greater than zero"), "{e}");
        let file = temp_file("bad.toml", "max_message_size = \"12 parsecs\"\n");
        let e = with_env(&[], || load_args(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(e.0.contains("key `max_message_size` in"), "{e}");
        assert!(!e.0.contains('\n'), "one line: {e}");
        let e = with_env(&[], || load_args(&["--deflate", "dedicated:16"])).unwrap_err();
        assert!(e.0.contains("--deflate"), "{e}");
        let e = with_env(&[], || load_args(&["--send-queue-policy", "block"])).unwrap_err();
        assert!(e.0.contains("expected close or drop"), "{e}");
        let e = with_env(&[], || load_args(&["--log", "info,tether=loud"])).unwrap_err();
        assert!(e.0.contains("--log"), "{e}");
        let e = with_env(&[], || load_args(&["--listen", "9001"])).unwrap_err();
        assert!(e.0.contains("--listen"), "{e}");
        let e = with_env(&[], || load_args(&["--no-such-flag"])).unwrap_err();
        assert!(e.0.contains("--no-such-flag"), "{e}");
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let e = parse_file("ping_intervall = \"20s\"\n").unwrap_err();
        assert!(e.contains("unknown field `ping_intervall`"), "{e}");
        assert!(e.starts_with("line 1:"), "{e}");
        let file = temp_file("unknown.toml", "tick = \"50ms\"\n\nbogus = 1\n");
        let e = with_env(&[], || load_args(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(e.0.contains("invalid config file") && e.0.contains("line 3") && e.0.contains("bogus"), "{e}");
        let e = parse_file("tick = [1]\n").unwrap_err();
        assert!(e.contains("expected a string, a whole number or a boolean"), "{e}");
        let e = with_env(&[], || load_args(&["--config", "/nonexistent/tetherd.toml"])).unwrap_err();
        assert!(e.0.contains("cannot read config file"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("20").is_err(), "a bare number needs a unit");
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_optional_duration("0"), Ok(None));
        assert_eq!(parse_optional_duration("0s"), Ok(None));
        assert_eq!(parse_optional_duration("off"), Ok(None));
        assert_eq!(parse_optional_duration("OFF"), Ok(None));
        assert_eq!(parse_optional_duration("15s"), Ok(Some(Duration::from_secs(15))));
        assert!(parse_optional_duration("-1s").is_err());
        assert!(parse_user_timeout("500us").is_err());
        assert_eq!(parse_user_timeout("30s"), Ok(Some(Duration::from_secs(30))));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16777216"), Ok(16 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert_eq!(parse_size("10B"), Ok(10));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("3 furlongs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999GiB").is_err());
        assert!(parse_size_in("0", 1, 10).is_err());
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(8192), "8KiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn keepalive() {
        assert_eq!(
            parse_keepalive("15s,5s,3"),
            Ok(Some(TcpKeepalive { idle: Some(Duration::from_secs(15)), interval: Duration::from_secs(5), count: 3 }))
        );
        assert_eq!(
            parse_keepalive("1m, 10s, 9"),
            Ok(Some(TcpKeepalive { idle: Some(Duration::from_secs(60)), interval: Duration::from_secs(10), count: 9 }))
        );
        assert_eq!(parse_keepalive("auto"), Ok(Some(TcpKeepalive::default())));
        assert_eq!(
            parse_keepalive("auto,10s,4"),
            Ok(Some(TcpKeepalive { idle: None, interval: Duration::from_secs(10), count: 4 }))
        );
        assert_eq!(parse_keepalive("off"), Ok(None));
        assert_eq!(parse_keepalive("0"), Ok(None));
        assert!(parse_keepalive("15s,5s").is_err());
        assert!(parse_keepalive("15s,5s,3,1").is_err());
        assert!(parse_keepalive("15s,5s,0").unwrap_err().contains("COUNT"));
        assert!(parse_keepalive("15s,5s,200").unwrap_err().contains("COUNT"));
        assert!(parse_keepalive("1500ms,5s,3").unwrap_err().contains("IDLE"));
        assert!(parse_keepalive("15s,0s,3").unwrap_err().contains("INTERVAL"));
        assert!(parse_keepalive("15,5,3").unwrap_err().contains("IDLE"));
    }

    #[test]
    fn numbers_and_policies() {
        assert_eq!(parse_int("20_000", 0, 1 << 24), Ok(20000));
        assert!(parse_int("-1", 0, 10).is_err());
        assert!(parse_int("11", 0, 10).is_err());
        assert_eq!(parse_recv_buffers("32768"), Ok(32768));
        assert_eq!(parse_recv_buffers("0"), Ok(0));
        assert!(parse_recv_buffers("3000").is_err());
        assert!(parse_recv_buffers("65536").is_err());
        assert_eq!(parse_large_buffers("64"), Ok(64));
        assert!(parse_large_buffers("0").is_err());
        assert!(parse_large_buffers("48").is_err());
        assert_eq!(parse_policy("Drop"), Ok(SendQueuePolicy::Drop));
        assert!(parse_listen("[::1]:9001").is_ok());
        assert!(parse_listen("localhost:9001").is_ok());
        assert!(parse_listen("127.0.0.1").is_err());
    }

    #[test]
    fn per_ip_limits() {
        assert_eq!(parse_rate("20"), Ok(20.0));
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("90/min"), Ok(1.5));
        assert_eq!(parse_rate("off"), Ok(0.0));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("5/h").is_err());
        assert!(parse_rate("fast").is_err());
        for rate in [0.0, 0.5, 20.0, 2.5] {
            assert_eq!(parse_rate(&fmt_rate(rate)), Ok(rate), "{}", fmt_rate(rate));
        }
        let s = with_env(&[("TETHER_PER_IP_HANDSHAKE_RATE", "120/min")], || {
            load_args(&["--per-ip-max-connections", "100"])
        })
        .unwrap();
        assert_eq!(s.engine.per_ip_max_connections, 100);
        assert_eq!(s.engine.per_ip_handshake_rate, 2.0);
        // Off by default: load tests open hundreds of thousands of connections from loopback.
        let d = Settings::defaults();
        assert_eq!((d.engine.per_ip_max_connections, d.engine.per_ip_handshake_rate), (0, 0.0));
        let text = d.to_toml();
        assert!(text.contains("per_ip_max_connections = 0\n"), "{text}");
        assert!(text.contains("per_ip_handshake_rate = \"off\"\n"), "{text}");
    }

    #[test]
    fn printed_config_reads_back() {
        let s = with_env(&[], || {
            load_args(&[
                "--listen",
                "0.0.0.0:8080",
                "--ping-interval",
                "off",
                "--tcp-keepalive",
                "1m,10s,5",
                "--max-message-size",
                "1MB",
                "--send-queue-policy",
                "drop",
                "--deflate",
                "dedicated:12",
                "--drain-timeout",
                "0",
                "--submit-every",
                "0",
                "--log",
                "info,tether=debug",
                "--print-config",
            ])
        })
        .unwrap();
        assert!(s.print_config);
        let text = s.to_toml();
        assert!(text.contains("ping_interval = \"off\"\n"), "{text}");
        assert!(text.contains("tcp_keepalive = \"1m,10s,5\"\n"), "{text}");
        assert!(text.contains("max_message_size = \"1000000\"\n"), "{text}");
        assert!(text.contains("max_send_queue = \"4MiB\"\n"), "{text}");
        let file = temp_file("printed.toml", &text);
        let again = with_env(&[], || load_args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(again.to_toml(), text);
        assert_eq!(again.engine.listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(again.engine.send_queue_policy, SendQueuePolicy::Drop);
        assert_eq!(again.engine.deflate, Deflate::Dedicated { window_bits: 12 });
        assert_eq!(again.drain_timeout, Duration::ZERO);
        assert_eq!(again.engine.submit_every, 0);

        let defaults = with_env(&[], || load_args(&[])).unwrap().to_toml();
        assert_eq!(parse_file(&defaults).map(|_| ()), Ok(()));
        assert!(defaults.contains("tick = \"10ms\"\n"), "{defaults}");
        assert!(defaults.contains("deflate = \"shared\"\n"), "{defaults}");
        assert!(defaults.contains("tcp_keepalive = \"auto,5s,3\"\n"), "{defaults}");
        assert!(defaults.contains("submit_every = 512\n"), "{defaults}");
    }
}
