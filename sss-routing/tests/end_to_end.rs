//! Registration, lookup and punch coordination end to end on the simulated network: one
//! regserver, hosts on public addresses or behind NAT boxes, with and without loss.

mod common;

use std::time::Duration;

use common::World;
use sss_proto::sim::{LinkConfig, NatKind};
use sss_routing::client::KEEPALIVE_INTERVAL;
use sss_routing::{Event, LookupOutcome, Server, ServerConfig};

fn clean() -> LinkConfig {
    LinkConfig::with_latency(Duration::from_millis(20))
}

#[test]
fn registration_then_lookup_returns_the_verified_endpoints() {
    let mut w = World::new(1, clean());
    let a = w.add_host("198.51.100.1:5000", None);
    let mut config = w.client_config(2);
    config.reported = vec!["10.0.0.5:5000".parse().unwrap()];
    let b = w.add_host_with("198.51.100.2:6000", None, config, common::identity(2), true);
    w.run_for(Duration::from_secs(2));

    for (h, addr) in [(a, "198.51.100.1:5000"), (b, "198.51.100.2:6000")] {
        let observed = addr.parse().unwrap();
        assert_eq!(w.host(h).client.registered_as(), Some(observed));
        assert!(
            matches!(w.host(h).events[0].1, Event::Registered { observed: o } if o == observed)
        );
        assert!(w.server().record(&w.eid(h)).is_some());
    }

    w.lookup(a, b, false);
    let stranger = common::identity(99).eid();
    let now = w.net.now();
    w.host_mut(a).client.lookup(now, stranger, false).unwrap();
    w.run_for(Duration::from_secs(1));
    assert_eq!(
        w.lookup_outcome(a, &w.eid(b)),
        Some(LookupOutcome::Found(vec![
            "198.51.100.2:6000".parse().unwrap(),
            "10.0.0.5:5000".parse().unwrap()
        ]))
    );
    assert_eq!(
        w.lookup_outcome(a, &stranger),
        Some(LookupOutcome::NotFound)
    );
    assert!(w.punch_requests(b).is_empty(), "no NOTIFY without the flag");
}

/// Two hosts behind port-restricted NATs (the common home router, 30 s mapping timeout).
/// After two idle minutes (only keepalives keep the mappings), a lookup with NOTIFY makes
/// both sides probe each other, and the probes get through both NATs. Without NOTIFY only
/// the caller probes, and its probes die at the target's NAT.
#[test]
fn lookup_with_notify_makes_both_sides_punch_through_nats_after_idle() {
    for notify in [true, false] {
        let mut w = World::new(2, clean());
        let nat_a = w.add_nat("192.0.2.10", NatKind::PortRestricted);
        let nat_b = w.add_nat("192.0.2.20", NatKind::PortRestricted);
        let a = w.add_host("192.168.1.2:5000", Some(nat_a));
        let b = w.add_host("192.168.2.2:5000", Some(nat_b));
        w.run_for(Duration::from_secs(120));

        let a_public = w.host(a).client.registered_as().expect("A registered");
        let b_public = w.host(b).client.registered_as().expect("B registered");
        assert_eq!(
            a_public.ip(),
            "192.0.2.10".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            b_public.ip(),
            "192.0.2.20".parse::<std::net::IpAddr>().unwrap()
        );

        w.lookup(a, b, notify);
        w.run_for(Duration::from_secs(3));
        assert_eq!(
            w.lookup_outcome(a, &w.eid(b)),
            Some(LookupOutcome::Found(vec![b_public]))
        );
        let (ea, eb) = (w.eid(a), w.eid(b));
        if notify {
            assert_eq!(w.punch_requests(b), vec![(ea, vec![a_public])]);
            assert!(w.host(b).probed_by(&ea), "A's probes reach B");
            assert!(w.host(a).probed_by(&eb), "B's probes reach A");
        } else {
            assert!(w.punch_requests(b).is_empty());
            assert!(
                !w.host(b).probed_by(&ea),
                "B's NAT drops unsolicited probes"
            );
        }
    }
}

