//! `--submit-every N`: the shard submits what its completions produced every N completions instead of once
//! after the whole batch (issue 10: a big batch must not hold back its first replies). A submission in the
//! middle of a batch must not reorder, lose or double anything. With N = 1 every completion is followed by a
//! flush and a submit (the path the default of 512 takes only under large batches); with N = 0 there is one
//! submit per loop iteration. In both, 1,000 connections in a closed loop (each with a message in flight, so
//! the completions come in batches of hundreds) get every message back, and every connection closes cleanly.

use std::time::Duration;

use tether_tests::load::Load;
use tether_tests::Server;

#[test]
fn every_message_comes_back_whatever_the_submission_cadence() {
    for every in ["1", "0"] {
        let server = Server::start(&["--shards", "1", "--submit-every", every, "--ping-interval", "1s"]);
        let url = format!("ws://{}/", server.addr);
        let run = Load::run_url(
            &url,
            &[
                "--connections",
                "1000",
                "--shards",
                "1",
                "--rate",
                "10000/s",
                "--closed-loop",
                "--message-size",
                "700",
                "--duration",
                "3s",
                "--ping-interval",
                "1s",
                "--final-echo",
            ],
            Duration::from_secs(120),
        );
        let context = format!("--submit-every {every}");
        run.assert_all_clean(1000, &context);
        let d = format!("{context}: {}", run.describe());
        let sent = run.u("messages.sent");
        assert!(sent > 10_000, "too few messages for batches of completions: {sent}; {d}");
        assert_eq!(run.u("messages.echoed"), sent, "{d}");
        assert_eq!(run.u("messages.final_echoed"), 1000, "{d}");
        assert!(run.u("pings.answered") > 0, "{d}");
    }
}
