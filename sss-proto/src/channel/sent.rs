//! Packets sent and not yet acknowledged or declared lost, indexed by packet number.
//!
//! Packet numbers are consecutive, so the store is a ring of slots starting at the oldest
//! outstanding packet: insertion, lookup and removal are O(1) and acknowledged slots at the
//! front are trimmed. A slot is `None` once its packet was acknowledged or declared lost.
//!
//! The upper layer's records of the frames each packet carries live in one queue beside the
//! slots, in the order they were sent, and a packet names its run of them: no vector per
//! packet to take from a pool and give back, and the records of a window of packets lie
//! next to each other in memory.

use std::collections::VecDeque;
use std::time::Instant;

/// Where a packet's upper-layer frame records are in [`SentPackets`]' record queue.
#[derive(Debug, Default, Copy, Clone, Eq, PartialEq)]
pub(crate) struct FrameSpan {
    /// Sequence number of the first record (records are numbered from 0 as they are sent).
    first: u64,
    /// Number of records.
    len: u32,
}

/// What the sender remembers about one packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentPacket {
    pub(crate) time: Instant,
    /// Datagram size in bytes.
    pub(crate) size: u16,
    pub(crate) ack_eliciting: bool,
    /// Counted in bytes in flight (ack-eliciting or padded probes).
    pub(crate) in_flight: bool,
    pub(crate) mtu_probe: bool,
    /// Bytes the datagram was cut short of its room so that its payload is whole AEAD
    /// blocks (0-15): path MTU discovery counts it as `size + cut` bytes, the size class it
    /// was built for.
    pub(crate) cut: u8,
    /// Sent marked ECT(0) on the current path (cleared when the path changes, so that the
    /// new path's ECN validation counts only its own packets).
    pub(crate) ect: bool,
    /// Largest packet number acknowledged by an ACK frame in this packet.
    pub(crate) largest_acked: Option<u64>,
    /// Upper-layer frames to re-send if this packet is lost: release them with
    /// [`SentPackets::release_frames`] once the packet is acknowledged or lost.
    pub(crate) frames: FrameSpan,
}

/// A [`SentPacket`] as stored: 32 bytes, two to a cache line (the `SentPacket` it stands
/// for takes 56). The table holds a whole flight, which on a fast path is thousands of packets
/// written one flight before they are read again, so every slot costs the sender a cache
/// miss when written and the ACK another when read: half the bytes, half the misses.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Nanoseconds from the table's epoch to the send time; [`Slot::EMPTY`] when the slot
    /// holds no packet.
    sent_nanos: u64,
    /// [`SentPacket::largest_acked`], `u64::MAX` for none (packet numbers stay below 2^62).
    largest_acked: u64,
    frames_first: u64,
    frames_len: u32,
    size: u16,
    /// [`SentPacket`]'s flags: bit 0 ack-eliciting, 1 in flight, 2 MTU probe, 3 ECT.
    flags: u8,
    cut: u8,
}

impl Slot {
    const EMPTY: u64 = u64::MAX;
    const VACANT: Slot = Slot {
        sent_nanos: Self::EMPTY,
        largest_acked: u64::MAX,
        frames_first: 0,
        frames_len: 0,
        size: 0,
        flags: 0,
        cut: 0,
    };
    const ACK_ELICITING: u8 = 1;
    const IN_FLIGHT: u8 = 2;
    const MTU_PROBE: u8 = 4;
    const ECT: u8 = 8;

    fn is_vacant(&self) -> bool {
        self.sent_nanos == Self::EMPTY
    }

    /// Nanoseconds from `epoch` to `time`, in u64 arithmetic (`as_nanos` is u128): a send
    /// time 584 years after the first is out of reach, and saturates below the empty marker.
    fn nanos(epoch: Instant, time: Instant) -> u64 {
        let since = time.saturating_duration_since(epoch);
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
            .min(Self::EMPTY - 1)
    }

    /// `p` as stored, sent `sent_nanos` after the epoch.
    fn pack(p: &SentPacket, sent_nanos: u64) -> Slot {
        Slot {
            sent_nanos,
            largest_acked: p.largest_acked.unwrap_or(u64::MAX),
            frames_first: p.frames.first,
            frames_len: p.frames.len,
            size: p.size,
            flags: (u8::from(p.ack_eliciting) * Self::ACK_ELICITING)
                | (u8::from(p.in_flight) * Self::IN_FLIGHT)
                | (u8::from(p.mtu_probe) * Self::MTU_PROBE)
                | (u8::from(p.ect) * Self::ECT),
            cut: p.cut,
        }
    }

    fn time(&self, epoch: Instant) -> Instant {
        epoch + std::time::Duration::from_nanos(self.sent_nanos)
    }

