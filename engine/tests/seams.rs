//! The engine's seams, each against a real socket: one write path (order, the send-queue policy, nothing
//! after Close), cross-shard pings, per-connection state and timers, topics and prepared frames, the upgrade
//! API, plain HTTP with a context, typed notices, profiles, broadcast and close causes. The client is the
//! engine's own client role (its frames are checked by its own protocol state machine) or a raw TCP socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tether::{
    Accept, CloseCause, Closed, Config, ConnId, ConnectRequest, Ctx, Deflate, Engine, Handler, HttpRequest,
    HttpResponse, Message, MessageKind, Prepared, Profile, SendError, SendQueuePolicy, Upgrade, UpgradeRequest,
};

const WAIT: Duration = Duration::from_secs(10);

fn listen() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

/// A client engine that reports what its connections see.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Open(ConnId),
    Text(ConnId, String),
    Rtt(ConnId),
    Closed(ConnId, u16, String, CloseCause),
}

struct Recorder(mpsc::Sender<Seen>);

impl Handler for Recorder {
    type Conn = ();
    type Notice = ();
    fn on_open(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let _ = self.0.send(Seen::Open(conn));
    }
    fn on_message(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        if let Message::Text(t) = message {
            let _ = self.0.send(Seen::Text(conn, t.to_string()));
        }
    }
    fn on_pong(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId, rtt: Option<Duration>) {
        if rtt.is_some() {
            let _ = self.0.send(Seen::Rtt(conn));
        }
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId, closed: &Closed) {
        let _ = self.0.send(Seen::Closed(conn, closed.info.code, closed.info.reason.clone(), closed.info.cause));
    }
}

struct Clients {
    engine: Engine<Recorder>,
    rx: mpsc::Receiver<Seen>,
}

impl Clients {
    fn new() -> Clients {
        let (tx, rx) = mpsc::channel();
        let config = Config { listen: None, shards: 1, ..Config::default() };
        let engine = Engine::start(config, move |_| Recorder(tx.clone())).expect("client engine");
        Clients { engine, rx }
    }
    fn connect(&self, addr: SocketAddr, path: &str, n: u64) {
        for tag in 0..n {
            let request = ConnectRequest {
                addr,
                bind: None,
                host: addr.to_string(),
                path: path.into(),
                tag,
                not_before: None,
                headers: Default::default(),
                tls: None,
            };
            self.engine.handle().connect(0, request).unwrap();
        }
    }
    fn next(&self) -> Seen {
        self.rx.recv_timeout(WAIT).expect("an event within 10 s")
    }
    /// Events until `pred` matches one (which is returned last).
    fn until(&self, mut pred: impl FnMut(&Seen) -> bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let e = self.next();
            let done = pred(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
        panic!("not seen in time; got {seen:?}");
    }
    fn texts(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next() {
                Seen::Text(_, t) => out.push(t),
                Seen::Closed(..) => break,
                _ => {}
            }
        }
        out
    }
}

// ----- one write path -----

/// On "go": a prepared frame, a plain send, a send to many (all to the same connection), in that order.
struct Mixed;
impl Handler for Mixed {
    type Conn = ();
    type Notice = ();
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _m: Message<'_>) {
        ctx.send_prepared(conn, &Prepared::text("A")).unwrap();
        ctx.send(conn, Message::Text("B")).unwrap();
        assert_eq!(ctx.send_many(&[conn], Message::Text("C")), 1);
        ctx.handle().send(conn, MessageKind::Text, b"D".to_vec()).unwrap();
    }
}

#[test]
fn every_write_to_a_connection_keeps_its_order() {
    let server = Engine::start(Config { listen: listen(), shards: 1, ..Config::default() }, |_| Mixed).unwrap();
    let clients = Clients::new();
    clients.connect(server.local_addr().unwrap(), "/", 1);
    let conn = match clients.next() {
        Seen::Open(c) => c,
        other => panic!("{other:?}"),
    };
    clients.engine.handle().send(conn, MessageKind::Text, b"go".to_vec()).unwrap();
    assert_eq!(clients.texts(4), ["A", "B", "C", "D"]);
}

/// Sends ten 1 KiB messages in one callback under a 2 KiB bound with policy drop.
struct Burst(mpsc::Sender<Vec<Result<(), SendError>>>);
impl Handler for Burst {
    type Conn = ();
    type Notice = ();
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _m: Message<'_>) {
        let big = "x".repeat(1024);
        let results = (0..10).map(|_| ctx.send(conn, Message::Text(&big))).collect();
        let _ = self.0.send(results);
    }
}

