//! An ordered set of `u64` values stored as disjoint, non-adjacent half-open ranges.
//!
//! Received packet numbers arrive mostly in order, so they compress into a few long runs;
//! the same holds for acknowledged packets and, later, for reassembled stream offsets. A
//! `BTreeMap<start, end>` keeps every operation logarithmic in the number of runs, whatever
//! the number of values (the layout of quinn-proto's `RangeSet`).
//!
//! Invariant: for consecutive entries `(s1, e1)`, `(s2, e2)`: `s1 < e1 < s2 < e2`. Ranges never
//! touch, so two adjacent runs are always merged into one and [`RangeSet::len`] counts gaps + 1.
//!
//! Because ranges are half-open, `u64::MAX` itself can never be a member; packet numbers and
//! stream offsets stay below 2^62 (the variable-length integer limit), far from it.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::ops::Range;

/// A set of `u64` values kept as sorted, disjoint half-open ranges.
#[derive(Debug, Default, Clone, Eq, PartialEq)]
pub struct RangeSet {
    /// start -> end (exclusive).
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every value of `r`; returns whether any of them was not already present.
    pub fn insert(&mut self, r: Range<u64>) -> bool {
        if r.is_empty() {
            return false;
        }
        // Fast path: most insertions extend or follow the last range (packet numbers, and
        // stream data arriving in order).
        if let Some(mut last) = self.map.last_entry() {
            let (last_start, last_end) = (*last.key(), *last.get());
            if r.start >= last_start {
                if r.start > last_end {
                    self.map.insert(r.start, r.end);
                    return true;
                }
                if r.end <= last_end {
                    return false;
                }
                *last.get_mut() = r.end;
                return true;
            }
        }
        let (mut start, mut end) = (r.start, r.end);
        if let Some((s, e)) = self.pred(start) {
            if e >= end {
                return false;
            }
            // A predecessor that overlaps or touches is absorbed into the new range.
            if e >= start {
                self.map.remove(&s);
                start = s;
            }
        }
        // Absorb every following range that starts inside or right at the end of the new one.
        while let Some((s, e)) = self.succ(start) {
            if s > end {
                break;
            }
            self.map.remove(&s);
            end = end.max(e);
        }
        self.map.insert(start, end);
        true
    }

    /// Adds `x`; returns whether it was new. `u64::MAX` cannot be stored and returns `false`.
    pub fn insert_one(&mut self, x: u64) -> bool {
        match x.checked_add(1) {
            Some(end) => self.insert(x..end),
            None => false,
        }
    }

