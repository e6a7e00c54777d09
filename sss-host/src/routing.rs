//! Dial by EID: the host's regserver clients and hole punching (spec/routing.md §5.4).
//!
//! The host runs one [`sss_routing::Client`] per configured regserver inside its driver:
//! routing datagrams (first byte `0x10`-`0x1f`) from a regserver's address go to that
//! server's client, anything else in that range (a peer's PUNCH probe, strays) is dropped;
//! the clients' timers join the driver's timer and their datagrams leave through the host's
//! socket. Lookups ask every regserver and the first found record wins. A NOTIFY (someone
//! dials us by EID) makes the host send PUNCH probes to each of the caller's endpoints, on
//! the [`PUNCH_SCHEDULE`], so that our NAT opens a mapping toward the caller and the caller's
//! handshake initiations get through.
//!
//! When no direct path works, the regserver relays (spec/routing.md §6.3): each relay slot
//! the host knows gets a synthetic remote address in the discard-only prefix `100::/64`
//! ([`relay_addr`]); RELAY_DATA from the regserver is unwrapped and handed to the endpoint as
//! coming from that address, and whatever the host sends there leaves wrapped in RELAY_DATA
//! to the regserver, so channels never know.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;
use sss_proto::{Eid, Identity, Transmit};
use sss_routing::client::LookupError;
use sss_routing::record::MAX_REPORTED;
use sss_routing::wire::{relay_data, relay_header, ErrorCode, Message, Punch, RELAY_HEADER_LEN};
use sss_routing::{Client, ClientConfig, Event, LookupOutcome, RelayOutcome};
use tokio::sync::watch;

use crate::config::RoutingConfig;
use crate::error::Error;
use crate::udp::canonical_addr;

/// When the PUNCH probes to each endpoint of a caller go, counted from the NOTIFY that asked
/// for them. The first goes at once and races the caller's initiation: if it reaches the
/// caller's NAT before the initiation left, that NAT drops it, and so does ours the
/// initiation. The next ones follow soon: by then the caller's NAT lets them in, and the
/// caller, on receiving one, sends its initiation again at once
/// (`Channel::retry_handshake_now`), which our NAT now lets in. The last covers a slow path.
pub const PUNCH_SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];
/// PUNCH probes sent to each endpoint of a caller that asked us to punch.
pub const PUNCH_PROBES: u32 = PUNCH_SCHEDULE.len() as u32;
/// Most callers punched toward at once; NOTIFYs beyond are ignored (the caller's
/// initiations may still get through once a burst ends and it retries).
pub const MAX_PUNCH_PEERS: usize = 64;
/// Most endpoints probed per caller (NOTIFYs for one caller from several regservers are
/// merged up to this many).
pub const MAX_PUNCH_ENDPOINTS: usize = 16;

/// Most relays a host knows at once (as caller or target); further RELAY_OPENED are
/// ignored until some go idle.
pub const MAX_HOST_RELAYS: usize = 64;

/// The first five 16-bit groups of a relay's synthetic address: `100::/64` (RFC 6666,
/// discard-only: never a real peer) with `5353` ("SS") in the fifth group.
const RELAY_PREFIX: [u16; 5] = [0x100, 0, 0, 0, 0x5353];
/// The port of every synthetic relay address (discard).
const RELAY_PORT: u16 = 9;

/// The synthetic remote address of relay `relay_id` through the host's `server`-th regserver.
pub(crate) fn relay_addr(server: u16, relay_id: u32) -> SocketAddr {
    let [p0, p1, p2, p3, p4] = RELAY_PREFIX;
    let ip = Ipv6Addr::new(
        p0,
        p1,
        p2,
        p3,
        p4,
        server,
        (relay_id >> 16) as u16,
        relay_id as u16,
    );
    SocketAddr::new(ip.into(), RELAY_PORT)
}

/// Whether `addr` is a synthetic relay address (whether or not a relay stands behind it).
pub fn is_relay_addr(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(a) => a.ip().segments()[..5] == RELAY_PREFIX && a.port() == RELAY_PORT,
        SocketAddr::V4(_) => false,
    }
}

/// Why a relay could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayFailure {
    /// No regserver we are registered with.
    NoServer,
    /// The regserver refused.
    Refused(ErrorCode),
    /// No answer in time.
    TimedOut,
    /// The host knows too many relays.
    Full,
}

/// The result of a relay request, once decided: the synthetic address to connect to.
pub(crate) type RelayResult = Option<Result<SocketAddr, RelayFailure>>;

/// A relay request waited for: the regservers asked so far (by index), in order.
struct RelayWait {
    result: watch::Sender<RelayResult>,
    asked: Vec<usize>,
}

/// A relay slot the host knows.
struct Relay {
    /// The regserver's address.
    server: SocketAddr,
    relay_id: u32,
    peer: Eid,
    idle: Duration,
    /// Last datagram sent or received through it.
    last: Instant,
}

