//! Channel throughput in one process with real AEAD: two channels joined back to back (no
//! simulated network), the sender filling 1452-byte packets with bulk frames, the receiver
//! acknowledging. Compared in the same run with the bare ring AEAD seal+open of the same
//! packets, the ceiling any protocol on this machine can reach; the goal is >= 80% of it.
//!
//! `cargo bench --bench channel`
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use sss_proto::crypto::aead::Suite;
use sss_proto::testkit::Bulk;
use sss_proto::{Channel, ChannelConfig, DatagramEvent, Endpoint, EndpointConfig, Identity};

const PACKET: usize = 1452;
const TRANSFER: u64 = 16 << 20;

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
    while let Some(t) = ch.poll_transmit(now, 64, buf, &mut from.upper) {
        let seg = t.segment_size.unwrap_or(t.size);
        for datagram in buf[..t.size].chunks_mut(seg) {
            n += 1;
            match to.endpoint.handle(now, from.addr, datagram, scratch) {
                Some(DatagramEvent::Channel(_)) => {
                    if let Some(c) = to.channel.as_mut() {
                        c.handle_datagram(now, from.addr, datagram, &mut to.upper);
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

/// Two sides with an established channel from `a` to `b`, `a` ready to send `bytes`.
fn connected(suite: Suite, bytes: u64) -> (Side, Side, Instant) {
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
        upper: Bulk::receiver(1, bytes),
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
    a.upper = Bulk::sender(1, bytes);
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
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&pn.to_be_bytes());
                packet.clear();
                packet.resize(PACKET - 16, 0xab);
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::from(&[1u8; 9]),
                    &mut packet,
                )
                .unwrap();
                let opened = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&[1u8; 9]),
                        &mut packet,
                    )
                    .unwrap()
                    .len();
                criterion::black_box(opened)
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
        group.bench_function(name, |bencher| {
            // Only the transfer is timed; the handshake is set up outside the measurement.
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (mut a, mut b, now) = connected(suite, TRANSFER);
                    let started = Instant::now();
                    transfer(&mut a, &mut b, now);
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bare_aead, channel_transfer);
criterion_main!(benches);
