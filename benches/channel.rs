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
/// Datagrams per `poll_transmit` batch (at most 64, as UDP GSO allows), unless
/// `SSS_BENCH_BATCH` says otherwise (a diagnostic of how the batch size matters).
fn batch() -> usize {
    static BATCH: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BATCH.get_or_init(|| {
        std::env::var("SSS_BENCH_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    })
}

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
    // Payloads cut to whole AEAD blocks as the channel does by default;
    // `SSS_BENCH_BLOCKS=0` turns it off (`=1` on).
    if let Ok(v) = std::env::var("SSS_BENCH_BLOCKS") {
        channel.whole_block_payloads = v == "1";
    }
    config.channel = std::sync::Arc::new(channel);
    Endpoint::new(config, &id, Instant::now(), 1_700_000_000_000_000_000)
}

/// Whether the receiver answers each batch it received before the sender builds its next
/// (`SSS_BENCH_ACKS=batch`), or only once the sender has nothing more to send
/// (`SSS_BENCH_ACKS=round`, the bench's original order).
fn ack_per_batch() -> bool {
    static PER_BATCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PER_BATCH
        .get_or_init(|| std::env::var("SSS_BENCH_ACKS").map_or(ACKS_PER_BATCH, |v| v == "batch"))
}

/// The default of [`ack_per_batch`].
const ACKS_PER_BATCH: bool = false;

/// Delivers every datagram `from` has to send into `to`; returns how many. With `answer`,
/// `to` sends what it has for `from` (its ACKs) after each batch, as a host's receive loop
/// does once it has processed a batch of received datagrams.
fn shuttle(
    now: Instant,
    from: &mut Side,
    to: &mut Side,
    bufs: &mut [Vec<u8>; 2],
    scratch: &mut Vec<u8>,
    answer: bool,
) -> usize {
    let mut n = 0;
    let batch = batch();
    loop {
        let Some(ch) = from.channel.as_mut() else {
            return n;
        };
        let [buf, reply] = bufs;
        let Some(t) = ch.poll_transmit(now, batch, buf, &mut from.upper) else {
            return n;
        };
        let seg = t.segment_size.unwrap_or(t.size);
        let count = t.size.div_ceil(seg);
        n += count;
        if from.upper.total > 0 {
            // The bench's own bookkeeping, once per batch rather than per datagram so that
            // it weighs nothing in the channel's time: the batch's first datagram has the
            // shape of all but (perhaps) a shorter last one.
            DATAGRAMS.with(|d| d.set(d.get() + count));
            let first = &buf[..seg.min(t.size)];
            if let Ok((_, header)) = sss_proto::packet::DataHeader::parse(first) {
                let payload = first.len().saturating_sub(header + TAG);
                DATA_SHAPE.with(|s| s.set((header, s.get().1.max(payload))));
            }
        }
        for datagram in buf[..t.size].chunks_mut(seg) {
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
        if answer {
            let mut inner = [std::mem::take(reply), Vec::new()];
            let answered = shuttle(now, to, from, &mut inner, scratch, false);
            if answered > 0 {
                ROUNDS.with(|r| r.set(r.get() + 1));
            }
            n += answered;
            *reply = std::mem::take(&mut inner[0]);
        }
    }
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
    let (mut bufs, mut scratch) = ([Vec::new(), Vec::new()], Vec::new());
    for _ in 0..4 {
        shuttle(now, &mut a, &mut b, &mut bufs, &mut scratch, false);
        shuttle(now, &mut b, &mut a, &mut bufs, &mut scratch, false);
        now += Duration::from_micros(50);
    }
    assert!(a.channel.as_ref().unwrap().is_established());
    (a, b, now)
}

/// Moves the data queued at `a` to `b`; returns the virtual time it took.
fn transfer(a: &mut Side, b: &mut Side, mut now: Instant) -> Duration {
    let start = now;
    let mut bufs = [Vec::with_capacity(65536), Vec::with_capacity(65536)];
    let mut scratch = Vec::new();
    let answer = ack_per_batch();
    while !b.upper.complete() {
        let sent = shuttle(now, a, b, &mut bufs, &mut scratch, answer)
            + shuttle(now, b, a, &mut bufs, &mut scratch, answer);
        if sent > 0 && !answer {
            ROUNDS.with(|r| r.set(r.get() + 1));
        }
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
    /// Rounds of [`transfer`] that moved datagrams (each ends with the receiver's ACKs).
    static ROUNDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Header length and largest payload (plaintext) length of the data packets seen.
    static DATA_SHAPE: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// AEAD tag length of both suites.
const TAG: usize = 16;

/// The bare seal+open of `packets` packets shaped like the channel's data packets (`header`
/// bytes of associated data, `payload` bytes sealed): the same AEAD work as the channel's,
/// so that the channel's time over this one is the protocol's own overhead.
fn bare_same_size(
    key: &LessSafeKey,
    packets: usize,
    (header, payload): (usize, usize),
    pn: &mut u64,
    packet: &mut Vec<u8>,
) -> Duration {
    let aad = [1u8; 32];
    let started = thread_cpu();
    for _ in 0..packets {
        *pn += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&pn.to_be_bytes());
        packet.clear();
        packet.resize(payload, 0xab);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(n),
            Aad::from(&aad[..header]),
            packet,
        )
        .unwrap();
        let opened = key
            .open_in_place(
                Nonce::assume_unique_for_key(n),
                Aad::from(&aad[..header]),
                packet,
            )
            .unwrap();
        criterion::black_box(opened.len());
    }
    thread_cpu() - started
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
    // `SSS_PAIRS=n` runs n pairs instead (e.g. 1 under callgrind); 21 by default.
    let pairs: usize = std::env::var("SSS_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(21);
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
            // `SSS_PAIRED_ONLY=aes-256-gcm/protocol` (or a part of it) runs only the matching
            // suite and mode, e.g. under a profiler.
            let label = format!("{name}/{}", if verify { "checked" } else { "protocol" });
            if std::env::var("SSS_PAIRED_ONLY").is_ok_and(|f| !label.contains(&f)) {
                continue;
            }
            let (mut a, mut b, mut now) = connected(suite);
            b.upper.verify = verify;
            now = warm_up(&mut a, &mut b, now);
            let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).unwrap());
            let (mut pn, mut packet) = (0u64, Vec::with_capacity(PACKET));
            let mut ratios = Vec::with_capacity(pairs);
            let mut same_ratios = Vec::with_capacity(pairs);
            let (mut channel_total, mut bare_total, mut same_total, mut packets_total) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
            ROUNDS.with(|r| r.set(0));
            DATA_SHAPE.with(|s| s.set((0, 0)));
            for _ in 0..pairs {
                let started = thread_cpu();
                let (end, packets) = next_transfer(&mut a, &mut b, now);
                let channel = thread_cpu() - started;
                now = end;
                let bare = bare_run(&key, packets, &mut pn, &mut packet);
                let shape = DATA_SHAPE.with(|s| s.get());
                let same = bare_same_size(&key, packets, shape, &mut pn, &mut packet);
                ratios.push(bare.as_secs_f64() / channel.as_secs_f64());
                same_ratios.push(same.as_secs_f64() / channel.as_secs_f64());
                channel_total += channel;
                bare_total += bare;
                same_total += same;
                packets_total += packets;
            }
            ratios.sort_by(f64::total_cmp);
            same_ratios.sort_by(f64::total_cmp);
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            let (header, payload) = DATA_SHAPE.with(|s| s.get());
            let stats = a.channel.as_ref().expect("connected").stats();
            println!(
                "  sender: cwnd {} B, max batch {} datagrams, {} data packets between the receiver's answers",
                stats.cwnd,
                stats.max_batch,
                packets_total / ROUNDS.with(|r| r.get()).max(1),
            );
            println!(
                "{name} ({}): {pairs} pairs, {:.0} data packets per transfer, channel {:.2} µs/packet, bare {:.2} µs/packet",
                if verify { "checked" } else { "protocol" },
                packets_total as f64 / pairs as f64,
                channel_total.as_secs_f64() * 1e6 / packets_total as f64,
                bare_total.as_secs_f64() * 1e6 / packets_total as f64,
            );
            println!(
                "  channel/bare per pair (sorted): {}\n  median {:.3}, min {:.3}, max {:.3}",
                shown.join(" "),
                ratios[pairs / 2],
                ratios[0],
                ratios[pairs - 1]
            );
            println!(
                "  against the bare seal+open of the channel's own packet shape ({header} B header, {payload} B payload: {:.2} µs/packet): median {:.3}, min {:.3}, max {:.3}",
                same_total.as_secs_f64() * 1e6 / packets_total as f64,
                same_ratios[pairs / 2],
                same_ratios[0],
                same_ratios[pairs - 1]
            );
        }
    }
}

