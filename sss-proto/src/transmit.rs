//! The shape of an outgoing datagram batch, mirroring `quinn_udp::Transmit`.

use std::net::{IpAddr, SocketAddr};

/// Explicit Congestion Notification codepoint of a datagram (RFC 3168).
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub enum EcnCodepoint {
    /// ECN-capable transport, codepoint ECT(0).
    Ect0,
    /// ECN-capable transport, codepoint ECT(1).
    Ect1,
    /// Congestion experienced.
    Ce,
}

/// One or more datagrams to send to one destination, written by a `poll_transmit` call into
/// the caller's buffer.
///
/// When `segment_size` is `Some(s)`, the first `size` bytes of the buffer hold `size / s`
/// datagrams of `s` bytes each, the last possibly shorter: one GSO batch.
#[must_use]
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct Transmit {
    /// Where to send the datagrams.
    pub destination: SocketAddr,
    /// Total number of bytes written to the buffer.
    pub size: usize,
    /// Segment size when the buffer holds several datagrams.
    pub segment_size: Option<usize>,
    /// ECN codepoint to set, if any.
    pub ecn: Option<EcnCodepoint>,
    /// Source address to send from, when the host has several.
    pub src_ip: Option<IpAddr>,
}

impl Transmit {
    /// Number of datagrams in the batch.
    pub fn datagram_count(&self) -> usize {
        match self.segment_size {
            Some(s) if s > 0 => self.size.div_ceil(s),
            _ => 1,
        }
    }
}
