//! One client's state (the engine keeps it in the connection's slot: [`tether::Handler::Conn`]) and its
//! deadlines: no `connect` within `stale_close_delay` (3502), the next `{}` ping, the pong deadline (3012),
//! the connection's and each subscription's expiry. The shard's wheel holds one timer per connection, at
//! [`Session::next_deadline`]; [`Session::due`] says what is due when it fires. No I/O, no clock reads.
//!
//! Memory matters here (one per connection, hundreds of thousands per node): deadlines are kept as
//! milliseconds since the gateway's epoch (8 bytes, 0 = none) rather than `Option<Instant>` (16), and the
//! first subscription lives inline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::auth::ConnectClaims;
use super::broker::ClientId;
use super::protocol::Disconnect;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Upgraded, waiting for `connect`.
    #[default]
    Fresh,
    Connected,
    /// Its `connect` was answered with an error (token expired): as in Centrifugo, the next command closes
    /// it with 3501; until then the stale deadline runs.
    Unusable,
}

/// A point in time as milliseconds since the gateway's epoch, plus one; 0 means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ms(u64);

impl Ms {
    pub const NONE: Ms = Ms(0);

    pub fn at(epoch: Instant, t: Instant) -> Ms {
        Ms(t.saturating_duration_since(epoch).as_millis() as u64 + 1)
    }

    pub fn is_some(self) -> bool {
        self.0 != 0
    }

    pub fn plus(self, d: Duration) -> Ms {
        if self.is_some() {
            Ms(self.0 + d.as_millis() as u64)
        } else {
            self
        }
    }

    pub fn instant(self, epoch: Instant) -> Option<Instant> {
        self.is_some().then(|| epoch + Duration::from_millis(self.0 - 1))
    }

    /// Whether this deadline exists and has come at `now`.
    pub fn passed(self, now: Ms) -> bool {
        self.is_some() && now >= self
    }
}

/// Flags of one subscription.
pub mod sub_flag {
    /// A presence entry was added for it.
    pub const PRESENCE: u8 = 1;
    /// Subscribed to the channel's join/leave topic.
    pub const JOIN_LEAVE: u8 = 2;
    /// Created by the server (token `channels`, API subscribe), not by the client.
    pub const SERVER_SIDE: u8 = 4;
    /// The namespace emits join/leave: a leave is published when it ends.
    pub const EMIT_LEAVE: u8 = 8;
}

#[derive(Clone, Debug)]
pub struct Sub {
    pub channel: Arc<str>,
    /// When its subscription token expires (refreshed by `sub_refresh`).
    pub expires_at: Ms,
    pub flags: u8,
    /// Non-zero while the Redis engine is taking the subscription: the token its outcome must carry.
    pub pending: u32,
}

