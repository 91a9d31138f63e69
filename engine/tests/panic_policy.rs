//! A panic in a handler callback ends the process at once, with the panic logged, instead of killing one shard
//! thread silently: that thread's connections would hang (no keepalive, no close) while the process lived on
//! and looked healthy. The server runs in a child process (this test binary, re-executed), so the abort is
//! observed from outside.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether::{Config, ConnId, Ctx, Engine, Handler, Message};

const CHILD: &str = "TETHER_PANIC_POLICY_CHILD";

struct Boom;
impl Handler for Boom {
    type Conn = ();
    type Notice = ();
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        if let Message::Text("boom") = message {
            panic!("the handler was asked to panic");
        }
        let _ = ctx.send(conn, message);
    }
}

/// Not a test on its own: the server half, run only inside the child process started below.
#[test]
fn panic_policy_child_server() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let config = Config { listen: Some("127.0.0.1:0".parse().unwrap()), shards: 2, ..Config::default() };
    let engine = Engine::start(config, |_| Boom).expect("engine");
    println!("listening {}", engine.local_addr().expect("address"));
    engine.wait();
}

fn masked_text(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade answered {}", String::from_utf8_lossy(&head));
    s
}

#[test]
fn a_handler_panic_aborts_the_process_with_the_panic_logged() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "panic_policy_child_server", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the child server exited before listening");
        // libtest prints `test NAME ... ` on the same line first.
        if let Some(at) = line.find("listening ") {
            break line[at + "listening ".len()..].trim().parse().unwrap();
        }
    };
    // Two connections: the panic on one must not leave the process serving the rest half-dead.
    let mut bystander = upgrade(addr);
    let mut victim = upgrade(addr);
    bystander.write_all(&masked_text("hi")).unwrap();
    let mut echo = [0u8; 4];
    bystander.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x02hi", "echo before the panic");
    victim.write_all(&masked_text("boom")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process lived on for 15 s after a handler panic");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.signal(), Some(libc::SIGABRT), "expected an abort, got {status:?}");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(
        stderr.contains("the handler was asked to panic") && stderr.contains("aborting"),
        "the panic and the abort are not in the log:\n{stderr}"
    );
    // The bystander's connection ended with the process.
    let mut rest = Vec::new();
    let _ = bystander.read_to_end(&mut rest);
}
