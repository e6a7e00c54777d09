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

/// Two stream-layer sessions, A (`[0]`, identity 1, session seed 11) and B (`[1]`, identity 2,
/// seed 22), each attached at `now` with the other's session id and the windows of `config`:
/// the start of an in-memory pair that hands frames over directly, without a channel.
pub fn attached_sessions(
    config: crate::stream::SessionConfig,
    now: std::time::Instant,
) -> [crate::stream::Session; 2] {
    use crate::handshake::TransportParams;
    use crate::stream::Session;
    let cfg = std::sync::Arc::new(config);
    let (ea, eb) = (identity(1).eid(), identity(2).eid());
    let mut s = [
        Session::new(cfg.clone(), ea, eb, 11),
        Session::new(cfg.clone(), eb, ea, 22),
    ];
    for i in 0..2 {
        let peer = TransportParams {
            session_id: s[1 - i].local_session_id(),
            initial_max_stream_data: cfg.initial_max_stream_data,
            initial_max_data: cfg.initial_max_data,
            initial_max_streams: cfg.initial_max_streams,
            ..TransportParams::default()
        };
        s[i].attach(now, &peer);
    }
    s
}
