//! NAT boxes: filtering, mapping per destination, expiry, hairpinning, hole punching.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{addr, ms, network, Probe};
use crate::sim::{NatKind, Network, NodeId};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

/// A client behind a NAT of `kind` at 1.0.0.1, and echo servers at 2.0.0.1:9000 and
/// 2.0.0.2:9000.
struct Home {
    net: Network<Probe>,
    start: Instant,
    client: NodeId,
    servers: [NodeId; 2],
    nat: crate::sim::NatId,
}

const PRIVATE: &str = "192.168.1.2:5000";
const S1: &str = "2.0.0.1:9000";
const S2: &str = "2.0.0.2:9000";

fn home(kind: NatKind) -> Home {
    let (mut net, start) = network(21);
    let nat = net.add_nat(ip("1.0.0.1"), kind);
    let client = net.add_node(addr(PRIVATE), Probe::sink(start));
    net.attach_behind_nat(client, nat);
    let servers = [S1, S2].map(|s| net.add_node(addr(s), Probe::echo(start)));
    Home {
        net,
        start,
        client,
        servers,
        nat,
    }
}

impl Home {
    /// The client sends one datagram to `to`; runs until idle.
    fn client_sends(&mut self, to: &str) {
        self.net
            .node_mut(self.client)
            .script
            .push_back((addr(to), None, vec![1; 40]));
        self.net.run_until_idle().unwrap();
    }

    /// Node `from` sends one datagram to `to`; runs until idle.
    fn send(&mut self, from: NodeId, to: SocketAddr) {
        self.net
            .node_mut(from)
            .script
            .push_back((to, None, vec![2; 40]));
        self.net.run_until_idle().unwrap();
    }

    fn seen_by(&self, server: usize) -> Vec<SocketAddr> {
        self.net
            .node(self.servers[server])
            .rx
            .iter()
            .map(|r| r.from)
            .collect()
    }

    fn client_rx(&self) -> usize {
        self.net.node(self.client).rx.len()
    }
}

#[test]
fn port_restricted_nat_passes_replies_and_drops_unsolicited() {
    let mut h = home(NatKind::PortRestricted);
    h.client_sends(S1);
    let public = h.seen_by(0)[0];
    assert_eq!(public.ip(), ip("1.0.0.1"));
    assert_eq!(h.client_rx(), 1, "the echo reply passes");
    assert_eq!(h.net.node(h.client).rx[0].from, addr(S1));
    assert_eq!(h.net.node(h.client).rx[0].local, addr(PRIVATE));

    // S2 never received anything from the client: filtered.
    h.send(h.servers[1], public);
    assert_eq!(h.client_rx(), 1);
    assert_eq!(h.net.node_stats(h.servers[1]).dropped.nat, 1);
    // Same IP as S1 but another port: filtered too (port-dependent filtering).
    let other_port = h.net.add_node(addr("2.0.0.1:9001"), Probe::sink(h.start));
    h.send(other_port, public);
    assert_eq!(h.client_rx(), 1);
    // The private address is not reachable from outside at all.
    h.send(h.servers[1], addr(PRIVATE));
    assert_eq!(h.net.node_stats(h.servers[1]).dropped.no_route, 1);
    // S1 itself may send again.
    h.send(h.servers[0], public);
    assert_eq!(h.client_rx(), 2);
}

#[test]
fn address_restricted_and_full_cone_filter_less() {
    let mut h = home(NatKind::AddressRestricted);
    h.client_sends(S1);
    let public = h.seen_by(0)[0];
    let other_port = h.net.add_node(addr("2.0.0.1:9001"), Probe::sink(h.start));
    h.send(other_port, public);
    assert_eq!(h.client_rx(), 2, "same remote IP passes");
    h.send(h.servers[1], public);
    assert_eq!(h.client_rx(), 2, "other remote IP is filtered");

    let mut h = home(NatKind::FullCone);
    h.client_sends(S1);
    let public = h.seen_by(0)[0];
    h.send(h.servers[1], public);
    assert_eq!(h.client_rx(), 2, "anyone passes a full cone");
}

#[test]
fn symmetric_nat_maps_each_destination_to_its_own_port() {
    let mut h = home(NatKind::Symmetric);
    h.client_sends(S1);
    h.client_sends(S2);
    h.client_sends(S1);
    let (p1, p2) = (h.seen_by(0), h.seen_by(1));
    assert_eq!(p1[0], p1[1], "a mapping is reused for the same destination");
    assert_ne!(p1[0].port(), p2[0].port());
    assert_eq!(h.client_rx(), 3);
    // S2 cannot use the port mapped for S1.
    h.send(h.servers[1], p1[0]);
    assert_eq!(h.client_rx(), 3);
    assert_eq!(h.net.nat(h.nat).mapping_count(), 2);

    let mut h = home(NatKind::PortRestricted);
    h.client_sends(S1);
    h.client_sends(S2);
    assert_eq!(h.seen_by(0), h.seen_by(1), "endpoint-independent mapping");
}

