//! Encoding and decoding of every routing message (spec/routing.md §2-§3).
//!
//! [`Message::decode`] takes untrusted bytes and returns a typed [`WireError`]; it never
//! panics. [`Message::encode`] appends the wire form; `decode(encode(m)) == m` for every
//! message (property-tested below).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sss_proto::codec::{Reader, Truncated};
use sss_proto::Eid;
use thiserror::Error;

use crate::record::SignedRecord;

/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// A cookie (spec/routing.md §4.1).
pub type Cookie = [u8; COOKIE_LEN];
/// A client-chosen request identifier, repeated in the reply.
pub type RequestId = u64;

/// Smallest HELLO: at least as large as the largest COOKIE reply.
pub const HELLO_LEN: usize = 64;
/// Largest COOKIE message (IPv6 observed endpoint).
pub const MAX_COOKIE_MSG_LEN: usize = 1 + 8 + COOKIE_LEN + 19;
/// Length of a KEEPALIVE.
pub const KEEPALIVE_LEN: usize = 1 + 8 + 32;
/// Largest KEEPALIVE_REPLY.
pub const MAX_KEEPALIVE_REPLY_LEN: usize = 1 + 8 + 1 + 19;
/// Length of a LOOKUP.
pub const LOOKUP_LEN: usize = 1 + 8 + COOKIE_LEN + 1 + 32 + 32;
/// Length of an ERROR.
pub const ERROR_LEN: usize = 1 + 8 + 1 + 8;
/// Length of a RELAY_OPEN.
pub const RELAY_OPEN_LEN: usize = 1 + 8 + COOKIE_LEN + 32 + 32;
/// Length of a RELAY_OPENED.
pub const RELAY_OPENED_LEN: usize = 1 + 8 + 4 + 4 + 32;
/// Bytes a RELAY_DATA adds in front of the relayed datagram: type and relay_id.
pub const RELAY_HEADER_LEN: usize = 1 + 4;
/// Largest RELAY_DATA a server forwards (a 1500-byte IPv4 path); longer ones are dropped.
pub const MAX_RELAY_DATAGRAM: usize = 1472;

// Amplification (spec/routing.md §7): what a server sends before the cookie round trip is
// never larger than the request that caused it.
const _: () = assert!(MAX_COOKIE_MSG_LEN <= HELLO_LEN);
const _: () = assert!(MAX_KEEPALIVE_REPLY_LEN <= KEEPALIVE_LEN);
const _: () = assert!(MAX_COOKIE_MSG_LEN <= LOOKUP_LEN);
const _: () = assert!(ERROR_LEN <= LOOKUP_LEN);
const _: () = assert!(ERROR_LEN <= RELAY_OPEN_LEN);
const _: () = assert!(MAX_COOKIE_MSG_LEN <= RELAY_OPEN_LEN);
const _: () = assert!(RELAY_OPENED_LEN <= RELAY_OPEN_LEN);

/// Message type codes (the first byte).
pub mod msg_type {
    /// HELLO: asks for a cookie.
    pub const HELLO: u8 = 0x10;
    /// COOKIE: the cookie and the observed endpoint.
    pub const COOKIE: u8 = 0x11;
    /// REGISTER: a signed record.
    pub const REGISTER: u8 = 0x12;
    /// REGISTERED: the record is stored.
    pub const REGISTERED: u8 = 0x13;
    /// LOOKUP: asks for a record, optionally notifying its host.
    pub const LOOKUP: u8 = 0x14;
    /// LOOKUP_REPLY: the record or "not found".
    pub const LOOKUP_REPLY: u8 = 0x15;
    /// NOTIFY: tells a registered host that someone looks it up.
    pub const NOTIFY: u8 = 0x16;
    /// KEEPALIVE: keeps the NAT mapping and checks the registration.
    pub const KEEPALIVE: u8 = 0x17;
    /// KEEPALIVE_REPLY: registration status and observed endpoint.
    pub const KEEPALIVE_REPLY: u8 = 0x18;
    /// ERROR: a refused request.
    pub const ERROR: u8 = 0x19;
    /// RELAY_OPEN: asks for a relay slot toward a registered target.
    pub const RELAY_OPEN: u8 = 0x1a;
    /// RELAY_OPENED: the slot exists (to both of its hosts).
    pub const RELAY_OPENED: u8 = 0x1b;
    /// RELAY_DATA: a datagram relayed through a slot.
    pub const RELAY_DATA: u8 = 0x1c;
    /// PUNCH: a hole-punching probe between hosts; receivers ignore it.
    pub const PUNCH: u8 = 0x1d;
}

