//! `Ctx::pause_receive` against a raw TCP client: nothing is read before the deadline (the client's writes
//! block once the kernel's buffers are full: TCP backpressure), everything sent meanwhile arrives afterwards,
//! whole and in order, and a close from our side during a pause still reads the peer's Close.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tether::{CloseCause, Closed, Config, ConnId, Ctx, Engine, Handler, Message};

const WAIT: Duration = Duration::from_secs(10);

/// What the server side reports.
#[derive(Debug)]
enum Seen {
    /// A text message and when it reached the handler.
    Text(String, Instant),
    /// Bytes of binary messages so far.
    Binary(usize),
    Closed(u16, CloseCause),
}

/// "pause MS": pause the receive for MS milliseconds and answer "paused". "close-in MS": pause for 20 s, then
/// close with 1000 after MS milliseconds (a timer). Other texts are echoed; binary messages are counted.
struct Pauser {
    tx: mpsc::Sender<Seen>,
    binary: usize,
}

impl Handler for Pauser {
    type Conn = ();
    type Notice = ();
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        match message {
            Message::Text(t) => {
                let _ = self.tx.send(Seen::Text(t.to_string(), Instant::now()));
                if let Some(ms) = t.strip_prefix("pause ") {
                    let until = ctx.now() + Duration::from_millis(ms.parse().unwrap());
                    assert!(ctx.pause_receive(conn, until));
                    ctx.send(conn, Message::Text("paused")).unwrap();
                } else if let Some(ms) = t.strip_prefix("close-in ") {
                    let now = ctx.now();
                    assert!(ctx.pause_receive(conn, now + Duration::from_secs(20)));
                    ctx.set_timer(conn, now + Duration::from_millis(ms.parse().unwrap()));
                } else {
                    ctx.send(conn, Message::Text(t)).unwrap();
                }
            }
            Message::Binary(b) => {
                self.binary += b.len();
                let _ = self.tx.send(Seen::Binary(self.binary));
            }
        }
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        ctx.close(conn, 1000, "bye");
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnId, closed: &Closed) {
        let _ = self.tx.send(Seen::Closed(closed.info.code, closed.info.cause));
    }
}

fn server() -> (Engine<Pauser>, SocketAddr, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    // No server pings: a ping at a random point of the first interval would come between the echoes read here.
    let config =
        Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 1, ping_interval: None, ..Config::default() };
    let engine = Engine::start(config, move |_| Pauser { tx: tx.clone(), binary: 0 }).unwrap();
    let addr = engine.local_addr().unwrap();
    (engine, addr, rx)
}

/// A raw WebSocket client: the upgrade, masked frames out, unmasked frames in.
fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    s
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One server frame: (opcode, payload). Short frames only (the server here sends nothing longer).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert!(head[1] < 126, "short frames only");
    let mut payload = vec![0u8; head[1] as usize];
    s.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

fn read_text(s: &mut TcpStream) -> String {
    let (op, payload) = read_frame(s);
    assert_eq!(op, 1, "a text frame");
    String::from_utf8(payload).unwrap()
}

fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(WAIT).expect("an event within 10 s")
}

#[test]
fn a_paused_receive_delivers_nothing_before_its_deadline_then_everything_in_order() {
    let (_server, addr, rx) = server();
    let mut s = open(addr);
    s.write_all(&frame(1, b"pause 600")).unwrap();
    assert_eq!(read_text(&mut s), "paused");
    let paused_at = match next(&rx) {
        Seen::Text(t, at) if t == "pause 600" => at,
        other => panic!("{other:?}"),
    };
    for m in ["a", "b", "c"] {
        s.write_all(&frame(1, m.as_bytes())).unwrap();
    }
    for m in ["a", "b", "c"] {
        match next(&rx) {
            Seen::Text(t, at) => {
                assert_eq!(t, m);
                let after = at - paused_at;
                assert!(after >= Duration::from_millis(600), "{m} delivered {after:?} into a 600 ms pause");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_text(&mut s), m);
    }
    // Not paused any more: the next message comes at once (well within the 600 ms a pause would take).
    let sent = Instant::now();
    s.write_all(&frame(1, b"d")).unwrap();
    assert_eq!(read_text(&mut s), "d");
    assert!(sent.elapsed() < Duration::from_millis(500), "{:?}", sent.elapsed());
}

#[test]
fn a_paused_receive_closes_the_tcp_window_and_loses_nothing() {
    let (_server, addr, rx) = server();
    let mut s = open(addr);
    s.write_all(&frame(1, b"pause 3000")).unwrap();
    assert_eq!(read_text(&mut s), "paused");
    assert!(matches!(next(&rx), Seen::Text(t, _) if t == "pause 3000"));
    // Write 16 KiB binary messages without blocking until the kernel takes no more for 200 ms: the server
    // reads none, so the socket buffers fill and TCP's window closes. Unpaused, the server takes all 256 MiB.
    let message = frame(2, &[7u8; 16 * 1024]);
    let limit = 256usize << 20;
    s.set_nonblocking(true).unwrap();
    let (started, mut progress, mut sent) = (Instant::now(), Instant::now(), 0usize);
    while sent < limit {
        match s.write(&message[sent % message.len()..]) {
            Ok(n) => {
                sent += n;
                progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if progress.elapsed() > Duration::from_millis(200) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let blocked = sent < limit;
    assert!(blocked, "{sent} bytes went out without blocking: the server kept reading");
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    assert!(rx.try_recv().is_err(), "the handler saw a message during the pause");
    // Finish the frame under way (the write blocks until the pause ends); then every byte arrives.
    s.set_nonblocking(false).unwrap();
    let at = sent % message.len();
    if at != 0 {
        s.write_all(&message[at..]).unwrap();
        sent += message.len() - at;
    }
    let want = sent / message.len() * 16 * 1024;
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Binary(n)) if n == want => break,
            Ok(Seen::Binary(n)) => assert!(n < want, "{n} > {want}"),
            other => panic!("{other:?} before {want} bytes"),
        }
    }
}

#[test]
fn closing_a_paused_connection_still_reads_the_peers_close() {
    let (_server, addr, rx) = server();
    let mut s = open(addr);
    s.write_all(&frame(1, b"close-in 200")).unwrap();
    let (op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (8, &1000u16.to_be_bytes()[..]), "our Close");
    let answered = Instant::now();
    s.write_all(&frame(8, &payload[..2])).unwrap();
    loop {
        match next(&rx) {
            Seen::Closed(code, cause) => {
                // Unread, the peer's Close would end in close_timeout (5 s) with cause CloseTimeout.
                assert_eq!((code, cause), (1000, CloseCause::LocalClose));
                assert!(answered.elapsed() < Duration::from_secs(3), "{:?}", answered.elapsed());
                break;
            }
            Seen::Text(..) => {}
            other => panic!("{other:?}"),
        }
    }
}
