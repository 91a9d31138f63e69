//! The Centrifugo client protocol v2 in JSON: the commands tether-load sends and the replies and pushes it
//! reads (`../shared/GATEWAY-PROTOCOL.md` §2-§3). Pure: strings in, values out.
//!
//! A received frame holds one or more lines joined by `\n`. A publication push, the hot path, is read by a
//! small scanner that walks the JSON structure without allocating ([`scan_publication`]); anything else (a
//! reply, another push, or a publication the scanner does not take: escaped strings, floats) goes through
//! serde_json. Both give the same answer for a publication; the tests hold them to it.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::de::IgnoredAny;
use serde::Deserialize;

/// One line of a received frame.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    /// An empty reply `{}`: the server's ping, answered with `{}`.
    Ping,
    /// A `pub` push.
    Publication { channel: Cow<'a, str>, publication: Publication },
    /// The answer to one of our commands.
    Reply { id: u32, body: ReplyBody },
    /// An `unsubscribe` push: the server ended a subscription.
    Unsubscribed { channel: String, code: u32 },
    /// Any other push (join, leave, message, subscribe, disconnect...).
    OtherPush,
    /// Not JSON, or not a reply or push.
    Malformed,
}

/// What tether-load needs of a publication: its offset in the channel's stream and, when the data is ours, the
/// time it was published (`t`, nanoseconds since the run's epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    /// 0 when the channel keeps no history.
    pub offset: u64,
    pub sent_ns: Option<u64>,
}

#[derive(Debug, PartialEq)]
pub enum ReplyBody {
    Error {
        code: u32,
        message: String,
    },
    Connect {
        client: String,
    },
    Subscribe(SubscribeResult),
    Publish,
    /// A result of another command, or neither a result nor an error.
    Other,
}

/// A subscribe result (the fields tether-load reads).
#[derive(Debug, Default, PartialEq)]
pub struct SubscribeResult {
    pub recoverable: bool,
    pub epoch: String,
    pub offset: u64,
    pub was_recovering: bool,
    pub recovered: bool,
    /// The recovered publications, in order.
    pub publications: Vec<Publication>,
}

/// The lines of one received frame, blank ones skipped.
pub fn lines(frame: &str) -> impl Iterator<Item = &str> {
    frame.split('\n').map(str::trim).filter(|l| !l.is_empty())
}

/// Decodes one line.
pub fn decode_line(line: &str) -> Incoming<'_> {
    let line = line.trim();
    if line == "{}" {
        return Incoming::Ping;
    }
    if let Some((channel, publication)) = scan_publication(line) {
        return Incoming::Publication { channel: Cow::Borrowed(channel), publication };
    }
    decode_with_serde(line)
}

// ----- the serde path -----

#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    id: u32,
    error: Option<WireError>,
    push: Option<WirePush>,
    connect: Option<WireConnect>,
    subscribe: Option<WireSubscribe>,
    publish: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct WireConnect {
    #[serde(default)]
    client: String,
}

#[derive(Deserialize)]
struct WireSubscribe {
    #[serde(default)]
    recoverable: bool,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    was_recovering: bool,
    #[serde(default)]
    recovered: bool,
    #[serde(default)]
    publications: Vec<WirePub>,
}

#[derive(Deserialize)]
struct WirePush {
    #[serde(default)]
    channel: String,
    #[serde(rename = "pub")]
    publication: Option<WirePub>,
    unsubscribe: Option<WireUnsubscribe>,
}

#[derive(Deserialize)]
struct WirePub {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Deserialize)]
struct WireUnsubscribe {
    #[serde(default)]
    code: u32,
}

impl WirePub {
    fn publication(&self) -> Publication {
        Publication { offset: self.offset, sent_ns: self.data.get("t").and_then(serde_json::Value::as_u64) }
    }
}

