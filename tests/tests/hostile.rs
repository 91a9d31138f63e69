//! Hostile input against tetherd's echo mode: slow and oversized handshakes, frames that never finish,
//! absurd lengths, floods of fragments and pings from a peer that never reads, protocol garbage and abrupt
//! resets in every phase. Every case must end in the right answer (an HTTP status or an RFC 6455 close
//! code), never a panic, a hang or a connection that keeps its slot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tether_tests::raw::{self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT};
use tether_tests::{expect_close, read_http_response, rss_kib, wait_until, Server};

const FAST_PINGS: &[&str] =
    &["--ping-interval", "1s", "--pong-timeout", "1s", "--close-timeout", "1s", "--tick", "100ms"];

/// Waits until no WebSocket is open and at most the scrape itself holds a slot.
fn wait_slots_free(server: &Server, what: &str) {
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let text = server.metrics();
        let samples = tether_tests::parse_metrics(&text);
        let ws = tether_tests::gauge_total(&samples, "tether_websockets_open").unwrap_or(u64::MAX);
        let open = tether_tests::open_connections(&text).unwrap_or(u64::MAX);
        ws == 0 && open <= 1
    });
    assert!(ok, "{what}: slots not freed:\n{}\nlog:\n{}", server.metrics(), server.log.tail(20));
}

/// Ends a connection with a TCP RST (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

#[test]
fn handshake_trickled_byte_by_byte_is_cut_at_the_handshake_deadline() {
    let server = Server::start(&["--handshake-timeout", "1s", "--tick", "100ms"]);
    let mut stream = raw::connect(server.addr);
    let request = raw::upgrade_request(server.addr, "/a-long-path-so-the-request-takes-a-while-to-trickle");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut eof = false;
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // One byte every 100 ms: the whole request would take ~15 s; the deadline is 1 s after the accept.
    for b in request.as_bytes() {
        if stream.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                eof = true;
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if !eof {
        if let Some(rest) = raw::read_to_eof(&mut stream, Duration::from_secs(5)) {
            got.extend(rest);
            eof = true;
        }
    }
    let after = start.elapsed();
    assert!(eof, "a trickled handshake still open after {after:?} with --handshake-timeout 1s");
    assert!(after < Duration::from_secs(5), "trickled handshake closed only after {after:?}");
    assert!(after >= Duration::from_millis(900), "trickled handshake closed after {after:?}, before the deadline");
    let resp = read_http_response(&mut std::io::Cursor::new(&got))
        .unwrap_or_else(|e| panic!("no well-formed answer at the handshake deadline ({e}): {got:?}"));
    assert_eq!(resp.status, 408, "{resp:?}");
    server.wait_open_at_most(1, Duration::from_secs(10));
    assert!(server.counter("tether_handshake_timeouts_total") >= 1);
}

/// A frame header (and a little of the payload), then nothing: the server's pings get no pong, so the
/// connection ends at the pong deadline, and its slot and partial-frame buffer are freed.
#[test]
fn frame_header_then_silence_is_closed_by_keepalive() {
    let server = Server::start(FAST_PINGS);
    let mut stream = raw::handshake(server.addr);
    let frame = raw::masked(true, OP_BINARY, &vec![5u8; 1 << 20]);
    stream.write_all(&frame[..100]).unwrap();
    let ending = raw::read_until_close(&mut stream, Duration::from_secs(15), false);
    assert_eq!(ending.close.as_ref().map(|c| c.0), Some(1011), "{ending:?}\n{}", server.log.tail(20));
    assert!(ending.eof, "{ending:?}");
    wait_slots_free(&server, "header then silence");
}

/// Headers that announce a frame of the maximum message size (16 MiB), then a few bytes and silence: the
/// server must not set aside the announced size for each (an attacker's 114 bytes would cost 16 MiB of
/// address space and megabytes of resident memory per connection).
#[test]
fn announced_frame_lengths_cost_nothing_until_the_bytes_arrive() {
    let server = Server::start(&[]);
    let rss_before = rss_kib(server.pid());
    let streams: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = raw::handshake(server.addr);
            let mut bytes = header_64((16 << 20) - 1);
            bytes.extend_from_slice(&[0u8; 100]);
            s.write_all(&bytes).unwrap();
            s
        })
        .collect();
    // Everything sent has been read once the server echoes on a fresh connection behind it.
    let mut probe = raw::handshake(server.addr);
    probe.write_all(&raw::masked(true, OP_TEXT, b"probe")).unwrap();
    assert_eq!(raw::read_message(&mut probe).data, b"probe");
    std::thread::sleep(Duration::from_millis(200));
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "200 frame headers of 16 MiB cost tetherd {grew} KiB");
    drop(streams);
    drop(probe);
    wait_slots_free(&server, "announced lengths");
}