/// Where this host stands with one regserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegserverStatus {
    /// The regserver's EID.
    pub eid: Eid,
    /// Its address.
    pub addr: SocketAddr,
    /// Our endpoint as this regserver observed it, once it stored our record.
    pub registered_as: Option<SocketAddr>,
}

/// How a host-level lookup ended without endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupFailure {
    NotFound,
    TimedOut,
    Refused,
}

impl LookupFailure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Self::NotFound => Error::PeerNotFound,
            Self::TimedOut => Error::LookupTimedOut,
            Self::Refused => Error::LookupRefused,
        }
    }
}

/// The result of a host-level lookup, once decided.
pub(crate) type LookupResult = Option<Result<Vec<SocketAddr>, LookupFailure>>;

/// One regserver and its client.
struct Regserver {
    eid: Eid,
    addr: SocketAddr,
    client: Client,
}

/// A lookup of one EID in every regserver, waited for by `Host::lookup` calls.
struct HostLookup {
    /// Regservers whose answer is still to come.
    remaining: usize,
    not_found: bool,
    refused: bool,
    result: watch::Sender<LookupResult>,
}

/// Probes still to send toward one caller.
struct PunchBurst {
    endpoints: Vec<SocketAddr>,
    /// When the NOTIFY came: [`PUNCH_SCHEDULE`] counts from here.
    started: Instant,
    /// Probes sent to each endpoint so far.
    sent: usize,
    next: Instant,
}

/// The host's routing state (inside the host's [`State`](crate::state::State)).
pub(crate) struct Routing {
    identity: Identity,
    config: RoutingConfig,
    local_addr: SocketAddr,
    servers: Vec<Regserver>,
    lookups: HashMap<Eid, HostLookup>,
    punches: HashMap<Eid, PunchBurst>,
    status: watch::Sender<Vec<RegserverStatus>>,
    buf: Vec<u8>,
    /// Relays by synthetic address.
    relays: HashMap<SocketAddr, Relay>,
    /// Relay requests waited for, by peer.
    relay_waits: HashMap<Eid, RelayWait>,
    /// Datagrams wrapped into RELAY_DATA and unwrapped from it (sent, received).
    relayed: (u64, u64),
    /// When the reported endpoints are computed again (a host bound to a wildcard address
    /// with regservers: its interfaces may change, a laptop joining another network).
    next_interface_check: Option<Instant>,
}

/// How often a host bound to `0.0.0.0`/`[::]` computes its reported endpoints again; a change
/// re-registers at once with every regserver.
pub const INTERFACE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

impl Routing {
    pub(crate) fn new(identity: &Identity, config: RoutingConfig, local_addr: SocketAddr) -> Self {
        Self {
            identity: Identity::from_secret_bytes(&identity.secret_bytes()),
            config,
            local_addr,
            servers: Vec::new(),
            lookups: HashMap::new(),
            punches: HashMap::new(),
            status: watch::Sender::new(Vec::new()),
            buf: Vec::new(),
            relays: HashMap::new(),
            relay_waits: HashMap::new(),
            relayed: (0, 0),
            next_interface_check: None,
        }
    }

    /// Adds a regserver (a second one at the same address is ignored) and starts
    /// registering with it.
    pub(crate) fn add(&mut self, now: Instant, eid: Eid, addr: SocketAddr, rng: &mut ChaCha20Rng) {
        let addr = canonical_addr(addr);
        if self.servers.iter().any(|s| s.addr == addr) {
            return;
        }
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        // Wall-clock microseconds: a restarted host continues above its old records.
        let first_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut config = ClientConfig::new(addr, eid, first_seq, seed);
        config.lifetime = self.config.lifetime;
        config.keepalive_interval = self.config.keepalive_interval;
        config.lookup_timeout = self.config.lookup_timeout;
        let identity = Identity::from_secret_bytes(&self.identity.secret_bytes());
        let mut client = Client::new(config, identity);
        client.register(now);
        tracing::info!(regserver = %eid, %addr, "registering");
        self.servers.push(Regserver { eid, addr, client });
        // What we report depends on the servers (the interface toward each of them).
        let reported = reported_endpoints(self.local_addr, self.servers.iter().map(|s| s.addr));
        self.set_reported(now, reported);
        if self.local_addr.ip().is_unspecified() {
            self.next_interface_check = Some(now + INTERFACE_CHECK_INTERVAL);
        }
        self.update_status();
    }

    /// Registers `reported` as our endpoints with every regserver that has others.
    fn set_reported(&mut self, now: Instant, reported: Vec<SocketAddr>) {
        for s in &mut self.servers {
            if s.client.config().reported != reported {
                tracing::info!(regserver = %s.addr, endpoints = ?reported, "reporting endpoints");
                s.client.set_reported_endpoints(now, reported.clone());
            }
        }
    }

