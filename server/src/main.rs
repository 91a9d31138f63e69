//! tetherd: Tether's WebSocket gateway. Reads its settings, starts the engine with the default application,
//! and drains on SIGINT/SIGTERM.

mod app;
mod config;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tether::Engine;
use tracing::{error, info, warn};

use tetherd::gateway::config::GatewayConfig;
use tetherd::gateway::{Gateway, GatewayHandler};

use crate::app::App;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad settings (the same clap uses for bad flags).
const EXIT_USAGE: u8 = 2;
/// Exit code when a second signal cuts the drain short (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

fn main() -> ExitCode {
    let settings = match config::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tetherd: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if settings.print_config {
        print!("{}", settings.to_toml());
        let _ = std::io::stdout().flush();
        return ExitCode::SUCCESS;
    }

    tracing_subscriber::fmt()
        .compact()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::new(&settings.log))
        .init();

    // Registered before the engine starts so that a signal arriving during start-up is queued, not fatal.
    let signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };

    let started = match &settings.gateway {
        None => Engine::start(settings.engine.clone(), |_shard| App).map(Running::from),
        Some(path) => {
            let (config, gateway) = match gateway_setup(path, &settings.engine) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("tetherd: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            Engine::start(config, move |_shard| GatewayHandler::new(gateway.clone())).map(Running::from)
        }
    };
    let engine = match started {
        Ok(engine) => engine,
        Err(e) => {
            let listen = settings.engine.listen.map_or_else(String::new, |a| a.to_string());
            error!(error = %e, listen = %listen, "cannot start the engine");
            eprintln!("tetherd: cannot start on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = engine.handle();

    let addr = engine.local_addr().or(settings.engine.listen);
    let addr_text = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
    let capacity = engine.capacity();
    info!(
        addr = %addr_text,
        shards = capacity.shards,
        rings_per_shard = capacity.rings_per_shard,
        slots_per_ring = capacity.slots_per_ring,
        max_connections = capacity.max_connections,
        rlimit_nofile = capacity.rlimit_nofile,
        recv_buffers_per_ring = capacity.recv_buffers,
        "listening"
    );
    {
        // Tests start tetherd on port 0 and read this line to learn the port.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "tetherd listening on {addr_text}");
        let _ = stdout.flush();
    }

    let drain = settings.drain_timeout;
    std::thread::Builder::new()
        .name("tetherd-signals".into())
        .spawn(move || watch_signals(signals, handle, drain))
        .expect("spawn the signal thread");

    engine.wait();
    info!("stopped");
    ExitCode::SUCCESS
}

/// The engine, whichever application it runs.
enum Running {
    Echo(Engine<App>),
    Gateway(Engine<GatewayHandler>),
}

impl From<Engine<App>> for Running {
    fn from(e: Engine<App>) -> Self {
        Running::Echo(e)
    }
}

impl From<Engine<GatewayHandler>> for Running {
    fn from(e: Engine<GatewayHandler>) -> Self {
        Running::Gateway(e)
    }
}

impl Running {
    fn handle(&self) -> tether::EngineHandle {
        match self {
            Running::Echo(e) => e.handle(),
            Running::Gateway(e) => e.handle(),
        }
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Running::Echo(e) => e.local_addr(),
            Running::Gateway(e) => e.local_addr(),
        }
    }

    fn capacity(&self) -> tether::Capacity {
        match self {
            Running::Echo(e) => e.capacity().clone(),
            Running::Gateway(e) => e.capacity().clone(),
        }
    }

    fn wait(self) {
        match self {
            Running::Echo(e) => e.wait(),
            Running::Gateway(e) => e.wait(),
        }
    }
}

/// Loads the gateway config, reports the options it does not implement, and registers the gateway's
/// connection profile with the engine.
fn gateway_setup(path: &std::path::Path, engine: &tether::Config) -> Result<(tether::Config, Arc<Gateway>), String> {
    let config = GatewayConfig::load(path)?;
    for option in &config.unknown {
        warn!(option = %option, file = %path.display(), "gateway option not implemented by tetherd: ignored");
    }
    let mut engine = engine.clone();
    let profile = engine.add_profile(Gateway::engine_profile(&config, &engine));
    let gateway = Gateway::new(config, profile).map_err(|e| format!("{}: {e}", path.display()))?;
    info!(
        file = %path.display(),
        namespaces = gateway.config.namespaces.len(),
        ping_interval = %humantime::format_duration(gateway.config.ping_interval),
        pong_timeout = %humantime::format_duration(gateway.config.pong_timeout),
        "gateway: Centrifugo client protocol on /connection/websocket, server API on /api/<method>"
    );
    Ok((engine, Arc::new(gateway)))
}

/// First SIGINT/SIGTERM: drain. Second: leave at once.
fn watch_signals(mut signals: Signals, handle: tether::EngineHandle, drain: std::time::Duration) {
    let mut draining = false;
    for signal in signals.forever() {
        let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
        if draining {
            warn!(signal = name, "second signal, exiting now");
            std::process::exit(EXIT_INTERRUPTED);
        }
        draining = true;
        info!(signal = name, "shutting down, draining for {}", humantime::format_duration(drain));
        handle.shutdown(drain);
    }
}
