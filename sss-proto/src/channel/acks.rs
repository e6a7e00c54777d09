//! The receiver's side of acknowledgements: which packet numbers arrived, and when an ACK
//! frame must go out (RFC 9000 §13.2).
//!
//! An ACK is due at once after `threshold` ack-eliciting packets, or when a packet arrives out
//! of order or reveals a gap; otherwise within `max_ack_delay`. "At once" means in the next
//! packet the channel builds, and the host drains every received datagram of a batch (GRO)
//! before it polls for transmits, so one ACK covers a whole batch.

use std::time::{Duration, Instant};

use crate::codec::VARINT_MAX;
use crate::frame::{AckFrame, EcnCounts};
use crate::ranges::RangeSet;
use crate::EcnCodepoint;

/// An ACK frame that acknowledges at least this many ack-eliciting packets at once is sent
/// twice, in two packets.
///
/// RFC 9000 §13.2.2 asks for an ACK after every second ack-eliciting packet; the host
/// drains a whole receive batch (GRO) before it builds anything, so a flight that arrives
/// together gets one ACK instead of one per two packets. That thinning also removes the
/// redundancy of the RFC's rule: with a small window the whole flight arrives in one batch,
/// and if its only ACK is lost the sender, its window full, has nothing to clock it and
/// waits for a probe timeout. A second copy of the ACK (still far fewer ACKs than the RFC's
/// one per two packets) makes that need two losses. Smaller batches are acknowledged once,
/// as the RFC's rule would.
pub(crate) const REPEAT_MIN: u32 = 4;

#[derive(Debug)]
pub(crate) struct ReceivedPackets {
    ranges: RangeSet,
    /// Largest packet number received and when.
    largest: Option<(u64, Instant)>,
    ack_eliciting_since_ack: u32,
    immediate: bool,
    deadline: Option<Instant>,
    /// Packets arrived since the last ACK frame was sent (ack-eliciting or not).
    unacked: bool,
    /// The last ACK frame covered at least [`REPEAT_MIN`] ack-eliciting packets: send it
    /// once more (see [`REPEAT_MIN`]).
    repeat: bool,
    /// Authenticated packets received, by ECN codepoint (RFC 9000 §13.4.1). Visible to the
    /// channel's tests, which play a peer that misreports them.
    pub(super) ecn: EcnCounts,
}

impl ReceivedPackets {
    pub(crate) fn new() -> Self {
        Self {
            ranges: RangeSet::new(),
            largest: None,
            ack_eliciting_since_ack: 0,
            immediate: false,
            deadline: None,
            unacked: false,
            repeat: false,
            ecn: EcnCounts::ZERO,
        }
    }

    pub(crate) fn largest(&self) -> Option<u64> {
        self.largest.map(|(pn, _)| pn)
    }

    /// Records an authenticated packet.
    pub(crate) fn on_packet(
        &mut self,
        now: Instant,
        pn: u64,
        ack_eliciting: bool,
        threshold: u32,
        max_ack_delay: Duration,
        max_ranges: usize,
    ) {
        let out_of_order = match self.largest {
            Some((largest, _)) => pn < largest || pn > largest + 1,
            None => pn != 0,
        };
        if self.largest.is_none_or(|(l, _)| pn > l) {
            self.largest = Some((pn, now));
        }
        self.ranges.insert_one(pn);
        // Bound the state a peer can make us keep: forget the oldest ranges.
        while self.ranges.len() > max_ranges {
            self.ranges.pop_min();
        }
        self.unacked = true;
        if ack_eliciting {
            self.ack_eliciting_since_ack += 1;
            if out_of_order || self.ack_eliciting_since_ack >= threshold {
                self.immediate = true;
            } else if self.deadline.is_none() {
                self.deadline = Some(now + max_ack_delay);
            }
        }
    }

    /// Counts the ECN codepoint of a packet just recorded by [`on_packet`](Self::on_packet).
    /// A CE mark on an ack-eliciting packet is acknowledged at once, so that the sender learns
    /// of the congestion without delay (RFC 9000 §13.2.1).
    pub(crate) fn on_ecn(&mut self, ecn: Option<EcnCodepoint>, ack_eliciting: bool) {
        let count = match ecn {
            None => return,
            Some(EcnCodepoint::Ect0) => &mut self.ecn.ect0,
            Some(EcnCodepoint::Ect1) => &mut self.ecn.ect1,
            Some(EcnCodepoint::Ce) => {
                if ack_eliciting {
                    self.immediate = true;
                }
                &mut self.ecn.ce
            }
        };
        // Packet numbers stop below 2^62 too, so the cap is never reached in practice.
        *count = (*count + 1).min(VARINT_MAX);
    }

    /// The ECN counts so far.
    pub(crate) fn ecn_counts(&self) -> EcnCounts {
        self.ecn
    }

    /// Whether an ACK frame must be sent now (not merely may be piggybacked).
    pub(crate) fn ack_due(&self, now: Instant) -> bool {
        self.repeat
            || (self.ack_eliciting_since_ack > 0
                && (self.immediate || self.deadline.is_some_and(|d| d <= now)))
    }

    /// Whether an ACK frame would carry news (to piggyback on a packet being sent anyway).
    pub(crate) fn has_unacked(&self) -> bool {
        self.unacked
    }

    /// When the delayed ACK falls due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.repeat {
            return self.largest.map(|(_, t)| t);
        }
        if self.ack_eliciting_since_ack == 0 {
            return None;
        }
        if self.immediate {
            return self.largest.map(|(_, t)| t);
        }
        self.deadline
    }

    /// The ACK frame to send now, and the reset of the ACK timers.
    pub(crate) fn build_ack(&mut self, now: Instant, max_ranges: usize) -> Option<AckFrame> {
        let (_, received_at) = self.largest?;
        let delay = now.saturating_duration_since(received_at);
        let mut frame = AckFrame::from_ranges(
            &self.ranges,
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            max_ranges,
        )?;
        // Counts go out once there are any (an ACK_ECN frame), and then in every ACK: they
        // are cumulative, so a lost ACK loses nothing.
        if !self.ecn.is_zero() {
            frame.ecn = Some(self.ecn);
        }
        self.repeat = self.ack_eliciting_since_ack >= REPEAT_MIN;
        self.ack_eliciting_since_ack = 0;
        self.immediate = false;
        self.deadline = None;
        self.unacked = false;
        Some(frame)
    }

    /// The peer acknowledged a packet of ours whose ACK frame covered up to `largest`: it
    /// knows about everything up to there, so stop repeating those ranges (RFC 9000 §13.2.4).
    pub(crate) fn on_ack_acked(&mut self, largest: u64) {
        if largest > 0 {
            self.ranges.remove(0..largest);
        }
    }
}
