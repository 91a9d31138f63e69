//! One connection's TLS, driven without I/O: ciphertext in (from the ring's receive buffers), plaintext out
//! (to the WebSocket layer), plaintext in (the connection's queued frames), ciphertext out (to the ring's
//! send). rustls' unbuffered API decrypts each record in place in the buffer it is given; the shard hands it
//! the provided receive buffer itself, so a connection copies ciphertext only when a record is cut by the
//! end of a receive (`incoming`, empty and unallocated otherwise). TLS records rustls produces on its own
//! (handshake messages, tickets, alerts) wait in `pending` for the next send. An idle established
//! connection holds the rustls state and two empty `Vec`s.

use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;

use super::ClientTls;

/// Ciphertext a connection may hold waiting for the rest of a record or of a handshake message: a record is
/// at most 16 KiB + 2 KiB, a handshake message (a certificate chain) at most 64 KiB.
const MAX_INCOMING: usize = 96 << 10;

/// The two unbuffered connection types behind one interface (rustls gives them no common trait).
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// Held inline: the shard boxes the whole `TlsConn`, one allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Side {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// Why a connection's TLS failed.
#[derive(Debug)]
pub enum TlsFailure {
    /// The first bytes on a TLS port were not a TLS handshake but look like an HTTP request.
    PlainHttp,
    /// Not TLS at all, a bad record, a failed handshake (the alert, if any, is in `pending`).
    Protocol(String),
}

/// What a batch of received ciphertext did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// The handshake completed during this batch: application data may flow now.
    pub established_now: bool,
    /// The peer sent close_notify: nothing more will come from it.
    pub peer_closed: bool,
}

/// One connection's TLS state.
pub struct TlsConn {
    side: Side,
    /// Ciphertext received but not yet processed (a record cut by the end of a receive).
    incoming: Vec<u8>,
    /// Records rustls produced (handshake, tickets, alerts), sent ahead of any application data.
    pending: Vec<u8>,
    established: bool,
    /// Nothing received yet (the first byte tells TLS from plaintext).
    fresh: bool,
    close_notify_sent: bool,
    /// In its shard's queue of handshakes put off by the per-iteration cap.
    waiting: bool,
}

impl TlsConn {
    pub fn server(config: &Arc<ServerConfig>) -> Result<TlsConn, String> {
        let conn = UnbufferedServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
        Ok(TlsConn::new(Side::Server(conn)))
    }

    /// A client connection; its ClientHello is in `pending` at once.
    pub fn client(tls: &ClientTls) -> Result<TlsConn, String> {
        let conn =
            UnbufferedClientConnection::new(tls.config.clone(), tls.server_name.clone()).map_err(|e| e.to_string())?;
        let mut t = TlsConn::new(Side::Client(conn));
        t.fresh = false;
        let mut plain = Vec::new();
        t.drive(&mut [], &mut plain).1.map_err(|f| format!("{f:?}"))?;
        Ok(t)
    }

    fn new(side: Side) -> TlsConn {
        TlsConn {
            side,
            incoming: Vec::new(),
            pending: Vec::new(),
            established: false,
            fresh: true,
            close_notify_sent: false,
            waiting: false,
        }
    }

    /// Whether the handshake is done (application data may be encrypted).
    pub fn established(&self) -> bool {
        self.established
    }

    /// Mark the connection as queued for the next iteration's handshake budget; false if it already is.
    pub fn start_waiting(&mut self) -> bool {
        !std::mem::replace(&mut self.waiting, true)
    }

    /// Its turn in the queue came.
    pub fn stop_waiting(&mut self) {
        self.waiting = false;
    }

    /// Whether TLS records wait to be sent.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Move the waiting TLS records to the end of `wire`. Their buffer is freed (a connection keeps none
    /// while nothing waits), or becomes `wire` when that is an empty buffer too small to hold them.
    pub fn take_pending(&mut self, wire: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        if wire.is_empty() && wire.capacity() < self.pending.len() {
            std::mem::swap(wire, &mut self.pending);
        } else {
            wire.extend_from_slice(&self.pending);
        }
        self.pending = Vec::new();
    }

