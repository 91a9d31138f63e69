//! The server HTTP API: `POST /api/<method>` with a JSON body, authorised by `X-API-Key` (or
//! `Authorization: apikey KEY`, or `?api_key=`), answered `200 {"result":..}` or `200 {"error":..}`
//! (GATEWAY-PROTOCOL.md §9). It runs on the shard thread that took the HTTP request: reads and publishes go
//! straight to the broker; work on connections (subscribe, unsubscribe, refresh) is sent to the shards that
//! hold them; disconnects go through the engine handle.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tether::{EngineHandle, HttpRequest, HttpResponse, SendError};

use super::broker::{parse_client, ClientId, Position, Publish};
use super::client::{
    history_body, history_job, history_json, history_opts, presence_json, presence_stats_json, redis_presence_body,
};
use super::protocol::{push_str, Disconnect, ErrorCode, Obj};
use super::redis_engine::{ApiMethod, BatchDone, BatchItem, Job, Outcome, ReplyTo};
use super::{Gateway, Notice};

/// Where the API is mounted (Centrifugo's `http_api.handler_prefix` default).
pub const PREFIX: &str = "/api";

const JSON: &str = "application/json";

/// An API error: code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError(pub ErrorCode, pub String);

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        ApiError(code, code.message().to_string())
    }
}

/// A bad request: answered with Centrifugo's message ("bad request", which clients may match on); what was
/// wrong is logged (debug).
fn bad(detail: impl Into<String>) -> ApiError {
    tracing::debug!(detail = %detail.into(), "api bad request");
    ErrorCode::BAD_REQUEST.into()
}

/// Sends a notice to a shard's handler; false when its queue refused it.
pub type Notify<'a> = &'a dyn Fn(usize, Notice) -> Result<(), SendError>;

/// Whether the request carries the configured API key.
pub fn authorized(gw: &Gateway, request: &HttpRequest) -> bool {
    if gw.config.api_insecure {
        return true;
    }
    let key = &gw.config.api_key;
    if key.is_empty() {
        return false;
    }
    if let Some(k) = request.header("x-api-key") {
        return k == key;
    }
    if let Some(auth) = request.header("authorization") {
        let mut parts = auth.splitn(2, ' ');
        let scheme = parts.next().unwrap_or("");
        return scheme.eq_ignore_ascii_case("apikey") && parts.next().map(str::trim) == Some(key.as_str());
    }
    let query = request.query.as_deref().unwrap_or("");
    query.split('&').filter_map(|kv| kv.strip_prefix("api_key=")).any(|k| k == key)
}

/// Answers one API request; `path` is the request's path within its gateway (`/api/publish`, also for
/// `/t/NAME/api/publish`).
pub fn handle(gw: &Gateway, handle: &EngineHandle, notify: Notify<'_>, request: &HttpRequest, path: &str) -> ApiReply {
    let method = path.strip_prefix("/api/").unwrap_or("");
    if let (Some(_), Some(conn)) = (&gw.redis, request.conn) {
        if request.method == "POST" && authorized(gw, request) {
            let body = if request.body.is_empty() { &b"{}"[..] } else { &request.body[..] };
            match redis_job(gw, handle, notify, method, body, ReplyTo::Api { conn, method: ApiMethod::Publish }) {
                Some(Ok(job)) => {
                    gw.metrics.api_call(method, 200);
                    return ApiReply::Later(job);
                }
                Some(Err(e)) => {
                    gw.metrics.api_call(method, 200);
                    return ApiReply::Now(HttpResponse::new(200, "OK", JSON, error_json(&e)));
                }
                None => {}
            }
        }
    }
    let response = respond(gw, handle, notify, request, method);
    gw.metrics.api_call(if method.is_empty() { "-" } else { method }, response.status);
    ApiReply::Now(response)
}

/// An API answer now, or a Redis engine job whose outcome is the answer (see [`redis_answer`]).
pub enum ApiReply {
    Now(HttpResponse),
    Later(Job),
}

