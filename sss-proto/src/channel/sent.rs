//! Packets sent and not yet acknowledged or declared lost, indexed by packet number.
//!
//! Packet numbers are consecutive, so the store is a ring of slots starting at the oldest
//! outstanding packet: insertion, lookup and removal are O(1) and acknowledged slots at the
//! front are trimmed. A slot is `None` once its packet was acknowledged or declared lost.

use std::collections::VecDeque;
use std::time::Instant;

/// Emptied frame vectors kept for reuse, at least. One ACK often releases a whole window of
/// packets (hundreds or thousands at high rates) before the next window is built; a pool
/// smaller than the window freed most of them and the next window allocated them again, one
/// allocation per packet. So the pool may grow to the most packets ever outstanding at once
/// (the vectors existed then anyway), up to [`MAX_POOL_PEAK`].
const MAX_POOL: usize = 1024;

/// Upper bound of the pool whatever the window was: about 6 MiB of vectors of a few frames.
const MAX_POOL_PEAK: usize = 1 << 16;

/// What the sender remembers about one packet.
#[derive(Debug)]
pub(crate) struct SentPacket<M> {
    pub(crate) time: Instant,
    /// Datagram size in bytes.
    pub(crate) size: u16,
    pub(crate) ack_eliciting: bool,
    /// Counted in bytes in flight (ack-eliciting or padded probes).
    pub(crate) in_flight: bool,
    pub(crate) mtu_probe: bool,
    /// Sent marked ECT(0) on the current path (cleared when the path changes, so that the
    /// new path's ECN validation counts only its own packets).
    pub(crate) ect: bool,
    /// Largest packet number acknowledged by an ACK frame in this packet.
    pub(crate) largest_acked: Option<u64>,
    /// Upper-layer frames to re-send if this packet is lost.
    pub(crate) frames: Vec<M>,
}

#[derive(Debug)]
pub(crate) struct SentPackets<M> {
    /// Packet number of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<SentPacket<M>>>,
    /// Slots holding a packet.
    outstanding: usize,
    /// Emptied frame vectors, kept to avoid an allocation per packet.
    pool: Vec<Vec<M>>,
    /// Most packets outstanding at once so far (bounds the pool).
    peak: usize,
}

