//! The host's protocol state, owned by the driver task and shared with the application's
//! handles behind one mutex: the endpoint, every channel, one session per peer, listeners,
//! connection attempts and the wakers of tasks waiting on any of them.
//!
//! The driver calls [`State::handle_datagram`], [`State::handle_timeouts`] and
//! [`State::collect`]; the handles call the `open_*`/`attempt_*` helpers and then operate on
//! the peer's [`Session`] directly. Whoever changes something the driver must act on (data
//! written, a window opened by a read) wakes it with [`State::wake_driver`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;
use sss_proto::channel::{ChannelError, ChannelEvent};
use sss_proto::endpoint::{ChannelHandle, DatagramEvent, Endpoint, Incoming};
use sss_proto::handshake::RefuseCode;
use sss_proto::packet::PacketKind;
use sss_proto::stream::{
    Attach, ErrorCode, LinkStatus, SentFrame, Session, SessionConfig, SessionEvent, StreamId,
};
use sss_proto::{Channel, EcnCodepoint, Eid, Transmit};
use tokio::sync::watch;

use crate::attempt::Attempt;
use crate::config::HostConfig;
use crate::hash::FastMap;
use crate::routing::Routing;
use crate::stream::Stream;

/// Most handshake replies (cookie replies, refusals) queued for sending; more are dropped
/// (the initiator retries), so a flood of initiations cannot grow memory.
const MAX_QUEUED_REPLIES: usize = 256;

/// What the application's handles and the driver share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// This host's EID.
    pub(crate) eid: Eid,
    /// The socket's address.
    pub(crate) local_addr: SocketAddr,
    /// Set to `true` when the driver has ended.
    pub(crate) done: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new(state: State, eid: Eid, local_addr: SocketAddr) -> Self {
        Self {
            state: Mutex::new(state),
            eid,
            local_addr,
            done: watch::Sender::new(false),
        }
    }

    /// Locks the state. A panic while holding the lock leaves the state as it was at the
    /// panic; carrying on is better than poisoning every handle.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A channel and the peer whose session it carries.
pub(crate) struct ChannelSlot {
    pub(crate) channel: Channel<SentFrame>,
    pub(crate) peer: Eid,
}

/// Everything about one peer: its session (which outlives channels) and the wakers of the
/// application's streams on it.
pub(crate) struct Peer {
    pub(crate) session: Session,
    pub(crate) link: watch::Sender<LinkStatus>,
    pub(crate) streams: HashMap<StreamId, StreamSlot>,
    /// Where the peer was last seen.
    pub(crate) addr: Option<SocketAddr>,
    /// Which incarnation of the peer's session the slots belong to: it changes when the peer
    /// restarts (its streams are gone and their ids will be used again), so that handles of
    /// the old streams cannot reach new ones.
    pub(crate) epoch: u64,
    /// The (service, protocol) of the last channel to the peer (for reconnecting).
    pub(crate) names: Option<(String, String)>,
    /// Channels (in any state) carrying this session.
    pub(crate) channels: usize,
    /// Dropped handles whose streams the session still knows.
    orphans: usize,
    /// Since when the session has had no channel.
    down_since: Option<Instant>,
    /// The session's detached timeout: an unused session is forgotten after as long.
    detached_timeout: Duration,
}

/// The host's view of one stream: who waits for what, how it ended, and the substreams
/// that arrived for it.
///
/// A slot exists for every stream the application has or will get a handle for: streams it
/// opened or accepted, streams waiting in a listener's queue or in their parent's `subs`
/// (unclaimed), and streams whose handle was dropped (orphans) until the session forgets
/// them.
#[derive(Debug, Default)]
pub(crate) struct StreamSlot {
    pub(crate) read: Option<Waker>,
    pub(crate) write: Option<Waker>,
    pub(crate) datagram: Option<Waker>,
    pub(crate) accept: Option<Waker>,
    /// The reset code, once the stream was reset (the session may forget the stream soon
    /// after, so the code is kept here for the handle).
    pub(crate) reset: Option<u64>,
    /// Incoming substreams not yet accepted by the application.
    pub(crate) subs: VecDeque<StreamId>,
    /// The handle was dropped: incoming data is read and discarded until the stream ends.
    pub(crate) orphan: bool,
    /// Reliable datagrams sent on the stream that will never be delivered.
    pub(crate) datagrams_failed: u64,
}

