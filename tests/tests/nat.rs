//! Keepalive through a NAT that forgets idle flows: the reason Tether exists.
//!
//! Each test builds its own client -- NAT -- server rig in network namespaces ([`NatRig`]): iptables
//! MASQUERADE, INVALID packets dropped, `nf_conntrack_tcp_timeout_established=10` and
//! `nf_conntrack_tcp_loose=0`, so a TCP flow quiet for 10 s is forgotten and never revived. tetherd runs in
//! the server namespace, the real tether-load binary in the client namespace, 2,000 connections each.
//!
//! 1. server pings every 4 s: no drops, every connection still echoes after 60 s idle;
//! 2. no pings, TCP keepalive (3 s idle) on the server only, or on the client only: the kernel's probes keep
//!    the mappings alive;
//! 3. no pings, no keepalive: the NAT forgets every flow; the client finds them dead when it next pings,
//!    while the server, which learns nothing, still holds all of them (the failure the defaults prevent);
//! 4. the client vanishes (the NAT forwards nothing): with pings every 2 s and a 2 s pong timeout the server
//!    frees every connection within ping_interval + pong_timeout + 1 tick; the detection times are printed.
//!
//! Needs root, iproute2 and iptables (scripts/test.sh installs them).

use std::time::{Duration, Instant, SystemTime};

use tether_tests::load::{Load, LoadRun};
use tether_tests::netns::NatRig;
use tether_tests::{close_lines, log_field, wait_until, Server};

const CONNECTIONS: u64 = 2000;
/// How long the NAT keeps an idle established flow.
const NAT_IDLE_S: u32 = 10;
const PORT: u16 = 9001;

fn url() -> String {
    format!("ws://{}/", NatRig::server_addr(PORT))
}

fn start_server(rig: &NatRig, args: &[&str]) -> Server {
    Server::start_in_netns(&rig.server, NatRig::server_addr(PORT), args)
}

/// tether-load in the client namespace: 2,000 connections, idle for `hold` (no messages), then `extra`.
fn load_args<'a>(url: &'a str, hold: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--url", url, "--connections", "2000", "--rate", "2000/s", "--duration", hold];
    args.extend_from_slice(extra);
    args
}

fn assert_all_held(run: &LoadRun, what: &str) {
    let d = run.describe();
    assert_eq!(run.u("connections.established"), CONNECTIONS, "{what}: not every connection opened\n{d}");
    assert_eq!(run.u("drops.total"), 0, "{what}: connections dropped\n{d}");
    assert_eq!(run.u("messages.final_sent"), CONNECTIONS, "{what}\n{d}");
    assert_eq!(run.u("messages.final_echoed"), CONNECTIONS, "{what}: not every connection echoed at the end\n{d}");
    assert_eq!(run.u("closes.clean"), CONNECTIONS, "{what}: not every connection closed cleanly\n{d}");
}

#[test]
fn server_pings_keep_idle_flows_alive_through_the_nat() {
    let rig = NatRig::new("p", NAT_IDLE_S);
    let server = start_server(&rig, &["--ping-interval", "4s", "--pong-timeout", "4s", "--tcp-keepalive", "off"]);
    let url = url();
    // The client neither pings nor keeps alive: only the server's pings cross the NAT.
    let args = load_args(&url, "40s", &["--ping-interval", "0", "--tcp-keepalive", "off", "--final-echo", "--strict"]);
    let run = Load::run(Some(&rig.client), &args, Duration::from_secs(150));
    assert_all_held(&run, "server pings every 4s");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    // 40 s at one ping per 4 s: about 10 per connection reached the client and were answered.
    let server_pings = run.u("pings.server_pings");
    assert!(server_pings >= CONNECTIONS * 8, "only {server_pings} server pings reached the clients");
    assert!(server.counter("tether_pongs_received_total") >= CONNECTIONS * 8);
}

#[test]
fn tcp_keepalive_on_the_server_keeps_idle_flows_alive() {
    let rig = NatRig::new("k", NAT_IDLE_S);
    let server = start_server(&rig, &["--ping-interval", "0", "--tcp-keepalive", "3s,1s,3"]);
    let url = url();
    let args = load_args(&url, "40s", &["--ping-interval", "0", "--tcp-keepalive", "off", "--final-echo", "--strict"]);
    let run = Load::run(Some(&rig.client), &args, Duration::from_secs(150));
    assert_all_held(&run, "server TCP keepalive 3s");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.u("pings.server_pings"), 0, "pings were off, yet the client saw some");
    assert_eq!(server.counter("tether_pings_sent_total"), 0);
}

/// The client role sets keepalive on its own sockets too (tether-load `--tcp-keepalive`): a client behind a
/// NAT can keep its mapping alive towards a server that does nothing.
#[test]
fn tcp_keepalive_on_the_client_keeps_idle_flows_alive() {
    let rig = NatRig::new("c", NAT_IDLE_S);
    let server = start_server(&rig, &["--ping-interval", "0", "--tcp-keepalive", "off"]);
    let url = url();
    let args =
        load_args(&url, "40s", &["--ping-interval", "0", "--tcp-keepalive", "3s,1s,3", "--final-echo", "--strict"]);
    let run = Load::run(Some(&rig.client), &args, Duration::from_secs(150));
    assert_all_held(&run, "client TCP keepalive 3s");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(server.counter("tether_pings_sent_total"), 0);
}

