//! Determinism, the interceptor and injection, stall guards, clock control, rebinding.

use std::time::Duration;

use super::{addr, ms, network, Probe};
use crate::sim::{DropCause, Fate, LinkConfig, NatKind, SimError, Verdict};

fn impaired() -> LinkConfig {
    LinkConfig {
        jitter: ms(3),
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.05,
        reorder_delay: ms(10),
        corrupt: 0.01,
        bandwidth_bps: Some(10_000_000),
        ..LinkConfig::with_latency(ms(20))
    }
}

/// Runs an echo exchange over impaired links; returns what the pinger got back, the trace and
/// the stats.
fn impaired_run(seed: u64) -> (Vec<super::Rx>, String, Vec<crate::sim::Stats>) {
    let (mut net, start) = network(seed);
    net.set_default_link(impaired());
    net.enable_trace(0);
    let (a, b) = (addr("192.168.0.2:1000"), addr("10.0.0.2:2000"));
    let pinger = net.add_node(
        a,
        Probe::sender(start, b, 2000, Duration::from_micros(500), 700),
    );
    // Behind a symmetric NAT, so that port allocation is part of what must repeat.
    let nat = net.add_nat("1.0.0.1".parse().unwrap(), NatKind::Symmetric);
    net.attach_behind_nat(pinger, nat);
    let echo = net.add_node(b, Probe::echo(start));
    net.run_until_idle().unwrap();
    let stats = vec![*net.node_stats(pinger), *net.node_stats(echo)];
    // Times are relative to `start`, so the dump is comparable across runs.
    (net.node(pinger).rx.clone(), net.dump_trace(), stats)
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let (rx1, trace1, stats1) = impaired_run(11);
    let (rx2, trace2, stats2) = impaired_run(11);
    assert_eq!(rx1, rx2);
    assert_eq!(trace1, trace2);
    assert_eq!(stats1, stats2);
    assert!(stats1[0].dropped.loss > 0 && stats1[0].sent == 2000);

    let (rx3, trace3, _) = impaired_run(12);
    assert_ne!(rx1, rx3);
    assert_ne!(trace1, trace3);
}

#[test]
fn interceptor_drops_modifies_spoofs_and_replays() {
    let (mut net, start) = network(13);
    net.set_default_link(LinkConfig::with_latency(ms(10)));
    let (a, b, spoof) = (
        addr("10.0.0.1:1000"),
        addr("10.0.0.2:2000"),
        addr("198.51.100.7:53"),
    );
    let sender = net.add_node(a, Probe::sender(start, b, 10, ms(1), 64));
    let sink = net.add_node(b, Probe::sink(start));
    net.set_interceptor(Box::new(move |p| {
        let seq = p.data[7];
        match seq {
            1 | 3 | 5 => Verdict::Drop,
            0 => Verdict::DeliverAndReplayLater(ms(100)),
            2 => {
                p.from = spoof;
                Verdict::Deliver
            }
            4 => {
                p.data[20] ^= 0xff;
                Verdict::Deliver
            }
            6 => Verdict::Delay(ms(50)),
            _ => Verdict::Deliver,
        }
    }));
    net.run_until_idle().unwrap();

    let rx = &net.node(sink).rx;
    let seqs: Vec<u64> = rx.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [0, 2, 4, 7, 8, 9, 6, 0]);
    assert_eq!(rx[1].from, spoof);
    assert!(!rx[2].intact && rx[0].intact);
    assert_eq!(rx[6].at, ms(16 + 50));
    assert_eq!(rx[7].at, ms(110));
    assert_eq!(net.node_stats(sender).dropped.intercepted, 3);
    assert_eq!(net.node_stats(sender).dropped.total(), 3);
}

#[test]
fn injected_datagrams_arrive_at_the_given_time_from_the_forged_address() {
    let (mut net, start) = network(14);
    net.enable_trace(16);
    let b = addr("10.0.0.2:2000");
    let forged = addr("203.0.113.9:1");
    let sink = net.add_node(b, Probe::sink(start));
    net.inject(start + ms(5), forged, b, vec![1; 40]);
    net.inject(start + ms(6), forged, addr("10.9.9.9:9"), vec![1; 40]);
    net.run_until_idle().unwrap();
    let rx = &net.node(sink).rx;
    assert_eq!(rx.len(), 1);
    assert_eq!((rx[0].at, rx[0].from, rx[0].len), (ms(5), forged, 40));
    let fates: Vec<Fate> = net.trace().map(|e| e.fate).collect();
    assert_eq!(fates, [Fate::Injected, Fate::Dropped(DropCause::NoRoute)]);
    assert_eq!(net.node_stats(sink).received, 1);
}