/// The same frame, trickled: its header, then a byte of payload every 200 ms keeps bytes coming but never
/// finishes the frame and never answers a ping. Bytes inside a frame are not a pong: the connection must still end by keepalive.
#[test]
fn frame_trickled_byte_by_byte_is_closed_by_keepalive() {
    let server = Server::start(FAST_PINGS);
    let mut stream = raw::handshake(server.addr);
    let frame = raw::masked(true, OP_BINARY, &vec![5u8; 1 << 20]);
    let start = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    // The whole header at once (2 + 8 length + 4 mask bytes), then the payload a byte at a time.
    writer.write_all(&frame[..14]).unwrap();
    let trickle = std::thread::spawn(move || {
        for b in &frame[14..200] {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let ending = raw::read_until_close(&mut stream, Duration::from_secs(20), false);
    let after = start.elapsed();
    assert_eq!(
        ending.close.as_ref().map(|c| c.0),
        Some(1011),
        "a peer trickling one frame for {after:?} was not closed for its missing pongs: {ending:?}\n{}",
        server.log.tail(20)
    );
    assert!(ending.eof, "{ending:?}");
    assert!(ending.frames.iter().any(|f| f.opcode == OP_PING), "closed without a ping: {ending:?}");
    wait_slots_free(&server, "trickled frame");
    let _ = trickle.join();
}

/// Sends `request` from a second thread (the server may stop reading and close long before it is all
/// written) and returns the status it answers with.
fn oversized_request_status(addr: SocketAddr, request: Vec<u8>) -> u16 {
    let mut stream = raw::connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let resp = read_http_response(&mut stream).expect("no HTTP answer to an oversized upgrade request");
    assert!(raw::read_to_eof(&mut stream, Duration::from_secs(10)).is_some(), "left open after {}", resp.status);
    let _ = send.join();
    resp.status
}

#[test]
fn megabyte_and_two_thousand_header_upgrades_get_431() {
    let server = Server::start(&[]);
    let addr = server.addr;
    // 1 MB of one header value, default max_handshake_size (8 KiB).
    let mut big = raw::upgrade_request(addr, "/").into_bytes();
    big.truncate(big.len() - 2);
    big.extend_from_slice(b"X-Padding: ");
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(oversized_request_status(addr, big), 431);

    // 2,000 short headers (about 20 KiB).
    let mut many = raw::upgrade_request(addr, "/").into_bytes();
    many.truncate(many.len() - 2);
    for i in 0..2000 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(oversized_request_status(addr, many.clone()), 431);

    // The same 2,000 headers within a size limit that would allow them: refused for their number.
    let roomy = Server::start(&["--max-handshake-size", "1MiB"]);
    assert_eq!(oversized_request_status(roomy.addr, many), 431);
    server.wait_open_at_most(1, Duration::from_secs(10));
    roomy.wait_open_at_most(1, Duration::from_secs(10));
}

/// A masked frame header with a 64-bit length field, and a few payload bytes.
fn header_64(len: u64) -> Vec<u8> {
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4, 9, 9, 9, 9]);
    f
}

#[test]
fn absurd_frame_lengths() {
    let server = Server::start(&["--max-message-size", "1024"]);
    // RFC 6455 5.2: the most significant bit of the 64-bit length must be 0.
    for len in [1u64 << 63, u64::MAX, (1 << 63) | 70_000] {
        expect_close(&server, raw::handshake(server.addr), &header_64(len), 1002, &format!("length {len:#x}"));
    }
    // Legal encodings past max_message_size: 1009 before any payload is buffered.
    for len in [(1u64 << 63) - 1, 1 << 40, 1 << 32, 70_000] {
        expect_close(&server, raw::handshake(server.addr), &header_64(len), 1009, &format!("length {len:#x}"));
    }
    let mut f16 = vec![0x82, 0x80 | 126, 0xff, 0xff];
    f16.extend_from_slice(&[1, 2, 3, 4]);
    expect_close(&server, raw::handshake(server.addr), &f16, 1009, "16-bit length 65535");
    wait_slots_free(&server, "absurd lengths");
}

/// Writes `bytes` from a second thread while this one waits for the echo (so neither side's buffers can
/// fill up and deadlock the exchange).
fn write_in_background(stream: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || writer.write_all(&bytes).expect("writing the fragments"))
}

