//! The responder's replay table: per initiator EID, the newest initiation timestamp accepted.
//!
//! An initiation is fresh iff its timestamp is greater than the stored one or, for an
//! initiator not in the table, greater than the `floor`. The table is bounded: when it is
//! full, the entry with the oldest timestamp is evicted and the floor rises to that
//! timestamp, so an evicted initiator's old initiations stay rejected. Ordered maps keep
//! this deterministic (no randomly keyed hashing) and O(log n).

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::Eid;

use super::messages::Timestamp;

/// Default number of initiators remembered.
pub const DEFAULT_REPLAY_TABLE_CAPACITY: usize = 65_536;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ReplayTable {
    capacity: usize,
    latest: BTreeMap<Eid, Timestamp>,
    by_time: BTreeSet<(Timestamp, Eid)>,
    floor: Option<Timestamp>,
}

impl ReplayTable {
    /// A table holding at most `capacity` initiators (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            latest: BTreeMap::new(),
            by_time: BTreeSet::new(),
            floor: None,
        }
    }

    /// Whether an initiation from `eid` stamped `ts` is fresh.
    pub(crate) fn is_fresh(&self, eid: &Eid, ts: Timestamp) -> bool {
        // The floor can exceed a stored entry after `raise_floor`.
        match self.latest.get(eid).copied().max(self.floor) {
            Some(bound) => ts > bound,
            None => true,
        }
    }

    /// Records an authenticated, fresh initiation. Call only after [`Self::is_fresh`].
    pub(crate) fn record(&mut self, eid: Eid, ts: Timestamp) {
        if let Some(old) = self.latest.insert(eid, ts) {
            self.by_time.remove(&(old, eid));
        } else if self.latest.len() > self.capacity {
            if let Some((oldest, evicted)) = self.by_time.pop_first() {
                self.latest.remove(&evicted);
                self.floor = self.floor.max(Some(oldest));
            }
        }
        self.by_time.insert((ts, eid));
    }

    /// Raises the floor (e.g. to the wall-clock time at start-up minus an allowed skew, so
    /// that initiations recorded before a restart cannot be replayed).
    pub(crate) fn raise_floor(&mut self, ts: Timestamp) {
        self.floor = self.floor.max(Some(ts));
    }

    /// Number of initiators remembered.
    pub(crate) fn len(&self) -> usize {
        self.latest.len()
    }

    /// The floor, if any entry was ever evicted or it was raised.
    pub(crate) fn floor(&self) -> Option<Timestamp> {
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn eid(n: u8) -> Eid {
        Identity::from_secret_bytes(&[n; 32]).eid()
    }

    fn ts(n: u64) -> Timestamp {
        Timestamp::from_unix_nanos(n)
    }

    #[test]
    fn newer_is_fresh_equal_or_older_is_not() {
        let mut t = ReplayTable::new(4);
        assert!(t.is_fresh(&eid(1), ts(10)));
        t.record(eid(1), ts(10));
        assert!(!t.is_fresh(&eid(1), ts(10)));
        assert!(!t.is_fresh(&eid(1), ts(9)));
        assert!(t.is_fresh(&eid(1), ts(11)));
        // Another initiator is independent.
        assert!(t.is_fresh(&eid(2), ts(1)));
        t.record(eid(1), ts(20));
        assert_eq!(t.len(), 1);
        assert!(!t.is_fresh(&eid(1), ts(15)));
    }

    #[test]
    fn eviction_removes_the_oldest_and_raises_the_floor() {
        let mut t = ReplayTable::new(3);
        t.record(eid(1), ts(30));
        t.record(eid(2), ts(10));
        t.record(eid(3), ts(20));
        assert_eq!(t.floor(), None);
        t.record(eid(4), ts(40));
        assert_eq!(t.len(), 3);
        assert_eq!(t.floor(), Some(ts(10)));
        // The evicted initiator's old initiation is still a replay, thanks to the floor...
        assert!(!t.is_fresh(&eid(2), ts(10)));
        // ...as is any unknown initiator at or below the floor; above it is fresh.
        assert!(!t.is_fresh(&eid(9), ts(5)));
        assert!(t.is_fresh(&eid(9), ts(11)));
        // Entries still in the table keep their own bound.
        assert!(!t.is_fresh(&eid(1), ts(30)));
        assert!(t.is_fresh(&eid(3), ts(21)));
        // Updating a present entry never evicts.
        t.record(eid(3), ts(50));
        assert_eq!(t.len(), 3);
        assert_eq!(t.floor(), Some(ts(10)));
        // The next eviction takes eid(1) at 30 (now the oldest).
        t.record(eid(5), ts(60));
        assert_eq!(t.floor(), Some(ts(30)));
        assert!(!t.is_fresh(&eid(1), ts(30)));
        assert!(t.is_fresh(&eid(1), ts(31)));
    }

    #[test]
    fn raised_floor_applies_to_unknown_initiators() {
        let mut t = ReplayTable::new(3);
        t.raise_floor(ts(100));
        assert!(!t.is_fresh(&eid(1), ts(100)));
        assert!(t.is_fresh(&eid(1), ts(101)));
        t.raise_floor(ts(50));
        assert_eq!(t.floor(), Some(ts(100)));
        // A stored entry below a raised floor is bounded by the floor.
        t.record(eid(2), ts(200));
        t.raise_floor(ts(300));
        assert!(!t.is_fresh(&eid(2), ts(250)));
    }
}
