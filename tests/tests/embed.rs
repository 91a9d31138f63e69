//! The engine behind an existing HTTP stack: the axum and hyper example apps (engine/examples) accept and
//! upgrade WebSockets with their own routing and cookie auth, then hand the sockets to the engine
//! (`EngineHandle::adopt`). Checked from outside with clients nobody here wrote (tokio-tungstenite, and
//! tether-load for the 30,000-connection run) and with raw frames where the wire itself is the point.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tether_tests::app::App;
use tether_tests::load::Load;
use tether_tests::raw::{self, OP_BINARY, OP_PING, OP_TEXT};
use tether_tests::{http_get, read_http_response};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const COOKIE: &str = "Cookie: session=demo";

fn upgrade_with_cookie(addr: std::net::SocketAddr, cookie: bool) -> String {
    let req = raw::upgrade_request(addr, "/ws");
    if cookie {
        req.replacen("\r\n\r\n", &format!("\r\n{COOKIE}\r\n\r\n"), 1)
    } else {
        req
    }
}

/// Everything one app must do, on real sockets.
fn check_app(name: &str) {
    // Short keepalive so the pings and the pong deadline show within seconds.
    let app = App::start(name, &["--ping-interval", "300ms", "--pong-timeout", "500ms"], None);
    let addr = app.addr;
    let ctx = |what: &str| format!("{name}: {what}; app stderr:\n{}", app.log.tail(20));

    // The app's own route.
    let (status, body) = http_get(addr, "/hello").expect("GET /hello");
    assert_eq!((status, body.as_str()), (200, format!("hello from {name}\n").as_str()), "{}", ctx("GET /hello"));

    // The app's auth: no cookie, no WebSocket.
    let mut s = raw::connect(addr);
    s.write_all(upgrade_with_cookie(addr, false).as_bytes()).unwrap();
    let resp = read_http_response(&mut s).expect("answer to an upgrade without the cookie");
    assert_eq!(resp.status, 401, "{}", ctx("upgrade without the session cookie"));

    // tokio-tungstenite: greeted by the user the cookie named, echoes, server pings answered by the client
    // library, still open well past the pong deadline, clean close.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("cookie", "session=demo".parse().unwrap());
        let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
            .expect("tokio-tungstenite connect");
        assert_eq!(resp.status(), 101);
        let hello = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(hello, Message::Text("hello demo".into()), "{name}: greeting");
        ws.send(Message::Text("text one".into())).await.unwrap();
        ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
        // Read for 2 s (several ping intervals, four pong deadlines): echoes and pings arrive; tungstenite
        // answers each ping by itself.
        let until = Instant::now() + Duration::from_secs(2);
        let (mut pings, mut echoes) = (0, Vec::new());
        while let Ok(got) = tokio::time::timeout_at(until.into(), ws.next()).await {
            match got.expect("stream ended early").expect("read error") {
                Message::Ping(_) => pings += 1,
                Message::Close(c) => panic!("{name}: closed while answering pings: {c:?}"),
                m => echoes.push(m),
            }
        }
        assert_eq!(echoes, [Message::Text("text one".into()), Message::Binary(vec![0, 1, 2, 255])], "{name}: echoes");
        assert!(pings >= 3, "{name}: {pings} server pings in 2 s at a 300 ms interval");
        ws.send(Message::Text("after the pings".into())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await.expect("ended").expect("read") {
                    Message::Ping(_) => {}
                    m => return m,
                }
            }
        })
        .await
        .expect("echo after the pings");
        assert_eq!(echo, Message::Text("after the pings".into()));
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                if let Ok(Message::Close(c)) = m {
                    return c;
                }
            }
            None
        })
        .await
        .expect("close answer");
        assert_eq!(end.map(|c| c.code), Some(CloseCode::Normal), "{name}: close answered with 1000");
    });

    // The bytes hyper read past the request (a frame sent in the same write) are not lost: they reach the
    // engine as the first bytes of the adopted connection.
    let mut s = raw::connect(addr);
    let mut first = upgrade_with_cookie(addr, true).into_bytes();
    first.extend_from_slice(&raw::masked(true, OP_TEXT, b"right behind the request"));
    s.write_all(&first).unwrap();
    let resp = read_http_response(&mut s).expect("101");
    assert_eq!(resp.status, 101, "{}", ctx("upgrade with the cookie"));
    let hello = raw::read_message(&mut s);
    assert_eq!((hello.opcode, hello.data.as_slice()), (OP_TEXT, &b"hello demo"[..]));
    let echo = raw::read_message(&mut s);
    assert_eq!(
        (echo.opcode, echo.data.as_slice()),
        (OP_TEXT, &b"right behind the request"[..]),
        "{}",
        ctx("frame sent with the request")
    );
    s.write_all(&raw::masked(true, OP_BINARY, &[7; 70_000])).unwrap();
    let big = raw::read_message(&mut s);
    assert_eq!((big.opcode, big.data.len()), (OP_BINARY, 70_000), "{}", ctx("70 kB echo"));

    // A client that never answers pings: pinged, then closed with 1011 by the pong deadline.
    let mut silent = raw::connect(addr);
    silent.write_all(upgrade_with_cookie(addr, true).as_bytes()).unwrap();
    assert_eq!(read_http_response(&mut silent).expect("101").status, 101);
    let ending = raw::read_until_close(&mut silent, Duration::from_secs(5), true);
    let pings = ending.frames.iter().filter(|f| f.opcode == OP_PING).count();
    assert!(pings >= 1, "{}", ctx(&format!("no ping reached the silent client: {ending:?}")));
    assert_eq!(ending.close.as_ref().map(|c| c.0), Some(1011), "{}", ctx(&format!("silent client: {ending:?}")));
    let after = ending.close_after.unwrap_or_default();
    assert!(after < Duration::from_secs(3), "{name}: the pong deadline took {after:?}");

    // And the app's own routes still work.
    let (status, _) = http_get(addr, "/hello").expect("GET /hello after the WebSockets");
    assert_eq!(status, 200, "{}", ctx("GET /hello at the end"));
}

