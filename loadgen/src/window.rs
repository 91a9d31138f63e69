//! How many `--final-echo` messages a shard keeps out at once.
//!
//! The final echo sends one message on every open connection. Sent all at once (a million, on a box
//! already busy with keepalive) they queued in front of the pongs, which then missed their deadlines; a
//! fixed window (2,000 per shard) still queued up to 1.7 s of echoes on a busy box (at 200,000) and
//! was needlessly small on an idle one. This window follows the echoes' own latency, as a TCP sender's
//! follows its round trips: it doubles every round trip while echoes come back quickly (slow start), then
//! grows by one per window's worth of quick echoes, and shrinks to three quarters, at most once per round
//! trip, when the smoothed latency passes the target. A smoothed latency, not each sample: one slow echo
//! among thousands must not halve the window.

use std::time::Duration;

/// The latency the window steers to: far under any pong deadline, well over an idle loopback round trip.
pub const TARGET: Duration = Duration::from_millis(50);
/// Per shard: where it starts, and its bounds.
pub const START: usize = 64;
pub const MIN: usize = 16;
pub const MAX: usize = 16_384;

#[derive(Clone, Debug)]
pub struct EchoWindow {
    size: usize,
    /// Below it the window doubles per round trip; set at each cut.
    threshold: usize,
    /// Quick echoes counted toward the next +1 above the threshold.
    credit: usize,
    /// Smoothed latency (µs, an exponential average over about 32 echoes).
    smoothed_us: Option<f64>,
    /// When the window was last cut: echoes sent before then carry no news about the cut window.
    cut_at_us: u64,
    target_us: f64,
    min: usize,
    max: usize,
}

impl Default for EchoWindow {
    fn default() -> Self {
        EchoWindow::new(START, MIN, MAX, TARGET)
    }
}

impl EchoWindow {
    pub fn new(start: usize, min: usize, max: usize, target: Duration) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        EchoWindow {
            size: start.clamp(min, max),
            threshold: max,
            credit: 0,
            smoothed_us: None,
            cut_at_us: 0,
            target_us: target.as_micros() as f64,
            min,
            max,
        }
    }

    /// A window that stays at `n` whatever the latency.
    pub fn fixed(n: usize) -> Self {
        EchoWindow::new(n, n, n, TARGET)
    }

    /// How many echoes may be out now.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The smoothed latency, µs (0 before the first echo).
    pub fn smoothed_us(&self) -> u64 {
        self.smoothed_us.unwrap_or(0.0) as u64
    }

    /// An echo sent at `sent_us` came back at `now_us` (the same clock, µs).
    pub fn on_echo(&mut self, sent_us: u64, now_us: u64) {
        let rtt = now_us.saturating_sub(sent_us) as f64;
        let smoothed = match self.smoothed_us {
            None => rtt,
            Some(s) => s + (rtt - s) / 32.0,
        };
        self.smoothed_us = Some(smoothed);
        if smoothed > self.target_us {
            if sent_us >= self.cut_at_us {
                self.size = (self.size * 3 / 4).max(self.min);
                self.threshold = self.size;
                self.credit = 0;
                self.cut_at_us = now_us;
            }
            return;
        }
        if self.size < self.threshold {
            self.size += 1;
        } else {
            self.credit += 1;
            if self.credit >= self.size {
                self.credit = 0;
                self.size += 1;
            }
        }
        self.size = self.size.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    /// One round trip of a full window, every echo taking `rtt_ms`; returns the new size.
    fn round(w: &mut EchoWindow, clock: &mut u64, rtt_ms: u64) -> usize {
        let sent = *clock;
        *clock += rtt_ms * MS;
        for _ in 0..w.size() {
            w.on_echo(sent, *clock);
        }
        w.size()
    }

    #[test]
    fn doubles_per_round_trip_while_echoes_are_quick() {
        let mut w = EchoWindow::default();
        let mut clock = 1_000 * MS;
        assert_eq!(w.size(), START);
        assert_eq!(round(&mut w, &mut clock, 5), 2 * START);
        assert_eq!(round(&mut w, &mut clock, 5), 4 * START);
        for _ in 0..20 {
            round(&mut w, &mut clock, 5);
        }
        assert_eq!(w.size(), MAX, "bounded above");
    }

    #[test]
    fn cuts_once_per_round_trip_when_slow_then_grows_by_one() {
        let mut w = EchoWindow::new(1_000, MIN, MAX, TARGET);
        let mut clock = 1_000 * MS;
        // A whole window of slow echoes sent before any cut: one cut, not a thousand.
        assert_eq!(round(&mut w, &mut clock, 200), 750);
        // The next round trip is slow as well: one more cut.
        assert_eq!(round(&mut w, &mut clock, 200), 562);
        // Echoes quick again. The smoothed latency takes a few dozen echoes to come down, so the first
        // quick round trip may cut once more; after that the window grows by one per round trip (the
        // threshold is where it was cut), not by doubling.
        let mut sizes = Vec::new();
        for _ in 0..12 {
            sizes.push(round(&mut w, &mut clock, 2));
        }
        assert!(w.smoothed_us() < TARGET.as_micros() as u64);
        assert!(sizes[0] >= 562 * 3 / 4, "more than one cut after the latency recovered: {sizes:?}");
        for pair in sizes.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "additive growth after a cut: {sizes:?}");
        }
    }

    #[test]
    fn one_slow_echo_among_many_does_not_cut() {
        let mut w = EchoWindow::new(1_000, MIN, MAX, TARGET);
        let mut clock = 1_000 * MS;
        round(&mut w, &mut clock, 5);
        let before = w.size();
        w.on_echo(clock, clock + 400 * MS);
        assert!(w.size() >= before, "a single 400 ms echo cut the window: {} -> {}", before, w.size());
        // But a run of them does.
        clock += 400 * MS;
        for _ in 0..64 {
            w.on_echo(clock - 400 * MS, clock);
        }
        assert!(w.size() < before);
    }

    #[test]
    fn never_below_the_minimum() {
        let mut w = EchoWindow::default();
        let mut clock = 1_000 * MS;
        for _ in 0..50 {
            round(&mut w, &mut clock, 500);
        }
        assert_eq!(w.size(), MIN);
    }
}
