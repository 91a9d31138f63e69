//! The smallest Tether server: echoes every message.
//! `cargo run --release -p tether --example echo [ADDR] [PING_SECONDS]`.
//!
//! PING_SECONDS sets the server's ping interval (default 20, the engine's; 0 turns server pings off). The
//! Autobahn|Testsuite run turns them off: its client answers a ping at once, even in the middle of a frame it
//! is sending in pieces (cases 6.4.3 and 6.4.4), so the pong becomes payload of that frame, and other cases
//! count the ping as an unexpected event.

use tether::{Config, ConnId, Ctx, Engine, Handler, Message};

struct Echo;

impl Handler for Echo {
    type Conn = ();
    type Notice = ();

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = ctx.send(conn, message);
    }
}

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut config = Config::default();
    if let Some(addr) = std::env::args().nth(1) {
        config.listen = Some(addr.parse().expect("listen address"));
    }
    if let Some(secs) = std::env::args().nth(2) {
        let secs: u64 = secs.parse().expect("PING_SECONDS: a whole number of seconds");
        config.ping_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    let engine = Engine::start(config, |_| Echo)?;
    println!("echo listening on {}", engine.local_addr().expect("listening"));
    engine.wait();
    Ok(())
}
