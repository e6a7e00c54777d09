//! The sans-IO core of Structured Secure Streams (SSS).
//!
//! Nothing in this crate touches a socket, a clock or the operating system's random number
//! generator. Every entry point takes `now: Instant`; randomness comes from a seeded generator
//! handed in through the configuration. Input enters through `handle_*` methods, output leaves
//! through `poll_*` methods, so the whole protocol runs deterministically on the in-process
//! simulator (feature `sim`) as well as on real sockets (`sss-host`).
//!
//! Layers, bottom up:
//! - [`identity`]: Ed25519 host keys and their self-certifying [`Eid`] names;
//! - [`handshake`]: the one-round-trip Noise IK handshake with stateless cookies;
//! - [`packet`], [`frame`]: the wire formats;
//! - [`recovery`]: RTT estimation, congestion control (NewReno, CUBIC) and pacing;
//! - [`channel`]: one keyed, congestion-controlled channel between two hosts;
//! - [`endpoint`]: routes datagrams to channels and accepts new ones.
#![forbid(unsafe_code)]

pub mod channel;
pub mod codec;
pub mod crypto;
pub mod endpoint;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod packet;
pub mod ranges;
pub mod recovery;
pub mod replay;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stream;
#[cfg(feature = "sim")]
pub mod testkit;
mod transmit;

pub use channel::{Channel, ChannelConfig, ChannelError, ChannelEvent, ChannelStats, Upper};
pub use endpoint::{ChannelHandle, DatagramEvent, Endpoint, EndpointConfig, Incoming};
pub use identity::{Eid, EidParseError, Identity, KeyFileError};
pub use transmit::{EcnCodepoint, Transmit};