#[test]
fn without_pings_or_keepalive_the_nat_forgets_every_flow_and_the_server_never_notices() {
    let rig = NatRig::new("n", NAT_IDLE_S);
    let server = start_server(&rig, &["--ping-interval", "0", "--tcp-keepalive", "off"]);
    let url = url();
    // Idle 30 s (three NAT timeouts), then the client's first ping finds each connection dead.
    let args = load_args(
        &url,
        "60s",
        // No jitter: every first ping comes after the NAT forgot the flow.
        &[
            "--ping-interval",
            "30s",
            "--ping-jitter",
            "off",
            "--pong-timeout",
            "5s",
            "--tcp-keepalive",
            "off",
            "--close-wait",
            "2s",
        ],
    );
    let run = Load::run(Some(&rig.client), &args, Duration::from_secs(150));
    let d = run.describe();
    assert_eq!(run.u("connections.established"), CONNECTIONS, "{d}");
    assert_eq!(run.u("drops.total"), CONNECTIONS, "every flow should have died in the NAT\n{d}");
    assert_eq!(run.u("drops.by_phase.hold"), CONNECTIONS, "{d}");
    assert_eq!(
        run.u("drops.pong_timeouts") + run.u("drops.by_code.1006"),
        CONNECTIONS,
        "the client should find them dead (pong timeout) or reset (1006)\n{d}"
    );
    assert_eq!(run.u("pings.answered"), 0, "a ping crossed a NAT that had forgotten the flow\n{d}");
    assert_eq!(rig.tracked_flows(), 0, "the NAT still tracks flows");
    // The server learned nothing: it still holds every connection (plus the /metrics scrape itself).
    let open = server.open_connections();
    assert!(open >= CONNECTIONS, "the server holds only {open} of {CONNECTIONS}: it should not have noticed");
    assert!(
        close_lines(&server.log).is_empty(),
        "the server logged closes it cannot have seen:\n{}",
        server.log.tail(10)
    );
}

#[test]
fn a_vanished_client_is_found_and_freed_within_ping_interval_plus_pong_timeout() {
    let rig = NatRig::new("v", NAT_IDLE_S);
    let server = start_server(
        &rig,
        &["--ping-interval", "2s", "--pong-timeout", "2s", "--tcp-keepalive", "off", "--tick", "100ms"],
    );
    let url = url();
    let args = load_args(&url, "25s", &["--ping-interval", "0", "--tcp-keepalive", "off", "--close-wait", "1s"]);
    let load = Load::spawn(Some(&rig.client), &args);

    let all_open =
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || server.open_connections() > CONNECTIONS);
    assert!(all_open, "not all {CONNECTIONS} connections opened: {}", server.open_connections());
    // Let a ping round pass, so that every connection has been pinged and has answered at least once.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(server.log.matching(&["pong timeout"]).is_empty(), "pong timeouts before the client vanished");

    rig.vanish_client();
    let vanished_at = SystemTime::now();
    let vanished = Instant::now();
    let freed = wait_until(Duration::from_secs(20), Duration::from_millis(100), || server.open_connections() <= 1);
    assert!(
        freed,
        "still {} connections open {:?} after the client vanished",
        server.open_connections(),
        vanished.elapsed()
    );

    // One close line per connection, each a pong timeout, timed from the log's own timestamps.
    let lines = close_lines(&server.log);
    let mut detect_ms: Vec<i64> = lines
        .iter()
        .filter(|l| log_field(l, "reason") == Some("pong timeout"))
        .map(|l| {
            let stamp = l.split_whitespace().next().unwrap_or("");
            let at = humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("no timestamp ({e}) in {l}"));
            match at.duration_since(vanished_at) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => -(e.duration().as_millis() as i64),
            }
        })
        .collect();
    assert_eq!(
        detect_ms.len() as u64,
        CONNECTIONS,
        "expected {CONNECTIONS} pong-timeout closes, got {} (of {} close lines)",
        detect_ms.len(),
        lines.len()
    );
    for l in lines.iter().take(3) {
        assert_eq!(log_field(l, "code"), Some("1011"), "{l}");
        assert_eq!(log_field(l, "initiator"), Some("local"), "{l}");
    }
    detect_ms.sort_unstable();
    let pct = |p: f64| detect_ms[((detect_ms.len() - 1) as f64 * p) as usize];
    eprintln!(
        "detection time after the client vanished (ms, {} connections): min {} p50 {} p90 {} p99 {} max {}",
        detect_ms.len(),
        detect_ms[0],
        pct(0.5),
        pct(0.9),
        pct(0.99),
        detect_ms[detect_ms.len() - 1]
    );
    // The last answered ping was at most one interval before the vanishing; its successor's pong is due
    // pong_timeout later, rounded up to the tick: 2 s + 2 s + 100 ms. The allowance covers logging the
    // 2,000 closes on a loaded two-core machine, not a late timer.
    let bound_ms = 2000 + 2000 + 100 + 400;
    assert!(detect_ms[detect_ms.len() - 1] <= bound_ms, "a connection was freed only after {} ms", pct(1.0));
    // Nothing is freed before a ping could have gone unanswered for pong_timeout.
    assert!(detect_ms[0] >= 1500, "a connection was closed only {} ms after the client vanished", detect_ms[0]);
    let _ = load.wait(Duration::from_secs(60));
}
