//! Stateless cookies (WireGuard §5.4.7 with HMAC-SHA256 in place of keyed BLAKE2s).
//!
//! Under load the responder answers an initiation without a valid mac2 with a cookie reply
//! instead of doing Diffie-Hellman work. The cookie is a MAC of the initiator's source address
//! under a secret that rotates every [`COOKIE_SECRET_LIFETIME`]; the initiator proves it can
//! receive at that address by putting `mac2 = MAC(cookie, message)` into its retry.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::crypto::noise::{ct_eq, mac16, Key};

use super::messages::{field, COOKIE_REPLY_LEN};
use super::{HandshakeError, TYPE_COOKIE_REPLY};

/// How long a responder's cookie secret is used before it is replaced; a cookie is accepted
/// while its secret is the current or the previous one. An initiator uses a cookie for at most
/// this long after receiving it.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// A cookie: 16 bytes bound to one source address.
pub type Cookie = [u8; 16];

/// The responder's rotating cookie secrets.
pub(crate) struct CookieSecrets {
    current: Key,
    previous: Option<Key>,
    created: Instant,
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSecrets")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

fn random_key(rng: &mut impl CryptoRngCore) -> Key {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut key[..]);
    key
}

/// `cookie = MAC(secret, source IP bytes (4 or 16) || source port (2, big-endian))`.
fn cookie(secret: &[u8; 32], from: SocketAddr) -> Cookie {
    let port = from.port().to_be_bytes();
    match from.ip() {
        IpAddr::V4(ip) => mac16(secret, &[&ip.octets(), &port]),
        IpAddr::V6(ip) => mac16(secret, &[&ip.octets(), &port]),
    }
}

impl CookieSecrets {
    /// Draws the first secret (32 bytes from `rng`).
    pub(crate) fn new(now: Instant, rng: &mut impl CryptoRngCore) -> Self {
        Self {
            current: random_key(rng),
            previous: None,
            created: now,
        }
    }

    /// Replaces the current secret once it is [`COOKIE_SECRET_LIFETIME`] old; the previous
    /// one is kept only if it was current until now (a lazily rotated secret may be older).
    pub(crate) fn rotate(&mut self, now: Instant, rng: &mut impl CryptoRngCore) {
        let age = now.saturating_duration_since(self.created);
        if age < COOKIE_SECRET_LIFETIME {
            return;
        }
        let fresh = random_key(rng);
        let old = std::mem::replace(&mut self.current, fresh);
        self.previous = (age < 2 * COOKIE_SECRET_LIFETIME).then_some(old);
        self.created = now;
    }

    /// The cookie for `from` under the current secret.
    pub(crate) fn current_cookie(&self, from: SocketAddr) -> Cookie {
        cookie(&self.current, from)
    }

    /// Whether `mac2` is `MAC(cookie, covered)` for a cookie of `from` made with the current
    /// or the previous secret.
    pub(crate) fn mac2_is_valid(&self, from: SocketAddr, covered: &[u8], mac2: &[u8]) -> bool {
        let current = ct_eq(&mac16(&self.current_cookie(from), &[covered]), mac2);
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|p| ct_eq(&mac16(&cookie(p, from), &[covered]), mac2));
        current | previous
    }
}

/// Appends a cookie reply: `type | reserved | receiver_index | nonce | XAEAD(key, nonce,
/// cookie, mac1)`, where `key = HASH("sss/1 cookie--" || responder static public)`.
pub(crate) fn write_cookie_reply(
    cookie_key: &[u8; 32],
    receiver_index: u32,
    mac1: &[u8],
    cookie: &Cookie,
    rng: &mut impl CryptoRngCore,
    out: &mut Vec<u8>,
) {
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let mut encrypted = *cookie;
    // msg.encrypted_cookie = XAEAD(HASH(LABEL_COOKIE || responder.static_public), msg.nonce, cookie, last_received_msg.mac1)
    let tag = XChaCha20Poly1305::new(cookie_key.into())
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut encrypted)
        .expect("a 16-byte cookie is within the AEAD limits");
    out.push(TYPE_COOKIE_REPLY);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&receiver_index.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&encrypted);
    out.extend_from_slice(&tag);
}

