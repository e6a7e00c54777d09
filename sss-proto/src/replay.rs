//! Sliding anti-replay window over 64-bit packet numbers (spec/packets.md, "Replay window").
//!
//! The receiver calls [`ReplayWindow::check`] before decrypting, to spend no AEAD work on
//! packets it would drop, and [`ReplayWindow::record`] only after the packet authenticated, so
//! a forged packet can neither mark a number as seen nor slide the window forward.
//!
//! The window accepts a packet number `pn` iff it was never recorded and either exceeds the
//! largest recorded number or lies less than [`WINDOW`] below it. The bitmap is a ring of
//! 64-bit words indexed by `pn / 64`, as in WireGuard and RFC 6479: sliding forward clears
//! whole words, so the cost per packet is constant. The ring has one word more than the window
//! needs, because the window's oldest and newest words are partial and may be different words
//! that map to the same slot otherwise.

use thiserror::Error;

/// Width of the window in packet numbers.
///
/// It must cover the reordering a path can produce: at 10 Gbit/s with 1500-byte packets this
/// is about 5 ms. quinn issue #2710 shows throughput collapsing with a 128-packet window.
pub const WINDOW: u64 = 4096;

const WORD_BITS: u64 = 64;
/// Words covering the window plus one, so the partial oldest and newest words never collide.
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

/// Why a packet number is refused.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// This packet number was already received.
    #[error("duplicate packet number")]
    Duplicate,
    /// The packet number is [`WINDOW`] or more below the largest received; it cannot be told
    /// apart from a replay and is dropped.
    #[error("packet number too old for the replay window")]
    TooOld,
}

/// The set of packet numbers received recently, as a fixed-size bitmap.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct ReplayWindow {
    /// Largest packet number recorded so far.
    largest: Option<u64>,
    /// Bit `pn % 64` of word `(pn / 64) % WORDS` is set iff `pn` was recorded and is within
    /// the words the ring currently covers.
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every packet number is acceptable.
    pub fn new() -> Self {
        Self {
            largest: None,
            ring: [0; WORDS],
        }
    }

    /// Whether `pn` would be accepted. Has no side effects; call before decrypting.
    pub fn check(&self, pn: u64) -> Result<(), ReplayError> {
        let Some(largest) = self.largest else {
            return Ok(());
        };
        if pn > largest {
            return Ok(());
        }
        if largest - pn >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = slot(pn);
        if self.ring[word] & bit != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Marks `pn` as received, sliding the window forward if it is the new largest. Call only
    /// after the packet authenticated. A number that [`check`](Self::check) would call too old
    /// is ignored.
    pub fn record(&mut self, pn: u64) {
        match self.largest {
            None => {
                self.ring = [0; WORDS];
                self.largest = Some(pn);
            }
            Some(largest) if pn > largest => {
                self.slide(largest, pn);
                self.largest = Some(pn);
            }
            Some(largest) if largest - pn >= WINDOW => return,
            Some(_) => {}
        }
        let (word, bit) = slot(pn);
        self.ring[word] |= bit;
    }

    /// Largest packet number recorded so far.
    pub fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// Clears the words that enter the ring when the largest moves from `old` to `new`; they
    /// still hold bits of numbers that left the window.
    fn slide(&mut self, old: u64, new: u64) {
        let (old_word, new_word) = (old / WORD_BITS, new / WORD_BITS);
        let advance = new_word - old_word;
        if advance >= WORDS as u64 {
            self.ring = [0; WORDS];
            return;
        }
        for w in old_word + 1..=new_word {
            self.ring[(w % WORDS as u64) as usize] = 0;
        }
    }
}

