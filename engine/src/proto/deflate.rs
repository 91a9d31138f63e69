//! permessage-deflate (RFC 7692): negotiation (both roles) and the codec.
//!
//! **Shared mode (the default).** The server accepts an offer with `server_no_context_takeover;
//! client_no_context_takeover` (RFC 7692 sections 7.1.1.1 and 7.1.1.2 let a server include both whether or not
//! the client offered them), so neither side carries an LZ77 window from one message to the next and no
//! compression state lives in a connection: one [`Codec`] per shard holds the compressor(s) and the inflater,
//! reset before each message (uWebSockets' SHARED_COMPRESSOR, applied to both directions). A connection that
//! negotiated deflate costs the two bytes of its [`PerConn`] and nothing on the heap.
//!
//! **Dedicated mode** (`Deflate::Dedicated { window_bits }`, opt-in) keeps context takeover wherever the peer
//! allows it: each such connection owns a boxed compressor and/or inflater with a window of `window_bits`
//! (better ratios on streams of similar messages; the cost per connection is in README.md).
//!
//! **Window bits.** zlib's raw deflate takes windows of 9..=15 bits. Inflating, a larger window decodes
//! anything a smaller one produced, so the inflater is never a problem. Compressing, a peer that asks for
//! `server_max_window_bits=8` (or, as a client, gets `client_max_window_bits=8`) is agreed to, and this side
//! then sends its messages uncompressed (RSV1 clear): legal, since RSV1 is decided per message, whereas
//! compressing with the 9-bit window zlib would use in its place is not.
//!
//! **Inflating** is streamed into a buffer capped at the connection's `max_message_size`: a message that
//! inflates past it fails the connection with 1009 after at most `max_message_size + 1` bytes were produced,
//! whatever the compressed size (a 10 KB "bomb" never costs more than the limit). Corrupt data: 1007.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::ProtocolError;

/// How the engine uses permessage-deflate: the server's acceptance of offers, and the client role's offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Deflate {
    /// Never negotiated: offers are declined, the client role offers nothing.
    Off,
    /// No context takeover in either direction; one compressor and one inflater per shard, nothing per
    /// connection.
    #[default]
    Shared,
    /// Context takeover where the peer allows it, each connection with its own compressor / inflater using
    /// a window of `window_bits` (clamped to 9..=15).
    Dedicated {
        /// LZ77 window, log2 bytes (9..=15; 8 is read as 9).
        window_bits: u8,
    },
}

impl Deflate {
    /// `off`, `shared` or `dedicated:BITS` (BITS 8..=15; 8 is used as 9), as tetherd and tether-load take it.
    pub fn parse(s: &str) -> Result<Deflate, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "off" | "none" | "false" | "0" => return Ok(Deflate::Off),
            "shared" | "on" | "true" => return Ok(Deflate::Shared),
            "dedicated" => return Ok(Deflate::Dedicated { window_bits: 15 }),
            _ => {}
        }
        let bits = s
            .strip_prefix("dedicated:")
            .and_then(|b| b.parse::<u8>().ok())
            .filter(|b| (8..=15).contains(b))
            .ok_or_else(|| format!("expected off, shared or dedicated:BITS (BITS from 8 to 15), got \"{s}\""))?;
        Ok(Deflate::Dedicated { window_bits: bits.max(MIN_ZLIB_BITS) })
    }
}

impl std::fmt::Display for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deflate::Off => f.write_str("off"),
            Deflate::Shared => f.write_str("shared"),
            Deflate::Dedicated { window_bits } => write!(f, "dedicated:{window_bits}"),
        }
    }
}

/// The extension's name in Sec-WebSocket-Extensions.
pub const EXTENSION: &str = "permessage-deflate";
/// What RFC 7692 appends to a compressed message before inflating it (and strips after compressing).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The smallest window zlib's raw deflate takes.
const MIN_ZLIB_BITS: u8 = 9;
/// The largest (and the RFC's default) window.
const MAX_BITS: u8 = 15;

/// One offer's (or a response's) parameters, parsed strictly: every parameter known, none twice, values
/// where the RFC wants them and nowhere else, window bits 8..=15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `server_no_context_takeover`.
    pub server_no_context_takeover: bool,
    /// `client_no_context_takeover`.
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits=N`.
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits` was present (with or without a value).
    pub client_max_window_bits_present: bool,
    /// `client_max_window_bits=N` (the value, when there was one).
    pub client_max_window_bits: Option<u8>,
}

