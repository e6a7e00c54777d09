//! Round-trip time estimation (RFC 9002 §5).
//!
//! The estimator keeps the four quantities RFC 9002 names: `latest_rtt`, `min_rtt`,
//! `smoothed_rtt` and `rttvar`. The caller measures one sample per ACK frame whose largest
//! acknowledged packet is newly acknowledged and ack-eliciting (§5.1), and caps the peer's
//! reported ACK delay at `max_ack_delay` once the handshake is confirmed (§5.3).

use std::time::Duration;

/// Timer granularity assumed for the local system (RFC 9002 §6.1.2, `kGranularity`).
pub const GRANULARITY: Duration = Duration::from_millis(1);

/// RTT assumed before the first sample (RFC 9002 §6.2.2, `kInitialRtt`).
pub const INITIAL_RTT: Duration = Duration::from_millis(333);

/// Number of PTO periods without an acknowledgement that make persistent congestion
/// (RFC 9002 §7.6.1, `kPersistentCongestionThreshold`).
pub const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;

/// Round-trip time estimator (RFC 9002 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimator {
    /// The most recent sample, without ACK-delay adjustment.
    latest: Duration,
    /// Exponentially weighted moving average of the adjusted samples.
    smoothed: Duration,
    /// Mean deviation of the adjusted samples.
    var: Duration,
    /// Minimum over the unadjusted samples; equals `latest` until the first sample.
    min: Duration,
    /// Whether `update` has been called since creation (or `reset`).
    has_samples: bool,
    /// Value used before the first sample and restored by `reset`.
    initial: Duration,
}

impl RttEstimator {
    /// Creates an estimator that reports `initial_rtt` until the first sample (RFC 9002
    /// §5.3: `smoothed_rtt = kInitialRtt`, `rttvar = kInitialRtt / 2`).
    pub fn new(initial_rtt: Duration) -> Self {
        Self {
            latest: initial_rtt,
            smoothed: initial_rtt,
            var: initial_rtt / 2,
            min: initial_rtt,
            has_samples: false,
            initial: initial_rtt,
        }
    }

    /// Takes one RTT sample.
    ///
    /// `ack_delay` is the peer-reported delay, already capped by the caller at
    /// `max_ack_delay` once the handshake is confirmed. `rtt` is the time from sending the
    /// largest newly acknowledged packet to receiving its acknowledgement.
    pub fn update(&mut self, ack_delay: Duration, rtt: Duration) {
        self.latest = rtt;
        if !self.has_samples {
            // §5.3: the first sample initialises everything and ignores ack_delay, because
            // min_rtt would otherwise start below the real path delay.
            self.has_samples = true;
            self.min = rtt;
            self.smoothed = rtt;
            self.var = rtt / 2;
            return;
        }
        // §5.2: min_rtt uses unadjusted samples so a lying peer cannot lower it.
        self.min = self.min.min(rtt);
        // §5.3: subtract ack_delay only if that does not take the sample below min_rtt.
        let adjusted = match self.min.checked_add(ack_delay) {
            Some(floor) if rtt >= floor => rtt - ack_delay,
            _ => rtt,
        };
        let deviation = self.smoothed.abs_diff(adjusted);
        // rttvar = 3/4 * rttvar + 1/4 * |smoothed_rtt - adjusted_rtt|
        self.var = self.var.saturating_mul(3).saturating_add(deviation) / 4;
        // smoothed_rtt = 7/8 * smoothed_rtt + 1/8 * adjusted_rtt
        self.smoothed = self.smoothed.saturating_mul(7).saturating_add(adjusted) / 8;
    }

    /// Smoothed RTT (`smoothed_rtt`), or the initial RTT before the first sample.
    pub fn smoothed(&self) -> Duration {
        self.smoothed
    }

    /// RTT variation (`rttvar`).
    pub fn var(&self) -> Duration {
        self.var
    }

    /// Minimum RTT seen (`min_rtt`), or the initial RTT before the first sample.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// Most recent sample (`latest_rtt`), or the initial RTT before the first sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// Whether at least one sample has been taken.
    pub fn has_samples(&self) -> bool {
        self.has_samples
    }

    /// `smoothed_rtt + max(4 * rttvar, kGranularity)` (RFC 9002 §6.2.1), without
    /// `max_ack_delay`: the caller adds it for packets that the peer may delay acknowledging.
    pub fn pto_base(&self) -> Duration {
        self.smoothed
            .saturating_add(self.var.saturating_mul(4).max(GRANULARITY))
    }

    /// Time threshold for declaring a packet lost (RFC 9002 §6.1.2):
    /// `max(9/8 * max(smoothed_rtt, latest_rtt), kGranularity)`.
    pub fn loss_delay(&self) -> Duration {
        (self.smoothed.max(self.latest).saturating_mul(9) / 8).max(GRANULARITY)
    }

