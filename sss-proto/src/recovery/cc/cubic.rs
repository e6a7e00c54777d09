//! CUBIC congestion control (RFC 9438), counting the window in bytes.
//!
//! The RFC states its formulas in segments; here `W_max`, `W_est` and the window are bytes,
//! and the cubic term is multiplied by the datagram size: `W_cubic(t) = C * (t - K)^3 * mtu +
//! W_max`, with `K = cbrt((W_max - cwnd_epoch) / mtu / C)`.

use std::time::{Duration, Instant};

use super::hystart::HyStart;
use super::{initial_window, Controller, RecoveryPeriod};
use crate::recovery::rtt::RttEstimator;

/// Settings of a [`Cubic`] controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CubicConfig {
    /// Initial window in bytes; `None` uses RFC 9002 §7.2 for the channel's datagram size.
    pub initial_window: Option<u64>,
    /// Minimum window in datagrams (RFC 9002 §7.2 recommends 2).
    pub minimum_window_packets: u64,
    /// Multiplicative decrease factor `β_cubic` (RFC 9438 §4.6: 0.7).
    pub loss_reduction_factor: f64,
    /// Growth constant `C` in segments per second cubed (RFC 9438 §5: 0.4).
    pub c: f64,
    /// Release bandwidth to new flows by lowering `W_max` when the window did not reach it
    /// again before the next loss (RFC 9438 §4.7).
    pub fast_convergence: bool,
    /// Leave the initial slow start when the round trip grows, before the queue overflows
    /// (HyStart++, RFC 9406; see [`hystart`](super::hystart)).
    pub hystart: bool,
}

impl Default for CubicConfig {
    fn default() -> Self {
        Self {
            initial_window: None,
            minimum_window_packets: 2,
            loss_reduction_factor: 0.7,
            c: 0.4,
            fast_convergence: true,
            hystart: true,
        }
    }
}

/// What a congestion event changed, kept so that a spurious event can be undone (RFC 9438
/// §4.9).
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    window: u64,
    ssthresh: u64,
    w_max: f64,
    k: f64,
    epoch_start: Option<Instant>,
    w_est: f64,
    cwnd_prior: f64,
}

/// The CUBIC controller of RFC 9438.
#[derive(Debug, Clone)]
pub struct Cubic {
    config: CubicConfig,
    /// Datagram size: one "segment" of the RFC.
    mtu: u64,
    window: u64,
    initial_window: u64,
    ssthresh: u64,
    recovery: RecoveryPeriod,
    /// Window just before the last reduction, possibly lowered by fast convergence (§4.6).
    w_max: f64,
    /// Window before the last reduction, unmodified (`cwnd_prior`, §4.6).
    cwnd_prior: f64,
    /// Seconds the cubic function takes to climb back to `W_max` (§4.2, Eq. 2).
    k: f64,
    /// Start of the current congestion-avoidance epoch (`t_epoch`, §4.2); `None` in slow start
    /// or before the first congestion-avoidance acknowledgement.
    epoch_start: Option<Instant>,
    /// Reno-friendly estimate `W_est` (§4.3), bytes.
    w_est: f64,
    /// Fraction of a byte of window growth not yet applied.
    growth_remainder: f64,
    /// The current round trip of congestion avoidance: when it started (packets sent from
    /// then on belong to the next one) and the bytes of whole datagrams the window held then,
    /// which is what the round trip's acknowledgements add up to when the window is full.
    round: Option<(Instant, f64)>,
    /// When the flow became application-limited, so the epoch can skip the idle time (§5.8).
    app_limited_since: Option<Instant>,
    undo: Option<Snapshot>,
    /// HyStart++ while the initial slow start lasts (`None` once it ended, or if disabled).
    hystart: Option<HyStart>,
}

impl Cubic {
    /// Creates a controller for datagrams of `mtu` bytes.
    pub fn new(config: CubicConfig, _now: Instant, mtu: u16) -> Self {
        let initial_window = config.initial_window.unwrap_or_else(|| initial_window(mtu));
        Self {
            config,
            mtu: u64::from(mtu),
            window: initial_window,
            initial_window,
            ssthresh: u64::MAX,
            recovery: RecoveryPeriod::default(),
            w_max: 0.0,
            cwnd_prior: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
            growth_remainder: 0.0,
            round: None,
            app_limited_since: None,
            undo: None,
            hystart: config.hystart.then(HyStart::new),
        }
    }

