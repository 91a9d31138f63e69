//! The counters of the Centrifugo load: a shard's ([`CentStats`]), the API publisher's ([`ApiStats`]), and the
//! report section built from both.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::track::Tally;
use super::CentrifugoConfig;
use crate::report::{self, new_histogram, Summary};

/// Errors and close codes kept apart at most this many kinds (a server that makes up codes cannot grow them).
const MAX_KINDS: usize = 64;

pub fn count<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    if map.len() < MAX_KINDS || map.contains_key(&key) {
        *map.entry(key).or_default() += 1;
    }
}

fn merge_map<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// One shard's Centrifugo counters (merged over shards for the report).
#[derive(Clone)]
pub struct CentStats {
    /// Connect replies without an error.
    pub connects: u64,
    /// Subscribe replies without an error (first ones and resubscribes).
    pub subscribes: u64,
    /// Of those, the ones that asked to recover.
    pub resubscribes: u64,
    /// Publications received for a subscription, live or recovered, duplicates included.
    pub deliveries: u64,
    /// Of those, the ones that came in a recovering subscribe reply.
    pub recovered_deliveries: u64,
    /// Deliveries whose data carried no `t`.
    pub unstamped: u64,
    pub tally: Tally,
    /// `--publish-via client`: publish commands sent, and the ones answered without an error.
    pub publish_commands: u64,
    pub published: u64,
    /// Publish commands answered with an error.
    pub publish_failed: u64,
    /// Deliveries the answered client publications should make (their channel's subscriber count).
    pub expected_deliveries: u64,
    /// Server pings (`{}`) answered.
    pub server_pings: u64,
    /// `--reconnect-every` closes.
    pub cycles: u64,
    pub unsubscribe_pushes: u64,
    pub other_pushes: u64,
    /// Lines that were neither a reply nor a push, and replies to ids we never sent.
    pub malformed: u64,
    /// Error replies by code.
    pub errors_by_code: BTreeMap<u32, u64>,
    /// Every close, by code (1006: no close frame).
    pub close_codes: BTreeMap<u16, u64>,
    /// Publish-to-receive latency of live publications, and of recovered ones (which waited for the
    /// reconnect).
    pub latency_us: Histogram<u64>,
    pub recovered_latency_us: Histogram<u64>,
}

impl Default for CentStats {
    fn default() -> Self {
        CentStats {
            connects: 0,
            subscribes: 0,
            resubscribes: 0,
            deliveries: 0,
            recovered_deliveries: 0,
            unstamped: 0,
            tally: Tally::default(),
            publish_commands: 0,
            published: 0,
            publish_failed: 0,
            expected_deliveries: 0,
            server_pings: 0,
            cycles: 0,
            unsubscribe_pushes: 0,
            other_pushes: 0,
            malformed: 0,
            errors_by_code: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            latency_us: new_histogram(),
            recovered_latency_us: new_histogram(),
        }
    }
}

impl CentStats {
    pub fn merge(&mut self, o: &CentStats) {
        self.connects += o.connects;
        self.subscribes += o.subscribes;
        self.resubscribes += o.resubscribes;
        self.deliveries += o.deliveries;
        self.recovered_deliveries += o.recovered_deliveries;
        self.unstamped += o.unstamped;
        self.tally.merge(&o.tally);
        self.publish_commands += o.publish_commands;
        self.published += o.published;
        self.publish_failed += o.publish_failed;
        self.expected_deliveries += o.expected_deliveries;
        self.server_pings += o.server_pings;
        self.cycles += o.cycles;
        self.unsubscribe_pushes += o.unsubscribe_pushes;
        self.other_pushes += o.other_pushes;
        self.malformed += o.malformed;
        merge_map(&mut self.errors_by_code, &o.errors_by_code);
        merge_map(&mut self.close_codes, &o.close_codes);
        let _ = self.latency_us.add(&o.latency_us);
        let _ = self.recovered_latency_us.add(&o.recovered_latency_us);
    }
}

/// The API publisher's counters.
#[derive(Clone)]
pub struct ApiStats {
    /// HTTP requests made.
    pub requests: u64,
    /// Publications attempted (a broadcast request holds several) and the ones the server accepted.
    pub attempted: u64,
    pub published: u64,
    /// Deliveries the accepted publications should make.
    pub expected_deliveries: u64,
    /// API error answers by code (`{"error":{"code":..}}`, also inside a broadcast's responses).
    pub errors_by_code: BTreeMap<u32, u64>,
    /// Requests that got no usable answer: `http 401`, `io: ...`, `bad answer`.
    pub failures: BTreeMap<String, u64>,
    /// Publications in those requests (the server may or may not have taken them).
    pub unanswered: u64,
    pub request_us: Histogram<u64>,
}

