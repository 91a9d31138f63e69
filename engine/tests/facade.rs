//! The async facade against real sockets on loopback, with tokio-tungstenite clients: order per connection
//! (events and echoes), back-pressure (a client that stops reading makes `send().await` wait while memory
//! stays bounded, and a waiting send fails when its connection goes), events under load (500 connections x
//! 200 messages through a channel far smaller than the traffic), and the slow-consumer policy.
//!
//! Each test runs alone (a lock): the back-pressure test reads the process's RSS.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tether::{AsyncEngine, Config, ConnId, Event, Events, FacadeOptions, Initiator, OwnedMessage, SendError};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

static SERIAL: Mutex<()> = Mutex::new(());

/// Run one test's body on its own runtime, one test at a time.
fn run<F: Future>(body: F) -> F::Output {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(body)
}

fn config() -> Config {
    Config {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        shards: 2,
        max_connections: 2000,
        // No pings: the back-pressure test's client must see nothing but our messages.
        ping_interval: None,
        ..Config::default()
    }
}

fn start(config: Config, options: FacadeOptions) -> (AsyncEngine, Events, String) {
    let (engine, events) = AsyncEngine::start(config, options).expect("engine starts");
    let url = format!("ws://{}/", engine.local_addr().expect("listening"));
    (engine, events, url)
}

async fn stop(engine: AsyncEngine) {
    engine.shutdown(Duration::ZERO);
    timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || engine.wait()))
        .await
        .expect("shards exit within 10 s")
        .unwrap();
}

async fn next_event(events: &mut Events) -> Event {
    timeout(Duration::from_secs(10), events.recv()).await.expect("an event within 10 s").expect("engine running")
}

fn close_frame(reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame { code: CloseCode::Normal, reason: reason.into() }))
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Wait until `value()` has not changed for `still` (bounded by 10 s); returns the value then.
async fn settle(value: impl Fn() -> usize, still: Duration) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = value();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = value();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= still {
            break;
        }
    }
    last
}

