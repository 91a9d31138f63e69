//! The HTTP/1.1 upgrade parser (engine/src/proto/handshake.rs): `parse_request` on arbitrary bytes, at the
//! engine's default limits and at limits near the input's size, then the answers built from what it parsed;
//! `parse_response` (the client role's check of the server's 101) on the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::proto::handshake::{
    accept_key, header_line, parse_request, parse_response, reject_response, upgrade_response, RequestParse,
    ResponseParse,
};

/// The engine's defaults (Config::max_handshake_size, Config::max_http_body).
const MAX_SIZE: usize = 8192;
const MAX_BODY: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    check_request(data, MAX_SIZE, MAX_BODY);
    // Limits at and around the input's length reach the 431 / 413 / Partial edges.
    let n = data.len();
    check_request(data, n / 2 + 1, n / 4);
    check_request(data, n + 1, 0);
    check_response(data);
});

fn check_request(data: &[u8], max_size: usize, max_body: usize) {
    match parse_request(data, max_size, max_body) {
        RequestParse::Partial => assert!(data.len() < max_size, "Partial past max_size"),
        RequestParse::Continue => assert!(data.len() <= max_size, "Continue past max_size"),
        RequestParse::Reject(err) => {
            assert!((400..600).contains(&err.status), "reject status {}", err.status);
            let answer = reject_response(&err);
            assert_well_formed_response(&answer);
        }
        RequestParse::Http { request, consumed, .. } => {
            assert!(consumed <= data.len());
            assert!(request.body.len() <= max_body);
            assert!(consumed >= request.body.len());
            assert_eq!(&data[consumed - request.body.len()..consumed], &request.body[..]);
        }
        RequestParse::Upgrade { request, consumed } => {
            assert!(consumed <= data.len() && consumed <= max_size);
            assert!(!request.host.is_empty());
            // The answer the engine would send, and the client role's check of it, agree.
            let accept = accept_key(request.key.as_bytes());
            let protocol = request.protocols.first().map(String::as_str);
            // Response headers are built from request values only through header_line, which refuses
            // anything that could split the response.
            // (A few: our client role, like the server, takes at most MAX_HEADERS response headers.)
            let extra: Vec<String> = request
                .headers
                .iter()
                .take(8)
                .filter_map(|(name, value)| header_line(&format!("X-Echo-{name}"), value))
                .collect();
            for line in &extra {
                assert!(!line.contains('\r') && !line.contains('\n'), "header_line let a line break through");
            }
            if protocol.is_none_or(|p| p.chars().all(|c| c == '\t' || !c.is_control())) {
                let answer = upgrade_response(&accept, protocol, &extra);
                match parse_response(&answer, &request.key, usize::MAX) {
                    ResponseParse::Accepted { consumed, .. } => assert_eq!(consumed, answer.len()),
                    other => panic!("our own 101 was refused: {other:?}"),
                }
            }
        }
    }
}

fn check_response(data: &[u8]) {
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    match parse_response(data, KEY, MAX_SIZE) {
        ResponseParse::Accepted { consumed, .. } => assert!(consumed <= data.len() && consumed <= MAX_SIZE),
        ResponseParse::Partial => assert!(data.len() < MAX_SIZE),
        ResponseParse::Rejected { status, .. } => assert_ne!(status, 101),
        ResponseParse::Invalid(_) => {}
    }
}

/// An answer we send parses as one complete HTTP response with exactly its Content-Length of body.
fn assert_well_formed_response(answer: &[u8]) {
    let text = std::str::from_utf8(answer).expect("our answers are UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a number");
    assert_eq!(length, body.len());
    assert!(head.starts_with("HTTP/1.1 "));
}