/// Parse one element of Sec-WebSocket-Extensions (`permessage-deflate; a; b=1`). `None`: another extension,
/// or a permessage-deflate element this side must decline (unknown or repeated parameter, bad value).
pub fn parse_params(element: &str) -> Option<Params> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut p = Params::default();
    let mut seen = [false; 4];
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (part, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => {
                value.is_none().then_some(())?;
                p.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" => {
                value.is_none().then_some(())?;
                p.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                p.server_max_window_bits = Some(window_bits(value?)?);
                2
            }
            "client_max_window_bits" => {
                p.client_max_window_bits_present = true;
                p.client_max_window_bits = match value {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                };
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(p)
}

/// A parameter value, possibly a quoted-string (RFC 7692 section 7.1: `"10"` means 10).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// `1*DIGIT` without leading zeros, 8..=15 (RFC 7692 sections 7.1.2.1 and 7.1.2.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// What a negotiation leaves a connection: the window its compressed messages use and, in dedicated mode,
/// its own streams. The writer keeps `bits` in a byte it had spare and the streams' box in its `Open` state
/// (which had room for a pointer), so shared mode costs a connection nothing and dedicated mode the box.
#[derive(Default)]
pub struct PerConn {
    bits: u8,
    own: Option<Box<Own>>,
}

/// [`PerConn`]'s byte: permessage-deflate not in use.
pub const OFF: u8 = 0;
/// [`PerConn`]'s byte: in use, but this side sends everything uncompressed (the peer asked for a window
/// zlib cannot honour). 9..=15: in use, sending with that window.
pub const NEVER_COMPRESS: u8 = 1;

/// True when a connection with this [`PerConn`] byte compresses what it sends.
pub fn compresses(bits: u8) -> bool {
    bits >= MIN_ZLIB_BITS
}

/// A connection's own streams (dedicated mode, where the peer allowed context takeover), each made when
/// the connection first needs it: zlib's state is hundreds of KB, and a connection that never sends (or
/// never receives) a compressed message should not pay for it.
pub struct Own {
    /// Window of the own compressor; 0: none (the shard's is used).
    compress_bits: u8,
    /// Window of the own inflater; 0: none (the shard's is used).
    inflate_bits: u8,
    compress: Option<Compress>,
    inflate: Option<Decompress>,
}

impl Own {
    /// This connection compresses with a context of its own (its messages cannot share a frame).
    pub fn compresses(&self) -> bool {
        self.compress_bits != 0
    }

    fn compressor(&mut self, level: Compression) -> Option<&mut Compress> {
        let bits = self.compress_bits;
        (bits != 0).then(|| self.compress.get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits)))
    }

    fn inflater(&mut self) -> Option<&mut Decompress> {
        let bits = self.inflate_bits;
        (bits != 0).then(|| self.inflate.get_or_insert_with(|| Decompress::new_with_window_bits(false, bits)))
    }
}

impl PerConn {
    /// Negotiated with no context takeover either way, sending with `send_bits` (0: never compress).
    pub fn shared(send_bits: u8) -> PerConn {
        PerConn { bits: send_bits.max(NEVER_COMPRESS), own: None }
    }

    /// Negotiated; `compress_bits` / `inflate_bits`: this connection's own streams (context takeover), with
    /// those windows (`None`: that direction has no context takeover and uses the shard's).
    fn with_own(send_bits: u8, compress_bits: Option<u8>, inflate_bits: Option<u8>) -> PerConn {
        let compress_bits = compress_bits.filter(|_| send_bits != 0).map_or(0, |b| b.clamp(MIN_ZLIB_BITS, MAX_BITS));
        let inflate_bits = inflate_bits.map_or(0, |b| b.clamp(MIN_ZLIB_BITS, MAX_BITS));
        let own = (compress_bits != 0 || inflate_bits != 0)
            .then(|| Box::new(Own { compress_bits, inflate_bits, compress: None, inflate: None }));
        PerConn { bits: send_bits.max(NEVER_COMPRESS), own }
    }

    /// The byte ([`OFF`], [`NEVER_COMPRESS`] or the window) and the connection's own streams.
    pub fn into_parts(self) -> (u8, Option<Box<Own>>) {
        (self.bits, self.own)
    }

