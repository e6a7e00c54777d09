//! A userspace impairment relay for tests and benchmarks (the kernel here has no netem).
//!
//! [`Relay::start`] puts a seeded UDP relay between a client and a target: the client sends
//! to [`RelayHandle::local_addr`] instead of the target, the relay forwards to the target
//! from a second socket (the target sees that socket as its peer) and the answers back.
//! Each direction has its own [`ImpairConfig`]: delay, jitter, loss, reordering,
//! duplication, corruption and a rate-limited bottleneck with a drop-tail queue.
//!
//! The relay serves **one client**: the first address that sends to the listening socket.
//! Datagrams from any other address, and datagrams reaching the target side from anywhere
//! but the target, are dropped and counted as `foreign`.
//!
//! It is built not to be the bottleneck: it runs on its own thread with a current-thread
//! tokio runtime, receives with GRO + `recvmmsg` and sends consecutive same-size datagrams
//! that are due together as one GSO batch, so a GRO train in is a GSO train out.
//!
//! Decisions are a deterministic function of the seed and the order of arrivals: a
//! direction draws the same values, in the same order, for each datagram it receives.

mod lane;
mod relay;
mod stats;

pub use relay::{Relay, RelayHandle};
pub use stats::{DirectionStats, RelayStats};

use std::time::Duration;

/// Impairments of one direction of the relay.
///
/// Probabilities are clamped to `0.0..=1.0` (NaN counts as 0); durations are capped at one
/// hour. The datagram's path through a direction is: loss, then corruption, then
/// duplication (the copy takes the same path on its own), then the bottleneck (rate limit
/// and drop-tail queue), then the delay line (delay ± jitter, plus `reorder_delay` for
/// datagrams picked for reordering).
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairConfig {
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay is drawn uniformly from `delay ± jitter` (at least 0). Jitter
    /// larger than the spacing of datagrams reorders them, as on netem.
    pub jitter: Duration,
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Probability of holding a datagram back by `reorder_delay`, so later ones overtake it.
    pub reorder: f64,
    /// Extra delay of datagrams picked for reordering.
    pub reorder_delay: Duration,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
    /// Probability of flipping one random bit of a datagram.
    pub corrupt: f64,
    /// Bottleneck rate in bits per second; `None` for no limit, `Some(0)` drops everything.
    pub rate_bps: Option<u64>,
    /// With a rate limit, the drop-tail queue of the bottleneck: a datagram that would make
    /// the bytes waiting for the link exceed this is dropped. Without a rate limit, the
    /// bound on all bytes held in the delay line. Either way it bounds the relay's memory
    /// (plus [`LINK_BYTES_LIMIT`] for datagrams past a bottleneck).
    pub queue_bytes: usize,
    /// Seed of this direction's random decisions.
    pub seed: u64,
}

/// Bytes a direction may hold past its bottleneck, waiting out the delay: rate × delay,
/// capped here so that memory stays bounded whatever the configuration.
pub const LINK_BYTES_LIMIT: usize = 64 << 20;

/// Default `queue_bytes`: 8 MiB holds 20 ms at 3 Gbit/s without a rate limit. With a rate
/// limit, set it to the bottleneck buffer you want (e.g. one bandwidth-delay product).
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

/// Longest delay a configuration may ask for.
const MAX_DELAY: Duration = Duration::from_secs(3600);

impl Default for ImpairConfig {
    /// No impairment at all.
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            corrupt: 0.0,
            rate_bps: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            seed: 0,
        }
    }
}

impl ImpairConfig {
    /// The configuration with probabilities in `0.0..=1.0` and durations within bounds.
    fn sanitized(&self) -> Self {
        let p = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        Self {
            delay: self.delay.min(MAX_DELAY),
            jitter: self.jitter.min(MAX_DELAY),
            loss: p(self.loss),
            reorder: p(self.reorder),
            reorder_delay: self.reorder_delay.min(MAX_DELAY),
            duplicate: p(self.duplicate),
            corrupt: p(self.corrupt),
            ..self.clone()
        }
    }
}

/// The impairments of both directions of a relay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayConfig {
    /// From the client to the target.
    pub forward: ImpairConfig,
    /// From the target back to the client.
    pub backward: ImpairConfig,
}

impl RelayConfig {
    /// The same impairments both ways. The backward direction's seed is derived from the
    /// forward one so that the two directions do not make identical decisions.
    pub fn symmetric(config: ImpairConfig) -> Self {
        let backward = ImpairConfig {
            seed: config.seed ^ 0x9E37_79B9_7F4A_7C15,
            ..config.clone()
        };
        Self {
            forward: config,
            backward,
        }
    }
}

impl From<ImpairConfig> for RelayConfig {
    fn from(config: ImpairConfig) -> Self {
        Self::symmetric(config)
    }
}
