//! Several rings per shard thread: with small registered-file tables, one thread holds more connections
//! than one table takes, on both sides (accepted and outbound), and every one of them echoes, answers pings
//! and closes cleanly; the threads follow the shard count, not the connection count.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tether::{CloseCause, Closed, Config, ConnId, ConnectRequest, Ctx, Engine, Handler, Message, MessageKind};

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
    Open(ConnId),
    Echo,
    Rtt,
    Closed(u16, CloseCause),
    Failed(String),
}

struct Client(mpsc::Sender<Seen>);
impl Handler for Client {
    type Conn = ();
    type Notice = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let _ = self.0.send(Seen::Open(conn));
        ctx.send(conn, Message::Text("hi")).unwrap();
        ctx.ping(conn).unwrap();
    }
    fn on_message(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, _m: Message<'_>) {
        let _ = self.0.send(Seen::Echo);
    }
    fn on_pong(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, rtt: Option<Duration>) {
        if rtt.is_some() {
            let _ = self.0.send(Seen::Rtt);
        }
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, closed: &Closed) {
        let _ = self.0.send(Seen::Closed(closed.info.code, closed.info.cause));
    }
    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_, Self>, _tag: u64, error: &tether::ConnectError) {
        let _ = self.0.send(Seen::Failed(error.to_string()));
    }
}

impl Seen {
    /// Why a connect failed, for the assertion message.
    fn failure(&self) -> Option<&str> {
        match self {
            Seen::Failed(why) => Some(why),
            _ => None,
        }
    }
}

#[test]
fn one_thread_holds_several_rings_worth_of_connections() {
    const N: usize = 1500;
    // 264-slot tables: 200 usable each, so 1,500 connections need 4 rings on each of the 2 server threads and
    // 8 rings on the client's single thread.
    let server_cfg = Config {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        shards: 2,
        slots_per_shard: 264,
        max_connections: N,
        ..Config::default()
    };
    let server = Engine::start(server_cfg, |_| Echo).expect("server");
    assert_eq!((server.capacity().shards, server.capacity().rings_per_shard), (2, 4));
    let addr = server.local_addr().unwrap();

    let (tx, rx) = mpsc::channel();
    let client_cfg = Config { listen: None, shards: 1, slots_per_shard: 264, max_connections: N, ..Config::default() };
    let client = Engine::start(client_cfg, move |_| Client(tx.clone())).expect("client");
    assert_eq!((client.capacity().shards, client.capacity().rings_per_shard), (1, 8));
    for tag in 0..N as u64 {
        let bind = Some(format!("127.0.0.{}:0", 2 + tag % 4).parse().unwrap());
        let request = ConnectRequest {
            addr,
            bind,
            host: addr.to_string(),
            path: "/".into(),
            tag,
            not_before: None,
            headers: Default::default(),
            tls: None,
        };
        client.handle().connect(0, request).unwrap();
    }
    let (mut opens, mut echoes, mut rtts) = (Vec::new(), 0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (opens.len() < N || echoes < N || rtts < N) && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Seen::Open(c)) => opens.push(c),
            Ok(Seen::Echo) => echoes += 1,
            Ok(Seen::Rtt) => rtts += 1,
            Ok(other) => panic!("unexpected: {other:?} ({:?})", other.failure()),
            Err(_) => {}
        }
    }
    assert_eq!((opens.len(), echoes, rtts), (N, N, N));
    // Slots of every ring are in use on the client: a thread numbers its slots across its rings in turn
    // (slot `i * rings + r` is ring `r`'s descriptor `i`), so every residue mod 8 shows up, and the numbers
    // stay within the eight tables.
    let slots: Vec<u64> = opens.iter().map(|c| c.as_u64() >> 24 & 0xff_ffff).collect();
    let rings: std::collections::BTreeSet<u64> = slots.iter().map(|s| s % 8).collect();
    assert_eq!(rings.len(), 8, "the client's connections are on rings {rings:?}");
    assert!(slots.iter().all(|&s| s < 264 * 8), "a slot past the eight tables: {:?}", slots.iter().max());
    let stats = server.handle().stats();
    assert_eq!(stats.websocket_open, N as u64);
    assert_eq!(stats.accept_table_full, 0);

    for c in &opens {
        client.handle().close(*c, 1000, "done").unwrap();
    }
    let mut closed = 0;
    while closed < N && Instant::now() < deadline + Duration::from_secs(10) {
        if let Ok(Seen::Closed(code, cause)) = rx.recv_timeout(Duration::from_millis(500)) {
            assert_eq!((code, cause), (1000, CloseCause::LocalClose));
            closed += 1;
        }
    }
    assert_eq!(closed, N);
    let until = Instant::now() + Duration::from_secs(10);
    while server.handle().stats().open > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.handle().stats().open, 0);
    assert_eq!(server.handle().stats().closed_for(CloseCause::PeerClose), N as u64);
    // Both engines stop promptly.
    let started = Instant::now();
    server.handle().shutdown(Duration::from_secs(1));
    client.handle().shutdown(Duration::from_secs(1));
    server.wait();
    client.wait();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let _ = MessageKind::Text;
}
