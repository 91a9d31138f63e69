//! The embedder's say over who connects and subscribes: an [`Authorizer`] given to
//! [`GatewayServer`](super::embed::GatewayServer) (or set on a [`Gateway`](super::Gateway)) is asked at each
//! WebSocket upgrade and each subscribe without a token, before the config's own rules (tokens, namespace
//! permissions). It plays the part of Centrifugo's connect and subscribe proxies, in process.
//!
//! Both calls run on the engine's shard threads, in the middle of the connection's handling: they must not
//! block (no network or database round trip; look up what the program already holds, such as a session
//! table, or answer [`ConnectDecision::Deny`] and let the client retry).

use tether::{HttpError, UpgradeRequest};

/// Who a connection is, as the embedder decided: what a connection token's claims would have said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The user id ("" = anonymous).
    pub user: String,
    /// Connection info (raw JSON), shown in presence, join/leave and publications.
    pub info: Option<String>,
    /// Channels to subscribe the connection to on connect (server-side subscriptions).
    pub channels: Vec<String>,
}

/// The answer to an upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectDecision {
    /// The config's rules decide (a connection token, or anonymous access if allowed).
    Default,
    /// This connection is `Credentials::user`: its `connect` command succeeds without a token (a token it
    /// sends anyway is not looked at).
    Allow(Credentials),
    /// Refuse the upgrade with this HTTP answer (401, 403 ...).
    Deny(HttpError),
}

/// The answer to a subscribe command that carries no subscription token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// The namespace's permissions decide.
    Default,
    /// Subscribe (whatever the namespace's permissions say).
    Allow,
    /// Answer error 103 (permission denied).
    Deny,
}

/// The embedder's auth callbacks. Both default to [`ConnectDecision::Default`] / [`SubscribeDecision::Default`].
///
/// ```
/// use tetherd::gateway::authorizer::{Authorizer, ConnectDecision, Credentials, SubscribeDecision};
/// use tether::{HttpError, UpgradeRequest};
///
/// /// Users come from the program's own session cookie; each may read only its own `user:<id>` channel.
/// struct Sessions;
/// impl Authorizer for Sessions {
///     fn connect(&self, request: &UpgradeRequest) -> ConnectDecision {
///         let cookie = request.header("cookie").unwrap_or("");
///         match cookie.split(';').map(str::trim).find_map(|c| c.strip_prefix("session=")) {
///             Some(user) if !user.is_empty() => {
///                 ConnectDecision::Allow(Credentials { user: user.to_string(), ..Default::default() })
///             }
///             _ => ConnectDecision::Deny(HttpError::new(401, "Unauthorized", "log in first")),
///         }
///     }
///     fn subscribe(&self, user: &str, channel: &str) -> SubscribeDecision {
///         if channel == format!("user:{user}") { SubscribeDecision::Allow } else { SubscribeDecision::Deny }
///     }
/// }
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// A WebSocket upgrade to the gateway's endpoint (after the Origin check): its path, query, headers
    /// (cookies) and peer address.
    fn connect(&self, _request: &UpgradeRequest) -> ConnectDecision {
        ConnectDecision::Default
    }
    /// A connected client's subscribe command to `channel` without a subscription token (a token, when
    /// sent, is verified as usual and this is not asked).
    fn subscribe(&self, _user: &str, _channel: &str) -> SubscribeDecision {
        SubscribeDecision::Default
    }
}