fn decode_with_serde(line: &str) -> Incoming<'_> {
    let Ok(reply) = serde_json::from_str::<WireReply>(line) else {
        return Incoming::Malformed;
    };
    if let Some(push) = reply.push {
        if let Some(p) = push.publication {
            return Incoming::Publication { channel: Cow::Owned(push.channel), publication: p.publication() };
        }
        if let Some(u) = push.unsubscribe {
            return Incoming::Unsubscribed { channel: push.channel, code: u.code };
        }
        return Incoming::OtherPush;
    }
    if reply.id == 0 {
        // Neither a push nor the answer to a command: a ping with extra fields, or garbage.
        return if reply.error.is_none() { Incoming::Ping } else { Incoming::Malformed };
    }
    let body = if let Some(e) = reply.error {
        ReplyBody::Error { code: e.code, message: e.message }
    } else if let Some(c) = reply.connect {
        ReplyBody::Connect { client: c.client }
    } else if let Some(s) = reply.subscribe {
        ReplyBody::Subscribe(SubscribeResult {
            recoverable: s.recoverable,
            epoch: s.epoch,
            offset: s.offset,
            was_recovering: s.was_recovering,
            recovered: s.recovered,
            publications: s.publications.iter().map(WirePub::publication).collect(),
        })
    } else if reply.publish.is_some() {
        ReplyBody::Publish
    } else {
        ReplyBody::Other
    };
    Incoming::Reply { id: reply.id, body }
}

// ----- the publication scanner -----

/// Reads `{"push":{"channel":"c","pub":{"data":{"t":..},"offset":7}}}` (keys in any order, unknown keys and
/// whitespace skipped) without allocating. `None` when the line is not a publication push or holds something
/// the scanner leaves to serde (an escaped key or channel, a non-integer offset); never a wrong answer.
pub fn scan_publication(line: &str) -> Option<(&str, Publication)> {
    let mut c = Cursor { s: line.as_bytes(), i: 0 };
    let mut found = None;
    c.object(|c, key| match key {
        "push" => {
            found = Some(scan_push(c)?);
            Some(())
        }
        // A push has no id (or 0).
        "id" => (c.integer()? == 0).then_some(()),
        _ => c.skip_value(),
    })?;
    c.ws();
    if c.i != c.s.len() {
        return None;
    }
    found
}

fn scan_push<'a>(c: &mut Cursor<'a>) -> Option<(&'a str, Publication)> {
    let mut channel = None;
    let mut publication = None;
    c.object(|c, key| match key {
        "channel" => {
            channel = Some(c.plain_str()?);
            Some(())
        }
        "pub" => {
            publication = Some(scan_pub(c)?);
            Some(())
        }
        _ => c.skip_value(),
    })?;
    Some((channel?, publication?))
}

fn scan_pub(c: &mut Cursor<'_>) -> Option<Publication> {
    let mut p = Publication::default();
    c.object(|c, key| match key {
        "offset" => {
            p.offset = c.integer()?;
            Some(())
        }
        "data" if c.peek()? == b'{' => c.object(|c, key| match key {
            "t" => {
                p.sent_ns = Some(c.integer()?);
                Some(())
            }
            _ => c.skip_value(),
        }),
        _ => c.skip_value(),
    })?;
    Some(p)
}

