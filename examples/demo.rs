//! The local end-to-end demo: two SSS hosts on the in-process simulated network (virtual
//! time, so it runs in about a second whatever the link), a Noise IK handshake, a bulk
//! transfer verified byte for byte through loss, reordering, duplication and corruption, a
//! refused service and a graceful close — with what happened printed for a human.
//!
//! `cargo run --release --example demo`
//!
//! (When the async host API lands, this demo moves onto real loopback sockets.)

use std::time::{Duration, Instant};

use sss_proto::channel::ChannelEvent;
use sss_proto::endpoint::EndpointConfig;
use sss_proto::handshake::RefuseCode;
use sss_proto::sim::{LinkConfig, Network};
use sss_proto::testkit::{addr, identity, Bulk, Policy, TestHost};

const BYTES: u64 = 8_000_000;

fn main() {
    let start = Instant::now();
    let mut net = Network::new(2026, start);
    let (id_a, id_b) = (identity(1), identity(2));
    let a = net.add_node(
        addr(1),
        TestHost::new(&id_a, EndpointConfig::new([1; 32]), start),
    );
    let b = net.add_node(
        addr(2),
        TestHost::new(&id_b, EndpointConfig::new([2; 32]), start),
    );
    let mut link = LinkConfig::with_latency(Duration::from_millis(20));
    link.bandwidth_bps = Some(50_000_000);
    link.queue_bytes = 250_000;
    link.loss = 0.005;
    link.reorder = 0.01;
    link.reorder_delay = Duration::from_millis(5);
    link.duplicate = 0.005;
    link.corrupt = 0.001;
    net.connect(addr(1), addr(2), link);

    println!("SSS demo: two hosts on a simulated network");
    println!("  host A  eid={}  at {}", id_a.eid(), addr(1));
    println!("  host B  eid={}  at {}", id_b.eid(), addr(2));
    println!("  link    50 Mbit/s, 40 ms RTT, 0.5% loss, 1% reordering, 0.5% duplication, 0.1% bit flips");
    println!();

    net.node_mut(b).policy = Policy::Accept(Box::new(|incoming| {
        println!(
            "[B] incoming handshake from {} for ({:?}, {:?}): accepted",
            incoming.remote_eid(),
            incoming.service(),
            incoming.protocol()
        );
        Bulk::receiver(7, BYTES)
    }));
    let t0 = net.now();
    let h = net
        .node_mut(a)
        .connect(t0, id_b.eid(), addr(2), Bulk::sender(7, BYTES));
    println!("[A] connecting to B for (\"test\", \"bulk/1\") and queueing {BYTES} bytes");
    let deadline = t0 + Duration::from_secs(120);
    net.run_while(deadline, |n| !n.node(a).connected(h))
        .expect("simulation");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ch = &net.node(a).slot(h).channel;
    println!(
        "[A] {:>8.1} ms  handshake complete (one round trip): {:?}, peer authenticated as {}",
        ms(net.now() - t0),
        ch.suite().expect("keys"),
        ch.remote_eid()
    );
    net.run_while(deadline, |n| {
        !n.node(b).slots.values().any(|s| s.upper.complete())
            || !n.node(a).slot(h).upper.all_acked()
    })
    .expect("simulation");
    let elapsed = net.now() - t0;
    let sender = net.node(a).slot(h);
    let receiver = net
        .node(b)
        .slots
        .values()
        .max_by_key(|s| s.upper.bytes_received)
        .expect("B has the channel");
    let (sa, sb) = (sender.channel.stats(), receiver.channel.stats());
    assert!(
        receiver.upper.complete() && receiver.upper.corrupt == 0,
        "transfer not exact"
    );
    println!(
        "[B] {:>8.1} ms  received all {BYTES} bytes, every byte checked: 0 wrong, 0 missing",
        ms(elapsed)
    );
    println!(
        "               goodput {:.1} Mbit/s; A sent {} packets, {} declared lost and their data re-sent ({} bytes)",
        BYTES as f64 * 8.0 / elapsed.as_secs_f64() / 1e6,
        sa.packets_sent,
        sa.packets_lost,
        sender.upper.bytes_retransmitted
    );
    println!(
        "               B dropped {} packets that failed authentication (bit flips) and {} replays/duplicates",
        sb.dropped_unauthenticated, sb.dropped_replayed
    );
    println!(
        "               rtt {:.1} ms, congestion window {} bytes, path MTU {} bytes, {} congestion events",
        ms(sa.rtt),
        sa.cwnd,
        sa.mtu,
        sa.congestion_events
    );

    // A service B does not offer.
    net.node_mut(b).policy = Policy::Refuse(RefuseCode::UNKNOWN_SERVICE, "no such service".into());
    let now = net.now();
    let h2 = net
        .node_mut(a)
        .connect(now, id_b.eid(), addr(2), Bulk::sender(7, 1));
    println!("[A] connecting again, for a service B refuses");
    net.run_while(deadline, |n| n.node(a).closed(h2).is_none())
        .expect("simulation");
    println!(
        "[A] {:>8.1} ms  {}",
        ms(net.now() - t0),
        net.node(a).closed(h2).expect("closed")
    );

    // Graceful close of the first channel.
    let now = net.now();
    {
        let slot = net.node_mut(a).slot_mut(h);
        slot.channel
            .close(now, 0, b"demo finished", &mut slot.upper);
    }
    net.wake(a);
    net.run_for(Duration::from_secs(3)).expect("simulation");
    for (_, e) in &net.node(b).events {
        if let ChannelEvent::Closed(reason) = e {
            println!(
                "[B] {:>8.1} ms  channel ended: {reason}",
                ms(net.now() - t0)
            );
        }
    }
    println!();
    println!("done: handshake, exact transfer under impairments, refusal and close all worked");
}