    /// permessage-deflate is in use on this connection.
    pub fn is_on(&self) -> bool {
        self.bits != OFF
    }

    /// Messages this side sends may be compressed.
    pub fn compresses(&self) -> bool {
        compresses(self.bits)
    }

    /// The connection owns streams of its own (dedicated mode with context takeover).
    pub fn has_own_streams(&self) -> bool {
        self.own.is_some()
    }
}

/// Messages to a connection with this byte and these streams are compressed by the shard's default
/// compressor (15-bit window, no context): a message compressed once that way can be shared with every such
/// connection.
pub fn shares_frames(bits: u8, own: Option<&Own>) -> bool {
    bits == MAX_BITS && own.is_none_or(|o| !o.compresses())
}

/// The server's answer to a request's offers: the first acceptable permessage-deflate offer wins. `None`:
/// deflate is off, or not offered, or every offer was declined (the upgrade goes on without it).
pub fn accept_offer(offers: &[String], mode: Deflate) -> Option<(PerConn, String)> {
    if mode == Deflate::Off {
        return None;
    }
    let offer = offers.iter().find_map(|o| parse_params(o))?;
    let mut response = String::from(EXTENSION);
    // What we compress with: the offer's server_max_window_bits bounds it (8 means "never compress": see the
    // module docs); the response repeats the value, as the RFC requires of an accepted parameter.
    let ours = match mode {
        Deflate::Dedicated { window_bits } => window_bits.clamp(MIN_ZLIB_BITS, MAX_BITS),
        _ => MAX_BITS,
    };
    let limit = offer.server_max_window_bits.unwrap_or(MAX_BITS);
    let send_bits = if limit < MIN_ZLIB_BITS { 0 } else { ours.min(limit) };
    let announced = if send_bits == 0 { limit } else { send_bits };
    match mode {
        Deflate::Off => None,
        Deflate::Shared => {
            response.push_str("; server_no_context_takeover; client_no_context_takeover");
            if offer.server_max_window_bits.is_some() || announced < MAX_BITS {
                response.push_str(&format!("; server_max_window_bits={announced}"));
            }
            Some((PerConn::shared(send_bits), response))
        }
        Deflate::Dedicated { window_bits } => {
            let bits = window_bits.clamp(MIN_ZLIB_BITS, MAX_BITS);
            // Server to client: context takeover unless the client asked us not to.
            let compress_bits = (!offer.server_no_context_takeover).then_some(send_bits);
            if offer.server_no_context_takeover {
                response.push_str("; server_no_context_takeover");
            }
            // Client to server: the client's hint that it will not take over context is taken (it saves us
            // an inflater); otherwise our own inflater, with the window we ask the client to keep to when it
            // said it can (client_max_window_bits offered), else the RFC's 15 bits.
            let inflate_bits = if offer.client_no_context_takeover {
                response.push_str("; client_no_context_takeover");
                None
            } else if offer.client_max_window_bits_present {
                let b = bits.min(offer.client_max_window_bits.unwrap_or(MAX_BITS));
                response.push_str(&format!("; client_max_window_bits={b}"));
                Some(b)
            } else {
                Some(MAX_BITS)
            };
            if offer.server_max_window_bits.is_some() || announced < MAX_BITS {
                response.push_str(&format!("; server_max_window_bits={announced}"));
            }
            Some((PerConn::with_own(send_bits, compress_bits, inflate_bits), response))
        }
    }
}

