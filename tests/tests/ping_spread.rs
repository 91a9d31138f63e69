//! Keepalive spread: connections that open together must not be pinged together. A connection's first
//! server ping is due at a random point of its first ping interval (`--ping-jitter on`, the default), so
//! a mass connect (a ramp, a reconnect storm after a deploy) does not synchronise every ping that follows.
//!
//! 200 raw WebSocket connections open at once against `--ping-interval 4s`; each one records when its
//! first Ping frame arrives, measured from its own 101, and answers every ping with a pong. The arrival
//! times must cover the whole interval: each quarter holds at least 10% of the first pings and the spread
//! (max - min) exceeds half the interval. With `--ping-jitter off` every first ping comes one interval
//! after the open, all in the last quarter within a tick or two of each other, and this test fails.
//!
//! The same run checks that the default tick keeps the pings that fall due close together from going out as
//! one burst: every deadline fires at the first tick at or after it, so with one shard the first pings arrive
//! in groups one tick apart. Consecutive groups must often be less than 95 ms apart (the 10 ms default); with
//! `--tick 100ms` (the old default: 2,000-ping bursts per shard at 200,000 connections and 5 s pings) they
//! are a multiple of 100 ms apart and this test fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_tests::raw::{self, OP_CLOSE, OP_PING, OP_PONG};
use tether_tests::{block_on_with_timeout, parse_http_head, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 200;
const INTERVAL: Duration = Duration::from_secs(4);
/// How long past one interval each connection keeps reading (the first ping may land a tick or two late).
const SLACK: Duration = Duration::from_millis(1200);
/// The pong timeout is far beyond the read window: no connection may be closed while it is watched,
/// answered or not. One shard: the ticks of one wheel (each shard's wheel has its own epoch). The tick is
/// the default.
const ARGS: &[&str] = &["--ping-interval", "4s", "--pong-timeout", "20s", "--shards", "1"];

/// What one connection saw.
#[derive(Debug)]
struct Seen {
    /// When its 101 arrived.
    opened: Instant,
    /// Its first Ping frame, measured from `opened`.
    first_ping: Option<Duration>,
    pings: usize,
}

/// One unmasked server frame at the front of `buf`: (opcode, payload, bytes used), or `None` if
/// incomplete.
fn parse_frame(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err(format!("server sent a masked frame (opcode {opcode:#x})"));
    }
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((opcode, buf[at..at + len].to_vec(), at + len)))
}

