//! An existing axum app hands its WebSockets to Tether.
//!
//! `cargo run --release -p tether --example axum -- --listen 127.0.0.1:3000`
//!
//! `GET /hello` is plain axum. `GET /ws` is a WebSocket route: the app's own auth (here the cookie
//! `session=demo`, 401 otherwise) decides who connects, axum/hyper send the 101, and the upgraded socket is
//! adopted by the engine, which then does the rest (frames, server pings and pong deadlines, limits) in its
//! io_uring shards. The adopted connection greets with `hello <user>` and echoes every message.

#[path = "common/mod.rs"]
mod common;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use hyper_util::service::TowerToHyperService;
use tether::EngineHandle;

async fn hello() -> &'static str {
    "hello from axum\n"
}

async fn ws(State(engine): State<EngineHandle>, mut req: Request) -> Response {
    let Some(user) = common::session_user(req.headers()) else {
        return (StatusCode::UNAUTHORIZED, "log in first (cookie session=demo)\n").into_response();
    };
    let accept = match common::upgrade_accept(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err((status, why)) => return (status, why).into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(common::hand_over(engine, on_upgrade, user));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = common::Args::parse();
    let engine = common::start_engine(&args)?;
    let app = Router::new().route("/hello", get(hello)).route("/ws", get(ws)).with_state(engine.handle());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("axum app on http://{} (GET /hello, WebSocket /ws)", listener.local_addr()?);
    common::serve(listener, TowerToHyperService::new(app)).await;
    Ok(())
}
