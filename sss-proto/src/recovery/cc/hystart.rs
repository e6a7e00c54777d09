//! HyStart++ (RFC 9406): leaving the initial slow start when the round trip starts to grow,
//! before the queue it builds overflows.
//!
//! Standard slow start doubles the window every round trip until a packet is lost; on a path
//! with a deep buffer that is a whole buffer's worth of queueing delay and then a burst of
//! losses (up to half a window). HyStart++ watches the smallest RTT sample of each round:
//! when it rises by more than a threshold (an eighth of the previous round's, clamped to
//! 4-16 ms), the sender enters *conservative slow start* (CSS), growing by a quarter of what
//! is acknowledged; if the RTT falls back below the baseline within [`CSS_ROUNDS`] rounds the
//! rise was a false alarm and slow start resumes, otherwise slow start ends there
//! (`ssthresh = cwnd`) and congestion avoidance takes over. A loss or ECN signal ends slow
//! start as before (the controller's congestion event).
//!
//! Rounds are delimited by packet numbers: a round ends when an acknowledgement covers the
//! packet that was the newest sent when it began. The channel paces its packets, so the
//! RFC's per-ACK growth limit `L` for unpaced senders does not apply.

use std::time::Duration;

/// Lower clamp of the RTT increase that counts as a rise (RFC 9406 `MIN_RTT_THRESH`).
pub const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
/// Upper clamp of the RTT increase that counts as a rise (`MAX_RTT_THRESH`).
pub const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
/// The threshold is the last round's minimum RTT divided by this (`MIN_RTT_DIVISOR`).
pub const MIN_RTT_DIVISOR: u32 = 8;
/// RTT samples a round needs before its minimum is trusted (`N_RTT_SAMPLE`).
pub const N_RTT_SAMPLE: u32 = 8;
/// Conservative slow start grows by the acknowledged bytes divided by this
/// (`CSS_GROWTH_DIVISOR`).
pub const CSS_GROWTH_DIVISOR: u64 = 4;
/// Rounds of conservative slow start before slow start ends (`CSS_ROUNDS`).
pub const CSS_ROUNDS: u32 = 5;

/// Where the initial slow start is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Standard slow start: the window grows by what is acknowledged.
    SlowStart,
    /// Conservative slow start since the round trip rose to `baseline`; `rounds` rounds
    /// have ended in it.
    Conservative {
        /// The round's minimum RTT that triggered it.
        baseline: Duration,
        /// Rounds completed in CSS.
        rounds: u32,
    },
    /// Slow start is over: the controller sets `ssthresh` to its window.
    Done,
}

/// The HyStart++ state of one controller's initial slow start.
#[derive(Debug, Clone)]
pub struct HyStart {
    phase: Phase,
    /// The current round ends when a packet numbered at least this is acknowledged; `None`
    /// before the first packet is sent.
    window_end: Option<u64>,
    /// Newest packet number sent.
    largest_sent: Option<u64>,
    last_round_min: Option<Duration>,
    current_round_min: Option<Duration>,
    samples: u32,
}

impl Default for HyStart {
    fn default() -> Self {
        Self::new()
    }
}

impl HyStart {
    /// A flow about to start slow start.
    pub fn new() -> Self {
        Self {
            phase: Phase::SlowStart,
            window_end: None,
            largest_sent: None,
            last_round_min: None,
            current_round_min: None,
            samples: 0,
        }
    }

    /// Where slow start is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Packet `packet_number` was sent.
    pub fn on_sent(&mut self, packet_number: u64) {
        self.largest_sent = Some(
            self.largest_sent
                .map_or(packet_number, |l| l.max(packet_number)),
        );
        if self.window_end.is_none() {
            self.window_end = Some(packet_number);
        }
    }

    /// How much `acked` newly acknowledged bytes grow the window in slow start.
    pub fn growth(&self, acked: u64) -> u64 {
        match self.phase {
            Phase::SlowStart => acked,
            Phase::Conservative { .. } => acked / CSS_GROWTH_DIVISOR,
            Phase::Done => 0,
        }
    }

    /// The end of one ACK frame's processing in slow start: `rtt_sample` is the RTT it
    /// measured (if any) and `largest_acked` the newest packet it acknowledged. Returns the
    /// phase afterwards; [`Phase::Done`] means slow start ends now.
    pub fn on_ack(&mut self, rtt_sample: Option<Duration>, largest_acked: Option<u64>) -> Phase {
        if self.phase == Phase::Done {
            return self.phase;
        }
        if let Some(rtt) = rtt_sample {
            self.current_round_min = Some(self.current_round_min.map_or(rtt, |m| m.min(rtt)));
            self.samples = self.samples.saturating_add(1);
            self.check_rtt();
        }
        let round_over = matches!(
            (largest_acked, self.window_end),
            (Some(acked), Some(end)) if acked >= end
        );
        if round_over {
            if let Phase::Conservative { baseline, rounds } = self.phase {
                let rounds = rounds + 1;
                self.phase = if rounds >= CSS_ROUNDS {
                    Phase::Done
                } else {
                    Phase::Conservative { baseline, rounds }
                };
            }
            // The next round: what is sent from now on.
            self.last_round_min = self.current_round_min.take();
            self.samples = 0;
            self.window_end = self.largest_sent.map(|l| l + 1);
        }
        self.phase
    }

    /// For a controller whose initial slow start `slot` watches (`None` once it ended):
    /// packet `packet_number` was sent.
    pub fn sent(slot: &mut Option<HyStart>, packet_number: u64) {
        if let Some(h) = slot {
            h.on_sent(packet_number);
        }
    }