impl Sub {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[derive(Debug, Default)]
pub struct Session {
    pub phase: Phase,
    pub client: ClientId,
    /// Set at connect ("" for anonymous).
    pub user: Option<Arc<str>>,
    /// The token's `info` (raw JSON), shown in presence, join/leave and publications.
    pub conn_info: Option<Arc<str>>,
    pub subs: SmallVec<[Sub; 1]>,
    pub opened: Ms,
    pub next_ping: Ms,
    pub pong_deadline: Ms,
    /// When the connection's token expires (`exp` / `expire_at`).
    pub expires_at: Ms,
    /// The command bucket (`client.command_rate_limit`): tokens left (negative: owed) at `bucket_at`, the
    /// low 32 bits of an `Ms` (elapsed time is taken modulo 2^32 ms, 49 days: a client silent that long
    /// may find its bucket refilled less than full, never more).
    pub tokens: f32,
    pub bucket_at: u32,
    /// What few connections need, boxed (8 bytes for the rest): the embedder's say until `connect`, and the
    /// commands waiting behind one the Redis engine answers.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    /// Who the embedder's [`Authorizer`](super::authorizer::Authorizer) said this connection is, at the
    /// upgrade; taken by the connect command.
    preauth: Option<ConnectClaims>,
    /// Set while the Redis engine answers one of this connection's commands: the commands that come meanwhile
    /// wait, so replies (and the pushes of a new subscription) keep the order of the commands, as Centrifugo
    /// answers them.
    waiting: Option<Waiting>,
}

/// Commands waiting behind one the Redis engine is answering.
#[derive(Debug, Default)]
pub struct Waiting {
    pub backlog: std::collections::VecDeque<Box<str>>,
    /// Bytes in `backlog`.
    pub bytes: usize,
    /// A connect reply waiting for its server-side subscriptions' results.
    pub connect: Option<PendingConnect>,
}

/// A connect reply whose `subs` the Redis engine is filling.
#[derive(Debug)]
pub struct PendingConnect {
    pub id: u32,
    /// The result object's JSON without its closing brace.
    pub head: String,
    /// Each server-side subscription and its result once known.
    pub subs: Vec<(Arc<str>, Option<String>)>,
}

/// What the command bucket says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    Ok,
    /// Over the rate: answer error 111.
    Refused,
    /// Still sending while it owes a whole burst: close 3013.
    Exhausted,
}

/// Deadlines the session needs from the config, and the epoch its `Ms` count from.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub epoch: Instant,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub stale_close_delay: Duration,
    pub expired_close_delay: Duration,
    pub expired_sub_close_delay: Duration,
}

impl Timing {
    pub fn ms(&self, t: Instant) -> Ms {
        Ms::at(self.epoch, t)
    }
}

/// What is due at a timer.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Close(Disconnect),
    /// Subscriptions whose token expired and was not refreshed in time.
    ExpiredSubs(Vec<Arc<str>>),
    Ping,
    Nothing,
}

impl Session {
    pub fn set_preauth(&mut self, claims: Option<Box<ConnectClaims>>) {
        if let Some(c) = claims {
            self.extra.get_or_insert_with(Default::default).preauth = Some(*c);
        }
    }

    pub fn take_preauth(&mut self) -> Option<ConnectClaims> {
        let c = self.extra.as_mut()?.preauth.take();
        self.tidy();
        c
    }

    /// The commands waiting behind a Redis answer, if one is awaited.
    pub fn waiting(&self) -> Option<&Waiting> {
        self.extra.as_ref()?.waiting.as_ref()
    }

    pub fn waiting_mut(&mut self) -> Option<&mut Waiting> {
        self.extra.as_mut()?.waiting.as_mut()
    }

    /// A Redis answer is awaited from now on (if it was not already).
    pub fn wait(&mut self) -> &mut Waiting {
        self.extra.get_or_insert_with(Default::default).waiting.get_or_insert_with(Default::default)
    }

    /// The answer came: what waited behind it.
    pub fn take_waiting(&mut self) -> Option<Waiting> {
        let w = self.extra.as_mut()?.waiting.take();
        self.tidy();
        w
    }

    fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.preauth.is_none() && e.waiting.is_none()) {
            self.extra = None;
        }
    }

    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }

    /// Takes one command from the connection's bucket (`rate` per second, `burst` deep, full at first).
    /// Refused commands are owed, so a client that keeps sending faster than the rate ends up owing a whole
    /// burst and is told to go ([`Rate::Exhausted`]); one that slows down is served again.
    pub fn take_command(&mut self, now: Ms, rate: f32, burst: f32) -> Rate {
        let now32 = now.0 as u32;
        let tokens = if self.bucket_at != 0 {
            let elapsed_ms = now32.wrapping_sub(self.bucket_at) as f32;
            (self.tokens + elapsed_ms * rate / 1000.0).min(burst)
        } else {
            burst
        };
        // 0 means "never used" (full bucket): a `now` whose low bits are 0 is taken as 1 ms later.
        self.bucket_at = now32.max(1);
        self.tokens = tokens - 1.0;
        if self.tokens >= 0.0 {
            Rate::Ok
        } else if self.tokens > -burst {
            Rate::Refused
        } else {
            Rate::Exhausted
        }
    }

    /// How long until the bucket (as `take_command` left it) holds one command again at `rate` per second,
    /// plus 2 ms: the bucket counts whole milliseconds, so a command read right at the deadline finds it full
    /// enough.
    pub fn command_wait(&self, rate: f32) -> Duration {
        Duration::from_secs_f32(((1.0 - self.tokens) / rate).max(0.0)) + Duration::from_millis(2)
    }

    pub fn sub(&self, channel: &str) -> Option<&Sub> {
        self.subs.iter().find(|s| &*s.channel == channel)
    }

    pub fn take_sub(&mut self, channel: &str) -> Option<Sub> {
        let i = self.subs.iter().position(|s| &*s.channel == channel)?;
        Some(self.subs.swap_remove(i))
    }

    /// The earliest deadline the wheel must wake this connection at.
    pub fn next_deadline(&self, t: &Timing) -> Option<Instant> {
        let next = match self.phase {
            Phase::Fresh | Phase::Unusable => self.opened.plus(t.stale_close_delay),
            Phase::Connected => {
                let subs = self.subs.iter().map(|s| s.expires_at.plus(t.expired_sub_close_delay));
                [self.next_ping, self.pong_deadline, self.expires_at.plus(t.expired_close_delay)]
                    .into_iter()
                    .chain(subs)
                    .filter(|m| m.is_some())
                    .min()
                    .unwrap_or(Ms::NONE)
            }
        };
        next.instant(t.epoch)
    }

    /// What is due at `now`, in order of precedence: closes first, then expired subscriptions, then a ping
    /// (which starts the pong deadline).
    pub fn due(&mut self, now: Instant, t: &Timing) -> Due {
        let now = t.ms(now);
        if self.phase != Phase::Connected {
            return if self.opened.plus(t.stale_close_delay).passed(now) {
                Due::Close(Disconnect::STALE)
            } else {
                Due::Nothing
            };
        }
        if self.pong_deadline.passed(now) {
            return Due::Close(Disconnect::NO_PONG);
        }
        if self.expires_at.plus(t.expired_close_delay).passed(now) {
            return Due::Close(Disconnect::EXPIRED);
        }
        let expired: Vec<Arc<str>> = self
            .subs
            .iter()
            .filter(|s| s.expires_at.plus(t.expired_sub_close_delay).passed(now))
            .map(|s| s.channel.clone())
            .collect();
        if !expired.is_empty() {
            return Due::ExpiredSubs(expired);
        }
        if self.next_ping.passed(now) {
            // A zero pong timeout means no pong deadline; a zero interval means no more pings (never a ping
            // due again at once, which would loop).
            if !self.pong_deadline.is_some() && !t.pong_timeout.is_zero() {
                self.pong_deadline = now.plus(t.pong_timeout);
            }
            self.next_ping = if t.ping_interval.is_zero() { Ms::NONE } else { now.plus(t.ping_interval) };
            return Due::Ping;
        }
        Due::Nothing
    }

    /// A sign of life from the client (its `{}` pong, or any command): the pong deadline is met.
    pub fn alive(&mut self) {
        self.pong_deadline = Ms::NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            epoch: Instant::now(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            stale_close_delay: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn stale_without_connect() {
        let t = timing();
        let now = t.epoch + S;
        let mut s = Session { opened: t.ms(now), ..Session::default() };
        assert_eq!(s.next_deadline(&t), Some(now + 10 * S));
        assert_eq!(s.due(now + 9 * S, &t), Due::Nothing);
        assert_eq!(s.due(now + 10 * S, &t), Due::Close(Disconnect::STALE));
    }

    #[test]
    fn ping_then_pong_deadline() {
        let t = timing();
        let now = t.epoch + S;
        let mut s = Session { phase: Phase::Connected, next_ping: t.ms(now), ..Session::default() };
        assert_eq!(s.due(now, &t), Due::Ping);
        assert_eq!(s.pong_deadline.instant(t.epoch), Some(now + 8 * S));
        assert_eq!(s.next_deadline(&t), Some(now + 8 * S));
        s.alive();
        assert_eq!(s.next_deadline(&t), Some(now + 25 * S), "answered: next is the next ping");
        assert_eq!(s.due(now + 25 * S, &t), Due::Ping);
        assert_eq!(s.due(now + 33 * S, &t), Due::Close(Disconnect::NO_PONG));
    }

    #[test]
    fn expiry_and_expired_subscriptions() {
        let t = timing();
        let now = t.epoch + S;
        let mut s = Session {
            phase: Phase::Connected,
            expires_at: t.ms(now + 60 * S),
            subs: smallvec::smallvec![Sub { channel: "a".into(), flags: 0, expires_at: t.ms(now + 5 * S), pending: 0 }],
            ..Session::default()
        };
        assert_eq!(s.next_deadline(&t), Some(now + 30 * S));
        assert_eq!(s.due(now + 30 * S, &t), Due::ExpiredSubs(vec!["a".into()]));
        s.subs.clear();
        assert_eq!(s.due(now + 85 * S, &t), Due::Close(Disconnect::EXPIRED));
    }

    #[test]
    fn nothing_armed_nothing_due() {
        let t = timing();
        let mut s = Session { phase: Phase::Connected, ..Session::default() };
        assert_eq!(s.next_deadline(&t), None);
        assert_eq!(s.due(t.epoch + 100 * S, &t), Due::Nothing);
    }

    #[test]
    fn zero_interval_or_timeout_disable_instead_of_looping() {
        let t = Timing { ping_interval: Duration::ZERO, pong_timeout: Duration::ZERO, ..timing() };
        let now = t.epoch + S;
        let mut s = Session { phase: Phase::Connected, next_ping: t.ms(now), ..Session::default() };
        assert_eq!(s.due(now, &t), Due::Ping);
        assert_eq!(s.due(now, &t), Due::Nothing, "no second ping at the same instant");
        assert_eq!(s.next_deadline(&t), None);
        assert!(!s.pong_deadline.is_some());
    }

    #[test]
    fn a_session_stays_small() {
        // Slot state for every connection of the node: keep it in check (was 144 bytes with Instants and a Vec;
        // 128 before the command bucket's 8 bytes; 136 before the boxed `extra`, which took the embedder's
        // `preauth` box over from the slot's `Conn`, so the slot did not grow).
        assert!(std::mem::size_of::<Session>() <= 144, "{}", std::mem::size_of::<Session>());
    }

    #[test]
    fn command_bucket() {
        let mut s = Session::default();
        let t0 = Ms(1000);
        for i in 0..10 {
            assert_eq!(s.take_command(t0, 5.0, 10.0), Rate::Ok, "command {i} of the first burst");
        }
        assert_eq!(s.take_command(t0, 5.0, 10.0), Rate::Refused);
        // 400 ms at 5/s pays back two tokens: the refused command's debt, and this one.
        assert_eq!(s.take_command(t0.plus(Duration::from_millis(400)), 5.0, 10.0), Rate::Ok);
        let mut last = Rate::Ok;
        for _ in 0..10 {
            last = s.take_command(t0.plus(Duration::from_millis(400)), 5.0, 10.0);
            assert_ne!(last, Rate::Ok);
        }
        assert_eq!(last, Rate::Exhausted, "a whole burst owed");
        // A client that pauses long enough is served again, and the bucket never holds more than a burst.
        let later = t0.plus(Duration::from_secs(60));
        for _ in 0..10 {
            assert_eq!(s.take_command(later, 5.0, 10.0), Rate::Ok);
        }
        assert_eq!(s.take_command(later, 5.0, 10.0), Rate::Refused);
    }
}
