//! ECN on the simulated network (spec/recovery.md, "ECN"): a clean path validates it, CE marks
//! shrink the window with no loss and no retransmission, and paths that bleach, drop or
//! re-mark ECN turn it off while the transfer still completes exactly.

mod common;

use std::time::Duration;

use common::addr;
use common::setup::{fast_config, pair, Pair};
use sss_proto::channel::{ChannelStats, EcnState};
use sss_proto::endpoint::ChannelHandle;
use sss_proto::recovery::cc::CongestionAlgorithm;
use sss_proto::sim::{LinkConfig, Verdict};
use sss_proto::EcnCodepoint;

const MBIT: u64 = 1_000_000;

/// 100 Mbit/s with 25 ms one way and a drop-tail queue of `bdps` bandwidth-delay products
/// (625 KB each).
fn bottleneck(bdps: usize) -> LinkConfig {
    let mut link = LinkConfig::with_latency(Duration::from_millis(25));
    link.bandwidth_bps = Some(100 * MBIT);
    link.queue_bytes = bdps * 625_000;
    link
}

fn sender(p: &Pair, h: ChannelHandle) -> ChannelStats {
    p.net.node(p.a).slot(h).channel.stats()
}

/// Runs the transfer to its end and checks every byte arrived intact.
fn complete(p: &mut Pair, h: ChannelHandle, limit: Duration) {
    assert!(
        p.run_transfer(h, limit),
        "transfer did not finish (seed {})",
        p.net.seed()
    );
    assert_eq!(p.receiver().upper.corrupt, 0);
    assert!(p.receiver().upper.complete());
}

#[test]
fn a_clean_path_validates_ecn_and_marks_every_packet() {
    let mut p = pair(1, LinkConfig::default(), fast_config());
    let h = p.start_transfer(1, 3_000_000);
    complete(&mut p, h, Duration::from_secs(30));
    let a = sender(&p, h);
    let b = p.receiver().channel.stats();
    assert_eq!(a.ecn_state, EcnState::Capable, "{a:?}");
    assert_eq!(a.ecn_failures, 0);
    // Only the pause after the ten test packets goes out unmarked.
    assert!(
        a.ecn_marked_sent * 10 >= a.packets_sent * 9,
        "{} of {} marked",
        a.ecn_marked_sent,
        a.packets_sent
    );
    // Nothing is lost on this link: every marked packet arrived marked (but the last few,
    // perhaps still in flight when the transfer ended).
    assert!(b.ecn_ect0_received <= a.ecn_marked_sent);
    assert!(b.ecn_ect0_received + 10 >= a.ecn_marked_sent, "{b:?}");
    assert_eq!(b.ecn_ce_received, 0);
    // The receiver's ACKs are marked and validated too.
    assert_eq!(b.ecn_state, EcnState::Capable, "{b:?}");
}

/// Runs a 40 MB transfer over a bottleneck with a 4-BDP queue (2.5 MB) and a step-marking AQM
/// at `ce_threshold` bytes of backlog if given, and returns the sender's statistics, the bytes it
/// retransmitted and the link's queue drops and CE marks.
fn over_bottleneck(
    algorithm: CongestionAlgorithm,
    ecn: bool,
    ce_threshold: Option<usize>,
) -> (ChannelStats, u64, u64, u64) {
    let mut link = bottleneck(4);
    link.ce_threshold = ce_threshold;
    let mut config = fast_config();
    config.congestion = algorithm;
    config.ecn = ecn;
    let mut p = pair(2, link, config);
    let h = p.start_transfer(2, 40_000_000);
    complete(&mut p, h, Duration::from_secs(60));
    let a = sender(&p, h);
    let retransmitted = p.net.node(p.a).slot(h).upper.bytes_retransmitted;
    let l = p.net.route(addr(1), addr(2)).expect("link a->b");
    let link = p.net.link_stats(l);
    println!(
        "{algorithm:?} ecn {ecn} threshold {ce_threshold:?}: queue drops {}, CE marks {}, \
         retransmitted {retransmitted} B, {a:?}",
        link.dropped.queue, link.ce_marked
    );
    (a, retransmitted, link.dropped.queue, link.ce_marked)
}