/// Wait until `cond()` holds (bounded by 10 s); whether it did.
async fn wait_until(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[test]
fn one_connection_sees_opened_its_messages_in_order_then_closed_and_gets_its_echoes_in_order() {
    const N: usize = 10_000;
    run(async {
        let (engine, mut events, url) = start(config(), FacadeOptions::default());
        let handle = engine.handle();
        // The program: log every event, echo every message with send().await.
        let program = tokio::spawn(async move {
            let mut log = Vec::new();
            loop {
                let event = next_event(&mut events).await;
                if let Event::Message { conn, message } = &event {
                    handle.send(*conn, message.clone()).await.expect("echo queued");
                }
                let closed = matches!(event, Event::Closed { .. });
                log.push(event);
                if closed {
                    return log;
                }
            }
        });

        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
        let (mut sink, mut stream) = ws.split();
        let reader = tokio::spawn(async move {
            let mut echoed = Vec::with_capacity(N);
            while echoed.len() < N {
                match timeout(Duration::from_secs(10), stream.next()).await.expect("an echo within 10 s") {
                    Some(Ok(WsMessage::Text(t))) => echoed.push(t),
                    other => panic!("expected an echo, got {other:?}"),
                }
            }
            echoed
        });
        for i in 0..N {
            sink.feed(WsMessage::Text(i.to_string())).await.unwrap();
        }
        sink.flush().await.unwrap();
        let echoed = timeout(Duration::from_secs(30), reader).await.expect("echoes within 30 s").unwrap();
        let sent: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(echoed, sent, "echoes in the order sent");
        sink.send(close_frame("done")).await.unwrap();

        let log = timeout(Duration::from_secs(30), program).await.expect("Closed within 30 s").unwrap();
        assert_eq!(log.len(), N + 2, "Opened, {N} messages, Closed");
        let Event::Opened { conn, peer } = &log[0] else { panic!("first event {:?}", log[0]) };
        assert!(peer.is_some_and(|p| p.ip().is_loopback()), "peer {peer:?}");
        for (i, event) in log[1..=N].iter().enumerate() {
            match event {
                Event::Message { conn: c, message: OwnedMessage::Text(t) } if c == conn => {
                    assert_eq!(t, &i.to_string(), "message {i} out of order")
                }
                other => panic!("event {} should be message {i}: {other:?}", i + 1),
            }
        }
        match &log[N + 1] {
            Event::Closed { conn: c, report } => {
                assert_eq!(c, conn);
                assert_eq!((report.info.code, report.info.reason.as_str()), (1000, "done"));
                assert_eq!(report.info.initiator, Initiator::Peer);
            }
            other => panic!("last event {other:?}"),
        }
        // A closed connection takes nothing.
        assert_eq!(engine.handle().send(*conn, "late").await, Err(SendError::NotOpen));
        stop(engine).await;
    });
}

#[test]
fn a_client_that_stops_reading_makes_send_wait_with_memory_bounded_then_every_send_completes() {
    const MIB: usize = 1 << 20;
    const N: usize = 128;
    run(async {
        let config = Config { shards: 1, max_send_queue: 64 << 10, ..config() };
        let (engine, mut events, url) = start(config, FacadeOptions::default());
        let handle = engine.handle();
        // Upgraded, then never polled: tungstenite reads nothing from the socket until it is.
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
        let Event::Opened { conn, .. } = next_event(&mut events).await else { panic!("Opened first") };

        let rss_before = rss_bytes();
        let done = Arc::new(AtomicUsize::new(0));
        let sender = tokio::spawn({
            let (handle, done) = (handle.clone(), done.clone());
            async move {
                for i in 0..N {
                    handle.send(conn, vec![i as u8; MIB]).await?;
                    done.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<(), SendError>(())
            }
        });
        // The kernel's socket buffers take a few messages, then the queue stays full and send() waits.
        let stalled = settle(|| done.load(Ordering::SeqCst), Duration::from_millis(800)).await;
        assert!(stalled < N / 4, "{stalled} of {N} 1 MiB sends completed against a client that reads nothing");
        assert!(!sender.is_finished(), "the next send must still be pending");
        let facade = handle.stats();
        assert_eq!(facade.sends_waiting, 1, "one send parked on the shard: {facade:?}");
        // try_send does not wait, and does not overtake the waiting send: it is dropped, and counted.
        handle.try_send(conn, "dropped").unwrap();
        let dropped = settle(|| handle.stats().try_send_dropped as usize, Duration::from_millis(200)).await;
        assert_eq!(dropped, 1);
        // Every completed send is in the engine's queue or the kernel's; nothing else was queued.
        assert_eq!(handle.engine().stats().messages_out, stalled as u64);
        let grown = rss_bytes().saturating_sub(rss_before);
        println!("{stalled} of {N} sends completed before the stall; RSS grew by {} KiB", grown >> 10);
        assert!(grown < 40 * MIB, "RSS grew by {} MiB while {N} MiB were being sent", grown / MIB);

        // The client reads: every message arrives, whole and in order, and every send completes.
        let reader = tokio::spawn(async move {
            for i in 0..N {
                match timeout(Duration::from_secs(10), ws.next()).await.expect("a message within 10 s") {
                    Some(Ok(WsMessage::Binary(b))) => {
                        assert_eq!(b.len(), MIB);
                        assert!(b.iter().all(|x| *x == i as u8), "message {i} has the wrong content");
                    }
                    other => panic!("message {i}: {other:?}"),
                }
            }
            ws
        });
        timeout(Duration::from_secs(60), sender).await.expect("sends complete once the client reads").unwrap().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), N);
        let mut ws = timeout(Duration::from_secs(60), reader).await.expect("client reads all").unwrap();
        // Once the shard has seen its last send complete (every frame counted out: 10-byte header each), the
        // queue is empty: a try_send goes out (and the one dropped earlier never does).
        let frames = (N * (MIB + 10)) as u64;
        assert!(wait_until(|| handle.engine().stats().bytes_out >= frames).await, "every frame counted out");
        handle.try_send(conn, "after").unwrap();
        match timeout(Duration::from_secs(10), ws.next()).await.expect("a message within 10 s") {
            Some(Ok(WsMessage::Text(t))) => assert_eq!(t, "after"),
            other => panic!("expected the try_send: {other:?}"),
        }
        assert_eq!(handle.stats().sends_waiting, 0);
        stop(engine).await;
    });
}

