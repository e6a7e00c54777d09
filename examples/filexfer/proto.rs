//! The file-transfer protocol on an SSS stream: its records and the receiver's name rules.
//!
//! The sender dials (`sss-filexfer`, `v1`): that top-level stream is the *session* and carries
//! nothing itself. Each file goes on a substream of its own, so files travel concurrently and
//! a slow or lost packet of one never holds up another:
//!
//! ```text
//! sender                                    receiver
//!   open substream
//!   record  HEADER(name, size, sha256, flags)  ->
//!                                           <-  record OFFSET(n)    (only if flags has RESUME)
//!   bytes   the body (from offset n), then finish  ->
//!                                           <-  record VERDICT(code, bytes, message), finish
//! ```
//!
//! When every file has its verdict the sender sends the reliable datagram `done` on the
//! session stream and finishes it.
//!
//! The receiver may send its verdict early (a refused name, too many bytes) and then drops
//! the substream, which discards whatever else arrives on it; the sender notices the waiting
//! record and stops sending.
//!
//! All integers are big-endian. Every record starts with a kind byte.

use std::fmt;

/// The service the receiver listens on.
pub(crate) const SERVICE: &str = "sss-filexfer";
/// The protocol (version) of this format.
pub(crate) const PROTOCOL: &str = "v1";

/// The reliable datagram a sender sends on the session stream when it has every verdict.
pub(crate) const SESSION_DONE: &[u8] = b"done";

/// Longest file name accepted, in bytes: the receiver's partial file adds
/// [`PART_SUFFIX`] and a dot, and must stay within the usual 255-byte name limit.
pub(crate) const MAX_NAME: usize = 200;
/// Suffix of the file a body is written to until it is verified.
pub(crate) const PART_SUFFIX: &str = ".sss-part";

const KIND_HEADER: u8 = b'H';
const KIND_OFFSET: u8 = b'O';
const KIND_VERDICT: u8 = b'V';

/// Header flag: the sender can resume (it waits for an OFFSET record before the body).
pub(crate) const FLAG_RESUME: u8 = 1;

/// Bytes of a header before the name.
const HEADER_FIXED: usize = 1 + 1 + 8 + 32 + 2;
/// Largest header record a receiver reads (a longer one is refused as malformed); room for
/// names longer than [`MAX_NAME`], so that they are refused with a clear reason.
pub(crate) const MAX_HEADER_RECORD: usize = HEADER_FIXED + 1024;
/// Longest verdict message, in bytes.
pub(crate) const MAX_MESSAGE: usize = 500;
/// Largest verdict record a sender reads.
pub(crate) const MAX_VERDICT_RECORD: usize = 1 + 1 + 8 + MAX_MESSAGE;

/// What a sender announces about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The file's name (one path component; see [`check_name`]).
    pub(crate) name: String,
    /// The body's length in bytes.
    pub(crate) size: u64,
    /// SHA-256 of the body.
    pub(crate) sha256: [u8; 32],
    /// [`FLAG_RESUME`] or 0.
    pub(crate) flags: u8,
}

impl Header {
    /// The header's record.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_header_raw(self.name.as_bytes(), self.size, &self.sha256, self.flags)
    }

    /// Parses a header record. The name is checked with [`check_name`].
    pub(crate) fn decode(record: &[u8]) -> Result<Self, Refusal> {
        let malformed = |why: &str| Refusal::new(Code::BAD_HEADER, format!("bad header: {why}"));
        if record.len() < HEADER_FIXED {
            return Err(malformed("too short"));
        }
        if record[0] != KIND_HEADER {
            return Err(malformed("not a header record"));
        }
        let flags = record[1];
        if flags & !FLAG_RESUME != 0 {
            return Err(malformed("unknown flags"));
        }
        let size = u64::from_be_bytes(record[2..10].try_into().unwrap_or_default());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&record[10..42]);
        let name_len = usize::from(u16::from_be_bytes([record[42], record[43]]));
        let name = &record[HEADER_FIXED..];
        if name.len() != name_len {
            return Err(malformed("name length does not match the record"));
        }
        let name = check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            size,
            sha256,
            flags,
        })
    }
}

/// A header record with any bytes as the name (tests send hostile ones).
pub(crate) fn encode_header_raw(name: &[u8], size: u64, sha256: &[u8; 32], flags: u8) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER_FIXED + name.len());
    r.push(KIND_HEADER);
    r.push(flags);
    r.extend_from_slice(&size.to_be_bytes());
    r.extend_from_slice(sha256);
    r.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
    r.extend_from_slice(name);
    r
}

