//! What the axum and hyper examples share: the command line, the echo handler the adopted connections get,
//! the WebSocket upgrade answer the app's own HTTP stack sends, and the hand-over of the upgraded socket.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hyper::header::{self, HeaderMap};
use hyper::upgrade::OnUpgrade;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tether::proto::{deflate, Role};
use tether::{Config, ConnId, Ctx, Engine, EngineHandle, Handler, Message, ProfileId};

/// The allocator tetherd uses too, so the adopted path and axum's own WebSocket are measured alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
pub struct Args {
    /// Address the app's HTTP server listens on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Server ping cadence of adopted connections.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// A connection that does not answer a ping within this is closed (1011).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub pong_timeout: Duration,
    /// Connections the engine holds at most (0 = one registered file table per shard, as tetherd; more
    /// adds rings per shard).
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Engine shard threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
}

/// The user the app's own auth found, kept in the connection's slot.
#[derive(Default)]
pub struct User(pub String);

/// Echoes every message; greets each adopted connection with the user its cookie named.
pub struct Echo;

impl Handler for Echo {
    type Conn = User;
    type Notice = ();

    fn on_adopt(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, context: Box<dyn std::any::Any + Send>) {
        if let (Some(state), Ok(user)) = (ctx.state(conn), context.downcast::<String>()) {
            state.0 = *user;
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let hello = format!("hello {}", ctx.state(conn).map(|u| u.0.clone()).unwrap_or_default());
        let _ = ctx.send(conn, Message::Text(&hello));
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = ctx.send(conn, message);
    }
}

/// The engine the app hands its WebSockets to. It listens on nothing: the app's HTTP stack accepts.
pub fn start_engine(args: &Args) -> std::io::Result<Engine<Echo>> {
    let config = Config {
        listen: None,
        shards: args.shards,
        max_connections: args.max_connections,
        ping_interval: Some(args.ping_interval),
        pong_timeout: args.pong_timeout,
        ..Config::default()
    };
    Engine::start(config, |_| Echo)
}

/// The user named by the cookie `session=demo` (the app's auth, standing in for a real session lookup).
pub fn session_user(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    cookies.flat_map(|c| c.split(';')).map(str::trim).any(|c| c == "session=demo").then(|| "demo".to_string())
}

/// Check a WebSocket upgrade request as the engine checks the ones it parses (RFC 6455 section 4.2.1) and
/// return what the 101 carries (the accept key, permessage-deflate agreed as the engine would agree it), or
/// the status and text to refuse it with.
pub fn upgrade_accept<B>(req: &hyper::Request<B>) -> Result<Accepted, (StatusCode, String)> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let headers = req.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    match tether::proto::handshake::upgrade_from_parts(req.method().as_str(), target, headers) {
        Ok((request, key)) => {
            // permessage-deflate as the engine would answer it (shared mode: nothing kept per connection);
            // the engine is told what was agreed when it adopts the socket.
            let (deflate, extensions) = match deflate::accept_offer(&request.extensions, deflate::Deflate::Shared) {
                Some((per_conn, answer)) => (per_conn, Some(answer)),
                None => (Default::default(), None),
            };
            Ok(Accepted { key, deflate, extensions })
        }
        Err(e) => Err((StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), e.message + "\n")),
    }
}

/// What the 101 carries, and what the engine must know of it.
pub struct Accepted {
    /// Sec-WebSocket-Accept.
    pub key: String,
    /// The permessage-deflate agreement, for `adopt_negotiated`.
    pub deflate: deflate::PerConn,
    /// Sec-WebSocket-Extensions of the 101, if deflate was agreed.
    pub extensions: Option<String>,
}

/// Once hyper has sent the 101, take the upgraded socket back from it (the tokio TcpStream the connection
/// was served on, plus whatever hyper read past the request) and hand it to the engine.
pub async fn hand_over(engine: EngineHandle, on_upgrade: OnUpgrade, user: String, deflate: deflate::PerConn) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => return eprintln!("upgrade failed: {e}"),
    };
    let parts = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => return eprintln!("upgraded connection is not a plain TCP stream"),
    };
    let stream = match parts.io.into_inner().into_std() {
        Ok(s) => s,
        Err(e) => return eprintln!("into_std: {e}"),
    };
    let leftover = parts.read_buf.to_vec();
    if let Err(e) = engine.adopt_negotiated(stream, Role::Server, leftover, ProfileId::DEFAULT, deflate, user).await {
        // A refused socket comes back; dropping it closes the connection.
        eprintln!("{e}");
    }
}

/// Serve each accepted TCP connection with hyper's HTTP/1 server, upgrades enabled (what hyper's `Upgraded`
/// needs to be downcast back to the TcpStream).
pub async fn serve<S, B>(listener: tokio::net::TcpListener, service: S)
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = conn.with_upgrades().await;
        });
    }
}
