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

    /// The input of [`mix`] for the content word at `index` (bytes `8 * index .. 8 * index +
    /// 8`); the next word's is this plus [`GOLDEN`].
    fn seed_of(&self, index: u64) -> u64 {
        self.key
            .wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN))
    }

    /// The content word at `index`.
    fn word(&self, index: u64) -> [u8; 8] {
        mix(self.seed_of(index)).to_le_bytes()
    }

    /// Writes the content bytes `offset .. offset + buf.len()` into `buf`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let (head, mut index) = self.split_head(offset, buf.len());
        let (head_buf, rest) = buf.split_at_mut(head.len());
        if !head_buf.is_empty() {
            head_buf.copy_from_slice(&self.word(index - 1)[head]);
        }
        // Four independent words per step, the counter advanced by additions: the multiplies
        // of consecutive words overlap (about twice as fast as one word at a time).
        let mut z = self.seed_of(index);
        let mut blocks = rest.chunks_exact_mut(32);
        for block in &mut blocks {
            let words = [
                mix(z),
                mix(z.wrapping_add(GOLDEN)),
                mix(z.wrapping_add(GOLDEN.wrapping_mul(2))),
                mix(z.wrapping_add(GOLDEN.wrapping_mul(3))),
            ];
            for (out, w) in block.chunks_exact_mut(8).zip(words) {
                out.copy_from_slice(&w.to_le_bytes());
            }
            z = z.wrapping_add(GOLDEN.wrapping_mul(4));
            index += 4;
        }
        let mut words = blocks.into_remainder().chunks_mut(8);
        for out in &mut words {
            let n = out.len();
            out.copy_from_slice(&self.word(index)[..n]);
            index += 1;
        }
    }

    /// For content starting at `offset` and `len` bytes long: the byte range of the first
    /// content word that precedes the first word boundary (empty when `offset` is aligned),
    /// and the index of the first whole word after it.
    fn split_head(&self, offset: u64, len: usize) -> (std::ops::Range<usize>, u64) {
        let index = offset / 8;
        // `offset % 8 < 8`, so the cast cannot truncate.
        let skip = (offset % 8) as usize;
        if skip == 0 {
            (0..0, index)
        } else {
            (skip..skip + (8 - skip).min(len), index + 1)
        }
    }

    /// Checks `data` against the content at `offset`, comparing whole words as they are
    /// generated (nothing is written out).
    pub fn verify(&self, offset: u64, data: &[u8]) -> Result<(), Mismatch> {
        let (head, mut index) = self.split_head(offset, data.len());
        let (head_data, rest) = data.split_at(head.len());
        if !head_data.is_empty() {
            self.check(offset, &self.word(index - 1)[head], head_data)?;
        }
        let mut at = offset + head_data.len() as u64;
        let mut z = self.seed_of(index);
        let mut blocks = rest.chunks_exact(32);
        for block in &mut blocks {
            let expected = [
                mix(z),
                mix(z.wrapping_add(GOLDEN)),
                mix(z.wrapping_add(GOLDEN.wrapping_mul(2))),
                mix(z.wrapping_add(GOLDEN.wrapping_mul(3))),
            ];
            let mut differ = 0;
            for (got, w) in block.chunks_exact(8).zip(expected) {
                let got = u64::from_le_bytes(got.try_into().expect("8-byte chunk"));
                differ |= got ^ w;
            }
            if differ != 0 {
                let mut bytes = [0u8; 32];
                for (out, w) in bytes.chunks_exact_mut(8).zip(expected) {
                    out.copy_from_slice(&w.to_le_bytes());
                }
                self.check(at, &bytes, block)?;
            }
            z = z.wrapping_add(GOLDEN.wrapping_mul(4));
            index += 4;
            at += 32;
        }
        for got in blocks.remainder().chunks(8) {
            self.check(at, &self.word(index)[..got.len()], got)?;
            index += 1;
            at += got.len() as u64;
        }
        Ok(())
    }

    /// Compares `got` (content at `at`) with the `expected` bytes.
    fn check(&self, at: u64, expected: &[u8], got: &[u8]) -> Result<(), Mismatch> {
        match expected.iter().zip(got).position(|(e, g)| e != g) {
            None => Ok(()),
            Some(i) => Err(Mismatch {
                offset: at + i as u64,
                expected: expected[i],
                got: got[i],
            }),
        }
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

    /// The content as the module documentation defines it, one word at a time.
    fn reference(p: &Pattern, offset: u64, len: usize) -> Vec<u8> {
        (offset..offset + len as u64)
            .map(|at| {
                mix(p.key.wrapping_add((at / 8 + 1).wrapping_mul(GOLDEN))).to_le_bytes()
                    [(at % 8) as usize]
            })
            .collect()
    }

    #[test]
    fn fill_matches_the_definition() {
        let p = Pattern::new(3, 1, Direction::Request);
        for (offset, len) in [(0, 1000), (5, 77), (13, 32), (8, 31), (1 << 40, 100)] {
            let mut buf = vec![0; len];
            p.fill(offset, &mut buf);
            assert_eq!(buf, reference(&p, offset, len), "offset {offset} len {len}");
        }
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
        assert_eq!(p.verify(0, &whole), Ok(()));
        for start in [1234, 1235, 1239, 1240] {
            for end in [5000, 5001, 5007, 5031, 5032] {
                assert_eq!(p.verify(start as u64, &whole[start..end]), Ok(()));
            }
        }
    }

    #[test]
    fn verify_reports_the_first_flipped_byte() {
        let p = Pattern::new(9, 5, Direction::Request);
        let mut data = content(&p, 5000);
        data[4321] ^= 0x01;
        data[4500] ^= 0x80;
        let err = p.verify(0, &data).unwrap_err();
        assert_eq!(err.offset, 4321);
        assert_eq!(err.got, err.expected ^ 0x01);
        // In the unaligned head, a whole block and the tail alike.
        for at in [1, 6, 40, 4990, 4999] {
            let mut data = content(&p, 5000);
            data[at] ^= 0x10;
            let err = p.verify(1, &data[1..]).unwrap_err();
            assert_eq!((err.offset, err.got ^ err.expected), (at as u64, 0x10));
        }
    }

    #[test]
    fn verify_rejects_content_at_the_wrong_offset() {
        let p = Pattern::new(9, 5, Direction::Request);
        let data = content(&p, 4096);
        assert!(p.verify(8, &data[..1024]).is_err());
        assert!(p.verify(4096, &data).is_err());
    }
}
