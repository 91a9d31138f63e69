//! The opening handshake: deadline, malformed upgrades, and the plain HTTP endpoints.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_tests::raw::{self, KEY};
use tether_tests::{http_get, read_http_response, wait_until, HttpResponse, Server};

/// Sends `request` on a fresh connection, reads the response, then checks the server closes it.
fn exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = raw::connect(addr);
    stream.write_all(request).unwrap();
    let resp = read_http_response_no_eof_body(&mut stream)
        .unwrap_or_else(|e| panic!("no HTTP response to {:?}: {e}", String::from_utf8_lossy(request)));
    let rest = raw::read_to_eof(&mut stream, Duration::from_secs(10));
    assert!(
        rest.is_some(),
        "server kept the connection open after answering {} to {:?}",
        resp.status,
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    resp
}

/// Like [`read_http_response`] but never waits for EOF for the body (the EOF check comes after).
fn read_http_response_no_eof_body(stream: &mut std::net::TcpStream) -> std::io::Result<HttpResponse> {
    let head = tether_tests::read_http_head(stream)?;
    let mut resp = tether_tests::parse_http_head(&head)?;
    if let Some(len) = resp.header("content-length").and_then(|l| l.trim().parse::<usize>().ok()) {
        let mut body = vec![0; len];
        std::io::Read::read_exact(stream, &mut body)?;
        resp.body = body;
    }
    Ok(resp)
}

