//! The Noise IK handshake (being written).
