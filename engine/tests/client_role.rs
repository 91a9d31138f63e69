//! The engine's client role against its server role over loopback: connect, echo, ping RTT, close.
//! (External clients are exercised in the tether-tests crate; this checks the client half itself.)

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tether::{Closed, Config, ConnId, ConnectError, ConnectRequest, Ctx, Engine, Handler, Message, MessageKind};

struct Echo;
impl Handler for Echo {
    type Conn = ();
    type Notice = ();

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = ctx.send(conn, message);
    }
}

#[derive(Debug)]
enum Seen {
    Connected(u64),
    Failed(u64, ConnectError),
    Echo(ConnId, Vec<u8>),
    Rtt(Duration),
    Closed(u16, Option<std::net::SocketAddr>),
}

struct Client {
    tx: mpsc::Sender<Seen>,
}
impl Handler for Client {
    type Conn = ();
    type Notice = ();

    fn on_connected(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, tag: u64) {
        let _ = self.tx.send(Seen::Connected(tag));
        ctx.send(conn, Message::Text(&format!("hello {tag}"))).unwrap();
        ctx.ping(conn).unwrap();
    }
    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_, Self>, tag: u64, error: &ConnectError) {
        let _ = self.tx.send(Seen::Failed(tag, error.clone()));
    }
    fn on_message(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = self.tx.send(Seen::Echo(conn, message.as_bytes().to_vec()));
    }
    fn on_pong(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, rtt: Option<Duration>) {
        if let Some(rtt) = rtt {
            let _ = self.tx.send(Seen::Rtt(rtt));
        }
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, closed: &Closed) {
        let _ = self.tx.send(Seen::Closed(closed.info.code, closed.peer));
    }
}

fn server() -> Engine<Echo> {
    let config = Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 2, ..Config::default() };
    Engine::start(config, |_| Echo).expect("server starts")
}

fn client(tx: mpsc::Sender<Seen>) -> Engine<Client> {
    let config = Config { listen: None, shards: 2, ..Config::default() };
    Engine::start(config, move |_| Client { tx: tx.clone() }).expect("client starts")
}

#[test]
fn client_connects_echoes_pings_and_closes() {
    let server = server();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let client = client(tx);
    let handle = client.handle();
    const N: u64 = 200;
    for tag in 0..N {
        let bind = Some(format!("127.0.0.{}:0", 2 + tag % 3).parse().unwrap());
        handle
            .connect(
                (tag % 2) as usize,
                ConnectRequest {
                    addr,
                    bind,
                    host: addr.to_string(),
                    path: "/echo".into(),
                    tag,
                    not_before: None,
                    headers: Default::default(),
                    tls: None,
                },
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut connected, mut echoes, mut rtts) = (0, 0, 0);
    let mut conns = Vec::new();
    while (connected < N || echoes < N || rtts < N) && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Seen::Connected(tag)) => {
                assert!(tag < N);
                connected += 1
            }
            Ok(Seen::Echo(conn, bytes)) => {
                assert!(String::from_utf8(bytes).unwrap().starts_with("hello "));
                conns.push(conn);
                echoes += 1;
            }
            Ok(Seen::Rtt(rtt)) => {
                assert!(rtt < Duration::from_secs(10));
                rtts += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
    }
    assert_eq!((connected, echoes, rtts), (N, N, N));
    assert_eq!(server.handle().stats().websocket_open, N);
    for conn in &conns {
        handle.close(*conn, 1000, "done").unwrap();
    }
    let mut closed = 0;
    while closed < N && Instant::now() < deadline {
        if let Ok(Seen::Closed(code, peer)) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(code, 1000);
            assert_eq!(peer, Some(addr), "the client's close reports the server it was connected to");
            closed += 1;
        }
    }
    assert_eq!(closed, N);
    let wait = Instant::now() + Duration::from_secs(10);
    while server.handle().stats().open > 0 && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = server.handle().stats();
    assert_eq!(stats.open, 0, "server slots all free: {stats:?}");
    assert_eq!(stats.closed_with(1000), N);
    assert_eq!(client.handle().stats().open, 0);
    client.handle().shutdown(Duration::from_secs(1));
    server.handle().shutdown(Duration::from_secs(1));
    client.wait();
    server.wait();
}

#[test]
fn client_reports_refused_and_rejected_connections() {
    let (tx, rx) = mpsc::channel();
    let client = client(tx);
    // Nothing listens on this port.
    let closed_port: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    client
        .handle()
        .connect(
            0,
            ConnectRequest {
                addr: closed_port,
                bind: None,
                host: "x".into(),
                path: "/".into(),
                tag: 7,
                not_before: None,
                headers: Default::default(),
                tls: None,
            },
        )
        .unwrap();
    // A plain HTTP server that answers 403.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = http.accept() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    client
        .handle()
        .connect(
            1,
            ConnectRequest {
                addr: http_addr,
                bind: None,
                host: "x".into(),
                path: "/".into(),
                tag: 8,
                not_before: None,
                headers: Default::default(),
                tls: None,
            },
        )
        .unwrap();
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures.len() < 2 && Instant::now() < deadline {
        if let Ok(Seen::Failed(tag, e)) = rx.recv_timeout(Duration::from_millis(100)) {
            failures.push((tag, e));
        }
    }
    failures.sort_by_key(|(t, _)| *t);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(matches!(&failures[0].1, ConnectError::Io(e) if e.contains("refused")), "{failures:?}");
    assert_eq!(failures[1].1, ConnectError::Rejected { status: 403, reason: "Forbidden".into() });
    let wait = Instant::now() + Duration::from_secs(5);
    while client.handle().stats().open > 0 && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.handle().stats().open, 0);
    let _ = MessageKind::Text;
    client.handle().shutdown(Duration::ZERO);
    client.wait();
}
