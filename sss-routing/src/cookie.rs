//! The regserver's stateless cookies (spec/routing.md §4.1): an HMAC-SHA256 of the source
//! endpoint and the secret's epoch, under a secret rotated every
//! [`COOKIE_SECRET_LIFETIME`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;
use ring::hmac;
use sss_proto::crypto::noise::ct_eq;

use crate::wire::{Cookie, COOKIE_LEN};

/// How long one cookie secret is current. A cookie is accepted while its secret is current or
/// previous: at least this long after it was issued, at most twice this long.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Domain separation of the cookie MAC.
const LABEL: &[u8] = b"sss/1 routing cookie";

struct Secret {
    key: hmac::Key,
    epoch: u64,
}

impl Secret {
    fn cookie(&self, from: SocketAddr) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(LABEL);
        ctx.update(&self.epoch.to_be_bytes());
        match from.ip() {
            IpAddr::V4(ip) => {
                ctx.update(&[4]);
                ctx.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                ctx.update(&[6]);
                ctx.update(&ip.octets());
            }
        }
        ctx.update(&from.port().to_be_bytes());
        ctx.sign()
    }

    fn accepts(&self, from: SocketAddr, cookie: &Cookie) -> bool {
        let tag = self.cookie(from);
        ct_eq(&tag.as_ref()[..COOKIE_LEN], cookie)
    }
}

/// The current and previous cookie secrets.
pub(crate) struct CookieJar {
    current: Secret,
    previous: Option<Secret>,
    created: Instant,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("epoch", &self.current.epoch)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

fn draw(rng: &mut ChaCha20Rng, epoch: u64) -> Secret {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    Secret {
        key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        epoch,
    }
}

impl CookieJar {
    /// Draws the first secret.
    pub(crate) fn new(now: Instant, rng: &mut ChaCha20Rng) -> Self {
        Self {
            current: draw(rng, 0),
            previous: None,
            created: now,
        }
    }

    /// When the current secret is due for replacement.
    pub(crate) fn next_rotation(&self) -> Instant {
        self.created + COOKIE_SECRET_LIFETIME
    }

    /// Replaces the current secret once it is [`COOKIE_SECRET_LIFETIME`] old. The old one
    /// stays as the previous secret only if it was current until now (a lazily rotated secret
    /// may be much older, and its cookies must not live longer than twice the lifetime).
    pub(crate) fn rotate(&mut self, now: Instant, rng: &mut ChaCha20Rng) {
        let age = now.saturating_duration_since(self.created);
        if age < COOKIE_SECRET_LIFETIME {
            return;
        }
        let fresh = draw(rng, self.current.epoch.wrapping_add(1));
        let old = std::mem::replace(&mut self.current, fresh);
        self.previous = (age < 2 * COOKIE_SECRET_LIFETIME).then_some(old);
        self.created = now;
    }

    /// The cookie for `from` under the current secret.
    pub(crate) fn issue(&self, from: SocketAddr) -> Cookie {
        let tag = self.current.cookie(from);
        let mut out = [0u8; COOKIE_LEN];
        out.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        out
    }

    /// Whether `cookie` was issued for `from` under the current or the previous secret.
    pub(crate) fn check(&self, from: SocketAddr, cookie: &Cookie) -> bool {
        let current = self.current.accepts(from, cookie);
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|p| p.accepts(from, cookie));
        current | previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn cookie_is_bound_to_address_and_expires_after_two_rotations() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut jar = CookieJar::new(t0, &mut rng);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let c = jar.issue(a);
        assert!(jar.check(a, &c));
        assert!(!jar.check(b, &c), "another port");
        let mut bad = c;
        bad[0] ^= 1;
        assert!(!jar.check(a, &bad));

        jar.rotate(t0 + COOKIE_SECRET_LIFETIME, &mut rng);
        assert!(jar.check(a, &c), "previous secret still accepted");
        assert_ne!(jar.issue(a), c, "new secret, new cookie");
        jar.rotate(t0 + 2 * COOKIE_SECRET_LIFETIME, &mut rng);
        assert!(!jar.check(a, &c), "two rotations later");
    }

    #[test]
    fn a_late_rotation_drops_the_old_secret_at_once() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut jar = CookieJar::new(t0, &mut rng);
        let a: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let c = jar.issue(a);
        jar.rotate(t0 + 2 * COOKIE_SECRET_LIFETIME, &mut rng);
        assert!(!jar.check(a, &c));
    }
}
