//! Loss recovery and congestion control building blocks (RFC 9002): RTT estimation,
//! congestion controllers, pacing and path MTU discovery.
//!
//! Everything here is sans-IO and allocation-free per call: the channel owns one of each per
//! path and feeds them `now`, packet numbers, sizes and send times.

pub mod cc;
pub mod mtu;
pub mod pacing;
pub mod rtt;

pub use cc::{CongestionAlgorithm, Controller, Cubic, CubicConfig, NewReno, NewRenoConfig};
pub use mtu::MtuDiscovery;
pub use pacing::Pacer;
pub use rtt::{RttEstimator, GRANULARITY, INITIAL_RTT};
