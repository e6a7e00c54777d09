//! The endpoint: one host's handshake responder and the table that routes datagrams to
//! channels by the receiver index in their header.
//!
//! The endpoint owns no channels: like quinn-proto's `Endpoint`, it hands each new
//! [`Channel`] to the driver and afterwards only says which channel a datagram is for
//! ([`DatagramEvent::Channel`]). Packets are routed by index, not by source address, so a
//! peer that moves keeps its channel.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::channel::{Channel, ChannelConfig, InitiatorSetup, ResponderSetup};
use crate::crypto::aead::Suite;
use crate::crypto::noise::DhKey;
use crate::handshake::{
    self, Hello, Initiation, Initiator, PendingInitiation, RefuseCode, Reply, Responder,
    ResponderConfig, StaticKeys, TransportParams,
};
use crate::identity::{Eid, Identity};
use crate::packet::{self, PacketKind};
use crate::Transmit;

/// Identifies a channel of this endpoint (an index into the driver's channel table).
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash, Ord, PartialOrd)]
pub struct ChannelHandle(pub usize);

/// Configuration of an endpoint.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Configuration given to every channel.
    pub channel: Arc<ChannelConfig>,
    /// Handshake responder settings.
    pub responder: ResponderConfig,
    /// Initiations handled per second before the responder requires a cookie round trip
    /// (it is then "under load"). 0 makes every initiation pay the round trip.
    pub cookie_threshold: u32,
    /// Seed of the endpoint's random generator (ephemeral keys, indices, cookies). A host
    /// fills it from the operating system; tests fix it.
    pub rng_seed: [u8; 32],
    /// Whether early data in initiations is taken (`spec/handshake.md` §3.4, §9). When
    /// `false` it is ignored and the initiator re-sends it after the handshake.
    pub accept_early_data: bool,
}

impl EndpointConfig {
    /// A configuration with default settings and the given random seed.
    pub fn new(rng_seed: [u8; 32]) -> Self {
        Self {
            channel: Arc::new(ChannelConfig::default()),
            responder: ResponderConfig::default(),
            cookie_threshold: 1000,
            rng_seed,
            accept_early_data: true,
        }
    }
}

/// The stream layer's part of the handshake: its session id and the limits it grants.
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub struct LayerParams {
    /// The local session id for this peer (0: no stream layer).
    pub session_id: u64,
    /// Initial receive window of each stream.
    pub initial_max_stream_data: u64,
    /// Initial receive window of the session.
    pub initial_max_data: u64,
    /// Initial number of streams the peer may open.
    pub initial_max_streams: u64,
    /// The largest datagram (best-effort or reliable) accepted from the peer.
    pub max_datagram_size: u64,
}

impl Default for LayerParams {
    fn default() -> Self {
        let d = TransportParams::default();
        Self {
            session_id: 0,
            initial_max_stream_data: d.initial_max_stream_data,
            initial_max_data: d.initial_max_data,
            initial_max_streams: d.initial_max_streams,
            max_datagram_size: d.max_datagram_size,
        }
    }
}

/// What a datagram means to the endpoint.
#[derive(Debug)]
#[must_use]
pub enum DatagramEvent {
    /// Pass the datagram to this channel's [`Channel::handle_datagram`].
    Channel(ChannelHandle),
    /// A valid handshake initiation: accept or refuse it.
    Incoming(Box<Incoming>),
    /// Send this reply (written into the buffer given to [`Endpoint::handle`]), e.g. a
    /// cookie reply to an initiation that arrived under load.
    Respond(Transmit),
}

/// An authenticated handshake initiation waiting for the application's decision.
#[derive(Debug)]
pub struct Incoming {
    pending: PendingInitiation,
    from: SocketAddr,
    len: usize,
}

impl Incoming {
    /// The initiator's identity (authenticated by the handshake).
    pub fn remote_eid(&self) -> Eid {
        self.pending.remote()
    }

    /// Where the initiation came from.
    pub fn remote_address(&self) -> SocketAddr {
        self.from
    }

