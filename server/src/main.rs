//! tetherd: Tether's WebSocket gateway. Reads its settings, starts the engine with the default application,
//! and drains on SIGINT/SIGTERM.

mod app;
mod config;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tether::Engine;
use tracing::{error, info, warn};

use tetherd::gateway::tenants::{Initial, Sources, TenantTable};
use tetherd::gateway::{Gateway, GatewayHandler};

use crate::app::App;

#[cfg(not(feature = "system-alloc"))]
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
        // A log line that cannot be written (stderr a broken pipe: the supervisor that read it is gone) is
        // dropped. By default tracing reports the failure with eprintln!, which panics on the same broken
        // stderr: the signal thread died with it (SIGTERM then did nothing) and a shard thread's panic aborts.
        .log_internal_errors(false)
        .init();

    // Registered before the engine starts so that a signal arriving during start-up is queued, not fatal.
    let signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };

    let mut tenants = None;
    let started = if settings.serves_gateway() {
        let (config, table) = match gateway_setup(&settings) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("tetherd: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        tenants = Some(table.clone());
        Engine::start(config, move |_shard| GatewayHandler::new(table.clone())).map(Running::from)
    } else {
        Engine::start(settings.engine.clone(), |_shard| App).map(Running::from)
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
    let tls = settings.engine.tls.clone();
    std::thread::Builder::new()
        .name("tetherd-signals".into())
        .spawn(move || watch_signals(signals, handle, drain, tenants, tls))
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

/// Loads the gateway's and every tenant's config, reports the options they do not implement, and registers
/// the gateway's connection profile with the engine (its message size limit the largest of theirs).
fn gateway_setup(settings: &config::Settings) -> Result<(tether::Config, Arc<TenantTable>), String> {
    let sources = settings.tenant_sources()?;
    let initial = Initial::load(settings.gateway.as_deref(), &sources)?;
    for (name, config) in initial.configs() {
        for option in &config.unknown {
            warn!(option = %option, tenant = name, "gateway option not implemented by tetherd: ignored");
        }
        info!(
            tenant = name,
            namespaces = config.namespaces.len(),
            ping_interval = %humantime::format_duration(config.ping_interval),
            pong_timeout = %humantime::format_duration(config.pong_timeout),
            connection_limit = config.connection_limit,
            connection_rate_limit = config.connection_rate_limit,
            command_rate_limit = config.command_rate_limit,
            message_size_limit = config.message_size_limit,
            "gateway config"
        );
    }
    let mut engine = settings.engine.clone();
    let max_message_size = initial.max_message_size();
    let profile = engine.add_profile(Gateway::engine_profile(max_message_size, &engine));
    let reload_settings = settings.clone();
    let sources: Sources = Box::new(move || reload_settings.tenant_sources());
    let table = TenantTable::new(
        initial,
        settings.gateway.clone(),
        sources,
        settings.admin_key.clone(),
        profile,
        max_message_size,
    )?;
    let t = table.snapshot();
    info!(
        gateway = t.default.is_some(),
        tenants = ?t.named.keys().collect::<Vec<_>>(),
        admin = settings.admin_key.is_some(),
        "gateway: Centrifugo client protocol on /connection/websocket (tenants: /t/NAME/connection/websocket), \
         server API on /api/<method> (/t/NAME/api/<method>)"
    );
    Ok((engine, Arc::new(table)))
}

/// First SIGINT/SIGTERM: drain. Second: leave at once. SIGHUP: reload the TLS certificate and the gateway
/// and tenant files.
fn watch_signals(
    mut signals: Signals,
    handle: tether::EngineHandle,
    drain: std::time::Duration,
    tenants: Option<Arc<TenantTable>>,
    tls: Option<tether::TlsServer>,
) {
    let mut draining = false;
    for signal in signals.forever() {
        if signal == SIGHUP {
            if let Some(tls) = &tls {
                // New connections get the new certificate; open ones keep theirs. A bad file keeps the old one.
                match tls.reload() {
                    Ok(()) => info!(signal = "SIGHUP", "TLS certificate reloaded"),
                    Err(e) => error!(signal = "SIGHUP", error = %e, "TLS certificate not reloaded; the old one stays"),
                }
            }
            match &tenants {
                Some(table) => {
                    info!(signal = "SIGHUP", "reloading the gateway and tenant files");
                    table.reload(&handle);
                }
                None if tls.is_none() => info!(signal = "SIGHUP", "nothing to reload (no gateway, no TLS)"),
                None => {}
            }
            continue;
        }
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
