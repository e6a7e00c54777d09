//! What the handshake messages carry: the byte layout of the three packet types (the
//! [`field`] module) and the encrypted payloads ([`Timestamp`], [`Hello`], [`Reply`]).

use crate::codec::{varint_len, write_varint, Reader};
use crate::crypto::aead::{Suite, TAG_LEN};
use crate::identity::{Eid, EID_LEN};

use super::params::TransportParams;
use super::HandshakeError;

/// Byte ranges of the handshake packets (smoltcp's `field` idiom). Message lengths are
/// checked before any range is used.
pub mod field {
    use core::ops::Range;

    /// Packet type, all messages.
    pub const TYPE: usize = 0;
    /// Three reserved bytes, zero, all messages.
    pub const RESERVED: Range<usize> = 1..4;

    /// Initiation: the initiator's index.
    pub const INIT_SENDER: Range<usize> = 4..8;
    /// Initiation: the initiator's ephemeral public key.
    pub const INIT_EPHEMERAL: Range<usize> = 8..40;
    /// Initiation: the Noise part (ephemeral, encrypted static, encrypted payload).
    pub const INIT_NOISE: Range<usize> = 8..1168;
    /// Initiation: the encrypted static key.
    pub const INIT_STATIC: Range<usize> = 40..88;
    /// Initiation: the encrypted payload.
    pub const INIT_PAYLOAD: Range<usize> = 88..1168;
    /// Initiation: mac1.
    pub const INIT_MAC1: Range<usize> = 1168..1184;
    /// Initiation: mac2.
    pub const INIT_MAC2: Range<usize> = 1184..1200;

    /// Response: the responder's index.
    pub const RESP_SENDER: Range<usize> = 4..8;
    /// Response: the initiator's index (echoed).
    pub const RESP_RECEIVER: Range<usize> = 8..12;
    /// Response: the responder's ephemeral public key; the encrypted payload follows it and
    /// runs to 32 bytes before the end (mac1, mac2).
    pub const RESP_EPHEMERAL: Range<usize> = 12..44;

    /// Cookie reply: the initiator's index (echoed).
    pub const COOKIE_RECEIVER: Range<usize> = 4..8;
    /// Cookie reply: the XChaCha20-Poly1305 nonce.
    pub const COOKIE_NONCE: Range<usize> = 8..32;
    /// Cookie reply: the encrypted cookie and its tag.
    pub const COOKIE_ENCRYPTED: Range<usize> = 32..64;
}

/// Plaintext length of the initiation's payload, padding included.
pub const INIT_PAYLOAD_LEN: usize = field::INIT_PAYLOAD.end - field::INIT_PAYLOAD.start - TAG_LEN;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = field::COOKIE_ENCRYPTED.end;
/// Length of a response without its encrypted payload's plaintext.
pub const RESP_OVERHEAD: usize = field::RESP_EPHEMERAL.end + TAG_LEN + 32;
/// The longest response: never more than the initiation it answers.
pub const MAX_RESPONSE_LEN: usize = super::INITIATION_LEN;
/// The longest service name, protocol name and refusal reason, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

/// A TAI64N timestamp: 8 bytes big-endian `2^62 + unix seconds`, then 4 bytes big-endian
/// nanoseconds. Byte order equals time order, so the derived `Ord` compares times.
#[derive(Copy, Clone, Eq, PartialEq, Ord, PartialOrd, Hash)]
pub struct Timestamp([u8; 12]);

const TAI64_BASE: u64 = 1 << 62;

impl Timestamp {
    /// The timestamp of a time given in nanoseconds since the Unix epoch.
    pub fn from_unix_nanos(n: u64) -> Self {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&(TAI64_BASE + n / 1_000_000_000).to_be_bytes());
        bytes[8..].copy_from_slice(&((n % 1_000_000_000) as u32).to_be_bytes());
        Self(bytes)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> u64 {
        let (secs, nanos) = self.parts();
        // Both parts were range-checked when the timestamp was made.
        (secs - TAI64_BASE) * 1_000_000_000 + u64::from(nanos)
    }

    /// Parses the wire form, rejecting anything [`Timestamp::from_unix_nanos`] cannot make
    /// (times before 1970, after the year 2554, or nanoseconds >= 10^9).
    pub fn from_bytes(bytes: [u8; 12]) -> Option<Self> {
        let t = Self(bytes);
        let (secs, nanos) = t.parts();
        let unix_secs = secs.checked_sub(TAI64_BASE)?;
        let whole = unix_secs.checked_mul(1_000_000_000)?;
        whole.checked_add(u64::from(nanos))?;
        (nanos < 1_000_000_000).then_some(t)
    }

