//! NAT boxes with the mapping and filtering behaviours of RFC 4787.
//!
//! A NAT owns one public IP address. Nodes attached behind it keep their private addresses;
//! their datagrams leaving the LAN get a public source port from a mapping, and datagrams
//! arriving at the public IP are translated back if the mapping exists, has not expired and
//! its filter admits the sender. Mappings are refreshed by outbound traffic only (RFC 4787
//! REQ-6 makes outbound refresh mandatory; inbound refresh is optional and would let an
//! attacker keep a mapping open). Ports are drawn from the simulation's seeded generator.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::event::{FxHashMap, SimRng};

/// Identifies a NAT box of a [`Network`](super::Network).
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash, PartialOrd, Ord)]
pub struct NatId(pub(crate) usize);

/// Mapping and filtering behaviour (RFC 4787 §4.1 and §5).
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[non_exhaustive]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering: once mapped, anyone can reach the port.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: a remote IP the node has
    /// sent to may reply from any port.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: only remote
    /// endpoints the node has sent to may reply. The common home router.
    PortRestricted,
    /// Address-and-port-dependent mapping: a fresh public port per destination, reachable
    /// only from that destination.
    Symmetric,
}

/// Default inactivity timeout of a mapping. RFC 4787 REQ-5 asks for at least two minutes, but
/// many deployed boxes use 30 seconds for UDP, and tests should catch keepalives that assume
/// more.
pub const DEFAULT_MAPPING_TIMEOUT: Duration = Duration::from_secs(30);

/// Lowest public port handed out; ports below are never mapped.
const PORT_MIN: u16 = 1024;
/// Random draws before giving up on finding a free port (the NAT then drops the datagram).
const PORT_ATTEMPTS: usize = 64;

#[derive(Debug)]
struct Mapping {
    private: SocketAddr,
    /// The mapping key's remote part (symmetric NAT only).
    remote: Option<SocketAddr>,
    last_out: Instant,
    /// Remote endpoints the node sent to through this mapping, with the time of the last
    /// such datagram: the filter's permissions, each expiring like the mapping.
    permits: FxHashMap<SocketAddr, Instant>,
}

/// A NAT box.
#[derive(Debug)]
pub struct Nat {
    public_ip: IpAddr,
    kind: NatKind,
    timeout: Duration,
    hairpinning: bool,
    /// (private endpoint, remote endpoint for symmetric NATs) -> public port.
    by_key: FxHashMap<(SocketAddr, Option<SocketAddr>), u16>,
    by_port: FxHashMap<u16, Mapping>,
}

impl Nat {
    pub(crate) fn new(public_ip: IpAddr, kind: NatKind) -> Self {
        Self {
            public_ip,
            kind,
            timeout: DEFAULT_MAPPING_TIMEOUT,
            hairpinning: false,
            by_key: FxHashMap::default(),
            by_port: FxHashMap::default(),
        }
    }

    /// The public address of the box.
    pub fn public_ip(&self) -> IpAddr {
        self.public_ip
    }

    /// Its mapping and filtering behaviour.
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// Sets the inactivity timeout after which a mapping (and each filter permission) expires.
    pub fn set_mapping_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Allows nodes behind the box to reach each other through its public address (off by
    /// default, as on many home routers).
    pub fn set_hairpinning(&mut self, on: bool) {
        self.hairpinning = on;
    }

    /// Whether hairpinning is on.
    pub fn hairpinning(&self) -> bool {
        self.hairpinning
    }

    /// Number of mappings held, expired ones not yet collected included.
    pub fn mapping_count(&self) -> usize {
        self.by_port.len()
    }

    /// Forgets every mapping, as a rebooting router does: the next outbound datagram of each
    /// flow gets a new public port (emulates NAT rebinding).
    pub fn flush(&mut self) {
        self.by_key.clear();
        self.by_port.clear();
    }

    /// The public address currently mapped for `private` talking to `remote`, if any and not
    /// expired at `now`.
    pub fn mapped_address(
        &self,
        now: Instant,
        private: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketAddr> {
        let port = *self.by_key.get(&(private, self.key_remote(remote)))?;
        let m = self.by_port.get(&port)?;
        (!self.expired(m.last_out, now)).then_some(SocketAddr::new(self.public_ip, port))
    }

    fn key_remote(&self, remote: SocketAddr) -> Option<SocketAddr> {
        (self.kind == NatKind::Symmetric).then_some(remote)
    }

    fn permit_key(&self, remote: SocketAddr) -> SocketAddr {
        match self.kind {
            // Address-dependent filtering ignores the remote port.
            NatKind::AddressRestricted => SocketAddr::new(remote.ip(), 0),
            _ => remote,
        }
    }

    fn expired(&self, last: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last) > self.timeout
    }

    /// Translates the source of a datagram from `private` to `remote`. `None` when no port
    /// could be allocated.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        private: SocketAddr,
        remote: SocketAddr,
        rng: &mut SimRng,
    ) -> Option<SocketAddr> {
        let key = (private, self.key_remote(remote));
        let permit = self.permit_key(remote);
        if let Some(&port) = self.by_key.get(&key) {
            let live = self
                .by_port
                .get(&port)
                .is_some_and(|m| !self.expired(m.last_out, now));
            if live {
                if let Some(m) = self.by_port.get_mut(&port) {
                    m.last_out = now;
                    m.permits.insert(permit, now);
                }
                return Some(SocketAddr::new(self.public_ip, port));
            }
            self.by_key.remove(&key);
            self.by_port.remove(&port);
        }
        let port = self.allocate_port(now, rng)?;
        let mut permits = FxHashMap::default();
        permits.insert(permit, now);
        self.by_key.insert(key, port);
        self.by_port.insert(
            port,
            Mapping {
                private,
                remote: key.1,
                last_out: now,
                permits,
            },
        );
        Some(SocketAddr::new(self.public_ip, port))
    }

    fn allocate_port(&mut self, now: Instant, rng: &mut SimRng) -> Option<u16> {
        let span = u64::from(u16::MAX - PORT_MIN) + 1;
        for _ in 0..PORT_ATTEMPTS {
            let port = PORT_MIN + rng.below(span) as u16;
            match self.by_port.get(&port) {
                None => return Some(port),
                Some(m) if self.expired(m.last_out, now) => {
                    let key = (m.private, m.remote);
                    self.by_key.remove(&key);
                    self.by_port.remove(&port);
                    return Some(port);
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Translates the destination of a datagram from `remote` to public `port` back to the
    /// private endpoint, or `None` if the NAT drops it.
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        port: u16,
    ) -> Option<SocketAddr> {
        let m = self.by_port.get(&port)?;
        if self.expired(m.last_out, now) {
            let key = (m.private, m.remote);
            self.by_key.remove(&key);
            self.by_port.remove(&port);
            return None;
        }
        let admitted = match self.kind {
            NatKind::FullCone => true,
            NatKind::Symmetric => m.remote == Some(remote),
            NatKind::AddressRestricted | NatKind::PortRestricted => m
                .permits
                .get(&self.permit_key(remote))
                .is_some_and(|&t| !self.expired(t, now)),
        };
        admitted.then_some(m.private)
    }
}
