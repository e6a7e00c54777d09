//! Channel throughput in one process with real AEAD: two channels joined back to back (no
//! simulated network), the sender filling 1452-byte packets with bulk frames, the receiver
//! acknowledging. Compared in the same run with the bare ring AEAD seal+open of the same
//! packets, the ceiling any protocol on this machine can reach; the goal is >= 80% of it.
//!
//! `cargo bench --bench channel`
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use sss_proto::crypto::aead::Suite;
use sss_proto::testkit::Bulk;
use sss_proto::{Channel, ChannelConfig, DatagramEvent, Endpoint, EndpointConfig, Identity};

const PACKET: usize = 1452;
const TRANSFER: u64 = 16 << 20;
/// Datagrams per `poll_transmit` batch.
const BATCH: usize = 64;

struct Side {
    endpoint: Endpoint,
    channel: Option<Channel<(u64, u32)>>,
    upper: Bulk,
    addr: SocketAddr,
}

fn endpoint(seed: u64, suite: Suite) -> Endpoint {
    let id = Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed));
    let mut config = EndpointConfig::new([seed as u8; 32]);
    let mut channel = ChannelConfig::default();
    channel.suites = suite.bit();
    channel.base_udp_payload = PACKET as u16;
    channel.max_udp_payload = PACKET as u16;
    channel.mtu_discovery = false;
    channel.initial_rtt = Duration::from_micros(100);
    config.channel = std::sync::Arc::new(channel);
    Endpoint::new(config, &id, Instant::now(), 1_700_000_000_000_000_000)
}

/// Delivers every datagram `from` has to send into `to`; returns how many.
fn shuttle(
    now: Instant,
    from: &mut Side,
    to: &mut Side,
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> usize {
    let mut n = 0;
    let Some(ch) = from.channel.as_mut() else {
        return 0;
    };
    while let Some(t) = ch.poll_transmit(now, BATCH, buf, &mut from.upper) {
        let seg = t.segment_size.unwrap_or(t.size);
        for datagram in buf[..t.size].chunks_mut(seg) {
            n += 1;
            if from.upper.total > 0 {
                DATAGRAMS.with(|d| d.set(d.get() + 1));
            }
            match to.endpoint.handle(now, from.addr, datagram, scratch) {
                Some(DatagramEvent::Channel(_)) => {
                    if let Some(c) = to.channel.as_mut() {
                        // The codepoint travels as on a real path (loopback keeps it).
                        c.handle_datagram_with_ecn(now, from.addr, t.ecn, datagram, &mut to.upper);
                    }
                }
                Some(DatagramEvent::Incoming(inc)) => {
                    let (_, c) = to.endpoint.accept(now, inc).expect("accept");
                    to.channel = Some(c);
                }
                _ => {}
            }
        }
    }
    n
}

/// Two sides with an established channel from `a` to `b`, nothing queued yet (each transfer
/// adds its bytes with [`Bulk::extend`]).
fn connected(suite: Suite) -> (Side, Side, Instant) {
    let mut now = Instant::now();
    let mut a = Side {
        endpoint: endpoint(1, suite),
        channel: None,
        upper: Bulk::sender(1, 0),
        addr: "10.0.0.1:1".parse().unwrap(),
    };
    let mut b = Side {
        endpoint: endpoint(2, suite),
        channel: None,
        upper: Bulk::receiver(1, 0),
        addr: "10.0.0.2:2".parse().unwrap(),
    };
    let b_eid = b.endpoint.eid();
    let (_, ch) = a
        .endpoint
        .connect(now, b_eid, b.addr, "bench", "bulk/1")
        .expect("connect");
    a.channel = Some(ch);
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        shuttle(now, &mut a, &mut b, &mut buf, &mut scratch);
        shuttle(now, &mut b, &mut a, &mut buf, &mut scratch);
        now += Duration::from_micros(50);
    }
    assert!(a.channel.as_ref().unwrap().is_established());
    (a, b, now)
}

