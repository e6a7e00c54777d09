//! A channel: one keyed, congestion-controlled path between two hosts.
//!
//! A channel is created by the [`Endpoint`](crate::endpoint::Endpoint), either as the
//! initiator of a handshake ([`Endpoint::connect`](crate::endpoint::Endpoint::connect)) or
//! from an accepted incoming handshake. After the handshake it carries packets protected by
//! the negotiated AEAD, numbered by a 64-bit counter that is never reused (retransmissions
//! and pure ACKs get fresh numbers), acknowledged by ranges, and recovered per RFC 9002.
//!
//! # Using a channel
//!
//! The driver (a host or the simulator) calls, in any order and as often as needed:
//! - [`handle_datagram`](Channel::handle_datagram) for every datagram the endpoint routes
//!   here, then, once a batch of received datagrams is processed,
//! - [`poll_transmit`](Channel::poll_transmit) until it returns `None`, sending each batch;
//! - [`poll_timeout`](Channel::poll_timeout) to learn when to call
//!   [`handle_timeout`](Channel::handle_timeout);
//! - [`poll_event`](Channel::poll_event) to learn about connection, closure and path changes.
//!
//! The layer above (streams) is passed to each call as an [`Upper`]; the channel asks it for
//! frames and reports the fate of every frame it carried.

mod acks;
mod config;
mod early;
mod ecn;
mod keys;
mod sent;
mod spurious;
mod stats;
#[cfg(test)]
mod tests;
mod timer;
mod transmit;
mod upper;

pub use config::ChannelConfig;
pub use ecn::EcnState;
pub use stats::ChannelStats;
pub use upper::{Upper, UpperError};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;

use self::acks::ReceivedPackets;
use self::ecn::{EcnOutcome, EcnSender};
use self::keys::KeySet;
use self::sent::{FrameSpan, SentPackets};
use self::spurious::SpuriousLosses;
use self::timer::{Timer, TimerTable};
use crate::crypto::aead::{Suite, TAG_LEN};
use crate::frame::{AckFrame, Frame, Frames};
use crate::handshake::{
    Established, Initiator, Keys as HandshakeKeys, RefuseCode, Reply, StaticKeys, TransportParams,
};
use crate::identity::Eid;
use crate::packet::{self, DataHeader, PacketKind};
use crate::recovery::cc::Controller;
use crate::recovery::mtu::MtuDiscovery;
use crate::recovery::pacing::Pacer;
use crate::recovery::rtt::{RttEstimator, GRANULARITY};
use crate::replay::ReplayWindow;
use crate::EcnCodepoint;

/// Error codes carried in CLOSE frames.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub struct CloseCode(pub u64);

impl CloseCode {
    /// Orderly close.
    pub const NO_ERROR: Self = Self(0);
    /// The peer sent something the protocol forbids.
    pub const PROTOCOL_VIOLATION: Self = Self(1);
    /// The sender hit an internal error.
    pub const INTERNAL_ERROR: Self = Self(2);
    /// The sender ran out of a resource the peer made it spend (streams, memory).
    pub const RESOURCE_EXHAUSTED: Self = Self(3);
    /// Codes from this value up are the application's.
    pub const APPLICATION_MIN: Self = Self(0x100);
}

/// Longest reason text put in a CLOSE frame.
pub const MAX_CLOSE_REASON: usize = 1024;

/// Why a channel ended.
#[derive(Debug, Clone, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// This host closed the channel.
    #[error("closed locally")]
    LocallyClosed,
    /// The peer closed the channel.
    #[error("closed by peer (code {code}): {reason}")]
    ClosedByPeer {
        /// The peer's close code.
        code: u64,
        /// The peer's reason, lossily decoded as UTF-8.
        reason: String,
    },
    /// Nothing was heard from the peer for the idle timeout.
    #[error("timed out: nothing heard from the peer for {0:?}")]
    TimedOut(Duration),
    /// The handshake got no answer in time.
    #[error("no handshake response within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer refused the requested service.
    #[error("refused by peer (code {}): {reason}", code.0)]
    Refused {
        /// Why, as a code.
        code: RefuseCode,
        /// Why, in words.
        reason: String,
    },
    /// The handshake failed (bad message, wrong identity, no common cipher suite…).
    #[error("handshake failed: {0}")]
    HandshakeFailed(String),
    /// The peer broke the protocol; the channel closed with PROTOCOL_VIOLATION.
    #[error("peer violated the protocol: {0}")]
    ProtocolViolation(String),
}

/// Something that happened on a channel, for the driver and the application.
#[derive(Debug, Clone, Eq, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The handshake completed: packets can flow both ways.
    Connected,
    /// The channel is closed for good (after closing/draining, or at once on failure).
    Closed(ChannelError),
    /// The peer now sends from a new address, and replies go there.
    PathChanged {
        /// The previous address.
        from: SocketAddr,
        /// The new address.
        to: SocketAddr,
    },
}

/// Which side of the handshake this channel was.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub enum Side {
    /// Sent the initiation.
    Initiator,
    /// Answered it.
    Responder,
}

enum State {
    Handshake(Box<Handshaking>),
    Established,
    /// We sent CLOSE; we answer further packets with CLOSE until the timer ends.
    Closing(ChannelError),
    /// The peer sent CLOSE; we stay silent until the timer ends.
    Draining(ChannelError),
    Closed,
}

struct Handshaking {
    initiator: Initiator,
    statics: Arc<StaticKeys>,
    message: Vec<u8>,
    send_pending: bool,
    retry_delay: Duration,
    /// [`Channel::retry_handshake_now`] sent the initiation again since the last timed retry
    /// (it may do so once per retry interval).
    early_retry_used: bool,
}

/// Who a channel is with, and how it started.
struct Origin {
    side: Side,
    local_index: u32,
    remote_eid: Eid,
    remote: SocketAddr,
}

