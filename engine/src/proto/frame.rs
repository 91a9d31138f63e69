//! RFC 6455 section 5.2 frame codec: header parsing and frame writing.
//!
//! Parsing never allocates and never panics: every length read from the wire is
//! checked before it is used. Writing appends to a caller-owned `Vec<u8>`.

// Opcodes (RFC 6455 section 5.2), as raw 4-bit values.

/// Opcode of a continuation frame: the next fragment of a Text or Binary message.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a Text frame (the message's payload must be valid UTF-8).
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame (control).
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame (control).
pub const OP_PING: u8 = 0x9;
/// Opcode of a Pong frame (control).
pub const OP_PONG: u8 = 0xA;

/// The longest header: 2 bytes + 8-byte extended length + 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 bytes of payload (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A violation of the protocol: the close code to fail the connection with and a short reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// The close code to fail the connection with; the protocol uses 1002 (protocol error), 1007 (invalid
    /// UTF-8) and 1009 (message too big).
    pub code: u16,
    /// Short reason, sent in the Close frame and reported in the [`CloseInfo`](super::CloseInfo).
    pub reason: &'static str,
}

impl ProtocolError {
    /// Fail with `code` and `reason`.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        ProtocolError { code, reason }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for ProtocolError {}

/// A parsed frame header (RFC 6455 section 5.2), as on the wire: nothing is validated beyond the length
/// encoding (the connection checks RSV bits, opcodes, masking and sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of a message (control frames must have it set).
    pub fin: bool,
    /// The 3 RSV bits, RSV1 as the most significant.
    pub rsv: u8,
    /// Raw 4-bit opcode (unknown values are reported, not rejected, here).
    pub opcode: u8,
    /// The masking key; frames from a client must have one, frames from a server must not.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes, as the header announces it (at most 2^63 - 1; the payload may not have
    /// arrived yet).
    pub payload_len: u64,
    /// Bytes taken by the header itself; the payload starts at this offset.
    pub header_len: usize,
}

impl FrameHeader {
    /// Close, Ping, Pong or a reserved control opcode (the opcode's high bit is set).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Parse a header from the start of buf; Ok(None) if buf holds an incomplete header.
/// Non-minimal length encodings and the 64-bit length's MSB set -> error.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let ext_len = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext_len + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match len7 {
        126 => {
            let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if n < 126 {
                return Err(ProtocolError::new(1002, "non-minimal frame length"));
            }
            n
        }
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n & (1 << 63) != 0 {
                return Err(ProtocolError::new(1002, "frame length MSB set"));
            }
            if n <= 0xFFFF {
                return Err(ProtocolError::new(1002, "non-minimal frame length"));
            }
            n
        }
        n => n as u64,
    };
    let mask = if masked {
        let at = 2 + ext_len;
        Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        payload_len,
        header_len,
    }))
}

/// Append a frame header for a payload of `payload_len` bytes, with the shortest length encoding (2, 4 or
/// 10 bytes, plus 4 for a mask). `opcode` is truncated to 4 bits; RSV bits are 0. The payload, masked when
/// `mask` is `Some`, is the caller's to append.
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload_len: usize) {
    let b0 = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if payload_len < 126 {
        out.extend_from_slice(&[b0, mask_bit | payload_len as u8]);
    } else if payload_len <= 0xFFFF {
        out.extend_from_slice(&[b0, mask_bit | 126]);
        out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[b0, mask_bit | 127]);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// A whole frame; with Some(mask) the payload is copied masked (client role), never mutating `payload`.
pub fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    out.reserve(MAX_HEADER_LEN + payload.len());
    write_header(out, fin, opcode, mask, payload.len());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        // Masking is an XOR, so the SIMD unmask masks the copy just as well.
        fastwebsockets::unmask(&mut out[start..], m);
    }
}

