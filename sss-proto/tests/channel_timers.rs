//! Channel timers must always make progress: whenever `poll_timeout` reports a deadline that
//! has passed, `handle_timeout` followed by `poll_transmit` must act on it (send something or
//! move the deadline), or the driver busy-loops.
//!
//! The case that once failed: a responder whose peer's first data packet comes from a new
//! address (NAT rebinding right after the handshake initiation) is still bound by the
//! anti-amplification limit. It owes an ACK for that packet, but it had spent nearly three
//! times what it received on its response and 0.5-RTT data, so the packet planner refused
//! even a pure ACK (charging it a full segment), while `poll_timeout` kept reporting the ACK
//! deadline in the past. Sending that ACK alone is not enough: if it acknowledges everything
//! the initiator sent, the initiator goes quiet and the responder's data waits behind the
//! limit for good, so the responder also sends a small PING to the new address, whose answer
//! validates it. Both tests run that case to a completed transfer.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::setup::{endpoint_config, fast_config, pair};
use common::{addr, identity, Bulk, TestHost};
use sss_proto::channel::{ChannelConfig, ChannelEvent};
use sss_proto::packet::{classify, PacketKind};
use sss_proto::sim::{LinkConfig, Node, Verdict};

const LATENCY: Duration = Duration::from_millis(10);
/// Until then, every data packet from A after its first is lost.
const LOSS_UNTIL: Duration = Duration::from_millis(250);
const BYTES: u64 = 60_000;

/// The address A's NAT gives it after rebinding.
fn rebound() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 5001))
}

/// The test configuration: no path MTU discovery, so that A's first data packet is its small
/// key-confirming PING, not a large MTU probe that would raise B's allowance.
fn config() -> ChannelConfig {
    let mut c = fast_config();
    c.mtu_discovery = false;
    c
}

fn is_data(data: &[u8]) -> bool {
    classify(data) == Some(PacketKind::Data)
}

/// What the "network" does to A's datagrams to B: the handshake initiation comes from
/// `addr(1)`; every data packet from the rebound address; data packets after the first are
/// lost until `start + LOSS_UNTIL`, so B hears from the new address exactly once while it
/// still owes an ACK.
struct RebindAfterInitiation {
    start: Instant,
    data_seen: u32,
}

impl RebindAfterInitiation {
    /// `Some(new source)` to deliver from, `None` to drop.
    fn route(&mut self, time: Instant, from: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        if from != addr(1) || !is_data(data) {
            return Some(from);
        }
        self.data_seen += 1;
        if self.data_seen > 1 && time < self.start + LOSS_UNTIL {
            return None;
        }
        Some(rebound())
    }
}

#[test]
fn responder_acks_a_rebound_peer_while_amplification_limited() {
    let mut p = pair(41, LinkConfig::with_latency(LATENCY), config());
    p.net.set_default_link(LinkConfig::with_latency(LATENCY));
    p.net.add_address(p.a, rebound());
    // B sends, A receives: B has 0.5-RTT data to spend its amplification budget on.
    p.net.node_mut(p.b).policy =
        common::host::Policy::Accept(Box::new(|_| Bulk::sender(41, BYTES)));
    let now = p.net.now();
    let b_eid = p.b_eid;
    let h = p
        .net
        .node_mut(p.a)
        .connect(now, b_eid, addr(2), Bulk::receiver(41, BYTES));
    let mut nat = RebindAfterInitiation {
        start: p.start,
        data_seen: 0,
    };
    let b_addr = addr(2);
    p.net.set_interceptor(Box::new(move |i| {
        if i.to != b_addr {
            return Verdict::Deliver;
        }
        match nat.route(i.time, i.from, i.data) {
            Some(from) => {
                i.from = from;
                Verdict::Deliver
            }
            None => Verdict::Drop,
        }
    }));

    // B gets A's first data packet (a PING) from the new address at about 3 one-way delays
    // and owes an ACK for it. Before the fix B never sent it, and the simulator reported B's
    // timer spinning at the ACK deadline.
    p.net
        .run_until(p.start + LOSS_UNTIL - Duration::from_millis(10))
        .unwrap_or_else(|e| panic!("B's timers stalled: {e}"));
    let b = p.net.node(p.b).only();
    assert!(
        p.net
            .node(p.b)
            .events
            .iter()
            .any(|(_, e)| matches!(e, ChannelEvent::PathChanged { to, .. } if *to == rebound())),
        "B must have seen A move; events {:?}",
        p.net.node(p.b).events
    );
    let stats = b.channel.stats();
    assert_eq!(
        stats.packets_received, 1,
        "B must have heard exactly one data packet (from the new address)"
    );
    assert!(
        stats.acks_sent >= 1,
        "B must acknowledge that packet although it is amplification-limited: {stats:?}"
    );
    // Everything B sent since: at most three times what it received (the 1200-byte
    // initiation and one small packet), the ACK included.
    assert!(
        stats.bytes_sent <= 3 * (1200 + stats.bytes_received),
        "anti-amplification limit broken: {stats:?}"
    );

    // Then the loss ends and the transfer completes.
    let (a, bn) = (p.a, p.b);
    let done = p
        .net
        .run_while(p.net.now() + Duration::from_secs(30), |net| {
            let received = net.node(a).slot(h).upper.complete();
            let acked = net.node(bn).slots.values().any(|s| s.upper.all_acked());
            !(received && acked)
        })
        .unwrap_or_else(|e| panic!("simulation error: {e}"));
    assert!(done, "transfer did not complete after the rebinding");
}

