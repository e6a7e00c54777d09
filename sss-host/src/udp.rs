//! The host's UDP socket: tokio readiness on top of `quinn-udp` (GSO sends, GRO + `recvmmsg`
//! receives, ECN, source/destination IP).
//!
//! One [`UdpSocket`] serves every channel of a host. The driver hands it the
//! [`sss_proto::Transmit`] batches that `sss-proto` writes into its buffer
//! ([`UdpSocket::poll_send`]) and reads datagrams in batches through a [`RecvBatch`].
//!
//! Addresses are canonical on this API: on a dual-stack IPv6 socket, IPv4 peers appear as
//! plain IPv4 addresses (never `::ffff:a.b.c.d`), and IPv4 destinations may be given as such.

mod batch;

pub use batch::{Datagram, GroBuffer, RecvBatch, DEFAULT_BUFFERS, DEFAULT_BUFFER_SIZE};
pub use quinn_udp::RecvMeta;

use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use socket2::{Domain, Protocol, Socket, Type};
use sss_proto::{EcnCodepoint, Transmit};
use tokio::io::Interest;

/// Socket buffer size asked for in both directions by default. At 3 Gbit/s, 4 MiB is ~11 ms
/// of traffic, enough to ride out a scheduling hiccup of the driver task without drops (quinn
/// #2262 traced real losses to socket drops; quinn asks for 2 MiB). Linux caps the request at
/// `net.core.{r,w}mem_max` (4 MiB on our CI box) unless the process may exceed it (see
/// [`UdpSocket::bind_with_buffers`]), and then doubles it for bookkeeping.
pub const SOCKET_BUFFER_SIZE: usize = 4 << 20;

/// Most payload bytes in one GSO `sendmsg`: the IPv4 datagram limit (65535 minus the IP and
/// UDP headers). Bigger batches are split at a segment boundary below it.
pub const GSO_MAX_BYTES: usize = 65_507;

/// A UDP socket for the tokio driver, with GSO/GRO through `quinn-udp`.
///
/// Must be created inside a tokio runtime. It is `Sync`, but [`UdpSocket::poll_send`] keeps
/// the progress of one partly sent batch, so only one task should send on it (the host's
/// driver does).
#[derive(Debug)]
pub struct UdpSocket {
    io: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// Whether the socket is IPv6 (possibly dual-stack): IPv4 destinations are then mapped.
    ipv6: bool,
    /// Upper bound on segments per `sendmsg`, below quinn-udp's own (see
    /// [`UdpSocket::limit_gso_segments`]).
    gso_limit: AtomicUsize,
    /// How much of a split batch (GSO fallback, or a batch above the GSO limits) was sent
    /// before the socket became full midway.
    send_progress: Mutex<SendProgress>,
    send_buffer: usize,
    recv_buffer: usize,
}

