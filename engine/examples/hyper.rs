//! A plain hyper server hands its WebSockets to Tether.
//!
//! `cargo run --release -p tether --example hyper -- --listen 127.0.0.1:3000`
//!
//! The same app as the axum example, written against hyper alone: `GET /hello` answered by hyper, `GET /ws`
//! upgraded by hyper when the cookie `session=demo` is there (401 otherwise), then adopted by the engine,
//! which greets with `hello <user>` and echoes.

#[path = "common/mod.rs"]
mod common;

use std::convert::Infallible;

use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use tether::EngineHandle;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

async fn route(engine: EngineHandle, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/hello" => text(StatusCode::OK, "hello from hyper\n"),
        "/ws" => {
            let Some(user) = common::session_user(req.headers()) else {
                return Ok(text(StatusCode::UNAUTHORIZED, "log in first (cookie session=demo)\n"));
            };
            match common::upgrade_accept(&req) {
                Err((status, why)) => text(status, why),
                Ok(accept) => {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(common::hand_over(engine, on_upgrade, user, accept.deflate));
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let h = resp.headers_mut();
                    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
                    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
                    if let Some(ext) = accept.extensions.and_then(|e| header::HeaderValue::from_str(&e).ok()) {
                        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, ext);
                    }
                    match header::HeaderValue::from_str(&accept.key) {
                        Ok(v) => {
                            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
                            resp
                        }
                        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "bad accept key\n"),
                    }
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = common::Args::parse();
    let engine = common::start_engine(&args)?;
    let handle = engine.handle();
    let service = hyper::service::service_fn(move |req| route(handle.clone(), req));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("hyper app on http://{} (GET /hello, WebSocket /ws)", listener.local_addr()?);
    common::serve(listener, service).await;
    Ok(())
}