/// Ring slot and bit mask of `pn`.
fn slot(pn: u64) -> (usize, u64) {
    let word = ((pn / WORD_BITS) % WORDS as u64) as usize;
    (word, 1 << (pn % WORD_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The specification, written naively: accept iff never seen and not `WINDOW` or more
    /// below the largest seen.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        largest: Option<u64>,
    }

    impl Model {
        fn check(&self, pn: u64) -> Result<(), ReplayError> {
            match self.largest {
                Some(l) if pn <= l && l - pn >= WINDOW => Err(ReplayError::TooOld),
                _ if self.seen.contains(&pn) => Err(ReplayError::Duplicate),
                _ => Ok(()),
            }
        }

        fn record(&mut self, pn: u64) {
            self.seen.insert(pn);
            self.largest = self.largest.max(Some(pn));
        }
    }

    /// Packet numbers that wander around a moving point: mostly small steps both ways (reordering
    /// and duplicates), sometimes jumps of more than the window, and values near the window edge.
    fn walk() -> impl Strategy<Value = Vec<u64>> {
        let step = prop_oneof![
            8 => -80i64..80,
            2 => Just(-(WINDOW as i64)),
            2 => Just(-(WINDOW as i64) + 1),
            1 => -(3 * WINDOW as i64)..(3 * WINDOW as i64),
            1 => (WORDS as i64 * 64 - 70)..(WORDS as i64 * 64 + 70),
            1 => 0i64..1_000_000,
        ];
        (0u64..200, prop::collection::vec(step, 1..300)).prop_map(|(start, steps)| {
            let mut at = start;
            steps
                .into_iter()
                .map(|d| {
                    at = at.saturating_add_signed(d);
                    at
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn matches_hashset_model(pns in walk()) {
            let mut window = ReplayWindow::new();
            let mut model = Model::default();
            for pn in pns {
                // Probe the neighbourhood too, so bits left behind by a slide would show.
                for probe in pn.saturating_sub(WINDOW + 2)..pn.saturating_add(3) {
                    if probe % 61 == 0 || probe + 3 >= pn {
                        prop_assert_eq!(window.check(probe), model.check(probe), "probe {}", probe);
                    }
                }
                let verdict = window.check(pn);
                prop_assert_eq!(verdict, model.check(pn), "pn {}", pn);
                if verdict.is_ok() {
                    window.record(pn);
                    model.record(pn);
                    prop_assert_eq!(window.check(pn), Err(ReplayError::Duplicate));
                }
                prop_assert_eq!(window.largest(), model.largest);
            }
        }

        #[test]
        fn check_has_no_side_effects(pns in walk(), probes in prop::collection::vec(any::<u64>(), 1..20)) {
            let mut window = ReplayWindow::new();
            for pn in pns {
                if window.check(pn).is_ok() {
                    window.record(pn);
                }
            }
            let before = window.clone();
            for p in probes {
                let first = window.check(p);
                prop_assert_eq!(window.check(p), first);
            }
            prop_assert_eq!(window, before);
        }
    }

    #[test]
    fn far_jump_forward_clears_everything() {
        let mut w = ReplayWindow::new();
        for pn in 0..WINDOW {
            w.record(pn);
        }
        // Land on a number whose ring slot aliases old, still-set bits.
        let far = WORDS as u64 * 64 * 7 + 5;
        w.record(far);
        for pn in far - WINDOW + 1..far {
            assert_eq!(w.check(pn), Ok(()), "{pn} was never received");
        }
        assert_eq!(w.check(far), Err(ReplayError::Duplicate));
        assert_eq!(w.check(far - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn window_edge_is_exact() {
        let mut w = ReplayWindow::new();
        w.record(10_000);
        assert_eq!(w.check(10_000 - WINDOW + 1), Ok(()));
        assert_eq!(w.check(10_000 - WINDOW), Err(ReplayError::TooOld));
        w.record(10_000 - WINDOW + 1);
        w.record(10_000 - WINDOW); // too old: ignored, not a panic
        assert_eq!(w.check(10_000 - WINDOW + 1), Err(ReplayError::Duplicate));
        // Sliding by one word must keep the oldest still-valid number marked.
        w.record(10_000 + 63);
        assert_eq!(w.check(10_000), Err(ReplayError::Duplicate));
        assert_eq!(w.check(10_000 + 62), Ok(()));
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut w = ReplayWindow::new();
        w.record(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Duplicate));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        assert_eq!(w.check(u64::MAX - 1), Ok(()));
    }
}
