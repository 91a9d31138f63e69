//! `--protocol centrifugo`: tether-load as a crowd of Centrifugo clients (client protocol v2, JSON) plus a
//! publisher, measuring publish-to-delivery latency and checking that every offset arrives exactly once.
//!
//! Each connection connects with a JWT (HS256, `sub` = `u<index>`), subscribes to K of N channels (connection
//! `i` takes channels `(i*K + j) % N`), answers the server's `{}` pings, and with `--reconnect-every` closes
//! itself at a random point of every such period and resubscribes with `recover` from the last offset it saw.
//! Publications carry `{"t":<ns>,"s":<sequence>}`, `t` on a clock that reads the wall clock once per process
//! (ns since 2026-01-01 UTC) and the monotonic clock after that: publisher and receivers in one process share
//! it exactly, and several tether-load processes on one machine (one per gateway node, with the publisher in
//! one of them) agree to within the wall clock's reading error (microseconds), so the latency needs no clock
//! sync.
//!
//! ```text
//! codec.rs   commands out, replies and pushes in (a scanner for publications, serde for the rest)
//! track.rs   per (connection, channel) offset and epoch; gaps, duplicates, recoveries
//! client.rs  the shard side: per-connection protocol state on the engine's slots, timers on its wheel
//! api.rs     the HTTP API publisher thread (POST /api/publish, /api/broadcast)
//! stats.rs   the counters a shard or the publisher keeps, and the report section built from them
//! ```

pub mod api;
pub mod client;
pub mod codec;
pub mod stats;
pub mod track;

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

pub use api::ApiTarget;

/// The run's time stamp of `at` (see the module docs): ns since 2026-01-01 UTC, read once from the wall clock
/// at `epoch` and advanced by the monotonic clock.
pub fn stamp_ns(epoch: Instant, at: Instant) -> u64 {
    const REF_UNIX_S: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    static BASE: OnceLock<u64> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let since_ref = wall.saturating_sub(Duration::from_secs(REF_UNIX_S)).as_nanos() as u64;
        since_ref.saturating_sub(epoch.elapsed().as_nanos() as u64)
    });
    base + at.saturating_duration_since(epoch).as_nanos() as u64
}

/// Where publications come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishVia {
    /// The server HTTP API, from a thread of its own.
    Api,
    /// `publish` commands from the connections themselves.
    Client,
}

impl PublishVia {
    pub fn name(self) -> &'static str {
        match self {
            PublishVia::Api => "api",
            PublishVia::Client => "client",
        }
    }
}

/// The default WebSocket path of a Centrifugo server.
pub const DEFAULT_PATH: &str = "/connection/websocket";

/// Everything `--protocol centrifugo` adds to a run.
#[derive(Clone, Debug)]
pub struct CentrifugoConfig {
    /// HS256 key for the connection tokens; `None` = connect without a token.
    pub token_secret: Option<String>,
    /// N: channels `prefix0` .. `prefix(N-1)`.
    pub channels: u32,
    /// K (at most N): subscriptions per connection.
    pub subscriptions_per_connection: u32,
    pub channel_prefix: String,
    /// Publications per second in all (0 = none).
    pub publish_rate: f64,
    pub publish_via: PublishVia,
    pub api: ApiTarget,
    pub api_key: Option<String>,
    /// Channels per API request: more than 1 publishes the same data to that many channels with `broadcast`.
    pub publish_batch: u32,
    /// API publisher threads, each with its share of the rate and of the channels (1 = one request at a time).
    pub publish_concurrency: u32,
    /// Publication data padded to at least this many bytes.
    pub publication_size: usize,
    /// Each connection closes itself once per period, at a random point of it, and recovers.
    pub reconnect_every: Option<Duration>,
}

impl CentrifugoConfig {
    /// Channel number of connection `index`'s subscription `j`.
    pub fn channel(&self, index: u32, j: u32) -> u32 {
        ((index as u64 * self.subscriptions_per_connection as u64 + j as u64) % self.channels as u64) as u32
    }

    pub fn channel_name(&self, channel: u32) -> String {
        format!("{}{channel}", self.channel_prefix)
    }

