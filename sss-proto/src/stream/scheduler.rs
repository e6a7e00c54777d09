//! Send scheduling by priority: streams with something to send wait in one round-robin queue
//! per priority level; the highest level is served first, one frame per turn.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

use super::frames::StreamId;

/// Capacity (streams) of an emptied level's queue kept for the next level made.
const SPARE_KEPT: usize = 4096;

/// Streams waiting to send, by priority.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    /// Non-empty levels only.
    levels: BTreeMap<Reverse<i32>, VecDeque<StreamId>>,
    /// The queue of a level that emptied, reused by the next new level: a session that sends
    /// in bursts does not regrow a queue from nothing each time (at most [`SPARE_KEPT`]).
    spare: VecDeque<StreamId>,
}

impl Scheduler {
    fn level(&mut self, priority: i32) -> &mut VecDeque<StreamId> {
        let spare = &mut self.spare;
        self.levels
            .entry(Reverse(priority))
            .or_insert_with(|| std::mem::take(spare))
    }

    /// Keeps the queue of an emptied level for reuse if it is not too large.
    fn recycle(&mut self, q: VecDeque<StreamId>) {
        debug_assert!(q.is_empty());
        if q.capacity() <= SPARE_KEPT && q.capacity() > self.spare.capacity() {
            self.spare = q;
        }
    }

    /// Queues `id` at `priority` (the caller makes sure it is not queued already).
    pub(crate) fn push(&mut self, id: StreamId, priority: i32) {
        self.level(priority).push_back(id);
    }

    /// Queues `id` at the front of its level: it is served next again (a reliable datagram
    /// is sent to completion before the next one starts, so receivers never hold many
    /// half-received datagrams).
    pub(crate) fn push_front(&mut self, id: StreamId, priority: i32) {
        self.level(priority).push_front(id);
    }

    /// The next stream to serve: the front of the highest non-empty level.
    pub(crate) fn pop(&mut self) -> Option<(StreamId, i32)> {
        let mut entry = self.levels.first_entry()?;
        let priority = entry.key().0;
        let id = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            let q = entry.remove();
            self.recycle(q);
        }
        id.map(|id| (id, priority))
    }

    /// Removes `id` from level `priority` (priority change or stream gone).
    pub(crate) fn remove(&mut self, id: StreamId, priority: i32) {
        if let Some(q) = self.levels.get_mut(&Reverse(priority)) {
            q.retain(|&x| x != id);
            if q.is_empty() {
                if let Some(q) = self.levels.remove(&Reverse(priority)) {
                    self.recycle(q);
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The highest priority with a stream queued.
    pub(crate) fn max_priority(&self) -> Option<i32> {
        self.levels.first_key_value().map(|(k, _)| k.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_round_robin() {
        let mut s = Scheduler::default();
        let (a, b, c) = (StreamId(2), StreamId(4), StreamId(6));
        s.push(a, 0);
        s.push(b, 0);
        s.push(c, 5);
        assert_eq!(s.pop(), Some((c, 5)));
        assert_eq!(s.pop(), Some((a, 0)));
        s.push(a, 0);
        assert_eq!(s.pop(), Some((b, 0)));
        assert_eq!(s.pop(), Some((a, 0)));
        assert_eq!(s.pop(), None);
        s.push(a, 1);
        s.remove(a, 1);
        assert!(s.is_empty());
    }

    #[test]
    fn an_emptied_level_lends_its_queue_to_the_next() {
        let mut s = Scheduler::default();
        for i in 1..=100 {
            s.push(StreamId(2 * i), 3);
        }
        while s.pop().is_some() {}
        assert!(s.is_empty());
        assert!(s.spare.capacity() >= 100, "kept for the next burst");
        s.push(StreamId(2), -1);
        assert_eq!(s.spare.capacity(), 0, "the new level took it");
        assert_eq!(s.pop(), Some((StreamId(2), -1)));
        // A huge burst's queue is not kept.
        for i in 1..=(SPARE_KEPT as u64 + 1) {
            s.push(StreamId(2 * i), 0);
        }
        while s.pop().is_some() {}
        assert!(s.spare.capacity() <= SPARE_KEPT);
    }
}