    /// The requested service.
    pub fn service(&self) -> &str {
        &self.pending.hello().service
    }

    /// The requested protocol.
    pub fn protocol(&self) -> &str {
        &self.pending.hello().protocol
    }

    /// The initiator's transport parameters.
    pub fn params(&self) -> &TransportParams {
        &self.pending.hello().params
    }

    /// The early data the accepted channel will take as the initiator's packet 0 (empty if
    /// there was none, or if it was declined: see [`Endpoint::early_data_declined`]).
    pub fn early_data(&self) -> &[u8] {
        self.pending.early_data()
    }
}

/// Why a connection attempt could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A host cannot open a channel to itself.
    #[error("cannot connect to our own EID")]
    SelfConnect,
    /// The service or protocol name is empty or longer than 255 bytes.
    #[error("service and protocol names must be 1 to 255 bytes")]
    BadName,
    /// The handshake message could not be built.
    #[error("handshake: {0}")]
    Handshake(#[from] handshake::HandshakeError),
}

/// Why an incoming handshake could not be accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The hosts share no AEAD suite. (The endpoint refuses such initiations itself, so
    /// this happens only if the configuration changed in between.)
    #[error("no common cipher suite")]
    NoCommonSuite,
    /// The response could not be built.
    #[error("handshake: {0}")]
    Handshake(#[from] handshake::HandshakeError),
}

