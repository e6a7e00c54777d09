//! The SSS rendezvous server (spec/routing.md): a small tokio runtime around
//! [`sss_routing::server::Server`], and the `regserver` binary over it.
//!
//! [`RegServer::bind`] opens one UDP socket and spawns a task that feeds every datagram to the
//! sans-IO server, sends what it queues, and runs its one timer (record and relay slot
//! expiry, cookie secret rotation). Relayed datagrams (RELAY_DATA, spec/routing.md §6) take a
//! shorter path: [`Server::forward`] checks them against their slot and the received buffer
//! is sent on as it is, with no copy and no allocation. The handle gives the bound address, the server's EID, counters and a
//! shutdown switch, so tests and demos can embed a server in-process:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), regserver::Error> {
//! use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
//! use regserver::RegServer;
//! use sss_proto::Identity;
//!
//! let key = Identity::generate(&mut ChaCha20Rng::seed_from_u64(7));
//! let server = RegServer::bind("127.0.0.1:0".parse().unwrap(), regserver::server_config(key.eid())).await?;
//! println!("regserver eid={} addr={}", server.eid(), server.local_addr());
//! assert_eq!(server.stats().records, 0);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The socket is a plain tokio `UdpSocket`: routing replies are small datagrams to many
//! different addresses, so the GSO/GRO batching of `quinn-udp` would buy nothing here.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use sss_proto::{Eid, Identity, KeyFileError};
use sss_routing::server::{Server, ServerConfig, ServerStats};
use sss_routing::wire::msg_type;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest datagram read: routing messages are at most a few hundred bytes and relayed ones
/// at most `MAX_RELAY_DATAGRAM` (1472), so anything longer is cut here and then refused.
const RECV_BUF: usize = 2048;

/// Receive buffer asked for the socket: with the default (about 200 kB, some 200 queued
/// datagrams) a burst of a few hundred HELLOs overflows it and the hosts wait for their retry.
const RECV_SOCKET_BUFFER: usize = 4 << 20;

/// Pause after a failed receive, so that a socket error that repeats cannot spin the task.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Why a [`RegServer`] could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The UDP socket could not be bound (address in use, not a local address, no
    /// permission for a low port).
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// Any other socket error while starting.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Counters of a running [`RegServer`]: the socket's, and the protocol's from
/// [`ServerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegServerStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Sends the operating system refused (unreachable network, full buffer).
    pub send_errors: u64,
    /// Receives that failed.
    pub recv_errors: u64,
    /// Records held now.
    pub records: usize,
    /// Source IPs with a credit bucket of their own now.
    pub sources: usize,
    /// Relay slots held now.
    pub relays: usize,
    /// What the protocol state machine counted.
    pub server: ServerStats,
}

/// Stops a [`RegServer`]'s task; cheap to clone and to keep after the server was dropped.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks the server's task to stop (it stops at once: there is nothing to flush).
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }

    /// Whether a shutdown was asked.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}

/// A regserver running on a UDP socket in the current tokio runtime. Dropping it stops it.
#[derive(Debug)]
pub struct RegServer {
    local_addr: SocketAddr,
    eid: Eid,
    shutdown: ShutdownHandle,
    stats: Arc<Mutex<RegServerStats>>,
    task: Option<JoinHandle<()>>,
}

/// The default configuration of spec/routing.md §5.3 for a server named `eid`, with the
/// cookie secrets' generator seeded from the operating system.
pub fn server_config(eid: Eid) -> ServerConfig {
    let mut seed = [0; 32];
    OsRng.fill_bytes(&mut seed);
    ServerConfig::new(eid, seed)
}

/// Loads the identity in the key file at `path`, or creates one (readable by the owner
/// only) if there is no such file. The flag tells whether it was created. A file that exists
/// but cannot be read, is readable by others or is not a key is an error: it is never
/// overwritten.
pub fn load_or_create_identity(path: &Path) -> Result<(Identity, bool), KeyFileError> {
    match Identity::load(path) {
        Ok(identity) => Ok((identity, false)),
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let identity = Identity::generate(&mut OsRng);
            identity.save(path)?;
            Ok((identity, true))
        }
        Err(e) => Err(e),
    }
}

