//! Spurious losses: packets declared lost that the peer acknowledges after all, and the
//! loss-detection thresholds that adapt to them (spec/recovery.md §2.5).
//!
//! A path that reorders delivers a packet after later ones: by RFC 9002's packet or time
//! threshold it is declared lost, its frames are sent again and the window is reduced, all for
//! nothing. As Linux TCP does with its undo state and RACK (RFC 8985 §6.2), the sender
//! remembers the packets it declared lost (a bounded ring, the newest kept). When an ACK
//! covers one of them, the loss was spurious: the packet was reordered or delayed. When every
//! packet of the last congestion event turns out delivered, the event was spurious and the
//! controller may undo its reduction (RFC 9438 §4.9). Each spurious loss also raises the
//! thresholds towards the reordering it shows, so that the same reordering is not taken for
//! loss again:
//!
//! - packet threshold: `max(threshold, min(largest_acked - pn + 1, 256))`, with
//!   `largest_acked` the largest packet number acknowledged before the ACK that covers `pn`
//!   (the packets that overtook it, plus one);
//! - time threshold, in eighths of `max(srtt, latest_rtt)`:
//!   `max(threshold, min(floor(8 * (now - sent) / rtt) + 1, 16))`, so at most two round trips
//!   (RACK's reordering window is at most one round trip beyond the RTT).
//!
//! After 16 congestion events without a spurious loss in between, both thresholds return to
//! their configured values (RFC 8985 §6.2 resets its reordering window after 16 recoveries
//! without one), so that a path that stopped reordering gets prompt loss detection back.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Lost packets remembered; older ones are forgotten (an event that loses more packets than
/// this can no longer be proven spurious).
pub(crate) const MAX_REMEMBERED: usize = 256;
/// Highest packet threshold the adaptation sets.
pub(crate) const MAX_PACKET_THRESHOLD: u64 = 256;
/// RFC 9002 kTimeThreshold, 9/8, in eighths of a round trip.
pub(crate) const DEFAULT_TIME_THRESHOLD_EIGHTHS: u32 = 9;
/// Highest time threshold the adaptation sets: two round trips.
pub(crate) const MAX_TIME_THRESHOLD_EIGHTHS: u32 = 16;
/// Congestion events without a spurious loss after which the thresholds are reset.
pub(crate) const RESET_AFTER_EVENTS: u32 = 16;

/// Event tag of a packet recorded in the current loss-detection pass, not yet assigned.
const PENDING: u64 = 0;
/// Event tag of a packet that belongs to no event that could be undone.
const NO_EVENT: u64 = 1;

/// A packet declared lost.
#[derive(Debug, Clone, Copy)]
struct Lost {
    pn: u64,
    sent: Instant,
    size: u16,
    /// The congestion event it counted in (an [`Event::id`], or [`PENDING`]/[`NO_EVENT`]).
    event: u64,
}

/// The current congestion event, as the channel tracks it to tell whether it was spurious.
#[derive(Debug, Clone, Copy)]
struct Event {
    id: u64,
    /// When it started: losses of packets sent by then belong to it (the controller's
    /// recovery period, RFC 9002 §7.3.2).
    start: Instant,
    /// Its lost packets not yet acknowledged.
    outstanding: u32,
    /// Every packet it lost is remembered and nothing but loss made it (no ECN signal): if
    /// they are all acknowledged, the reduction was for nothing.
    provable: bool,
}

/// What an ACK frame showed about earlier losses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpuriousOutcome {
    /// Packets declared lost that it acknowledged.
    pub(crate) packets: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// It acknowledged the last of the current congestion event's lost packets: the event
    /// was spurious.
    pub(crate) event: bool,
}

/// The lost packets remembered, the current congestion event and the adaptive thresholds.
#[derive(Debug)]
pub(crate) struct SpuriousLosses {
    /// Ascending packet numbers, at most [`MAX_REMEMBERED`].
    lost: VecDeque<Lost>,
    event: Option<Event>,
    next_event: u64,
    /// Packets recorded in the current pass (the last entries of `lost`).
    pass: usize,
    /// A packet of the current pass was forgotten to make room.
    pass_forgot: bool,
    configured_packet_threshold: u64,
    packet_threshold: u64,
    time_threshold_eighths: u32,
    events_since_spurious: u32,
    /// Adapt the thresholds (off: spurious losses are only counted).
    adapt: bool,
}

impl SpuriousLosses {
    pub(crate) fn new(packet_threshold: u64, adapt: bool) -> Self {
        Self {
            lost: VecDeque::new(),
            event: None,
            next_event: NO_EVENT + 1,
            pass: 0,
            pass_forgot: false,
            configured_packet_threshold: packet_threshold,
            packet_threshold,
            time_threshold_eighths: DEFAULT_TIME_THRESHOLD_EIGHTHS,
            events_since_spurious: 0,
            adapt,
        }
    }

