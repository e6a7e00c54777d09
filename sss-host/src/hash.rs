//! A fast keyed hash for the driver's per-datagram map look-ups.
//!
//! Every datagram looks up its channel and its peer; with std's SipHash-1-3 those two look-ups
//! were about 3 % of a receiver's time at bulk rates. Keys here are small and fixed-size
//! (channel handles we allocate, 32-byte EIDs), so a few multiply-fold steps suffice. The
//! fold is keyed with a random per-map seed (taken from std's `RandomState`), so a peer
//! cannot predict which EIDs collide; it only enters the `peers` map after a full
//! authenticated handshake, and that map's size is bounded by `max_peers`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` with [`FoldHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, FoldState>;

/// Builds [`FoldHasher`]s with a seed drawn once per map.
#[derive(Clone, Debug)]
pub(crate) struct FoldState {
    seed: u64,
}

impl Default for FoldState {
    fn default() -> Self {
        Self {
            seed: RandomState::new().hash_one(0x5353_5348_6173_6821u64),
        }
    }
}

impl BuildHasher for FoldState {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { state: self.seed }
    }
}

/// Folds 8-byte words into the state with a multiply; SplitMix64's finaliser at the end.
#[derive(Debug)]
pub(crate) struct FoldHasher {
    state: u64,
}

impl FoldHasher {
    fn fold(&mut self, word: u64) {
        self.state = (self.state ^ word)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.fold(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.fold(u64::from_le_bytes(word) ^ (rest.len() as u64) << 59);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.fold(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.fold(n as u64);
    }

    fn finish(&self) -> u64 {
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_seeds_differ() {
        let a = FoldState::default();
        let b = FoldState::default();
        let key = [7u8; 32];
        assert_eq!(a.hash_one(key), a.hash_one(key));
        assert_ne!(a.hash_one(key), b.hash_one(key), "seeds are per map");
    }

    #[test]
    fn keys_spread_over_buckets() {
        // 4096 EID-like keys differing in one byte each, and 4096 consecutive handles: the
        // low 10 bits (a 1024-bucket table) are close to uniform.
        let s = FoldState::default();
        for keys in [
            (0..4096u32)
                .map(|i| {
                    // 4096 distinct keys: byte i % 32 set to 1 + i / 32 (1..=128).
                    let mut k = [0u8; 32];
                    k[(i % 32) as usize] = (1 + i / 32) as u8;
                    s.hash_one(k)
                })
                .collect::<Vec<_>>(),
            (0..4096usize).map(|i| s.hash_one(i)).collect(),
        ] {
            let mut buckets = [0u32; 1024];
            for h in keys {
                buckets[(h & 1023) as usize] += 1;
            }
            let max = buckets.iter().max().copied().unwrap_or(0);
            assert!(max <= 16, "a bucket holds {max} of 4096 keys (4 expected, about 11 at most for a uniform hash)");
        }
    }

    #[test]
    fn short_writes_are_length_sensitive() {
        let s = FoldState::default();
        let h = |b: &[u8]| {
            let mut h = s.build_hasher();
            h.write(b);
            h.finish()
        };
        assert_ne!(h(b"ab"), h(b"ab\0"));
    }
}
