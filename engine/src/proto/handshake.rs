//! RFC 6455 section 4: the HTTP/1.1 upgrade handshake, both halves.
//!
//! Pure functions over byte slices: the caller accumulates the request bytes and calls
//! `parse_request` again as they grow. Parsing uses httparse (no allocation until a request
//! is complete).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;

/// The fixed GUID RFC 6455 appends to Sec-WebSocket-Key before hashing it into Sec-WebSocket-Accept.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Headers accepted in one request or response.
pub const MAX_HEADERS: usize = 64;

/// base64(sha1(key ++ GUID))
pub fn accept_key(client_key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(client_key);
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// A valid WebSocket upgrade request, as the application sees it in `Handler::on_upgrade`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request target's path, without the query.
    pub path: String,
    /// The query string after `?`, if any (not decoded).
    pub query: Option<String>,
    /// The Host header (required: a request without one is answered 400).
    pub host: String,
    /// The Origin header, if sent (browsers always send one).
    pub origin: Option<String>,
    /// Offered subprotocols (Sec-WebSocket-Protocol), in the client's order of preference.
    pub protocols: Vec<String>,
    /// Offered extensions (Sec-WebSocket-Extensions), one entry per offer with its parameters as written,
    /// e.g. `permessage-deflate; client_max_window_bits`.
    pub extensions: Vec<String>,
    /// Sec-WebSocket-Key as sent.
    pub key: String,
    /// Every header line in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The peer's address (filled in by the engine; `None` where the kernel could not tell).
    pub peer: Option<SocketAddr>,
}

impl UpgradeRequest {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// A complete plain HTTP request (no Upgrade header), with its body when it had a Content-Length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method as sent (`GET`, `POST`, ...).
    pub method: String,
    /// The request target's path, without the query.
    pub path: String,
    /// The query string after `?`, if any (not decoded).
    pub query: Option<String>,
    /// Every header line in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, exactly Content-Length bytes (at most `max_http_body`; empty without a Content-Length).
    pub body: Vec<u8>,
    /// The peer's address (filled in by the engine).
    pub peer: Option<SocketAddr>,
    /// The connection the request came on (filled in by the engine): what [`Ctx::defer_http`] and
    /// [`EngineHandle::answer_http`] take.
    ///
    /// [`Ctx::defer_http`]: crate::Ctx::defer_http
    /// [`EngineHandle::answer_http`]: crate::EngineHandle::answer_http
    pub conn: Option<crate::ids::ConnId>,
}

impl HttpRequest {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn split_target(target: &str) -> (String, Option<String>) {
    let target = target.split('#').next().unwrap_or(target);
    match target.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (target.to_string(), None),
    }
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string())).collect()
}

/// An HTTP error answer to a request that will not be upgraded: the engine's own refusals (400, 408, 411,
/// 413, 426, 431, 500, 503) and an application's [`Upgrade::Reject`](crate::Upgrade::Reject). It is sent as a
/// `text/plain` response whose body is `message`, with `Connection: close`, and the connection is closed.
///
/// ```
/// use tether::HttpError;
/// let e = HttpError::new(403, "Forbidden", "origin not allowed");
/// assert_eq!((e.status, e.reason), (403, "Forbidden"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// The status code, e.g. 403.
    pub status: u16,
    /// The reason phrase of the status line, e.g. "Forbidden".
    pub reason: &'static str,
    /// Short body text.
    pub message: String,
}

impl HttpError {
    /// An answer with `status` and a short body text.
    pub fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        HttpError { status, reason, message: message.into() }
    }

    fn bad_request(message: &str) -> Self {
        HttpError { status: 400, reason: "Bad Request", message: message.to_string() }
    }
}

