//! The order of a connection's teardown, as a pure function of its slot's flags: flush what must go out
//! (a Close frame, an HTTP answer), then end the slot's operations (cancel the multishot receive, a send
//! the peer no longer takes, a pending connect), then `close` once no operation of the slot is in flight.
//! Closing the last reference to the socket sends the FIN. The ring acts on each step; this file decides it,
//! with no I/O, so the order can be tested on its own.
//!
//! No `shutdown(2)` step: io_uring always hands IORING_OP_SHUTDOWN to its io-wq worker threads, so a mass
//! close (a client fleet killed, a load balancer dropping every flow) queued a hundred thousand work items and
//! spawned workers; together with cancels by descriptor, which walk every pending request, teardown grew
//! quadratic and wedged (see ARCHITECTURE.md, "Teardown"). A cancel by token is one hash lookup, done inline.

use super::slot::flag;

/// What a closing slot needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Submit a send of the queued output.
    Send,
    /// Cancel the slot's operations that are still in flight (receive, abandoned send, connect).
    EndOps,
    /// Submit close of the descriptor.
    Close,
    /// Wait for a completion.
    Wait,
}

/// The next step of teardown for a slot in `Closing` with `flags`, `queued` telling whether output waits.
pub(crate) fn next_step(flags: u32, queued: bool) -> Step {
    let has = |f: u32| flags & f != 0;
    if has(flag::FLUSH_FIRST) {
        if has(flag::SEND_INFLIGHT) {
            return Step::Wait;
        }
        if queued {
            return Step::Send;
        }
    }
    if !has(flag::OPS_ENDED) {
        return Step::EndOps;
    }
    if has(flag::CLOSE_SUBMITTED) || flags & flag::BUSY != 0 {
        return Step::Wait;
    }
    Step::Close
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closing slot driven by the steps and by completions arriving in a given order; returns the steps
    /// taken.
    fn run(mut flags: u32, mut queued: bool, completions: &[u32]) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut pending = completions.iter();
        for _ in 0..32 {
            match next_step(flags, queued) {
                Step::Send => {
                    flags |= flag::SEND_INFLIGHT;
                    queued = false;
                    steps.push(Step::Send);
                }
                Step::EndOps => {
                    flags = (flags | flag::OPS_ENDED) & !flag::FLUSH_FIRST;
                    steps.push(Step::EndOps);
                }
                Step::Close => {
                    steps.push(Step::Close);
                    return steps;
                }
                // A completion clears the flag of the operation that finished.
                Step::Wait => match pending.next() {
                    Some(&f) => flags &= !f,
                    None => return steps,
                },
            }
        }
        steps
    }

    #[test]
    fn close_frame_goes_out_before_the_receive_ends_and_close_waits_for_everything() {
        use Step::*;
        // Open connection closing with a Close frame queued, receive armed.
        let flags = flag::FLUSH_FIRST | flag::RECV_ARMED;
        let steps = run(flags, true, &[flag::SEND_INFLIGHT, flag::RECV_ARMED]);
        assert_eq!(steps, [Send, EndOps, Close]);
        // The cancelled receive has not completed yet: close still waits for it.
        let steps = run(flags, true, &[flag::SEND_INFLIGHT]);
        assert_eq!(steps, [Send, EndOps], "close must wait for the receive to end");
    }

    #[test]
    fn a_send_in_flight_is_finished_before_the_flush_and_the_end_of_operations() {
        use Step::*;
        let flags = flag::FLUSH_FIRST | flag::SEND_INFLIGHT | flag::RECV_ARMED;
        assert_eq!(next_step(flags, true), Wait);
        let steps = run(flags, true, &[flag::SEND_INFLIGHT, flag::SEND_INFLIGHT, flag::RECV_ARMED]);
        assert_eq!(steps, [Send, EndOps, Close]);
    }

    #[test]
    fn abandoned_output_skips_the_flush() {
        use Step::*;
        // Peer gone: nothing flushed, operations ended at once, close after the peer-name lookup and the
        // receive end.
        let flags = flag::RECV_ARMED | flag::PEERNAME_PENDING;
        let steps = run(flags, true, &[flag::PEERNAME_PENDING, flag::RECV_ARMED]);
        assert_eq!(steps, [EndOps, Close]);
        // An abandoned send in flight is waited for too (it is cancelled, not flushed).
        let flags = flag::RECV_ARMED | flag::SEND_INFLIGHT;
        assert_eq!(run(flags, false, &[flag::RECV_ARMED]), [EndOps]);
        assert_eq!(run(flags, false, &[flag::RECV_ARMED, flag::SEND_INFLIGHT]), [EndOps, Close]);
    }

    #[test]
    fn nothing_in_flight_closes_at_once() {
        assert_eq!(run(0, false, &[]), [Step::EndOps, Step::Close]);
    }

    #[test]
    fn close_is_submitted_once() {
        let flags = flag::OPS_ENDED | flag::CLOSE_SUBMITTED;
        assert_eq!(next_step(flags, false), Step::Wait);
        assert_eq!(next_step(flags & !flag::CLOSE_SUBMITTED, false), Step::Close);
    }
}