/// A position in a JSON text. Every method returns `None` where the text is not what it expects.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// A string with no escapes in it, borrowed.
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' => return None,
                _ => self.i += 1,
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        self.i += 1;
        Some(text)
    }

    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }

    /// A non-negative integer that fits u64 (`None` for floats, exponents and signs).
    fn integer(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        if self.i == start || matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.s[start..self.i]).ok()?.parse().ok()
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.s.get(self.i)? {
                        b'"' => {
                            self.skip_str()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// An object: `member` reads each value (the cursor is after the key's colon).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.plain_str()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

// ----- commands -----

/// Appends `s` as a JSON string.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `{"id":1,"connect":{"token":"..","name":"tether-load"}}`.
pub fn connect_command(out: &mut String, id: u32, token: Option<&str>) {
    let _ = write!(out, "{{\"id\":{id},\"connect\":{{");
    if let Some(token) = token {
        out.push_str("\"token\":");
        push_json_str(out, token);
        out.push(',');
    }
    out.push_str("\"name\":\"tether-load\"}}");
}

/// `{"id":N,"subscribe":{"channel":..}}`, with `"recover":true,"offset":..,"epoch":..` when a position is
/// known.
pub fn subscribe_command(out: &mut String, id: u32, channel: &str, recover: Option<(u64, &str)>) {
    let _ = write!(out, "{{\"id\":{id},\"subscribe\":{{\"channel\":");
    push_json_str(out, channel);
    if let Some((offset, epoch)) = recover {
        let _ = write!(out, ",\"recover\":true,\"offset\":{offset},\"epoch\":");
        push_json_str(out, epoch);
    }
    out.push_str("}}");
}

/// `{"id":N,"publish":{"channel":..,"data":DATA}}`; `data` is JSON already.
pub fn publish_command(out: &mut String, id: u32, channel: &str, data: &str) {
    let _ = write!(out, "{{\"id\":{id},\"publish\":{{\"channel\":");
    push_json_str(out, channel);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push_str("}}");
}

/// The data of a publication: `{"t":<ns since the run's epoch>,"s":<sequence>}`, padded with a `"p"` string
/// to at least `size` bytes.
pub fn publication_data(out: &mut String, sent_ns: u64, seq: u64, size: usize) {
    let start = out.len();
    let _ = write!(out, "{{\"t\":{sent_ns},\"s\":{seq}");
    // The padding `,"p":""` adds 7 bytes before the closing brace.
    let now = out.len() - start + 1;
    if size > now {
        out.push_str(",\"p\":\"");
        out.extend(std::iter::repeat_n('x', size.saturating_sub(now + 7)));
        out.push('"');
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(line: &str) -> (String, Publication) {
        match decode_line(line) {
            Incoming::Publication { channel, publication } => (channel.into_owned(), publication),
            other => panic!("not a publication: {other:?} <- {line}"),
        }
    }

    #[test]
    fn scanner_and_serde_agree_on_publications() {
        let cases = [
            r#"{"push":{"channel":"bench:1","pub":{"data":{"t":123,"s":4},"offset":7}}}"#,
            r#"{"push":{"pub":{"offset":7,"data":{"s":4,"t":123}},"channel":"bench:1"}}"#,
            r#" { "push" : { "channel" : "bench:1" , "pub" : { "data" : { "t" : 123 , "s" : 4 } , "offset" : 7 } } } "#,
            // Client publications carry the publisher's info; tags and unknown fields are skipped.
            r#"{"push":{"channel":"bench:1","pub":{"data":{"t":123,"s":4,"p":"x}]\"{"},"info":{"user":"u\"1","client":"c","conn_info":{"a":[1,{"b":"}"}]}},"offset":7,"tags":{"k":"v"}}}}"#,
            r#"{"push":{"channel":"bench:1","pub":{"data":{"t":123,"nested":{"t":5}},"offset":7,"delta":false,"time":null}}}"#,
        ];
        for line in cases {
            let scanned = scan_publication(line).unwrap_or_else(|| panic!("scanner refused {line}"));
            assert_eq!(scanned.0, "bench:1", "{line}");
            assert_eq!(scanned.1, Publication { offset: 7, sent_ns: Some(123) }, "{line}");
            match decode_with_serde(line) {
                Incoming::Publication { channel, publication } => {
                    assert_eq!((channel.as_ref(), publication), scanned, "{line}")
                }
                other => panic!("serde: {other:?} <- {line}"),
            }
        }
    }

    #[test]
    fn scanner_leaves_the_unusual_to_serde() {
        // Escaped channel, float offset, data that is not an object, no offset: still publications.
        let (c, p) = publication(r#"{"push":{"channel":"bench:\u0031","pub":{"data":{"t":5},"offset":7}}}"#);
        assert_eq!((c.as_str(), p), ("bench:1", Publication { offset: 7, sent_ns: Some(5) }));
        assert!(scan_publication(r#"{"push":{"channel":"a","pub":{"data":"hi","offset":3}}}"#).is_some());
        let (_, p) = publication(r#"{"push":{"channel":"a","pub":{"data":[1,2]}}}"#);
        assert_eq!(p, Publication { offset: 0, sent_ns: None });
        let (_, p) = publication(r#"{"push":{"channel":"a","pub":{"data":{"t":1.5},"offset":3}}}"#);
        assert_eq!(p, Publication { offset: 3, sent_ns: None });
        // Not publications.
        for line in [
            r#"{"push":{"channel":"a","join":{"info":{"user":"1","client":"c"}}}}"#,
            r#"{"id":3,"publish":{}}"#,
            r#"{"push":{"channel":"a","pub":{"offset":3}}} trailing"#,
            r#"{"push":{"channel":"a","pub":{"offset":3}}"#,
        ] {
            assert!(scan_publication(line).is_none(), "{line}");
        }
        assert_eq!(decode_line(r#"{"push":{"channel":"a","join":{"info":{"user":"1"}}}}"#), Incoming::OtherPush);
        assert_eq!(decode_line(r#"{"push":{"channel":"a","pub":{"offset":3}}"#), Incoming::Malformed);
        assert_eq!(decode_line("not json"), Incoming::Malformed);
    }

    #[test]
    fn replies_pings_and_pushes() {
        assert_eq!(decode_line("{}"), Incoming::Ping);
        assert_eq!(decode_line(" {} "), Incoming::Ping);
        assert_eq!(
            decode_line(r#"{"id":1,"connect":{"client":"abc","version":"0.1","ping":25,"pong":true}}"#),
            Incoming::Reply { id: 1, body: ReplyBody::Connect { client: "abc".into() } }
        );
        assert_eq!(
            decode_line(r#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#),
            Incoming::Reply { id: 4, body: ReplyBody::Error { code: 103, message: "permission denied".into() } }
        );
        assert_eq!(decode_line(r#"{"id":9,"publish":{}}"#), Incoming::Reply { id: 9, body: ReplyBody::Publish });
        assert_eq!(decode_line(r#"{"id":9,"unsubscribe":{}}"#), Incoming::Reply { id: 9, body: ReplyBody::Other });
        let line = r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"abcd","offset":5,"publications":[{"data":{"t":1},"offset":4},{"data":{"t":2,"s":1},"offset":5}],"recovered":true,"was_recovering":true,"positioned":true}}"#;
        assert_eq!(
            decode_line(line),
            Incoming::Reply {
                id: 2,
                body: ReplyBody::Subscribe(SubscribeResult {
                    recoverable: true,
                    epoch: "abcd".into(),
                    offset: 5,
                    was_recovering: true,
                    recovered: true,
                    publications: vec![
                        Publication { offset: 4, sent_ns: Some(1) },
                        Publication { offset: 5, sent_ns: Some(2) }
                    ],
                })
            }
        );
        assert_eq!(
            decode_line(r#"{"id":2,"subscribe":{}}"#),
            Incoming::Reply { id: 2, body: ReplyBody::Subscribe(SubscribeResult::default()) }
        );
        assert_eq!(
            decode_line(r#"{"push":{"channel":"bench:3","unsubscribe":{"code":2500,"reason":"insufficient state"}}}"#),
            Incoming::Unsubscribed { channel: "bench:3".into(), code: 2500 }
        );
    }

    #[test]
    fn frames_split_on_newlines() {
        let frame = "{\"id\":1,\"connect\":{\"client\":\"x\"}}\n{}\n\n{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":{},\"offset\":1}}}\n";
        let decoded: Vec<_> = lines(frame).map(decode_line).collect();
        assert_eq!(decoded.len(), 3);
        assert!(matches!(decoded[0], Incoming::Reply { id: 1, .. }));
        assert_eq!(decoded[1], Incoming::Ping);
        assert!(
            matches!(&decoded[2], Incoming::Publication { channel, publication } if channel == "c" && publication.offset == 1)
        );
    }

    #[test]
    fn commands() {
        let mut s = String::new();
        connect_command(&mut s, 1, Some("a.b.c"));
        assert_eq!(s, r#"{"id":1,"connect":{"token":"a.b.c","name":"tether-load"}}"#);
        s.clear();
        connect_command(&mut s, 1, None);
        assert_eq!(s, r#"{"id":1,"connect":{"name":"tether-load"}}"#);
        s.clear();
        subscribe_command(&mut s, 2, "bench:3", None);
        assert_eq!(s, r#"{"id":2,"subscribe":{"channel":"bench:3"}}"#);
        s.clear();
        subscribe_command(&mut s, 3, "bench:\"q", Some((17, "ep")));
        assert_eq!(s, r#"{"id":3,"subscribe":{"channel":"bench:\"q","recover":true,"offset":17,"epoch":"ep"}}"#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["subscribe"]["channel"], "bench:\"q");
        s.clear();
        publish_command(&mut s, 7, "bench:1", r#"{"t":1,"s":2}"#);
        assert_eq!(s, r#"{"id":7,"publish":{"channel":"bench:1","data":{"t":1,"s":2}}}"#);
    }

    #[test]
    fn publication_data_is_padded_json() {
        let mut s = String::new();
        publication_data(&mut s, 123, 4, 0);
        assert_eq!(s, r#"{"t":123,"s":4}"#);
        for size in [10, 16, 23, 24, 25, 64, 1000] {
            s.clear();
            publication_data(&mut s, 123, 4, size);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["t"], 123);
            // Unpadded 15 bytes; padded at least 22 (`,"p":""`), else exactly the size.
            let want = if size <= 15 { 15 } else { size.max(22) };
            assert_eq!(s.len(), want, "{size}: {s}");
        }
    }
}
