//! Channel behaviour on the simulated network: handshakes under loss, tampering, replay,
//! exact bulk transfer under impairments over many seeds, timers and close.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::setup::{fast_config, pair};
use common::{addr, seeds};
use sss_proto::channel::{ChannelError, ChannelEvent};
use sss_proto::handshake::RefuseCode;
use sss_proto::packet::{classify, PacketKind};
use sss_proto::sim::{LinkConfig, Verdict};

fn is_data(data: &[u8]) -> bool {
    classify(data) == Some(PacketKind::Data)
}

#[test]
fn handshake_completes_under_30_percent_loss() {
    let mut slowest = Duration::ZERO;
    for seed in 0..seeds(200) {
        let mut link = LinkConfig::with_latency(Duration::from_millis(20));
        link.loss = 0.3;
        let mut config = fast_config();
        config.handshake_timeout = Duration::from_secs(90);
        let mut p = pair(seed, link, config);
        let h = p.start_transfer(seed, 0);
        let (a, b) = (p.a, p.b);
        let deadline = p.net.now() + Duration::from_secs(90);
        let done = p
            .net
            .run_while(deadline, |net| {
                !(net.node(a).connected(h)
                    && net
                        .node(b)
                        .slots
                        .values()
                        .any(|s| s.channel.is_established()))
            })
            .unwrap();
        assert!(
            done,
            "seed {seed}: handshake did not complete; events {:?}",
            p.net.node(a).events
        );
        slowest = slowest.max(p.net.elapsed());
        assert!(p.net.node(a).closed(h).is_none(), "seed {seed}");
    }
    println!("slowest handshake under 30% loss: {slowest:?}");
}

#[test]
fn bulk_transfer_is_exact_under_loss_reordering_duplication_and_corruption() {
    for seed in 0..seeds(1000) {
        let mut link = LinkConfig::with_latency(Duration::from_millis(5 + seed % 20));
        link.loss = (seed % 21) as f64 / 100.0; // 0% to 20%
        link.reorder = 0.05;
        link.reorder_delay = Duration::from_millis(8);
        link.duplicate = 0.02;
        link.corrupt = 0.01;
        link.bandwidth_bps = Some(20_000_000);
        let mut config = fast_config();
        config.handshake_timeout = Duration::from_secs(120);
        let mut p = pair(seed, link, config);
        let bytes = 20_000 + (seed % 7) * 7_919;
        let h = p.start_transfer(seed, bytes);
        let done = p.run_transfer(h, Duration::from_secs(300));
        let recv = &p.receiver().upper;
        assert!(
            done,
            "seed {seed}: transfer incomplete: received {:?} of {bytes}, sender acked {:?}, events a={:?} b={:?}",
            recv.received,
            p.net.node(p.a).slot(h).upper.acked,
            p.net.node(p.a).events,
            p.net.node(p.b).events,
        );
        assert_eq!(
            recv.corrupt, 0,
            "seed {seed}: corrupted bytes were delivered"
        );
        assert!(recv.complete(), "seed {seed}");
    }
}

#[test]
fn tampering_with_any_byte_of_any_packet_is_detected() {
    let mut p = pair(
        7,
        LinkConfig::with_latency(Duration::from_millis(10)),
        fast_config(),
    );
    let h = p.start_transfer(7, 200_000);
    let b_addr = addr(2);
    // Replace every other data packet to b with a copy that has one byte flipped, cycling
    // through every byte position.
    let stats = Rc::new(RefCell::new((0usize, 0usize, 0usize))); // (tampered, clean, position)
    let s = stats.clone();
    p.net.set_interceptor(Box::new(move |i| {
        if i.to != b_addr || !is_data(i.data) {
            return Verdict::Deliver;
        }
        let mut st = s.borrow_mut();
        if (st.0 + st.1) % 2 == 0 {
            let pos = st.2 % i.data.len();
            i.data[pos] ^= 1 << (st.2 % 8);
            st.2 += 1;
            st.0 += 1;
        } else {
            st.1 += 1;
        }
        Verdict::Deliver
    }));
    assert!(
        p.run_transfer(h, Duration::from_secs(120)),
        "transfer did not complete"
    );
    let (tampered, clean, positions) = *stats.borrow();
    let recv = p.receiver();
    assert_eq!(recv.upper.corrupt, 0);
    assert!(tampered > 100 && positions > 100, "tampered {tampered}");
    // Every authenticated packet is one of the clean ones.
    let st = recv.channel.stats();
    assert_eq!(
        st.packets_received as usize, clean,
        "a tampered packet was accepted"
    );
    println!("tampered {tampered}, clean {clean}, stats {st:?}");
}

