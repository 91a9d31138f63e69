//! SIGTERM drains: every open connection receives Close 1001, then tetherd exits 0.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_tests::{block_on_with_timeout, wait_until, Server};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 50;

#[test]
fn sigterm_sends_1001_to_every_connection_and_exits_0() {
    let mut server = Server::start(&["--shards", "2", "--drain-timeout", "5s"]);
    let url = server.ws_url("/");

    let results = block_on_with_timeout(Duration::from_secs(90), async {
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let (mut ws, _) = connect_async(url.as_str()).await.unwrap_or_else(|e| panic!("client {i}: {e}"));
            // Prove each connection is fully up before the signal.
            ws.send(Message::text(format!("hi {i}"))).await.unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        assert_eq!(t, format!("hi {i}"));
                        break;
                    }
                    Some(Ok(Message::Ping(_))) => continue,
                    other => panic!("client {i}: expected echo, got {other:?}"),
                }
            }
            clients.push(ws);
        }
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(100), || server.open_connections()
                >= CLIENTS as u64),
            "/metrics never showed {CLIENTS} open connections"
        );

        server.signal(libc::SIGTERM);

        let waits = clients.into_iter().enumerate().map(|(i, mut ws)| async move {
            // tungstenite answers the Close itself while we read.
            let mut close = None;
            loop {
                match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                    Err(_) => return Err(format!("client {i}: nothing within 20 s of SIGTERM")),
                    Ok(Some(Ok(Message::Close(frame)))) => close = Some(frame),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    Ok(Some(Ok(other))) => return Err(format!("client {i}: unexpected {other:?}")),
                    Ok(Some(Err(e))) => {
                        return match close {
                            Some(c) => Ok(c),
                            None => Err(format!("client {i}: error before any Close: {e}")),
                        }
                    }
                    Ok(None) => return close.ok_or_else(|| format!("client {i}: EOF without a Close frame")),
                }
            }
        });
        futures_util::future::join_all(waits).await
    });

    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(Some(frame)) if frame.code == CloseCode::Away => {}
            Ok(frame) => failures.push(format!("client {i}: Close {frame:?}, want 1001")),
            Err(e) => failures.push(e),
        }
    }
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients did not get Close 1001:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let status = status.expect("tetherd still running 20 s after SIGTERM");
    assert!(status.success(), "tetherd exited with {status} after SIGTERM");
    let lines_1001 = tether_tests::close_lines(&server.log)
        .into_iter()
        .filter(|l| tether_tests::log_field(l, "code") == Some("1001"))
        .count();
    assert_eq!(lines_1001, CLIENTS, "expected one close line with code=1001 per client:\n{}", server.log.tail(20));
}

#[test]
fn sigterm_with_no_connections_exits_0() {
    let mut server = Server::start(&[]);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15)).expect("idle tetherd still running 15 s after SIGTERM");
    assert!(status.success(), "tetherd exited with {status}");
}
