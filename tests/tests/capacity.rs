//! Past `--max-connections` a new connection is answered `503 Service Unavailable` and closed: never a crash,
//! never a stall in the kernel's backlog. A freed slot is usable again at once. Driven by tokio-tungstenite.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_tests::{block_on_with_timeout, Server};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::{Error, Message};

const MAX: usize = 5;

#[test]
fn past_max_connections_new_clients_get_503_and_a_freed_slot_is_reused() {
    let server = Server::start(&["--shards", "1", "--max-connections", &MAX.to_string()]);
    let url = server.ws_url("/");
    block_on_with_timeout(Duration::from_secs(60), async {
        let mut held = Vec::new();
        for i in 0..MAX {
            let (ws, _) = connect_async(&url).await.unwrap_or_else(|e| panic!("connection {i} within the limit: {e}"));
            held.push(ws);
        }
        for attempt in 0..3 {
            match connect_async(&url).await {
                Err(Error::Http(resp)) => {
                    assert_eq!(resp.status().as_u16(), 503, "attempt {attempt} past the limit: {resp:?}")
                }
                Err(e) => panic!("attempt {attempt} past the limit: expected HTTP 503, got {e}"),
                Ok(_) => panic!("attempt {attempt}: connection {} accepted past --max-connections {MAX}", MAX + 1),
            }
        }
        // Those held are untouched by the refusals.
        for (i, ws) in held.iter_mut().enumerate() {
            let text = format!("still here {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        assert_eq!(t.as_str(), text);
                        break;
                    }
                    Ok(Some(Ok(Message::Ping(_)))) => continue,
                    other => panic!("connection {i} after the refusals: {other:?}"),
                }
            }
        }
        // Free one slot: a new connection gets in.
        let mut first = held.remove(0);
        first.close(None).await.unwrap();
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), first.next()).await {}
        let mut admitted = None;
        for _ in 0..50 {
            match connect_async(&url).await {
                Ok((ws, _)) => {
                    admitted = Some(ws);
                    break;
                }
                Err(Error::Http(resp)) if resp.status().as_u16() == 503 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("after a slot was freed: {e}"),
            }
        }
        assert!(admitted.is_some(), "a freed slot was never given to a new connection");
    });
    let rejected = server.counter("tether_rejected_capacity_total");
    assert!(rejected >= 3, "/metrics counts {rejected} capacity rejections, expected at least 3");
}
