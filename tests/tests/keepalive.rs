//! Server pings and the pong deadline: a live client is pinged about once per ping_interval and never
//! dropped; a peer that goes silent is closed with 1011 "pong timeout" and freed.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tether_tests::raw::{self, OP_PING, OP_TEXT};
use tether_tests::{block_on_with_timeout, close_lines, log_field, wait_until, Server};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const FAST_PINGS: &[&str] =
    &["--ping-interval", "1s", "--pong-timeout", "1s", "--close-timeout", "1s", "--tick", "100ms"];

#[test]
fn pings_arrive_about_once_per_interval() {
    let server = Server::start(FAST_PINGS);
    block_on_with_timeout(Duration::from_secs(60), async {
        let (mut ws, _) = connect_async(server.ws_url("/")).await.unwrap();
        let start = Instant::now();
        let window = Duration::from_millis(4500);
        let mut pings = Vec::new();
        while start.elapsed() < window {
            let left = window.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Ping(p)))) => {
                    pings.push((start.elapsed(), p));
                    // tungstenite queued the pong; make sure it leaves now.
                    ws.flush().await.unwrap();
                }
                Ok(Some(Ok(other))) => panic!("unexpected message while idle: {other:?}"),
                Ok(Some(Err(e))) => panic!("websocket error while idle: {e}"),
                Ok(None) => panic!("server closed an answering client after {:?}", start.elapsed()),
            }
        }
        assert!(
            (2..=6).contains(&pings.len()),
            "expected 2..=6 pings in {window:?} with --ping-interval 1s, got {}: {pings:?}",
            pings.len()
        );
        // Still open and echoing: answering pings keeps a connection alive.
        ws.send(Message::text("still here")).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    assert_eq!(t, "still here");
                    break;
                }
                Ok(Some(Ok(Message::Ping(_)))) => continue,
                other => panic!("expected the echo, got {other:?}"),
            }
        }
    });
    assert!(
        server.log.matching(&["pong timeout"]).is_empty(),
        "a client that answered every ping was timed out:\n{}",
        server.log.tail(20)
    );
}

/// A client that completes the handshake and then neither reads nor writes anything.
#[test]
fn silent_peer_is_closed_after_pong_timeout() {
    let server = Server::start(FAST_PINGS);
    let mut stream = raw::handshake(server.addr);
    let connected = Instant::now();

    // Deadline: the first ping at a random point of the first interval (0-1 s: pings of connections that
    // open together are spread), the pong due 1 s later, plus ticks. Assert only that it happens, generously.
    let found = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        !server.log.matching(&["pong timeout"]).is_empty()
    });
    let waited = connected.elapsed();
    assert!(found, "no \"pong timeout\" in the log {waited:?} after a peer went silent:\n{}", server.log.tail(30));
    // Not before a ping could have been sent and its pong deadline missed: at least pong-timeout (1 s) after
    // the open, less a tick of slack (the server's open precedes the client's timestamp).
    assert!(waited >= Duration::from_millis(900), "silent peer closed after only {waited:?} (pong-timeout 1s)");
    let line = close_lines(&server.log)
        .into_iter()
        .find(|l| log_field(l, "reason") == Some("pong timeout"))
        .unwrap_or_else(|| {
            panic!(
                "\"pong timeout\" logged, but no close line (conn= code= reason=\"pong timeout\" \
                 initiator=) for it:\n{}",
                server.log.tail(30)
            )
        });
    assert_eq!(log_field(&line, "code"), Some("1011"), "close line: {line}");
    assert_eq!(log_field(&line, "initiator"), Some("local"), "close line: {line}");

    server.wait_open_at_most(1, Duration::from_secs(10));

    // The socket holds whatever the server sent (pings, maybe a Close 1011), then EOF.
    let ending = raw::read_until_close(&mut stream, Duration::from_secs(10), false);
    assert!(ending.eof, "socket of a timed-out peer not closed: {ending:?}");
    if let Some((code, reason)) = &ending.close {
        assert_eq!(*code, 1011, "close frame to a timed-out peer: {ending:?}");
        assert!(reason.contains("pong"), "close reason: {reason:?}");
    }
    assert!(
        ending.frames.iter().any(|f| f.opcode == OP_PING),
        "the silent peer was closed without ever being pinged: {ending:?}"
    );
}

/// Any inbound frame is a sign of life: a client that keeps sending data but never answers a ping is
/// not dropped for a missing pong.
#[test]
fn busy_client_is_not_dropped_for_missing_pongs() {
    let server = Server::start(FAST_PINGS);
    let mut stream = raw::handshake(server.addr);
    let start = Instant::now();
    let mut pings = 0;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let msg = format!("busy {i}");
        stream.write_all(&raw::masked(true, OP_TEXT, msg.as_bytes())).unwrap();
        let got = raw::read_message(&mut stream);
        assert_eq!(got.data, msg.as_bytes());
        pings += got.pings.len();
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        server.log.matching(&["pong timeout"]).is_empty(),
        "a client sending data every 300 ms was closed for a missing pong:\n{}",
        server.log.tail(20)
    );
    // Either it was pinged and survived without answering, or the server skips pings for busy peers:
    // both are fine. Record which, for the log.
    eprintln!("busy client: {i} messages, {pings} pings seen");
}

