//! Ending many connections at once, each way a connection can end: a close handshake from the client, a FIN
//! without a Close frame, a reset. Every slot must come back, each close handshake must end in a clean FIN,
//! and teardown must not use io_uring's io-wq worker threads: `IORING_OP_SHUTDOWN` always ran there, and with
//! cancels by descriptor (which walk every pending request) a mass close of 100,000+ connections wedged the
//! shards (issue 10). Teardown now cancels each operation by its token and closes; no worker thread appears.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tether_tests::{raw, wait_until, Server};

const CONNS: usize = 2_400;

/// The io-wq worker threads of a process (the kernel names them `iou-wrk-<pid>`).
fn io_wq_workers(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("iou-wrk"))
        .collect()
}

/// After the server's Close frame: the connection must end with a FIN (read returns 0), not a reset.
fn expect_close_then_fin(stream: &mut TcpStream, i: usize) {
    let frame = loop {
        let frame = raw::read_frame(stream).unwrap_or_else(|e| panic!("conn {i}: reading the Close reply: {e}"));
        // A keepalive ping may come first.
        if frame.as_ref().is_none_or(|f| f.opcode != raw::OP_PING) {
            break frame;
        }
    };
    let close = frame.as_ref().and_then(|f| f.close_code());
    assert_eq!(close.map(|c| c.0), Some(1000), "conn {i}: expected a Close 1000 reply, got {frame:?}");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("conn {i}: {n} bytes after the Close reply"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => panic!("conn {i}: reset instead of a FIN after Close"),
        Err(e) => panic!("conn {i}: no FIN after the Close reply: {e}"),
    }
}

#[test]
fn a_mass_close_of_every_kind_frees_every_slot_without_io_wq_workers() {
    let server = Server::start(&["--shards", "2", "--max-connections", "5000"]);
    let pid = server.pid();
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| raw::handshake(server.addr)).collect();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || server.open_connections() >= CONNS as u64),
        "/metrics never showed {CONNS} open connections"
    );
    let before = io_wq_workers(pid);
    assert!(before.is_empty(), "io-wq workers before the mass close (handshakes, /metrics scrapes): {before:?}");

    let third = CONNS / 3;
    let mut handshakes: Vec<TcpStream> = conns.drain(..third).collect();
    let fins: Vec<TcpStream> = conns.drain(..third).collect();
    let resets = conns;
    // All at once: every Close frame written before any reply is read, then the FINs and the resets.
    for s in &mut handshakes {
        s.write_all(&raw::close_frame(1000, "bye")).unwrap();
    }
    drop(fins);
    for s in &resets {
        socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(resets);
    for (i, s) in handshakes.iter_mut().enumerate() {
        expect_close_then_fin(s, i);
    }
    // The scrape's own connection may count as one.
    server.wait_open_at_most(1, Duration::from_secs(30));
    let workers = io_wq_workers(pid);
    assert!(workers.is_empty(), "teardown of {CONNS} connections used io-wq workers: {workers:?}");

    // Every slot came back: the server takes as many new connections again, and they work.
    let mut again: Vec<TcpStream> = (0..CONNS).map(|_| raw::handshake(server.addr)).collect();
    for (i, s) in again.iter_mut().enumerate().step_by(97) {
        s.write_all(&raw::masked(true, raw::OP_TEXT, format!("echo {i}").as_bytes())).unwrap();
        let got = raw::read_message(s);
        assert_eq!(got.data, format!("echo {i}").as_bytes(), "conn {i} after the mass close: {got:?}");
    }
}