    /// The packet stored, sent at `time` (its [`time`](Self::time), maybe from a cache).
    fn unpack(&self, time: Instant) -> SentPacket {
        SentPacket {
            time,
            size: self.size,
            ack_eliciting: self.flags & Self::ACK_ELICITING != 0,
            in_flight: self.flags & Self::IN_FLIGHT != 0,
            mtu_probe: self.flags & Self::MTU_PROBE != 0,
            cut: self.cut,
            ect: self.flags & Self::ECT != 0,
            largest_acked: (self.largest_acked != u64::MAX).then_some(self.largest_acked),
            frames: FrameSpan {
                first: self.frames_first,
                len: self.frames_len,
            },
        }
    }
}

#[derive(Debug)]
pub(crate) struct SentPackets<M> {
    /// Packet number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot>,
    /// Send times are stored as nanoseconds after this instant: the send time of the first
    /// packet recorded (callers' clocks are monotonic; an earlier time would be stored as
    /// this one).
    epoch: Option<Instant>,
    /// The last send time converted for [`insert`](Self::insert) and its nanoseconds: the
    /// packets of a batch share one send time, so the conversion runs once per batch.
    last_sent: Option<(Instant, u64)>,
    /// Slots holding a packet.
    outstanding: usize,
    /// Frame records of the packets sent, in sending order; `None` once released. The front
    /// is trimmed as records are released, so it holds no more than the records of the
    /// oldest outstanding packet and those sent after it.
    records: VecDeque<Option<M>>,
    /// Sequence number of `records[0]`.
    records_base: u64,
    /// The upper layer writes the records of the packet being built here;
    /// [`commit_frames`](Self::commit_frames) moves them to the queue.
    pub(crate) scratch: Vec<M>,
}