/// What [`parse_request`] made of the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestParse {
    /// Need more bytes.
    Partial,
    /// A plain HTTP/1.1 request's head is complete and valid, its body is still to come, and the client
    /// sent `Expect: 100-continue`: it waits for an interim `100 Continue` before sending the body (RFC 9110
    /// section 10.1.1; curl does this for every body over 1 KiB). Otherwise as [`RequestParse::Partial`].
    Continue,
    /// Valid upgrade; `consumed` = header bytes (bytes after it are already WebSocket frames).
    Upgrade {
        /// The request, `peer` not yet filled in.
        request: UpgradeRequest,
        /// Length of the request head; the rest of the buffer belongs to the WebSocket connection.
        consumed: usize,
    },
    /// Plain HTTP (e.g. GET /healthz): no Upgrade, Sec-WebSocket-Key or Sec-WebSocket-Version header at all.
    Http {
        /// The request with its body, `peer` not yet filled in.
        request: HttpRequest,
        /// Length of the request head and body together.
        consumed: usize,
        /// The client lets the connection stay open for another request: HTTP/1.1 without `Connection:
        /// close`, or HTTP/1.0 with `Connection: keep-alive`.
        keep_alive: bool,
    },
    /// Answer with this status and close.
    Reject(HttpError),
}

fn too_large() -> RequestParse {
    RequestParse::Reject(HttpError {
        status: 431,
        reason: "Request Header Fields Too Large",
        message: "request headers too large".to_string(),
    })
}

/// True if the comma-separated token list in any of `values` contains `token` (ASCII case-insensitive).
fn has_token<'h>(mut values: impl Iterator<Item = &'h [u8]>, token: &str) -> bool {
    values.any(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
}

fn values<'h, 'b: 'h>(headers: &'h [httparse::Header<'b>], name: &'h str) -> impl Iterator<Item = &'b [u8]> + 'h {
    headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

fn first_str<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<Result<&'b str, ()>> {
    values(headers, name).next().map(|v| std::str::from_utf8(v).map(str::trim).map_err(|_| ()))
}

/// `max_size`: a request whose headers are not complete within max_size bytes -> Reject 431.
/// `max_body`: a plain request whose Content-Length exceeds it -> Reject 413 (bodies are read whole,
/// Content-Length only; chunked requests get 411). Allows up to 64 headers.
pub fn parse_request(buf: &[u8], max_size: usize, max_body: usize) -> RequestParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_size { too_large() } else { RequestParse::Partial };
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return too_large(),
        Err(_) => return RequestParse::Reject(HttpError::bad_request("malformed HTTP request")),
    };
    if consumed > max_size {
        return too_large();
    }
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let headers = req.headers;

    // A request that carries any WebSocket header is an upgrade attempt: a broken one gets 400, not the
    // application's plain-HTTP answer.
    let upgrade_attempt = ["upgrade", "sec-websocket-key", "sec-websocket-version"]
        .iter()
        .any(|name| values(headers, name).next().is_some());
    if !upgrade_attempt {
        if values(headers, "transfer-encoding").next().is_some() {
            return RequestParse::Reject(HttpError {
                status: 411,
                reason: "Length Required",
                message: "send the body with a Content-Length".to_string(),
            });
        }
        let length = match first_str(headers, "content-length") {
            None => 0,
            Some(Ok(n)) => match n.parse::<usize>() {
                Ok(n) => n,
                Err(_) => return RequestParse::Reject(HttpError::bad_request("invalid Content-Length")),
            },
            Some(Err(())) => return RequestParse::Reject(HttpError::bad_request("invalid Content-Length")),
        };
        if length > max_body {
            return RequestParse::Reject(HttpError {
                status: 413,
                reason: "Content Too Large",
                message: format!("request body larger than {max_body} bytes"),
            });
        }
        if buf.len() < consumed + length {
            let expects = req.version == Some(1) && has_token(values(headers, "expect"), "100-continue");
            return if expects && buf.len() == consumed { RequestParse::Continue } else { RequestParse::Partial };
        }
        let (path, query) = split_target(path);
        let keep_alive = if req.version == Some(1) {
            !has_token(values(headers, "connection"), "close")
        } else {
            has_token(values(headers, "connection"), "keep-alive")
        };
        let request = HttpRequest {
            method: method.to_string(),
            path,
            query,
            headers: owned_headers(headers),
            body: buf[consumed..consumed + length].to_vec(),
            peer: None,
            conn: None,
        };
        return RequestParse::Http { request, consumed: consumed + length, keep_alive };
    }
    match validate_upgrade(method, req.version.unwrap_or(0), path, headers) {
        Ok(request) => RequestParse::Upgrade { request, consumed },
        Err(e) => RequestParse::Reject(e),
    }
}

