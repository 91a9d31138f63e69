//! The frame codec (engine/src/proto/frame.rs): `parse_header` on arbitrary bytes never panics, reads only
//! what it reports, and agrees with `write_header`, which writes back the same header byte for byte
//! (the parser refuses non-minimal lengths, so the encoding is unique). `write_close` always writes a
//! control frame that fits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::proto::frame::{parse_header, write_close, write_frame, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OP_CLOSE};

fuzz_target!(|data: &[u8]| {
    match parse_header(data) {
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN, "incomplete header in {} bytes", data.len()),
        Err(e) => assert_eq!(e.code, 1002),
        Ok(Some(h)) => {
            assert!(h.header_len <= data.len() && h.header_len <= MAX_HEADER_LEN);
            assert!(h.payload_len < 1 << 63);
            assert!(h.rsv < 8 && h.opcode < 16);
            // The header is a function of its first header_len bytes only.
            assert_eq!(parse_header(&data[..h.header_len]), Ok(Some(h)));
            if h.header_len > 2 {
                assert_eq!(parse_header(&data[..h.header_len - 1]), Ok(None));
            }
            // Round trip (RSV bits are never written by us; compare without them).
            if let Ok(len) = usize::try_from(h.payload_len) {
                let mut out = Vec::new();
                tether::proto::frame::write_header(&mut out, h.fin, h.opcode, h.mask, len);
                let mut original = data[..h.header_len].to_vec();
                original[0] &= 0x8F;
                assert_eq!(out, original);
            }
            // A whole frame written around the bytes that follow parses back to it, payload unmasked.
            let payload = &data[h.header_len..];
            let mut frame = Vec::new();
            write_frame(&mut frame, h.fin, h.opcode, h.mask, payload);
            let back = parse_header(&frame).unwrap().unwrap();
            assert_eq!(back.payload_len as usize, payload.len());
            let mut body = frame[back.header_len..].to_vec();
            if let Some(m) = back.mask {
                body.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
            }
            assert_eq!(body, payload);
        }
    }
    // write_close with an arbitrary code and reason: one final Close frame, payload within 125 bytes, the
    // reason cut on a char boundary.
    if data.len() >= 2 {
        let code = u16::from_be_bytes([data[0], data[1]]);
        let reason = String::from_utf8_lossy(&data[2..]);
        let mut out = Vec::new();
        write_close(&mut out, None, code, &reason);
        let h = parse_header(&out).unwrap().unwrap();
        assert!(h.fin && h.opcode == OP_CLOSE && h.header_len + h.payload_len as usize == out.len());
        assert!(h.payload_len as usize <= MAX_CONTROL_PAYLOAD);
        let payload = &out[h.header_len..];
        assert_ne!(payload.len(), 1);
        if payload.len() >= 2 {
            let sent = u16::from_be_bytes([payload[0], payload[1]]);
            assert!(tether_fuzz::sendable_close_code(sent), "Close with code {sent} on the wire");
            std::str::from_utf8(&payload[2..]).expect("close reason cut inside a character");
        }
    }
});
