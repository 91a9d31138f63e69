//! tether-load against Python's `websockets` server (a WebSocket implementation nobody here wrote): echo and
//! pings with zero drops, and a server that kills a known number of connections (1008 close, TCP abort,
//! reconnects).

mod common;

use std::time::Duration;

use common::{python_server, scratch, tether_load, u};

const LIMIT: Duration = Duration::from_secs(90);

fn run(port: u16, name: &str, extra: &[&str]) -> (common::Run, serde_json::Value) {
    let dir = scratch(name);
    let json = dir.join("report.json");
    let url = format!("ws://127.0.0.1:{port}/echo");
    let mut args = vec!["run", "--url", &url, "--quiet"];
    args.extend_from_slice(extra);
    let run = tether_load(&args, Some(&json), LIMIT);
    let report =
        run.json.clone().unwrap_or_else(|| panic!("no report\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr));
    (run, report)
}

#[test]
fn echo_and_pings_with_zero_drops() {
    let server = python_server(&["echo"]);
    let (run, r) = run(
        server.port,
        "echo",
        &[
            "--connections",
            "500",
            "--rate",
            "1000/s",
            "--duration",
            "4s",
            "--ping-interval",
            "1s",
            "--message-rate",
            "2",
            "--message-size",
            "100",
            "--source-ips",
            "127.0.1.1-127.0.1.2",
            "--strict",
        ],
    );
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(u(&r, "connections.requested"), 500);
    assert_eq!(u(&r, "connections.established"), 500);
    assert_eq!(u(&r, "connections.failed"), 0);
    assert_eq!(u(&r, "drops.total"), 0);
    assert!(u(&r, "pings.answered") >= 500, "{r:#}");
    assert_eq!(u(&r, "pings.answered"), u(&r, "ping_rtt_us.count"));
    assert!(u(&r, "pings.sent") >= u(&r, "pings.answered"));
    assert!(u(&r, "messages.sent") >= 500 * 4, "{r:#}");
    assert_eq!(u(&r, "messages.echoed"), u(&r, "echo_us.count"));
    assert!(u(&r, "messages.echoed") + 500 >= u(&r, "messages.sent"), "{r:#}");
    assert_eq!(u(&r, "handshake_us.count"), 500);
    assert_eq!(u(&r, "closes.clean"), 500);
}

#[test]
fn counts_exactly_the_connections_the_server_closes_with_1008() {
    let server = python_server(&["close1008", "7"]);
    let (run, r) = run(
        server.port,
        "close1008",
        &["--connections", "200", "--rate", "1000/s", "--duration", "3s", "--source-ips", "127.0.1.3"],
    );
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(u(&r, "connections.established"), 200);
    assert_eq!(u(&r, "drops.total"), 7, "{r:#}");
    assert_eq!(u(&r, "drops.by_code.1008"), 7, "{r:#}");
    assert_eq!(u(&r, "drops.by_phase.ramp") + u(&r, "drops.by_phase.hold"), 7);
    assert_eq!(u(&r, "drops.pong_timeouts"), 0);
    assert_eq!(u(&r, "connections.reconnects"), 0);
    assert_eq!(u(&r, "closes.clean"), 193);
}

#[test]
fn a_tcp_abort_is_a_1006_drop() {
    let server = python_server(&["abort", "5"]);
    let (run, r) = run(
        server.port,
        "abort",
        &["--connections", "100", "--rate", "1000/s", "--duration", "3s", "--source-ips", "127.0.1.4"],
    );
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(u(&r, "drops.total"), 5, "{r:#}");
    assert_eq!(u(&r, "drops.by_code.1006"), 5, "{r:#}");
}

#[test]
fn dropped_connections_come_back_with_reconnect() {
    let server = python_server(&["close1008", "6"]);
    let (run, r) = run(
        server.port,
        "reconnect",
        &["--connections", "100", "--rate", "1000/s", "--duration", "5s", "--reconnect", "--source-ips", "127.0.1.5"],
    );
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(u(&r, "connections.established"), 100);
    assert_eq!(u(&r, "drops.by_code.1008"), 6, "{r:#}");
    assert_eq!(u(&r, "connections.reconnects"), 6, "{r:#}");
    // Everyone is back and closed cleanly at the end.
    assert_eq!(u(&r, "closes.clean"), 100, "{r:#}");
}