/// Length of a PUNCH probe.
pub const PUNCH_LEN: usize = 1 + 8;

/// Why bytes are not a routing message.
#[derive(Debug, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The datagram ended before a field was complete.
    #[error("routing message truncated")]
    Truncated,
    /// The first byte is not a routing message type this version knows.
    #[error("unknown routing message type {0:#04x}")]
    UnknownType(u8),
    /// The type is reserved (`0x1e`-`0x1f`) for a later version.
    #[error("routing message type {0:#04x} is reserved, not supported")]
    Unsupported(u8),
    /// Bytes follow the last field.
    #[error("{0} trailing bytes after the routing message")]
    TrailingBytes(usize),
    /// A HELLO shorter than [`HELLO_LEN`].
    #[error("HELLO of {0} bytes is shorter than {HELLO_LEN}")]
    ShortHello(usize),
    /// An endpoint's family byte is neither 4 nor 6.
    #[error("bad endpoint family {0}")]
    BadFamily(u8),
    /// 32 bytes that are not an Ed25519 public key.
    #[error("invalid EID")]
    BadEid,
    /// A record reports more than [`crate::record::MAX_REPORTED`] endpoints.
    #[error("record reports {0} endpoints")]
    TooManyEndpoints(usize),
    /// A status, code or flags field holds a value outside its range.
    #[error("bad value {value} in field {field}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u8,
    },
}

impl From<Truncated> for WireError {
    fn from(_: Truncated) -> Self {
        WireError::Truncated
    }
}

/// Status in a KEEPALIVE_REPLY.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub enum KeepaliveStatus {
    /// A record is stored with this source as its observed endpoint.
    Registered = 0,
    /// No record for the EID.
    Unknown = 1,
    /// A record exists but names another observed endpoint.
    Elsewhere = 2,
}

/// ERROR codes.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub enum ErrorCode {
    /// The record's seq is not above the stored one; value: the stored seq.
    Stale = 1,
    /// No room for the record.
    Full = 2,
    /// The source ran out of credit; value: milliseconds until one request is allowed.
    RateLimited = 3,
    /// LOOKUP with NOTIFY from a caller not registered at this source.
    NotRegistered = 4,
    /// The record's signature, server or observed endpoint is wrong.
    BadRecord = 5,
    /// RELAY_OPEN for a target with no record at the server, or for the caller itself.
    NoTarget = 6,
}

/// HELLO: asks for a cookie.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Hello {
    /// Request identifier.
    pub request_id: RequestId,
    /// Total datagram length, at least [`HELLO_LEN`] (padding is zeros when encoding).
    pub len: usize,
}

/// COOKIE: the answer to HELLO or to a request with a stale cookie.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct CookieMsg {
    /// The request answered.
    pub request_id: RequestId,
    /// The cookie for the observed endpoint.
    pub cookie: Cookie,
    /// The source endpoint the server saw.
    pub observed: SocketAddr,
}

/// REGISTER: a signed record.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Register {
    /// Request identifier; becomes the NOTIFY token once stored.
    pub request_id: RequestId,
    /// The record.
    pub record: SignedRecord,
}

/// REGISTERED: the record is stored.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Registered {
    /// The REGISTER answered.
    pub request_id: RequestId,
    /// The stored record's seq.
    pub seq: u64,
    /// Seconds the server keeps the record.
    pub lifetime: u32,
}

/// LOOKUP: asks for a target's record.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Lookup {
    /// Request identifier.
    pub request_id: RequestId,
    /// A cookie for the caller's source endpoint.
    pub cookie: Cookie,
    /// Whether the server should NOTIFY the target.
    pub notify: bool,
    /// The caller's EID.
    pub caller: Eid,
    /// The EID looked up.
    pub target: Eid,
}