    /// Take in ciphertext the peer sent (decrypted in place in `data`); the plaintext it carried is appended
    /// to `plain`, records to send go to `pending`.
    pub fn receive(&mut self, data: &mut [u8], plain: &mut Vec<u8>) -> Result<Received, TlsFailure> {
        self.check_first(data)?;
        if self.incoming.is_empty() {
            let (used, result) = self.drive(data, plain);
            if used < data.len() && result.is_ok() {
                self.incoming.extend_from_slice(&data[used..]);
            }
            return result;
        }
        self.stash(data)?;
        let mut buf = std::mem::take(&mut self.incoming);
        let (used, result) = self.drive(&mut buf, plain);
        if used < buf.len() {
            buf.drain(..used);
            self.incoming = buf;
        }
        result
    }

    /// Keep received ciphertext for later (`receive` with nothing new takes it up).
    pub fn stash(&mut self, data: &[u8]) -> Result<(), TlsFailure> {
        self.check_first(data)?;
        if self.incoming.len() + data.len() > MAX_INCOMING {
            return Err(TlsFailure::Protocol("TLS record or handshake message too large".into()));
        }
        self.incoming.extend_from_slice(data);
        Ok(())
    }

    /// The first byte a server receives tells a TLS handshake (0x16) from plaintext.
    fn check_first(&mut self, data: &[u8]) -> Result<(), TlsFailure> {
        if !self.fresh || data.is_empty() {
            return Ok(());
        }
        self.fresh = false;
        match data[0] {
            0x16 => Ok(()),
            // A capital letter: an HTTP method, sent in plaintext.
            b if b.is_ascii_uppercase() => Err(TlsFailure::PlainHttp),
            _ => Err(TlsFailure::Protocol("not a TLS handshake".into())),
        }
    }

    /// The connection ends after what waits (rustls' alert, if any) and `last`, sent as it is (a plaintext
    /// answer to a plaintext request): no close_notify after them.
    pub fn end_with(&mut self, last: &[u8]) {
        self.pending.extend_from_slice(last);
        self.close_notify_sent = true;
    }

    /// The connection is going away without a goodbye: drop what waits, send no close_notify.
    pub fn abandon(&mut self) {
        self.pending = Vec::new();
        self.close_notify_sent = true;
    }

    /// Run rustls over `buf` until it needs more input. Returns how many bytes of `buf` it is done with.
    fn drive(&mut self, buf: &mut [u8], plain: &mut Vec<u8>) -> (usize, Result<Received, TlsFailure>) {
        let was = self.established;
        let (used, result) = match &mut self.side {
            Side::Server(c) => drive(c, buf, plain, &mut self.pending, &mut self.established),
            Side::Client(c) => drive(c, buf, plain, &mut self.pending, &mut self.established),
        };
        let result = result.map(|peer_closed| Received { established_now: self.established && !was, peer_closed });
        (used, result)
    }

    /// Encrypt `plain` (application data) onto the end of `wire`, after any TLS records rustls has to send
    /// first. Only once established.
    pub fn encrypt(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> Result<(), String> {
        match &mut self.side {
            Side::Server(c) => write_app(c, &mut self.incoming, plain, wire, false),
            Side::Client(c) => write_app(c, &mut self.incoming, plain, wire, false),
        }
    }

    /// Append a close_notify alert to `wire` (once; only once established).
    pub fn close_notify(&mut self, wire: &mut Vec<u8>) {
        if self.close_notify_sent || !self.established {
            return;
        }
        self.close_notify_sent = true;
        let _ = match &mut self.side {
            Side::Server(c) => write_app(c, &mut self.incoming, &[], wire, true),
            Side::Client(c) => write_app(c, &mut self.incoming, &[], wire, true),
        };
    }

    /// Whether a close_notify is still to be sent after the last data.
    pub fn wants_close_notify(&self) -> bool {
        self.established && !self.close_notify_sent
    }
}

/// The state machine loop: decrypt what `buf` holds, encode what rustls wants sent, stop when it needs more
/// input (or the handshake is done and nothing is left). Returns the bytes of `buf` consumed and whether the
/// peer sent close_notify.
fn drive<C: Unbuffered>(
    conn: &mut C,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    pending: &mut Vec<u8>,
    established: &mut bool,
) -> (usize, Result<bool, TlsFailure>) {
    let mut used = 0;
    let mut peer_closed = false;
    // Bounded: each round consumes a record or produces a state change; a stuck state machine is an error,
    // not a hang.
    for _ in 0..100_000 {
        let UnbufferedStatus { discard, state } = conn.process(&mut buf[used..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                used += discard;
                collect_alert(conn, &mut buf[used..], pending);
                return (used, Err(TlsFailure::Protocol(e.to_string())));
            }
        };
        let mut extra = 0;
        let mut stop = false;
        match state {
            ConnectionState::ReadTraffic(mut r) => {
                *established = true;
                while let Some(record) = r.next_record() {
                    match record {
                        Ok(record) => {
                            extra += record.discard;
                            plain.extend_from_slice(record.payload);
                        }
                        Err(e) => return (used + discard, Err(TlsFailure::Protocol(e.to_string()))),
                    }
                }
            }
            // 0-RTT is not enabled (the server config accepts no early data): a peer that sends it anyway fails.
            ConnectionState::ReadEarlyData(_) => {
                return (used + discard, Err(TlsFailure::Protocol("unexpected early data".into())));
            }
            ConnectionState::EncodeTlsData(mut e) => {
                if let Err(why) = encode(&mut e, pending) {
                    return (used + discard, Err(TlsFailure::Protocol(why)));
                }
            }
            // The records go out with the connection's next send.
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::PeerClosed => peer_closed = true,
            ConnectionState::Closed => stop = true,
            ConnectionState::WriteTraffic(_) => {
                *established = true;
                stop = true;
            }
            ConnectionState::BlockedHandshake => stop = true,
            _ => stop = true,
        }
        used += discard + extra;
        if stop {
            return (used, Ok(peer_closed));
        }
    }
    (used, Err(TlsFailure::Protocol("TLS state machine did not settle".into())))
}

/// After a failure, rustls has queued its alert: the next `process` hands it out before it looks at any input
/// (so the same undiscarded `rest` is shown: rustls may still refer to a handshake message in pieces there).
/// Called once: a second call would deframe the bad input again and queue a second fatal alert, which rustls
/// asserts against.
fn collect_alert<C: Unbuffered>(conn: &mut C, rest: &mut [u8], pending: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut e)) = conn.process(rest).state {
        let _ = encode(&mut e, pending);
    }
}

