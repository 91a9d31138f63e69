//! Centrifugo client protocol v2, JSON encoding: the commands a client sends, the replies and pushes the
//! gateway writes, and the codes both use (GATEWAY-PROTOCOL.md §2-§4).
//!
//! `bytes` fields of the protocol (`data`, `info`, ...) travel as embedded raw JSON values, never base64: they
//! are kept as [`RawValue`]s on the way in and spliced as they are on the way out. One inbound WebSocket
//! message holds one or more commands joined by `\n`; the replies to one message are joined the same way.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A client command: `id` plus exactly one request (the first present one counts). An empty object with no
/// id is the pong to a server ping.
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    pub connect: Option<ConnectRequest>,
    pub subscribe: Option<SubscribeRequest>,
    pub unsubscribe: Option<ChannelRequest>,
    pub publish: Option<PublishRequest>,
    pub presence: Option<ChannelRequest>,
    pub presence_stats: Option<ChannelRequest>,
    pub history: Option<HistoryRequest>,
    pub ping: Option<serde::de::IgnoredAny>,
    pub send: Option<SendRequest>,
    pub rpc: Option<RpcRequest>,
    pub refresh: Option<RefreshRequest>,
    pub sub_refresh: Option<SubRefreshRequest>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    pub data: Option<Box<RawValue>>,
    /// Server-side subscriptions to recover: channel -> position (only `recover`, `offset`, `epoch` matter).
    #[serde(default)]
    pub subs: std::collections::BTreeMap<String, SubscribeRequest>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub offset: u64,
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    /// Delta compression asked for; not supported, so never granted.
    #[serde(default)]
    pub delta: String,
    /// Subscription type (map subscriptions, shared poll): only the default stream type (0) is served.
    #[serde(default, rename = "type")]
    pub kind: i32,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SendRequest {
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RpcRequest {
    #[serde(default)]
    pub method: String,
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// What one command line asks for.
#[derive(Debug)]
pub enum Request {
    /// `{}`: the answer to a server ping.
    Pong,
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
}

/// Why a command line could not be taken: the connection is closed with 3501 (bad request).
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Parses one command line into its id and request.
pub fn parse_command(line: &str) -> Result<(u32, Request), BadRequest> {
    let cmd: Command = serde_json::from_str(line).map_err(|e| BadRequest(format!("malformed command: {e}")))?;
    let id = cmd.id;
    let request = if let Some(r) = cmd.connect {
        Request::Connect(r)
    } else if let Some(r) = cmd.subscribe {
        Request::Subscribe(r)
    } else if let Some(r) = cmd.unsubscribe {
        Request::Unsubscribe(r)
    } else if let Some(r) = cmd.publish {
        Request::Publish(r)
    } else if let Some(r) = cmd.presence {
        Request::Presence(r)
    } else if let Some(r) = cmd.presence_stats {
        Request::PresenceStats(r)
    } else if let Some(r) = cmd.history {
        Request::History(r)
    } else if let Some(r) = cmd.send {
        // `send` is the one request that travels without an id.
        return Ok((id, Request::Send(r)));
    } else if let Some(r) = cmd.rpc {
        Request::Rpc(r)
    } else if let Some(r) = cmd.refresh {
        Request::Refresh(r)
    } else if let Some(r) = cmd.sub_refresh {
        Request::SubRefresh(r)
    } else if cmd.ping.is_some() {
        return Err(BadRequest("the ping command is not part of protocol v2 (servers ping, clients answer {})".into()));
    } else if id == 0 {
        return Ok((0, Request::Pong));
    } else {
        return Err(BadRequest("unknown command".into()));
    };
    if id == 0 {
        return Err(BadRequest("command without id".into()));
    }
    if request.channel().is_some_and(str::is_empty) {
        // Centrifugo: "channel required for subscribe" (and the others) is a bad request, not an error reply.
        return Err(BadRequest("channel required".into()));
    }
    Ok((id, request))
}

impl Request {
    /// The channel a channel command names (`None` for the others).
    pub fn channel(&self) -> Option<&str> {
        match self {
            Request::Subscribe(r) => Some(&r.channel),
            Request::SubRefresh(r) => Some(&r.channel),
            Request::Unsubscribe(r) | Request::Presence(r) | Request::PresenceStats(r) => Some(&r.channel),
            Request::Publish(r) => Some(&r.channel),
            Request::History(r) => Some(&r.channel),
            Request::Pong | Request::Connect(_) | Request::Send(_) | Request::Rpc(_) | Request::Refresh(_) => None,
        }
    }
}

/// The lines of one inbound message: split on `\n`, blank lines skipped.
pub fn lines(message: &str) -> impl Iterator<Item = &str> {
    message.split('\n').map(str::trim).filter(|l| !l.is_empty())
}

/// Client error codes (reply `error`), GATEWAY-PROTOCOL.md §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const INTERNAL: ErrorCode = ErrorCode(100);
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(101);
    pub const UNKNOWN_CHANNEL: ErrorCode = ErrorCode(102);
    pub const PERMISSION_DENIED: ErrorCode = ErrorCode(103);
    pub const METHOD_NOT_FOUND: ErrorCode = ErrorCode(104);
    pub const ALREADY_SUBSCRIBED: ErrorCode = ErrorCode(105);
    pub const LIMIT_EXCEEDED: ErrorCode = ErrorCode(106);
    pub const BAD_REQUEST: ErrorCode = ErrorCode(107);
    pub const NOT_AVAILABLE: ErrorCode = ErrorCode(108);
    pub const TOKEN_EXPIRED: ErrorCode = ErrorCode(109);
    pub const EXPIRED: ErrorCode = ErrorCode(110);
    pub const TOO_MANY_REQUESTS: ErrorCode = ErrorCode(111);
    pub const UNRECOVERABLE_POSITION: ErrorCode = ErrorCode(112);

    pub fn message(self) -> &'static str {
        match self.0 {
            100 => "internal server error",
            101 => "unauthorized",
            102 => "unknown channel",
            103 => "permission denied",
            104 => "method not found",
            105 => "already subscribed",
            106 => "limit exceeded",
            107 => "bad request",
            108 => "not available",
            109 => "token expired",
            110 => "expired",
            111 => "too many requests",
            112 => "unrecoverable position",
            _ => "error",
        }
    }

    /// Temporary errors make the SDKs retry.
    pub fn temporary(self) -> bool {
        matches!(self.0, 100 | 111)
    }
}