impl RegServer {
    /// Binds `addr` and starts serving with `config` (its `server_id` is the EID that hosts'
    /// records must name). Must be called inside a tokio runtime, which runs the server's
    /// task.
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Self, Error> {
        let socket = bind_socket(addr).map_err(|source| Error::Bind { addr, source })?;
        let local_addr = socket.local_addr()?;
        let eid = config.server_id;
        let server = Server::new(config, Instant::now());
        let (tx, rx) = watch::channel(false);
        let stats = Arc::new(Mutex::new(RegServerStats::default()));
        let task = tokio::spawn(drive(socket, server, rx, Arc::clone(&stats)));
        tracing::debug!(%local_addr, %eid, "regserver started");
        Ok(Self {
            local_addr,
            eid,
            shutdown: ShutdownHandle(Arc::new(tx)),
            stats,
            task: Some(task),
        })
    }

    /// The address the socket is bound to (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's EID: hosts need it, with the address, to register.
    pub fn eid(&self) -> Eid {
        self.eid
    }

    /// A handle that stops the server from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// A snapshot of the counters (updated after every datagram and timer).
    pub fn stats(&self) -> RegServerStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the server's task has ended (after a shutdown through a handle).
    pub async fn closed(&mut self) {
        if let Some(task) = self.task.as_mut() {
            // The task never panics on purpose; if it did, it has ended all the same.
            let _ = task.await;
            self.task = None;
        }
    }

    /// Stops the server and waits until its socket is closed.
    pub async fn shutdown(mut self) {
        self.shutdown.shutdown();
        self.closed().await;
    }
}

impl Drop for RegServer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// A non-blocking UDP socket bound to `addr`, with a receive buffer large enough for a burst
/// of requests (many hosts registering at once after a restart or a network outage).
fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The server's task: datagrams in, transmits out, one timer, until shutdown.
async fn drive(
    socket: UdpSocket,
    mut server: Server,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Mutex<RegServerStats>>,
) {
    let mut counters = RegServerStats::default();
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    let first = server.poll_timeout().unwrap_or_else(Instant::now);
    let mut pause = false;
    let mut timer = pin!(tokio::time::sleep_until(first.into()));
    loop {
        tokio::select! {
            biased;
            // A changed value or a dropped sender: stop either way.
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    counters.datagrams_in += 1;
                    counters.bytes_in += len as u64;
                    let data = &buf[..len];
                    if data.first() == Some(&msg_type::RELAY_DATA) {
                        // The hot path: checked against its slot, sent on unchanged.
                        if let Some(to) = server.forward(Instant::now(), from, data) {
                            send(&socket, data, to, &mut counters).await;
                        }
                    } else {
                        server.handle_datagram(Instant::now(), from, data);
                    }
                }
                Err(e) => {
                    counters.recv_errors += 1;
                    tracing::warn!(error = %e, "receive failed");
                    pause = true;
                }
            },
            () = &mut timer => server.handle_timeout(Instant::now()),
        }
        if std::mem::take(&mut pause) {
            tokio::time::sleep(RECV_ERROR_PAUSE).await;
        }
        while let Some(t) = server.poll_transmit(Instant::now(), &mut out) {
            send(&socket, &out[..t.size], t.destination, &mut counters).await;
        }
        if let Some(next) = server.poll_timeout() {
            if timer.deadline() != next.into() {
                timer.as_mut().reset(next.into());
            }
        }
        counters.records = server.record_count();
        counters.sources = server.source_count();
        if server.stats().relays_opened != counters.server.relays_opened {
            tracing::info!(
                relays = server.relay_count(),
                opened = server.stats().relays_opened,
                "relay slot opened"
            );
        }
        counters.relays = server.relay_count();
        counters.server.clone_from(server.stats());
        stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&counters);
    }
    tracing::debug!("regserver stopped");
}

/// Sends one datagram, counting it (or the error: peers choose these addresses, so a failure
/// is logged quietly and never stops the server).
async fn send(socket: &UdpSocket, data: &[u8], to: SocketAddr, counters: &mut RegServerStats) {
    match socket.send_to(data, to).await {
        Ok(_) => {
            counters.datagrams_out += 1;
            counters.bytes_out += data.len() as u64;
        }
        Err(e) => {
            counters.send_errors += 1;
            tracing::debug!(error = %e, %to, "send failed");
        }
    }
}
