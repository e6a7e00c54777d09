//! Loss recovery and congestion control building blocks (RFC 9002): RTT estimation,
//! congestion controllers and pacing.