#[test]
fn mappings_expire_after_inactivity() {
    let mut h = home(NatKind::PortRestricted);
    h.client_sends(S1); // outbound at t = 0; the echo reply (inbound) does not refresh
    let public = h.seen_by(0)[0];
    let s1 = h.servers[0];
    h.net.run_until(h.start + ms(29_000)).unwrap();
    h.send(s1, public);
    assert_eq!(h.client_rx(), 2, "alive before the timeout");
    h.net.run_until(h.start + ms(31_000)).unwrap();
    h.send(s1, public);
    assert_eq!(h.client_rx(), 2, "expired after it");
    assert_eq!(h.net.node_stats(s1).dropped.nat, 1);

    // A shorter timeout, kept alive by outbound traffic every 4 s.
    h.net.nat_mut(h.nat).set_mapping_timeout(ms(5_000));
    h.client_sends(S1);
    let public = *h.seen_by(0).last().unwrap();
    for _ in 0..5 {
        h.net.run_for(ms(4_000)).unwrap();
        h.client_sends(S1);
    }
    let now = h.net.now();
    assert_eq!(
        h.net
            .nat(h.nat)
            .mapped_address(now, addr(PRIVATE), addr(S1)),
        Some(public)
    );
    assert!(h.seen_by(0).iter().rev().take(6).all(|&p| p == public));
}

#[test]
fn hairpinning_is_off_by_default() {
    let mut h = home(NatKind::FullCone);
    let neighbour = h
        .net
        .add_node(addr("192.168.1.3:5000"), Probe::sink(h.start));
    h.net.attach_behind_nat(neighbour, h.nat);
    h.client_sends(S1);
    let public = h.seen_by(0)[0];
    h.send(neighbour, public);
    assert_eq!(h.client_rx(), 1);
    assert_eq!(h.net.node_stats(neighbour).dropped.nat, 1);
    // On the LAN, private addresses work directly.
    h.send(neighbour, addr(PRIVATE));
    assert_eq!(h.client_rx(), 2);
    assert_eq!(h.net.node(h.client).rx[1].from, addr("192.168.1.3:5000"));
    // With hairpinning on, the public address works too, seen from the neighbour's mapping.
    h.net.nat_mut(h.nat).set_hairpinning(true);
    h.send(neighbour, public);
    assert_eq!(h.client_rx(), 3);
    assert_eq!(h.net.node(h.client).rx[2].from.ip(), ip("1.0.0.1"));
}

/// Two peers behind NATs of `kind` learn their public addresses from a reflector, then both
/// send 5 datagrams to each other's reflected address. Returns what each received.
fn punch(kind: NatKind) -> (usize, usize) {
    let (mut net, start) = network(22);
    let reflector = addr("2.0.0.1:3478");
    let refl = net.add_node(reflector, Probe::echo(start));
    let mut peers = Vec::new();
    for (i, (private, public)) in [("10.1.0.2:5000", "1.0.0.1"), ("10.2.0.2:5000", "1.0.0.2")]
        .into_iter()
        .enumerate()
    {
        let nat = net.add_nat(ip(public), kind);
        let id = net.add_node(addr(private), Probe::sink(start));
        net.attach_behind_nat(id, nat);
        net.node_mut(id)
            .script
            .push_back((reflector, None, vec![i as u8; 40]));
        peers.push(id);
    }
    net.run_until_idle().unwrap();
    let seen: Vec<SocketAddr> = net.node(refl).rx.iter().map(|r| r.from).collect();
    assert_eq!(seen.len(), 2);
    let now = net.now();
    net.node_mut(peers[0]).send_more(now, seen[1], 5);
    net.node_mut(peers[1]).send_more(now, seen[0], 5);
    net.run_until_idle().unwrap();
    let stamped = |id: NodeId| net.node(id).rx.iter().filter(|r| r.intact).count();
    (stamped(peers[0]), stamped(peers[1]))
}

#[test]
fn hole_punching_works_through_port_restricted_but_not_symmetric_nats() {
    let (a, b) = punch(NatKind::PortRestricted);
    assert!(
        a >= 4 && b >= 4,
        "punch through port-restricted NATs: {a}/{b}"
    );
    assert_eq!(punch(NatKind::Symmetric), (0, 0));
}

#[test]
fn flushing_a_nat_rebinds_its_flows() {
    let mut h = home(NatKind::PortRestricted);
    h.client_sends(S1);
    let before = h.seen_by(0)[0];
    h.net.nat_mut(h.nat).flush();
    assert_eq!(h.net.nat(h.nat).mapping_count(), 0);
    // The old public port is closed...
    h.send(h.servers[0], before);
    assert_eq!(h.client_rx(), 1);
    // ...and the next outbound datagram gets a fresh mapping.
    h.client_sends(S1);
    let after = h.seen_by(0)[1];
    assert_eq!(after.ip(), before.ip());
    assert_ne!(after.port(), before.port());
    assert_eq!(h.client_rx(), 2);
}
