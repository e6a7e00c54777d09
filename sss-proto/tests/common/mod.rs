//! Shared test harness: simulated hosts (an endpoint and its channels) and a bulk-transfer
//! upper layer that stands in for the stream layer.
#![allow(dead_code, unreachable_pub)]

pub mod bulk;
pub mod host;
pub mod setup;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use sss_proto::identity::Identity;

pub use bulk::Bulk;
pub use host::TestHost;

/// A deterministic identity.
pub fn identity(seed: u64) -> Identity {
    Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

/// Address of simulated host `n`.
pub fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 4000 + u16::from(n)))
}

/// Wall clock given to endpoints (any fixed value works; it only orders handshakes).
pub const UNIX_NANOS: u64 = 1_700_000_000_000_000_000;

/// Megabits per second.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
}

/// A fixed start instant for a simulation.
pub fn start() -> Instant {
    Instant::now()
}
