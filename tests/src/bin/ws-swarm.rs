//! ws-swarm: holds many tokio-tungstenite connections open in one process, for tests that need more
//! connections than one process's fd limit allows (run several swarms).
//!
//! ```text
//! ws-swarm URL COUNT SOURCE_IPS [--concurrency N] [--deadline SECS] [--release-file PATH]
//! ```
//!
//! SOURCE_IPS is a comma-separated list (e.g. `127.0.0.2,127.0.0.3`); connection `i` binds to
//! `SOURCE_IPS[i % len]` so each source address needs fewer ephemeral ports. Protocol on stdout:
//! `open N` once all connections are open, then (after a line on stdin, or once the release file
//! exists) every connection sends a message, checks its echo, closes with 1000 and checks the Close
//! reply; the last line is `swarm ok opened=N echoed=N closed=N` (exit 0) or `swarm FAILED ...` (exit 1).
//! While holding, every connection keeps reading, so server pings are answered. The process exits
//! non-zero on its own once `--deadline` passes or stdin closes before the release.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

struct Args {
    url: String,
    addr: SocketAddr,
    count: usize,
    sources: Vec<IpAddr>,
    concurrency: usize,
    deadline: Duration,
    release_file: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut positional = Vec::new();
    let mut concurrency = 256;
    let mut deadline = Duration::from_secs(300);
    let mut release_file = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--concurrency" => concurrency = it.next().context("--concurrency N")?.parse()?,
            "--deadline" => deadline = Duration::from_secs(it.next().context("--deadline SECS")?.parse()?),
            "--release-file" => release_file = Some(it.next().context("--release-file PATH")?.into()),
            _ if a.starts_with("--") => bail!("unknown flag {a}"),
            _ => positional.push(a),
        }
    }
    let [url, count, sources] = <[String; 3]>::try_from(positional).map_err(|_| {
        anyhow!("usage: ws-swarm URL COUNT SOURCE_IPS [--concurrency N] [--deadline SECS] [--release-file PATH]")
    })?;
    let hostport =
        url.strip_prefix("ws://").context("URL must start with ws://")?.split('/').next().unwrap().to_string();
    let addr: SocketAddr = hostport.parse().context("URL host must be IP:PORT")?;
    let sources = sources
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpAddr>().with_context(|| format!("source IP {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    if sources.is_empty() {
        bail!("no source IPs");
    }
    Ok(Args {
        url,
        addr,
        count: count.parse().context("COUNT")?,
        sources,
        concurrency: concurrency.max(1),
        deadline,
        release_file,
    })
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

async fn open(args: &Args, i: usize) -> Result<Ws> {
    let source = args.sources[i % args.sources.len()];
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(args.addr).await.with_context(|| format!("connect {} from {source}", args.addr))?;
    stream.set_nodelay(true)?;
    let (ws, resp) =
        client_async(args.url.as_str(), stream).await.with_context(|| format!("handshake from {source}"))?;
    if resp.status().as_u16() != 101 {
        bail!("handshake answered {}", resp.status());
    }
    Ok(ws)
}

#[derive(Default)]
struct Counters {
    opened: AtomicUsize,
    echoed: AtomicUsize,
    closed: AtomicUsize,
}

/// Holds one connection: reads (answering pings) until released, then echo + close handshake.
async fn run_conn(mut ws: Ws, i: usize, mut release: watch::Receiver<bool>, counters: Arc<Counters>) -> Result<()> {
    // Hold: keep reading so tungstenite answers pings; the server must not send data now.
    loop {
        tokio::select! {
            changed = release.wait_for(|r| *r) => {
                changed.map_err(|_| anyhow!("released channel dropped"))?;
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => bail!("conn {i}: unexpected message while holding: {other:?}"),
                Some(Err(e)) => bail!("conn {i}: error while holding: {e}"),
                None => bail!("conn {i}: server closed the connection while holding"),
            }
        }
    }
    let text = format!("swarm message {i}");
    ws.send(Message::text(text.clone())).await.with_context(|| format!("conn {i}: send"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Err(_) => bail!("conn {i}: no echo within 60 s"),
            Ok(Some(Ok(Message::Text(t)))) if t == text => break,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => bail!("conn {i}: expected echo {text:?}, got {other:?}"),
        }
    }
    counters.echoed.fetch_add(1, Ordering::Relaxed);
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "swarm done".into() }))
        .await
        .with_context(|| format!("conn {i}: sending close"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Err(_) => bail!("conn {i}: no Close reply within 60 s"),
            Ok(Some(Ok(Message::Close(Some(frame))))) if frame.code == CloseCode::Normal => break,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => bail!("conn {i}: expected Close 1000 reply, got {other:?}"),
        }
    }
    // After the close handshake the server closes TCP: the stream must end.
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        Err(_) => bail!("conn {i}: TCP not closed within 60 s of the close handshake"),
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(m))) => bail!("conn {i}: message after close: {m:?}"),
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn wait_release(args: &Args) -> Result<()> {
    let file = args.release_file.clone();
    let file_wait = async move {
        match file {
            Some(path) => loop {
                if path.exists() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            None => std::future::pending().await,
        }
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        line = stdin.next_line() => match line {
            Ok(Some(_)) => Ok(()),
            // With a release file, a closed stdin is normal.
            Ok(None) | Err(_) if args.release_file.is_some() => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => bail!("stdin closed before the release"),
        },
        _ = file_wait => Ok(()),
    }
}

async fn swarm(args: Arc<Args>) -> Result<(usize, usize, usize)> {
    let counters = Arc::new(Counters::default());
    let (release_tx, release_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut confirmed = 0;

    for i in 0..args.count {
        let permit = limit.clone().acquire_owned().await?;
        let args = args.clone();
        let counters = counters.clone();
        let release = release_rx.clone();
        let opened_tx = opened_tx.clone();
        tasks.spawn(async move {
            let ws = match tokio::time::timeout(Duration::from_secs(60), open(&args, i)).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    let e = e.context(format!("opening conn {i}"));
                    let _ = opened_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
                Err(_) => {
                    let _ = opened_tx.send(Err(anyhow!("opening conn {i}: timed out after 60 s")));
                    bail!("opening conn {i}: timed out");
                }
            };
            drop(permit);
            counters.opened.fetch_add(1, Ordering::Relaxed);
            let _ = opened_tx.send(Ok(()));
            run_conn(ws, i, release, counters).await
        });
        // Fail fast: if a connection already failed to open, stop opening more.
        while let Ok(msg) = opened_rx.try_recv() {
            msg?;
            confirmed += 1;
        }
    }
    drop(opened_tx);
    for _ in confirmed..args.count {
        match opened_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => bail!("connection tasks ended before all were open"),
        }
    }
    println!("open {}", counters.opened.load(Ordering::Relaxed));
    eprintln!("ws-swarm: {} connections open in {:.1?}", args.count, started.elapsed());

    // Hold until released; a connection failing meanwhile (server dropped it) fails the swarm.
    tokio::select! {
        r = wait_release(&args) => r?,
        Some(joined) = tasks.join_next() => {
            return match joined {
                Ok(Err(e)) => Err(e.context("a connection failed while holding")),
                Ok(Ok(())) => Err(anyhow!("a connection finished before the release")),
                Err(e) => Err(anyhow!("connection task panicked: {e}")),
            };
        }
    }
    let _ = release_tx.send(true);

    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("task panicked: {e}")),
        }
    }
    let opened = counters.opened.load(Ordering::Relaxed);
    let echoed = counters.echoed.load(Ordering::Relaxed);
    let closed = counters.closed.load(Ordering::Relaxed);
    if !errors.is_empty() {
        for e in errors.iter().take(10) {
            eprintln!("ws-swarm: {e}");
        }
        bail!(
            "{} of {} connections failed (opened={opened} echoed={echoed} closed={closed}); first: {}",
            errors.len(),
            args.count,
            errors[0]
        );
    }
    Ok((opened, echoed, closed))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("ws-swarm: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let deadline = args.deadline;
    let result = rt.block_on(async {
        match tokio::time::timeout(deadline, swarm(args.clone())).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("deadline of {deadline:?} passed")),
        }
    });
    match result {
        Ok((opened, echoed, closed)) => {
            println!("swarm ok opened={opened} echoed={echoed} closed={closed}");
            std::process::exit(0);
        }
        Err(e) => {
            println!("swarm FAILED {e:#}");
            eprintln!("ws-swarm: FAILED: {e:#}");
            // Exit without waiting for the runtime to drop thousands of sockets gracefully.
            std::process::exit(1);
        }
    }
}
