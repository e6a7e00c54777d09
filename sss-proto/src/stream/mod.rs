//! The stream layer: sessions of hereditary streams over channels (see `spec/streams.md`).

pub mod datagram;
pub mod frames;
pub mod recv_buf;
pub mod send_buf;