/// The client role's offer (the value of Sec-WebSocket-Extensions), `None` when deflate is off.
pub fn client_offer(mode: Deflate) -> Option<String> {
    match mode {
        Deflate::Off => None,
        // Both directions without context: the server must agree to server_no_context_takeover (or decline
        // the offer); client_no_context_takeover tells it we will not take over context either.
        Deflate::Shared => Some(format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover")),
        Deflate::Dedicated { window_bits } => {
            let bits = window_bits.clamp(MIN_ZLIB_BITS, MAX_BITS);
            let mut s = format!("{EXTENSION}; client_max_window_bits");
            if bits < MAX_BITS {
                s.push_str(&format!("; server_max_window_bits={bits}"));
            }
            Some(s)
        }
    }
}

/// Check the server's Sec-WebSocket-Extensions answer to [`client_offer`]`(mode)`. `Ok(None)`: the server
/// declined (no extension). `Err`: the answer is not one a client may accept (RFC 7692 section 5: the client
/// must fail the connection).
pub fn accept_response(elements: &[String], mode: Deflate) -> Result<Option<PerConn>, String> {
    let Some(first) = elements.first() else { return Ok(None) };
    if mode == Deflate::Off || elements.len() > 1 {
        return Err(format!("server answered with extensions we did not offer: {}", elements.join(", ")));
    }
    let p = parse_params(first).ok_or_else(|| format!("invalid extension answer: {first}"))?;
    if p.client_max_window_bits_present && p.client_max_window_bits.is_none() {
        return Err("client_max_window_bits without a value in the answer".into());
    }
    match mode {
        Deflate::Off => Err("deflate is off".into()),
        Deflate::Shared => {
            if !p.server_no_context_takeover {
                return Err("server did not agree to server_no_context_takeover".into());
            }
            if p.client_max_window_bits_present {
                return Err("client_max_window_bits answered but not offered".into());
            }
            // We never take over context (we said so); the server's window only matters to its compressor,
            // and our 15-bit inflater decodes any.
            Ok(Some(PerConn::shared(MAX_BITS)))
        }
        Deflate::Dedicated { window_bits } => {
            let bits = window_bits.clamp(MIN_ZLIB_BITS, MAX_BITS);
            if bits < MAX_BITS && p.server_max_window_bits.is_none_or(|b| b > bits) {
                return Err("server did not agree to server_max_window_bits".into());
            }
            let limit = p.client_max_window_bits.unwrap_or(MAX_BITS);
            let send_bits = if limit < MIN_ZLIB_BITS { 0 } else { bits.min(limit) };
            let compress_bits = (!p.client_no_context_takeover).then_some(send_bits);
            let inflate_bits = (!p.server_no_context_takeover).then_some(p.server_max_window_bits.unwrap_or(MAX_BITS));
            Ok(Some(PerConn::with_own(send_bits, compress_bits, inflate_bits)))
        }
    }
}

/// One shard's compression state: the shared compressors (one per window size in use, made on first use)
/// and the shared inflater, the threshold below which messages go uncompressed, and the scratch buffer a
/// compressed message is built in.
pub struct Codec {
    threshold: usize,
    /// zlib compression level (0-9) of every compressor the codec makes.
    level: Compression,
    /// Index `bits - 9`.
    compressors: [Option<Box<Compress>>; 7],
    inflater: Option<Box<Decompress>>,
    scratch: Vec<u8>,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new(DEFAULT_THRESHOLD)
    }
}

/// Messages shorter than this are sent uncompressed by default: deflate's own framing costs a few bytes, and
/// short messages rarely shrink.
pub const DEFAULT_THRESHOLD: usize = 64;

/// zlib's own default level.
pub const DEFAULT_LEVEL: u32 = 6;

impl Codec {
    /// Nothing is allocated until the first message is compressed or inflated.
    pub fn new(threshold: usize) -> Codec {
        Codec::with_level(threshold, DEFAULT_LEVEL)
    }

    /// A codec whose compressors use zlib level `level` (clamped to 0-9; 1 is fastest, 9 smallest).
    pub fn with_level(threshold: usize, level: u32) -> Codec {
        let level = Compression::new(level.min(9));
        Codec { threshold, level, compressors: Default::default(), inflater: None, scratch: Vec::new() }
    }