/// The Redis engine's job for a method that reads or writes what Redis holds; `None` for the others.
/// `reply` names the request (its method is set here).
fn redis_job(
    gw: &Gateway,
    handle: &EngineHandle,
    notify: Notify<'_>,
    method: &str,
    body: &[u8],
    reply: ReplyTo,
) -> Option<Result<Job, ApiError>> {
    let m = method_of(method)?;
    let reply = match reply {
        ReplyTo::Api { conn, .. } => ReplyTo::Api { conn, method: m },
        other => other,
    };
    Some((|| match m {
        ApiMethod::Publish | ApiMethod::Broadcast => {
            let b: PublishBody = parse(body)?;
            let names: Vec<&str> = if m == ApiMethod::Publish {
                vec![b.channel.as_str()]
            } else {
                if b.channels.is_empty() {
                    return Err(bad("channels required"));
                }
                b.channels.iter().map(String::as_str).collect()
            };
            let mut channels = Vec::with_capacity(names.len());
            for name in names {
                let ns = namespace(gw, name)?;
                let history = (!b.skip_history && ns.history_enabled()).then(|| history_opts(gw, ns));
                channels.push((Arc::from(name), history));
            }
            let (data, tags) = publication_parts(&b)?;
            let publication = super::protocol::publication(data, None, 0, tags.as_deref()).into();
            gw.metrics.publication(true);
            Ok(Job::Publish { channels, publication, reply })
        }
        ApiMethod::Presence | ApiMethod::PresenceStats => {
            let b: ChannelBody = parse(body)?;
            if !namespace(gw, &b.channel)?.presence {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            Ok(Job::Presence { channel: b.channel.as_str().into(), stats: m == ApiMethod::PresenceStats, reply })
        }
        ApiMethod::History => {
            let b: ChannelBody = parse(body)?;
            let ns = namespace(gw, &b.channel)?;
            let since = b.since.as_ref().map(|p| (p.offset, p.epoch.as_str()));
            Ok(history_job(gw, &b.channel, ns, b.limit, since, b.reverse, reply)?)
        }
        ApiMethod::HistoryRemove => {
            let b: ChannelBody = parse(body)?;
            if !namespace(gw, &b.channel)?.history_enabled() {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            Ok(Job::HistoryRemove { channel: b.channel.as_str().into(), reply })
        }
        ApiMethod::Channels => {
            let b: ChannelBody = parse(body)?;
            Ok(Job::Channels { pattern: b.pattern, reply })
        }
        ApiMethod::Batch => {
            let b: BatchBody = parse(body)?;
            let mut items = Vec::with_capacity(b.commands.len());
            for command in &b.commands {
                let Some((name, params)) = command.iter().next() else {
                    items.push(BatchItem::Ready(error_json(&bad("empty command"))));
                    continue;
                };
                let params = serde_json::to_vec(params).expect("a Value serializes");
                let item = match redis_job(gw, handle, notify, name, &params, ReplyTo::Nobody) {
                    Some(Ok(Job::Batch { .. })) => BatchItem::Ready(error_json(&bad("a batch inside a batch"))),
                    Some(Ok(job)) => {
                        let method = method_of(name).expect("redis_job knows it");
                        BatchItem::Run { name: name.clone(), method, job: Box::new(job) }
                    }
                    Some(Err(e)) => BatchItem::Ready(error_json(&e)),
                    None => BatchItem::Ready(match call(gw, handle, notify, name, &params) {
                        Ok(r) => named(name, &r),
                        Err(e) => error_json(&e),
                    }),
                };
                items.push(item);
            }
            Ok(Job::Batch { items, reply })
        }
    })())
}

/// A method the Redis engine answers, called in process (`GatewayServer::api`): the calling thread waits for
/// Redis (at most `timeout`). `None` for a method Redis has no part in (or without the Redis engine).
pub fn redis_call(
    gw: &Gateway,
    handle: &EngineHandle,
    notify: Notify<'_>,
    method: &str,
    body: &[u8],
    timeout: std::time::Duration,
) -> Option<Result<String, ApiError>> {
    let link = gw.redis.as_ref()?;
    let m = method_of(method)?;
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    let (tx, rx) = std::sync::mpsc::channel();
    let job = match redis_job(gw, handle, notify, method, body, ReplyTo::Caller(tx))? {
        Ok(job) => job,
        Err(e) => return Some(Err(e)),
    };
    link.submit(handle, job);
    let Ok(outcome) = rx.recv_timeout(timeout) else {
        return Some(Err(ApiError(ErrorCode::INTERNAL, "internal server error: no answer from Redis in time".into())));
    };
    Some(redis_result(m, outcome).map_err(|json| {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let code = v["error"]["code"].as_u64().unwrap_or(100) as u32;
        let message = v["error"]["message"].as_str().unwrap_or("internal server error").to_string();
        ApiError(ErrorCode(code), message)
    }))
}

/// The methods the Redis engine answers.
fn method_of(name: &str) -> Option<ApiMethod> {
    Some(match name {
        "publish" => ApiMethod::Publish,
        "broadcast" => ApiMethod::Broadcast,
        "presence" => ApiMethod::Presence,
        "presence_stats" => ApiMethod::PresenceStats,
        "history" => ApiMethod::History,
        "history_remove" => ApiMethod::HistoryRemove,
        "channels" => ApiMethod::Channels,
        "batch" => ApiMethod::Batch,
        _ => return None,
    })
}

/// `{"NAME":RESULT}`, a batch reply.
fn named(name: &str, result: &str) -> String {
    let mut out = String::from("{");
    push_str(&mut out, name);
    out.push(':');
    out.push_str(result);
    out.push('}');
    out
}

fn redis_error(e: &str) -> String {
    tracing::warn!(error = %e, "API call through Redis failed");
    error_json(&ApiError(ErrorCode::INTERNAL, format!("internal server error: {e}")))
}

fn position_json(p: &Option<Position>) -> String {
    match p {
        Some(p) => Obj::new().num("offset", p.offset).str("epoch", &p.epoch).finish(),
        None => "{}".into(),
    }
}

/// The API answer for a Redis engine outcome.
pub fn redis_answer(method: ApiMethod, outcome: Outcome) -> HttpResponse {
    let body = match redis_result(method, outcome) {
        Ok(r) if method == ApiMethod::Batch => r,
        Ok(r) => format!("{{\"result\":{r}}}"),
        Err(e) => e,
    };
    HttpResponse::new(200, "OK", JSON, body)
}

/// A Redis engine outcome as the method's result JSON, or an error's JSON.
fn redis_result(method: ApiMethod, outcome: Outcome) -> Result<String, String> {
    match outcome {
        Outcome::Published(results) if method == ApiMethod::Broadcast => {
            let mut out = String::from("{\"responses\":[");
            for (i, r) in results.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match r {
                    Ok(p) => out.push_str(&format!("{{\"result\":{}}}", position_json(p))),
                    Err(e) => out.push_str(&redis_error(e)),
                }
            }
            out.push_str("]}");
            Ok(out)
        }
        Outcome::Published(results) => match results.first() {
            Some(Ok(p)) => Ok(position_json(p)),
            Some(Err(e)) => Err(redis_error(e)),
            None => Err(redis_error("no result")),
        },
        Outcome::Presence { stats, result: Ok(entries) } => Ok(redis_presence_body(&entries, stats)),
        Outcome::History(Ok((pubs, position))) => Ok(history_body(&pubs, &position)),
        Outcome::History(Err(None)) => Err(error_json(&ErrorCode::UNRECOVERABLE_POSITION.into())),
        Outcome::Removed(Ok(())) => Ok("{}".into()),
        Outcome::Presence { result: Err(e), .. } | Outcome::History(Err(Some(e))) | Outcome::Removed(Err(e)) => {
            Err(redis_error(&e))
        }
        Outcome::Channels(list) => Ok(channels_json(&list)),
        Outcome::Batch(items) => {
            let mut out = String::from("{\"replies\":[");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    BatchDone::Ready(json) => out.push_str(&json),
                    BatchDone::Done { name, method, outcome } => match redis_result(method, outcome) {
                        Ok(r) => out.push_str(&named(&name, &r)),
                        Err(e) => out.push_str(&e),
                    },
                }
            }
            out.push_str("]}");
            Ok(out)
        }
        Outcome::Subscribed { .. } => Err(redis_error("unexpected outcome")),
    }
}

