//! HTTP/1.1 keep-alive for plain HTTP requests: several requests on one connection (one after the other and
//! pipelined), answered in order; the connection ends when the client asks, when keep-alive is off, for
//! HTTP/1.0, and silently when idle past `--http-keepalive`; a slow next request still gets 408. And
//! `Expect: 100-continue`, answered before the body.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tether_tests::raw;
use tether_tests::{parse_http_head, read_http_head, HttpResponse, Server};

/// One response: its head, then exactly Content-Length bytes of body (never waits for EOF).
fn response(stream: &mut TcpStream) -> HttpResponse {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = read_http_head(stream).expect("an HTTP response");
    let mut resp = parse_http_head(&head).unwrap();
    let len: usize = resp.header("content-length").expect("Content-Length").trim().parse().unwrap();
    let mut body = vec![0; len];
    std::io::Read::read_exact(stream, &mut body).unwrap();
    resp.body = body;
    resp
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
}

/// Whether the server still holds the connection open `wait` later (no EOF, nothing sent).
fn still_open(stream: &mut TcpStream, wait: Duration) -> bool {
    raw::read_to_eof(stream, wait).is_none()
}

fn accepted(server: &Server) -> u64 {
    server.counter("tether_accepted_total")
}

#[test]
fn requests_one_after_another_share_one_connection_until_the_client_says_close() {
    let server = Server::start(&[]);
    let before = accepted(&server);
    let mut s = raw::connect(server.addr);
    for (path, status) in [("/healthz", 200), ("/no-such-page", 404), ("/metrics", 200), ("/healthz", 200)] {
        s.write_all(get(path, "").as_bytes()).unwrap();
        let resp = response(&mut s);
        assert_eq!(resp.status, status, "{path}");
        assert_eq!(resp.header("connection"), Some("keep-alive"), "{path}: {:?}", resp.headers);
    }
    assert!(still_open(&mut s, Duration::from_millis(500)), "closed after a keep-alive answer");
    s.write_all(get("/healthz", "Connection: close\r\n").as_bytes()).unwrap();
    let resp = response(&mut s);
    assert_eq!((resp.status, resp.header("connection")), (200, Some("close")));
    assert_eq!(raw::read_to_eof(&mut s, Duration::from_secs(10)), Some(Vec::new()), "no EOF after Connection: close");
    // Five requests, one connection (the scrape before counted itself; this one counts itself too).
    assert_eq!(accepted(&server) - before, 2, "the five requests did not share one connection");
}