/// For a program that answers WebSocket upgrades with its own HTTP server and then adopts the socket
/// ([`EngineHandle::adopt`](crate::EngineHandle::adopt)): validates the request exactly as the engine
/// validates the ones it parses itself (RFC 6455 section 4.2.1: GET, Host, `Upgrade: websocket`,
/// `Connection: upgrade`, `Sec-WebSocket-Version: 13` (426 otherwise), a 16-byte base64 key; 400 for the
/// rest) and returns it as an [`UpgradeRequest`] (for the program's own checks, or a gateway's admission)
/// together with the `Sec-WebSocket-Accept` value its 101 answer must carry. `target` is the request target
/// (path and query); `peer` is left `None` for the caller to fill.
///
/// ```
/// use tether::proto::handshake::upgrade_from_parts;
/// let headers = [
///     ("Host", &b"example.com"[..]),
///     ("Upgrade", b"websocket"),
///     ("Connection", b"keep-alive, Upgrade"),
///     ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
///     ("Sec-WebSocket-Version", b"13"),
/// ];
/// let (request, accept) = upgrade_from_parts("GET", "/ws?room=1", headers).unwrap();
/// assert_eq!((request.path.as_str(), request.query.as_deref()), ("/ws", Some("room=1")));
/// assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// let refused = upgrade_from_parts("GET", "/ws", [("Host", &b"example.com"[..])]).unwrap_err();
/// assert_eq!(refused.status, 400);
/// ```
pub fn upgrade_from_parts<'a>(
    method: &str,
    target: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(UpgradeRequest, String), HttpError> {
    let headers: Vec<httparse::Header<'a>> =
        headers.into_iter().map(|(name, value)| httparse::Header { name, value }).collect();
    let request = validate_upgrade(method, 1, target, &headers)?;
    let accept = accept_key(request.key.as_bytes());
    Ok((request, accept))
}

fn validate_upgrade(
    method: &str,
    version: u8,
    path: &str,
    headers: &[httparse::Header<'_>],
) -> Result<UpgradeRequest, HttpError> {
    if method != "GET" {
        return Err(HttpError::bad_request("method must be GET"));
    }
    if version < 1 {
        return Err(HttpError::bad_request("HTTP/1.1 required"));
    }
    let host = match first_str(headers, "host") {
        Some(Ok(h)) if !h.is_empty() => h,
        Some(_) => return Err(HttpError::bad_request("invalid Host header")),
        None => return Err(HttpError::bad_request("missing Host header")),
    };
    if !has_token(values(headers, "upgrade"), "websocket") {
        return Err(HttpError::bad_request("Upgrade header must be websocket"));
    }
    if !has_token(values(headers, "connection"), "upgrade") {
        return Err(HttpError::bad_request("Connection header must contain Upgrade"));
    }
    if values(headers, "sec-websocket-version").next().map(|v| v.trim_ascii()) != Some(b"13") {
        return Err(HttpError {
            status: 426,
            reason: "Upgrade Required",
            message: "Sec-WebSocket-Version must be 13".to_string(),
        });
    }
    let key = match first_str(headers, "sec-websocket-key") {
        Some(Ok(k)) => k,
        Some(Err(())) => return Err(HttpError::bad_request("invalid Sec-WebSocket-Key")),
        None => return Err(HttpError::bad_request("missing Sec-WebSocket-Key")),
    };
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HttpError::bad_request("invalid Sec-WebSocket-Key")),
    }
    let origin = match first_str(headers, "origin") {
        Some(Ok(o)) => Some(o.to_string()),
        Some(Err(())) => return Err(HttpError::bad_request("invalid Origin header")),
        None => None,
    };
    let mut protocols = Vec::new();
    for v in values(headers, "sec-websocket-protocol") {
        let v = std::str::from_utf8(v).map_err(|_| HttpError::bad_request("invalid Sec-WebSocket-Protocol"))?;
        protocols.extend(v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from));
    }
    let extensions = extension_list(headers)?;
    let (path, query) = split_target(path);
    Ok(UpgradeRequest {
        path,
        query,
        host: host.to_string(),
        origin,
        protocols,
        extensions,
        key: key.to_string(),
        headers: owned_headers(headers),
        peer: None,
    })
}