fn upgrade(addr: SocketAddr, method: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("{method} / HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

const UPGRADE: (&str, &str) = ("Upgrade", "websocket");
const CONNECTION: (&str, &str) = ("Connection", "Upgrade");
const VERSION: (&str, &str) = ("Sec-WebSocket-Version", "13");
const GOOD_KEY: (&str, &str) = ("Sec-WebSocket-Key", KEY);

#[test]
fn valid_upgrade_variants_are_accepted() {
    let server = Server::start(&[]);
    // Header names are case-insensitive; Connection may carry a token list; Upgrade value any case.
    let req = upgrade(
        server.addr,
        "GET",
        &[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
        ],
    );
    let mut stream = raw::connect(server.addr);
    stream.write_all(&req).unwrap();
    let resp = read_http_response(&mut stream).unwrap();
    raw::check_upgrade_response(&resp);
    stream.write_all(&raw::masked(true, raw::OP_TEXT, b"ok")).unwrap();
    assert_eq!(raw::read_message(&mut stream).data, b"ok");

    // The request arriving one byte at a time.
    let mut stream = raw::connect(server.addr);
    for b in raw::upgrade_request(server.addr, "/slow").as_bytes() {
        stream.write_all(&[*b]).unwrap();
    }
    let resp = read_http_response(&mut stream).unwrap();
    raw::check_upgrade_response(&resp);

    // The request and the first frame in one write: the frame must not be lost.
    let mut stream = raw::connect(server.addr);
    let mut bytes = raw::upgrade_request(server.addr, "/").into_bytes();
    bytes.extend(raw::masked(true, raw::OP_TEXT, b"eager"));
    stream.write_all(&bytes).unwrap();
    let resp = read_http_response(&mut stream).unwrap();
    raw::check_upgrade_response(&resp);
    assert_eq!(raw::read_message(&mut stream).data, b"eager");
}

#[test]
fn malformed_upgrades_are_rejected_and_closed() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("missing Sec-WebSocket-Key", upgrade(addr, "GET", &[UPGRADE, CONNECTION, VERSION]), &[400]),
        (
            "key that is not 16 bytes of base64",
            upgrade(addr, "GET", &[UPGRADE, CONNECTION, VERSION, ("Sec-WebSocket-Key", "abc")]),
            &[400],
        ),
        (
            "key that is not base64 at all",
            upgrade(addr, "GET", &[UPGRADE, CONNECTION, VERSION, ("Sec-WebSocket-Key", "!!!!not base64!!!!!!!!==")]),
            &[400],
        ),
        ("POST instead of GET", upgrade(addr, "POST", &[UPGRADE, CONNECTION, VERSION, GOOD_KEY]), &[400, 405]),
        ("missing Upgrade header", upgrade(addr, "GET", &[CONNECTION, VERSION, GOOD_KEY]), &[400, 426]),
        ("missing Connection header", upgrade(addr, "GET", &[UPGRADE, VERSION, GOOD_KEY]), &[400, 426]),
        ("Upgrade: h2c", upgrade(addr, "GET", &[("Upgrade", "h2c"), CONNECTION, VERSION, GOOD_KEY]), &[400, 426]),
        (
            "HTTP/1.0",
            format!(
                "GET / HTTP/1.0\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .into_bytes(),
            &[400, 505],
        ),
        ("garbage request line", b"HELLO\r\n\r\n".to_vec(), &[400]),
    ];
    let mut failures = Vec::new();
    for (what, req, allowed) in &cases {
        let resp = exchange(addr, req);
        if !allowed.contains(&resp.status) {
            failures.push(format!("{what}: got {} (want one of {allowed:?})", resp.status));
        }
    }
    assert!(failures.is_empty(), "wrong statuses:\n{}", failures.join("\n"));

    // The server is still healthy afterwards.
    let mut stream = raw::handshake(addr);
    stream.write_all(&raw::masked(true, raw::OP_TEXT, b"fine")).unwrap();
    assert_eq!(raw::read_message(&mut stream).data, b"fine");
}

#[test]
fn wrong_version_gets_426_with_supported_version() {
    let server = Server::start(&[]);
    for version in ["8", "12", "14"] {
        let req = upgrade(server.addr, "GET", &[UPGRADE, CONNECTION, GOOD_KEY, ("Sec-WebSocket-Version", version)]);
        let resp = exchange(server.addr, &req);
        assert_eq!(resp.status, 426, "version {version}: {resp:?}");
        assert_eq!(
            resp.header("sec-websocket-version").map(str::trim),
            Some("13"),
            "426 must say which version is supported: {resp:?}"
        );
    }
}

#[test]
fn oversized_headers_get_431() {
    let server = Server::start(&[]);
    // Default max handshake size is 8 KiB: send a complete request of ~12 KiB.
    let big = "x".repeat(12 * 1024);
    let req = upgrade(server.addr, "GET", &[UPGRADE, CONNECTION, VERSION, GOOD_KEY, ("X-Padding", &big)]);
    let resp = exchange(server.addr, &req);
    assert_eq!(resp.status, 431, "{resp:?}");

    // Also when the head never ends: many headers, no blank line.
    let mut stream = raw::connect(server.addr);
    let mut head = format!("GET / HTTP/1.1\r\nHost: {}\r\n", server.addr);
    while head.len() < 10 * 1024 {
        head.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    stream.write_all(head.as_bytes()).unwrap();
    let resp = read_http_response_no_eof_body(&mut stream).expect("no response to an endless head");
    assert_eq!(resp.status, 431, "{resp:?}");
    assert!(raw::read_to_eof(&mut stream, Duration::from_secs(10)).is_some(), "connection left open after 431");
}

#[test]
fn half_upgrade_is_closed_at_the_handshake_deadline() {
    let server = Server::start(&["--handshake-timeout", "1s", "--tick", "100ms"]);

    // Half a request: request line and one header, never the blank line.
    let mut half = raw::connect(server.addr);
    let start = Instant::now();
    half.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: web", server.addr).as_bytes()).unwrap();
    // And a connection that sends nothing at all.
    let mut mute = raw::connect(server.addr);

    for (what, stream) in [("half request", &mut half), ("no request", &mut mute)] {
        let got = raw::read_to_eof(stream, Duration::from_secs(10));
        let after = start.elapsed();
        let got = got.unwrap_or_else(|| {
            panic!("{what}: connection still open {after:?} after connecting with --handshake-timeout 1s")
        });
        // It may be answered (408 or 400) before the close; if so it must be a well-formed response.
        if !got.is_empty() {
            let resp = read_http_response(&mut std::io::Cursor::new(&got))
                .unwrap_or_else(|e| panic!("{what}: garbage before close: {e}: {got:?}"));
            assert!([400, 408].contains(&resp.status), "{what}: answered {} at the handshake deadline", resp.status);
        }
        assert!(
            after >= Duration::from_millis(500),
            "{what}: closed after only {after:?}, before the 1 s handshake deadline"
        );
    }
    let logged = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        server.log.matching(&["handshake timeout"]).len() >= 2
    });
    assert!(logged, "expected two \"handshake timeout\" log lines:\n{}", server.log.tail(30));
    let line = &server.log.matching(&["handshake timeout"])[0];
    assert!(line.contains("conn="), "handshake timeout line lacks conn=: {line}");
    server.wait_open_at_most(1, Duration::from_secs(10));
}

#[test]
fn healthz_and_unknown_paths() {
    let server = Server::start(&[]);
    let (status, body) = http_get(server.addr, "/healthz").unwrap();
    assert_eq!(status, 200, "/healthz body: {body:?}");
    assert_eq!(body.trim(), "ok");

    let (status, body) = http_get(server.addr, "/no-such-page").unwrap();
    assert_eq!(status, 404, "/no-such-page body: {body:?}");

    let (status, body) = http_get(server.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(tether_tests::open_connections(&body).is_some(), "/metrics has no open-connections gauge:\n{body}");
}
