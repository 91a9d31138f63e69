//! The order of a connection's teardown, as a pure function of its slot's flags: flush what must go out
//! (a Close frame, an HTTP answer), then `shutdown` (which ends the multishot receive), then `close` once no
//! operation of the slot is in flight. The ring acts on each step; this file decides it, with no I/O, so the
//! order can be tested on its own.

use super::slot::flag;

/// What a closing slot needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Submit a send of the queued output.
    Send,
    /// Submit shutdown (or, with no connected socket, cancel what is pending).
    Shutdown,
    /// Submit close of the descriptor.
    Close,
    /// Wait for a completion.
    Wait,
}

/// The next step of teardown for a slot in `Closing` with `flags`, `queued` telling whether output waits.
pub(crate) fn next_step(flags: u16, queued: bool) -> Step {
    let has = |f: u16| flags & f != 0;
    if has(flag::FLUSH_FIRST) {
        if has(flag::SEND_INFLIGHT) {
            return Step::Wait;
        }
        if queued {
            return Step::Send;
        }
    }
    if !has(flag::SHUTDOWN_SUBMITTED) {
        return Step::Shutdown;
    }
    if has(flag::CLOSE_SUBMITTED) || flags & flag::BUSY != 0 || !has(flag::SHUTDOWN_DONE) {
        return Step::Wait;
    }
    Step::Close
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closing slot driven by the steps and by completions arriving in a given order; returns the steps
    /// taken.
    fn run(mut flags: u16, mut queued: bool, completions: &[u16]) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut pending = completions.iter();
        for _ in 0..32 {
            match next_step(flags, queued) {
                Step::Send => {
                    flags |= flag::SEND_INFLIGHT;
                    queued = false;
                    steps.push(Step::Send);
                }
                Step::Shutdown => {
                    flags = (flags | flag::SHUTDOWN_SUBMITTED) & !flag::FLUSH_FIRST;
                    steps.push(Step::Shutdown);
                }
                Step::Close => {
                    steps.push(Step::Close);
                    return steps;
                }
                Step::Wait => match pending.next() {
                    // A completion clears the flag of the operation that finished (SHUTDOWN_DONE is set).
                    Some(&f) if f == flag::SHUTDOWN_DONE => flags |= f,
                    Some(&f) => flags &= !f,
                    None => return steps,
                },
            }
        }
        steps
    }

    #[test]
    fn close_frame_goes_out_before_shutdown_and_close_waits_for_everything() {
        use Step::*;
        // Open connection closing with a Close frame queued, receive armed.
        let flags = flag::FLUSH_FIRST | flag::RECV_ARMED;
        let steps = run(flags, true, &[flag::SEND_INFLIGHT, flag::SHUTDOWN_DONE, flag::RECV_ARMED]);
        assert_eq!(steps, [Send, Shutdown, Close]);
        // The receive ends (shutdown) only after the shutdown completion here: close still waits for it.
        let steps = run(flags, true, &[flag::SEND_INFLIGHT, flag::SHUTDOWN_DONE]);
        assert_eq!(steps, [Send, Shutdown], "close must wait for the receive to end");
    }

    #[test]
    fn a_send_in_flight_is_finished_before_the_flush_and_shutdown() {
        use Step::*;
        let flags = flag::FLUSH_FIRST | flag::SEND_INFLIGHT | flag::RECV_ARMED;
        assert_eq!(next_step(flags, true), Wait);
        let steps =
            run(flags, true, &[flag::SEND_INFLIGHT, flag::SEND_INFLIGHT, flag::RECV_ARMED, flag::SHUTDOWN_DONE]);
        assert_eq!(steps, [Send, Shutdown, Close]);
    }

    #[test]
    fn abandoned_output_skips_the_flush() {
        use Step::*;
        // Peer gone: nothing flushed, shutdown at once, close after the peer-name lookup and receive end.
        let flags = flag::RECV_ARMED | flag::PEERNAME_PENDING;
        let steps = run(flags, true, &[flag::PEERNAME_PENDING, flag::SHUTDOWN_DONE, flag::RECV_ARMED]);
        assert_eq!(steps, [Shutdown, Close]);
    }

    #[test]
    fn close_is_submitted_once() {
        let flags = flag::SHUTDOWN_SUBMITTED | flag::SHUTDOWN_DONE | flag::CLOSE_SUBMITTED;
        assert_eq!(next_step(flags, false), Step::Wait);
        assert_eq!(next_step(flags & !flag::CLOSE_SUBMITTED, false), Step::Close);
    }
}
