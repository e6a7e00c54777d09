//! The relay (spec/routing.md §6): sim tests with hosts behind symmetric NATs, and the
//! server driven directly against hostile input (third-party sources, floods, caps, expiry).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{identity, ServerRig, World, SERVER_ADDR};
use sss_proto::sim::{LinkConfig, NatKind};
use sss_proto::{Eid, Identity};
use sss_routing::server::RELAY_IDLE;
use sss_routing::wire::{
    relay_header, ErrorCode, ErrorMsg, Message, RelayOpen, RelayOpened, MAX_RELAY_DATAGRAM,
    RELAY_OPENED_LEN, RELAY_OPEN_LEN,
};
use sss_routing::{RelayOutcome, ServerConfig};

fn lossy(loss: f64) -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(25),
        jitter: Duration::from_millis(5),
        loss,
        duplicate: 0.02,
        reorder: 0.02,
        reorder_delay: Duration::from_millis(30),
        ..LinkConfig::default()
    }
}

/// Two hosts behind symmetric NATs (no punching possible) register, one opens a relay to
/// the other, and both exchange datagrams through the regserver, over many seeds with loss.
/// Both learn the same relay_id; what arrives is exactly what the other side sent, from the
/// server's address.
#[test]
fn hosts_behind_symmetric_nats_exchange_data_through_the_relay() {
    for seed in 0..60 {
        let loss = if seed % 2 == 0 { 0.0 } else { 0.1 };
        let mut w = World::new(seed, lossy(loss));
        let nat_a = w.add_nat("192.0.2.10", NatKind::Symmetric);
        let nat_b = w.add_nat("192.0.2.20", NatKind::Symmetric);
        let a = w.add_host("10.0.0.1:5000", Some(nat_a));
        let b = w.add_host("10.0.1.1:5000", Some(nat_b));
        w.run_for(Duration::from_secs(20));
        for h in [a, b] {
            assert!(w.host(h).client.registered_as().is_some(), "seed {seed}");
        }
        let (ea, eb) = (w.eid(a), w.eid(b));
        // A caller repeats its request until it is answered (as the host retries a dial).
        let mut rounds = 0;
        while !matches!(w.relay_outcome(a, &eb), Some(RelayOutcome::Opened { .. }))
            || w.host(b).relay_to(&ea).is_none()
        {
            rounds += 1;
            assert!(rounds <= 5, "seed {seed}: no relay after 5 rounds");
            w.open_relay(a, b);
            w.run_for(Duration::from_secs(11));
        }
        let id = w.host(a).relay_to(&eb).unwrap();
        assert_eq!(w.host(b).relay_to(&ea), Some(id), "seed {seed}: one slot");
        assert_eq!(w.server().relay_between(&ea, &eb), Some(id));

        let sent = 40u8;
        for i in 0..sent {
            w.send_relayed(a, b, &[0x80, i, 0xa]);
            w.send_relayed(b, a, &[0x80, i, 0xb]);
            w.run_for(Duration::from_millis(20));
        }
        w.run_for(Duration::from_secs(1));
        let server: SocketAddr = SERVER_ADDR.parse().unwrap();
        for (h, tag) in [(a, 0xb), (b, 0xa)] {
            let got = &w.host(h).relayed;
            assert!(
                got.iter()
                    .all(|(from, rid, d)| *from == server && *rid == id && d[2] == tag),
                "seed {seed}: only the peer's datagrams, from the server"
            );
            let distinct: std::collections::BTreeSet<u8> =
                got.iter().map(|(_, _, d)| d[1]).collect();
            if loss == 0.0 {
                assert_eq!(distinct.len(), usize::from(sent), "seed {seed}: all arrive");
            } else {
                // Two lossy hops: about 81 % arrive.
                assert!(
                    distinct.len() >= 20,
                    "seed {seed}: {} of {sent}",
                    distinct.len()
                );
            }
        }
        let st = w.server().stats();
        assert!(st.relayed_packets >= 40 && st.relayed_packets <= 2 * u64::from(sent) * 2);
        assert_eq!(st.relay_dropped, 0, "seed {seed}");
    }
}