impl StreamSlot {
    fn wake_all(&mut self, out: &mut Vec<Waker>) {
        out.extend(
            [
                &mut self.read,
                &mut self.write,
                &mut self.datagram,
                &mut self.accept,
            ]
            .into_iter()
            .filter_map(Option::take),
        );
    }
}

/// Incoming top-level streams for one (service, protocol).
#[derive(Debug, Default)]
pub(crate) struct ListenerSlot {
    /// Streams not yet accepted: peer, stream and the peer's epoch.
    pub(crate) queue: VecDeque<(Eid, StreamId, u64)>,
    pub(crate) waker: Option<Waker>,
}

/// The host's state; see the [module documentation](self).
pub(crate) struct State {
    pub(crate) endpoint: Endpoint,
    pub(crate) channels: FastMap<ChannelHandle, ChannelSlot>,
    pub(crate) peers: FastMap<Eid, Peer>,
    pub(crate) listeners: HashMap<(String, String), ListenerSlot>,
    pub(crate) attempts: HashMap<u64, Attempt>,
    pub(crate) next_attempt: u64,
    next_epoch: u64,
    pub(crate) config: HostConfig,
    session_config: Arc<SessionConfig>,
    pub(crate) rng: ChaCha20Rng,
    local: Eid,
    /// Handshake replies to send (owned: they come from the endpoint, not a channel).
    pub(crate) out: VecDeque<(Vec<u8>, Transmit)>,
    scratch: Vec<u8>,
    driver_waker: Option<Waker>,
    /// Wakers to wake once the lock is released.
    pub(crate) wake: Vec<Waker>,
    /// `connect` calls were woken because their channel just connected: the driver lets
    /// them run before it sends (see the driver).
    pub(crate) connect_woken: bool,
    /// Streams whose writer waits for send-buffer room.
    pub(crate) write_waiters: Vec<(Eid, StreamId)>,
    /// Live handles (hosts, streams, listeners); the driver winds down at zero.
    pub(crate) refs: usize,
    /// When the driver gives up delivering after the last handle went.
    pub(crate) linger_until: Option<Instant>,
    /// No new operations: the host is closing or closed.
    pub(crate) closed: bool,
    /// The channels were told to close (once).
    pub(crate) channels_closed: bool,
    /// Regserver clients and hole punching.
    pub(crate) routing: Routing,
    /// Peers whose channel runs through a relay: attempts at a direct path.
    pub(crate) upgrades: HashMap<Eid, crate::upgrade::Upgrade>,
    /// Scans of the channel table PUNCH probes caused in the second that began at `.0`.
    punch_scans: (Instant, u32),
}

/// Most PUNCH probes per second that make the host look for handshakes to their sender.
const PUNCH_SCANS_PER_SECOND: u32 = 64;

impl State {
    pub(crate) fn new(
        endpoint: Endpoint,
        config: HostConfig,
        rng: ChaCha20Rng,
        routing: Routing,
    ) -> Self {
        let local = endpoint.eid();
        Self {
            routing,
            punch_scans: (Instant::now(), 0),
            endpoint,
            channels: FastMap::default(),
            peers: FastMap::default(),
            listeners: HashMap::new(),
            attempts: HashMap::new(),
            next_attempt: 0,
            next_epoch: 0,
            session_config: Arc::new(config.session.clone()),
            config,
            rng,
            local,
            out: VecDeque::new(),
            scratch: Vec::new(),
            driver_waker: None,
            wake: Vec::new(),
            write_waiters: Vec::new(),
            connect_woken: false,
            refs: 0,
            linger_until: None,
            closed: false,
            channels_closed: false,
            upgrades: HashMap::new(),
        }
    }

    // ------------------------------------------------------------ driver and handles