#[test]
fn ce_marks_shrink_the_window_without_loss_or_retransmission() {
    for algorithm in [CongestionAlgorithm::Cubic, CongestionAlgorithm::NewReno] {
        // Without ECN the sender finds the capacity by overflowing the queue.
        let (plain, _, drops, _) = over_bottleneck(algorithm, false, Some(125_000));
        assert!(
            drops > 0 && plain.packets_lost > 0,
            "{algorithm:?}: no loss without ECN"
        );
        assert_eq!(plain.ecn_marked_sent, 0);

        // With ECN, marks past 125 KB of backlog make it back off long before the queue
        // fills: not even slow start's overshoot reaches it.
        let (a, retransmitted, drops, marks) = over_bottleneck(algorithm, true, Some(125_000));
        assert!(marks > 0, "{algorithm:?}: the AQM never marked");
        assert_eq!(a.ecn_state, EcnState::Capable, "{algorithm:?}");
        assert!(a.ecn_ce_reported > 0 && a.ecn_congestion_signals > 0);
        assert!(
            a.congestion_events > 0,
            "{algorithm:?}: CE never reduced the window"
        );
        assert_eq!(drops, 0, "{algorithm:?}: the queue overflowed");
        assert_eq!(a.packets_lost, 0, "{algorithm:?}");
        assert_eq!(retransmitted, 0, "{algorithm:?}: CE must not retransmit");
        // One reduction per round trip at most: far fewer than the marks.
        assert!(a.congestion_events < a.ecn_ce_reported, "{algorithm:?}");
    }
}

#[test]
fn random_ce_marks_bound_the_window() {
    let window = |ce_mark: f64| {
        let mut link = LinkConfig::with_latency(Duration::from_millis(10));
        link.ce_mark = ce_mark;
        let mut p = pair(3, link, fast_config());
        let h = p.start_transfer(3, 30_000_000);
        complete(&mut p, h, Duration::from_secs(60));
        let a = sender(&p, h);
        let retransmitted = p.net.node(p.a).slot(h).upper.bytes_retransmitted;
        println!("ce_mark {ce_mark}: retransmitted {retransmitted} B, {a:?}");
        assert_eq!((a.packets_lost, retransmitted), (0, 0));
        a
    };
    let clean = window(0.0);
    let marked = window(0.01);
    assert_eq!(clean.congestion_events, 0);
    assert!(marked.congestion_events >= 3, "{marked:?}");
    assert!(
        marked.cwnd * 4 < clean.cwnd,
        "1% CE marks should hold the window well below the unmarked one: {} vs {}",
        marked.cwnd,
        clean.cwnd
    );
}

#[test]
fn a_bleaching_path_turns_ecn_off_and_the_transfer_completes() {
    let mut link = bottleneck(1);
    link.bleach = true;
    link.loss = 0.01;
    let mut p = pair(4, link, fast_config());
    let h = p.start_transfer(4, 3_000_000);
    complete(&mut p, h, Duration::from_secs(60));
    let a = sender(&p, h);
    let b = p.receiver().channel.stats();
    assert_eq!(a.ecn_state, EcnState::Failed, "{a:?}");
    assert_eq!(a.ecn_failures, 1);
    // Only the test packets were marked (one batch may go past ten).
    assert!(a.ecn_marked_sent <= 64, "{a:?}");
    assert_eq!(b.ecn_ect0_received, 0);
    assert_eq!(b.ecn_state, EcnState::Failed, "{b:?}");
}

