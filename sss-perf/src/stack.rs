//! What a transport stack must offer the shared workload: a listener that accepts
//! connections, a dialer that makes them, and connections that open and accept bidirectional
//! byte streams implementing tokio's `AsyncRead`/`AsyncWrite`.
//!
//! Each stack lives in its own module (`quinn_stack`, `sss_stack`); the workload
//! (`workload.rs`), the content and the statistics are shared, so both stacks move the same
//! bytes through the same code.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{PerfError, Result};

/// The stack under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// Structured Secure Streams (`sss-host`).
    Sss,
    /// quinn 0.11 (QUIC over rustls/ring), the reference.
    Quinn,
}

impl fmt::Display for StackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sss => "sss",
            Self::Quinn => "quinn",
        })
    }
}

/// One established connection. Cheap to clone (a handle), so that each stream's task can
/// hold one.
pub trait Conn: Clone + Send + Sync + 'static {
    /// The sending half of a stream; `shutdown()` finishes it (FIN).
    type Send: AsyncWrite + Unpin + Send + 'static;
    /// The receiving half of a stream; a read of 0 bytes means the peer finished.
    type Recv: AsyncRead + Unpin + Send + 'static;

    /// Opens a new bidirectional stream (quinn: `open_bi`; SSS: a fresh substream).
    fn open_bi(&self) -> impl Future<Output = Result<(Self::Send, Self::Recv)>> + Send;

    /// Accepts the peer's next stream; `Ok(None)` once the connection closed cleanly.
    fn accept_bi(&self) -> impl Future<Output = Result<Option<(Self::Send, Self::Recv)>>> + Send;

    /// Closes the connection gracefully (the run is over).
    fn close(&self);
}

/// A bound server endpoint.
pub trait Listener: Send + Sync + 'static {
    /// The connections it yields.
    type Conn: Conn;
    /// A connection whose handshake is still in progress.
    type Incoming: Future<Output = Result<Self::Conn>> + Send + 'static;

    /// The identity clients must name: SSS's EID, or for quinn the certificate digest.
    fn identity(&self) -> String;

    /// The bound address (useful after binding port 0).
    fn local_addr(&self) -> Result<SocketAddr>;

    /// Waits for the next connection attempt; `None` once the endpoint is closed.
    fn accept(&self) -> impl Future<Output = Option<Self::Incoming>> + Send;
}

/// A bound client endpoint, ready to connect. Binding is separate from connecting so that
/// connect time measures the handshake, not socket setup.
pub trait Dialer: Send + Sync + 'static {
    /// The connections it makes.
    type Conn: Conn;

    /// Performs the handshake with `target`; resolves when the connection is usable.
    fn connect(&self, target: &Target) -> impl Future<Output = Result<Self::Conn>> + Send;

    /// Connects and sends `probe` on a new stream, which it finishes: the connect probe.
    /// By default the stream opens once the handshake is done; a stack that can carry the
    /// first stream data inside its handshake (SSS's early data) overrides this.
    #[allow(clippy::type_complexity)]
    fn connect_probe(
        &self,
        target: &Target,
        probe: &[u8],
    ) -> impl Future<
        Output = Result<(
            Self::Conn,
            <Self::Conn as Conn>::Send,
            <Self::Conn as Conn>::Recv,
        )>,
    > + Send {
        async move {
            use tokio::io::AsyncWriteExt;
            let conn = self.connect(target).await?;
            let (mut send, recv) = conn.open_bi().await?;
            let io = |e| PerfError::io("probe", e);
            send.write_all(probe).await.map_err(io)?;
            send.shutdown().await.map_err(io)?;
            Ok((conn, send, recv))
        }
    }

    /// Called after the last connection was closed: waits (briefly) until the close has
    /// been sent, so the server does not keep a half-dead connection.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// `EID@ADDR` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server identity as printed by `server` (`quinn` skips pinning for quinn).
    pub eid: String,
    /// The server's UDP address.
    pub addr: SocketAddr,
}

impl FromStr for Target {
    type Err = PerfError;

    fn from_str(s: &str) -> Result<Self> {
        let (eid, addr) = s
            .rsplit_once('@')
            .ok_or_else(|| PerfError::Config(format!("expected EID@ADDR, got {s:?}")))?;
        let addr = addr
            .parse()
            .map_err(|e| PerfError::Config(format!("bad address {addr:?} in {s:?}: {e}")))?;
        Ok(Self {
            eid: eid.to_owned(),
            addr,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.eid, self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parses_eid_at_addr() {
        let t: Target = "abc@127.0.0.1:4433".parse().unwrap();
        assert_eq!(t.eid, "abc");
        assert_eq!(t.addr, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(t.to_string(), "abc@127.0.0.1:4433");
        assert!("127.0.0.1:4433".parse::<Target>().is_err());
        assert!("abc@nonsense".parse::<Target>().is_err());
    }
}