    /// Compress `payload` for a connection with [`PerConn`] byte `bits` and streams `own`. `None`: send it
    /// uncompressed (deflate not in use, below the threshold, not allowed, or, without context takeover, no
    /// smaller compressed). The result lacks the final `00 00 ff ff`, as RFC 7692 section 7.2.1 wants.
    pub fn compress(&mut self, bits: u8, own: Option<&mut Own>, payload: &[u8]) -> Option<&[u8]> {
        if !compresses(bits) || payload.len() < self.threshold {
            return None;
        }
        let level = self.level;
        let own = own.and_then(|o| o.compressor(level));
        let takeover = own.is_some();
        let c: &mut Compress = match own {
            Some(c) => c,
            None => {
                let bits = bits.clamp(MIN_ZLIB_BITS, MAX_BITS);
                let c = self.compressors[(bits - MIN_ZLIB_BITS) as usize]
                    .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(level, false, bits)));
                c.reset();
                c
            }
        };
        // A huge message's buffer is not kept for the shard's lifetime.
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        self.scratch.clear();
        self.scratch.reserve(payload.len() / 2 + 64);
        let start_in = c.total_in();
        loop {
            let consumed = (c.total_in() - start_in) as usize;
            if self.scratch.len() == self.scratch.capacity() {
                self.scratch.reserve(self.scratch.capacity().max(256));
            }
            if c.compress_vec(&payload[consumed..], &mut self.scratch, FlushCompress::Sync).is_err() {
                return None;
            }
            // Done when all input is in and the flush left room to spare (nothing more pending).
            if (c.total_in() - start_in) as usize == payload.len() && self.scratch.len() < self.scratch.capacity() {
                break;
            }
        }
        if self.scratch.ends_with(&TAIL) {
            self.scratch.truncate(self.scratch.len() - TAIL.len());
        }
        if !takeover && self.scratch.len() >= payload.len() {
            return None;
        }
        Some(&self.scratch)
    }

    /// Compress `payload` as for a connection whose frames can be shared ([`shares_frames`]).
    pub fn compress_shared(&mut self, payload: &[u8]) -> Option<&[u8]> {
        self.compress(MAX_BITS, None, payload)
    }

    /// Give back the scratch buffer's memory if one large message grew it.
    pub fn trim(&mut self) {
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
    }

    /// Inflate one whole compressed message (its frames' payloads joined) into `out` (cleared first), at most
    /// `max` bytes: past that, 1009 "message too big" with no more than `max + 1` bytes produced. Corrupt or
    /// truncated data: 1007.
    pub fn inflate(
        &mut self,
        own: Option<&mut Own>,
        compressed: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let own = own.and_then(Own::inflater);
        let d: &mut Decompress = match own {
            Some(d) => d,
            None => {
                let d =
                    self.inflater.get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, MAX_BITS)));
                d.reset(false);
                d
            }
        };
        out.clear();
        let too_big = ProtocolError::new(1009, "message too big");
        let corrupt = ProtocolError::new(1007, "invalid compressed data");
        // First guess at the size: a few times the input, within the limit; then doubling, within the limit.
        let cap = max.saturating_add(1);
        for input in [compressed, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    let want =
                        if out.capacity() == 0 { compressed.len().saturating_mul(4).max(256) } else { out.capacity() };
                    let room = cap.saturating_sub(out.len());
                    if room == 0 {
                        return Err(too_big);
                    }
                    out.reserve_exact(want.min(room));
                }
                let (in_before, out_before) = (d.total_in(), d.total_out());
                let status = d.decompress_vec(&input[pos..], out, FlushDecompress::Sync).map_err(|_| corrupt)?;
                let consumed = (d.total_in() - in_before) as usize;
                let produced = d.total_out() - out_before;
                pos += consumed;
                if out.len() > max {
                    return Err(too_big);
                }
                if status == Status::StreamEnd {
                    // A final block: the message is complete; anything after it is ignored, and a stream
                    // that ended cannot go on, so the next message starts a fresh one.
                    d.reset(false);
                    return Ok(());
                }
                if pos == input.len() && out.len() < out.capacity() {
                    break;
                }
                if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                    return Err(corrupt);
                }
            }
        }
        Ok(())
    }
}