/// Disconnect codes sent in the Close frame, with Centrifugo's reasons (§4). 3000-3499 make the SDKs
/// reconnect, 3500-3999 are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    pub const SHUTDOWN: Disconnect = Disconnect { code: 3001, reason: "shutdown" };
    pub const INTERNAL: Disconnect = Disconnect { code: 3004, reason: "internal server error" };
    pub const EXPIRED: Disconnect = Disconnect { code: 3005, reason: "connection expired" };
    pub const SUBSCRIPTION_EXPIRED: Disconnect = Disconnect { code: 3006, reason: "subscription expired" };
    pub const SLOW: Disconnect = Disconnect { code: 3008, reason: "slow" };
    pub const FORCE_RECONNECT: Disconnect = Disconnect { code: 3011, reason: "force reconnect" };
    pub const NO_PONG: Disconnect = Disconnect { code: 3012, reason: "no pong" };
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect { code: 3013, reason: "too many requests" };
    pub const INVALID_TOKEN: Disconnect = Disconnect { code: 3500, reason: "invalid token" };
    pub const BAD_REQUEST: Disconnect = Disconnect { code: 3501, reason: "bad request" };
    pub const STALE: Disconnect = Disconnect { code: 3502, reason: "stale" };
    pub const FORCE_NO_RECONNECT: Disconnect = Disconnect { code: 3503, reason: "force disconnect" };
    /// A reload removed the connection's tenant (tetherd's own reason for 3503).
    pub const TENANT_REMOVED: Disconnect = Disconnect { code: 3503, reason: "tenant removed" };
    pub const CONNECTION_LIMIT: Disconnect = Disconnect { code: 3504, reason: "connection limit" };
    pub const CHANNEL_LIMIT: Disconnect = Disconnect { code: 3505, reason: "channel limit" };
    pub const INAPPROPRIATE_PROTOCOL: Disconnect = Disconnect { code: 3506, reason: "inappropriate protocol" };
    pub const PERMISSION_DENIED: Disconnect = Disconnect { code: 3507, reason: "permission denied" };
    pub const NOT_AVAILABLE: Disconnect = Disconnect { code: 3508, reason: "not available" };
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect { code: 3509, reason: "too many errors" };
}