    /// Current slow-start threshold (`u64::MAX` until the first congestion event).
    pub fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    /// `W_max` in bytes: the window the cubic function plateaus at.
    pub fn w_max(&self) -> f64 {
        self.w_max
    }

    /// `K` in seconds.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// `W_cubic(t)` in bytes for `t` seconds into the current epoch (§4.2, Eq. 1).
    pub fn w_cubic(&self, t: f64) -> f64 {
        self.config.c * (t - self.k).powi(3) * self.mtu as f64 + self.w_max
    }

    fn minimum_window(&self) -> u64 {
        self.mtu.saturating_mul(self.config.minimum_window_packets)
    }

    /// `K = cbrt((W_max - cwnd_epoch) / C)` in segments (§4.2, Eq. 2); zero when the
    /// epoch starts at or above `W_max`.
    fn compute_k(&self, cwnd_epoch: f64) -> f64 {
        let segments = (self.w_max - cwnd_epoch).max(0.0) / self.mtu as f64;
        (segments / self.config.c).cbrt()
    }

    fn start_epoch(&mut self, now: Instant) {
        let cwnd = self.window as f64;
        self.epoch_start = Some(now);
        if self.w_max < cwnd {
            // Slow start went past the old plateau (or there was none): the origin is here.
            self.w_max = cwnd;
        }
        self.k = self.compute_k(cwnd);
        self.w_est = cwnd;
        self.growth_remainder = 0.0;
    }

    fn grow_in_congestion_avoidance(
        &mut self,
        now: Instant,
        sent: Instant,
        epoch: Instant,
        bytes: u64,
        rtt: Duration,
    ) {
        let beta = self.config.loss_reduction_factor;
        let cwnd = self.window as f64;
        let mtu = self.mtu as f64;
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        // The RFC's per-ACK increments (`segments_acked / cwnd`) add their amount once per
        // round trip because a round trip acknowledges the window. The channel sends a
        // datagram only when all of it fits, so with a byte window that is not a whole
        // number of datagrams a round trip acknowledges only the whole datagrams the window
        // held when it started: dividing by those, not by `cwnd`, keeps the RFC's rate per
        // round trip, as a sender counting its window in packets has it. (Dividing by
        // `cwnd` grows up to one segment in `cwnd` slower: about 15 % at the 6-segment
        // windows of a path with 5 % loss.)
        let round_trip = match self.round {
            Some((start, bytes)) if sent < start => bytes,
            _ => {
                let bytes = (cwnd - cwnd % mtu).max(mtu);
                self.round = Some((now, bytes));
                bytes
            }
        };
        // §4.3: W_est grows by alpha segments per window acknowledged; alpha becomes 1 once
        // W_est reaches the window before the last reduction.
        let alpha = if self.w_est >= self.cwnd_prior {
            1.0
        } else {
            3.0 * (1.0 - beta) / (1.0 + beta)
        };
        self.w_est += alpha * mtu * bytes as f64 / round_trip;
        let growth = if self.w_cubic(t) < self.w_est {
            // Reno-friendly region: behave at least as aggressively as Reno would.
            self.w_est - cwnd
        } else {
            // §4.4/4.5: concave and convex regions aim at W_cubic one RTT ahead, clamped to
            // [cwnd, 1.5 * cwnd], and close the gap in proportion to the acknowledged bytes
            // (over one round trip's worth, as above).
            let target = self.w_cubic(t + rtt.as_secs_f64()).clamp(cwnd, 1.5 * cwnd);
            (target - cwnd) * bytes as f64 / round_trip
        };
        if growth.is_finite() && growth > 0.0 {
            let total = growth + self.growth_remainder;
            let whole = total.floor();
            self.growth_remainder = total - whole;
            self.window = self.window.saturating_add(whole as u64);
        }
    }
}

