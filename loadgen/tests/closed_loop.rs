//! `--closed-loop`: one message in flight per connection, the next sent when the echo of the last arrives.
//! Against tetherd: many round trips per connection, never more than one outstanding, every one echoed, and
//! no paced traffic during the ramp.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{scratch, start_server, tether_load, tetherd_bin, u};

#[test]
fn closed_loop_keeps_one_message_in_flight_per_connection() {
    let Some(bin) = tetherd_bin() else {
        eprintln!("SKIPPED: no tetherd binary (set TETHERD_BIN or build tetherd first)");
        return;
    };
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "1"]);
    let server = start_server(cmd, "tetherd listening on");
    let dir = scratch("closedloop");
    let json = dir.join("report.json");
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let run = tether_load(
        &[
            "run",
            "--url",
            &url,
            "--connections",
            "50",
            "--rate",
            "1000/s",
            "--duration",
            "3s",
            "--closed-loop",
            // Ignored in a closed loop: pacing would cap the count far below what is asserted.
            "--message-rate",
            "1",
            "--message-size",
            "512",
            "--ping-interval",
            "0",
            "--quiet",
            "--strict",
        ],
        Some(&json),
        Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let r = run.json.expect("report");
    assert_eq!(u(&r, "connections.established"), 50, "{r:#}");
    assert_eq!(u(&r, "drops.total"), 0, "{r:#}");
    let (sent, echoed) = (u(&r, "messages.sent"), u(&r, "messages.echoed"));
    // A paced run at 1/s for 3 s would send about 150; a closed loop on loopback does thousands.
    assert!(echoed > 2_000, "closed loop did only {echoed} round trips: {r:#}");
    // At most one message per connection is outstanding when the traffic stops.
    assert!(sent >= echoed && sent - echoed <= 50, "sent {sent}, echoed {echoed}");
    assert_eq!(u(&r, "echo_us.count"), echoed);
}