#[test]
fn replayed_data_packets_are_dropped() {
    let mut p = pair(
        8,
        LinkConfig::with_latency(Duration::from_millis(10)),
        fast_config(),
    );
    let h = p.start_transfer(8, 100_000);
    let b_addr = addr(2);
    let replays = Rc::new(RefCell::new(0u64));
    let r = replays.clone();
    p.net.set_interceptor(Box::new(move |i| {
        if i.to == b_addr && is_data(i.data) {
            *r.borrow_mut() += 1;
            // Deliver now, and the very same bytes again later.
            return Verdict::DeliverAndReplayLater(Duration::from_millis(3));
        }
        Verdict::Deliver
    }));
    assert!(p.run_transfer(h, Duration::from_secs(60)));
    p.net.run_for(Duration::from_millis(50)).unwrap();
    let st = p.receiver().channel.stats();
    let replays = *replays.borrow();
    assert_eq!(
        st.dropped_replayed, replays,
        "every replayed copy is rejected"
    );
    assert_eq!(
        st.packets_received, replays,
        "every original is accepted once"
    );
    assert_eq!(p.receiver().upper.corrupt, 0);
}

#[test]
fn replayed_initiation_creates_no_channel_and_no_state() {
    let mut p = pair(
        9,
        LinkConfig::with_latency(Duration::from_millis(10)),
        fast_config(),
    );
    let b_addr = addr(2);
    let captured = Rc::new(RefCell::new(None::<Vec<u8>>));
    let c = captured.clone();
    p.net.set_interceptor(Box::new(move |i| {
        if i.to == b_addr && classify(i.data) == Some(PacketKind::Initiation) {
            c.borrow_mut().get_or_insert_with(|| i.data.clone());
        }
        Verdict::Deliver
    }));
    let h = p.start_transfer(9, 10_000);
    assert!(p.run_transfer(h, Duration::from_secs(10)));
    assert_eq!(p.net.node(p.b).incoming, 1);
    let initiation = captured.borrow().clone().expect("captured the initiation");
    // Replay it from the original address and from another one, now and later.
    for (delay_ms, from) in [(1, addr(1)), (500, addr(3)), (5_000, addr(1))] {
        let at = p.net.now() + Duration::from_millis(delay_ms);
        p.net.inject(at, from, b_addr, initiation.clone());
    }
    p.net.run_for(Duration::from_secs(6)).unwrap();
    assert_eq!(
        p.net.node(p.b).incoming,
        1,
        "a replayed initiation reached the application"
    );
    assert_eq!(
        p.net.node(p.b).slots.len(),
        1,
        "a replayed initiation created a channel"
    );
}

#[test]
fn cookie_round_trip_under_load_still_connects() {
    let mut config = fast_config();
    config.handshake_retry = Duration::from_millis(500);
    let mut p = pair(
        10,
        LinkConfig::with_latency(Duration::from_millis(10)),
        config,
    );
    // The responder counts every initiation as load.
    let (b, b_eid) = (p.b, p.b_eid);
    let mut ec = common::setup::endpoint_config(77, fast_config());
    ec.cookie_threshold = 0;
    let id = common::identity(10 * 2 + 2);
    assert_eq!(id.eid(), b_eid);
    *p.net.node_mut(b) = common::TestHost::new(&id, ec, p.start);
    let h = p.start_transfer(10, 5_000);
    assert!(
        p.run_transfer(h, Duration::from_secs(10)),
        "no transfer under load"
    );
    assert!(p.net.node(b).cookies_sent >= 1, "no cookie reply was sent");
    assert_eq!(p.net.node(b).incoming, 1);
}