impl<M> SentPackets<M> {
    pub(crate) fn new() -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
            epoch: None,
            last_sent: None,
            outstanding: 0,
            records: VecDeque::new(),
            records_base: 0,
            scratch: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.outstanding == 0
    }

    /// Moves the records in [`scratch`](Self::scratch) to the queue, for the packet about to
    /// be recorded with [`insert`](Self::insert).
    pub(crate) fn commit_frames(&mut self) -> FrameSpan {
        let first = self.records_base + self.records.len() as u64;
        let len = u32::try_from(self.scratch.len()).expect("a packet carries few frames");
        for record in self.scratch.drain(..) {
            self.records.push_back(Some(record));
        }
        FrameSpan { first, len }
    }

    /// Hands each record of `span` to `f`, in the order they were sent, and forgets them.
    pub(crate) fn release_frames(&mut self, span: FrameSpan, mut f: impl FnMut(M)) {
        if span.len == 0 {
            return;
        }
        let Some(start) = span.first.checked_sub(self.records_base) else {
            return;
        };
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        if start >= self.records.len() {
            return;
        }
        let end = start
            .saturating_add(span.len as usize)
            .min(self.records.len());
        for slot in self.records.range_mut(start..end) {
            if let Some(record) = slot.take() {
                f(record);
            }
        }
        while let Some(None) = self.records.front() {
            self.records.pop_front();
            self.records_base += 1;
        }
    }

    /// Records packet `pn`, which must be above every packet recorded before.
    pub(crate) fn insert(&mut self, pn: u64, packet: SentPacket) {
        if self.slots.is_empty() {
            self.base = pn;
        }
        let epoch = *self.epoch.get_or_insert(packet.time);
        debug_assert!(pn >= self.base + self.slots.len() as u64);
        while self.base + (self.slots.len() as u64) < pn {
            self.slots.push_back(Slot::VACANT);
        }
        let nanos = match self.last_sent {
            Some((time, nanos)) if time == packet.time => nanos,
            _ => {
                let nanos = Slot::nanos(epoch, packet.time);
                self.last_sent = Some((packet.time, nanos));
                nanos
            }
        };
        self.slots.push_back(Slot::pack(&packet, nanos));
        self.outstanding += 1;
    }

    /// Removes and returns packet `pn` if it is outstanding. Its frame records stay until
    /// [`release_frames`](Self::release_frames).
    pub(crate) fn take(&mut self, pn: u64) -> Option<SentPacket> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let epoch = self.epoch?;
        let slot = self.slots.get_mut(idx)?;
        if slot.is_vacant() {
            return None;
        }
        let packet = slot.unpack(slot.time(epoch));
        slot.sent_nanos = Slot::EMPTY;
        self.outstanding -= 1;
        self.trim();
        Some(packet)
    }

    /// Removes the outstanding packets numbered `lo..=hi` (clamped to what is stored) in
    /// ascending order, handing each to `f` with its number, and merges their frame spans
    /// into `spans` (a span that continues the last one extends it): release those with
    /// [`release_frames`](Self::release_frames). One pass over the slots and one trim for a
    /// whole ACK range, where [`take`](Self::take) per packet would trim after each.
    pub(crate) fn take_range(
        &mut self,
        lo: u64,
        hi: u64,
        spans: &mut Vec<FrameSpan>,
        mut f: impl FnMut(u64, &SentPacket),
    ) {
        let range = self.range(lo, hi);
        let Some(epoch) = self.epoch else {
            return;
        };
        if range.is_empty() {
            return;
        }
        let (first, last) = (*range.start(), *range.end());
        let start = (first - self.base) as usize;
        let end = (last - self.base) as usize;
        let mut taken = 0;
        // Consecutive packets mostly share a send time (one batch): convert it once.
        let mut last_time: Option<(u64, Instant)> = None;
        for (pn, slot) in (first..).zip(self.slots.range_mut(start..=end)) {
            if !slot.is_vacant() {
                let time = match last_time {
                    Some((nanos, time)) if nanos == slot.sent_nanos => time,
                    _ => {
                        let time = slot.time(epoch);
                        last_time = Some((slot.sent_nanos, time));
                        time
                    }
                };
                let p = slot.unpack(time);
                slot.sent_nanos = Slot::EMPTY;
                taken += 1;
                f(pn, &p);
                if p.frames.len > 0 {
                    match spans.last_mut() {
                        Some(s) if s.first + u64::from(s.len) == p.frames.first => {
                            s.len = s.len.saturating_add(p.frames.len);
                        }
                        _ => spans.push(p.frames),
                    }
                }
            }
        }
        self.outstanding -= taken;
        self.trim();
    }

    /// Packet `pn` if it is outstanding (a copy).
    #[cfg(test)]
    pub(crate) fn get(&self, pn: u64) -> Option<SentPacket> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let slot = self.slots.get(idx)?;
        (!slot.is_vacant())
            .then(|| slot.unpack(slot.time(self.epoch.expect("set by the first insert"))))
    }

    /// Send time of packet `pn` if it is outstanding.
    pub(crate) fn time(&self, pn: u64) -> Option<Instant> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let slot = self.slots.get(idx)?;
        (!slot.is_vacant()).then(|| slot.time(self.epoch.expect("set by the first insert")))
    }

    /// Marks every outstanding packet as not sent ECT (the path changed).
    pub(crate) fn clear_ect(&mut self) {
        for slot in self.slots.iter_mut() {
            slot.flags &= !Slot::ECT;
        }
    }

    fn trim(&mut self) {
        while self.slots.front().is_some_and(Slot::is_vacant) {
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

    /// Forgets every outstanding packet (the channel closed) and returns the frame records
    /// they carried, in the order they were sent.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = M> + '_ {
        self.outstanding = 0;
        self.base += self.slots.len() as u64;
        self.slots.clear();
        self.records_base += self.records.len() as u64;
        self.records.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(now: Instant) -> SentPacket {
        SentPacket {
            time: now,
            size: 1200,
            ack_eliciting: true,
            in_flight: true,
            mtu_probe: false,
            cut: 0,
            ect: false,
            largest_acked: None,
            frames: FrameSpan::default(),
        }
    }

    /// Records packet `pn` carrying `records`.
    fn send(s: &mut SentPackets<u32>, now: Instant, pn: u64, records: &[u32]) {
        s.scratch.extend_from_slice(records);
        let mut p = packet(now);
        p.frames = s.commit_frames();
        s.insert(pn, p);
    }

    fn release(s: &mut SentPackets<u32>, pn: u64) -> Vec<u32> {
        let p = s.take(pn).expect("outstanding");
        let mut out = Vec::new();
        s.release_frames(p.frames, |r| out.push(r));
        out
    }

    #[test]
    fn insert_take_and_trim() {
        let now = Instant::now();
        let mut s = SentPackets::<u32>::new();
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
    fn each_packet_releases_its_own_records_in_any_order() {
        let now = Instant::now();
        let mut s = SentPackets::<u32>::new();
        send(&mut s, now, 0, &[1, 2]);
        send(&mut s, now, 1, &[]);
        send(&mut s, now, 2, &[3]);
        send(&mut s, now, 3, &[4, 5, 6]);
        assert_eq!(release(&mut s, 2), vec![3]);
        // Released out of order: the queue keeps the hole until the front goes.
        assert_eq!(s.records.len(), 6);
        assert_eq!(release(&mut s, 1), Vec::<u32>::new());
        assert_eq!(release(&mut s, 0), vec![1, 2]);
        // Records 1-3 are gone, so the front moves to packet 3's.
        assert_eq!(s.records.len(), 3);
        assert_eq!(release(&mut s, 3), vec![4, 5, 6]);
        assert!(
            s.records.is_empty(),
            "nothing kept once every packet is done"
        );
        // A span released twice yields nothing the second time.
        send(&mut s, now, 4, &[7]);
        let p = s.take(4).unwrap();
        let mut n = 0;
        s.release_frames(p.frames, |_| n += 1);
        s.release_frames(p.frames, |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn records_of_a_window_stay_bounded_by_the_outstanding_packets() {
        let now = Instant::now();
        let mut s = SentPackets::<u32>::new();
        let mut pn = 0;
        for round in 0..10u32 {
            for i in 0..1000 {
                send(&mut s, now, pn, &[round * 1000 + i]);
                pn += 1;
            }
            // One ACK releases the whole window.
            for p in pn - 1000..pn {
                assert_eq!(release(&mut s, p).len(), 1);
            }
            assert!(s.records.is_empty());
            assert!(s.is_empty());
        }
    }

    #[test]
    fn a_stored_packet_comes_back_exactly_as_recorded() {
        assert_eq!(std::mem::size_of::<Slot>(), 32, "two slots to a cache line");
        let epoch = Instant::now();
        let mut s = SentPackets::<u32>::new();
        let mut sent = Vec::new();
        for pn in 0..40u64 {
            let p = SentPacket {
                // Not a whole number of microseconds, and far apart.
                time: epoch + std::time::Duration::from_nanos(pn * 1_234_567_891 + 7),
                size: 1200 + pn as u16,
                ack_eliciting: pn % 2 == 0,
                in_flight: pn % 3 != 0,
                mtu_probe: pn % 5 == 0,
                cut: (pn % 16) as u8,
                ect: pn % 7 < 3,
                largest_acked: (pn % 4 != 0).then_some(pn * 1000),
                frames: FrameSpan::default(),
            };
            if pn % 6 == 5 {
                continue; // a gap in the numbers
            }
            let mut p = p;
            s.scratch.push(pn as u32);
            p.frames = s.commit_frames();
            s.insert(pn, p);
            sent.push((pn, p));
        }
        for &(pn, p) in &sent {
            let got = s.get(pn).expect("outstanding");
            assert_eq!(got.time, p.time);
            assert_eq!(s.time(pn), Some(p.time));
            assert_eq!(
                (
                    got.size,
                    got.ack_eliciting,
                    got.in_flight,
                    got.mtu_probe,
                    got.cut,
                    got.ect
                ),
                (
                    p.size,
                    p.ack_eliciting,
                    p.in_flight,
                    p.mtu_probe,
                    p.cut,
                    p.ect
                )
            );
            assert_eq!(got.largest_acked, p.largest_acked);
            assert_eq!(got.frames, p.frames);
        }
        assert!(
            s.get(5).is_none() && s.time(5).is_none(),
            "gaps hold nothing"
        );
        s.clear_ect();
        assert!(sent.iter().all(|&(pn, _)| !s.get(pn).unwrap().ect));
        // Taking a range hands out each packet once, in order, with merged frame spans.
        let mut seen = Vec::new();
        let mut spans = Vec::new();
        s.take_range(10, 20, &mut spans, |pn, p| seen.push((pn, p.size)));
        let expect: Vec<(u64, u16)> = sent
            .iter()
            .filter(|(pn, _)| (10..=20).contains(pn))
            .map(|&(pn, p)| (pn, p.size))
            .collect();
        assert_eq!(seen, expect);
        assert_eq!(spans.len(), 1, "consecutive records merge into one span");
        let mut records = Vec::new();
        for span in spans {
            s.release_frames(span, |r| records.push(u64::from(r)));
        }
        let pns: Vec<u64> = expect.iter().map(|&(pn, _)| pn).collect();
        assert_eq!(records, pns);
        assert!(s.get(12).is_none() && s.take(12).is_none());
    }

    #[test]
    fn drain_returns_everything_outstanding() {
        let now = Instant::now();
        let mut s = SentPackets::<u32>::new();
        send(&mut s, now, 10, &[1]);
        send(&mut s, now, 11, &[2]);
        send(&mut s, now, 13, &[3, 4]);
        assert_eq!(release(&mut s, 11), vec![2]);
        let drained: Vec<u32> = s.drain().collect();
        assert_eq!(drained, vec![1, 3, 4]);
        assert!(s.is_empty());
        // Packets sent afterwards are numbered on.
        send(&mut s, now, 14, &[5]);
        assert_eq!(release(&mut s, 14), vec![5]);
    }
}
