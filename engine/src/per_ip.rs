//! Per-source-address limits, shared by every shard: connections held at once and new connections per
//! second from one address ([`Config::per_ip_max_connections`](crate::Config::per_ip_max_connections),
//! [`Config::per_ip_handshake_rate`](crate::Config::per_ip_handshake_rate)).
//!
//! A connection is charged when the kernel tells its peer address (right after the accept), before any
//! byte of its request is looked at, so a peer that opens connections and never finishes a request is
//! limited like any other; the verdict is given when the request is complete (503 or 429 with Retry-After,
//! never an upgrade). Every endpoint is covered: upgrades, the application's HTTP (the gateway API) and
//! `/metrics` alike.
//!
//! The table is striped (64 mutex-guarded maps, a stripe chosen by the address), so shards accepting at the
//! same time rarely meet on a lock, and a lock is held for one map operation. An IPv6 peer is counted by its
//! /64 (one host can use every address of its prefix); an IPv4-mapped IPv6 address counts as the IPv4 one.
//!
//! No entry outlives its use: an entry holds the address's open connections and its rate bucket; it is
//! removed when the last connection closes and the bucket is full again (at once when there is no rate),
//! and [`PerIp::sweep`] (run by shard 0 about once a second) removes those whose bucket refilled since.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const STRIPES: usize = 64;

/// What [`PerIp::admit`] decided for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted and counted: [`PerIp::release`] it when it closes.
    Admitted,
    /// The address already holds `per_ip_max_connections`: answer 503.
    TooMany,
    /// The address opened connections faster than `per_ip_handshake_rate`: answer 429.
    TooFast,
}

#[derive(Debug)]
struct Entry {
    /// Admitted connections of this address still holding a slot.
    open: u32,
    /// Rate bucket: tokens left as of `at` (nanoseconds since the table's epoch).
    tokens: f64,
    at: u64,
}

/// The shared table. `Default`-free: built from the config by [`PerIp::new`].
pub(crate) struct PerIp {
    max_connections: u32,
    /// New connections per second (tokens refilled per second); 0 = unlimited.
    rate: f64,
    /// Bucket size: the burst an address may open at once.
    burst: f64,
    epoch: Instant,
    stripes: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
    hasher: std::collections::hash_map::RandomState,
    entries: AtomicUsize,
}

