//! Link model: latency, bandwidth and queue, impairment rates, reordering, MTU, GSO, shared
//! bottlenecks, down links.

use std::time::Duration;

use super::{addr, ms, network, Probe};
use crate::sim::{DropCause, Fate, LinkConfig};

/// `|observed - n p| <= 5 sigma` for a binomial count.
fn within_binomial(observed: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - mean).abs() <= 5.0 * sigma
}

#[test]
fn round_trip_takes_twice_the_latency() {
    let (mut net, start) = network(1);
    net.set_default_link(LinkConfig::with_latency(ms(25)));
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let pinger = net.add_node(a, Probe::sender(start, b, 1, ms(1), 64));
    let echo = net.add_node(b, Probe::echo(start));
    net.run_until_idle().unwrap();
    let reply = &net.node(pinger).rx;
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].at, ms(50), "seed {}", net.seed());
    assert_eq!(reply[0].from, b);
    assert_eq!(net.node(echo).rx[0].at, ms(25));
    assert_eq!(net.node(echo).rx[0].from, a);
}

#[test]
fn saturated_link_delivers_its_bandwidth_and_tail_drops() {
    let (mut net, start) = network(2);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let queue_bytes = 64 * 1024;
    let link = net.set_link(
        a,
        b,
        LinkConfig {
            bandwidth_bps: Some(100_000_000),
            queue_bytes,
            ..LinkConfig::with_latency(ms(10))
        },
    );
    // 1250-byte datagrams every 80 us: 125 Mbit/s offered to a 100 Mbit/s link.
    net.add_node(
        a,
        Probe::sender(start, b, 20_000, Duration::from_micros(80), 1250),
    );
    let sink = net.add_node(b, Probe::sink(start));
    net.run_until(start + ms(1600)).unwrap();

    let bytes = net.node(sink).bytes_between(ms(500), ms(1500));
    let expected = 100_000_000 / 8;
    let error = (bytes as f64 - expected as f64).abs() / expected as f64;
    assert!(
        error < 0.01,
        "delivered {bytes} B/s, expected {expected} (seed {})",
        net.seed()
    );

    let stats = net.link_stats(link);
    assert!(stats.dropped.queue > 0);
    assert_eq!(stats.dropped.total(), stats.dropped.queue);
    // The queue never holds more than queue_bytes, so no datagram waits longer than it takes
    // to drain them plus its own serialization.
    let max_delay = net
        .node(sink)
        .rx
        .iter()
        .map(|r| r.at - r.sent)
        .max()
        .unwrap();
    let drain = Duration::from_nanos((queue_bytes as u64 + 1250) * 8 * 10);
    assert!(max_delay <= ms(10) + drain, "max delay {max_delay:?}");
    assert!(
        max_delay > ms(10) + drain / 2,
        "queue never filled: {max_delay:?}"
    );
}

#[test]
fn loss_duplicate_corrupt_rates_are_statistically_right() {
    let (mut net, start) = network(3);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let n = 100_000;
    let link = net.set_link(
        a,
        b,
        LinkConfig {
            loss: 0.1,
            duplicate: 0.05,
            corrupt: 0.02,
            ..LinkConfig::with_latency(ms(1))
        },
    );
    net.add_node(
        a,
        Probe::sender(start, b, n, Duration::from_micros(10), 100),
    );
    let sink = net.add_node(b, Probe::sink(start));
    net.run_until_idle().unwrap();

    let s = *net.link_stats(link);
    assert_eq!(s.sent, n);
    assert!(
        within_binomial(s.dropped.loss, n, 0.1),
        "lost {}",
        s.dropped.loss
    );
    let survivors = n - s.dropped.loss;
    assert!(
        within_binomial(s.duplicated, survivors, 0.05),
        "dup {}",
        s.duplicated
    );
    assert!(
        within_binomial(s.corrupted, survivors, 0.02),
        "corrupt {}",
        s.corrupted
    );

    let rx = &net.node(sink).rx;
    assert_eq!(rx.len() as u64, survivors + s.duplicated);
    assert_eq!(s.delivered, rx.len() as u64);
    // Every corruption is visible to the receiver, once or twice (when duplicated).
    let damaged = rx.iter().filter(|r| !r.intact).count() as u64;
    assert!(
        damaged >= s.corrupted && damaged <= 2 * s.corrupted,
        "{damaged} vs {}",
        s.corrupted
    );
}

fn inversions(seqs: impl Iterator<Item = u64>) -> usize {
    let mut max = None;
    let mut count = 0;
    for s in seqs {
        if max.is_some_and(|m| s < m) {
            count += 1;
        }
        max = max.max(Some(s));
    }
    count
}

