//! Seeded pseudo-random stream content that the receiver regenerates to check every byte.
//!
//! The content of a stream is a counter-based SplitMix64 keystream: the 8-byte little-endian
//! word at index `i` is `mix(key + (i + 1) * GOLDEN)`, where `key` is derived from the run's
//! seed, the stream index and the direction. Being counter-based, any slice can be generated
//! (and so checked) at any offset without state, and a block delivered at the wrong offset,
//! on the wrong stream or in the wrong direction does not match. It is not cryptographic and
//! needs not be: it only has to make accidental matches implausible, and it has to be cheap
//! (a few multiplies per 8 bytes) so that both stacks pay the same small cost.

/// The 64-bit golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a bijective avalanche of a 64-bit word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which way the content flows; the two directions of one stream have unrelated content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (uploads and requests).
    Request,
    /// Server to client (responses).
    Response,
}

/// The content of one direction of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    key: u64,
}

/// The first byte at which received content differs from the expected content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset of the byte within the stream's content.
    pub offset: u64,
    /// The byte the pattern has there.
    pub expected: u8,
    /// The byte that arrived.
    pub got: u8,
}

impl Pattern {
    /// The pattern for `stream` in `direction` of a run seeded with `seed`.
    pub fn new(seed: u64, stream: u32, direction: Direction) -> Self {
        let dir = match direction {
            Direction::Request => 0,
            Direction::Response => 1,
        };
        // Mixing twice keeps (seed, stream) pairs that differ in one bit far apart.
        let key = mix(mix(seed) ^ (u64::from(stream) << 1 | dir));
        Self { key }
    }

    /// The content word at `index` (bytes `8 * index .. 8 * index + 8`).
    fn word(&self, index: u64) -> [u8; 8] {
        mix(self
            .key
            .wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
        .to_le_bytes()
    }

    /// Writes the content bytes `offset .. offset + buf.len()` into `buf`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut index = offset / 8;
        // `offset % 8 < 8`, so the cast cannot truncate.
        let skip = (offset % 8) as usize;
        let head_len = if skip == 0 {
            0
        } else {
            (8 - skip).min(buf.len())
        };
        let (head, rest) = buf.split_at_mut(head_len);
        if !head.is_empty() {
            head.copy_from_slice(&self.word(index)[skip..skip + head_len]);
            index += 1;
        }
        let mut words = rest.chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&self.word(index));
            index += 1;
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            let n = tail.len();
            tail.copy_from_slice(&self.word(index)[..n]);
        }
    }

    /// Checks `data` against the content at `offset`, generating the expected bytes into
    /// `scratch` (any non-zero length; longer is faster) one piece at a time.
    pub fn verify(&self, offset: u64, data: &[u8], scratch: &mut [u8]) -> Result<(), Mismatch> {
        assert!(!scratch.is_empty(), "verify needs a scratch buffer");
        let mut at = offset;
        for piece in data.chunks(scratch.len()) {
            let expected = &mut scratch[..piece.len()];
            self.fill(at, expected);
            if expected != piece {
                let (i, (e, g)) = expected
                    .iter()
                    .zip(piece)
                    .enumerate()
                    .find(|(_, (e, g))| e != g)
                    .expect("unequal slices of equal length differ somewhere");
                return Err(Mismatch {
                    offset: at + i as u64,
                    expected: *e,
                    got: *g,
                });
            }
            at += piece.len() as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(p: &Pattern, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        p.fill(0, &mut v);
        v
    }

    #[test]
    fn fill_at_any_offset_matches_the_whole() {
        let p = Pattern::new(7, 3, Direction::Request);
        let whole = content(&p, 100);
        for start in 0..40 {
            for len in 0..30 {
                let mut part = vec![0; len];
                p.fill(start as u64, &mut part);
                assert_eq!(part, whole[start..start + len], "start {start} len {len}");
            }
        }
    }

    #[test]
    fn streams_seeds_and_directions_differ() {
        let base = content(&Pattern::new(1, 0, Direction::Request), 64);
        for other in [
            Pattern::new(2, 0, Direction::Request),
            Pattern::new(1, 1, Direction::Request),
            Pattern::new(1, 0, Direction::Response),
        ] {
            assert_ne!(content(&other, 64), base);
        }
    }

    #[test]
    fn content_is_not_trivially_periodic_or_biased() {
        let v = content(&Pattern::new(42, 0, Direction::Request), 1 << 16);
        let mut counts = [0u32; 256];
        for b in &v {
            counts[usize::from(*b)] += 1;
        }
        // 65536 bytes over 256 values: 256 expected each; a stuck generator fails this.
        assert!(
            counts.iter().all(|&c| (150..400).contains(&c)),
            "{counts:?}"
        );
        assert_ne!(v[..4096], v[4096..8192]);
    }

    #[test]
    fn verify_accepts_correct_content_in_pieces() {
        let p = Pattern::new(9, 5, Direction::Response);
        let whole = content(&p, 10_000);
        let mut scratch = [0u8; 333];
        assert_eq!(p.verify(0, &whole, &mut scratch), Ok(()));
        assert_eq!(p.verify(1234, &whole[1234..5000], &mut scratch), Ok(()));
    }

    #[test]
    fn verify_reports_the_first_flipped_byte() {
        let p = Pattern::new(9, 5, Direction::Request);
        let mut data = content(&p, 5000);
        data[4321] ^= 0x01;
        data[4500] ^= 0x80;
        let mut scratch = [0u8; 1024];
        let err = p.verify(0, &data, &mut scratch).unwrap_err();
        assert_eq!(err.offset, 4321);
        assert_eq!(err.got, err.expected ^ 0x01);
    }

    #[test]
    fn verify_rejects_content_at_the_wrong_offset() {
        let p = Pattern::new(9, 5, Direction::Request);
        let data = content(&p, 4096);
        let mut scratch = [0u8; 4096];
        assert!(p.verify(8, &data[..1024], &mut scratch).is_err());
        assert!(p.verify(4096, &data, &mut scratch).is_err());
    }
}