impl<M> SentPackets<M> {
    pub(crate) fn new() -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
            outstanding: 0,
            pool: Vec::new(),
            peak: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.outstanding == 0
    }

    /// An empty frame vector for the next packet.
    pub(crate) fn take_frame_vec(&mut self) -> Vec<M> {
        self.pool.pop().unwrap_or_default()
    }

    /// Gives back a frame vector whose items were consumed.
    pub(crate) fn recycle(&mut self, mut v: Vec<M>) {
        v.clear();
        let cap = self.peak.clamp(MAX_POOL, MAX_POOL_PEAK);
        if self.pool.len() < cap && v.capacity() > 0 {
            self.pool.push(v);
        }
    }

    /// Records packet `pn`, which must be above every packet recorded before.
    pub(crate) fn insert(&mut self, pn: u64, packet: SentPacket<M>) {
        if self.slots.is_empty() {
            self.base = pn;
        }
        debug_assert!(pn >= self.base + self.slots.len() as u64);
        while self.base + (self.slots.len() as u64) < pn {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(packet));
        self.outstanding += 1;
        self.peak = self.peak.max(self.outstanding);
    }

    /// Removes and returns packet `pn` if it is outstanding.
    pub(crate) fn take(&mut self, pn: u64) -> Option<SentPacket<M>> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let packet = self.slots.get_mut(idx)?.take()?;
        self.outstanding -= 1;
        self.trim();
        Some(packet)
    }

    pub(crate) fn get(&self, pn: u64) -> Option<&SentPacket<M>> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        self.slots.get(idx)?.as_ref()
    }

    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.slots.is_empty() {
            self.outstanding = 0;
        }
    }

    /// The outstanding packet numbers in `[lo, hi]`, clamped to what is stored.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> std::ops::RangeInclusive<u64> {
        let end = self.base + self.slots.len() as u64;
        let lo = lo.max(self.base);
        let hi = hi.min(end.saturating_sub(1));
        if self.slots.is_empty() || lo > hi {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        lo..=hi
    }

    /// Oldest outstanding packet number.
    pub(crate) fn first(&self) -> Option<u64> {
        (!self.slots.is_empty()).then_some(self.base)
    }

    /// Every outstanding packet, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut SentPacket<M>> + '_ {
        self.slots.iter_mut().flatten()
    }

    /// Removes every outstanding packet (the channel closed).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, SentPacket<M>)> + '_ {
        let base = self.base;
        self.outstanding = 0;
        self.base += self.slots.len() as u64;
        self.slots
            .drain(..)
            .enumerate()
            .filter_map(move |(i, p)| p.map(|p| (base + i as u64, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(now: Instant) -> SentPacket<u32> {
        SentPacket {
            time: now,
            size: 1200,
            ack_eliciting: true,
            in_flight: true,
            mtu_probe: false,
            ect: false,
            largest_acked: None,
            frames: Vec::new(),
        }
    }

    #[test]
    fn insert_take_and_trim() {
        let now = Instant::now();
        let mut s = SentPackets::new();
        s.insert(3, packet(now));
        s.insert(4, packet(now));
        s.insert(7, packet(now));
        assert_eq!(s.first(), Some(3));
        assert!(s.get(5).is_none());
        assert!(s.take(4).is_some());
        assert!(s.take(4).is_none());
        assert_eq!(s.first(), Some(3));
        assert!(s.take(3).is_some());
        // 4, 5 and 6 are gone, so the front moves to 7.
        assert_eq!(s.first(), Some(7));
        assert_eq!(s.range(0, 100), 7..=7);
        assert!(s.take(7).is_some());
        assert!(s.is_empty());
        assert!(s.range(0, 100).is_empty());
        assert!(s.take(u64::MAX).is_none());
    }

    #[test]
    fn a_whole_window_of_frame_vectors_is_reused() {
        let mut s = SentPackets::<u32>::new();
        let window: Vec<Vec<u32>> = (0..500).map(|_| Vec::with_capacity(4)).collect();
        for v in window {
            s.recycle(v);
        }
        // Vectors that never held anything are not worth keeping.
        s.recycle(Vec::new());
        for _ in 0..500 {
            assert!(s.take_frame_vec().capacity() >= 4, "reused, not allocated");
        }
        assert_eq!(s.take_frame_vec().capacity(), 0);
        for _ in 0..2 * MAX_POOL {
            s.recycle(vec![1]);
        }
        assert_eq!(s.pool.len(), MAX_POOL, "the pool is bounded");
    }

    #[test]
    fn the_pool_holds_a_window_larger_than_its_floor_but_never_more_than_its_peak() {
        let now = Instant::now();
        let mut s = SentPackets::<u32>::new();
        let window = 3 * MAX_POOL;
        for pn in 0..window as u64 {
            let mut p = packet(now);
            p.frames = vec![pn as u32];
            s.insert(pn, p);
        }
        // One ACK releases the whole window: every vector is kept for the next one.
        for pn in 0..window as u64 {
            let p = s.take(pn).expect("outstanding");
            s.recycle(p.frames);
        }
        assert_eq!(s.pool.len(), window);
        for _ in 0..window {
            assert!(s.take_frame_vec().capacity() >= 1, "reused, not allocated");
        }
        // The pool never exceeds the most packets outstanding at once.
        for _ in 0..2 * window {
            s.recycle(vec![1]);
        }
        assert_eq!(s.pool.len(), window);
    }

    #[test]
    fn drain_returns_everything_outstanding() {
        let now = Instant::now();
        let mut s = SentPackets::new();
        for pn in [10, 11, 13] {
            s.insert(pn, packet(now));
        }
        s.take(11);
        let drained: Vec<u64> = s.drain().map(|(pn, _)| pn).collect();
        assert_eq!(drained, vec![10, 13]);
        assert!(s.is_empty());
    }
}
