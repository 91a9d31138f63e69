//! A shard with several rings (a capacity past one registered-file table) numbers its slots across its
//! rings in turn, so the tables indexed by slot (the slots themselves, the application's per-connection
//! states) grow with the connections open. Numbered in blocks, as before, a first connection accepted on
//! the last ring of a shard made the shard write every slot below it at once: with two shards sized for
//! 200,000 in all, 16-22 MB and 10-47 ms without an answer to anyone (for 1,000,000: up to 80 MB and
//! 170 ms), on the first connections of a fresh server.
//!
//! Here: one shard sized for 201,000 connections in rings of 20,000 descriptors (11 rings; the kernel
//! spreads accepts over every ring's listener), 64 WebSocket connections from tokio-tungstenite, each
//! echoed; tetherd's resident memory must grow by what 64 connections need, not by the tables of the rings
//! they landed on (47 MiB with the old numbering).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_tests::{block_on_with_timeout, rss_kib, wait_until, Server};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: usize = 64;
/// 64 connections need well under 1 MiB; the tables up to one slot of a high ring cost tens of MiB.
const GROWTH_LIMIT_KIB: u64 = 6 * 1024;

#[test]
fn the_first_connections_of_a_many_ring_shard_touch_only_what_they_use() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-connections",
        "201000",
        "--slots-per-shard",
        "20000",
        "--ping-interval",
        "1h",
    ]);
    // The start line goes to stderr, which another thread reads: it may land a moment after the stdout
    // line that `Server::start` waited for.
    let eleven = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        !server.log.matching(&["rings_per_shard="]).is_empty()
    }) && !server.log.matching(&["rings_per_shard=11"]).is_empty();
    assert!(eleven, "the premise: one shard of 11 rings; tetherd said:\n{}", server.log.tail(10));
    let url = server.ws_url("/");
    // Settle whatever the start allocates, then take the baseline.
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(server.pid());
    let held = block_on_with_timeout(Duration::from_secs(60), async {
        let mut held = Vec::new();
        for i in 0..CONNECTIONS {
            let (mut ws, _) = connect_async(&url).await.unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let text = format!("hello {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), text),
                other => panic!("connection {i}: no echo: {other:?}"),
            }
            held.push(ws);
        }
        held
    });
    // (The /metrics request that reads it is itself a connection.)
    let open = server.open_connections();
    assert!(open >= CONNECTIONS as u64, "{open} connections open on the server, {CONNECTIONS} expected");
    let after = rss_kib(server.pid());
    let growth = after.saturating_sub(before);
    assert!(
        growth <= GROWTH_LIMIT_KIB,
        "{CONNECTIONS} connections grew tetherd's RSS by {growth} KiB ({before} -> {after} KiB): the slot tables \
         were filled up to a high ring's slots instead of growing with the connections"
    );
    drop(held);
}
