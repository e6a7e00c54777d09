//! What the simulator observed: counters per link and per node, and an optional bounded trace
//! of datagram fates for post-mortems of failing tests.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

/// Why a datagram did not arrive.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[non_exhaustive]
pub enum DropCause {
    /// Random loss on the link (`LinkConfig::loss`).
    Loss,
    /// The bottleneck queue was full (`LinkConfig::queue_bytes`).
    Queue,
    /// Larger than the link's MTU.
    Mtu,
    /// The link is down (blackhole).
    Down,
    /// A NAT box refused it: unsolicited inbound, expired mapping, hairpin, port exhaustion.
    Nat,
    /// No node or NAT owns the destination address, or a private address was addressed from
    /// outside its NAT.
    NoRoute,
    /// The interceptor returned [`Verdict::Drop`](super::Verdict::Drop).
    Intercepted,
}

/// Drop counters by cause.
#[derive(Debug, Default, Copy, Clone, Eq, PartialEq)]
pub struct Drops {
    /// Random loss.
    pub loss: u64,
    /// Tail drop at a full bottleneck queue.
    pub queue: u64,
    /// Oversize for the link MTU.
    pub mtu: u64,
    /// Link down.
    pub down: u64,
    /// Refused by a NAT.
    pub nat: u64,
    /// No route to the destination.
    pub no_route: u64,
    /// Dropped by the interceptor.
    pub intercepted: u64,
}

impl Drops {
    /// All drops, whatever the cause.
    pub fn total(&self) -> u64 {
        self.loss + self.queue + self.mtu + self.down + self.nat + self.no_route + self.intercepted
    }

    pub(crate) fn add(&mut self, cause: DropCause) {
        let c = match cause {
            DropCause::Loss => &mut self.loss,
            DropCause::Queue => &mut self.queue,
            DropCause::Mtu => &mut self.mtu,
            DropCause::Down => &mut self.down,
            DropCause::Nat => &mut self.nat,
            DropCause::NoRoute => &mut self.no_route,
            DropCause::Intercepted => &mut self.intercepted,
        };
        *c += 1;
    }
}

/// Datagram counters of a link or a node.
///
/// For a link, `sent` counts datagrams offered to it and `delivered` those that came out of
/// its far end. For a node, `sent`/`delivered`/`dropped` follow the datagrams it sent to their
/// fate (a duplicated datagram is delivered twice), and `received` counts datagrams handed to
/// it, injected ones included.
#[derive(Debug, Default, Copy, Clone, Eq, PartialEq)]
pub struct Stats {
    /// Datagrams sent.
    pub sent: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Datagrams delivered (links: out of the far end; nodes: to the recipient node).
    pub delivered: u64,
    /// Bytes delivered.
    pub delivered_bytes: u64,
    /// Datagrams received (nodes only).
    pub received: u64,
    /// Bytes received (nodes only).
    pub received_bytes: u64,
    /// Extra copies created by duplication (links only).
    pub duplicated: u64,
    /// Datagrams with a flipped bit (links only).
    pub corrupted: u64,
    /// Datagrams given an extra reordering delay (links only).
    pub reordered: u64,
    /// ECN-capable datagrams marked CE (links only).
    pub ce_marked: u64,
    /// Datagrams whose ECN field was cleared (links only).
    pub bleached: u64,
    /// Datagrams dropped, by cause.
    pub dropped: Drops,
}

/// What happened to a datagram at one point of its journey.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[non_exhaustive]
pub enum Fate {
    /// A node sent it (recorded with the node's own, pre-NAT, source address).
    Sent,
    /// Handed to the recipient node.
    Delivered,
    /// An injected datagram handed to the recipient node.
    Injected,
    /// Dropped.
    Dropped(DropCause),
}

/// One entry of the trace.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct TraceEvent {
    /// Virtual time of the event.
    pub time: Instant,
    /// Source address as seen at that point (after NAT translation once past a NAT).
    pub from: SocketAddr,
    /// Destination address.
    pub to: SocketAddr,
    /// Datagram length in bytes.
    pub len: usize,
    /// What happened.
    pub fate: Fate,
}

/// A ring buffer of the most recent trace events.
#[derive(Debug)]
pub(crate) struct Trace {
    events: VecDeque<TraceEvent>,
    cap: usize,
    /// Events pushed out of the ring, reported by the dump so nobody mistakes a tail for
    /// the whole story.
    evicted: u64,
}

impl Trace {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(cap.min(1 << 16)),
            cap,
            evicted: 0,
        }
    }

    pub(crate) fn record(&mut self, event: TraceEvent) {
        if self.cap == 0 {
            return;
        }
        if self.events.len() == self.cap {
            self.events.pop_front();
            self.evicted += 1;
        }
        self.events.push_back(event);
    }

    pub(crate) fn events(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events.iter()
    }

    /// One line per event, times in microseconds since `start`.
    pub(crate) fn dump(&self, start: Instant) -> String {
        let mut out = String::new();
        if self.evicted > 0 {
            let _ = writeln!(out, "... {} earlier events evicted", self.evicted);
        }
        for e in &self.events {
            let us = e.time.saturating_duration_since(start).as_micros();
            let _ = writeln!(
                out,
                "{us:>12}us {} -> {} len {} {:?}",
                e.from, e.to, e.len, e.fate
            );
        }
        out
    }
}
