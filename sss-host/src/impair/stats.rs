//! Counters of the impairment relay: written by the relay thread, read by [`RelayHandle`]
//! (through relaxed atomics: each counter is exact, a snapshot is not atomic as a whole).
//!
//! [`RelayHandle`]: super::RelayHandle

use std::sync::atomic::{AtomicU64, Ordering};

/// What one direction of the relay did, counted in datagrams unless named `_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams received from the sender of this direction.
    pub received: u64,
    /// Their payload bytes.
    pub received_bytes: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Their payload bytes.
    pub forwarded_bytes: u64,
    /// Dropped by the random loss.
    pub dropped_loss: u64,
    /// Dropped because the bottleneck queue or the delay line was full.
    pub dropped_queue: u64,
    /// Dropped because they came from an address that is not part of the relayed pair, or
    /// (backward) arrived before any client was known.
    pub dropped_foreign: u64,
    /// Dropped because sending them failed.
    pub send_errors: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams with a bit flipped.
    pub corrupted: u64,
    /// Datagrams held back by the reorder delay.
    pub reordered: u64,
}

/// What the relay did in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the client to the target.
    pub forward: DirectionStats,
    /// From the target back to the client.
    pub backward: DirectionStats,
}

/// Live counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) received_bytes: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) forwarded_bytes: AtomicU64,
    pub(crate) dropped_loss: AtomicU64,
    pub(crate) dropped_queue: AtomicU64,
    pub(crate) dropped_foreign: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) corrupted: AtomicU64,
    pub(crate) reordered: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            received: get(&self.received),
            received_bytes: get(&self.received_bytes),
            forwarded: get(&self.forwarded),
            forwarded_bytes: get(&self.forwarded_bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            dropped_foreign: get(&self.dropped_foreign),
            send_errors: get(&self.send_errors),
            duplicated: get(&self.duplicated),
            corrupted: get(&self.corrupted),
            reordered: get(&self.reordered),
        }
    }
}

impl std::fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received={} ({} B) forwarded={} ({} B) dropped: loss={} queue={} foreign={} \
             send_error={} duplicated={} corrupted={} reordered={}",
            self.received,
            self.received_bytes,
            self.forwarded,
            self.forwarded_bytes,
            self.dropped_loss,
            self.dropped_queue,
            self.dropped_foreign,
            self.send_errors,
            self.duplicated,
            self.corrupted,
            self.reordered
        )
    }
}

impl std::fmt::Display for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "forward: {}\nbackward: {}", self.forward, self.backward)
    }
}
