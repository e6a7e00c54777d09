//! Congestion control (RFC 9002 §7): the [`Controller`] trait the channel drives, and its
//! NewReno ([`NewReno`], RFC 9002 §7.3) and CUBIC ([`Cubic`], RFC 9438) implementations.
//!
//! Windows count bytes of UDP payload. The channel tells the controller about every packet
//! that counts towards bytes in flight: sent (`on_sent`), newly acknowledged (`on_ack`, then
//! `on_end_acks` once per ACK frame), or declared lost (`on_congestion_event`, once per batch of
//! losses found by one loss-detection pass); and `on_spurious_congestion_event` when every
//! packet the last congestion event declared lost was acknowledged after all (the path
//! reordered them, spec/recovery.md §2.5).

use std::time::{Duration, Instant};

use super::rtt::RttEstimator;

mod cubic;
pub mod hystart;
mod new_reno;

pub use cubic::{Cubic, CubicConfig};
pub use new_reno::{NewReno, NewRenoConfig};

/// Initial congestion window for datagrams of `mtu` bytes (RFC 9002 §7.2):
/// `min(10 * max_datagram_size, max(14720, 2 * max_datagram_size))`.
pub fn initial_window(mtu: u16) -> u64 {
    let mtu = u64::from(mtu);
    (10 * mtu).min(14_720.max(2 * mtu))
}

/// Minimum congestion window for datagrams of `mtu` bytes (RFC 9002 §7.2: two datagrams).
pub fn minimum_window(mtu: u16) -> u64 {
    2 * u64::from(mtu)
}

/// A congestion controller: decides how many bytes may be in flight.
///
/// All methods are cheap and allocation-free; the channel calls them per packet.
pub trait Controller: Send + std::fmt::Debug {
    /// A packet that counts towards bytes in flight was sent.
    fn on_sent(&mut self, now: Instant, bytes: u64, packet_number: u64) {
        let _ = (now, bytes, packet_number);
    }

    /// A packet was newly acknowledged. `sent` is when it was sent; `app_limited`: the sender
    /// was not using the whole window when it was sent (RFC 9002 §7.8), so the
    /// acknowledgement says nothing about spare capacity and must not grow the window.
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    );

    /// Called once after all packets of one ACK frame were processed. `rtt_sample` is the
    /// round-trip sample the frame gave (its largest packet newly acknowledged), if any.
    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
        rtt_sample: Option<Duration>,
    ) {
        let _ = (
            now,
            in_flight,
            app_limited,
            largest_packet_num_acked,
            rtt_sample,
        );
    }

    /// Packets were declared lost. `sent` is the send time of the newest lost packet: this is
    /// a new congestion event only if it was sent after the current recovery period started
    /// (RFC 9002 §7.3.2). Persistent congestion (RFC 9002 §7.6) collapses the window to the
    /// minimum whether or not the loss starts a new recovery period.
    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    );

    /// The last congestion event was spurious (the "lost" packets were acknowledged after
    /// all): implementations may undo its reduction (RFC 9438 §4.9). Both controllers here
    /// restore the state saved just before the reduction if their recovery period has not
    /// ended and no persistent congestion came since; otherwise this does nothing.
    fn on_spurious_congestion_event(&mut self) {}

    /// The datagram size changed (path MTU discovery): the minimum window follows it.
    fn on_mtu_update(&mut self, new_mtu: u16);

    /// Bytes that may be in flight now.
    fn window(&self) -> u64;

    /// The window this controller started with.
    fn initial_window(&self) -> u64;

    /// Duplicates the controller with its state (used when a path is cloned).
    fn clone_box(&self) -> Box<dyn Controller>;

    /// Algorithm name, for logs and statistics.
    fn name(&self) -> &'static str;
}

/// Which congestion controller a channel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionAlgorithm {
    /// NewReno (RFC 9002 §7.3): halve on loss, one datagram per window otherwise.
    NewReno,
    /// CUBIC (RFC 9438): the default, as in Linux and quinn.
    #[default]
    Cubic,
}

impl CongestionAlgorithm {
    /// Builds a controller with default settings for datagrams of `mtu` bytes.
    pub fn build(self, now: Instant, mtu: u16) -> Box<dyn Controller> {
        self.build_with(now, mtu, true)
    }

    /// Builds a controller with default settings, CUBIC's HyStart++ on or off
    /// ([`hystart`]). NewReno keeps standard slow start whatever `hystart` says (as
    /// in Linux, where HyStart is part of CUBIC): its growth of one datagram per round trip
    /// takes long to recover from an early exit, and two NewReno flows that started with it
    /// still split a bottleneck 0.39/0.61 after 40 s in the simulator (CUBIC 0.46/0.54).
    /// [`NewRenoConfig::hystart`] turns it on for a NewReno built directly.
    pub fn build_with(self, now: Instant, mtu: u16, hystart: bool) -> Box<dyn Controller> {
        match self {
            Self::NewReno => Box::new(NewReno::new(NewRenoConfig::default(), now, mtu)),
            Self::Cubic => Box::new(Cubic::new(
                CubicConfig {
                    hystart,
                    ..CubicConfig::default()
                },
                now,
                mtu,
            )),
        }
    }
}