    /// The wire form.
    pub fn to_bytes(self) -> [u8; 12] {
        self.0
    }

    fn parts(&self) -> (u64, u32) {
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&self.0[..8]);
        let mut nanos = [0u8; 4];
        nanos.copy_from_slice(&self.0[8..]);
        (u64::from_be_bytes(secs), u32::from_be_bytes(nanos))
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Timestamp({}ns)", self.unix_nanos())
    }
}

/// What the initiator asks for: a service and a protocol on it, and its transport
/// parameters. Carried encrypted in the initiation.
#[derive(Debug, Clone, Eq, PartialEq, Hash)]
pub struct Hello {
    /// The service (at most 255 bytes of UTF-8).
    pub service: String,
    /// The application protocol spoken on the service (at most 255 bytes of UTF-8).
    pub protocol: String,
    /// The initiator's transport parameters.
    pub params: TransportParams,
}

/// Why a responder refused an initiation. Unknown values round-trip; 0 means "accept" on the
/// wire and is not a valid refusal.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub struct RefuseCode(pub u8);

impl RefuseCode {
    /// No such service here.
    pub const UNKNOWN_SERVICE: Self = Self(1);
    /// The responder does not want this initiator or this protocol.
    pub const REFUSED: Self = Self(2);
    /// The responder is overloaded; try later.
    pub const BUSY: Self = Self(3);
}

/// The responder's answer to a [`Hello`]. Carried encrypted in the response.
#[derive(Debug, Clone, Eq, PartialEq, Hash)]
pub enum Reply {
    /// The channel is open with this suite; the responder's transport parameters.
    Accept {
        /// The AEAD suite of the channel (one the initiator offered).
        suite: Suite,
        /// The responder's transport parameters.
        params: TransportParams,
    },
    /// No channel.
    Refuse {
        /// Why (never 0).
        code: RefuseCode,
        /// Human-readable detail (at most 255 bytes of UTF-8).
        reason: String,
    },
}

