//! tether-load's ramp keeps at most `--max-connecting` connects in flight: against a server that stops
//! answering upgrades, it waits for room instead of piling more connections onto it (past a server's accept
//! queues, SYNs are dropped and retried after 1, 3, 7 s and the handshakes miss their deadlines: the first
//! 1,000,000 ramp collapsed that way). The server here is hand-made: it answers the first connections (the
//! load generator's probe) with a proper 101, then accepts and never answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_tests::load::Load;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const ANSWERED: usize = 10;
const BOUND: usize = 5;

fn answer_upgrade(stream: TcpStream) -> TcpStream {
    let mut reader = BufReader::new(stream);
    let mut key = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim().to_string());
            }
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut stream = reader.into_inner();
    let accept = derive_accept_key(key.expect("no Sec-WebSocket-Key").as_bytes());
    let _ = write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream
}

#[test]
fn the_ramp_keeps_at_most_max_connecting_connects_in_flight() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // When each connection past the probe arrived.
    let silent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = silent.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            if i < ANSWERED {
                held.push(answer_upgrade(stream));
            } else {
                seen.lock().unwrap().push(Instant::now());
                held.push(stream);
            }
        }
    });

    let url = format!("ws://{addr}/");
    let run = Load::run(
        None,
        &[
            "run",
            "--url",
            &url,
            "--connections",
            "40",
            "--rate",
            "10000/s",
            "--max-connecting",
            &BOUND.to_string(),
            "--handshake-timeout",
            "3s",
            "--duration",
            "1s",
            "--ping-interval",
            "0",
        ],
        Duration::from_secs(120),
    );
    let arrivals = silent.lock().unwrap().clone();
    assert!(!arrivals.is_empty(), "no connection past the probe reached the server; {}", run.describe());
    // The unanswered connects hold their room for the 3 s handshake deadline: within 2 s of the first, the
    // bound lets exactly BOUND through (40 at 10,000/s would all arrive in a few milliseconds without it).
    let first = arrivals[0];
    let early = arrivals.iter().filter(|t| t.duration_since(first) < Duration::from_secs(2)).count();
    assert_eq!(early, BOUND, "connects in flight in the first 2 s: {early}; {}", run.describe());
    // And the ramp goes on as room comes back (failed handshakes free it).
    assert!(arrivals.len() > BOUND, "the ramp stopped at the bound: {} arrivals; {}", arrivals.len(), run.describe());
}