    /// The periodic check of a wildcard-bound host's interfaces: `reported` is what it
    /// finds now ([`reported_endpoints`]); a change re-registers with the regservers.
    fn interface_check(&mut self, now: Instant, reported: Vec<SocketAddr>) {
        self.next_interface_check = Some(now + INTERFACE_CHECK_INTERVAL);
        self.set_reported(now, reported);
    }

    /// The host's socket address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our public IPs as the regservers observed them.
    pub(crate) fn observed_ips(&self) -> Vec<IpAddr> {
        self.servers
            .iter()
            .filter_map(|s| s.client.registered_as().map(|a| a.ip()))
            .collect()
    }

    /// Whether any regserver is configured.
    pub(crate) fn has_servers(&self) -> bool {
        !self.servers.is_empty()
    }

    /// The registration status watch.
    pub(crate) fn status(&self) -> watch::Receiver<Vec<RegserverStatus>> {
        self.status.subscribe()
    }

    /// Starts (or joins) a lookup of `peer` in every regserver; with `notify`, the servers
    /// we are registered with are asked to tell the peer to punch toward us.
    pub(crate) fn lookup(
        &mut self,
        now: Instant,
        peer: Eid,
        notify: bool,
    ) -> Result<watch::Receiver<LookupResult>, Error> {
        if self.servers.is_empty() {
            return Err(Error::NoRegserver);
        }
        if let Some(l) = self.lookups.get(&peer) {
            let rx = l.result.subscribe();
            if notify {
                // Joins the pending lookups, which then ask for a NOTIFY too.
                for s in &mut self.servers {
                    if s.client.registered_as().is_some() {
                        let _ = s.client.lookup(now, peer, true);
                    }
                }
            }
            return Ok(rx);
        }
        let mut lookup = HostLookup {
            remaining: self.servers.len(),
            not_found: false,
            refused: false,
            result: watch::Sender::new(None),
        };
        for s in &mut self.servers {
            let notify = notify && s.client.registered_as().is_some();
            if let Err(LookupError::TooMany) = s.client.lookup(now, peer, notify) {
                lookup.remaining -= 1;
                lookup.refused = true;
            }
        }
        let rx = lookup.result.subscribe();
        if lookup.remaining == 0 {
            lookup
                .result
                .send_replace(Some(Err(LookupFailure::Refused)));
        } else {
            self.lookups.insert(peer, lookup);
        }
        Ok(rx)
    }

    /// Asks the regservers we are registered with, one after the other, for a relay slot to
    /// `peer` (or joins the request under way): the next is asked when one refuses (the peer
    /// may be registered with another) or does not answer. The receiver gets the synthetic
    /// address to connect to, or the last failure.
    pub(crate) fn open_relay(
        &mut self,
        now: Instant,
        peer: Eid,
    ) -> Result<watch::Receiver<RelayResult>, Error> {
        if self.servers.is_empty() {
            return Err(Error::NoRegserver);
        }
        if let Some(w) = self.relay_waits.get(&peer) {
            return Ok(w.result.subscribe());
        }
        let wait = RelayWait {
            result: watch::Sender::new(None),
            asked: Vec::new(),
        };
        let rx = wait.result.subscribe();
        self.relay_waits.insert(peer, wait);
        self.ask_next_relay(now, peer, RelayFailure::NoServer);
        Ok(rx)
    }

    /// Sends `peer`'s relay request to the next registered regserver not asked yet; without
    /// one, ends the request with `failure`.
    fn ask_next_relay(&mut self, now: Instant, peer: Eid, mut failure: RelayFailure) {
        let Some(wait) = self.relay_waits.get_mut(&peer) else {
            return;
        };
        for (i, s) in self.servers.iter_mut().enumerate() {
            if wait.asked.contains(&i) || s.client.registered_as().is_none() {
                continue;
            }
            wait.asked.push(i);
            match s.client.open_relay(now, peer) {
                Ok(()) => {
                    tracing::debug!(%peer, regserver = %s.eid, "asking for a relay");
                    return;
                }
                Err(_) => failure = RelayFailure::Full,
            }
        }
        if let Some(wait) = self.relay_waits.remove(&peer) {
            wait.result.send_replace(Some(Err(failure)));
        }
    }

    /// Datagrams sent and received through relays so far.
    pub(crate) fn relayed(&self) -> (u64, u64) {
        self.relayed
    }