fn write_name(out: &mut Vec<u8>, name: &str, what: &'static str) -> Result<(), HandshakeError> {
    if name.len() > MAX_NAME_LEN {
        return Err(HandshakeError::InvalidArgument(what));
    }
    write_varint(out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn read_name(r: &mut Reader<'_>, what: &'static str) -> Result<String, HandshakeError> {
    let bytes = r
        .varint_bytes()
        .map_err(|_| HandshakeError::Malformed(what))?;
    if bytes.len() > MAX_NAME_LEN {
        return Err(HandshakeError::Malformed(what));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| HandshakeError::Malformed(what))
}

/// The plaintext of an initiation's payload after decryption.
#[derive(Debug, Clone, Eq, PartialEq)]
pub(crate) struct InitPayload {
    pub(crate) timestamp: Timestamp,
    pub(crate) eid: Eid,
    pub(crate) hello: Hello,
    /// Early data: channel frames of the initiator's packet number 0 (`spec/handshake.md`
    /// §3.1), empty if none.
    pub(crate) early: Vec<u8>,
}

/// Room for early data in the initiation of `hello`: what the payload's fields leave of
/// [`INIT_PAYLOAD_LEN`], less the length prefix. An error if the fields alone do not fit.
pub(crate) fn early_capacity(hello: &Hello) -> Result<usize, HandshakeError> {
    if hello.service.len() > MAX_NAME_LEN || hello.protocol.len() > MAX_NAME_LEN {
        return Err(HandshakeError::InvalidArgument(
            "name longer than 255 bytes",
        ));
    }
    let mut params = Vec::new();
    hello.params.encode(&mut params);
    let fixed = 12
        + EID_LEN
        + varint_len(hello.service.len() as u64)
        + hello.service.len()
        + varint_len(hello.protocol.len() as u64)
        + hello.protocol.len()
        + params.len();
    let rest = INIT_PAYLOAD_LEN
        .checked_sub(fixed)
        .ok_or(HandshakeError::InvalidArgument(
            "transport parameters too large",
        ))?;
    // The prefix of `rest` bytes is at least as long as that of anything shorter.
    Ok(rest.saturating_sub(varint_len(rest as u64)))
}

impl InitPayload {
    /// Appends exactly [`INIT_PAYLOAD_LEN`] bytes: the fields, the early data, then zero
    /// padding.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
        let start = out.len();
        out.extend_from_slice(&self.timestamp.0);
        out.extend_from_slice(self.eid.as_bytes());
        write_name(
            out,
            &self.hello.service,
            "service name longer than 255 bytes",
        )?;
        write_name(
            out,
            &self.hello.protocol,
            "protocol name longer than 255 bytes",
        )?;
        self.hello.params.encode(out);
        // An empty early field is one zero byte, the same as padding: an initiation without
        // early data is what it was before the field existed.
        write_varint(out, self.early.len() as u64);
        out.extend_from_slice(&self.early);
        let end = start + INIT_PAYLOAD_LEN;
        if out.len() > end {
            return Err(HandshakeError::InvalidArgument(if self.early.is_empty() {
                "transport parameters too large"
            } else {
                "early data too large"
            }));
        }
        out.resize(end, 0);
        Ok(())
    }

    /// Parses the payload; the padding's content is ignored (it is authenticated anyway).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(bytes);
        let timestamp = r
            .array::<12>()
            .ok()
            .and_then(Timestamp::from_bytes)
            .ok_or(HandshakeError::Malformed("invalid timestamp"))?;
        let eid = r
            .array::<EID_LEN>()
            .ok()
            .and_then(|b| Eid::from_bytes(b).ok())
            .ok_or(HandshakeError::Malformed(
                "initiator EID is not an Ed25519 key",
            ))?;
        let service = read_name(&mut r, "invalid service name")?;
        let protocol = read_name(&mut r, "invalid protocol name")?;
        let params = TransportParams::decode(&mut r)?;
        // Absent when the parameters fill the payload to its end.
        let early = if r.is_empty() {
            Vec::new()
        } else {
            r.varint_bytes()
                .map_err(|_| HandshakeError::Malformed("invalid early data length"))?
                .to_vec()
        };
        Ok(Self {
            timestamp,
            eid,
            hello: Hello {
                service,
                protocol,
                params,
            },
            early,
        })
    }
}