/// A RELAY_DATA with the right relay_id from any other address than the slot's two
/// registered endpoints is dropped: from a third registered host, from an unregistered one,
/// from the right IP with another port.
#[test]
fn relay_data_from_a_third_address_is_dropped() {
    let mut w = World::new(3, LinkConfig::with_latency(Duration::from_millis(20)));
    let nat_a = w.add_nat("192.0.2.10", NatKind::Symmetric);
    let a = w.add_host("10.0.0.1:5000", Some(nat_a));
    let b = w.add_host("198.51.100.2:5000", None);
    let c = w.add_host("198.51.100.3:5000", None);
    w.run_for(Duration::from_secs(5));
    w.open_relay(a, b);
    w.run_for(Duration::from_secs(2));
    let eb = w.eid(b);
    let id = w.host(a).relay_to(&eb).expect("relay opened");
    let server: SocketAddr = SERVER_ADDR.parse().unwrap();
    w.host_mut(c).send_relayed(server, id, b"from c");
    let stranger = w.add_host_with(
        "198.51.100.9:7000",
        None,
        w.client_config(9),
        identity(9),
        false,
    );
    w.host_mut(stranger)
        .send_relayed(server, id, b"from a stranger");
    // B's IP, another port.
    let b_other_port = w.add_host_with(
        "198.51.100.2:5001",
        None,
        w.client_config(10),
        identity(10),
        false,
    );
    w.host_mut(b_other_port)
        .send_relayed(server, id, b"spoofed port");
    w.run_for(Duration::from_secs(1));
    assert!(w.host(a).relayed.is_empty(), "nothing reached A");
    assert!(w.host(b).relayed.is_empty(), "nothing reached B");
    assert_eq!(w.server().stats().relay_dropped, 3);
    assert_eq!(w.server().stats().relayed_packets, 0);
    // The slot still works for its own hosts.
    w.send_relayed(b, a, b"hello a");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.host(a).relayed.len(), 1);
    assert_eq!(w.host(a).relayed[0].2, b"hello a");
}

// ---- the server driven directly ----

type Rig = ServerRig;

/// What the relay tests add to the rig.
impl ServerRig {
    /// Registers `host` from `from`; returns its NOTIFY token.
    fn register_host(&mut self, host: &Identity, from: SocketAddr) -> u64 {
        let seq = self.request();
        let (token, reply) = self.register_with_id(host, from, seq);
        assert!(matches!(reply, Message::Registered(_)), "{reply:?}");
        token
    }

    fn relay_open_msg(&mut self, from: SocketAddr, caller: Eid, target: Eid) -> Vec<u8> {
        let cookie = self.cookie(from);
        let request_id = self.request();
        Message::RelayOpen(RelayOpen {
            request_id,
            cookie,
            caller,
            target,
        })
        .to_vec()
    }

    fn relay_open(
        &mut self,
        from: SocketAddr,
        caller: Eid,
        target: Eid,
    ) -> Vec<(SocketAddr, Message)> {
        let msg = self.relay_open_msg(from, caller, target);
        self.send(from, &msg)
            .into_iter()
            .map(|(to, d)| (to, Message::decode(&d).unwrap()))
            .collect()
    }

    fn relay_data(&mut self, from: SocketAddr, id: u32, len: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut d = relay_header(id).to_vec();
        d.resize(len, 0x5a);
        self.send(from, &d)
    }
}

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Two registered hosts, A at 192.0.2.1:1000 and B at 192.0.2.2:2000, with a slot.
fn rig_with_slot(tweak: impl FnOnce(&mut ServerConfig)) -> (Rig, Eid, Eid, u32) {
    let mut r = Rig::with(tweak);
    let (a, b) = (identity(1), identity(2));
    let (pa, pb) = (ep("192.0.2.1:1000"), ep("192.0.2.2:2000"));
    r.register_host(&a, pa);
    let token_b = r.register_host(&b, pb);
    let out = r.relay_open(pa, a.eid(), b.eid());
    assert_eq!(out.len(), 2, "{out:?}");
    // The target first, with its NOTIFY token; then the caller.
    let Message::RelayOpened(to_b) = &out[0].1 else {
        panic!("{out:?}")
    };
    let Message::RelayOpened(to_a) = &out[1].1 else {
        panic!("{out:?}")
    };
    assert_eq!(
        (out[0].0, to_b.request_id, to_b.peer),
        (pb, token_b, a.eid())
    );
    assert_eq!((out[1].0, to_a.peer), (pa, b.eid()));
    assert_eq!(to_a.relay_id, to_b.relay_id);
    assert_eq!(to_a.idle, RELAY_IDLE.as_secs() as u32);
    (r, a.eid(), b.eid(), to_a.relay_id)
}

