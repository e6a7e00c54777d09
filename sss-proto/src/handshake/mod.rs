//! The one-round-trip SSS handshake: Noise `IK` (`Noise_IK_25519_ChaChaPoly_SHA256`) with
//! WireGuard-style mac1/mac2 and stateless cookies, specified in `spec/handshake.md`.
//!
//! ```text
//! Initiator                                              Responder
//! Initiation (0x01, 1200 bytes): e, es, s, ss, {Hello}  ──►  mac1 check (no DH)
//!                                                            [under load, no valid mac2:
//!            ◄── Cookie reply (0x03)                          cookie reply, no DH, no state]
//!                                                            decrypt, identity check, replay check
//!            ◄── Response (0x02): e, ee, se, {Reply}          respond(accept | refuse)
//! ```
//!
//! Both sides are sans-IO: they read and append bytes, take `now` and a random generator from
//! the caller, and keep no timers. The states are types: an [`Initiator`] awaits a response or
//! a cookie reply; a [`PendingInitiation`] is an authenticated, fresh initiation that the
//! application accepts or refuses with [`Responder::respond`], which consumes it.

use std::fmt;

use thiserror::Error;

use crate::crypto::aead::Secret;
use crate::crypto::noise::{hash, DecryptError, DhKey, LowOrderPoint};
use crate::identity::{Eid, Identity};

mod cookie;
mod initiator;
mod messages;
mod params;
mod replay;
mod responder;

pub use cookie::{Cookie, COOKIE_SECRET_LIFETIME};
pub use initiator::{Established, Initiator};
pub use messages::{
    field, Hello, RefuseCode, Reply, Timestamp, COOKIE_REPLY_LEN, INIT_PAYLOAD_LEN, MAX_NAME_LEN,
    MAX_RESPONSE_LEN, RESP_OVERHEAD,
};
pub use params::{param_id, TransportParams, MIN_UDP_PAYLOAD};
pub use replay::DEFAULT_REPLAY_TABLE_CAPACITY;
pub use responder::{Initiation, PendingInitiation, Responder, ResponderConfig};

/// Packet type of an initiation.
pub const TYPE_INITIATION: u8 = 0x01;
/// Packet type of a response.
pub const TYPE_RESPONSE: u8 = 0x02;
/// Packet type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 0x03;
/// Length of every initiation datagram.
pub const INITIATION_LEN: usize = 1200;
/// The Noise prologue: both sides mix it into the handshake hash first.
pub const PROLOGUE: &[u8] = b"sss/1 handshake";
/// Label of the mac1 key: `HASH(LABEL_MAC1 || receiver static public)`.
pub const LABEL_MAC1: &[u8; 14] = b"sss/1 mac1----";
/// Label of the cookie reply key: `HASH(LABEL_COOKIE || responder static public)`.
pub const LABEL_COOKIE: &[u8; 14] = b"sss/1 cookie--";

/// Why a handshake message was rejected or a handshake call failed.
///
/// `Malformed`, `Mac1`, `Decrypt`, `IdentityMismatch`, `Replay`, `LowOrderPoint` and
/// `WrongIndex` blame the received message (drop it silently); `SuiteNotOffered` blames the
/// peer; `InvalidArgument` is a mistake of the caller.
#[derive(Debug, Clone, Copy, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message does not have the layout of its type.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// mac1 is wrong: the sender does not know our static key, or the message was altered.
    #[error("handshake message has an invalid mac1")]
    Mac1,
    /// An encrypted part did not authenticate.
    #[error("handshake message failed to decrypt")]
    Decrypt,
    /// The initiator's EID does not belong to the static key that it proved it holds.
    #[error("initiator EID does not match its static key")]
    IdentityMismatch,
    /// The initiation is not newer than one already accepted from the same initiator.
    #[error("replayed or stale initiation")]
    Replay,
    /// A public key in the message is a low-order point (the DH result is all zeros).
    #[error("public key is a low-order point")]
    LowOrderPoint,
    /// The message is addressed to another handshake (its receiver index is not ours).
    #[error("handshake message for another index")]
    WrongIndex,
    /// The responder accepted with a suite the initiator did not offer.
    #[error("accepted suite was not offered")]
    SuiteNotOffered,
    /// The caller passed something the protocol cannot carry.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl From<LowOrderPoint> for HandshakeError {
    fn from(_: LowOrderPoint) -> Self {
        HandshakeError::LowOrderPoint
    }
}

impl From<DecryptError> for HandshakeError {
    fn from(_: DecryptError) -> Self {
        HandshakeError::Decrypt
    }
}

/// Transport keys from a completed handshake (Noise `Split()`), from one side's viewpoint.
pub struct Keys {
    /// The key this side encrypts with.
    pub send: Secret,
    /// The key this side decrypts with.
    pub recv: Secret,
    /// The final Noise handshake hash `h`: equal on both sides, unique to this handshake.
    pub handshake_hash: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// A host's static key material for the handshake, derived once from its [`Identity`].
#[derive(Clone)]
pub struct StaticKeys {
    secret: DhKey,
    public: [u8; 32],
    eid: Eid,
    /// `HASH(LABEL_MAC1 || public)`: checks mac1 of messages sent to us.
    mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE || public)`: encrypts our cookie replies.
    cookie_key: [u8; 32],
}

impl StaticKeys {
    /// The X25519 forms of `identity`'s keys and the keys derived from them.
    pub fn new(identity: &Identity) -> Self {
        let secret = DhKey::from_secret(&identity.x25519_secret());
        let public = *secret.public();
        Self {
            secret,
            public,
            eid: identity.eid(),
            mac1_key: hash(&[LABEL_MAC1, &public]),
            cookie_key: hash(&[LABEL_COOKIE, &public]),
        }
    }

    /// The EID these keys belong to.
    pub fn eid(&self) -> Eid {
        self.eid
    }

    /// The X25519 static public key (the Noise `s`).
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("eid", &self.eid)
            .finish_non_exhaustive()
    }
}

/// The receiver index of a response or cookie reply (for the endpoint to find the
/// [`Initiator`] it belongs to), or `None` for any other or a too short message. Nothing is
/// authenticated yet.
pub fn receiver_index(msg: &[u8]) -> Option<u32> {
    let range = match *msg.first()? {
        TYPE_RESPONSE => field::RESP_RECEIVER,
        TYPE_COOKIE_REPLY => field::COOKIE_RECEIVER,
        _ => return None,
    };
    let bytes: [u8; 4] = msg.get(range)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Checks the type and the reserved bytes common to every handshake message.
fn check_header(msg: &[u8], ty: u8, what: &'static str) -> Result<(), HandshakeError> {
    if msg.first() != Some(&ty) {
        return Err(HandshakeError::Malformed(what));
    }
    if msg.get(field::RESERVED) != Some(&[0u8; 3][..]) {
        return Err(HandshakeError::Malformed("reserved bytes are not zero"));
    }
    Ok(())
}

fn read_u32(msg: &[u8], range: std::ops::Range<usize>) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&msg[range]);
    u32::from_be_bytes(bytes)
}

fn read_key(msg: &[u8], range: std::ops::Range<usize>) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&msg[range]);
    bytes
}

#[cfg(test)]
mod tests;
