//! The [`Network`]: topology, clock, configuration and observation. The event loop is in
//! `run.rs`; the datagram path (sending, NAT translation, links, interception, delivery) is
//! in `forward.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::event::{EventQueue, FxHashMap, Packet, SimRng};
use super::link::{Link, LinkConfig, LinkId};
use super::nat::{Nat, NatId, NatKind};
use super::trace::{Stats, Trace, TraceEvent};
use super::{Interceptor, Limits, Node, NodeId};

/// Default number of events kept by [`Network::enable_trace`] when asked for 0.
const DEFAULT_TRACE_CAP: usize = 100_000;

pub(crate) struct NodeSlot<N> {
    pub(crate) node: N,
    /// The node's addresses; the first is used when a transmit names no source IP.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) nat: Option<NatId>,
    /// The node's current deadline, as last reported by `poll_timeout` (clamped to now).
    pub(crate) deadline: Option<Instant>,
    /// Time of the earliest `Timer` event queued for the node and not yet popped. Timer events
    /// are only queued when the deadline moves earlier than this, so a node that pushes its
    /// deadline back on every packet does not flood the heap with stale events.
    pub(crate) queued_timer: Option<Instant>,
    pub(crate) woken: bool,
    /// Datagrams arriving at one instant are handled together before the node is polled
    /// (see [`Network::set_batch_receive`]).
    pub(crate) batch_receive: bool,
    /// Consecutive timer firings at `spin_at`.
    pub(crate) spins: u64,
    pub(crate) spin_at: Option<Instant>,
    pub(crate) stats: Stats,
}

/// A simulated network of [`Node`]s, links and NAT boxes, with its own virtual clock.
///
/// Methods fall into: topology (`add_*`, `set_*`, `attach_behind_nat`, `rebind`), access
/// (`node`, `node_mut`, `*_stats`, `trace`), traffic (`inject`, `set_interceptor`) and
/// running (`step`, `run_*`). After a test changes a node through [`node_mut`](Self::node_mut),
/// the node is polled again at the current instant.
pub struct Network<N> {
    pub(crate) seed: u64,
    pub(crate) start: Instant,
    pub(crate) now: Instant,
    pub(crate) rng: SimRng,
    pub(crate) queue: EventQueue,
    pub(crate) nodes: Vec<NodeSlot<N>>,
    pub(crate) addrs: FxHashMap<SocketAddr, NodeId>,
    pub(crate) nats: Vec<Nat>,
    pub(crate) nat_ips: FxHashMap<IpAddr, NatId>,
    pub(crate) links: Vec<Link>,
    pub(crate) routes: FxHashMap<(SocketAddr, SocketAddr), LinkId>,
    pub(crate) ip_routes: FxHashMap<(IpAddr, IpAddr), LinkId>,
    /// Default links created on first use, consulted after explicit routes so that a route
    /// set later still takes effect for a pair that already carried traffic.
    pub(crate) auto_routes: FxHashMap<(SocketAddr, SocketAddr), LinkId>,
    pub(crate) default_link: LinkConfig,
    pub(crate) trace: Option<Trace>,
    pub(crate) interceptor: Option<Interceptor>,
    /// Reused output buffer for `poll_transmit`.
    pub(crate) buf: Vec<u8>,
    pub(crate) limits: Limits,
    /// Events handled at the current instant, for stall detection.
    pub(crate) events_this_instant: u64,
}

impl<N: Node> Network<N> {
    /// An empty network whose clock starts at `start`, with all randomness derived from
    /// `seed`.
    pub fn new(seed: u64, start: Instant) -> Self {
        Self {
            seed,
            start,
            now: start,
            rng: SimRng::new(seed),
            queue: EventQueue::new(start),
            nodes: Vec::new(),
            addrs: FxHashMap::default(),
            nats: Vec::new(),
            nat_ips: FxHashMap::default(),
            links: Vec::new(),
            routes: FxHashMap::default(),
            ip_routes: FxHashMap::default(),
            auto_routes: FxHashMap::default(),
            default_link: LinkConfig::default(),
            trace: None,
            interceptor: None,
            buf: Vec::with_capacity(64 * 1024),
            limits: Limits::default(),
            events_this_instant: 0,
        }
    }

    /// The seed the run derives from: print it when a test fails.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The virtual time the simulation started at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Stall and budget guards, to adjust.
    pub fn limits_mut(&mut self) -> &mut Limits {
        &mut self.limits
    }

    // ---- nodes ----