/// The address an entry is kept under: IPv4 as is (also when written as IPv4-mapped IPv6), IPv6 by /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl PerIp {
    /// `max_connections` 0 = no limit on connections held; `rate` 0.0 = no limit on new connections (per
    /// second, with a burst of the same size, at least one).
    pub fn new(max_connections: u32, rate: f64, epoch: Instant) -> PerIp {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 0.0 };
        PerIp {
            max_connections,
            rate,
            burst: rate.max(1.0),
            epoch,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            entries: AtomicUsize::new(0),
        }
    }

    /// Whether any limit is set (otherwise nothing is tracked and every call is a no-op).
    pub fn enabled(&self) -> bool {
        self.max_connections > 0 || self.rate > 0.0
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Seconds a refused peer should wait: until its address has a token again (rate), or a guess at when a
    /// connection of its address may have closed (concurrency).
    pub fn retry_after(&self, verdict: Verdict) -> u32 {
        match verdict {
            Verdict::TooFast if self.rate > 0.0 => (1.0 / self.rate).ceil().clamp(1.0, 3600.0) as u32,
            _ => 5,
        }
    }

    fn stripe(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        &self.stripes[self.hasher.hash_one(ip) as usize % STRIPES]
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos().min(u64::MAX as u128) as u64
    }

    /// The bucket of `e` refilled up to `now`.
    fn refill(&self, e: &mut Entry, now: u64) {
        if self.rate > 0.0 && now > e.at {
            e.tokens = (e.tokens + (now - e.at) as f64 * 1e-9 * self.rate).min(self.burst);
        }
        e.at = e.at.max(now);
    }

    /// Whether an entry no longer says anything: no connection open and a full bucket.
    fn idle(&self, e: &Entry) -> bool {
        e.open == 0 && (self.rate == 0.0 || e.tokens >= self.burst)
    }

    /// A new connection from `ip`: counts it if admitted. A refused connection takes nothing (neither a slot
    /// of its address's count nor a token).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Verdict {
        if !self.enabled() {
            return Verdict::Admitted;
        }
        let ip = key(ip);
        let now = self.nanos(now);
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(ip).or_insert_with(|| {
            self.entries.fetch_add(1, Ordering::Relaxed);
            Entry { open: 0, tokens: self.burst, at: now }
        });
        self.refill(e, now);
        // A refused address's entry always holds something (a new entry has room and a full bucket), so a
        // refusal never leaves an idle entry behind.
        if self.max_connections > 0 && e.open >= self.max_connections {
            Verdict::TooMany
        } else if self.rate > 0.0 && e.tokens < 1.0 {
            Verdict::TooFast
        } else {
            if self.rate > 0.0 {
                e.tokens -= 1.0;
            }
            e.open += 1;
            Verdict::Admitted
        }
    }

    /// An admitted connection from `ip` closed.
    pub fn release(&self, ip: IpAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let ip = key(ip);
        let now = self.nanos(now);
        let mut map = self.stripe(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get_mut(&ip) else { return };
        e.open = e.open.saturating_sub(1);
        self.refill(e, now);
        if self.idle(e) {
            map.remove(&ip);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Removes every entry with no open connection whose bucket has refilled.
    pub fn sweep(&self, now: Instant) {
        if !self.enabled() || self.len() == 0 {
            return;
        }
        let now = self.nanos(now);
        for stripe in self.stripes.iter() {
            let mut map = stripe.lock().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, e| {
                self.refill(e, now);
                !self.idle(e)
            });
            self.entries.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_tracks_nothing() {
        let t = PerIp::new(0, 0.0, Instant::now());
        assert!(!t.enabled());
        for _ in 0..10 {
            assert_eq!(t.admit(ip("127.0.0.1"), Instant::now()), Verdict::Admitted);
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn concurrency_limit_per_address_and_no_leak() {
        let now = Instant::now();
        let t = PerIp::new(2, 0.0, now);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(t.admit(a, now), Verdict::Admitted);
        assert_eq!(t.admit(a, now), Verdict::Admitted);
        assert_eq!(t.admit(a, now), Verdict::TooMany);
        assert_eq!(t.admit(b, now), Verdict::Admitted, "another address is independent");
        assert_eq!(t.len(), 2);
        t.release(a, now);
        assert_eq!(t.admit(a, now), Verdict::Admitted, "a closed connection frees room");
        for _ in 0..2 {
            t.release(a, now);
        }
        t.release(b, now);
        assert_eq!(t.len(), 0, "entries are removed when their count reaches zero");
        t.release(a, now); // a stray release is harmless
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn rate_limit_refills_and_expires() {
        let start = Instant::now();
        let t = PerIp::new(0, 2.0, start);
        let a = ip("10.0.0.1");
        assert_eq!(t.admit(a, start), Verdict::Admitted);
        assert_eq!(t.admit(a, start), Verdict::Admitted);
        assert_eq!(t.admit(a, start), Verdict::TooFast);
        assert_eq!(t.retry_after(Verdict::TooFast), 1);
        assert_eq!(t.admit(ip("10.0.0.9"), start), Verdict::Admitted);
        let later = start + Duration::from_millis(500);
        assert_eq!(t.admit(a, later), Verdict::Admitted, "one token back after half a second at 2/s");
        assert_eq!(t.admit(a, later), Verdict::TooFast);
        for _ in 0..3 {
            t.release(a, later);
        }
        t.release(ip("10.0.0.9"), later);
        assert_eq!(t.len(), 1, "a's bucket is not full yet; 10.0.0.9's is");
        t.sweep(later + Duration::from_millis(400));
        assert_eq!(t.len(), 1);
        t.sweep(later + Duration::from_secs(1));
        assert_eq!(t.len(), 0, "the bucket refilled: swept");
    }

    #[test]
    fn ipv6_by_prefix_and_mapped_ipv4() {
        let now = Instant::now();
        let t = PerIp::new(1, 0.0, now);
        assert_eq!(t.admit(ip("2001:db8::1"), now), Verdict::Admitted);
        assert_eq!(t.admit(ip("2001:db8::2"), now), Verdict::TooMany, "same /64");
        assert_eq!(t.admit(ip("2001:db8:0:1::1"), now), Verdict::Admitted, "another /64");
        assert_eq!(t.admit(ip("192.0.2.7"), now), Verdict::Admitted);
        assert_eq!(t.admit(ip("::ffff:192.0.2.7"), now), Verdict::TooMany, "mapped IPv4 is the IPv4 address");
    }

    #[test]
    fn shared_across_threads() {
        let now = Instant::now();
        let t = std::sync::Arc::new(PerIp::new(1000, 0.0, now));
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let a = IpAddr::from([10, n, (i >> 8) as u8, i as u8]);
                        assert_eq!(t.admit(a, now), Verdict::Admitted);
                        t.release(a, now);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.len(), 0);
    }
}
