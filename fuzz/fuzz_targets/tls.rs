//! The TLS layer (engine/src/tls/conn.rs) of a server connection fed arbitrary ciphertext in arbitrary
//! pieces: the first byte of the input picks the piece size, the rest is what a peer sends. Checked: no
//! panic (rustls misused, e.g. shown a buffer without the bytes it still refers to, panics inside rustls),
//! no plaintext before a handshake could have finished, bounded buffering; and, after a failure, that what
//! is left to send (the server's flight and an alert) is bounded. The seeds (fuzz/corpus/tls) are real ClientHellos (OpenSSL's, with
//! and without session tickets), so mutations get past the first record.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether::tls::conn::TlsConn;
use tether::TlsServer;

fn server() -> &'static TlsServer {
    static S: OnceLock<TlsServer> = OnceLock::new();
    S.get_or_init(|| {
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/certs");
        TlsServer::from_pem_files(certs.join("localhost.crt"), certs.join("localhost.key")).expect("test cert")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let piece = 1 + (sel as usize % 64) * 37;
    let mut conn = TlsConn::server(server().config()).expect("server connection");
    let mut plain = Vec::new();
    let mut input = rest.to_vec();
    for chunk in input.chunks_mut(piece) {
        match conn.receive(chunk, &mut plain) {
            Ok(_) => {}
            Err(_) => {
                // The alert, after the server's own flight if the ClientHello before the bad bytes was good.
                let mut last = Vec::new();
                conn.take_pending(&mut last);
                assert!(last.len() <= 8192, "{} bytes to send after a failure", last.len());
                break;
            }
        }
    }
    // Nobody can finish a handshake against our certificate without its key's cooperation in this run: no
    // application data can have been decrypted.
    assert!(plain.is_empty() || conn.established());
    let mut wire = Vec::new();
    conn.take_pending(&mut wire);
    if conn.established() {
        conn.encrypt(b"hello", &mut wire).expect("encrypt once established");
        conn.close_notify(&mut wire);
    }
});
