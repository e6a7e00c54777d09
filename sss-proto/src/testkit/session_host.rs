//! A simulated host running the stream layer: an endpoint, its channels, and one session per
//! peer that outlives the channels. This is the logic `sss-host` runs on real sockets, in
//! miniature, for simulator tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::channel::{Channel, ChannelEvent};
use crate::endpoint::{ChannelHandle, DatagramEvent, Endpoint, EndpointConfig};
use crate::handshake::RefuseCode;
use crate::identity::{Eid, Identity};
use crate::sim::Node;
use crate::stream::{SentFrame, Session, SessionConfig, SessionEvent, StreamError, StreamId};
use crate::{EcnCodepoint, Transmit};

use super::UNIX_NANOS;

/// A channel and the peer it belongs to.
pub struct ChannelSlot {
    /// The channel.
    pub channel: Channel<SentFrame>,
    /// The peer (its session is `sessions[&peer]`).
    pub peer: Eid,
}

/// A simulated host with sessions.
pub struct SessionHost {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Live channels.
    pub channels: BTreeMap<ChannelHandle, ChannelSlot>,
    /// Sessions by peer.
    pub sessions: BTreeMap<Eid, Session>,
    /// Stream-layer configuration for new sessions.
    pub session_config: Arc<SessionConfig>,
    /// (service, protocol) pairs this host accepts.
    pub listeners: Vec<(String, String)>,
    /// Every session event, in order, with its peer.
    pub events: Vec<(Eid, SessionEvent)>,
    /// Every channel event, with its peer.
    pub channel_events: Vec<(Eid, ChannelEvent)>,
    /// Whether the first channel of a new session sends early data (what is written before
    /// its initiation is first polled rides in it).
    pub early_data: bool,
    local: Eid,
    rng: ChaCha20Rng,
    out: Vec<(Vec<u8>, Transmit)>,
    rr: usize,
}

impl SessionHost {
    /// A host for `identity`.
    pub fn new(
        identity: &Identity,
        config: EndpointConfig,
        session_config: SessionConfig,
        now: Instant,
    ) -> Self {
        Self::with_unix_nanos(identity, config, session_config, now, UNIX_NANOS)
    }

    /// [`SessionHost::new`] whose wall clock reads `unix_nanos` at `now` (e.g. a host that
    /// restarted later than its peers started).
    pub fn with_unix_nanos(
        identity: &Identity,
        config: EndpointConfig,
        session_config: SessionConfig,
        now: Instant,
        unix_nanos: u64,
    ) -> Self {
        // A generator of its own for session ids, derived from the endpoint's seed.
        let mut seed = config.rng_seed;
        seed[31] ^= 0x5a;
        let rng = ChaCha20Rng::from_seed(seed);
        Self {
            endpoint: Endpoint::new(config, identity, now, unix_nanos),
            channels: BTreeMap::new(),
            sessions: BTreeMap::new(),
            session_config: Arc::new(session_config),
            listeners: Vec::new(),
            events: Vec::new(),
            channel_events: Vec::new(),
            early_data: false,
            local: identity.eid(),
            rng,
            out: Vec::new(),
            rr: 0,
        }
    }

    fn session(&mut self, peer: Eid) -> &mut Session {
        let (config, local) = (self.session_config.clone(), self.local);
        let id = self.rng.next_u64() | 1;
        self.sessions
            .entry(peer)
            .or_insert_with(|| Session::new(config, local, peer, id))
    }

    /// Whether a live (not closing) channel to `peer` exists.
    pub fn has_channel(&self, peer: Eid) -> bool {
        self.channels
            .values()
            .any(|c| c.peer == peer && !c.channel.is_closing())
    }

    /// Makes sure a channel to `peer` at `addr` exists or is being set up.
    pub fn ensure_channel(
        &mut self,
        now: Instant,
        peer: Eid,
        addr: SocketAddr,
        service: &str,
        protocol: &str,
    ) {
        if self.has_channel(peer) {
            return;
        }
        let early = self.early_data && self.session(peer).is_new();
        let layer = self.session(peer).layer_params();
        let (h, mut channel) = self
            .endpoint
            .connect_with(now, peer, addr, service, protocol, &layer)
            .expect("connect");
        channel.set_early_data(early);
        self.channels.insert(h, ChannelSlot { channel, peer });
    }