    /// Records the driver's waker (called by the driver on every poll).
    pub(crate) fn set_driver_waker(&mut self, waker: &Waker) {
        if !self
            .driver_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(waker))
        {
            self.driver_waker = Some(waker.clone());
        }
    }

    /// Asks the driver to run: something changed that it must act on.
    pub(crate) fn wake_driver(&self) {
        if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// A handle was created.
    pub(crate) fn add_ref(&mut self) {
        self.refs += 1;
    }

    /// A handle was dropped; the last one starts the linger period.
    pub(crate) fn release_ref(&mut self) {
        self.refs = self.refs.saturating_sub(1);
        if self.refs == 0 {
            self.wake_driver();
        }
    }

    /// Closes the host: no new operations; every waiting task is woken (and fails with
    /// [`Error::HostClosed`]); the driver closes the channels.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for peer in self.peers.values_mut() {
            for slot in peer.streams.values_mut() {
                slot.wake_all(&mut self.wake);
            }
        }
        for l in self.listeners.values_mut() {
            self.wake.extend(l.waker.take());
        }
        for a in self.attempts.values_mut() {
            self.wake.append(&mut a.waiters);
        }
        self.wake_driver();
    }

    /// The peer's entry, created (with a fresh session) if needed.
    pub(crate) fn peer_entry(&mut self, eid: Eid) -> &mut Peer {
        let (config, local) = (self.session_config.clone(), self.local);
        let rng = &mut self.rng;
        let next_epoch = &mut self.next_epoch;
        self.peers.entry(eid).or_insert_with(|| {
            let epoch = *next_epoch;
            *next_epoch += 1;
            // Session ids are random and never 0 (0 means "no stream layer").
            let id = rng.next_u64() | 1;
            Peer {
                link: watch::Sender::new(LinkStatus::Down),
                streams: HashMap::new(),
                addr: None,
                epoch,
                names: None,
                channels: 0,
                orphans: 0,
                down_since: None,
                detached_timeout: config.detached_timeout,
                session: Session::new(config, local, eid, id),
            }
        })
    }

    /// Whether an established channel carries `peer`'s session.
    pub(crate) fn is_connected(&self, peer: Eid) -> bool {
        self.channels
            .values()
            .any(|c| c.peer == peer && c.channel.is_established())
    }

    /// The established channel to `peer`, if any.
    pub(crate) fn channel_to(&self, peer: Eid) -> Option<&Channel<SentFrame>> {
        self.channels
            .values()
            .filter(|c| c.peer == peer && c.channel.is_established())
            .map(|c| &c.channel)
            .next()
    }

    /// A new handle on stream `id` of `peer` (its slot may exist already: an unclaimed
    /// incoming stream), or `None` if the host forgot the peer.
    pub(crate) fn new_handle(
        &mut self,
        shared: &Arc<Shared>,
        peer: Eid,
        id: StreamId,
    ) -> Option<Stream> {
        let p = self.peers.get_mut(&peer)?;
        p.streams.entry(id).or_default();
        let stream = Stream::new(shared.clone(), peer, id, p.epoch, p.link.subscribe());
        self.add_ref();
        Some(stream)
    }

    /// The handle of stream `id` was dropped: finish our direction, refuse the substreams
    /// it did not accept, and discard what arrives until the stream ends.
    pub(crate) fn drop_stream(&mut self, peer: Eid, id: StreamId, epoch: u64) {
        if let Some(p) = self.peers.get_mut(&peer).filter(|p| p.epoch == epoch) {
            let _ = p.session.finish(id);
            let _ = p.session.listen(id, false);
            if let Some(mut slot) = p.streams.remove(&id) {
                slot.wake_all(&mut self.wake);
                for sub in slot.subs.drain(..) {
                    p.abandon(sub, ErrorCode::REFUSED);
                }
                if p.session.parent(id).is_ok() {
                    p.streams.insert(
                        id,
                        StreamSlot {
                            orphan: true,
                            ..StreamSlot::default()
                        },
                    );
                    p.orphans += 1;
                    drain(&mut p.session, id, &mut self.scratch);
                }
            }
        }
        self.release_ref();
        self.wake_driver();
    }

    // ------------------------------------------------------------ driver input

    /// One datagram from the socket, with the ECN codepoint of its IP header.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
    ) {
        if let Some(PacketKind::Routing(ty)) = sss_proto::packet::classify(data) {
            if ty == sss_routing::wire::msg_type::RELAY_DATA {
                // Relayed: the inner datagram comes from the relay's synthetic address (a
                // routing datagram inside is dropped there: no regserver has that address).
                if let Some(relay) = self.routing.unwrap_relayed(now, from, data) {
                    let inner = &mut data[sss_routing::wire::RELAY_HEADER_LEN..];
                    self.handle_datagram(now, relay, None, inner);
                }
                return;
            }
            if ty == sss_routing::wire::msg_type::PUNCH {
                self.on_punch_probe(now, from);
            }
            self.routing.handle_datagram(now, from, data);
            return;
        }
        if self.config.routing.drop_direct && !crate::routing::is_relay_addr(from) {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        match self.endpoint.handle(now, from, data, &mut scratch) {
            Some(DatagramEvent::Channel(h)) => {
                if let Some(slot) = self.channels.get_mut(&h) {
                    if let Some(p) = self.peers.get_mut(&slot.peer) {
                        slot.channel
                            .handle_datagram_with_ecn(now, from, ecn, data, &mut p.session);
                    }
                }
            }
            Some(DatagramEvent::Incoming(incoming)) => self.on_incoming(now, incoming),
            Some(DatagramEvent::Respond(t)) => self.queue_reply(now, t, &scratch[..t.size]),
            None => {}
        }
        self.scratch = scratch;
    }

    /// Queues a handshake reply (cookie reply, refusal) unless too many wait; one to a relay
    /// address leaves wrapped in RELAY_DATA.
    fn queue_reply(&mut self, now: Instant, t: Transmit, data: &[u8]) {
        if self.out.len() >= MAX_QUEUED_REPLIES {
            return;
        }
        if crate::routing::is_relay_addr(t.destination) {
            self.routing.wrap(now, &t, data, &mut self.out);
        } else {
            self.out.push_back((data.to_vec(), t));
        }
    }

    /// A peer's hole-punching probe (spec/routing.md §5.4): our handshakes to its address
    /// resend their initiation now, since the first may have died at the peer's NAT before
    /// this probe opened it (`Channel::retry_handshake_now`, at most once per retry interval
    /// each). Probes can be spoofed, so the scan of the channel table runs at most
    /// [`PUNCH_SCANS_PER_SECOND`] times a second.
    fn on_punch_probe(&mut self, now: Instant, from: SocketAddr) {
        let (since, count) = &mut self.punch_scans;
        if now.saturating_duration_since(*since) >= Duration::from_secs(1) {
            (*since, *count) = (now, 0);
        }
        if *count >= PUNCH_SCANS_PER_SECOND {
            return;
        }
        *count += 1;
        let from = crate::udp::canonical_addr(from);
        for slot in self.channels.values_mut() {
            if !slot.channel.is_established()
                && crate::udp::canonical_addr(slot.channel.remote_address()) == from
                && slot.channel.retry_handshake_now(now)
            {
                tracing::debug!(peer = %slot.peer, %from, "punch probe: initiation sent again");
            }
        }
    }

    /// A valid handshake initiation: accept it if we listen on its (service, protocol),
    /// else refuse it with `UNKNOWN_SERVICE`.
    fn on_incoming(&mut self, now: Instant, incoming: Box<Incoming>) {
        let peer = incoming.remote_eid();
        let addr = incoming.remote_address();
        let (service, protocol) = (
            incoming.service().to_owned(),
            incoming.protocol().to_owned(),
        );
        let listening = self
            .listeners
            .contains_key(&(service.clone(), protocol.clone()));
        let full = !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers;
        if !listening || self.closed || full {
            let (code, reason) = if full {
                (RefuseCode::BUSY, "too many peers")
            } else {
                (
                    RefuseCode::UNKNOWN_SERVICE,
                    "no listener for this service and protocol",
                )
            };
            tracing::info!(%peer, %addr, service, protocol, reason, "refusing channel");
            let mut buf = std::mem::take(&mut self.scratch);
            if let Some(t) = self.endpoint.refuse(incoming, code, reason, &mut buf) {
                self.queue_reply(now, t, &buf[..t.size]);
            }
            self.scratch = buf;
            return;
        }
        let layer = self.peer_entry(peer).session.layer_params();
        match self.endpoint.accept_with(now, incoming, &layer) {
            Ok((h, channel)) => {
                tracing::info!(%peer, %addr, service, protocol, "accepted channel");
                let params = *channel.peer_params();
                self.channels.insert(h, ChannelSlot { channel, peer });
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                p.channels += 1;
                p.addr = Some(addr);
                p.names = Some((service, protocol));
                p.down_since = None;
                // The responder's channel is established at once.
                let attach = p.session.attach(now, &params);
                p.on_attach(attach, &mut self.wake, &mut self.next_epoch);
                // Early data in the initiation: the session has it before the response
                // leaves, so the reply can follow the response in the same flight.
                if let Some(slot) = self.channels.get_mut(&h) {
                    slot.channel.process_early_data(now, &mut p.session);
                }
                // Crossing handshakes (both sides connecting at once) leave each side
                // responder of the peer's channel and initiator of its own; both must keep
                // the same one, or each would keep the channel the other dropped. The
                // channel initiated by the larger EID wins: that side keeps its own
                // handshake (which supersedes this channel once it completes, a round trip
                // later) and lets its `connect` calls go on over this channel meanwhile; the
                // smaller side abandons its own handshake for this channel.
                let keep_own = self.local.as_bytes() > peer.as_bytes();
                self.supersede(now, peer, h, keep_own);
                if keep_own {
                    self.on_attempt_peer_connected(peer);
                }
            }
            Err(e) => tracing::warn!(%peer, %addr, error = %e, "cannot accept channel"),
        }
    }

    /// Runs the timers that are due.
    pub(crate) fn handle_timeouts(&mut self, now: Instant) {
        self.advance_attempts(now);
        self.advance_upgrades(now);
        self.routing.handle_timeout(now);
        for slot in self.channels.values_mut() {
            if slot.channel.poll_timeout().is_some_and(|t| t <= now) {
                if let Some(p) = self.peers.get_mut(&slot.peer) {
                    slot.channel.handle_timeout(now, &mut p.session);
                }
            }
        }
        let mut forget = Vec::new();
        for (eid, p) in &mut self.peers {
            if p.session.poll_timeout().is_some_and(|t| t <= now) {
                p.session.handle_timeout(now);
            }
            if p.expiry().is_some_and(|t| t <= now) {
                forget.push(*eid);
            }
        }
        for eid in forget {
            tracing::debug!(peer = %eid, "forgetting idle session");
            self.peers.remove(&eid);
        }
    }

    /// The earliest timer of any channel or session, or the end of the linger period.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let channels = self
            .channels
            .values()
            .filter_map(|c| c.channel.poll_timeout());
        let peers = self
            .peers
            .values()
            .flat_map(|p| [p.session.poll_timeout(), p.expiry()])
            .flatten();
        let attempts = self.attempts.values().filter_map(Attempt::next_start);
        channels
            .chain(peers)
            .chain(attempts)
            .chain(self.routing.poll_timeout())
            .chain(self.upgrade_timeout())
            .chain(self.linger_until)
            .min()
    }

    /// Whether every session has delivered everything written (nothing left to linger for).
    pub(crate) fn is_quiescent(&self) -> bool {
        self.peers
            .values()
            .all(|p| p.session.is_quiescent() || p.channels == 0)
    }

    /// Tells every channel to close (when the host closes).
    pub(crate) fn close_channels(&mut self, now: Instant) {
        if self.channels_closed {
            return;
        }
        self.channels_closed = true;
        for slot in self.channels.values_mut() {
            if let Some(p) = self.peers.get_mut(&slot.peer) {
                tracing::info!(peer = %slot.peer, "closing channel: host closed");
                slot.channel.close(now, 0, b"host closed", &mut p.session);
            }
        }
    }

    // ------------------------------------------------------------ events

    /// Processes channel and session events: attaches and detaches sessions, decides
    /// attempts, queues incoming streams on listeners, and collects the wakers of the tasks
    /// that can make progress.
    pub(crate) fn collect(&mut self, now: Instant) {
        self.collect_channels(now);
        self.collect_sessions(now);
        self.check_writers();
        self.routing.collect(now, &mut self.rng, &mut self.out);
        // A lookup of an upgrade may have just answered.
        self.advance_upgrades(now);
    }

    fn collect_channels(&mut self, now: Instant) {
        let mut closed = Vec::new();
        let mut connected = Vec::new();
        for (&h, slot) in &mut self.channels {
            let Some(p) = self.peers.get_mut(&slot.peer) else {
                continue;
            };
            while let Some(event) = slot.channel.poll_event() {
                match event {
                    ChannelEvent::Connected => {
                        let addr = slot.channel.remote_address();
                        tracing::info!(peer = %slot.peer, %addr, "channel established");
                        let attach = p.session.attach(now, slot.channel.peer_params());
                        p.on_attach(attach, &mut self.wake, &mut self.next_epoch);
                        p.addr = Some(addr);
                        p.down_since = None;
                        connected.push((slot.peer, h, addr));
                    }
                    ChannelEvent::Closed(error) => {
                        tracing::info!(peer = %slot.peer, %error, "channel closed");
                        closed.push((h, error));
                    }
                    ChannelEvent::PathChanged { from, to } => {
                        tracing::info!(peer = %slot.peer, %from, %to, "peer moved");
                        p.addr = Some(to);
                    }
                    _ => {}
                }
            }
            if let Some((code, reason)) = p.session.take_violation() {
                tracing::warn!(peer = %slot.peer, code, reason, "closing channel: stream-layer violation");
                slot.channel
                    .close(now, code, reason.as_bytes(), &mut p.session);
            }
            if slot.channel.is_established() {
                p.session
                    .update_link(slot.channel.pto_count(), slot.channel.rtt().smoothed());
            }
        }
        for (peer, newest, addr) in connected {
            self.on_attempt_channel_connected(now, newest);
            self.supersede(now, peer, newest, false);
            self.on_relayed_connected(now, peer, addr);
        }
        for (h, error) in closed {
            self.on_channel_closed(now, h, error);
        }
    }

    /// Closes every channel to `peer` but `newest` (and, if `keep_handshakes`, but those
    /// still in their handshake): the newest established channel carries the session
    /// (frames in flight on the others are re-queued on it).
    fn supersede(&mut self, now: Instant, peer: Eid, newest: ChannelHandle, keep_handshakes: bool) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        for (&h, slot) in &mut self.channels {
            let keep = keep_handshakes && !slot.channel.is_established();
            if h != newest && slot.peer == peer && !slot.channel.is_closing() && !keep {
                tracing::debug!(%peer, "closing channel: superseded by a newer one");
                slot.channel.close(now, 0, b"superseded", &mut p.session);
            }
        }
    }

    fn on_channel_closed(&mut self, now: Instant, h: ChannelHandle, error: ChannelError) {
        let Some(slot) = self.channels.remove(&h) else {
            return;
        };
        self.endpoint.forget(h);
        let connected = self.is_connected(slot.peer);
        self.on_attempt_channel_closed(now, h, &error, connected);
        if let Some(p) = self.peers.get_mut(&slot.peer) {
            p.channels = p.channels.saturating_sub(1);
            if !connected {
                p.session.detach(now);
            }
        }
    }

    fn collect_sessions(&mut self, now: Instant) {
        for (&eid, p) in &mut self.peers {
            while let Some(event) = p.session.poll_event() {
                match event {
                    SessionEvent::IncomingStream {
                        id,
                        service,
                        protocol,
                    } => match self.listeners.get_mut(&(service, protocol)) {
                        Some(l) if !self.closed => {
                            let _ = p.session.accept(id);
                            // Streams accept substreams from the start: the peer may open
                            // them before the application sees the stream.
                            let _ = p.session.listen(id, true);
                            p.streams.entry(id).or_default();
                            l.queue.push_back((eid, id, p.epoch));
                            self.wake.extend(l.waker.take());
                        }
                        _ => {
                            tracing::debug!(peer = %eid, stream = %id, "resetting stream: no listener");
                            let _ = p.session.reset(id, ErrorCode::UNKNOWN_SERVICE);
                        }
                    },
                    SessionEvent::NewSubstream { parent } => {
                        if p.streams.get(&parent).is_some_and(|s| s.orphan) {
                            drain(&mut p.session, parent, &mut self.scratch);
                            continue;
                        }
                        let mut children = Vec::new();
                        while let Ok(Some(child)) = p.session.accept_substream(parent) {
                            let _ = p.session.listen(child, true);
                            children.push(child);
                        }
                        for &child in &children {
                            p.streams.entry(child).or_default();
                        }
                        let s = p.streams.entry(parent).or_default();
                        s.subs.extend(children);
                        self.wake.extend(s.accept.take());
                    }
                    SessionEvent::Readable(id) | SessionEvent::ReceiveBlocked(id) => {
                        if let Some(s) = p.streams.get_mut(&id) {
                            if s.orphan {
                                drain(&mut p.session, id, &mut self.scratch);
                            } else {
                                self.wake.extend(s.read.take());
                            }
                        }
                    }
                    SessionEvent::Datagram(id) => {
                        if let Some(s) = p.streams.get_mut(&id) {
                            if s.orphan {
                                drain(&mut p.session, id, &mut self.scratch);
                            } else {
                                self.wake.extend(s.datagram.take());
                            }
                        }
                    }
                    SessionEvent::DatagramFailed { parent, code } => {
                        tracing::debug!(peer = %eid, stream = %parent, code, "reliable datagram failed");
                        if let Some(s) = p.streams.get_mut(&parent) {
                            s.datagrams_failed += 1;
                        }
                    }
                    SessionEvent::Writable(id) => {
                        if let Some(s) = p.streams.get_mut(&id) {
                            self.wake.extend(s.write.take());
                        }
                    }
                    SessionEvent::Reset { id, code } => {
                        if let Some(s) = p.streams.get_mut(&id) {
                            tracing::debug!(peer = %eid, stream = %id, code, "stream reset");
                            s.reset.get_or_insert(code);
                            s.wake_all(&mut self.wake);
                        }
                    }
                    SessionEvent::Link(status) => {
                        tracing::debug!(peer = %eid, ?status, "link status");
                        p.down_since = (status == LinkStatus::Down).then_some(now);
                        p.link.send_replace(status);
                    }
                }
            }
            if p.orphans > 0 {
                let session = &p.session;
                p.streams
                    .retain(|&id, s| !s.orphan || session.parent(id).is_ok());
                p.orphans = p.streams.values().filter(|s| s.orphan).count();
            }
        }
    }

    /// Wakes writers whose stream has room again (the session's `Writable` event only
    /// follows a refused write once the data is sent; room comes back when it is
    /// acknowledged, so the driver checks).
    fn check_writers(&mut self) {
        let peers = &mut self.peers;
        let wake = &mut self.wake;
        self.write_waiters.retain(|(eid, id)| {
            let Some(p) = peers.get_mut(eid) else {
                return false;
            };
            let Some(s) = p.streams.get_mut(id) else {
                return false;
            };
            let ready = s.write.is_none()
                || s.reset.is_some()
                || p.session.write_capacity(*id) > 0
                || p.session.parent(*id).is_err();
            if ready {
                wake.extend(s.write.take());
            }
            !ready
        });
    }
}