/// Moves the data queued at `a` to `b`; returns the virtual time it took.
fn transfer(a: &mut Side, b: &mut Side, mut now: Instant) -> Duration {
    let start = now;
    let (mut buf, mut scratch) = (Vec::with_capacity(65536), Vec::new());
    while !b.upper.complete() {
        let sent =
            shuttle(now, a, b, &mut buf, &mut scratch) + shuttle(now, b, a, &mut buf, &mut scratch);
        if sent == 0 {
            // Nothing to send: jump to the next timer (pacing, delayed ACK).
            let next = [&*a, &*b]
                .iter()
                .filter_map(|s| s.channel.as_ref()?.poll_timeout())
                .min()
                .unwrap_or(now + Duration::from_micros(10));
            now = next.max(now + Duration::from_micros(1));
            for s in [&mut *a, &mut *b] {
                if let Some(c) = s.channel.as_mut() {
                    c.handle_timeout(now, &mut s.upper);
                }
            }
        } else {
            now += Duration::from_micros(5);
        }
    }
    assert_eq!(b.upper.corrupt, 0);
    now - start
}

/// One bare packet: fill 1436 bytes, seal them in place with packet number `pn` and a 9-byte
/// header as associated data, open them again; returns the plaintext length.
fn seal_open(key: &LessSafeKey, pn: u64, packet: &mut Vec<u8>) -> usize {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&pn.to_be_bytes());
    packet.clear();
    packet.resize(PACKET - 16, 0xab);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(n),
        Aad::from(&[1u8; 9]),
        packet,
    )
    .unwrap();
    key.open_in_place(
        Nonce::assume_unique_for_key(n),
        Aad::from(&[1u8; 9]),
        packet,
    )
    .unwrap()
    .len()
}

fn bare_aead(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead seal+open 1452 B");
    group.throughput(Throughput::Bytes(PACKET as u64));
    for (name, alg) in [
        ("chacha20-poly1305", &CHACHA20_POLY1305),
        ("aes-256-gcm", &AES_256_GCM),
    ] {
        let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).unwrap());
        let mut pn = 0u64;
        let mut packet = Vec::with_capacity(PACKET);
        group.bench_function(name, |b| {
            b.iter(|| {
                pn += 1;
                criterion::black_box(seal_open(&key, pn, &mut packet))
            })
        });
    }
    group.finish();
}

fn channel_transfer(c: &mut Criterion) {
    let mut group = c.benchmark_group("channel transfer 16 MiB");
    group.throughput(Throughput::Bytes(TRANSFER));
    group.sample_size(10);
    for (name, suite) in [
        ("chacha20-poly1305", Suite::ChaCha20Poly1305),
        ("aes-256-gcm", Suite::Aes256Gcm),
    ] {
        // One long-lived channel carries every transfer, as an application's channel does:
        // the handshake, slow start from nothing and the first growth of the channel's
        // tables are set-up, not throughput.
        // Set up on first use, so that a filtered-out suite costs nothing.
        let mut pair: Option<(Side, Side, Instant)> = None;
        group.bench_function(name, |bencher| {
            let (a, b, now) = pair.get_or_insert_with(|| {
                let (mut a, mut b, now) = connected(suite);
                let now = warm_up(&mut a, &mut b, now);
                (a, b, now)
            });
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let (end, _) = next_transfer(a, b, *now);
                    total += started.elapsed();
                    *now = end;
                }
                total
            })
        });
    }
    group.finish();
}

/// Two transfers on a fresh channel: fills the frame-vector pool and the sent-packet table.
fn warm_up(a: &mut Side, b: &mut Side, mut now: Instant) -> Instant {
    for _ in 0..2 {
        now = next_transfer(a, b, now).0;
    }
    now
}

