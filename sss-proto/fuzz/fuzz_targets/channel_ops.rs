//! Operation sequences on two endpoints joined back to back (no simulator): host A connects
//! to host B, both move bulk data (testkit `Bulk`) both ways, and the fuzzer decides what
//! the "network" does with every datagram (deliver, drop, duplicate, hold back and deliver
//! later, corrupt a byte, truncate, replace with its own bytes, inject), when time advances,
//! and when each side connects (with or without early data in the initiation), accepts,
//! refuses, queues data, pings, closes or rebinds.
//!
//! Checked on every run:
//! - no panic anywhere;
//! - no receiver ever accepts a corrupted byte (`Bulk::corrupt == 0` on every channel);
//! - the packet numbers each channel sends strictly increase;
//! - timers make progress: after `handle_timeout(now)` and draining `poll_transmit`, a
//!   channel that sent nothing reports no deadline at or before `now` (a driver would spin);
//! - liveness: at the end the link is made clean (everything in flight delivered, held
//!   datagrams released, incoming handshakes accepted) and time runs from timer to timer;
//!   then A's channel either closes or completes the transfer both ways (A holds all of B's
//!   bytes and B acknowledged all of A's).
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sss_proto::channel::ChannelConfig;
use sss_proto::endpoint::{ChannelHandle, DatagramEvent, Endpoint, EndpointConfig, Incoming};
use sss_proto::handshake::RefuseCode;
use sss_proto::packet::{self, DataHeader, PacketKind};
use sss_proto::testkit::{self, Bulk};
use sss_proto::EcnCodepoint;
use sss_proto::{Channel, Identity};

/// Content seed of every bulk stream (the content function only depends on the offset).
const SEED: u64 = 7;
/// Most bytes one direction may carry in a run (keeps a run well under a millisecond).
const MAX_TRANSFER: u64 = 48 * 1024;
/// Most datagrams waiting in one direction; older ones are dropped past this.
const MAX_QUEUE: usize = 256;
/// Most connection attempts by A in one run.
const MAX_CONNECTS: usize = 3;
/// Steps of the final clean run before a live, incomplete channel counts as stalled.
const CLEAN_STEPS: usize = 20_000;

#[derive(Arbitrary, Debug)]
struct Setup {
    /// Answer every initiation with a cookie first (cookie threshold 0).
    cookie_a: bool,
    cookie_b: bool,
    /// Suite sets (low two bits; an empty set becomes ChaCha20-Poly1305 only).
    suites_a: u8,
    suites_b: u8,
    mtu_discovery: bool,
    /// Rotate keys every 8 packets instead of every 2^23.
    frequent_key_updates: bool,
    keepalive: bool,
    /// Bytes each side sends from the start (modulo 16 KiB).
    initial_a: u16,
    initial_b: u16,
    /// A's initiations carry its first frames as early data (packet 0).
    early: bool,
}

/// A direction: `false` is A to B, `true` is B to A.
type Dir = bool;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Accept,
    Refuse,
    /// Poll this side's channels; GSO batches of at most `max % 8 + 1` datagrams.
    Transmit {
        b: bool,
        max: u8,
    },
    /// Deliver the first `n % 8 + 1` datagrams waiting in `dir`.
    Deliver {
        dir: Dir,
        n: u8,
    },
    DeliverAll,
    Drop {
        dir: Dir,
        i: u8,
    },
    Duplicate {
        dir: Dir,
        i: u8,
    },
    /// Take a datagram out of the line; `Release` puts the held ones at the back.
    Hold {
        dir: Dir,
        i: u8,
    },
    Release {
        dir: Dir,
    },
    /// The ECN codepoint datagrams in `dir` arrive with from now on (`ecn % 4`: Not-ECT,
    /// ECT(0), ECT(1), CE): the network marks, re-marks or bleaches, and the receiver's
    /// counts, echoed to the sender's ECN validation, follow.
    Remark {
        dir: Dir,
        ecn: u8,
    },
    Corrupt {
        dir: Dir,
        i: u8,
        pos: u16,
        xor: u8,
    },
    Truncate {
        dir: Dir,
        i: u8,
        len: u16,
    },
    Replace {
        dir: Dir,
        i: u8,
        bytes: Vec<u8>,
    },
    /// A forged data packet for the receiver's live channel (right index, garbage inside).
    Forge {
        dir: Dir,
        phase: bool,
        pn: u32,
        body: Vec<u8>,
    },
    /// Advance virtual time and fire due timers.
    Advance {
        micros: u32,
    },
    /// Jump to the earliest timer and fire it.
    NextTimer,
    Queue {
        b: bool,
        bytes: u16,
    },
    Close {
        b: bool,
        code: u8,
    },
    Ping {
        b: bool,
    },
    /// A's address changes (NAT rebinding); its next datagrams come from the new one.
    Rebind,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

