//! An existing axum app hands its WebSockets to Tether.
//!
//! `cargo run --release -p tether --example axum -- --listen 127.0.0.1:3000`
//!
//! `GET /hello` is plain axum. `GET /ws` is a WebSocket route: the app's own auth (here the cookie
//! `session=demo`, 401 otherwise) decides who connects, axum/hyper send the 101, and the upgraded socket is
//! adopted by the engine, which then does the rest (frames, server pings and pong deadlines, limits) in its
//! io_uring shards. The adopted connection greets with `hello <user>` and echoes every message.
//!
//! `--native` serves the same route with axum's own WebSocket (tokio-tungstenite, one task and one ping
//! timer per connection) instead, for the side-by-side in BENCHMARKS.md (benches/scripts/compare.sh).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use hyper_util::service::TowerToHyperService;
use tether::EngineHandle;

#[derive(Parser, Debug)]
struct AxumArgs {
    #[command(flatten)]
    common: common::Args,
    /// Serve /ws with axum's own WebSocket (tokio-tungstenite) instead of handing it to the engine.
    #[arg(long)]
    native: bool,
}

#[derive(Clone)]
struct AppState {
    engine: EngineHandle,
    native: bool,
    ping_interval: Duration,
    pong_timeout: Duration,
}

async fn hello() -> &'static str {
    "hello from axum\n"
}

async fn ws(State(app): State<AppState>, req: Request) -> Response {
    let Some(user) = common::session_user(req.headers()) else {
        return (StatusCode::UNAUTHORIZED, "log in first (cookie session=demo)\n").into_response();
    };
    if app.native {
        return native(app, user, req).await;
    }
    adopt(app.engine, user, req)
}

/// The adopted path: answer the upgrade, then hand the socket to the engine once hyper lets go of it.
fn adopt(engine: EngineHandle, user: String, mut req: Request) -> Response {
    let accept = match common::upgrade_accept(&req) {
        Ok(accept) => accept,
        Err((status, why)) => return (status, why).into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(common::hand_over(engine, on_upgrade, user, accept.deflate));
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept.key);
    if let Some(extensions) = accept.extensions {
        resp = resp.header(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    resp.body(axum::body::Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The tokio path, as an axum app usually writes it: axum's WebSocket, one task per connection with its
/// own ping timer and pong deadline.
async fn native(app: AppState, user: String, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade.on_upgrade(move |socket| native_echo(socket, user, app.ping_interval, app.pong_timeout))
}

async fn native_echo(mut socket: WebSocket, user: String, ping_interval: Duration, pong_timeout: Duration) {
    if socket.send(ws::Message::Text(format!("hello {user}").into())).await.is_err() {
        return;
    }
    let start = tokio::time::Instant::now() + ping_interval;
    let mut ticker = tokio::time::interval_at(start, ping_interval);
    let mut ping_sent: Option<tokio::time::Instant> = None;
    loop {
        let deadline = ping_sent.map(|t| t + pong_timeout);
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(m @ (ws::Message::Text(_) | ws::Message::Binary(_)))) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(ws::Message::Pong(_))) => ping_sent = None,
                Some(Ok(ws::Message::Ping(_))) => {} // answered by tungstenite
                Some(Ok(ws::Message::Close(_))) | None | Some(Err(_)) => return,
            },
            _ = ticker.tick() => {
                if ping_sent.is_none() {
                    ping_sent = Some(tokio::time::Instant::now());
                    if socket.send(ws::Message::Ping(Vec::new().into())).await.is_err() {
                        return;
                    }
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                let frame = ws::CloseFrame { code: 1011, reason: "pong timeout".into() };
                let _ = socket.send(ws::Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = AxumArgs::parse();
    let engine = common::start_engine(&args.common)?;
    let state = AppState {
        engine: engine.handle(),
        native: args.native,
        ping_interval: args.common.ping_interval,
        pong_timeout: args.common.pong_timeout,
    };
    let app = Router::new().route("/hello", get(hello)).route("/ws", get(ws)).with_state(state);
    let listener = tokio::net::TcpListener::bind(args.common.listen).await?;
    let mode = if args.native { "axum's own WebSocket" } else { "adopted by the engine" };
    println!("axum app on http://{} (GET /hello, WebSocket /ws {mode})", listener.local_addr()?);
    common::serve(listener, TowerToHyperService::new(app)).await;
    Ok(())
}
