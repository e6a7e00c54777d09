//! ECN on the sender's side: which packets to mark ECT(0), and validation of the counts the
//! peer echoes in its ACK_ECN frames (RFC 9000 §13.4.2 and Appendix A.4; spec/recovery.md,
//! "ECN").
//!
//! A path starts in [`EcnState::Testing`]: the first [`TESTING_PACKETS`] packets (or those of
//! the first three probe timeouts) are marked, then marking stops ([`EcnState::Unknown`])
//! until an ACK proves the marks arrive: its counts grew by at least the number of marked
//! packets it newly acknowledges. The path is then [`EcnState::Capable`] and every packet is
//! marked. Any sign that the path or the peer mangles ECN turns it off for the path
//! ([`EcnState::Failed`]): counts that go backwards or exceed what was sent, an ECT(1) count
//! (we never send ECT(1)), marked packets acknowledged without the counts to match (the path
//! bleaches the marks, or the peer cannot read them), or every marked packet of the test lost
//! (the path drops ECT packets). Validation never closes the channel: the worst a peer can do
//! with bogus counts is turn ECN off.

use std::time::{Duration, Instant};

use crate::frame::EcnCounts;

/// Packets marked while testing a new path before marking pauses for the verdict (RFC 9000
/// §13.4.2 suggests ten).
pub(crate) const TESTING_PACKETS: u64 = 10;

/// Where ECN stands on the current path.
#[derive(Debug, Default, Copy, Clone, Eq, PartialEq, Hash)]
#[non_exhaustive]
pub enum EcnState {
    /// Marking the first packets of the path ECT(0) to learn whether the marks get through.
    #[default]
    Testing,
    /// The test packets are out; no marking until an ACK validates them.
    Unknown,
    /// The path and the peer carry and count ECT(0): every packet is marked, and CE marks the
    /// peer reports are congestion signals.
    Capable,
    /// Validation failed on this path: packets go out Not-ECT until the path changes.
    Failed,
    /// ECN is turned off in the configuration.
    Disabled,
}

/// What an ACK's ECN counts mean for the sender.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub(crate) enum EcnOutcome {
    /// Nothing to do.
    Nothing,
    /// The CE count grew: a congestion signal.
    CongestionExperienced,
    /// Validation failed just now, for this reason.
    Failed(&'static str),
}

/// The sender's ECN state of a channel.
#[derive(Debug, Clone)]
pub(crate) struct EcnSender {
    state: EcnState,
    /// When the first packet of the current test was marked.
    testing_since: Option<Instant>,
    /// Marked packets sent on the current path, acknowledged, and declared lost.
    path_marked: u64,
    path_acked: u64,
    path_lost: u64,
    /// Marked packets sent on the channel, every path: the peer's ECT(0) + CE counts can
    /// never exceed it.
    total_marked: u64,
    /// The counts of the last ACK processed: increases are measured from here.
    baseline: EcnCounts,
}