/// With pings disabled, an idle connection is left alone.
#[test]
fn ping_interval_zero_disables_pings() {
    let server = Server::start(&["--ping-interval", "0", "--pong-timeout", "1s"]);
    let mut stream = raw::handshake(server.addr);
    stream.set_read_timeout(Some(Duration::from_millis(3500))).unwrap();
    match raw::read_frame(&mut stream) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("expected silence with --ping-interval 0, got {other:?}"),
    }
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&raw::masked(true, OP_TEXT, b"alive")).unwrap();
    assert_eq!(raw::read_message(&mut stream).data, b"alive");
}

/// `ss -tnH state established FILTER` (iproute2), with `-o` (timers) when `timers`: one line per socket.
fn ss_established(filter: &str, timers: bool) -> String {
    let flags = if timers { "-tnoH" } else { "-tnH" };
    let out = std::process::Command::new("ss").args([flags, "state", "established", filter]).output();
    let out = out.unwrap_or_else(|e| panic!("running ss (iproute2): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The time left on the kernel's keepalive timer of the TCP socket `local` -> `peer`, in seconds: None while
/// the socket shows no keepalive timer (e.g. data in flight).
fn keepalive_timer(local: u16, peer: u16) -> Option<f64> {
    let text = ss_established(&format!("( sport = :{local} and dport = :{peer} )"), true);
    let timer = text.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    Some(parse_ss_time(timer))
}

/// ss's timer format: `29sec`, `1min5sec`, `2min`, `6.500ms` (6.5 s) or `300ms`.
fn parse_ss_time(t: &str) -> f64 {
    let (minutes, rest) = match t.split_once("min") {
        Some((m, rest)) => (m.parse::<f64>().unwrap_or_else(|_| panic!("ss timer {t:?}")), rest),
        None => (0.0, t),
    };
    let secs = if let Some(s) = rest.strip_suffix("sec") {
        s.parse::<f64>().unwrap_or_else(|_| panic!("ss timer {t:?}"))
    } else if let Some(ms) = rest.strip_suffix("ms") {
        let v = ms.parse::<f64>().unwrap_or_else(|_| panic!("ss timer {t:?}"));
        if ms.contains('.') {
            v
        } else {
            v / 1000.0
        }
    } else if rest.is_empty() {
        0.0
    } else {
        panic!("ss timer {t:?}")
    };
    minutes * 60.0 + secs
}

/// Polls `keepalive_timer` for a few seconds (a ping in flight shows the retransmit timer instead).
fn wait_keepalive_timer(local: u16, peer: u16) -> f64 {
    let mut left = None;
    let found = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        left = keepalive_timer(local, peer);
        left.is_some()
    });
    assert!(found, "no keepalive timer on {local} -> {peer} within 5 s");
    left.unwrap_or_default()
}

/// TCP keepalive's idle time follows the pings unless given (`--tcp-keepalive auto,5s,3` by default):
/// `ping_interval + pong_timeout`, so a connection whose pings are answered never idles long enough to be
/// probed; 15 s without pings; an explicit IDLE as given. Measured, the old fixed 15 s under the default 20 s
/// pings had the kernel probe every connection in every ping interval at both ends (69% more packets than the
/// pings themselves). Checked on the kernel's own timer of each socket: the server's accepted socket and
/// tether-load's client socket.
#[test]
fn tcp_keepalive_idle_follows_the_pings() {
    let cases: [(&[&str], f64, f64); 4] = [
        (&[], 25.0, 30.0),
        (&["--ping-interval", "0"], 10.0, 15.0),
        (&["--tcp-keepalive", "7s,5s,3"], 2.0, 7.0),
        (&["--ping-interval", "45s", "--pong-timeout", "20s"], 60.0, 65.0),
    ];
    for (args, low, high) in cases {
        let server = Server::start(args);
        let stream = raw::handshake(server.addr);
        let local = stream.local_addr().unwrap().port();
        let left = wait_keepalive_timer(server.port(), local);
        assert!(
            left > low && left <= high,
            "tetherd {args:?}: the accepted socket's keepalive timer has {left} s left, expected ({low}, {high}]"
        );
    }

    // The client role: tether-load pinging every 40 s (pong timeout 10 s) gets a 50 s idle.
    let server = Server::start(&[]);
    let url = server.ws_url("/");
    let load = tether_tests::load::Load::spawn(
        None,
        &["run", "--url", &url, "--connections", "1", "--duration", "6s", "--ping-interval", "40s"],
    );
    let mut client_port = None;
    let connected = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let text = ss_established(&format!("( dport = :{} )", server.port()), false);
        client_port = text.split_whitespace().find_map(|field| {
            let p: u16 = field.rsplit_once(':')?.1.parse().ok()?;
            (p != server.port()).then_some(p)
        });
        client_port.is_some()
    });
    assert!(connected, "tether-load did not connect within 10 s");
    let client_port = client_port.unwrap_or_default();
    let left = wait_keepalive_timer(client_port, server.port());
    assert!(
        left > 45.0 && left <= 50.0,
        "tether-load --ping-interval 40s: keepalive timer {left} s left, expected (45, 50]"
    );
    let run = load.wait(Duration::from_secs(60));
    run.assert_all_clean(1, "tether-load with the auto keepalive");
}

#[test]
fn ss_timer_formats() {
    assert_eq!(parse_ss_time("29sec"), 29.0);
    assert_eq!(parse_ss_time("1min5sec"), 65.0);
    assert_eq!(parse_ss_time("2min"), 120.0);
    assert_eq!(parse_ss_time("6.500ms"), 6.5);
    assert_eq!(parse_ss_time("300ms"), 0.3);
}