    /// A RELAY_DATA from `from`: if it comes from a regserver for a relay we know, the
    /// synthetic address its inner datagram (`data[RELAY_HEADER_LEN..]`) comes from.
    pub(crate) fn unwrap_relayed(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<SocketAddr> {
        let from = canonical_addr(from);
        let index = self.servers.iter().position(|s| s.addr == from)?;
        let (relay_id, _) = relay_data(data)?;
        let addr = relay_addr(u16::try_from(index).ok()?, relay_id);
        let relay = self.relays.get_mut(&addr)?;
        relay.last = now;
        self.relayed.1 += 1;
        Some(addr)
    }

    /// Queues `data` (a transmit to a synthetic relay address, possibly a GSO batch of
    /// `t.segment_size` segments) as RELAY_DATA to the relay's regserver, one datagram per
    /// segment. Returns false (and sends nothing) for an unknown relay.
    pub(crate) fn wrap(
        &mut self,
        now: Instant,
        t: &Transmit,
        data: &[u8],
        out: &mut VecDeque<(Vec<u8>, Transmit)>,
    ) -> bool {
        let Some(relay) = self.relays.get_mut(&t.destination) else {
            return false;
        };
        relay.last = now;
        let header = relay_header(relay.relay_id);
        for range in segments(t.size.min(data.len()), t.segment_size) {
            let mut d = Vec::with_capacity(RELAY_HEADER_LEN + range.len());
            d.extend_from_slice(&header);
            d.extend_from_slice(&data[range]);
            let t = Transmit {
                destination: relay.server,
                size: d.len(),
                segment_size: None,
                ecn: None,
                src_ip: None,
            };
            out.push_back((d, t));
            self.relayed.0 += 1;
        }
        true
    }

    /// Remembers a relay slot (ours or offered to us) and returns its synthetic address.
    fn add_relay(
        &mut self,
        now: Instant,
        server: usize,
        peer: Eid,
        relay_id: u32,
        idle: Duration,
    ) -> Option<SocketAddr> {
        let addr = relay_addr(u16::try_from(server).ok()?, relay_id);
        if !self.relays.contains_key(&addr) && self.relays.len() >= MAX_HOST_RELAYS {
            tracing::debug!(%peer, relay_id, "relay ignored: too many");
            return None;
        }
        tracing::info!(%peer, relay_id, %addr, "relay ready");
        self.relays.insert(
            addr,
            Relay {
                server: self.servers[server].addr,
                relay_id,
                peer,
                idle,
                last: now,
            },
        );
        Some(addr)
    }

    /// Handles a routing datagram: it goes to the client of the regserver it comes from;
    /// anything else (PUNCH probes, strays) is dropped.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let from = canonical_addr(from);
        if let Some(s) = self.servers.iter_mut().find(|s| s.addr == from) {
            s.client.handle_datagram(now, s.addr, data);
        }
    }

