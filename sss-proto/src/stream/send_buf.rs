//! The sending side of a stream: bytes written and not yet acknowledged, record boundaries,
//! the FIN, and what must be re-sent after a loss.
//!
//! Offsets are absolute stream offsets. Bytes below `base` were acknowledged and released.
//! A chunk never crosses a record boundary, so every frame whose data ends at a boundary
//! carries the RECORD flag, first sending and re-sending alike. A boundary marked after all
//! bytes before it were sent is carried by a frame without data (a "bare mark").
//!
//! An idle stream (everything acknowledged) holds no allocation and 24 bytes of state: the
//! buffer, the ranges, the boundaries and the acknowledged and sent offsets live in a box
//! dropped whenever the stream goes quiet (then `base == sent == written`). The bytes are
//! kept in [`Pages`] from the session's [`PagePool`]: pages wholly acknowledged go back to the
//! pool at once.

use std::collections::VecDeque;

use super::pages::{PagePool, Pages};
use crate::ranges::RangeSet;

/// A piece of the stream to put in one STREAM frame.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct Chunk {
    /// First byte.
    pub offset: u64,
    /// Number of bytes (zero for a bare FIN or record mark).
    pub len: usize,
    /// The chunk ends the stream.
    pub fin: bool,
    /// A record ends with the chunk's last byte (at `offset` when `len` is zero).
    pub record: bool,
    /// The chunk is new data (not a re-send): flow control counts it.
    pub fresh: bool,
}

/// Parts of the send state that exist only while data is in flight. (Kept small — 88 bytes
/// — as every active stream allocates one; what only losses, acknowledgements out of order
/// and late record marks need is boxed apart.)
#[derive(Debug)]
struct Inner {
    /// Everything below was acknowledged.
    base: u64,
    /// Bytes below were sent at least once.
    sent: u64,
    /// Bytes `[base, written)`.
    data: Pages,
    /// Record boundaries above `base`, increasing (a boundary `b` ends the record at byte
    /// `b - 1`).
    marks: VecDeque<u64>,
    /// `None` while nothing was lost, acknowledged out of order or marked late.
    rec: Option<Box<Recovery>>,
}

/// Re-send bookkeeping of [`Inner`].
#[derive(Debug, Default)]
struct Recovery {
    /// Acknowledged ranges above `base` (not contiguous with it).
    acked: RangeSet,
    /// Ranges to re-send (below `sent`, not acknowledged).
    lost: RangeSet,
    /// Bare marks waiting to be (re-)sent.
    bare_pending: VecDeque<u64>,
    /// Bare marks sent and not yet acknowledged or lost.
    bare_in_flight: u32,
}

impl Recovery {
    fn is_empty(&self) -> bool {
        self.acked.is_empty()
            && self.lost.is_empty()
            && self.bare_pending.is_empty()
            && self.bare_in_flight == 0
    }
}

impl Inner {
    /// Bookkeeping for an idle stream whose every byte below `at` was acknowledged.
    fn at(at: u64) -> Self {
        Self {
            base: at,
            sent: at,
            data: Pages::new(at),
            marks: VecDeque::new(),
            rec: None,
        }
    }

    fn rec(&mut self) -> &mut Recovery {
        self.rec.get_or_insert_with(Default::default)
    }

    /// Drops the re-send bookkeeping once it holds nothing.
    fn tidy(&mut self) {
        if self.rec.as_ref().is_some_and(|r| r.is_empty()) {
            self.rec = None;
        }
    }
}

/// The sending half of a stream.
#[derive(Debug, Default)]
pub struct SendBuffer {
    /// `None` when idle: then every written byte was acknowledged (`base == sent == written`).
    inner: Option<Box<Inner>>,
    /// End of the written data.
    written: u64,
    state: u8,
}

/// `SendBuffer::state` bits.
const FINISHED: u8 = 1;
const FIN_PENDING: u8 = 2;
const FIN_IN_FLIGHT: u8 = 4;
const FIN_ACKED: u8 = 8;
const RESET: u8 = 16;
/// Bytes were written since the last record boundary (a record may end here).
const DIRTY: u8 = 32;

