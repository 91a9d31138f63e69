//! The smallest Tether server: echoes every message. `cargo run --release -p tether --example echo [ADDR]`.

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
    let engine = Engine::start(config, |_| Echo)?;
    println!("echo listening on {}", engine.local_addr().expect("listening"));
    engine.wait();
    Ok(())
}
