//! NewReno congestion control (RFC 9002 §7.3 and Appendix B).

use std::time::{Duration, Instant};

use super::hystart::HyStart;
use super::{initial_window, Controller, RecoveryPeriod};
use crate::recovery::rtt::RttEstimator;

/// Settings of a [`NewReno`] controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewRenoConfig {
    /// Initial window in bytes; `None` uses RFC 9002 §7.2 for the channel's datagram size.
    pub initial_window: Option<u64>,
    /// Minimum window in datagrams (RFC 9002 §7.2 recommends 2).
    pub minimum_window_packets: u64,
    /// Factor applied to the window on a congestion event (`kLossReductionFactor`, 0.5).
    pub loss_reduction_factor: f64,
    /// Leave the initial slow start when the round trip grows, before the queue overflows
    /// (HyStart++, RFC 9406; see [`hystart`](super::hystart)). Off by default (see
    /// [`CongestionAlgorithm::build_with`](super::CongestionAlgorithm::build_with)).
    pub hystart: bool,
}

impl Default for NewRenoConfig {
    fn default() -> Self {
        Self {
            initial_window: None,
            minimum_window_packets: 2,
            loss_reduction_factor: 0.5,
            hystart: false,
        }
    }
}

/// The NewReno controller of RFC 9002 §7.3: slow start, recovery, congestion avoidance.
#[derive(Debug, Clone)]
pub struct NewReno {
    config: NewRenoConfig,
    /// Datagram size the window is counted in (`max_datagram_size`).
    mtu: u64,
    window: u64,
    initial_window: u64,
    /// Slow-start threshold: below it the window grows by every acknowledged byte.
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance since the window last grew by one datagram.
    bytes_acked: u64,
    recovery: RecoveryPeriod,
    /// State before the last reduction, for `on_spurious_congestion_event`.
    undo: Option<(u64, u64)>,
    /// HyStart++ while the initial slow start lasts (`None` once it ended, or if disabled).
    hystart: Option<HyStart>,
}

impl NewReno {
    /// Creates a controller for datagrams of `mtu` bytes.
    pub fn new(config: NewRenoConfig, _now: Instant, mtu: u16) -> Self {
        let initial_window = config.initial_window.unwrap_or_else(|| initial_window(mtu));
        Self {
            config,
            mtu: u64::from(mtu),
            window: initial_window,
            initial_window,
            ssthresh: u64::MAX,
            bytes_acked: 0,
            recovery: RecoveryPeriod::default(),
            undo: None,
            hystart: config.hystart.then(HyStart::new),
        }
    }

    /// Current slow-start threshold (`u64::MAX` until the first congestion event).
    pub fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn minimum_window(&self) -> u64 {
        self.mtu.saturating_mul(self.config.minimum_window_packets)
    }
}