/// Checks that `name` is safe to create inside the receiver's directory: valid UTF-8, one
/// plain path component (no `/` or `\`, not `.` or `..`, so never absolute and never
/// outside the directory), no NUL or other control character, 1 to [`MAX_NAME`] bytes, and
/// not the name of a partial file.
pub(crate) fn check_name(name: &[u8]) -> Result<&str, Refusal> {
    let unsafe_name = |why: &str| {
        Refusal::new(
            Code::UNSAFE_NAME,
            format!(
                "unsafe file name {:?}: {why}",
                String::from_utf8_lossy(name)
            ),
        )
    };
    if name.is_empty() {
        return Err(unsafe_name("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(unsafe_name(&format!("longer than {MAX_NAME} bytes")));
    }
    let Ok(text) = std::str::from_utf8(name) else {
        return Err(unsafe_name("not UTF-8"));
    };
    if text.contains('\0') {
        return Err(unsafe_name("contains NUL"));
    }
    if text.chars().any(char::is_control) {
        return Err(unsafe_name("contains a control character"));
    }
    if text.contains('/') || text.contains('\\') {
        return Err(unsafe_name(
            "contains a path separator (only plain names are taken)",
        ));
    }
    if text == "." || text == ".." {
        return Err(unsafe_name("is a directory reference"));
    }
    if text.ends_with(PART_SUFFIX) {
        return Err(unsafe_name("names a partial file"));
    }
    // Belt and braces: whatever the checks above missed, the path must be one plain component.
    let mut components = std::path::Path::new(text).components();
    match (components.next(), components.next()) {
        (Some(std::path::Component::Normal(c)), None) if c == text => Ok(text),
        _ => Err(unsafe_name("is not a plain file name")),
    }
}

/// The OFFSET record: where the body starts (what the receiver already has).
pub(crate) fn encode_offset(offset: u64) -> Vec<u8> {
    let mut r = vec![KIND_OFFSET];
    r.extend_from_slice(&offset.to_be_bytes());
    r
}

/// Parses an OFFSET record.
pub(crate) fn decode_offset(record: &[u8]) -> Option<u64> {
    match record {
        [KIND_OFFSET, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// A verdict code: why a file was refused (or [`Code::OK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code(pub(crate) u8);

impl Code {
    /// Received, verified and stored.
    pub(crate) const OK: Self = Self(0);
    /// The header record is malformed or missing.
    pub(crate) const BAD_HEADER: Self = Self(1);
    /// The name is unsafe ([`check_name`]).
    pub(crate) const UNSAFE_NAME: Self = Self(2);
    /// A file of that name exists and the receiver does not overwrite.
    pub(crate) const EXISTS: Self = Self(3);
    /// More bytes arrived than the header announced.
    pub(crate) const TOO_MANY_BYTES: Self = Self(4);
    /// The body ended before the announced size.
    pub(crate) const TOO_FEW_BYTES: Self = Self(5);
    /// The body's SHA-256 differs from the header's.
    pub(crate) const HASH_MISMATCH: Self = Self(6);
    /// The receiver could not write the file.
    pub(crate) const IO: Self = Self(7);
    /// The same name is being received on another substream right now.
    pub(crate) const BUSY: Self = Self(8);
    /// The file is larger than the receiver accepts.
    pub(crate) const TOO_LARGE: Self = Self(9);
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::OK => "ok",
            Self::BAD_HEADER => "bad header",
            Self::UNSAFE_NAME => "unsafe name",
            Self::EXISTS => "file exists",
            Self::TOO_MANY_BYTES => "more bytes than announced",
            Self::TOO_FEW_BYTES => "fewer bytes than announced",
            Self::HASH_MISMATCH => "SHA-256 mismatch",
            Self::IO => "receiver I/O error",
            Self::BUSY => "busy",
            Self::TOO_LARGE => "too large",
            Self(other) => return write!(f, "code {other}"),
        };
        f.write_str(name)
    }
}

/// Why a receiver refused a file: the code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// What went wrong.
    pub(crate) code: Code,
    /// Details.
    pub(crate) message: String,
}

impl Refusal {
    /// A refusal; the message is cut to [`MAX_MESSAGE`] bytes.
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { code, message }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

/// The receiver's last word on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// [`Code::OK`] or why the file was refused.
    pub(crate) code: Code,
    /// Body bytes the receiver took (including a resumed prefix).
    pub(crate) bytes: u64,
    /// Details ("" when OK).
    pub(crate) message: String,
}

impl Verdict {
    /// The verdict's record.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let message = Refusal::new(self.code, self.message.clone()).message;
        let mut r = Vec::with_capacity(10 + message.len());
        r.push(KIND_VERDICT);
        r.push(self.code.0);
        r.extend_from_slice(&self.bytes.to_be_bytes());
        r.extend_from_slice(message.as_bytes());
        r
    }

    /// Parses a verdict record.
    pub(crate) fn decode(record: &[u8]) -> Option<Self> {
        if record.len() < 10 || record[0] != KIND_VERDICT {
            return None;
        }
        Some(Self {
            code: Code(record[1]),
            bytes: u64::from_be_bytes(record[2..10].try_into().ok()?),
            // Shown to a person: no control characters (terminal escapes) from the peer.
            message: String::from_utf8_lossy(&record[10..])
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let h = Header {
            name: "report.pdf".into(),
            size: 123_456_789,
            sha256: [7; 32],
            flags: FLAG_RESUME,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        assert_eq!(decode_offset(&encode_offset(42)), Some(42));
        let v = Verdict {
            code: Code::HASH_MISMATCH,
            bytes: 9,
            message: "no".into(),
        };
        assert_eq!(Verdict::decode(&v.encode()), Some(v));
    }
}