/// What a close code means to a Centrifugo SDK, for the close log line.
pub fn close_meaning(code: u16) -> &'static str {
    match code {
        1000 => "normal",
        1001 => "going away (server shutdown)",
        1006 => "abnormal (no close frame)",
        1008 => "policy (send queue full)",
        1009 => "message too big",
        3000 => "connection closed (reconnect)",
        3001 => "shutdown (reconnect)",
        3004 => "internal server error (reconnect)",
        3005 => "connection expired (reconnect)",
        3006 => "subscription expired (reconnect)",
        3008 => "slow (reconnect)",
        3009 => "write error (reconnect)",
        3010 => "insufficient state (reconnect)",
        3011 => "force reconnect (reconnect)",
        3012 => "no pong (reconnect)",
        3013 => "too many requests (reconnect)",
        3014 => "state invalidated (reconnect)",
        3500 => "invalid token (terminal)",
        3501 => "bad request (terminal)",
        3502 => "stale (terminal)",
        3503 => "force disconnect (terminal)",
        3504 => "connection limit (terminal)",
        3505 => "channel limit (terminal)",
        3506 => "inappropriate protocol (terminal)",
        3507 => "permission denied (terminal)",
        3508 => "not available (terminal)",
        3509 => "too many errors (terminal)",
        3000..=3499 | 4000..=4499 => "custom (reconnect)",
        3500..=3999 | 4500..=4999 => "custom (terminal)",
        _ => "other",
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    // serde_json's escaping, without an intermediate allocation of its own beyond the string.
    out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
}

/// A raw JSON value made safe for `\n` framing: the literal newlines between tokens are dropped (newlines
/// inside strings are always escaped in valid JSON, so this never changes a value).
pub fn push_raw(out: &mut String, raw: &str) {
    if raw.contains(['\n', '\r']) {
        out.extend(raw.chars().filter(|c| *c != '\n' && *c != '\r'));
    } else {
        out.push_str(raw);
    }
}

/// `ClientInfo` JSON: `{"user":..,"client":..[,"conn_info":..][,"chan_info":..]}`.
pub fn client_info(out: &mut String, user: &str, client: &str, conn_info: Option<&str>, chan_info: Option<&str>) {
    out.push_str("{\"user\":");
    push_str(out, user);
    out.push_str(",\"client\":");
    push_str(out, client);
    if let Some(info) = conn_info {
        out.push_str(",\"conn_info\":");
        push_raw(out, info);
    }
    if let Some(info) = chan_info {
        out.push_str(",\"chan_info\":");
        push_raw(out, info);
    }
    out.push('}');
}

/// A `Publication` object: `{"data":..[,"info":..][,"offset":N][,"tags":{..}]}`. `info` is ClientInfo JSON
/// already built, `tags` a JSON object of strings.
pub fn publication(data: &str, info: Option<&str>, offset: u64, tags: Option<&str>) -> String {
    let mut out = String::with_capacity(data.len() + info.map_or(0, str::len) + tags.map_or(0, str::len) + 40);
    out.push_str("{\"data\":");
    push_raw(&mut out, data);
    if let Some(info) = info {
        out.push_str(",\"info\":");
        out.push_str(info);
    }
    if offset > 0 {
        let _ = write!(out, ",\"offset\":{offset}");
    }
    if let Some(tags) = tags {
        out.push_str(",\"tags\":");
        push_raw(&mut out, tags);
    }
    out.push('}');
    out
}