    /// Removes every value of `r`.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        // A range starting before `r` may stick out on the left, the right, or both.
        if let Some((s, e)) = self.pred(r.start) {
            if e > r.start {
                self.map.remove(&s);
                if s < r.start {
                    self.map.insert(s, r.start);
                }
                if e > r.end {
                    self.map.insert(r.end, e);
                    return;
                }
            }
        }
        while let Some((s, e)) = self.succ(r.start) {
            if s >= r.end {
                break;
            }
            self.map.remove(&s);
            if e > r.end {
                self.map.insert(r.end, e);
                break;
            }
        }
    }

    /// Whether `x` is a member.
    pub fn contains(&self, x: u64) -> bool {
        // Fast path: most queries fall in or after the last range (stream counters opened in
        // order, packet numbers near the newest).
        match self.map.last_key_value() {
            None => false,
            Some((&s, &e)) if x >= s => x < e,
            Some(_) => self.pred(x).is_some_and(|(_, e)| e > x),
        }
    }

    /// The smallest member.
    pub fn min(&self) -> Option<u64> {
        self.map.first_key_value().map(|(&s, _)| s)
    }

    /// The largest member.
    pub fn max(&self) -> Option<u64> {
        // Entries are never empty, so `e >= 1`.
        self.map.last_key_value().map(|(_, &e)| e - 1)
    }

    /// Number of disjoint ranges (not of values; see [`RangeSet::elements`]).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set has no members.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The ranges in ascending order; `.rev()` gives the newest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        self.map.pop_first().map(|(s, e)| s..e)
    }

    /// Total number of members.
    pub fn elements(&self) -> u64 {
        // Disjoint ranges below u64::MAX cannot sum past u64::MAX.
        self.map.iter().map(|(&s, &e)| e - s).sum()
    }

    /// The range that starts at or before `x`, if any.
    fn pred(&self, x: u64) -> Option<(u64, u64)> {
        self.map
            .range((Unbounded, Included(x)))
            .next_back()
            .map(|(&s, &e)| (s, e))
    }

    /// The first range that starts after `x`, if any.
    fn succ(&self, x: u64) -> Option<(u64, u64)> {
        self.map
            .range((Excluded(x), Unbounded))
            .next()
            .map(|(&s, &e)| (s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Range<u64>),
        InsertOne(u64),
        Remove(Range<u64>),
        PopMin,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..64, 0u64..12).prop_map(|(s, n)| Op::Insert(s..s + n)),
            4 => (0u64..70).prop_map(Op::InsertOne),
            3 => (0u64..64, 0u64..12).prop_map(|(s, n)| Op::Remove(s..s + n)),
            1 => Just(Op::PopMin),
        ]
    }

    /// Checks the structural invariant: sorted, non-empty, non-touching ranges.
    fn assert_canonical(set: &RangeSet) {
        let ranges: Vec<_> = set.iter().collect();
        for r in &ranges {
            assert!(r.start < r.end, "empty range {r:?} stored");
        }
        for w in ranges.windows(2) {
            assert!(w[0].end < w[1].start, "ranges {:?} touch or overlap", w);
        }
    }

    proptest! {
        #[test]
        fn matches_btreeset_model(ops in prop::collection::vec(op(), 0..60)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(r) => {
                        let new = r.clone().any(|x| !model.contains(&x));
                        model.extend(r.clone());
                        prop_assert_eq!(set.insert(r), new);
                    }
                    Op::InsertOne(x) => prop_assert_eq!(set.insert_one(x), model.insert(x)),
                    Op::Remove(r) => {
                        for x in r.clone() {
                            model.remove(&x);
                        }
                        set.remove(r);
                    }
                    Op::PopMin => {
                        let min_before = model.first().copied();
                        let popped = set.pop_min();
                        prop_assert_eq!(popped.as_ref().map(|r| r.start), min_before);
                        if let Some(r) = &popped {
                            for x in r.clone() {
                                prop_assert!(model.remove(&x));
                            }
                            // The popped run was maximal: the value after it is not a member.
                            prop_assert!(!model.contains(&r.end));
                        }
                    }
                }
                assert_canonical(&set);
                prop_assert_eq!(set.min(), model.first().copied());
                prop_assert_eq!(set.max(), model.last().copied());
                prop_assert_eq!(set.elements(), model.len() as u64);
                prop_assert_eq!(set.is_empty(), model.is_empty());
                for x in 0..80 {
                    prop_assert_eq!(set.contains(x), model.contains(&x), "contains({})", x);
                }
                let flattened: Vec<u64> = set.iter().flatten().collect();
                let expected: Vec<u64> = model.iter().copied().collect();
                prop_assert_eq!(flattened, expected);
            }
        }
    }

    #[test]
    fn adjacent_inserts_merge_and_removal_splits() {
        let mut set = RangeSet::new();
        assert!(set.insert(0..10));
        assert!(set.insert(20..30));
        assert_eq!(set.len(), 2);
        assert!(set.insert(10..20));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0..30]);
        assert!(!set.insert(5..25), "a contained range adds nothing");
        set.remove(10..12);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0..10, 12..30]);
        assert_eq!(set.iter().next_back(), Some(12..30));
        assert_eq!(set.elements(), 28);
    }

    #[test]
    fn u64_max_is_never_a_member() {
        let mut set = RangeSet::new();
        assert!(!set.insert_one(u64::MAX));
        assert!(set.insert_one(u64::MAX - 1));
        assert_eq!(set.max(), Some(u64::MAX - 1));
        assert!(!set.contains(u64::MAX));
        set.remove(0..u64::MAX);
        assert!(set.is_empty());
    }
}