struct Slot {
    channel: Channel<(u64, u32)>,
    upper: Bulk,
    /// The last packet number this channel sent.
    last_pn: Option<u64>,
}

struct Host {
    endpoint: Endpoint,
    slots: BTreeMap<ChannelHandle, Slot>,
    scratch: Vec<u8>,
}

struct World {
    now: Instant,
    a: Host,
    b: Host,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    b_eid: sss_proto::Eid,
    /// A's current channel.
    current: Option<ChannelHandle>,
    connects: usize,
    /// Whether A's channels send early data.
    early: bool,
    /// Bytes A (B) sends on a channel opened now.
    total_a: u64,
    total_b: u64,
    /// Datagrams in flight: `[A to B, B to A]`.
    wire: [VecDeque<Vec<u8>>; 2],
    held: [Vec<Vec<u8>>; 2],
    ecn: [Option<EcnCodepoint>; 2],
    pending: Option<Box<Incoming>>,
    buf: Vec<u8>,
}

thread_local! {
    static IDS: (Identity, Identity) = (testkit::identity(1), testkit::identity(2));
    static START: Instant = Instant::now();
}

fn endpoint(
    id: &Identity,
    seed: u8,
    setup: &Setup,
    cookie: bool,
    suites: u8,
    now: Instant,
) -> Endpoint {
    let mut channel = ChannelConfig::default();
    channel.suites = if suites & 3 == 0 { 1 } else { suites & 3 };
    channel.mtu_discovery = setup.mtu_discovery;
    if setup.frequent_key_updates {
        channel.key_update_packets = 8;
    }
    if setup.keepalive {
        channel.keepalive_interval = Some(Duration::from_secs(5));
    }
    let mut config = EndpointConfig::new([seed; 32]);
    config.channel = Arc::new(channel);
    if cookie {
        config.cookie_threshold = 0;
    }
    Endpoint::new(config, id, now, testkit::UNIX_NANOS)
}

fn idx(i: u8, len: usize) -> Option<usize> {
    (len > 0).then(|| usize::from(i) % len)
}

impl World {
    fn new(setup: &Setup) -> Self {
        let now = START.with(|s| *s);
        let (a, b, b_eid) = IDS.with(|(ia, ib)| {
            (
                endpoint(ia, 1, setup, setup.cookie_a, setup.suites_a, now),
                endpoint(ib, 2, setup, setup.cookie_b, setup.suites_b, now),
                ib.eid(),
            )
        });
        let host = |endpoint| Host {
            endpoint,
            slots: BTreeMap::new(),
            scratch: Vec::new(),
        };
        Self {
            now,
            a: host(a),
            b: host(b),
            a_addr: testkit::addr(1),
            b_addr: testkit::addr(2),
            b_eid,
            current: None,
            connects: 0,
            early: setup.early,
            total_a: u64::from(setup.initial_a % 16384),
            total_b: u64::from(setup.initial_b % 16384),
            wire: [VecDeque::new(), VecDeque::new()],
            held: [Vec::new(), Vec::new()],
            ecn: [None, None],
            pending: None,
            buf: Vec::with_capacity(65536),
        }
    }

    fn host(&mut self, b: bool) -> &mut Host {
        if b {
            &mut self.b
        } else {
            &mut self.a
        }
    }

    fn connect(&mut self) {
        let live = self
            .current
            .and_then(|h| self.a.slots.get(&h))
            .is_some_and(|s| !s.channel.is_closed());
        if live || self.connects >= MAX_CONNECTS {
            return;
        }
        self.connects += 1;
        let (h, mut channel) = self
            .a
            .endpoint
            .connect(self.now, self.b_eid, self.b_addr, "fuzz", "bulk/1")
            .expect("connect to another host with valid names");
        channel.set_early_data(self.early);
        let upper = Bulk {
            seed: SEED,
            total: self.total_a,
            expect: Some(self.total_b),
            ..Bulk::default()
        };
        self.a.slots.insert(
            h,
            Slot {
                channel,
                upper,
                last_pn: None,
            },
        );
        self.current = Some(h);
    }

