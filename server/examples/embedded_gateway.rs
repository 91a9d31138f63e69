//! The gateway inside a program that has its own HTTP app: `GatewayServer` serves the Centrifugo-compatible
//! protocol on a port of its own, and the program's axum app serves its routes on another, where it also
//! mounts the gateway's endpoint itself (its route answers the upgrade, the gateway adopts the socket). The
//! program's own session cookie decides who connects (an `Authorizer`), and the app publishes through the
//! gateway's API in process.
//!
//! `cargo run --release -p tetherd --example embedded_gateway -- [APP_ADDR] [GATEWAY_ADDR]`
//! (defaults 127.0.0.1:3000 and 127.0.0.1:8000).
//!
//! - `GET /hello` on the app: plain axum.
//! - `POST /publish/{channel}` on the app, body = JSON data: published to the channel (the API's answer).
//! - `ws://GATEWAY_ADDR/connection/websocket` and `ws://APP_ADDR/connection/websocket`, with the cookie
//!   `session=<user>`: a Centrifugo client of user `<user>` (401 without); it may subscribe to `news` and to
//!   `user:<user>`, no other channel (error 103).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tether::proto::handshake::upgrade_from_parts;
use tether::{HttpError, UpgradeRequest};
use tetherd::gateway::admission::Admission;
use tetherd::gateway::authorizer::{Authorizer, ConnectDecision, Credentials, SubscribeDecision};
use tetherd::gateway::config::GatewayConfig;
use tetherd::gateway::embed::{GatewayServer, GatewayServerConfig};

/// The program's own sessions (here: the cookie names the user; a real program looks its session up).
struct Sessions;

impl Authorizer for Sessions {
    fn connect(&self, request: &UpgradeRequest) -> ConnectDecision {
        let cookies = request.header("cookie").unwrap_or("");
        match cookies.split(';').map(str::trim).find_map(|c| c.strip_prefix("session=")) {
            Some(user) if !user.is_empty() && user.len() <= 64 => ConnectDecision::Allow(Credentials {
                user: user.to_string(),
                info: Some(format!("{{\"via\":\"cookie\",\"user\":{}}}", serde_json::json!(user))),
                channels: Vec::new(),
            }),
            _ => ConnectDecision::Deny(HttpError::new(401, "Unauthorized", "log in first (cookie session=USER)")),
        }
    }

    fn subscribe(&self, user: &str, channel: &str) -> SubscribeDecision {
        if channel == "news" || channel.strip_prefix("user:") == Some(user) {
            SubscribeDecision::Allow
        } else {
            SubscribeDecision::Deny
        }
    }
}

async fn publish(
    State(gateway): State<Arc<GatewayServer>>,
    Path(channel): Path<String>,
    body: String,
) -> (StatusCode, String) {
    let data = serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::String(body));
    let request = serde_json::json!({ "channel": channel, "data": data });
    match gateway.api("publish", &request.to_string()) {
        Ok(result) => (StatusCode::OK, result + "\n"),
        Err((code, message)) => {
            (StatusCode::BAD_REQUEST, format!("{{\"code\":{code},\"message\":{}}}\n", serde_json::json!(message)))
        }
    }
}

/// The gateway's endpoint on the app's own port: the gateway admits the upgrade, the app answers the 101,
/// the gateway adopts the socket.
async fn connection(State(gateway): State<Arc<GatewayServer>>, mut req: Request) -> Response {
    // The upgrade checked as the engine checks its own (400 / 426), then as the gateway's endpoint would.
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_string();
    let headers = req.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let checked = upgrade_from_parts(req.method().as_str(), &target, headers)
        .and_then(|(request, accept)| gateway.admit(&request).map(|admission| (admission, accept)));
    let (admission, accept): (Admission, String) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            return (status, format!("{}\n", e.message)).into_response();
        }
    };
    let subprotocol = admission.subprotocol;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let Ok(parts) = upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() else { return };
        let Ok(stream) = parts.io.into_inner().into_std() else { return };
        if let Err(e) = gateway.adopt(stream, parts.read_buf.to_vec(), admission).await {
            eprintln!("{e}");
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = subprotocol {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let app_addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let gateway_addr = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());

    // History so a reconnecting client recovers what it missed; `user:` is a namespace of its own.
    let gateway = GatewayConfig::from_json(
        r#"{"channel": {
            "without_namespace": {"history_size": 100, "history_ttl": "5m", "force_recovery": true},
            "namespaces": [{"name": "user", "history_size": 100, "history_ttl": "5m", "force_recovery": true}]
        }}"#,
    )?;
    let engine = tether::Config { listen: Some(gateway_addr.parse()?), ..Default::default() };
    let server = GatewayServer::start(GatewayServerConfig { engine, gateway, authorizer: Some(Arc::new(Sessions)) })?;
    let server = Arc::new(server);
    let gateway_addr = server.local_addr().ok_or("gateway not listening")?;

    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app\n" }))
        .route("/publish/{channel}", post(publish))
        .route("/connection/websocket", get(connection))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind(&app_addr).await?;
    println!(
        "app on http://{} (GET /hello, POST /publish/CHANNEL, /connection/websocket), gateway on ws://{gateway_addr}/connection/websocket",
        listener.local_addr()?
    );
    // hyper's HTTP/1 server with upgrades, so the upgraded connection downcasts back to its TcpStream
    // (`axum::serve` wraps the stream in a type of its own).
    loop {
        let (stream, _peer) = listener.accept().await?;
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = conn.with_upgrades().await;
        });
    }
}