/// Parameters of a channel the endpoint builds for an accepted handshake.
pub(crate) struct ResponderSetup {
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    pub(crate) remote_eid: Eid,
    pub(crate) remote: SocketAddr,
    pub(crate) keys: HandshakeKeys,
    pub(crate) suite: Suite,
    pub(crate) peer_params: TransportParams,
    pub(crate) response: Vec<u8>,
    pub(crate) initiation_len: usize,
    /// The initiator's early data (its packet 0), empty if none or declined.
    pub(crate) early: Vec<u8>,
    pub(crate) service: String,
    pub(crate) protocol: String,
}

/// Parameters of a channel the endpoint builds to start a handshake.
pub(crate) struct InitiatorSetup {
    pub(crate) local_index: u32,
    pub(crate) remote_eid: Eid,
    pub(crate) remote: SocketAddr,
    pub(crate) statics: Arc<StaticKeys>,
    /// Prepared: the initiation is written when the channel is first polled.
    pub(crate) initiator: Initiator,
    pub(crate) service: String,
    pub(crate) protocol: String,
}

/// Validation of a new peer address (after the peer moved).
#[derive(Debug, Clone)]
struct PathValidation {
    /// The challenge's bytes.
    data: [u8; 8],
    /// The last validated address, to return to if validation fails.
    fallback: SocketAddr,
    /// Give up at this time.
    deadline: Instant,
    /// A PATH_CHALLENGE is to be (re-)sent.
    send: bool,
}

/// Shortest time a new peer address gets to answer a PATH_CHALLENGE.
const PATH_VALIDATION_MIN: Duration = Duration::from_millis(500);

/// One channel. `M` is the upper layer's per-frame record ([`Upper::Meta`]).
pub struct Channel<M> {
    config: Arc<ChannelConfig>,
    side: Side,
    state: State,
    local_index: u32,
    remote_index: u32,
    remote_eid: Eid,
    remote: SocketAddr,
    service: String,
    protocol: String,
    peer_params: TransportParams,
    keys: Option<KeySet>,
    /// The responder's handshake response, sent before anything else.
    response: Option<Vec<u8>>,
    next_pn: u64,
    /// Largest of our packet numbers the peer acknowledged.
    largest_acked: Option<u64>,
    sent: SentPackets<M>,
    /// Reused by [`on_ack_received`](Self::on_ack_received): the frame spans of the packets
    /// an ACK frame acknowledges.
    acked_spans: Vec<FrameSpan>,
    received: ReceivedPackets,
    replay: ReplayWindow,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    mtu: MtuDiscovery,
    /// ECN marking and validation of the current path.
    ecn: EcnSender,
    bytes_in_flight: u64,
    /// Packets declared lost, to find out which were not, and the loss thresholds that
    /// adapt to them.
    spurious: SpuriousLosses,
    time_of_last_ack_eliciting: Option<Instant>,
    loss_time: Option<Instant>,
    pto_count: u32,
    probes_pending: u32,
    ping_pending: bool,
    close_pending: bool,
    close_frame: (u64, Vec<u8>),
    /// The peer proved it receives at `remote` (responder side: its first packet arrived).
    validated: bool,
    unvalidated_received: u64,
    unvalidated_sent: u64,
    /// A new peer address being validated (PATH_CHALLENGE sent, response awaited).
    path: Option<PathValidation>,
    /// A PATH_RESPONSE owed to the peer.
    path_response: Option<[u8; 8]>,
    app_limited: bool,
    idle_timeout: Duration,
    /// Last packet authenticated (or keys installed): the idle timeout counts from here.
    last_activity: Instant,
    /// An ack-eliciting packet was sent since the loss detection timer was last set: set it
    /// once at the end of the batch rather than for every packet.
    loss_timer_stale: bool,
    last_send: Instant,
    timers: TimerTable,
    events: VecDeque<ChannelEvent>,
    stats: ChannelStats,
    rng: ChaCha20Rng,
    /// Wall clock at `created`, for handshake timestamps.
    unix_at_creation: (Instant, u64),
    /// Early data in the initiation (see the `early` module).
    early: early::Early<M>,
}

impl<M> Channel<M> {
    fn base(
        config: Arc<ChannelConfig>,
        origin: Origin,
        state: State,
        now: Instant,
        unix_nanos: u64,
        rng: ChaCha20Rng,
    ) -> Self {
        let Origin {
            side,
            local_index,
            remote_eid,
            remote,
        } = origin;
        let mtu = config.base_udp_payload;
        let rtt = RttEstimator::new(config.initial_rtt);
        let cc = config.congestion.build_with(now, mtu, config.hystart);
        let pacer = Pacer::new(rtt.smoothed(), cc.window(), mtu, now);
        Self {
            side,
            state,
            local_index,
            remote_index: 0,
            remote_eid,
            remote,
            service: String::new(),
            protocol: String::new(),
            peer_params: TransportParams::default(),
            keys: None,
            response: None,
            next_pn: 0,
            largest_acked: None,
            sent: SentPackets::new(),
            acked_spans: Vec::new(),
            received: ReceivedPackets::new(),
            replay: ReplayWindow::new(),
            rtt,
            cc,
            pacer,
            mtu: MtuDiscovery::new(mtu, mtu),
            ecn: EcnSender::new(config.ecn),
            bytes_in_flight: 0,
            spurious: SpuriousLosses::new(config.packet_threshold, config.spurious_loss_undo),
            time_of_last_ack_eliciting: None,
            loss_time: None,
            pto_count: 0,
            probes_pending: 0,
            ping_pending: false,
            close_pending: false,
            close_frame: (0, Vec::new()),
            validated: side == Side::Initiator,
            unvalidated_received: 0,
            unvalidated_sent: 0,
            path: None,
            path_response: None,
            app_limited: true,
            idle_timeout: config.idle_timeout,
            last_activity: now,
            loss_timer_stale: false,
            last_send: now,
            timers: TimerTable::default(),
            events: VecDeque::new(),
            stats: ChannelStats::default(),
            rng,
            unix_at_creation: (now, unix_nanos),
            early: early::Early::new(),
            config,
        }
    }

