//! Counters a channel keeps about itself.

use std::time::Duration;

use super::EcnState;

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
    /// Packets declared lost that the peer acknowledged afterwards: reordered or delayed,
    /// not lost (their frames were sent again all the same).
    pub spurious_losses: u64,
    /// Bytes in those packets.
    pub spurious_bytes: u64,
    /// Congestion events every lost packet of which was acknowledged afterwards. With
    /// [`ChannelConfig::spurious_loss_undo`](super::ChannelConfig::spurious_loss_undo) the
    /// controller undoes the reduction (if its recovery period has not ended yet).
    pub spurious_congestion_events: u64,
    /// Packet reordering threshold of loss detection now in force (RFC 9002
    /// kPacketThreshold; it rises on a path that reorders).
    pub packet_threshold: u64,
    /// Time threshold of loss detection now in force, in eighths of the round trip (RFC 9002
    /// kTimeThreshold: 9; it rises on a path that reorders, up to 16).
    pub time_threshold_eighths: u32,
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
    /// ECN on the current path: testing, validated (`Capable`), failed or disabled.
    pub ecn_state: EcnState,
    /// Packets sent marked ECT(0).
    pub ecn_marked_sent: u64,
    /// Authenticated packets received marked ECT(0).
    pub ecn_ect0_received: u64,
    /// Authenticated packets received marked ECT(1).
    pub ecn_ect1_received: u64,
    /// Authenticated packets received marked CE (congestion experienced).
    pub ecn_ce_received: u64,
    /// CE count the peer reported in its last validated ACK: our packets it received marked CE.
    pub ecn_ce_reported: u64,
    /// ACKs whose growing CE count reached the congestion controller as a congestion signal
    /// (it reduces the window at most once per round trip).
    pub ecn_congestion_signals: u64,
    /// Times ECN validation failed (a path that bleaches, drops or invents marks, or a peer
    /// that misreports them).
    pub ecn_failures: u64,
    /// Initiator: bytes of upper-layer frames sent as early data in the initiation.
    pub early_data_sent: u64,
    /// Responder: bytes of early data taken as the initiator's packet 0.
    pub early_data_received: u64,
}
