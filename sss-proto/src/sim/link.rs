//! A directed link: a drop-tail bottleneck queue in front of a serializer of fixed bandwidth,
//! then a propagation delay with jitter, and random loss, corruption, duplication and
//! reordering. ECN-capable datagrams may be marked CE (at random, or when the queue is longer
//! than a threshold, like an AQM), and a link may bleach the ECN field.
//!
//! The queue is not stored packet by packet: since the serializer is FIFO and work-conserving,
//! the bytes waiting at time `now` are exactly `(busy_until - now) * rate`, so one timestamp
//! models the whole queue in O(1) per packet.

use std::time::{Duration, Instant};

use super::event::SimRng;
use super::trace::{DropCause, Stats};
use crate::EcnCodepoint;

/// Identifies a link of a [`Network`](super::Network).
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub(crate) usize);

/// The behaviour of a directed link. Probabilities are per datagram, in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly in `[0, jitter]` per datagram. Jitter alone never reorders:
    /// a datagram never overtakes an earlier one on the same link (like queueing jitter on a
    /// real path); use `reorder` for that.
    pub jitter: Duration,
    /// Serialization rate in bits per second; `None` for infinitely fast.
    pub bandwidth_bps: Option<u64>,
    /// Capacity of the drop-tail queue in front of the serializer, in bytes. A datagram that
    /// would take the backlog above this is dropped; a datagram offered to an idle link is
    /// always accepted. Ignored without `bandwidth_bps`.
    pub queue_bytes: usize,
    /// Probability of random loss (after the bottleneck: a lost datagram used bandwidth).
    pub loss: f64,
    /// Probability that the datagram arrives twice.
    pub duplicate: f64,
    /// Probability that the datagram gets an extra delay in `[0, reorder_delay]`, letting
    /// later datagrams overtake it.
    pub reorder: f64,
    /// Maximum extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Probability that one random bit of the datagram is flipped.
    pub corrupt: f64,
    /// Largest UDP payload that passes; larger datagrams are dropped.
    pub mtu: usize,
    /// When true, the link silently drops everything.
    pub down: bool,
    /// Probability that an ECN-capable (ECT) datagram is marked CE (congestion experienced)
    /// instead of being delivered unmarked. Not-ECT datagrams are never marked.
    pub ce_mark: f64,
    /// Mark ECT datagrams CE when they join a bottleneck backlog of more than this many bytes
    /// (a step-marking AQM, as in DCTCP or L4S). Ignored without `bandwidth_bps`.
    pub ce_threshold: Option<usize>,
    /// When true, the link clears the ECN field of every datagram (bleaching): everything
    /// arrives Not-ECT.
    pub bleach: bool,
}

impl Default for LinkConfig {
    /// 10 ms one way, no bandwidth limit, no impairments, a 256 KiB queue and an Ethernet
    /// path MTU (1500 bytes minus IPv4 and UDP headers).
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            bandwidth_bps: None,
            queue_bytes: 256 * 1024,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            corrupt: 0.0,
            mtu: 1500 - 28,
            down: false,
            ce_mark: 0.0,
            ce_threshold: None,
            bleach: false,
        }
    }
}

impl LinkConfig {
    /// A perfect link of the given one-way latency (no bandwidth limit, no impairments).
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }
}

/// Where a datagram offered to a link ends up.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub(crate) enum LinkFate {
    Dropped(DropCause),
    /// Arrives at `at`, after every earlier datagram of the link unless `reordered`; a
    /// duplicate, if any, arrives at `duplicate`.
    Arrives {
        at: Instant,
        reordered: bool,
        duplicate: Option<Instant>,
    },
}

/// A link's configuration and state.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) config: LinkConfig,
    /// When the serializer finishes the last accepted datagram.
    busy_until: Instant,
    /// Arrival time of the last in-order datagram, to keep jitter from reordering.
    last_arrival: Instant,
    pub(crate) stats: Stats,
}

impl Link {
    pub(crate) fn new(config: LinkConfig, now: Instant) -> Self {
        Self {
            config,
            busy_until: now,
            last_arrival: now,
            stats: Stats::default(),
        }
    }

    /// Bytes waiting for (or being serialized by) the bottleneck at `now`.
    pub(crate) fn backlog_bytes(&self, now: Instant) -> u64 {
        match self.config.bandwidth_bps {
            Some(bps) if bps > 0 => {
                let ns = self.busy_until.saturating_duration_since(now).as_nanos();
                u64::try_from(ns * u128::from(bps) / 8_000_000_000).unwrap_or(u64::MAX)
            }
            _ => 0,
        }
    }

