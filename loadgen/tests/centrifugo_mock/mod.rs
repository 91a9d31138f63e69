//! A small Centrifugo stand-in on the Tether engine (one shard, in the test process): JWT connect, subscribe
//! with history and recovery, client publish, `{}` pings, and the HTTP API's publish and broadcast. Enough to
//! check tether-load's side of the protocol without tetherd, and to make faults on purpose (a recovery that
//! skips or repeats a publication) that tether-load must count.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tether::{Config, ConnId, Ctx, Engine, Handler, HttpRequest, HttpResponse, Message};

pub const SECRET: &str = "s";
pub const API_KEY: &str = "k";
const EPOCH: &str = "mockepoc";
const HISTORY: usize = 1000;

/// What the stand-in gets wrong on purpose.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// A successful recovery leaves out its first publication (a gap, once a later one arrives).
    SkipOnRecovery,
    /// A successful recovery repeats the client's own last offset first (a duplicate per recovery).
    RepeatOnRecovery,
}

#[derive(Default)]
struct Channel {
    top: u64,
    history: VecDeque<(u64, String)>,
}

pub struct Mock {
    channels: HashMap<String, Channel>,
    fault: Fault,
    ping_every: Duration,
}

#[derive(Default)]
pub struct MockConn {
    user: Option<String>,
}

impl Mock {
    /// Appends a publication to `channel` and sends it to every subscriber; its offset.
    fn publish(&mut self, ctx: &mut Ctx<'_, Self>, channel: &str, data: &Value) -> u64 {
        let data = data.to_string();
        let c = self.channels.entry(channel.to_string()).or_default();
        c.top += 1;
        let offset = c.top;
        c.history.push_back((offset, data.clone()));
        if c.history.len() > HISTORY {
            c.history.pop_front();
        }
        let push = format!(r#"{{"push":{{"channel":{},"pub":{{"data":{data},"offset":{offset}}}}}}}"#, json!(channel));
        let _ = ctx.publish(channel, Message::Text(&push));
        offset
    }

    /// Handles one command; its reply (if any) is sent at once, so replies keep the commands' order.
    fn command(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, cmd: &Value) -> Option<()> {
        let id = cmd["id"].as_u64().unwrap_or(0);
        if let Some(c) = cmd.get("connect") {
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
            let Some(claims) = c["token"]
                .as_str()
                .and_then(|t| jsonwebtoken::decode::<Value>(t, &key, &v).ok())
                .and_then(|d| d.claims["sub"].as_str().map(str::to_string))
            else {
                ctx.close(conn, 3500, "invalid token");
                return None;
            };
            ctx.state(conn)?.user = Some(claims);
            let reply =
                format!(r#"{{"id":{id},"connect":{{"client":"c{id}","version":"mock","ping":1,"pong":true}}}}"#);
            let _ = ctx.send(conn, Message::Text(&reply));
            return Some(());
        }
        ctx.state(conn)?.user.as_ref()?;
        if let Some(s) = cmd.get("subscribe") {
            let name = s["channel"].as_str()?.to_string();
            let c = self.channels.entry(name.clone()).or_default();
            let mut result = json!({"recoverable": true, "positioned": true, "epoch": EPOCH, "offset": c.top});
            if s["recover"].as_bool() == Some(true) {
                let since = s["offset"].as_u64().unwrap_or(0);
                let first_kept = c.history.front().map_or(c.top + 1, |p| p.0);
                let ok = s["epoch"].as_str() == Some(EPOCH) && since <= c.top && first_kept <= since + 1;
                result["was_recovering"] = json!(true);
                result["recovered"] = json!(ok);
                if ok {
                    let mut pubs: Vec<Value> = c
                        .history
                        .iter()
                        .filter(|p| p.0 > since)
                        .map(|p| json!({"data": serde_json::from_str::<Value>(&p.1).unwrap(), "offset": p.0}))
                        .collect();
                    match self.fault {
                        Fault::SkipOnRecovery if !pubs.is_empty() => {
                            pubs.remove(0);
                        }
                        Fault::RepeatOnRecovery if since > 0 => {
                            pubs.insert(0, json!({"data": {}, "offset": since}));
                        }
                        _ => {}
                    }
                    result["offset"] = json!(since);
                    result["publications"] = json!(pubs);
                }
            }
            let reply = json!({"id": id, "subscribe": result}).to_string();
            // The reply goes out before any publication of the channel.
            let _ = ctx.send(conn, Message::Text(&reply));
            ctx.subscribe(conn, &name);
            return Some(());
        }
        if let Some(p) = cmd.get("publish") {
            let name = p["channel"].as_str()?.to_string();
            // The publisher's own subscription gets it too: reply first, like Centrifugo.
            let _ = ctx.send(conn, Message::Text(&format!(r#"{{"id":{id},"publish":{{}}}}"#)));
            self.publish(ctx, &name, &p["data"]);
            return Some(());
        }
        let reply = format!(r#"{{"id":{id},"error":{{"code":104,"message":"method not found"}}}}"#);
        let _ = ctx.send(conn, Message::Text(&reply));
        Some(())
    }
}

impl Handler for Mock {
    type Conn = MockConn;
    type Notice = ();

    fn on_open(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let at = ctx.now() + self.ping_every;
        ctx.set_timer(conn, at);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId) {
        let _ = ctx.send(conn, Message::Text("{}"));
        let at = ctx.now() + self.ping_every;
        ctx.set_timer(conn, at);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Self>, conn: ConnId, message: Message<'_>) {
        let Message::Text(text) = message else {
            ctx.close(conn, 3501, "bad request");
            return;
        };
        for line in text.split('\n').map(str::trim).filter(|l| !l.is_empty()) {
            let Ok(cmd) = serde_json::from_str::<Value>(line) else {
                ctx.close(conn, 3501, "bad request");
                return;
            };
            if cmd.as_object().is_some_and(|o| o.is_empty()) {
                continue; // a pong
            }
            self.command(ctx, conn, &cmd);
        }
    }

    fn on_http(&mut self, ctx: &mut Ctx<'_, Self>, request: &HttpRequest) -> HttpResponse {
        if request.header("X-API-Key") != Some(API_KEY) {
            return HttpResponse::new(401, "Unauthorized", "text/plain", "");
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return HttpResponse::new(400, "Bad Request", "text/plain", "");
        };
        let result = match request.path.as_str() {
            "/api/publish" => {
                let offset = self.publish(ctx, body["channel"].as_str().unwrap_or(""), &body["data"]);
                json!({"result": {"offset": offset, "epoch": EPOCH}})
            }
            "/api/broadcast" => {
                let channels: Vec<String> = body["channels"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let responses: Vec<Value> = channels
                    .iter()
                    .map(|c| json!({"result": {"offset": self.publish(ctx, c, &body["data"]), "epoch": EPOCH}}))
                    .collect();
                json!({"result": {"responses": responses}})
            }
            _ => return HttpResponse::not_found(),
        };
        HttpResponse::new(200, "OK", "application/json", result.to_string())
    }
}

/// Starts the stand-in on 127.0.0.1; its engine and address.
pub fn start(fault: Fault) -> (Engine<Mock>, SocketAddr) {
    let config = Config {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        shards: 1,
        max_connections: 4096,
        ping_interval: None,
        tick: Duration::from_millis(10),
        ..Config::default()
    };
    let engine =
        Engine::start(config, move |_| Mock { channels: HashMap::new(), fault, ping_every: Duration::from_secs(1) })
            .expect("start the mock");
    let addr = engine.local_addr().expect("mock address");
    (engine, addr)
}