/// Diagnostic (`--payload-sizes`): the bare seal+open of payloads of several lengths around
/// a packet's (1,427-1,430 bytes in a 1,452-byte packet), against the yardstick (1,436).
/// A length that is a multiple of 16 spares AES-GCM its partial last block.
fn payload_sizes() {
    const ROUNDS: usize = 21;
    const PACKETS: usize = 11_800;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let (mut pn, mut packet) = (0u64, Vec::with_capacity(PACKET));
    for len in [1424usize, 1429, 1436, 1440] {
        let mut ratios = Vec::with_capacity(ROUNDS);
        let (mut yard, mut var) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            let y = bare_run(&key, PACKETS, &mut pn, &mut packet);
            let v = bare_same_size(&key, PACKETS, (7, len), &mut pn, &mut packet);
            ratios.push(v.as_secs_f64() / y.as_secs_f64());
            yard += y;
            var += v;
        }
        let spread = spread(&mut ratios);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / (ROUNDS * PACKETS) as f64;
        println!(
            "aes-256-gcm payload {len} B ({} whole blocks + {} B): {:.3} µs/packet against bare (1436 B) {:.3}; time ratio {}",
            len / 16,
            len % 16,
            per(var),
            per(yard),
            spread
        );
    }
}

/// Diagnostic (`--key-align`): the bare seal+open with the key at each 16-byte offset
/// within a 64-byte cache line, against the yardstick's key on the stack.
fn key_align() {
    const ROUNDS: usize = 21;
    const PACKETS: usize = 11_800;
    let yard = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let size = std::mem::size_of::<LessSafeKey>();
    let align = std::mem::align_of::<LessSafeKey>();
    println!(
        "LessSafeKey: {size} bytes, align {align}; yardstick key at {:#x}",
        &yard as *const _ as usize % 64
    );
    // Eight keys in a row: their offsets mod 64 step by size mod 64.
    let keys: Vec<LessSafeKey> = (0..8)
        .map(|_| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap()))
        .collect();
    let (mut pn, mut packet) = (0u64, Vec::with_capacity(PACKET));
    for key in &keys {
        let mut ratios = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let y = bare_run(&yard, PACKETS, &mut pn, &mut packet);
            let v = bare_run(key, PACKETS, &mut pn, &mut packet);
            ratios.push(v.as_secs_f64() / y.as_secs_f64());
        }
        let spread = spread(&mut ratios);
        println!(
            "key at {:#04x} mod 64: time ratio to the yardstick {}",
            key as *const _ as usize % 64,
            spread
        );
    }
}