/// A push frame: `{"push":{"channel":..,"<kind>":<body>}}`.
pub fn push(channel: &str, kind: &str, body: &str) -> String {
    let mut out = String::with_capacity(channel.len() + kind.len() + body.len() + 32);
    out.push_str("{\"push\":{\"channel\":");
    push_str(&mut out, channel);
    out.push_str(",\"");
    out.push_str(kind);
    out.push_str("\":");
    out.push_str(body);
    out.push_str("}}");
    out
}

/// The replies to one inbound message, joined by `\n` into one outbound message.
#[derive(Default)]
pub struct Replies {
    pub out: String,
}

impl Replies {
    fn start(&mut self) {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
    }

    /// A frame as it is (a push).
    pub fn push_raw(&mut self, frame: &str) {
        self.start();
        self.out.push_str(frame);
    }

    /// `{"id":N,"<method>":<body>}`.
    pub fn result(&mut self, id: u32, method: &str, body: &str) {
        self.start();
        let _ = write!(self.out, "{{\"id\":{id},\"{method}\":");
        self.out.push_str(body);
        self.out.push('}');
    }

    /// `{"id":N,"error":{"code":C,"message":".."[,"temporary":true]}}`.
    pub fn error(&mut self, id: u32, code: ErrorCode) {
        self.error_message(id, code, code.message());
    }

    pub fn error_message(&mut self, id: u32, code: ErrorCode, message: &str) {
        self.start();
        let _ = write!(self.out, "{{\"id\":{id},\"error\":{{\"code\":{},\"message\":", code.0);
        push_str(&mut self.out, message);
        if code.temporary() {
            self.out.push_str(",\"temporary\":true");
        }
        self.out.push_str("}}");
    }