#[test]
fn refused_service_is_reported_to_the_initiator() {
    let mut p = pair(
        11,
        LinkConfig::with_latency(Duration::from_millis(10)),
        fast_config(),
    );
    let h = p.start_transfer(11, 1_000);
    p.net.node_mut(p.b).policy =
        common::host::Policy::Refuse(RefuseCode::UNKNOWN_SERVICE, "no such service".into());
    p.net.run_for(Duration::from_secs(2)).unwrap();
    match p.net.node(p.a).closed(h) {
        Some(ChannelError::Refused { code, reason }) => {
            assert_eq!(*code, RefuseCode::UNKNOWN_SERVICE);
            assert_eq!(reason, "no such service");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(p.net.node(p.b).slots.is_empty());
}

#[test]
fn graceful_close_reaches_the_peer() {
    let mut p = pair(
        12,
        LinkConfig::with_latency(Duration::from_millis(10)),
        fast_config(),
    );
    let h = p.start_transfer(12, 10_000);
    assert!(p.run_transfer(h, Duration::from_secs(10)));
    let now = p.net.now();
    {
        let slot = p.net.node_mut(p.a).slot_mut(h);
        slot.channel.close(now, 0x1234, b"bye", &mut slot.upper);
    }
    p.net.wake(p.a);
    p.net.run_for(Duration::from_secs(5)).unwrap();
    let b_events: Vec<_> = p
        .net
        .node(p.b)
        .events
        .iter()
        .map(|(_, e)| e.clone())
        .collect();
    assert!(
        b_events.contains(&ChannelEvent::Closed(ChannelError::ClosedByPeer {
            code: 0x1234,
            reason: "bye".into()
        })),
        "{b_events:?}"
    );
    assert_eq!(
        p.net.node(p.a).closed(h),
        Some(&ChannelError::LocallyClosed)
    );
    assert_eq!(p.net.node(p.a).endpoint.channel_count(), 0);
    assert_eq!(p.net.node(p.b).endpoint.channel_count(), 0);
}

#[test]
fn idle_timeout_closes_a_dead_channel_and_keepalive_prevents_it() {
    for keepalive in [None, Some(Duration::from_secs(2))] {
        let mut config = fast_config();
        config.idle_timeout = Duration::from_secs(5);
        config.keepalive_interval = keepalive;
        let mut p = pair(
            13,
            LinkConfig::with_latency(Duration::from_millis(10)),
            config,
        );
        let h = p.start_transfer(13, 1_000);
        assert!(p.run_transfer(h, Duration::from_secs(5)));
        // The last packets (the final ACKs) arrive within a few RTTs of the transfer's end:
        // the channel is alive just short of the idle timeout after it, and closed just
        // after (the deadline is kept lazily and re-armed, it must still be exact).
        p.net.run_for(Duration::from_millis(4_800)).unwrap();
        assert_eq!(
            p.net.node(p.a).closed(h),
            None,
            "closed before the idle timeout"
        );
        p.net.run_for(Duration::from_millis(400)).unwrap();
        if keepalive.is_none() {
            let closed = p.net.node(p.a).closed(h).cloned();
            assert!(
                matches!(closed, Some(ChannelError::TimedOut(_))),
                "not closed right after the idle timeout: {closed:?}"
            );
        }
        p.net.run_for(Duration::from_secs(20)).unwrap();
        let closed = p.net.node(p.a).closed(h).cloned();
        match keepalive {
            None => assert!(
                matches!(closed, Some(ChannelError::TimedOut(_))),
                "expected an idle timeout, got {closed:?}"
            ),
            Some(_) => assert_eq!(closed, None, "keepalives should keep the channel open"),
        }
    }
}

#[test]
fn key_updates_happen_without_stalling_traffic() {
    let mut config = fast_config();
    config.key_update_packets = 300;
    let mut link = LinkConfig::with_latency(Duration::from_millis(10));
    link.bandwidth_bps = Some(100_000_000);
    link.queue_bytes = 1 << 20;
    let mut p = pair(14, link, config);
    let h = p.start_transfer(14, 3_000_000);
    assert!(p.run_transfer(h, Duration::from_secs(30)));
    let a = p.net.node(p.a).slot(h).channel.stats();
    let b = p.receiver().channel.stats();
    assert!(a.key_updates >= 4 && b.key_updates >= 4, "a {a:?} b {b:?}");
    assert_eq!(
        b.dropped_unauthenticated, 0,
        "packets were lost to key confusion"
    );
    assert_eq!(a.ptos, 0, "a key update stalled traffic");
}

#[test]
fn peer_moving_to_a_new_address_keeps_the_channel() {
    let mut link = LinkConfig::with_latency(Duration::from_millis(10));
    link.bandwidth_bps = Some(20_000_000);
    let mut p = pair(15, link.clone(), fast_config());
    let h = p.start_transfer(15, 2_000_000);
    p.net.run_for(Duration::from_millis(300)).unwrap();
    let new = std::net::SocketAddr::from(([10, 0, 0, 1], 5555));
    p.net.rebind(p.a, addr(1), new);
    p.net.connect(new, addr(2), link);
    assert!(
        p.run_transfer(h, Duration::from_secs(30)),
        "transfer did not survive the move"
    );
    assert!(p
        .net
        .node(p.b)
        .events
        .iter()
        .any(|(_, e)| matches!(e, ChannelEvent::PathChanged { to, .. } if *to == new)));
}

#[test]
fn a_moved_peer_is_validated_before_it_gets_full_traffic() {
    let mut link = LinkConfig::with_latency(Duration::from_millis(10));
    link.bandwidth_bps = Some(20_000_000);
    let mut p = pair(16, link.clone(), fast_config());
    let h = p.start_transfer(16, 3_000_000);
    p.net.run_for(Duration::from_millis(300)).unwrap();
    // NAT rebinding: same IP, new port.
    let new = std::net::SocketAddr::from(([10, 0, 0, 1], 6000));
    p.net.rebind(p.a, addr(1), new);
    p.net.connect(new, addr(2), link);
    assert!(p.run_transfer(h, Duration::from_secs(30)));
    let rx = p.receiver();
    assert_eq!(rx.channel.remote_address(), new);
    assert_eq!(rx.channel.stats().migrations, 1);
    // Validated: the receiver may send freely again (its ACKs flowed and the sender finished).
    assert!(rx.channel.is_established());
}

#[test]
fn a_packet_replayed_from_another_address_cannot_divert_the_channel() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut link = LinkConfig::with_latency(Duration::from_millis(10));
    link.bandwidth_bps = Some(20_000_000);
    let mut p = pair(17, link, fast_config());
    let h = p.start_transfer(17, 3_000_000);
    p.net.run_for(Duration::from_millis(300)).unwrap();
    // An attacker on the path makes a data packet of A's appear to come from an address of
    // its own (where nobody answers), before A's next packet.
    let attacker = std::net::SocketAddr::from(([10, 0, 0, 66], 4444));
    let spoofed = Rc::new(RefCell::new(0usize));
    let sent_to_attacker = Rc::new(RefCell::new(0usize));
    let (sp, sta) = (spoofed.clone(), sent_to_attacker.clone());
    let a_addr = addr(1);
    p.net.set_interceptor(Box::new(move |i| {
        if i.to == attacker {
            *sta.borrow_mut() += i.data.len();
            return Verdict::Drop;
        }
        if i.from == a_addr && *sp.borrow() == 0 && is_data(i.data) && i.data.len() > 1000 {
            *sp.borrow_mut() = i.data.len();
            i.from = attacker;
        }
        Verdict::Deliver
    }));
    p.net.run_for(Duration::from_millis(50)).unwrap();
    let packet_len = *spoofed.borrow();
    assert!(packet_len > 0, "spoofed a packet");
    let moved = p
        .net
        .node(p.b)
        .events
        .iter()
        .any(|(_, e)| matches!(e, ChannelEvent::PathChanged { to, .. } if *to == attacker));
    assert!(moved, "the receiver followed the newest packet");
    assert!(
        p.run_transfer(h, Duration::from_secs(30)),
        "transfer did not complete"
    );
    let rx = p.receiver();
    assert_eq!(
        rx.channel.remote_address(),
        addr(1),
        "back on the validated address"
    );
    // The unvalidated address got at most three times what came from it.
    let sent = *sent_to_attacker.borrow();
    assert!(
        sent <= 3 * packet_len,
        "{sent} bytes went to the attacker's address for {packet_len} received"
    );
}

#[test]
fn an_unanswered_path_challenge_returns_the_channel_to_the_validated_address() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let mut p = pair(18, link, fast_config());
    let h = p.start_transfer(18, 10_000);
    assert!(p.run_transfer(h, Duration::from_secs(10)));
    // The channel is quiet; A's next packet (a PING) is made to come from elsewhere.
    let attacker = std::net::SocketAddr::from(([10, 0, 0, 66], 4444));
    let a_addr = addr(1);
    // After that, A's packets are lost for a while: only the timer can bring B back.
    let spoofed_at: Rc<RefCell<Option<std::time::Instant>>> = Rc::default();
    let d = spoofed_at.clone();
    p.net.set_interceptor(Box::new(move |i| {
        if i.to == attacker {
            return Verdict::Drop;
        }
        if i.from == a_addr && is_data(i.data) {
            let at = *d.borrow();
            match at {
                None => {
                    *d.borrow_mut() = Some(i.time);
                    i.from = attacker;
                }
                Some(t) if i.time < t + Duration::from_secs(2) => return Verdict::Drop,
                Some(_) => {}
            }
        }
        Verdict::Deliver
    }));
    p.net.node_mut(p.a).slot_mut(h).channel.ping();
    let a = p.a;
    p.net.wake(a);
    p.net.run_for(Duration::from_millis(20)).unwrap();
    assert_eq!(p.receiver().channel.remote_address(), attacker);
    // Nobody answers the challenge at the attacker's address: back to A's after the
    // validation time (A itself is silent until 2 s).
    p.net.run_for(Duration::from_millis(1500)).unwrap();
    let rx = p.receiver();
    assert_eq!(rx.channel.remote_address(), addr(1));
    assert!(rx.channel.is_established());
}

#[test]
fn path_mtu_is_discovered_and_black_holes_fall_back() {
    let mut link = LinkConfig::with_latency(Duration::from_millis(10));
    link.mtu = 1400;
    link.bandwidth_bps = Some(10_000_000);
    let mut p = pair(16, link.clone(), fast_config());
    let h = p.start_transfer(16, 8_000_000);
    p.net.run_for(Duration::from_secs(3)).unwrap();
    let mtu = p.net.node(p.a).slot(h).channel.stats().mtu;
    assert!((1380..=1400).contains(&mtu), "discovered {mtu}");
    assert!(
        !p.receiver().upper.complete(),
        "the transfer must still be running"
    );
    // The path shrinks below the discovered size: the channel must fall back, not stall.
    link.mtu = 1250;
    p.net.connect(addr(1), addr(2), link);
    assert!(
        p.run_transfer(h, Duration::from_secs(60)),
        "transfer stalled in the black hole"
    );
    let mtu = p.net.node(p.a).slot(h).channel.stats().mtu;
    assert!(mtu <= 1250, "still using {mtu}");
}
