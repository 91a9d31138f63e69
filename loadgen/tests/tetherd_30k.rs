//! 30,000 connections from ONE tether-load process against tetherd: past one process's fd limit (20,000),
//! which the engine's direct descriptors get around. All established, pinged, zero drops, clean close, and the
//! report's counts add up.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{scratch, start_server, tether_load, tetherd_bin, u};

#[test]
fn thirty_thousand_connections_against_tetherd() {
    let Some(bin) = tetherd_bin() else {
        eprintln!("SKIPPED: no tetherd binary (set TETHERD_BIN or build tetherd first)");
        return;
    };
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "3", "--ping-interval", "4s"]);
    let server = start_server(cmd, "tetherd listening on");
    let dir = scratch("tetherd30k");
    let json = dir.join("report.json");
    let hgrm = dir.join("ping.hgrm");
    let plot = dir.join("plot.svg");
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let run = tether_load(
        &[
            "run",
            "--url",
            &url,
            "--connections",
            "30000",
            "--rate",
            "10000/s",
            "--duration",
            "12s",
            "--ping-interval",
            "3s",
            "--source-ips",
            "127.0.2.1-127.0.2.3",
            "--quiet",
            "--strict",
            "--hgrm",
            hgrm.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
        Some(&json),
        Duration::from_secs(120),
    );
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let r = run.json.expect("report");
    assert_eq!(u(&r, "connections.requested"), 30_000);
    assert_eq!(u(&r, "connections.established"), 30_000, "{r:#}");
    assert_eq!(u(&r, "connections.failed"), 0);
    assert_eq!(u(&r, "connections.peak_open"), 30_000, "{r:#}");
    assert_eq!(u(&r, "handshake_us.count"), 30_000);
    assert_eq!(u(&r, "drops.total"), 0, "{r:#}");
    assert_eq!(u(&r, "drops.pong_timeouts"), 0);
    // Every connection pinged (3 s interval, 12 s hold), every ping answered and timed.
    assert!(u(&r, "pings.answered") >= 30_000 * 3, "{r:#}");
    assert_eq!(u(&r, "pings.answered"), u(&r, "ping_rtt_us.count"));
    // At most one ping per connection can be outstanding when it closes.
    let answered = u(&r, "pings.answered") + u(&r, "pings.late");
    assert!(u(&r, "pings.sent") >= answered && u(&r, "pings.sent") - answered <= 30_000, "{r:#}");
    // tetherd pinged us every 4 s: intervals were seen.
    assert!(u(&r, "server_ping_interval_ms.count") > 0, "{r:#}");
    assert_eq!(u(&r, "closes.clean"), 30_000, "{r:#}");
    assert_eq!(u(&r, "closes.left_open"), 0);
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm.contains(&format!("Total count    = {:>12}]", u(&r, "pings.answered"))));
    assert!(std::fs::read_to_string(plot).unwrap().contains("<polyline"));
}