#[test]
fn a_path_that_starts_bleaching_midway_turns_ecn_off() {
    let mut p = pair(5, bottleneck(1), fast_config());
    let h = p.start_transfer(5, 20_000_000);
    p.net.run_for(Duration::from_millis(500)).unwrap();
    assert_eq!(sender(&p, h).ecn_state, EcnState::Capable);
    let l = p.net.route(addr(1), addr(2)).expect("link a->b");
    p.net.link_config_mut(l).bleach = true;
    complete(&mut p, h, Duration::from_secs(60));
    let a = sender(&p, h);
    assert_eq!(a.ecn_state, EcnState::Failed, "{a:?}");
    assert_eq!(a.ecn_failures, 1);
}

#[test]
fn a_path_that_drops_ect_packets_turns_ecn_off() {
    let mut p = pair(6, bottleneck(1), fast_config());
    let h = p.start_transfer(6, 2_000_000);
    p.net.set_interceptor(Box::new(|i| {
        if i.ecn.is_some() {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    complete(&mut p, h, Duration::from_secs(60));
    let a = sender(&p, h);
    let b = p.receiver().channel.stats();
    assert_eq!(a.ecn_state, EcnState::Failed, "{a:?}");
    assert_eq!(b.ecn_state, EcnState::Failed, "{b:?}");
    assert_eq!(b.ecn_ect0_received, 0);
}

#[test]
fn ect1_counted_by_the_peer_turns_ecn_off() {
    let mut p = pair(7, bottleneck(1), fast_config());
    let h = p.start_transfer(7, 2_000_000);
    let b_addr = addr(2);
    // The network re-marks ECT(0) as ECT(1) on the way to b: b's counts show ECT(1), which
    // a never sends.
    p.net.set_interceptor(Box::new(move |i| {
        if i.to == b_addr && i.ecn == Some(EcnCodepoint::Ect0) {
            i.ecn = Some(EcnCodepoint::Ect1);
        }
        Verdict::Deliver
    }));
    complete(&mut p, h, Duration::from_secs(60));
    let a = sender(&p, h);
    assert_eq!(a.ecn_state, EcnState::Failed, "{a:?}");
    assert!(p.receiver().channel.stats().ecn_ect1_received > 0);
}

#[test]
fn ecn_is_validated_afresh_on_each_new_path() {
    let mut clean = LinkConfig::with_latency(Duration::from_millis(10));
    clean.bandwidth_bps = Some(20 * MBIT);
    let mut p = pair(8, clean.clone(), fast_config());
    let h = p.start_transfer(8, 10_000_000);
    let receiver_ecn = |p: &Pair| p.receiver().channel.stats();
    p.net.run_for(Duration::from_millis(300)).unwrap();
    assert_eq!(receiver_ecn(&p).ecn_state, EcnState::Capable);

    // a moves; the way back from b to its new address bleaches: b's ECN fails there.
    let second = std::net::SocketAddr::from(([10, 0, 0, 1], 5555));
    p.net.rebind(p.a, addr(1), second);
    p.net.set_link(second, addr(2), clean.clone());
    let mut bleaching = clean.clone();
    bleaching.bleach = true;
    p.net.set_link(addr(2), second, bleaching);
    p.net.run_for(Duration::from_millis(1500)).unwrap();
    let b = receiver_ecn(&p);
    assert_eq!(b.migrations, 1);
    assert_eq!(b.ecn_state, EcnState::Failed, "{b:?}");

    // a moves again to a clean path: b tests ECN again and it passes.
    let third = std::net::SocketAddr::from(([10, 0, 0, 1], 6666));
    p.net.rebind(p.a, second, third);
    p.net.connect(third, addr(2), clean);
    complete(&mut p, h, Duration::from_secs(60));
    let b = receiver_ecn(&p);
    assert_eq!(b.migrations, 2);
    assert_eq!(b.ecn_state, EcnState::Capable, "{b:?}");
    assert_eq!(b.ecn_failures, 1);
    // a's own path to b never changed in quality: it stayed validated throughout.
    assert_eq!(sender(&p, h).ecn_state, EcnState::Capable);
}