impl Controller for NewReno {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, packet_number: u64) {
        HyStart::sent(&mut self.hystart, packet_number);
    }

    fn on_end_acks(
        &mut self,
        _now: Instant,
        _in_flight: u64,
        _app_limited: bool,
        largest_packet_num_acked: Option<u64>,
        rtt_sample: Option<Duration>,
    ) {
        // When it ends slow start, congestion avoidance starts from this window (for CUBIC,
        // the next epoch takes it as its origin, K = 0).
        HyStart::end_of_ack(
            &mut self.hystart,
            &mut self.ssthresh,
            self.window,
            rtt_sample,
            largest_packet_num_acked,
        );
    }

    fn on_ack(
        &mut self,
        _now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        // RFC 9002 §7.8: no growth while under-utilised; §7.3.2: no growth in recovery.
        if app_limited || self.recovery.contains(sent) {
            return;
        }
        // The first acknowledgement of a packet sent after recovery started ends recovery.
        self.recovery.clear();
        self.undo = None;
        if self.window < self.ssthresh {
            // §7.3.1: slow start grows by the acknowledged bytes, doubling per round trip
            // (a quarter of them once HyStart++ saw the round trip grow).
            let growth = self.hystart.as_ref().map_or(bytes, |h| h.growth(bytes));
            self.window = self.window.saturating_add(growth);
            if self.window >= self.ssthresh {
                // Bytes past ssthresh count towards congestion avoidance.
                self.bytes_acked = self.window - self.ssthresh;
                self.window = self.ssthresh;
            }
        } else {
            // §7.3.3: one datagram per window of acknowledged bytes.
            self.bytes_acked = self.bytes_acked.saturating_add(bytes);
            if self.bytes_acked >= self.window {
                self.bytes_acked -= self.window;
                self.window = self.window.saturating_add(self.mtu);
            }
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        // A congestion signal ends slow start (and HyStart++ with it).
        self.hystart = None;
        if !self.recovery.contains(sent) {
            // §7.3.2: one reduction per recovery period.
            self.undo = Some((self.window, self.ssthresh));
            self.recovery.enter(now);
            let reduced = self.window as f64 * self.config.loss_reduction_factor;
            self.window = (reduced as u64).max(self.minimum_window());
            self.ssthresh = self.window;
            self.bytes_acked = 0;
        }
        if is_persistent_congestion {
            // §7.6.2: collapse to the minimum window and slow start back up to ssthresh.
            self.undo = None;
            self.window = self.minimum_window();
            self.recovery.clear();
            self.bytes_acked = 0;
        }
    }

    fn on_spurious_congestion_event(&mut self) {
        if let Some((window, ssthresh)) = self.undo.take() {
            self.window = self.window.max(window);
            self.ssthresh = ssthresh;
            self.recovery.clear();
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.minimum_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn initial_window(&self) -> u64 {
        self.initial_window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn name(&self) -> &'static str {
        "newreno"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MTU: u16 = 1200;
    const RTT: Duration = Duration::from_millis(100);

    fn setup() -> (NewReno, Instant, RttEstimator) {
        let now = Instant::now();
        let mut rtt = RttEstimator::default();
        rtt.update(Duration::ZERO, RTT);
        (NewReno::new(NewRenoConfig::default(), now, MTU), now, rtt)
    }

    /// Acknowledges one window's worth of full datagrams sent at `sent`, at `now`.
    fn ack_window(cc: &mut NewReno, sent: Instant, now: Instant, rtt: &RttEstimator) {
        let packets = cc.window() / u64::from(MTU);
        for _ in 0..packets {
            cc.on_ack(now, sent, u64::from(MTU), false, rtt);
        }
    }

    #[test]
    fn slow_start_doubles_per_round_trip() {
        let (mut cc, start, rtt) = setup();
        assert_eq!(cc.window(), 12_000);
        let mut now = start;
        for round in 1..=4u32 {
            let sent = now;
            now += RTT;
            ack_window(&mut cc, sent, now, &rtt);
            assert_eq!(cc.window(), 12_000 << round);
        }
    }

    #[test]
    fn congestion_event_halves_once_per_recovery_period() {
        let (mut cc, start, rtt) = setup();
        ack_window(&mut cc, start, start + RTT, &rtt);
        assert_eq!(cc.window(), 24_000);
        let loss_at = start + 2 * RTT;
        cc.on_congestion_event(loss_at, start + RTT, false, 1200);
        assert_eq!(cc.window(), 12_000);
        assert_eq!(cc.ssthresh(), 12_000);
        // A second loss of a packet sent before recovery started does nothing.
        cc.on_congestion_event(loss_at + RTT / 2, start + RTT + RTT / 2, false, 1200);
        assert_eq!(cc.window(), 12_000);
        // Acks of packets sent before recovery do not grow the window either.
        cc.on_ack(loss_at + RTT / 2, start + RTT, 1200, false, &rtt);
        assert_eq!(cc.window(), 12_000);
        // A loss of a packet sent after recovery started is a new event.
        cc.on_congestion_event(loss_at + 2 * RTT, loss_at + RTT, false, 1200);
        assert_eq!(cc.window(), 6_000);
    }

    #[test]
    fn congestion_avoidance_grows_one_datagram_per_window() {
        let (mut cc, start, rtt) = setup();
        cc.on_congestion_event(start, start, false, 1200);
        assert_eq!(cc.window(), 6_000);
        let mut now = start;
        for round in 1..=5u64 {
            let sent = now + Duration::from_millis(1);
            now += RTT;
            ack_window(&mut cc, sent, now, &rtt);
            assert_eq!(cc.window(), 6_000 + round * u64::from(MTU));
        }
    }

    #[test]
    fn window_never_drops_below_minimum_and_persistent_congestion_collapses_it() {
        let (mut cc, start, _rtt) = setup();
        let mut now = start;
        for _ in 0..10 {
            now += RTT;
            cc.on_congestion_event(now, now, false, 1200);
            assert!(cc.window() >= 2400);
        }
        assert_eq!(cc.window(), 2400);
        let (mut cc, start, rtt) = setup();
        ack_window(&mut cc, start, start + RTT, &rtt);
        cc.on_congestion_event(start + 2 * RTT, start + RTT, true, 1200);
        assert_eq!(cc.window(), crate::recovery::cc::minimum_window(MTU));
        assert_eq!(cc.ssthresh(), 12_000);
        // Slow start resumes at once: recovery was cleared.
        cc.on_ack(start + 3 * RTT, start + 2 * RTT, 1200, false, &rtt);
        assert_eq!(cc.window(), 3600);
    }

    #[test]
    fn app_limited_acks_do_not_grow_the_window() {
        let (mut cc, start, rtt) = setup();
        for _ in 0..100 {
            cc.on_ack(start + RTT, start, 1200, true, &rtt);
        }
        assert_eq!(cc.window(), 12_000);
        cc.on_congestion_event(start + RTT, start, false, 1200);
        for _ in 0..100 {
            cc.on_ack(start + 3 * RTT, start + 2 * RTT, 1200, true, &rtt);
        }
        assert_eq!(cc.window(), 6_000);
    }

    #[test]
    fn spurious_congestion_event_is_undone() {
        let (mut cc, start, _rtt) = setup();
        cc.on_congestion_event(start + RTT, start, false, 1200);
        assert_eq!(cc.window(), 6_000);
        cc.on_spurious_congestion_event();
        assert_eq!(cc.window(), 12_000);
        assert_eq!(cc.ssthresh(), u64::MAX);
    }

    #[test]
    fn mtu_update_raises_the_minimum_window() {
        let (mut cc, start, _rtt) = setup();
        for i in 1..10u32 {
            cc.on_congestion_event(start + RTT * i, start + RTT * i, false, 0);
        }
        assert_eq!(cc.window(), 2400);
        cc.on_mtu_update(1452);
        assert_eq!(cc.window(), 2904);
    }
}