/// Diagnostic (`--aead-layout`): the bare seal+open of 1452-byte packets laid out as the
/// channel lays them out, each variant timed in thread CPU time against the yardstick
/// ([`seal_open`]) in alternation, 21 rounds of 11,800 packets, medians. Variants: the
/// payload after a 7-byte header (misaligned as in a packet); and a batch of `n` packets
/// sealed one after another into one buffer at 1452-byte strides, then opened one after
/// another, as the in-process channel bench does with its GSO batches (n = 64: 93 KB, more
/// than L1).
fn aead_layout() {
    const ROUNDS: usize = 21;
    const PACKETS: usize = 11_800;
    const HEADER: usize = 7;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut pn = 0u64;
    let mut packet = Vec::with_capacity(PACKET);
    // Seals `n` packets (header + payload + tag each) into `buf` at PACKET strides starting
    // at `first`, then opens them; returns the time.
    // A 128 KiB table the payload is copied from at the offsets the bulk test layer uses
    // (`table` variants), as `Bulk::write_frames` copies its content.
    let table: Vec<u8> = (0..128 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut offset = 0usize;
    // A ring of 64-byte records, one written per packet sealed and read back per packet
    // opened (`state` variants): like the sent-packet table of a flight of 11,800 packets.
    let mut state = vec![[0u64; 8]; 16 * 1024];
    let mut slot = 0usize;
    let mut batched = |n: usize,
                       first: usize,
                       (copy, with_state): (bool, bool),
                       pn: &mut u64,
                       buf: &mut Vec<u8>|
     -> Duration {
        buf.clear();
        buf.resize(first + n * PACKET, 0);
        let started = thread_cpu();
        for _ in 0..PACKETS / n {
            let base = *pn;
            for i in 0..n {
                let p = &mut buf[first + i * PACKET..first + (i + 1) * PACKET];
                if copy {
                    let len = PACKET - 16 - HEADER;
                    p[HEADER..PACKET - 16].copy_from_slice(&table[offset..offset + len]);
                    offset = (offset + len) % (64 * 1024);
                } else {
                    p[HEADER..PACKET - 16].fill(0xab);
                }
                let (head, rest) = p.split_at_mut(HEADER);
                let (body, tag_out) = rest.split_at_mut(PACKET - HEADER - 16);
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&(base + i as u64).to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&*head),
                        body,
                    )
                    .unwrap();
                tag_out.copy_from_slice(tag.as_ref());
                if with_state {
                    let at = slot % state.len();
                    state[at] = [base + i as u64; 8];
                    slot += 1;
                }
            }
            for i in 0..n {
                let p = &mut buf[first + i * PACKET..first + (i + 1) * PACKET];
                let (head, rest) = p.split_at_mut(HEADER);
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&(base + i as u64).to_be_bytes());
                let opened = key
                    .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&*head), rest)
                    .unwrap();
                criterion::black_box(opened.len());
                if with_state {
                    let s = state[(slot + 1 + i) % state.len()];
                    criterion::black_box(s[0]);
                }
            }
            *pn += n as u64;
        }
        thread_cpu() - started
    };
    let mut buf = Vec::with_capacity(128 * PACKET + 64);
    // (name, packets per batch, offset of the first packet, (copy from the table, per-packet
    // record in a 1 MiB ring)).
    type Variant = (&'static str, usize, usize, (bool, bool));
    let variants: [Variant; 12] = [
        (
            "1 packet, header 7, payload at +7 (aligned buffer)",
            1,
            0,
            (false, false),
        ),
        (
            "1 packet, header 7, payload aligned (buffer at +57)",
            1,
            57,
            (false, false),
        ),
        ("batch of 4 at 1452-byte strides", 4, 0, (false, false)),
        ("batch of 8", 8, 0, (false, false)),
        ("batch of 16", 16, 0, (false, false)),
        ("batch of 32", 32, 0, (false, false)),
        ("batch of 64 (the bench's GSO batch)", 64, 0, (false, false)),
        (
            "1 packet, payload copied from a 128 KiB table",
            1,
            0,
            (true, false),
        ),
        (
            "batch of 8, payload copied from the table",
            8,
            0,
            (true, false),
        ),
        (
            "batch of 64, payload copied from the table",
            64,
            0,
            (true, false),
        ),
        (
            "1 packet, a 64-byte record per packet in a 1 MiB ring",
            1,
            0,
            (false, true),
        ),
        (
            "batch of 64, table copy and ring record",
            64,
            0,
            (true, true),
        ),
    ];
    for (name, n, first, copy) in variants {
        if std::env::var("SSS_LAYOUT_ONLY").is_ok_and(|f| !name.contains(&f)) {
            continue;
        }
        let mut ratios = Vec::with_capacity(ROUNDS);
        let (mut yard, mut var) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            let y = bare_run(&key, PACKETS / n * n, &mut pn, &mut packet);
            let v = batched(n, first, copy, &mut pn, &mut buf);
            ratios.push(v.as_secs_f64() / y.as_secs_f64());
            yard += y;
            var += v;
        }
        let spread = spread(&mut ratios);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / (ROUNDS * (PACKETS / n * n)) as f64;
        println!(
            "aes-256-gcm {name}: {:.3} µs/packet against bare {:.3}; time ratio {}",
            per(var),
            per(yard),
            spread
        );
    }
}

/// Sorts `ratios` and describes them as "median M (min A, max B)".
fn spread(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    format!(
        "median {:.3} (min {:.3}, max {:.3})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    )
}

criterion_group!(benches, bare_aead, channel_transfer);

fn main() {
    if std::env::args().any(|a| a == "--payload-sizes") {
        payload_sizes();
        return;
    }
    if std::env::args().any(|a| a == "--key-align") {
        key_align();
        return;
    }
    if std::env::args().any(|a| a == "--aead-layout") {
        aead_layout();
        return;
    }
    if std::env::args().any(|a| a == "--paired") {
        paired_ratio();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