    /// Opens a top-level stream to `peer` (creating the channel if needed).
    pub fn open(
        &mut self,
        now: Instant,
        peer: Eid,
        addr: SocketAddr,
        service: &str,
        protocol: &str,
    ) -> Result<StreamId, StreamError> {
        self.ensure_channel(now, peer, addr, service, protocol);
        self.session(peer).open(service, protocol)
    }

    /// Closes every channel to `peer` but `newest`.
    fn supersede(&mut self, now: Instant, peer: Eid, newest: ChannelHandle) {
        let Some(session) = self.sessions.get_mut(&peer) else {
            return;
        };
        for (h, slot) in &mut self.channels {
            if *h != newest && slot.peer == peer && !slot.channel.is_closing() {
                slot.channel.close(now, 0, b"superseded", session);
            }
        }
    }

    /// Kills every channel to `peer` at once (as if the path died), without telling the peer.
    pub fn kill_channels(&mut self, now: Instant, peer: Eid) {
        let handles: Vec<ChannelHandle> = self
            .channels
            .iter()
            .filter(|(_, c)| c.peer == peer)
            .map(|(h, _)| *h)
            .collect();
        for h in handles {
            let mut slot = self.channels.remove(&h).expect("listed");
            let session = self.sessions.get_mut(&peer).expect("session");
            slot.channel.close(now, 0, b"killed", session);
            session.detach(now);
            self.endpoint.forget(h);
        }
    }

    /// Drains channel and session events, attaching and detaching sessions. The newest
    /// established channel to a peer carries its session: older ones are closed (their
    /// frames in flight are re-queued on the new one).
    fn collect(&mut self, now: Instant) {
        let mut closed = Vec::new();
        let mut connected = Vec::new();
        for (h, slot) in &mut self.channels {
            let Some(session) = self.sessions.get_mut(&slot.peer) else {
                continue;
            };
            while let Some(e) = slot.channel.poll_event() {
                match &e {
                    ChannelEvent::Connected => {
                        session.attach(now, slot.channel.peer_params());
                        connected.push((slot.peer, *h));
                    }
                    ChannelEvent::Closed(_) => closed.push((slot.peer, *h)),
                    _ => {}
                }
                self.channel_events.push((slot.peer, e));
            }
            if let Some((code, reason)) = session.take_violation() {
                slot.channel.close(now, code, reason.as_bytes(), session);
            }
            if slot.channel.is_established() && !slot.channel.is_closing() {
                session.update_link(slot.channel.pto_count(), slot.channel.rtt().smoothed());
            }
            if slot.channel.is_closed() && !closed.iter().any(|(_, c)| c == h) {
                closed.push((slot.peer, *h));
            }
        }
        for (peer, newest) in connected {
            self.supersede(now, peer, newest);
        }
        for (peer, h) in closed {
            if self.channels.get(&h).is_some_and(|s| s.channel.is_closed()) {
                self.channels.remove(&h);
                self.endpoint.forget(h);
            }
            let live = self
                .channels
                .values()
                .any(|c| c.peer == peer && c.channel.is_established() && !c.channel.is_closing());
            if !live {
                if let Some(session) = self.sessions.get_mut(&peer) {
                    session.detach(now);
                }
            }
        }
        let listeners = self.listeners.clone();
        for (peer, session) in &mut self.sessions {
            while let Some(e) = session.poll_event() {
                if let SessionEvent::IncomingStream {
                    id,
                    service,
                    protocol,
                } = &e
                {
                    if listeners.iter().any(|(s, p)| s == service && p == protocol) {
                        session.accept(*id).ok();
                    } else {
                        session
                            .reset(*id, crate::stream::ErrorCode::UNKNOWN_SERVICE)
                            .ok();
                    }
                }
                self.events.push((*peer, e));
            }
        }
    }
}

