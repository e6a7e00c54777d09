//! Building packets: `poll_transmit` and the packet assembler.
//!
//! A batch is a run of datagrams of the current MTU to one destination, sent with one GSO
//! system call; every datagram but the last is full-sized, so a packet that comes out short
//! ends the batch. Pure ACKs are neither congestion-controlled nor paced; probes after a
//! probe timeout ignore the congestion window (RFC 9002 §6.2.4). Before the responder has
//! seen the initiator receive at its address, it sends at most three times what it received
//! (anti-amplification). Upper-layer data needs room for a full segment; ACKs and PINGs
//! (PTO probes among them) go in a packet cut to what is left and are charged their real
//! size, so that a limit a full packet would break holds back neither what the peer is owed
//! nor the PING whose answer validates the peer's address.

use std::time::Instant;

use super::sent::SentPacket;
use super::timer::Timer;
use super::{Channel, State, Upper};
use crate::crypto::aead::TAG_LEN;

/// AES block size: a payload of whole blocks spares AES-GCM its partial last block.
const AEAD_BLOCK: usize = 16;
use crate::frame::{AckFrame, Frame, FrameType};
use crate::packet::{DataHeader, MAX_HEADER_LEN};
use crate::{EcnCodepoint, Transmit};

/// Longest packet carrying an ACK frame with its newest range and a PING: the room an
/// amplification-limited channel needs to send anything.
pub(super) const MIN_SMALL_PACKET: usize =
    MAX_HEADER_LEN + AckFrame::MAX_SINGLE_RANGE_LEN + 1 + 2 * 9 + TAG_LEN;

/// What to put in one packet.
#[derive(Debug, Default, Clone, Copy)]
struct Content {
    ack: bool,
    ping: bool,
    data: bool,
    close: bool,
    /// Pad the datagram to exactly this size (MTU probes).
    pad_to: Option<usize>,
    probe: bool,
    /// Marked ECT(0). One value for a whole batch: the IP header's ECN field is set per
    /// `sendmsg`.
    ect: bool,
}

