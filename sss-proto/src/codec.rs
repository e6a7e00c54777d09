//! Byte-level encoding helpers shared by every wire format: big-endian integers, QUIC-style
//! variable-length integers (RFC 9000 §16) and a bounds-checked reader that never panics.

use thiserror::Error;

/// The largest value a variable-length integer can hold (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// The input ended before a field was complete.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Error)]
#[error("input truncated")]
pub struct Truncated;

/// Number of bytes `v` takes as a variable-length integer.
///
/// Values above [`VARINT_MAX`] cannot be encoded; they report 8 and [`write_varint`]
/// clamps them, which callers prevent by construction.
pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` as a variable-length integer (values above [`VARINT_MAX`] are clamped).
pub fn write_varint(buf: &mut Vec<u8>, v: u64) {
    let v = v.min(VARINT_MAX);
    match varint_len(v) {
        1 => buf.push(v as u8),
        2 => buf.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => buf.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => buf.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A cursor over untrusted bytes. Every read is bounds-checked and returns [`Truncated`]
/// instead of panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.remaining() < n {
            return Err(Truncated);
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Takes all remaining bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }

    /// Takes `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.bytes(1)?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a variable-length integer.
    pub fn varint(&mut self) -> Result<u64, Truncated> {
        // Runs for every field of every frame: one bounds check and one fixed-size load
        // per integer instead of a loop over its bytes.
        let rest = &self.data[self.pos..];
        let &first = rest.first().ok_or(Truncated)?;
        let (v, len) = match first >> 6 {
            0 => (u64::from(first), 1),
            1 => {
                let b: [u8; 2] = rest
                    .get(..2)
                    .ok_or(Truncated)?
                    .try_into()
                    .map_err(|_| Truncated)?;
                (u64::from(u16::from_be_bytes(b) & 0x3fff), 2)
            }
            2 => {
                let b: [u8; 4] = rest
                    .get(..4)
                    .ok_or(Truncated)?
                    .try_into()
                    .map_err(|_| Truncated)?;
                (u64::from(u32::from_be_bytes(b) & 0x3fff_ffff), 4)
            }
            _ => {
                let b: [u8; 8] = rest
                    .get(..8)
                    .ok_or(Truncated)?
                    .try_into()
                    .map_err(|_| Truncated)?;
                (u64::from_be_bytes(b) & VARINT_MAX, 8)
            }
        };
        self.pos += len;
        Ok(v)
    }

    /// Reads a variable-length integer length prefix followed by that many bytes.
    pub fn varint_bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| Truncated)?;
        self.bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc9000_examples() {
        let cases: [(&[u8], u64); 4] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(Reader::new(bytes).varint(), Ok(value));
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out, bytes);
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert_eq!(Reader::new(&[0xc2, 0x19]).varint(), Err(Truncated));
        assert_eq!(Reader::new(&[]).u8(), Err(Truncated));
        assert_eq!(Reader::new(&[5, 1, 2]).varint_bytes(), Err(Truncated));
    }

    proptest! {
        #[test]
        fn varint_round_trip(v in 0..=VARINT_MAX) {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint(), Ok(v));
            prop_assert!(r.is_empty());
        }
    }
}
