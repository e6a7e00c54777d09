//! The workload's own tiny protocol, carried on each bidirectional stream of either stack.
//!
//! The client opens a stream and writes a [`Header`], then `len` bytes of
//! [`Pattern`](crate::content::Pattern) content, then finishes its side. The server checks
//! every byte as it arrives and answers with a [`Reply`]; for a request it then appends `len`
//! bytes of response content. Both stacks carry exactly the same bytes, so the framing
//! overhead (21 bytes up, 9 down per stream) is the same on both sides of a comparison.
//!
//! | offset | size | field  | meaning                                         |
//! |--------|------|--------|-------------------------------------------------|
//! | 0      | 1    | kind   | [`Kind`]: probe, upload or request              |
//! | 1      | 4    | stream | stream index (keys the content), big endian     |
//! | 5      | 8    | seed   | run seed (keys the content), big endian         |
//! | 13     | 8    | len    | content bytes that follow the header            |
//!
//! Reply: `status` (1 byte, [`Status`]) then `value` (8 bytes, big endian): the verified byte
//! count on success, the offset of the first wrong byte on a mismatch, the bytes received on a
//! length error.

use thiserror::Error;

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind(pub u8);

impl Kind {
    /// No content; measures connection setup (the server answers at once).
    pub const PROBE: Self = Self(1);
    /// `len` bytes up, a reply down.
    pub const UPLOAD: Self = Self(2);
    /// `len` bytes up, a reply and `len` bytes of response content down.
    pub const REQUEST: Self = Self(3);
}

/// The server's verdict on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// Every byte arrived and matched.
    pub const OK: Self = Self(0);
    /// A byte differed from the pattern; `value` is its offset.
    pub const MISMATCH: Self = Self(1);
    /// The stream carried fewer or more bytes than the header announced.
    pub const LENGTH: Self = Self(2);
    /// The header was malformed (unknown kind).
    pub const BAD_HEADER: Self = Self(3);
}

/// Encoded size of a [`Header`].
pub const HEADER_LEN: usize = 21;
/// Encoded size of a [`Reply`].
pub const REPLY_LEN: usize = 9;

/// The first bytes of every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the stream carries.
    pub kind: Kind,
    /// Stream index, used with `seed` to key the content.
    pub stream: u32,
    /// The run's seed.
    pub seed: u64,
    /// Content bytes after the header.
    pub len: u64,
}

/// The server's answer on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The verdict.
    pub status: Status,
    /// Meaning depends on `status` (see the module documentation).
    pub value: u64,
}

/// A header with a kind this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown stream kind {0}")]
pub struct UnknownKind(pub u8);

impl Header {
    /// Appends the 21-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind.0);
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.seed.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// Decodes a header, refusing unknown kinds so that stray bytes are not taken for work.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, UnknownKind> {
        let kind = Kind(bytes[0]);
        if ![Kind::PROBE, Kind::UPLOAD, Kind::REQUEST].contains(&kind) {
            return Err(UnknownKind(kind.0));
        }
        let (stream, rest) = bytes[1..].split_at(4);
        let (seed, len) = rest.split_at(8);
        Ok(Self {
            kind,
            stream: u32::from_be_bytes(stream.try_into().expect("4 bytes")),
            seed: u64::from_be_bytes(seed.try_into().expect("8 bytes")),
            len: u64::from_be_bytes(len.try_into().expect("8 bytes")),
        })
    }
}

impl Reply {
    /// The 9-byte encoding.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0; REPLY_LEN];
        out[0] = self.status.0;
        out[1..].copy_from_slice(&self.value.to_be_bytes());
        out
    }

    /// Decodes a reply; any status byte is kept so that a newer server's verdict is reported.
    pub fn decode(bytes: &[u8; REPLY_LEN]) -> Self {
        Self {
            status: Status(bytes[0]),
            value: u64::from_be_bytes(bytes[1..].try_into().expect("8 bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_the_documented_layout() {
        let h = Header {
            kind: Kind::UPLOAD,
            stream: 0x0102_0304,
            seed: 5,
            len: 1 << 40,
        };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(buf[..5], [2, 1, 2, 3, 4]);
        assert_eq!(Header::decode(&buf.try_into().unwrap()), Ok(h));
    }

    #[test]
    fn unknown_kinds_are_refused() {
        for kind in [0u8, 4, 255] {
            let mut bytes = [0u8; HEADER_LEN];
            bytes[0] = kind;
            assert_eq!(Header::decode(&bytes), Err(UnknownKind(kind)));
        }
    }

    #[test]
    fn reply_round_trips_any_status() {
        for status in [Status::OK, Status::MISMATCH, Status(200)] {
            let r = Reply {
                status,
                value: 123_456_789,
            };
            assert_eq!(Reply::decode(&r.encode()), r);
        }
    }
}
