//! Channel configuration and its defaults.

use std::time::Duration;

use crate::recovery::cc::CongestionAlgorithm;

/// Tunables of a channel. The defaults suit the public Internet; tests shrink timers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Congestion controller (default CUBIC).
    pub congestion: CongestionAlgorithm,
    /// HyStart++ (RFC 9406) in CUBIC's initial slow start: leave it when the round trip
    /// grows, before the bottleneck's queue overflows (default on; NewReno keeps standard
    /// slow start, see [`CongestionAlgorithm::build_with`]).
    pub hystart: bool,
    /// RTT assumed before the first sample (RFC 9002 kInitialRtt: 333 ms).
    pub initial_rtt: Duration,
    /// Longest we delay an acknowledgement; sent to the peer in the handshake.
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting packets (RFC 9000 §13.2.2: 2).
    pub ack_eliciting_threshold: u32,
    /// Most ACK ranges per ACK frame.
    pub max_ack_ranges: usize,
    /// Close the channel after this long without hearing from the peer. The smaller of both
    /// hosts' values applies, but never less than three probe timeouts.
    pub idle_timeout: Duration,
    /// Send a PING after this long without sending anything (keeps NAT mappings alive).
    pub keepalive_interval: Option<Duration>,
    /// Largest UDP payload this host accepts; advertised in the handshake.
    pub max_udp_payload: u16,
    /// Datagram size every path must carry; the size used before discovery.
    pub base_udp_payload: u16,
    /// Probe the path MTU upward from `base_udp_payload`.
    pub mtu_discovery: bool,
    /// Rotate the packet keys after this many packets sent under one key.
    pub key_update_packets: u64,
    /// Rotate the packet keys after this long under one key.
    pub key_update_interval: Duration,
    /// First retransmission delay of a handshake initiation (then doubled).
    pub handshake_retry: Duration,
    /// Give up a handshake after this long.
    pub handshake_timeout: Duration,
    /// Reordering threshold in packets for loss detection (RFC 9002 kPacketThreshold), the
    /// value it starts at (and returns to); with `spurious_loss_undo` it rises on a path
    /// that reorders.
    pub packet_threshold: u64,
    /// Undo a congestion event found spurious (every packet it declared lost was
    /// acknowledged after all: the path reordered them) and raise the loss-detection
    /// thresholds towards the reordering observed, so that it is not taken for loss again
    /// (spec/recovery.md §2.5). Off: spurious losses are still counted
    /// ([`ChannelStats::spurious_losses`](super::ChannelStats::spurious_losses)) but change
    /// nothing. On by default.
    pub spurious_loss_undo: bool,
    /// AEAD suites this host offers (bit set of [`crate::crypto::aead::Suite::bit`]).
    pub suites: u8,
    /// Mark packets ECN-capable (ECT(0)) on paths that validate it, and react to CE marks
    /// (spec/recovery.md, "ECN"). Received marks are counted and reported either way.
    pub ecn: bool,
    /// Cut every packet that carries upper-layer data to the largest size whose payload is a
    /// whole number of 16-byte AEAD blocks, up to 15 bytes under the MTU (spec/channel.md,
    /// "Sending"): AES-256-GCM then seals and opens it without a partial last block, about
    /// 11 % less AEAD time per packet on this project's machine, for at most 1 % of the
    /// capacity. On by default (it was off while CUBIC grew too slowly after a loss, which
    /// with it let the two-flow fairness simulation end at 0.65/0.35; with CUBIC's growth
    /// fixed it ends at 0.55/0.45, as without it).
    pub whole_block_payloads: bool,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            congestion: CongestionAlgorithm::default(),
            hystart: true,
            initial_rtt: Duration::from_millis(333),
            max_ack_delay: Duration::from_millis(25),
            ack_eliciting_threshold: 2,
            max_ack_ranges: 64,
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: None,
            max_udp_payload: 1452,
            base_udp_payload: 1200,
            mtu_discovery: true,
            key_update_packets: 1 << 23,
            key_update_interval: Duration::from_secs(120),
            handshake_retry: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(20),
            packet_threshold: 3,
            spurious_loss_undo: true,
            suites: crate::crypto::aead::Suite::local_set(),
            ecn: true,
            whole_block_payloads: true,
        }
    }
}
