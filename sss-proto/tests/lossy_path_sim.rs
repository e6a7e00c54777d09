//! Recovery on lossy paths with small windows (spec/recovery.md §2.3 and channel.md, ACK
//! policy): the repeated ACK of a receive batch, and CUBIC's Reno-friendly growth per round
//! trip with a window that is not a whole number of datagrams.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::addr;
use common::setup::{fast_config, pair, Pair};
use sss_proto::channel::ChannelConfig;
use sss_proto::endpoint::ChannelHandle;
use sss_proto::sim::{LinkConfig, Verdict};

/// ACK-only packets are the small ones: data packets are full-sized here.
const SMALL: usize = 200;

/// Hosts that drain a whole receive batch before sending, as `sss-host` does with GRO: a
/// flight that arrives together gets one ACK (and its repeat), not one per two packets.
fn batch_pair(seed: u64, link: LinkConfig, config: ChannelConfig) -> Pair {
    let mut p = pair(seed, link, config);
    let (a, b) = (p.a, p.b);
    p.net.set_batch_receive(a, true);
    p.net.set_batch_receive(b, true);
    p
}

/// A 40 ms round trip with `loss` each way.
fn lossy_link(loss: f64) -> LinkConfig {
    let mut link = LinkConfig::with_latency(Duration::from_millis(20));
    link.loss = loss;
    link
}

/// Runs a transfer to the end and returns the sender's PTO count.
fn transfer(p: &mut Pair, h: ChannelHandle, seed: u64) -> u64 {
    assert!(
        p.run_transfer(h, Duration::from_secs(300)),
        "seed {seed}: transfer did not complete"
    );
    assert_eq!(p.receiver().upper.corrupt, 0, "seed {seed}");
    p.net.node(p.a).slot(h).channel.stats().ptos
}

/// The receiver acknowledges a batch of at least four ack-eliciting packets twice, so losing
/// one ACK of each batch leaves the sender's ack clock running: no probe timeouts, although
/// without the repeat every flight's only ACK would be gone.
#[test]
fn a_lost_ack_of_a_batch_costs_no_probe_timeout() {
    let mut p = batch_pair(3, lossy_link(0.0), fast_config());
    let h = p.start_transfer(3, 1_000_000);
    let a_addr = addr(1);
    let start = p.net.now();
    // (instant of the last ACK dropped, ACKs dropped, ACKs delivered)
    let seen = Rc::new(RefCell::new((None::<Instant>, 0u32, 0u32)));
    let s = seen.clone();
    p.net.set_interceptor(Box::new(move |i| {
        // Once the channel is up (the handshake messages are small too), drop the first
        // ACK-only packet of every instant: the only ACK of a small batch, the first copy of
        // a repeated one.
        if i.to != a_addr || i.data.len() >= SMALL || i.time < start + Duration::from_millis(300) {
            return Verdict::Deliver;
        }
        let mut st = s.borrow_mut();
        if st.0 == Some(i.time) {
            st.2 += 1;
            return Verdict::Deliver;
        }
        st.0 = Some(i.time);
        st.1 += 1;
        Verdict::Drop
    }));
    let ptos = transfer(&mut p, h, 3);
    let (_, dropped, delivered) = *seen.borrow();
    assert!(dropped >= 15, "only {dropped} ACKs dropped");
    assert!(
        delivered + 2 >= dropped,
        "{dropped} batches acknowledged but only {delivered} repeats"
    );
    // The last flight of the transfer may be too small for a repeat: one probe at most.
    assert!(
        ptos <= 1,
        "{ptos} probe timeouts with {dropped} ACKs dropped"
    );
}

/// At 5 % loss each way and a 40 ms round trip (windows of 4 to 10 datagrams, every flight
/// arriving as one batch), probe timeouts stay rare: a flight's ACK is lost only when both
/// copies are. Every transfer completes intact.
#[test]
fn repeated_acks_keep_probe_timeouts_rare_at_5_percent_loss() {
    let seeds = 16u64;
    let mut ptos = 0;
    for seed in 0..seeds {
        let mut p = batch_pair(seed, lossy_link(0.05), fast_config());
        let h = p.start_transfer(seed, 1_000_000);
        ptos += transfer(&mut p, h, seed);
    }
    // Measured: about 1.2 per transfer with the repeat, 5.5 without it.
    assert!(
        ptos <= 2 * seeds,
        "{ptos} probe timeouts in {seeds} transfers"
    );
}

/// After a loss, CUBIC's Reno-friendly estimate grows by alpha = 3 * 0.3 / 1.7 datagrams per
/// round trip even though the reduced window (0.7 of the old one) is not a whole number of
/// datagrams and each round trip carries only the whole ones it holds.
#[test]
fn cubic_grows_alpha_datagrams_per_round_trip_after_a_loss() {
    let mut config = fast_config();
    config.mtu_discovery = false;
    // Full 1200-byte datagrams, so that windows are whole multiples of them.
    config.whole_block_payloads = false;
    let rtt = Duration::from_millis(40);
    let mut p = batch_pair(5, lossy_link(0.0), config);
    let h = p.start_transfer(5, 50_000_000);
    let b_addr = addr(2);
    // Drop the 10th data packet: slow start ends with a window of 19 datagrams, reduced to
    // 13.3.
    let count = Rc::new(RefCell::new(0u32));
    let c = count.clone();
    p.net.set_interceptor(Box::new(move |i| {
        if i.to != b_addr || i.data.len() < SMALL {
            return Verdict::Deliver;
        }
        *c.borrow_mut() += 1;
        if *c.borrow() == 10 {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }));
    let cwnd = |p: &Pair| p.net.node(p.a).slot(h).channel.stats().cwnd;
    // Run until the reduction, then past the recovery round trip.
    let mut last = cwnd(&p);
    let deadline = p.net.now() + Duration::from_secs(5);
    while cwnd(&p) >= last && p.net.now() < deadline {
        last = cwnd(&p);
        p.net.step().unwrap();
    }
    let reduced = cwnd(&p);
    assert!(reduced < last, "no congestion event");
    assert_eq!(reduced, 15_960, "13.3 datagrams");
    p.net.run_for(rtt + rtt / 2).unwrap();
    let from = cwnd(&p);
    let rounds = 6u32;
    p.net.run_for(rtt * rounds).unwrap();
    let grown = cwnd(&p) - from;
    let per_round = grown as f64 / f64::from(rounds) / 1200.0;
    let alpha = 0.9 / 1.7;
    println!("reduced {reduced}, from {from}: {per_round:.3} datagrams per round trip");
    assert!(
        (per_round - alpha).abs() <= 0.06 * alpha,
        "{per_round:.3} datagrams per round trip instead of {alpha:.3}"
    );
}