    fn accept(&mut self) {
        let Some(incoming) = self.pending.take() else {
            return;
        };
        // The endpoint refuses initiations without a common suite itself, so this succeeds.
        let (h, channel) = self
            .b
            .endpoint
            .accept(self.now, incoming)
            .expect("accept an authenticated initiation");
        let upper = Bulk {
            seed: SEED,
            total: self.total_b,
            expect: Some(self.total_a),
            ..Bulk::default()
        };
        self.b.slots.insert(
            h,
            Slot {
                channel,
                upper,
                last_pn: None,
            },
        );
    }

    fn refuse(&mut self) {
        let Some(incoming) = self.pending.take() else {
            return;
        };
        let mut out = Vec::new();
        if let Some(t) =
            self.b
                .endpoint
                .refuse(incoming, RefuseCode::REFUSED, "fuzz says no", &mut out)
        {
            out.truncate(t.size);
            self.push(true, out);
        }
    }

    fn push(&mut self, dir: Dir, datagram: Vec<u8>) {
        let q = &mut self.wire[usize::from(dir)];
        if q.len() >= MAX_QUEUE {
            q.pop_front();
        }
        q.push_back(datagram);
    }

    /// Sends what `b`'s side has to send; returns the number of datagrams.
    fn transmit(&mut self, b: bool, max_datagrams: usize) -> usize {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        let mut sent = Vec::new();
        let host = self.host(b);
        for slot in host.slots.values_mut() {
            // Bounded: a channel with data and window could otherwise fill the queue at once.
            for _ in 0..16 {
                let Some(t) =
                    slot.channel
                        .poll_transmit(now, max_datagrams, &mut buf, &mut slot.upper)
                else {
                    break;
                };
                let segment = t.segment_size.unwrap_or(t.size).max(1);
                assert!(t.size <= buf.len());
                for datagram in buf[..t.size].chunks(segment) {
                    check_packet_number(&mut slot.last_pn, datagram);
                    sent.push(datagram.to_vec());
                }
            }
        }
        self.buf = buf;
        let n = sent.len();
        for d in sent {
            self.push(b, d);
        }
        self.collect(b);
        n
    }

    /// Hands `data` to the host at the far end of `dir`.
    fn deliver(&mut self, dir: Dir, mut data: Vec<u8>) {
        let now = self.now;
        let (from, to_b) = if dir {
            (self.b_addr, false)
        } else {
            (self.a_addr, true)
        };
        let ecn = self.ecn[usize::from(dir)];
        let host = self.host(to_b);
        let mut scratch = std::mem::take(&mut host.scratch);
        let event = host.endpoint.handle(now, from, &data, &mut scratch);
        match event {
            Some(DatagramEvent::Channel(h)) => {
                if let Some(slot) = host.slots.get_mut(&h) {
                    slot.channel.handle_datagram_with_ecn(
                        now,
                        from,
                        ecn,
                        &mut data,
                        &mut slot.upper,
                    );
                }
            }
            // A accepts nothing: dropping an initiation to it is a silent refusal.
            Some(DatagramEvent::Incoming(incoming)) if to_b => self.pending = Some(incoming),
            Some(DatagramEvent::Incoming(_)) => {}
            Some(DatagramEvent::Respond(t)) => {
                let reply = scratch[..t.size].to_vec();
                self.push(!to_b, reply);
            }
            None => {}
        }
        self.host(to_b).scratch = scratch;
        self.collect(to_b);
    }

    /// Drains channel events and releases the indices of closed channels.
    fn collect(&mut self, b: bool) {
        let host = self.host(b);
        let mut closed = Vec::new();
        for (h, slot) in &mut host.slots {
            while slot.channel.poll_event().is_some() {}
            if slot.channel.is_closed() {
                closed.push(*h);
            }
        }
        for h in closed {
            host.endpoint.forget(h);
        }
    }

    /// Fires every due timer, then checks that each channel whose timers fired either sends
    /// something (its datagrams join the wire) or moves its deadline past `now`.
    fn fire_timers(&mut self) {
        let now = self.now;
        for b in [false, true] {
            let mut fired = Vec::new();
            for (h, slot) in self.host(b).slots.iter_mut() {
                if slot.channel.poll_timeout().is_some_and(|t| t <= now) {
                    slot.channel.handle_timeout(now, &mut slot.upper);
                    fired.push(*h);
                }
            }
            for h in fired {
                self.check_timer_progress(b, h);
            }
            self.collect(b);
        }
    }