/// Hasher of the routing table, which is looked up for every datagram received. Its keys,
/// the receiver indices, are drawn uniformly by this endpoint from its CSPRNG and never
/// chosen by a peer, so a multiplicative mix spreads them as well as SipHash does (nobody
/// can make them collide), at a fraction of the cost.
#[derive(Debug, Default, Clone, Copy)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A host's endpoint.
pub struct Endpoint {
    config: EndpointConfig,
    statics: Arc<StaticKeys>,
    responder: Responder,
    rng: ChaCha20Rng,
    routes: HashMap<u32, ChannelHandle, BuildHasherDefault<IndexHasher>>,
    /// Index of each live handle, `None` for free slots.
    handles: Vec<Option<u32>>,
    free: Vec<usize>,
    unix_at_creation: (Instant, u64),
    load_window: (Instant, u32),
    /// The ephemeral key pair of the next handshake, initiated or answered, made ahead of
    /// time (see [`Endpoint::prepare`]).
    next_ephemeral: Option<DhKey>,
    /// Initiations whose early data was ignored.
    early_declined: u64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("eid", &self.statics.eid())
            .field("channels", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Creates an endpoint for `identity`. `unix_nanos` is the wall-clock time at `now`
    /// (nanoseconds since the Unix epoch), used for replay-proof handshake timestamps.
    pub fn new(config: EndpointConfig, identity: &Identity, now: Instant, unix_nanos: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(config.rng_seed);
        let statics = StaticKeys::new(identity);
        let responder = Responder::new(statics.clone(), config.responder, now, &mut rng);
        Self {
            statics: Arc::new(statics),
            responder,
            rng,
            routes: HashMap::default(),
            handles: Vec::new(),
            free: Vec::new(),
            unix_at_creation: (now, unix_nanos),
            load_window: (now, 0),
            next_ephemeral: None,
            early_declined: 0,
            config,
        }
        .prepared()
    }

    fn prepared(mut self) -> Self {
        self.prepare();
        self
    }

    /// Makes the ephemeral key pair of the next handshake now, if it is not made yet, so
    /// that the handshake does not wait for its fixed-base scalar multiplication. The
    /// endpoint does it when created; afterwards each handshake uses the one made before
    /// and the next is made inline unless this is called in between (a driver calls it
    /// when idle). Cheap when there is one already.
    pub fn prepare(&mut self) {
        if self.next_ephemeral.is_none() {
            self.next_ephemeral = Some(DhKey::generate(&mut self.rng));
        }
    }

    /// Whether [`Endpoint::prepare`] has work to do.
    pub fn needs_prepare(&self) -> bool {
        self.next_ephemeral.is_none()
    }

    fn take_ephemeral(&mut self) -> DhKey {
        match self.next_ephemeral.take() {
            Some(key) => key,
            None => DhKey::generate(&mut self.rng),
        }
    }

    /// This host's EID.
    pub fn eid(&self) -> Eid {
        self.statics.eid()
    }

    /// The endpoint's configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Number of live channels.
    pub fn channel_count(&self) -> usize {
        self.routes.len()
    }

    /// How many authenticated initiations had early data that this endpoint ignored: made
    /// before the endpoint was created (possibly replayed across a restart), or with
    /// [`EndpointConfig::accept_early_data`] off. Their initiators re-send it.
    pub fn early_data_declined(&self) -> u64 {
        self.early_declined
    }

    fn unix_nanos(&self, now: Instant) -> u64 {
        let (at, unix) = self.unix_at_creation;
        let elapsed = now.saturating_duration_since(at).as_nanos();
        unix.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    fn allocate(&mut self) -> (ChannelHandle, u32) {
        let index = loop {
            let i = self.rng.next_u32();
            if i != 0 && !self.routes.contains_key(&i) {
                break i;
            }
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.handles.push(None);
                self.handles.len() - 1
            }
        };
        self.handles[slot] = Some(index);
        let handle = ChannelHandle(slot);
        self.routes.insert(index, handle);
        (handle, index)
    }

    fn channel_rng(&mut self) -> ChaCha20Rng {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        ChaCha20Rng::from_seed(seed)
    }

    fn local_params(&self, layer: &LayerParams) -> TransportParams {
        let c = &self.config.channel;
        TransportParams {
            session_id: layer.session_id,
            initial_max_stream_data: layer.initial_max_stream_data,
            initial_max_data: layer.initial_max_data,
            initial_max_streams: layer.initial_max_streams,
            max_datagram_size: layer.max_datagram_size,
            suites: c.suites,
            max_udp_payload: c.max_udp_payload,
            idle_timeout_ms: u32::try_from(c.idle_timeout.as_millis()).unwrap_or(u32::MAX),
            max_ack_delay_ms: u16::try_from(c.max_ack_delay.as_millis()).unwrap_or(u16::MAX),
        }
    }

    /// Starts a handshake with `remote` at `addr` for (`service`, `protocol`) with no stream
    /// layer parameters (see [`connect_with`](Self::connect_with)). The returned channel sends
    /// the initiation on its first `poll_transmit`.
    pub fn connect<M>(
        &mut self,
        now: Instant,
        remote: Eid,
        addr: SocketAddr,
        service: &str,
        protocol: &str,
    ) -> Result<(ChannelHandle, Channel<M>), ConnectError> {
        self.connect_with(
            now,
            remote,
            addr,
            service,
            protocol,
            &LayerParams::default(),
        )
    }

    /// Starts a handshake carrying the stream layer's session id and initial limits. The
    /// initiation is written when the channel is first polled; with
    /// [`Channel::set_early_data`] it carries the upper layer's first frames.
    pub fn connect_with<M>(
        &mut self,
        now: Instant,
        remote: Eid,
        addr: SocketAddr,
        service: &str,
        protocol: &str,
        layer: &LayerParams,
    ) -> Result<(ChannelHandle, Channel<M>), ConnectError> {
        if remote == self.eid() {
            return Err(ConnectError::SelfConnect);
        }
        let name_ok = |s: &str| (1..=255).contains(&s.len());
        if !name_ok(service) || !name_ok(protocol) {
            return Err(ConnectError::BadName);
        }
        let hello = Hello {
            service: service.to_owned(),
            protocol: protocol.to_owned(),
            params: self.local_params(layer),
        };
        let (handle, index) = self.allocate();
        let unix = self.unix_nanos(now);
        let ephemeral = self.take_ephemeral();
        let initiator =
            match Initiator::prepare(&self.statics, remote, index, &hello, unix, ephemeral) {
                Ok(i) => i,
                Err(e) => {
                    self.forget(handle);
                    return Err(e.into());
                }
            };
        let rng = self.channel_rng();
        let setup = InitiatorSetup {
            local_index: index,
            remote_eid: remote,
            remote: addr,
            statics: self.statics.clone(),
            initiator,
            service: hello.service,
            protocol: hello.protocol,
        };
        let channel = Channel::new_initiator(self.config.channel.clone(), setup, now, unix, rng);
        Ok((handle, channel))
    }

    fn under_load(&mut self, now: Instant) -> bool {
        let (start, count) = &mut self.load_window;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count > self.config.cookie_threshold
    }

    /// Classifies a datagram from `from`. Handshake replies (cookie replies) are written
    /// into `buf`. Datagrams that are malformed, unauthenticated, replayed or for unknown
    /// channels yield `None` and change nothing.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        match packet::classify(data)? {
            PacketKind::Data => {
                let (header, _) = packet::DataHeader::parse(data).ok()?;
                self.routes
                    .get(&header.receiver_index)
                    .copied()
                    .map(DatagramEvent::Channel)
            }
            PacketKind::Response | PacketKind::CookieReply => {
                let index = handshake::receiver_index(data)?;
                self.routes.get(&index).copied().map(DatagramEvent::Channel)
            }
            PacketKind::Initiation => {
                let under_load = self.under_load(now);
                buf.clear();
                match self.responder.handle_initiation(
                    now,
                    from,
                    data,
                    under_load,
                    &mut self.rng,
                    buf,
                ) {
                    Ok(Initiation::CookieSent) => Some(DatagramEvent::Respond(Transmit {
                        destination: from,
                        size: buf.len(),
                        segment_size: None,
                        ecn: None,
                        src_ip: None,
                    })),
                    Ok(Initiation::Valid(mut pending)) => {
                        // Early data is taken only from initiations made after this
                        // endpoint started: the replay table cannot vouch for older ones
                        // (it was empty then). spec/handshake.md §9.
                        let fresh = pending.timestamp().unix_nanos() > self.unix_at_creation.1;
                        let take = fresh && self.config.accept_early_data;
                        if !take && !pending.early_data().is_empty() {
                            pending.take_early_data();
                            self.early_declined += 1;
                        }
                        let ours = self.config.channel.suites;
                        if Suite::negotiate(ours, pending.hello().params.suites).is_none() {
                            // Nothing the application could accept: refuse at once.
                            let reply = Reply::Refuse {
                                code: RefuseCode::REFUSED,
                                reason: "no common cipher suite".into(),
                            };
                            buf.clear();
                            self.responder
                                .respond(pending, 0, &reply, &mut self.rng, buf)
                                .ok()?;
                            return Some(DatagramEvent::Respond(Transmit {
                                destination: from,
                                size: buf.len(),
                                segment_size: None,
                                ecn: None,
                                src_ip: None,
                            }));
                        }
                        Some(DatagramEvent::Incoming(Box::new(Incoming {
                            pending,
                            from,
                            len: data.len(),
                        })))
                    }
                    Err(e) => {
                        tracing::debug!(%from, error = %e, "dropping handshake initiation");
                        None
                    }
                }
            }
            PacketKind::Routing(_) | PacketKind::Unknown(_) => None,
        }
    }

    /// Accepts an incoming handshake with no stream layer parameters (see
    /// [`accept_with`](Self::accept_with)): the returned channel sends the response on its
    /// first `poll_transmit` and is established at once.
    pub fn accept<M>(
        &mut self,
        now: Instant,
        incoming: Box<Incoming>,
    ) -> Result<(ChannelHandle, Channel<M>), AcceptError> {
        self.accept_with(now, incoming, &LayerParams::default())
    }

    /// Accepts an incoming handshake, answering with the stream layer's session id and
    /// initial limits.
    pub fn accept_with<M>(
        &mut self,
        now: Instant,
        incoming: Box<Incoming>,
        layer: &LayerParams,
    ) -> Result<(ChannelHandle, Channel<M>), AcceptError> {
        let ours = self.config.channel.suites;
        let suite =
            Suite::negotiate(ours, incoming.params().suites).ok_or(AcceptError::NoCommonSuite)?;
        let (handle, index) = self.allocate();
        let params = self.local_params(layer);
        let peer_params = *incoming.params();
        let remote_eid = incoming.remote_eid();
        let remote_index = incoming.pending.initiator_index();
        let service = incoming.service().to_owned();
        let protocol = incoming.protocol().to_owned();
        let reply = Reply::Accept { suite, params };
        let mut response = Vec::with_capacity(128);
        let ephemeral = self.take_ephemeral();
        let mut pending = incoming.pending;
        let early = pending.take_early_data();
        let keys = match self.responder.respond_with_ephemeral(
            pending,
            index,
            &reply,
            ephemeral,
            &mut response,
        ) {
            Ok(Some(keys)) => keys,
            Ok(None) => unreachable!("an accepting reply yields keys"),
            Err(e) => {
                self.forget(handle);
                return Err(e.into());
            }
        };
        let unix = self.unix_nanos(now);
        let rng = self.channel_rng();
        let setup = ResponderSetup {
            local_index: index,
            remote_index,
            remote_eid,
            remote: incoming.from,
            keys,
            suite,
            peer_params,
            response,
            initiation_len: incoming.len,
            early,
            service,
            protocol,
        };
        let channel = Channel::new_responder(self.config.channel.clone(), setup, now, unix, rng);
        Ok((handle, channel))
    }

    /// Refuses an incoming handshake with a code and reason the initiator will see. The
    /// response is written into `buf`.
    pub fn refuse(
        &mut self,
        incoming: Box<Incoming>,
        code: RefuseCode,
        reason: &str,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let from = incoming.from;
        let reply = Reply::Refuse {
            code,
            reason: truncate_utf8(reason, 255).to_owned(),
        };
        buf.clear();
        self.responder
            .respond(incoming.pending, 0, &reply, &mut self.rng, buf)
            .ok()?;
        Some(Transmit {
            destination: from,
            size: buf.len(),
            segment_size: None,
            ecn: None,
            src_ip: None,
        })
    }

    /// Releases a channel's index once the channel is closed; later packets for it are
    /// dropped.
    pub fn forget(&mut self, handle: ChannelHandle) {
        if let Some(Some(index)) = self.handles.get(handle.0).copied() {
            self.routes.remove(&index);
            self.handles[handle.0] = None;
            self.free.push(handle.0);
        }
    }
}

