//! Per-source-address limits (`--per-ip-max-connections`, `--per-ip-handshake-rate`): past them a request
//! is answered 503 (connections held) or 429 (rate) with Retry-After, before any upgrade and whatever its
//! path (the gateway's WebSocket and API routes, and a tenant's, included), and counted in /metrics; other
//! addresses are unaffected, and room comes back as connections close and time passes. The clients bind to
//! addresses of 127.0.0.0/8 other than 127.0.0.1 (which the scrapes of /metrics use).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tether_tests::raw;
use tether_tests::{parse_metrics, read_http_response, wait_until, HttpResponse, Server};

fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into()).unwrap_or_else(|e| panic!("bind {src}: {e}"));
    s.connect_timeout(&addr.into(), Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Sends `request` from `src`; returns the connection and the response head (and body, if refused).
fn request_from(src: Ipv4Addr, addr: SocketAddr, request: &str) -> (TcpStream, HttpResponse) {
    let mut stream = connect_from(src, addr);
    stream.write_all(request.as_bytes()).unwrap();
    let resp = if request.contains("Upgrade: websocket") {
        // Read the head only: frames may follow a 101.
        let head = tether_tests::read_http_head(&mut stream).expect("response head");
        let mut resp = tether_tests::parse_http_head(&head).unwrap();
        if resp.status != 101 {
            let len = resp.header("content-length").and_then(|l| l.trim().parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            std::io::Read::read_exact(&mut stream, &mut body).unwrap();
            resp.body = body;
        }
        resp
    } else {
        read_http_response(&mut stream).expect("response")
    };
    (stream, resp)
}

fn upgrade_from(src: Ipv4Addr, addr: SocketAddr) -> (TcpStream, HttpResponse) {
    request_from(src, addr, &raw::upgrade_request(addr, "/"))
}

/// A refusal: the status, a Retry-After of whole seconds, and the connection closed after it.
fn assert_refused(mut stream: TcpStream, resp: &HttpResponse, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
    let retry = resp.header("retry-after").and_then(|v| v.trim().parse::<u32>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "{what}: no Retry-After in {resp:?}");
    assert!(raw::read_to_eof(&mut stream, Duration::from_secs(10)).is_some(), "{what}: left open after {status}");
}

fn gauge(server: &Server, name: &str) -> u64 {
    tether_tests::gauge_total(&parse_metrics(&server.metrics()), name).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn connections_per_address_past_the_limit_get_503_until_one_closes() {
    let server = Server::start(&["--per-ip-max-connections", "3"]);
    let addr = server.addr;
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, resp) = upgrade_from(a, addr);
            raw::check_upgrade_response(&resp);
            s
        })
        .collect();
    let (s, resp) = upgrade_from(a, addr);
    assert_refused(s, &resp, 503, "fourth upgrade from 127.0.0.2");
    // (A refused connection that sends nothing should be answered 503 within a second; under load it was
    // once answered 408 at the handshake deadline instead: a race left open, not asserted here.)
    // Every endpoint: plain HTTP from the same address is refused too.
    let (s, resp) = request_from(a, addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused(s, &resp, 503, "GET /healthz from 127.0.0.2");
    // Another address is independent.
    let (mut other, resp) = upgrade_from(Ipv4Addr::new(127, 0, 0, 3), addr);
    raw::check_upgrade_response(&resp);
    other.write_all(&raw::masked(true, raw::OP_TEXT, b"other")).unwrap();
    assert_eq!(raw::read_message(&mut other).data, b"other");
    assert_eq!(server.counter("tether_rejected_ip_connections_total"), 2);

    // One closes: room for one more.
    drop(held.pop());
    let mut s = None;
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (stream, resp) = upgrade_from(a, addr);
        let admitted = resp.status == 101;
        if admitted {
            s = Some(stream);
        }
        admitted
    });
    assert!(ok, "no upgrade from 127.0.0.2 accepted after one of its connections closed");
    held.push(s.unwrap());
    held[2].write_all(&raw::masked(true, raw::OP_TEXT, b"again")).unwrap();
    assert_eq!(raw::read_message(&mut held[2]).data, b"again");

    // All closed: the table forgets both addresses (the scrape's own 127.0.0.1 may be in it while it runs).
    drop(held);
    drop(other);
    let forgotten = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        gauge(&server, "tether_per_ip_addresses") <= 1
    });
    assert!(forgotten, "per-IP entries left behind:\n{}", server.metrics());
}

