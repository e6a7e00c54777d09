//! Early data: the initiator's first upper-layer frames, carried inside the handshake
//! initiation as its packet number 0 (`spec/handshake.md` §3.4, `spec/channel.md`).
//!
//! Initiator: when allowed ([`Channel::set_early_data`]), the first initiation is written
//! when the channel is first polled, with as many of the upper layer's pending frames as the
//! initiation has room for. Every retry carries the same bytes. Once the handshake completes
//! they count as packet 0, sent when the last initiation was, so the ordinary machinery takes
//! over: the responder's ACK of packet 0 releases them, and if it never comes (the responder
//! declined them) loss detection reports them lost and the upper layer sends them again in a
//! new packet. The channel's own packets start at 1. If the handshake fails, they are
//! reported lost at once.
//!
//! Responder: the endpoint hands the accepted channel the early data, which it takes as the
//! initiator's packet 0 the first time it is given the upper layer (or when the driver calls
//! [`Channel::process_early_data`], after attaching the upper layer to the channel).

use std::net::SocketAddr;
use std::time::Instant;

use super::sent::SentPacket;
use super::{Channel, ChannelError, CloseCode, Side, State, Upper};
use crate::frame::{Frame, Frames};
use crate::EcnCodepoint;

/// The early-data state of a channel.
pub(super) struct Early<M> {
    /// Initiator: whether the first initiation may carry upper-layer frames.
    pub(super) allowed: bool,
    /// Initiator: the frames the initiation carries, until the handshake completes.
    pub(super) frames: Vec<M>,
    /// Initiator: their encoded length.
    pub(super) len: usize,
    /// Initiator: when the last initiation was sent.
    pub(super) sent_at: Option<Instant>,
    /// Responder: the initiator's packet 0, not yet processed.
    pub(super) received: Option<Vec<u8>>,
    /// Initiator: data packets that arrived before the response (reordered on the way),
    /// processed once it authenticates. At most [`MAX_STASHED`].
    pub(super) stash: Vec<(SocketAddr, Option<EcnCodepoint>, Vec<u8>)>,
}

/// Data packets an initiator keeps while it waits for the response: the responder's first
/// packets (its answer to early data) may overtake the response. QUIC keeps undecryptable
/// packets the same way (RFC 9001 §4.1.4). Unauthenticated until then, so few.
pub(super) const MAX_STASHED: usize = 4;

impl<M> Early<M> {
    pub(super) fn new() -> Self {
        Self {
            allowed: false,
            frames: Vec::new(),
            len: 0,
            sent_at: None,
            received: None,
            stash: Vec::new(),
        }
    }
}

impl<M> Channel<M> {
    /// Lets the first initiation carry the upper layer's pending frames as early data
    /// (initiator only; effective until the initiation is first polled). Early data reaches
    /// the responder in the same flight as the handshake, so it can be answered one round
    /// trip earlier; it is replayable within the limits of `spec/handshake.md` §9, so allow
    /// it only for frames whose replay does no harm (or that the application protects).
    pub fn set_early_data(&mut self, allowed: bool) {
        if self.side == Side::Initiator {
            self.early.allowed = allowed;
        }
    }

    /// Bytes of early data the channel's initiation carried or will carry at most (0 on a
    /// responder channel or before [`set_early_data`](Self::set_early_data)).
    pub fn early_data_len(&self) -> usize {
        self.early.len
    }

    /// Processes the early data an accepted handshake carried, as the initiator's packet 0,
    /// passing its frames to `upper`. Any call that takes the upper layer does this first;
    /// a driver calls it to deliver the early data at once, after attaching the upper layer.
    #[inline]
    pub fn process_early_data<U: Upper<Meta = M>>(&mut self, now: Instant, upper: &mut U) {
        // Checked on every call that takes the upper layer: keep the usual case to a test.
        if self.early.received.is_some() {
            self.take_packet_zero(now, upper);
        }
    }

