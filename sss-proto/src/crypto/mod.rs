//! Cryptographic building blocks: the data-path AEAD (from `ring`) and the Noise IK
//! symmetric state used by the handshake.

pub mod aead;
pub mod noise;