impl<M> Channel<M> {
    /// Writes the next batch of datagrams (at most `max_datagrams`, one GSO batch) into
    /// `buf`, which is cleared first, and says where to send them. `None` when nothing is to
    /// be sent now; [`poll_timeout`](Self::poll_timeout) then says when to ask again.
    pub fn poll_transmit<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
        upper: &mut U,
    ) -> Option<Transmit> {
        let transmit = self.poll_transmit_inner(now, max_datagrams, buf, upper);
        if std::mem::take(&mut self.loss_timer_stale) {
            // Every packet of the batch was sent at `now`: one update covers them all.
            self.set_loss_detection_timer(now);
        }
        transmit
    }

    fn poll_transmit_inner<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
        upper: &mut U,
    ) -> Option<Transmit> {
        buf.clear();
        self.process_early_data(now, upper);
        match &mut self.state {
            State::Closed | State::Draining(_) => return None,
            State::Handshake(hs) => {
                if !hs.send_pending {
                    return None;
                }
                if !hs.initiator.is_sent() && !self.write_first_initiation(now, upper) {
                    return None;
                }
                let State::Handshake(hs) = &mut self.state else {
                    return None;
                };
                hs.send_pending = false;
                buf.extend_from_slice(&hs.message);
                self.early.sent_at = Some(now);
                self.on_datagram_sent(now, buf.len());
                return Some(self.transmit(buf.len(), None, false));
            }
            State::Closing(_) => {
                if !self.close_pending {
                    return None;
                }
                self.close_pending = false;
                let size = usize::from(self.mtu.current());
                let content = Content {
                    close: true,
                    ..Content::default()
                };
                let (len, _) = self.build_packet(now, buf, size, content, upper)?;
                return Some(self.transmit(len, None, false));
            }
            State::Established => {}
        }
        if let Some(response) = self.response.take() {
            buf.extend_from_slice(&response);
            self.unvalidated_sent += response.len() as u64;
            self.on_datagram_sent(now, buf.len());
            return Some(self.transmit(buf.len(), None, false));
        }
        self.maybe_update_keys(now);
        if let Some(t) = self.poll_mtu_probe(now, buf, upper) {
            return Some(t);
        }

        // The batch's datagram size: the MTU, or the first packet's size when that packet
        // filled its room cut to whole AEAD blocks (see `build_packet`), up to 15 bytes less.
        let mut segment = usize::from(self.mtu.current());
        let mut count = 0;
        let mut ect = None;
        while count < max_datagrams.max(1) {
            let Some((mut content, size)) = self.plan_packet(now, segment, upper) else {
                break;
            };
            // Decided once a packet is sure to go, for the whole batch.
            content.ect = match ect {
                Some(e) => e,
                None => {
                    let pto = self.pto_duration();
                    *ect.insert(self.ecn.should_mark(now, pto))
                }
            };
            // The last probe of a PTO is no larger than the base size, so that it gets
            // through even when the path MTU shrank below `segment` (a black hole): its
            // acknowledgement lets loss detection see the large packets die.
            let size = if content.probe && self.probes_pending == 1 {
                size.min(usize::from(self.config.base_udp_payload))
            } else {
                size
            };
            let Some((len, room)) = self.build_packet(now, buf, size, content, upper) else {
                break;
            };
            count += 1;
            if count == 1 && size == segment && room < size {
                // A first packet cut to whole AEAD blocks sets the size of the batch's
                // datagrams (one that came out shorter than its room ends the batch below).
                // Without the cut, `segment` stays the MTU, and a packet given less (the last
                // probe of a PTO, an amplification-limited one) ends the batch as before.
                segment = room;
            }
            if len < segment {
                // A short datagram can only be the last of a GSO batch.
                break;
            }
        }
        if count == 0 {
            return None;
        }
        self.stats.max_batch = self.stats.max_batch.max(count as u64);
        let segment_size = (count > 1).then_some(segment);
        Some(self.transmit(buf.len(), segment_size, ect.unwrap_or(false)))
    }

    fn transmit(&self, size: usize, segment_size: Option<usize>, ect: bool) -> Transmit {
        Transmit {
            destination: self.remote,
            size,
            segment_size,
            ecn: ect.then_some(EcnCodepoint::Ect0),
            src_ip: None,
        }
    }

    /// Bytes the anti-amplification limit still allows before the peer is seen to receive at
    /// its address; `None` once it is (no limit).
    pub(super) fn amplification_allowance(&self) -> Option<u64> {
        (!self.validated).then(|| {
            self.unvalidated_received
                .saturating_mul(3)
                .saturating_sub(self.unvalidated_sent)
        })
    }

    /// Whether the anti-amplification limit leaves too little to send even a small packet
    /// (a pure ACK or a PING). Only then can a due ACK not go out (pure ACKs are neither
    /// congestion-controlled nor paced) nor a PTO probe: `poll_timeout` leaves out the ACK
    /// deadline and the probe timer is not armed while this holds, and it stops holding when
    /// more bytes arrive or the peer's address is validated.
    pub(super) fn amplification_blocked(&self) -> bool {
        self.amplification_allowance()
            .is_some_and(|a| a < MIN_SMALL_PACKET as u64)
    }

    /// Decides what the next packet carries and its largest size (at most `segment`), or
    /// `None` if nothing may or need be sent.
    fn plan_packet<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        segment: usize,
        upper: &U,
    ) -> Option<(Content, usize)> {
        let ack = self.received.ack_due(now);
        let probe = self.probes_pending > 0;
        let wants_data = upper.has_pending();
        let cwnd_room = self.bytes_in_flight + segment as u64 <= self.cc.window();
        let may_elicit = probe || cwnd_room;
        let mut data = wants_data && may_elicit;
        let path = self.path_frames_pending();
        let mut ping = (self.ping_pending || probe || path) && may_elicit && !data;
        if wants_data && !cwnd_room && !probe {
            self.app_limited = false;
        } else if !wants_data {
            self.app_limited = true;
        }
        if let Some(allowance) = self.amplification_allowance() {
            if allowance < segment as u64 {
                // No room for a full packet. An ACK that is due and a PING (a probe or a
                // queued ping) still go, unpaced, in a packet cut to the allowance (the ACK
                // frame to its newest ranges); upper-layer data waits. The peer's answer to
                // the PING validates its address, so a responder whose 0.5-RTT data is
                // stuck behind the limit can always unblock itself.
                let ping = (self.ping_pending || probe || path) && may_elicit;
                if !(ack || ping) || self.amplification_blocked() {
                    return None;
                }
                let content = Content {
                    ack,
                    ping,
                    probe,
                    ..Content::default()
                };
                return Some((content, allowance as usize));
            }
        }
        if (data || ping) && !probe {
            if let Some(at) = self.pacer.delay(
                self.rtt.smoothed(),
                segment as u64,
                self.mtu.current(),
                self.cc.window(),
                now,
            ) {
                self.timers.set(Timer::Pacing, at);
                data = false;
                ping = false;
            } else {
                self.timers.stop(Timer::Pacing);
            }
        }
        if !(ack || data || ping) {
            return None;
        }
        let content = Content {
            ack,
            ping,
            data,
            probe,
            ..Content::default()
        };
        Some((content, segment))
    }

    /// An MTU probe, alone in its own transmit since its size differs from the batch's.
    fn poll_mtu_probe<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        upper: &mut U,
    ) -> Option<Transmit> {
        // Probing starts once the peer has acknowledged a packet of ours: the first flight
        // of application data (a new channel's first request and its answer) goes out and is
        // answered without probes in its way, and the search starts one round trip later.
        if !self.config.mtu_discovery
            || !self.validated
            || self.probes_pending > 0
            || self.largest_acked.is_none()
        {
            return None;
        }
        let room = self.cc.window().saturating_sub(self.bytes_in_flight);
        if room < u64::from(self.config.max_udp_payload) {
            return None;
        }
        let size = self.mtu.poll_probe(now)?;
        let content = Content {
            ping: true,
            pad_to: Some(usize::from(size)),
            ect: self.ecn.marks_probes(),
            ..Content::default()
        };
        let pn = self.next_pn;
        let (len, _) = self.build_packet(now, buf, usize::from(size), content, upper)?;
        self.mtu.on_probe_sent(pn, size);
        Some(self.transmit(len, None, content.ect))
    }

    fn maybe_update_keys(&mut self, now: Instant) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        if keys.update_due(
            now,
            self.largest_acked,
            self.config.key_update_packets,
            self.config.key_update_interval,
        ) {
            keys.update_send(now, self.next_pn);
        }
    }

    /// Appends one protected packet of at most `size` bytes. Returns its length and its room:
    /// the length it has when it fills the space it was given. `None` (and nothing written)
    /// if the packet would carry nothing.
    ///
    /// With [`whole_block_payloads`](super::ChannelConfig::whole_block_payloads), a packet
    /// that carries upper-layer data gets the largest room whose payload is a whole number of
    /// 16-byte blocks, up to 15 bytes under `size`: AES-GCM then seals and opens it without a
    /// partial last block, which saves about a tenth of the AEAD's time per packet.
    fn build_packet<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        size: usize,
        content: Content,
        upper: &mut U,
    ) -> Option<(usize, usize)> {
        let phase = self.keys.as_ref()?.send_key().1;
        let start = buf.len();
        let pn = self.next_pn;
        let header_len = DataHeader::write(buf, self.remote_index, phase, pn, self.largest_acked);
        let payload_start = buf.len();
        let mut limit = start + size - TAG_LEN;
        let mut cut = 0;
        if self.config.whole_block_payloads && content.data && content.pad_to.is_none() {
            cut = limit.saturating_sub(payload_start) % AEAD_BLOCK;
            limit -= cut;
        }
        let mut ack_eliciting = false;
        let mut acked_up_to = None;

        if content.close {
            let (code, reason) = &self.close_frame;
            let overhead = 2 * 8 + 1;
            let room = limit.saturating_sub(buf.len() + overhead);
            let frame = Frame::Close {
                code: *code,
                reason: &reason[..reason.len().min(room)],
            };
            frame.encode(buf);
        }
        if content.ack || (self.received.has_unacked() && (content.data || content.ping)) {
            if let Some(mut ack) = self.received.build_ack(now, self.config.max_ack_ranges) {
                let largest = ack.largest;
                // Fits whole in a full packet; a packet cut to the amplification allowance
                // (at least `MIN_SMALL_PACKET`) takes the newest ranges, leaving room for
                // the PING.
                let room = limit.saturating_sub(buf.len() + usize::from(content.ping));
                if ack.truncate_to(room) {
                    Frame::Ack(ack).encode(buf);
                    acked_up_to = Some(largest);
                    self.stats.acks_sent += 1;
                }
            }
        }
        if content.ping || content.data {
            // Path validation frames ride in any ack-eliciting packet.
            if self.write_path_frames(buf, limit) {
                ack_eliciting = true;
            }
        }
        if content.ping && (self.ping_pending || content.probe || !ack_eliciting) {
            Frame::Ping.encode(buf);
            ack_eliciting = true;
            self.ping_pending = false;
        }
        self.sent.scratch.clear();
        if content.data && buf.len() < limit {
            let before = buf.len();
            upper.write_frames(now, buf, limit - buf.len(), &mut self.sent.scratch);
            debug_assert!(buf.len() <= limit, "upper layer overfilled the packet");
            if buf.len() > before {
                ack_eliciting = true;
            }
        }
        if let Some(pad) = content.pad_to {
            buf.resize(start + pad - TAG_LEN, FrameType::PADDING.0 as u8);
        }
        if buf.len() == payload_start {
            buf.truncate(start);
            return None;
        }

        let keys = self.keys.as_mut()?;
        let (key, _) = keys.send_key();
        let (head, body) = buf[start..].split_at_mut(header_len);
        let tag = key.seal(pn, head, body);
        buf.extend_from_slice(&tag);
        keys.on_packet_sent();
        self.next_pn += 1;

        let len = buf.len() - start;
        let in_flight = ack_eliciting || content.pad_to.is_some();
        if in_flight {
            self.bytes_in_flight += len as u64;
            self.cc.on_sent(now, len as u64, pn);
            self.pacer.on_transmit(len as u16);
        }
        if ack_eliciting {
            self.time_of_last_ack_eliciting = Some(now);
            // Any ack-eliciting packet does what a queued PING was for (confirm the keys,
            // get an RTT sample, keep the path alive): no separate PING after it.
            self.ping_pending = false;
            if content.probe {
                self.probes_pending = self.probes_pending.saturating_sub(1);
            }
        }
        if !self.validated {
            self.unvalidated_sent += len as u64;
        }
        if content.ect {
            self.ecn.on_marked_sent();
            self.stats.ecn_marked_sent += 1;
        }
        let frames = self.sent.commit_frames();
        self.sent.insert(
            pn,
            SentPacket {
                time: now,
                size: len as u16,
                ack_eliciting,
                in_flight,
                mtu_probe: content.pad_to.is_some(),
                cut: cut as u8,
                ect: content.ect,
                largest_acked: acked_up_to,
                frames,
            },
        );
        self.on_datagram_sent(now, len);
        if ack_eliciting {
            // Set by `poll_transmit` once the batch is built.
            self.loss_timer_stale = true;
        }
        Some((len, size - cut))
    }

    fn on_datagram_sent(&mut self, now: Instant, len: usize) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        self.last_send = now;
        if let Some(interval) = self.config.keepalive_interval {
            if matches!(self.state, State::Established) {
                self.timers.set(Timer::KeepAlive, now + interval);
            }
        }
    }
}