impl SendBuffer {
    /// An empty send side.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&mut self) -> &mut Inner {
        let written = self.written;
        self.inner
            .get_or_insert_with(|| Box::new(Inner::at(written)))
    }

    /// Everything below was acknowledged.
    fn base(&self) -> u64 {
        self.inner.as_ref().map_or(self.written, |i| i.base)
    }

    /// Appends bytes (into pages from `pool`). The caller checks
    /// [`is_finished`](Self::is_finished) first.
    pub fn write(&mut self, data: &[u8], pool: &mut PagePool) {
        debug_assert!(self.state & (FINISHED | RESET) == 0);
        if data.is_empty() || self.state & (FINISHED | RESET) != 0 {
            return;
        }
        let at = self.written;
        self.inner().data.write(at, data, pool);
        self.written += data.len() as u64;
        self.state |= DIRTY;
    }

    /// Ends a record at the current end of the written data. Returns false (and marks
    /// nothing) if the record would be empty: no byte was written since the last boundary.
    pub fn mark_record(&mut self) -> bool {
        if self.state & (FINISHED | RESET) != 0 || self.state & DIRTY == 0 {
            return false;
        }
        self.state &= !DIRTY;
        let written = self.written;
        let inner = self.inner();
        inner.marks.push_back(written);
        if inner.sent == written {
            // Everything before the boundary already left: carry it on a frame of its own.
            inner.rec().bare_pending.push_back(written);
        }
        true
    }

    /// Ends the sending direction after the written bytes.
    pub fn finish(&mut self) {
        if self.state & (FINISHED | RESET) != 0 {
            return;
        }
        self.state |= FINISHED | FIN_PENDING;
    }

    /// Whether [`finish`](Self::finish) (or [`reset`](Self::reset)) was called.
    pub fn is_finished(&self) -> bool {
        self.state & (FINISHED | RESET) != 0
    }

    /// Abandons every byte (its pages go back to `pool`); returns the final size for
    /// RESET_STREAM (bytes ever sent).
    pub fn reset(&mut self, pool: &mut PagePool) -> u64 {
        let sent = self.sent_offset();
        self.state |= RESET;
        self.state &= !(FIN_PENDING | FIN_IN_FLIGHT);
        if let Some(mut i) = self.inner.take() {
            i.data.release_all(pool);
        }
        self.written = sent;
        sent
    }

    /// Bytes held (written and not yet acknowledged).
    pub fn buffered(&self) -> usize {
        (self.written - self.base()) as usize
    }

    /// End of the written data.
    pub fn write_offset(&self) -> u64 {
        self.written
    }

    /// Bytes below this offset were sent at least once.
    pub fn sent_offset(&self) -> u64 {
        self.inner.as_ref().map_or(self.written, |i| i.sent)
    }

    /// Whether every byte, mark and the FIN were acknowledged after `finish`.
    pub fn is_fully_acked(&self) -> bool {
        self.state & RESET != 0
            || (self.state & FIN_ACKED != 0 && self.base() == self.written && self.is_quiet())
    }

    /// Nothing in flight or waiting besides possibly the FIN.
    fn is_quiet(&self) -> bool {
        self.inner
            .as_ref()
            .and_then(|i| i.rec.as_ref())
            .is_none_or(|r| r.bare_pending.is_empty() && r.bare_in_flight == 0)
    }

    /// Whether a frame could be sent now with new data allowed up to offset `limit`.
    pub fn has_pending(&self, limit: u64) -> bool {
        if self.state & RESET != 0 {
            return false;
        }
        let mut sent = self.written;
        if let Some(i) = &self.inner {
            if let Some(r) = &i.rec {
                if !r.lost.is_empty() || !r.bare_pending.is_empty() {
                    return true;
                }
            }
            sent = i.sent;
        }
        if sent < self.written.min(limit) {
            return true;
        }
        self.state & FIN_PENDING != 0 && sent == self.written
    }

    /// Whether new bytes wait for flow-control credit beyond `limit`.
    pub fn is_blocked_at(&self, limit: u64) -> bool {
        let sent = self.sent_offset();
        self.state & RESET == 0 && sent < self.written && sent >= limit
    }

    /// The next chunk to send, at most `max` bytes of data; new data only below `limit`.
    /// Re-sends come first, then bare marks, then new data (with the FIN when it reaches the
    /// end). The chunk counts as sent.
    pub fn next_chunk(&mut self, max: usize, limit: u64) -> Option<Chunk> {
        if self.state & RESET != 0 {
            return None;
        }
        let written = self.written;
        let finished = self.state & FINISHED != 0;
        let mut start = written;
        if let Some(inner) = self.inner.as_mut() {
            if let Some(rec) = inner.rec.as_mut() {
                // 1. Re-sends.
                let first_lost = rec.lost.iter().next();
                if let Some(r) = first_lost {
                    let mut end = r.end.min(r.start + max as u64);
                    if max == 0 {
                        return None;
                    }
                    let record = match next_mark_after(&inner.marks, r.start) {
                        Some(m) if m <= end => {
                            end = m;
                            true
                        }
                        _ => false,
                    };
                    rec.lost.remove(r.start..end);
                    if record {
                        remove_sorted(&mut rec.bare_pending, end);
                    }
                    let fin = finished && end == written && self.state & FIN_ACKED == 0;
                    if fin {
                        self.state = (self.state & !FIN_PENDING) | FIN_IN_FLIGHT;
                    }
                    return Some(Chunk {
                        offset: r.start,
                        len: (end - r.start) as usize,
                        fin,
                        record,
                        fresh: false,
                    });
                }
                // 2. Bare marks.
                if let Some(m) = rec.bare_pending.pop_front() {
                    rec.bare_in_flight += 1;
                    let fin = finished && m == written && inner.sent == written;
                    if fin {
                        self.state = (self.state & !FIN_PENDING) | FIN_IN_FLIGHT;
                    }
                    return Some(Chunk {
                        offset: m,
                        len: 0,
                        fin,
                        record: true,
                        fresh: false,
                    });
                }
            }
            // 3. New data.
            start = inner.sent;
            let avail_end = written.min(limit.max(start));
            if start < avail_end && max > 0 {
                let mut end = avail_end.min(start + max as u64);
                let record = match next_mark_after(&inner.marks, start) {
                    Some(m) if m <= end => {
                        end = m;
                        true
                    }
                    _ => false,
                };
                inner.sent = end;
                let fin = finished && end == written;
                if fin {
                    self.state = (self.state & !FIN_PENDING) | FIN_IN_FLIGHT;
                }
                return Some(Chunk {
                    offset: start,
                    len: (end - start) as usize,
                    fin,
                    record,
                    fresh: true,
                });
            }
        }
        // 4. A bare FIN.
        if self.state & FIN_PENDING != 0 && start == written {
            self.state = (self.state & !FIN_PENDING) | FIN_IN_FLIGHT;
            return Some(Chunk {
                offset: written,
                len: 0,
                fin: true,
                record: false,
                fresh: false,
            });
        }
        None
    }

    /// Appends the bytes of `chunk` to `out`.
    pub fn copy_to(&self, chunk: &Chunk, out: &mut Vec<u8>) {
        if chunk.len == 0 {
            return;
        }
        let inner = self.inner.as_ref().expect("a chunk with data has a buffer");
        inner.data.append_to(chunk.offset, chunk.len, out);
    }

    /// A frame carrying `offset..offset + len` (and the FIN, a bare mark) was acknowledged;
    /// pages no longer needed go back to `pool`.
    pub fn on_acked(
        &mut self,
        offset: u64,
        len: usize,
        fin: bool,
        record: bool,
        pool: &mut PagePool,
    ) {
        if self.state & RESET != 0 {
            return;
        }
        if fin {
            self.state = (self.state & !(FIN_IN_FLIGHT | FIN_PENDING)) | FIN_ACKED;
        }
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        if len == 0 {
            if record {
                if let Some(rec) = inner.rec.as_mut() {
                    rec.bare_in_flight = rec.bare_in_flight.saturating_sub(1);
                }
            }
        } else {
            let base = inner.base;
            let start = offset.max(base);
            let end = offset + len as u64;
            if start < end {
                // Release the acknowledged front. (In-order acknowledgements, the common
                // case, never touch the range sets.)
                let front_end = match inner.rec.as_mut() {
                    None if start == base => Some(end),
                    Some(rec) if start == base && rec.acked.is_empty() => {
                        rec.lost.remove(start..end);
                        Some(end)
                    }
                    _ => {
                        let rec = inner.rec();
                        rec.lost.remove(start..end);
                        rec.acked.insert(start..end);
                        if rec.acked.min() == Some(base) {
                            rec.acked.pop_min().map(|r| r.end)
                        } else {
                            None
                        }
                    }
                };
                if let Some(front_end) = front_end {
                    inner.data.release_below(front_end, pool);
                    inner.base = front_end;
                    while inner.marks.front().is_some_and(|&m| m <= front_end) {
                        inner.marks.pop_front();
                    }
                }
            }
        }
        self.release_if_idle(pool);
    }

    /// A frame carrying `offset..offset + len` (and the FIN, a bare mark) was lost: queue
    /// what is not acknowledged for re-sending.
    pub fn on_lost(&mut self, offset: u64, len: usize, fin: bool, record: bool) {
        if self.state & RESET != 0 {
            return;
        }
        if fin && self.state & FIN_ACKED == 0 {
            self.state = (self.state & !FIN_IN_FLIGHT) | FIN_PENDING;
        }
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        if len == 0 {
            if record {
                let rec = inner.rec();
                rec.bare_in_flight = rec.bare_in_flight.saturating_sub(1);
                // The receiver learns a boundary only from a frame flagged RECORD.
                insert_sorted(&mut rec.bare_pending, offset);
            }
            return;
        }
        let start = offset.max(inner.base);
        let end = offset + len as u64;
        if start >= end {
            return;
        }
        let rec = inner.rec();
        let mut cur = start;
        // Queue the parts of start..end not acknowledged.
        let acked: Vec<std::ops::Range<u64>> = rec
            .acked
            .iter()
            .filter(|r| r.end > start && r.start < end)
            .collect();
        for r in acked {
            if r.start > cur {
                rec.lost.insert(cur..r.start);
            }
            cur = cur.max(r.end);
        }
        if cur < end {
            rec.lost.insert(cur..end);
        }
    }

    /// Drops the allocation of an idle stream.
    fn release_if_idle(&mut self, pool: &mut PagePool) {
        let written = self.written;
        if let Some(i) = &mut self.inner {
            i.tidy();
            if i.base == written && i.rec.is_none() && i.marks.is_empty() {
                // Nothing is buffered, so `base == sent == written`.
                debug_assert!(i.sent == written);
                i.data.release_all(pool);
                self.inner = None;
            }
        }
    }
}