impl Controller for Cubic {
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
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        if app_limited {
            // §5.8: no growth while the application does not fill the window, and the idle
            // time must not count as time spent climbing the curve.
            self.app_limited_since.get_or_insert(now);
            return;
        }
        if let Some(since) = self.app_limited_since.take() {
            if let Some(epoch) = self.epoch_start.as_mut() {
                *epoch = epoch
                    .checked_add(now.saturating_duration_since(since))
                    .unwrap_or(now);
            }
        }
        if self.recovery.contains(sent) {
            return;
        }
        self.recovery.clear();
        self.undo = None;
        if self.window < self.ssthresh {
            // Slow start (RFC 9002 §7.3.1; RFC 9438 §4.10), conservative once HyStart++ saw
            // the round trip grow.
            let growth = self.hystart.as_ref().map_or(bytes, |h| h.growth(bytes));
            self.window = self.window.saturating_add(growth);
            return;
        }
        let epoch = match self.epoch_start {
            Some(epoch) => epoch,
            None => {
                self.start_epoch(now);
                now
            }
        };
        self.grow_in_congestion_avoidance(now, sent, epoch, bytes, rtt.smoothed());
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
            self.undo = Some(Snapshot {
                window: self.window,
                ssthresh: self.ssthresh,
                w_max: self.w_max,
                k: self.k,
                epoch_start: self.epoch_start,
                w_est: self.w_est,
                cwnd_prior: self.cwnd_prior,
            });
            self.recovery.enter(now);
            let beta = self.config.loss_reduction_factor;
            let cwnd = self.window as f64;
            self.cwnd_prior = cwnd;
            // §4.7 fast convergence: a flow that lost before regaining its old plateau
            // gives some of it up.
            self.w_max = if self.config.fast_convergence && cwnd < self.w_max {
                cwnd * (1.0 + beta) / 2.0
            } else {
                cwnd
            };
            // §4.6: ssthresh = cwnd * beta, never below the minimum window.
            self.ssthresh = ((cwnd * beta).round() as u64).max(self.minimum_window());
            self.window = self.ssthresh;
            self.epoch_start = Some(now);
            self.k = self.compute_k(self.window as f64);
            self.w_est = self.window as f64;
            self.growth_remainder = 0.0;
            self.round = None;
            // The new epoch starts now; idle time before it must not shift it.
            self.app_limited_since = None;
        }
        if is_persistent_congestion {
            // §4.8 / RFC 9002 §7.6.2: back to the minimum window and slow start; the next
            // congestion-avoidance epoch starts from scratch.
            self.undo = None;
            self.window = self.minimum_window();
            self.epoch_start = None;
            self.recovery.clear();
        }
    }

    fn on_spurious_congestion_event(&mut self) {
        if let Some(s) = self.undo.take() {
            self.window = self.window.max(s.window);
            self.ssthresh = s.ssthresh;
            self.w_max = s.w_max;
            self.k = s.k;
            self.epoch_start = s.epoch_start;
            self.w_est = s.w_est;
            self.cwnd_prior = s.cwnd_prior;
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
        "cubic"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1200;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn rtt_of(sample: Duration) -> RttEstimator {
        let mut rtt = RttEstimator::default();
        rtt.update(Duration::ZERO, sample);
        rtt
    }

    /// A CUBIC controller whose window is `segments` datagrams.
    fn cubic_at(segments: u64, now: Instant) -> Cubic {
        let config = CubicConfig {
            initial_window: Some(segments * MTU),
            ..CubicConfig::default()
        };
        Cubic::new(config, now, MTU as u16)
    }

    /// Ack clock: every round trip the sender fills the window with full datagrams and their
    /// acknowledgements arrive evenly spread over the next round trip.
    fn run_until(cc: &mut Cubic, rtt: &RttEstimator, now: &mut Instant, until: Instant) {
        let r = rtt.smoothed();
        while *now < until {
            let n = (cc.window() / MTU).max(1);
            let step = r / n as u32;
            for _ in 0..n {
                *now += step;
                cc.on_ack(*now, *now - r, MTU, false, rtt);
            }
        }
    }

    #[test]
    fn congestion_event_reduces_to_beta_times_window() {
        let now = Instant::now();
        let mut cc = cubic_at(100, now);
        cc.on_congestion_event(now, now, false, MTU);
        assert_eq!(cc.window(), 84_000);
        assert_eq!(cc.ssthresh(), 84_000);
        assert_eq!(cc.w_max(), 120_000.0);
        // K = cbrt(100 * (1 - 0.7) / 0.4) = cbrt(75)
        assert!((cc.k() - 75f64.cbrt()).abs() < 1e-9);
        // A loss from before the recovery period started is the same event.
        cc.on_congestion_event(now + ms(10), now, false, MTU);
        assert_eq!(cc.window(), 84_000);
    }

    #[test]
    fn growth_follows_the_cubic_function() {
        let start = Instant::now();
        let mut cc = cubic_at(400, start);
        let rtt = rtt_of(ms(200));
        cc.on_congestion_event(start, start, false, MTU);
        let k = cc.k();
        assert!((k - 300f64.cbrt()).abs() < 1e-9);
        let mut now = start;
        for t in [1.0, 3.0, k, 8.0, 10.0] {
            run_until(&mut cc, &rtt, &mut now, start + Duration::from_secs_f64(t));
            let elapsed = (now - start).as_secs_f64();
            // Eq. 1 evaluated independently of the implementation.
            let expected = (0.4 * (elapsed - k).powi(3) + 400.0) * MTU as f64;
            let got = cc.window() as f64;
            assert!(
                (got - expected).abs() <= 0.005 * expected,
                "t={elapsed:.2}s window {got} vs W_cubic {expected}"
            );
        }
        // Past K the window is convex and above W_max.
        assert!(cc.window() > 400 * MTU);
    }

    #[test]
    fn fast_convergence_lowers_w_max() {
        let now = Instant::now();
        let mut cc = cubic_at(100, now);
        cc.on_congestion_event(now, now, false, MTU);
        assert_eq!(cc.window(), 84_000);
        // Second loss before the window regained W_max = 100 segments.
        cc.on_congestion_event(now + ms(200), now + ms(100), false, MTU);
        assert_eq!(cc.w_max(), 84_000.0 * 1.7 / 2.0);
        assert_eq!(cc.window(), 58_800);

        let config = CubicConfig {
            initial_window: Some(100 * MTU),
            fast_convergence: false,
            ..CubicConfig::default()
        };
        let mut plain = Cubic::new(config, now, MTU as u16);
        plain.on_congestion_event(now, now, false, MTU);
        plain.on_congestion_event(now + ms(200), now + ms(100), false, MTU);
        assert_eq!(plain.w_max(), 84_000.0);
    }

    #[test]
    fn reno_friendly_region_on_short_round_trips() {
        let start = Instant::now();
        let mut cc = cubic_at(20, start);
        let rtt = rtt_of(ms(10));
        cc.on_congestion_event(start, start, false, MTU);
        assert_eq!(cc.window(), 14 * MTU);
        let mut now = start;
        run_until(&mut cc, &rtt, &mut now, start + Duration::from_secs(1));
        let cubic_only = cc.w_cubic((now - start).as_secs_f64());
        // W_est: alpha = 3 * 0.3 / 1.7 segments per RTT until it reaches the prior window
        // of 20 segments, then one segment per RTT. The first RTT only acks packets sent
        // before the loss, so 99 RTTs of growth.
        let alpha = 0.9 / 1.7;
        let start_w = 14.0;
        let rtts_to_prior = (20.0 - start_w) / alpha;
        let expected = (20.0 + (99.0 - rtts_to_prior)) * MTU as f64;
        let got = cc.window() as f64;
        assert!(
            got > 2.0 * cubic_only,
            "window {got} should beat W_cubic {cubic_only}"
        );
        assert!(
            (got - expected).abs() <= 0.05 * expected,
            "window {got} vs Reno estimate {expected}"
        );
    }

    #[test]
    fn reno_friendly_growth_is_alpha_per_round_trip_with_a_fractional_window() {
        // 8.5 segments before the loss, 5.95 after: the channel sends 5 whole datagrams per
        // round trip, and each round trip must still add alpha segments to W_est (RFC 9438
        // §4.3 counts the window in segments), not alpha * 5 / 5.95.
        let start = Instant::now();
        let config = CubicConfig {
            initial_window: Some(8 * MTU + MTU / 2),
            ..CubicConfig::default()
        };
        let mut cc = Cubic::new(config, start, MTU as u16);
        let rtt = rtt_of(ms(10));
        cc.on_congestion_event(start, start, false, MTU);
        assert_eq!(cc.window(), 7140);
        let mut now = start;
        // One round trip acknowledges packets sent before the loss (no growth), then four
        // of growth; W_est stays below the prior 8.5 segments, so alpha is 3 * 0.3 / 1.7.
        // (`run_until` finishes the round trip it is in: 45 ms ends the fifth.)
        run_until(&mut cc, &rtt, &mut now, start + ms(45));
        let alpha = 0.9 / 1.7;
        let expected = 7140.0 + 4.0 * alpha * MTU as f64;
        let got = cc.window() as f64;
        assert!(
            cc.w_cubic((now - start).as_secs_f64()) < got,
            "the Reno-friendly region must be the one that grows"
        );
        assert!(
            (got - expected).abs() <= 0.01 * expected,
            "window {got} vs {expected}: {} segments per round trip instead of {alpha}",
            (got - 7140.0) / 4.0 / MTU as f64
        );
    }

    #[test]
    fn persistent_congestion_collapses_to_minimum_window() {
        let start = Instant::now();
        let mut cc = cubic_at(100, start);
        cc.on_congestion_event(start, start, true, 10 * MTU);
        assert_eq!(cc.window(), 2 * MTU);
        assert_eq!(cc.ssthresh(), 84_000);
        // Slow start resumes immediately.
        let rtt = rtt_of(ms(50));
        cc.on_ack(start + ms(60), start + ms(10), MTU, false, &rtt);
        assert_eq!(cc.window(), 3 * MTU);
    }

    #[test]
    fn app_limited_acks_do_not_grow_and_idle_time_is_skipped() {
        let start = Instant::now();
        let rtt = rtt_of(ms(100));
        let mut cc = cubic_at(100, start);
        cc.on_congestion_event(start, start, false, MTU);
        let reduced = cc.window();
        // Ten seconds of app-limited acks: well past K, yet no growth.
        for i in 1..=1000u32 {
            let now = start + ms(10) * i;
            cc.on_ack(now, now - ms(100), MTU, true, &rtt);
        }
        assert_eq!(cc.window(), reduced);
        // Growth resumes where the curve left off, not ten seconds further along it.
        let mut limited = cc.clone();
        let mut fresh = cubic_at(100, start);
        fresh.on_congestion_event(start, start, false, MTU);
        // App-limited from 10 ms to 10 s: the epoch moves forward by 9.99 s, so the limited
        // flow resumes 10 ms into its epoch, like a fresh flow acked at 10 ms.
        let resume = start + Duration::from_secs(10);
        limited.on_ack(resume, resume - ms(5), MTU, false, &rtt);
        fresh.on_ack(start + ms(10), start + ms(5), MTU, false, &rtt);
        assert_eq!(limited.window(), fresh.window());
    }

    #[test]
    fn slow_start_doubles_then_congestion_avoidance_starts_an_epoch() {
        let start = Instant::now();
        let rtt = rtt_of(ms(100));
        let mut cc = Cubic::new(CubicConfig::default(), start, MTU as u16);
        assert_eq!(cc.window(), 12_000);
        let mut now = start;
        run_until(&mut cc, &rtt, &mut now, start + ms(100));
        assert_eq!(cc.window(), 24_000);
        cc.ssthresh = cc.window();
        run_until(&mut cc, &rtt, &mut now, start + ms(1000));
        // No loss history: W_max = window at the start of the epoch, K = 0, convex growth.
        assert!(cc.window() > 24_000);
        assert_eq!(cc.w_max(), 24_000.0);
        assert_eq!(cc.k(), 0.0);
    }

    #[test]
    fn spurious_congestion_event_is_undone() {
        let start = Instant::now();
        let mut cc = cubic_at(100, start);
        cc.on_congestion_event(start, start, false, MTU);
        cc.on_spurious_congestion_event();
        assert_eq!(cc.window(), 120_000);
        assert_eq!(cc.ssthresh(), u64::MAX);
        assert_eq!(cc.w_max(), 0.0);
    }
}