    /// The earliest timer of any client, punch burst or relay.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| s.client.poll_timeout())
            .chain(self.punches.values().map(|p| p.next))
            .chain(self.relays.values().map(|r| r.last + r.idle))
            .chain(self.next_interface_check)
            .min()
    }

    /// Runs the clients' due timers and forgets idle relays (the regserver has ended their
    /// slots too).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_interface_check.is_some_and(|t| t <= now) {
            let reported = reported_endpoints(self.local_addr, self.servers.iter().map(|s| s.addr));
            self.interface_check(now, reported);
        }
        for s in &mut self.servers {
            if s.client.poll_timeout().is_some_and(|t| t <= now) {
                s.client.handle_timeout(now);
            }
        }
        self.relays.retain(|addr, r| {
            let keep = r.last + r.idle > now;
            if !keep {
                tracing::debug!(peer = %r.peer, %addr, "relay idle: forgotten");
            }
            keep
        });
    }

    /// Processes the clients' events, sends due probes, and queues every datagram to send.
    pub(crate) fn collect(
        &mut self,
        now: Instant,
        rng: &mut ChaCha20Rng,
        out: &mut VecDeque<(Vec<u8>, Transmit)>,
    ) {
        if self.servers.is_empty() {
            return;
        }
        let mut status_changed = false;
        for i in 0..self.servers.len() {
            while let Some(event) = self.servers[i].client.poll_event() {
                match event {
                    Event::Registered { observed } => {
                        let s = &self.servers[i];
                        tracing::info!(regserver = %s.eid, %observed, "registered");
                        status_changed = true;
                    }
                    Event::RegistrationLost => {
                        tracing::info!(regserver = %self.servers[i].eid, "registration lost");
                        status_changed = true;
                    }
                    Event::LookupResult { eid, outcome } => self.on_lookup(now, i, eid, outcome),
                    Event::PunchRequest { peer, endpoints } => {
                        self.on_punch_request(now, peer, endpoints)
                    }
                    Event::RelayResult { peer, outcome } => {
                        let failure = match outcome {
                            RelayOutcome::Opened { relay_id, idle } => {
                                match self.add_relay(now, i, peer, relay_id, idle) {
                                    Some(addr) => {
                                        if let Some(w) = self.relay_waits.remove(&peer) {
                                            w.result.send_replace(Some(Ok(addr)));
                                        }
                                        continue;
                                    }
                                    None => RelayFailure::Full,
                                }
                            }
                            RelayOutcome::Refused(code) => RelayFailure::Refused(code),
                            RelayOutcome::TimedOut => RelayFailure::TimedOut,
                        };
                        tracing::debug!(%peer, regserver = %self.servers[i].eid, ?failure, "no relay there");
                        self.ask_next_relay(now, peer, failure);
                    }
                    Event::RelayOffered {
                        peer,
                        relay_id,
                        idle,
                    } => {
                        self.add_relay(now, i, peer, relay_id, idle);
                    }
                }
            }
            let s = &mut self.servers[i];
            while let Some(t) = s.client.poll_transmit(now, &mut self.buf) {
                out.push_back((self.buf[..t.size].to_vec(), t));
            }
        }
        if status_changed {
            self.update_status();
        }
        self.send_probes(now, rng, out);
    }

    fn update_status(&mut self) {
        let status: Vec<RegserverStatus> = self
            .servers
            .iter()
            .map(|s| RegserverStatus {
                eid: s.eid,
                addr: s.addr,
                registered_as: s.client.registered_as(),
            })
            .collect();
        self.status.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
    }

    fn on_lookup(&mut self, now: Instant, i: usize, eid: Eid, outcome: LookupOutcome) {
        if outcome == LookupOutcome::Refused(ErrorCode::NotRegistered) {
            // The server lost our record (it restarted, or our address changed): register
            // again at once, and ask once more without NOTIFY so the caller still gets the
            // peer's endpoints (a NOTIFY-less lookup cannot be refused this way).
            let s = &mut self.servers[i];
            tracing::debug!(regserver = %s.eid, "lookup refused: not registered; re-registering");
            s.client.register(now);
            if s.client.lookup(now, eid, false).is_ok() {
                return;
            }
        }
        let Some(l) = self.lookups.get_mut(&eid) else {
            return;
        };
        let decided = match outcome {
            LookupOutcome::Found(endpoints) => Some(Ok(endpoints)),
            other => {
                match other {
                    LookupOutcome::NotFound => l.not_found = true,
                    LookupOutcome::Refused(_) => l.refused = true,
                    _ => {}
                }
                l.remaining = l.remaining.saturating_sub(1);
                let failure = if l.not_found {
                    LookupFailure::NotFound
                } else if l.refused {
                    LookupFailure::Refused
                } else {
                    LookupFailure::TimedOut
                };
                (l.remaining == 0).then_some(Err(failure))
            }
        };
        if let Some(result) = decided {
            if let Some(l) = self.lookups.remove(&eid) {
                tracing::debug!(peer = %eid, ?result, "lookup done");
                l.result.send_replace(Some(result));
            }
        }
    }

    /// A regserver tells us `peer` dials us: probe its endpoints (bounded, see the consts).
    fn on_punch_request(&mut self, now: Instant, peer: Eid, endpoints: Vec<SocketAddr>) {
        let usable = endpoints
            .into_iter()
            .map(canonical_addr)
            .filter(|a| reachable(self.local_addr, *a));
        if let Some(burst) = self.punches.get_mut(&peer) {
            // Another regserver's NOTIFY for the same caller: same burst, more endpoints.
            for a in usable {
                if burst.endpoints.len() < MAX_PUNCH_ENDPOINTS && !burst.endpoints.contains(&a) {
                    burst.endpoints.push(a);
                }
            }
            return;
        }
        if self.punches.len() >= MAX_PUNCH_PEERS {
            tracing::debug!(%peer, "punch request ignored: too many at once");
            return;
        }
        let mut list = Vec::new();
        for a in usable {
            if list.len() < MAX_PUNCH_ENDPOINTS && !list.contains(&a) {
                list.push(a);
            }
        }
        if list.is_empty() {
            return;
        }
        tracing::debug!(%peer, endpoints = ?list, "punching toward a caller");
        self.punches.insert(
            peer,
            PunchBurst {
                endpoints: list,
                started: now,
                sent: 0,
                next: now,
            },
        );
    }

    fn send_probes(
        &mut self,
        now: Instant,
        rng: &mut ChaCha20Rng,
        out: &mut VecDeque<(Vec<u8>, Transmit)>,
    ) {
        self.punches.retain(|_, burst| {
            if burst.next > now {
                return true;
            }
            for &destination in &burst.endpoints {
                let probe = Message::Punch(Punch {
                    nonce: rng.next_u64(),
                })
                .to_vec();
                let t = Transmit {
                    destination,
                    size: probe.len(),
                    segment_size: None,
                    ecn: None,
                    src_ip: None,
                };
                out.push_back((probe, t));
            }
            burst.sent += 1;
            match PUNCH_SCHEDULE.get(burst.sent) {
                Some(&offset) => {
                    burst.next = burst.started + offset;
                    true
                }
                None => false,
            }
        });
    }
}

/// The byte ranges of the segments of a `size`-byte transmit cut in `segment_size` pieces.
fn segments(size: usize, segment_size: Option<usize>) -> impl Iterator<Item = Range<usize>> {
    let step = segment_size.filter(|&n| n > 0).unwrap_or(size.max(1));
    (0..size)
        .step_by(step)
        .map(move |start| start..(start + step).min(size))
}

