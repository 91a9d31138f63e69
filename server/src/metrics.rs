//! `/metrics`: the engine's counters in the Prometheus / OpenMetrics text format, built with prometheus-client.
//!
//! The engine keeps its own lock-free counters; a scrape takes a snapshot (`EngineHandle::stats` and
//! `shard_stats`) and copies it into a fresh registry. A registry per scrape costs a few allocations and keeps
//! no second set of counters in step with the engine's.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tether::metrics::{Kind, Stats, COUNTERS};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A counter per shard (`shard="0"`, `shard="1"` ...) plus `shard="total"`, like the gauges: sum over the
/// numbered shards, or read the total, never both.
fn counter(registry: &mut Registry, name: &str, help: &str, total: &Stats, shards: &[Stats], value: fn(&Stats) -> u64) {
    let family = Family::<Labels, Counter>::default();
    for (i, s) in shards.iter().enumerate() {
        family.get_or_create(&vec![("shard", i.to_string())]).inc_by(value(s));
    }
    family.get_or_create(&vec![("shard", "total".to_string())]).inc_by(value(total));
    registry.register(name, help, family);
}

/// A counter family by `label` (close code, reason), per shard and `shard="total"`.
fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    total: &Stats,
    shards: &[Stats],
    values: fn(&Stats) -> Vec<(String, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    let named = shards.iter().enumerate().map(|(i, s)| (i.to_string(), s)).chain([("total".to_string(), total)]);
    for (shard, stats) in named {
        for (value, n) in values(stats) {
            family.get_or_create(&vec![(label, value), ("shard", shard.clone())]).inc_by(n);
        }
    }
    registry.register(name, help, family);
}

fn per_shard_gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
    total: &Stats,
    shards: &[Stats],
    value: fn(&Stats) -> u64,
) {
    let family = Family::<Labels, Gauge>::default();
    for (i, s) in shards.iter().enumerate() {
        family.get_or_create(&vec![("shard", i.to_string())]).set(value(s) as i64);
    }
    family.get_or_create(&vec![("shard", "total".to_string())]).set(value(total) as i64);
    registry.register(name, help, family);
}

/// Renders every counter and gauge per shard and in total (prefix `tether_`), ending with `# EOF`. The list
/// comes from the engine (`tether::metrics::COUNTERS`): a counter added there shows up here.
pub fn render(total: &Stats, shards: &[Stats]) -> String {
    render_with(total, shards, |_| {})
}

/// [`render`] plus what `extra` registers (the gateway's metrics), in one exposition.
pub fn render_with(total: &Stats, shards: &[Stats], extra: impl FnOnce(&mut Registry)) -> String {
    let mut r = Registry::with_prefix("tether");
    let reg = &mut r;
    for info in COUNTERS {
        let help = format!("{}, per shard and shard=\"total\"", info.help);
        match info.kind {
            Kind::Gauge => per_shard_gauge(reg, info.name, &help, total, shards, info.get),
            Kind::Counter => counter(reg, info.name, &help, total, shards, info.get),
        }
    }
    counter_family(
        reg,
        "closed_by_code",
        "Connections closed, by WebSocket close code (other = untracked codes)",
        "code",
        total,
        shards,
        |s| s.closed_by_code.clone(),
    );
    counter_family(reg, "closed_by_reason", "Connections closed, by why they ended", "reason", total, shards, |s| {
        s.closed_by_reason.iter().map(|(reason, n)| (reason.as_str().to_string(), *n)).collect()
    });
    extra(&mut r);
    let mut out = String::with_capacity(4096);
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether::metrics::CloseCause as CloseReason;

    fn sample() -> (Stats, Vec<Stats>) {
        let a = Stats {
            shards: 1,
            open: 3,
            websocket_open: 2,
            accepted: 10,
            closed: 7,
            pings_sent: 40,
            pongs_received: 38,
            pong_timeouts: 2,
            bytes_in: 1234,
            closed_by_code: vec![("1000".into(), 5), ("1006".into(), 2)],
            closed_by_reason: CloseReason::ALL
                .iter()
                .map(|r| {
                    let n = match r {
                        CloseReason::PeerClose => 5,
                        CloseReason::PongTimeout => 2,
                        _ => 0,
                    };
                    (*r, n)
                })
                .collect(),
            ..Stats::default()
        };
        let b = Stats { shards: 1, open: 4, accepted: 4, messages_in: 9, ..Stats::default() };
        let mut total = Stats::default();
        total.merge(&a);
        total.merge(&b);
        (total, vec![a, b])
    }

    #[test]
    fn renders_counters_and_gauges() {
        let (total, shards) = sample();
        let text = render(&total, &shards);
        let has = |line: &str| text.lines().any(|l| l == line);
        for line in [
            "tether_connections_open{shard=\"0\"} 3",
            "tether_connections_open{shard=\"1\"} 4",
            "tether_connections_open{shard=\"total\"} 7",
            "tether_accepted_total{shard=\"total\"} 14",
            "tether_accepted_total{shard=\"0\"} 10",
            "tether_accepted_total{shard=\"1\"} 4",
            "tether_closed_total{shard=\"total\"} 7",
            "tether_closed_by_code_total{code=\"1000\",shard=\"total\"} 5",
            "tether_closed_by_code_total{code=\"1000\",shard=\"0\"} 5",
            "tether_closed_by_code_total{code=\"1006\",shard=\"total\"} 2",
            "tether_closed_by_reason_total{reason=\"pong_timeout\",shard=\"total\"} 2",
            "tether_closed_by_reason_total{reason=\"pong_timeout\",shard=\"0\"} 2",
            "tether_closed_by_reason_total{reason=\"shutdown\",shard=\"total\"} 0",
            "tether_pings_sent_total{shard=\"total\"} 40",
            "tether_pings_sent_total{shard=\"0\"} 40",
            "tether_pings_sent_total{shard=\"1\"} 0",
            "tether_pongs_received_total{shard=\"total\"} 38",
            "tether_pong_timeouts_total{shard=\"total\"} 2",
            "tether_messages_in_total{shard=\"total\"} 9",
            "tether_messages_in_total{shard=\"1\"} 9",
            "tether_bytes_in_total{shard=\"total\"} 1234",
            "tether_recv_buffer_exhausted_total{shard=\"total\"} 0",
            "# TYPE tether_accepted counter",
            "# TYPE tether_connections_open gauge",
            "# EOF",
        ] {
            assert!(has(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn renders_an_empty_engine() {
        let text = render(&Stats::default(), &[]);
        assert!(text.lines().any(|l| l == "tether_connections_open{shard=\"total\"} 0"), "{text}");
        assert!(text.lines().any(|l| l == "tether_handshake_timeouts_total{shard=\"total\"} 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