#[test]
fn axum_app_adopts_its_websockets() {
    check_app("axum");
}

#[test]
fn hyper_app_adopts_its_websockets() {
    check_app("hyper");
}

/// 30,000 adopted connections in one app whose fd limit is 4,096: each socket leaves the process's fd table
/// when the engine takes it (the ring's registered table holds it), so the app holds far more connections
/// than it could descriptors. tether-load (direct descriptors too) opens them with the session cookie.
#[test]
fn thirty_thousand_adopted_connections_past_the_fd_limit() {
    const N: u64 = 30_000;
    let app = App::start("axum", &["--max-connections", "31000", "--ping-interval", "5s"], Some(4096));
    let url = format!("ws://{}/ws", app.addr);
    let n = N.to_string();
    let load = Load::spawn(
        None,
        &[
            "run",
            "--url",
            &url,
            "--connections",
            &n,
            "--rate",
            "6000/s",
            "--duration",
            "4s",
            "--ping-interval",
            "2s",
            "--header",
            COOKIE,
            "--final-echo",
        ],
    );
    // Sample the app's descriptors while the connections are held.
    let start = Instant::now();
    let mut max_fds = 0;
    while start.elapsed() < Duration::from_secs(9) {
        max_fds = max_fds.max(app.open_fds());
        std::thread::sleep(Duration::from_millis(250));
    }
    let run = load.wait(Duration::from_secs(120));
    let d = format!("{}\napp stderr:\n{}", run.describe(), app.log.tail(20));
    assert_eq!(run.code, Some(0), "{d}");
    assert_eq!(run.u("connections.established"), N, "not every connection opened\n{d}");
    assert_eq!(run.u("connections.peak_open"), N, "not all held at once\n{d}");
    assert_eq!(run.u("drops.total"), 0, "connections dropped\n{d}");
    assert_eq!(run.u("messages.final_echoed"), N, "not every connection echoed at the end\n{d}");
    assert_eq!(run.u("closes.clean"), N, "not every connection closed cleanly\n{d}");
    eprintln!("app held {N} connections with at most {max_fds} descriptors open");
    assert!(max_fds < 4096, "the app had {max_fds} descriptors open");
}
