//! A blocking facade for programs without an async runtime: [`Host`], [`Listener`] and
//! [`Stream`] (which implements [`std::io::Read`] and [`std::io::Write`]).
//!
//! Each blocking host runs its own tokio runtime on a background thread; calls block the
//! calling thread until the operation completes. Do not use these types from inside an
//! async runtime (blocking there would stall it; use the async API instead).
//!
//! ```
//! use std::io::{Read, Write};
//! use sss_host::blocking::Host;
//! use sss_host::HostConfig;
//!
//! # fn main() -> Result<(), sss_host::Error> {
//! let server = Host::new(HostConfig::bind("127.0.0.1:0".parse().unwrap()))?;
//! let listener = server.listen("echo", "v1")?;
//! let client = Host::new(HostConfig::bind("127.0.0.1:0".parse().unwrap()))?;
//!
//! let mut out = client.connect(server.eid(), &[server.local_addr()], "echo", "v1")?;
//! out.write_all(b"hello")?;
//! out.finish()?;
//!
//! let mut incoming = listener.accept()?;
//! let mut got = Vec::new();
//! incoming.read_to_end(&mut got)?;
//! assert_eq!(got, b"hello");
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sss_proto::stream::{LinkStatus, StreamId};
use sss_proto::{ChannelStats, Eid, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::{Error, HostConfig, Record};

/// The runtime a blocking host and its handles share. Dropped with the last handle: it then
/// waits (up to the linger time) for the driver to deliver what was written.
struct Runtime {
    rt: tokio::runtime::Runtime,
    done: watch::Receiver<bool>,
    linger: Duration,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let mut done = self.done.clone();
        let wait = self.linger + Duration::from_millis(500);
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        });
    }
}

/// A blocking [`crate::Host`].
#[derive(Debug)]
pub struct Host {
    inner: crate::Host,
    rt: Arc<Runtime>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

impl Host {
    /// A host with a new identity (see [`crate::Host::new`]).
    pub fn new(config: HostConfig) -> Result<Self, Error> {
        Self::build(config, crate::Host::new)
    }

    /// A host with the identity in `path`, created if missing (see
    /// [`crate::Host::from_key_file`]).
    pub fn from_key_file(path: impl AsRef<Path>, config: HostConfig) -> Result<Self, Error> {
        let path = path.as_ref().to_owned();
        Self::build(config, move |c| crate::Host::from_key_file(path, c))
    }

    /// A host with the given identity.
    pub fn with_identity(identity: &Identity, config: HostConfig) -> Result<Self, Error> {
        Self::build(config, |c| crate::Host::with_identity(identity, c))
    }

    fn build(
        config: HostConfig,
        make: impl FnOnce(HostConfig) -> Result<crate::Host, Error>,
    ) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sss-host")
            .enable_all()
            .build()?;
        let linger = config.linger;
        let inner = {
            let _guard = rt.enter();
            make(config)?
        };
        let done = inner.shared.done.subscribe();
        Ok(Self {
            inner,
            rt: Arc::new(Runtime { rt, done, linger }),
        })
    }

    /// This host's EID.
    pub fn eid(&self) -> Eid {
        self.inner.eid()
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// The loopback address of the socket (see [`crate::Host::loopback_addr`]).
    pub fn loopback_addr(&self) -> SocketAddr {
        self.inner.loopback_addr()
    }

    /// Listens on (`service`, `protocol`) (see [`crate::Host::listen`]).
    pub fn listen(&self, service: &str, protocol: &str) -> Result<Listener, Error> {
        Ok(Listener {
            inner: self.inner.listen(service, protocol)?,
            rt: self.rt.clone(),
        })
    }

    /// Opens a stream to `peer`, blocking until the channel is established (see
    /// [`crate::Host::connect`]).
    pub fn connect(
        &self,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
    ) -> Result<Stream, Error> {
        let inner = self
            .rt
            .rt
            .block_on(self.inner.connect(peer, addrs, service, protocol))?;
        Ok(Stream {
            inner,
            rt: self.rt.clone(),
        })
    }

    /// Opens a stream to `peer` and writes `first` to it, sending as much of it as fits
    /// inside the handshake (early data; see [`crate::Host::connect_early`] for when to use
    /// it), blocking until the channel is established and `first` is written.
    pub fn connect_early(
        &self,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
        first: &[u8],
    ) -> Result<Stream, Error> {
        let inner = self.rt.rt.block_on(
            self.inner
                .connect_early(peer, addrs, service, protocol, first),
        )?;
        Ok(Stream {
            inner,
            rt: self.rt.clone(),
        })
    }

    /// Opens a stream to `peer` knowing only its EID, through the host's regservers (see
    /// [`crate::Host::connect_eid`]).
    pub fn connect_eid(&self, peer: Eid, service: &str, protocol: &str) -> Result<Stream, Error> {
        let inner = self
            .rt
            .rt
            .block_on(self.inner.connect_eid(peer, service, protocol))?;
        Ok(Stream {
            inner,
            rt: self.rt.clone(),
        })
    }

    /// Looks `peer` up in the host's regservers (see [`crate::Host::lookup`]).
    pub fn lookup(&self, peer: Eid) -> Result<Vec<SocketAddr>, Error> {
        self.rt.rt.block_on(self.inner.lookup(peer))
    }

    /// Blocks until a regserver stores our record (see [`crate::Host::registered`]).
    pub fn registered(&self) -> Result<SocketAddr, Error> {
        self.rt.rt.block_on(self.inner.registered())
    }

    /// Adds a regserver (see [`crate::Host::add_regserver`]).
    pub fn add_regserver(&self, eid: Eid, addr: SocketAddr) -> Result<(), Error> {
        self.inner.add_regserver(eid, addr)
    }

    /// Statistics of the channel to `peer`.
    pub fn stats(&self, peer: Eid) -> Option<ChannelStats> {
        self.inner.stats(peer)
    }

    /// Closes the host at once (see [`crate::Host::close`]).
    pub fn close(&self) {
        self.rt.rt.block_on(self.inner.close());
    }

    /// The async host inside, to mix both styles (its futures must run on
    /// [`Host::runtime`]).
    pub fn as_async(&self) -> &crate::Host {
        &self.inner
    }

    /// The runtime that drives this host.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt.rt
    }
}