#[test]
fn the_send_queue_policy_applies_to_every_write() {
    let (tx, rx) = mpsc::channel();
    let config = Config {
        listen: listen(),
        shards: 1,
        max_send_queue: 2048,
        send_queue_policy: SendQueuePolicy::Drop,
        // The bound counts bytes on the wire: compressed, the ten messages would all fit.
        deflate: Deflate::Off,
        ..Config::default()
    };
    let server = Engine::start(config, move |_| Burst(tx.clone())).unwrap();
    let clients = Clients::new();
    clients.connect(server.local_addr().unwrap(), "/", 1);
    let Seen::Open(conn) = clients.next() else { panic!() };
    clients.engine.handle().send(conn, MessageKind::Text, b"go".to_vec()).unwrap();
    let results = rx.recv_timeout(WAIT).unwrap();
    let sent = results.iter().filter(|r| r.is_ok()).count();
    // A message is queued while at most 2 KiB wait before it: frames of 1028 bytes, so two; then dropped.
    assert_eq!(sent, 2, "{results:?}");
    assert!(results[2..].iter().all(|r| *r == Err(SendError::Dropped)), "{results:?}");
    assert_eq!(clients.texts(2).len(), 2);
    let stats = server.handle().stats();
    assert_eq!(stats.send_dropped, 8);
    assert_eq!(stats.messages_out, 2);
}

/// Closes on the first message, then tries to write more: nothing may follow the Close frame.
struct CloseThenSend(mpsc::Sender<(Result<(), SendError>, Result<(), SendError>)>);
impl Handler for CloseThenSend {
    type Conn = ();
    type Notice = ();
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _m: Message<'_>) {
        ctx.close(conn, 4000, "bye");
        let a = ctx.send(conn, Message::Text("after close"));
        let b = ctx.send_prepared(conn, &Prepared::text("after close too"));
        let _ = self.0.send((a, b));
    }
}

#[test]
fn nothing_is_written_after_our_close() {
    let (tx, rx) = mpsc::channel();
    let server =
        Engine::start(Config { listen: listen(), shards: 1, ..Config::default() }, move |_| CloseThenSend(tx.clone()))
            .unwrap();
    let clients = Clients::new();
    clients.connect(server.local_addr().unwrap(), "/", 1);
    let Seen::Open(conn) = clients.next() else { panic!() };
    clients.engine.handle().send(conn, MessageKind::Text, b"go".to_vec()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (Err(SendError::NotOpen), Err(SendError::NotOpen)));
    let events = clients.until(|e| matches!(e, Seen::Closed(..)));
    assert!(!events.iter().any(|e| matches!(e, Seen::Text(..))), "{events:?}");
    assert!(matches!(events.last(), Some(Seen::Closed(_, 4000, r, CloseCause::PeerClose)) if r == "bye"), "{events:?}");
}

// ----- cross-shard ping, state, timers, notices -----

/// Each shard pings every connection it hears about through a notice, wherever that connection lives; the
/// connection's state counts its messages and a timer closes it 300 ms after its first message.
#[derive(Default)]
struct Count {
    messages: u32,
}
struct Pinger {
    pinged: mpsc::Sender<(ConnId, Result<(), SendError>)>,
    rtts: mpsc::Sender<(usize, ConnId)>,
}
impl Handler for Pinger {
    type Conn = Count;
    type Notice = ConnId;
    fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        // Ask the *other* shard to ping this connection.
        let other = (ctx.shard() + 1) % 2;
        ctx.notify(other, conn).unwrap();
    }
    fn on_notice(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        assert_ne!(conn.shard(), ctx.shard());
        let r = ctx.ping(conn);
        let _ = self.pinged.send((conn, r));
    }
    fn on_pong(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, rtt: Option<Duration>) {
        if rtt.is_some() {
            let _ = self.rtts.send((ctx.shard(), conn));
        }
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _m: Message<'_>) {
        let state = ctx.state(conn).expect("live connection has state");
        state.messages += 1;
        let n = state.messages;
        if n == 1 {
            let at = ctx.now() + Duration::from_millis(300);
            assert!(ctx.set_timer(conn, at));
        }
        let text = format!("count {n}");
        ctx.send(conn, Message::Text(&text)).unwrap();
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let n = ctx.state(conn).map_or(0, |s| s.messages);
        ctx.close(conn, 4001, &format!("timer after {n}"));
    }
}