    /// If channel `h` of side `b` still reports a deadline at or before `now` after its
    /// timers fired, drains it as a driver would (without the per-call cap of `transmit`),
    /// and checks that it sent something or then reports a later deadline.
    fn check_timer_progress(&mut self, b: bool, h: ChannelHandle) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        let mut sent = Vec::new();
        let slot = self.host(b).slots.get_mut(&h);
        if let Some(slot) = slot.filter(|s| s.channel.poll_timeout().is_some_and(|t| t <= now)) {
            // Bounded (a window of data drains in far fewer calls); `sent` non-empty then
            // exempts the channel from the check, as a driver would call it again.
            for _ in 0..1024 {
                let Some(t) = slot
                    .channel
                    .poll_transmit(now, 8, &mut buf, &mut slot.upper)
                else {
                    break;
                };
                let segment = t.segment_size.unwrap_or(t.size).max(1);
                for datagram in buf[..t.size].chunks(segment) {
                    check_packet_number(&mut slot.last_pn, datagram);
                    sent.push(datagram.to_vec());
                }
            }
            let next = slot.channel.poll_timeout();
            assert!(
                !sent.is_empty() || next.is_none_or(|t| t > now),
                "timers fired at {now:?}, nothing was sent, and poll_timeout still says {next:?}: \
                 a driver would spin; stats {:?}",
                slot.channel.stats()
            );
        }
        self.buf = buf;
        for d in sent {
            self.push(b, d);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.a
            .slots
            .values()
            .chain(self.b.slots.values())
            .filter_map(|s| s.channel.poll_timeout())
            .min()
    }

    fn queue(&mut self, b: bool, bytes: u16) {
        let (total, expect_side) = if b {
            (&mut self.total_b, false)
        } else {
            (&mut self.total_a, true)
        };
        let add = u64::from(bytes).min(MAX_TRANSFER - *total);
        *total += add;
        for slot in self.host(b).slots.values_mut() {
            slot.upper.total += add;
        }
        for slot in self.host(expect_side).slots.values_mut() {
            if let Some(e) = slot.upper.expect.as_mut() {
                *e += add;
            }
        }
    }