/// Loss, duplication and reordering on every link, for many seeds: both hosts register,
/// and a caller that repeats its lookup with NOTIFY (as a host repeats a connection attempt)
/// gets the target's endpoints while the target gets the caller's.
#[test]
fn registration_lookup_and_notify_survive_loss_over_many_seeds() {
    let lossy = LinkConfig {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(10),
        loss: 0.2,
        duplicate: 0.05,
        reorder: 0.05,
        reorder_delay: Duration::from_millis(50),
        ..LinkConfig::default()
    };
    for seed in 0..200 {
        let mut w = World::new(seed, lossy.clone());
        let a = w.add_host("198.51.100.1:5000", None);
        let b = w.add_host("198.51.100.2:5000", None);
        w.run_for(Duration::from_secs(180));
        for h in [a, b] {
            assert!(
                w.host(h).client.registered_as().is_some(),
                "seed {seed}: host not registered"
            );
        }
        let (ea, eb) = (w.eid(a), w.eid(b));
        let mut rounds = 0;
        while w.punch_requests(b).is_empty()
            || !matches!(w.lookup_outcome(a, &eb), Some(LookupOutcome::Found(_)))
        {
            rounds += 1;
            assert!(
                rounds <= 10,
                "seed {seed}: no lookup+notify after 10 rounds"
            );
            w.lookup(a, b, true);
            w.run_for(Duration::from_secs(12));
        }
        assert_eq!(
            w.lookup_outcome(a, &eb),
            Some(LookupOutcome::Found(vec!["198.51.100.2:5000"
                .parse()
                .unwrap()]))
        );
        assert!(w
            .punch_requests(b)
            .iter()
            .all(|(p, eps)| *p == ea && eps == &vec!["198.51.100.1:5000".parse().unwrap()]));
    }
}

#[test]
fn refresh_keeps_the_record_alive_beyond_its_lifetime() {
    let mut w = World::new(3, clean());
    let mut config = w.client_config(1);
    config.lifetime = Duration::from_secs(60);
    let a = w.add_host_with("198.51.100.1:5000", None, config, common::identity(1), true);
    w.run_for(Duration::from_secs(1));
    let first_seq = w.server().record(&w.eid(a)).unwrap().body.seq;
    w.run_for(Duration::from_secs(600));
    let rec = w.server().record(&w.eid(a)).expect("still registered");
    assert!(rec.body.seq >= first_seq + 9, "refreshed every 30 s");
    assert!(!w
        .host(a)
        .events
        .iter()
        .any(|(_, e)| *e == Event::RegistrationLost));
    assert_eq!(w.host(a).registered_events(), 1, "same observed endpoint");
}

/// A host cut off from the server: the server drops the record at expiry, the client reports
/// the loss, and registers again once the path is back.
#[test]
fn expired_records_disappear_and_the_client_registers_again() {
    let mut w = World::new(4, clean());
    let mut config = w.client_config(1);
    config.lifetime = Duration::from_secs(60);
    let addr = "198.51.100.1:5000".parse().unwrap();
    let server = common::SERVER_ADDR.parse().unwrap();
    let a = w.add_host_with("198.51.100.1:5000", None, config, common::identity(1), true);
    w.run_for(Duration::from_secs(1));
    let eid = w.eid(a);
    assert!(w.server().record(&eid).is_some());

    let down = LinkConfig {
        down: true,
        ..clean()
    };
    let up_ab = w.net.set_link(addr, server, down.clone());
    let up_ba = w.net.set_link(server, addr, down);
    w.run_for(Duration::from_secs(61));
    assert!(w.server().record(&eid).is_none(), "expired");
    assert_eq!(w.server().stats().expired, 1);
    assert!(w
        .host(a)
        .events
        .iter()
        .any(|(_, e)| *e == Event::RegistrationLost));

    w.net.link_config_mut(up_ab).down = false;
    w.net.link_config_mut(up_ba).down = false;
    w.run_for(Duration::from_secs(35)); // at most one RETRY_MAX of backoff
    assert!(w.server().record(&eid).is_some(), "registered again");
    assert_eq!(w.host(a).client.registered_as(), Some(addr));
}

/// The server restarts and forgets everything: the next keepalive tells the client, which
/// registers again at once instead of waiting for its refresh.
#[test]
fn client_reregisters_when_the_server_forgot_it() {
    let mut w = World::new(5, clean());
    let a = w.add_host("198.51.100.1:5000", None);
    w.run_for(Duration::from_secs(1));
    let eid = w.eid(a);
    let now = w.net.now();
    let fresh = Server::new(ServerConfig::new(w.server_id, common::seed32(77)), now);
    *w.net.node_mut(w.server).server_mut() = fresh;
    assert!(w.server().record(&eid).is_none());
    w.run_for(KEEPALIVE_INTERVAL + Duration::from_secs(1));
    assert!(w.server().record(&eid).is_some(), "registered again");
}

/// The NAT loses its mapping (reboot): the host's next keepalive leaves from a new public
/// port, the server says the record names another endpoint, and the client registers the
/// new one.
#[test]
fn client_reregisters_when_its_observed_address_changes() {
    let mut w = World::new(6, clean());
    let nat = w.add_nat("192.0.2.10", NatKind::PortRestricted);
    let a = w.add_host("192.168.1.2:5000", Some(nat));
    w.run_for(Duration::from_secs(1));
    let before = w.host(a).client.registered_as().unwrap();
    w.net.nat_mut(nat).flush();
    w.run_for(KEEPALIVE_INTERVAL + Duration::from_secs(1));
    let after = w.host(a).client.registered_as().unwrap();
    assert_ne!(before, after, "a new mapping");
    assert_eq!(
        w.server().record(&w.eid(a)).unwrap().body.observed,
        after,
        "the server holds the new endpoint"
    );
    assert_eq!(w.host(a).registered_events(), 2);
}