/// A datagram on its way.
struct InFlight {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Two test hosts driven by hand (no simulator), checking after every timer firing that the
/// host either sent something or moved its deadline past `now`.
struct Driver {
    now: Instant,
    hosts: BTreeMap<SocketAddr, TestHost>,
    wire: Vec<InFlight>,
    nat: RebindAfterInitiation,
    buf: Vec<u8>,
    /// Timer firings after which a host sent nothing yet still reported a past deadline.
    stuck_firings: u32,
}

impl Driver {
    /// Drains `host`'s transmits at `now`; returns how many it sent.
    fn drain(&mut self, at: SocketAddr) -> usize {
        let now = self.now;
        let host = self.hosts.get_mut(&at).expect("host");
        let mut sent = 0;
        while let Some(t) = host.poll_transmit(now, &mut self.buf) {
            let segment = t.segment_size.unwrap_or(t.size).max(1);
            for d in self.buf[..t.size].chunks(segment) {
                sent += 1;
                let mut from = at;
                if t.destination == addr(2) {
                    match self.nat.route(now, at, d) {
                        Some(f) => from = f,
                        None => continue,
                    }
                }
                self.wire.push(InFlight {
                    at: now + LATENCY,
                    from,
                    to: t.destination,
                    data: d.to_vec(),
                });
            }
        }
        sent
    }

    fn step(&mut self) {
        let next_arrival = self.wire.iter().map(|d| d.at).min();
        let next_timer = self
            .hosts
            .values_mut()
            .filter_map(|h| h.poll_timeout())
            .min();
        let next = match (next_arrival, next_timer) {
            (Some(a), Some(t)) => a.min(t),
            (a, t) => a.or(t).unwrap_or_else(|| {
                panic!(
                    "nothing left to do at {:?}: events {:?}",
                    self.now,
                    self.hosts.values().map(|h| &h.events).collect::<Vec<_>>()
                )
            }),
        };
        self.now = self.now.max(next);
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|d| d.at <= now);
        self.wire = rest;
        for mut d in due {
            // A listens on both of its addresses.
            let to = if d.to == rebound() { addr(1) } else { d.to };
            if let Some(host) = self.hosts.get_mut(&to) {
                host.handle_datagram(now, to, d.from, &mut d.data);
            }
        }
        let ats: Vec<SocketAddr> = self.hosts.keys().copied().collect();
        for at in ats {
            self.drain(at);
            let host = self.hosts.get_mut(&at).expect("host");
            if host.poll_timeout().is_some_and(|t| t <= now) {
                host.handle_timeout(now);
                let sent = self.drain(at);
                let host = self.hosts.get_mut(&at).expect("host");
                if sent == 0 && host.poll_timeout().is_some_and(|t| t <= now) {
                    self.stuck_firings += 1;
                }
            }
        }
    }
}

#[test]
fn a_passed_deadline_always_leads_to_a_send_or_a_later_deadline() {
    let start = Instant::now();
    let mut a = TestHost::new(&identity(1), endpoint_config(1, config()), start);
    let b_id = identity(2);
    let mut b = TestHost::new(&b_id, endpoint_config(2, config()), start);
    b.policy = common::host::Policy::Accept(Box::new(|_| Bulk::sender(5, BYTES)));
    let h = a.connect(start, b_id.eid(), addr(2), Bulk::receiver(5, BYTES));
    let mut d = Driver {
        now: start,
        hosts: BTreeMap::from([(addr(1), a), (addr(2), b)]),
        wire: Vec::new(),
        nat: RebindAfterInitiation {
            start,
            data_seen: 0,
        },
        buf: Vec::new(),
        stuck_firings: 0,
    };
    // The initiation goes out at once.
    d.drain(addr(1));
    for _ in 0..200_000 {
        d.step();
        assert_eq!(
            d.stuck_firings,
            0,
            "a host fired its timers at {:?}, sent nothing and still reports a passed deadline",
            d.now - start
        );
        let a = &d.hosts[&addr(1)];
        let b = &d.hosts[&addr(2)];
        if a.slot(h).upper.complete() && b.only().upper.all_acked() {
            break;
        }
    }
    let a = &d.hosts[&addr(1)];
    assert!(
        a.slot(h).upper.complete(),
        "transfer incomplete after the rebinding: received {:?}",
        a.slot(h).upper.received
    );
}