#[test]
fn cross_shard_ping_state_timer_and_notice() {
    let (tx, rx) = mpsc::channel();
    let (rtt_tx, rtt_rx) = mpsc::channel();
    let config = Config { listen: listen(), shards: 2, tick: Duration::from_millis(10), ..Config::default() };
    let server = Engine::start(config, move |_| Pinger { pinged: tx.clone(), rtts: rtt_tx.clone() }).unwrap();
    let clients = Clients::new();
    clients.connect(server.local_addr().unwrap(), "/", 6);
    let mut opens = Vec::new();
    while opens.len() < 6 {
        if let Seen::Open(c) = clients.next() {
            opens.push(c);
        }
    }
    for _ in 0..6 {
        let (conn, r) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(r, Ok(()), "ping of {conn:?} from the other shard");
        // The pong (with its RTT) reaches the connection's own shard.
        let (shard, ponged) = rtt_rx.recv_timeout(WAIT).expect("the cross-shard ping is answered");
        assert_eq!(shard, ponged.shard());
    }
    let conn = opens[0];
    for _ in 0..3 {
        clients.engine.handle().send(conn, MessageKind::Text, b"m".to_vec()).unwrap();
    }
    let started = Instant::now();
    let events = clients.until(|e| matches!(e, Seen::Closed(c, ..) if *c == conn));
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|e| if let Seen::Text(c, t) = e { (*c == conn).then_some(t.as_str()) } else { None })
        .collect();
    assert_eq!(texts, ["count 1", "count 2", "count 3"]);
    assert!(matches!(events.last(), Some(Seen::Closed(_, 4001, r, _)) if r == "timer after 3"), "{:?}", events.last());
    assert!(started.elapsed() >= Duration::from_millis(250), "the timer fired early");
}

// ----- topics and broadcast -----

struct Rooms;
impl Handler for Rooms {
    type Conn = ();
    type Notice = ();
    fn on_upgrade(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, request: &UpgradeRequest) -> Upgrade {
        // Subscribe at upgrade to the room named by the path: the subscription holds once the socket opens.
        let room = request.path.trim_start_matches('/').to_string();
        assert!(ctx.subscribe(conn, &room));
        assert!(!ctx.subscribe(conn, &room), "a second subscribe is a no-op");
        Upgrade::Accept(Accept::new())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, _conn: ConnId, message: Message<'_>) {
        // "room:text" publishes text to room.
        let Message::Text(t) = message else { return };
        let (room, text) = t.split_once(':').unwrap();
        ctx.publish(room, Message::Text(text)).unwrap();
    }
}

#[test]
fn topics_reach_subscribers_on_every_shard_and_only_them() {
    let server = Engine::start(Config { listen: listen(), shards: 2, ..Config::default() }, |_| Rooms).unwrap();
    let addr = server.local_addr().unwrap();
    let clients = Clients::new();
    clients.connect(addr, "/red", 6);
    clients.connect(addr, "/blue", 2);
    let mut opens = Vec::new();
    while opens.len() < 8 {
        if let Seen::Open(c) = clients.next() {
            opens.push(c);
        }
    }
    // Give the subscriptions (made on the server's shards) a moment, then publish from one client.
    std::thread::sleep(Duration::from_millis(100));
    let stats = server.handle().stats();
    assert_eq!((stats.subscriptions, stats.topics), (8, 3 + (stats.topics - 3)), "{stats:?}");
    assert_eq!(stats.subscriptions, 8);
    clients.engine.handle().send(opens[0], MessageKind::Text, b"red:hello red".to_vec()).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Seen::Text(c, t)) = clients.rx.recv_timeout(Duration::from_millis(200)) {
            got.push((c, t));
        }
    }
    assert_eq!(got.len(), 6, "six red subscribers, whichever shard they are on: {got:?}");
    assert!(got.iter().all(|(_, t)| t == "hello red"));
    // Broadcast reaches all eight, encoded once.
    server.handle().broadcast(MessageKind::Text, b"to all").unwrap();
    assert_eq!(clients.texts(8), vec!["to all"; 8]);
    // Subscriptions end with their connections.
    for c in &opens {
        clients.engine.handle().close(*c, 1000, "done").unwrap();
    }
    let ok = wait(|| server.handle().stats().subscriptions == 0 && server.handle().stats().topics == 0);
    assert!(ok, "{:?}", server.handle().stats());
    let stats = server.handle().stats();
    assert_eq!(stats.closed_for(CloseCause::PeerClose), 8);
    assert!(stats.deliveries >= 6 && stats.publications >= 2, "{stats:?}");
}

fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ----- the upgrade API and plain HTTP -----