    pub(crate) fn new_initiator(
        config: Arc<ChannelConfig>,
        setup: InitiatorSetup,
        now: Instant,
        unix_nanos: u64,
        rng: ChaCha20Rng,
    ) -> Self {
        let retry = config.handshake_retry;
        let timeout = config.handshake_timeout;
        let state = State::Handshake(Box::new(Handshaking {
            initiator: setup.initiator,
            statics: setup.statics,
            message: Vec::new(),
            send_pending: true,
            retry_delay: retry,
            early_retry_used: false,
        }));
        let origin = Origin {
            side: Side::Initiator,
            local_index: setup.local_index,
            remote_eid: setup.remote_eid,
            remote: setup.remote,
        };
        let mut ch = Self::base(config, origin, state, now, unix_nanos, rng);
        ch.service = setup.service;
        ch.protocol = setup.protocol;
        ch.timers.set(Timer::HandshakeRetry, now + retry);
        ch.timers.set(Timer::HandshakeTimeout, now + timeout);
        ch
    }

    pub(crate) fn new_responder(
        config: Arc<ChannelConfig>,
        setup: ResponderSetup,
        now: Instant,
        unix_nanos: u64,
        rng: ChaCha20Rng,
    ) -> Self {
        let origin = Origin {
            side: Side::Responder,
            local_index: setup.local_index,
            remote_eid: setup.remote_eid,
            remote: setup.remote,
        };
        let mut ch = Self::base(config, origin, State::Established, now, unix_nanos, rng);
        ch.remote_index = setup.remote_index;
        ch.service = setup.service;
        ch.protocol = setup.protocol;
        ch.unvalidated_received = setup.initiation_len as u64;
        ch.response = Some(setup.response);
        ch.early.received = (!setup.early.is_empty()).then_some(setup.early);
        ch.install_keys(now, setup.keys, setup.suite, setup.peer_params);
        // An unconfirmed responder channel lives only as long as a handshake may take.
        ch.timers
            .set(Timer::HandshakeTimeout, now + ch.config.handshake_timeout);
        ch
    }

    fn install_keys(
        &mut self,
        now: Instant,
        keys: HandshakeKeys,
        suite: Suite,
        peer: TransportParams,
    ) {
        self.keys = Some(KeySet::new(suite, keys.send, keys.recv, now));
        let peer_idle = Duration::from_millis(u64::from(peer.idle_timeout_ms));
        if !peer_idle.is_zero() {
            self.idle_timeout = self.idle_timeout.min(peer_idle);
        }
        let max = self.config.max_udp_payload.min(peer.max_udp_payload);
        let base = self.config.base_udp_payload.min(max);
        self.mtu = if self.config.mtu_discovery {
            MtuDiscovery::new(base, max)
        } else {
            MtuDiscovery::new(base, base)
        };
        self.peer_params = peer;
        // The idle timeout may have changed: re-arm from now.
        self.last_activity = now;
        self.arm_idle_timer();
    }

    // ---------------------------------------------------------------- getters

    /// Which side of the handshake this channel was.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The peer's identity (authenticated once [`is_established`](Self::is_established)).
    pub fn remote_eid(&self) -> Eid {
        self.remote_eid
    }

    /// Where packets to the peer go.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// The index the peer puts in packets for us.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The (service, protocol) pair this channel was opened for.
    pub fn service(&self) -> (&str, &str) {
        (&self.service, &self.protocol)
    }

    /// Whether the handshake completed and the channel is not closing.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Whether the channel is over; the endpoint may forget it.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the channel is closing, draining or closed.
    pub fn is_closing(&self) -> bool {
        matches!(
            self.state,
            State::Closing(_) | State::Draining(_) | State::Closed
        )
    }

    /// Consecutive probe timeouts without an acknowledgement: the stream layer reports a
    /// stalled link from a few of these.
    pub fn pto_count(&self) -> u32 {
        self.pto_count
    }

    /// The RTT estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// The AEAD in use, once established.
    pub fn suite(&self) -> Option<Suite> {
        self.keys.as_ref().map(KeySet::suite)
    }

    /// The peer's transport parameters (defaults until the handshake completes).
    pub fn peer_params(&self) -> &TransportParams {
        &self.peer_params
    }

    /// Bytes the congestion controller lets us add to the network now.
    pub fn send_window_available(&self) -> u64 {
        self.cc.window().saturating_sub(self.bytes_in_flight)
    }

    /// Room for upper-layer frames in a full packet at the current MTU, with the longest
    /// header (cut to whole 16-byte AEAD blocks under
    /// [`ChannelConfig::whole_block_payloads`]).
    pub fn max_frame_space(&self) -> usize {
        let room = usize::from(self.mtu.current()) - packet::MAX_HEADER_LEN - TAG_LEN;
        if self.config.whole_block_payloads {
            room / 16 * 16
        } else {
            room
        }
    }

    /// Counters and current estimates.
    pub fn stats(&self) -> ChannelStats {
        let mut s = self.stats;
        s.rtt = self.rtt.smoothed();
        s.cwnd = self.cc.window();
        s.bytes_in_flight = self.bytes_in_flight;
        s.mtu = self.mtu.current();
        s.key_updates = self.keys.as_ref().map_or(0, |k| k.updates);
        s.ecn_state = self.ecn.state();
        s.ecn_ce_reported = self.ecn.reported().ce;
        let received = self.received.ecn_counts();
        s.ecn_ect0_received = received.ect0;
        s.ecn_ect1_received = received.ect1;
        s.ecn_ce_received = received.ce;
        s.packet_threshold = self.spurious.packet_threshold();
        s.time_threshold_eighths = self.spurious.time_threshold_eighths();
        s
    }

