//! Work that a handler finishes later, from another thread: HTTP answers deferred with `Ctx::defer_http`,
//! and notices queued in order with the commands (`EngineHandle::notify_in_order`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use tether::{Config, ConnId, Ctx, Engine, EngineHandle, Handler, HttpRequest, HttpResponse, Message, Prepared};

/// Defers every plain HTTP request and hands its connection id to the test, which answers it (or not).
struct Deferring {
    requests: mpsc::Sender<(ConnId, String)>,
}

impl Handler for Deferring {
    type Conn = ();
    type Notice = &'static str;
    fn on_http(&mut self, ctx: &mut Ctx<'_, Self>, request: &HttpRequest) -> HttpResponse {
        if request.path == "/now" {
            return HttpResponse::new(200, "OK", "text/plain", "at once\n");
        }
        assert!(ctx.defer_http(request), "deferred");
        let _ = self.requests.send((request.conn.expect("the engine names the connection"), request.path.clone()));
        HttpResponse::new(500, "Internal Server Error", "text/plain", "this answer is ignored\n")
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        // "sub": subscribe to topic "t" and report it.
        if message.as_bytes() == b"sub" {
            *SUBSCRIBER.lock().unwrap() = Some(conn);
            ctx.subscribe(conn, "t");
            let _ = ctx.send(conn, Message::Text("subscribed"));
        }
    }
    fn on_notice(&mut self, ctx: &mut Ctx<'_, Self>, notice: &'static str) {
        // An in-order notice: the connection with the lowest id subscribes now and is told.
        if let Some(conn) = NOTICE_CONN.lock().unwrap().take() {
            ctx.subscribe(conn, "t");
            let _ = ctx.send(conn, Message::Text(notice));
        }
    }
}

static SUBSCRIBER: std::sync::Mutex<Option<ConnId>> = std::sync::Mutex::new(None);
static NOTICE_CONN: std::sync::Mutex<Option<ConnId>> = std::sync::Mutex::new(None);

fn start(handshake_timeout: Duration) -> (Engine<Deferring>, mpsc::Receiver<(ConnId, String)>) {
    let (tx, rx) = mpsc::channel();
    let config =
        Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 1, handshake_timeout, ..Config::default() };
    (Engine::start(config, move |_| Deferring { requests: tx.clone() }).expect("engine starts"), rx)
}

/// A GET that closes the connection after its answer, or (`keep`) lets it stay open for another request.
fn get_with(addr: SocketAddr, path: &str, keep: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connection = if keep { "keep-alive" } else { "close" };
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n").unwrap();
    s
}

fn get(addr: SocketAddr, path: &str) -> TcpStream {
    get_with(addr, path, false)
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn stop(engine: Engine<Deferring>) {
    engine.handle().shutdown(Duration::ZERO);
    engine.wait();
}

#[test]
fn a_deferred_answer_given_from_another_thread_is_what_the_client_reads() {
    let (engine, requests) = start(Duration::from_secs(10));
    let addr = engine.local_addr().unwrap();
    let now = read_all(get(addr, "/now"));
    assert!(now.starts_with("HTTP/1.1 200") && now.ends_with("at once\n"), "{now}");

    let client = get_with(addr, "/later", true);
    let (conn, path) = requests.recv_timeout(Duration::from_secs(10)).expect("request seen");
    assert_eq!(path, "/later");
    // Bytes that come meanwhile are not taken as a second request before the first is answered.
    (&client).write_all(b"GET /again HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(requests.try_recv().is_err(), "a request pipelined behind a deferred one was served before it");
    let answer = |conn, resp| {
        let handle: EngineHandle = engine.handle().clone();
        std::thread::spawn(move || handle.answer_http(conn, resp).expect("answered")).join().unwrap();
    };
    answer(conn, HttpResponse::new(202, "Accepted", "text/plain", "later\n"));
    // Then they are: the next request on the kept-alive connection.
    let (again, path) = requests.recv_timeout(Duration::from_secs(10)).expect("the pipelined request seen");
    assert_eq!((again, path.as_str()), (conn, "/again"));
    answer(conn, HttpResponse::new(200, "OK", "text/plain", "again\n"));
    let got = read_all(client);
    let (first, second) = got.split_at(got.find("HTTP/1.1 200").unwrap_or_else(|| panic!("{got}")));
    assert!(first.starts_with("HTTP/1.1 202 Accepted") && first.ends_with("later\n"), "{got}");
    assert!(first.contains("Connection: keep-alive") && second.contains("Connection: close"), "{got}");
    assert!(second.ends_with("again\n"), "{got}");
    // A second answer finds the connection gone.
    assert!(engine.handle().answer_http(conn, HttpResponse::new(200, "OK", "text/plain", "")).is_ok());
    stop(engine);
}

#[test]
fn a_deferred_answer_that_never_comes_is_answered_504_at_the_handshake_deadline() {
    let (engine, requests) = start(Duration::from_millis(500));
    let client = get(engine.local_addr().unwrap(), "/never");
    let _ = requests.recv_timeout(Duration::from_secs(10)).expect("request seen");
    let got = read_all(client);
    assert!(got.starts_with("HTTP/1.1 504"), "{got}");
    stop(engine);
}

/// A client upgrade by hand; returns the stream past the 101.
fn ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    s
}

/// Reads one unmasked server text frame (payload < 126 bytes).
fn text(s: &mut TcpStream) -> String {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81);
    let mut payload = vec![0u8; head[1] as usize];
    s.read_exact(&mut payload).unwrap();
    String::from_utf8(payload).unwrap()
}

#[test]
fn a_notice_queued_in_order_is_handled_before_the_publications_queued_after_it() {
    let (engine, _requests) = start(Duration::from_secs(10));
    let mut client = ws(engine.local_addr().unwrap());
    // The handler records the connection's id as it subscribes; the test unsubscribes it again.
    client.write_all(&masked(b"sub")).unwrap();
    assert_eq!(text(&mut client), "subscribed");
    let conn = SUBSCRIBER.lock().unwrap().expect("recorded");
    engine.handle().unsubscribe(conn, "t").unwrap();
    *NOTICE_CONN.lock().unwrap() = Some(conn);
    // From one thread: the notice (which subscribes the connection), then ten publications to its topic.
    // Were the notice to overtake nothing or be overtaken, the first publications would be missed.
    let h = engine.handle();
    h.notify_in_order(0, "your subscription").unwrap();
    for i in 0..10 {
        h.publish_on(0, &"t".into(), &Prepared::text(&format!("p{i}"))).unwrap();
    }
    assert_eq!(text(&mut client), "your subscription");
    for i in 0..10 {
        assert_eq!(text(&mut client), format!("p{i}"));
    }
    // A notice of the wrong type is dropped, not a panic: the shard still answers.
    h.notify_in_order(0, 42u32).unwrap();
    client.write_all(&masked(b"sub")).unwrap();
    assert_eq!(text(&mut client), "subscribed");
    stop(engine);
}

fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