impl Reply {
    /// Appends the response payload: `status`, then `suite` and the parameters, or the reason.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
        match self {
            Reply::Accept { suite, params } => {
                out.push(0);
                out.push(suite.bit());
                params.encode(out);
            }
            Reply::Refuse { code, reason } => {
                if code.0 == 0 {
                    return Err(HandshakeError::InvalidArgument(
                        "refuse code 0 means accept",
                    ));
                }
                out.push(code.0);
                write_name(out, reason, "refusal reason longer than 255 bytes")?;
            }
        }
        Ok(())
    }

    /// Parses a response payload; it must be consumed exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(bytes);
        let status = r
            .u8()
            .map_err(|_| HandshakeError::Malformed("empty reply"))?;
        let reply = if status == 0 {
            let bit = r
                .u8()
                .map_err(|_| HandshakeError::Malformed("reply without suite"))?;
            let suite = [Suite::ChaCha20Poly1305, Suite::Aes256Gcm]
                .into_iter()
                .find(|s| s.bit() == bit)
                .ok_or(HandshakeError::Malformed("unknown suite in reply"))?;
            let params = TransportParams::decode(&mut r)?;
            Reply::Accept { suite, params }
        } else {
            let reason = read_name(&mut r, "invalid refusal reason")?;
            Reply::Refuse {
                code: RefuseCode(status),
                reason,
            }
        };
        if !r.is_empty() {
            return Err(HandshakeError::Malformed("trailing bytes after reply"));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use proptest::prelude::*;

    fn arb_params() -> impl Strategy<Value = TransportParams> {
        (any::<u8>(), 1200..=u16::MAX, any::<u32>(), any::<u16>()).prop_map(|(s, m, i, a)| {
            TransportParams {
                suites: s,
                max_udp_payload: m,
                idle_timeout_ms: i,
                max_ack_delay_ms: a,
                ..TransportParams::default()
            }
        })
    }

    fn arb_hello() -> impl Strategy<Value = Hello> {
        ("\\PC{0,60}", "\\PC{0,60}", arb_params()).prop_map(|(service, protocol, params)| Hello {
            service,
            protocol,
            params,
        })
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            (prop::bool::ANY, arb_params()).prop_map(|(aes, params)| Reply::Accept {
                suite: if aes {
                    Suite::Aes256Gcm
                } else {
                    Suite::ChaCha20Poly1305
                },
                params
            }),
            (1..=u8::MAX, "\\PC{0,60}").prop_map(|(c, reason)| Reply::Refuse {
                code: RefuseCode(c),
                reason
            }),
        ]
    }

    #[test]
    fn timestamp_order_is_time_order() {
        let a = Timestamp::from_unix_nanos(1_999_999_999);
        let b = Timestamp::from_unix_nanos(2_000_000_000);
        assert!(a < b);
        assert_eq!(b.unix_nanos(), 2_000_000_000);
        assert_eq!(Timestamp::from_bytes(b.to_bytes()), Some(b));
        // Nanoseconds out of range, and seconds before the TAI64 base, are invalid.
        let mut bad = b.to_bytes();
        bad[8..].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert_eq!(Timestamp::from_bytes(bad), None);
        assert_eq!(Timestamp::from_bytes([0; 12]), None);
        assert_eq!(Timestamp::from_bytes([0xff; 12]), None);
    }

    #[test]
    fn over_long_names_are_refused() {
        let long = "x".repeat(256);
        let payload = InitPayload {
            timestamp: Timestamp::from_unix_nanos(0),
            eid: Identity::from_secret_bytes(&[1; 32]).eid(),
            hello: Hello {
                service: long.clone(),
                protocol: String::new(),
                params: TransportParams::default(),
            },
            early: Vec::new(),
        };
        assert!(matches!(
            payload.encode(&mut Vec::new()),
            Err(HandshakeError::InvalidArgument(_))
        ));
        let refuse = Reply::Refuse {
            code: RefuseCode::BUSY,
            reason: long,
        };
        assert!(refuse.encode(&mut Vec::new()).is_err());
        let zero = Reply::Refuse {
            code: RefuseCode(0),
            reason: String::new(),
        };
        assert!(zero.encode(&mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn timestamp_round_trip(n in any::<u64>()) {
            let t = Timestamp::from_unix_nanos(n);
            prop_assert_eq!(t.unix_nanos(), n);
            prop_assert_eq!(Timestamp::from_bytes(t.to_bytes()), Some(t));
        }

        #[test]
        fn init_payload_round_trip(
            hello in arb_hello(),
            n in any::<u64>(),
            seed in any::<[u8; 32]>(),
            early_len in 0usize..2000,
        ) {
            let capacity = early_capacity(&hello).unwrap();
            let mut payload = InitPayload {
                timestamp: Timestamp::from_unix_nanos(n),
                eid: Identity::from_secret_bytes(&seed).eid(),
                hello,
                early: (0..early_len).map(|i| i as u8 | 1).collect(),
            };
            let mut out = vec![0xaa];
            if early_len > capacity {
                // Too much early data is the caller's mistake, and `out` is not extended
                // past the payload.
                prop_assert!(payload.encode(&mut out).is_err());
                payload.early.truncate(capacity);
                out.truncate(1);
            }
            payload.encode(&mut out).unwrap();
            prop_assert_eq!(out.len(), 1 + INIT_PAYLOAD_LEN);
            prop_assert_eq!(InitPayload::decode(&out[1..]), Ok(payload));
        }

        /// A payload written before the early field existed (fields, then zeros) reads as
        /// one without early data.
        #[test]
        fn payload_without_early_field_parses(hello in arb_hello(), seed in any::<[u8; 32]>()) {
            let mut out = Vec::new();
            out.extend_from_slice(&Timestamp::from_unix_nanos(5).to_bytes());
            out.extend_from_slice(Identity::from_secret_bytes(&seed).eid().as_bytes());
            write_name(&mut out, &hello.service, "s").unwrap();
            write_name(&mut out, &hello.protocol, "p").unwrap();
            hello.params.encode(&mut out);
            out.resize(INIT_PAYLOAD_LEN, 0);
            let payload = InitPayload::decode(&out).unwrap();
            prop_assert!(payload.early.is_empty());
            prop_assert_eq!(payload.hello, hello);
        }

        #[test]
        fn reply_round_trip(reply in arb_reply()) {
            let mut out = Vec::new();
            reply.encode(&mut out).unwrap();
            prop_assert_eq!(Reply::decode(&out), Ok(reply));
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = InitPayload::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }
    }
}
