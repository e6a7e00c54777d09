//! A world of one regserver and hosts on the `sss_proto::sim` network (virtual time, loss,
//! NAT boxes). A host runs a routing [`Client`] and answers a `PunchRequest` or a found
//! lookup by sending a few probes (first byte 0x40, then its EID) to the peer's endpoints,
//! standing in for the handshake initiations sss-host will send.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sss_proto::sim::{LinkConfig, NatId, NatKind, Network, Node, NodeId};
use sss_proto::{Eid, Identity, Transmit};
use sss_routing::wire::{
    msg_type, relay_data, relay_header, Cookie, CookieMsg, Hello, Lookup, Message, Register,
    HELLO_LEN,
};
use sss_routing::{
    Client, ClientConfig, Event, LookupOutcome, RecordBody, RelayOutcome, Server, ServerConfig,
    SignedRecord,
};

/// First byte of a probe (a channel-data class byte: not routing).
pub const PROBE: u8 = 0x40;
/// Probes sent per punch target.
pub const PROBES: u32 = 6;
/// Interval between probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

pub fn identity(seed: u64) -> Identity {
    Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

pub fn seed32(seed: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_be_bytes());
    s
}

/// A host: a routing client plus the probes of hole punching.
#[derive(Debug)]
pub struct Host {
    pub client: Client,
    pub events: Vec<(Instant, Event)>,
    /// Probes received: (from, sender EID bytes).
    pub probes: Vec<(SocketAddr, Vec<u8>)>,
    /// Relay slots this host knows (as caller or target): (peer, relay_id).
    pub relays: Vec<(Eid, u32)>,
    /// RELAY_DATA received: (from, relay_id, relayed bytes).
    pub relayed: Vec<(SocketAddr, u32, Vec<u8>)>,
    /// Endpoints to probe, with the number of probes left.
    targets: Vec<(SocketAddr, u32)>,
    next_probe: Option<Instant>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Host {
    fn drain_events(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            let eps = match &ev {
                Event::PunchRequest { endpoints, .. } => endpoints.clone(),
                Event::LookupResult {
                    outcome: LookupOutcome::Found(endpoints),
                    ..
                } => endpoints.clone(),
                _ => Vec::new(),
            };
            for ep in eps {
                self.targets.push((ep, PROBES));
                self.next_probe.get_or_insert(now);
            }
            match &ev {
                Event::RelayResult {
                    peer,
                    outcome: RelayOutcome::Opened { relay_id, .. },
                }
                | Event::RelayOffered { peer, relay_id, .. } => {
                    self.relays.retain(|(p, _)| p != peer);
                    self.relays.push((*peer, *relay_id));
                }
                _ => {}
            }
            self.events.push((now, ev));
        }
    }

    fn send_probes(&mut self, now: Instant) {
        let eid = self.client.eid();
        for (ep, left) in &mut self.targets {
            if *left > 0 {
                *left -= 1;
                let mut probe = vec![PROBE];
                probe.extend_from_slice(eid.as_bytes());
                self.out.push_back((*ep, probe));
            }
        }
        self.targets.retain(|(_, left)| *left > 0);
        self.next_probe = (!self.targets.is_empty()).then_some(now + PROBE_INTERVAL);
    }

    /// Queues `payload` as a RELAY_DATA of `relay_id` to `server`.
    pub fn send_relayed(&mut self, server: SocketAddr, relay_id: u32, payload: &[u8]) {
        let mut d = relay_header(relay_id).to_vec();
        d.extend_from_slice(payload);
        self.out.push_back((server, d));
    }

    /// The relay_id this host knows for `peer`.
    pub fn relay_to(&self, peer: &Eid) -> Option<u32> {
        self.relays
            .iter()
            .find(|(p, _)| p == peer)
            .map(|(_, id)| *id)
    }

    /// Whether a probe from `peer` arrived.
    pub fn probed_by(&self, peer: &Eid) -> bool {
        self.probes.iter().any(|(_, e)| e == peer.as_bytes())
    }

    pub fn registered_events(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Registered { .. }))
            .count()
    }
}

/// A node of the world.
#[derive(Debug)]
pub enum Peer {
    Server(Box<Server>),
    Host(Box<Host>),
}

impl Peer {
    pub fn host(&self) -> &Host {
        match self {
            Peer::Host(h) => h,
            Peer::Server(_) => panic!("not a host"),
        }
    }
    pub fn host_mut(&mut self) -> &mut Host {
        match self {
            Peer::Host(h) => h,
            Peer::Server(_) => panic!("not a host"),
        }
    }
    pub fn server(&self) -> &Server {
        match self {
            Peer::Server(s) => s,
            Peer::Host(_) => panic!("not a server"),
        }
    }
    pub fn server_mut(&mut self) -> &mut Server {
        match self {
            Peer::Server(s) => s,
            Peer::Host(_) => panic!("not a server"),
        }
    }
}

