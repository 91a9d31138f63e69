//! A hand-written WebSocket client over a blocking [`TcpStream`], for what real clients refuse to send:
//! half handshakes, malformed upgrades, unmasked or invalid frames, hand-made fragmentation, and peers
//! that go silent.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{read_http_response, HttpResponse};

/// The sample key of RFC 6455 section 1.3 and the accept value the server must derive from it.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Connects with 10 s read and write timeouts (a hung server fails the test instead of hanging it).
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Connects and completes the opening handshake, checking the 101 response and its accept value.
/// Reads exactly the response head, so frames the server sends right after it stay unread.
pub fn handshake(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    stream.write_all(upgrade_request(addr, "/").as_bytes()).unwrap();
    let resp = read_http_response(&mut stream).expect("reading the upgrade response");
    check_upgrade_response(&resp);
    stream
}

/// Asserts a response is a proper RFC 6455 101.
pub fn check_upgrade_response(resp: &HttpResponse) {
    assert_eq!(resp.status, 101, "upgrade answered {resp:?}");
    assert!(
        resp.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "101 without `Upgrade: websocket`: {resp:?}"
    );
    assert!(
        resp.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "101 without `Connection: Upgrade`: {resp:?}"
    );
    assert_eq!(resp.header("sec-websocket-accept"), Some(ACCEPT), "wrong Sec-WebSocket-Accept: {resp:?}");
}

/// Encodes one frame. Clients must mask (`mask: Some`); `None` builds the unmasked frame a server sends.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, opcode, payload, Some(MASK))
}

/// A masked Close frame with a status code and reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    masked(true, OP_CLOSE, &payload)
}

/// One frame as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a Close frame: (code, reason); code 1005 when the payload is empty.
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != OP_CLOSE {
            return None;
        }
        if self.payload.len() < 2 {
            return Some((1005, String::new()));
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((code, String::from_utf8_lossy(&self.payload[2..]).into_owned()))
    }
}

fn is_closed_err(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Reads one frame. `Ok(None)` on EOF (or reset) before the first byte of a frame. A masked frame from
/// the server, or one with RSV bits set, is an error: a server must never send either.
pub fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 2];
    match stream.read(&mut head[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if is_closed_err(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    stream.read_exact(&mut head[1..])?;
    let fin = head[0] & 0x80 != 0;
    let rsv = (head[0] >> 4) & 0x7;
    let opcode = head[0] & 0x0f;
    if head[1] & 0x80 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("server sent a masked frame (opcode {opcode:#x})"),
        ));
    }
    if rsv != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("server sent RSV bits {rsv:#b} without an extension"),
        ));
    }
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > 64 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok(Some(Frame { fin, rsv, opcode, payload }))
}

/// Everything a raw client saw until the server closed.
#[derive(Debug, Default)]
pub struct Ending {
    /// Frames before the Close (pings, data).
    pub frames: Vec<Frame>,
    /// The server's Close frame: (code, reason).
    pub close: Option<(u16, String)>,
    /// The TCP connection reached EOF (or was reset) within the deadline.
    pub eof: bool,
    /// How long after the call the Close frame arrived.
    pub close_after: Option<Duration>,
    /// How long after the call EOF was seen.
    pub eof_after: Option<Duration>,
}

/// Reads frames until the server's Close, answers it with a Close echoing the code (as RFC 6455 asks),
/// then waits for EOF. Everything bounded by `timeout`. With `reply: false` the client never answers.
pub fn read_until_close(stream: &mut TcpStream, timeout: Duration, reply: bool) -> Ending {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut ending = Ending::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ending;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match read_frame(stream) {
            Ok(None) => {
                ending.eof = true;
                ending.eof_after = Some(start.elapsed());
                return ending;
            }
            Ok(Some(frame)) => {
                if let Some(close) = frame.close_code() {
                    ending.close_after = Some(start.elapsed());
                    if reply {
                        let _ = stream.write_all(&close_frame(close.0, ""));
                    }
                    ending.close = Some(close);
                    break;
                }
                ending.frames.push(frame);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => return ending,
            Err(e) if is_closed_err(&e) => {
                ending.eof = true;
                ending.eof_after = Some(start.elapsed());
                return ending;
            }
            Err(e) => panic!("reading frames: {e} (so far: {ending:?})"),
        }
    }
    // After the Close: only EOF may follow.
    let left = deadline.saturating_duration_since(Instant::now());
    if let Some(extra) = read_to_eof(stream, left.max(Duration::from_millis(1))) {
        ending.eof = true;
        ending.eof_after = Some(start.elapsed());
        assert!(
            extra.is_empty(),
            "server sent {} bytes after its Close frame: {:?}",
            extra.len(),
            &extra[..extra.len().min(64)]
        );
    }
    ending
}

/// Reads until EOF (or reset); returns the bytes read, or `None` if the deadline passed first.
pub fn read_to_eof(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if is_closed_err(&e) => return Some(out),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A reassembled data message, plus the control frames that arrived while reading it.
#[derive(Debug, Default)]
pub struct Received {
    pub opcode: u8,
    pub data: Vec<u8>,
    pub pongs: Vec<Vec<u8>>,
    pub pings: Vec<Vec<u8>>,
}

/// Reads one whole data message (reassembling fragments), collecting pings and pongs on the way.
/// Panics on Close or EOF.
pub fn read_message(stream: &mut TcpStream) -> Received {
    let mut got = Received::default();
    let mut started = false;
    loop {
        let frame = match read_frame(stream) {
            Ok(Some(f)) => f,
            Ok(None) => panic!("EOF while waiting for a message (so far {got:?})"),
            Err(e) => panic!("reading a message: {e} (so far {got:?})"),
        };
        match frame.opcode {
            OP_PING => got.pings.push(frame.payload),
            OP_PONG => got.pongs.push(frame.payload),
            OP_CLOSE => panic!("server closed while a message was expected: {:?}", frame.close_code()),
            OP_TEXT | OP_BINARY => {
                assert!(!started, "new data frame inside a fragmented message");
                started = true;
                got.opcode = frame.opcode;
                got.data.extend_from_slice(&frame.payload);
                if frame.fin {
                    return got;
                }
            }
            OP_CONTINUATION => {
                assert!(started, "continuation frame without a first fragment");
                got.data.extend_from_slice(&frame.payload);
                if frame.fin {
                    return got;
                }
            }
            op => panic!("server sent reserved opcode {op:#x}"),
        }
    }
}