#[test]
fn jitter_alone_keeps_order_and_reorder_reorders() {
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let run = |config: LinkConfig| {
        let (mut net, start) = network(4);
        let link = net.set_link(a, b, config);
        net.add_node(a, Probe::sender(start, b, 2000, ms(1), 100));
        let sink = net.add_node(b, Probe::sink(start));
        net.run_until_idle().unwrap();
        (net.node(sink).rx.clone(), *net.link_stats(link))
    };

    let jittery = LinkConfig {
        jitter: ms(5),
        ..LinkConfig::with_latency(ms(10))
    };
    let (rx, _) = run(jittery.clone());
    assert_eq!(rx.len(), 2000);
    assert_eq!(inversions(rx.iter().map(|r| r.seq)), 0);
    let delays: Vec<Duration> = rx.iter().map(|r| r.at - r.sent).collect();
    let spread = *delays.iter().max().unwrap() - *delays.iter().min().unwrap();
    assert!(spread > ms(3), "jitter had no effect: spread {spread:?}");

    let (rx, stats) = run(LinkConfig {
        reorder: 0.1,
        reorder_delay: ms(20),
        ..jittery
    });
    assert_eq!(rx.len(), 2000);
    assert!(
        within_binomial(stats.reordered, 2000, 0.1),
        "{}",
        stats.reordered
    );
    assert!(inversions(rx.iter().map(|r| r.seq)) > 100);
}

#[test]
fn mtu_drops_oversize_datagrams() {
    let (mut net, start) = network(5);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let sender = net.add_node(a, Probe::sink(start));
    let sink = net.add_node(b, Probe::sink(start));
    let mtu = LinkConfig::default().mtu;
    for len in [mtu, mtu + 1, 60_000, 0] {
        net.node_mut(sender)
            .script
            .push_back((b, None, vec![7; len]));
    }
    net.run_until_idle().unwrap();
    let lens: Vec<usize> = net.node(sink).rx.iter().map(|r| r.len).collect();
    assert_eq!(lens, [mtu, 0]);
    let link = net.route(a, b).unwrap();
    assert_eq!(net.link_stats(link).dropped.mtu, 2);
    assert_eq!(net.node_stats(sender).dropped.mtu, 2);
}

#[test]
fn gso_batches_are_split_into_datagrams() {
    let (mut net, start) = network(6);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let sender = net.add_node(a, Probe::sink(start));
    let sink = net.add_node(b, Probe::sink(start));
    let batch: Vec<u8> = (0..3500u32).map(|i| (i / 1000) as u8).collect();
    net.node_mut(sender)
        .script
        .push_back((b, Some(1000), batch));
    // A stamped GSO batch from the constant-rate sender, too: 4 due at once.
    let mut gso = Probe::sender(start, b, 4, Duration::ZERO, 200);
    gso.gso = 4;
    net.add_node(addr("10.0.0.3:1000"), gso);
    net.run_until_idle().unwrap();

    let rx = &net.node(sink).rx;
    let raw: Vec<usize> = rx.iter().filter(|r| r.from == a).map(|r| r.len).collect();
    assert_eq!(raw, [1000, 1000, 1000, 500]);
    let stamped: Vec<u64> = rx
        .iter()
        .filter(|r| r.from != a && r.intact)
        .map(|r| r.seq)
        .collect();
    assert_eq!(stamped, [0, 1, 2, 3]);
    assert_eq!(net.node_stats(sender).sent, 4);
}

#[test]
fn senders_routed_through_one_bottleneck_share_it() {
    let (a, b, c) = (
        addr("10.0.0.1:1000"),
        addr("10.0.0.2:1000"),
        addr("10.0.0.3:2000"),
    );
    let bottleneck = LinkConfig {
        bandwidth_bps: Some(100_000_000),
        queue_bytes: 128 * 1024,
        ..LinkConfig::with_latency(ms(5))
    };
    let run = |shared: bool| {
        let (mut net, start) = network(7);
        if shared {
            let link = net.add_link(bottleneck.clone());
            net.set_route(a, c, link);
            net.set_route(b, c, link);
        } else {
            net.set_link(a, c, bottleneck.clone());
            net.set_link(b, c, bottleneck.clone());
        }
        // Each offers 80 Mbit/s: 1000 B every 100 us. Perfectly synchronised constant-rate
        // flows lock into a drop-tail phase effect (the first one at each instant always
        // wins), so B starts half a period late.
        for (src, phase) in [(a, 0), (b, 50)] {
            let first = start + Duration::from_micros(phase);
            let mut p = Probe::sender(start, c, 12_000, Duration::from_micros(100), 1000);
            p.next_send = Some(first);
            net.add_node(src, p);
        }
        let sink = net.add_node(c, Probe::sink(start));
        net.run_until(start + ms(1300)).unwrap();
        let rx = &net.node(sink).rx;
        let window = |r: &&super::Rx| r.at >= ms(200) && r.at < ms(1200);
        let bytes = |src| {
            rx.iter()
                .filter(window)
                .filter(|r| r.from == src)
                .map(|r| r.len as u64)
                .sum::<u64>()
        };
        let max_delay_b = rx
            .iter()
            .filter(|r| r.from == b)
            .map(|r| r.at - r.sent)
            .max()
            .unwrap();
        (bytes(a), bytes(b), max_delay_b)
    };

    // Shared: 160 Mbit/s offered to one 100 Mbit/s queue, which fills up and delays both.
    let (sa, sb, delay) = run(true);
    let total = (sa + sb) as f64;
    assert!(
        (total - 12_500_000.0).abs() / 12_500_000.0 < 0.01,
        "shared total {total}"
    );
    // Constant-rate flows are not fair to each other on drop-tail (phase effects); only a
    // congestion controller could make them so. Both get a real share.
    assert!(
        sa as f64 > 0.25 * total && sb as f64 > 0.25 * total,
        "split {sa}/{sb}"
    );
    let drain = Duration::from_nanos(128 * 1024 * 8 * 10);
    assert!(
        delay > ms(5) + drain * 9 / 10,
        "B did not queue behind A: {delay:?}"
    );

    // Separate: each 80 Mbit/s flow fits its own 100 Mbit/s link and never queues.
    let (ia, ib, delay) = run(false);
    assert!(
        (ia + ib) as f64 > 0.99 * 20_000_000.0,
        "separate links carry 160 Mbit/s: {}",
        ia + ib
    );
    assert!(delay < ms(5) + Duration::from_micros(100), "{delay:?}");
}

