//! tether-load reports the ping RTT of the hold apart from the whole run's (`ping_rtt_hold_us`, the "ping rtt
//! (hold)" row: pings sent and answered in the hold): a ramp builds queues, so the whole run's p99 says more
//! about the ramp than about the steady state. Here 50 connections ramp over 2 s and hold 2 s, each pinging
//! every 200 ms: about 250 pings go out in the ramp and 500 in the hold, and the hold's histogram must hold
//! those and only those.

use std::time::Duration;

use tether_tests::load::Load;
use tether_tests::Server;

#[test]
fn the_hold_has_its_own_ping_rtt() {
    let server = Server::start(&["--shards", "1", "--ping-interval", "0"]);
    let url = format!("ws://{}/", server.addr);
    let run = Load::run_url(
        &url,
        &["--connections", "50", "--rate", "25/s", "--duration", "2s", "--ping-interval", "200ms"],
        Duration::from_secs(60),
    );
    run.assert_all_clean(50, "50 connections, pings every 200 ms");
    let d = run.describe();
    let all = run.u("ping_rtt_us.count");
    let hold = run.u("ping_rtt_hold_us.count");
    assert_eq!(all, run.u("pings.answered"), "{d}");
    // 50 connections x 2 s / 200 ms = 500 in the hold (pings are jittered, ticks are 10 ms: a wide band).
    assert!((250..=750).contains(&hold), "{hold} pings in the hold, expected about 500; {d}");
    // The ramp's pings (about 250: each connection pings from its open) are in the whole run only.
    assert!(all >= hold + 100, "whole run {all}, hold {hold}: the ramp's pings are missing; {d}");
    assert!(run.u("ping_rtt_hold_us.p99") > 0 && run.u("ping_rtt_hold_us.max") >= run.u("ping_rtt_hold_us.p50"), "{d}");
}

/// The progress line carries the handshake p99 of its own second: a number while connections open, `-` once
/// none do. 300 connections ramp over 3 s (three or four lines with handshakes), then a 3 s hold (lines
/// without). Run without `--quiet`, so the lines go to stderr (not a terminal: plain lines).
#[test]
fn each_progress_line_has_the_handshake_p99_of_its_second() {
    let server = Server::start(&["--shards", "1"]);
    let url = format!("ws://{}/", server.addr);
    let mut cmd = std::process::Command::new(tether_tests::load::tether_load_bin());
    cmd.args(["run", "--url", &url, "--connections", "300", "--rate", "100/s", "--duration", "3s"]);
    let out = tether_tests::die_with_parent(&mut cmd).stdin(std::process::Stdio::null()).output().expect("tether-load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tether-load failed: {stderr}");
    let field = |line: &str| -> Option<String> {
        let rest = line.split("handshake p99 ").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    };
    let ramp: Vec<String> = stderr.lines().filter(|l| l.contains("] ramp")).filter_map(field).collect();
    let hold: Vec<String> = stderr.lines().filter(|l| l.contains("] hold")).filter_map(field).collect();
    let timed =
        ramp.iter().filter(|v| v.strip_suffix("ms").and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n > 0.0));
    assert!(timed.count() >= 2, "ramp lines without a handshake p99: {ramp:?}\n{stderr}");
    // The first hold line may still count the ramp's last handshakes; the later ones have none.
    assert!(hold.len() >= 2 && hold[1..].iter().all(|v| v == "-"), "hold lines: {hold:?}\n{stderr}");
}