/// LOOKUP_REPLY: the target's record, or not found.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct LookupReply {
    /// The LOOKUP answered.
    pub request_id: RequestId,
    /// The EID looked up.
    pub target: Eid,
    /// The target's record, if stored.
    pub record: Option<SignedRecord>,
}

/// NOTIFY: someone looks the receiver up and asks it to punch.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Notify {
    /// The request_id of the receiver's stored REGISTER.
    pub token: RequestId,
    /// The caller's record.
    pub caller: SignedRecord,
}

/// KEEPALIVE: keeps the NAT mapping alive and checks the registration.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Keepalive {
    /// Request identifier.
    pub request_id: RequestId,
    /// The EID the client is registered under.
    pub eid: Eid,
}

/// KEEPALIVE_REPLY.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct KeepaliveReply {
    /// The KEEPALIVE answered.
    pub request_id: RequestId,
    /// The registration status.
    pub status: KeepaliveStatus,
    /// The source endpoint the server saw.
    pub observed: SocketAddr,
}

/// ERROR: a refused request.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct ErrorMsg {
    /// The refused request.
    pub request_id: RequestId,
    /// Why.
    pub code: ErrorCode,
    /// Code-specific value.
    pub value: u64,
}

/// PUNCH: a probe a host sends toward a peer's endpoints when asked to punch (NOTIFY), so
/// that its NAT opens a mapping toward the peer. It carries nothing to trust: receivers
/// ignore it (spec/routing.md §3, §5.4).
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Punch {
    /// Random bytes (so that probes are not all alike); no meaning.
    pub nonce: u64,
}

/// RELAY_OPEN: asks the server for a relay slot between the caller and the target.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct RelayOpen {
    /// Request identifier.
    pub request_id: RequestId,
    /// A cookie for the caller's source endpoint.
    pub cookie: Cookie,
    /// The caller's EID (registered at this server from this source).
    pub caller: Eid,
    /// The EID to relay to (registered at this server).
    pub target: Eid,
}

/// RELAY_OPENED: a relay slot exists; sent to both of its hosts.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct RelayOpened {
    /// To the caller: the RELAY_OPEN answered; to the target: its NOTIFY token.
    pub request_id: RequestId,
    /// The slot, named in every RELAY_DATA.
    pub relay_id: u32,
    /// Seconds without forwarded traffic after which the slot ends.
    pub idle: u32,
    /// The EID at the other end of the slot.
    pub peer: Eid,
}

/// RELAY_DATA: one datagram relayed through a slot.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct RelayData {
    /// The slot.
    pub relay_id: u32,
    /// The relayed SSS datagram (at least one byte).
    pub data: Vec<u8>,
}

/// The relay_id and relayed datagram of a RELAY_DATA, without copying; `None` if `datagram`
/// is not a RELAY_DATA or carries nothing.
pub fn relay_data(datagram: &[u8]) -> Option<(u32, &[u8])> {
    match datagram {
        [msg_type::RELAY_DATA, a, b, c, d, inner @ ..] if !inner.is_empty() => {
            Some((u32::from_be_bytes([*a, *b, *c, *d]), inner))
        }
        _ => None,
    }
}

/// The header that makes a datagram a RELAY_DATA of slot `relay_id`.
pub fn relay_header(relay_id: u32) -> [u8; RELAY_HEADER_LEN] {
    let id = relay_id.to_be_bytes();
    [msg_type::RELAY_DATA, id[0], id[1], id[2], id[3]]
}