#[test]
fn down_link_blackholes_until_brought_up() {
    let (mut net, start) = network(8);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let link = net.set_link(a, b, LinkConfig::with_latency(ms(1)));
    net.link_config_mut(link).down = true;
    net.enable_trace(0);
    net.add_node(a, Probe::sender(start, b, 100, ms(10), 100));
    let sink = net.add_node(b, Probe::sink(start));
    net.run_until(start + ms(495)).unwrap();
    assert!(net.node(sink).rx.is_empty());
    assert_eq!(net.link_stats(link).dropped.down, 50);
    assert!(net
        .trace()
        .any(|e| e.fate == Fate::Dropped(DropCause::Down)));
    net.link_config_mut(link).down = false;
    net.run_until_idle().unwrap();
    assert_eq!(net.node(sink).rx.len(), 50);
    assert_eq!(net.node(sink).rx[0].seq, 50);
}

#[test]
fn a_route_set_after_traffic_takes_effect() {
    let (mut net, start) = network(9);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let sender = net.add_node(a, Probe::sink(start));
    let sink = net.add_node(b, Probe::sink(start));
    net.node_mut(sender)
        .script
        .push_back((b, None, vec![0; 40]));
    net.run_until_idle().unwrap();
    let default = net.route(a, b).unwrap();
    let slow = net.add_link(LinkConfig::with_latency(ms(100)));
    net.set_ip_route(a.ip(), b.ip(), slow);
    net.node_mut(sender)
        .script
        .push_back((b, None, vec![0; 40]));
    net.run_until_idle().unwrap();
    let at: Vec<Duration> = net.node(sink).rx.iter().map(|r| r.at).collect();
    assert_eq!(at, [ms(10), ms(110)]);
    assert_eq!(net.link_stats(default).sent, 1);
    assert_eq!(net.link_stats(slow).sent, 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the impairments, every datagram is accounted for exactly once: delivered,
    /// or dropped for one cause (duplicates add deliveries), on the link and at the nodes.
    #[test]
    fn every_datagram_is_accounted_for(
        seed: u64,
        loss in 0.0..0.5f64,
        duplicate in 0.0..0.3f64,
        reorder in 0.0..0.5f64,
        corrupt in 0.0..0.3f64,
        bandwidth in proptest::option::of(1_000_000u64..1_000_000_000),
        queue_bytes in 0usize..100_000,
        mtu in 0usize..1500,
        size in 24usize..1400,
        count in 1u64..500,
    ) {
        let (mut net, start) = network(seed);
        let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
        let link = net.set_link(a, b, LinkConfig {
            loss, duplicate, reorder, corrupt, bandwidth_bps: bandwidth, queue_bytes, mtu,
            jitter: ms(2),
            reorder_delay: ms(30),
            ..LinkConfig::with_latency(ms(5))
        });
        let sender = net.add_node(a, Probe::sender(start, b, count, Duration::from_micros(100), size));
        let sink = net.add_node(b, Probe::sink(start));
        net.run_until_idle().unwrap();

        let l = *net.link_stats(link);
        proptest::prop_assert_eq!(l.sent, count);
        proptest::prop_assert_eq!(l.sent + l.duplicated, l.delivered + l.dropped.total());
        let s = *net.node_stats(sender);
        proptest::prop_assert_eq!(s.sent, count);
        proptest::prop_assert_eq!(s.delivered, l.delivered);
        proptest::prop_assert_eq!(s.dropped, l.dropped);
        let r = *net.node_stats(sink);
        proptest::prop_assert_eq!(r.received, l.delivered);
        proptest::prop_assert_eq!(net.node(sink).rx.len() as u64, r.received);
        proptest::prop_assert_eq!(net.pending_events(), 0);
    }
}