/// `{"channels":{NAME:{"num_clients":N}}}`.
fn channels_json(list: &[(Arc<str>, u32)]) -> String {
    let mut out = String::from("{\"channels\":{");
    for (i, (name, n)) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, name);
        out.push_str(&format!(":{{\"num_clients\":{n}}}"));
    }
    out.push_str("}}");
    out
}

fn respond(
    gw: &Gateway,
    handle: &EngineHandle,
    notify: Notify<'_>,
    request: &HttpRequest,
    method: &str,
) -> HttpResponse {
    if request.method != "POST" {
        return HttpResponse::new(405, "Method Not Allowed", "text/plain", "the server API takes POST\n")
            .with_header("Allow", "POST");
    }
    if !authorized(gw, request) {
        return HttpResponse::new(401, "Unauthorized", "text/plain", "Unauthorized\n");
    }
    if method.is_empty() {
        return HttpResponse::new(
            404,
            "Not Found",
            "text/plain",
            "the legacy single-endpoint API is not served: POST /api/<method> with the method's JSON body\n",
        );
    }
    let transport_errors =
        request.header("x-centrifugo-error-mode").is_some_and(|m| m.eq_ignore_ascii_case("transport"));
    let body = if request.body.is_empty() { &b"{}"[..] } else { &request.body[..] };
    match call(gw, handle, notify, method, body) {
        // Batch replies come without the `result` wrapper (what Centrifugo sends and `cent` reads).
        Ok(result) if method == "batch" => HttpResponse::new(200, "OK", JSON, result),
        Ok(result) => HttpResponse::new(200, "OK", JSON, format!("{{\"result\":{result}}}")),
        Err(ApiError(ErrorCode::METHOD_NOT_FOUND, _)) if !KNOWN.contains(&method) => {
            HttpResponse::new(404, "Not Found", "text/plain", format!("unknown API method {method:?}\n"))
        }
        Err(e) => {
            let body = error_json(&e);
            if transport_errors {
                let (status, reason) = match e.0 .0 {
                    102 | 104 => (404, "Not Found"),
                    107 | 108 => (400, "Bad Request"),
                    112 => (416, "Range Not Satisfiable"),
                    113 => (409, "Conflict"),
                    _ => (500, "Internal Server Error"),
                };
                HttpResponse::new(status, reason, JSON, body)
            } else {
                HttpResponse::new(200, "OK", JSON, body)
            }
        }
    }
}