/// Any routing message.
#[derive(Debug, Clone, Eq, PartialEq)]
pub enum Message {
    /// HELLO (`0x10`), client to server.
    Hello(Hello),
    /// COOKIE (`0x11`), server to client.
    Cookie(CookieMsg),
    /// REGISTER (`0x12`), client to server.
    Register(Register),
    /// REGISTERED (`0x13`), server to client.
    Registered(Registered),
    /// LOOKUP (`0x14`), client to server.
    Lookup(Lookup),
    /// LOOKUP_REPLY (`0x15`), server to client.
    LookupReply(LookupReply),
    /// NOTIFY (`0x16`), server to the looked-up host.
    Notify(Notify),
    /// KEEPALIVE (`0x17`), client to server.
    Keepalive(Keepalive),
    /// KEEPALIVE_REPLY (`0x18`), server to client.
    KeepaliveReply(KeepaliveReply),
    /// ERROR (`0x19`), server to client.
    Error(ErrorMsg),
    /// PUNCH (`0x1d`), host to host: a hole-punching probe, ignored on receipt.
    Punch(Punch),
    /// RELAY_OPEN (`0x1a`), client to server.
    RelayOpen(RelayOpen),
    /// RELAY_OPENED (`0x1b`), server to client.
    RelayOpened(RelayOpened),
    /// RELAY_DATA (`0x1c`), host to server and server to host.
    RelayData(RelayData),
}