/// Every Sec-WebSocket-Extensions header's elements, in order (`a; x=1, b` -> `a; x=1`, `b`).
fn extension_list(headers: &[httparse::Header<'_>]) -> Result<Vec<String>, HttpError> {
    let mut extensions = Vec::new();
    for v in values(headers, "sec-websocket-extensions") {
        let v = std::str::from_utf8(v).map_err(|_| HttpError::bad_request("invalid Sec-WebSocket-Extensions"))?;
        extensions.extend(v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from));
    }
    Ok(extensions)
}

/// "HTTP/1.1 101 Switching Protocols" + Upgrade/Connection/Sec-WebSocket-Accept
/// (+ Sec-WebSocket-Protocol when one was chosen, + extra header lines, each "Name: value").
pub fn upgrade_response(accept: &str, protocol: Option<&str>, extra_headers: &[String]) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        s.push_str("Sec-WebSocket-Protocol: ");
        s.push_str(p);
        s.push_str("\r\n");
    }
    for h in extra_headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A header line "Name: value" if the name is a token and the value has no control characters (so an
/// application cannot split the response); None otherwise.
pub fn header_line(name: &str, value: &str) -> Option<String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let name_ok = !name.is_empty() && name.chars().all(token);
    let value_ok = value.chars().all(|c| c == '\t' || !c.is_control());
    (name_ok && value_ok).then(|| format!("{name}: {}", value.trim()))
}

/// A complete HTTP/1.1 response with Content-Length, Connection: close, the given content type
/// and extra header lines (each "Name: value").
pub fn http_response(status: u16, reason: &str, content_type: &str, extra_headers: &[&str], body: &[u8]) -> Vec<u8> {
    http_response_on(status, reason, content_type, extra_headers, body, false)
}

/// [`http_response`], with `Connection: keep-alive` instead of `close` when `keep_alive`: the connection
/// stays open for the client's next request.
pub fn http_response_on(
    status: u16,
    reason: &str,
    content_type: &str,
    extra_headers: &[&str],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut s = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
        body.len()
    );
    for h in extra_headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

/// text/plain body = err.message + "\n"; a 426 carries "Sec-WebSocket-Version: 13".
pub fn reject_response(err: &HttpError) -> Vec<u8> {
    let extra: &[&str] = if err.status == 426 { &["Sec-WebSocket-Version: 13"] } else { &[] };
    let body = format!("{}\n", err.message);
    http_response(err.status, err.reason, "text/plain; charset=utf-8", extra, body.as_bytes())
}

// ---- client half (used by the load generator) ----

/// base64 of 16 bytes.
pub fn generate_key(random: [u8; 16]) -> String {
    STANDARD.encode(random)
}

/// The client's upgrade request: `GET path` with Host, Upgrade, Connection, Sec-WebSocket-Key `key` (from
/// [`generate_key`]) and Sec-WebSocket-Version 13, then the extra header lines (each "Name: value", not
/// checked: see [`header_line`]).
pub fn client_request(host: &str, path: &str, key: &str, extra_headers: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra_headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// What [`parse_response`] made of the server's answer received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseParse {
    /// Need more bytes.
    Partial,
    /// `consumed` = header bytes; bytes after it are already WebSocket frames.
    Accepted {
        /// Length of the response head.
        consumed: usize,
        /// The extensions the server accepted (Sec-WebSocket-Extensions), one entry per extension with its
        /// parameters as written.
        extensions: Vec<String>,
    },
    /// The server answered with another status than 101.
    Rejected {
        /// The status code.
        status: u16,
        /// The reason phrase of the status line.
        reason: String,
    },
    /// Not a valid WebSocket answer: malformed or too large, or a 101 with a missing or wrong Upgrade,
    /// Connection or Sec-WebSocket-Accept header. The text says which.
    Invalid(String),
}