    /// For a controller whose initial slow start `slot` watches: the end of one ACK frame
    /// ([`on_ack`](Self::on_ack)). When HyStart++ ends slow start, `ssthresh` becomes
    /// `window` (RFC 9406 §4.2: congestion avoidance starts from this window) and `slot`
    /// empties.
    pub fn end_of_ack(
        slot: &mut Option<HyStart>,
        ssthresh: &mut u64,
        window: u64,
        rtt_sample: Option<Duration>,
        largest_acked: Option<u64>,
    ) {
        if let Some(h) = slot {
            if h.on_ack(rtt_sample, largest_acked) == Phase::Done {
                *ssthresh = window;
                *slot = None;
            }
        }
    }

    /// RFC 9406 §4.2: enter CSS on a rise of the round's minimum RTT, leave it when the RTT
    /// falls back below the baseline.
    fn check_rtt(&mut self) {
        if self.samples < N_RTT_SAMPLE {
            return;
        }
        let Some(current) = self.current_round_min else {
            return;
        };
        match self.phase {
            Phase::SlowStart => {
                let Some(last) = self.last_round_min else {
                    return;
                };
                let thresh = (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
                if current >= last + thresh {
                    self.phase = Phase::Conservative {
                        baseline: current,
                        rounds: 0,
                    };
                }
            }
            Phase::Conservative { baseline, .. } => {
                if current < baseline {
                    // A false alarm: the delay went away.
                    self.phase = Phase::SlowStart;
                }
            }
            Phase::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs one round: `n` packets sent, then acknowledged one ACK each with RTT `rtt`.
    fn round(h: &mut HyStart, next_pn: &mut u64, n: u64, rtt: Duration) -> Phase {
        let first = *next_pn;
        for _ in 0..n {
            h.on_sent(*next_pn);
            *next_pn += 1;
        }
        let mut phase = h.phase();
        for pn in first..first + n {
            phase = h.on_ack(Some(rtt), Some(pn));
        }
        phase
    }

    #[test]
    fn a_steady_rtt_keeps_slow_start() {
        let mut h = HyStart::new();
        let mut pn = 0;
        for _ in 0..20 {
            assert_eq!(round(&mut h, &mut pn, 16, 50 * MS), Phase::SlowStart);
        }
        assert_eq!(h.growth(1000), 1000);
    }

    #[test]
    fn a_rising_rtt_enters_css_then_ends_slow_start_after_css_rounds() {
        let mut h = HyStart::new();
        let mut pn = 0;
        round(&mut h, &mut pn, 16, 50 * MS);
        round(&mut h, &mut pn, 16, 50 * MS);
        // 50 ms / 8 = 6.25 ms is the threshold: 55 ms is not a rise, 57 ms is.
        assert_eq!(round(&mut h, &mut pn, 16, 55 * MS), Phase::SlowStart);
        let phase = round(&mut h, &mut pn, 16, 62 * MS);
        assert!(matches!(phase, Phase::Conservative { .. }), "{phase:?}");
        assert_eq!(h.growth(1000), 250, "a quarter of the acknowledged bytes");
        // CSS lasts CSS_ROUNDS round ends, the end of the round it began in counting as the
        // first (here each call's first acknowledgement ends a round: it covers the first
        // packet sent after the previous round began).
        let mut rounds = 0;
        while h.phase() != Phase::Done {
            round(&mut h, &mut pn, 16, 62 * MS);
            rounds += 1;
            assert!(rounds <= CSS_ROUNDS, "slow start must end");
        }
        assert_eq!(rounds, CSS_ROUNDS);
        assert_eq!(h.growth(1000), 0);
    }

    #[test]
    fn an_rtt_falling_back_below_the_baseline_resumes_slow_start() {
        let mut h = HyStart::new();
        let mut pn = 0;
        round(&mut h, &mut pn, 16, 20 * MS);
        let phase = round(&mut h, &mut pn, 16, 30 * MS);
        assert!(matches!(phase, Phase::Conservative { .. }), "{phase:?}");
        assert_eq!(round(&mut h, &mut pn, 16, 21 * MS), Phase::SlowStart);
    }

    #[test]
    fn the_threshold_is_clamped_to_4_and_16_ms() {
        // A 1 ms path: a rise of 3 ms (far above 1/8) is not enough, 4 ms is.
        let mut h = HyStart::new();
        let mut pn = 0;
        round(&mut h, &mut pn, 16, MS);
        assert_eq!(round(&mut h, &mut pn, 16, 4 * MS), Phase::SlowStart);
        let mut h = HyStart::new();
        round(&mut h, &mut pn, 16, MS);
        assert!(matches!(
            round(&mut h, &mut pn, 16, 5 * MS),
            Phase::Conservative { .. }
        ));
        // A 400 ms path: 50 ms (1/8) is capped at 16 ms.
        let mut h = HyStart::new();
        round(&mut h, &mut pn, 16, 400 * MS);
        assert!(matches!(
            round(&mut h, &mut pn, 16, 417 * MS),
            Phase::Conservative { .. }
        ));
    }

    #[test]
    fn too_few_samples_in_a_round_decide_nothing() {
        let mut h = HyStart::new();
        let mut pn = 0;
        round(&mut h, &mut pn, 16, 50 * MS);
        // Rounds of fewer than N_RTT_SAMPLE acknowledgements never trigger CSS.
        for _ in 0..5 {
            assert_eq!(
                round(&mut h, &mut pn, u64::from(N_RTT_SAMPLE) - 1, 200 * MS),
                Phase::SlowStart
            );
        }
    }
}