impl Node for Peer {
    fn handle_datagram(
        &mut self,
        now: Instant,
        _local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) {
        match self {
            Peer::Server(s) => s.handle_datagram(now, from, data),
            Peer::Host(h) => {
                match data.first() {
                    Some(&msg_type::RELAY_DATA) => {
                        if let Some((id, inner)) = relay_data(data) {
                            h.relayed.push((from, id, inner.to_vec()));
                        }
                    }
                    Some(0x10..=0x1f) => h.client.handle_datagram(now, from, data),
                    Some(&PROBE) => h.probes.push((from, data[1..].to_vec())),
                    _ => {}
                }
                h.drain_events(now);
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        match self {
            Peer::Server(s) => s.poll_transmit(now, buf),
            Peer::Host(h) => {
                h.drain_events(now);
                if let Some(t) = h.client.poll_transmit(now, buf) {
                    return Some(t);
                }
                let (destination, data) = h.out.pop_front()?;
                buf.clear();
                buf.extend_from_slice(&data);
                Some(Transmit {
                    destination,
                    size: data.len(),
                    segment_size: None,
                    ecn: None,
                    src_ip: None,
                })
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            Peer::Server(s) => s.poll_timeout(),
            Peer::Host(h) => match (h.client.poll_timeout(), h.next_probe) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Peer::Server(s) => s.handle_timeout(now),
            Peer::Host(h) => {
                h.client.handle_timeout(now);
                h.drain_events(now);
                if h.next_probe.is_some_and(|t| t <= now) {
                    h.send_probes(now);
                }
            }
        }
    }
}

pub const SERVER_ADDR: &str = "203.0.113.1:9669";

/// The server and hosts on one simulated network.
pub struct World {
    pub net: Network<Peer>,
    pub server: NodeId,
    pub server_id: Eid,
    pub hosts: Vec<NodeId>,
}

impl World {
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        Self::with_server_config(seed, link, |_| {})
    }

    pub fn with_server_config(
        seed: u64,
        link: LinkConfig,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let start = Instant::now();
        let mut net = Network::new(seed, start);
        net.set_default_link(link);
        let server_id = identity(1_000_000 + seed).eid();
        let mut config = ServerConfig::new(server_id, seed32(seed));
        tweak(&mut config);
        let server = net.add_node(
            SERVER_ADDR.parse().unwrap(),
            Peer::Server(Box::new(Server::new(config, start))),
        );
        Self {
            net,
            server,
            server_id,
            hosts: Vec::new(),
        }
    }

    pub fn client_config(&self, n: u64) -> ClientConfig {
        ClientConfig::new(
            SERVER_ADDR.parse().unwrap(),
            self.server_id,
            1000 * n,
            seed32(7_000 + n),
        )
    }

    /// Adds a host at `addr` (behind `nat` if given) that registers at once.
    pub fn add_host(&mut self, addr: &str, nat: Option<NatId>) -> NodeId {
        let n = self.hosts.len() as u64 + 1;
        let config = self.client_config(n);
        self.add_host_with(addr, nat, config, identity(n), true)
    }

    pub fn add_host_with(
        &mut self,
        addr: &str,
        nat: Option<NatId>,
        config: ClientConfig,
        id: Identity,
        register: bool,
    ) -> NodeId {
        let now = self.net.now();
        let mut client = Client::new(config, id);
        if register {
            client.register(now);
        }
        let host = Host {
            client,
            events: Vec::new(),
            probes: Vec::new(),
            relays: Vec::new(),
            relayed: Vec::new(),
            targets: Vec::new(),
            next_probe: None,
            out: VecDeque::new(),
        };
        let node = self
            .net
            .add_node(addr.parse().unwrap(), Peer::Host(Box::new(host)));
        if let Some(nat) = nat {
            self.net.attach_behind_nat(node, nat);
        }
        self.hosts.push(node);
        node
    }

    pub fn add_nat(&mut self, ip: &str, kind: NatKind) -> NatId {
        self.net.add_nat(ip.parse().unwrap(), kind)
    }

    pub fn host(&self, id: NodeId) -> &Host {
        self.net.node(id).host()
    }

    pub fn host_mut(&mut self, id: NodeId) -> &mut Host {
        self.net.node_mut(id).host_mut()
    }

    pub fn server(&self) -> &Server {
        self.net.node(self.server).server()
    }

    pub fn eid(&self, id: NodeId) -> Eid {
        self.host(id).client.eid()
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.net.now() + d;
        if let Err(e) = self.net.run_until(until) {
            panic!("seed {}: {e}", self.net.seed());
        }
    }

    pub fn lookup(&mut self, from: NodeId, target: NodeId, notify: bool) {
        let eid = self.eid(target);
        let now = self.net.now();
        self.host_mut(from)
            .client
            .lookup(now, eid, notify)
            .expect("lookup starts");
    }

    pub fn open_relay(&mut self, from: NodeId, target: NodeId) {
        let eid = self.eid(target);
        let now = self.net.now();
        self.host_mut(from)
            .client
            .open_relay(now, eid)
            .expect("relay request starts");
    }

    /// The outcome of the last relay request of `host` toward `target`, if one ended.
    pub fn relay_outcome(&self, host: NodeId, target: &Eid) -> Option<RelayOutcome> {
        self.host(host)
            .events
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                Event::RelayResult { peer, outcome } if peer == target => Some(outcome.clone()),
                _ => None,
            })
    }