/// Scratch capacity kept between messages.
const SCRATCH_KEEP: usize = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    impl Codec {
        fn compress_pc(&mut self, pc: &mut PerConn, payload: &[u8]) -> Option<&[u8]> {
            self.compress(pc.bits, pc.own.as_deref_mut(), payload)
        }
        fn inflate_pc(
            &mut self,
            pc: &mut PerConn,
            c: &[u8],
            max: usize,
            out: &mut Vec<u8>,
        ) -> Result<(), ProtocolError> {
            self.inflate(pc.own.as_deref_mut(), c, max, out)
        }
    }

    fn offers(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn strict_parameters() {
        assert_eq!(parse_params("permessage-deflate"), Some(Params::default()));
        let p = parse_params("permessage-deflate; client_max_window_bits; server_max_window_bits=\"10\"").unwrap();
        assert!(p.client_max_window_bits_present && p.client_max_window_bits.is_none());
        assert_eq!(p.server_max_window_bits, Some(10));
        for bad in [
            "permessage-deflate; foo=1",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=9; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=x",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(parse_params(bad), None, "{bad}");
        }
    }

    #[test]
    fn shared_accepts_first_valid_offer_without_context() {
        let o = offers(&["permessage-deflate; foo=1", "permessage-deflate; client_max_window_bits"]);
        let (pc, resp) = accept_offer(&o, Deflate::Shared).unwrap();
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert!(pc.compresses() && !pc.has_own_streams());
        assert!(accept_offer(&offers(&["permessage-deflate; server_max_window_bits=7"]), Deflate::Shared).is_none());
        assert!(accept_offer(&o, Deflate::Off).is_none());
        // A window of 8 for what we send: agreed, and we send uncompressed.
        let (pc, resp) =
            accept_offer(&offers(&["permessage-deflate; server_max_window_bits=8"]), Deflate::Shared).unwrap();
        assert!(resp.ends_with("server_max_window_bits=8"), "{resp}");
        assert!(pc.is_on() && !pc.compresses());
    }

    #[test]
    fn dedicated_keeps_context_where_allowed() {
        let (pc, resp) = accept_offer(
            &offers(&["permessage-deflate; client_max_window_bits"]),
            Deflate::Dedicated { window_bits: 10 },
        )
        .unwrap();
        assert_eq!(resp, "permessage-deflate; client_max_window_bits=10; server_max_window_bits=10");
        assert!(pc.has_own_streams());
        let (pc, resp) = accept_offer(
            &offers(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]),
            Deflate::Dedicated { window_bits: 15 },
        )
        .unwrap();
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert!(!pc.has_own_streams());
    }

    #[test]
    fn client_checks_the_answer() {
        let ok = accept_response(&offers(&["permessage-deflate; server_no_context_takeover"]), Deflate::Shared);
        assert!(ok.unwrap().unwrap().compresses());
        assert!(accept_response(&[], Deflate::Shared).unwrap().is_none());
        assert!(accept_response(&offers(&["permessage-deflate"]), Deflate::Shared).is_err());
        assert!(accept_response(
            &offers(&["permessage-deflate; server_no_context_takeover; client_max_window_bits=9"]),
            Deflate::Shared
        )
        .is_err());
        assert!(accept_response(&offers(&["x-foo"]), Deflate::Shared).is_err());
        assert!(accept_response(&offers(&["permessage-deflate"]), Deflate::Off).is_err());
        // Our server's answer to our offer.
        let (_, resp) = accept_offer(&[client_offer(Deflate::Shared).unwrap()], Deflate::Shared).unwrap();
        assert!(accept_response(&[resp], Deflate::Shared).unwrap().is_some());
        let (_, resp) =
            accept_offer(&[client_offer(Deflate::Dedicated { window_bits: 12 }).unwrap()], Deflate::Shared).unwrap();
        assert!(accept_response(&[resp], Deflate::Dedicated { window_bits: 12 }).unwrap().is_some());
    }

    fn roundtrip(sender: &mut PerConn, receiver: &mut PerConn, codec: &mut Codec, msg: &[u8]) -> Vec<u8> {
        let compressed = codec.compress_pc(sender, msg).expect("compressible").to_vec();
        assert!(compressed.len() < msg.len());
        let mut out = Vec::new();
        codec.inflate_pc(receiver, &compressed, 1 << 20, &mut out).unwrap();
        out
    }

    #[test]
    fn the_level_changes_the_output_not_the_message() {
        // Varied JSON-like text: level 9 finds more matches than level 1, and both inflate to the message.
        let msg: Vec<u8> = (0..400)
            .flat_map(|i: u32| {
                format!(r#"{{"id":{i},"user":"u{}","v":{}}},"#, i % 37, i.wrapping_mul(2654435761) % 1000).into_bytes()
            })
            .collect();
        let mut sizes = Vec::new();
        for level in [1, 9] {
            let mut codec = Codec::with_level(64, level);
            let (mut a, mut b) = (PerConn::shared(15), PerConn::shared(15));
            sizes.push(codec.compress_pc(&mut a, &msg).expect("compressible").len());
            assert_eq!(roundtrip(&mut a, &mut b, &mut codec, &msg), msg, "level {level}");
        }
        assert!(sizes[1] < sizes[0], "level 9 {} vs level 1 {}", sizes[1], sizes[0]);
    }

    #[test]
    fn shared_roundtrip_and_threshold() {
        let mut codec = Codec::new(64);
        let mut a = PerConn::shared(15);
        let mut b = PerConn::shared(15);
        let msg = br#"{"channel":"news","data":{"text":"hello hello hello hello hello hello hello"}}"#.repeat(3);
        for _ in 0..3 {
            assert_eq!(roundtrip(&mut a, &mut b, &mut codec, &msg), msg);
        }
        assert!(codec.compress_pc(&mut a, b"short").is_none());
        // Incompressible data goes uncompressed.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(codec.compress_pc(&mut a, &noise).is_none());
        // A 9-bit window sender (our clamp for 8 is "never"), and window 8 never compresses.
        let mut nine = PerConn::shared(9);
        assert_eq!(roundtrip(&mut nine, &mut b, &mut codec, &msg), msg);
        assert!(codec.compress_pc(&mut PerConn::shared(0), &msg).is_none());
    }

    #[test]
    fn dedicated_roundtrip_with_context() {
        let mut codec = Codec::new(64);
        let mut a = PerConn::with_own(12, Some(12), None);
        let mut b = PerConn::with_own(12, None, Some(12));
        let msg = b"the same message again and again, the same message again and again".repeat(2);
        let first = codec.compress_pc(&mut a, &msg).unwrap().len();
        let mut out = Vec::new();
        let c = codec.compress_pc(&mut a, &msg).unwrap().to_vec();
        assert!(c.len() < first, "context takeover makes the repeat smaller: {} vs {first}", c.len());
        // b must see the first message too, to share the context.
        let mut a2 = PerConn::with_own(12, Some(12), None);
        let m1 = codec.compress_pc(&mut a2, &msg).unwrap().to_vec();
        let m2 = codec.compress_pc(&mut a2, &msg).unwrap().to_vec();
        codec.inflate_pc(&mut b, &m1, 1 << 20, &mut out).unwrap();
        assert_eq!(out, msg);
        codec.inflate_pc(&mut b, &m2, 1 << 20, &mut out).unwrap();
        assert_eq!(out, msg);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let mut codec = Codec::new(0);
        let mut pc = PerConn::shared(15);
        let zeros = vec![0u8; 4 << 20];
        let compressed = codec.compress_pc(&mut pc, &zeros).unwrap().to_vec();
        assert!(compressed.len() < 10_000, "{}", compressed.len());
        let mut out = Vec::new();
        let err = codec.inflate_pc(&mut pc, &compressed, 64 << 10, &mut out).unwrap_err();
        assert_eq!(err.code, 1009);
        assert!(out.capacity() <= (64 << 10) + 1, "{}", out.capacity());
        // Exactly at the limit is fine.
        codec.inflate_pc(&mut pc, &compressed, 4 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 4 << 20);
    }

    #[test]
    fn garbage_is_1007_never_a_panic() {
        let mut codec = Codec::new(0);
        let mut pc = PerConn::shared(15);
        let mut out = Vec::new();
        for junk in [&[0xffu8; 16][..], &[0x07, 0x00], &[]] {
            let r = codec.inflate_pc(&mut pc, junk, 1024, &mut out);
            assert!(r.is_ok() || r.unwrap_err().code == 1007);
        }
        // The shared inflater works again after garbage.
        let msg = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".to_vec();
        let c = codec.compress_pc(&mut pc, &msg).unwrap().to_vec();
        codec.inflate_pc(&mut pc, &c, 1024, &mut out).unwrap();
        assert_eq!(out, msg);
    }

    #[test]
    fn parse_mode() {
        assert_eq!(Deflate::parse("shared"), Ok(Deflate::Shared));
        assert_eq!(Deflate::parse("off"), Ok(Deflate::Off));
        assert_eq!(Deflate::parse("dedicated:8"), Ok(Deflate::Dedicated { window_bits: 9 }));
        assert_eq!(Deflate::parse("dedicated:12"), Ok(Deflate::Dedicated { window_bits: 12 }));
        assert!(Deflate::parse("dedicated:16").is_err());
        assert!(Deflate::parse("zip").is_err());
    }
}