#[test]
fn a_waiting_send_fails_not_open_when_its_connection_closes() {
    const MIB: usize = 1 << 20;
    run(async {
        // The client never answers our Close (it reads nothing): the close deadline ends it.
        let config =
            Config { shards: 1, max_send_queue: 64 << 10, close_timeout: Duration::from_millis(500), ..config() };
        let (engine, mut events, url) = start(config, FacadeOptions::default());
        let handle = engine.handle();
        for how in ["program closes", "client goes away"] {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
            let Event::Opened { conn, .. } = next_event(&mut events).await else { panic!("Opened first") };
            let sender = tokio::spawn({
                let handle = handle.clone();
                async move {
                    for _ in 0..256 {
                        handle.send(conn, vec![7u8; MIB]).await?;
                    }
                    Ok::<(), SendError>(())
                }
            });
            let waiting = settle(|| handle.stats().sends_waiting as usize, Duration::from_millis(500)).await;
            assert_eq!(waiting, 1, "{how}: a send waits for room");
            match how {
                "program closes" => handle.close(conn, 1000, "bye").unwrap(),
                _ => drop(ws),
            }
            let result = timeout(Duration::from_secs(10), sender).await.expect("the send resolves").unwrap();
            assert_eq!(result, Err(SendError::NotOpen), "{how}");
            assert_eq!(handle.stats().sends_waiting, 0, "{how}");
            let closed = loop {
                match next_event(&mut events).await {
                    Event::Closed { conn: c, report } if c == conn => break report,
                    Event::Closed { .. } | Event::Opened { .. } => panic!("{how}: another connection's event"),
                    Event::Message { .. } => {}
                }
            };
            let expected = if how == "program closes" { Initiator::Local } else { Initiator::Abnormal };
            assert_eq!(closed.info.initiator, expected, "{how}: {closed:?}");
        }
        stop(engine).await;
    });
}

#[test]
fn five_hundred_connections_of_two_hundred_messages_arrive_whole_and_in_order_through_a_small_channel() {
    const CLIENTS: usize = 500;
    const MESSAGES: usize = 200;
    run(async {
        // 64 events in the channel for 101,000: the shards' backlogs carry the rest.
        let options = FacadeOptions { event_capacity: 64, backlog_bytes: 64 << 20 };
        let (engine, mut events, url) = start(config(), options);
        let handle = engine.handle();
        let mut clients = Vec::with_capacity(CLIENTS);
        for client in 0..CLIENTS {
            let url = url.clone();
            clients.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
                for seq in 0..MESSAGES {
                    ws.feed(WsMessage::Text(format!("{client}:{seq}"))).await.unwrap();
                }
                ws.send(close_frame("done")).await.unwrap();
                // Until the server's Close answer (the engine answers it whatever the consumer does).
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            }));
        }
        for c in clients {
            timeout(Duration::from_secs(60), c).await.expect("client done within 60 s").unwrap();
        }
        // Nothing read yet: the shards hold what the channel could not.
        let held = handle.stats().events_backlogged;
        println!("{held} events held back in the shards before the consumer read");
        assert!(held > 50_000, "only {held} events held back");

        let mut seen: HashMap<ConnId, (Option<usize>, usize, bool)> = HashMap::new(); // client, next seq, closed
        let mut closed = 0;
        while closed < CLIENTS {
            match next_event(&mut events).await {
                Event::Opened { conn, .. } => {
                    assert!(seen.insert(conn, (None, 0, false)).is_none(), "{conn} opened twice");
                }
                Event::Message { conn, message } => {
                    let entry = seen.get_mut(&conn).expect("a message before its Opened");
                    assert!(!entry.2, "{conn}: a message after Closed");
                    let OwnedMessage::Text(text) = message else { panic!("binary message") };
                    let (client, seq) = text.split_once(':').unwrap();
                    let (client, seq): (usize, usize) = (client.parse().unwrap(), seq.parse().unwrap());
                    assert_eq!(*entry.0.get_or_insert(client), client, "{conn}: messages of two clients");
                    assert_eq!(seq, entry.1, "{conn}: message out of order");
                    entry.1 += 1;
                }
                Event::Closed { conn, report } => {
                    let entry = seen.get_mut(&conn).expect("Closed before Opened");
                    assert!(!entry.2, "{conn} closed twice");
                    assert_eq!(entry.1, MESSAGES, "{conn}: Closed after {} messages", entry.1);
                    assert_eq!(report.info.code, 1000);
                    entry.2 = true;
                    closed += 1;
                }
            }
        }
        assert_eq!(seen.len(), CLIENTS);
        let mut clients: Vec<usize> = seen.values().map(|e| e.0.expect("every connection sent")).collect();
        clients.sort_unstable();
        assert_eq!(clients, (0..CLIENTS).collect::<Vec<_>>(), "one connection per client");
        assert!(events.try_recv().is_none(), "nothing after the last Closed");
        let stats = handle.stats();
        assert_eq!((stats.slow_consumer_closes, stats.messages_dropped, stats.events_backlogged), (0, 0, 0));
        stop(engine).await;
    });
}