#[test]
fn a_head_answer_has_no_body_and_the_next_answer_follows_it() {
    let server = Server::start(&[]);
    let mut s = raw::connect(server.addr);
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.write_all(get("/no-such-page", "Connection: close\r\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = parse_http_head(&read_http_head(&mut s).unwrap()).unwrap();
    assert_eq!((head.status, head.header("content-length")), (200, Some("3")), "{:?}", head.headers);
    // Right after the HEAD's head: the next answer, not the 3 bytes of a body.
    assert_eq!(response(&mut s).status, 404);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut s = raw::connect(server.addr);
    let burst =
        [get("/healthz", ""), get("/no-such-page", ""), get("/metrics", ""), get("/healthz", "Connection: close\r\n")];
    s.write_all(burst.concat().as_bytes()).unwrap();
    let statuses: Vec<u16> = (0..4).map(|_| response(&mut s).status).collect();
    assert_eq!(statuses, [200, 404, 200, 200]);
    assert_eq!(raw::read_to_eof(&mut s, Duration::from_secs(10)), Some(Vec::new()));
}

#[test]
fn http_1_0_and_keepalive_off_close_after_the_answer() {
    let server = Server::start(&[]);
    let mut s = raw::connect(server.addr);
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(response(&mut s).header("connection"), Some("close"));
    assert_eq!(raw::read_to_eof(&mut s, Duration::from_secs(10)), Some(Vec::new()), "HTTP/1.0 kept open");

    let mut s = raw::connect(server.addr);
    s.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    assert_eq!(response(&mut s).header("connection"), Some("keep-alive"));
    assert!(still_open(&mut s, Duration::from_millis(500)), "HTTP/1.0 keep-alive was closed");

    let off = Server::start(&["--http-keepalive", "off"]);
    let mut s = raw::connect(off.addr);
    s.write_all(get("/healthz", "").as_bytes()).unwrap();
    assert_eq!(response(&mut s).header("connection"), Some("close"));
    assert_eq!(raw::read_to_eof(&mut s, Duration::from_secs(10)), Some(Vec::new()), "kept open with keep-alive off");
}

#[test]
fn an_idle_connection_is_closed_silently_and_a_slow_next_request_gets_408() {
    let server = Server::start(&["--http-keepalive", "1s", "--handshake-timeout", "1s"]);
    let mut s = raw::connect(server.addr);
    s.write_all(get("/healthz", "").as_bytes()).unwrap();
    assert_eq!(response(&mut s).status, 200);
    // Idle past 1 s: closed with nothing sent (no 408 for a request that never started).
    assert_eq!(raw::read_to_eof(&mut s, Duration::from_secs(10)), Some(Vec::new()));

    let mut s = raw::connect(server.addr);
    s.write_all(get("/healthz", "").as_bytes()).unwrap();
    assert_eq!(response(&mut s).status, 200);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finished
    let rest = raw::read_to_eof(&mut s, Duration::from_secs(10)).expect("no EOF after the slow request");
    assert!(rest.starts_with(b"HTTP/1.1 408 "), "{:?}", String::from_utf8_lossy(&rest));
    // A client that leaves an idle connection itself.
    let mut s = raw::connect(server.addr);
    s.write_all(get("/healthz", "").as_bytes()).unwrap();
    assert_eq!(response(&mut s).status, 200);
    drop(s);
    server.wait_open_at_most(1, Duration::from_secs(10));
    // All three ended as plain HTTP connections: no abnormal (1006) close counted.
    assert_eq!(server.counter_with("tether_closed_by_reason_total", &[("reason", "abnormal")]), 0);
}

#[test]
fn an_upgrade_may_follow_a_plain_request_on_the_same_connection() {
    let server = Server::start(&[]);
    let mut s = raw::connect(server.addr);
    s.write_all(get("/healthz", "").as_bytes()).unwrap();
    assert_eq!(response(&mut s).status, 200);
    let addr: SocketAddr = server.addr;
    s.write_all(raw::upgrade_request(addr, "/").as_bytes()).unwrap();
    let head = read_http_head(&mut s).unwrap();
    raw::check_upgrade_response(&parse_http_head(&head).unwrap());
}

/// A client that sent `Expect: 100-continue` waits for `100 Continue` before it sends the body (curl waits
/// 1 s by default, then sends it anyway; .NET Framework's HttpWebRequest asks on every POST). The engine
/// answers it once per request, holds the final answer until the body came, refuses a body over the limit
/// before it is sent, and sends no 100 when the body came with the head.
#[test]
fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let server = Server::start(&["--max-http-body", "1000"]);
    let mut s = raw::connect(server.addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head =
        |len: usize| format!("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len}\r\n\r\n");
    for _ in 0..2 {
        s.write_all(head(5).as_bytes()).unwrap();
        let interim = parse_http_head(&read_http_head(&mut s).expect("no 100 Continue")).unwrap();
        assert_eq!(interim.status, 100);
        // Nothing more before the body: the final answer waits for it.
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut byte = [0u8; 1];
        assert!(std::io::Read::read(&mut s, &mut byte).is_err(), "an answer came before the body");
        s.write_all(b"hello").unwrap();
        let resp = response(&mut s);
        assert_eq!((resp.status, resp.header("connection")), (404, Some("keep-alive")));
    }
    // The body came with the head: no interim answer, the final one first.
    s.write_all(format!("{}hello", head(5)).as_bytes()).unwrap();
    assert_eq!(response(&mut s).status, 404);
    // Over the limit: 413 instead of 100, before any of the body is sent.
    s.write_all(head(1001).as_bytes()).unwrap();
    let resp = response(&mut s);
    assert_eq!((resp.status, resp.header("connection")), (413, Some("close")));
}
