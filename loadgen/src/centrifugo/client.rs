//! The shard side of `--protocol centrifugo`: what each connection sends and does with what it gets.
//!
//! State lives where the load generator keeps the rest: a connection's protocol state ([`CentConn`]) in its
//! engine slot, its timers (client publishes, `--reconnect-every` closes) on the engine's wheel through the
//! one per-connection timer, and the subscriptions' positions in one flat `Vec` per shard indexed by the
//! logical connection (they must outlive the connection to be recovered after a reconnect; a logical
//! connection always reconnects on its own shard).
//!
//! Ids: 1 is the connect, 2..=K+1 the subscribes (subscription j has id j+2 every time), and publishes count
//! from K+2, publish id n going to subscription `(n - K - 2) % K`; so a reply's id says what it answers
//! without a table of pending commands.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::{ConnId, Ctx, Message};

use super::codec::{self, Incoming, Publication, ReplyBody};
use super::stats::{count, CentStats};
use super::track::{Epochs, Seen, SubState};
use super::{CentrifugoConfig, PublishVia};
use crate::load::LoadHandler;

/// A connection's Centrifugo state, in its engine slot (with the load generator's own `Conn`).
#[derive(Debug, Default)]
pub struct CentConn {
    /// The connect reply came back without an error.
    pub connected: bool,
    /// We are closing it for `--reconnect-every`: its close reconnects at once.
    pub cycling: bool,
    /// The next publish command's id.
    pub next_id: u32,
    pub publish_due: Option<Instant>,
    pub cycle_due: Option<Instant>,
}

const CONNECT_ID: u32 = 1;
const FIRST_SUBSCRIBE_ID: u32 = 2;

/// One shard's Centrifugo side.
pub struct CentShard {
    cfg: Arc<CentrifugoConfig>,
    connections: u64,
    shards: u32,
    epoch: Instant,
    /// Subscriptions answered and not ended, over all shards (the driver waits for all of them).
    subscribed: Arc<AtomicU64>,
    /// Publication sequence numbers, shared with the API publisher.
    seq: Arc<AtomicU64>,
    /// K per logical connection of this shard: `(index / shards) * K + j`.
    subs: Vec<SubState>,
    /// Per logical connection: the first `--reconnect-every` period it may still close in.
    next_cycle: Vec<u32>,
    epochs: Epochs,
    /// Publishing (and cycling) since then; periods count from here.
    publishing_since: Option<Instant>,
    /// Client publishing: each connection publishes once per this.
    publish_interval: Option<Duration>,
    rng: fastrand::Rng,
    out: String,
    data: String,
}

impl CentShard {
    pub fn new(
        cfg: Arc<CentrifugoConfig>,
        connections: u64,
        shards: usize,
        shard: usize,
        epoch: Instant,
        subscribed: Arc<AtomicU64>,
        seq: Arc<AtomicU64>,
    ) -> CentShard {
        let publish_interval = (cfg.publish_via == PublishVia::Client && cfg.publish_rate > 0.0)
            .then(|| Duration::from_secs_f64(connections as f64 / cfg.publish_rate));
        CentShard {
            cfg,
            connections,
            shards: shards.max(1) as u32,
            epoch,
            subscribed,
            seq,
            subs: Vec::new(),
            next_cycle: Vec::new(),
            epochs: Epochs::default(),
            publishing_since: None,
            publish_interval,
            rng: fastrand::Rng::with_seed(epoch.elapsed().as_nanos() as u64 ^ (shard as u64 + 1) << 32),
            out: String::new(),
            data: String::new(),
        }
    }

    fn k(&self) -> u32 {
        self.cfg.subscriptions_per_connection
    }

    /// Where logical connection `index`'s subscriptions start in `subs` (grown on first use).
    fn base(&mut self, index: u32) -> usize {
        let local = (index / self.shards) as usize;
        let k = self.k() as usize;
        if self.subs.len() < (local + 1) * k {
            self.subs.resize((local + 1) * k, SubState::default());
            self.next_cycle.resize(local + 1, 0);
        }
        local * k
    }

    fn now_ns(&self, now: Instant) -> u64 {
        super::stamp_ns(self.epoch, now)
    }

    fn send(ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId, text: &str) -> bool {
        ctx.send(conn, Message::Text(text)).is_ok()
    }