impl Node for SessionHost {
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) {
        self.handle_datagram_with_ecn(now, local, from, None, data);
    }

    fn handle_datagram_with_ecn(
        &mut self,
        now: Instant,
        _local: SocketAddr,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
    ) {
        let mut buf = Vec::new();
        match self.endpoint.handle(now, from, data, &mut buf) {
            Some(DatagramEvent::Channel(h)) => {
                if let Some(slot) = self.channels.get_mut(&h) {
                    if let Some(session) = self.sessions.get_mut(&slot.peer) {
                        slot.channel
                            .handle_datagram_with_ecn(now, from, ecn, data, session);
                    }
                }
            }
            Some(DatagramEvent::Incoming(incoming)) => {
                let wanted = (
                    incoming.service().to_owned(),
                    incoming.protocol().to_owned(),
                );
                if self.listeners.contains(&wanted) {
                    let peer = incoming.remote_eid();
                    let layer = self.session(peer).layer_params();
                    if let Ok((h, channel)) = self.endpoint.accept_with(now, incoming, &layer) {
                        self.channels.insert(h, ChannelSlot { channel, peer });
                        // The responder is established at once.
                        let session = self.sessions.get_mut(&peer).expect("created");
                        let params = *self.channels[&h].channel.peer_params();
                        session.attach(now, &params);
                        self.supersede(now, peer, h);
                    }
                } else if let Some(t) = self.endpoint.refuse(
                    incoming,
                    RefuseCode::UNKNOWN_SERVICE,
                    "no such service",
                    &mut buf,
                ) {
                    self.out.push((buf[..t.size].to_vec(), t));
                }
            }
            Some(DatagramEvent::Respond(t)) => self.out.push((buf[..t.size].to_vec(), t)),
            None => {}
        }
        self.collect(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((bytes, t)) = self.out.pop() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Some(t);
        }
        let handles: Vec<ChannelHandle> = self.channels.keys().copied().collect();
        let n = handles.len();
        for i in 0..n {
            let h = handles[(self.rr + i) % n];
            let slot = self.channels.get_mut(&h).expect("listed");
            let session = self.sessions.get_mut(&slot.peer).expect("session");
            if let Some(t) = slot.channel.poll_transmit(now, 64, buf, session) {
                self.rr = (self.rr + i + 1) % n.max(1);
                self.collect(now);
                return Some(t);
            }
        }
        self.collect(now);
        None
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let c = self
            .channels
            .values()
            .filter_map(|s| s.channel.poll_timeout());
        let s = self.sessions.values().filter_map(|s| s.poll_timeout());
        c.chain(s).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        for slot in self.channels.values_mut() {
            if slot.channel.poll_timeout().is_some_and(|t| t <= now) {
                if let Some(session) = self.sessions.get_mut(&slot.peer) {
                    slot.channel.handle_timeout(now, session);
                }
            }
        }
        for session in self.sessions.values_mut() {
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
        }
        self.collect(now);
    }
}

/// Two [`SessionHost`]s on a simulated network, A at [`addr(1)`](super::addr) and B at
/// `addr(2)` joined by one link, B listening on one (service, protocol): the set-up of the
/// stream-layer simulator tests.
pub struct SessionPair {
    /// The network; node `a` dials, node `b` listens.
    pub net: crate::sim::Network<SessionHost>,
    /// The dialling host.
    pub a: crate::sim::NodeId,
    /// The listening host.
    pub b: crate::sim::NodeId,
    /// A's EID.
    pub a_eid: Eid,
    /// B's EID.
    pub b_eid: Eid,
}

impl std::fmt::Debug for SessionPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPair")
            .field("a_eid", &self.a_eid)
            .field("b_eid", &self.b_eid)
            .finish_non_exhaustive()
    }
}

impl SessionPair {
    /// Builds the pair from `seed` (identities, endpoint secrets, the network's randomness),
    /// the link between them, both hosts' session and channel configurations, and the
    /// (service, protocol) B listens on.
    pub fn new(
        seed: u64,
        link: crate::sim::LinkConfig,
        session: SessionConfig,
        channel: crate::ChannelConfig,
        service: (&str, &str),
    ) -> Self {
        let start = Instant::now();
        let mut net = crate::sim::Network::new(seed, start);
        let (ida, idb) = (super::identity(seed * 2 + 1), super::identity(seed * 2 + 2));
        let mut ca = EndpointConfig::new([seed as u8; 32]);
        let mut cb = EndpointConfig::new([seed as u8 ^ 0xff; 32]);
        let channel = Arc::new(channel);
        ca.channel = Arc::clone(&channel);
        cb.channel = channel;
        let ha = SessionHost::new(&ida, ca, session.clone(), start);
        let mut hb = SessionHost::new(&idb, cb, session, start);
        hb.listeners.push((service.0.into(), service.1.into()));
        let a = net.add_node(super::addr(1), ha);
        let b = net.add_node(super::addr(2), hb);
        net.connect(super::addr(1), super::addr(2), link);
        Self {
            net,
            a,
            b,
            a_eid: ida.eid(),
            b_eid: idb.eid(),
        }
    }
}
