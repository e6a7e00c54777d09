//! Noise protocol framework primitives for `Noise_IK_25519_ChaChaPoly_SHA256` (Noise revision
//! 34): the hash and HKDF of §4.3, the `CipherState`/`SymmetricState` objects of §5.1-5.2 and
//! the X25519 `DH` of §4.1. The message patterns themselves live in [`crate::handshake`].
//!
//! Everything here is a pure function of its inputs; secrets are wiped when dropped.

use std::sync::Arc;

use rand_core::CryptoRngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::{digest, hmac};
use zeroize::Zeroizing;

use super::aead::TAG_LEN;

/// HASHLEN for SHA-256.
pub const HASH_LEN: usize = 32;
/// DHLEN for X25519.
pub const DH_LEN: usize = 32;
/// The Noise protocol name. It is exactly [`HASH_LEN`] bytes long, so it is used as the
/// initial `h` without hashing (Noise §5.2 `InitializeSymmetric`).
pub const PROTOCOL_NAME: &[u8; 32] = b"Noise_IK_25519_ChaChaPoly_SHA256";

/// A 32-byte secret that is wiped on drop.
pub type Key = Zeroizing<[u8; 32]>;

/// `HASH(a || b)` with SHA-256.
pub fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `HMAC-SHA256(key, parts[0] || parts[1] || ..)`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for part in parts {
        ctx.update(part);
    }
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// `HMAC-SHA256(key, parts..)` truncated to its first 16 bytes: the MAC of mac1, mac2 and
/// cookies.
pub fn mac16(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let full = hmac(key, parts);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Noise §4.3 `HKDF(chaining_key, input_key_material, 2)`.
pub fn hkdf2(chaining_key: &[u8; HASH_LEN], ikm: &[u8]) -> (Key, Key) {
    // temp_key = HMAC-HASH(chaining_key, input_key_material)
    let temp_key = hmac(chaining_key, &[ikm]);
    // output1 = HMAC-HASH(temp_key, byte(0x01))
    let output1 = hmac(&*temp_key, &[&[0x01]]);
    // output2 = HMAC-HASH(temp_key, output1 || byte(0x02))
    let output2 = hmac(&*temp_key, &[&*output1, &[0x02]]);
    (output1, output2)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// A Diffie-Hellman result was the all-zero value: the peer's public key is a low-order
/// point, which would make the "shared" secret known to everyone.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct LowOrderPoint;

/// An X25519 key pair (Noise's `GENERATE_KEYPAIR` output, or a static key), ready for
/// [`dh`]. Cloning shares the private key.
///
/// With the `aws-lc` feature (on by default) X25519 is computed by aws-lc-rs
/// (`agreement::PrivateKey`, which keeps a private key for any number of agreements): its
/// scalar multiplication takes about half the time of the x25519-dalek ladder on the x86-64
/// machines we measure on, and a handshake does four on each side. Without it, by
/// x25519-dalek (pure Rust). The results are those of RFC 7748 (clamped scalar, the public
/// key's top bit ignored) either way; `tests::dh_agrees_with_x25519_dalek` checks it.
#[derive(Clone)]
pub struct DhKey {
    private: Arc<backend::Private>,
    public: [u8; DH_LEN],
}

impl DhKey {
    /// The key pair whose private key is `secret` (clamped as X25519 does). Costs one
    /// fixed-base scalar multiplication (the public key).
    pub fn from_secret(secret: &[u8; DH_LEN]) -> Self {
        let (private, public) = backend::key_pair(secret);
        Self {
            private: Arc::new(private),
            public,
        }
    }

    /// A fresh key pair (Noise's `GENERATE_KEYPAIR`): 32 bytes straight from `rng` (clamped
    /// by X25519), so that tests can reproduce it.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; DH_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        Self::from_secret(&bytes)
    }

    /// The public key (`DH_PUBKEY`).
    pub fn public(&self) -> &[u8; DH_LEN] {
        &self.public
    }
}

impl std::fmt::Debug for DhKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhKey").finish_non_exhaustive()
    }
}

/// Noise §4.1 `DH(key_pair, public_key)` with X25519, rejecting all-zero outputs.
pub fn dh(key: &DhKey, public: &[u8; DH_LEN]) -> Result<Key, LowOrderPoint> {
    backend::agree(&key.private, public)
}

#[cfg(feature = "aws-lc")]
mod backend {
    use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
    use zeroize::Zeroizing;

    use super::{Key, LowOrderPoint, DH_LEN};

    pub(super) type Private = agreement::PrivateKey;