impl UdpSocket {
    /// Binds a socket to `addr`.
    ///
    /// An unspecified IPv6 address (`[::]:port`) binds dual-stack (`IPV6_V6ONLY` off), so the
    /// one socket serves IPv4 and IPv6 peers. Send and receive buffers are raised towards
    /// [`SOCKET_BUFFER_SIZE`]; [`UdpSocket::send_buffer_size`] and
    /// [`UdpSocket::recv_buffer_size`] report what the kernel granted.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with_buffers(addr, SOCKET_BUFFER_SIZE)
    }

    /// Binds a socket to `addr` (as [`UdpSocket::bind`]) asking for send and receive buffers
    /// of `buffer` bytes. Where Linux caps the request (`net.core.{r,w}mem_max`), the socket
    /// asks again with `SO_{RCV,SND}BUFFORCE`, which a process with `CAP_NET_ADMIN` is granted;
    /// otherwise it keeps what the kernel allowed.
    pub fn bind_with_buffers(addr: SocketAddr, buffer: usize) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        set_socket_buffers(&socket, buffer);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let send_buffer = socket.send_buffer_size()?;
        let recv_buffer = socket.recv_buffer_size()?;
        let std_socket: std::net::UdpSocket = socket.into();
        let state = quinn_udp::UdpSocketState::new((&std_socket).into())?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        Ok(Self {
            io,
            state,
            ipv6: addr.is_ipv6(),
            gso_limit: AtomicUsize::new(usize::MAX),
            send_progress: Mutex::new(SendProgress::default()),
            send_buffer,
            recv_buffer,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// The most datagrams one [`Transmit`] should carry: 64 with Linux UDP GSO, 1 without.
    /// The batch must also stay within [`GSO_MAX_BYTES`] (44 datagrams of 1472 bytes).
    ///
    /// Larger batches are still accepted (they are split), but cost more syscalls. The value
    /// drops to 1 when the kernel refuses GSO at send time (`EIO`/`EINVAL`, e.g. a NIC
    /// without checksum offload).
    pub fn max_gso_segments(&self) -> usize {
        self.state
            .max_gso_segments()
            .min(self.gso_limit.load(Ordering::Relaxed))
            .max(1)
    }

    /// Caps the segments per `sendmsg` at `segments` (at least 1), below what the kernel
    /// allows. Benchmarks use it to compare batch sizes; 1 disables GSO.
    pub fn limit_gso_segments(&self, segments: usize) {
        self.gso_limit.store(segments.max(1), Ordering::Relaxed);
    }

    /// How many datagrams the kernel may coalesce into one received buffer (64 with UDP GRO,
    /// 1 without).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Whether sent datagrams may be fragmented by IP (false when DF could be set).
    pub fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    /// The send buffer size the kernel granted, in bytes (Linux reports twice the usable
    /// size).
    pub fn send_buffer_size(&self) -> usize {
        self.send_buffer
    }

    /// The receive buffer size the kernel granted, in bytes (Linux reports twice the usable
    /// size).
    pub fn recv_buffer_size(&self) -> usize {
        self.recv_buffer
    }

    /// Sends `transmit`, whose datagrams are the first `transmit.size` bytes of `contents`.
    ///
    /// A GSO batch goes out in one `sendmsg` when it fits [`UdpSocket::max_gso_segments`],
    /// else in several. When the kernel refuses GSO, the batch is re-sent as single
    /// datagrams. On `Poll::Pending` (socket buffer full), call again with the same transmit
    /// and contents once woken: the part of a split batch already sent is remembered (keyed
    /// by destination, size and buffer address) and not sent twice; a different transmit
    /// starts afresh.
    ///
    /// Errors (unreachable destination, message too large, ...) concern this transmit only;
    /// UDP is unreliable and the protocol retransmits, so the driver logs and carries on.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        transmit: &Transmit,
        contents: &[u8],
    ) -> Poll<io::Result<()>> {
        let Some(contents) = contents.get(..transmit.size) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "transmit size exceeds its contents",
            )));
        };
        let key = SendProgress {
            destination: Some(transmit.destination),
            contents: contents.as_ptr() as usize,
            size: transmit.size,
            segment_size: transmit.segment_size,
            sent: 0,
        };
        let mut progress = self.send_progress.lock().unwrap_or_else(|e| e.into_inner());
        if !progress.continues(&key) {
            // A different transmit than the one left half sent: that one was abandoned.
            *progress = key;
        }
        let result = ready!(self.poll_send_inner(cx, transmit, contents, &mut progress.sent));
        progress.sent = 0;
        Poll::Ready(result)
    }

    /// Sends `transmit` (see [`UdpSocket::poll_send`]), waiting while the socket is full.
    pub async fn send(&self, transmit: &Transmit, contents: &[u8]) -> io::Result<()> {
        poll_fn(|cx| self.poll_send(cx, transmit, contents)).await
    }

    fn poll_send_inner(
        &self,
        cx: &mut Context<'_>,
        transmit: &Transmit,
        contents: &[u8],
        progress: &mut usize,
    ) -> Poll<io::Result<()>> {
        let segment = match transmit.segment_size {
            Some(s) if s > 0 && s < contents.len() => s,
            _ => contents.len().max(1),
        };
        let destination = self.map_destination(transmit.destination);
        // IPv4 source addresses stay IPv4: Linux takes `IP_PKTINFO` on a dual-stack socket
        // sending to an IPv4-mapped destination.
        let src_ip = transmit.src_ip;
        let ecn = transmit.ecn.map(ecn_to_quinn);
        loop {
            let offset = *progress;
            let Some(rest) = contents.get(offset..).filter(|r| !r.is_empty()) else {
                return Poll::Ready(Ok(()));
            };
            let max_segments = self.max_gso_segments();
            let segments = max_segments.min(GSO_MAX_BYTES / segment).max(1);
            let chunk_len = rest.len().min(segment.saturating_mul(segments));
            let chunk = &rest[..chunk_len];
            let batch = quinn_udp::Transmit {
                destination,
                ecn,
                contents: chunk,
                segment_size: (chunk_len > segment).then_some(segment),
                src_ip,
            };
            ready!(self.io.poll_send_ready(cx))?;
            let sent = self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &batch)
            });
            match sent {
                Ok(()) => {
                    *progress = offset + chunk_len;
                }
                // `try_io` cleared the readiness: the next `poll_send_ready` registers us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // quinn-udp turned GSO off after this error: go round and send the batch
                // again in smaller pieces.
                Err(e)
                    if batch.segment_size.is_some() && self.max_gso_segments() < max_segments =>
                {
                    tracing::debug!("GSO send failed ({e}); re-sending without GSO");
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Receives into `bufs` with one `recvmmsg`, filling `meta[i]` for each buffer `i` used;
    /// returns how many buffers were filled.
    ///
    /// Each buffer may hold several datagrams of `meta[i].stride` bytes (GRO), the last one
    /// possibly shorter; size buffers for [`UdpSocket::gro_segments`] datagrams (64 KiB
    /// holds any GRO batch). Addresses in `meta` are as the kernel gives them (IPv4 peers
    /// of a dual-stack socket appear IPv4-mapped); [`RecvBatch`] canonicalizes them.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // quinn-udp writes `meta[i]` for every message it receives, up to `bufs.len()`.
        let n = bufs.len().min(meta.len());
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let bufs = &mut bufs[..n];
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let received = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            });
            match received {
                Ok(count) => return Poll::Ready(Ok(count)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Receives into `bufs` (see [`UdpSocket::poll_recv`]), waiting for data.
    pub async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        poll_fn(|cx| self.poll_recv(cx, bufs, meta)).await
    }

    fn map_destination(&self, addr: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.map_ip(addr.ip()), addr.port())
    }

    /// IPv4 addresses become IPv4-mapped IPv6 on an IPv6 socket, as the kernel expects.
    fn map_ip(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) if self.ipv6 => IpAddr::V6(v4.to_ipv6_mapped()),
            ip => ip,
        }
    }
}

