//! Send scheduling by priority: streams with something to send wait in one round-robin queue
//! per priority level; the highest level is served first, one frame per turn.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

use super::frames::StreamId;

/// Streams waiting to send, by priority.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    levels: BTreeMap<Reverse<i32>, VecDeque<StreamId>>,
}

impl Scheduler {
    /// Queues `id` at `priority` (the caller makes sure it is not queued already).
    pub(crate) fn push(&mut self, id: StreamId, priority: i32) {
        self.levels
            .entry(Reverse(priority))
            .or_default()
            .push_back(id);
    }

    /// Queues `id` at the front of its level: it is served next again (a reliable datagram
    /// is sent to completion before the next one starts, so receivers never hold many
    /// half-received datagrams).
    pub(crate) fn push_front(&mut self, id: StreamId, priority: i32) {
        self.levels
            .entry(Reverse(priority))
            .or_default()
            .push_front(id);
    }

    /// The next stream to serve: the front of the highest non-empty level.
    pub(crate) fn pop(&mut self) -> Option<(StreamId, i32)> {
        let mut entry = self.levels.first_entry()?;
        let priority = entry.key().0;
        let id = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        id.map(|id| (id, priority))
    }

    /// Removes `id` from level `priority` (priority change or stream gone).
    pub(crate) fn remove(&mut self, id: StreamId, priority: i32) {
        if let Some(q) = self.levels.get_mut(&Reverse(priority)) {
            q.retain(|&x| x != id);
            if q.is_empty() {
                self.levels.remove(&Reverse(priority));
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.is_empty()
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
}