    /// Packet reordering threshold now in force (RFC 9002 kPacketThreshold).
    pub(crate) fn packet_threshold(&self) -> u64 {
        self.packet_threshold
    }

    /// Time threshold now in force, in eighths of a round trip (RFC 9002 kTimeThreshold).
    pub(crate) fn time_threshold_eighths(&self) -> u32 {
        self.time_threshold_eighths
    }

    /// `rtt` times the time threshold, at least `granularity`.
    pub(crate) fn loss_delay(&self, rtt: Duration, granularity: Duration) -> Duration {
        (rtt * self.time_threshold_eighths / 8).max(granularity)
    }

    /// Packet `pn`, sent at `sent`, of `size` bytes, was declared lost and counts towards a
    /// congestion event. Call [`end_pass`](Self::end_pass) after the pass that found it.
    pub(crate) fn record(&mut self, pn: u64, sent: Instant, size: u16) {
        // Loss detection declares the oldest outstanding packets lost first, so the ring
        // stays sorted; should it not, forget what is out of order rather than mis-search.
        while self.lost.back().is_some_and(|l| l.pn >= pn) {
            if let Some(l) = self.lost.pop_back() {
                self.forget(l);
            }
        }
        self.lost.push_back(Lost {
            pn,
            sent,
            size,
            event: PENDING,
        });
        self.pass += 1;
        if self.lost.len() > MAX_REMEMBERED {
            if let Some(l) = self.lost.pop_front() {
                self.forget(l);
            }
        }
    }

    fn forget(&mut self, l: Lost) {
        if l.event == PENDING {
            self.pass = self.pass.saturating_sub(1);
            self.pass_forgot = true;
        } else if let Some(e) = self.event.as_mut().filter(|e| e.id == l.event) {
            e.provable = false;
        }
    }

    /// The loss-detection pass that [`record`](Self::record)ed packets is over and the
    /// controller was told: `newest` is the send time of the newest lost packet, `reduced`
    /// whether the controller reduced its window, `persistent` whether it was persistent
    /// congestion (never undone).
    pub(crate) fn end_pass(
        &mut self,
        now: Instant,
        newest: Instant,
        reduced: bool,
        persistent: bool,
    ) {
        let tag = if persistent {
            self.event = None;
            NO_EVENT
        } else {
            // The controller's rule: a loss of a packet sent after the current event started
            // is a new event; a reduction is one in any case.
            let new = reduced || self.event.is_none_or(|e| newest > e.start);
            if new {
                self.begin_event(now, true);
            }
            match self.event.as_mut() {
                Some(e) => {
                    e.outstanding = e
                        .outstanding
                        .saturating_add(u32::try_from(self.pass).unwrap_or(u32::MAX));
                    if self.pass_forgot {
                        e.provable = false;
                    }
                    e.id
                }
                None => NO_EVENT,
            }
        };
        let start = self.lost.len().saturating_sub(self.pass);
        for l in self.lost.range_mut(start..) {
            l.event = tag;
        }
        self.pass = 0;
        self.pass_forgot = false;
    }

    /// An ECN congestion signal reached the controller: it is a real congestion event (or
    /// part of the current one), so the current event can no longer be undone.
    pub(crate) fn on_ecn_congestion(&mut self, now: Instant) {
        match self.event.as_mut() {
            Some(e) => e.provable = false,
            None => self.begin_event(now, false),
        }
    }

    fn begin_event(&mut self, now: Instant, provable: bool) {
        self.event = Some(Event {
            id: self.next_event,
            start: now,
            outstanding: 0,
            provable,
        });
        self.next_event += 1;
        self.events_since_spurious = self.events_since_spurious.saturating_add(1);
        if self.events_since_spurious >= RESET_AFTER_EVENTS {
            self.reset_thresholds();
        }
    }

    fn reset_thresholds(&mut self) {
        self.packet_threshold = self.configured_packet_threshold;
        self.time_threshold_eighths = DEFAULT_TIME_THRESHOLD_EIGHTHS;
        self.events_since_spurious = 0;
    }

    /// The path changed for good (a new congestion controller): nothing known about the old
    /// one applies.
    pub(crate) fn on_path_change(&mut self) {
        self.lost.clear();
        self.event = None;
        self.pass = 0;
        self.pass_forgot = false;
        self.reset_thresholds();
    }

