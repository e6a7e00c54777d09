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
    /// Every range but the greatest: start -> end (exclusive).
    map: BTreeMap<u64, u64>,
    /// The greatest range, kept out of the map: the common operations (a value that extends
    /// it, a query at or after it) touch only this field, without walking the tree. `None`
    /// only when the set is empty. Always present in a non-empty set, so the representation
    /// of a set is unique and the derived equality holds.
    last: Option<(u64, u64)>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every value of `r`; returns whether any of them was not already present.
    #[inline]
    pub fn insert(&mut self, r: Range<u64>) -> bool {
        // Fast path, inlined into the callers (several per packet): most insertions extend
        // the last range (packet numbers, and stream data arriving in order).
        if let Some((last_start, last_end)) = &mut self.last {
            if r.start >= *last_start && r.start <= *last_end && r.end > *last_end {
                *last_end = r.end;
                return true;
            }
        }
        self.insert_slow(r)
    }

    #[inline(never)]
    fn insert_slow(&mut self, r: Range<u64>) -> bool {
        if r.is_empty() {
            return false;
        }
        match &mut self.last {
            None => {
                self.last = Some((r.start, r.end));
                return true;
            }
            Some((last_start, last_end)) if r.start >= *last_start => {
                if r.start > *last_end {
                    self.map.insert(*last_start, *last_end);
                    self.last = Some((r.start, r.end));
                    return true;
                }
                if r.end <= *last_end {
                    return false;
                }
                *last_end = r.end;
                return true;
            }
            Some(_) => {}
        }
        self.with_all(|map| insert_into(map, r))
    }

    /// Adds `x`; returns whether it was new. `u64::MAX` cannot be stored and returns `false`.
    #[inline]
    pub fn insert_one(&mut self, x: u64) -> bool {
        match x.checked_add(1) {
            Some(end) => self.insert(x..end),
            None => false,
        }
    }

    /// Removes every value of `r`.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() || self.last.is_none() {
            return;
        }
        self.with_all(|map| remove_from(map, r));
    }

    /// Whether `x` is a member.
    pub fn contains(&self, x: u64) -> bool {
        // Fast path: most queries fall in or after the last range (stream counters opened in
        // order, packet numbers near the newest).
        match self.last {
            None => false,
            Some((s, e)) if x >= s => x < e,
            Some(_) => pred(&self.map, x).is_some_and(|(_, e)| e > x),
        }
    }

    /// The smallest member.
    pub fn min(&self) -> Option<u64> {
        match self.map.first_key_value() {
            Some((&s, _)) => Some(s),
            None => self.last.map(|(s, _)| s),
        }
    }

    /// The largest member.
    pub fn max(&self) -> Option<u64> {
        // Ranges are never empty, so `e >= 1`.
        self.last.map(|(_, e)| e - 1)
    }

    /// Number of disjoint ranges (not of values; see [`RangeSet::elements`]).
    pub fn len(&self) -> usize {
        self.map.len() + usize::from(self.last.is_some())
    }

    /// Whether the set has no members.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// The ranges in ascending order; `.rev()` gives the newest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map
            .iter()
            .map(|(&s, &e)| s..e)
            .chain(self.last.map(|(s, e)| s..e))
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        match self.map.pop_first() {
            Some((s, e)) => Some(s..e),
            None => self.last.take().map(|(s, e)| s..e),
        }
    }

    /// Total number of members.
    pub fn elements(&self) -> u64 {
        // Disjoint ranges below u64::MAX cannot sum past u64::MAX.
        self.iter().map(|r| r.end - r.start).sum()
    }

    /// Runs `f` on a map holding every range, the last one included, then takes the
    /// greatest range out of it again: the slow paths work on one tree.
    fn with_all<R>(&mut self, f: impl FnOnce(&mut BTreeMap<u64, u64>) -> R) -> R {
        if let Some((s, e)) = self.last.take() {
            self.map.insert(s, e);
        }
        let out = f(&mut self.map);
        self.last = self.map.pop_last();
        out
    }
}

/// [`RangeSet::insert`] on a plain map of ranges.
fn insert_into(map: &mut BTreeMap<u64, u64>, r: Range<u64>) -> bool {
    let (mut start, mut end) = (r.start, r.end);
    if let Some((s, e)) = pred(map, start) {
        if e >= end {
            return false;
        }
        // A predecessor that overlaps or touches is absorbed into the new range.
        if e >= start {
            map.remove(&s);
            start = s;
        }
    }
    // Absorb every following range that starts inside or right at the end of the new one.
    while let Some((s, e)) = succ(map, start) {
        if s > end {
            break;
        }
        map.remove(&s);
        end = end.max(e);
    }
    map.insert(start, end);
    true
}

/// [`RangeSet::remove`] on a plain map of ranges.
fn remove_from(map: &mut BTreeMap<u64, u64>, r: Range<u64>) {
    // A range starting before `r` may stick out on the left, the right, or both.
    if let Some((s, e)) = pred(map, r.start) {
        if e > r.start {
            map.remove(&s);
            if s < r.start {
                map.insert(s, r.start);
            }
            if e > r.end {
                map.insert(r.end, e);
                return;
            }
        }
    }
    while let Some((s, e)) = succ(map, r.start) {
        if s >= r.end {
            break;
        }
        map.remove(&s);
        if e > r.end {
            map.insert(r.end, e);
            break;
        }
    }
}

/// The range of `map` that starts at or before `x`, if any.
fn pred(map: &BTreeMap<u64, u64>, x: u64) -> Option<(u64, u64)> {
    map.range((Unbounded, Included(x)))
        .next_back()
        .map(|(&s, &e)| (s, e))
}

/// The first range of `map` that starts after `x`, if any.
fn succ(map: &BTreeMap<u64, u64>, x: u64) -> Option<(u64, u64)> {
    map.range((Excluded(x), Unbounded))
        .next()
        .map(|(&s, &e)| (s, e))
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
        // The greatest range lives outside the map, and only an empty set has none.
        match set.last {
            None => assert!(set.map.is_empty(), "ranges stored without a last one"),
            Some((s, _)) => assert!(
                set.map.last_key_value().is_none_or(|(_, &e)| e < s),
                "the map holds a range at or after the last one"
            ),
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
                // One representation per set: equality holds with a set built in order.
                let mut rebuilt = RangeSet::new();
                for r in set.iter() {
                    rebuilt.insert(r);
                }
                prop_assert_eq!(&rebuilt, &set);
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
