//! permessage-deflate through the engine's client role: tether-load `--deflate` (shared and dedicated) against
//! tetherd, echo traffic of compressible messages. The bytes tetherd received show the compression is real
//! both ways (tetherd inflates what the client compressed and compresses its echo, which the client inflates
//! and checks). Clients nobody here wrote are in tests/python/test_deflate.py (websockets) and
//! test_deflate_node.py (Node ws).

use std::time::Duration;

use tether_tests::load::Load;
use tether_tests::Server;

/// Runs 50 connections for 3 s at 20 messages/s each of 1,000 bytes, with a final echo; returns (messages
/// echoed, bytes tetherd received).
fn run(server_args: &[&str], load_args: &[&str]) -> (u64, u64) {
    let server = Server::start(server_args);
    let url = server.ws_url("/");
    let mut args = vec![
        "run",
        "--url",
        &url,
        "--connections",
        "50",
        "--duration",
        "3s",
        "--message-rate",
        "20",
        "--message-size",
        "1000",
        "--final-echo",
        "--strict",
    ];
    args.extend_from_slice(load_args);
    let run = Load::run(None, &args, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.u("messages.final_echoed"), 50, "{}", run.describe());
    let echoed = run.u("messages.echoed");
    assert_eq!(echoed, run.u("messages.sent"), "{}", run.describe());
    assert!(echoed > 500, "{}", run.describe());
    (echoed, server.counter("tether_bytes_in_total"))
}

#[test]
fn tether_load_deflate_against_tetherd() {
    let (plain_msgs, plain_bytes) = run(&[], &[]);
    let (shared_msgs, shared_bytes) = run(&[], &["--deflate"]);
    let (ded_msgs, ded_bytes) = run(&["--deflate", "dedicated:12"], &["--deflate", "dedicated:12"]);
    let per = |bytes: u64, msgs: u64| bytes / msgs.max(1);
    // tether-load's payload is a header and zeros: compressed, a 1,000-byte message is a few dozen bytes.
    assert!(per(plain_bytes, plain_msgs) >= 1000, "{plain_bytes} bytes for {plain_msgs} messages");
    assert!(per(shared_bytes, shared_msgs) < 200, "{shared_bytes} bytes for {shared_msgs} messages");
    assert!(per(ded_bytes, ded_msgs) < 200, "{ded_bytes} bytes for {ded_msgs} messages");
    // tetherd declines when told to: the same client works uncompressed.
    let (off_msgs, off_bytes) = run(&["--deflate", "off"], &["--deflate"]);
    assert!(per(off_bytes, off_msgs) >= 1000, "{off_bytes} bytes for {off_msgs} messages");
}