#[test]
fn new_connections_per_address_past_the_rate_get_429() {
    let server = Server::start(&["--per-ip-handshake-rate", "5/s"]);
    let addr = server.addr;
    let a = Ipv4Addr::new(127, 0, 0, 4);
    let start = Instant::now();
    let mut admitted = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        let (s, resp) = upgrade_from(a, addr);
        if resp.status == 101 {
            admitted.push(s);
        } else {
            refused = Some((s, resp));
            break;
        }
    }
    let took = start.elapsed().as_secs_f64();
    let (s, resp) = refused.unwrap_or_else(|| panic!("20 upgrades from one address in {took:.2}s, none refused"));
    // A burst of 5, plus what refilled meanwhile.
    let allowed = 5 + (5.0 * took).ceil() as usize;
    assert!(admitted.len() >= 5 && admitted.len() <= allowed, "{} admitted in {took:.2}s", admitted.len());
    assert_refused(s, &resp, 429, "upgrade past 5/s");
    assert_eq!(resp.header("retry-after").map(str::trim), Some("1"), "{resp:?}");

    // Another address has its own bucket.
    let (_other, resp) = upgrade_from(Ipv4Addr::new(127, 0, 0, 5), addr);
    raw::check_upgrade_response(&resp);

    // The bucket refills: a new connection a second later is accepted (the open ones do not matter).
    std::thread::sleep(Duration::from_millis(1100));
    let (_s, resp) = upgrade_from(a, addr);
    raw::check_upgrade_response(&resp);
    assert!(server.counter("tether_rejected_ip_rate_total") >= 1);

    // Closed and refilled: the entries expire (scrapes spaced below the rate of 127.0.0.1's own bucket).
    drop(admitted);
    drop(_s);
    drop(_other);
    let forgotten = wait_until(Duration::from_secs(10), Duration::from_millis(500), || {
        gauge(&server, "tether_per_ip_addresses") <= 1
    });
    assert!(forgotten, "per-IP entries left behind:\n{}", server.metrics());
}

#[test]
fn off_by_default() {
    let server = Server::start(&[]);
    let a = Ipv4Addr::new(127, 0, 0, 6);
    let held: Vec<TcpStream> = (0..50)
        .map(|_| {
            let (s, resp) = upgrade_from(a, server.addr);
            raw::check_upgrade_response(&resp);
            s
        })
        .collect();
    assert_eq!(gauge(&server, "tether_per_ip_addresses"), 0, "nothing tracked without limits");
    drop(held);
}

