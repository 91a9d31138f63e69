//! Whether an upgrade to a gateway's WebSocket endpoint may open, and on what terms: the Origin check
//! (`client.allowed_origins`), the encoding (JSON; protobuf is refused with 501), the connection rate
//! (`client.connection_rate_limit`) and the embedder's [`Authorizer`](super::authorizer::Authorizer). The
//! engine's own upgrades (`GatewayHandler::on_upgrade`) and sockets an embedder upgraded itself
//! ([`GatewayServer::admit`](super::embed::GatewayServer::admit), then `adopt`) go through the same function.

use std::sync::Arc;
use std::time::Instant;

use tether::{HttpError, UpgradeRequest};

use super::auth::ConnectClaims;
use super::authorizer::ConnectDecision;
use super::client::origin_allowed;
use super::metrics::Rejection;
use super::Gateway;

/// The subprotocol the JSON protocol is negotiated with.
pub const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// An upgrade the gateway admitted: answer the 101 with [`Admission::subprotocol`], then the connection
/// belongs to this gateway (as the embedder's `Authorizer` said, when it had a say).
pub struct Admission {
    pub(crate) gw: Arc<Gateway>,
    /// `Sec-WebSocket-Protocol` for the 101 answer (`centrifuge-json` when the client offered it).
    pub subprotocol: Option<&'static str>,
    pub(crate) preauth: Option<Box<ConnectClaims>>,
}

/// Checks an upgrade to `gw`'s endpoint; `Err` is the HTTP answer to refuse it with (403, 501, 503, or the
/// `Authorizer`'s). Counts the connection against `client.connection_rate_limit` when it passes that check.
pub fn admit(gw: &Arc<Gateway>, now: Instant, request: &UpgradeRequest) -> Result<Admission, HttpError> {
    if !origin_allowed(&gw.config.allowed_origins, request.origin.as_deref()) {
        gw.metrics.origin_refused();
        gw.metrics.reject(Rejection::Origin);
        return Err(HttpError::new(403, "Forbidden", "origin not allowed (client.allowed_origins)"));
    }
    let query = request.query.as_deref().unwrap_or("");
    let protobuf_query = query.split('&').any(|kv| kv == "format=protobuf" || kv == "cf_protocol=protobuf");
    let offers_json = request.protocols.iter().any(|p| p == JSON_SUBPROTOCOL);
    let offers_protobuf = request.protocols.iter().any(|p| p == "centrifuge-protobuf");
    if protobuf_query || (offers_protobuf && !offers_json) {
        return Err(HttpError::new(
            501,
            "Not Implemented",
            "the protobuf encoding (centrifuge-protobuf) is not served yet; use the JSON protocol",
        ));
    }
    if !gw.admit_connection(now) {
        gw.metrics.reject(Rejection::ConnectionRate);
        return Err(HttpError::new(
            503,
            "Service Unavailable",
            "too many new connections (client.connection_rate_limit); retry with backoff",
        ));
    }
    let preauth = match gw.authorizer.as_ref().map(|a| a.connect(request)) {
        None | Some(ConnectDecision::Default) => None,
        Some(ConnectDecision::Deny(e)) => {
            gw.metrics.reject(Rejection::Authorizer);
            return Err(e);
        }
        Some(ConnectDecision::Allow(c)) => {
            let info = c.info.and_then(|i| serde_json::value::RawValue::from_string(i).ok());
            Some(Box::new(ConnectClaims { user: c.user, info, channels: c.channels, ..Default::default() }))
        }
    };
    Ok(Admission { gw: gw.clone(), subprotocol: offers_json.then_some(JSON_SUBPROTOCOL), preauth })
}