    /// Adds a node reachable at `addr`. It is polled at the current instant, so it may start
    /// sending without input.
    ///
    /// # Panics
    /// If `addr` already belongs to a node.
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> NodeId {
        let id = NodeId(self.nodes.len());
        self.claim(addr, id);
        self.nodes.push(NodeSlot {
            node,
            addrs: vec![addr],
            nat: None,
            deadline: None,
            queued_timer: None,
            woken: false,
            batch_receive: false,
            spins: 0,
            spin_at: None,
            stats: Stats::default(),
        });
        self.wake(id);
        id
    }

    fn claim(&mut self, addr: SocketAddr, id: NodeId) {
        let prev = self.addrs.insert(addr, id);
        assert!(
            prev.is_none(),
            "address {addr} already belongs to node {prev:?}"
        );
    }

    /// Gives node `id` one more address.
    ///
    /// # Panics
    /// If `addr` already belongs to a node.
    pub fn add_address(&mut self, id: NodeId, addr: SocketAddr) {
        self.claim(addr, id);
        self.nodes[id.0].addrs.push(addr);
    }

    /// Moves node `id` from address `old` to `new` (a peer moving, or NAT rebinding seen from
    /// outside). Datagrams in flight to `old` are lost; the node is not told.
    ///
    /// # Panics
    /// If `old` is not an address of `id` or `new` belongs to a node.
    pub fn rebind(&mut self, id: NodeId, old: SocketAddr, new: SocketAddr) {
        let slot = &mut self.nodes[id.0];
        let i = slot.addrs.iter().position(|a| *a == old);
        let Some(i) = i else {
            panic!("{old} is not an address of node {id:?}");
        };
        slot.addrs[i] = new;
        self.addrs.remove(&old);
        self.claim(new, id);
    }

    /// The addresses of node `id`, the default source first.
    pub fn addresses(&self, id: NodeId) -> &[SocketAddr] {
        &self.nodes[id.0].addrs
    }

    /// The node that owns `addr`, if any.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.addrs.get(&addr).copied()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's id, in order of addition.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// Read access to a node.
    pub fn node(&self, id: NodeId) -> &N {
        &self.nodes[id.0].node
    }

    /// Write access to a node; the node is polled (transmits drained, timeout re-read) at the
    /// current instant by the next step.
    pub fn node_mut(&mut self, id: NodeId) -> &mut N {
        self.wake(id);
        &mut self.nodes[id.0].node
    }

    /// Makes node `id` receive like a host that drains a whole receive batch (GRO) before it
    /// builds anything: every datagram reaching it at one instant is handed over before it is
    /// polled for transmits, instead of a poll after each datagram (the default).
    pub fn set_batch_receive(&mut self, id: NodeId, on: bool) {
        self.nodes[id.0].batch_receive = on;
    }

    /// Polls node `id` at the current instant by the next step.
    pub fn wake(&mut self, id: NodeId) {
        let slot = &mut self.nodes[id.0];
        if !slot.woken {
            slot.woken = true;
            self.queue.push_wake(self.now, id);
        }
    }

    /// Datagram counters of node `id`.
    pub fn node_stats(&self, id: NodeId) -> &Stats {
        &self.nodes[id.0].stats
    }

    // ---- links ----

    /// The configuration of links created from now on for address pairs that have no route.
    pub fn set_default_link(&mut self, config: LinkConfig) {
        self.default_link = config;
    }

    /// Adds a link that routes can share (a named bottleneck).
    pub fn add_link(&mut self, config: LinkConfig) -> LinkId {
        self.links.push(Link::new(config, self.now));
        LinkId(self.links.len() - 1)
    }

    /// Routes datagrams from `src` to `dst` (wire addresses, after NAT translation) through
    /// `link`. Several routes may share one link, and then share its queue and bandwidth.
    pub fn set_route(&mut self, src: SocketAddr, dst: SocketAddr, link: LinkId) {
        assert!(link.0 < self.links.len(), "unknown link {link:?}");
        self.routes.insert((src, dst), link);
    }

    /// Routes datagrams between two IP addresses, any ports, through `link`, unless an
    /// address-pair route says otherwise. Handy for NATed flows whose ports are random.
    pub fn set_ip_route(&mut self, src: IpAddr, dst: IpAddr, link: LinkId) {
        assert!(link.0 < self.links.len(), "unknown link {link:?}");
        self.ip_routes.insert((src, dst), link);
    }

    /// A dedicated link for datagrams from `src` to `dst`.
    pub fn set_link(&mut self, src: SocketAddr, dst: SocketAddr, config: LinkConfig) -> LinkId {
        let id = self.add_link(config);
        self.routes.insert((src, dst), id);
        id
    }

