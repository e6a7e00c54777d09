//! The data-path AEAD: ChaCha20-Poly1305 (mandatory) and AES-256-GCM (negotiated when both
//! hosts have hardware AES), both from `ring`.
//!
//! The nonce of a packet is its full 64-bit packet number, big-endian in the last 8 bytes of
//! the 12-byte nonce (the first 4 are zero), as in WireGuard. A packet number is never used
//! twice under one key, so nonces never repeat. Keys are rotated with [`next_secret`].

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of an authentication tag.
pub const TAG_LEN: usize = 16;

/// The AEAD algorithms a channel can use.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub enum Suite {
    /// ChaCha20-Poly1305 (RFC 8439). Every host supports it.
    ChaCha20Poly1305,
    /// AES-256-GCM. Offered only where the CPU has AES instructions.
    Aes256Gcm,
}

impl Suite {
    /// Bit of this suite in the handshake's suite set.
    pub const fn bit(self) -> u8 {
        match self {
            Suite::ChaCha20Poly1305 => 0x01,
            Suite::Aes256Gcm => 0x02,
        }
    }

    /// The suites present in a suite set, in order of preference (fastest first).
    pub fn from_set(set: u8) -> impl Iterator<Item = Suite> {
        [Suite::Aes256Gcm, Suite::ChaCha20Poly1305]
            .into_iter()
            .filter(move |s| set & s.bit() != 0)
    }

    /// Chooses the suite for a channel from the two hosts' suite sets: AES-256-GCM when both
    /// offer it, else ChaCha20-Poly1305 when both offer it.
    pub fn negotiate(ours: u8, theirs: u8) -> Option<Suite> {
        Suite::from_set(ours & theirs).next()
    }

    /// The suite set this machine offers: ChaCha20-Poly1305 always, AES-256-GCM when the CPU
    /// has AES and carry-less multiplication instructions.
    pub fn local_set() -> u8 {
        let mut set = Suite::ChaCha20Poly1305.bit();
        if hardware_aes() {
            set |= Suite::Aes256Gcm.bit();
        }
        set
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

/// Whether the CPU has hardware AES-GCM support (this inspects CPU features, not the OS).
pub fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A packet failed authentication.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Error)]
#[error("packet authentication failed")]
pub struct OpenError;

/// A 32-byte traffic secret from which packet keys (and their successors) are made.
pub type Secret = Zeroizing<[u8; 32]>;

/// The secret that follows `secret` after a key update:
/// `HMAC-SHA256(secret, "sss key update" || 0x01)`, an HKDF-Expand with one output block.
pub fn next_secret(secret: &[u8; 32]) -> Secret {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, b"sss key update\x01");
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// One direction's packet protection key.
pub struct PacketKey {
    key: LessSafeKey,
    suite: Suite,
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// The nonce: four zero bytes, then the packet number big-endian. Built as the top 12 bytes
/// of one 16-byte integer, so it is stored whole rather than as a 4-byte and an 8-byte store
/// (which the AEAD's wider reads of the nonce could not take from the store buffer, stalling
/// until every earlier store, such as the payload just written, reached the cache).
#[inline]
fn nonce(packet_number: u64) -> Nonce {
    let wide = (u128::from(packet_number) << 32).to_be_bytes();
    let mut n = [0u8; 12];
    n.copy_from_slice(&wide[..12]);
    Nonce::assume_unique_for_key(n)
}

impl PacketKey {
    /// Makes a key for `suite` from a 32-byte secret.
    pub fn new(suite: Suite, secret: &[u8; 32]) -> Self {
        let unbound =
            UnboundKey::new(suite.algorithm(), secret).expect("32-byte keys fit both suites");
        Self {
            key: LessSafeKey::new(unbound),
            suite,
        }
    }

    /// The algorithm.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Encrypts `payload` in place and returns its tag, which the caller appends.
    /// `header` is authenticated but not encrypted.
    pub fn seal(&self, packet_number: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(packet_number), Aad::from(header), payload)
            .expect("payloads are far below the AEAD length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `ciphertext_and_tag` in place and returns the plaintext slice.
    pub fn open<'a>(
        &self,
        packet_number: u64,
        header: &[u8],
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        self.key
            .open_in_place(nonce(packet_number), Aad::from(header), ciphertext_and_tag)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_both_suites() {
        for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
            let key = PacketKey::new(suite, &[7u8; 32]);
            let mut buf = b"hello world".to_vec();
            let tag = key.seal(42, b"hdr", &mut buf);
            assert_ne!(&buf[..], b"hello world");
            buf.extend_from_slice(&tag);
            let mut copy = buf.clone();
            assert_eq!(key.open(42, b"hdr", &mut copy).unwrap(), b"hello world");
            let mut copy = buf.clone();
            assert_eq!(key.open(43, b"hdr", &mut copy), Err(OpenError));
            let mut copy = buf.clone();
            assert_eq!(key.open(42, b"hdX", &mut copy), Err(OpenError));
            let mut copy = buf.clone();
            copy[0] ^= 1;
            assert_eq!(key.open(42, b"hdr", &mut copy), Err(OpenError));
        }
    }

    #[test]
    fn negotiation_prefers_aes_when_both_offer_it() {
        let both = Suite::ChaCha20Poly1305.bit() | Suite::Aes256Gcm.bit();
        let chacha = Suite::ChaCha20Poly1305.bit();
        assert_eq!(Suite::negotiate(both, both), Some(Suite::Aes256Gcm));
        assert_eq!(
            Suite::negotiate(both, chacha),
            Some(Suite::ChaCha20Poly1305)
        );
        assert_eq!(Suite::negotiate(Suite::Aes256Gcm.bit(), chacha), None);
    }

    #[test]
    fn key_update_changes_the_secret_deterministically() {
        let s0 = [1u8; 32];
        let s1 = next_secret(&s0);
        assert_ne!(*s1, s0);
        assert_eq!(*next_secret(&s0), *s1);
    }
}
