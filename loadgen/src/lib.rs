//! tether-load: a WebSocket load generator on the Tether engine's client role.
//!
//! [`load::run`] ramps connections at a paced rate (spread over shards and source addresses), holds them with
//! pings and optional echo traffic, closes them with 1000, and returns a [`report::Report`]: handshake, ping
//! and echo latency histograms, server ping intervals, and idle drops by close code and phase.
//!
//! With `--protocol centrifugo` ([`centrifugo`]) each connection is a Centrifugo client (protocol v2, JSON):
//! it connects with a JWT, subscribes to K of N channels, answers the server's pings, optionally closes and
//! recovers periodically, while a publisher (the HTTP API, or the connections themselves) publishes; the
//! report adds publish-to-delivery latency and an exactly-once check by offset.

pub mod centrifugo;
pub mod load;
pub mod plot;
pub mod report;
pub mod url;
pub mod window;

use std::net::SocketAddr;
use std::time::Duration;

use tether::{Config, ConnId, Ctx, Engine, Handler, Message};

/// The demo's server: echoes every message back.
pub struct EchoHandler;

impl Handler for EchoHandler {
    type Conn = ();
    type Notice = ();

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = ctx.send(conn, message);
    }
}

/// Starts an in-process Tether echo server on 127.0.0.1 (port 0) sized for `connections`, pinging every
/// `ping_interval`. Returns the engine and its address.
pub fn start_echo_server(
    connections: usize,
    ping_interval: Option<Duration>,
) -> anyhow::Result<(Engine<EchoHandler>, SocketAddr)> {
    let config = Config {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        max_connections: connections + connections / 8 + 256,
        ping_interval,
        ..Config::default()
    };
    let engine =
        Engine::start(config, |_| EchoHandler).map_err(|e| anyhow::anyhow!("cannot start the echo server: {e}"))?;
    let addr = engine.local_addr().ok_or_else(|| anyhow::anyhow!("echo server has no address"))?;
    Ok((engine, addr))
}