struct Gate;
impl Handler for Gate {
    type Conn = String;
    type Notice = ();
    fn on_upgrade(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, request: &UpgradeRequest) -> Upgrade {
        let peer = request.peer.expect("the peer is known at upgrade");
        assert!(peer.ip().is_loopback());
        if request.header("x-token") != Some("secret") {
            return Upgrade::Reject(tether::HttpError { status: 401, reason: "Unauthorized", message: "token".into() });
        }
        *ctx.state(conn).unwrap() =
            format!("{}|{}|{}", request.query.clone().unwrap_or_default(), request.extensions.join(";"), peer.ip());
        let mut accept = Accept::new().header("X-Tether-Test", "yes").header("Bad\r\nHeader", "no");
        if request.protocols.iter().any(|p| p == "v2") {
            accept = accept.subprotocol("v2");
        }
        accept.into()
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, _m: Message<'_>) {
        let state = ctx.state(conn).unwrap().clone();
        ctx.send(conn, Message::Text(&state)).unwrap();
    }
    fn on_http(&mut self, ctx: &mut Ctx<'_, Self>, request: &HttpRequest) -> HttpResponse {
        let body = format!(
            "{} {} {:?} body={} shards={} peer={}",
            request.method,
            request.path,
            request.query,
            String::from_utf8_lossy(&request.body),
            ctx.handle().shards(),
            request.peer.is_some()
        );
        HttpResponse::new(200, "OK", "text/plain", body).with_header("X-Api", "1")
    }
}

fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    // Read a little more for a body.
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn upgrade_api_exposes_the_request_and_shapes_the_answer() {
    let server = Engine::start(Config { listen: listen(), shards: 1, ..Config::default() }, |_| Gate).unwrap();
    let addr = server.local_addr().unwrap();
    let upgrade = |extra: &str| {
        format!(
            "GET /ws?room=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v1, v2\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n{extra}\r\n"
        )
    };
    let refused = raw_exchange(addr, &upgrade(""));
    assert!(refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{refused}");
    let accepted = raw_exchange(addr, &upgrade("X-Token: secret\r\n"));
    assert!(accepted.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{accepted}");
    assert!(accepted.contains("\r\nSec-WebSocket-Protocol: v2\r\n"), "{accepted}");
    assert!(accepted.contains("\r\nX-Tether-Test: yes\r\n"), "{accepted}");
    assert!(!accepted.contains("Bad"), "a header that could split the response is left out: {accepted}");
    // The state set at upgrade is there for the messages: send one masked frame, read the answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(upgrade("X-Token: secret\r\n").as_bytes()).unwrap();
    s.write_all(&[0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1]).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("127.0.0.1") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("room=7|permessage-deflate; client_max_window_bits|127.0.0.1"));

    let api = raw_exchange(addr, "POST /api/publish?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert!(api.starts_with("HTTP/1.1 200 OK\r\n"), "{api}");
    assert!(api.contains("\r\nX-Api: 1\r\n"), "{api}");
    assert!(api.ends_with("POST /api/publish Some(\"x=1\") body=hello shards=1 peer=true"), "{api}");
    let chunked = raw_exchange(addr, "POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(chunked.starts_with("HTTP/1.1 411 "), "{chunked}");
}

// ----- profiles and close causes -----

struct Profiled(tether::ProfileId);
impl Handler for Profiled {
    type Conn = ();
    type Notice = ();
    fn on_upgrade(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, request: &UpgradeRequest) -> Upgrade {
        let profile = if request.path == "/strict" { self.0 } else { tether::ProfileId::DEFAULT };
        Accept::new().profile(profile).into()
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = ctx.send(conn, message);
    }
}

#[test]
fn a_profile_picked_at_upgrade_sets_the_connections_limits() {
    let mut config = Config { listen: listen(), shards: 1, ..Config::default() };
    let strict = config.add_profile(Profile { max_message_size: 16, ..Profile::of(&config) });
    let server = Engine::start(config, move |_| Profiled(strict)).unwrap();
    let addr = server.local_addr().unwrap();
    let clients = Clients::new();
    clients.connect(addr, "/strict", 1);
    clients.connect(addr, "/lenient", 1);
    let mut opens = Vec::new();
    while opens.len() < 2 {
        if let Seen::Open(c) = clients.next() {
            opens.push(c);
        }
    }
    let long = "y".repeat(100);
    for c in &opens {
        clients.engine.handle().send(*c, MessageKind::Text, long.clone().into_bytes()).unwrap();
    }
    let events = clients.until(|e| matches!(e, Seen::Closed(..)));
    let closed = events.last().unwrap();
    assert!(matches!(closed, Seen::Closed(_, 1009, _, _)), "{events:?}");
    // The other one echoed (within the default 16 MiB).
    let echoed = std::iter::from_fn(|| clients.rx.recv_timeout(Duration::from_secs(2)).ok())
        .chain(events.clone())
        .any(|e| matches!(e, Seen::Text(_, ref t) if *t == long));
    assert!(echoed);
    assert!(wait(|| server.handle().stats().closed_for(CloseCause::ProtocolError) == 1));
}