impl Default for ApiStats {
    fn default() -> Self {
        ApiStats {
            requests: 0,
            attempted: 0,
            published: 0,
            expected_deliveries: 0,
            errors_by_code: BTreeMap::new(),
            failures: BTreeMap::new(),
            unanswered: 0,
            request_us: new_histogram(),
        }
    }
}

impl ApiStats {
    /// Adds another publisher thread's counts.
    pub fn merge(&mut self, other: ApiStats) {
        self.requests += other.requests;
        self.attempted += other.attempted;
        self.published += other.published;
        self.expected_deliveries += other.expected_deliveries;
        for (code, n) in other.errors_by_code {
            *self.errors_by_code.entry(code).or_default() += n;
        }
        for (why, n) in other.failures {
            *self.failures.entry(why).or_default() += n;
        }
        self.unanswered += other.unanswered;
        let _ = self.request_us.add(&other.request_us);
    }
}

/// How the run went, for the report.
pub struct Phases {
    /// From the end of the ramp until every subscription was answered.
    pub setup: Duration,
    /// Publishing (the hold).
    pub publishing: Duration,
    /// After publishing: waiting for the last deliveries (and reconnects).
    pub drain: Duration,
    /// Subscriptions in place when the load ended.
    pub subscribed_at_end: u64,
}

pub fn report(cfg: &CentrifugoConfig, s: &CentStats, api: &ApiStats, p: &Phases) -> report::Centrifugo {
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let per_s = |n: u64| if p.publishing.is_zero() { 0.0 } else { round2(n as f64 / p.publishing.as_secs_f64()) };
    let published = s.published + api.published;
    let expected = s.expected_deliveries + api.expected_deliveries;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (code, n) in s.errors_by_code.iter().chain(&api.errors_by_code) {
        *errors.entry(code.to_string()).or_default() += n;
    }
    report::Centrifugo {
        channels: cfg.channels,
        subscriptions_per_connection: cfg.subscriptions_per_connection,
        publish_via: cfg.publish_via.name().to_string(),
        publish_rate: cfg.publish_rate,
        publish_batch: cfg.publish_batch,
        reconnect_every_s: cfg.reconnect_every.map(|d| d.as_secs_f64()),
        setup_s: round2(p.setup.as_secs_f64()),
        publish_s: round2(p.publishing.as_secs_f64()),
        drain_s: round2(p.drain.as_secs_f64()),
        connects: s.connects,
        subscribes: s.subscribes,
        resubscribes: s.resubscribes,
        subscribed_at_end: p.subscribed_at_end,
        publications: report::Publications {
            attempted: api.attempted + s.publish_commands,
            ok: published,
            failed: api.errors_by_code.values().sum::<u64>() + s.publish_failed,
            unanswered: api.unanswered + s.publish_commands.saturating_sub(s.published + s.publish_failed),
            per_s: per_s(published),
            api_requests: api.requests,
        },
        deliveries: report::Deliveries {
            total: s.deliveries,
            live: s.deliveries - s.recovered_deliveries,
            recovered: s.recovered_deliveries,
            expected,
            missing: expected.saturating_sub(s.deliveries - s.tally.duplicates),
            per_s: per_s(s.deliveries),
            gaps: s.tally.gaps,
            duplicates: s.tally.duplicates,
            untracked: s.tally.untracked,
            unexpected: s.tally.unexpected,
            unstamped: s.unstamped,
        },
        recovery: report::Recovery {
            cycles: s.cycles,
            recovered: s.tally.recovered,
            not_recovered: s.tally.not_recovered,
            unrecovered_offsets: s.tally.unrecovered_offsets,
            epoch_changes: s.tally.epoch_changes,
        },
        latency_us: Summary::of(&s.latency_us),
        recovered_latency_us: Summary::of(&s.recovered_latency_us),
        api_request_us: Summary::of(&api.request_us),
        server_pings: s.server_pings,
        errors_by_code: errors,
        api_failures: api.failures.clone(),
        close_codes: s.close_codes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        pushes: report::Pushes { unsubscribe: s.unsubscribe_pushes, other: s.other_pushes, malformed: s.malformed },
    }
}