/// Connects, upgrades, then reads for one interval plus `SLACK` after the 101, answering pings.
async fn watch(addr: SocketAddr) -> Result<Seen, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(raw::upgrade_request(addr, "/").as_bytes()).await.map_err(|e| format!("upgrade write: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("reading the 101: {e}"))?;
        if n == 0 {
            return Err(format!("EOF before the 101: {:?}", String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let opened = Instant::now();
    let resp = parse_http_head(&buf[..head_end]).map_err(|e| format!("bad upgrade response: {e}"))?;
    if resp.status != 101 {
        return Err(format!("upgrade answered {resp:?}"));
    }
    buf.drain(..head_end);

    let until = opened + INTERVAL + SLACK;
    let mut seen = Seen { opened, first_ping: None, pings: 0 };
    loop {
        while let Some((opcode, payload, used)) = parse_frame(&buf)? {
            buf.drain(..used);
            match opcode {
                OP_PING => {
                    seen.first_ping.get_or_insert(opened.elapsed());
                    seen.pings += 1;
                    s.write_all(&raw::masked(true, OP_PONG, &payload)).await.map_err(|e| format!("pong: {e}"))?;
                }
                OP_CLOSE => return Err(format!("server closed after {:?}: {payload:?}", opened.elapsed())),
                op => return Err(format!("unexpected opcode {op:#x} on an idle connection")),
            }
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, s.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Err(format!("EOF after {:?}", opened.elapsed())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("read after {:?}: {e}", opened.elapsed())),
        }
    }
    // Leave politely; the socket is dropped right after.
    let _ = s.write_all(&raw::close_frame(1000, "")).await;
    Ok(seen)
}

#[test]
fn first_pings_of_a_mass_connect_are_spread_over_the_interval() {
    let server = Server::start(ARGS);
    let addr = server.addr;
    let started = Instant::now();
    let seen: Vec<Seen> = block_on_with_timeout(Duration::from_secs(25), async move {
        let tasks: Vec<_> = (0..CONNECTIONS).map(|_| tokio::spawn(watch(addr))).collect();
        let mut seen = Vec::with_capacity(CONNECTIONS);
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.expect("connection task panicked") {
                Ok(s) => seen.push(s),
                Err(e) => panic!("connection {i}: {e}"),
            }
        }
        seen
    });
    let runtime = started.elapsed();

    // The premise: they really opened together (well within a quarter interval of each other).
    let first_open = seen.iter().map(|s| s.opened).min().unwrap();
    let last_open = seen.iter().map(|s| s.opened).max().unwrap();
    let open_spread = last_open - first_open;
    assert!(
        open_spread < INTERVAL / 4,
        "{CONNECTIONS} connections took {open_spread:?} to open: not a mass connect, the test proves nothing"
    );

    let unpinged = seen.iter().filter(|s| s.first_ping.is_none()).count();
    assert_eq!(unpinged, 0, "{unpinged} of {CONNECTIONS} connections got no ping within {:?}", INTERVAL + SLACK);

    let mut firsts: Vec<Duration> = seen.iter().map(|s| s.first_ping.unwrap()).collect();
    firsts.sort();
    let mut quarters = [0usize; 4];
    for t in &firsts {
        let q = (t.as_secs_f64() / INTERVAL.as_secs_f64() * 4.0) as usize;
        quarters[q.min(3)] += 1;
    }
    let (min, max) = (firsts[0], firsts[firsts.len() - 1]);
    let pct = |p: usize| firsts[(firsts.len() - 1) * p / 100];
    let summary = format!(
        "first pings after the 101 (interval {INTERVAL:?}, {CONNECTIONS} connections opened within \
         {open_spread:?}): min {min:?} p25 {:?} p50 {:?} p75 {:?} max {max:?}; per quarter {quarters:?}",
        pct(25),
        pct(50),
        pct(75)
    );
    eprintln!("{summary}; pings seen {}; runtime {runtime:?}", seen.iter().map(|s| s.pings).sum::<usize>());

    let floor = CONNECTIONS / 10;
    for (i, n) in quarters.iter().enumerate() {
        assert!(
            *n >= floor,
            "quarter {i} of the first interval holds {n} first pings (< {floor}, 10%): the first pings of \
             connections that opened together are not spread over the interval (--ping-jitter?); {summary}"
        );
    }
    assert!(
        max - min > INTERVAL / 2,
        "first pings span only {:?} (<= half of {INTERVAL:?}): connections that opened together are pinged \
         together; {summary}",
        max - min
    );
    // Groups of first pings: arrivals within 5 ms of each other went out at the same tick. With 200 first
    // pings spread over 4 s, a 10 ms tick puts most groups 10-90 ms apart; a 100 ms tick puts none there.
    let mut arrivals: Vec<Instant> = seen.iter().map(|s| s.opened + s.first_ping.unwrap()).collect();
    arrivals.sort();
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    let short = gaps.iter().filter(|g| **g > Duration::from_millis(5) && **g < Duration::from_millis(95)).count();
    let groups = 1 + gaps.iter().filter(|g| **g > Duration::from_millis(5)).count();
    assert!(
        short >= CONNECTIONS / 4,
        "only {short} of {groups} groups of first pings follow the one before by 5-95 ms (< {}): the pings \
         due within a tick go out together, a coarse tick (the default is 10 ms); {summary}",
        CONNECTIONS / 4
    );
    eprintln!("{groups} groups of first pings, {short} of them 5-95 ms after the one before");
    assert!(
        server.log.matching(&["pong timeout"]).is_empty(),
        "a connection that answered its pings was timed out:\n{}",
        server.log.tail(20)
    );
}