    fn take_packet_zero<U: Upper<Meta = M>>(&mut self, now: Instant, upper: &mut U) {
        let Some(data) = self.early.received.take() else {
            return;
        };
        if !matches!(self.state, State::Established) || self.replay.check(0).is_err() {
            return;
        }
        self.replay.record(0);
        let mut ack_eliciting = false;
        let mut error = None;
        for frame in Frames::new(&data) {
            match frame {
                Ok(Frame::Padding(_)) => {}
                Ok(Frame::Ping) => ack_eliciting = true,
                Ok(Frame::Upper { ty, body }) => {
                    ack_eliciting = true;
                    if let Err(e) = upper.handle_frame(now, ty, body) {
                        self.close_with_error(now, e.code, e.reason, upper);
                        return;
                    }
                }
                // Nothing but upper-layer frames (and padding) makes sense before the
                // initiator has heard from us.
                Ok(_) => {
                    error = Some("non-stream frame in early data".to_owned());
                    break;
                }
                Err(e) => {
                    error = Some(format!("malformed frame in early data: {e}"));
                    break;
                }
            }
        }
        if let Some(reason) = error {
            self.close_with_error(now, CloseCode::PROTOCOL_VIOLATION.0, reason, upper);
            return;
        }
        self.stats.early_data_received += data.len() as u64;
        self.received.on_packet(
            now,
            0,
            ack_eliciting,
            self.config.ack_eliciting_threshold,
            self.config.max_ack_delay,
            self.config.max_ack_ranges * 2,
        );
    }

    /// Initiator, first poll: writes the first initiation, with early data if allowed.
    /// `false` if it could not be written (the channel is then closed).
    pub(super) fn write_first_initiation<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        upper: &mut U,
    ) -> bool {
        let State::Handshake(hs) = &mut self.state else {
            return false;
        };
        let mut early = Vec::new();
        if self.early.allowed && upper.has_pending() {
            let space = hs.initiator.early_capacity();
            upper.write_frames(now, &mut early, space, &mut self.early.frames);
            debug_assert!(
                early.len() <= space,
                "upper layer overfilled the initiation"
            );
        }
        hs.message.clear();
        match hs
            .initiator
            .send_first(&hs.statics, &early, &mut hs.message)
        {
            Ok(()) => {
                self.early.len = early.len();
                self.stats.early_data_sent += early.len() as u64;
                true
            }
            Err(e) => {
                self.finish(ChannelError::HandshakeFailed(e.to_string()), upper);
                false
            }
        }
    }

    /// Initiator, handshake completed: the early frames become packet 0, sent when the last
    /// initiation was; the channel's own packets start at 1.
    ///
    /// Packet 0 is not counted in flight: it rode in the initiation, outside congestion
    /// control, and a responder that declines it (a restart) says nothing about congestion.
    /// So its acknowledgement does not grow the window nor its loss shrink it; it is still
    /// ack-eliciting (an RTT sample) and declared lost by the usual thresholds once a later
    /// packet is acknowledged (the PING sent on connecting is one), its frames then sent
    /// again.
    pub(super) fn early_to_packet_zero(&mut self, now: Instant) {
        if self.early.frames.is_empty() {
            return;
        }
        // Committed through the sent table's scratch list (empty between packets; whatever
        // it might hold is put back untouched).
        let other = std::mem::replace(
            &mut self.sent.scratch,
            std::mem::take(&mut self.early.frames),
        );
        let frames = self.sent.commit_frames();
        self.sent.scratch = other;
        let time = self.early.sent_at.unwrap_or(now);
        let size = u16::try_from(self.early.len).unwrap_or(u16::MAX);
        self.sent.insert(
            0,
            SentPacket {
                time,
                size,
                ack_eliciting: true,
                in_flight: false,
                mtu_probe: false,
                cut: 0,
                ect: false,
                largest_acked: None,
                frames,
            },
        );
        self.next_pn = self.next_pn.max(1);
    }

    /// The frames the initiation carried, while the handshake is not complete: reported
    /// lost with the rest when the channel ends.
    pub(super) fn take_early_frames(&mut self) -> Vec<M> {
        std::mem::take(&mut self.early.frames)
    }

    /// Initiator in its handshake: keeps a data packet that overtook the response.
    pub(super) fn stash_early_datagram(
        &mut self,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &[u8],
    ) {
        if matches!(self.state, State::Handshake(_))
            && self.early.stash.len() < MAX_STASHED
            && data.len() <= usize::from(self.config.max_udp_payload)
        {
            self.early.stash.push((from, ecn, data.to_vec()));
        }
    }

    /// The handshake completed: the data packets that came before the response are handled
    /// now, in the order they arrived.
    pub(super) fn handle_stashed_datagrams<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        upper: &mut U,
    ) {
        for (from, ecn, mut data) in std::mem::take(&mut self.early.stash) {
            self.handle_datagram_with_ecn(now, from, ecn, &mut data, upper);
        }
    }
}