    pub(super) fn key_pair(secret: &[u8; DH_LEN]) -> (Private, [u8; DH_LEN]) {
        let private = agreement::PrivateKey::from_private_key(&X25519, secret)
            .expect("any 32 bytes are an X25519 private key");
        let mut public = [0u8; DH_LEN];
        public.copy_from_slice(
            private
                .compute_public_key()
                .expect("an X25519 private key has a public key")
                .as_ref(),
        );
        (private, public)
    }

    pub(super) fn agree(private: &Private, public: &[u8; DH_LEN]) -> Result<Key, LowOrderPoint> {
        // aws-lc refuses an all-zero result (RFC 7748 §6.1: a low-order point), and nothing
        // else: a 32-byte X25519 public key always parses.
        agreement::agree(
            private,
            UnparsedPublicKey::new(&X25519, public),
            LowOrderPoint,
            |shared| {
                let mut out = Zeroizing::new([0u8; DH_LEN]);
                out.copy_from_slice(shared);
                Ok(out)
            },
        )
    }
}

#[cfg(not(feature = "aws-lc"))]
mod backend {
    use x25519_dalek::{PublicKey, StaticSecret};
    use zeroize::Zeroizing;

    use super::{Key, LowOrderPoint, DH_LEN};

    pub(super) type Private = StaticSecret;

    pub(super) fn key_pair(secret: &[u8; DH_LEN]) -> (Private, [u8; DH_LEN]) {
        let private = StaticSecret::from(*secret);
        let public = PublicKey::from(&private).to_bytes();
        (private, public)
    }

    pub(super) fn agree(private: &Private, public: &[u8; DH_LEN]) -> Result<Key, LowOrderPoint> {
        let shared = private.diffie_hellman(&PublicKey::from(*public));
        if !shared.was_contributory() {
            return Err(LowOrderPoint);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

/// The AEAD of the handshake could not authenticate a ciphertext.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct DecryptError;

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key"))
}

/// The Noise ChaChaPoly nonce: 32 bits of zeros followed by the little-endian 64-bit counter.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Noise §5.2 `SymmetricState` (with its single `CipherState` inlined as `k`, `n`).
#[derive(Clone)]
pub struct SymmetricState {
    ck: Key,
    h: [u8; HASH_LEN],
    k: Option<Key>,
    n: u64,
}

impl std::fmt::Debug for SymmetricState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymmetricState").finish_non_exhaustive()
    }
}

impl SymmetricState {
    /// `InitializeSymmetric(PROTOCOL_NAME)` followed by `MixHash(prologue)`.
    pub fn new(prologue: &[u8]) -> Self {
        // h = protocol_name (exactly HASHLEN bytes, so no hashing); ck = h
        let mut state = Self {
            ck: Zeroizing::new(*PROTOCOL_NAME),
            h: *PROTOCOL_NAME,
            k: None,
            n: 0,
        };
        state.mix_hash(prologue);
        state
    }

