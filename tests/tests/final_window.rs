//! tether-load's final echo goes out through a window per shard that follows the echoes' latency
//! (`loadgen/src/window.rs`, unit-tested there on scripted latencies). Here, end to end against a real
//! tetherd on an idle loopback: the echoes come back in well under the 50 ms target, so the window must
//! grow past where it starts (64) while every connection still answers exactly once; and `--final-window N`
//! must hold it at N and lose nothing either.

use std::time::Duration;

use tether_tests::load::Load;
use tether_tests::Server;

const CONNECTIONS: u64 = 3_000;

fn final_echo(server: &Server, extra: &[&str]) -> tether_tests::load::LoadRun {
    let url = server.ws_url("/");
    let n = CONNECTIONS.to_string();
    let mut args = vec!["--connections", &n, "--shards", "1", "--rate", "10000/s", "--duration", "1s", "--final-echo"];
    args.extend_from_slice(extra);
    let run = Load::run_url(&url, &args, Duration::from_secs(90));
    run.assert_all_clean(CONNECTIONS, &format!("final echo {extra:?}"));
    let d = run.describe();
    assert_eq!((run.u("messages.final_sent"), run.u("messages.final_echoed")), (CONNECTIONS, CONNECTIONS), "{d}");
    assert_eq!(run.u("final_echo_us.count"), CONNECTIONS, "every final echo's round trip is in the report: {d}");
    run
}

#[test]
fn the_final_echo_window_grows_while_echoes_are_quick_and_can_be_fixed() {
    let server = Server::start(&["--shards", "1"]);
    let run = final_echo(&server, &[]);
    let peak = run.u("final_window_peak");
    assert!(peak >= 256, "the window did not grow on quick echoes (starts at 64): peak {peak}; {}", run.describe());

    let run = final_echo(&server, &["--final-window", "8"]);
    assert_eq!(run.u("final_window_peak"), 8, "{}", run.describe());
}