impl Message {
    /// Decodes one datagram.
    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(data);
        let ty = r.u8()?;
        let msg = match ty {
            msg_type::HELLO => {
                if data.len() < HELLO_LEN {
                    return Err(WireError::ShortHello(data.len()));
                }
                let request_id = r.u64()?;
                r.rest();
                Message::Hello(Hello {
                    request_id,
                    len: data.len(),
                })
            }
            msg_type::COOKIE => Message::Cookie(CookieMsg {
                request_id: r.u64()?,
                cookie: r.array()?,
                observed: read_endpoint(&mut r)?,
            }),
            msg_type::REGISTER => Message::Register(Register {
                request_id: r.u64()?,
                record: SignedRecord::decode(&mut r)?,
            }),
            msg_type::REGISTERED => Message::Registered(Registered {
                request_id: r.u64()?,
                seq: r.u64()?,
                lifetime: r.u32()?,
            }),
            msg_type::LOOKUP => {
                let request_id = r.u64()?;
                let cookie = r.array()?;
                let flags = r.u8()?;
                if flags & !1 != 0 {
                    return Err(WireError::BadValue {
                        field: "flags",
                        value: flags,
                    });
                }
                Message::Lookup(Lookup {
                    request_id,
                    cookie,
                    notify: flags & 1 != 0,
                    caller: read_eid(&mut r)?,
                    target: read_eid(&mut r)?,
                })
            }
            msg_type::LOOKUP_REPLY => {
                let request_id = r.u64()?;
                let status = r.u8()?;
                let target = read_eid(&mut r)?;
                let record = match status {
                    0 => Some(SignedRecord::decode(&mut r)?),
                    1 => None,
                    value => {
                        return Err(WireError::BadValue {
                            field: "status",
                            value,
                        })
                    }
                };
                Message::LookupReply(LookupReply {
                    request_id,
                    target,
                    record,
                })
            }
            msg_type::NOTIFY => Message::Notify(Notify {
                token: r.u64()?,
                caller: SignedRecord::decode(&mut r)?,
            }),
            msg_type::KEEPALIVE => Message::Keepalive(Keepalive {
                request_id: r.u64()?,
                eid: read_eid(&mut r)?,
            }),
            msg_type::KEEPALIVE_REPLY => {
                let request_id = r.u64()?;
                let status = match r.u8()? {
                    0 => KeepaliveStatus::Registered,
                    1 => KeepaliveStatus::Unknown,
                    2 => KeepaliveStatus::Elsewhere,
                    value => {
                        return Err(WireError::BadValue {
                            field: "status",
                            value,
                        })
                    }
                };
                Message::KeepaliveReply(KeepaliveReply {
                    request_id,
                    status,
                    observed: read_endpoint(&mut r)?,
                })
            }
            msg_type::ERROR => {
                let request_id = r.u64()?;
                let code = match r.u8()? {
                    1 => ErrorCode::Stale,
                    2 => ErrorCode::Full,
                    3 => ErrorCode::RateLimited,
                    4 => ErrorCode::NotRegistered,
                    5 => ErrorCode::BadRecord,
                    6 => ErrorCode::NoTarget,
                    value => {
                        return Err(WireError::BadValue {
                            field: "code",
                            value,
                        })
                    }
                };
                Message::Error(ErrorMsg {
                    request_id,
                    code,
                    value: r.u64()?,
                })
            }
            msg_type::PUNCH => Message::Punch(Punch { nonce: r.u64()? }),
            msg_type::RELAY_OPEN => Message::RelayOpen(RelayOpen {
                request_id: r.u64()?,
                cookie: r.array()?,
                caller: read_eid(&mut r)?,
                target: read_eid(&mut r)?,
            }),
            msg_type::RELAY_OPENED => Message::RelayOpened(RelayOpened {
                request_id: r.u64()?,
                relay_id: r.u32()?,
                idle: r.u32()?,
                peer: read_eid(&mut r)?,
            }),
            msg_type::RELAY_DATA => {
                let relay_id = r.u32()?;
                let data = r.rest();
                if data.is_empty() {
                    return Err(WireError::Truncated);
                }
                Message::RelayData(RelayData {
                    relay_id,
                    data: data.to_vec(),
                })
            }
            0x1e..=0x1f => return Err(WireError::Unsupported(ty)),
            _ => return Err(WireError::UnknownType(ty)),
        };
        if !r.is_empty() {
            return Err(WireError::TrailingBytes(r.remaining()));
        }
        Ok(msg)
    }

    /// Appends the encoded message to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Message::Hello(m) => {
                let start = buf.len();
                buf.push(msg_type::HELLO);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.resize(start + m.len.max(HELLO_LEN), 0);
            }
            Message::Cookie(m) => {
                buf.push(msg_type::COOKIE);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.extend_from_slice(&m.cookie);
                write_endpoint(buf, m.observed);
            }
            Message::Register(m) => {
                buf.push(msg_type::REGISTER);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                m.record.encode(buf);
            }
            Message::Registered(m) => {
                buf.push(msg_type::REGISTERED);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.extend_from_slice(&m.seq.to_be_bytes());
                buf.extend_from_slice(&m.lifetime.to_be_bytes());
            }
            Message::Lookup(m) => {
                buf.push(msg_type::LOOKUP);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.extend_from_slice(&m.cookie);
                buf.push(u8::from(m.notify));
                buf.extend_from_slice(m.caller.as_bytes());
                buf.extend_from_slice(m.target.as_bytes());
            }
            Message::LookupReply(m) => {
                buf.push(msg_type::LOOKUP_REPLY);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.push(if m.record.is_some() { 0 } else { 1 });
                buf.extend_from_slice(m.target.as_bytes());
                if let Some(rec) = &m.record {
                    rec.encode(buf);
                }
            }
            Message::Notify(m) => {
                buf.push(msg_type::NOTIFY);
                buf.extend_from_slice(&m.token.to_be_bytes());
                m.caller.encode(buf);
            }
            Message::Keepalive(m) => {
                buf.push(msg_type::KEEPALIVE);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.extend_from_slice(m.eid.as_bytes());
            }
            Message::KeepaliveReply(m) => {
                buf.push(msg_type::KEEPALIVE_REPLY);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.push(m.status as u8);
                write_endpoint(buf, m.observed);
            }
            Message::Error(m) => {
                buf.push(msg_type::ERROR);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.push(m.code as u8);
                buf.extend_from_slice(&m.value.to_be_bytes());
            }
            Message::Punch(m) => {
                buf.push(msg_type::PUNCH);
                buf.extend_from_slice(&m.nonce.to_be_bytes());
            }
            Message::RelayOpen(m) => {
                buf.push(msg_type::RELAY_OPEN);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.extend_from_slice(&m.cookie);
                buf.extend_from_slice(m.caller.as_bytes());
                buf.extend_from_slice(m.target.as_bytes());
            }
            Message::RelayOpened(m) => {
                buf.push(msg_type::RELAY_OPENED);
                buf.extend_from_slice(&m.request_id.to_be_bytes());
                buf.extend_from_slice(&m.relay_id.to_be_bytes());
                buf.extend_from_slice(&m.idle.to_be_bytes());
                buf.extend_from_slice(m.peer.as_bytes());
            }
            Message::RelayData(m) => {
                buf.extend_from_slice(&relay_header(m.relay_id));
                buf.extend_from_slice(&m.data);
            }
        }
    }

    /// The encoded message as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        buf
    }
}