/// Largest prefix of `s` no longer than `max` bytes that ends on a char boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A close code an endpoint may send and must accept (RFC 6455 section 7.4): the defined codes apart from
/// 1004 (reserved) and 1005, 1006, 1015 (never on the wire), and the registered (3000-3999) and private
/// (4000-4999) ranges. A peer receiving any other code fails the connection.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Close frame with `code` and `reason` (truncated on a char boundary so the payload fits 125 bytes).
/// A code that must not be sent on the wire (1005, 1006, 1015, and any other outside [`valid_close_code`],
/// e.g. an application's 0 or 999) produces an empty Close payload: "no status", which the peer accepts,
/// rather than a code that makes it fail the connection with 1002.
pub fn write_close(out: &mut Vec<u8>, mask: Option<[u8; 4]>, code: u16, reason: &str) {
    if !valid_close_code(code) {
        write_frame(out, true, OP_CLOSE, mask, &[]);
        return;
    }
    let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    write_frame(out, true, OP_CLOSE, mask, &payload[..2 + reason.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize, mask: Option<[u8; 4]>) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        write_frame(&mut out, true, OP_BINARY, mask, &payload);
        let h = parse_header(&out).unwrap().unwrap();
        assert!(h.fin);
        assert_eq!(h.opcode, OP_BINARY);
        assert_eq!(h.rsv, 0);
        assert_eq!(h.mask, mask);
        assert_eq!(h.payload_len, len as u64);
        assert_eq!(out.len(), h.header_len + len);
        let mut body = out[h.header_len..].to_vec();
        if let Some(m) = mask {
            fastwebsockets::unmask(&mut body, m);
        }
        assert_eq!(body, payload);
        // every strict prefix of the header is incomplete
        for cut in 0..h.header_len {
            assert_eq!(parse_header(&out[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn lengths_7_16_64_bit() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 200_000] {
            roundtrip(len, None);
            roundtrip(len, Some([1, 2, 3, 4]));
        }
        let mut out = Vec::new();
        write_header(&mut out, true, OP_TEXT, None, 125);
        assert_eq!(out.len(), 2);
        out.clear();
        write_header(&mut out, true, OP_TEXT, None, 126);
        assert_eq!(out.len(), 4);
        out.clear();
        write_header(&mut out, true, OP_TEXT, None, 65536);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn non_minimal_lengths_rejected() {
        assert!(parse_header(&[0x82, 126, 0, 125]).is_err());
        assert!(parse_header(&[0x82, 126, 0, 126]).unwrap().is_some());
        assert!(parse_header(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]).is_err());
        assert!(parse_header(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().is_some());
        assert!(parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 1, 0, 0]).is_err());
    }

    #[test]
    fn write_frame_does_not_mutate_payload() {
        let payload = b"hello".to_vec();
        let mut out = Vec::new();
        write_frame(&mut out, true, OP_TEXT, Some([9, 9, 9, 9]), &payload);
        assert_eq!(payload, b"hello");
        assert_ne!(&out[6..], b"hello");
    }

    #[test]
    fn close_reason_truncated_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        write_close(&mut out, None, 1000, &reason);
        let h = parse_header(&out).unwrap().unwrap();
        assert!(h.payload_len <= 125);
        let body = &out[h.header_len..];
        assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1000);
        assert!(std::str::from_utf8(&body[2..]).is_ok());
        assert_eq!(body.len(), 2 + 122);
        out.clear();
        write_close(&mut out, None, 1005, "x");
        assert_eq!(out, [0x88, 0]);
    }

    #[test]
    fn close_codes_that_may_not_be_sent_become_no_status() {
        // Found by the `frame` fuzz target: write_close put an application's 0, 999 or 2000 on the wire.
        for code in [0, 999, 1004, 1016, 2000, 2999, 5000, u16::MAX] {
            let mut out = Vec::new();
            write_close(&mut out, Some([1, 2, 3, 4]), code, "why");
            assert_eq!(out, [0x88, 0x80, 1, 2, 3, 4], "code {code}");
        }
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            let mut out = Vec::new();
            write_close(&mut out, None, code, "");
            assert_eq!(out, [0x88, 2, (code >> 8) as u8, code as u8]);
        }
    }

    #[test]
    fn flags() {
        let h = parse_header(&[0x71, 0x00]).unwrap().unwrap();
        assert!(!h.fin);
        assert_eq!(h.rsv, 7);
        assert_eq!(h.opcode, 1);
        assert!(!h.is_control());
        assert!(parse_header(&[0x89, 0]).unwrap().unwrap().is_control());
    }
}
