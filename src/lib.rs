//! Structured Secure Streams (SSS): umbrella crate.
//!
//! Re-exports the sans-IO protocol core ([`proto`]). The async host API (`sss-host`) and the
//! rendezvous protocol (`sss-routing`) join here as they land. The crate also hosts the
//! cross-crate integration tests (`tests/`) and benchmarks (`benches/`).
#![forbid(unsafe_code)]

pub use sss_proto as proto;