    /// Sends `payload` from `host` through its relay to `peer`.
    pub fn send_relayed(&mut self, host: NodeId, peer: NodeId, payload: &[u8]) {
        let eid = self.eid(peer);
        let h = self.host_mut(host);
        let id = h.relay_to(&eid).expect("a relay to the peer");
        h.send_relayed(SERVER_ADDR.parse().unwrap(), id, payload);
    }

    /// The outcome of the last lookup of `target` by `host`, if one ended.
    pub fn lookup_outcome(&self, host: NodeId, target: &Eid) -> Option<LookupOutcome> {
        self.host(host)
            .events
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                Event::LookupResult { eid, outcome } if eid == target => Some(outcome.clone()),
                _ => None,
            })
    }

    /// The peers whose punch requests `host` received.
    pub fn punch_requests(&self, host: NodeId) -> Vec<(Eid, Vec<SocketAddr>)> {
        self.host(host)
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::PunchRequest { peer, endpoints } => Some((*peer, endpoints.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A regserver driven directly (no network): datagrams from any source in, what it queues
/// out.
pub struct ServerRig {
    pub server: Server,
    pub id: Eid,
    pub now: Instant,
    next_request: u64,
}

impl ServerRig {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let now = Instant::now();
        let id = identity(500).eid();
        let mut config = ServerConfig::new(id, seed32(1));
        tweak(&mut config);
        Self {
            server: Server::new(config, now),
            id,
            now,
            next_request: 1,
        }
    }

    /// Hands `data` to the server and returns everything it queued.
    pub fn send(&mut self, from: SocketAddr, data: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        self.server.handle_datagram(self.now, from, data);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            out.push((t.destination, buf[..t.size].to_vec()));
        }
        out
    }

    pub fn request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    pub fn cookie(&mut self, from: SocketAddr) -> Cookie {
        let request_id = self.request();
        let hello = Message::Hello(Hello {
            request_id,
            len: HELLO_LEN,
        });
        let out = self.send(from, &hello.to_vec());
        match Message::decode(&out[0].1) {
            Ok(Message::Cookie(CookieMsg {
                cookie, observed, ..
            })) => {
                assert_eq!(observed, from);
                cookie
            }
            other => panic!("expected a cookie, got {other:?}"),
        }
    }

    pub fn record(
        &self,
        host: &Identity,
        seq: u64,
        cookie: Cookie,
        observed: SocketAddr,
    ) -> SignedRecord {
        SignedRecord::sign(
            host,
            RecordBody {
                eid: host.eid(),
                server: self.id,
                seq,
                lifetime: 600,
                cookie,
                observed,
                reported: vec![],
            },
        )
    }

    pub fn register_msg(&mut self, record: SignedRecord) -> Vec<u8> {
        let request_id = self.request();
        Message::Register(Register { request_id, record }).to_vec()
    }

    /// Registers `host` from `from` with `seq`; returns the server's reply.
    pub fn register(&mut self, host: &Identity, from: SocketAddr, seq: u64) -> Message {
        self.register_with_id(host, from, seq).1
    }

    /// As [`register`](Self::register), also returning the REGISTER's request id (the
    /// host's NOTIFY token).
    pub fn register_with_id(
        &mut self,
        host: &Identity,
        from: SocketAddr,
        seq: u64,
    ) -> (u64, Message) {
        let cookie = self.cookie(from);
        let rec = self.record(host, seq, cookie, from);
        let msg = self.register_msg(rec);
        let request_id = self.next_request;
        let out = self.send(from, &msg);
        assert_eq!(out.len(), 1);
        (request_id, Message::decode(&out[0].1).unwrap())
    }

    pub fn lookup(
        &mut self,
        from: SocketAddr,
        caller: Eid,
        target: Eid,
        notify: bool,
    ) -> Vec<(SocketAddr, Message)> {
        let cookie = self.cookie(from);
        let request_id = self.request();
        let msg = Message::Lookup(Lookup {
            request_id,
            cookie,
            notify,
            caller,
            target,
        });
        self.send(from, &msg.to_vec())
            .into_iter()
            .map(|(to, d)| (to, Message::decode(&d).unwrap()))
            .collect()
    }
}
