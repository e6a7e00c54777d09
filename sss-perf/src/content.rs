//! Seeded pseudo-random stream content that the receiver regenerates to check every byte.
//!
//! The content is a sequence of 8-byte little-endian words. Word `i` of a stream is
//!
//! ```text
//! TABLE[i mod 4096] ^ mix(key + (i / 64 + 1) * GOLDEN)
//! ```
//!
//! where `TABLE` is 4096 fixed pseudo-random words (32 KiB, SplitMix64 from a constant, the
//! same for every run), `mix` is SplitMix64's finaliser and `key` is derived from the run's
//! seed, the stream index and the direction. Every 64-word (512-byte) run has its own mask, so
//! a block delivered at the wrong offset (within a run: the table words differ; a whole
//! number of runs away: the masks differ), on the wrong stream, in the wrong direction or from
//! another run does not match. Being counter-based, any slice can be generated (and so checked)
//! at any offset without state.
//!
//! It is not cryptographic and need not be: it only has to make accidental matches
//! implausible, and it has to be cheap, because both stacks' benchmark figures include it.
//! Generating or checking costs one table load and one XOR per word (the compiler vectorises
//! both) plus one `mix` per 512 bytes, close to a memory copy; an earlier definition (one
//! `mix` per word) took 12-24 % of each side's CPU time at SSS's bulk rate and so capped the
//! ratio between the stacks that the benchmark is there to measure.

use std::sync::OnceLock;

/// The 64-bit golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Words in [`table`].
const TABLE_WORDS: usize = 4096;

/// Words that share one mask.
const RUN_WORDS: u64 = 64;

/// SplitMix64's finaliser: a bijective avalanche of a 64-bit word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fixed table, as little-endian bytes: SplitMix64 seeded with a constant.
fn table() -> &'static [u8] {
    static TABLE: OnceLock<Box<[u8]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let seed = mix(0x5353_535f_636f_6e74); // "SSS_cont"
        (0..TABLE_WORDS as u64)
            .flat_map(|j| mix(seed.wrapping_add((j + 1).wrapping_mul(GOLDEN))).to_le_bytes())
            .collect()
    })
}

/// Builds the shared table now, so that its one-off cost (about 10 µs) is not paid inside a
/// timed section.
pub fn warm_up() {
    table();
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

/// A piece of a buffer holding content from some offset on: either part of one word (at the
/// buffer's unaligned start or short end) or whole words of one run.
enum Piece {
    /// Bytes `skip..skip + len` of the word at `index`.
    Partial { index: u64, skip: usize },
    /// Whole words: the table's bytes from `table_at` on, XORed with `mask`.
    Words { table_at: usize, mask: u64 },
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

    /// The mask of the run of words `RUN_WORDS * run ..`.
    fn mask(&self, run: u64) -> u64 {
        mix(self
            .key
            .wrapping_add(run.wrapping_add(1).wrapping_mul(GOLDEN)))
    }

    /// The content word at `index`.
    fn word(&self, index: u64) -> [u8; 8] {
        let at = table_at(index);
        let t = u64::from_le_bytes(table()[at..at + 8].try_into().expect("8 bytes"));
        (t ^ self.mask(index / RUN_WORDS)).to_le_bytes()
    }

    /// Splits content bytes `offset .. offset + len` into pieces, calling `each(start, len,
    /// piece)` with the piece's position in the buffer, in order.
    fn pieces(&self, offset: u64, len: usize, mut each: impl FnMut(usize, usize, Piece)) {
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let index = at / 8;
            // `at % 8 < 8`, so the cast cannot truncate.
            let skip = (at % 8) as usize;
            let left = len - done;
            if skip != 0 || left < 8 {
                let n = (8 - skip).min(left);
                each(done, n, Piece::Partial { index, skip });
                done += n;
            } else {
                // To the end of the run (which never crosses the table's end) or the buffer.
                let to_run_end = (RUN_WORDS - index % RUN_WORDS) as usize;
                let n = to_run_end.min(left / 8) * 8;
                let piece = Piece::Words {
                    table_at: table_at(index),
                    mask: self.mask(index / RUN_WORDS),
                };
                each(done, n, piece);
                done += n;
            }
        }
    }

    /// Writes the content bytes `offset .. offset + buf.len()` into `buf`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let table = table();
        self.pieces(offset, buf.len(), |start, n, piece| {
            let out = &mut buf[start..start + n];
            match piece {
                Piece::Partial { index, skip } => {
                    out.copy_from_slice(&self.word(index)[skip..skip + n]);
                }
                Piece::Words { table_at, mask } => {
                    let words = table[table_at..table_at + n].chunks_exact(8);
                    for (o, t) in out.chunks_exact_mut(8).zip(words) {
                        let t = u64::from_le_bytes(t.try_into().expect("8 bytes"));
                        o.copy_from_slice(&(t ^ mask).to_le_bytes());
                    }
                }
            }
        });
    }

    /// Checks `data` against the content at `offset`, comparing whole words as they are
    /// generated (nothing is written out).
    pub fn verify(&self, offset: u64, data: &[u8]) -> Result<(), Mismatch> {
        let table = table();
        let mut first = Ok(());
        self.pieces(offset, data.len(), |start, n, piece| {
            if first.is_err() {
                return;
            }
            let got = &data[start..start + n];
            let at = offset + start as u64;
            match piece {
                Piece::Partial { index, skip } => {
                    first = check(at, &self.word(index)[skip..skip + n], got);
                }
                Piece::Words { table_at, mask } => {
                    let expected = &table[table_at..table_at + n];
                    let mut differ = 0;
                    for (g, t) in got.chunks_exact(8).zip(expected.chunks_exact(8)) {
                        let g = u64::from_le_bytes(g.try_into().expect("8 bytes"));
                        let t = u64::from_le_bytes(t.try_into().expect("8 bytes"));
                        differ |= g ^ t ^ mask;
                    }
                    if differ != 0 {
                        let mut bytes = [0; RUN_WORDS as usize * 8];
                        self.fill(at, &mut bytes[..n]);
                        first = check(at, &bytes[..n], got);
                    }
                }
            }
        });
        first
    }
}

