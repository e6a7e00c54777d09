//! [`RecvBatch`]: owned receive buffers for one `recvmmsg` call, split into datagrams.

use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::task::{ready, Context, Poll};

use sss_proto::EcnCodepoint;

use super::{canonical_addr, ecn_from_quinn, RecvMeta, UdpSocket};

/// Buffers of a [`RecvBatch`] by default: quinn-udp's `recvmmsg` batch (32 on Linux).
pub const DEFAULT_BUFFERS: usize = quinn_udp::BATCH_SIZE;

/// Size of one receive buffer by default. A GRO buffer never exceeds 64 KiB (the kernel stops
/// coalescing at `gro_max_size`, 65536 by default, and at 64 segments), so this holds any
/// GRO batch as well as the largest UDP datagram.
pub const DEFAULT_BUFFER_SIZE: usize = 64 << 10;

/// Owned buffers for receiving up to [`DEFAULT_BUFFERS`] GRO batches in one `recvmmsg`.
///
/// Memory: buffers x buffer size, 2 MiB by default (quinn allocates about the same per
/// endpoint), allocated once and reused for every call.
#[derive(Debug)]
pub struct RecvBatch {
    storage: Vec<u8>,
    buffer_size: usize,
    meta: Vec<RecvMeta>,
    /// Buffers filled by the last receive.
    filled: usize,
}

/// One datagram of a [`RecvBatch`].
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The peer that sent it (canonical: IPv4 peers as IPv4 even on a dual-stack socket).
    pub from: SocketAddr,
    /// The local address it was sent to, when the platform reports it.
    pub dst_ip: Option<IpAddr>,
    /// Its ECN codepoint, if ECN-capable.
    pub ecn: Option<EcnCodepoint>,
    /// Its payload. Mutable so that it can be decrypted in place.
    pub data: &'a mut [u8],
}

/// One receive buffer of a [`RecvBatch`]: one or more datagrams from the same peer (a GRO
/// batch), each `stride` bytes but the last.
#[derive(Debug)]
pub struct GroBuffer<'a> {
    /// The peer that sent them (canonical).
    pub from: SocketAddr,
    /// The local address they were sent to, when the platform reports it.
    pub dst_ip: Option<IpAddr>,
    /// Their ECN codepoint.
    pub ecn: Option<EcnCodepoint>,
    /// The size of each datagram but the last (never 0).
    pub stride: usize,
    /// The datagrams, back to back.
    pub data: &'a mut [u8],
}

impl GroBuffer<'_> {
    /// Number of datagrams in the buffer.
    pub fn datagram_count(&self) -> usize {
        self.data.len().div_ceil(self.stride)
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// [`DEFAULT_BUFFERS`] buffers of [`DEFAULT_BUFFER_SIZE`] bytes.
    pub fn new() -> Self {
        Self::with_buffers(DEFAULT_BUFFERS, DEFAULT_BUFFER_SIZE)
    }

    /// `buffers` buffers (1 to [`DEFAULT_BUFFERS`]) of `buffer_size` bytes (at least 1).
    /// Buffers smaller than 64 KiB may truncate GRO batches; the lost tail is lost like any
    /// dropped datagram.
    pub fn with_buffers(buffers: usize, buffer_size: usize) -> Self {
        let buffers = buffers.clamp(1, DEFAULT_BUFFERS);
        let buffer_size = buffer_size.max(1);
        Self {
            storage: vec![0; buffers * buffer_size],
            buffer_size,
            meta: vec![RecvMeta::default(); buffers],
            filled: 0,
        }
    }

    /// Receives what is queued on `socket` (at least one datagram), replacing the previous
    /// contents; returns how many buffers were filled (each holds one or more datagrams).
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        socket: &UdpSocket,
    ) -> Poll<io::Result<usize>> {
        self.filled = 0;
        let mut chunks = self.storage.chunks_mut(self.buffer_size);
        let mut bufs: [IoSliceMut<'_>; DEFAULT_BUFFERS] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let count = self.meta.len();
        let filled = ready!(socket.poll_recv(cx, &mut bufs[..count], &mut self.meta))?;
        self.filled = filled.min(count);
        Poll::Ready(Ok(self.filled))
    }

    /// Receives (see [`RecvBatch::poll_recv`]), waiting for data.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        poll_fn(|cx| self.poll_recv(cx, socket)).await
    }

    /// The raw metadata of the buffers filled by the last receive.
    pub fn meta(&self) -> &[RecvMeta] {
        &self.meta[..self.filled]
    }

    /// Number of datagrams received by the last receive (empty datagrams not counted).
    pub fn datagram_count(&self) -> usize {
        self.meta()
            .iter()
            .map(|m| {
                let len = m.len.min(self.buffer_size);
                if len == 0 {
                    0
                } else {
                    len.div_ceil(stride(m, len))
                }
            })
            .sum()
    }

    /// Total payload bytes received by the last receive.
    pub fn byte_count(&self) -> usize {
        self.meta()
            .iter()
            .map(|m| m.len.min(self.buffer_size))
            .sum()
    }

    /// The buffers filled by the last receive, whole (relays forward a GRO batch as one GSO
    /// batch without splitting it). Empty buffers are skipped.
    pub fn buffers(&mut self) -> impl Iterator<Item = GroBuffer<'_>> + '_ {
        let buffer_size = self.buffer_size;
        self.storage
            .chunks_mut(buffer_size)
            .zip(&self.meta[..self.filled])
            .filter(|(_, m)| m.len > 0)
            .map(move |(buf, m)| {
                let len = m.len.min(buffer_size);
                GroBuffer {
                    from: canonical_addr(m.addr),
                    dst_ip: m.dst_ip.map(|ip| ip.to_canonical()),
                    ecn: m.ecn.map(ecn_from_quinn),
                    stride: stride(m, len),
                    data: &mut buf[..len],
                }
            })
    }

    /// The datagrams of the last receive, in arrival order. Zero-length datagrams are
    /// skipped: no SSS packet is empty.
    pub fn datagrams(&mut self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        self.buffers().flat_map(|b| {
            let (from, dst_ip, ecn) = (b.from, b.dst_ip, b.ecn);
            b.data.chunks_mut(b.stride).map(move |data| Datagram {
                from,
                dst_ip,
                ecn,
                data,
            })
        })
    }
}

/// The datagram size within a buffer of `len` bytes; never 0.
fn stride(meta: &RecvMeta, len: usize) -> usize {
    if meta.stride == 0 {
        len.max(1)
    } else {
        meta.stride
    }
}
