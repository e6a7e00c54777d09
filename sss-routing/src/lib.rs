//! The sans-IO rendezvous protocol of SSS (spec/routing.md): signed EID records, the
//! regserver's [`server::Server`] and the host's [`client::Client`], and NAT hole-punch
//! coordination, and the relay that carries channels between hosts that cannot punch.
//!
//! Like `sss-proto`, nothing here touches a socket, a clock or the OS random generator:
//! every entry point takes `now: Instant`, randomness comes from seeds in the configuration,
//! input enters through `handle_*` and output leaves through `poll_*`.
//!
//! - [`wire`]: every message, decoded from untrusted bytes without panics;
//! - [`record`]: signed records (what a host says about where it is);
//! - [`server`]: the regserver state machine (records, lookups, relay slots), with every
//!   table capped;
//! - [`client`]: registration, keepalive, lookups, NOTIFY handling and relay requests in a
//!   host.
//!
//! A host and a regserver, with datagrams handed over directly:
//!
//! ```
//! # use std::time::Instant;
//! # use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
//! use sss_proto::Identity;
//! use sss_routing::{Client, ClientConfig, Event, Server, ServerConfig};
//!
//! let now = Instant::now();
//! let (host_addr, server_addr) = ("192.0.2.1:5000".parse()?, "203.0.113.1:9669".parse()?);
//! let server_key = Identity::generate(&mut ChaCha20Rng::seed_from_u64(1));
//! let mut server = Server::new(ServerConfig::new(server_key.eid(), [1; 32]), now);
//! let host = Identity::generate(&mut ChaCha20Rng::seed_from_u64(2));
//! let config = ClientConfig::new(server_addr, server_key.eid(), 1, [2; 32]);
//! let mut client = Client::new(config, host);
//!
//! client.register(now);
//! let mut buf = Vec::new();
//! // HELLO -> COOKIE, REGISTER -> REGISTERED.
//! for _ in 0..2 {
//!     while let Some(t) = client.poll_transmit(now, &mut buf) {
//!         server.handle_datagram(now, host_addr, &buf[..t.size]);
//!     }
//!     while let Some(t) = server.poll_transmit(now, &mut buf) {
//!         client.handle_datagram(now, server_addr, &buf[..t.size]);
//!     }
//! }
//! assert_eq!(client.poll_event(), Some(Event::Registered { observed: host_addr }));
//! assert_eq!(server.record_count(), 1);
//! # Ok::<(), std::net::AddrParseError>(())
//! ```
#![forbid(unsafe_code)]

mod bucket;
pub mod client;
mod cookie;
pub mod record;
pub mod server;
pub mod wire;

pub use client::{Client, ClientConfig, Event, LookupOutcome, RelayOutcome};
pub use cookie::COOKIE_SECRET_LIFETIME;
pub use record::{RecordBody, SignedRecord};
pub use server::{Server, ServerConfig};
pub use wire::{Message, WireError};
