//! The sans-IO rendezvous protocol of SSS (spec/routing.md): signed EID records, the
//! regserver's [`server::Server`] and the host's [`client::Client`], and NAT hole-punch
//! coordination. Relay framing is reserved in the wire format but not implemented yet.
//!
//! Like `sss-proto`, nothing here touches a socket, a clock or the OS random generator:
//! every entry point takes `now: Instant`, randomness comes from seeds in the configuration,
//! input enters through `handle_*` and output leaves through `poll_*`.
//!
//! - [`wire`]: every message, decoded from untrusted bytes without panics;
//! - [`record`]: signed records (what a host says about where it is);
//! - [`server`]: the regserver state machine, with every table capped;
//! - [`client`]: registration, keepalive, lookups and NOTIFY handling in a host.
#![forbid(unsafe_code)]

mod bucket;
pub mod client;
mod cookie;
pub mod record;
pub mod server;
pub mod wire;

pub use client::{Client, ClientConfig, Event, LookupOutcome};
pub use cookie::COOKIE_SECRET_LIFETIME;
pub use record::{RecordBody, SignedRecord};
pub use server::{Server, ServerConfig};
pub use wire::{Message, WireError};