/// The longest prefix of `s` that fits in `max` bytes without splitting a character.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn endpoint(seed: u8, now: Instant) -> Endpoint {
        let identity = Identity::generate(&mut ChaCha20Rng::seed_from_u64(u64::from(seed)));
        Endpoint::new(EndpointConfig::new([seed; 32]), &identity, now, 1 << 60)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The initiation's ephemeral public key (bytes 8..40).
    fn ephemeral_of(channel: &mut Channel<()>, now: Instant) -> [u8; 32] {
        let mut buf = Vec::new();
        let t = channel
            .poll_transmit(now, 1, &mut buf, &mut ())
            .expect("initiation");
        assert_eq!(t.size, handshake::INITIATION_LEN);
        buf[8..40].try_into().unwrap()
    }

    #[test]
    fn each_handshake_uses_its_own_ephemeral_made_ahead_of_time() {
        let now = Instant::now();
        let mut a = endpoint(1, now);
        let b = endpoint(2, now);
        assert!(!a.needs_prepare(), "made when the endpoint is created");
        let (_, mut first) = a
            .connect::<()>(now, b.eid(), addr(2), "s", "p")
            .expect("connect");
        assert!(a.needs_prepare(), "the first handshake used it");
        a.prepare();
        assert!(!a.needs_prepare());
        let (_, mut second) = a
            .connect::<()>(now, b.eid(), addr(2), "s", "p")
            .expect("connect");
        // Without a prepare in between, the next one is made inline.
        let (_, mut third) = a
            .connect::<()>(now, b.eid(), addr(2), "s", "p")
            .expect("connect");
        let keys = [
            ephemeral_of(&mut first, now),
            ephemeral_of(&mut second, now),
            ephemeral_of(&mut third, now),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_ne!(keys[0], keys[2]);
    }
}
