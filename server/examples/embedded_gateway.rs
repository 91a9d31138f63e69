//! The gateway inside a program that has its own HTTP app: `GatewayServer` serves the Centrifugo-compatible
//! protocol on a port of its own, the program's axum app serves its routes on another, the program's own
//! session cookie decides who connects (an `Authorizer`), and the app publishes through the gateway's API in
//! process.
//!
//! `cargo run --release -p tetherd --example embedded_gateway -- [APP_ADDR] [GATEWAY_ADDR]`
//! (defaults 127.0.0.1:3000 and 127.0.0.1:8000).
//!
//! - `GET /hello` on the app: plain axum.
//! - `POST /publish/{channel}` on the app, body = JSON data: published to the channel (the API's answer).
//! - `ws://GATEWAY_ADDR/connection/websocket` with the cookie `session=<user>`: a Centrifugo client of user
//!   `<user>` (401 without); it may subscribe to `news` and to `user:<user>`, no other channel (error 103).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tether::{HttpError, UpgradeRequest};
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
    let request = serde_json::json!({ "channel": channel, "data": serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::String(body)) });
    match gateway.api("publish", &request.to_string()) {
        Ok(result) => (StatusCode::OK, result + "\n"),
        Err((code, message)) => {
            (StatusCode::BAD_REQUEST, format!("{{\"code\":{code},\"message\":{}}}\n", serde_json::json!(message)))
        }
    }
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
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind(&app_addr).await?;
    println!(
        "app on http://{} (GET /hello, POST /publish/CHANNEL), gateway on ws://{gateway_addr}/connection/websocket",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
