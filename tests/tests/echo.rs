//! The default application echoes text and binary messages; control frames and the close handshake
//! follow RFC 6455. Driven by tokio-tungstenite, plus a raw client for hand-made fragmentation.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_tests::raw::{self, OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT};
use tether_tests::{block_on_with_timeout, close_lines, closed_with_code, log_field, next_data, wait_until, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const LIMIT: Duration = Duration::from_secs(60);

async fn connect(server: &Server, path: &str) -> Ws {
    let (ws, resp) = connect_async(server.ws_url(path))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", server.ws_url(path)));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// How long a test waits for the echo of a message.
const ECHO_WAIT: Duration = Duration::from_secs(10);

#[test]
fn echoes_text_and_binary() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server, "/").await;
        ws.send(Message::text("hello, tether")).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text("hello, tether"));

        let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        ws.send(Message::binary(binary.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::binary(binary));

        // Empty messages and multi-byte UTF-8.
        ws.send(Message::text("")).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text(""));
        ws.send(Message::binary(Vec::new())).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::binary(Vec::new()));
        let unicode = "žluťoučký kůň 🐎 — 日本語";
        ws.send(Message::text(unicode)).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text(unicode));

        // Many messages in a row come back complete and in order.
        for i in 0..200 {
            ws.feed(Message::text(format!("msg {i}"))).await.unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..200 {
            assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text(format!("msg {i}")));
        }
    });
}

#[test]
fn echoes_on_any_path() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        for path in ["/", "/chat", "/a/b/c?x=1&y=2"] {
            let mut ws = connect(&server, path).await;
            ws.send(Message::text(path)).await.unwrap();
            assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text(path));
            ws.close(None).await.unwrap();
        }
    });
}

#[test]
fn echoes_200_kb_messages() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server, "/").await;
        let binary: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(binary.clone())).await.unwrap();
        match next_data(&mut ws, ECHO_WAIT).await {
            Message::Binary(got) => {
                assert_eq!(got.len(), binary.len());
                assert!(got == binary, "200 KB binary echo differs");
            }
            other => panic!("expected a binary echo, got {other:?}"),
        }
        let text: String = "0123456789abcdef".repeat(200 * 1024 / 16);
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text(text));
    });
}

#[test]
fn answers_client_ping_with_same_payload() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server, "/").await;
        for payload in [b"".to_vec(), b"ping-1".to_vec(), vec![0xAB; 125]] {
            ws.send(Message::Ping(payload.clone())).await.unwrap();
            let pong = loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .expect("no pong within 10 s")
                    .expect("stream ended")
                    .expect("websocket error");
                match msg {
                    Message::Pong(p) => break p,
                    Message::Ping(_) => continue,
                    other => panic!("expected a pong, got {other:?}"),
                }
            };
            assert_eq!(pong, payload);
        }
        // The connection still echoes afterwards.
        ws.send(Message::text("after pings")).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text("after pings"));
    });
}

#[test]
fn clean_close_1000() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server, "/").await;
        ws.send(Message::text("before close")).await.unwrap();
        assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text("before close"));
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
        match next_data(&mut ws, ECHO_WAIT).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected Close 1000 back, got {other:?}"),
        }
        // Then the stream ends: the server closes TCP after the close handshake.
        let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("stream did not end within 10 s after the close handshake");
        assert!(matches!(end, None | Some(Err(_))), "unexpected item after close: {end:?}");
    });

    // One close line for it, code 1000, started by the peer.
    let found = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        close_lines(&server.log)
            .iter()
            .any(|l| log_field(l, "code") == Some("1000") && log_field(l, "initiator") == Some("peer"))
    });
    assert!(found, "no close line with code=1000 initiator=peer in the log:\n{}", server.log.tail(30));
    let line = close_lines(&server.log).into_iter().find(|l| log_field(l, "code") == Some("1000")).unwrap();
    assert_eq!(log_field(&line, "reason"), Some("bye"), "close line: {line}");
    let peer: Option<std::net::SocketAddr> = log_field(&line, "peer").and_then(|p| p.parse().ok());
    assert!(peer.is_some_and(|p| p.ip().is_loopback()), "close line lacks the client's address as peer=: {line}");
    assert!(
        log_field(&line, "duration_ms").is_some_and(|d| d.parse::<u64>().is_ok()),
        "close line lacks a numeric duration_ms=: {line}"
    );
    assert!(
        closed_with_code(&server.metrics(), 1000) >= 1,
        "/metrics does not count the 1000 close:\n{}",
        server.metrics()
    );
    server.wait_open_at_most(1, Duration::from_secs(10));
}

/// A fragmented text message with a ping between its fragments: the ping is answered at once and the
/// reassembled message is echoed.
#[test]
fn echoes_fragmented_messages() {
    let server = Server::start(&[]);
    let mut stream = raw::handshake(server.addr);

    let mut bytes = raw::masked(false, OP_TEXT, b"Hel");
    bytes.extend(raw::masked(false, OP_CONTINUATION, b"lo, "));
    bytes.extend(raw::masked(true, OP_PING, b"in-between"));
    bytes.extend(raw::masked(false, OP_CONTINUATION, "wörld".as_bytes()));
    bytes.extend(raw::masked(true, OP_CONTINUATION, b"!"));
    stream.write_all(&bytes).unwrap();
    let got = raw::read_message(&mut stream);
    assert_eq!(got.opcode, OP_TEXT);
    assert_eq!(String::from_utf8(got.data).unwrap(), "Hello, wörld!");
    assert_eq!(got.pongs, vec![b"in-between".to_vec()], "the interleaved ping was not answered");

    // A UTF-8 character split across fragments is valid.
    let snake = "🐍".as_bytes();
    let mut bytes = raw::masked(false, OP_TEXT, &snake[..2]);
    bytes.extend(raw::masked(true, OP_CONTINUATION, &snake[2..]));
    stream.write_all(&bytes).unwrap();
    let got = raw::read_message(&mut stream);
    assert_eq!(got.data, snake);

    // Binary, many small fragments, each written separately.
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
    let chunks: Vec<&[u8]> = payload.chunks(100).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
        stream.write_all(&raw::masked(i + 1 == chunks.len(), op, chunk)).unwrap();
    }
    let got = raw::read_message(&mut stream);
    assert_eq!(got.opcode, OP_BINARY);
    assert_eq!(got.data, payload);

    // A frame split across TCP segments (header in one write, payload in two).
    let frame = raw::masked(true, OP_TEXT, b"split across writes");
    for part in [&frame[..1], &frame[1..4], &frame[4..10], &frame[10..]] {
        stream.write_all(part).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let got = raw::read_message(&mut stream);
    assert_eq!(got.data, b"split across writes");

    // Client-initiated close with the raw client: Close 1000 back, then EOF.
    stream.write_all(&raw::close_frame(1000, "done")).unwrap();
    let ending = raw::read_until_close(&mut stream, Duration::from_secs(10), false);
    assert_eq!(ending.close.as_ref().map(|c| c.0), Some(1000), "{ending:?}");
    assert!(ending.eof, "no EOF after the close handshake: {ending:?}");
}