/// `POST <path>` of a JSON `body` with `X-API-Key: key` (the gateway's server API), closed after the answer.
fn api_post(addr: SocketAddr, path: &str, key: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An answer of the server API that carried out the call: 200 with a `result`.
fn assert_api_ok(resp: &HttpResponse, what: &str) {
    let body = String::from_utf8_lossy(&resp.body);
    assert!(resp.status == 200 && body.contains("\"result\""), "{what}: {resp:?} {body}");
}

/// The gateway's routes are endpoints like any other: a tetherd with `--gateway` and a tenant refuses an
/// address past its limits on `/connection/websocket`, `/t/NAME/connection/websocket`, `/api/<method>` and
/// `/t/NAME/api/<method>` alike, before any upgrade or API call.
#[test]
fn gateway_and_tenant_routes_past_the_limits_get_503_and_429() {
    let dir = tether_tests::TempDir::new("per-ip-gateway");
    // Unauthenticated connections are closed after client.stale_close_delay (10 s by default): longer here,
    // so the held ones stay for the whole check even on a slow machine.
    let config = |secret: &str, key: &str| {
        format!(
            r#"{{"client": {{"token": {{"hmac_secret_key": "{secret}"}}, "stale_close_delay": "120s"}},
                "http_api": {{"key": "{key}"}}}}"#
        )
    };
    let gateway = dir.path().join("gateway.json");
    std::fs::write(&gateway, config("secret", "api-key")).unwrap();
    let acme = dir.path().join("acme.json");
    std::fs::write(&acme, config("acme-secret", "acme-key")).unwrap();
    let tenant = format!("acme={}", acme.display());
    let args = ["--gateway", gateway.to_str().unwrap(), "--tenant", tenant.as_str()];
    let publish = r#"{"channel": "news", "data": {"text": "hi"}}"#;
    let (gw_ws, acme_ws) = ("/connection/websocket", "/t/acme/connection/websocket");

    // Connections held: 2 upgrades, one on each WebSocket route, fill the address's room.
    {
        let server = Server::start(&[&["--per-ip-max-connections", "2"][..], &args[..]].concat());
        let addr = server.addr;
        let a = Ipv4Addr::new(127, 0, 0, 7);
        let held: Vec<TcpStream> = [gw_ws, acme_ws]
            .iter()
            .map(|path| {
                let (s, resp) = request_from(a, addr, &raw::upgrade_request(addr, path));
                raw::check_upgrade_response(&resp);
                s
            })
            .collect();
        for path in [gw_ws, acme_ws] {
            let (s, resp) = request_from(a, addr, &raw::upgrade_request(addr, path));
            assert_refused(s, &resp, 503, &format!("third connection from 127.0.0.7: upgrade on {path}"));
        }
        let (s, resp) = request_from(a, addr, &api_post(addr, "/api/publish", "api-key", publish));
        assert_refused(s, &resp, 503, "third connection from 127.0.0.7: POST /api/publish");
        let (s, resp) = request_from(a, addr, &api_post(addr, "/t/acme/api/publish", "acme-key", publish));
        assert_refused(s, &resp, 503, "third connection from 127.0.0.7: POST /t/acme/api/publish");
        // Another address is independent (and shows the same requests are otherwise served).
        let b = Ipv4Addr::new(127, 0, 0, 8);
        let (_s, resp) = request_from(b, addr, &api_post(addr, "/api/publish", "api-key", publish));
        assert_api_ok(&resp, "POST /api/publish from 127.0.0.8");
        let (_other, resp) = request_from(b, addr, &raw::upgrade_request(addr, acme_ws));
        raw::check_upgrade_response(&resp);
        assert_eq!(server.counter("tether_rejected_ip_connections_total"), 4);
        drop(held);
    }

    // New connections: at 3/min the address gets a token every 20 s, so once its burst is spent every
    // request is refused for the rest of the check, with Retry-After 20. (The burst is 1 here: the engine
    // sizes it as the per-second rate, at least one; hence a range for the calls admitted first.)
    {
        let server = Server::start(&[&["--per-ip-handshake-rate", "3/min"][..], &args[..]].concat());
        let addr = server.addr;
        let a = Ipv4Addr::new(127, 0, 0, 9);
        let mut admitted = 0;
        let first_refused = loop {
            let (s, resp) = request_from(a, addr, &api_post(addr, "/api/publish", "api-key", publish));
            if resp.status != 200 || admitted == 3 {
                break (s, resp);
            }
            assert_api_ok(&resp, "POST /api/publish from 127.0.0.9 within its burst");
            admitted += 1;
        };
        assert!((1..=3).contains(&admitted), "{admitted} calls admitted before a refusal");
        let refused = [
            (first_refused, "POST /api/publish"),
            (
                request_from(a, addr, &api_post(addr, "/t/acme/api/publish", "acme-key", publish)),
                "POST /t/acme/api/publish",
            ),
            (request_from(a, addr, &raw::upgrade_request(addr, acme_ws)), "upgrade on /t/acme/connection/websocket"),
            (request_from(a, addr, &raw::upgrade_request(addr, gw_ws)), "upgrade on /connection/websocket"),
        ];
        for ((s, resp), what) in refused {
            assert_refused(s, &resp, 429, &format!("{what} from 127.0.0.9 past 3/min"));
            assert_eq!(resp.header("retry-after").map(str::trim), Some("20"), "{what}: {resp:?}");
        }
        // Another address has its own bucket.
        let (_s, resp) = request_from(
            Ipv4Addr::new(127, 0, 0, 10),
            addr,
            &api_post(addr, "/t/acme/api/publish", "acme-key", publish),
        );
        assert_api_ok(&resp, "POST /t/acme/api/publish from 127.0.0.10");
        // One scrape only: 127.0.0.1 has a bucket of 3/min too.
        assert_eq!(server.counter("tether_rejected_ip_rate_total"), 4);
    }
}