impl EcnSender {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            state: if enabled {
                EcnState::Testing
            } else {
                EcnState::Disabled
            },
            testing_since: None,
            path_marked: 0,
            path_acked: 0,
            path_lost: 0,
            total_marked: 0,
            baseline: EcnCounts::ZERO,
        }
    }

    pub(crate) fn state(&self) -> EcnState {
        self.state
    }

    /// The ECN counts of the last ACK processed.
    pub(crate) fn reported(&self) -> EcnCounts {
        self.baseline
    }

    /// Whether the next batch of packets is to be marked ECT(0). `pto` is the current probe
    /// timeout, which bounds the test in time.
    pub(crate) fn should_mark(&mut self, now: Instant, pto: Duration) -> bool {
        match self.state {
            EcnState::Testing => {
                let since = *self.testing_since.get_or_insert(now);
                let expired = now.saturating_duration_since(since) >= pto.saturating_mul(3);
                if self.path_marked >= TESTING_PACKETS || (expired && self.path_marked > 0) {
                    self.state = EcnState::Unknown;
                    self.check_all_lost();
                    false
                } else {
                    true
                }
            }
            EcnState::Capable => true,
            EcnState::Unknown | EcnState::Failed | EcnState::Disabled => false,
        }
    }

    /// Whether a path MTU probe is marked: only on a validated path, so that a probe lost for
    /// its size never counts against the ECN test.
    pub(crate) fn marks_probes(&self) -> bool {
        self.state == EcnState::Capable
    }

    /// A packet marked ECT(0) was sent.
    pub(crate) fn on_marked_sent(&mut self) {
        self.path_marked += 1;
        self.total_marked += 1;
    }

    /// A marked packet of the current path was declared lost.
    pub(crate) fn on_marked_lost(&mut self) {
        self.path_lost += 1;
        self.check_all_lost();
    }

    /// Every packet marked in the test was lost and none acknowledged: the path drops ECT
    /// packets (RFC 9000 §13.4.2).
    fn check_all_lost(&mut self) {
        if self.state == EcnState::Unknown
            && self.path_acked == 0
            && self.path_marked > 0
            && self.path_lost >= self.path_marked
        {
            self.state = EcnState::Failed;
        }
    }

    /// Processes the ECN part of an ACK frame. `newly_acked_marked` counts the packets the
    /// frame newly acknowledges that were sent marked on the current path; `counts` are the
    /// frame's ECN counts, if it had any; `new_largest` says whether it raised the largest
    /// acknowledged packet number. Only such ACKs are validated (RFC 9000 §13.4.2.1: a
    /// reordered ACK must not fail validation), but every ACK's acknowledgements count.
    pub(crate) fn on_ack(
        &mut self,
        newly_acked_marked: u64,
        counts: Option<EcnCounts>,
        new_largest: bool,
    ) -> EcnOutcome {
        self.path_acked = self.path_acked.saturating_add(newly_acked_marked);
        if !new_largest {
            return EcnOutcome::Nothing;
        }
        if matches!(self.state, EcnState::Failed | EcnState::Disabled) {
            // Keep following well-formed counts, so that after a path change only increases
            // from then on count.
            if let Some(c) = counts.filter(|c| self.monotonic(c)) {
                self.baseline = c;
            }
            return EcnOutcome::Nothing;
        }
        match self.validate(newly_acked_marked, counts) {
            Ok(ce) => {
                if newly_acked_marked > 0 {
                    self.state = EcnState::Capable;
                }
                if ce {
                    EcnOutcome::CongestionExperienced
                } else {
                    EcnOutcome::Nothing
                }
            }
            Err(reason) => {
                self.state = EcnState::Failed;
                EcnOutcome::Failed(reason)
            }
        }
    }

    fn monotonic(&self, c: &EcnCounts) -> bool {
        c.ect0 >= self.baseline.ect0 && c.ect1 >= self.baseline.ect1 && c.ce >= self.baseline.ce
    }

    /// Checks the counts against what was sent; on success they become the baseline and the
    /// result says whether the CE count grew.
    fn validate(
        &mut self,
        newly_acked_marked: u64,
        counts: Option<EcnCounts>,
    ) -> Result<bool, &'static str> {
        let Some(c) = counts else {
            return if newly_acked_marked > 0 {
                Err("marked packets acknowledged without ECN counts")
            } else {
                Ok(false)
            };
        };
        let b = self.baseline;
        let ect0 = c.ect0.checked_sub(b.ect0).ok_or("ECT(0) count decreased")?;
        let ect1 = c.ect1.checked_sub(b.ect1).ok_or("ECT(1) count decreased")?;
        let ce = c.ce.checked_sub(b.ce).ok_or("CE count decreased")?;
        if ect1 > 0 {
            return Err("ECT(1) counted, but none was sent");
        }
        if c.ect0.saturating_add(c.ce) > self.total_marked {
            return Err("ECN counts exceed the marked packets sent");
        }
        if ect0.saturating_add(ce) < newly_acked_marked {
            return Err("marks of acknowledged packets not counted (bleached)");
        }
        self.baseline = c;
        Ok(ce > 0)
    }

    /// The peer moved to a new path: test it afresh (RFC 9000 §13.4.2: validation is per
    /// path). The baseline stays, since the peer's counts are per channel, not per path.
    pub(crate) fn on_path_change(&mut self) {
        if self.state == EcnState::Disabled {
            return;
        }
        self.state = EcnState::Testing;
        self.testing_since = None;
        self.path_marked = 0;
        self.path_acked = 0;
        self.path_lost = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PTO: Duration = Duration::from_millis(100);

    fn counts(ect0: u64, ect1: u64, ce: u64) -> Option<EcnCounts> {
        Some(EcnCounts { ect0, ect1, ce })
    }

    /// A sender that marked `n` test packets.
    fn tested(n: u64) -> (EcnSender, Instant) {
        let now = Instant::now();
        let mut e = EcnSender::new(true);
        for _ in 0..n {
            assert!(e.should_mark(now, PTO));
            e.on_marked_sent();
        }
        (e, now)
    }

    #[test]
    fn testing_marks_ten_packets_then_waits_for_the_verdict() {
        let (mut e, now) = tested(TESTING_PACKETS);
        assert!(!e.should_mark(now, PTO));
        assert_eq!(e.state(), EcnState::Unknown);
        assert_eq!(e.on_ack(4, counts(4, 0, 0), true), EcnOutcome::Nothing);
        assert_eq!(e.state(), EcnState::Capable);
        assert!(e.should_mark(now, PTO));
    }

    #[test]
    fn testing_ends_after_three_ptos() {
        let (mut e, now) = tested(2);
        assert!(e.should_mark(now + 2 * PTO, PTO));
        assert!(!e.should_mark(now + 3 * PTO, PTO));
        assert_eq!(e.state(), EcnState::Unknown);
    }

    #[test]
    fn ce_increase_is_congestion() {
        let (mut e, _) = tested(10);
        assert_eq!(
            e.on_ack(5, counts(4, 0, 1), true),
            EcnOutcome::CongestionExperienced
        );
        assert_eq!(
            e.on_ack(5, counts(8, 0, 2), true),
            EcnOutcome::CongestionExperienced
        );
        assert_eq!(e.on_ack(0, counts(8, 0, 2), true), EcnOutcome::Nothing);
        assert_eq!(e.state(), EcnState::Capable);
    }

    #[test]
    fn bleaching_fails() {
        let (mut e, _) = tested(10);
        // Marked packets acknowledged, but no counts at all (the marks were stripped, so the
        // peer saw only Not-ECT and sends plain ACKs).
        assert!(matches!(e.on_ack(3, None, true), EcnOutcome::Failed(_)));
        assert_eq!(e.state(), EcnState::Failed);
        let (mut e, _) = tested(10);
        // Counts that grow by less than what was newly acknowledged.
        assert!(matches!(
            e.on_ack(3, counts(2, 0, 0), true),
            EcnOutcome::Failed(_)
        ));
    }

    #[test]
    fn bogus_counts_fail() {
        let bad = [
            counts(0, 1, 3),        // ECT(1), never sent
            counts(11, 0, 0),       // more than was marked
            counts(u64::MAX, 0, 0), // absurd
            counts(0, 0, u64::MAX),
        ];
        for c in bad {
            let (mut e, _) = tested(10);
            assert!(
                matches!(e.on_ack(1, c, true), EcnOutcome::Failed(_)),
                "{c:?}"
            );
        }
        // Going backwards.
        let (mut e, _) = tested(10);
        assert_eq!(e.on_ack(5, counts(5, 0, 0), true), EcnOutcome::Nothing);
        assert!(matches!(
            e.on_ack(1, counts(4, 0, 1), true),
            EcnOutcome::Failed(_)
        ));
        // After failing, nothing more happens, even CE.
        assert_eq!(e.on_ack(1, counts(9, 0, 1), true), EcnOutcome::Nothing);
        assert!(!e.should_mark(Instant::now(), PTO));
    }

    #[test]
    fn reordered_acks_are_not_validated() {
        let (mut e, _) = tested(10);
        assert_eq!(e.on_ack(5, counts(5, 0, 0), true), EcnOutcome::Nothing);
        // An old ACK arriving late carries smaller counts: no verdict from it.
        assert_eq!(e.on_ack(1, counts(3, 0, 0), false), EcnOutcome::Nothing);
        assert_eq!(e.state(), EcnState::Capable);
    }

    #[test]
    fn all_test_packets_lost_fails() {
        let (mut e, now) = tested(TESTING_PACKETS);
        assert!(!e.should_mark(now, PTO));
        for _ in 0..TESTING_PACKETS - 1 {
            e.on_marked_lost();
            assert_eq!(e.state(), EcnState::Unknown);
        }
        e.on_marked_lost();
        assert_eq!(e.state(), EcnState::Failed);
        // One acknowledged packet is enough to keep testing alive.
        let (mut e, now) = tested(TESTING_PACKETS);
        assert!(!e.should_mark(now, PTO));
        e.on_ack(1, counts(1, 0, 0), true);
        for _ in 0..TESTING_PACKETS {
            e.on_marked_lost();
        }
        assert_eq!(e.state(), EcnState::Capable);
    }

    #[test]
    fn path_change_tests_again_from_the_current_counts() {
        let (mut e, _) = tested(10);
        assert!(matches!(e.on_ack(3, None, true), EcnOutcome::Failed(_)));
        // Counts keep being followed while failed.
        e.on_ack(0, counts(6, 0, 1), true);
        e.on_path_change();
        assert_eq!(e.state(), EcnState::Testing);
        assert!(e.should_mark(Instant::now(), PTO));
        e.on_marked_sent();
        // Only the increase since the last counts is charged: no old CE.
        assert_eq!(e.on_ack(1, counts(7, 0, 1), true), EcnOutcome::Nothing);
        assert_eq!(e.state(), EcnState::Capable);
    }

    #[test]
    fn disabled_never_marks() {
        let mut e = EcnSender::new(false);
        assert!(!e.should_mark(Instant::now(), PTO));
        e.on_path_change();
        assert_eq!(e.state(), EcnState::Disabled);
        assert_eq!(e.on_ack(0, counts(0, 0, 5), true), EcnOutcome::Nothing);
    }

    proptest! {
        /// Whatever a peer reports, validation never panics, never re-enables a failed path,
        /// and never reports CE from a failed path.
        #[test]
        fn arbitrary_feedback_never_panics(
            ops in prop::collection::vec(
                (0u64..20, prop::option::of((any::<u64>(), any::<u64>(), any::<u64>())), any::<bool>(), 0u8..4),
                0..60,
            ),
        ) {
            let now = Instant::now();
            let mut e = EcnSender::new(true);
            let mut failed = false;
            for (i, (acked, c, new_largest, op)) in ops.into_iter().enumerate() {
                let t = now + Duration::from_millis(i as u64 * 30);
                match op {
                    0 => if e.should_mark(t, PTO) { e.on_marked_sent() },
                    1 => e.on_marked_lost(),
                    _ => {
                        let c = c.map(|(ect0, ect1, ce)| EcnCounts { ect0, ect1, ce });
                        let out = e.on_ack(acked, c, new_largest);
                        if failed {
                            prop_assert_eq!(out, EcnOutcome::Nothing);
                        }
                    }
                }
                if e.state() == EcnState::Failed {
                    failed = true;
                }
                if failed {
                    prop_assert_eq!(e.state(), EcnState::Failed);
                    prop_assert!(!e.should_mark(t, PTO));
                }
            }
        }
    }
}
