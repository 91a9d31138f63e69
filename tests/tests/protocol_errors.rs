//! Protocol violations seen from a raw client: the server answers with the RFC 6455 close code, then
//! closes the TCP connection.

use std::io::Write;
use std::time::Duration;

use tether_tests::raw::{self, OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT};
use tether_tests::{close_lines, expect_close, log_field, wait_until, Server};

fn server() -> Server {
    Server::start(&["--max-message-size", "1024", "--close-timeout", "2s"])
}

#[test]
fn unmasked_frame_is_1002() {
    let server = server();
    let stream = raw::handshake(server.addr);
    let frame = raw::encode_frame(true, OP_TEXT, b"not masked", None);
    expect_close(&server, stream, &frame, 1002, "unmasked text frame");

    let found = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        close_lines(&server.log)
            .iter()
            .any(|l| log_field(l, "code") == Some("1002") && log_field(l, "initiator") == Some("local"))
    });
    assert!(found, "no close line with code=1002 initiator=local:\n{}", server.log.tail(20));
}

#[test]
fn invalid_utf8_text_is_1007() {
    let server = server();
    let stream = raw::handshake(server.addr);
    let frame = raw::masked(true, OP_TEXT, &[b'o', b'k', 0xff, 0xfe]);
    expect_close(&server, stream, &frame, 1007, "invalid UTF-8 in one text frame");

    // Invalid UTF-8 spread over fragments (a lone continuation byte at the start of the second).
    let stream = raw::handshake(server.addr);
    let mut bytes = raw::masked(false, OP_TEXT, "ab".as_bytes());
    bytes.extend(raw::masked(true, OP_CONTINUATION, &[0x80, b'c']));
    expect_close(&server, stream, &bytes, 1007, "invalid UTF-8 across fragments");

    // A truncated multi-byte sequence at the end of the message.
    let stream = raw::handshake(server.addr);
    let frame = raw::masked(true, OP_TEXT, &"€".as_bytes()[..2]);
    expect_close(&server, stream, &frame, 1007, "truncated UTF-8 at the end of a text message");
}

#[test]
fn message_over_max_size_is_1009() {
    let server = server();
    // One frame too big.
    let stream = raw::handshake(server.addr);
    let frame = raw::masked(true, OP_BINARY, &vec![7u8; 2000]);
    expect_close(&server, stream, &frame, 1009, "2000-byte frame, max 1024");

    // Fragments that are each small but add up to too much.
    let stream = raw::handshake(server.addr);
    let mut bytes = Vec::new();
    for i in 0..5 {
        let op = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
        bytes.extend(raw::masked(i == 4, op, &[1u8; 400]));
    }
    expect_close(&server, stream, &bytes, 1009, "5 x 400-byte fragments, max 1024");

    // Exactly at the limit is fine.
    let mut stream = raw::handshake(server.addr);
    stream.write_all(&raw::masked(true, OP_BINARY, &[3u8; 1024])).unwrap();
    assert_eq!(raw::read_message(&mut stream).data, vec![3u8; 1024]);
}

#[test]
fn other_violations_are_1002() {
    let server = server();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("reserved opcode 0x3", raw::masked(true, 0x3, b"x")),
        ("RSV1 without an extension", {
            let mut f = raw::masked(true, OP_TEXT, b"x");
            f[0] |= 0x40;
            f
        }),
        ("continuation without a start", raw::masked(true, OP_CONTINUATION, b"x")),
        ("fragmented ping", raw::masked(false, OP_PING, b"x")),
        ("ping payload over 125 bytes", raw::masked(true, OP_PING, &[0u8; 126])),
        ("new text frame inside a fragmented message", {
            let mut b = raw::masked(false, OP_TEXT, b"a");
            b.extend(raw::masked(true, OP_TEXT, b"b"));
            b
        }),
    ];
    for (what, bytes) in cases {
        let stream = raw::handshake(server.addr);
        expect_close(&server, stream, &bytes, 1002, what);
    }
}