/// The first boundary strictly after `offset`.
fn next_mark_after(marks: &VecDeque<u64>, offset: u64) -> Option<u64> {
    let i = marks.partition_point(|&m| m <= offset);
    marks.get(i).copied()
}

fn insert_sorted(v: &mut VecDeque<u64>, x: u64) {
    let i = v.partition_point(|&m| m < x);
    if v.get(i) != Some(&x) {
        v.insert(i, x);
    }
}

fn remove_sorted(v: &mut VecDeque<u64>, x: u64) {
    let i = v.partition_point(|&m| m < x);
    if v.get(i) == Some(&x) {
        v.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_all(s: &mut SendBuffer, max: usize) -> Vec<(Chunk, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(c) = s.next_chunk(max, u64::MAX) {
            let mut b = Vec::new();
            s.copy_to(&c, &mut b);
            out.push((c, b));
        }
        out
    }

    #[test]
    fn chunks_stop_at_record_boundaries() {
        let mut s = SendBuffer::new();
        s.write(b"hello", &mut PagePool::default());
        assert!(s.mark_record());
        s.write(b"world!", &mut PagePool::default());
        s.finish();
        let chunks = send_all(&mut s, 100);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].1, b"hello");
        assert!(chunks[0].0.record && !chunks[0].0.fin);
        assert_eq!(chunks[1].1, b"world!");
        assert!(chunks[1].0.fin && !chunks[1].0.record);
    }

    #[test]
    fn late_mark_goes_as_bare_frame_and_is_resent_when_lost() {
        let mut s = SendBuffer::new();
        s.write(b"abc", &mut PagePool::default());
        let c = s.next_chunk(100, u64::MAX).unwrap();
        assert!(!c.record);
        assert!(s.mark_record());
        let m = s.next_chunk(100, u64::MAX).unwrap();
        assert_eq!((m.offset, m.len, m.record), (3, 0, true));
        s.on_lost(3, 0, false, true);
        let m2 = s.next_chunk(100, u64::MAX).unwrap();
        assert_eq!((m2.offset, m2.len, m2.record), (3, 0, true));
        s.on_acked(0, 3, false, false, &mut PagePool::default());
        s.on_acked(3, 0, false, true, &mut PagePool::default());
        s.finish();
        let f = s.next_chunk(100, u64::MAX).unwrap();
        assert!(f.fin && f.len == 0);
        s.on_acked(3, 0, true, false, &mut PagePool::default());
        assert!(s.is_fully_acked());
        assert!(s.inner.is_none());
    }

    #[test]
    fn in_order_acknowledgements_need_no_recovery_state() {
        let mut s = SendBuffer::new();
        s.write(&[1; 30], &mut PagePool::default());
        s.finish();
        let chunks: Vec<Chunk> = std::iter::from_fn(|| s.next_chunk(10, u64::MAX)).collect();
        assert_eq!(chunks.len(), 3);
        for c in &chunks[..2] {
            s.on_acked(c.offset, c.len, c.fin, c.record, &mut PagePool::default());
            assert!(s.inner.as_ref().is_some_and(|i| i.rec.is_none()));
        }
        assert_eq!(s.buffered(), 10);
        let c = chunks[2];
        s.on_acked(c.offset, c.len, c.fin, c.record, &mut PagePool::default());
        assert!(s.is_fully_acked() && s.inner.is_none());
        assert_eq!((s.sent_offset(), s.write_offset()), (30, 30));
    }

    #[test]
    fn out_of_order_acknowledgements_release_the_front_once_filled() {
        let mut s = SendBuffer::new();
        s.write(&[2; 30], &mut PagePool::default());
        let chunks: Vec<Chunk> = std::iter::from_fn(|| s.next_chunk(10, u64::MAX)).collect();
        s.on_acked(20, 10, false, false, &mut PagePool::default());
        s.on_acked(10, 10, false, false, &mut PagePool::default());
        assert_eq!(s.buffered(), 30, "the front is not acknowledged yet");
        s.on_lost(0, 10, false, false);
        let r = s.next_chunk(100, u64::MAX).unwrap();
        assert_eq!((r.offset, r.len, r.fresh), (0, 10, false));
        s.on_acked(
            chunks[0].offset,
            chunks[0].len,
            false,
            false,
            &mut PagePool::default(),
        );
        assert_eq!(s.buffered(), 0);
        assert!(s.inner.is_none());
    }

    #[test]
    fn empty_records_are_refused() {
        let mut s = SendBuffer::new();
        assert!(!s.mark_record());
        s.write(b"x", &mut PagePool::default());
        assert!(s.mark_record());
        assert!(!s.mark_record());
        let c = s.next_chunk(10, u64::MAX).unwrap();
        s.on_acked(c.offset, c.len, c.fin, c.record, &mut PagePool::default());
        assert!(!s.mark_record(), "the record just acknowledged ended here");
        s.write(b"y", &mut PagePool::default());
        assert!(s.mark_record());
    }

    #[test]
    fn lost_data_is_resent_with_its_marks_and_released_on_ack() {
        let mut s = SendBuffer::new();
        s.write(b"0123456789", &mut PagePool::default());
        s.mark_record();
        let a = s.next_chunk(4, u64::MAX).unwrap();
        let b = s.next_chunk(4, u64::MAX).unwrap();
        let c = s.next_chunk(4, u64::MAX).unwrap();
        assert_eq!((c.offset, c.len, c.record), (8, 2, true));
        assert!(s.next_chunk(4, u64::MAX).is_none());
        s.on_acked(b.offset, b.len, false, false, &mut PagePool::default());
        s.on_lost(a.offset, a.len, false, false);
        s.on_lost(c.offset, c.len, false, true);
        // Spurious loss: part of b reported lost again changes nothing.
        s.on_lost(4, 4, false, false);
        let r = send_all(&mut s, 100);
        let got: Vec<(u64, usize, bool)> =
            r.iter().map(|(c, _)| (c.offset, c.len, c.record)).collect();
        assert_eq!(got, vec![(0, 4, false), (8, 2, true)]);
        assert_eq!(r[0].1, b"0123");
        assert_eq!(r[1].1, b"89");
        s.on_acked(0, 4, false, false, &mut PagePool::default());
        s.on_acked(8, 2, false, true, &mut PagePool::default());
        assert_eq!(s.buffered(), 0);
        assert!(s.inner.is_none());
    }

    #[test]
    fn flow_limit_bounds_new_data_only() {
        let mut s = SendBuffer::new();
        s.write(&[7; 100], &mut PagePool::default());
        let a = s.next_chunk(60, 50).unwrap();
        assert_eq!((a.offset, a.len, a.fresh), (0, 50, true));
        assert!(!s.has_pending(50));
        assert!(s.is_blocked_at(50));
        s.on_lost(0, 50, false, false);
        let r = s.next_chunk(60, 50).unwrap();
        assert_eq!((r.offset, r.len, r.fresh), (0, 50, false));
        let b = s.next_chunk(60, 100).unwrap();
        assert_eq!((b.offset, b.len), (50, 50));
    }

    #[test]
    fn reset_drops_everything() {
        let mut s = SendBuffer::new();
        let mut pool = PagePool::default();
        s.write(&[1; 10], &mut pool);
        s.next_chunk(4, u64::MAX).unwrap();
        assert_eq!(s.reset(&mut pool), 4);
        assert!(s.next_chunk(100, u64::MAX).is_none());
        assert!(s.is_fully_acked());
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn idle_send_buffer_is_small() {
        assert!(std::mem::size_of::<SendBuffer>() <= 24);
    }
}