/// Check a server's response: 101, Upgrade: websocket, Connection contains upgrade,
/// Sec-WebSocket-Accept == accept_key(key). Non-101 -> Rejected; 101 with wrong/missing accept
/// or headers -> Invalid. Too large (> max_size) -> Invalid.
pub fn parse_response(buf: &[u8], key: &str, max_size: usize) -> ResponseParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_size {
                ResponseParse::Invalid("response headers too large".to_string())
            } else {
                ResponseParse::Partial
            };
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => return ResponseParse::Invalid(format!("malformed HTTP response: {e}")),
    };
    if consumed > max_size {
        return ResponseParse::Invalid("response headers too large".to_string());
    }
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        let reason = resp.reason.unwrap_or("").to_string();
        return ResponseParse::Rejected { status, reason };
    }
    let headers = resp.headers;
    if !has_token(values(headers, "upgrade"), "websocket") {
        return ResponseParse::Invalid("missing Upgrade: websocket".to_string());
    }
    if !has_token(values(headers, "connection"), "upgrade") {
        return ResponseParse::Invalid("missing Connection: upgrade".to_string());
    }
    let expected = accept_key(key.as_bytes());
    let accept = values(headers, "sec-websocket-accept").next();
    match accept {
        Some(v) if v.trim_ascii() == expected.as_bytes() => match extension_list(headers) {
            Ok(extensions) => ResponseParse::Accepted { consumed, extensions },
            Err(e) => ResponseParse::Invalid(e.message),
        },
        Some(_) => ResponseParse::Invalid("wrong Sec-WebSocket-Accept".to_string()),
        None => ResponseParse::Invalid("missing Sec-WebSocket-Accept".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn good_lines() -> Vec<&'static str> {
        vec![
            "GET /chat?x=1 HTTP/1.1",
            "Host: server.example.com",
            "Upgrade: WebSocket",
            "Connection: keep-alive, Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Origin: http://example.com",
            "Sec-WebSocket-Protocol: chat, superchat",
            "sec-websocket-protocol: v2",
            "Sec-WebSocket-Version: 13",
        ]
    }

    fn reject_status(lines: &[&str]) -> (u16, String) {
        match parse_request(&request(lines), 8192, 1 << 20) {
            RequestParse::Reject(e) => (e.status, e.message),
            other => panic!("expected reject, got {other:?}"),
        }
    }

    #[test]
    fn rfc_accept_key() {
        // RFC 6455 section 1.3 (checked against Python's hashlib too).
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_request_partial_then_complete() {
        let mut buf = request(&good_lines());
        let header_len = buf.len();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]); // a frame right behind the header
        for cut in [0, 1, 10, header_len - 1] {
            assert_eq!(parse_request(&buf[..cut], 8192, 1 << 20), RequestParse::Partial, "cut {cut}");
        }
        match parse_request(&buf, 8192, 1 << 20) {
            RequestParse::Upgrade { request, consumed } => {
                assert_eq!(consumed, header_len);
                assert_eq!(request.path, "/chat");
                assert_eq!(request.query.as_deref(), Some("x=1"));
                assert_eq!(request.header("HOST"), Some("server.example.com"));
                assert_eq!(request.headers.len(), good_lines().len() - 1);
                assert_eq!(request.host, "server.example.com");
                assert_eq!(request.origin.as_deref(), Some("http://example.com"));
                assert_eq!(request.protocols, ["chat", "superchat", "v2"]);
                assert_eq!(request.key, KEY);
            }
            other => panic!("{other:?}"),
        }
    }

    fn without(name: &str) -> Vec<&'static str> {
        good_lines().into_iter().filter(|l| !l.starts_with(name)).collect()
    }

    fn replaced(name: &str, line: &'static str) -> Vec<&'static str> {
        let mut v = without(name);
        v.push(line);
        v
    }

    #[test]
    fn invalid_requests() {
        let mut post = good_lines();
        post[0] = "POST /chat HTTP/1.1";
        assert_eq!(reject_status(&post), (400, "method must be GET".into()));
        let mut http10 = good_lines();
        http10[0] = "GET /chat HTTP/1.0";
        assert_eq!(reject_status(&http10).0, 400);
        assert_eq!(reject_status(&without("Host")).0, 400);
        assert_eq!(reject_status(&replaced("Upgrade", "Upgrade: h2c")).0, 400);
        assert_eq!(reject_status(&without("Connection")).0, 400);
        assert_eq!(reject_status(&replaced("Connection", "Connection: keep-alive")).0, 400);
        assert_eq!(reject_status(&without("Sec-WebSocket-Key")).0, 400);
        assert_eq!(reject_status(&replaced("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ=")).0, 400);
        assert_eq!(reject_status(&replaced("Sec-WebSocket-Key", "Sec-WebSocket-Key: !!!")).0, 400);
        assert_eq!(reject_status(&without("Sec-WebSocket-Version")).0, 426);
        assert_eq!(reject_status(&replaced("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")).0, 426);
        assert!(matches!(
            parse_request(b"GARBAGE\0 / HTTP/1.1\r\n\r\n", 8192, 1 << 20),
            RequestParse::Reject(HttpError { status: 400, .. })
        ));
    }

    #[test]
    fn reject_426_carries_version_header() {
        let err = match parse_request(&request(&without("Sec-WebSocket-Version")), 8192, 1 << 20) {
            RequestParse::Reject(e) => e,
            other => panic!("{other:?}"),
        };
        let resp = String::from_utf8(reject_response(&err)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{resp}");
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(resp.contains("Connection: close\r\n"));
        assert!(resp.ends_with(&format!("\r\n\r\n{}\n", err.message)));
        let len = err.message.len() + 1;
        assert!(resp.contains(&format!("Content-Length: {len}\r\n")));
    }

    #[test]
    fn too_large_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        while buf.len() < 200 {
            buf.extend_from_slice(b"X-Pad: aaaaaaaaaa\r\n");
        }
        assert!(matches!(parse_request(&buf, 200, 1 << 20), RequestParse::Reject(HttpError { status: 431, .. })));
        assert_eq!(parse_request(&buf, 4096, 1 << 20), RequestParse::Partial);
        // complete but larger than the limit
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(parse_request(&buf, 200, 1 << 20), RequestParse::Reject(HttpError { status: 431, .. })));
        // more than 64 headers
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..70 {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse_request(&many, 1 << 20, 1 << 20), RequestParse::Reject(HttpError { status: 431, .. })));
    }

    #[test]
    fn websocket_headers_without_upgrade_are_a_bad_upgrade_not_plain_http() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        match parse_request(buf, 8192, 1 << 20) {
            RequestParse::Reject(e) => assert_eq!(e.status, 400),
            _ => panic!("expected a 400"),
        }
    }

    #[test]
    fn plain_http() {
        let buf = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(buf, 8192, 1 << 20),
            RequestParse::Http {
                request: HttpRequest {
                    method: "GET".into(),
                    path: "/healthz".into(),
                    query: None,
                    headers: vec![("Host".into(), "x".into())],
                    body: Vec::new(),
                    peer: None,
                    conn: None
                },
                consumed: buf.len(),
                keep_alive: true,
            }
        );
        let post = b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse_request(post, 8192, 1 << 20), RequestParse::Http { .. }));
    }

    #[test]
    fn plain_http_keep_alive() {
        let keep = |req: &[u8]| match parse_request(req, 8192, 1 << 20) {
            RequestParse::Http { keep_alive, .. } => keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(keep(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 is persistent by default");
        assert!(!keep(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"), "HTTP/1.0 closes by default");
        assert!(keep(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n"));
        let on = http_response_on(200, "OK", "text/plain", &[], b"ok", true);
        assert!(String::from_utf8(on).unwrap().contains("\r\nConnection: keep-alive\r\n"));
        let off = http_response(200, "OK", "text/plain", &[], b"ok");
        assert!(String::from_utf8(off).unwrap().contains("\r\nConnection: close\r\n"));
    }

    #[test]
    fn expect_100_continue() {
        let head = b"POST /api HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_request(head, 8192, 1024), RequestParse::Continue);
        // Part of the body came anyway, or HTTP/1.0, or another expectation: wait without an interim answer.
        assert_eq!(parse_request(&[&head[..], b"{"].concat(), 8192, 1024), RequestParse::Partial);
        let old = b"POST /api HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_request(old, 8192, 1024), RequestParse::Partial);
        let other = b"POST /api HTTP/1.1\r\nHost: x\r\nExpect: x\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_request(other, 8192, 1024), RequestParse::Partial);
        assert!(matches!(parse_request(&[&head[..], b"{}"].concat(), 8192, 1024), RequestParse::Http { .. }));
        assert!(matches!(parse_request(head, 8192, 1), RequestParse::Reject(HttpError { status: 413, .. })));
    }

    #[test]
    fn plain_http_bodies() {
        let post = b"POST /api/publish?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\": true}";
        for cut in [post.len() - 11, post.len() - 1] {
            assert_eq!(parse_request(&post[..cut], 8192, 1024), RequestParse::Partial, "cut {cut}");
        }
        match parse_request(post, 8192, 1024) {
            RequestParse::Http { request, consumed, .. } => {
                assert_eq!(consumed, post.len());
                assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/api/publish"));
                assert_eq!(request.query.as_deref(), Some("x=1"));
                assert_eq!(request.body, b"{\"a\": true}");
                assert_eq!(request.header("content-length"), Some("11"));
            }
            other => panic!("{other:?}"),
        }
        let reject = |buf: &[u8], max_body| match parse_request(buf, 8192, max_body) {
            RequestParse::Reject(e) => e.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(reject(post, 10), 413);
        assert_eq!(reject(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 10), 400);
        assert_eq!(reject(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 10), 411);
    }

    #[test]
    fn offered_extensions_are_listed() {
        let mut lines = good_lines();
        lines.push("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-webkit-deflate-frame");
        match parse_request(&request(&lines), 8192, 0) {
            RequestParse::Upgrade { request, .. } => {
                assert_eq!(request.extensions, ["permessage-deflate; client_max_window_bits", "x-webkit-deflate-frame"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_lines_cannot_split_a_response() {
        assert_eq!(header_line("X-A", "1"), Some("X-A: 1".into()));
        assert_eq!(header_line("X-A", "1\r\nSet-Cookie: evil"), None);
        assert_eq!(header_line("X A", "1"), None);
        assert_eq!(header_line("", "1"), None);
    }

    #[test]
    fn responses() {
        let r = String::from_utf8(upgrade_response("abc=", Some("chat"), &["X-Served-By: t1".into()])).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: chat\r\nX-Served-By: t1\r\n\r\n"
        );
        let h = http_response(200, "OK", "text/plain", &["X-A: 1"], b"ok\n");
        assert_eq!(
            h,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\nX-A: 1\r\n\r\nok\n"
        );
    }

    #[test]
    fn client_round_trip() {
        let key = generate_key([7; 16]);
        assert_eq!(STANDARD.decode(&key).unwrap(), [7; 16]);
        let req = client_request("localhost:9000", "/ws", &key, &["Sec-WebSocket-Protocol: chat"]);
        let request = match parse_request(&req, 8192, 1 << 20) {
            RequestParse::Upgrade { request, consumed } => {
                assert_eq!(consumed, req.len());
                request
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(request.path, "/ws");
        assert_eq!(request.host, "localhost:9000");
        assert_eq!(request.protocols, ["chat"]);
        let mut resp = upgrade_response(&accept_key(request.key.as_bytes()), None, &[]);
        let n = resp.len();
        for cut in [0, 5, n - 1] {
            assert_eq!(parse_response(&resp[..cut], &key, 4096), ResponseParse::Partial);
        }
        resp.extend_from_slice(&[0x81, 0]);
        assert_eq!(parse_response(&resp, &key, 4096), ResponseParse::Accepted { consumed: n, extensions: Vec::new() });

        let wrong = upgrade_response(&accept_key(b"other"), None, &[]);
        assert_eq!(parse_response(&wrong, &key, 4096), ResponseParse::Invalid("wrong Sec-WebSocket-Accept".into()));
        let missing = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(parse_response(missing, &key, 4096), ResponseParse::Invalid(_)));
        let forbidden = reject_response(&HttpError { status: 403, reason: "Forbidden", message: "no".into() });
        assert_eq!(
            parse_response(&forbidden, &key, 4096),
            ResponseParse::Rejected { status: 403, reason: "Forbidden".into() }
        );
        assert!(matches!(parse_response(&resp, &key, 10), ResponseParse::Invalid(_)));
        assert!(matches!(parse_response(b"NOT HTTP\r\n\r\n", &key, 4096), ResponseParse::Invalid(_)));
    }
}