#[test]
fn hundred_thousand_one_byte_fragments_arrive_intact() {
    let server = Server::start(&[]);
    let rss_before = rss_kib(server.pid());

    // Binary: 100,000 fragments of one byte each.
    let mut stream = raw::handshake(server.addr);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut bytes = Vec::with_capacity(payload.len() * 7);
    for (i, b) in payload.iter().enumerate() {
        let op = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
        bytes.extend(raw::masked(i == payload.len() - 1, op, &[*b]));
    }
    let writer = write_in_background(&stream, bytes);
    let got = raw::read_message(&mut stream);
    writer.join().unwrap();
    assert_eq!(got.opcode, OP_BINARY);
    assert!(got.data == payload, "the reassembled message differs ({} bytes back)", got.data.len());

    // Text: every two-byte character split across two fragments (valid UTF-8, only whole when joined).
    let text = "é".repeat(50_000);
    let mut bytes = Vec::with_capacity(text.len() * 7);
    for (i, b) in text.as_bytes().iter().enumerate() {
        let op = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
        bytes.extend(raw::masked(i == text.len() - 1, op, &[*b]));
    }
    let writer = write_in_background(&stream, bytes);
    let got = raw::read_message(&mut stream);
    writer.join().unwrap();
    assert_eq!(got.opcode, OP_TEXT);
    assert!(got.data == text.as_bytes(), "the reassembled text differs ({} bytes back)", got.data.len());

    // Still a working connection, then closed cleanly; nothing kept.
    stream.write_all(&raw::masked(true, OP_TEXT, b"after")).unwrap();
    assert_eq!(raw::read_message(&mut stream).data, b"after");
    expect_close(&server, stream, &raw::close_frame(1000, ""), 1000, "close after the fragments");
    wait_slots_free(&server, "fragments");
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "tetherd grew by {grew} KiB for two 100 KB messages");
}

#[test]
fn message_that_never_ends_is_1009() {
    let server = Server::start(&["--max-message-size", "65536"]);
    let mut stream = raw::handshake(server.addr);
    let mut writer = stream.try_clone().unwrap();
    // Continuations forever (bounded here at 64 MiB): never a FIN.
    let flood = std::thread::spawn(move || {
        if writer.write_all(&raw::masked(false, OP_BINARY, &[1u8; 1000])).is_err() {
            return;
        }
        let frame = raw::masked(false, OP_CONTINUATION, &[2u8; 1000]);
        for _ in 0..65_536 {
            if writer.write_all(&frame).is_err() {
                return;
            }
        }
    });
    let ending = raw::read_until_close(&mut stream, Duration::from_secs(20), true);
    assert_eq!(ending.close.as_ref().map(|c| c.0), Some(1009), "{ending:?}\n{}", server.log.tail(10));
    // The server has closed; a write blocked on a full socket buffer may still wait for the peer's RST
    // (seconds on a loaded host): end the flood here.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(stream);
    let _ = flood.join();
    wait_slots_free(&server, "endless message");
}

/// Pings as fast as the socket takes them, never reading: the pongs wait in the server's send queue, which
/// is bounded; past it the connection is closed (policy close) and the memory does not grow with the flood.
#[test]
fn ping_flood_from_a_peer_that_never_reads_is_cut_off() {
    let server = Server::start(&["--max-send-queue", "64KiB", "--max-message-size", "64KiB", "--close-timeout", "1s"]);
    let rss_before = rss_kib(server.pid());
    let stream = raw::handshake(server.addr);
    socket2::SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let ping = raw::masked(true, OP_PING, &[7u8; 125]);
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 512).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let cut_off = loop {
        if writer.write_all(&burst).is_err() {
            break true;
        }
        sent += burst.len() as u64;
        if sent > 512 << 20 || start.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(cut_off, "a peer that pinged {sent} bytes in {:?} and never read was not cut off", start.elapsed());
    let closed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        server.counter_with("tether_closed_by_reason_total", &[("reason", "slow_consumer")]) >= 1
    });
    assert!(closed, "no slow_consumer close after the ping flood:\n{}", server.log.tail(20));
    wait_slots_free(&server, "ping flood");
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "tetherd grew by {grew} KiB during a ping flood of {sent} bytes");
    drop(stream);
}

