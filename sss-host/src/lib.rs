//! The async host API of Structured Secure Streams (SSS), on tokio.
//!
//! A [`Host`] has an identity (an Ed25519 key; its public key is the host's [`Eid`]), one
//! UDP socket (dual-stack by default) and one driver task that runs the protocol for all of
//! the host's channels: it receives with GRO, sends GSO batches of up to 64 datagrams, and
//! wakes the application's tasks when their streams can make progress.
//!
//! - [`Host::listen`] returns a [`Listener`] for one (service, protocol) pair; its
//!   [`accept`](Listener::accept) yields the [`Stream`]s peers open for that pair. Peers
//!   asking for a pair nobody listens on are refused in the handshake.
//! - [`Host::connect`] opens a stream to a peer, by EID and candidate addresses, retrying as
//!   [`HostConfig::backoff`] says.
//! - [`Host::connect_early`] (and [`Host::connect_early_with`]) also sends the stream's first
//!   bytes inside the handshake ("early data"): the peer can answer them within the
//!   handshake's round trip. Replayable within the limits of `spec/handshake.md` §9, so
//!   for requests whose repetition does no harm.
//! - A [`Stream`] is a reliable byte stream each way with tokio's `AsyncRead`/`AsyncWrite`,
//!   plus records, datagrams (best-effort or reliable), substreams opened without a round
//!   trip, priorities, reset, and a watch of the link status.
//! - [`Host::connect_eid`] dials a peer by its EID alone: the host looks it up in its
//!   regservers ([`HostConfig::regservers`]), which also tell the peer to punch a hole
//!   through its NAT toward us, then connects to every endpoint found. [`Host::lookup`]
//!   only looks up; [`Host::registered`] waits until a regserver stores our record.
//! - [`blocking`] wraps all of it for programs without an async runtime.
//!
//! # Example
//!
//! Two hosts on loopback: the server listens, the client connects, sends a record and some
//! bytes on a substream, and reads the answer.
//!
//! ```
//! use sss_host::{Host, HostConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Host::new(HostConfig::bind("127.0.0.1:0".parse()?))?;
//! let listener = server.listen("greeter", "v1")?;
//! tokio::spawn(async move {
//!     while let Ok(mut stream) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let name = stream.read_record(64).await?.expect("a record").data;
//!             let mut reply = stream.accept_substream().await?.expect("a substream");
//!             let mut body = String::new();
//!             reply.read_to_string(&mut body).await?;
//!             let text = format!("hello {}, you said {body:?}", String::from_utf8_lossy(&name));
//!             stream.write_all(text.as_bytes()).await?;
//!             stream.shutdown().await?;
//!             Ok::<_, std::io::Error>(())
//!         });
//!     }
//! });
//!
//! let client = Host::new(HostConfig::bind("127.0.0.1:0".parse()?))?;
//! let mut stream = client
//!     .connect(server.eid(), &[server.local_addr()], "greeter", "v1")
//!     .await?;
//! stream.write_record(b"ada").await?;
//! let mut sub = stream.open_substream()?;
//! sub.write_all(b"hi").await?;
//! sub.shutdown().await?;
//!
//! let mut answer = String::new();
//! stream.read_to_string(&mut answer).await?;
//! assert_eq!(answer, "hello ada, you said \"hi\"");
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every operation returns the typed [`Error`]; it converts into [`std::io::Error`] with a
//! fitting kind (a reset is `ConnectionReset`, a refusal `ConnectionRefused`, a connection
//! that never answered `TimedOut`, a stream whose session lost its channel for good
//! `NotConnected`).
//!
//! # Logging
//!
//! The host emits [`tracing`] events: `info` for connections (connecting, established,
//! accepted, refused, closed), `debug` for streams and retries.
#![forbid(unsafe_code)]

mod attempt;
pub mod blocking;
mod config;
mod driver;
mod error;
mod hash;
mod host;
pub mod impair;
mod listener;
mod routing;
mod state;
mod stream;
pub mod udp;
mod upgrade;

pub use config::{BackoffPolicy, HostConfig, RoutingConfig, DEFAULT_RELAY_AFTER, HOST_MAX_UNSENT};
pub use error::Error;
pub use host::Host;
pub use impair::{ImpairConfig, Relay, RelayConfig, RelayHandle, RelayStats};
pub use listener::Listener;
pub use routing::{
    is_relay_addr, RegserverStatus, INTERFACE_CHECK_INTERVAL, MAX_HOST_RELAYS, MAX_PUNCH_ENDPOINTS,
    MAX_PUNCH_PEERS, PUNCH_PROBES, PUNCH_SCHEDULE,
};
pub use stream::{Record, Stream};
pub use udp::{Datagram, RecvBatch, UdpSocket};

pub use sss_proto::channel::{ChannelConfig, ChannelStats};
pub use sss_proto::handshake::RefuseCode;
pub use sss_proto::stream::{DatagramStats, ErrorCode, LinkStatus, SessionConfig, StreamId};
pub use sss_proto::{Eid, EndpointConfig, Identity};