    fn forge(&mut self, dir: Dir, phase: bool, pn: u32, body: &[u8]) {
        let target = if dir { &self.a } else { &self.b };
        let Some(index) = target
            .slots
            .values()
            .rev()
            .find(|s| !s.channel.is_closed())
            .map(|s| s.channel.local_index())
        else {
            return;
        };
        let mut datagram = Vec::new();
        DataHeader::write(&mut datagram, index, phase, u64::from(pn), None);
        datagram.extend_from_slice(&body[..body.len().min(1400)]);
        datagram.extend_from_slice(&[0xa5; 16]);
        self.push(dir, datagram);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Connect => self.connect(),
            Op::Accept => self.accept(),
            Op::Refuse => self.refuse(),
            Op::Transmit { b, max } => {
                self.transmit(b, usize::from(max % 8) + 1);
            }
            Op::Deliver { dir, n } => {
                for _ in 0..=n % 8 {
                    let Some(d) = self.wire[usize::from(dir)].pop_front() else {
                        break;
                    };
                    self.deliver(dir, d);
                }
            }
            Op::DeliverAll => self.deliver_all(),
            Op::Drop { dir, i } => {
                let q = &mut self.wire[usize::from(dir)];
                if let Some(i) = idx(i, q.len()) {
                    q.remove(i);
                }
            }
            Op::Duplicate { dir, i } => {
                let q = &self.wire[usize::from(dir)];
                if let Some(i) = idx(i, q.len()) {
                    let copy = q[i].clone();
                    self.push(dir, copy);
                }
            }
            Op::Hold { dir, i } => {
                let d = usize::from(dir);
                if let Some(i) = idx(i, self.wire[d].len()) {
                    let datagram = self.wire[d].remove(i).expect("index in range");
                    if self.held[d].len() < MAX_QUEUE {
                        self.held[d].push(datagram);
                    }
                }
            }
            Op::Remark { dir, ecn } => {
                self.ecn[usize::from(dir)] = match ecn % 4 {
                    0 => None,
                    1 => Some(EcnCodepoint::Ect0),
                    2 => Some(EcnCodepoint::Ect1),
                    _ => Some(EcnCodepoint::Ce),
                };
            }
            Op::Release { dir } => {
                let held = std::mem::take(&mut self.held[usize::from(dir)]);
                for d in held {
                    self.push(dir, d);
                }
            }
            Op::Corrupt { dir, i, pos, xor } => {
                let q = &mut self.wire[usize::from(dir)];
                if let Some(i) = idx(i, q.len()) {
                    let len = q[i].len();
                    if len > 0 {
                        q[i][usize::from(pos) % len] ^= xor.max(1);
                    }
                }
            }
            Op::Truncate { dir, i, len } => {
                let q = &mut self.wire[usize::from(dir)];
                if let Some(i) = idx(i, q.len()) {
                    let keep = usize::from(len) % q[i].len().max(1);
                    q[i].truncate(keep);
                }
            }
            Op::Replace { dir, i, bytes } => {
                let q = &mut self.wire[usize::from(dir)];
                if let Some(i) = idx(i, q.len()) {
                    q[i] = bytes;
                } else {
                    self.push(dir, bytes);
                }
            }
            Op::Forge {
                dir,
                phase,
                pn,
                body,
            } => self.forge(dir, phase, pn, &body),
            Op::Advance { micros } => {
                self.now += Duration::from_micros(u64::from(micros));
                self.fire_timers();
            }
            Op::NextTimer => {
                if let Some(t) = self.next_timer() {
                    self.now = self.now.max(t);
                    self.fire_timers();
                }
            }
            Op::Queue { b, bytes } => self.queue(b, bytes),
            Op::Close { b, code } => {
                let now = self.now;
                let host = self.host(b);
                for slot in host.slots.values_mut() {
                    slot.channel
                        .close(now, u64::from(code), b"fuzz close", &mut slot.upper);
                }
                self.collect(b);
            }
            Op::Ping { b } => {
                for slot in self.host(b).slots.values_mut() {
                    slot.channel.ping();
                }
            }
            Op::Rebind => {
                let port = self.a_addr.port();
                self.a_addr.set_port(if port == 4001 { 5001 } else { 4001 });
            }
        }
    }

    fn deliver_all(&mut self) {
        for dir in [false, true] {
            while let Some(d) = self.wire[usize::from(dir)].pop_front() {
                self.deliver(dir, d);
            }
        }
    }

    /// A's current channel, if it is established and not closing.
    fn live_current(&self) -> Option<&Slot> {
        let slot = self.a.slots.get(&self.current?)?;
        slot.channel.is_established().then_some(slot)
    }

    fn transfer_done(&self) -> bool {
        self.live_current()
            .is_some_and(|s| s.upper.complete() && s.upper.all_acked())
    }

    /// The link turns clean: release held datagrams, deliver everything, accept incoming
    /// handshakes, and run timer to timer until A's channel is done or gone.
    fn run_clean(&mut self) {
        for dir in [false, true] {
            let held = std::mem::take(&mut self.held[usize::from(dir)]);
            for d in held {
                self.push(dir, d);
            }
        }
        for _ in 0..CLEAN_STEPS {
            self.deliver_all();
            self.accept();
            let in_handshake = self
                .current
                .and_then(|h| self.a.slots.get(&h))
                .is_some_and(|s| !s.channel.is_established() && !s.channel.is_closing());
            if !in_handshake && self.live_current().is_none() {
                return;
            }
            if self.transfer_done() {
                return;
            }
            let sent = self.transmit(false, 8) + self.transmit(true, 8);
            if sent == 0 && self.wire.iter().all(VecDeque::is_empty) {
                let next = self
                    .next_timer()
                    .unwrap_or(self.now + Duration::from_millis(1));
                self.now = next.max(self.now + Duration::from_micros(1));
                self.fire_timers();
            }
        }
        let slot = self.live_current().expect("checked in the loop");
        panic!(
            "transfer stalled on a clean link: A received {:?} of {:?}, B acked {:?} of {}; stats {:?}",
            slot.upper.received, slot.upper.expect, slot.upper.acked, slot.upper.total, slot.channel.stats()
        );
    }

    fn check_no_corruption(&self) {
        for slot in self.a.slots.values().chain(self.b.slots.values()) {
            assert_eq!(
                slot.upper.corrupt, 0,
                "a receiver accepted a corrupted byte"
            );
        }
    }
}

/// Checks that a sent data packet's number is above the channel's previous one. The number
/// is rebuilt from its truncated form against the previous one, which is exact for any
/// number the peer could rebuild (the sender sizes the field from the peer's largest ACK,
/// which is never above our last sent number).
fn check_packet_number(last: &mut Option<u64>, datagram: &[u8]) {
    if packet::classify(datagram) != Some(PacketKind::Data) {
        return;
    }
    let (header, _) = DataHeader::parse(datagram).expect("our own data packets parse");
    let pn = header.packet_number(*last);
    if let Some(prev) = *last {
        assert!(pn > prev, "packet number {pn} sent after {prev}");
    }
    *last = Some(pn);
}

fuzz_target!(|input: Input| {
    let mut world = World::new(&input.setup);
    for op in input.ops.into_iter().take(256) {
        world.apply(op);
        world.check_no_corruption();
    }
    world.run_clean();
    world.check_no_corruption();
});