#[test]
fn a_slot_forwards_unchanged_between_its_two_endpoints_only() {
    let (mut r, _, _, id) = rig_with_slot(|_| {});
    let (pa, pb) = (ep("192.0.2.1:1000"), ep("192.0.2.2:2000"));
    let mut d = relay_header(id).to_vec();
    d.extend_from_slice(b"sealed packet");
    assert_eq!(r.send(pa, &d), vec![(pb, d.clone())]);
    assert_eq!(r.send(pb, &d), vec![(pa, d.clone())]);
    // The forward entry point agrees, without queueing anything.
    assert_eq!(r.server.forward(r.now, pa, &d), Some(pb));
    assert_eq!(r.server.queued(), 0);
    // Another source, another id, an empty or oversized datagram: dropped, never answered.
    assert!(r.send(ep("192.0.2.3:1000"), &d).is_empty());
    assert!(r.send(ep("192.0.2.1:1001"), &d).is_empty());
    assert!(r.relay_data(pa, id.wrapping_add(1), 100).is_empty());
    assert!(r.relay_data(pa, id, 5).is_empty());
    assert!(r.relay_data(pa, id, MAX_RELAY_DATAGRAM + 1).is_empty());
    assert_eq!(r.relay_data(pa, id, MAX_RELAY_DATAGRAM).len(), 1);
    let st = r.server.stats();
    assert_eq!(st.relay_dropped, 5);
    assert_eq!(st.relayed_packets, 4);
}

/// What the server sends because of a RELAY_OPEN is never larger than the RELAY_OPEN (each
/// RELAY_OPENED), and a forwarded datagram is exactly as large as the one received.
#[test]
fn relay_messages_do_not_amplify() {
    const _: () = assert!(RELAY_OPENED_LEN <= RELAY_OPEN_LEN);
    let (mut r, a, b, id) = rig_with_slot(|_| {});
    let pa = ep("192.0.2.1:1000");
    let open = r.relay_open_msg(pa, a, b);
    for (_, d) in r.send(pa, &open) {
        assert!(d.len() <= open.len());
    }
    for len in [6, 100, 1200, MAX_RELAY_DATAGRAM] {
        let out = r.relay_data(pa, id, len);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), len);
    }
}

/// Found by the routing_server fuzzer: two EIDs registered from one source and a slot
/// between them made the server send every RELAY_DATA back to its source.
#[test]
fn no_slot_between_two_eids_behind_one_socket_and_nothing_relayed_back_to_its_source() {
    let mut r = Rig::new();
    let (a, b) = (identity(1), identity(2));
    let shared = ep("192.0.2.1:1000");
    r.register_host(&a, shared);
    r.register_host(&b, shared);
    let out = r.relay_open(shared, a.eid(), b.eid());
    assert!(
        matches!(
            &out[..],
            [(to, Message::Error(ErrorMsg { code: ErrorCode::NoTarget, .. }))] if *to == shared
        ),
        "{out:?}"
    );
    assert_eq!(r.server.relay_count(), 0);
    // No slot, so any RELAY_DATA from there is dropped, not echoed.
    for id in [0, 1, u32::MAX] {
        assert!(r.relay_data(shared, id, 100).is_empty());
    }
}

#[test]
fn relay_open_is_refused_for_strangers_and_refreshes_an_existing_slot() {
    let (mut r, a, b, id) = rig_with_slot(|_| {});
    let (pa, pb) = (ep("192.0.2.1:1000"), ep("192.0.2.2:2000"));
    let error = |out: Vec<(SocketAddr, Message)>| match &out[..] {
        [(_, Message::Error(ErrorMsg { code, .. }))] => *code,
        other => panic!("expected one ERROR, got {other:?}"),
    };
    // The caller must be registered from the source.
    assert_eq!(
        error(r.relay_open(ep("192.0.2.9:1"), a, b)),
        ErrorCode::NotRegistered
    );
    let c = identity(3).eid();
    assert_eq!(error(r.relay_open(pa, c, b)), ErrorCode::NotRegistered);
    // The target must be registered, and not the caller.
    assert_eq!(error(r.relay_open(pa, a, c)), ErrorCode::NoTarget);
    assert_eq!(error(r.relay_open(pa, a, a)), ErrorCode::NoTarget);
    // A stale or missing cookie gets a COOKIE, nothing else.
    let stale = Message::RelayOpen(RelayOpen {
        request_id: 1,
        cookie: [0; 16],
        caller: a,
        target: b,
    });
    let out = r.send(pa, &stale.to_vec());
    assert!(matches!(Message::decode(&out[0].1), Ok(Message::Cookie(_))));
    // The other host asking, or the caller again: the same slot.
    for (from, caller, target) in [(pb, b, a), (pa, a, b)] {
        let out = r.relay_open(from, caller, target);
        let last = out.last().expect("an answer");
        assert!(
            matches!(&last.1, Message::RelayOpened(RelayOpened { relay_id, .. }) if *relay_id == id)
        );
        assert_eq!(last.0, from);
    }
    assert_eq!(r.server.relay_count(), 1);
    assert_eq!(r.server.stats().relays_refreshed, 2);
}

