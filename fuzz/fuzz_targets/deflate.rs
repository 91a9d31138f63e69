//! permessage-deflate (engine/src/proto/deflate.rs): negotiation and the inflate path on arbitrary input.
//!
//! Input: byte 0 picks the mode (Off / Shared / Dedicated with window 8..=15), byte 1 the length of the
//! extension offer that follows (any bytes, read as text), the rest is a compressed message. Checked:
//! - `accept_offer` never panics; what it answers is itself a valid permessage-deflate element, and a client
//!   in the matching mode accepts our own answers to our own offers;
//! - inflating never panics, never produces more than `max` bytes, never holds more than `max + 1` bytes of
//!   buffer, and fails only with 1009 (too big) or 1007 (corrupt);
//! - a server connection that negotiated deflate, fed the bytes as a compressed frame (one frame, or two
//!   fragments), delivers at most `max` bytes or closes with 1007 / 1009;
//! - the rest, compressed by the shared compressor, inflates back to itself.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tether::proto::deflate::{accept_offer, accept_response, client_offer, parse_params, Codec, Deflate, PerConn};
use tether::proto::frame::{write_frame, OP_BINARY, OP_CONTINUATION};
use tether::proto::{Connection, Event, Input, ProtoConfig, Role};

const MAX: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mode = match sel & 3 {
        0 => Deflate::Off,
        1 | 3 => Deflate::Shared,
        _ => Deflate::Dedicated { window_bits: 8 + ((sel >> 2) & 7) },
    };
    let (offer, body) = match rest.split_first() {
        Some((&n, r)) if (n as usize) <= r.len() => r.split_at(n as usize),
        _ => (&[][..], rest),
    };
    let offer = String::from_utf8_lossy(offer).into_owned();

    // Negotiation.
    let offers: Vec<String> = offer.split(',').map(|s| s.trim().to_string()).collect();
    if let Some((_, answer)) = accept_offer(&offers, mode) {
        assert!(parse_params(&answer).is_some(), "our answer {answer:?} does not parse");
    }
    if let Some(own) = client_offer(mode) {
        if let Some((_, answer)) = accept_offer(&[own], mode) {
            assert!(accept_response(&[answer.clone()], mode).is_ok(), "{mode:?} rejects our answer {answer:?}");
        }
    }
    let _ = accept_response(&offers, mode);

    // Inflating, bounded.
    let mut codec = Codec::new(0);
    let mut out = Vec::new();
    match codec.inflate(None, body, MAX, &mut out) {
        Ok(()) => assert!(out.len() <= MAX),
        Err(e) => assert!(e.code == 1009 || e.code == 1007, "inflate failed with {}", e.code),
    }
    assert!(out.capacity() <= MAX + 1, "inflate held {} bytes", out.capacity());

    // Through a connection, as one frame and as two fragments.
    let cfg = ProtoConfig { max_message_size: MAX, ..ProtoConfig::default() };
    let now = Instant::now();
    for split in [None, Some(body.len() / 2)] {
        let mut conn = Connection::new(Role::Server, now, &cfg, 1);
        conn.writer.set_deflate(PerConn::shared(15));
        let mut frames = Vec::new();
        let mask = Some([1, 2, 3, 4]);
        match split {
            None => write_frame(&mut frames, true, OP_BINARY, mask, body),
            Some(at) => {
                write_frame(&mut frames, false, OP_BINARY, mask, &body[..at]);
                write_frame(&mut frames, true, OP_CONTINUATION, mask, &body[at..]);
            }
        }
        frames[0] |= 0x40;
        let mut wire = Vec::new();
        let mut input = Input::new(&mut frames);
        while let Some(event) = conn.poll_event(&mut input, &mut wire, now, &cfg) {
            match event {
                Event::Message { payload, .. } => assert!(payload.len() <= MAX),
                Event::Closed(info) => assert!([1007, 1009].contains(&info.code), "closed with {}", info.code),
                _ => {}
            }
        }
    }

    // Round trip through the shared compressor.
    let plain = body;
    if let Some(compressed) = codec.compress_shared(plain).map(<[u8]>::to_vec) {
        codec.inflate(None, &compressed, plain.len(), &mut out).expect("our own output inflates");
        assert_eq!(out, plain);
    }
});