/// Whether the host's socket can send to `addr` at all (family, unspecified, port 0).
pub(crate) fn reachable(local: SocketAddr, addr: SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0 && (local.is_ipv6() || addr.is_ipv4())
}

/// The endpoints a host reports in its records besides the one each regserver observes:
/// the socket's address when it is bound to a specific one. When bound to
/// `0.0.0.0`/`[::]`: first the local address the host's routes pick toward each regserver
/// (its LAN address behind a NAT, so that two hosts behind one NAT reach each other
/// directly), then the addresses of its other interfaces that are up, of a family the socket
/// can use; loopback and link-local addresses left out (the endpoint format has no IPv6
/// scope id). All with the socket's port; at most [`MAX_REPORTED`].
pub(crate) fn reported_endpoints(
    local: SocketAddr,
    servers: impl Iterator<Item = SocketAddr>,
) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![canonical_addr(local)];
    }
    let toward_servers = servers
        .filter(|s| local.is_ipv6() || s.is_ipv4())
        .filter_map(route_source);
    let interfaces = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.is_oper_up())
        .map(|i| i.ip());
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in toward_servers.chain(interfaces) {
        let a = SocketAddr::new(ip.to_canonical(), local.port());
        if usable_local(ip) && reachable(local, a) && !out.contains(&a) && out.len() < MAX_REPORTED
        {
            out.push(a);
        }
    }
    out
}

/// Whether a local address is worth reporting: not loopback, unspecified or link-local.
fn usable_local(ip: IpAddr) -> bool {
    let link_local = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    !ip.is_loopback() && !ip.is_unspecified() && !link_local
}