    /// Dedicated links both ways between `a` and `b`, with the same configuration; returns
    /// (a to b, b to a).
    pub fn connect(
        &mut self,
        a: SocketAddr,
        b: SocketAddr,
        config: LinkConfig,
    ) -> (LinkId, LinkId) {
        let ab = self.set_link(a, b, config.clone());
        (ab, self.set_link(b, a, config))
    }

    /// The link datagrams from `src` to `dst` take, if one exists yet (default links are
    /// created on first use).
    pub fn route(&self, src: SocketAddr, dst: SocketAddr) -> Option<LinkId> {
        self.routes
            .get(&(src, dst))
            .or_else(|| self.ip_routes.get(&(src.ip(), dst.ip())))
            .or_else(|| self.auto_routes.get(&(src, dst)))
            .copied()
    }

    /// The configuration of a link; changes apply to datagrams offered from now on.
    pub fn link_config_mut(&mut self, id: LinkId) -> &mut LinkConfig {
        &mut self.links[id.0].config
    }

    /// The configuration of a link.
    pub fn link_config(&self, id: LinkId) -> &LinkConfig {
        &self.links[id.0].config
    }

    /// Datagram counters of a link.
    pub fn link_stats(&self, id: LinkId) -> &Stats {
        &self.links[id.0].stats
    }

    /// Bytes queued at a link's bottleneck now.
    pub fn link_backlog(&self, id: LinkId) -> u64 {
        self.links[id.0].backlog_bytes(self.now)
    }

    /// Number of links, default ones included.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    // ---- NAT ----

    /// Adds a NAT box owning `public_ip`.
    ///
    /// # Panics
    /// If another NAT owns `public_ip`.
    pub fn add_nat(&mut self, public_ip: IpAddr, kind: NatKind) -> NatId {
        let id = NatId(self.nats.len());
        let prev = self.nat_ips.insert(public_ip, id);
        assert!(
            prev.is_none(),
            "{public_ip} already belongs to NAT {prev:?}"
        );
        self.nats.push(Nat::new(public_ip, kind));
        id
    }

    /// Puts node `node` behind NAT `nat`: its (private) addresses are only reachable from the
    /// same LAN or through the NAT's mappings.
    pub fn attach_behind_nat(&mut self, node: NodeId, nat: NatId) {
        assert!(nat.0 < self.nats.len(), "unknown NAT {nat:?}");
        self.nodes[node.0].nat = Some(nat);
    }

    /// A NAT box.
    pub fn nat(&self, id: NatId) -> &Nat {
        &self.nats[id.0]
    }

    /// A NAT box, to configure (timeout, hairpinning) or flush.
    pub fn nat_mut(&mut self, id: NatId) -> &mut Nat {
        &mut self.nats[id.0]
    }

    // ---- traffic and observation ----

    /// Installs a callback that sees every datagram sent by a node just before it arrives,
    /// and may modify, drop, delay or replay it. Injected and replayed datagrams bypass it.
    pub fn set_interceptor(&mut self, interceptor: Interceptor) {
        self.interceptor = Some(interceptor);
    }

    /// Removes the interceptor.
    pub fn clear_interceptor(&mut self) {
        self.interceptor = None;
    }

    /// Makes a forged datagram from `from` arrive at `to` at time `at` (now if in the past),
    /// bypassing links and the interceptor; NAT filtering at `to` still applies.
    pub fn inject(&mut self, at: Instant, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let packet = Packet {
            from,
            to,
            data,
            ecn: None,
            link: None,
            origin: None,
            screened: true,
        };
        self.queue.push_packet(at.max(self.now), packet);
    }

    /// Starts recording datagram fates, keeping the last `cap` events (0: a default of
    /// 100 000).
    pub fn enable_trace(&mut self, cap: usize) {
        let cap = if cap == 0 { DEFAULT_TRACE_CAP } else { cap };
        self.trace = Some(Trace::new(cap));
    }

    /// The recorded trace, oldest first (empty unless enabled).
    pub fn trace(&self) -> impl Iterator<Item = &TraceEvent> {
        self.trace.iter().flat_map(Trace::events)
    }

    /// The trace as text, one event per line, for failing tests.
    pub fn dump_trace(&self) -> String {
        let mut out = format!("seed {} at +{:?}\n", self.seed, self.elapsed());
        match &self.trace {
            Some(t) => out.push_str(&t.dump(self.start)),
            None => out.push_str("(trace not enabled)\n"),
        }
        out
    }
}