const KNOWN: [&str; 14] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
    "rpc",
];

fn error_json(e: &ApiError) -> String {
    let mut out = format!("{{\"error\":{{\"code\":{},\"message\":", e.0 .0);
    push_str(&mut out, &e.1);
    out.push_str("}}");
    out
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("bad request body: {e}")))
}

#[derive(Deserialize)]
struct PublishBody {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: String,
    #[serde(default)]
    skip_history: bool,
    /// A map of strings, attached to the publication as it is.
    tags: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct UserBody {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    channel: String,
    info: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    whitelist: Vec<String>,
    disconnect: Option<DisconnectBody>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: u64,
}

#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct ChannelBody {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i32,
    since: Option<super::protocol::StreamPosition>,
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    pattern: String,
}

#[derive(Deserialize)]
struct BatchBody {
    #[serde(default)]
    commands: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Runs one method; `Ok` is the result object's JSON.
pub fn call(
    gw: &Gateway,
    handle: &EngineHandle,
    notify: Notify<'_>,
    method: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    match method {
        "publish" => {
            let b: PublishBody = parse(body)?;
            publish(gw, handle, &b.channel, &b)
        }
        "broadcast" => {
            let b: PublishBody = parse(body)?;
            if b.channels.is_empty() {
                return Err(bad("channels required"));
            }
            let mut out = String::from("{\"responses\":[");
            for (i, channel) in b.channels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match publish(gw, handle, channel, &b) {
                    Ok(r) => {
                        out.push_str("{\"result\":");
                        out.push_str(&r);
                        out.push('}');
                    }
                    Err(e) => out.push_str(&error_json(&e)),
                }
            }
            out.push_str("]}");
            Ok(out)
        }
        "subscribe" | "unsubscribe" | "refresh" => {
            let b: UserBody = parse(body)?;
            if b.user.is_empty() && b.client.is_empty() {
                return Err(bad("user required"));
            }
            if method != "refresh" {
                if b.channel.is_empty() {
                    return Err(bad("channel required"));
                }
                if gw.config.namespace_for(&b.channel).is_none() {
                    return Err(ErrorCode::UNKNOWN_CHANNEL.into());
                }
            }
            let channel: Arc<str> = b.channel.as_str().into();
            let info: Option<Arc<str>> = b.info.as_ref().map(|i| i.get().into());
            let data: Option<Arc<str>> = b.data.as_ref().map(|d| d.get().into());
            for (conn, _) in select(gw, &b.user, &b.client)? {
                let notice = match method {
                    "subscribe" => {
                        Notice::Subscribe { conn, channel: channel.clone(), info: info.clone(), data: data.clone() }
                    }
                    "unsubscribe" => Notice::Unsubscribe { conn, channel: channel.clone() },
                    _ => Notice::Refresh {
                        conn,
                        expired: b.expired,
                        expire_at: (b.expire_at > 0).then_some(b.expire_at.min(super::auth::MAX_EXPIRY_UNIX)),
                    },
                };
                notify(conn.shard(), notice).map_err(|_| ApiError(ErrorCode::INTERNAL, "shard inbox full".into()))?;
            }
            Ok("{}".into())
        }
        "disconnect" => {
            let b: UserBody = parse(body)?;
            if b.user.is_empty() && b.client.is_empty() {
                return Err(bad("user required"));
            }
            let (code, reason) = match &b.disconnect {
                Some(d) if d.code != 0 => (d.code, d.reason.clone()),
                _ => (Disconnect::FORCE_NO_RECONNECT.code, Disconnect::FORCE_NO_RECONNECT.reason.to_string()),
            };
            if !(3000..=4999).contains(&code) {
                return Err(bad("disconnect code must be in 3000-4999"));
            }
            if reason.len() > 123 {
                return Err(bad("disconnect reason longer than 123 bytes"));
            }
            let keep: Vec<ClientId> = b.whitelist.iter().filter_map(|c| parse_client(c)).collect();
            for (conn, client) in select(gw, &b.user, &b.client)? {
                if !keep.contains(&client) {
                    let _ = handle.close(conn, code, &reason);
                }
            }
            Ok("{}".into())
        }
        "presence" | "presence_stats" => {
            let b: ChannelBody = parse(body)?;
            let ns = namespace(gw, &b.channel)?;
            if !ns.presence {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            Ok(if method == "presence" { presence_json(gw, &b.channel) } else { presence_stats_json(gw, &b.channel) })
        }
        "history" => {
            let b: ChannelBody = parse(body)?;
            let ns = namespace(gw, &b.channel)?;
            let since = b.since.as_ref().map(|p| (p.offset, p.epoch.as_str()));
            Ok(history_json(gw, &b.channel, ns, b.limit, since, b.reverse)?)
        }
        "history_remove" => {
            let b: ChannelBody = parse(body)?;
            let ns = namespace(gw, &b.channel)?;
            if !ns.history_enabled() {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            gw.broker.history_remove(&b.channel);
            Ok("{}".into())
        }
        "channels" => {
            let b: ChannelBody = parse(body)?;
            Ok(channels_json(&gw.broker.channels(&b.pattern)))
        }
        "info" => Ok(info(gw, handle)),
        "batch" => {
            let b: BatchBody = parse(body)?;
            let mut out = String::from("{\"replies\":[");
            for (i, command) in b.commands.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let Some((name, params)) = command.iter().next() else {
                    out.push_str(&error_json(&bad("empty command")));
                    continue;
                };
                let params = serde_json::to_vec(params).expect("a Value serializes");
                match call(gw, handle, notify, name, &params) {
                    Ok(r) => out.push_str(&named(name, &r)),
                    Err(e) => out.push_str(&error_json(&e)),
                }
            }
            out.push_str("]}");
            Ok(out)
        }
        _ => Err(ErrorCode::METHOD_NOT_FOUND.into()),
    }
}

fn namespace<'g>(gw: &'g Gateway, channel: &str) -> Result<&'g super::config::NamespaceOptions, ApiError> {
    if channel.is_empty() {
        return Err(bad("channel required"));
    }
    gw.config.namespace_for(channel).ok_or_else(|| ErrorCode::UNKNOWN_CHANNEL.into())
}