#[test]
fn garbage_reserved_bits_opcodes_and_bad_close_frames() {
    let server = Server::start(&["--close-timeout", "2s"]);
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        ("an HTTP request after the upgrade".into(), raw::upgrade_request(server.addr, "/").into_bytes(), 1002),
        ("0xff bytes".into(), vec![0xff; 64], 1002),
        ("RSV2".into(), with_first_byte(raw::masked(true, OP_TEXT, b"x"), 0x20), 1002),
        ("RSV3".into(), with_first_byte(raw::masked(true, OP_TEXT, b"x"), 0x10), 1002),
        ("RSV1 on a ping".into(), with_first_byte(raw::masked(true, OP_PING, b"x"), 0x40), 1002),
        ("close with a one-byte payload".into(), raw::masked(true, OP_CLOSE, &[3]), 1002),
        ("close reason not UTF-8".into(), close_raw(1000, &[b'o', 0xff, b'k']), 1007),
    ];
    for op in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push((format!("reserved opcode {op:#x}"), raw::masked(true, op, b"x"), 1002));
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push((format!("close code {code}"), close_raw(code, b""), 1002));
    }
    for (what, bytes, code) in cases {
        expect_close(&server, raw::handshake(server.addr), &bytes, code, &what);
    }
    // Valid codes are echoed.
    for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
        expect_close(&server, raw::handshake(server.addr), &close_raw(code, "bye".as_bytes()), code, "valid code");
    }
    wait_slots_free(&server, "protocol garbage");
}

fn with_first_byte(mut frame: Vec<u8>, bits: u8) -> Vec<u8> {
    frame[0] |= bits;
    frame
}

fn close_raw(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    raw::masked(true, OP_CLOSE, &payload)
}

/// RST (SO_LINGER 0) in the middle of every phase: the gauges return to where they started.
#[test]
fn resets_in_every_phase_leave_the_gauges_at_baseline() {
    let server = Server::start(&["--close-timeout", "1s"]);
    let addr = server.addr;
    let accepted_before = server.counter("tether_accepted_total");
    const EACH: usize = 20;
    type Phase = (&'static str, fn(SocketAddr) -> TcpStream);
    let phases: [Phase; 7] = [
        ("before any byte", raw::connect),
        ("mid-request", |addr| {
            let mut s = raw::connect(addr);
            s.write_all(&raw::upgrade_request(addr, "/").as_bytes()[..30]).unwrap();
            s
        }),
        ("mid plain HTTP body", |addr| {
            let mut s = raw::connect(addr);
            s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").unwrap();
            s
        }),
        ("after the upgrade", raw::handshake),
        ("mid-frame", |addr| {
            let mut s = raw::handshake(addr);
            s.write_all(&raw::masked(true, OP_BINARY, &[1u8; 1000])[..300]).unwrap();
            s
        }),
        ("mid-close-handshake", |addr| {
            let mut s = raw::handshake(addr);
            s.write_all(&raw::close_frame(1000, "bye")).unwrap();
            s
        }),
        ("while the server sends a large echo", |addr| {
            let mut s = raw::handshake(addr);
            s.write_all(&raw::masked(true, OP_BINARY, &vec![3u8; 4 << 20])).unwrap();
            s
        }),
    ];
    for (what, open) in phases {
        let streams: Vec<TcpStream> = (0..EACH).map(|_| open(addr)).collect();
        // Give the server a moment to act on what arrived before the reset.
        std::thread::sleep(Duration::from_millis(50));
        for s in streams {
            reset(s);
        }
        wait_slots_free(&server, what);
    }
    let accepted = server.counter("tether_accepted_total") - accepted_before;
    assert!(accepted >= (7 * EACH) as u64, "only {accepted} connections accepted");
    // Still serving.
    let mut s = raw::handshake(addr);
    s.write_all(&raw::masked(true, OP_TEXT, b"alive")).unwrap();
    assert_eq!(raw::read_message(&mut s).data, b"alive");
}
