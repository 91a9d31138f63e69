//! The end-of-run report: histogram summaries, the JSON document, the text table and the `.hgrm` file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microsecond histograms hold up to an hour; millisecond ones up to ten days.
pub const HIST_MAX: u64 = 3_600_000_000;

/// A histogram with three significant digits and the range used everywhere here.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds")
}

/// count and percentiles of one histogram, in its own unit.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Connections {
    pub requested: u64,
    /// Logical connections that opened at least once.
    pub established: u64,
    /// First connection attempts that failed.
    pub failed: u64,
    pub peak_open: u64,
    /// Connections that came back after a drop (`--reconnect`).
    pub reconnects: u64,
    /// Retries (after a drop or a failed attempt) that failed again.
    pub retry_failed: u64,
    /// Connect errors by text.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Pings {
    pub sent: u64,
    /// Pongs that answered our latest ping: exactly the RTT sample count.
    pub answered: u64,
    /// Pongs for an older ping (no RTT).
    pub late: u64,
    /// Pings the server sent us (answered by the engine).
    pub server_pings: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub echoed: u64,
    /// `--final-echo`: one message per open connection at the end of the hold, and how many came back.
    pub final_sent: u64,
    pub final_echoed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ByPhase {
    pub ramp: u64,
    pub hold: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Drops {
    pub total: u64,
    pub per_1k_conn_hours: f64,
    pub per_minute: f64,
    pub by_code: BTreeMap<String, u64>,
    pub by_phase: ByPhase,
    pub pong_timeouts: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Closes {
    /// Connections we closed whose close handshake finished with 1000.
    pub clean: u64,
    /// Connections we closed that ended otherwise (close timeout, abnormal).
    pub unclean: u64,
    /// Still open when the close wait ran out.
    pub left_open: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    /// The hold phase, seconds.
    pub duration_s: f64,
    pub ramp_s: f64,
    /// The end of the run: the final echo and the close handshakes, until the last one or the give-up.
    pub end_s: f64,
    /// The final echo's part of `end_s`.
    pub final_echo_s: f64,
    pub total_s: f64,
    pub shards: usize,
    pub source_ips: usize,
    pub connections: Connections,
    pub connect_rate_per_s: f64,
    pub connection_hours: f64,
    pub handshake_us: Summary,
    pub ping_rtt_us: Summary,
    /// Pings sent and answered in the hold only (after the ramp, before the final echo and the closes).
    pub ping_rtt_hold_us: Summary,
    pub echo_us: Summary,
    /// `--final-echo` round trips, and the most final echoes out at once (summed over the shards' peaks;
    /// the window follows the echoes' latency: `window.rs`).
    pub final_echo_us: Summary,
    pub final_window_peak: u64,
    pub server_ping_interval_ms: Summary,
    pub pings: Pings,
    pub messages: Messages,
    pub drops: Drops,
    pub closes: Closes,
    /// Peak resident memory of this process (MiB), from /proc/self/status VmHWM.
    pub peak_rss_mib: f64,
    /// Set when the run was stopped early (Ctrl-C).
    pub interrupted: bool,
    /// `--protocol centrifugo` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub centrifugo: Option<Centrifugo>,
}

/// The Centrifugo section: publications, deliveries and their latency, and the exactly-once check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Centrifugo {
    pub channels: u32,
    pub subscriptions_per_connection: u32,
    pub publish_via: String,
    /// Asked for, per second.
    pub publish_rate: f64,
    pub publish_batch: u32,
    pub reconnect_every_s: Option<f64>,
    /// From the end of the ramp until every subscription was answered.
    pub setup_s: f64,
    /// Publishing time (the hold); the per-second rates divide by it.
    pub publish_s: f64,
    /// Waiting for the last deliveries (and reconnects) after publishing.
    pub drain_s: f64,
    /// Connect and subscribe replies without an error; resubscribes are the recovering ones.
    pub connects: u64,
    pub subscribes: u64,
    pub resubscribes: u64,
    pub subscribed_at_end: u64,
    pub publications: Publications,
    pub deliveries: Deliveries,
    pub recovery: Recovery,
    /// Publish-to-receive latency of live publications (us).
    pub latency_us: Summary,
    /// The same for publications that came in a recovering subscribe reply.
    pub recovered_latency_us: Summary,
    /// HTTP API requests, connect to answer (us).
    pub api_request_us: Summary,
    /// Server pings (`{}`) answered.
    pub server_pings: u64,
    /// Error replies and API errors, by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// API requests with no usable answer (`http 401`, `io: ...`).
    pub api_failures: BTreeMap<String, u64>,
    /// Every close, by code (1006: no close frame).
    pub close_codes: BTreeMap<String, u64>,
    pub pushes: Pushes,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Publications {
    pub attempted: u64,
    /// Accepted by the server (API result, or a publish reply without an error).
    pub ok: u64,
    /// Refused with an error (API error, error reply).
    pub failed: u64,
    /// No answer: the API request failed, or the connection closed before the publish reply (such a
    /// publication may still have been delivered, so deliveries can then exceed `expected`).
    pub unanswered: u64,
    pub per_s: f64,
    pub api_requests: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Deliveries {
    /// Publications received for a subscription, live or recovered, duplicates included.
    pub total: u64,
    pub live: u64,
    pub recovered: u64,
    /// What the accepted publications should make: each one times its channel's subscriber count.
    pub expected: u64,
    /// `expected` minus the distinct deliveries (0 when every subscriber got every publication).
    pub missing: u64,
    pub per_s: f64,
    /// Offsets never seen by a subscription that should have seen them.
    pub gaps: u64,
    /// Offsets seen twice by one subscription.
    pub duplicates: u64,
    /// Deliveries on channels without a recoverable position (not checked).
    pub untracked: u64,
    /// Publications for a channel the connection was not subscribed to (yet).
    pub unexpected: u64,
    /// Deliveries whose data had no timestamp (not ours).
    pub unstamped: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Recovery {
    /// `--reconnect-every` closes.
    pub cycles: u64,
    pub recovered: u64,
    pub not_recovered: u64,
    /// Offsets lost to the failed recoveries.
    pub unrecovered_offsets: u64,
    pub epoch_changes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Pushes {
    pub unsubscribe: u64,
    pub other: u64,
    /// Lines that were no reply or push, and replies that answered nothing we sent.
    pub malformed: u64,
}

impl Centrifugo {
    fn table(&self, s: &mut String) {
        let p = &self.publications;
        let d = &self.deliveries;
        let r = &self.recovery;
        let _ = writeln!(
            s,
            "centrifugo        {} channels, {} subscriptions per connection, publish via {} at {}/s{}{}",
            self.channels,
            self.subscriptions_per_connection,
            self.publish_via,
            self.publish_rate,
            if self.publish_batch > 1 { format!(" in batches of {}", self.publish_batch) } else { String::new() },
            self.reconnect_every_s.map_or(String::new(), |p| format!(", reconnect every {p} s")),
        );
        let _ = writeln!(
            s,
            "  setup           connects {}  subscribes {} (resubscribes {})  subscribed at end {}  setup {:.2} s  drain {:.2} s",
            self.connects, self.subscribes, self.resubscribes, self.subscribed_at_end, self.setup_s, self.drain_s
        );
        let _ = writeln!(
            s,
            "  publications    ok {}  failed {}  unanswered {}  {:.1}/s  api requests {}",
            p.ok, p.failed, p.unanswered, p.per_s, p.api_requests
        );
        let _ = writeln!(
            s,
            "  deliveries      {} (live {}, recovered {})  expected {}  missing {}  {:.1}/s",
            d.total, d.live, d.recovered, d.expected, d.missing, d.per_s
        );
        let _ = writeln!(
            s,
            "  GAPS {}  DUPLICATES {}  untracked {}  unexpected {}",
            d.gaps, d.duplicates, d.untracked, d.unexpected
        );
        let _ = writeln!(
            s,
            "  recovery        cycles {}  recovered {}  not recovered {} ({} offsets lost)  epoch changes {}",
            r.cycles, r.recovered, r.not_recovered, r.unrecovered_offsets, r.epoch_changes
        );
        let join =
            |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "  server pings {}  errors {{{}}}  api failures {{{}}}  close codes {{{}}}",
            self.server_pings,
            join(&self.errors_by_code),
            join(&self.api_failures),
            join(&self.close_codes)
        );
        let _ = writeln!(
            s,
            "  pushes          unsubscribe {}  other {}  malformed {}",
            self.pushes.unsubscribe, self.pushes.other, self.pushes.malformed
        );
    }
}

impl Report {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        let _ = writeln!(s, "target            {}", self.target);
        let _ = writeln!(
            s,
            "time              ramp {:.1} s, hold {:.1} s, end {:.1} s, total {:.1} s ({} shards, {} source addresses)",
            self.ramp_s, self.duration_s, self.end_s, self.total_s, self.shards, self.source_ips
        );
        let _ = writeln!(
            s,
            "connections       requested {}  established {}  failed {}  peak open {}  reconnects {}",
            c.requested, c.established, c.failed, c.peak_open, c.reconnects
        );
        for (e, n) in &c.errors {
            let _ = writeln!(s, "  connect error   {n} x {e}");
        }
        let _ = writeln!(s, "connect rate      {:.0}/s", self.connect_rate_per_s);
        let _ = writeln!(
            s,
            "pings             sent {}  answered {}  late {}  server pings {}",
            self.pings.sent, self.pings.answered, self.pings.late, self.pings.server_pings
        );
        let _ = writeln!(s, "messages          sent {}  echoed {}", self.messages.sent, self.messages.echoed);
        if self.messages.final_sent > 0 {
            let _ = writeln!(
                s,
                "final echo        sent {}  echoed {}  (up to {} out at once)",
                self.messages.final_sent, self.messages.final_echoed, self.final_window_peak
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let us = |v: u64| format_us(v);
        let ms = |v: u64| format!("{v} ms");
        let mut rows = vec![
            ("handshake", &self.handshake_us, &us as &dyn Fn(u64) -> String),
            ("ping rtt", &self.ping_rtt_us, &us),
            ("ping rtt (hold)", &self.ping_rtt_hold_us, &us),
            ("echo", &self.echo_us, &us),
        ];
        if self.messages.final_sent > 0 {
            rows.push(("final echo", &self.final_echo_us, &us));
        }
        rows.push(("server ping interval", &self.server_ping_interval_ms, &ms));
        if let Some(c) = &self.centrifugo {
            rows.push(("delivery", &c.latency_us, &us));
            rows.push(("delivery (recovered)", &c.recovered_latency_us, &us));
            rows.push(("api request", &c.api_request_us, &us));
        }
        for (name, sum, f) in rows {
            if sum.count == 0 {
                let _ = writeln!(s, "{name:<24} {:>9} {:>10}", 0, "-");
                continue;
            }
            let _ = writeln!(
                s,
                "{name:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
                sum.count,
                f(sum.p50),
                f(sum.p90),
                f(sum.p99),
                f(sum.p999),
                f(sum.max)
            );
        }
        let _ = writeln!(s);
        let d = &self.drops;
        let codes: Vec<String> = d.by_code.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            s,
            "drops             {} (ramp {}, hold {})  {:.2} per 1k conn-hours  {:.2}/min  pong timeouts {}{}",
            d.total,
            d.by_phase.ramp,
            d.by_phase.hold,
            d.per_1k_conn_hours,
            d.per_minute,
            d.pong_timeouts,
            if codes.is_empty() { String::new() } else { format!("  by code {{{}}}", codes.join(", ")) }
        );
        let _ = writeln!(
            s,
            "closes            clean {}  unclean {}  left open {}",
            self.closes.clean, self.closes.unclean, self.closes.left_open
        );
        if let Some(c) = &self.centrifugo {
            c.table(&mut s);
        }
        if self.peak_rss_mib > 0.0 {
            let _ = writeln!(s, "peak memory       {:.0} MiB RSS", self.peak_rss_mib);
        }
        s
    }
}

/// Microseconds as `850 us`, `12.3 ms` or `1.20 s`.
pub fn format_us(v: u64) -> String {
    if v < 1_000 {
        format!("{v} us")
    } else if v < 1_000_000 {
        format!("{:.1} ms", v as f64 / 1e3)
    } else {
        format!("{:.2} s", v as f64 / 1e6)
    }
}

/// HdrHistogram's percentile distribution (`outputPercentileDistribution` with 5 ticks per half distance),
/// values divided by `scale` (1000.0 turns microseconds into milliseconds).
pub fn hgrm(h: &Histogram<u64>, scale: f64) -> String {
    let digits = h.sigfig() as usize;
    let mut s = String::new();
    let _ = write!(s, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(s, "{value:12.digits$} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(s, "{value:12.digits$} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() { (0.0, 0.0, 0.0) } else { (h.mean(), h.stdev(), h.max() as f64) };
    let sub_buckets = (2.0 * 10f64.powi(h.sigfig() as i32)).log2().ceil().exp2() as u64;
    let _ = writeln!(s, "#[Mean    = {:12.digits$}, StdDeviation   = {:12.digits$}]", mean / scale, stdev / scale);
    let _ = writeln!(s, "#[Max     = {:12.digits$}, Total count    = {:12}]", max / scale, h.len());
    let _ = writeln!(s, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    s
}

/// Peak resident set size of this process in MiB (0 when /proc is not there).
pub fn peak_rss_mib() -> f64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_layout() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let text = hgrm(&h, 1000.0);
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines.next().unwrap(), "");
        let first = lines.next().unwrap();
        assert!(first.starts_with("       0.010 0.000000000000          1           1.00"), "{first}");
        let last_row = text.lines().rfind(|l| !l.starts_with('#') && !l.is_empty()).unwrap();
        assert!(last_row.contains(" 1.000000000000       1000"), "{last_row}");
        assert!(text.contains("#[Mean    =        5.006, StdDeviation   ="), "{text}");
        assert!(text.contains("#[Max     =       10.007, Total count    =         1000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((4990..=5010).contains(&s.p50), "{s:?}");
    }
}
