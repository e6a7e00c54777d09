//! The discrete-event queue, the seeded random source and a fast deterministic hasher.
//!
//! Everything that makes a run a pure function of its seed lives here: events are ordered by
//! `(time, seq)` where `seq` is a global insertion counter, so two events at the same instant
//! are always handled in the order they were scheduled; every random draw comes from one
//! ChaCha20 stream; lookup tables hash with a fixed-key hasher and are never iterated.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::link::LinkId;
use super::NodeId;

/// A datagram in flight.
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
    pub(crate) data: Vec<u8>,
    /// The link it travelled over; `None` for injected packets.
    pub(crate) link: Option<LinkId>,
    /// The node that sent it; `None` for injected packets.
    pub(crate) origin: Option<NodeId>,
    /// Whether the interceptor has already seen it (replays and injections skip it, so an
    /// interceptor that replays cannot loop forever).
    pub(crate) screened: bool,
}

#[derive(Debug)]
pub(crate) enum EventKind {
    /// A packet reaches the far end of its link (or its injection time comes).
    Arrive(Packet),
    /// A node's timer may be due; validated against the node's current deadline when popped.
    Timer(NodeId),
    /// A node must be polled because the test touched it through `node_mut`.
    Wake(NodeId),
}

#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) time: Instant,
    seq: u64,
    pub(crate) kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .time
            .cmp(&self.time)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The pending events, earliest first, ties broken by scheduling order.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    heap: BinaryHeap<Event>,
    seq: u64,
}

impl EventQueue {
    pub(crate) fn push(&mut self, time: Instant, kind: EventKind) {
        self.seq += 1;
        self.heap.push(Event {
            time,
            seq: self.seq,
            kind,
        });
    }

    pub(crate) fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.time)
    }

    pub(crate) fn pop(&mut self) -> Option<Event> {
        self.heap.pop()
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// The one random source of a simulation.
#[derive(Debug, Clone)]
pub(crate) struct SimRng(ChaCha20Rng);

impl SimRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(ChaCha20Rng::seed_from_u64(seed))
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`. Draws nothing when `p <= 0`, so that enabling an unrelated
    /// impairment elsewhere does not shift the random stream of a loss-free link.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.unit() < p)
    }

    /// Uniform in `[0, n)` (`0` when `n == 0`). Multiply-shift: the bias is below 2^-32 for
    /// the ranges used here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, max]`, nanosecond resolution. Draws nothing when `max` is zero.
    pub(crate) fn duration_upto(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.below(nanos.saturating_add(1)))
    }
}

/// FxHash (rustc's hasher): fast on small fixed-size keys such as socket addresses, and
/// unkeyed, which is harmless here since the tables are only used for lookups.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_in_time_then_insertion_order() {
        let t0 = Instant::now();
        let mut q = EventQueue::default();
        q.push(t0 + Duration::from_millis(2), EventKind::Wake(NodeId(0)));
        q.push(t0 + Duration::from_millis(1), EventKind::Wake(NodeId(1)));
        q.push(t0 + Duration::from_millis(1), EventKind::Wake(NodeId(2)));
        let order: Vec<usize> = std::iter::from_fn(|| q.pop())
            .map(|e| match e.kind {
                EventKind::Wake(n) => n.0,
                _ => usize::MAX,
            })
            .collect();
        assert_eq!(order, [1, 2, 0]);
    }

    #[test]
    fn rng_ranges() {
        let mut r = SimRng::new(7);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(10) < 10);
            assert!(r.duration_upto(Duration::from_micros(5)) <= Duration::from_micros(5));
        }
        assert_eq!(r.below(0), 0);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }
}