fn select(gw: &Gateway, user: &str, client: &str) -> Result<Vec<(tether::ConnId, ClientId)>, ApiError> {
    let client = match client {
        "" => None,
        c => Some(parse_client(c).ok_or_else(|| bad("client is not a client id"))?),
    };
    Ok(gw.registry.select(user, client))
}

fn publish(gw: &Gateway, handle: &EngineHandle, channel: &str, b: &PublishBody) -> Result<String, ApiError> {
    let ns = namespace(gw, channel)?;
    let (data, tags) = publication_parts(b)?;
    let publish = Publish { channel, ns, data, info: None, tags: tags.as_deref(), skip_history: b.skip_history };
    let position = gw.broker.publish(handle, publish)?;
    gw.metrics.publication(true);
    Ok(match position {
        Some(p) => Obj::new().num("offset", p.offset).str("epoch", &p.epoch).finish(),
        None => "{}".into(),
    })
}

/// A publish body's data (raw JSON) and tags (a JSON object of strings).
fn publication_parts(b: &PublishBody) -> Result<(&str, Option<String>), ApiError> {
    let data = match (&b.data, b.b64data.is_empty()) {
        (Some(d), _) => d.get(),
        (None, false) => return Err(bad("b64data is not served: JSON clients take data as JSON")),
        (None, true) => return Err(bad("data required")),
    };
    let tags = match &b.tags {
        Some(t) if !t.is_empty() => Some(serde_json::to_string(t).expect("a map of strings serializes")),
        _ => None,
    };
    Ok((data, tags))
}

fn info(gw: &Gateway, handle: &EngineHandle) -> String {
    let (clients, users) = gw.registry.counts();
    let (channels, subs) = match &gw.redis {
        Some(link) => link.totals(),
        None => {
            let (channels, subs, _, _) = gw.broker.totals();
            (channels, subs)
        }
    };
    let stats = handle.stats();
    let node = Obj::new()
        .str("uid", &gw.node_id)
        .str("name", "tetherd")
        .str("version", env!("CARGO_PKG_VERSION"))
        .num("num_clients", clients as u64)
        .num("num_users", users as u64)
        .num("num_channels", channels as u64)
        .num("uptime", gw.started.elapsed().as_secs())
        .num("num_subs", subs)
        .raw(
            "metrics",
            &Obj::new().num("interval", 0).raw("items", &format!("{{\"connections_open\":{}}}", stats.open)).finish(),
        )
        .finish();
    format!("{{\"nodes\":[{node}]}}")
}
