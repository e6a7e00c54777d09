//! One direction of the relay, sans-IO: decides each datagram's fate and holds it until its
//! release time, then hands out due datagrams as GSO batches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::stats::{add, Counters};
use super::{ImpairConfig, LINK_BYTES_LIMIT};
use crate::udp::GSO_MAX_BYTES;

/// Most datagrams in one outgoing batch (Linux `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;

/// Spare buffers kept for reuse, so that the steady state does not allocate.
const POOL_LIMIT: usize = 4096;

/// A datagram waiting in the delay line. Ordered by release time, then arrival order.
#[derive(Debug)]
struct Queued {
    release: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(other.release, other.seq))
    }
}

/// A batch of due datagrams written into the caller's buffer: `count` datagrams of
/// `segment` bytes, the last possibly shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) segment: usize,
    pub(crate) count: usize,
}

/// One direction of the relay.
#[derive(Debug)]
pub(crate) struct Lane {
    config: ImpairConfig,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    /// Bytes in `queue`.
    held_bytes: usize,
    /// When the bottleneck finishes serializing what it has accepted.
    link_free_at: Option<Instant>,
    pool: Vec<Vec<u8>>,
    counters: Arc<Counters>,
}

impl Lane {
    pub(crate) fn new(config: &ImpairConfig, counters: Arc<Counters>) -> Self {
        let config = config.sanitized();
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            queue: BinaryHeap::new(),
            seq: 0,
            held_bytes: 0,
            link_free_at: None,
            pool: Vec::new(),
            counters,
        }
    }

    /// Applies a new configuration to datagrams arriving from now on. The random sequence
    /// restarts only if the seed changed.
    pub(crate) fn set_config(&mut self, config: &ImpairConfig) {
        let config = config.sanitized();
        if config.seed != self.config.seed {
            self.rng = ChaCha8Rng::seed_from_u64(config.seed);
        }
        self.config = config;
    }

    /// Whether datagrams arriving now would leave at once and untouched: no impairment is
    /// configured and nothing is held (which could be overtaken). The relay then forwards
    /// a received GRO buffer as it is, without copying it.
    pub(crate) fn is_transparent(&self) -> bool {
        let c = &self.config;
        self.queue.is_empty()
            && c.delay.is_zero()
            && c.jitter.is_zero()
            && c.loss == 0.0
            && c.reorder == 0.0
            && c.duplicate == 0.0
            && c.corrupt == 0.0
            && c.rate_bps.is_none()
    }

    /// Accounts for `count` datagrams of `bytes` in total forwarded untouched while the
    /// lane [`is_transparent`](Self::is_transparent). Draws what [`Lane::ingest`] would, so
    /// the random sequence does not depend on which path a datagram took.
    pub(crate) fn pass_through(&mut self, count: usize, bytes: usize) {
        add(&self.counters.received, count as u64);
        add(&self.counters.received_bytes, bytes as u64);
        for _ in 0..count * 4 {
            self.rng.next_u64();
        }
    }

    /// A uniform draw in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Takes in a datagram that arrived at `now`.
    ///
    /// Every datagram draws the same four values (loss, corruption, duplication,
    /// reordering) whatever the probabilities, so that changing one probability does not
    /// shift the others' decisions.
    pub(crate) fn ingest(&mut self, now: Instant, data: &[u8]) {
        add(&self.counters.received, 1);
        add(&self.counters.received_bytes, data.len() as u64);
        let (loss, corrupt, duplicate, reorder) = (
            self.uniform(),
            self.uniform(),
            self.uniform(),
            self.uniform(),
        );
        if loss < self.config.loss {
            add(&self.counters.dropped_loss, 1);
            return;
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        if corrupt < self.config.corrupt && !buf.is_empty() {
            let bit = self.rng.next_u64() as usize % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            add(&self.counters.corrupted, 1);
        }
        let reordered = reorder < self.config.reorder;
        if duplicate < self.config.duplicate {
            add(&self.counters.duplicated, 1);
            let mut copy = self.pool.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(&buf);
            self.enqueue(now, copy, false);
        }
        self.enqueue(now, buf, reordered);
    }

    /// Passes a datagram through the bottleneck and into the delay line.
    fn enqueue(&mut self, now: Instant, data: Vec<u8>, reordered: bool) {
        let len = data.len();
        // Without a rate limit `queue_bytes` bounds the delay line itself; with one, it is
        // the bottleneck's drop-tail queue and the delay line gets `LINK_BYTES_LIMIT` more.
        let held_limit = match self.config.rate_bps {
            None => self.config.queue_bytes,
            Some(_) => self.config.queue_bytes.saturating_add(LINK_BYTES_LIMIT),
        };
        let depart = if self.held_bytes.saturating_add(len) > held_limit {
            None
        } else {
            match self.config.rate_bps {
                None => Some(now),
                Some(rate) => self.serialize(now, len, rate),
            }
        };
        let Some(depart) = depart else {
            add(&self.counters.dropped_queue, 1);
            self.recycle(data);
            return;
        };
        let mut delay = self.config.delay;
        if !self.config.jitter.is_zero() {
            let jitter = self.config.jitter.mul_f64(self.uniform() * 2.0);
            delay = (delay + jitter).saturating_sub(self.config.jitter);
        }
        if reordered {
            add(&self.counters.reordered, 1);
            delay += self.config.reorder_delay;
        }
        let release = depart.checked_add(delay).unwrap_or(depart);
        self.held_bytes += len;
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            release,
            seq: self.seq,
            data,
        }));
    }

    /// When a datagram of `len` bytes arriving at `now` leaves a `rate` bit/s bottleneck,
    /// or `None` if the drop-tail queue is full.
    fn serialize(&mut self, now: Instant, len: usize, rate: u64) -> Option<Instant> {
        if rate == 0 {
            return None;
        }
        let free_at = self.link_free_at.filter(|&t| t > now).unwrap_or(now);
        let waiting = free_at.duration_since(now);
        let backlog = waiting.as_nanos() * u128::from(rate) / 8_000_000_000;
        if backlog + len as u128 > self.config.queue_bytes as u128 {
            return None;
        }
        let nanos = (len as u128 * 8_000_000_000).div_ceil(u128::from(rate));
        let done = free_at.checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))?;
        self.link_free_at = Some(done);
        Some(done)
    }

    /// When the next datagram is due, if any is held.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.queue.peek().map(|q| q.0.release)
    }

    /// Writes the next batch of datagrams due at `now` into `out` (cleared first): in
    /// release order, as many consecutive datagrams as form one GSO batch (same size, the
    /// last possibly shorter, at most 64 and [`GSO_MAX_BYTES`]).
    pub(crate) fn poll_batch(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<Batch> {
        out.clear();
        let mut batch: Option<Batch> = None;
        while let Some(next) = self.queue.peek() {
            let next = &next.0;
            if next.release > now {
                break;
            }
            let len = next.data.len();
            if let Some(b) = batch {
                let full = b.count == MAX_SEGMENTS || out.len() + len > GSO_MAX_BYTES;
                // Only the last datagram may be shorter than the segment.
                let after_short = out.len() < b.segment * b.count;
                if full || after_short || len > b.segment {
                    break;
                }
            }
            let Some(Reverse(queued)) = self.queue.pop() else {
                break;
            };
            self.held_bytes -= len;
            out.extend_from_slice(&queued.data);
            self.recycle(queued.data);
            let b = batch.get_or_insert(Batch {
                segment: len,
                count: 0,
            });
            b.count += 1;
        }
        batch
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_LIMIT {
            self.pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(config: ImpairConfig) -> Lane {
        Lane::new(&config, Arc::default())
    }

    fn drain(lane: &mut Lane, now: Instant) -> Vec<(Batch, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(b) = lane.poll_batch(now, &mut buf) {
            out.push((b, buf.clone()));
        }
        out
    }

    #[test]
    fn same_size_datagrams_due_together_form_one_batch() {
        let mut l = lane(ImpairConfig::default());
        let now = Instant::now();
        for i in 0..70u8 {
            l.ingest(now, &[i; 100]);
        }
        l.ingest(now, &[70; 50]);
        l.ingest(now, &[71; 100]);
        let batches = drain(&mut l, now);
        let shapes: Vec<_> = batches
            .iter()
            .map(|(b, buf)| (b.count, b.segment, buf.len()))
            .collect();
        // 64 max per batch; the short datagram ends the second batch.
        assert_eq!(shapes, vec![(64, 100, 6400), (7, 100, 650), (1, 100, 100)]);
        let all: Vec<u8> = batches.iter().flat_map(|(_, buf)| buf.clone()).collect();
        assert_eq!(all[..100], [0; 100]);
        assert_eq!(all[7000..7050], [70; 50]);
        assert_eq!(l.held_bytes, 0);
    }

    #[test]
    fn delay_holds_datagrams_until_due() {
        let mut l = lane(ImpairConfig {
            delay: Duration::from_millis(20),
            ..ImpairConfig::default()
        });
        let now = Instant::now();
        l.ingest(now, &[1; 10]);
        assert_eq!(l.next_release(), Some(now + Duration::from_millis(20)));
        assert!(drain(&mut l, now + Duration::from_millis(19)).is_empty());
        assert_eq!(drain(&mut l, now + Duration::from_millis(20)).len(), 1);
    }

    #[test]
    fn rate_limit_spaces_datagrams_and_drop_tail_bounds_the_queue() {
        // 8 Mbit/s: a 1000-byte datagram takes 1 ms on the link.
        let mut l = lane(ImpairConfig {
            rate_bps: Some(8_000_000),
            queue_bytes: 5000,
            ..ImpairConfig::default()
        });
        let now = Instant::now();
        for _ in 0..10 {
            l.ingest(now, &[0; 1000]);
        }
        let stats = l.counters.snapshot();
        assert_eq!(stats.dropped_queue, 5);
        let releases: Vec<_> = l.queue.iter().map(|q| q.0.release - now).collect();
        let mut releases = releases;
        releases.sort();
        let ms: Vec<_> = releases.iter().map(|d| d.as_micros()).collect();
        assert_eq!(ms, vec![1000, 2000, 3000, 4000, 5000]);
    }

    #[test]
    fn queue_bytes_bounds_the_delay_line_without_rate_limit() {
        let mut l = lane(ImpairConfig {
            delay: Duration::from_secs(1),
            queue_bytes: 10_000,
            ..ImpairConfig::default()
        });
        let now = Instant::now();
        for _ in 0..100 {
            l.ingest(now, &[0; 1000]);
        }
        assert_eq!(l.held_bytes, 10_000);
        assert_eq!(l.counters.snapshot().dropped_queue, 90);
    }

    #[test]
    fn zero_rate_cuts_the_link() {
        let mut l = lane(ImpairConfig {
            rate_bps: Some(0),
            ..ImpairConfig::default()
        });
        let now = Instant::now();
        l.ingest(now, &[0; 10]);
        assert!(drain(&mut l, now + Duration::from_secs(1)).is_empty());
        assert_eq!(l.counters.snapshot().dropped_queue, 1);
    }

    #[test]
    fn decisions_depend_only_on_seed_and_arrivals() {
        let run = |seed| {
            let mut l = lane(ImpairConfig {
                loss: 0.3,
                corrupt: 0.1,
                seed,
                ..ImpairConfig::default()
            });
            let now = Instant::now();
            for i in 0..500u16 {
                l.ingest(now, &i.to_be_bytes());
            }
            drain(&mut l, now)
                .into_iter()
                .flat_map(|(_, buf)| buf)
                .collect::<Vec<u8>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn corruption_flips_exactly_one_bit() {
        let mut l = lane(ImpairConfig {
            corrupt: 1.0,
            ..ImpairConfig::default()
        });
        let now = Instant::now();
        l.ingest(now, &[0x55; 64]);
        l.ingest(now, &[]);
        let (_, buf) = &drain(&mut l, now)[0];
        let flipped: u32 = buf.iter().map(|b| (b ^ 0x55).count_ones()).sum();
        assert_eq!(flipped, 1);
        assert_eq!(l.counters.snapshot().corrupted, 1);
    }

    #[test]
    fn pass_through_keeps_the_random_sequence_of_ingest() {
        let config = ImpairConfig {
            seed: 5,
            ..ImpairConfig::default()
        };
        let (mut a, mut b) = (lane(config.clone()), lane(config));
        let now = Instant::now();
        assert!(a.is_transparent());
        for _ in 0..10 {
            a.ingest(now, &[0; 10]);
        }
        drain(&mut a, now);
        b.pass_through(10, 100);
        assert_eq!(a.rng.next_u64(), b.rng.next_u64());
        assert_eq!(
            a.counters.snapshot().received,
            b.counters.snapshot().received
        );
        a.set_config(&ImpairConfig {
            delay: Duration::from_millis(1),
            seed: 5,
            ..ImpairConfig::default()
        });
        assert!(!a.is_transparent());
    }

    #[test]
    fn absurd_configurations_do_not_panic() {
        let mut l = lane(ImpairConfig {
            delay: Duration::MAX,
            jitter: Duration::MAX,
            reorder: f64::NAN,
            reorder_delay: Duration::MAX,
            loss: -1.0,
            duplicate: 7.0,
            rate_bps: Some(1),
            queue_bytes: usize::MAX,
            ..ImpairConfig::default()
        });
        let now = Instant::now();
        for _ in 0..10 {
            l.ingest(now, &[0; 1500]);
        }
        assert!(drain(&mut l, now).is_empty());
    }
}