fn encode<D>(e: &mut rustls::unbuffered::EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> Result<(), String> {
    fill(out, 4096, |buf| match e.encode(buf) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(need)) => Err(Grow::To(need.required_size)),
        Err(other) => Err(Grow::Fail(other.to_string())),
    })
}

/// Why `fill`'s writer did not write.
enum Grow {
    /// The room it needs.
    To(usize),
    Fail(String),
}

/// Let `write` put its bytes at the end of `out` (room for `guess` first, more when it asks); on failure `out`
/// is as it was.
fn fill(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Grow>,
) -> Result<(), String> {
    let start = out.len();
    out.resize(start + guess, 0);
    loop {
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Grow::To(room)) if room > out.len() - start => out.resize(start + room, 0),
            Err(Grow::To(_)) => {
                out.truncate(start);
                return Err("TLS asked for less room than it had".into());
            }
            Err(Grow::Fail(why)) => {
                out.truncate(start);
                return Err(why);
            }
        }
    }
}

/// Encrypt `plain` (or, with `close`, a close_notify) onto `wire`, encoding first whatever records rustls has
/// queued (a key update). `incoming` is the connection's undiscarded input (a record in pieces; rustls may
/// refer to a handshake message in pieces there, so it must be shown the same bytes, never an empty slice).
fn write_app<C: Unbuffered>(
    conn: &mut C,
    incoming: &mut Vec<u8>,
    plain: &[u8],
    wire: &mut Vec<u8>,
    close: bool,
) -> Result<(), String> {
    for _ in 0..64 {
        let status = conn.process(incoming);
        let discard = status.discard;
        let state = status.state.map_err(|e| e.to_string())?;
        let done = match state {
            ConnectionState::EncodeTlsData(mut e) => encode(&mut e, wire).err().map(Err),
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                None
            }
            ConnectionState::WriteTraffic(mut w) => {
                // Each record (at most 16 KiB of data) adds a 5-byte header, a content type and a 16-byte tag
                // (TLS 1.3), or an explicit nonce and a tag (TLS 1.2): 64 bytes per record covers both.
                let guess = plain.len() + (plain.len() / 16384 + 1) * 64;
                Some(fill(wire, guess, |buf| {
                    let result = if close { w.queue_close_notify(buf) } else { w.encrypt(plain, buf) };
                    match result {
                        Ok(n) => Ok(n),
                        Err(EncryptError::InsufficientSize(need)) => Err(Grow::To(need.required_size)),
                        Err(other) => Err(Grow::Fail(other.to_string())),
                    }
                }))
            }
            other => Some(Err(format!("TLS not ready for application data ({other:?})"))),
        };
        incoming.drain(..discard.min(incoming.len()));
        if let Some(done) = done {
            return done;
        }
    }
    Err("TLS state machine did not settle".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/certs").join(name)
    }

    /// The test certificate for "localhost" (tests/certs), and a client that trusts its CA.
    fn pair() -> (Arc<ServerConfig>, ClientTls) {
        let server = crate::tls::TlsServer::from_pem_files(certs("localhost.crt"), certs("localhost.key")).unwrap();
        let client = ClientTls::with_ca_file(certs("ca.crt"), "localhost").unwrap();
        (server.config().clone(), client)
    }

    /// Move every pending record of `from` into `to`, `chunk` bytes at a time (a record cut anywhere).
    fn pump(from: &mut TlsConn, to: &mut TlsConn, chunk: usize, plain: &mut Vec<u8>) -> Received {
        let mut wire = Vec::new();
        from.take_pending(&mut wire);
        let mut got = Received::default();
        for piece in wire.chunks_mut(chunk.max(1)) {
            let r = to.receive(piece, plain).expect("receive");
            got.established_now |= r.established_now;
            got.peer_closed |= r.peer_closed;
        }
        got
    }

    #[test]
    fn handshake_and_data_both_ways_with_records_cut_anywhere() {
        let (server_config, client_tls) = pair();
        for chunk in [1usize, 7, 100, 4096, 1 << 20] {
            let mut s = TlsConn::server(&server_config).unwrap();
            let mut c = TlsConn::client(&client_tls).unwrap();
            let mut plain = Vec::new();
            // ClientHello -> server flight -> client Finished.
            pump(&mut c, &mut s, chunk, &mut plain);
            let r = pump(&mut s, &mut c, chunk, &mut plain);
            assert!(r.established_now && c.established(), "chunk {chunk}");
            let r = pump(&mut c, &mut s, chunk, &mut plain);
            assert!(r.established_now && s.established(), "chunk {chunk}");
            assert!(plain.is_empty());
            // 100 KiB of data each way (several records), delivered whole and in order.
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            c.take_pending(&mut wire);
            c.encrypt(&data, &mut wire).unwrap();
            for piece in wire.chunks_mut(chunk) {
                s.receive(piece, &mut plain).unwrap();
            }
            assert_eq!(plain, data, "chunk {chunk}");
            plain.clear();
            let mut wire = Vec::new();
            s.take_pending(&mut wire); // session tickets
            s.encrypt(&data, &mut wire).unwrap();
            s.close_notify(&mut wire);
            let mut closed = false;
            for piece in wire.chunks_mut(chunk) {
                closed |= c.receive(piece, &mut plain).unwrap().peer_closed;
            }
            assert_eq!(plain, data, "chunk {chunk}");
            assert!(closed, "close_notify seen");
            assert!(s.incoming.is_empty() && c.incoming.is_empty());
        }
    }

    #[test]
    fn plaintext_and_garbage_are_refused() {
        let (server_config, _) = pair();
        let mut s = TlsConn::server(&server_config).unwrap();
        let mut plain = Vec::new();
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(matches!(s.receive(&mut req, &mut plain), Err(TlsFailure::PlainHttp)));
        let mut s = TlsConn::server(&server_config).unwrap();
        let mut junk = vec![0u8; 64];
        assert!(matches!(s.receive(&mut junk, &mut plain), Err(TlsFailure::Protocol(_))));
        // A record header that claims a handshake but carries junk: an alert to send, an error.
        let mut s = TlsConn::server(&server_config).unwrap();
        let mut bad = vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0xff];
        assert!(matches!(s.receive(&mut bad, &mut plain), Err(TlsFailure::Protocol(_))));
        assert!(s.has_pending(), "an alert is queued");
        assert!(plain.is_empty());
    }

    #[test]
    fn a_client_with_the_wrong_trust_fails_the_handshake() {
        let (server_config, _) = pair();
        let other = ClientTls::with_ca_file(certs("other-ca.crt"), "localhost").unwrap();
        let mut s = TlsConn::server(&server_config).unwrap();
        let mut c = TlsConn::client(&other).unwrap();
        let mut plain = Vec::new();
        pump(&mut c, &mut s, 4096, &mut plain);
        let mut wire = Vec::new();
        s.take_pending(&mut wire);
        assert!(c.receive(&mut wire, &mut plain).is_err());
    }
}
