//! Messages up to `--max-message-size` are echoed whole, whatever `--max-send-queue` says: the send-queue
//! bound limits what is queued *beyond* one outgoing message, never a single legal message itself.
//! One byte past the limit is still refused with 1009.
//!
//! Driven by tokio-tungstenite, configured to accept far more than the server ever sends (64 MiB), so a
//! failure here is always the server's.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_tests::{block_on_with_timeout, close_lines, wait_until, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const LIMIT: Duration = Duration::from_secs(60);
/// How long one echo may take to arrive (the machine may be small and busy with other tests).
const ECHO_WAIT: Duration = Duration::from_secs(50);
const MIB: usize = 1024 * 1024;
/// tetherd's default `--max-message-size`.
const DEFAULT_MAX_MESSAGE: usize = 16 * MIB;

async fn connect(server: &Server) -> Ws {
    let config =
        WebSocketConfig { max_message_size: Some(64 * MIB), max_frame_size: Some(64 * MIB), ..Default::default() };
    let url = server.ws_url("/");
    let (ws, resp) = connect_async_with_config(url.as_str(), Some(config), true)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The next data message or Close, skipping pings (tungstenite answers them) and pongs. A connection that
/// ends without a Close frame fails with the server's own close lines, which say why.
async fn next_data(server: &Server, ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(ECHO_WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message from the server within {ECHO_WAIT:?}"));
        match msg {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return other,
            Some(Err(e)) => panic!("websocket error: {e}; server close lines: {:?}", server_closes(server)),
            None => panic!("the stream ended; server close lines: {:?}", server_closes(server)),
        }
    }
}

/// The server's close lines so far (waiting briefly for the log to catch up).
fn server_closes(server: &Server) -> Vec<String> {
    wait_until(Duration::from_secs(2), Duration::from_millis(50), || !close_lines(&server.log).is_empty());
    close_lines(&server.log)
}

/// A short description of a message, never its (possibly 16 MiB) payload.
fn describe(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("a text message of {} bytes", t.len()),
        Message::Binary(b) => format!("a binary message of {} bytes", b.len()),
        Message::Close(c) => format!("Close {c:?}"),
        other => format!("{other:?}"),
    }
}

/// `len` pseudo-random bytes (xorshift), so that a reordered or shifted echo cannot match.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes of printable ASCII, pseudo-random.
fn ascii_text(len: usize, seed: u64) -> String {
    let bytes: Vec<u8> = payload(len, seed).into_iter().map(|b| b' ' + b % 95).collect();
    String::from_utf8(bytes).unwrap()
}

/// Sends `data` as one binary message and expects it back byte-identical.
async fn expect_binary_echo(server: &Server, ws: &mut Ws, data: Vec<u8>) {
    let len = data.len();
    ws.send(Message::binary(data.clone())).await.unwrap_or_else(|e| panic!("sending {len} bytes: {e}"));
    match next_data(server, ws).await {
        Message::Binary(got) => {
            assert_eq!(got.len(), len, "binary echo of {len} bytes has the wrong length");
            let first_diff = got.iter().zip(&data).position(|(a, b)| a != b);
            assert!(first_diff.is_none(), "binary echo of {len} bytes differs at byte {first_diff:?}");
        }
        other => panic!("expected the echo of a {len}-byte binary message, got {}", describe(&other)),
    }
}

#[test]
fn echoes_5_mib_binary_then_keeps_echoing() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server).await;
        expect_binary_echo(&server, &mut ws, payload(5 * MIB, 5)).await;
        // The connection is still open and usable afterwards.
        ws.send(Message::text("after 5 MiB")).await.unwrap();
        let got = next_data(&server, &mut ws).await;
        assert_eq!(got, Message::text("after 5 MiB"), "after the 5 MiB echo, got {}", describe(&got));
    });
}

#[test]
fn echoes_max_message_size_binary() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server).await;
        expect_binary_echo(&server, &mut ws, payload(DEFAULT_MAX_MESSAGE, 16)).await;
        ws.send(Message::text("after 16 MiB")).await.unwrap();
        let got = next_data(&server, &mut ws).await;
        assert_eq!(got, Message::text("after 16 MiB"), "after the 16 MiB echo, got {}", describe(&got));
    });
}

/// 16 MiB of text in 262,144 frames of 64 bytes (Text fin=0, continuations, the last fin=1) comes back as
/// one identical text message.
#[test]
fn echoes_max_message_size_text_in_64_byte_fragments() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server).await;
        let text = ascii_text(DEFAULT_MAX_MESSAGE, 64);
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(64).collect();
        assert_eq!(chunks.len(), 262_144);
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            // tungstenite masks every frame a client sends, Message::Frame included.
            ws.feed(Message::Frame(Frame::message(chunk.to_vec(), opcode, i == last)))
                .await
                .unwrap_or_else(|e| panic!("sending fragment {i}: {e}"));
        }
        ws.flush().await.unwrap();
        match next_data(&server, &mut ws).await {
            Message::Text(got) => {
                assert_eq!(got.len(), text.len(), "fragmented text echo has the wrong length");
                let first_diff = got.bytes().zip(text.bytes()).position(|(a, b)| a != b);
                assert!(first_diff.is_none(), "fragmented text echo differs at byte {first_diff:?}");
            }
            other => panic!("expected the echo of a 16 MiB fragmented text message, got {}", describe(&other)),
        }
        ws.send(Message::text("after fragments")).await.unwrap();
        let got = next_data(&server, &mut ws).await;
        assert_eq!(got, Message::text("after fragments"), "after the fragmented echo, got {}", describe(&got));
    });
}

/// The limit still holds: one byte past max_message_size is refused with 1009.
#[test]
fn one_byte_over_max_message_size_is_1009() {
    let server = Server::start(&[]);
    block_on_with_timeout(LIMIT, async {
        let ws = connect(&server).await;
        let (mut sink, mut stream) = ws.split();
        // Send in the background while reading: the server stops reading once it has refused the message,
        // so the send may never complete (or fail), and the Close frame must be read regardless.
        let sender = tokio::spawn(async move {
            let _ = sink.send(Message::binary(vec![0x5a; DEFAULT_MAX_MESSAGE + 1])).await;
            sink
        });
        let close = loop {
            let msg = tokio::time::timeout(ECHO_WAIT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("no Close from the server within {ECHO_WAIT:?}"));
            match msg {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(other)) => panic!("expected Close 1009, got {}", describe(&other)),
                Some(Err(e)) => panic!("expected Close 1009, got the error {e}; server: {:?}", server_closes(&server)),
                None => panic!("expected Close 1009, the stream ended; server: {:?}", server_closes(&server)),
            }
        };
        sender.abort();
        let close = close.expect("Close without a code; expected 1009");
        assert_eq!(close.code, CloseCode::Size, "expected Close 1009, got {close:?}");
    });
}

/// A send queue far smaller than the largest message must not make a maximum-size message fail.
#[test]
fn small_send_queue_still_echoes_max_size_message() {
    let server = Server::start(&["--max-message-size", "1MiB", "--max-send-queue", "64KiB"]);
    block_on_with_timeout(LIMIT, async {
        let mut ws = connect(&server).await;
        expect_binary_echo(&server, &mut ws, payload(MIB, 1)).await;
        let text = ascii_text(MIB, 2);
        ws.send(Message::text(text.clone())).await.unwrap();
        match next_data(&server, &mut ws).await {
            Message::Text(got) => assert!(got == text, "1 MiB text echo differs"),
            other => panic!("expected the echo of a 1 MiB text message, got {}", describe(&other)),
        }
    });
}