    /// Name of the congestion controller.
    pub fn congestion_algorithm(&self) -> &'static str {
        self.cc.name()
    }

    // ---------------------------------------------------------------- mutators

    /// Closes the channel with a code and a reason for the peer. Unacknowledged upper-layer
    /// frames are reported lost to `upper`. The channel keeps answering for three probe
    /// timeouts, then reports [`ChannelEvent::Closed`].
    pub fn close<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        code: u64,
        reason: &[u8],
        upper: &mut U,
    ) {
        match self.state {
            State::Handshake(_) => {
                self.finish(ChannelError::LocallyClosed, upper);
            }
            State::Established => {
                let reason = &reason[..reason.len().min(MAX_CLOSE_REASON)];
                self.close_frame = (code, reason.to_vec());
                self.close_pending = true;
                self.enter_closing(now, State::Closing(ChannelError::LocallyClosed), upper);
            }
            _ => {}
        }
    }

    /// Queues a PING (an ack-eliciting packet) to check the path.
    pub fn ping(&mut self) {
        self.ping_pending = true;
    }

    // ---------------------------------------------------------------- handle

    /// Processes one datagram the endpoint routed to this channel (a data packet, or, while
    /// connecting, a handshake response or cookie reply). Invalid datagrams are counted and
    /// dropped; they never change the channel's state. The same as
    /// [`handle_datagram_with_ecn`](Self::handle_datagram_with_ecn) with no ECN codepoint
    /// (Not-ECT, or unknown because the socket cannot read it).
    pub fn handle_datagram<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &mut [u8],
        upper: &mut U,
    ) {
        self.handle_datagram_with_ecn(now, from, None, data, upper);
    }

    /// [`handle_datagram`](Self::handle_datagram) for a datagram whose IP header carried the
    /// ECN codepoint `ecn` (`None`: Not-ECT or unknown). The codepoints of authenticated data
    /// packets are counted and reported to the peer in ACK frames (spec/recovery.md, "ECN").
    pub fn handle_datagram_with_ecn<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
        upper: &mut U,
    ) {
        self.process_early_data(now, upper);
        match packet::classify(data) {
            Some(PacketKind::Data) => self.handle_data(now, from, ecn, data, upper),
            Some(PacketKind::Response) => self.handle_response(now, from, data, upper),
            Some(PacketKind::CookieReply) => self.handle_cookie_reply(now, data),
            _ => self.stats.dropped_malformed += 1,
        }
    }

    fn handle_response<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        upper: &mut U,
    ) {
        let State::Handshake(hs) = &mut self.state else {
            // A duplicate or late response: the channel already has keys.
            return;
        };
        let established = match hs.initiator.handle_response(&hs.statics, data) {
            Ok(e) => e,
            Err(e) => {
                // Forged or corrupted responses must not kill a handshake in progress.
                tracing::debug!(error = %e, "dropping bad handshake response");
                self.stats.dropped_unauthenticated += 1;
                return;
            }
        };
        let Established {
            keys,
            remote_index,
            reply,
        } = established;
        match reply {
            Reply::Refuse { code, reason } => {
                self.finish(ChannelError::Refused { code, reason }, upper);
            }
            Reply::Accept { suite, params } => {
                if self.config.suites & suite.bit() == 0 {
                    self.finish(
                        ChannelError::HandshakeFailed(format!(
                            "peer chose a suite we did not offer: {suite:?}"
                        )),
                        upper,
                    );
                    return;
                }
                self.state = State::Established;
                self.remote_index = remote_index;
                self.remote = from;
                self.timers.stop(Timer::HandshakeRetry);
                self.timers.stop(Timer::HandshakeTimeout);
                self.install_keys(now, keys, suite, params);
                self.early_to_packet_zero(now);
                self.stats.bytes_received += data.len() as u64;
                // Confirm the keys to the responder at once, and get an RTT sample.
                self.ping_pending = true;
                self.events.push_back(ChannelEvent::Connected);
                self.handle_stashed_datagrams(now, upper);
            }
        }
    }

    /// Tells a channel still in its handshake that its peer's address has just become
    /// reachable: a hole-punching probe (sss-routing's PUNCH) arrived from
    /// [`remote_address`](Self::remote_address). Behind a NAT that filters unsolicited
    /// packets, an initiation that reached the peer's NAT before the peer's own probe opened
    /// it was dropped there; sending it again now gets through at once instead of at the next
    /// timed retry (a second later). Returns whether an initiation was queued: at most once
    /// per retry interval, so that spoofed probes cannot make the channel send more than its
    /// timer would at twice the rate; the timed retries keep their schedule. Nothing happens
    /// after the handshake, or before the first initiation was sent.
    pub fn retry_handshake_now(&mut self, now: Instant) -> bool {
        let State::Handshake(hs) = &mut self.state else {
            return false;
        };
        if hs.early_retry_used || !hs.initiator.is_sent() {
            return false;
        }
        hs.early_retry_used = true;
        self.retry_initiation(now);
        matches!(&self.state, State::Handshake(hs) if hs.send_pending)
    }

    fn handle_cookie_reply(&mut self, now: Instant, data: &[u8]) {
        let State::Handshake(hs) = &mut self.state else {
            return;
        };
        if let Err(e) = hs.initiator.handle_cookie_reply(now, data) {
            tracing::debug!(error = %e, "dropping bad cookie reply");
            self.stats.dropped_unauthenticated += 1;
            return;
        }
        // The responder is under load: retry with the cookie right away.
        self.retry_initiation(now);
    }

    fn retry_initiation(&mut self, now: Instant) {
        let unix = self.unix_nanos(now);
        let State::Handshake(hs) = &mut self.state else {
            return;
        };
        if !hs.initiator.is_sent() {
            // Not polled yet: the first poll writes the first initiation.
            return;
        }
        hs.message.clear();
        match hs
            .initiator
            .retry(&hs.statics, now, unix, &mut self.rng, &mut hs.message)
        {
            Ok(()) => hs.send_pending = true,
            Err(e) => tracing::warn!(error = %e, "could not build handshake retry"),
        }
    }

    fn unix_nanos(&self, now: Instant) -> u64 {
        let (at, unix) = self.unix_at_creation;
        let elapsed = now.saturating_duration_since(at).as_nanos();
        unix.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    fn handle_data<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
        upper: &mut U,
    ) {
        if !matches!(
            self.state,
            State::Established | State::Closing(_) | State::Draining(_)
        ) {
            // Overtook the response (the responder's first data after it): kept for then.
            self.stash_early_datagram(from, ecn, data);
            return;
        }
        let Ok((header, header_len)) = DataHeader::parse(data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let pn =
            packet::decode_packet_number(self.replay.largest(), header.truncated_pn, header.pn_len);
        if self.replay.check(pn).is_err() {
            self.stats.dropped_replayed += 1;
            return;
        }
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let Some((key, which)) = keys.select(header.key_phase, pn) else {
            self.stats.dropped_unauthenticated += 1;
            return;
        };
        let datagram_len = data.len();
        let (head, body) = data.split_at_mut(header_len);
        let Ok(payload) = key.open(pn, head, body) else {
            self.stats.dropped_unauthenticated += 1;
            return;
        };
        // Authenticated from here on.
        self.replay.record(pn);
        if keys.on_authenticated(which, pn, now, self.next_pn) {
            let pto = self.pto_duration();
            self.timers.set(Timer::KeyDiscard, now + 3 * pto);
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram_len as u64;
        if !self.validated && self.path.is_none() {
            // Handshake address validation (responder): the initiator's first packet proves
            // it received our response at this address.
            if from == self.remote {
                self.validated = true;
                self.timers.stop(Timer::HandshakeTimeout);
            } else {
                self.unvalidated_received += datagram_len as u64;
            }
            // A probe timer held back by the limit may now be armed.
            self.set_loss_detection_timer(now);
        } else if !self.validated && from == self.remote {
            // A new address under validation: what it sends raises what we may send it.
            self.unvalidated_received += datagram_len as u64;
            self.set_loss_detection_timer(now);
        }
        if from != self.remote && self.received.largest().is_none_or(|l| pn > l) {
            if matches!(self.state, State::Established) && self.path.is_some() || self.validated {
                self.migrate(now, from, datagram_len);
            } else {
                // Still in handshake address validation: follow the peer, and make it
                // answer from there (a PING passes the anti-amplification limit), which
                // validates the address.
                let old = std::mem::replace(&mut self.remote, from);
                self.events.push_back(ChannelEvent::PathChanged {
                    from: old,
                    to: from,
                });
                self.ping_pending = true;
                self.reset_ecn_path();
            }
        }
        self.reset_idle_timer(now);
        match self.state {
            State::Draining(_) => return,
            State::Closing(ref error) => {
                // The peer's CLOSE means it got ours or closed at the same time (both sides
                // superseding the channel at once): drain quietly. Answering it with another
                // CLOSE would start a CLOSE ping-pong that lasts the whole closing period.
                if Frames::new(payload).any(|f| matches!(f, Ok(Frame::Close { .. }))) {
                    self.state = State::Draining(error.clone());
                    self.close_pending = false;
                } else {
                    // Answer with CLOSE again; the peer may have lost the first one.
                    self.close_pending = true;
                }
                return;
            }
            _ => {}
        }
        let mut ack_eliciting = false;
        let mut error = None;
        for frame in Frames::new(payload) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    error = Some(format!("malformed frame: {e}"));
                    break;
                }
            };
            ack_eliciting |= frame.is_ack_eliciting();
            match frame {
                Frame::Padding(_) | Frame::Ping => {}
                Frame::PathChallenge(data) => self.path_response = Some(data),
                Frame::PathResponse(data) => self.on_path_response(now, from, data),
                Frame::Ack(ack) => {
                    if let Err(e) = self.on_ack_received(now, &ack, upper) {
                        error = Some(e);
                        break;
                    }
                }
                Frame::Close { code, reason } => {
                    let reason = String::from_utf8_lossy(reason).into_owned();
                    self.enter_closing(
                        now,
                        State::Draining(ChannelError::ClosedByPeer { code, reason }),
                        upper,
                    );
                    return;
                }
                Frame::Upper { ty, body } => {
                    if let Err(e) = upper.handle_frame(now, ty, body) {
                        self.close_with_error(now, e.code, e.reason, upper);
                        return;
                    }
                }
            }
        }
        if let Some(reason) = error {
            self.close_with_error(now, CloseCode::PROTOCOL_VIOLATION.0, reason, upper);
            return;
        }
        self.received.on_packet(
            now,
            pn,
            ack_eliciting,
            self.config.ack_eliciting_threshold,
            self.config.max_ack_delay,
            self.config.max_ack_ranges * 2,
        );
        self.received.on_ecn(ecn, ack_eliciting);
    }

    fn close_with_error<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        code: u64,
        reason: String,
        upper: &mut U,
    ) {
        tracing::debug!(code, %reason, "closing channel: peer violated the protocol");
        let mut bytes = reason.clone().into_bytes();
        bytes.truncate(MAX_CLOSE_REASON);
        self.close_frame = (code, bytes);
        self.close_pending = true;
        self.enter_closing(
            now,
            State::Closing(ChannelError::ProtocolViolation(reason)),
            upper,
        );
    }

    /// The peer sends from a new address (NAT rebinding, a new network): the newest packet
    /// decides, as in WireGuard, but the new address is not trusted with more than three
    /// times what it sent until it echoes a PATH_CHALLENGE (an attacker replaying a captured
    /// packet from elsewhere cannot); if it does not within the validation time, the channel
    /// returns to the last validated address.
    fn migrate(&mut self, now: Instant, to: SocketAddr, datagram_len: usize) {
        let from = std::mem::replace(&mut self.remote, to);
        // Moving on from an address still being validated: fall back to the last good one.
        let fallback = self.path.as_ref().map_or(from, |p| p.fallback);
        if fallback == to {
            // Back to the validated address.
            self.path = None;
            self.validated = true;
            self.timers.stop(Timer::PathValidation);
        } else {
            let mut data = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut self.rng, &mut data);
            let wait = (3 * self.pto_duration()).max(PATH_VALIDATION_MIN);
            self.path = Some(PathValidation {
                data,
                fallback,
                deadline: now + wait,
                send: true,
            });
            self.validated = false;
            self.unvalidated_sent = 0;
            self.unvalidated_received = datagram_len as u64;
            self.timers
                .set(Timer::PathValidation, now + self.pto_duration().min(wait));
            self.stats.migrations += 1;
        }
        if from.ip() != to.ip() {
            // A different network path: its capacity and delay are unknown.
            self.cc =
                self.config
                    .congestion
                    .build_with(now, self.mtu.current(), self.config.hystart);
            self.rtt = RttEstimator::new(self.config.initial_rtt);
            self.spurious.on_path_change();
        }
        // Even a new port may mean new middleboxes (NAT rebinding): ECN is tested afresh.
        self.reset_ecn_path();
        self.events
            .push_back(ChannelEvent::PathChanged { from, to });
    }

    /// Packets now go to another address: ECN is validated afresh there, and packets marked
    /// on the old path count neither for nor against the new one.
    fn reset_ecn_path(&mut self) {
        self.ecn.on_path_change();
        self.sent.clear_ect();
    }

    /// A PATH_RESPONSE arrived from `from`.
    fn on_path_response(&mut self, now: Instant, from: SocketAddr, data: [u8; 8]) {
        if let Some(p) = &self.path {
            if p.data == data && from == self.remote {
                self.path = None;
                self.validated = true;
                self.timers.stop(Timer::PathValidation);
                self.set_loss_detection_timer(now);
            }
        }
    }

    /// The path validation timer fired: re-send the challenge, or give up and return to the
    /// last validated address.
    fn on_path_timer(&mut self, now: Instant) {
        let pto = self.pto_duration();
        let Some(p) = self.path.as_mut() else {
            return;
        };
        if now >= p.deadline {
            let fallback = p.fallback;
            self.path = None;
            self.validated = true;
            let failed = std::mem::replace(&mut self.remote, fallback);
            self.events.push_back(ChannelEvent::PathChanged {
                from: failed,
                to: fallback,
            });
            self.reset_ecn_path();
            self.set_loss_detection_timer(now);
        } else {
            p.send = true;
            let next = (now + pto).min(p.deadline);
            self.timers.set(Timer::PathValidation, next);
        }
    }

    /// Whether PATH_CHALLENGE or PATH_RESPONSE frames wait to be sent.
    pub(super) fn path_frames_pending(&self) -> bool {
        self.path_response.is_some() || self.path.as_ref().is_some_and(|p| p.send)
    }

    /// Appends the pending PATH_CHALLENGE / PATH_RESPONSE frames if they fit before `limit`.
    pub(super) fn write_path_frames(&mut self, buf: &mut Vec<u8>, limit: usize) -> bool {
        let mut wrote = false;
        if let Some(data) = self.path_response {
            if buf.len() + 9 <= limit {
                Frame::PathResponse(data).encode(buf);
                self.path_response = None;
                wrote = true;
            }
        }
        if let Some(p) = self.path.as_mut() {
            if p.send && buf.len() + 9 <= limit {
                Frame::PathChallenge(p.data).encode(buf);
                p.send = false;
                wrote = true;
            }
        }
        wrote
    }

    /// Enters Closing or Draining: every upper-layer frame in flight is reported lost (the
    /// stream layer re-sends it on the next channel), timers stop but the close timer.
    fn enter_closing<U: Upper<Meta = M>>(&mut self, now: Instant, state: State, upper: &mut U) {
        self.release_in_flight(upper);
        let linger = 3 * self.pto_duration();
        self.timers.stop_all();
        self.timers.set(Timer::Close, now + linger);
        self.state = state;
    }

    fn release_in_flight<U: Upper<Meta = M>>(&mut self, upper: &mut U) {
        let mut frames = self.take_early_frames();
        frames.extend(self.sent.drain());
        for meta in frames {
            upper.on_lost(meta);
        }
        self.bytes_in_flight = 0;
        self.loss_time = None;
    }

    /// Ends the channel now and reports why.
    fn finish<U: Upper<Meta = M>>(&mut self, error: ChannelError, upper: &mut U) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.release_in_flight(upper);
        self.timers.stop_all();
        self.state = State::Closed;
        self.events.push_back(ChannelEvent::Closed(error));
    }

    // ---------------------------------------------------------------- loss recovery

    fn on_ack_received<U: Upper<Meta = M>>(
        &mut self,
        now: Instant,
        ack: &AckFrame,
        upper: &mut U,
    ) -> Result<(), String> {
        if ack.largest >= self.next_pn {
            return Err(format!(
                "ACK of packet {} which was never sent",
                ack.largest
            ));
        }
        self.detect_spurious_losses(now, ack);
        let newly_largest = self.largest_acked.is_none_or(|l| ack.largest > l);
        if newly_largest {
            self.largest_acked = Some(ack.largest);
        }
        let mut acked_any = false;
        let mut rtt_sample = None;
        let mut acked_ack_eliciting = false;
        let mut acked_marked = 0u64;
        // Send time of the newest packet newly acknowledged: a CE signal belongs to it.
        let mut newest_acked: Option<(u64, Instant)> = None;
        // The frame records of the packets acknowledged, released once every range is
        // taken, in the order the packets were taken.
        let mut spans = std::mem::take(&mut self.acked_spans);
        for range in ack.iter() {
            self.sent
                .take_range(*range.start(), *range.end(), &mut spans, |pn, p| {
                    acked_any = true;
                    if pn == ack.largest {
                        rtt_sample = Some(now.saturating_duration_since(p.time));
                    }
                    acked_marked += u64::from(p.ect);
                    if newest_acked.is_none_or(|(n, _)| pn > n) {
                        newest_acked = Some((pn, p.time));
                    }
                    acked_ack_eliciting |= p.ack_eliciting;
                    if p.in_flight {
                        self.bytes_in_flight =
                            self.bytes_in_flight.saturating_sub(u64::from(p.size));
                        self.cc
                            .on_ack(now, p.time, u64::from(p.size), self.app_limited, &self.rtt);
                    }
                    let mtu_before = self.mtu.current();
                    self.mtu
                        .on_acked(pn, p.size.saturating_add(u16::from(p.cut)));
                    if self.mtu.current() != mtu_before {
                        self.cc.on_mtu_update(self.mtu.current());
                    }
                    if let Some(l) = p.largest_acked {
                        self.received.on_ack_acked(l);
                    }
                });
        }
        for span in spans.drain(..) {
            self.sent.release_frames(span, |meta| upper.on_acked(meta));
        }
        self.acked_spans = spans;
        if !acked_any {
            return Ok(());
        }
        if let (Some(sample), true) = (rtt_sample, acked_ack_eliciting) {
            let max_delay = Duration::from_millis(u64::from(self.peer_params.max_ack_delay_ms));
            let delay = Duration::from_micros(ack.delay_micros).min(max_delay);
            self.rtt.update(delay, sample);
        }
        if let Some((_, sent)) = newest_acked {
            self.process_ecn(now, acked_marked, ack.ecn, newly_largest, sent);
        }
        self.detect_lost_packets(now, upper);
        self.cc.on_end_acks(
            now,
            self.bytes_in_flight,
            self.app_limited,
            self.largest_acked,
            rtt_sample,
        );
        self.pto_count = 0;
        self.set_loss_detection_timer(now);
        Ok(())
    }

    /// The ECN part of an ACK that newly acknowledged packets, the newest sent at `sent`
    /// (RFC 9000 §13.4.2.1, RFC 9002 §7.1): validation, and a growing CE count as a congestion
    /// signal. The controller's recovery period makes it one reduction per round trip; nothing
    /// is retransmitted, since nothing was lost.
    fn process_ecn(
        &mut self,
        now: Instant,
        acked_marked: u64,
        counts: Option<crate::frame::EcnCounts>,
        newly_largest: bool,
        sent: Instant,
    ) {
        match self.ecn.on_ack(acked_marked, counts, newly_largest) {
            EcnOutcome::Nothing => {}
            EcnOutcome::Failed(reason) => {
                tracing::debug!(
                    reason,
                    "ECN validation failed: sending Not-ECT on this path"
                );
                self.stats.ecn_failures += 1;
            }
            EcnOutcome::CongestionExperienced => {
                self.stats.ecn_congestion_signals += 1;
                let window = self.cc.window();
                self.cc.on_congestion_event(now, sent, false, 0);
                if self.cc.window() < window {
                    self.stats.congestion_events += 1;
                }
                self.spurious.on_ecn_congestion(now);
            }
        }
    }

    /// The round trip the time threshold multiplies: `max(srtt, latest_rtt)`.
    fn loss_rtt(&self) -> Duration {
        self.rtt.latest().max(self.rtt.smoothed())
    }

    /// Time threshold of loss detection: 9/8 of [`loss_rtt`](Self::loss_rtt), or more on a
    /// path that reorders (the `spurious` module), at least the timer granularity.
    fn loss_delay(&self) -> Duration {
        self.spurious.loss_delay(self.loss_rtt(), GRANULARITY)
    }

    /// Before an ACK frame is processed: the packets it acknowledges that were declared lost
    /// were not (spec/recovery.md §2.5). Their frames were reported lost and have been sent
    /// again, so the upper layer hears nothing more of them (each frame's fate is reported
    /// once). If they were the last of the current congestion event's lost packets, the
    /// controller undoes its reduction, before this ACK's acknowledgements of packets sent in
    /// the recovery period end it.
    fn detect_spurious_losses(&mut self, now: Instant, ack: &AckFrame) {
        let rtt = self.loss_rtt();
        let outcome = self
            .spurious
            .on_ack(now, ack.iter(), self.largest_acked, rtt);
        if outcome.packets == 0 {
            return;
        }
        self.stats.spurious_losses += outcome.packets;
        self.stats.spurious_bytes += outcome.bytes;
        if outcome.event {
            self.stats.spurious_congestion_events += 1;
            if self.config.spurious_loss_undo {
                tracing::debug!(
                    packets = outcome.packets,
                    "spurious congestion event: undoing the window reduction"
                );
                self.cc.on_spurious_congestion_event();
            }
        }
    }

    /// RFC 9002 §6.1: packets older than the largest acknowledged by the packet threshold, or
    /// sent more than `loss_delay` before now, are lost.
    fn detect_lost_packets<U: Upper<Meta = M>>(&mut self, now: Instant, upper: &mut U) {
        self.loss_time = None;
        let Some(largest_acked) = self.largest_acked else {
            return;
        };
        let loss_delay = self.loss_delay();
        let lost_before = now.checked_sub(loss_delay);
        let mut lost_bytes = 0u64;
        let mut newest_lost: Option<Instant> = None;
        let mut oldest_lost: Option<Instant> = None;
        // Persistent congestion needs lost packets with no acknowledged one in between.
        let mut contiguous = true;
        let mut seen_gap = false;
        let Some(first) = self.sent.first() else {
            return;
        };
        for pn in first..largest_acked {
            let Some(sent_at) = self.sent.time(pn) else {
                if oldest_lost.is_some() {
                    seen_gap = true;
                }
                continue;
            };
            let by_count = largest_acked >= pn.saturating_add(self.spurious.packet_threshold());
            let by_time = lost_before.is_some_and(|t| sent_at <= t);
            if !(by_count || by_time) {
                let at = sent_at + loss_delay;
                self.loss_time = Some(self.loss_time.map_or(at, |l| l.min(at)));
                continue;
            }
            let Some(p) = self.sent.take(pn) else {
                continue;
            };
            if seen_gap {
                contiguous = false;
            }
            if p.in_flight {
                self.stats.packets_lost += 1;
                self.stats.bytes_lost += u64::from(p.size);
            }
            if p.ect {
                self.ecn.on_marked_lost();
            }
            self.mtu
                .on_lost(now, pn, p.size.saturating_add(u16::from(p.cut)));
            if !p.mtu_probe && p.in_flight {
                self.spurious.record(pn, p.time, p.size);
                lost_bytes += u64::from(p.size);
                newest_lost = Some(newest_lost.map_or(p.time, |t| t.max(p.time)));
                oldest_lost = Some(oldest_lost.map_or(p.time, |t| t.min(p.time)));
            }
            if p.in_flight {
                self.bytes_in_flight = self.bytes_in_flight.saturating_sub(u64::from(p.size));
            }
            self.sent
                .release_frames(p.frames, |meta| upper.on_lost(meta));
        }
        if let (Some(newest), Some(oldest)) = (newest_lost, oldest_lost) {
            let period = self.pto_base() * 3;
            let persistent = contiguous
                && self.rtt.has_samples()
                && newest.saturating_duration_since(oldest) > period;
            let window = self.cc.window();
            self.cc
                .on_congestion_event(now, newest, persistent, lost_bytes);
            let reduced = self.cc.window() < window;
            if reduced {
                self.stats.congestion_events += 1;
            }
            self.spurious.end_pass(now, newest, reduced, persistent);
            self.cc.on_mtu_update(self.mtu.current());
        }
    }

    fn pto_base(&self) -> Duration {
        let max_ack_delay = Duration::from_millis(u64::from(self.peer_params.max_ack_delay_ms));
        self.rtt.pto_base() + max_ack_delay
    }

    fn pto_duration(&self) -> Duration {
        // Called for every batch sent and every ACK received: skip the multiplication in the
        // usual case of no backoff.
        let base = self.pto_base();
        if self.pto_count == 0 {
            return base;
        }
        base * 2u32.saturating_pow(self.pto_count.min(16))
    }

    fn set_loss_detection_timer(&mut self, now: Instant) {
        if let Some(at) = self.loss_time {
            self.timers.set(Timer::LossDetection, at);
            return;
        }
        if self.amplification_blocked() {
            // RFC 9002 §6.2.2.1: no probe timer while the anti-amplification limit would
            // hold the probe back (it would fire without effect, at once if handled late);
            // receiving more bytes re-arms it.
            self.timers.stop(Timer::LossDetection);
            return;
        }
        let ack_eliciting_in_flight = self.bytes_in_flight > 0;
        match (ack_eliciting_in_flight, self.time_of_last_ack_eliciting) {
            (true, Some(last)) => {
                let at = (last + self.pto_duration()).max(now);
                self.timers.set(Timer::LossDetection, at);
            }
            _ => self.timers.stop(Timer::LossDetection),
        }
    }

    fn on_loss_detection_timeout<U: Upper<Meta = M>>(&mut self, now: Instant, upper: &mut U) {
        if self.loss_time.is_some() {
            self.detect_lost_packets(now, upper);
        } else if self.bytes_in_flight > 0 {
            self.pto_count = self.pto_count.saturating_add(1);
            self.stats.ptos += 1;
            self.probes_pending = 2;
        }
        self.set_loss_detection_timer(now);
    }

    /// Notes activity at `now` (a packet authenticated, keys installed): the channel times
    /// out `max(idle timeout, 3 PTO)` after the last of them. The timer itself is only armed
    /// when unset; when it fires early (activity since), it is re-armed from the last
    /// activity, so a busy channel does no timer arithmetic per packet.
    fn reset_idle_timer(&mut self, now: Instant) {
        self.last_activity = now;
        if !self.timers.is_set(Timer::Idle) {
            self.arm_idle_timer();
        }
    }

    /// When the channel times out, counting from the last activity.
    /// Three PTOs without backoff, as quinn does: with the backoff, a dead path's growing
    /// probe interval would keep pushing the deadline away.
    fn idle_deadline(&self) -> Instant {
        self.last_activity + self.idle_timeout.max(3 * self.pto_base())
    }

    fn arm_idle_timer(&mut self) {
        let at = self.idle_deadline();
        self.timers.set(Timer::Idle, at);
    }

    // ---------------------------------------------------------------- timers

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.timers.next();
        // An ACK the anti-amplification limit holds back has no deadline until more bytes
        // arrive (or the peer's address is validated): reporting it would make the driver spin.
        if matches!(self.state, State::Established) && !self.amplification_blocked() {
            if let Some(ack) = self.received.deadline() {
                next = Some(next.map_or(ack, |n| n.min(ack)));
            }
        }
        next
    }

    /// Acts on every timer due at `now`.
    pub fn handle_timeout<U: Upper<Meta = M>>(&mut self, now: Instant, upper: &mut U) {
        self.process_early_data(now, upper);
        for timer in self.timers.expire(now) {
            match timer {
                Timer::LossDetection => self.on_loss_detection_timeout(now, upper),
                Timer::Idle if self.idle_deadline() > now => self.arm_idle_timer(),
                Timer::Idle => {
                    let idle = self.idle_timeout;
                    self.finish(ChannelError::TimedOut(idle), upper);
                }
                Timer::KeepAlive => self.ping_pending = true,
                Timer::PathValidation => self.on_path_timer(now),
                Timer::Close => {
                    let error = match &self.state {
                        State::Closing(e) | State::Draining(e) => e.clone(),
                        _ => ChannelError::LocallyClosed,
                    };
                    self.finish(error, upper);
                }
                Timer::HandshakeRetry => {
                    self.retry_initiation(now);
                    if let State::Handshake(hs) = &mut self.state {
                        hs.early_retry_used = false;
                        hs.retry_delay = (hs.retry_delay * 2).min(Duration::from_secs(8));
                        let delay = hs.retry_delay;
                        self.timers.set(Timer::HandshakeRetry, now + delay);
                    }
                }
                Timer::HandshakeTimeout => {
                    let timeout = self.config.handshake_timeout;
                    self.finish(ChannelError::HandshakeTimeout(timeout), upper);
                }
                Timer::KeyDiscard => {
                    if let Some(k) = self.keys.as_mut() {
                        k.discard_previous();
                    }
                }
                Timer::Ack | Timer::Pacing | Timer::Mtu => {}
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.events.pop_front()
    }
}
