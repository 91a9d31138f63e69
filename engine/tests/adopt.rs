//! Adoption from the engine's side: a socket upgraded by someone else, in either role, handed to an engine
//! that listens on nothing; and the refusals that hand the socket back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use tether::proto::Role;
use tether::{AdoptErrorKind, Closed, Config, ConnId, Ctx, Engine, Handler, Message};

struct Echo;
impl Handler for Echo {
    type Conn = ();
    type Notice = ();
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = ctx.send(conn, message);
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Adopted(ConnId, String),
    Message(ConnId, Vec<u8>),
    Closed(ConnId, u16),
}

/// Greets with the context it was adopted with, reports what comes back.
struct Adopter {
    tx: mpsc::Sender<Seen>,
}
impl Handler for Adopter {
    type Conn = ();
    type Notice = ();
    fn on_adopt(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, context: Box<dyn std::any::Any + Send>) {
        let name = context.downcast::<String>().map(|s| *s).unwrap_or_default();
        let _ = ctx.send(conn, Message::Text(&format!("from {name}")));
        let _ = self.tx.send(Seen::Adopted(conn, name));
    }
    fn on_message(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let _ = self.tx.send(Seen::Message(conn, message.as_bytes().to_vec()));
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_, Self>, conn: ConnId, closed: &Closed) {
        let _ = self.tx.send(Seen::Closed(conn, closed.info.code));
    }
}

fn adopter(max_connections: usize) -> (Engine<Adopter>, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let config = Config { listen: None, shards: 1, max_connections, ..Config::default() };
    (Engine::start(config, move |_| Adopter { tx: tx.clone() }).expect("adopter starts"), rx)
}

/// Connects to `addr` and completes a client upgrade by hand; returns the stream and any bytes read past the
/// 101 (the server may write right after it).
fn upgraded_client(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("read the 101");
        assert!(n > 0, "server closed during the handshake");
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    (s, got[end..].to_vec())
}

#[test]
fn a_client_socket_upgraded_by_hand_is_adopted_in_the_client_role_and_masks_its_frames() {
    let server =
        Engine::start(Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 1, ..Config::default() }, |_| {
            Echo
        })
        .expect("server starts");
    let (engine, seen) = adopter(0);
    let (stream, leftover) = upgraded_client(server.local_addr().unwrap());
    let conn = engine.handle().adopt(stream, Role::Client, leftover, String::from("the test")).wait().expect("adopted");
    // The engine's server echoes our greeting: it accepted the frame, so it was masked (a server fails an
    // unmasked client frame with 1002).
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(seen.recv_timeout(Duration::from_secs(10)).expect("events"));
    }
    assert_eq!(got, [Seen::Adopted(conn, "the test".into()), Seen::Message(conn, b"from the test".to_vec())]);
    engine.handle().close(conn, 1000, "done").unwrap();
    assert_eq!(seen.recv_timeout(Duration::from_secs(10)).unwrap(), Seen::Closed(conn, 1000));
    assert_eq!(engine.handle().stats().adopted, 1);
    server.handle().shutdown(Duration::ZERO);
    engine.handle().shutdown(Duration::ZERO);
    server.wait();
    engine.wait();
}

#[test]
fn past_max_connections_the_socket_comes_back_untouched() {
    let server =
        Engine::start(Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 1, ..Config::default() }, |_| {
            Echo
        })
        .expect("server starts");
    let (engine, seen) = adopter(1);
    let addr = server.local_addr().unwrap();
    let (first, rest) = upgraded_client(addr);
    let conn = engine.handle().adopt(first, Role::Client, rest, String::from("one")).wait().expect("first adopted");
    assert!(matches!(seen.recv_timeout(Duration::from_secs(10)).unwrap(), Seen::Adopted(c, _) if c == conn));

    let (second, rest) = upgraded_client(addr);
    let err = engine.handle().adopt(second, Role::Client, rest, String::from("two")).wait().expect_err("over capacity");
    assert_eq!(err.kind, AdoptErrorKind::AtCapacity);
    // The socket is the caller's again, still open and usable: a masked Close to the server gets its Close.
    let mut back = TcpStream::from(err.socket.expect("socket handed back"));
    back.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    back.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2]).unwrap(); // Close 1000, masked
    let mut reply = [0u8; 4];
    back.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [0x88, 0x02, 0x03, 0xe8], "the server's Close 1000 on the handed-back socket");
    server.handle().shutdown(Duration::ZERO);
    engine.handle().shutdown(Duration::ZERO);
    server.wait();
    engine.wait();
}

#[test]
fn a_descriptor_that_is_not_a_connected_tcp_socket_is_refused_and_handed_back() {
    let (engine, _seen) = adopter(0);
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = engine.handle().adopt(file, Role::Server, Vec::new(), ()).wait().expect_err("not a socket");
    assert!(matches!(err.kind, AdoptErrorKind::Io(_)), "{err}");
    assert!(err.socket.is_some(), "the descriptor comes back");
    let unconnected = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let err = engine.handle().adopt(unconnected, Role::Server, Vec::new(), ()).wait().expect_err("not connected");
    assert!(matches!(err.kind, AdoptErrorKind::Io(_)), "{err}");
    assert_eq!(engine.handle().stats().adopted, 0);
    engine.handle().shutdown(Duration::ZERO);
    engine.wait();
}

#[test]
fn an_adopted_socket_gets_the_profile_it_was_adopted_with() {
    // The engine's default profile never pings; the adopted connection's profile pings every 100 ms.
    let (tx, _seen) = mpsc::channel();
    let mut config = Config { listen: None, shards: 1, ping_interval: None, ..Config::default() };
    let pinging = config.add_profile(tether::Profile {
        ping_interval: Some(Duration::from_millis(100)),
        ..tether::Profile::of(&config)
    });
    let engine = Engine::start(config, move |_| Adopter { tx: tx.clone() }).expect("engine starts");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    let (plain_ours, plain_peer) = {
        let p = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        p.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        (listener.accept().unwrap().0, p)
    };
    let handle = engine.handle();
    handle.adopt_with_profile(ours, Role::Server, Vec::new(), pinging, String::from("p")).wait().expect("adopted");
    handle.adopt(plain_ours, Role::Server, Vec::new(), String::from("d")).wait().expect("adopted");

    // Each peer first gets the greeting (unmasked text frame "from p" / "from d"), then: pings only on the
    // profiled one.
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut frame = [0u8; 8];
    peer.read_exact(&mut frame).unwrap();
    assert_eq!(&frame, b"\x81\x06from p");
    let mut ping = [0u8; 2];
    peer.read_exact(&mut ping).unwrap();
    assert_eq!(ping[0], 0x89, "a ping from the adopted connection's profile");
    let mut plain_peer = plain_peer;
    plain_peer.read_exact(&mut frame).unwrap();
    assert_eq!(&frame, b"\x81\x06from d");
    let quiet = plain_peer.read(&mut ping);
    assert!(quiet.is_err(), "the default profile (no pings) sent {quiet:?}");
    handle.shutdown(Duration::ZERO);
    engine.wait();
}
