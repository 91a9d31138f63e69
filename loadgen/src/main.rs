//! `tether-load run` / `tether-load demo`: see the crate docs in lib.rs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tether::{parse_tcp_keepalive, parse_tcp_user_timeout, TcpKeepalive};
use tether_load::centrifugo::{self, ApiTarget, CentrifugoConfig, PublishVia};
use tether_load::load::{self, LoadConfig, Outcome, ProgressMode};
use tether_load::{plot, report, url};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tether-load",
    version,
    about = "WebSocket load generator: holds many connections, measures ping latency and idle drops"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a WebSocket server.
    Run(RunArgs),
    /// Start a Tether echo server in this process and load it (exit 0 when every connection held).
    Demo(DemoArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Target, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (with --tls-ca or --tls-insecure). With --protocol centrifugo a URL without a path
    /// gets /connection/websocket.
    #[arg(long)]
    url: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[command(flatten)]
    centrifugo: CentrifugoArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// Binary messages the server echoes (--message-rate, --closed-loop).
    Echo,
    /// The Centrifugo client protocol v2 (JSON): connect, subscribe, answer pings, publish, recover.
    Centrifugo,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PayloadArg {
    Zeros,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// POST /api/publish (or /api/broadcast with --publish-batch) from a thread of its own.
    Api,
    /// publish commands from the connections.
    Client,
}

/// `--protocol centrifugo` and its options (the others need it).
#[derive(Args)]
struct CentrifugoArgs {
    /// What each connection speaks.
    #[arg(long, value_enum, default_value_t = Protocol::Echo)]
    protocol: Protocol,
    /// HS256 secret for the connection tokens (claims {"sub":"u<index>"}); without it, connect has no token.
    #[arg(long)]
    token_secret: Option<String>,
    /// Channels N: PREFIX0 .. PREFIX(N-1).
    #[arg(long, default_value_t = 10)]
    channels: u32,
    /// Subscriptions per connection K (at most N): connection i takes channels (i*K + j) % N, j < K.
    #[arg(long, default_value_t = 1)]
    subscriptions_per_connection: u32,
    #[arg(long, default_value = "bench:")]
    channel_prefix: String,
    /// Publications per second in all, over the hold (0 = none).
    #[arg(long, default_value = "0", value_parser = parse_rate_or_zero)]
    publish_rate: f64,
    /// Who publishes: the server HTTP API or the connections.
    #[arg(long, value_enum, default_value_t = Via::Api)]
    publish_via: Via,
    /// Server HTTP API, http://HOST:PORT/PREFIX (default: the --url's host and port, prefix /api).
    #[arg(long)]
    api_url: Option<String>,
    /// X-API-Key for the HTTP API.
    #[arg(long)]
    api_key: Option<String>,
    /// Channels per API request: above 1, one /api/broadcast request publishes to that many channels.
    #[arg(long, default_value_t = 1)]
    publish_batch: u32,
    /// API publisher threads (each its own requests, its share of the rate): above 1 the publication rate no
    /// longer waits on one answer at a time (an open-loop publisher).
    #[arg(long, default_value_t = 1)]
    publish_concurrency: u32,
    /// Pad each publication's data to at least this many bytes (0 = {"t":..,"s":..} only).
    #[arg(long, default_value_t = 0)]
    publication_size: usize,
    /// Each connection closes itself at a random point of every such period (during the hold), reconnects and
    /// resubscribes with recover (0 = never).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    reconnect_every: Duration,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, default_value_t = 50_000)]
    connections: usize,
    /// Server ping interval of the in-process server (0 = none).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    server_ping_interval: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct Common {
    /// New connections per second during the ramp (e.g. 20000 or 20000/s).
    #[arg(long, default_value = "20000/s", value_parser = parse_rate)]
    rate: f64,
    /// At most this many connects in flight during the ramp (issued, neither open nor failed yet); the ramp
    /// waits for room rather than overflow the server's accept queues. 0 = no bound.
    #[arg(long, default_value_t = tether_load::load::DEFAULT_MAX_CONNECTING)]
    max_connecting: usize,
    /// How long to hold the connections after the ramp.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Client ping interval (0 = no pings).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// The first client ping of each connection at a random point of its first interval (on) or one whole
    /// interval after the open (off).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    ping_jitter: bool,
    /// interval: a client ping every interval; idle: only after an interval in which nothing came from the
    /// server (its pings count, so a server that pings more often than this is never pinged).
    #[arg(long, default_value = "interval", value_parser = tether::parse_ping_mode)]
    ping_mode: tether::PingMode,
    /// A ping unanswered this long (no frame at all) counts the connection as dead.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pong_timeout: Duration,
    /// Messages per second per connection (echo traffic; 0 = idle).
    #[arg(long, default_value_t = 0.0)]
    message_rate: f64,
    /// Message size in bytes (at least 16: send time and a marker; with --payload json at least 78).
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// What an echo message carries: `zeros` (binary: send time, a marker, zeros; compression's best case) or
    /// `json` (text: a JSON document of exactly --message-size bytes with varied keys, strings and numbers,
    /// the send time and marker in its first fields; each echo must equal what was sent).
    #[arg(long, value_enum, default_value_t = PayloadArg::Zeros)]
    payload: PayloadArg,
    /// Closed loop: one message in flight per connection, the next sent as soon as the echo of the last one
    /// arrives (from the end of the ramp); --message-rate is then ignored. Reports messages per second with
    /// no pacing, the shape that shows per-message cost without coalescing.
    #[arg(long)]
    closed_loop: bool,
    /// Bring dropped connections back with exponential backoff (1 s, 2 s, 4 s ... 30 s, jittered).
    #[arg(long)]
    reconnect: bool,
    /// Source addresses: a range (127.0.0.1-127.0.0.40) or a comma list. Default for loopback targets: enough
    /// addresses from 127.0.0.2 up for 12,000 connections each.
    #[arg(long)]
    source_ips: Option<String>,
    /// Offer permessage-deflate in every upgrade request: `--deflate` (shared: no context takeover either
    /// way, nothing kept per connection), `--deflate dedicated:BITS` (context takeover, own streams per
    /// connection) or `--deflate off` (the default: no offer).
    #[arg(long, num_args = 0..=1, default_missing_value = "shared", value_parser = tether::Deflate::parse)]
    deflate: Option<tether::Deflate>,
    /// wss:// targets: trust the CA certificate(s) in this PEM file (and nothing else).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// wss:// targets: accept any server certificate (signatures still checked); for self-signed test servers.
    #[arg(long)]
    tls_insecure: bool,
    /// wss:// targets: resume TLS sessions from tickets earlier connections got (on, rustls' default) or make
    /// every connection a full handshake (off: what many distinct clients cost a server).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    tls_resume: bool,
    /// An extra header of every upgrade request, `Name: value` (repeatable), e.g. --header 'Cookie: session=x'.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<String>,
    /// Shard threads (default: one per CPU; each opens as many rings as its share of the connections needs).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// TCP keepalive on every client socket: IDLE,INTERVAL,COUNT (e.g. 15s,5s,3; IDLE auto = --ping-interval +
    /// --pong-timeout, 15s without pings, so a connection the pings keep busy is not probed), or off.
    #[arg(long, default_value = "auto,5s,3", value_parser = parse_tcp_keepalive)]
    tcp_keepalive: MaybeKeepalive,
    /// TCP_USER_TIMEOUT on every client socket (0/off = kernel default).
    #[arg(long, default_value = "30s", value_parser = parse_tcp_user_timeout)]
    tcp_user_timeout: MaybeDuration,
    /// At the end: how long to wait for the close handshakes (and final echoes) without progress; while
    /// they keep coming the wait goes on, up to 10x this in all.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    close_wait: Duration,
    /// At the end of the hold, send one message on every open connection and wait (see --close-wait) for
    /// the echoes (report: messages.final_sent / final_echoed).
    #[arg(long)]
    final_echo: bool,
    /// Final echoes out at once per shard. Default (0): a window that follows their latency, doubling
    /// while they come back within 50 ms and shrinking when they are slower, so the final echo does not
    /// queue up in front of the pongs on a busy machine.
    #[arg(long, default_value_t = 0)]
    final_window: usize,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the ping RTT distribution (HdrHistogram .hgrm, milliseconds) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// --protocol centrifugo: write the publish-to-delivery latency distribution (.hgrm, milliseconds) here.
    #[arg(long)]
    delivery_hgrm: Option<PathBuf>,
    /// Write an SVG plot of open connections, ping p50/p99 and drops over time here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Exit non-zero (3) when any connection failed, dropped, or did not close cleanly.
    #[arg(long)]
    strict: bool,
}

// Aliases, so that clap's derive does not read `Option` as "the flag may be absent": here `None` is a value
// the user gives (`off`).
type MaybeKeepalive = Option<TcpKeepalive>;
type MaybeDuration = Option<Duration>;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_rate_or_zero(s: &str) -> Result<f64, String> {
    if s.trim().trim_end_matches("/s").trim().parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    parse_rate(s)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s").trim();
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("not a rate: {s} (e.g. 20000/s)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    match cli.command {
        Command::Run(args) => {
            let mut target = url::parse_target(&args.url).map_err(anyhow::Error::msg)?;
            let cent = centrifugo_config(&args.centrifugo, &mut target, &args.common)?;
            let mut cfg = load_config(target, args.connections, &args.common)?;
            cfg.centrifugo = cent;
            let outcome = load::run(&cfg, &stop)?;
            finish(&outcome, &args.common, args.common.strict)
        }
        Command::Demo(args) => {
            let server_ping = Some(args.server_ping_interval).filter(|d| !d.is_zero());
            let (server, addr) = tether_load::start_echo_server(args.connections, server_ping)?;
            eprintln!("demo: Tether echo server on {addr}, {} connections", args.connections);
            let target = url::parse_target(&format!("ws://{addr}/")).map_err(anyhow::Error::msg)?;
            let cfg = load_config(target, args.connections, &args.common)?;
            let result = load::run(&cfg, &stop);
            if std::env::var_os("TETHER_LOAD_DEBUG").is_some() {
                eprintln!("server engine: {:?}", server.handle().stats());
            }
            server.handle().shutdown(Duration::from_millis(500));
            load::wait_bounded(server, Duration::from_secs(5));
            finish(&result?, &args.common, true)
        }
    }
}

/// `None` for the echo protocol (whose flags then must not ask for Centrifugo things, and the reverse).
fn centrifugo_config(
    a: &CentrifugoArgs,
    target: &mut url::Target,
    c: &Common,
) -> anyhow::Result<Option<CentrifugoConfig>> {
    if a.protocol == Protocol::Echo {
        anyhow::ensure!(
            a.publish_rate == 0.0 && a.reconnect_every.is_zero() && a.token_secret.is_none(),
            "--publish-rate, --reconnect-every and --token-secret need --protocol centrifugo"
        );
        return Ok(None);
    }
    anyhow::ensure!(
        c.message_rate == 0.0 && !c.closed_loop && !c.final_echo,
        "--message-rate, --closed-loop and --final-echo are for --protocol echo"
    );
    if target.path == "/" {
        target.path = centrifugo::DEFAULT_PATH.to_string();
    }
    let api_url = a.api_url.clone().unwrap_or_else(|| format!("http://{}/api", target.host));
    let api = ApiTarget::parse(&api_url).map_err(anyhow::Error::msg)?;
    Ok(Some(CentrifugoConfig {
        token_secret: a.token_secret.clone(),
        channels: a.channels,
        subscriptions_per_connection: a.subscriptions_per_connection,
        channel_prefix: a.channel_prefix.clone(),
        publish_rate: a.publish_rate,
        publish_via: match a.publish_via {
            Via::Api => PublishVia::Api,
            Via::Client => PublishVia::Client,
        },
        api,
        api_key: a.api_key.clone(),
        publish_batch: a.publish_batch,
        publish_concurrency: a.publish_concurrency.max(1),
        publication_size: a.publication_size,
        reconnect_every: Some(a.reconnect_every).filter(|d| !d.is_zero()),
    }))
}

/// `Name: value`: a token name, a colon, a value without line breaks.
fn parse_header(s: &str) -> Result<String, String> {
    let (name, value) = s.split_once(':').ok_or("expected Name: value")?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("bad header name {name:?}"));
    }
    if value.contains(['\r', '\n']) {
        return Err("a header value cannot contain a line break".into());
    }
    Ok(format!("{name}: {}", value.trim()))
}