/// Asks for `buffer` bytes of send and receive buffer on `socket`, beyond Linux's
/// `net.core.{r,w}mem_max` where the process may (`SO_{RCV,SND}BUFFORCE`, `CAP_NET_ADMIN`).
/// Failing to get them is not fatal (the socket still works, only less well), so this only
/// logs: read the sizes granted back from the socket.
pub fn set_socket_buffers(socket: &Socket, buffer: usize) {
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::debug!("cannot set SO_SNDBUF: {e}");
    }
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::debug!("cannot set SO_RCVBUF: {e}");
    }
    // Linux reports twice the size it granted (the other half is bookkeeping).
    #[cfg(target_os = "linux")]
    {
        use rustix::net::sockopt;
        let granted = |size: io::Result<usize>| size.map_or(0, |s| s / 2);
        if granted(socket.send_buffer_size()) < buffer {
            if let Err(e) = sockopt::set_socket_send_buffer_size_force(socket, buffer) {
                tracing::debug!("cannot force SO_SNDBUF beyond wmem_max: {e}");
            }
        }
        if granted(socket.recv_buffer_size()) < buffer {
            if let Err(e) = sockopt::set_socket_recv_buffer_size_force(socket, buffer) {
                tracing::debug!("cannot force SO_RCVBUF beyond rmem_max: {e}");
            }
        }
    }
}

/// The transmit being sent and how far: `poll_send` resumes a split batch only when called
/// again with the same transmit over the same buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SendProgress {
    destination: Option<SocketAddr>,
    contents: usize,
    size: usize,
    segment_size: Option<usize>,
    sent: usize,
}

impl SendProgress {
    fn continues(&self, other: &Self) -> bool {
        self.sent > 0 && Self { sent: 0, ..*self } == *other
    }
}

/// Converts an ECN codepoint from `sss-proto`'s type to `quinn-udp`'s.
pub fn ecn_to_quinn(ecn: EcnCodepoint) -> quinn_udp::EcnCodepoint {
    match ecn {
        EcnCodepoint::Ect0 => quinn_udp::EcnCodepoint::Ect0,
        EcnCodepoint::Ect1 => quinn_udp::EcnCodepoint::Ect1,
        EcnCodepoint::Ce => quinn_udp::EcnCodepoint::Ce,
    }
}

/// Converts an ECN codepoint from `quinn-udp`'s type to `sss-proto`'s.
pub fn ecn_from_quinn(ecn: quinn_udp::EcnCodepoint) -> EcnCodepoint {
    match ecn {
        quinn_udp::EcnCodepoint::Ect0 => EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => EcnCodepoint::Ce,
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into plain IPv4.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
