//! One client's state (the engine keeps it in the connection's slot: [`tether::Handler::Conn`]) and its
//! deadlines: no `connect` within `stale_close_delay` (3502), the next `{}` ping, the pong deadline (3012),
//! the connection's and each subscription's expiry. The shard's wheel holds one timer per connection, at
//! [`Session::next_deadline`]; [`Session::due`] says what is due when it fires. No I/O, no clock reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::broker::ClientId;
use super::protocol::Disconnect;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Upgraded, waiting for `connect`.
    #[default]
    Fresh,
    Connected,
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
    pub flags: u8,
    /// When its subscription token expires (refreshed by `sub_refresh`).
    pub expires_at: Option<Instant>,
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
    pub subs: Vec<Sub>,
    pub opened: Option<Instant>,
    pub next_ping: Option<Instant>,
    pub pong_deadline: Option<Instant>,
    /// When the connection's token expires (`exp` / `expire_at`).
    pub expires_at: Option<Instant>,
}

/// Deadlines the session needs from the config.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub stale_close_delay: Duration,
    pub expired_close_delay: Duration,
    pub expired_sub_close_delay: Duration,
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
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("")
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
        match self.phase {
            Phase::Fresh => self.opened.map(|o| o + t.stale_close_delay),
            Phase::Connected => {
                let subs = self.subs.iter().filter_map(|s| s.expires_at).map(|e| e + t.expired_sub_close_delay);
                [self.next_ping, self.pong_deadline, self.expires_at.map(|e| e + t.expired_close_delay)]
                    .into_iter()
                    .flatten()
                    .chain(subs)
                    .min()
            }
        }
    }

    /// What is due at `now`, in order of precedence: closes first, then expired subscriptions, then a ping
    /// (which starts the pong deadline).
    pub fn due(&mut self, now: Instant, t: &Timing) -> Due {
        if self.phase == Phase::Fresh {
            return match self.opened {
                Some(o) if now >= o + t.stale_close_delay => Due::Close(Disconnect::STALE),
                _ => Due::Nothing,
            };
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Due::Close(Disconnect::NO_PONG);
        }
        if self.expires_at.is_some_and(|e| now >= e + t.expired_close_delay) {
            return Due::Close(Disconnect::EXPIRED);
        }
        let expired: Vec<Arc<str>> = self
            .subs
            .iter()
            .filter(|s| s.expires_at.is_some_and(|e| now >= e + t.expired_sub_close_delay))
            .map(|s| s.channel.clone())
            .collect();
        if !expired.is_empty() {
            return Due::ExpiredSubs(expired);
        }
        if self.next_ping.is_some_and(|p| now >= p) {
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + t.pong_timeout);
            }
            self.next_ping = Some(now + t.ping_interval);
            return Due::Ping;
        }
        Due::Nothing
    }

    /// A sign of life from the client (its `{}` pong, or any command): the pong deadline is met.
    pub fn alive(&mut self) {
        self.pong_deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            stale_close_delay: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
        }
    }

    #[test]
    fn stale_without_connect() {
        let t = timing();
        let now = Instant::now();
        let mut s = Session { opened: Some(now), ..Session::default() };
        assert_eq!(s.next_deadline(&t), Some(now + Duration::from_secs(10)));
        assert_eq!(s.due(now + Duration::from_secs(9), &t), Due::Nothing);
        assert_eq!(s.due(now + Duration::from_secs(10), &t), Due::Close(Disconnect::STALE));
    }

    #[test]
    fn ping_then_pong_deadline() {
        let t = timing();
        let now = Instant::now();
        let mut s = Session { phase: Phase::Connected, next_ping: Some(now), ..Session::default() };
        assert_eq!(s.due(now, &t), Due::Ping);
        assert_eq!(s.pong_deadline, Some(now + Duration::from_secs(8)));
        assert_eq!(s.next_deadline(&t), Some(now + Duration::from_secs(8)));
        s.alive();
        assert_eq!(s.next_deadline(&t), Some(now + Duration::from_secs(25)), "answered: next is the next ping");
        assert_eq!(s.due(now + Duration::from_secs(25), &t), Due::Ping);
        assert_eq!(s.due(now + Duration::from_secs(33), &t), Due::Close(Disconnect::NO_PONG));
    }

    #[test]
    fn expiry_and_expired_subscriptions() {
        let t = timing();
        let now = Instant::now();
        let mut s = Session {
            phase: Phase::Connected,
            expires_at: Some(now + Duration::from_secs(60)),
            subs: vec![Sub { channel: "a".into(), flags: 0, expires_at: Some(now + Duration::from_secs(5)) }],
            ..Session::default()
        };
        assert_eq!(s.next_deadline(&t), Some(now + Duration::from_secs(30)));
        assert_eq!(s.due(now + Duration::from_secs(30), &t), Due::ExpiredSubs(vec!["a".into()]));
        s.subs.clear();
        assert_eq!(s.due(now + Duration::from_secs(85), &t), Due::Close(Disconnect::EXPIRED));
    }
}