    /// An ACK frame acknowledges `ranges`; `largest_acked` is the largest packet number
    /// acknowledged before it, `rtt` the round trip the time threshold multiplies. Forgets
    /// the lost packets it covers and adapts the thresholds to them.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ranges: impl Iterator<Item = RangeInclusive<u64>>,
        largest_acked: Option<u64>,
        rtt: Duration,
    ) -> SpuriousOutcome {
        let mut out = SpuriousOutcome::default();
        if self.lost.is_empty() {
            return out;
        }
        let mut event_packets = false;
        for range in ranges {
            let (lo, hi) = (*range.start(), *range.end());
            if lo > hi {
                continue;
            }
            let first = self.lost.partition_point(|l| l.pn < lo);
            let end = self.lost.partition_point(|l| l.pn <= hi);
            if first >= end {
                continue;
            }
            for i in first..end {
                let Some(l) = self.lost.get(i).copied() else {
                    continue;
                };
                out.packets += 1;
                out.bytes += u64::from(l.size);
                if let Some(e) = self.event.as_mut().filter(|e| e.id == l.event) {
                    e.outstanding = e.outstanding.saturating_sub(1);
                    event_packets = true;
                }
                if self.adapt {
                    self.adapt_to(now, l, largest_acked, rtt);
                }
            }
            self.lost.drain(first..end);
            if self.lost.is_empty() {
                break;
            }
        }
        if out.packets > 0 {
            self.events_since_spurious = 0;
        }
        if event_packets && self.event.is_some_and(|e| e.provable && e.outstanding == 0) {
            out.event = true;
            // Undone (or at least over): the next loss starts a new event.
            self.event = None;
        }
        out
    }

    /// Raises the thresholds so that the reordering `l`'s late acknowledgement shows would
    /// not be taken for loss again (module documentation).
    fn adapt_to(&mut self, now: Instant, l: Lost, largest_acked: Option<u64>, rtt: Duration) {
        if let Some(largest) = largest_acked {
            let distance = largest.saturating_sub(l.pn).saturating_add(1);
            self.packet_threshold = self
                .packet_threshold
                .max(distance.min(MAX_PACKET_THRESHOLD));
        }
        let late = now.saturating_duration_since(l.sent).as_nanos();
        let eighths = (late.saturating_mul(8) / rtt.as_nanos().max(1)).saturating_add(1);
        let eighths = u32::try_from(eighths)
            .unwrap_or(u32::MAX)
            .min(MAX_TIME_THRESHOLD_EIGHTHS);
        self.time_threshold_eighths = self.time_threshold_eighths.max(eighths);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// One pass that loses `pns`, all sent at `sent`, then tells the outcome.
    fn lose(s: &mut SpuriousLosses, now: Instant, sent: Instant, pns: &[u64], reduced: bool) {
        for &pn in pns {
            s.record(pn, sent, 1200);
        }
        s.end_pass(now, sent, reduced, false);
    }

    fn ack(
        s: &mut SpuriousLosses,
        now: Instant,
        lo: u64,
        hi: u64,
        largest: u64,
    ) -> SpuriousOutcome {
        s.on_ack(now, std::iter::once(lo..=hi), Some(largest), RTT)
    }

    #[test]
    fn an_event_is_spurious_once_every_lost_packet_is_acknowledged() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, true);
        lose(&mut s, t0 + RTT, t0, &[10, 11], true);
        // A later pass in the same recovery period adds to the event.
        lose(&mut s, t0 + RTT + ms(5), t0 + ms(1), &[13], false);
        let o = ack(&mut s, t0 + RTT + ms(10), 10, 11, 20);
        assert_eq!((o.packets, o.bytes, o.event), (2, 2400, false));
        // Acknowledged again (ACK ranges repeat): counted once.
        assert_eq!(ack(&mut s, t0 + RTT + ms(11), 5, 11, 20).packets, 0);
        let o = ack(&mut s, t0 + RTT + ms(12), 13, 13, 20);
        assert_eq!((o.packets, o.event), (1, true));
    }

    #[test]
    fn an_event_with_a_real_loss_is_not_spurious() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, true);
        lose(&mut s, t0 + RTT, t0, &[10, 11, 12], true);
        let o = ack(&mut s, t0 + RTT + ms(10), 10, 11, 20);
        assert_eq!((o.packets, o.event), (2, false));
        // A new event: packet 12 of the old one is acknowledged late, but that proves
        // nothing about the new one.
        lose(&mut s, t0 + 3 * RTT, t0 + 2 * RTT, &[30], true);
        let o = ack(&mut s, t0 + 3 * RTT + ms(1), 12, 12, 40);
        assert_eq!((o.packets, o.event), (1, false));
        // Persistent congestion is never undone.
        let mut s = SpuriousLosses::new(3, true);
        for pn in 1..=3 {
            s.record(pn, t0, 1200);
        }
        s.end_pass(t0 + RTT, t0, true, true);
        assert!(!ack(&mut s, t0 + RTT, 1, 3, 9).event);
    }

    #[test]
    fn an_ecn_signal_makes_the_event_real() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, true);
        lose(&mut s, t0 + RTT, t0, &[10], true);
        s.on_ecn_congestion(t0 + RTT + ms(1));
        assert!(!ack(&mut s, t0 + RTT + ms(2), 10, 10, 20).event);
        // A CE event first, then losses in its recovery period: not provable either.
        let mut s = SpuriousLosses::new(3, true);
        s.on_ecn_congestion(t0 + RTT);
        lose(&mut s, t0 + RTT + ms(1), t0 + ms(50), &[10], false);
        assert!(!ack(&mut s, t0 + RTT + ms(2), 10, 10, 20).event);
    }

    #[test]
    fn thresholds_rise_to_the_observed_reordering_and_are_capped() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, true);
        assert_eq!(
            s.loss_delay(RTT, ms(1)),
            ms(112) + Duration::from_micros(500)
        );
        lose(&mut s, t0 + RTT, t0, &[100], true);
        // 20 packets overtook it, and its ACK came 1.3 RTT after it was sent.
        ack(&mut s, t0 + ms(130), 100, 100, 120);
        assert_eq!(s.packet_threshold(), 21);
        assert_eq!(s.time_threshold_eighths(), 11);
        // Smaller reordering never lowers them.
        lose(&mut s, t0 + 2 * RTT, t0 + RTT, &[200], true);
        ack(&mut s, t0 + 2 * RTT + ms(10), 200, 200, 203);
        assert_eq!((s.packet_threshold(), s.time_threshold_eighths()), (21, 11));
        // Huge reordering is capped.
        lose(&mut s, t0 + 20 * RTT, t0 + 19 * RTT, &[10_000], true);
        ack(&mut s, t0 + 25 * RTT, 10_000, 10_000, 1 << 40);
        assert_eq!(s.packet_threshold(), MAX_PACKET_THRESHOLD);
        assert_eq!(s.time_threshold_eighths(), MAX_TIME_THRESHOLD_EIGHTHS);
        assert_eq!(s.loss_delay(RTT, ms(1)), 2 * RTT);
    }

    #[test]
    fn thresholds_reset_after_events_without_spurious_losses() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, true);
        lose(&mut s, t0 + RTT, t0, &[100], true);
        ack(&mut s, t0 + ms(130), 100, 100, 120);
        assert_eq!(s.packet_threshold(), 21);
        for i in 1..RESET_AFTER_EVENTS {
            let at = t0 + RTT * (2 * i);
            lose(&mut s, at, at - RTT, &[1000 * u64::from(i)], true);
            assert_eq!(s.packet_threshold(), 21, "event {i}");
        }
        let at = t0 + RTT * (2 * RESET_AFTER_EVENTS);
        lose(&mut s, at, at - RTT, &[100_000], true);
        assert_eq!(s.packet_threshold(), 3);
        assert_eq!(s.time_threshold_eighths(), DEFAULT_TIME_THRESHOLD_EIGHTHS);
    }

    #[test]
    fn without_adaptation_spurious_losses_are_only_counted() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, false);
        lose(&mut s, t0 + RTT, t0, &[100], true);
        let o = ack(&mut s, t0 + ms(130), 100, 100, 120);
        assert_eq!((o.packets, o.event), (1, true));
        assert_eq!((s.packet_threshold(), s.time_threshold_eighths()), (3, 9));
    }

    #[test]
    fn memory_is_bounded_and_a_forgotten_loss_makes_the_event_unprovable() {
        let t0 = Instant::now();
        let mut s = SpuriousLosses::new(3, true);
        let pns: Vec<u64> = (0..2 * MAX_REMEMBERED as u64).collect();
        lose(&mut s, t0 + RTT, t0, &pns, true);
        assert_eq!(s.lost.len(), MAX_REMEMBERED);
        let o = ack(&mut s, t0 + RTT, 0, u64::MAX, u64::MAX);
        assert_eq!((o.packets, o.event), (MAX_REMEMBERED as u64, false));
        assert!(s.lost.is_empty());
        // Out-of-order records and inverted ranges neither panic nor mis-search.
        lose(&mut s, t0 + 2 * RTT, t0 + RTT, &[50, 40, 60], true);
        assert_eq!(
            s.lost.iter().map(|l| l.pn).collect::<Vec<_>>(),
            vec![40, 60]
        );
        // (An inverted range, as a decoder might let through.)
        let (hi, lo) = (1, 9);
        let o = s.on_ack(t0 + 2 * RTT, [lo..=hi, 40..=40].into_iter(), Some(70), RTT);
        assert_eq!(o.packets, 1);
    }
}
