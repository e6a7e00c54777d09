//! The discrete-event queue, the seeded random source and a fast deterministic hasher.
//!
//! Everything that makes a run a pure function of its seed lives here: events are ordered by
//! `(time, seq)` where `seq` is a global insertion counter, so two events at the same instant
//! are always handled in the order they were scheduled; every random draw comes from one
//! ChaCha20 stream; lookup tables hash with a fixed-key hasher and are never iterated.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::link::LinkId;
use super::NodeId;
use crate::EcnCodepoint;

/// A datagram in flight.
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
    pub(crate) data: Vec<u8>,
    /// ECN codepoint of its IP header (`None`: Not-ECT).
    pub(crate) ecn: Option<EcnCodepoint>,
    /// The link it travelled over; `None` for injected packets.
    pub(crate) link: Option<LinkId>,
    /// The node that sent it; `None` for injected packets.
    pub(crate) origin: Option<NodeId>,
    /// Whether the interceptor has already seen it (replays and injections skip it, so an
    /// interceptor that replays cannot loop forever).
    pub(crate) screened: bool,
}

/// What a heap entry refers to. Kept small because the heap moves entries on every push
/// and pop: packets live in a slab or in a per-link FIFO, not in the heap.
#[derive(Debug, Copy, Clone)]
enum EventKind {
    /// A packet, by slab index, arrives (reordered, replayed, injected or duplicated ones).
    Arrive(u32),
    /// The packet at the head of a link's FIFO arrives.
    LinkHead(u32),
    /// A node's timer may be due; validated against the node's current deadline when popped.
    Timer(u32),
    /// A node must be polled because the test touched it through `node_mut`.
    Wake(u32),
}

/// A popped event.
#[derive(Debug)]
pub(crate) enum Due {
    Arrive(Packet),
    Timer(NodeId),
    Wake(NodeId),
}

#[derive(Debug)]
struct Event {
    /// Nanoseconds since the queue's base instant.
    time: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
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
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// The pending events, earliest first, ties broken by scheduling order.
///
/// Most packets leave a link in the order they entered it, so they wait in a FIFO per link
/// and only each FIFO's head sits in the heap, under the sequence number it was scheduled
/// with: the pop order is exactly that of one big heap, but the heap stays as small as the
/// number of busy links plus timers, instead of the number of packets in flight.
#[derive(Debug)]
pub(crate) struct EventQueue {
    base: Instant,
    heap: BinaryHeap<Event>,
    seq: u64,
    /// Out-of-order packets; `free` lists the vacant slots for reuse.
    slab: Vec<Option<Packet>>,
    free: Vec<u32>,
    /// In-order packets per link: (time, seq, packet), sorted by construction.
    fifos: Vec<VecDeque<(u64, u64, Packet)>>,
}

impl EventQueue {
    pub(crate) fn new(base: Instant) -> Self {
        Self {
            base,
            heap: BinaryHeap::new(),
            seq: 0,
            slab: Vec::new(),
            free: Vec::new(),
            fifos: Vec::new(),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn push(&mut self, time: Instant, kind: EventKind) {
        self.seq += 1;
        let time = self.nanos(time);
        self.heap.push(Event {
            time,
            seq: self.seq,
            kind,
        });
    }

    /// Schedules a packet that may arrive out of order with respect to its link.
    pub(crate) fn push_packet(&mut self, time: Instant, packet: Packet) {
        let index = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(packet);
                i
            }
            None => {
                self.slab.push(Some(packet));
                // Four billion packets in flight would exhaust memory long before this.
                u32::try_from(self.slab.len() - 1).expect("packet slab overflow")
            }
        };
        self.push(time, EventKind::Arrive(index));
    }

    /// Schedules a packet that arrives no earlier than every packet scheduled before on
    /// `link`; falls back to the heap if that promise is broken.
    pub(crate) fn push_in_order(&mut self, time: Instant, link: usize, packet: Packet) {
        let Ok(link32) = u32::try_from(link) else {
            return self.push_packet(time, packet);
        };
        if self.fifos.len() <= link {
            self.fifos.resize_with(link + 1, VecDeque::new);
        }
        let t = self.nanos(time);
        let fifo = &mut self.fifos[link];
        if fifo.back().is_some_and(|&(last, _, _)| last > t) {
            return self.push_packet(time, packet);
        }
        self.seq += 1;
        if fifo.is_empty() {
            self.heap.push(Event {
                time: t,
                seq: self.seq,
                kind: EventKind::LinkHead(link32),
            });
        }
        fifo.push_back((t, self.seq, packet));
    }

    pub(crate) fn push_timer(&mut self, time: Instant, node: NodeId) {
        self.push(time, EventKind::Timer(node_index(node)));
    }

    pub(crate) fn push_wake(&mut self, time: Instant, node: NodeId) {
        self.push(time, EventKind::Wake(node_index(node)));
    }

    pub(crate) fn peek_time(&self) -> Option<Instant> {
        self.heap
            .peek()
            .map(|e| self.base + Duration::from_nanos(e.time))
    }

    pub(crate) fn pop(&mut self) -> Option<(Instant, Due)> {
        let event = self.heap.pop()?;
        let time = self.base + Duration::from_nanos(event.time);
        let due = match event.kind {
            EventKind::Arrive(i) => {
                let packet = self.slab.get_mut(i as usize).and_then(Option::take);
                self.free.push(i);
                // Every Arrive entry owns its slot, so the slot is full.
                Due::Arrive(packet.expect("packet slot filled"))
            }
            EventKind::LinkHead(l) => {
                let fifo = &mut self.fifos[l as usize];
                // The head entry exists exactly while the FIFO is non-empty.
                let (_, _, packet) = fifo.pop_front().expect("link FIFO non-empty");
                if let Some(&(t, seq, _)) = fifo.front() {
                    self.heap.push(Event {
                        time: t,
                        seq,
                        kind: EventKind::LinkHead(l),
                    });
                }
                Due::Arrive(packet)
            }
            EventKind::Timer(n) => Due::Timer(NodeId(n as usize)),
            EventKind::Wake(n) => Due::Wake(NodeId(n as usize)),
        };
        Some((time, due))
    }

    /// Pending events: heap entries plus packets waiting behind a FIFO head.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
            + self
                .fifos
                .iter()
                .map(|f| f.len().saturating_sub(1))
                .sum::<usize>()
    }
}

fn node_index(node: NodeId) -> u32 {
    // Node ids come from `Network::add_node`; four billion nodes do not fit in memory.
    u32::try_from(node.0).expect("node index fits u32")
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
        let mut q = EventQueue::new(t0);
        q.push_wake(t0 + Duration::from_millis(2), NodeId(0));
        q.push_wake(t0 + Duration::from_millis(1), NodeId(1));
        q.push_timer(t0 + Duration::from_millis(1), NodeId(2));
        let order: Vec<usize> = std::iter::from_fn(|| q.pop())
            .map(|(_, due)| match due {
                Due::Wake(n) | Due::Timer(n) => n.0,
                Due::Arrive(_) => usize::MAX,
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