    /// The WebSocket is open: connect.
    pub fn on_open(&mut self, ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId) {
        let Some(c) = ctx.state(conn) else { return };
        let index = c.index;
        c.cent =
            CentConn { next_id: FIRST_SUBSCRIBE_ID + self.cfg.subscriptions_per_connection, ..CentConn::default() };
        self.base(index);
        let token = self.cfg.token(index);
        self.out.clear();
        codec::connect_command(&mut self.out, CONNECT_ID, token.as_deref());
        Self::send(ctx, conn, &self.out);
        if self.publishing_since.is_some() {
            self.arm(ctx, conn);
        }
    }

    pub fn on_message(&mut self, ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId, text: &str, stats: &mut CentStats) {
        let Some(c) = ctx.state(conn) else { return };
        let index = c.index;
        let now_ns = self.now_ns(ctx.now());
        for line in codec::lines(text) {
            match codec::decode_line(line) {
                Incoming::Ping => {
                    stats.server_pings += 1;
                    Self::send(ctx, conn, "{}");
                }
                Incoming::Publication { channel, publication } => match self.cfg.subscription_of(index, &channel) {
                    Some(j) => {
                        let at = self.base(index) + j as usize;
                        self.deliver(at, publication, false, now_ns, stats);
                    }
                    None => stats.tally.unexpected += 1,
                },
                Incoming::Reply { id, body } => self.on_reply(ctx, conn, index, id, body, now_ns, stats),
                Incoming::Unsubscribed { channel, code } => {
                    stats.unsubscribe_pushes += 1;
                    let Some(j) = self.cfg.subscription_of(index, &channel) else { continue };
                    let at = self.base(index) + j as usize;
                    if self.subs[at].unsubscribed() {
                        self.subscribed.fetch_sub(1, Relaxed);
                    }
                    // 2500 and up: the SDKs subscribe again (recovering).
                    if code >= 2500 {
                        self.out.clear();
                        self.subscribe_line(index, j);
                        Self::send(ctx, conn, &self.out);
                    }
                }
                Incoming::OtherPush => stats.other_pushes += 1,
                Incoming::Malformed => stats.malformed += 1,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_reply(
        &mut self,
        ctx: &mut Ctx<'_, LoadHandler>,
        conn: ConnId,
        index: u32,
        id: u32,
        body: ReplyBody,
        now_ns: u64,
        stats: &mut CentStats,
    ) {
        let k = self.k();
        if let ReplyBody::Error { code, .. } = body {
            count(&mut stats.errors_by_code, code);
            if (FIRST_SUBSCRIBE_ID..FIRST_SUBSCRIBE_ID + k).contains(&id) {
                let at = self.base(index) + (id - FIRST_SUBSCRIBE_ID) as usize;
                if self.subs[at].unsubscribed() {
                    self.subscribed.fetch_sub(1, Relaxed);
                }
            } else if id >= FIRST_SUBSCRIBE_ID + k {
                stats.publish_failed += 1;
            }
            return;
        }
        match (id, body) {
            (CONNECT_ID, ReplyBody::Connect { .. }) => {
                stats.connects += 1;
                if let Some(c) = ctx.state(conn) {
                    c.cent.connected = true;
                }
                // Every subscription in one frame, in order.
                self.out.clear();
                for j in 0..k {
                    if j > 0 {
                        self.out.push('\n');
                    }
                    self.subscribe_line(index, j);
                }
                Self::send(ctx, conn, &self.out);
            }
            (id, ReplyBody::Subscribe(result)) if (FIRST_SUBSCRIBE_ID..FIRST_SUBSCRIBE_ID + k).contains(&id) => {
                let at = self.base(index) + (id - FIRST_SUBSCRIBE_ID) as usize;
                let sub = &mut self.subs[at];
                if sub.phase != super::track::Phase::Subscribing {
                    stats.malformed += 1;
                    return;
                }
                if sub.positioned {
                    stats.resubscribes += 1;
                }
                let epoch = (!result.epoch.is_empty()).then(|| self.epochs.intern(&result.epoch));
                let sub = &mut self.subs[at];
                sub.subscribed(result.recoverable, epoch, result.offset, result.recovered, &mut stats.tally);
                stats.subscribes += 1;
                self.subscribed.fetch_add(1, Relaxed);
                for p in result.publications {
                    self.deliver(at, p, true, now_ns, stats);
                }
            }
            (id, ReplyBody::Publish) if id >= FIRST_SUBSCRIBE_ID + k => {
                let j = (id - FIRST_SUBSCRIBE_ID - k) % k;
                stats.published += 1;
                stats.expected_deliveries += self.cfg.subscribers(self.connections, self.cfg.channel(index, j));
            }
            _ => stats.malformed += 1,
        }
    }

    /// Appends subscription j's subscribe command (recovering when its position is known) to `out`, and marks
    /// it subscribing.
    fn subscribe_line(&mut self, index: u32, j: u32) {
        let at = self.base(index) + j as usize;
        let sub = &mut self.subs[at];
        sub.begin();
        let recover = sub.recover_from();
        let name = self.cfg.channel_name(self.cfg.channel(index, j));
        codec::subscribe_command(
            &mut self.out,
            FIRST_SUBSCRIBE_ID + j,
            &name,
            recover.map(|(offset, epoch)| (offset, self.epochs.name(epoch))),
        );
    }

    fn deliver(&mut self, at: usize, p: Publication, recovered: bool, now_ns: u64, stats: &mut CentStats) {
        if self.subs[at].publication(p.offset, &mut stats.tally) == Seen::Unexpected {
            return;
        }
        stats.deliveries += 1;
        if recovered {
            stats.recovered_deliveries += 1;
        }
        match p.sent_ns {
            Some(t) => {
                let us = (now_ns.saturating_sub(t) / 1000).max(1);
                let h = if recovered { &mut stats.recovered_latency_us } else { &mut stats.latency_us };
                h.saturating_record(us);
            }
            None => stats.unstamped += 1,
        }
    }

    /// The connection's timer: a client publish, or its `--reconnect-every` close.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId, stats: &mut CentStats) {
        let now = ctx.now();
        let Some(c) = ctx.state(conn) else { return };
        if c.closing || c.cent.cycling {
            return;
        }
        if c.cent.cycle_due.is_some_and(|d| d <= now) {
            c.cent.cycling = true;
            c.cent.cycle_due = None;
            c.cent.publish_due = None;
            ctx.cancel_timer(conn);
            ctx.close(conn, 1000, "reconnect-every");
            return;
        }
        let (index, connected) = (c.index, c.cent.connected);
        if c.cent.publish_due.is_some_and(|d| d <= now) {
            c.cent.publish_due = self.next_publish(index, now);
            if connected {
                let id = c.cent.next_id;
                c.cent.next_id += 1;
                self.publish(ctx, conn, index, id, stats);
            }
        }
        Self::rearm(ctx, conn);
    }

    fn publish(&mut self, ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId, index: u32, id: u32, stats: &mut CentStats) {
        let k = self.k();
        let j = (id - FIRST_SUBSCRIBE_ID - k) % k;
        let name = self.cfg.channel_name(self.cfg.channel(index, j));
        self.data.clear();
        let sent_ns = self.now_ns(Instant::now());
        codec::publication_data(&mut self.data, sent_ns, self.seq.fetch_add(1, Relaxed), self.cfg.publication_size);
        self.out.clear();
        codec::publish_command(&mut self.out, id, &name, &self.data);
        if Self::send(ctx, conn, &self.out) {
            stats.publish_commands += 1;
        }
    }

    /// The connection's one wheel timer at the earlier of its publish and cycle moments.
    fn rearm(ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId) {
        let Some(c) = ctx.state(conn) else { return };
        match [c.cent.publish_due, c.cent.cycle_due].into_iter().flatten().min() {
            Some(at) => ctx.set_timer(conn, at),
            None => ctx.cancel_timer(conn),
        };
    }

    /// Client publishing: logical connection `index` publishes on a fixed grid, once per interval at its own
    /// phase (spread evenly over the connections), so reconnects neither shift nor bunch its publications (one
    /// due while it is away is skipped). The first grid point after `now`.
    fn next_publish(&self, index: u32, now: Instant) -> Option<Instant> {
        let (interval, since) = (self.publish_interval?, self.publishing_since?);
        let phase = interval.mul_f64((index as f64 * 0.618_033_988_749_895).fract());
        let first = since + phase;
        let elapsed = now.saturating_duration_since(first);
        let periods = if now < first { 0 } else { elapsed.as_nanos() / interval.as_nanos().max(1) + 1 };
        Some(first + Duration::from_nanos((interval.as_nanos() * periods) as u64))
    }

    /// Sets the connection's next publish (see `next_publish`) and its next cycle (at a random point of the
    /// first period it has not closed in yet).
    fn arm(&mut self, ctx: &mut Ctx<'_, LoadHandler>, conn: ConnId) {
        let now = ctx.now();
        let Some(index) = ctx.state(conn).map(|c| c.index) else { return };
        let publish_due = self.next_publish(index, now);
        let mut cycle_due = None;
        if let (Some(period), Some(since)) = (self.cfg.reconnect_every, self.publishing_since) {
            self.base(index);
            let local = (index / self.shards) as usize;
            let current = (now.saturating_duration_since(since).as_nanos() / period.as_nanos().max(1)) as u32;
            let mut k = self.next_cycle[local].max(current);
            let mut at = since + period * k + period.mul_f64(self.rng.f64());
            if at <= now {
                k += 1;
                at = since + period * k + period.mul_f64(self.rng.f64());
            }
            self.next_cycle[local] = k + 1;
            cycle_due = Some(at);
        }
        if let Some(c) = ctx.state(conn) {
            c.cent.publish_due = publish_due;
            c.cent.cycle_due = cycle_due;
        }
        Self::rearm(ctx, conn);
    }

    /// Publishing (client publishes and `--reconnect-every` cycles) starts on these open connections.
    pub fn start_publishing(&mut self, ctx: &mut Ctx<'_, LoadHandler>, open: &[ConnId]) {
        self.publishing_since = Some(ctx.now());
        for &conn in open {
            self.arm(ctx, conn);
        }
    }

    pub fn stop_publishing(&mut self, ctx: &mut Ctx<'_, LoadHandler>, open: &[ConnId]) {
        self.publishing_since = None;
        for &conn in open {
            if let Some(c) = ctx.state(conn) {
                c.cent.publish_due = None;
                c.cent.cycle_due = None;
            }
            ctx.cancel_timer(conn);
        }
    }

    /// The connection of `index` closed (with `code`): its subscriptions end, their positions stay.
    pub fn on_close(&mut self, index: u32, code: u16, stats: &mut CentStats) {
        count(&mut stats.close_codes, code);
        let (base, k) = (self.base(index), self.k() as usize);
        let mut ended = 0;
        for sub in &mut self.subs[base..base + k] {
            ended += u64::from(sub.unsubscribed());
        }
        self.subscribed.fetch_sub(ended, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::centrifugo::ApiTarget;

    fn shard(via: PublishVia, rate: f64, connections: u64) -> CentShard {
        let cfg = CentrifugoConfig {
            token_secret: None,
            channels: 10,
            subscriptions_per_connection: 2,
            channel_prefix: "bench:".into(),
            publish_rate: rate,
            publish_via: via,
            api: ApiTarget::parse("http://127.0.0.1:1/api").unwrap(),
            api_key: None,
            publish_batch: 1,
            publish_concurrency: 1,
            publication_size: 0,
            reconnect_every: None,
        };
        let counter = Arc::new(AtomicU64::new(0));
        CentShard::new(Arc::new(cfg), connections, 2, 0, Instant::now(), counter.clone(), counter)
    }

    #[test]
    fn client_publishes_sit_on_a_fixed_grid_per_connection() {
        // 100 connections at 50/s: each publishes every 2 s.
        let mut s = shard(PublishVia::Client, 50.0, 100);
        assert_eq!(s.next_publish(0, Instant::now()), None, "not publishing yet");
        let since = Instant::now();
        s.publishing_since = Some(since);
        let interval = Duration::from_secs(2);
        let mut phases = Vec::new();
        for index in 0..100 {
            let first = s.next_publish(index, since).unwrap();
            assert!(first > since && first <= since + interval);
            phases.push(first - since);
            // Any later moment maps to the next point of the same grid, strictly after it.
            for later in [first, first + Duration::from_millis(1), first + interval * 3 + Duration::from_millis(700)] {
                let next = s.next_publish(index, later).unwrap();
                assert!(next > later && next <= later + interval, "{index}");
                let offset = (next - first).as_nanos() % interval.as_nanos();
                assert!(offset < 1000 || interval.as_nanos() - offset < 1000, "{index}: off the grid by {offset} ns");
            }
        }
        // Phases spread over the interval: no tenth of it holds more than a fifth of the connections.
        phases.sort();
        for w in 0..10 {
            let lo = interval * w / 10;
            let n = phases.iter().filter(|p| **p >= lo && **p < lo + interval / 10).count();
            assert!(n <= 20, "{w}: {n}");
        }
        assert_eq!(shard(PublishVia::Api, 50.0, 100).publish_interval, None);
    }
}