/// The source address the kernel picks toward `dest` (a `connect` on a throwaway UDP
/// socket: no packet is sent).
fn route_source(dest: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = if dest.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    socket.connect(dest).ok()?;
    Some(socket.local_addr().ok()?.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_binding_is_reported_as_is() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let servers = ["192.0.2.1:9669".parse().unwrap()];
        assert_eq!(reported_endpoints(local, servers.into_iter()), vec![local]);
    }

    #[test]
    fn a_wildcard_binding_reports_interface_addresses_with_the_port() {
        let interfaces: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .filter(|i| i.is_oper_up())
            .map(|i| i.ip())
            .collect();
        for (local, v6) in [("0.0.0.0:4000", false), ("[::]:4000", true)] {
            let local: SocketAddr = local.parse().unwrap();
            let servers = ["127.0.0.1:9669".parse().unwrap()];
            let reported = reported_endpoints(local, servers.into_iter());
            assert!(reported.len() <= MAX_REPORTED);
            for a in &reported {
                assert_eq!(a.port(), 4000);
                assert!(usable_local(a.ip()), "{a}");
                assert!(v6 || a.is_ipv4(), "{a}");
                assert!(interfaces.contains(&a.ip()), "{a} is an interface address");
            }
            // Every usable interface address of the right family is there (up to the cap).
            let expected = interfaces
                .iter()
                .filter(|ip| usable_local(**ip) && (v6 || ip.is_ipv4()))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                .min(MAX_REPORTED);
            assert_eq!(reported.len(), expected, "{reported:?}");
        }
    }

    #[test]
    fn loopback_and_link_local_addresses_are_not_reported() {
        for ip in [
            "127.0.0.1",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!usable_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.168.1.2", "10.0.0.1", "2001:db8::1", "fd00::1"] {
            assert!(usable_local(ip.parse().unwrap()), "{ip}");
        }
    }

    fn routing() -> Routing {
        let identity = Identity::from_secret_bytes(&[7; 32]);
        Routing::new(
            &identity,
            RoutingConfig::default(),
            "0.0.0.0:4000".parse().unwrap(),
        )
    }

    fn eid(n: u64) -> Eid {
        use rand_chacha::rand_core::SeedableRng;
        Identity::generate(&mut ChaCha20Rng::seed_from_u64(n)).eid()
    }

    fn endpoints(base: u16, n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([192, 0, 2, 1], base + i)))
            .collect()
    }

    /// Probes sent at `now`, by destination.
    fn probes(r: &mut Routing, now: Instant) -> Vec<SocketAddr> {
        use rand_chacha::rand_core::SeedableRng;
        let mut out = VecDeque::new();
        r.send_probes(now, &mut ChaCha20Rng::seed_from_u64(1), &mut out);
        out.into_iter()
            .map(|(data, t)| {
                assert_eq!(data.len(), sss_routing::wire::PUNCH_LEN);
                assert!(matches!(Message::decode(&data), Ok(Message::Punch(_))));
                t.destination
            })
            .collect()
    }

    /// Drains what the routing state would send now (the clients' datagrams among it).
    fn sent(r: &mut Routing, now: Instant) -> Vec<(Vec<u8>, Transmit)> {
        use rand_chacha::rand_core::SeedableRng;
        let mut out = VecDeque::new();
        r.collect(now, &mut ChaCha20Rng::seed_from_u64(2), &mut out);
        out.into()
    }

    /// Runs the datagrams between `r` (seen by the server at `host`) and a sans-IO regserver
    /// at `server_addr` until neither has anything more to send.
    fn exchange(
        r: &mut Routing,
        server: &mut sss_routing::Server,
        server_addr: SocketAddr,
        host: SocketAddr,
        now: Instant,
    ) {
        let mut buf = Vec::new();
        loop {
            let mut moved = false;
            for (data, t) in sent(r, now) {
                if t.destination == server_addr {
                    server.handle_datagram(now, host, &data);
                    moved = true;
                }
            }
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                r.handle_datagram(now, server_addr, &buf[..t.size]);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn a_wildcard_bound_host_checks_its_interfaces_and_reregisters_when_they_change() {
        use rand_chacha::rand_core::SeedableRng;
        let mut r = routing();
        let host_eid = Identity::from_secret_bytes(&[7; 32]).eid();
        let now = Instant::now();
        let server_addr: SocketAddr = "192.0.2.9:9669".parse().unwrap();
        let host: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        let mut server =
            sss_routing::Server::new(sss_routing::ServerConfig::new(eid(9), [3; 32]), now);
        r.add(now, eid(9), server_addr, &mut ChaCha20Rng::seed_from_u64(1));
        exchange(&mut r, &mut server, server_addr, host, now);
        let stored = |server: &sss_routing::Server| {
            server
                .record(&host_eid)
                .expect("registered")
                .body
                .reported
                .clone()
        };
        let first = stored(&server);
        assert_eq!(first, r.servers[0].client.config().reported);
        let check = now + INTERFACE_CHECK_INTERVAL;
        assert_eq!(r.next_interface_check, Some(check));
        assert!(r.poll_timeout().is_some_and(|t| t <= check));

        // Nothing changed: the next check is scheduled, nothing is registered again.
        r.interface_check(check, first.clone());
        assert_eq!(
            r.next_interface_check,
            Some(check + INTERFACE_CHECK_INTERVAL)
        );
        assert!(sent(&mut r, check).is_empty());

        // The host joined another network: the regserver holds the new endpoints at once.
        let moved: Vec<SocketAddr> = vec!["198.51.100.7:4000".parse().unwrap()];
        r.interface_check(check, moved.clone());
        exchange(&mut r, &mut server, server_addr, host, check);
        assert_eq!(stored(&server), moved);
    }

    #[test]
    fn a_host_bound_to_a_specific_address_does_not_check_interfaces() {
        use rand_chacha::rand_core::SeedableRng;
        let identity = Identity::from_secret_bytes(&[7; 32]);
        let mut r = Routing::new(
            &identity,
            RoutingConfig::default(),
            "192.0.2.2:4000".parse().unwrap(),
        );
        r.add(
            Instant::now(),
            eid(9),
            "192.0.2.9:9669".parse().unwrap(),
            &mut ChaCha20Rng::seed_from_u64(1),
        );
        assert_eq!(r.next_interface_check, None);
    }

    #[test]
    fn relay_addresses_are_synthetic_and_unique() {
        let a = relay_addr(0, 0x0102_0304);
        assert!(is_relay_addr(a));
        assert_eq!(a.to_string(), "[100::5353:0:102:304]:9");
        assert_ne!(relay_addr(1, 0x0102_0304), a);
        assert_ne!(relay_addr(0, 0x0102_0305), a);
        for other in ["[100::1]:9", "[2001:db8::5353:0:102:304]:9", "192.0.2.1:9"] {
            assert!(!is_relay_addr(other.parse().unwrap()), "{other}");
        }
        let mut other_port = a;
        other_port.set_port(10);
        assert!(!is_relay_addr(other_port));
    }

    #[test]
    fn gso_batches_are_cut_into_their_segments() {
        let cut = |size, seg| segments(size, seg).collect::<Vec<_>>();
        assert_eq!(cut(10, None), vec![0..10]);
        assert_eq!(cut(10, Some(4)), vec![0..4, 4..8, 8..10]);
        assert_eq!(cut(8, Some(4)), vec![0..4, 4..8]);
        assert_eq!(cut(3, Some(0)), vec![0..3]);
        assert!(cut(0, Some(4)).is_empty());
    }

    /// Wrapping and unwrapping: only relays the host knows, only from their regserver, one
    /// RELAY_DATA per segment; idle relays are forgotten.
    #[test]
    fn relayed_datagrams_are_wrapped_and_unwrapped_for_known_relays_only() {
        use rand_chacha::rand_core::SeedableRng;
        let mut r = routing();
        let now = Instant::now();
        let server: SocketAddr = "192.0.2.50:9669".parse().unwrap();
        r.add(now, eid(50), server, &mut ChaCha20Rng::seed_from_u64(2));
        let idle = Duration::from_secs(60);
        let addr = r.add_relay(now, 0, eid(1), 77, idle).unwrap();
        assert_eq!(addr, relay_addr(0, 77));
        let t = Transmit {
            destination: addr,
            size: 10,
            segment_size: Some(4),
            ecn: None,
            src_ip: None,
        };
        let mut out = VecDeque::new();
        assert!(r.wrap(now, &t, b"abcdefghij", &mut out));
        let sent: Vec<(Vec<u8>, SocketAddr)> =
            out.drain(..).map(|(d, t)| (d, t.destination)).collect();
        let mut want = Vec::new();
        for seg in [&b"abcd"[..], b"efgh", b"ij"] {
            let mut d = relay_header(77).to_vec();
            d.extend_from_slice(seg);
            want.push((d, server));
        }
        assert_eq!(sent, want);
        // Unknown relay: nothing.
        let unknown = Transmit {
            destination: relay_addr(0, 78),
            ..t
        };
        assert!(!r.wrap(now, &unknown, b"abcdefghij", &mut out));
        assert!(out.is_empty());
        // Unwrapping: from the regserver, a known relay_id.
        let mut d = relay_header(77).to_vec();
        d.extend_from_slice(b"sealed");
        assert_eq!(r.unwrap_relayed(now, server, &d), Some(addr));
        assert_eq!(
            r.unwrap_relayed(now, "192.0.2.51:9669".parse().unwrap(), &d),
            None
        );
        let d78 = [&relay_header(78)[..], b"sealed"].concat();
        assert_eq!(r.unwrap_relayed(now, server, &d78), None);
        assert_eq!(r.relayed(), (3, 1));
        // Idle for `idle`: forgotten.
        assert_eq!(r.poll_timeout().map(|t| t <= now + idle), Some(true));
        r.handle_timeout(now + idle);
        assert_eq!(r.unwrap_relayed(now + idle, server, &d), None);
        // At most MAX_HOST_RELAYS.
        for id in 0..2 * MAX_HOST_RELAYS as u32 {
            r.add_relay(now, 0, eid(2), 1000 + id, idle);
        }
        assert_eq!(r.relays.len(), MAX_HOST_RELAYS);
    }

    #[test]
    fn a_punch_request_sends_probes_to_every_endpoint_on_the_schedule() {
        let mut r = routing();
        let now = Instant::now();
        let caller = endpoints(5000, 2);
        r.on_punch_request(now, eid(1), caller.clone());
        assert_eq!(r.poll_timeout(), Some(now));
        let mut total = Vec::new();
        for offset in PUNCH_SCHEDULE {
            let t = now + offset;
            assert_eq!(r.poll_timeout(), Some(t));
            let sent = probes(&mut r, t);
            assert_eq!(sent, caller);
            assert!(
                probes(&mut r, t).is_empty(),
                "nothing more before the next time of the schedule"
            );
            total.extend(sent);
        }
        let t = now + PUNCH_SCHEDULE[PUNCH_SCHEDULE.len() - 1];
        assert_eq!(total.len(), 2 * PUNCH_PROBES as usize);
        assert_eq!(r.poll_timeout(), None, "the burst is over");
        assert!(probes(&mut r, t + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn punch_requests_are_bounded_per_caller_and_in_number() {
        let mut r = routing();
        let now = Instant::now();
        // The same caller again (another regserver's NOTIFY, or a repeat): merged into the
        // running burst, endpoints capped, no extra probes.
        r.on_punch_request(now, eid(1), endpoints(5000, 9));
        r.on_punch_request(now, eid(1), endpoints(5000, 9));
        r.on_punch_request(now, eid(1), endpoints(6000, 9));
        assert_eq!(probes(&mut r, now).len(), MAX_PUNCH_ENDPOINTS);
        // Unusable endpoints are dropped: unspecified, port 0, IPv6 on an IPv4 socket.
        let junk = vec![
            "0.0.0.0:5".parse().unwrap(),
            "192.0.2.9:0".parse().unwrap(),
            "[2001:db8::1]:5".parse().unwrap(),
        ];
        r.on_punch_request(now, eid(2), junk);
        assert_eq!(r.punches.len(), 1, "nothing to probe: no burst");
        // At most MAX_PUNCH_PEERS callers at once.
        for n in 10..10 + 2 * MAX_PUNCH_PEERS as u64 {
            r.on_punch_request(now, eid(n), endpoints(7000, 1));
        }
        assert_eq!(r.punches.len(), MAX_PUNCH_PEERS);
    }

    #[test]
    fn unreachable_endpoints_are_filtered() {
        let v4: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let v6: SocketAddr = "[::]:1".parse().unwrap();
        assert!(reachable(v4, "192.0.2.1:5".parse().unwrap()));
        assert!(!reachable(v4, "[2001:db8::1]:5".parse().unwrap()));
        assert!(reachable(v6, "[2001:db8::1]:5".parse().unwrap()));
        assert!(!reachable(v6, "192.0.2.1:0".parse().unwrap()));
        assert!(!reachable(v6, "0.0.0.0:5".parse().unwrap()));
    }
}
