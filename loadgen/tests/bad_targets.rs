//! Bad targets give one clear error line and a non-zero exit.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::tether_load;

const LIMIT: Duration = Duration::from_secs(30);

fn error_line(args: &[&str]) -> String {
    let run = tether_load(args, None, LIMIT);
    assert_ne!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.code.is_some());
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {lines:?}");
    assert!(lines[0].starts_with("error: "), "{lines:?}");
    lines[0].to_string()
}

/// A raw TCP server answering every connection with `response` (after reading the request).
fn raw_server(response: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response);
                std::thread::sleep(Duration::from_millis(300));
            });
        }
    });
    port
}

#[test]
fn connection_refused() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/");
    let line = error_line(&["run", "--url", &url, "--connections", "20", "--duration", "1s"]);
    assert_eq!(line, format!("error: cannot connect to {url}: Connection refused"));
}

#[test]
fn http_403_instead_of_101() {
    let port = raw_server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let url = format!("ws://127.0.0.1:{port}/");
    let line = error_line(&["run", "--url", &url, "--connections", "20", "--duration", "1s"]);
    assert_eq!(line, "error: server answered HTTP 403 Forbidden instead of 101");
}

#[test]
fn wrong_accept_key() {
    let port = raw_server(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    );
    let url = format!("ws://127.0.0.1:{port}/");
    let line = error_line(&["run", "--url", &url, "--connections", "5", "--duration", "1s"]);
    assert_eq!(line, "error: invalid handshake response: wrong Sec-WebSocket-Accept");
}

#[test]
fn not_a_ws_url() {
    let line = error_line(&["run", "--url", "http://127.0.0.1:1/x", "--connections", "5"]);
    assert_eq!(line, "error: not a ws:// or wss:// URL: http://127.0.0.1:1/x");
    // wss:// needs to be told whom to trust, and says so.
    let line = error_line(&["run", "--url", "wss://127.0.0.1:1/x", "--connections", "5"]);
    assert!(line.contains("--tls-ca FILE") && line.contains("--tls-insecure"), "{line}");
    // A TLS flag without a wss:// URL is a mistake too.
    let line = error_line(&["run", "--url", "ws://127.0.0.1:1/x", "--connections", "5", "--tls-insecure"]);
    assert!(line.contains("need a wss:// URL"), "{line}");
}