/// Checks a cookie reply's framing and returns its receiver index (no decryption).
pub(crate) fn cookie_reply_index(msg: &[u8]) -> Result<u32, HandshakeError> {
    if msg.len() != COOKIE_REPLY_LEN {
        return Err(HandshakeError::Malformed(
            "cookie reply has the wrong length",
        ));
    }
    if msg[field::TYPE] != TYPE_COOKIE_REPLY {
        return Err(HandshakeError::Malformed("not a cookie reply"));
    }
    if msg[field::RESERVED] != [0; 3] {
        return Err(HandshakeError::Malformed("reserved bytes are not zero"));
    }
    let mut index = [0u8; 4];
    index.copy_from_slice(&msg[field::COOKIE_RECEIVER]);
    Ok(u32::from_be_bytes(index))
}

/// Decrypts the cookie of a reply whose framing [`cookie_reply_index`] accepted, with the
/// mac1 of the initiation it answers as associated data.
pub(crate) fn open_cookie_reply(
    cookie_key: &[u8; 32],
    mac1: &[u8],
    msg: &[u8],
) -> Result<Cookie, HandshakeError> {
    let encrypted = &msg[field::COOKIE_ENCRYPTED];
    let mut cookie: Cookie = [0; 16];
    cookie.copy_from_slice(&encrypted[..16]);
    XChaCha20Poly1305::new(cookie_key.into())
        .decrypt_in_place_detached(
            XNonce::from_slice(&msg[field::COOKIE_NONCE]),
            mac1,
            &mut cookie,
            encrypted[16..].into(),
        )
        .map_err(|_| HandshakeError::Decrypt)?;
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn cookies_bind_address_and_survive_one_rotation() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new(t0, &mut rng);
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let c = secrets.current_cookie(a);
        let mac2 = mac16(&c, &[b"message"]);
        assert!(secrets.mac2_is_valid(a, b"message", &mac2));
        assert!(!secrets.mac2_is_valid(b, b"message", &mac2));
        assert!(!secrets.mac2_is_valid(a, b"messagf", &mac2));
        // Not yet due: nothing changes.
        secrets.rotate(t0 + Duration::from_secs(119), &mut rng);
        assert_eq!(secrets.current_cookie(a), c);
        // One rotation: the old cookie is still accepted as "previous".
        secrets.rotate(t0 + Duration::from_secs(120), &mut rng);
        assert_ne!(secrets.current_cookie(a), c);
        assert!(secrets.mac2_is_valid(a, b"message", &mac2));
        // Two rotations: it is gone.
        secrets.rotate(t0 + Duration::from_secs(240), &mut rng);
        assert!(!secrets.mac2_is_valid(a, b"message", &mac2));
    }

    #[test]
    fn a_long_idle_secret_is_not_kept_as_previous() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new(t0, &mut rng);
        let a: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let mac2 = mac16(&secrets.current_cookie(a), &[b"m"]);
        secrets.rotate(t0 + Duration::from_secs(1000), &mut rng);
        assert!(!secrets.mac2_is_valid(a, b"m", &mac2));
    }

    #[test]
    fn cookie_reply_round_trip_and_binding_to_mac1() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let key = [5u8; 32];
        let mut out = Vec::new();
        write_cookie_reply(&key, 77, &[1; 16], &[9; 16], &mut rng, &mut out);
        assert_eq!(out.len(), COOKIE_REPLY_LEN);
        assert_eq!(cookie_reply_index(&out), Ok(77));
        assert_eq!(open_cookie_reply(&key, &[1; 16], &out), Ok([9; 16]));
        assert_eq!(
            open_cookie_reply(&key, &[2; 16], &out),
            Err(HandshakeError::Decrypt)
        );
        assert_eq!(
            open_cookie_reply(&[6; 32], &[1; 16], &out),
            Err(HandshakeError::Decrypt)
        );
    }
}