    /// `MixHash(data)`: `h = HASH(h || data)`.
    pub fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash(&[&self.h, data]);
    }

    /// `MixKey(input_key_material)`: `ck, temp_k = HKDF(ck, ikm, 2)`; `InitializeKey(temp_k)`.
    pub fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, temp_k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.k = Some(temp_k);
        self.n = 0;
    }

    /// `EncryptAndHash(plaintext)`: encrypts `buf` in place with `ad = h` and appends the tag,
    /// then `MixHash(ciphertext)`. Before the first `MixKey` the plaintext is passed through,
    /// as Noise says (IK always has a key by the time it encrypts).
    pub fn encrypt_and_hash(&mut self, buf: &mut Vec<u8>, start: usize) {
        if let Some(k) = &self.k {
            let tag = cipher(k)
                .seal_in_place_separate_tag(nonce(self.n), Aad::from(&self.h), &mut buf[start..])
                .expect("handshake messages are far below the AEAD length limit");
            buf.extend_from_slice(tag.as_ref());
            // Noise forbids n = 2^64 - 1; a handshake encrypts at most twice per key.
            self.n += 1;
        }
        self.mix_hash(&buf[start..]);
    }

    /// `DecryptAndHash(ciphertext)`: returns the plaintext of `ciphertext` (which includes the
    /// tag), then `MixHash(ciphertext)`. On failure the state is unchanged.
    pub fn decrypt_and_hash(
        &mut self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        if let Some(k) = &self.k {
            if ciphertext.len() < TAG_LEN {
                return Err(DecryptError);
            }
            let len = cipher(k)
                .open_in_place(nonce(self.n), Aad::from(&self.h), &mut buf[..])
                .map_err(|_| DecryptError)?
                .len();
            buf.truncate(len);
            self.n += 1;
        }
        self.mix_hash(ciphertext);
        Ok(buf)
    }

    /// `Split()`: the two transport keys `(k1, k2)`; the initiator sends with `k1`.
    pub fn split(&self) -> (Key, Key) {
        hkdf2(&self.ck, &[])
    }

    /// The handshake hash `h`, a transcript digest usable for channel binding.
    pub fn handshake_hash(&self) -> [u8; HASH_LEN] {
        self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_matches_rfc5869_structure() {
        // Noise's HKDF is RFC 5869 HKDF-SHA256 with salt = ck and empty info: Extract, then
        // the Expand blocks T(1), T(2). Checked against ring's independent HKDF.
        let ck = [7u8; 32];
        let ikm = b"input key material";
        let (o1, o2) = hkdf2(&ck, ikm);
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &ck).extract(ikm);
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let mut okm = [0u8; 64];
        prk.expand(&[], Len(64)).unwrap().fill(&mut okm).unwrap();
        assert_eq!(&okm[..32], &o1[..]);
        assert_eq!(&okm[32..], &o2[..]);
    }

    #[test]
    fn encrypt_then_decrypt_and_hashes_agree() {
        let mut a = SymmetricState::new(b"prologue");
        let mut b = SymmetricState::new(b"prologue");
        a.mix_key(b"shared");
        b.mix_key(b"shared");
        let mut buf = b"hdr".to_vec();
        buf.extend_from_slice(b"secret payload");
        a.encrypt_and_hash(&mut buf, 3);
        assert_eq!(buf.len(), 3 + 14 + TAG_LEN);
        let plain = b.decrypt_and_hash(&buf[3..]).unwrap();
        assert_eq!(&plain[..], b"secret payload");
        assert_eq!(a.handshake_hash(), b.handshake_hash());
        assert_eq!(*a.split().0, *b.split().0);
        // The second message under the same key uses nonce 1: replaying nonce 0 fails.
        let mut again = Vec::new();
        again.extend_from_slice(b"x");
        a.encrypt_and_hash(&mut again, 0);
        let mut c = SymmetricState::new(b"prologue");
        c.mix_key(b"shared");
        assert_eq!(c.decrypt_and_hash(&again), Err(DecryptError));
    }

    #[test]
    fn low_order_points_are_rejected() {
        let secret = DhKey::from_secret(&[9u8; 32]);
        assert_eq!(dh(&secret, &[0u8; 32]), Err(LowOrderPoint));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(dh(&secret, &one), Err(LowOrderPoint));
        // The other points of small order (RFC 7748 §6.1 lists them; the top bit is
        // ignored, so each also appears with it set).
        let order8 = [
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        for hex in order8 {
            let mut p = [0u8; 32];
            for (i, b) in p.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            for top in [0, 0x80] {
                let mut q = p;
                q[31] |= top;
                let ours = dh(&secret, &q);
                let dalek = x25519_dalek::StaticSecret::from([9u8; 32])
                    .diffie_hellman(&x25519_dalek::PublicKey::from(q));
                assert_eq!(ours.is_err(), !dalek.was_contributory(), "{hex} {top}");
            }
        }
        let public = *DhKey::from_secret(&[3u8; 32]).public();
        assert!(dh(&secret, &public).is_ok());
    }

    #[test]
    fn dh_agrees_with_x25519_dalek() {
        // Public keys and shared secrets equal x25519-dalek's for unclamped secrets and
        // arbitrary (also non-canonical and top-bit-set) peer keys.
        let mut x = 0x0123_4567_89ab_cdefu64;
        let mut next = || {
            let mut out = [0u8; 32];
            for b in out.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            out
        };
        for i in 0..64 {
            let secret = next();
            let mut peer = next();
            if i % 4 == 0 {
                peer[31] |= 0x80;
            }
            if i % 8 == 1 {
                // At or just above p = 2^255 - 19: not reduced.
                peer = [0xff; 32];
                peer[0] = 0xed - (i as u8 % 3);
                peer[31] = 0x7f;
            }
            let ours = DhKey::from_secret(&secret);
            let theirs = x25519_dalek::StaticSecret::from(secret);
            assert_eq!(
                *ours.public(),
                x25519_dalek::PublicKey::from(&theirs).to_bytes()
            );
            let shared = theirs.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
            match dh(&ours, &peer) {
                Ok(k) => assert_eq!(*k, shared.to_bytes()),
                Err(LowOrderPoint) => assert!(!shared.was_contributory()),
            }
        }
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
