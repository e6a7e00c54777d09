//! Test hosts for the simulator (feature `sim`): [`TestHost`], an endpoint with its channels
//! that implements [`Node`](crate::sim::Node), and [`Bulk`], an upper layer that moves seeded
//! bulk data and checks every byte, standing in for the stream layer in channel tests, the
//! demo and the benchmarks.

pub mod bulk;
pub mod host;
pub mod session_host;

use std::net::SocketAddr;

use rand_chacha::rand_core::SeedableRng;

use crate::identity::Identity;

pub use bulk::Bulk;
pub use host::{Policy, Slot, TestHost};

/// Wall clock given to simulated endpoints (any fixed value works; it only orders
/// handshake timestamps).
pub const UNIX_NANOS: u64 = 1_700_000_000_000_000_000;

/// A deterministic identity.
pub fn identity(seed: u64) -> Identity {
    Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
}

/// Address of simulated host `n`: `10.0.0.n:(4000 + n)`.
pub fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 4000 + u16::from(n)))
}