impl Peer {
    /// A channel attached the session. If the peer restarted, its old streams are gone
    /// (the session reset them): their handles are cut off and woken, to fail with
    /// [`Error::PeerRestarted`](crate::Error::PeerRestarted).
    fn on_attach(&mut self, attach: Attach, wake: &mut Vec<Waker>, next_epoch: &mut u64) {
        if attach != Attach::PeerRestarted {
            return;
        }
        tracing::info!(peer = %self.session.remote_eid(), "peer restarted: its old streams are gone");
        for slot in self.streams.values_mut() {
            slot.wake_all(wake);
        }
        self.streams.clear();
        self.orphans = 0;
        self.epoch = *next_epoch;
        *next_epoch += 1;
    }

    /// Resets an unclaimed stream (no handle will ever take it) and, in turn, the
    /// substreams queued for it.
    pub(crate) fn abandon(&mut self, id: StreamId, code: u64) {
        let mut work = vec![(id, code)];
        while let Some((id, code)) = work.pop() {
            let _ = self.session.reset(id, code);
            if let Some(slot) = self.streams.remove(&id) {
                work.extend(slot.subs.into_iter().map(|s| (s, ErrorCode::REFUSED)));
            }
        }
    }

    /// When an unused session may be forgotten: no channel, no stream, no handle, and down
    /// for the detached timeout.
    fn expiry(&self) -> Option<Instant> {
        if self.channels > 0 || !self.streams.is_empty() || self.session.stream_count() > 0 {
            return None;
        }
        // Kept as long as streams would wait for a channel, so that a quick reconnection
        // resumes the same session.
        self.down_since.map(|t| t + self.detached_timeout)
    }
}

/// Reads and discards what arrived on an orphaned stream, and refuses its substreams.
fn drain(session: &mut Session, id: StreamId, scratch: &mut Vec<u8>) {
    if scratch.len() < 64 * 1024 {
        scratch.resize(64 * 1024, 0);
    }
    while matches!(session.read(id, scratch), Ok(n) if n > 0) {}
    while let Ok(Some(_)) = session.read_datagram(id) {}
    while let Ok(Some(sub)) = session.accept_substream(id) {
        let _ = session.reset(sub, ErrorCode::REFUSED);
    }
}