/// The byte offset in [`table`] of the word used by content word `index`.
fn table_at(index: u64) -> usize {
    // `index % TABLE_WORDS < 4096`, so the cast cannot truncate.
    (index % TABLE_WORDS as u64) as usize * 8
}

/// Compares `got` (content at `at`) with the `expected` bytes.
fn check(at: u64, expected: &[u8], got: &[u8]) -> Result<(), Mismatch> {
    match expected.iter().zip(got).position(|(e, g)| e != g) {
        None => Ok(()),
        Some(i) => Err(Mismatch {
            offset: at + i as u64,
            expected: expected[i],
            got: got[i],
        }),
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

    /// The content as the module documentation defines it, one byte at a time.
    fn reference(p: &Pattern, offset: u64, len: usize) -> Vec<u8> {
        let seed = mix(0x5353_535f_636f_6e74);
        (offset..offset + len as u64)
            .map(|at| {
                let i = at / 8;
                let t = mix(seed.wrapping_add((i % 4096 + 1).wrapping_mul(GOLDEN)));
                let m = mix(p.key.wrapping_add((i / 64 + 1).wrapping_mul(GOLDEN)));
                (t ^ m).to_le_bytes()[(at % 8) as usize]
            })
            .collect()
    }

    #[test]
    fn fill_matches_the_definition() {
        let p = Pattern::new(3, 1, Direction::Request);
        for (offset, len) in [
            (0, 1000),
            (5, 77),
            (13, 32),
            (8, 31),
            (1 << 40, 100),
            (32_760, 40_000),
            (3, 100_000),
        ] {
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
        // A whole number of runs and of table lengths away: the masks differ.
        let long = content(&p, 200_000);
        for shift in [512, 1024, 32_768, 65_536] {
            assert!(p.verify(shift, &long[..1000]).is_err(), "shift {shift}");
            assert!(
                p.verify(0, &long[shift as usize..][..1000]).is_err(),
                "shift {shift}"
            );
        }
    }

    #[test]
    fn every_run_of_every_stream_differs() {
        // 512-byte runs of the first 256 KiB of a few streams: all distinct.
        let mut seen = std::collections::HashSet::new();
        for stream in 0..4 {
            let v = content(&Pattern::new(1, stream, Direction::Request), 1 << 18);
            for run in v.chunks(512) {
                assert!(seen.insert(run.to_vec()), "stream {stream}: a repeated run");
            }
        }
    }
}