    /// Which of connection `index`'s subscriptions `name` is, if any.
    pub fn subscription_of(&self, index: u32, name: &str) -> Option<u32> {
        let digits = name.strip_prefix(self.channel_prefix.as_str())?;
        // Exactly the name `channel_name` writes: digits, no sign, no leading zero.
        if !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        let channel: u64 = digits.parse().ok()?;
        let (n, k) = (self.channels as u64, self.subscriptions_per_connection as u64);
        if channel >= n {
            return None;
        }
        let first = index as u64 * k % n;
        let j = (channel + n - first) % n;
        (j < k).then_some(j as u32)
    }

    /// How many of `connections` connections subscribe to `channel`: they take the numbers 0 .. C*K in turn,
    /// modulo N.
    pub fn subscribers(&self, connections: u64, channel: u32) -> u64 {
        let (n, total) = (self.channels as u64, connections * self.subscriptions_per_connection as u64);
        total / n + u64::from((channel as u64) < total % n)
    }

    /// The connection token of `index`: HS256, `{"sub":"u<index>"}`.
    pub fn token(&self, index: u32) -> Option<String> {
        let secret = self.token_secret.as_ref()?;
        #[derive(serde::Serialize)]
        struct Claims {
            sub: String,
        }
        let claims = Claims { sub: format!("u{index}") };
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).ok()
    }
}

/// A close code after which a Centrifugo SDK reconnects (3000-3499, 4000-4499, 5000 and up; below 3000 it
/// reconnects too, but tether-load leaves those to `--reconnect`).
pub fn reconnect_advised(code: u16) -> bool {
    matches!(code, 3000..=3499 | 4000..=4499 | 5000..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: u32, k: u32) -> CentrifugoConfig {
        CentrifugoConfig {
            token_secret: Some("s".into()),
            channels: n,
            subscriptions_per_connection: k,
            channel_prefix: "bench:".into(),
            publish_rate: 0.0,
            publish_via: PublishVia::Api,
            api: ApiTarget::parse("http://127.0.0.1:8000/api").unwrap(),
            api_key: None,
            publish_batch: 1,
            publish_concurrency: 1,
            publication_size: 0,
            reconnect_every: None,
        }
    }

    #[test]
    fn channels_and_subscribers() {
        for (n, k, conns) in [(10, 2, 200), (7, 3, 11), (5, 5, 3), (1, 1, 4), (100, 1, 37)] {
            let c = config(n, k);
            let mut counts = vec![0u64; n as usize];
            for i in 0..conns {
                let mut mine = Vec::new();
                for j in 0..k {
                    let ch = c.channel(i, j);
                    counts[ch as usize] += 1;
                    mine.push(ch);
                    assert_eq!(c.subscription_of(i, &c.channel_name(ch)), Some(j), "{n} {k} {i} {j}");
                }
                mine.sort();
                mine.dedup();
                assert_eq!(mine.len(), k as usize, "a connection's channels are distinct");
                for ch in (0..n).filter(|ch| !mine.contains(ch)) {
                    assert_eq!(c.subscription_of(i, &c.channel_name(ch)), None);
                }
            }
            for ch in 0..n {
                assert_eq!(c.subscribers(conns as u64, ch), counts[ch as usize], "{n} {k} {conns} {ch}");
            }
        }
        let c = config(10, 2);
        assert_eq!(c.subscription_of(0, "bench:"), None);
        assert_eq!(c.subscription_of(0, "bench:00"), None);
        assert_eq!(c.subscription_of(0, "bench:01"), None);
        assert_eq!(c.subscription_of(0, "bench:+1"), None);
        assert_eq!(c.subscription_of(0, "bench:1"), Some(1));
        assert_eq!(c.subscription_of(0, "other:0"), None);
        assert_eq!(c.subscription_of(0, "bench:10"), None);
        assert_eq!(c.subscribers(200, 3), 40);
    }

    #[test]
    fn token_is_hs256_with_the_user() {
        let c = config(1, 1);
        let token = c.token(42).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_secret(b"s"), &v)
            .unwrap();
        assert_eq!(data.claims, serde_json::json!({"sub": "u42"}));
        assert_eq!(CentrifugoConfig { token_secret: None, ..c }.token(1), None);
    }

    #[test]
    fn reconnect_advice() {
        for code in [3000, 3012, 3499, 4000, 4499, 5000] {
            assert!(reconnect_advised(code), "{code}");
        }
        for code in [1000, 1006, 2999, 3500, 3501, 3999, 4500, 4999] {
            assert!(!reconnect_advised(code), "{code}");
        }
    }
}
