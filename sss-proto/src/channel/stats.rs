//! Counters a channel keeps about itself.

use std::time::Duration;

/// Statistics of one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Datagrams sent (handshake and data).
    pub packets_sent: u64,
    /// Bytes sent in those datagrams.
    pub bytes_sent: u64,
    /// Authenticated data packets received.
    pub packets_received: u64,
    /// Bytes in those packets.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Bytes in packets declared lost.
    pub bytes_lost: u64,
    /// Congestion events that reduced the window.
    pub congestion_events: u64,
    /// Probe timeouts that fired.
    pub ptos: u64,
    /// ACK frames sent.
    pub acks_sent: u64,
    /// Datagrams that failed authentication (forged, corrupted, or unknown key).
    pub dropped_unauthenticated: u64,
    /// Datagrams rejected by the replay window (duplicates or too old).
    pub dropped_replayed: u64,
    /// Datagrams that could not be parsed.
    pub dropped_malformed: u64,
    /// Completed key updates.
    pub key_updates: u64,
    /// Times the peer moved to a new address (path validations started).
    pub migrations: u64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window in bytes.
    pub cwnd: u64,
    /// Bytes in flight.
    pub bytes_in_flight: u64,
    /// Datagram size in use.
    pub mtu: u16,
    /// Largest GSO batch built so far, in datagrams.
    pub max_batch: u64,
}