fn load_config(target: url::Target, connections: usize, c: &Common) -> anyhow::Result<LoadConfig> {
    let source_ips = match &c.source_ips {
        Some(spec) => url::parse_source_ips(spec).map_err(anyhow::Error::msg)?,
        None => url::default_source_ips(&target.addr, connections),
    };
    anyhow::ensure!(c.message_rate >= 0.0 && c.message_rate.is_finite(), "--message-rate must be 0 or more");
    let tls = match (target.tls, &c.tls_ca, c.tls_insecure) {
        (false, None, false) => None,
        (false, _, _) => anyhow::bail!("--tls-ca / --tls-insecure need a wss:// URL"),
        (true, Some(_), true) => anyhow::bail!("give --tls-ca or --tls-insecure, not both"),
        (true, Some(ca), false) => Some(
            tether::ClientTls::with_ca_file(ca, &target.server_name).map_err(|e| anyhow::anyhow!("--tls-ca: {e}"))?,
        ),
        (true, None, true) => Some(tether::ClientTls::insecure(&target.server_name).map_err(anyhow::Error::msg)?),
        (true, None, false) => {
            anyhow::bail!("wss:// needs --tls-ca FILE (the CA that signed the server's certificate) or --tls-insecure")
        }
    };
    let tls = match tls {
        Some(t) if !c.tls_resume => {
            let mut config = (**t.rustls_config()).clone();
            config.resumption = rustls::client::Resumption::disabled();
            Some(tether::ClientTls::new(std::sync::Arc::new(config), &target.server_name).map_err(anyhow::Error::msg)?)
        }
        other => other,
    };
    Ok(LoadConfig {
        tls,
        target,
        connections,
        rate: c.rate,
        max_connecting: c.max_connecting,
        duration: c.duration,
        ping_interval: Some(c.ping_interval).filter(|d| !d.is_zero()),
        ping_jitter: c.ping_jitter,
        ping_mode: c.ping_mode,
        pong_timeout: c.pong_timeout,
        message_rate: c.message_rate,
        closed_loop: c.closed_loop,
        message_size: c.message_size,
        payload: match c.payload {
            PayloadArg::Zeros => load::Payload::Zeros,
            PayloadArg::Json => load::Payload::Json,
        },
        reconnect: c.reconnect,
        source_ips,
        headers: c.headers.clone(),
        shards: c.shards,
        handshake_timeout: c.handshake_timeout,
        tcp_keepalive: c.tcp_keepalive,
        tcp_user_timeout: c.tcp_user_timeout,
        close_wait: c.close_wait,
        final_echo: c.final_echo,
        final_window: c.final_window,
        progress: if c.quiet { ProgressMode::Off } else { ProgressMode::Auto },
        centrifugo: None,
        deflate: c.deflate.unwrap_or(tether::Deflate::Off),
    })
}

