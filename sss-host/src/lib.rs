//! The async host API of Structured Secure Streams (not built yet): one UDP socket per host
//! driven by a tokio task through `quinn-udp` (GSO/GRO), with `Host`, listeners and streams
//! implementing `AsyncRead`/`AsyncWrite`. See issue 4.
#![forbid(unsafe_code)]

pub mod impair;
pub mod udp;

pub use impair::{ImpairConfig, Relay, RelayConfig, RelayHandle, RelayStats};
pub use udp::{Datagram, RecvBatch, UdpSocket};