/// Start of the current recovery period and the test whether a packet predates it, shared
/// by both controllers (RFC 9002 §7.3.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecoveryPeriod {
    start: Option<Instant>,
}

impl RecoveryPeriod {
    /// Whether a packet sent at `sent` was sent before the current recovery period began
    /// (its loss or acknowledgement belongs to the congestion event already reacted to).
    pub(crate) fn contains(&self, sent: Instant) -> bool {
        self.start.is_some_and(|start| sent <= start)
    }

    pub(crate) fn enter(&mut self, now: Instant) {
        self.start = Some(now);
    }

    pub(crate) fn clear(&mut self) {
        self.start = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_window_follows_rfc_9002() {
        // 1200-byte datagrams: 10 * 1200 = 12000 < 14720.
        assert_eq!(initial_window(1200), 12_000);
        // 1452-byte datagrams: min(14520, max(14720, 2904)) = 14520.
        assert_eq!(initial_window(1452), 14_520);
        // Jumbo datagrams: max(14720, 2 * 9000) = 18000 < 90000.
        assert_eq!(initial_window(9000), 18_000);
        assert_eq!(minimum_window(1200), 2400);
    }

    #[test]
    fn build_gives_the_named_algorithm() {
        let now = Instant::now();
        let reno = CongestionAlgorithm::NewReno.build(now, 1200);
        assert_eq!(reno.name(), "newreno");
        assert_eq!(reno.window(), 12_000);
        let cubic = CongestionAlgorithm::default().build(now, 1452);
        assert_eq!(cubic.name(), "cubic");
        assert_eq!(cubic.initial_window(), 14_520);
        assert_eq!(cubic.clone_box().window(), cubic.window());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ack {
            age_ms: u16,
            bytes: u16,
            app_limited: bool,
        },
        Loss {
            age_ms: u16,
            persistent: bool,
        },
        Spurious,
        Mtu(u16),
        Rtt {
            sample_ms: u32,
            ack_delay_ms: u32,
        },
        Advance {
            ms: u16,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(
                |(age_ms, bytes, app_limited)| Op::Ack { age_ms, bytes, app_limited }
            ),
            1 => (any::<u16>(), any::<bool>())
                .prop_map(|(age_ms, persistent)| Op::Loss { age_ms, persistent }),
            1 => Just(Op::Spurious),
            1 => (1200..=u16::MAX).prop_map(Op::Mtu),
            1 => (any::<u32>(), any::<u32>())
                .prop_map(|(sample_ms, ack_delay_ms)| Op::Rtt { sample_ms, ack_delay_ms }),
            2 => (0..2000u16).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    proptest::proptest! {
        /// Any sequence of events keeps the window at or above the minimum window of the
        /// current datagram size, and never panics.
        #[test]
        fn controllers_keep_the_minimum_window(
            algorithm in proptest::prop_oneof![
                proptest::strategy::Just(CongestionAlgorithm::NewReno),
                proptest::strategy::Just(CongestionAlgorithm::Cubic),
            ],
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            use std::time::Duration;
            let start = Instant::now() + Duration::from_secs(100);
            let mut now = start;
            let mut mtu = 1200;
            let mut rtt = RttEstimator::default();
            let mut cc = algorithm.build(now, mtu);
            for op in ops {
                let ago = |ms: u16| now.checked_sub(Duration::from_millis(ms.into())).unwrap_or(start);
                match op {
                    Op::Ack { age_ms, bytes, app_limited } => {
                        cc.on_sent(now, bytes.into(), 0);
                        cc.on_ack(now, ago(age_ms), bytes.into(), app_limited, &rtt);
                        cc.on_end_acks(now, 0, app_limited, None, None);
                    }
                    Op::Loss { age_ms, persistent } => {
                        cc.on_congestion_event(now, ago(age_ms), persistent, 1200);
                    }
                    Op::Spurious => cc.on_spurious_congestion_event(),
                    Op::Mtu(new_mtu) => {
                        mtu = new_mtu;
                        cc.on_mtu_update(mtu);
                    }
                    Op::Rtt { sample_ms, ack_delay_ms } => rtt.update(
                        Duration::from_millis(ack_delay_ms.into()),
                        Duration::from_millis(sample_ms.into()),
                    ),
                    Op::Advance { ms } => now += Duration::from_millis(ms.into()),
                }
                proptest::prop_assert!(cc.window() >= minimum_window(mtu));
            }
        }
    }
}
