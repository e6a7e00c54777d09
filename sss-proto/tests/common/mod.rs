//! Shared test setups on top of `sss_proto::testkit`.
#![allow(dead_code, unreachable_pub)]

pub mod sessions;
pub mod setup;

pub use sss_proto::testkit::host;
pub use sss_proto::testkit::{addr, identity, Bulk, TestHost, UNIX_NANOS};

/// Number of seeds for sweeps: `SSS_SEEDS` overrides the default.
pub fn seeds(default: u64) -> u64 {
    std::env::var("SSS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