/// A blocking [`crate::Listener`].
#[derive(Debug)]
pub struct Listener {
    inner: crate::Listener,
    rt: Arc<Runtime>,
}

impl Listener {
    /// Blocks until a stream arrives.
    pub fn accept(&self) -> Result<Stream, Error> {
        let inner = self.rt.rt.block_on(self.inner.accept())?;
        Ok(Stream {
            inner,
            rt: self.rt.clone(),
        })
    }
}

/// A blocking [`crate::Stream`]: [`io::Read`] and [`io::Write`], plus records, datagrams
/// and substreams.
#[derive(Debug)]
pub struct Stream {
    inner: crate::Stream,
    rt: Arc<Runtime>,
}

impl Stream {
    fn wrap(&self, inner: crate::Stream) -> Stream {
        Stream {
            inner,
            rt: self.rt.clone(),
        }
    }

    /// The stream's id in its session.
    pub fn id(&self) -> StreamId {
        self.inner.id()
    }

    /// The peer's EID.
    pub fn remote_eid(&self) -> Eid {
        self.inner.remote_eid()
    }

    /// Where the peer was last seen.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    /// The link status now.
    pub fn link_status(&self) -> LinkStatus {
        *self.inner.link_status().borrow()
    }

    /// Finishes the sending direction.
    pub fn finish(&mut self) -> Result<(), Error> {
        self.inner.finish()
    }

    /// Resets the stream with an application code.
    pub fn reset(&mut self, code: u64) -> Result<(), Error> {
        self.inner.reset(code)
    }

    /// Writes a record (see [`crate::Stream::write_record`]).
    pub fn write_record(&mut self, data: &[u8]) -> Result<(), Error> {
        self.rt.rt.block_on(self.inner.write_record(data))
    }

    /// Blocks for the next record (see [`crate::Stream::read_record`]).
    pub fn read_record(&mut self, max: usize) -> Result<Option<Record>, Error> {
        self.rt.rt.block_on(self.inner.read_record(max))
    }

    /// Sends a datagram (see [`crate::Stream::send_datagram`]).
    pub fn send_datagram(&self, data: &[u8], reliable: bool) -> Result<(), Error> {
        self.inner.send_datagram(data, reliable)
    }

    /// Blocks for the next datagram (see [`crate::Stream::recv_datagram`]).
    pub fn recv_datagram(&self) -> Result<Option<Vec<u8>>, Error> {
        self.rt.rt.block_on(self.inner.recv_datagram())
    }

    /// Opens a substream at once.
    pub fn open_substream(&self) -> Result<Stream, Error> {
        Ok(self.wrap(self.inner.open_substream()?))
    }

    /// Blocks for the next substream the peer opens (see
    /// [`crate::Stream::accept_substream`]).
    pub fn accept_substream(&self) -> Result<Option<Stream>, Error> {
        let sub = self.rt.rt.block_on(self.inner.accept_substream())?;
        Ok(sub.map(|s| self.wrap(s)))
    }

    /// Sets the send priority.
    pub fn set_priority(&self, priority: i32) -> Result<(), Error> {
        self.inner.set_priority(priority)
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rt.rt.block_on(self.inner.read(buf))
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.rt.rt.block_on(self.inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.rt.rt.block_on(self.inner.flush())
    }
}