#[test]
fn a_timer_stuck_in_the_past_is_reported_not_spun() {
    let (mut net, start) = network(15);
    let id = net.add_node(addr("10.0.0.1:1"), Probe::sink(start));
    net.run_for(ms(10)).unwrap();
    net.node_mut(id).spin = true;
    match net.run_for(ms(10)) {
        Err(SimError::Stalled { node, .. }) => assert_eq!(node, Some(id)),
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn an_endless_transmit_is_reported() {
    let (mut net, start) = network(16);
    net.limits_mut().max_transmits_per_poll = 1000;
    let mut probe = Probe::sink(start);
    probe.flood = true;
    let id = net.add_node(addr("10.0.0.1:1"), probe);
    assert_eq!(
        net.step(),
        Err(SimError::TransmitFlood {
            node: id,
            limit: 1000
        })
    );
}

#[test]
fn endless_ping_pong_hits_the_budget_or_the_instant_limit() {
    let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    let endless = |latency| {
        let (mut net, start) = network(17);
        net.set_default_link(LinkConfig::with_latency(latency));
        net.limits_mut().step_budget = 10_000;
        net.limits_mut().max_events_per_instant = 5_000;
        net.add_node(
            a,
            Probe {
                echo: true,
                ..Probe::sender(start, b, 1, ms(1), 64)
            },
        );
        net.add_node(b, Probe::echo(start));
        net.run_until_idle()
    };
    assert!(matches!(
        endless(ms(1)),
        Err(SimError::BudgetExceeded { steps: 10_000, .. })
    ));
    assert!(matches!(
        endless(Duration::ZERO),
        Err(SimError::Stalled { node: None, .. })
    ));
}

#[test]
fn run_until_moves_the_clock_and_node_mut_wakes_the_node() {
    let (mut net, start) = network(18);
    let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    let sender = net.add_node(a, Probe::sink(start));
    let sink = net.add_node(b, Probe::sink(start));
    net.run_until(start + ms(1000)).unwrap();
    assert_eq!(net.now(), start + ms(1000));
    net.node_mut(sender)
        .script
        .push_back((b, None, vec![0; 30]));
    assert_eq!(net.step(), Ok(true)); // the wake-up sends it
    assert_eq!(net.step(), Ok(true)); // the arrival
    assert_eq!(net.step(), Ok(false));
    assert_eq!(net.node(sink).rx[0].at, ms(1010));

    let stop = net
        .run_while(start + ms(5000), |n| n.node(sink).rx.len() < 2)
        .unwrap();
    assert!(!stop);
    assert_eq!(net.now(), start + ms(5000));
}

#[test]
fn rebinding_moves_a_node_and_drops_replies_in_flight() {
    let (mut net, start) = network(19);
    let (a, a2, b) = (addr("10.0.0.1:1"), addr("10.0.0.1:7"), addr("10.0.0.2:2"));
    let mover = net.add_node(a, Probe::sender(start, b, 10, ms(10), 64));
    let echo = net.add_node(b, Probe::echo(start));
    // Move after the 5th datagram left (t = 40 ms) and before its echo returned (t = 60 ms).
    net.run_until(start + ms(45)).unwrap();
    net.rebind(mover, a, a2);
    assert_eq!(net.addresses(mover), [a2]);
    net.run_until_idle().unwrap();

    let froms: Vec<_> = net.node(echo).rx.iter().map(|r| r.from).collect();
    assert_eq!(froms[..5], [a; 5]);
    assert_eq!(froms[5..], [a2; 5]);
    // Echoes of datagrams 0..=2 got back before the move; 3 and 4 were in flight to `a`.
    assert_eq!(net.node(mover).rx.len(), 8);
    assert_eq!(net.node_stats(echo).dropped.no_route, 2);
}

#[test]
fn timers_pushed_back_on_every_datagram_do_not_pile_up() {
    let (mut net, start) = network(20);
    let (a, b) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    net.set_default_link(LinkConfig::with_latency(ms(1)));
    net.add_node(
        a,
        Probe::sender(start, b, 100_000, Duration::from_micros(10), 40),
    );
    let mut sink = Probe::sink(start);
    sink.idle = Some(ms(300));
    let sink = net.add_node(b, sink);
    net.run_until(start + ms(500)).unwrap();
    // ~100 datagrams in flight wait in the link FIFO; the heap holds a handful of entries.
    assert!(
        net.pending_events() < 200,
        "{} pending",
        net.pending_events()
    );
    net.run_until_idle().unwrap();
    // Last datagram sent at 999.99 ms, received 1 ms later; idle fires 300 ms after that.
    assert_eq!(
        net.node(sink).idle_fired,
        [Duration::from_micros(1_300_990)]
    );
}

#[test]
fn replies_leave_from_the_address_they_were_sent_to() {
    let (mut net, start) = network(23);
    let (a, b, b2) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"), addr("10.0.0.3:2"));
    let client = net.add_node(a, Probe::sink(start));
    let server = net.add_node(b, Probe::echo(start));
    net.add_address(server, b2);
    net.node_mut(client)
        .script
        .push_back((b2, None, vec![0; 30]));
    net.node_mut(client)
        .script
        .push_back((b, None, vec![0; 30]));
    net.run_until_idle().unwrap();
    let froms: Vec<_> = net.node(client).rx.iter().map(|r| r.from).collect();
    assert_eq!(froms, [b2, b]);
    let locals: Vec<_> = net.node(server).rx.iter().map(|r| r.local).collect();
    assert_eq!(locals, [b2, b]);

    // A source IP the node does not own: refused, like a socket would.
    net.node_mut(client).script_src_ip = Some(b.ip());
    net.node_mut(client)
        .script
        .push_back((b, Some(10), vec![0; 30]));
    net.run_until_idle().unwrap();
    let stats = net.node_stats(client);
    assert_eq!((stats.sent, stats.dropped.no_route), (5, 3));
    assert_eq!(net.node(server).rx.len(), 2);
}

#[test]
fn trace_is_bounded_and_dumps_with_the_seed() {
    let (mut net, start) = network(24);
    net.enable_trace(10);
    let b = addr("10.0.0.2:2");
    net.add_node(addr("10.0.0.1:1"), Probe::sender(start, b, 100, ms(1), 40));
    net.add_node(b, Probe::sink(start));
    net.run_until_idle().unwrap();
    assert_eq!(net.trace().count(), 10);
    let dump = net.dump_trace();
    assert!(dump.starts_with("seed 24 "), "{dump}");
    assert!(dump.contains("190 earlier events evicted"), "{dump}");
    assert!(
        dump.contains("10.0.0.1:1 -> 10.0.0.2:2 len 40 Delivered"),
        "{dump}"
    );
}