/// Appends an endpoint: family (4 or 6), address, port.
pub(crate) fn write_endpoint(buf: &mut Vec<u8>, ep: SocketAddr) {
    match ep.ip() {
        IpAddr::V4(ip) => {
            buf.push(4);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(6);
            buf.extend_from_slice(&ip.octets());
        }
    }
    buf.extend_from_slice(&ep.port().to_be_bytes());
}

/// Reads an endpoint.
pub(crate) fn read_endpoint(r: &mut Reader<'_>) -> Result<SocketAddr, WireError> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        f => return Err(WireError::BadFamily(f)),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

/// Reads an EID, checking it is an Ed25519 point.
pub(crate) fn read_eid(r: &mut Reader<'_>) -> Result<Eid, WireError> {
    Eid::from_bytes(r.array()?).map_err(|_| WireError::BadEid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordBody, MAX_REPORTED};
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use sss_proto::Identity;

    fn arb_eid() -> impl Strategy<Value = Eid> {
        any::<u64>().prop_map(|s| Identity::generate(&mut ChaCha20Rng::seed_from_u64(s)).eid())
    }

    fn arb_endpoint() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
        ]
    }

    fn arb_record() -> impl Strategy<Value = SignedRecord> {
        (
            any::<u64>(),
            arb_eid(),
            any::<u64>(),
            any::<u32>(),
            any::<[u8; 16]>(),
            arb_endpoint(),
            proptest::collection::vec(arb_endpoint(), 0..=MAX_REPORTED),
        )
            .prop_map(|(key, server, seq, lifetime, cookie, observed, reported)| {
                let id = Identity::generate(&mut ChaCha20Rng::seed_from_u64(key));
                SignedRecord::sign(
                    &id,
                    RecordBody {
                        eid: id.eid(),
                        server,
                        seq,
                        lifetime,
                        cookie,
                        observed,
                        reported,
                    },
                )
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), HELLO_LEN..1500usize)
                .prop_map(|(request_id, len)| Message::Hello(Hello { request_id, len })),
            (any::<u64>(), any::<[u8; 16]>(), arb_endpoint()).prop_map(
                |(request_id, cookie, observed)| Message::Cookie(CookieMsg {
                    request_id,
                    cookie,
                    observed
                })
            ),
            (any::<u64>(), arb_record()).prop_map(|(request_id, record)| Message::Register(
                Register { request_id, record }
            )),
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(request_id, seq, lifetime)| {
                Message::Registered(Registered {
                    request_id,
                    seq,
                    lifetime,
                })
            }),
            (
                any::<u64>(),
                any::<[u8; 16]>(),
                any::<bool>(),
                arb_eid(),
                arb_eid()
            )
                .prop_map(|(request_id, cookie, notify, caller, target)| {
                    Message::Lookup(Lookup {
                        request_id,
                        cookie,
                        notify,
                        caller,
                        target,
                    })
                }),
            (any::<u64>(), arb_eid(), proptest::option::of(arb_record())).prop_map(
                |(request_id, target, record)| Message::LookupReply(LookupReply {
                    request_id,
                    target,
                    record
                })
            ),
            (any::<u64>(), arb_record())
                .prop_map(|(token, caller)| Message::Notify(Notify { token, caller })),
            (any::<u64>(), arb_eid())
                .prop_map(|(request_id, eid)| Message::Keepalive(Keepalive { request_id, eid })),
            (
                any::<u64>(),
                prop_oneof![
                    Just(KeepaliveStatus::Registered),
                    Just(KeepaliveStatus::Unknown),
                    Just(KeepaliveStatus::Elsewhere)
                ],
                arb_endpoint()
            )
                .prop_map(|(request_id, status, observed)| {
                    Message::KeepaliveReply(KeepaliveReply {
                        request_id,
                        status,
                        observed,
                    })
                }),
            (
                any::<u64>(),
                prop_oneof![
                    Just(ErrorCode::Stale),
                    Just(ErrorCode::Full),
                    Just(ErrorCode::RateLimited),
                    Just(ErrorCode::NotRegistered),
                    Just(ErrorCode::BadRecord),
                    Just(ErrorCode::NoTarget)
                ],
                any::<u64>()
            )
                .prop_map(|(request_id, code, value)| Message::Error(ErrorMsg {
                    request_id,
                    code,
                    value
                })),
            any::<u64>().prop_map(|nonce| Message::Punch(Punch { nonce })),
            (any::<u64>(), any::<[u8; 16]>(), arb_eid(), arb_eid()).prop_map(
                |(request_id, cookie, caller, target)| Message::RelayOpen(RelayOpen {
                    request_id,
                    cookie,
                    caller,
                    target
                })
            ),
            (any::<u64>(), any::<u32>(), any::<u32>(), arb_eid()).prop_map(
                |(request_id, relay_id, idle, peer)| Message::RelayOpened(RelayOpened {
                    request_id,
                    relay_id,
                    idle,
                    peer
                })
            ),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 1..1500)
            )
                .prop_map(|(relay_id, data)| Message::RelayData(RelayData { relay_id, data })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            let bytes = msg.to_vec();
            prop_assert_eq!(Message::decode(&bytes), Ok(msg.clone()));
            // Records inside still verify after the trip.
            if let Message::Register(Register { record, .. }) | Message::Notify(Notify { caller: record, .. }) = &msg {
                prop_assert!(record.verify());
            }
        }

        #[test]
        fn truncation_and_trailing_bytes_are_errors(msg in arb_message(), cut in any::<prop::sample::Index>()) {
            let bytes = msg.to_vec();
            let n = cut.index(bytes.len());
            let short = Message::decode(&bytes[..n]);
            let hello_long_enough = matches!(msg, Message::Hello(_)) && n >= HELLO_LEN;
            // A RELAY_DATA's payload is whatever follows its header.
            let relay_long_enough = matches!(msg, Message::RelayData(_)) && n > RELAY_HEADER_LEN;
            prop_assert!(short.is_err() != (hello_long_enough || relay_long_enough), "prefix of {} / {} bytes", n, bytes.len());
            let mut long = bytes.clone();
            long.push(0);
            match msg {
                // HELLO's padding may be any length, and so may a relayed datagram.
                Message::Hello(_) | Message::RelayData(_) => prop_assert!(Message::decode(&long).is_ok()),
                _ => prop_assert_eq!(Message::decode(&long), Err(WireError::TrailingBytes(1))),
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Message::decode(&data);
        }
    }

    #[test]
    fn reserved_and_unknown_types_are_refused() {
        for ty in 0x1e..=0x1f {
            assert_eq!(Message::decode(&[ty; 80]), Err(WireError::Unsupported(ty)));
        }
        assert_eq!(RELAY_OPEN_LEN, 89);
        assert_eq!(RELAY_OPENED_LEN, 49);
        // An empty RELAY_DATA carries nothing to relay.
        assert_eq!(Message::decode(&relay_header(7)), Err(WireError::Truncated));
        assert_eq!(relay_data(&relay_header(7)), None);
        let mut d = relay_header(0x0a0b_0c0d).to_vec();
        d.extend_from_slice(b"sealed");
        assert_eq!(relay_data(&d), Some((0x0a0b_0c0d, &b"sealed"[..])));
        assert_eq!(
            Message::decode(&d),
            Ok(Message::RelayData(RelayData {
                relay_id: 0x0a0b_0c0d,
                data: b"sealed".to_vec()
            }))
        );
        assert_eq!(
            Message::decode(&[msg_type::PUNCH, 1, 2, 3, 4, 5, 6, 7, 8]),
            Ok(Message::Punch(Punch {
                nonce: 0x0102_0304_0506_0708
            }))
        );
        assert_eq!(PUNCH_LEN, 9);
        assert_eq!(
            Message::decode(&[0x40; 80]),
            Err(WireError::UnknownType(0x40))
        );
        assert_eq!(Message::decode(&[]), Err(WireError::Truncated));
        assert_eq!(
            Message::decode(&[msg_type::HELLO; 63]),
            Err(WireError::ShortHello(63))
        );
    }
}
