//! wss:// against tetherd with a TLS client nobody here wrote: tokio-tungstenite over rustls (its own
//! tokio-rustls stream, buffered, the opposite of the engine's unbuffered use), trusting the test CA.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tether_tests::{block_on_with_timeout, next_data, workspace_root, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Wss = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const LIMIT: Duration = Duration::from_secs(90);

fn cert(name: &str) -> String {
    workspace_root().join("tests/certs").join(name).display().to_string()
}

fn tls_server(args: &[&str]) -> Server {
    let (c, k) = (cert("localhost.crt"), cert("localhost.key"));
    let mut all = vec!["--tls-cert", c.as_str(), "--tls-key", k.as_str()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A rustls client config that trusts only the test CA.
fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn connect(server: &Server, config: &Arc<rustls::ClientConfig>) -> Wss {
    let url = format!("wss://localhost:{}/", server.port());
    let (ws, resp) =
        tokio_tungstenite::connect_async_tls_with_config(&url, None, false, Some(Connector::Rustls(config.clone())))
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// How long a test waits for the echo of a message.
const ECHO_WAIT: Duration = Duration::from_secs(20);

/// 40 connections at once, each echoing messages from empty to 1 MiB (a 1 MiB message is 64 TLS records
/// each way, and the receive buffers cut records anywhere), text and binary, then a clean close.
#[test]
fn tokio_tungstenite_over_rustls_echoes_every_size() {
    let server = tls_server(&[]);
    let config = client_config();
    block_on_with_timeout(LIMIT, async {
        let mut tasks = Vec::new();
        for i in 0..40usize {
            let mut ws = connect(&server, &config).await;
            tasks.push(tokio::spawn(async move {
                for (n, size) in
                    [0usize, 1, 125, 126, 4095, 4096, 16_384, 16_385, 65_536, 300_000, 1 << 20].into_iter().enumerate()
                {
                    if size >= 300_000 && i % 8 != 0 {
                        continue; // a few connections carry the large ones
                    }
                    let bytes: Vec<u8> = (0..size).map(|k| (k * 31 + i + n) as u8).collect();
                    ws.send(Message::binary(bytes.clone())).await.unwrap();
                    assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::binary(bytes), "conn {i} size {size}");
                    let text: String = (0..size).map(|k| char::from(b'a' + ((k + i) % 26) as u8)).collect();
                    ws.send(Message::text(text.clone())).await.unwrap();
                    assert_eq!(next_data(&mut ws, ECHO_WAIT).await, Message::text(text), "conn {i} size {size}");
                }
                ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() })).await.unwrap();
                // The server's Close echo, then the end of the stream.
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("close answered") {
                        Some(Ok(Message::Close(frame))) => {
                            assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => panic!("conn {i}: error after close: {e}"),
                        None => break,
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert!(server.log.matching(&["panicked"]).is_empty());
}

/// Shutdown over TLS: every connection gets Close 1001 through its TLS stream, and the server exits.
#[test]
fn shutdown_sends_1001_over_tls() {
    let mut server = tls_server(&["--drain-timeout", "5s"]);
    let config = client_config();
    block_on_with_timeout(LIMIT, async {
        let mut conns = Vec::new();
        for _ in 0..20 {
            conns.push(connect(&server, &config).await);
        }
        // Each works first.
        for ws in conns.iter_mut() {
            ws.send(Message::text("before")).await.unwrap();
            assert_eq!(next_data(ws, ECHO_WAIT).await, Message::text("before"));
        }
        server.signal(libc::SIGTERM);
        for ws in conns.iter_mut() {
            match next_data(ws, ECHO_WAIT).await {
                Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
                other => panic!("expected Close 1001, got {other:?}"),
            }
        }
    });
    let status = server.wait_exit(Duration::from_secs(15)).expect("tetherd exits after the drain");
    assert!(status.success(), "{status:?}");
}
