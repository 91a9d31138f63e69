//! The gateway's command decoder and reply encoders (server/src/gateway/protocol.rs): an inbound message is
//! split into lines and each parsed with `parse_command`; whatever it yields (and every refusal) is then put
//! through the encoders the gateway answers with, and every line written must be one valid JSON value with
//! no line break in it (the client protocol frames replies by `\n`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tetherd::gateway::client::json_key;
use tetherd::gateway::protocol::{
    client_info, lines, parse_command, publication, push, ErrorCode, Obj, Replies, Request,
};

fuzz_target!(|data: &[u8]| {
    // The engine hands the gateway Text messages only, which it has checked to be UTF-8.
    let Ok(message) = std::str::from_utf8(data) else { return };
    let mut replies = Replies::default();
    let mut count = 0;
    for line in lines(message) {
        assert!(!line.contains('\n') && !line.is_empty());
        count += 1;
        let (id, request) = match parse_command(line) {
            Ok(parsed) => parsed,
            Err(bad) => {
                replies.error_message(0, ErrorCode::BAD_REQUEST, &bad.0);
                continue;
            }
        };
        encode(&mut replies, id, &request);
    }
    let out = &replies.out;
    // One line per command line.
    assert_eq!(if out.is_empty() { 0 } else { out.split('\n').count() }, count);
    for line in out.split('\n').filter(|l| !l.is_empty()) {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
            panic!("reply line is not JSON ({e}): {line}");
        }
    }
});

/// One reply line per request, built from the request's own (attacker-chosen) strings and raw JSON values.
fn encode(replies: &mut Replies, id: u32, request: &Request) {
    match request {
        Request::Pong => replies.line("{}"),
        Request::Connect(c) => {
            let data = c.data.as_ref().map(|d| d.get());
            let mut info = String::new();
            client_info(&mut info, &c.token, &c.name, data, data);
            let mut body = Obj::new().str("client", &c.name).str_if("version", &c.version).raw_opt("data", data);
            for (channel, sub) in &c.subs {
                // As the connect reply's `subs`: the channel is a key.
                body = body.raw(&json_key(channel), &info).num_if("offset", sub.offset).str_if("epoch", &sub.epoch);
            }
            replies.result(id, "connect", &body.finish());
        }
        Request::Subscribe(s) => {
            let body = Obj::new()
                .bool_if("recoverable", s.recover)
                .str_if("epoch", &s.epoch)
                .num_if("offset", s.offset)
                .raw_opt("data", s.data.as_ref().map(|d| d.get()))
                .str_if("delta", &s.delta)
                .finish();
            replies.line(&push(&s.channel, "subscribe", &body));
        }
        Request::Publish(p) => {
            let mut info = String::new();
            client_info(&mut info, &p.channel, "client", None, None);
            let data = p.data.as_ref().map_or("null", |d| d.get());
            let publication = publication(data, Some(&info), id as u64, None);
            replies.line(&push(&p.channel, "pub", &publication));
        }
        Request::Unsubscribe(c) | Request::Presence(c) | Request::PresenceStats(c) => {
            replies.result(id, "presence", &Obj::new().str("channel", &c.channel).finish());
        }
        Request::History(h) => {
            let mut body = Obj::new().str("channel", &h.channel).num_if("limit", h.limit.max(0) as u64);
            if let Some(since) = &h.since {
                body = body.num("offset", since.offset).str("epoch", &since.epoch);
            }
            replies.result(id, "history", &body.bool_if("reverse", h.reverse).finish());
        }
        Request::Send(s) => replies.line(&Obj::new().raw_opt("message", s.data.as_ref().map(|d| d.get())).finish()),
        Request::Rpc(r) => replies.result(
            id,
            "rpc",
            &Obj::new().raw_opt("data", r.data.as_ref().map(|d| d.get())).str("method", &r.method).finish(),
        ),
        Request::Refresh(r) => replies.result(id, "refresh", &Obj::new().str("token", &r.token).finish()),
        Request::SubRefresh(r) => {
            replies.result(id, "sub_refresh", &Obj::new().str("channel", &r.channel).str("token", &r.token).finish())
        }
    }
}
