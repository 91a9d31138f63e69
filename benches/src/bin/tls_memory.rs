//! Live heap bytes one established TLS server connection keeps, the way the engine holds it (rustls'
//! unbuffered `UnbufferedServerConnection`), counted by a global allocator that tracks live bytes around
//! mimalloc (tetherd's allocator), and the RSS growth. Handshakes N connections in memory against rustls' own
//! (buffered) client, full handshakes unless `RESUME` is set, drops the clients and everything transient, and
//! reports live bytes per server connection, the peak, and with `BY_SIZE` set the live allocations by size.
//!
//! ```text
//! cargo run --release -p tether-benches --bin tls_memory -- [N] [TICKETS] [aes128|aes256|chacha]
//! ```
//!
//! TICKETS: how many TLS 1.3 session tickets the server sends after a handshake (the engine's `TlsServer`
//! config otherwise); the last argument makes the server prefer that cipher suite.

use std::alloc::{GlobalAlloc, Layout};

/// tetherd's allocator, so RSS growth here is comparable to tetherd's.
use mimalloc::MiMalloc as System;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Live allocations by size (bytes / 8, capped): where the bytes go.
static BY_SIZE: [AtomicIsize; 1025] = [const { AtomicIsize::new(0) }; 1025];

fn bucket(size: usize) -> usize {
    (size / 8).min(1024)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size() as isize, Relaxed) + l.size() as isize;
        PEAK.fetch_max(now.max(0) as usize, Relaxed);
        BY_SIZE[bucket(l.size())].fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        BY_SIZE[bucket(l.size())].fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let now = LIVE.fetch_add(new as isize - l.size() as isize, Relaxed) + new as isize - l.size() as isize;
        PEAK.fetch_max(now.max(0) as usize, Relaxed);
        BY_SIZE[bucket(l.size())].fetch_sub(1, Relaxed);
        BY_SIZE[bucket(new)].fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Feed `incoming` to the unbuffered server; returns what it wants sent.
fn server_step(conn: &mut UnbufferedServerConnection, incoming: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let st = conn.process_tls_records(incoming);
        let discard = st.discard;
        let mut stop = false;
        match st.state.expect("server state") {
            ConnectionState::EncodeTlsData(mut e) => {
                let mut buf = vec![0u8; 16 << 10];
                let n = e.encode(&mut buf).expect("encode");
                out.extend_from_slice(&buf[..n]);
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::ReadTraffic(mut r) => while r.next_record().is_some() {},
            _ => stop = true,
        }
        incoming.drain(..discard);
        if stop {
            return out;
        }
    }
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(10_000, |a| a.parse().expect("N"));
    let tickets: Option<usize> = args.next().map(|a| a.parse().expect("tickets"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/certs");
    let server = tether::TlsServer::from_pem_files(root.join("localhost.crt"), root.join("localhost.key")).unwrap();
    let mut config = (**server.config()).clone();
    if let Some(t) = tickets {
        config.send_tls13_tickets = t;
    }
    let prefer = args.next();
    if let Some(first) = prefer.as_deref() {
        let want = match first {
            "aes128" => rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            "aes256" => rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            "chacha" => rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            other => panic!("unknown suite {other}"),
        };
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites.sort_by_key(|s| s.suite() != want);
        let mut c2 = rustls::ServerConfig::builder_with_provider(Arc::new(p))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(config.cert_resolver.clone());
        c2.ignore_client_order = true;
        c2.send_tls13_tickets = config.send_tls13_tickets;
        config = c2;
    }
    let config = Arc::new(config);
    let client = tether::ClientTls::with_ca_file(root.join("ca.crt"), "localhost").unwrap();
    // Every connection a full handshake (distinct clients), unless RESUME is set.
    let mut client_config = (**client.rustls_config()).clone();
    if std::env::var_os("RESUME").is_none() {
        client_config.resumption = rustls::client::Resumption::disabled();
    }
    let client_config = Arc::new(client_config);

    let base = LIVE.load(Relaxed);
    let mut servers = Vec::with_capacity(n);
    let before_loop = LIVE.load(Relaxed);
    let rss_before = rss_kib();
    let sizes_before: Vec<isize> = BY_SIZE.iter().map(|a| a.load(Relaxed)).collect();
    for _ in 0..n {
        let mut s = Box::new(UnbufferedServerConnection::new(config.clone()).unwrap());
        let mut c = rustls::ClientConnection::new(client_config.clone(), "localhost".try_into().unwrap()).unwrap();
        // Ping-pong until both are done.
        for _ in 0..10 {
            let mut to_server = Vec::new();
            c.write_tls(&mut to_server).unwrap();
            let to_client = server_step(&mut s, &mut to_server);
            if !to_client.is_empty() {
                c.read_tls(&mut &to_client[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            if !c.is_handshaking() && !c.wants_write() && to_client.is_empty() {
                break;
            }
        }
        assert!(!c.is_handshaking());
        // One message each way, as a WebSocket upgrade would.
        c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut to_server = Vec::new();
        c.write_tls(&mut to_server).unwrap();
        let _ = server_step(&mut s, &mut to_server);
        let mut sink = [0u8; 64];
        let _ = c.reader().read(&mut sink);
        drop(c);
        servers.push(s);
    }
    let rss_after = rss_kib();
    let live = LIVE.load(Relaxed) - before_loop - (n * std::mem::size_of::<usize>()) as isize;
    if std::env::var_os("BY_SIZE").is_some() {
        for (i, a) in BY_SIZE.iter().enumerate() {
            let d = a.load(Relaxed) - sizes_before[i];
            if d.unsigned_abs() * 20 >= n {
                println!("  size ~{:>5} B: {:+.2} live allocations per connection", i * 8, d as f64 / n as f64);
            }
        }
    }
    println!(
        "{n} established server connections (tickets {}, suite preference {:?}): {} live bytes each (size_of UnbufferedServerConnection {} B); peak live {:.1} MiB; base {} B",
        config.send_tls13_tickets,
        prefer,
        live / n as isize,
        std::mem::size_of::<UnbufferedServerConnection>(),
        PEAK.load(Relaxed) as f64 / (1 << 20) as f64,
        base
    );
    println!("RSS growth (mimalloc): {} bytes per connection", (rss_after - rss_before) * 1024 / n as i64);
}