/// Queues [`TRANSFER`] more bytes at `a` and moves them to `b`; returns the virtual time at
/// the end and the data datagrams `a` sent.
fn next_transfer(a: &mut Side, b: &mut Side, now: Instant) -> (Instant, usize) {
    a.upper.extend(TRANSFER);
    b.upper.extend(TRANSFER);
    DATAGRAMS.with(|d| d.set(0));
    let elapsed = transfer(a, b, now);
    (now + elapsed, DATAGRAMS.with(|d| d.get()))
}

thread_local! {
    /// Datagrams `shuttle` delivered from the data sender (side address `10.0.0.1`).
    static DATAGRAMS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// CPU time of the calling thread: unlike wall time it does not count the time the thread
/// was not running, so a pair is not skewed by another process taking the core.
#[allow(unsafe_code)] // one libc call, see SAFETY below
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The bare seal+open of `packets` 1452-byte packets, as in [`bare_aead`]; returns the time.
fn bare_run(key: &LessSafeKey, packets: usize, pn: &mut u64, packet: &mut Vec<u8>) -> Duration {
    let started = thread_cpu();
    for _ in 0..packets {
        *pn += 1;
        criterion::black_box(seal_open(key, *pn, packet));
    }
    thread_cpu() - started
}

/// The goal's ratio measured in pairs: a 16 MiB transfer, then the bare seal+open of as many
/// packets as it sent, alternately on the same thread, so that both halves of a pair see the
/// same core speed and load; both halves are timed in the thread's CPU time. Prints each pair's ratio (channel packets per second over bare
/// packets per second) and the median. Run it pinned:
/// `taskset -c 1 cargo bench --bench channel -- --paired`.
fn paired_ratio() {
    const PAIRS: usize = 21;
    for (name, suite, alg) in [
        (
            "chacha20-poly1305",
            Suite::ChaCha20Poly1305,
            &CHACHA20_POLY1305,
        ),
        ("aes-256-gcm", Suite::Aes256Gcm, &AES_256_GCM),
    ] {
        // "checked": the receiver compares every byte with the content function, work the
        // bare loop does not do; "protocol": it does not, so the pair differs only by the
        // protocol (the sender still copies the content into each packet, as the bare loop
        // fills its packet).
        for verify in [true, false] {
            let (mut a, mut b, mut now) = connected(suite);
            b.upper.verify = verify;
            now = warm_up(&mut a, &mut b, now);
            let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).unwrap());
            let (mut pn, mut packet) = (0u64, Vec::with_capacity(PACKET));
            let mut ratios = Vec::with_capacity(PAIRS);
            let (mut channel_total, mut bare_total, mut packets_total) =
                (Duration::ZERO, Duration::ZERO, 0);
            for _ in 0..PAIRS {
                let started = thread_cpu();
                let (end, packets) = next_transfer(&mut a, &mut b, now);
                let channel = thread_cpu() - started;
                now = end;
                let bare = bare_run(&key, packets, &mut pn, &mut packet);
                ratios.push(bare.as_secs_f64() / channel.as_secs_f64());
                channel_total += channel;
                bare_total += bare;
                packets_total += packets;
            }
            ratios.sort_by(f64::total_cmp);
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "{name} ({}): {PAIRS} pairs, {:.0} data packets per transfer, channel {:.2} µs/packet, bare {:.2} µs/packet",
                if verify { "checked" } else { "protocol" },
                packets_total as f64 / PAIRS as f64,
                channel_total.as_secs_f64() * 1e6 / packets_total as f64,
                bare_total.as_secs_f64() * 1e6 / packets_total as f64,
            );
            println!(
                "  channel/bare per pair (sorted): {}\n  median {:.3}, min {:.3}, max {:.3}",
                shown.join(" "),
                ratios[PAIRS / 2],
                ratios[0],
                ratios[PAIRS - 1]
            );
        }
    }
}

criterion_group!(benches, bare_aead, channel_transfer);

fn main() {
    if std::env::args().any(|a| a == "--paired") {
        paired_ratio();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