    /// Duration of the period without acknowledgements that establishes persistent
    /// congestion (RFC 9002 §7.6.1):
    /// `(smoothed_rtt + max(4 * rttvar, kGranularity) + max_ack_delay) * 3`.
    pub fn persistent_congestion_duration(&self, max_ack_delay: Duration) -> Duration {
        self.pto_base()
            .saturating_add(max_ack_delay)
            .saturating_mul(PERSISTENT_CONGESTION_THRESHOLD)
    }

    /// Lets `min_rtt` be re-established from the next sample, as RFC 9002 §5.2 allows after
    /// persistent congestion (the path may have changed to a slower route).
    pub fn reset_min(&mut self) {
        self.min = self.latest;
    }

    /// Forgets all samples, e.g. when the peer moved to a new path (RFC 9000 §9.4).
    pub fn reset(&mut self) {
        *self = Self::new(self.initial);
    }
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new(INITIAL_RTT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn before_first_sample_reports_initial_rtt() {
        let rtt = RttEstimator::default();
        assert!(!rtt.has_samples());
        assert_eq!(rtt.smoothed(), INITIAL_RTT);
        assert_eq!(rtt.var(), INITIAL_RTT / 2);
        // 333 + max(4 * 166.5, 1) = 999 ms: RFC 9002 §6.2.2 gives ~1 s initial PTO.
        assert_eq!(rtt.pto_base(), INITIAL_RTT * 3);
    }

    #[test]
    fn first_sample_initialises_and_ignores_ack_delay() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        rtt.update(ms(20), ms(100));
        assert!(rtt.has_samples());
        assert_eq!(rtt.smoothed(), ms(100));
        assert_eq!(rtt.var(), ms(50));
        assert_eq!(rtt.min(), ms(100));
        assert_eq!(rtt.latest(), ms(100));
    }

    #[test]
    fn later_samples_follow_the_ewma() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        rtt.update(Duration::ZERO, ms(100));
        rtt.update(Duration::ZERO, ms(200));
        // rttvar = 3/4 * 50 + 1/4 * |100 - 200| = 62.5; srtt = 7/8 * 100 + 1/8 * 200 = 112.5
        assert_eq!(rtt.var(), Duration::from_micros(62_500));
        assert_eq!(rtt.smoothed(), Duration::from_micros(112_500));
        rtt.update(Duration::ZERO, ms(80));
        // rttvar = 3/4 * 62.5 + 1/4 * 32.5 = 55; srtt = 7/8 * 112.5 + 1/8 * 80 = 108.4375
        assert_eq!(rtt.var(), Duration::from_micros(55_000));
        assert_eq!(rtt.smoothed(), Duration::from_nanos(108_437_500));
    }

    #[test]
    fn ack_delay_is_subtracted_when_it_stays_above_min_rtt() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        rtt.update(Duration::ZERO, ms(100));
        rtt.update(ms(30), ms(140));
        // 140 >= 100 + 30, so the adjusted sample is 110.
        assert_eq!(rtt.smoothed(), (ms(100) * 7 + ms(110)) / 8);
        assert_eq!(rtt.latest(), ms(140));
    }

    #[test]
    fn ack_delay_is_ignored_when_it_would_go_below_min_rtt() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        rtt.update(Duration::ZERO, ms(100));
        rtt.update(ms(30), ms(120));
        // 120 < 100 + 30: the sample is used unadjusted.
        assert_eq!(rtt.smoothed(), (ms(100) * 7 + ms(120)) / 8);
        assert_eq!(rtt.var(), (ms(50) * 3 + ms(20)) / 4);
    }

    #[test]
    fn min_tracks_the_minimum_unadjusted_sample() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        for (sample, expected_min) in [(100, 100), (90, 90), (150, 90), (60, 60), (61, 60)] {
            rtt.update(ms(5), ms(sample));
            assert_eq!(rtt.min(), ms(expected_min));
        }
        rtt.reset_min();
        assert_eq!(rtt.min(), ms(61));
        rtt.reset();
        assert!(!rtt.has_samples());
        assert_eq!(rtt.smoothed(), INITIAL_RTT);
    }

    #[test]
    fn huge_ack_delay_does_not_overflow() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        rtt.update(Duration::ZERO, ms(10));
        rtt.update(Duration::MAX, ms(10));
        assert_eq!(rtt.smoothed(), ms(10));
    }

    #[test]
    fn derived_timers_follow_rfc_9002() {
        let mut rtt = RttEstimator::new(INITIAL_RTT);
        rtt.update(Duration::ZERO, ms(100));
        assert_eq!(rtt.pto_base(), ms(300));
        assert_eq!(rtt.loss_delay(), Duration::from_micros(112_500));
        assert_eq!(rtt.persistent_congestion_duration(ms(25)), ms(975));
        // Tiny RTTs: the granularity floor applies.
        let mut fast = RttEstimator::new(INITIAL_RTT);
        fast.update(Duration::ZERO, Duration::from_micros(40));
        assert_eq!(fast.pto_base(), Duration::from_micros(40) + GRANULARITY);
        assert_eq!(fast.loss_delay(), GRANULARITY);
    }
}