fn finish(outcome: &Outcome, c: &Common, strict: bool) -> anyhow::Result<ExitCode> {
    let r = &outcome.report;
    print!("{}", r.table());
    if let Some(path) = &c.json {
        let mut text = serde_json::to_string_pretty(r)?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &c.hgrm {
        std::fs::write(path, report::hgrm(&outcome.ping_rtt, 1000.0))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let (Some(path), Some(h)) = (&c.delivery_hgrm, &outcome.delivery_latency) {
        std::fs::write(path, report::hgrm(h, 1000.0))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &c.plot {
        let title = format!("tether-load {}: {} connections", r.target, r.connections.requested);
        std::fs::write(path, plot::svg(&outcome.samples, &title))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    // Centrifugo: every subscriber got every publication exactly once, and nothing failed.
    let exact = r.centrifugo.as_ref().is_none_or(|c| {
        c.deliveries.gaps == 0
            && c.deliveries.duplicates == 0
            && c.deliveries.missing == 0
            && c.deliveries.unexpected == 0
            && c.recovery.not_recovered == 0
            && c.errors_by_code.is_empty()
            && c.api_failures.is_empty()
            && c.pushes.malformed == 0
    });
    let healthy = r.connections.established == r.connections.requested
        && r.connections.failed == 0
        && r.drops.total == 0
        && r.closes.unclean == 0
        && r.closes.left_open == 0
        && exact
        && !r.interrupted;
    if strict && !healthy {
        eprintln!(
            "tether-load: not every connection held: established {}/{}, failed {}, drops {}, unclean closes {}, left open {}",
            r.connections.established,
            r.connections.requested,
            r.connections.failed,
            r.drops.total,
            r.closes.unclean,
            r.closes.left_open
        );
        if !exact {
            eprintln!("tether-load: centrifugo deliveries were not exactly once, or errors were seen (see the report)");
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}