    /// Offers `data` to the link at `now`; may flip a bit of it, and change its ECN
    /// codepoint `ecn`.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        data: &mut [u8],
        ecn: &mut Option<EcnCodepoint>,
        rng: &mut SimRng,
    ) -> LinkFate {
        let len = data.len();
        self.stats.sent += 1;
        self.stats.sent_bytes += len as u64;
        let fate = self.fate(now, data, ecn, rng);
        if let LinkFate::Dropped(cause) = fate {
            self.stats.dropped.add(cause);
        }
        fate
    }

    fn fate(
        &mut self,
        now: Instant,
        data: &mut [u8],
        ecn: &mut Option<EcnCodepoint>,
        rng: &mut SimRng,
    ) -> LinkFate {
        let c = &self.config;
        if c.down {
            return LinkFate::Dropped(DropCause::Down);
        }
        if data.len() > c.mtu {
            return LinkFate::Dropped(DropCause::Mtu);
        }
        let departs = match c.bandwidth_bps {
            Some(bps) if bps > 0 => {
                let backlog = self.backlog_bytes(now);
                if backlog > 0 && backlog + data.len() as u64 > c.queue_bytes as u64 {
                    return LinkFate::Dropped(DropCause::Queue);
                }
                let ect = matches!(ecn, Some(EcnCodepoint::Ect0 | EcnCodepoint::Ect1));
                if ect && c.ce_threshold.is_some_and(|t| backlog > t as u64) {
                    *ecn = Some(EcnCodepoint::Ce);
                    self.stats.ce_marked += 1;
                }
                let bits = data.len() as u128 * 8;
                let ns = (bits * 1_000_000_000).div_ceil(u128::from(bps));
                let start = self.busy_until.max(now);
                self.busy_until =
                    start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
                self.busy_until
            }
            _ => now,
        };
        if rng.chance(c.loss) {
            return LinkFate::Dropped(DropCause::Loss);
        }
        // Drawn only for ECT datagrams: a link without ECN traffic draws as it always did.
        let ect = matches!(ecn, Some(EcnCodepoint::Ect0 | EcnCodepoint::Ect1));
        if ect && rng.chance(c.ce_mark) {
            *ecn = Some(EcnCodepoint::Ce);
            self.stats.ce_marked += 1;
        }
        if c.bleach && ecn.is_some() {
            *ecn = None;
            self.stats.bleached += 1;
        }
        if !data.is_empty() && rng.chance(c.corrupt) {
            let bit = rng.below(data.len() as u64 * 8);
            // `bit / 8 < data.len()` by construction of `below`.
            if let Some(b) = data.get_mut((bit / 8) as usize) {
                *b ^= 1 << (bit % 8);
            }
            self.stats.corrupted += 1;
        }
        let jitter = rng.duration_upto(c.jitter);
        let mut at = (departs + c.latency + jitter).max(self.last_arrival);
        let reordered = rng.chance(c.reorder);
        if reordered {
            // Not recorded in `last_arrival`: later datagrams may overtake this one.
            at += rng.duration_upto(c.reorder_delay);
            self.stats.reordered += 1;
        } else {
            self.last_arrival = at;
        }
        let duplicate = rng.chance(c.duplicate).then_some(at);
        if duplicate.is_some() {
            self.stats.duplicated += 1;
        }
        LinkFate::Arrives {
            at,
            reordered,
            duplicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializer_spaces_datagrams_and_tail_drops() {
        let t0 = Instant::now();
        let mut rng = SimRng::new(1);
        let mut link = Link::new(
            LinkConfig {
                latency: Duration::ZERO,
                bandwidth_bps: Some(8_000_000), // 1 byte per microsecond
                queue_bytes: 3000,
                ..LinkConfig::default()
            },
            t0,
        );
        let mut d = vec![0u8; 1000];
        let mut ecn = None;
        let at = |f| match f {
            LinkFate::Arrives { at, .. } => at,
            LinkFate::Dropped(c) => panic!("dropped: {c:?}"),
        };
        assert_eq!(
            at(link.send(t0, &mut d, &mut ecn, &mut rng)),
            t0 + Duration::from_micros(1000)
        );
        assert_eq!(
            at(link.send(t0, &mut d, &mut ecn, &mut rng)),
            t0 + Duration::from_micros(2000)
        );
        assert_eq!(
            at(link.send(t0, &mut d, &mut ecn, &mut rng)),
            t0 + Duration::from_micros(3000)
        );
        assert_eq!(link.backlog_bytes(t0), 3000);
        assert_eq!(
            link.send(t0, &mut d, &mut ecn, &mut rng),
            LinkFate::Dropped(DropCause::Queue)
        );
        // Half a datagram later there is room again.
        let t = t0 + Duration::from_micros(1500);
        assert_eq!(link.backlog_bytes(t), 1500);
        assert_eq!(
            at(link.send(t, &mut d, &mut ecn, &mut rng)),
            t0 + Duration::from_micros(4000)
        );
        assert_eq!(link.stats.dropped.queue, 1);
        assert_eq!(link.stats.sent, 5);
    }
}