/// A host flooding through its slot gets at most the burst plus the rate through, whatever
/// it sends; the excess is counted and dropped.
#[test]
fn the_byte_budget_holds_under_a_flood() {
    let (mut r, _, _, id) = rig_with_slot(|c| {
        c.relay_burst = 50_000;
        c.relay_rate = 100_000;
    });
    let pa = ep("192.0.2.1:1000");
    let mut forwarded = 0u64;
    // 10 s of 1000-byte datagrams at 10 MB/s (a datagram every 100 µs).
    for i in 0..100_000u32 {
        r.now += Duration::from_micros(100);
        if i % 2 == 0 {
            forwarded += r.relay_data(pa, id, 1000).len() as u64 * 1000;
        } else {
            // The forward entry point counts against the same budget.
            forwarded += u64::from(
                r.server
                    .forward(r.now, pa, &{
                        let mut d = relay_header(id).to_vec();
                        d.resize(1000, 0);
                        d
                    })
                    .is_some(),
            ) * 1000;
        }
    }
    let allowed = 50_000 + 100_000 * 10;
    assert!(forwarded <= allowed, "{forwarded} > {allowed}");
    assert!(
        forwarded >= allowed - 2_000,
        "the budget is used: {forwarded}"
    );
    let st = r.server.stats();
    assert_eq!(st.relayed_bytes, forwarded);
    assert_eq!(st.relayed_packets + st.relay_over_budget, 100_000);
    assert_eq!(r.server.queued(), 0);
}

/// Slots are capped per host and in all, whatever RELAY_OPENs arrive.
#[test]
fn relay_caps_hold() {
    let mut r = Rig::with(|c| {
        c.max_relays = 5;
        c.max_relays_per_host = 3;
    });
    let hosts: Vec<(Identity, SocketAddr)> = (0..12u16)
        .map(|i| {
            (
                identity(10 + u64::from(i)),
                ep(&format!("192.0.2.{}:4000", 1 + i)),
            )
        })
        .collect();
    for (h, p) in &hosts {
        r.register_host(h, *p);
    }
    let mut full = 0;
    // Host 0 asks for everyone: 3 slots, then FULL.
    for (t, _) in &hosts[1..] {
        let (h0, p0) = (&hosts[0].0, hosts[0].1);
        let out = r.relay_open(p0, h0.eid(), t.eid());
        if matches!(
            out.last(),
            Some((
                _,
                Message::Error(ErrorMsg {
                    code: ErrorCode::Full,
                    ..
                })
            ))
        ) {
            full += 1;
        }
    }
    assert_eq!(r.server.relay_count(), 3);
    assert_eq!(full, 8);
    // Other pairs: up to 5 in all.
    for i in (4..12).step_by(2) {
        let (c, pc) = (hosts[i].0.eid(), hosts[i].1);
        let t = hosts[i + 1].0.eid();
        r.relay_open(pc, c, t);
    }
    assert_eq!(r.server.relay_count(), 5);
}

/// A slot ends RELAY_IDLE after its last datagram; traffic keeps it alive.
#[test]
fn idle_slots_expire_and_busy_ones_do_not() {
    let (mut r, a, b, id) = rig_with_slot(|_| {});
    let (pa, pb) = (ep("192.0.2.1:1000"), ep("192.0.2.2:2000"));
    // Busy for three idle periods: still there.
    let end = r.now + 3 * RELAY_IDLE;
    while r.now < end {
        r.now += RELAY_IDLE / 4;
        assert_eq!(r.relay_data(pa, id, 100).len(), 1);
        r.server.handle_timeout(r.now);
    }
    assert_eq!(r.server.relay_count(), 1);
    // The timer asks to be called by the deadline.
    let last = r.now;
    r.now += RELAY_IDLE - Duration::from_millis(1);
    r.server.handle_timeout(r.now);
    assert_eq!(r.server.relay_count(), 1);
    r.now = last + RELAY_IDLE;
    assert!(r.server.poll_timeout().unwrap() <= r.now);
    // Even before the timer runs, the slot forwards nothing any more.
    assert!(r.relay_data(pb, id, 100).is_empty());
    r.server.handle_timeout(r.now);
    assert_eq!(r.server.relay_count(), 0);
    assert_eq!(r.server.relay_between(&a, &b), None);
    assert_eq!(r.server.stats().relays_expired, 1);
    // A new RELAY_OPEN makes a new slot (the per-host count was released).
    let out = r.relay_open(pa, a, b);
    assert!(matches!(out.last(), Some((_, Message::RelayOpened(_)))));
    assert_eq!(r.server.relay_count(), 1);
}