#[test]
fn a_consumer_that_falls_behind_the_backlog_bound_gets_the_connection_closed_1008_in_order() {
    const SENT: usize = 2000;
    run(async {
        let options = FacadeOptions { event_capacity: 4, backlog_bytes: 64 << 10 };
        let (engine, mut events, url) = start(Config { shards: 1, ..config() }, options);
        let handle = engine.handle();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
        let payload = "x".repeat(1000);
        for seq in 0..SENT {
            // A closed connection refuses further writes: stop there.
            if ws.send(WsMessage::Text(format!("{seq}:{payload}"))).await.is_err() {
                break;
            }
        }
        // The engine closes the connection: the client sees 1008 "consumer too slow".
        let close = loop {
            match timeout(Duration::from_secs(10), ws.next()).await.expect("the close within 10 s") {
                Some(Ok(WsMessage::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("expected a Close, got {other:?}"),
            }
        };
        let close = close.expect("a close code");
        assert_eq!((u16::from(close.code), close.reason.as_ref()), (1008, "consumer too slow"));
        // While the backlog is past its bound, new upgrades are refused.
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
            other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
        }

        // The consumer catches up: Opened, an unbroken prefix of the messages, Closed 1008.
        let Event::Opened { conn, .. } = next_event(&mut events).await else { panic!("Opened first") };
        let mut delivered = 0;
        let report = loop {
            match next_event(&mut events).await {
                Event::Message { conn: c, message: OwnedMessage::Text(t) } if c == conn => {
                    assert_eq!(t.split_once(':').unwrap().0, delivered.to_string(), "messages in order");
                    delivered += 1;
                }
                Event::Closed { conn: c, report } if c == conn => break report,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!((report.info.code, report.info.reason.as_str()), (1008, "consumer too slow"));
        assert!(delivered > 0 && delivered < SENT, "{delivered} of {SENT} delivered");
        let stats = handle.stats();
        println!("{delivered} of {SENT} messages delivered before the 1008 close; {stats:?}");
        assert_eq!((stats.slow_consumer_closes, stats.upgrades_refused), (1, 1), "{stats:?}");
        assert!(stats.messages_dropped >= 1, "{stats:?}");
        assert_eq!(stats.events_backlogged, 0);
        // Caught up: upgrades are accepted again.
        let (_ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade after catching up");
        assert!(matches!(next_event(&mut events).await, Event::Opened { .. }));
        stop(engine).await;
    });
}