    /// A push or anything already encoded as one line.
    pub fn line(&mut self, line: &str) {
        self.start();
        self.out.push_str(line);
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// A small JSON object writer for result bodies: `{"a":1,"b":"x"}` with fields left out when empty.
pub struct Obj {
    out: String,
    first: bool,
}

impl Default for Obj {
    fn default() -> Self {
        Obj::new()
    }
}

impl Obj {
    pub fn new() -> Obj {
        Obj { out: String::from("{"), first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    pub fn str(mut self, key: &str, value: &str) -> Obj {
        self.key(key);
        push_str(&mut self.out, value);
        self
    }

    pub fn str_if(self, key: &str, value: &str) -> Obj {
        if value.is_empty() {
            self
        } else {
            self.str(key, value)
        }
    }

    pub fn num(mut self, key: &str, value: u64) -> Obj {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub fn num_if(self, key: &str, value: u64) -> Obj {
        if value == 0 {
            self
        } else {
            self.num(key, value)
        }
    }

    pub fn bool_if(mut self, key: &str, value: bool) -> Obj {
        if value {
            self.key(key);
            self.out.push_str("true");
        }
        self
    }

    /// A raw JSON value (already valid JSON on one line).
    pub fn raw(mut self, key: &str, json: &str) -> Obj {
        self.key(key);
        push_raw(&mut self.out, json);
        self
    }

    pub fn raw_opt(self, key: &str, json: Option<&str>) -> Obj {
        match json {
            Some(j) => self.raw(key, j),
            None => self,
        }
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_command() {
        let (id, r) = parse_command(r#"{"id":1,"connect":{"token":"t","name":"js"}}"#).unwrap();
        assert_eq!(id, 1);
        assert!(matches!(r, Request::Connect(c) if c.token == "t"));
        let (_, r) =
            parse_command(r#"{"id":2,"subscribe":{"channel":"a:b","recover":true,"offset":7,"epoch":"x","flag":1}}"#)
                .unwrap();
        assert!(
            matches!(r, Request::Subscribe(s) if s.channel == "a:b" && s.recover && s.offset == 7 && s.epoch == "x")
        );
        let (_, r) = parse_command(r#"{"id":3,"publish":{"channel":"c","data":{"k":[1,2]}}}"#).unwrap();
        assert!(matches!(r, Request::Publish(p) if p.data.as_ref().unwrap().get() == r#"{"k":[1,2]}"#));
        assert!(matches!(parse_command("{}").unwrap(), (0, Request::Pong)));
        assert!(matches!(parse_command(r#"{"send":{"data":1}}"#).unwrap(), (0, Request::Send(_))));
    }

    #[test]
    fn bad_commands() {
        assert!(parse_command("not json").is_err());
        assert!(parse_command(r#"{"id":1}"#).unwrap_err().0.contains("unknown"));
        assert!(parse_command(r#"{"subscribe":{"channel":"x"}}"#).unwrap_err().0.contains("without id"));
        assert!(parse_command(r#"{"id":1,"ping":{}}"#).is_err());
        assert!(parse_command(r#"{"id":-1,"connect":{}}"#).is_err());
        for method in ["subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "sub_refresh"] {
            let line = format!(r#"{{"id":1,"{method}":{{"channel":""}}}}"#);
            assert_eq!(parse_command(&line).unwrap_err().0, "channel required", "{method}");
            let line = format!(r#"{{"id":1,"{method}":{{}}}}"#);
            assert_eq!(parse_command(&line).unwrap_err().0, "channel required", "{method} without the key");
        }
    }

    #[test]
    fn lines_split_and_trim() {
        let v: Vec<_> = lines("{\"id\":1}\n{\"id\":2}\n\n").collect();
        assert_eq!(v, vec!["{\"id\":1}", "{\"id\":2}"]);
    }

    #[test]
    fn replies_join_with_newlines() {
        let mut r = Replies::default();
        r.result(1, "connect", &Obj::new().str("client", "c").num("ping", 25).bool_if("pong", true).finish());
        r.error(2, ErrorCode::PERMISSION_DENIED);
        r.error(3, ErrorCode::INTERNAL);
        assert_eq!(
            r.out,
            "{\"id\":1,\"connect\":{\"client\":\"c\",\"ping\":25,\"pong\":true}}\n\
             {\"id\":2,\"error\":{\"code\":103,\"message\":\"permission denied\"}}\n\
             {\"id\":3,\"error\":{\"code\":100,\"message\":\"internal server error\",\"temporary\":true}}"
        );
    }

    #[test]
    fn publication_and_push_shapes() {
        let mut info = String::new();
        client_info(&mut info, "42", "c1", Some("{\"n\":\"x\"}"), None);
        let p = publication("{\"a\":\n1}", Some(&info), 7, None);
        assert_eq!(p, r#"{"data":{"a":1},"info":{"user":"42","client":"c1","conn_info":{"n":"x"}},"offset":7}"#);
        let v: serde_json::Value = serde_json::from_str(&push("chat:1", "pub", &p)).unwrap();
        assert_eq!(v["push"]["channel"], "chat:1");
        assert_eq!(v["push"]["pub"]["offset"], 7);
        assert_eq!(publication("1", None, 0, None), r#"{"data":1}"#);
        assert_eq!(publication("1", None, 2, Some(r#"{"k":"v"}"#)), r#"{"data":1,"offset":2,"tags":{"k":"v"}}"#);
    }

    #[test]
    fn every_code_has_a_meaning_and_class() {
        assert!(close_meaning(3012).contains("reconnect"));
        assert!(close_meaning(3500).contains("terminal"));
        assert!(close_meaning(4100).contains("reconnect"));
        assert!(close_meaning(4600).contains("terminal"));
    }
}
