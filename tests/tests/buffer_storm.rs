//! The provided-buffer storm (issue 10, defect 1): when every receive buffer of a ring is in use, a
//! connection's multishot receive ends with ENOBUFS. Re-armed at once it found the ring still empty and failed
//! again, thousands of times a second, and at 200,000 connections less than half were established. Now the
//! starved receives are re-armed after the batch of completions has recycled its buffers. Here a ring with
//! only 16 buffers (64 KiB) serves 1,500 connections that each send 2 KiB messages: the buffers run out
//! about 10,000 times, and every message must still be echoed, every connection kept and closed cleanly (a
//! starved receive that is not armed again stalls its connection: without the re-arm this test fails).

use std::time::Duration;

use tether_tests::load::Load;
use tether_tests::Server;

const CONNECTIONS: u64 = 1_500;

#[test]
fn receives_starved_of_buffers_are_re_armed_and_lose_nothing() {
    let server = Server::start(&["--shards", "1", "--recv-buffers", "16"]);
    let url = format!("ws://{}/", server.addr);
    let n = CONNECTIONS.to_string();
    let run = Load::run_url(
        &url,
        &[
            "--connections",
            &n,
            "--shards",
            "1",
            "--rate",
            "5000/s",
            "--message-rate",
            "4",
            "--message-size",
            "2048",
            "--duration",
            "3s",
            "--ping-interval",
            "0",
            "--final-echo",
        ],
        Duration::from_secs(120),
    );
    run.assert_all_clean(CONNECTIONS, "1,500 connections on 16 receive buffers");
    let d = run.describe();
    let sent = run.u("messages.sent");
    assert!(sent > CONNECTIONS, "too few messages to run the buffers out: {sent}; {d}");
    assert_eq!(run.u("messages.echoed"), sent, "{d}");
    assert_eq!((run.u("messages.final_sent"), run.u("messages.final_echoed")), (CONNECTIONS, CONNECTIONS), "{d}");
    // The storm did happen: receives ended for want of a buffer (and were re-armed: nothing was lost).
    let exhausted = server.counter("tether_recv_buffer_exhausted_total");
    assert!(exhausted > 0, "the 16 buffers never ran out; the test does not test the storm");
}