/// Every pair of NAT kinds, caller and target each behind one: after a lookup with NOTIFY
/// both punch, and a path exists when at least one side receives the other's probe (it can
/// answer to the probe's source, through the mapping the probe opened). It does for every
/// pair except a symmetric NAT against a port-restricted or symmetric one: there the
/// regserver will have to relay (a later slice).
#[test]
fn punching_works_for_every_nat_pair_except_symmetric_against_port_restricted() {
    let kinds = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];
    for (i, &ka) in kinds.iter().enumerate() {
        for (j, &kb) in kinds.iter().enumerate() {
            let mut w = World::new(100 + (i * 4 + j) as u64, clean());
            let nat_a = w.add_nat("192.0.2.10", ka);
            let nat_b = w.add_nat("192.0.2.20", kb);
            let a = w.add_host("192.168.1.2:5000", Some(nat_a));
            let b = w.add_host("192.168.2.2:5000", Some(nat_b));
            w.run_for(Duration::from_secs(2));
            w.lookup(a, b, true);
            w.run_for(Duration::from_secs(3));
            assert_eq!(
                w.punch_requests(b).len(),
                1,
                "{ka:?}/{kb:?}: NOTIFY arrives"
            );
            let (ea, eb) = (w.eid(a), w.eid(b));
            let path = w.host(a).probed_by(&eb) || w.host(b).probed_by(&ea);
            let hard = |x: NatKind, y: NatKind| {
                x == NatKind::Symmetric && matches!(y, NatKind::PortRestricted | NatKind::Symmetric)
            };
            assert_eq!(path, !(hard(ka, kb) || hard(kb, ka)), "{ka:?} -> {kb:?}");
        }
    }
}

/// Forty hosts, half behind their own port-restricted NATs and a few sharing one NAT, on
/// lossy links, for a few seeds: every host registers, and lookups with NOTIFY between
/// random pairs (repeated like connection attempts) all end with the target's verified
/// endpoints while the target is told to punch.
#[test]
fn forty_hosts_behind_nats_register_and_find_each_other() {
    let lossy = LinkConfig {
        latency: Duration::from_millis(25),
        jitter: Duration::from_millis(10),
        loss: 0.1,
        ..LinkConfig::default()
    };
    for seed in 0..8u64 {
        let mut w = World::new(1_000 + seed, lossy.clone());
        let shared = w.add_nat("192.0.2.200", NatKind::PortRestricted);
        let mut hosts = Vec::new();
        for i in 0..40u32 {
            let h = match i % 4 {
                0 | 1 => {
                    let nat = w.add_nat(&format!("192.0.2.{}", 10 + i), NatKind::PortRestricted);
                    w.add_host(&format!("192.168.{i}.2:5000"), Some(nat))
                }
                2 => w.add_host(&format!("10.77.0.{i}:5000"), Some(shared)),
                _ => w.add_host(&format!("198.51.100.{i}:5000"), None),
            };
            hosts.push(h);
        }
        w.run_for(Duration::from_secs(120));
        for &h in &hosts {
            assert!(w.host(h).client.registered_as().is_some(), "seed {seed}");
        }
        assert_eq!(w.server().record_count(), 40);

        let pairs: Vec<(usize, usize)> = (0..20)
            .map(|k| (k, (k * 7 + 3 + seed as usize) % 40))
            .filter(|(x, y)| x != y)
            .collect();
        for _round in 0..6 {
            for &(x, y) in &pairs {
                let (a, b) = (hosts[x], hosts[y]);
                let found = matches!(
                    w.lookup_outcome(a, &w.eid(b)),
                    Some(LookupOutcome::Found(_))
                );
                let told = w.punch_requests(b).iter().any(|(p, _)| *p == w.eid(a));
                if !(found && told) && w.host(a).client.pending_lookups() == 0 {
                    w.lookup(a, b, true);
                }
            }
            w.run_for(Duration::from_secs(12));
        }
        for &(x, y) in &pairs {
            let (a, b) = (hosts[x], hosts[y]);
            let want = w.host(b).client.registered_as().unwrap();
            match w.lookup_outcome(a, &w.eid(b)) {
                Some(LookupOutcome::Found(eps)) => assert_eq!(eps[0], want, "seed {seed}"),
                other => panic!("seed {seed}: {x} -> {y}: {other:?}"),
            }
            assert!(
                w.punch_requests(b).iter().any(|(p, _)| *p == w.eid(a)),
                "seed {seed}: {y} told about {x}"
            );
        }
    }
}
